// Tessera browser client: a plain ES module (no build step) wrapping the agent-session browser
// API and its event stream. Served at /static/tessera.js; the vanity pages use it, and so can
// custom UIs:
//
//   import { TesseraClient } from "https://agents.example.com/static/tessera.js";
//   const tessera = new TesseraClient({ baseUrl: "https://agents.example.com" });
//   await tessera.exchangeTicket(ticket);          // once, with the ticket from your backend
//   const session = await tessera.getSession();    // {has_session, actor, agents, …}
//   const chat = await tessera.createContext({ title: "Support" });
//   const stream = tessera.stream(chat.id, { onEvent: (e) => console.log(e.event, e.data) });
//   await tessera.sendMessage(chat.id, "Hello!");
//   stream.close();
//
// Authentication: the browser session cookie (same-site, or cross-origin with CORS and
// credentials from the deployment's frontend host), or — for clients that cannot use cookies —
// the exchange's `session_token`, sent as `Authorization: Bearer` when `sessionToken` is set
// (pass `useSessionToken: true` to keep the one the exchange returns).

/** An API error: HTTP status, stable `code`, human `message`, and the `field` at fault. */
export class TesseraError extends Error {
  constructor(status, body) {
    const error = (body && body.error) || {};
    super(error.message || `HTTP ${status}`);
    this.name = "TesseraError";
    this.status = status;
    this.code = error.code || "http_error";
    this.field = error.field || null;
    this.requestId = error.request_id || null;
  }
}

export class TesseraClient {
  /**
   * @param {object} [options]
   * @param {string} [options.baseUrl] the Tessera origin ("" = this page's origin)
   * @param {string} [options.sessionToken] a session token to send as a bearer token
   * @param {boolean} [options.useSessionToken] keep the token returned by exchangeTicket
   */
  constructor(options = {}) {
    this.baseUrl = (options.baseUrl || "").replace(/\/+$/, "");
    this.sessionToken = options.sessionToken || null;
    this.useSessionToken = Boolean(options.useSessionToken);
  }

  headers(extra = {}) {
    const headers = { Accept: "application/json", ...extra };
    if (this.sessionToken) headers.Authorization = `Bearer ${this.sessionToken}`;
    return headers;
  }

  async request(method, path, body, extraHeaders = {}) {
    const init = {
      method,
      credentials: "include",
      headers: this.headers(extraHeaders),
      cache: "no-store",
    };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const response = await fetch(this.baseUrl + path, init);
    const text = await response.text();
    let parsed = null;
    if (text) {
      try { parsed = JSON.parse(text); } catch (_) { parsed = null; }
    }
    if (!response.ok) throw new TesseraError(response.status, parsed);
    return parsed;
  }

  /** Redeems a ticket (once, ever). Resolves to {ticket_type, session, session_token, …}. */
  async exchangeTicket(ticket) {
    const result = await this.request("POST", "/session/tickets/exchange", { ticket });
    if (this.useSessionToken && result && result.session_token) {
      this.sessionToken = result.session_token;
    }
    return result;
  }

  getSession() { return this.request("GET", "/agent/session"); }

  listContexts(params = {}) {
    return this.request("GET", `/agent/contexts${query(params)}`);
  }

  createContext(body = {}) { return this.request("POST", "/agent/contexts", body); }

  updateContext(id, body) { return this.request("PATCH", `/agent/contexts/${enc(id)}`, body); }

  deleteContext(id) { return this.request("DELETE", `/agent/contexts/${enc(id)}`); }

  listMessages(id, params = {}) {
    return this.request("GET", `/agent/contexts/${enc(id)}/messages${query(params)}`);
  }

  /** Sends a message; a retry with the same `idempotencyKey` starts nothing new. */
  sendMessage(id, content, { idempotencyKey } = {}) {
    const headers = idempotencyKey ? { "Idempotency-Key": idempotencyKey } : {};
    return this.request("POST", `/agent/contexts/${enc(id)}/messages`, { content }, headers);
  }

  cancel(id) { return this.request("POST", `/agent/contexts/${enc(id)}/cancel`); }

  /**
   * Confirms (`true`: the tool executes once; resolves to `{status: "processing", callback_id}`)
   * or cancels (`false`: `{status: "cancelled"}`) a pending action of the conversation, as
   * announced by the stream's `pending_action.created`. A second decision rejects with code
   * `action_already_decided` (409); a late one with `action_expired` (410).
   */
  resolveAction(id, actionId, confirmed) {
    return this.request("POST", `/agent/contexts/${enc(id)}/actions/${enc(actionId)}`, {
      confirmed: Boolean(confirmed),
    });
  }

  /**
   * Follows a conversation's events. Reconnects by itself (1 s, then up to 10 s apart) and
   * resumes after the last event received (`Last-Event-ID`), so nothing is missed or repeated.
   * @param {string} id the conversation
   * @param {object} handlers
   * @param {(event: {id: number|null, event: string, data: any}) => void} handlers.onEvent
   * @param {(state: "open"|"reconnecting"|"closed", error?: Error) => void} [handlers.onState]
   * @param {number} [handlers.lastEventId] resume after this event id (default: from the start)
   * @returns {{close: () => void, lastEventId: () => number|null}}
   */
  stream(id, { onEvent, onState = () => {}, lastEventId = null } = {}) {
    let last = lastEventId;
    let closed = false;
    let controller = null;
    let delay = 1000;
    const run = async () => {
      while (!closed) {
        controller = new AbortController();
        try {
          const headers = this.headers({ Accept: "text/event-stream" });
          if (last !== null) headers["Last-Event-ID"] = String(last);
          const response = await fetch(`${this.baseUrl}/agent/contexts/${enc(id)}/stream`, {
            credentials: "include", headers, signal: controller.signal, cache: "no-store",
          });
          if (!response.ok) {
            let body = null;
            try { body = await response.json(); } catch (_) { body = null; }
            const error = new TesseraError(response.status, body);
            // Authentication and missing conversations do not heal by retrying.
            if (response.status === 401 || response.status === 404) {
              closed = true;
              onState("closed", error);
              return;
            }
            throw error;
          }
          onState("open");
          delay = 1000;
          await readEvents(response.body, (event) => {
            if (event.id !== null) last = event.id;
            onEvent(event);
          });
        } catch (error) {
          if (closed) return;
          onState("reconnecting", error);
        }
        if (closed) return;
        onState("reconnecting");
        await new Promise((resolve) => setTimeout(resolve, delay));
        delay = Math.min(delay * 2, 10000);
      }
    };
    run();
    return {
      close() {
        closed = true;
        if (controller) controller.abort();
        onState("closed");
      },
      lastEventId() { return last; },
    };
  }
}

function enc(value) { return encodeURIComponent(value); }

function query(params) {
  const entries = Object.entries(params).filter(([, v]) => v !== undefined && v !== null);
  if (entries.length === 0) return "";
  return "?" + entries.map(([k, v]) => `${enc(k)}=${enc(v)}`).join("&");
}

/** Parses a `text/event-stream` body, calling `emit` for each event. */
async function readEvents(body, emit) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  let event = { id: null, event: "message", data: [] };
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let newline;
    while ((newline = buffer.search(/\r\n|\r|\n/)) >= 0) {
      const line = buffer.slice(0, newline);
      buffer = buffer.slice(newline + (buffer[newline] === "\r" && buffer[newline + 1] === "\n" ? 2 : 1));
      if (line === "") {
        if (event.data.length > 0) {
          const raw = event.data.join("\n");
          let data = raw;
          try { data = JSON.parse(raw); } catch (_) { data = raw; }
          emit({ id: event.id, event: event.event, data });
        }
        event = { id: null, event: "message", data: [] };
        continue;
      }
      if (line.startsWith(":")) continue;
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? "" : line.slice(colon + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (field === "data") event.data.push(value);
      else if (field === "event") event.event = value;
      else if (field === "id") event.id = /^\d+$/.test(value) ? Number(value) : null;
    }
  }
}
