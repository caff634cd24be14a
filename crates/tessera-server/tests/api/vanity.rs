//! The `/vanity/agents` chat page in a real browser (headless Chromium over WebDriver, as in
//! `browser.rs`): a minted URL opens the chat, the ticket leaves the address bar, a message to
//! an `echo` agent gets its streamed reply, a reload keeps the conversation, the page fits a
//! phone, and used or expired links get the friendly screen. Pending actions: a gated tool call
//! shows its exact arguments, Confirm / Cancel and a live countdown; confirming runs the tool
//! and shows its result, cancelling refuses it, an unanswered one expires, and a decision taken
//! through the backend API reaches the page through the stream.

use std::time::Duration;

use tessera_client::models::{ApprovalRule, CreateSessionTicketRequest};
use tessera_store::backend_tests;
use tessera_store::testing::TestDatabase;

use crate::browser::{browser_available, Browser};
use crate::helpers::{echo_agent, spawn_app, TcpProxy, TestApp};

backend_tests!(
    the_chat_page_works_in_a_real_browser,
    pending_actions_are_decided_in_the_page,
    the_page_catches_up_after_its_connection_drops,
    an_impersonation_shows_its_banner_and_two_agents_a_picker
);

async fn mint(app: &TestApp, agent: &str, expires_in: Option<i64>) -> String {
    app.client
        .session_tickets()
        .create_backend_session_ticket(CreateSessionTicketRequest {
            ticket_type: "agent_access".into(),
            agent_ids: Some(vec![agent.to_owned()]),
            context_group: Some("chromium:1".into()),
            expires_in,
            ..Default::default()
        })
        .send()
        .await
        .unwrap()
        .url
}

const PROBLEM: &str = "return !document.getElementById('problem').hidden \
     && document.getElementById('problem-reason').textContent;";

async fn the_chat_page_works_in_a_real_browser(db: &TestDatabase) {
    if browser_available().is_none() {
        return;
    }
    let app = spawn_app(db).await;
    let agent = app
        .client
        .ai()
        .agents()
        .create_agent(echo_agent("Echo helper"))
        .send()
        .await
        .unwrap();
    let url = mint(&app, &agent.id, None).await;
    let browser = Browser::start().await;

    // The page redeems the ticket and removes it from the address bar.
    browser.goto(&url).await;
    let name = browser
        .wait_for(
            "the agent's name",
            "return !document.getElementById('chat').hidden \
             && document.getElementById('agent-name').textContent;",
        )
        .await;
    assert_eq!(name, "Echo helper");
    let shown = browser.current_url().await;
    assert_eq!(
        shown,
        app.url("/vanity/agents"),
        "the ticket left the address bar"
    );

    // New chat, a message, and the echo agent's reply streamed into the page.
    new_chat(&browser).await;
    assert_eq!(
        chat(&browser, "Hello from Chromium").await,
        "Hello from Chromium"
    );
    let listed = browser
        .execute("return [...document.querySelectorAll('#context-list .context')].length;")
        .await;
    assert_eq!(listed, 1);

    // A reload keeps the conversation (the browser session still holds the agent session).
    browser.goto(&app.url("/vanity/agents")).await;
    let conversation = browser
        .wait_for(
            "the conversation after a reload",
            "const m = [...document.querySelectorAll('.message')]; \
             return m.length >= 2 && m.map(e => e.className + '=' + e.textContent).join('|');",
        )
        .await;
    assert_eq!(
        conversation,
        "message user=Hello from Chromium|message assistant=Hello from Chromium"
    );

    // A phone-sized viewport: nothing overflows sideways and the send button is on screen.
    browser.resize(390, 844).await;
    let fits = browser
        .wait_for(
            "the page to fit a phone",
            "return window.innerWidth <= 400 \
             && document.documentElement.scrollWidth <= window.innerWidth \
             && document.getElementById('send').getBoundingClientRect().right <= window.innerWidth \
             && document.getElementById('new-chat').getBoundingClientRect().width > 0;",
        )
        .await;
    assert_eq!(fits, true);

    // The same link again: used, so the friendly screen (and the session it opened ends).
    browser.goto(&url).await;
    let reason = browser.wait_for("the used-link screen", PROBLEM).await;
    assert!(
        reason
            .as_str()
            .unwrap()
            .contains("expired or has already been used"),
        "{reason}"
    );
    assert_eq!(browser.current_url().await, app.url("/vanity/agents"));

    // An expired link: the same screen.
    let expired = mint(&app, &agent.id, Some(1)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    browser.goto(&expired).await;
    let reason = browser.wait_for("the expired-link screen", PROBLEM).await;
    assert!(
        reason
            .as_str()
            .unwrap()
            .contains("expired or has already been used"),
        "{reason}"
    );

    let _ = browser
        .session_call(reqwest::Method::DELETE, "", None)
        .await;
    drop(browser);
    app.stop().await;
}

/// The card of the `n`-th pending action (0-based) as `status|tool|preview|countdown|buttons`.
fn card(n: usize) -> String {
    format!(
        "const c = document.querySelectorAll('.message.action')[{n}]; \
         if (!c) return null; \
         const b = [...c.querySelectorAll('button')]; \
         return [c.dataset.status, c.querySelector('.action-tool').textContent, \
                 c.querySelector('.action-preview').textContent, \
                 c.querySelector('.action-countdown').textContent, \
                 b.map(x => x.textContent + (x.disabled ? ':off' : ':on')).join(',')].join('|');"
    )
}

/// Starts a new conversation in the chat page and waits for its message box.
async fn new_chat(browser: &Browser) {
    browser.click("#new-chat").await;
    browser
        .wait_for(
            "the composer",
            "return !document.getElementById('composer').hidden;",
        )
        .await;
}

/// Types `text` into the message box, sends it, and returns the page's last finished reply.
async fn chat(browser: &Browser, text: &str) -> serde_json::Value {
    browser.type_into("#message", text).await;
    browser.click("#send").await;
    browser
        .wait_for(
            "the streamed reply",
            "const done = [...document.querySelectorAll('.message.assistant:not(.streaming)')]; \
             return done.length > 0 && done[done.length - 1].textContent;",
        )
        .await
}

async fn send_in_page(browser: &Browser, text: &str) {
    browser
        .execute(&format!(
            "document.getElementById('message').value = {};",
            serde_json::to_string(text).unwrap()
        ))
        .await;
    browser.click("#send").await;
}

async fn pending_actions_are_decided_in_the_page(db: &TestDatabase) {
    if browser_available().is_none() {
        return;
    }
    let app = spawn_app(db).await;
    // notify_user waits up to 10 minutes for a decision; request_variables only 2 seconds.
    let rule = |tool: &str, expires: u32| ApprovalRule {
        tool: tool.into(),
        expires_in_seconds: Some(expires),
    };
    let mut request = echo_agent("Careful helper");
    request.approval_rules = Some(vec![rule("notify_user", 600), rule("request_variables", 2)]);
    let agent = app
        .client
        .ai()
        .agents()
        .create_agent(request)
        .send()
        .await
        .unwrap();
    let url = mint(&app, &agent.id, None).await;
    let browser = Browser::start().await;
    browser.goto(&url).await;
    browser
        .wait_for(
            "the chat",
            "return !document.getElementById('chat').hidden;",
        )
        .await;
    new_chat(&browser).await;

    // 1. A gated call: the card shows the exact arguments and a countdown that runs.
    send_in_page(&browser, r#"/tool notify_user {"message": "ship it"}"#).await;
    let shown = browser
        .wait_for("the first action's card", &format!("const v = (() => {{ {} }})(); return v && v.startsWith('pending|') && v.includes('Expires in') && v;", card(0)))
        .await;
    let parts: Vec<&str> = shown.as_str().unwrap().split('|').collect();
    assert_eq!(parts[1], "notify_user");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(parts[2]).unwrap(),
        serde_json::json!({"message": "ship it"}),
        "the preview is the exact arguments"
    );
    assert!(
        parts[3] == "Expires in 10:00" || parts[3].starts_with("Expires in 9:"),
        "{shown}"
    );
    assert_eq!(parts[4], "Confirm:on,Cancel:on");
    let first = parts[3].to_owned();
    browser
        .wait_for(
            "the countdown to move",
            &format!(
                "return document.querySelector('.message.action .action-countdown').textContent !== {};",
                serde_json::to_string(&first).unwrap()
            ),
        )
        .await;
    // Nothing ran yet.
    let notes = browser
        .execute("return document.querySelectorAll('.message.notification').length;")
        .await;
    assert_eq!(notes, 0);

    // Confirm: the tool runs once and its result appears; the card is decided.
    browser
        .click(".message.action[data-status=pending] .action-confirm")
        .await;
    let result = browser
        .wait_for(
            "the tool's result",
            "const t = [...document.querySelectorAll('.message.tool')].map(e => e.textContent) \
               .find(x => x.includes('the user was notified')); \
             const n = [...document.querySelectorAll('.message.notification')].map(e => e.textContent); \
             return t && n.length === 1 && (t + '|' + n[0]);",
        )
        .await;
    assert_eq!(result, "🔧 notify_user → the user was notified|🔔 ship it");
    let decided = browser.wait_for("the confirmed card", &card(0)).await;
    let decided = decided.as_str().unwrap();
    assert!(decided.starts_with("confirmed|"), "{decided}");
    assert!(decided.ends_with("Confirm:off,Cancel:off"), "{decided}");
    browser
        .wait_for(
            "the agent's answer",
            "return [...document.querySelectorAll('.message.assistant')].some(e => e.textContent === 'tool notify_user returned: the user was notified');",
        )
        .await;

    // 2. Cancel: the tool does not run and the agent is told.
    send_in_page(&browser, r#"/tool notify_user {"message": "never"}"#).await;
    browser
        .wait_for(
            "the second card",
            &format!(
                "const v = (() => {{ {} }})(); return v && v.startsWith('pending|') && v;",
                card(1)
            ),
        )
        .await;
    browser
        .click(".message.action[data-status=pending] .action-cancel")
        .await;
    browser
        .wait_for(
            "the refusal",
            "return [...document.querySelectorAll('.message.assistant')].some(e => e.textContent.includes('cancelled this action'));",
        )
        .await;
    let cancelled = browser.execute(&card(1)).await;
    assert!(
        cancelled.as_str().unwrap().starts_with("cancelled|"),
        "{cancelled}"
    );
    let notes = browser
        .execute("return [...document.querySelectorAll('.message.notification')].map(e => e.textContent).join('|');")
        .await;
    assert_eq!(notes, "🔔 ship it");

    // 3. Nobody decides: the card shows it expired, and its buttons are off.
    send_in_page(&browser, r#"/tool request_variables {"names": ["REGION"]}"#).await;
    let expired = browser
        .wait_for(
            "the third card to expire",
            &format!(
                "const v = (() => {{ {} }})(); return v && v.startsWith('expired|') && v;",
                card(2)
            ),
        )
        .await;
    let expired = expired.as_str().unwrap();
    assert!(expired.ends_with("Confirm:off,Cancel:off"), "{expired}");
    assert!(expired.contains("|request_variables|"), "{expired}");
    browser
        .wait_for(
            "the server's expiry to reach the agent",
            "return [...document.querySelectorAll('.message.assistant')].some(e => e.textContent.includes('expired'));",
        )
        .await;

    // 4. Decided elsewhere (the backend API): the page follows the stream.
    send_in_page(&browser, r#"/tool notify_user {"message": "from the API"}"#).await;
    let ids = browser
        .wait_for(
            "the fourth card",
            "const c = document.querySelectorAll('.message.action')[3]; \
             const t = document.querySelector('#context-list .context[aria-current=true]'); \
             return c && t && c.dataset.status === 'pending' && [t.dataset.id, c.dataset.actionId];",
        )
        .await;
    let (thread, action) = (ids[0].as_str().unwrap(), ids[1].as_str().unwrap());
    let answer = app
        .client
        .sessions()
        .resolve_action(thread, action, true)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status, "processing");
    let remote = browser
        .wait_for(
            "the decision taken elsewhere",
            &format!(
                "const v = (() => {{ {} }})(); return v && !v.startsWith('pending|') && v;",
                card(3)
            ),
        )
        .await;
    assert!(
        remote.as_str().unwrap().starts_with("confirmed|"),
        "{remote}"
    );
    browser
        .wait_for(
            "its notification",
            "return [...document.querySelectorAll('.message.notification')].some(e => e.textContent === '🔔 from the API');",
        )
        .await;
    // A decision from the page now is refused, and the card says so.
    let late = browser
        .execute(&format!(
            "return fetch('/agent/contexts/{thread}/actions/{action}', {{method: 'POST', \
               credentials: 'include', headers: {{'Content-Type': 'application/json'}}, \
               body: JSON.stringify({{confirmed: false}})}}).then(r => r.status);"
        ))
        .await;
    assert_eq!(late, 409);

    let _ = browser
        .session_call(reqwest::Method::DELETE, "", None)
        .await;
    drop(browser);
    app.stop().await;
}

/// `tessera.js` reconnects a dropped stream and resumes after the last event it saw: the page
/// reaches the server through a proxy that is cut while the backend sends the conversation a
/// message; once the proxy is back, the page shows that message and the agent's reply without a
/// reload, and its stream asked to resume (`Last-Event-ID`) instead of starting over.
async fn the_page_catches_up_after_its_connection_drops(db: &TestDatabase) {
    if browser_available().is_none() {
        return;
    }
    let app = spawn_app(db).await;
    let proxy = TcpProxy::start(app.address).await;
    // A deployment whose host is the proxy's, so that the page's requests (Host, Origin) are
    // its own.
    let tenant = app
        .create_deployment_at("proxied", &format!("http://{}", proxy.address))
        .await;
    let agent = tenant
        .client
        .ai()
        .agents()
        .create_agent(echo_agent("Echo helper"))
        .send()
        .await
        .unwrap();
    let url = tenant
        .client
        .session_tickets()
        .create_backend_session_ticket(CreateSessionTicketRequest {
            ticket_type: "agent_access".into(),
            agent_ids: Some(vec![agent.id.clone()]),
            context_group: Some("chromium:reconnect".into()),
            ..Default::default()
        })
        .send()
        .await
        .unwrap()
        .url;
    assert!(
        url.starts_with(&format!("http://{}/", proxy.address)),
        "{url}"
    );
    let browser = Browser::start().await;
    browser.goto(&url).await;
    browser
        .wait_for(
            "the chat",
            "return !document.getElementById('chat').hidden;",
        )
        .await;
    new_chat(&browser).await;
    browser.type_into("#message", "Before the cut").await;
    browser.click("#send").await;
    let thread = browser
        .wait_for(
            "the first reply",
            "const done = [...document.querySelectorAll('.message.assistant:not(.streaming)')]; \
             const t = document.querySelector('#context-list .context[aria-current=true]'); \
             return done.length === 1 && t && t.dataset.id;",
        )
        .await;
    let thread = thread.as_str().unwrap().to_owned();
    // Watch the page's requests from here on: which stream requests, resuming after what.
    browser
        .execute(
            "window.__streams = []; const f = window.fetch; \
             window.fetch = (u, o) => { if (String(u).endsWith('/stream')) \
               window.__streams.push((o && o.headers && o.headers['Last-Event-ID']) || null); \
               return f(u, o); }; return true;",
        )
        .await;

    proxy.cut();
    browser
        .wait_for(
            "the page to notice the cut",
            "return document.getElementById('status').textContent.includes('Reconnecting');",
        )
        .await;
    // Meanwhile the backend writes to the conversation; the echo agent answers.
    let run = tenant
        .client
        .ai()
        .threads()
        .send_message(&thread, "Sent while you were away")
        .send()
        .await
        .unwrap()
        .run_id
        .unwrap();
    crate::helpers::poll_until("the run to end", Duration::from_secs(10), || {
        let (threads, thread, run) = (tenant.client.ai().threads(), &thread, &run);
        async move {
            let got = threads
                .get_run(thread, run)
                .send()
                .await
                .map_err(|e| e.to_string())?;
            if got.status == tessera_client::models::RunStatus::Completed {
                Ok(())
            } else {
                Err(format!("{got:?}"))
            }
        }
    })
    .await;
    proxy.restore().await;

    let conversation = browser
        .wait_for(
            "the messages sent while the connection was down",
            "const m = [...document.querySelectorAll('.message:not(.streaming)')]; \
             return m.length >= 4 && m.map(e => e.className + '=' + e.textContent).join('|');",
        )
        .await;
    assert_eq!(
        conversation,
        "message user=Before the cut|message assistant=Before the cut|\
         message user=Sent while you were away|message assistant=Sent while you were away"
    );
    let resumed = browser
        .execute("return window.__streams.filter(id => id !== null);")
        .await;
    let resumed = resumed.as_array().unwrap();
    assert!(
        !resumed.is_empty()
            && resumed
                .iter()
                .all(|id| id.as_str().unwrap().parse::<u64>().unwrap() > 0),
        "the stream resumed after the last event it saw: {resumed:?}"
    );
    let _ = browser
        .session_call(reqwest::Method::DELETE, "", None)
        .await;
    drop(browser);
    drop(proxy);
    app.stop().await;
}

/// A browser signed in by an impersonation ticket: the signed-in page and then the chat page of
/// a `signin` link show the impersonation banner (who acts for the user); the link names two
/// agents, so the page offers a picker, and the chosen agent answers the new conversation.
async fn an_impersonation_shows_its_banner_and_two_agents_a_picker(db: &TestDatabase) {
    if browser_available().is_none() {
        return;
    }
    let app = spawn_app(db).await;
    let user = app.user("ada@example.com", None).await;
    let agents = vec![app.agent("Alpha").await.id, app.agent("Beta").await.id];
    let mint = |body: CreateSessionTicketRequest| {
        let client = app.client.clone();
        async move {
            client
                .session_tickets()
                .create_backend_session_ticket(body)
                .send()
                .await
                .unwrap()
                .url
        }
    };
    let sign_in = mint(CreateSessionTicketRequest {
        ticket_type: "impersonation".into(),
        user_id: Some(user.id.clone()),
        ..Default::default()
    })
    .await;
    let browser = Browser::start().await;
    browser.goto(&sign_in).await;
    let banner = browser
        .wait_for(
            "the signed-in page's banner",
            "const b = document.getElementById('impersonation'); \
             return b && !b.hidden && b.getBoundingClientRect().height > 0 && b.textContent;",
        )
        .await;
    assert!(
        banner.as_str().unwrap().contains("Impersonation"),
        "{banner}"
    );

    let chat_link = mint(CreateSessionTicketRequest {
        ticket_type: "agent_access".into(),
        agent_ids: Some(agents.clone()),
        agent_session_identifier: Some("signin".into()),
        ..Default::default()
    })
    .await;
    browser.goto(&chat_link).await;
    let banner = browser
        .wait_for(
            "the chat page's banner",
            "const b = document.getElementById('impersonation'); \
             return !document.getElementById('chat').hidden && !b.hidden \
               && b.getBoundingClientRect().height > 0 && b.textContent;",
        )
        .await;
    let banner = banner.as_str().unwrap();
    assert!(
        banner
            .starts_with("Impersonation: you are acting as this user on behalf of secret_key key_"),
        "{banner}"
    );
    let options = browser
        .wait_for(
            "the agent picker",
            "return !document.getElementById('agent-picker-label').hidden \
             && [...document.querySelectorAll('#agent-picker option')] \
                  .map(o => o.value + '=' + o.textContent).join('|');",
        )
        .await;
    assert_eq!(
        options,
        format!("{}=Alpha|{}=Beta", agents[0], agents[1]).as_str()
    );
    // Choose the second agent, start a conversation: it is Beta's, and Beta answers.
    browser
        .execute(&format!(
            "const p = document.getElementById('agent-picker'); p.value = '{}'; \
             p.dispatchEvent(new Event('change')); return p.value;",
            agents[1]
        ))
        .await;
    new_chat(&browser).await;
    let name = browser
        .wait_for(
            "the new conversation",
            "return !document.getElementById('composer').hidden \
             && document.querySelector('#context-list .context[aria-current=true]') \
             && document.getElementById('agent-name').textContent;",
        )
        .await;
    assert_eq!(name, "Beta");
    assert_eq!(chat(&browser, "Hello Beta").await, "Hello Beta");
    let thread = browser
        .execute("return document.querySelector('#context-list .context[aria-current=true]').dataset.id;")
        .await;
    let thread = app
        .client
        .ai()
        .threads()
        .get_thread(thread.as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(thread.agent_id, agents[1]);

    let _ = browser
        .session_call(reqwest::Method::DELETE, "", None)
        .await;
    drop(browser);
    app.stop().await;
}
