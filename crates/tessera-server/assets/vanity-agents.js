// The `/vanity/agents` chat page. It redeems the ticket of its URL by POST (removing it from
// the address bar first, so neither a reload nor a shared screenshot replays it), then shows
// the session's agents, its conversations, and the selected conversation with streamed replies,
// tool calls, notifications, and pending actions (the exact arguments that will run, Confirm and
// Cancel, a live countdown to `expires_at`; decisions taken elsewhere arrive on the stream).
// Without a ticket it resumes the browser's current session.
import { TesseraClient } from "/static/tessera.js";

const $ = (id) => document.getElementById(id);
const client = new TesseraClient();
const state = {
  session: null, contexts: [], current: null, stream: null, rendered: new Map(), busy: false,
  // The conversation's pending actions by id: {action, card, status}.
  actions: new Map(),
};

const params = new URLSearchParams(window.location.search);
const ticket = params.get("ticket");
if (ticket !== null) history.replaceState(null, "", window.location.pathname);

function show(id) {
  for (const section of ["loading", "problem", "chat"]) $(section).hidden = section !== id;
}

function problem(reason, action) {
  $("problem-reason").textContent = reason;
  $("problem-action").textContent = "";
  if (action) $("problem-action").append(action);
  show("problem");
}

function link(href, text) {
  const a = document.createElement("a");
  a.href = href;
  a.textContent = text;
  return a;
}

function ticketProblem(error) {
  switch (error.code) {
    case "invalid_ticket":
      return problem("This link has expired or has already been used. Links work once and only for a short time: ask whoever sent it for a new one.");
    case "signin_required": {
      const back = `/vanity/agents?ticket=${encodeURIComponent(ticket)}`;
      return problem("This chat is for signed-in users. Sign in, then you will come back here.",
        link(`/sign-in?redirect_url=${encodeURIComponent(back)}`, "Sign in"));
    }
    case "user_disabled":
      return problem("The account this link is for is disabled.");
    default:
      return problem(`The link could not be opened: ${error.message}`);
  }
}

function agentName(id) {
  const agent = (state.session.agents || []).find((a) => a.id === id);
  return agent ? agent.name : "Agent";
}

function renderHeader() {
  const session = state.session;
  const active = session.active_agent;
  $("agent-name").textContent = active ? active.name : "No agent available";
  $("agent-description").textContent = active && active.description ? active.description : "";
  const picker = $("agent-picker");
  picker.textContent = "";
  for (const agent of session.agents) {
    const option = document.createElement("option");
    option.value = agent.id;
    option.textContent = agent.name;
    picker.append(option);
  }
  $("agent-picker-label").hidden = session.agents.length < 2;
  const banner = $("impersonation");
  if (session.impersonated_by) {
    banner.textContent = `Impersonation: you are acting as this user on behalf of ${session.impersonated_by.type} ${session.impersonated_by.id}.`;
    banner.hidden = false;
  }
}

function renderContexts() {
  const list = $("context-list");
  list.textContent = "";
  for (const context of [...state.contexts].reverse()) {
    const item = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.className = "context";
    button.dataset.id = context.id;
    button.textContent = context.title;
    if (state.current === context.id) button.setAttribute("aria-current", "true");
    button.addEventListener("click", () => select(context.id));
    item.append(button);
    list.append(item);
  }
}

function bubble(key, role) {
  let item = state.rendered.get(key);
  if (!item) {
    item = document.createElement("li");
    item.className = `message ${role}`;
    item.dataset.key = key;
    $("messages").append(item);
    state.rendered.set(key, item);
  }
  return item;
}

function renderMessage(message) {
  if (message.role === "tool") {
    const item = bubble(message.id, "tool");
    item.textContent = `🔧 ${message.tool_name || "tool"} → ${message.content}`;
    return;
  }
  if (message.role === "assistant" && !message.content && message.tool_calls.length > 0) {
    const item = bubble(message.id, "tool");
    item.textContent = message.tool_calls.map((c) => `🔧 ${c.name}(${JSON.stringify(c.arguments)})`).join("\n");
    return;
  }
  const item = bubble(message.id, message.role);
  item.textContent = message.content;
  item.classList.remove("streaming");
}

function setBusy(busy) {
  state.busy = busy;
  $("cancel").hidden = !busy;
  $("status").textContent = busy ? `${agentName(currentAgent())} is answering…` : "";
}

function currentAgent() {
  const context = state.contexts.find((c) => c.id === state.current);
  return context ? context.agent_id : null;
}

function onEvent(event) {
  const data = event.data || {};
  switch (event.event) {
    case "message.created":
    case "message.completed":
      if (data.message) renderMessage(data.message);
      break;
    case "message.delta": {
      const item = bubble(data.message_id, "assistant");
      item.classList.add("streaming");
      item.textContent += data.text;
      break;
    }
    case "tool.started":
      if (data.name === "ask_user" && data.question) renderQuestion(data);
      else bubble(`tool:${data.call_id}`, "tool").textContent = `🔧 ${data.name} …`;
      break;
    case "tool.completed": {
      // A question stays shown; its answer is the person's own message (or the outcome).
      if (data.name === "ask_user" && !data.is_error) break;
      const result = data.message && data.message.content;
      bubble(`tool:${data.call_id}`, "tool").textContent = result
        ? `🔧 ${data.name} → ${result}`
        : `🔧 ${data.name} ${data.is_error ? "failed" : "done"}`;
      break;
    }
    case "pending_action.created":
    case "pending_action.resolved":
      if (data.action) renderAction(data.action);
      break;
    case "pending_action.expiring": {
      const entry = state.actions.get(data.action_id);
      if (entry) entry.card.classList.add("expiring");
      break;
    }
    case "notification": {
      const item = bubble(`note:${event.id}`, "notification");
      item.textContent = `🔔 ${data.message}`;
      break;
    }
    case "run.status":
      setBusy(data.status === "queued" || data.status === "running");
      if (data.status === "failed" && data.error) $("status").textContent = `The agent failed: ${data.error}`;
      break;
    default:
      break;
  }
  $("messages").lastElementChild?.scrollIntoView({ block: "end" });
}

// --- Pending actions ---------------------------------------------------------------------

const ACTION_STATUS = {
  pending: "Waiting for your decision.",
  confirmed: "Confirmed: running…",
  executing: "Confirmed: running…",
  completed: "Confirmed and done.",
  failed: "Confirmed, but it failed.",
  cancelled: "Cancelled: it was not run.",
  expired: "Expired: nobody decided in time, so it was not run.",
};

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

/** Shows (or updates) the card of a pending action. */
function renderAction(action) {
  let entry = state.actions.get(action.action_id);
  if (!entry) {
    const card = bubble(`action:${action.action_id}`, "action");
    card.textContent = "";
    card.dataset.actionId = action.action_id;
    card.setAttribute("aria-label", `Action ${action.tool} needs your confirmation`);
    const title = element("p", "action-title", "The agent wants to run ");
    title.append(element("strong", "action-tool", action.tool));
    const preview = element("pre", "action-preview", JSON.stringify(action.preview, null, 2));
    const countdown = element("p", "action-countdown");
    countdown.setAttribute("role", "timer");
    const buttons = element("div", "action-buttons");
    const confirm = element("button", "action-confirm", "Confirm");
    const cancel = element("button", "action-cancel secondary", "Cancel");
    confirm.type = "button";
    cancel.type = "button";
    confirm.addEventListener("click", () => decide(action.action_id, true));
    cancel.addEventListener("click", () => decide(action.action_id, false));
    buttons.append(confirm, cancel);
    const status = element("p", "action-status");
    status.setAttribute("role", "status");
    card.append(title, preview, countdown, buttons, status);
    entry = { action, card, status: "pending", note: "" };
    state.actions.set(action.action_id, entry);
  }
  entry.action = action;
  setActionStatus(entry, action.status);
  tick();
}

function setActionStatus(entry, status, note = "") {
  // A final status from the server wins over the page's own guess (a local expiry, say).
  entry.status = status;
  entry.note = note;
  const card = entry.card;
  card.dataset.status = status;
  const open = status === "pending";
  for (const button of card.querySelectorAll("button")) button.disabled = !open;
  card.querySelector(".action-buttons").hidden = !open;
  let text = ACTION_STATUS[status] || status;
  if (status === "failed" && entry.action.result) text = `${text} ${entry.action.result}`;
  card.querySelector(".action-status").textContent = note ? `${text} ${note}` : text;
  if (!open) card.querySelector(".action-countdown").textContent = "";
}

/** Updates the countdowns; an action past `expires_at` can no longer be decided. */
function tick() {
  const now = Date.now();
  for (const entry of state.actions.values()) {
    if (entry.status !== "pending") continue;
    const left = Math.ceil((Date.parse(entry.action.expires_at) - now) / 1000);
    if (left <= 0) {
      setActionStatus(entry, "expired");
      continue;
    }
    const minutes = Math.floor(left / 60);
    const seconds = String(left % 60).padStart(2, "0");
    entry.card.querySelector(".action-countdown").textContent = `Expires in ${minutes}:${seconds}`;
  }
}

async function decide(actionId, confirmed) {
  const entry = state.actions.get(actionId);
  if (!entry || entry.status !== "pending" || !state.current) return;
  for (const button of entry.card.querySelectorAll("button")) button.disabled = true;
  try {
    const answer = await client.resolveAction(state.current, actionId, confirmed);
    // The stream's `pending_action.resolved` says the same; whichever comes first shows it.
    if (entry.status === "pending") setActionStatus(entry, answer.status === "cancelled" ? "cancelled" : "confirmed");
  } catch (error) {
    if (error.code === "action_expired") setActionStatus(entry, "expired");
    else if (error.code === "action_already_decided") setActionStatus(entry, entry.status, "It was already decided elsewhere.");
    else {
      for (const button of entry.card.querySelectorAll("button")) button.disabled = false;
      entry.card.querySelector(".action-status").textContent = `Not sent: ${error.message}`;
    }
  }
}

setInterval(tick, 250);

async function select(id) {
  if (state.stream) state.stream.close();
  state.current = id;
  state.rendered = new Map();
  state.actions = new Map();
  $("messages").textContent = "";
  $("empty").hidden = true;
  $("composer").hidden = false;
  setBusy(false);
  renderContexts();
  const context = state.contexts.find((c) => c.id === id);
  if (context) $("agent-name").textContent = agentName(context.agent_id);
  try {
    const page = await client.listMessages(id, { order: "desc", limit: 100 });
    for (const message of page.data.reverse()) renderMessage(message);
  } catch (error) {
    $("status").textContent = `Could not load the conversation: ${error.message}`;
  }
  state.stream = client.stream(id, {
    onEvent,
    onState: (s) => { if (s === "reconnecting") $("status").textContent = "Reconnecting…"; },
  });
  $("message").focus();
}

async function newChat() {
  const body = {};
  const picker = $("agent-picker");
  if (!$("agent-picker-label").hidden && picker.value) body.agent_id = picker.value;
  const context = await client.createContext(body);
  state.contexts.push(context);
  await select(context.id);
}

/** Shows an `ask_user` question; its choices are buttons that send the choice as the answer
 *  (the message box answers it too, in the person's own words). */
function renderQuestion(data) {
  const item = bubble(`tool:${data.call_id}`, "assistant");
  item.textContent = `❓ ${data.question}`;
  const choices = Array.isArray(data.choices) ? data.choices : [];
  if (choices.length === 0) return;
  const buttons = element("div", "action-buttons");
  for (const choice of choices) {
    const button = element("button", "secondary", choice);
    button.type = "button";
    button.addEventListener("click", () => {
      for (const b of buttons.querySelectorAll("button")) b.disabled = true;
      $("message").value = choice;
      $("composer").requestSubmit();
    });
    buttons.append(button);
  }
  item.append(buttons);
}

async function send(event) {
  event.preventDefault();
  const input = $("message");
  const content = input.value.trim();
  if (!content || !state.current) return;
  input.value = "";
  setBusy(true);
  try {
    await client.sendMessage(state.current, content, { idempotencyKey: requestKey() });
  } catch (error) {
    setBusy(false);
    input.value = content;
    $("status").textContent = `Not sent: ${error.message}`;
  }
}

// A fresh Idempotency-Key. `crypto.randomUUID` exists only in secure contexts (https,
// localhost); `getRandomValues` everywhere.
function requestKey() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

async function cancel() {
  if (!state.current) return;
  try {
    await client.cancel(state.current);
  } catch (error) {
    if (error.code !== "run_not_active") $("status").textContent = error.message;
  }
}

async function main() {
  if (ticket !== null) {
    try {
      await client.exchangeTicket(ticket);
    } catch (error) {
      ticketProblem(error);
      return;
    }
  }
  state.session = await client.getSession();
  if (!state.session.has_session) {
    problem("There is no open agent session in this browser. Open the link you were given.");
    return;
  }
  renderHeader();
  const page = await client.listContexts({ limit: 100 });
  state.contexts = page.data;
  show("chat");
  $("new-chat").addEventListener("click", () => newChat().catch((e) => { $("status").textContent = e.message; }));
  $("composer").addEventListener("submit", send);
  $("cancel").addEventListener("click", cancel);
  $("message").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) {
      event.preventDefault();
      $("composer").requestSubmit();
    }
  });
  renderContexts();
  if (state.contexts.length > 0) await select(state.contexts[state.contexts.length - 1].id);
}

main().catch((error) => problem(`Something went wrong: ${error.message}`));
