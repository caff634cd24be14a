//! The `/sign-in` page in a real browser: headless Chromium driven through chromedriver with the
//! W3C WebDriver protocol (plain JSON over HTTP).
//!
//! Without `chromium` and `chromedriver` the suite prints a SKIPPED line and passes, unless
//! `TESSERA_REQUIRE_BROWSER=1` (CI), where their absence fails it.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use tessera_client::models::{
    AddOrganizationMemberRequest, CreateOrganizationRequest, CreateUserRequest, OrganizationRole,
};
use tessera_store::backend_tests;
use tessera_store::testing::TestDatabase;

use crate::helpers::spawn_app;

backend_tests!(a_user_signs_in_through_the_page_in_a_real_browser);

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";
/// The W3C key under which element references are returned.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// `None` (after printing why) when the browser is absent and not required.
pub(crate) fn browser_available() -> Option<()> {
    let required = std::env::var("TESSERA_REQUIRE_BROWSER").is_ok_and(|v| v == "1");
    let missing: Vec<&str> = [CHROMEDRIVER, CHROMIUM]
        .into_iter()
        .filter(|path| !std::path::Path::new(path).exists())
        .collect();
    if missing.is_empty() {
        return Some(());
    }
    assert!(
        !required,
        "TESSERA_REQUIRE_BROWSER=1 but {missing:?} not installed (apt-get install chromium chromium-driver)"
    );
    eprintln!("SKIPPED: browser test, {missing:?} not installed (apt-get install chromium chromium-driver)");
    None
}

/// A chromedriver process and one browser session on it; both end on drop.
pub(crate) struct Browser {
    http: reqwest::Client,
    driver: String,
    session: String,
    process: Child,
}

impl Browser {
    pub(crate) async fn start() -> Browser {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let process = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let driver = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let ready = http.get(format!("{driver}/status")).send().await;
            if let Ok(resp) = ready {
                let status: Value = resp.json().await.unwrap_or_default();
                if status["value"]["ready"] == true {
                    break;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "chromedriver never became ready"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut browser = Browser {
            http,
            driver,
            session: String::new(),
            process,
        };
        let created = browser
            .call(
                reqwest::Method::POST,
                "/session",
                Some(json!({"capabilities": {"alwaysMatch": {
                    "browserName": "chrome",
                    "goog:chromeOptions": {
                        "binary": CHROMIUM,
                        "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                                 "--disable-dev-shm-usage", "--window-size=1024,768"]
                    }
                }}})),
            )
            .await;
        browser.session = created["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {created}"))
            .to_owned();
        browser
    }

    /// One WebDriver command; returns its `value`, failing on a WebDriver error.
    pub(crate) async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Value {
        let url = format!("{}{path}", self.driver);
        let mut request = self.http.request(method, &url);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let resp = request.send().await.expect("chromedriver answers");
        let status = resp.status();
        let body: Value = resp.json().await.expect("chromedriver answers JSON");
        assert!(status.is_success(), "WebDriver {path}: {status} {body}");
        body["value"].clone()
    }

    pub(crate) async fn session_call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Value {
        self.call(method, &format!("/session/{}{path}", self.session), body)
            .await
    }

    pub(crate) async fn goto(&self, url: &str) {
        self.session_call(reqwest::Method::POST, "/url", Some(json!({"url": url})))
            .await;
    }

    pub(crate) async fn current_url(&self) -> String {
        self.session_call(reqwest::Method::GET, "/url", None)
            .await
            .as_str()
            .unwrap()
            .to_owned()
    }

    pub(crate) async fn find(&self, css: &str) -> String {
        let found = self
            .session_call(
                reqwest::Method::POST,
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        found[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("no element {css}: {found}"))
            .to_owned()
    }

    pub(crate) async fn type_into(&self, css: &str, text: &str) {
        let element = self.find(css).await;
        self.session_call(
            reqwest::Method::POST,
            &format!("/element/{element}/clear"),
            Some(json!({})),
        )
        .await;
        self.session_call(
            reqwest::Method::POST,
            &format!("/element/{element}/value"),
            Some(json!({"text": text})),
        )
        .await;
    }

    pub(crate) async fn click(&self, css: &str) {
        let element = self.find(css).await;
        self.session_call(
            reqwest::Method::POST,
            &format!("/element/{element}/click"),
            Some(json!({})),
        )
        .await;
    }

    /// The element's text. Read by script in one step, and retried while the page is being
    /// replaced (a form post navigating), so that no element reference can go stale between
    /// finding the element and reading it.
    pub(crate) async fn text(&self, css: &str) -> String {
        let script = format!(
            "const e = document.querySelector({}); return e ? e.innerText : null;",
            serde_json::to_string(css).unwrap()
        );
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let url = format!("{}/session/{}/execute/sync", self.driver, self.session);
            let resp = self
                .http
                .post(&url)
                .json(&json!({"script": script, "args": []}))
                .send()
                .await
                .expect("chromedriver answers");
            let ok = resp.status().is_success();
            let body: Value = resp.json().await.expect("chromedriver answers JSON");
            if ok {
                if let Some(text) = body["value"].as_str() {
                    return text.to_owned();
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no element {css} to read: {body}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Opens `path` (a JSON endpoint) in the browser, with its cookies, and returns the JSON
    /// the browser shows. (The pages' CSP allows no `fetch`, so the browser navigates.)
    pub(crate) async fn open_json(&self, url: &str) -> Value {
        self.goto(url).await;
        let text = self
            .session_call(
                reqwest::Method::POST,
                "/execute/sync",
                Some(json!({"script": "return document.body.innerText;", "args": []})),
            )
            .await;
        let text = text.as_str().unwrap_or_default();
        serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
    }

    pub(crate) async fn wait_for_url(&self, suffix: &str) -> String {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let url = self.current_url().await;
            if url.ends_with(suffix) {
                return url;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the browser never reached …{suffix}; it is at {url}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Browser {
    /// Runs `script` (a function body) in the page and returns its result.
    pub(crate) async fn execute(&self, script: &str) -> Value {
        self.session_call(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
        .await
    }

    /// Sets the browser window's size (a phone-sized viewport, say).
    pub(crate) async fn resize(&self, width: u32, height: u32) {
        self.session_call(
            reqwest::Method::POST,
            "/window/rect",
            Some(json!({"width": width, "height": height})),
        )
        .await;
    }

    /// Waits until `script` returns a truthy value (checked every 100 ms, for 20 s); returns
    /// that value.
    pub(crate) async fn wait_for(&self, what: &str, script: &str) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let value = self.execute(script).await;
            let truthy = match &value {
                Value::Null | Value::Bool(false) => false,
                Value::String(s) => !s.is_empty(),
                _ => true,
            };
            if truthy {
                return value;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the page never showed {what}; the body is: {}",
                self.execute("return document.body.innerText;").await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Ending the process ends its browser too.
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

async fn a_user_signs_in_through_the_page_in_a_real_browser(db: &TestDatabase) {
    if browser_available().is_none() {
        return;
    }
    let app = spawn_app(db).await;
    let ada = app
        .client
        .users()
        .create_user(CreateUserRequest {
            email: "ada@example.com".into(),
            first_name: Some("Ada".into()),
            password: Some("analytical engine".into()),
            ..Default::default()
        })
        .send()
        .await
        .unwrap();
    let acme = app
        .client
        .organizations()
        .create_organization(CreateOrganizationRequest {
            name: "Acme Analytics".into(),
            slug: Some("acme".into()),
        })
        .send()
        .await
        .unwrap();
    app.client
        .organizations()
        .add_member(
            &acme.id,
            AddOrganizationMemberRequest {
                user_id: ada.id.clone(),
                role: OrganizationRole::Admin,
            },
        )
        .send()
        .await
        .unwrap();

    let browser = Browser::start().await;

    // A wrong password: the page comes back with the error in its alert region.
    browser
        .goto(&app.url("/sign-in?redirect_url=/sign-in%3Fwelcome%3D1"))
        .await;
    browser.type_into("#email", "ada@example.com").await;
    browser.type_into("#password", "difference engine").await;
    browser.click("button[type=submit]").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let error = loop {
        let text = browser.text("[role=alert]").await;
        if !text.is_empty() || tokio::time::Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(error, "Wrong email or password.");
    let invalid = browser.find("#email[aria-invalid=true]").await;
    assert!(!invalid.is_empty());
    let me = browser.open_json(&app.url("/me")).await;
    assert_eq!(
        me["error"]["code"], "unauthorized",
        "not signed in after a wrong password: {me}"
    );

    // The right password: redirected to the safe redirect_url, signed in.
    browser
        .goto(&app.url("/sign-in?redirect_url=/sign-in%3Fwelcome%3D1"))
        .await;
    browser.type_into("#email", "ada@example.com").await;
    browser.type_into("#password", "analytical engine").await;
    browser.click("button[type=submit]").await;
    browser.wait_for_url("/sign-in?welcome=1").await;
    let greeting = browser.text("#signed-in-as").await;
    assert_eq!(greeting, "Signed in as ada@example.com.");

    // The cookie as the browser holds it: HttpOnly (invisible to scripts), SameSite=Lax.
    let cookies = browser
        .session_call(reqwest::Method::GET, "/cookie", None)
        .await;
    let session = cookies
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "tessera_session")
        .unwrap_or_else(|| panic!("no session cookie in {cookies}"));
    assert_eq!(session["httpOnly"], true);
    assert_eq!(session["sameSite"], "Lax");
    assert_eq!(session["path"], "/");
    let visible = browser
        .session_call(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({"script": "return document.cookie;", "args": []})),
        )
        .await;
    assert!(!visible
        .as_str()
        .unwrap_or_default()
        .contains("tessera_session"));

    // GET /me with that browser's cookie shows the user and their organizations.
    let me = browser.open_json(&app.url("/me")).await;
    assert_eq!(me["user"]["email"], "ada@example.com", "{me}");
    assert_eq!(me["user"]["first_name"], "Ada");
    assert_eq!(me["authenticated_by"], "session");
    assert_eq!(
        me["memberships"][0]["organization"]["name"],
        "Acme Analytics"
    );
    assert_eq!(me["memberships"][0]["role"], "admin");

    // The page's sign-out button ends the session.
    browser.goto(&app.url("/sign-in")).await;
    browser.click("button[type=submit]").await;
    // The address is `/sign-in` before and after the sign-out's redirect, so wait for the
    // signed-out page's form itself, not the address.
    browser.wait_for_url("/sign-in").await;
    browser
        .wait_for(
            "the sign-in form after signing out",
            "return document.querySelector('#email') !== null;",
        )
        .await;
    let me = browser.open_json(&app.url("/me")).await;
    assert_eq!(me["error"]["code"], "unauthorized", "{me}");

    let _ = browser
        .session_call(reqwest::Method::DELETE, "", None)
        .await;
    drop(browser);
    app.stop().await;
}
