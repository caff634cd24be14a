//! Identity with the real binary: no password, session cookie, token, key or hash ever reaches
//! the server's logs; `tessera keys rotate-signing`; identity operations through `tessera api
//! call`, including `getMe` with a user token as the credential.

use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};
use tessera_client::models::{CreateUserRequest, CreateUserTokenRequest};
use tessera_store::backend_tests;
use tessera_store::testing::TestDatabase;

use crate::support::{bootstrap_key, tessera, Server};

backend_tests!(secrets_never_reach_the_logs_and_signing_keys_rotate);

const PASSWORD: &str = "hunter2-but-longer-and-secret";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn secrets_never_reach_the_logs_and_signing_keys_rotate(db: &TestDatabase) {
    let key = bootstrap_key();
    // SQLite keeps its secrets key in a file next to the database (created on first need);
    // PostgreSQL nodes are given one, as the documentation requires.
    let secrets_key = tessera_domain::token::SecretsKey::generate().to_hex();
    let mut env = vec![("TESSERA_LOG_LEVEL", "debug".to_owned())];
    let postgres = db.backend() == tessera_store::Backend::Postgres;
    if postgres {
        env.push(("TESSERA_SECRETS_KEY", secrets_key.clone()));
    }
    let server = Server::start_with_env(&db.url, &key, &env).await;
    let client = server.client(&key);

    let ada = client
        .users()
        .create_user(CreateUserRequest {
            email: "ada@example.com".into(),
            password: Some(PASSWORD.into()),
            ..Default::default()
        })
        .send()
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let failed = http
        .post(format!("{}/sign-in", server.url))
        .header("origin", &server.url)
        .json(&json!({"email": "ada@example.com", "password": format!("{PASSWORD}-wrong")}))
        .send()
        .await
        .unwrap();
    assert_eq!(failed.status(), 401);
    let signed = http
        .post(format!("{}/sign-in", server.url))
        .header("origin", &server.url)
        .json(&json!({"email": "ada@example.com", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(signed.status(), 200);
    let cookie = signed
        .headers()
        .get("set-cookie")
        .unwrap()
        .to_str()
        .unwrap()
        .trim_start_matches("tessera_session=")
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let me = http
        .get(format!("{}/me", server.url))
        .header("cookie", format!("tessera_session={cookie}"))
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), 200);

    let token = client
        .users()
        .create_user_token(&ada.id, CreateUserTokenRequest::default())
        .send()
        .await
        .unwrap()
        .token;
    // The token is a credential for `tessera api call` too.
    let run = tessera(["api", "call", "getMe"])
        .env("TESSERA_URL", &server.url)
        .env("TESSERA_API_KEY", &token)
        .run()
        .await
        .ok();
    assert_eq!(run.stdout_json()["user"]["id"], ada.id.as_str());
    assert_eq!(run.stdout_json()["authenticated_by"], "token");
    let run = tessera([
        "api",
        "call",
        "listUsers",
        "--param",
        "email=ADA@example.com",
    ])
    .against(&server, &key)
    .run()
    .await
    .ok();
    assert_eq!(run.stdout_json()["data"][0]["id"], ada.id.as_str());
    // Browser operations too: the CLI sends the server's origin as a first-party client.
    let run = tessera([
        "api",
        "call",
        "signIn",
        "--body",
        &json!({"email": "ada@example.com", "password": PASSWORD}).to_string(),
    ])
    .against(&server, &key)
    .run()
    .await
    .ok();
    assert_eq!(run.stdout_json()["user"]["id"], ada.id.as_str());
    let run = tessera(["api", "call", "createUser", "--body", r#"{"email": "x"}"#])
        .against(&server, &key)
        .run()
        .await
        .failed();
    assert!(run.stderr.contains("validation_failed"), "{run:#?}");

    let created = client
        .secret_keys()
        .create(Default::default())
        .send()
        .await
        .unwrap();
    client
        .secret_keys()
        .revoke(&created.id)
        .send()
        .await
        .unwrap();
    http.post(format!("{}/sign-out", server.url))
        .header("origin", &server.url)
        .header("cookie", format!("tessera_session={cookie}"))
        .send()
        .await
        .unwrap();

    // Session tickets through `tessera api call`: minted with the key, exchanged as a browser.
    let agent = client
        .ai()
        .agents()
        .create_agent(tessera_client::models::CreateAgentRequest {
            name: "Echo".into(),
            ..Default::default()
        })
        .send()
        .await
        .unwrap();
    let minted = tessera([
        "api",
        "call",
        "createBackendSessionTicket",
        "--body",
        &json!({"ticket_type": "agent_access", "agent_ids": [agent.id], "context_group": "cli"})
            .to_string(),
    ])
    .against(&server, &key)
    .run()
    .await
    .ok();
    let ticket = minted.stdout_json()["ticket"].as_str().unwrap().to_owned();
    assert!(minted.stdout_json()["url"]
        .as_str()
        .unwrap()
        .ends_with(&format!("/vanity/agents?ticket={ticket}")));
    let exchanged = tessera([
        "api",
        "call",
        "exchangeSessionTicket",
        "--body",
        &json!({ "ticket": ticket }).to_string(),
    ])
    .against(&server, &key)
    .run()
    .await
    .ok();
    let session_token = exchanged.stdout_json()["session_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let run = tessera(["api", "call", "getAgentSession"])
        .env("TESSERA_URL", &server.url)
        .env("TESSERA_API_KEY", &session_token)
        .run()
        .await
        .ok();
    assert_eq!(run.stdout_json()["context_group"], "cli");
    let replay = tessera([
        "api",
        "call",
        "exchangeSessionTicket",
        "--body",
        &json!({ "ticket": ticket }).to_string(),
    ])
    .against(&server, &key)
    .run()
    .await
    .failed();
    assert!(replay.stderr.contains("invalid_ticket"), "{replay:#?}");

    // Rotation, offline on the same database, with the servers' secrets key.
    let mut rotate = tessera(["keys", "rotate-signing", "--database-url", &db.url]);
    if postgres {
        rotate = rotate.env("TESSERA_SECRETS_KEY", &secrets_key);
    }
    let rotated = rotate.run().await.ok();
    let kid = rotated
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("new signing key: "))
        .unwrap_or_else(|| panic!("{rotated:#?}"))
        .to_owned();
    assert!(kid.starts_with("sig_"), "{kid}");
    let fresh = client
        .users()
        .create_user_token(&ada.id, CreateUserTokenRequest::default())
        .send()
        .await
        .unwrap()
        .token;
    let header: Value = {
        use base64::Engine as _;
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(fresh.split('.').next().unwrap())
            .unwrap();
        serde_json::from_slice(&raw).unwrap()
    };
    assert_eq!(
        header["kid"],
        kid.as_str(),
        "the running server signs with the new key"
    );
    // The token minted before the rotation still works.
    let old = server.client(&token).me().get_me().send().await.unwrap();
    assert_eq!(old.user.id, ada.id);

    if !postgres {
        let path = std::path::Path::new(db.url.trim_start_matches("sqlite://"))
            .parent()
            .unwrap()
            .join("secrets.key");
        assert!(
            path.exists(),
            "the secrets key file sits next to the database"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "only the owner may read it");
        }
    }

    let log = server.log();
    // The log is real: it has the request lines of what was done above.
    assert!(
        log.contains("/sign-in")
            && log.contains("/users/{user_id}/tokens")
            && log.contains("/session/tickets/exchange"),
        "{log}"
    );
    let cookie_hash = hex(&Sha256::digest(cookie.as_bytes()));
    let signature = token.rsplit('.').next().unwrap().to_owned();
    for (what, secret) in [
        ("password", PASSWORD.to_owned()),
        ("session cookie", cookie.clone()),
        ("session cookie hash", cookie_hash),
        ("user token", token.clone()),
        ("user token signature", signature),
        ("bootstrap key", key.clone()),
        ("created key", created.key.clone()),
        ("argon2 hash", "$argon2id$".to_owned()),
        ("secrets key", secrets_key.clone()),
        ("session ticket", ticket.clone()),
        (
            "session ticket hash",
            hex(&Sha256::digest(ticket.as_bytes())),
        ),
        ("session token", session_token.clone()),
    ] {
        assert!(
            !log.contains(&secret),
            "the {what} appears in the log:\n{log}"
        );
    }
}
