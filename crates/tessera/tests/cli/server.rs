//! The server process: durability across a crash, graceful shutdown, `deployments current`,
//! the credentials the first start prints.

use std::time::Duration;

use tessera_client::models::{ConsoleSignInRequest, CreateActorRequest, LookupActorParams};
use tessera_client::Client;
use tessera_store::backend_tests;
use tessera_store::testing::TestDatabase;

use crate::support::{bootstrap_key, tessera, Server};

backend_tests!(
    acknowledged_writes_survive_sigkill,
    stops_gracefully_on_sigterm
);

async fn acknowledged_writes_survive_sigkill(db: &TestDatabase) {
    let key = bootstrap_key();
    let mut server = Server::start(&db.url, &key).await;
    assert!(server.bootstrapped(), "{:?}", server.banner);
    let backend = format!("database:    {} ", db.backend().as_str());
    assert!(
        server.banner.iter().any(|line| line.contains(&backend)),
        "{:?}",
        server.banner
    );
    assert!(
        server
            .banner
            .iter()
            .any(|line| line.contains("TESSERA_BOOTSTRAP_SECRET_KEY")),
        "{:?}",
        server.banner
    );
    let actor = server
        .client(&key)
        .ai()
        .actors()
        .create_actor(CreateActorRequest {
            subject_type: "user".into(),
            external_key: "durable-1".into(),
            display_name: Some("Ada".into()),
            metadata: Some(serde_json::json!({"plan": "pro"})),
        })
        .send()
        .await
        .unwrap();

    // The answer arrived, so the actor must survive a crash right after it.
    server.kill_hard();
    let server = Server::start(&db.url, &bootstrap_key()).await;
    assert!(
        !server.bootstrapped(),
        "bootstrapped twice: {:?}",
        server.banner
    );

    let client = server.client(&key);
    let fetched = client
        .ai()
        .actors()
        .get_actor(&actor.id)
        .send()
        .await
        .unwrap();
    assert_eq!(fetched, actor);
    let found = client
        .ai()
        .actors()
        .lookup_actor(LookupActorParams {
            subject_type: "user".into(),
            external_key: "durable-1".into(),
        })
        .send()
        .await
        .unwrap();
    assert_eq!(found.actor, Some(actor));
}

async fn stops_gracefully_on_sigterm(db: &TestDatabase) {
    let key = bootstrap_key();
    let mut server = Server::start(&db.url, &key).await;
    server
        .client(&key)
        .deployments()
        .current()
        .send()
        .await
        .unwrap();

    let status = server.terminate(Duration::from_secs(10));
    let log = server.log();
    let status = status.unwrap_or_else(|| panic!("still running 10 s after SIGTERM; log:\n{log}"));
    assert!(status.success(), "exit status {status}; log:\n{log}");
    // JSON logs, as configured through TESSERA_LOG_FORMAT, ending with the shutdown.
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|line| {
            serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {line:?}"))
        })
        .collect();
    assert!(
        lines
            .iter()
            .any(|line| line["fields"]["message"] == "stopped"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployments_current_prints_the_deployment() {
    let db = TestDatabase::sqlite();
    let key = bootstrap_key();
    let server = Server::start(&db.url, &key).await;
    assert!(server.banner.iter().any(|l| l.ends_with("/openapi.json")));
    assert!(server.banner.iter().any(|l| l.ends_with("/healthz")));
    assert!(server.banner.iter().any(|l| l.contains("sqlite")));

    let run = tessera(["deployments", "current"])
        .against(&server, &key)
        .run()
        .await
        .ok();
    let deployment = run.stdout_json();
    assert_eq!(deployment["name"], "default");
    assert!(deployment["id"].as_str().unwrap().starts_with("dep_"));
    assert_eq!(deployment["backend_host"], server.url.as_str());

    // Flags override the environment.
    let run = tessera([
        "deployments",
        "current",
        "--url",
        &server.url,
        "--api-key",
        &key,
    ])
    .run()
    .await
    .ok();
    assert_eq!(run.stdout_json()["name"], "default");

    let run = tessera(["deployments", "current", "--url", &server.url])
        .run()
        .await
        .failed();
    assert!(run.stderr.contains("TESSERA_API_KEY"), "{run:#?}");

    let wrong = bootstrap_key();
    let run = tessera(["deployments", "current"])
        .against(&server, &wrong)
        .run()
        .await
        .failed();
    assert!(run.stderr.contains("401"), "{run:#?}");
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_banner_shows_a_generated_key_once() {
    let db = TestDatabase::sqlite();
    let server = Server::start_generating_key(&db.url).await;
    assert!(server.bootstrapped(), "{:?}", server.banner);
    let key = server
        .banner
        .iter()
        .find_map(|l| l.trim().strip_prefix("secret key:"))
        .map(str::trim)
        .unwrap_or_else(|| panic!("{:?}", server.banner));
    assert!(key.starts_with("tsk_") && key.len() == 56, "{key}");
    assert!(
        server
            .banner
            .iter()
            .any(|l| l.contains("will not be shown again")),
        "{:?}",
        server.banner
    );
    // The printed key is the deployment's key, and it is not in the log.
    let deployment = server
        .client(key)
        .deployments()
        .current()
        .send()
        .await
        .unwrap();
    assert_eq!(deployment.name, "default");
    assert!(!server.log().contains(key));
    drop(server);
    db.cleanup().await;
}

/// Without `TESSERA_BOOTSTRAP_ADMIN_PASSWORD`, the first start creates console admin `admin`
/// with a generated password, printed once: it signs in to the console, is not in the log, and a
/// later start prints no password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_banner_shows_a_generated_admin_password_once() {
    let db = TestDatabase::sqlite();
    let key = bootstrap_key();
    let server = Server::start(&db.url, &key).await;
    let (username, password) = server
        .banner
        .iter()
        .find_map(|l| l.trim().strip_prefix("console admin:"))
        .and_then(|rest| rest.trim().split_once(" / "))
        .map(|(user, password)| (user.to_owned(), password.to_owned()))
        .unwrap_or_else(|| panic!("{:?}", server.banner));
    assert_eq!(username, "admin");
    assert!(
        password.starts_with("tap_") && password.len() > 40,
        "{password}"
    );
    assert!(!server.log().contains(&password));
    let session = Client::unauthenticated(server.url.clone())
        .console()
        .sign_in(ConsoleSignInRequest {
            username: Some(username),
            password: password.clone(),
        })
        .send()
        .await
        .unwrap();
    assert!(session.token.starts_with("tca_"), "{session:?}");
    assert_eq!(session.admin.username, "admin");
    drop(server);

    let again = Server::start(&db.url, &key).await;
    assert!(
        !again.banner.iter().any(|l| l.contains("console admin")),
        "{:?}",
        again.banner
    );
    drop(again);
    db.cleanup().await;
}
