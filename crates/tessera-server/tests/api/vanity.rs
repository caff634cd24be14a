//! The `/vanity/agents` chat page in a real browser (headless Chromium over WebDriver, as in
//! `browser.rs`): a minted URL opens the chat, the ticket leaves the address bar, a message to
//! an `echo` agent gets its streamed reply, a reload keeps the conversation, the page fits a
//! phone, and used or expired links get the friendly screen.

use std::time::Duration;

use tessera_client::models::CreateSessionTicketRequest;
use tessera_store::backend_tests;
use tessera_store::testing::TestDatabase;

use crate::browser::{browser_available, Browser};
use crate::helpers::{echo_agent, spawn_app, TestApp};

backend_tests!(the_chat_page_works_in_a_real_browser);

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
    browser.click("#new-chat").await;
    browser
        .wait_for(
            "the composer",
            "return !document.getElementById('composer').hidden;",
        )
        .await;
    browser.type_into("#message", "Hello from Chromium").await;
    browser.click("#send").await;
    let reply = browser
        .wait_for(
            "the streamed reply",
            "const done = [...document.querySelectorAll('.message.assistant:not(.streaming)')]; \
             return done.length > 0 && done[done.length - 1].textContent;",
        )
        .await;
    assert_eq!(reply, "Hello from Chromium");
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
