//! `tessera api list|describe|call`: the operations of the embedded OpenAPI document.

use tessera_store::testing::TestDatabase;

use crate::support::{bootstrap_key, tessera, write_file, Server};

#[tokio::test]
async fn api_list_names_every_operation() {
    let run = tessera(["api", "list"]).run().await.ok();
    let line = run
        .stdout
        .lines()
        .find(|line| line.starts_with("createActor "))
        .unwrap_or_else(|| panic!("{}", run.stdout));
    let words: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(words[..3], ["createActor", "POST", "/ai/actors"], "{line}");
    assert!(words.len() > 3, "no summary: {line}");
    for op in tessera_api::ops::ALL {
        assert!(
            run.stdout
                .lines()
                .any(|line| line.split_whitespace().next() == Some(op.id)),
            "{} missing:\n{}",
            op.id,
            run.stdout
        );
    }
}

#[tokio::test]
async fn api_describe_shows_parameters_and_schemas() {
    let run = tessera(["api", "describe", "createActor"]).run().await.ok();
    assert!(
        run.stdout.starts_with("createActor: POST /ai/actors\n"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("\"subject_type\""), "{}", run.stdout);
    assert!(
        run.stdout
            .contains("Request body (application/json, required):"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("Response 201 (application/json):"),
        "{}",
        run.stdout
    );
    assert!(!run.stdout.contains("$ref"), "refs left:\n{}", run.stdout);

    let run = tessera(["api", "describe", "getActor"]).run().await.ok();
    assert!(
        run.stdout.contains("actor_id  (path, required)  string"),
        "{}",
        run.stdout
    );

    let run = tessera(["api", "describe", "lookupActor"]).run().await.ok();
    assert!(
        run.stdout.contains("subject_type  (query, required)"),
        "{}",
        run.stdout
    );
    // The nested Actor of the response is inlined.
    assert!(run.stdout.contains("\"external_key\""), "{}", run.stdout);

    let run = tessera(["api", "describe", "createActr"])
        .run()
        .await
        .failed();
    assert!(
        run.stderr.contains("unknown operationId \"createActr\""),
        "{run:#?}"
    );
    assert!(run.stderr.contains("createActor"), "{run:#?}");
}

#[tokio::test]
async fn api_call_checks_its_input_before_sending() {
    // Nothing listens on port 9: any request that were sent would fail differently.
    let offline = [
        ("TESSERA_URL", "http://127.0.0.1:9"),
        ("TESSERA_API_KEY", "tsk_x"),
    ];
    let with_env = |args: &[&str]| {
        let mut command = tessera(args);
        for (name, value) in offline {
            command = command.env(name, value);
        }
        command
    };

    let run = with_env(&["api", "call", "getActor"]).run().await.failed();
    assert!(run.stderr.contains("\"actor_id\""), "{run:#?}");
    assert!(run.stderr.contains("--param actor_id="), "{run:#?}");

    let run = with_env(&["api", "call", "createActor", "--body", "{\"subject_type\":"])
        .run()
        .await
        .failed();
    assert!(run.stderr.contains("not valid JSON"), "{run:#?}");

    let run = with_env(&["api", "call", "getActor", "--param", "actor_id"])
        .run()
        .await
        .failed();
    assert!(run.stderr.contains("KEY=VALUE"), "{run:#?}");

    let run = with_env(&["api", "call", "nope"]).run().await.failed();
    assert!(run.stderr.contains("unknown operationId"), "{run:#?}");

    let run = tessera(["api", "call", "listActors", "--url", "http://127.0.0.1:9"])
        .run()
        .await
        .failed();
    assert!(run.stderr.contains("TESSERA_API_KEY"), "{run:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_call_drives_a_running_server() {
    let db = TestDatabase::sqlite();
    let key = bootstrap_key();
    let server = Server::start(&db.url, &key).await;
    let dir = tempfile::tempdir().unwrap();

    let body = write_file(
        dir.path(),
        "actor.json",
        r#"{"subject_type": "user", "external_key": "cli/1", "display_name": "Grace"}"#,
    );
    let body_arg = format!("@{}", body.display());
    let created = tessera(["api", "call", "createActor", "--body", &body_arg])
        .against(&server, &key)
        .run()
        .await
        .ok();
    let actor = created.stdout_json();
    let actor_id = actor["id"].as_str().unwrap().to_owned();
    assert!(actor_id.starts_with("actor_"), "{actor}");
    assert_eq!(actor["subject_type"], "user");
    assert_eq!(actor["display_name"], "Grace");

    // Path parameters are filled from --param …
    let fetched = tessera([
        "api",
        "call",
        "getActor",
        "--param",
        &format!("actor_id={actor_id}"),
    ])
    .against(&server, &key)
    .run()
    .await
    .ok();
    assert_eq!(fetched.stdout_json(), actor);

    // … and the others become the (encoded) query.
    let found = tessera([
        "api",
        "call",
        "lookupActor",
        "-p",
        "subject_type=user",
        "-p",
        "external_key=cli/1",
    ])
    .against(&server, &key)
    .run()
    .await
    .ok();
    assert_eq!(found.stdout_json()["actor"], actor);

    // A body from standard input.
    let second = tessera(["api", "call", "createActor", "--body", "@-"])
        .against(&server, &key)
        .stdin(r#"{"subject_type": "service", "external_key": "batch"}"#)
        .run()
        .await
        .ok();
    assert_eq!(second.stdout_json()["external_key"], "batch");

    // An error answer: exit status 1, the JSON error on standard error.
    let missing = tessera(["api", "call", "getActor", "--param", "actor_id=actor_x"])
        .against(&server, &key)
        .run()
        .await
        .failed();
    assert!(missing.stdout.is_empty(), "{missing:#?}");
    let error: serde_json::Value = serde_json::from_str(&missing.stderr)
        .unwrap_or_else(|e| panic!("stderr is not JSON ({e}): {missing:#?}"));
    assert!(error["error"]["code"].is_string(), "{error}");

    let duplicate = tessera(["api", "call", "createActor", "--body", &body_arg])
        .against(&server, &key)
        .run()
        .await
        .failed();
    assert!(duplicate.stderr.contains("\"error\""), "{duplicate:#?}");

    // Extra headers: an `Idempotency-Key` makes a retried pool call return the first answer.
    tessera([
        "api",
        "call",
        "createAiAgent",
        "--body",
        r#"{"name": "cli-pool", "model": {"provider": "echo", "model": "echo"}, "endpoint_slug": "cli-pool"}"#,
    ])
    .against(&server, &key)
    .run()
    .await
    .ok();
    let ask = |idempotency: Option<&'static str>| {
        let mut args = vec![
            "api",
            "call",
            "askAgentPool",
            "-p",
            "endpoint_slug=cli-pool",
            "--body",
            r#"{"content": "hello"}"#,
        ];
        if let Some(header) = idempotency {
            args.extend(["-H", header]);
        }
        tessera(args).against(&server, &key)
    };
    let first = ask(Some("Idempotency-Key: cli-1"))
        .run()
        .await
        .ok()
        .stdout_json();
    let retried = ask(Some("Idempotency-Key: cli-1"))
        .run()
        .await
        .ok()
        .stdout_json();
    assert!(first["thread_id"].is_string(), "{first}");
    assert_eq!(
        first["thread_id"], retried["thread_id"],
        "{first} / {retried}"
    );
    assert_eq!(first["response_id"], retried["response_id"]);
    let fresh = ask(None).run().await.ok().stdout_json();
    assert_ne!(
        first["thread_id"], fresh["thread_id"],
        "without the key: a new session"
    );
    let refused = ask(Some("Authorization: Bearer x")).run().await.failed();
    assert!(refused.stderr.contains("--api-key"), "{refused:#?}");

    drop(server);
    db.cleanup().await;
}
