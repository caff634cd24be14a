//! Offline operator commands on the database: `migrate`, `deployments create`, `keys create`.

use tessera_store::backend_tests;
use tessera_store::testing::TestDatabase;

use crate::support::{bootstrap_key, tessera, write_file, Server};

backend_tests!(offline_commands_prepare_a_database);

async fn offline_commands_prepare_a_database(db: &TestDatabase) {
    let url = db.url.as_str();

    let run = tessera(["migrate", "--database-url", url]).run().await.ok();
    assert!(run.stdout.contains("applied to"), "{run:#?}");
    assert!(run.stdout.contains("schema version:"), "{run:#?}");
    let run = tessera(["migrate", "--database-url", url]).run().await.ok();
    assert!(run.stdout.contains("is up to date"), "{run:#?}");

    let created = tessera([
        "deployments",
        "create",
        "acme",
        "--backend-host",
        "https://agents.acme.test/",
        "--database-url",
        url,
    ])
    .run()
    .await
    .ok();
    assert!(
        created.stdout.contains("created deployment acme (dep_"),
        "{created:#?}"
    );
    assert!(
        created.stdout.contains("https://agents.acme.test\n"),
        "{created:#?}"
    );
    assert!(
        created.stdout.contains("will not be shown again"),
        "{created:#?}"
    );
    let first_key = created.secret_key();
    let deployment_id = created
        .stdout
        .split_once("(dep_")
        .and_then(|(_, rest)| rest.split_once(')'))
        .map(|(id, _)| format!("dep_{id}"))
        .unwrap();

    let again = tessera(["deployments", "create", "acme", "--database-url", url])
        .run()
        .await
        .failed();
    assert!(
        again
            .stderr
            .contains("a deployment named acme already exists"),
        "{again:#?}"
    );
    assert!(!again.stdout.contains("tsk_"), "{again:#?}");

    let invalid = tessera(["deployments", "create", "Acme Corp", "--database-url", url])
        .run()
        .await
        .failed();
    assert!(
        invalid.stderr.contains("invalid deployment name"),
        "{invalid:#?}"
    );

    // By name, with the database from a configuration file …
    let dir = tempfile::tempdir().unwrap();
    let config = write_file(
        dir.path(),
        "custom.toml",
        &format!("database_url = {:?}\n", db.url),
    );
    let by_name = tessera([
        "--config",
        config.to_str().unwrap(),
        "keys",
        "create",
        "--deployment",
        "acme",
        "--name",
        "ci",
    ])
    .run()
    .await
    .ok();
    assert!(by_name.stdout.contains("\"ci\""), "{by_name:#?}");
    let named_key = by_name.secret_key();
    // … and by id.
    let by_id = tessera([
        "keys",
        "create",
        "--deployment",
        &deployment_id,
        "--database-url",
        url,
    ])
    .run()
    .await
    .ok();
    let id_key = by_id.secret_key();
    assert_ne!(named_key, id_key);

    let missing = tessera([
        "keys",
        "create",
        "--deployment",
        "nope",
        "--database-url",
        url,
    ])
    .run()
    .await
    .failed();
    assert!(missing.stderr.contains("no deployment"), "{missing:#?}");

    // The server finds deployments, so it bootstraps nothing, and every key works.
    let server = Server::start(url, &bootstrap_key()).await;
    assert!(!server.bootstrapped(), "{:?}", server.banner);
    for key in [&first_key, &named_key, &id_key] {
        let deployment = server
            .client(key)
            .deployments()
            .current()
            .send()
            .await
            .unwrap();
        assert_eq!(deployment.name, "acme");
        assert_eq!(deployment.id, deployment_id);
        assert_eq!(deployment.backend_host, "https://agents.acme.test");
        // Not given: the configured public URL (here the default listen address).
        assert_eq!(deployment.frontend_host, "http://127.0.0.1:8080");
    }
    // The two keys created offline are in the audit log, as the operator's.
    let log = server
        .client(&first_key)
        .audit_events()
        .list_audit_events(tessera_client::models::ListAuditEventsParams {
            kind: Some("secret_key.created".into()),
            ..Default::default()
        })
        .send()
        .await
        .unwrap();
    let names: Vec<_> = log
        .data
        .iter()
        .map(|e| (e.actor_type.as_str(), e.data["name"].as_str()))
        .collect();
    assert_eq!(names, [("operator", Some("ci")), ("operator", Some("cli"))]);
}
