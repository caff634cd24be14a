//! Task boards over HTTP: board items executing on their threads (with the echo provider's
//! `/tool` command writing workspace files), schedules, archive/cancel/pause, delegation
//! routing, the workspace filesystem (download headers, path traversal, streamed size limits)
//! and tenancy.

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};
use sha2::Digest as _;
use tessera_client::models::{
    BoardItem, BoardItemStatus, CreateAgentRequest, CreateBoardItemRequest, CreateThreadRequest,
    DelegateProjectTaskRequest, ListBoardItemsParams, RunStatus, ScheduleKind, ScheduleSpec,
    ThreadPurpose, UpdateBoardItemRequest,
};
use tessera_client::{Client, ErrorCode};
use tessera_store::backend_tests;
use tessera_store::testing::TestDatabase;

use crate::helpers::{assert_api_error, echo_model, poll_until, send, spawn_app_with, TestApp};

backend_tests!(
    item_executes_its_description_and_the_run_writes_a_file,
    once_item_fires_at_its_slot_and_not_before,
    archive_pause_cancel_and_filters,
    schedule_and_item_bad_input_is_422_naming_the_field,
    delegation_routes_by_capability_tags,
    path_traversal_attempts_are_refused,
    uploads_are_limited_while_streaming,
    another_deployments_items_and_files_are_404,
    creation_and_delegation_are_idempotent_and_refuse_closed_sessions,
);

const WAIT: Duration = Duration::from_secs(15);

struct Board {
    app: TestApp,
    project: String,
    agent: String,
}

async fn board(db: &TestDatabase, max_upload: u64) -> Board {
    let app = spawn_app_with(db, |c| c.max_upload_bytes = max_upload).await;
    let actor = app.actor("u1").await;
    let agent = app.agent("worker").await;
    let project = app.project(&actor.id, &agent.id, "p").await;
    Board {
        app,
        project: project.id,
        agent: agent.id,
    }
}

fn item_request(title: &str, description: &str) -> CreateBoardItemRequest {
    CreateBoardItemRequest {
        title: title.into(),
        description: description.into(),
        schedule: None,
        assigned_thread_id: None,
        capability_tags: None,
    }
}

impl Board {
    fn client(&self) -> &Client {
        &self.app.client
    }

    async fn create(&self, req: CreateBoardItemRequest) -> BoardItem {
        self.client()
            .ai()
            .actor_projects()
            .create_board_item(&self.project, req)
            .send()
            .await
            .expect("create board item")
    }

    async fn get(&self, id: &str) -> BoardItem {
        self.client()
            .ai()
            .actor_projects()
            .get_board_item(&self.project, id)
            .send()
            .await
            .expect("get board item")
    }

    async fn wait_status(&self, id: &str, status: BoardItemStatus) -> BoardItem {
        poll_until(&format!("item {id} {status:?}"), WAIT, || async {
            let item = self.get(id).await;
            if item.status == status {
                Ok(item)
            } else {
                Err(format!("{:?}", item.status))
            }
        })
        .await
    }

    fn path(&self, item: &str, rest: &str) -> String {
        format!(
            "/ai/actor-projects/{}/board/items/{item}{rest}",
            self.project
        )
    }
}

async fn item_executes_its_description_and_the_run_writes_a_file(db: &TestDatabase) {
    let b = board(db, 25 * 1024 * 1024).await;
    let write = json!({"path": "/out/report.txt", "content": "quarterly numbers\n"});
    let item = b
        .create(item_request("Report", &format!("/tool write_file {write}")))
        .await;
    assert_eq!(item.task_key, "TASK-1");
    assert_eq!(item.assigned_agent_id, b.agent);
    let done = b.wait_status(&item.id, BoardItemStatus::Completed).await;
    let run = done.last_run.expect("the run is linked to the item");
    assert_eq!(run.status, Some(RunStatus::Completed));
    assert_eq!(run.thread_id, item.assigned_thread_id);
    let result = run.result.expect("the run's answer is linked too");
    assert!(result.contains("write_file returned"), "{result}");
    // The run is the thread's run, with the description as its input.
    let thread_run = b
        .client()
        .ai()
        .threads()
        .get_run(&item.assigned_thread_id, &run.run_id)
        .send()
        .await
        .unwrap();
    assert_eq!(thread_run.status, RunStatus::Completed);

    let projects = b.client().ai().actor_projects();
    let root = projects
        .list_board_item_filesystem(&b.project, &item.id, None)
        .send()
        .await
        .unwrap();
    assert_eq!(root.entries.len(), 1);
    assert_eq!(root.entries[0].path, "/out");
    let out = projects
        .list_board_item_filesystem(&b.project, &item.id, Some("out"))
        .send()
        .await
        .unwrap();
    assert_eq!(out.entries[0].name, "report.txt");
    let meta = projects
        .get_board_item_filesystem_file(&b.project, &item.id, "/out/report.txt")
        .send()
        .await
        .unwrap();
    assert_eq!(meta.size, 18);
    assert_eq!(meta.mime_type, "text/plain; charset=utf-8");
    let digest: String = sha2::Sha256::digest(b"quarterly numbers\n")
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(meta.sha256, digest);
    let file = projects
        .download_board_item_filesystem_file(&b.project, &item.id, "/out/report.txt")
        .send()
        .await
        .unwrap();
    assert_eq!(file.data, b"quarterly numbers\n");
    assert_eq!(file.mime_type, "text/plain; charset=utf-8");
    assert_eq!(file.file_name.as_deref(), Some("report.txt"));
    // The raw headers.
    let raw = send(b.app.request(
        Method::GET,
        &b.path(&item.id, "/filesystem/download?path=/out/report.txt"),
    ))
    .await;
    assert_eq!(raw.status, 200);
    assert_eq!(
        raw.header("content-disposition"),
        Some("attachment; filename=\"report.txt\"")
    );
    assert_eq!(raw.header("cache-control"), Some("no-store"));
    assert_eq!(raw.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(raw.header("content-length"), Some("18"));
    b.app.stop().await;
}

async fn once_item_fires_at_its_slot_and_not_before(db: &TestDatabase) {
    let b = board(db, 1024).await;
    let at = tessera_domain::Timestamp::now().plus_millis(1500);
    let item = b
        .create(CreateBoardItemRequest {
            schedule: Some(ScheduleSpec {
                schedule_kind: ScheduleKind::Once,
                next_run_at: Some(at.to_rfc3339()),
                interval_seconds: None,
                overlap: None,
            }),
            ..item_request("Later", "ping")
        })
        .await;
    assert_eq!(item.status, BoardItemStatus::Scheduled);
    assert_eq!(item.next_run_at.as_deref(), Some(at.to_rfc3339().as_str()));
    assert!(item.last_run.is_none());
    let done = b.wait_status(&item.id, BoardItemStatus::Completed).await;
    let run = done.last_run.unwrap();
    assert_eq!(run.slot_at, at.to_rfc3339());
    assert_eq!(run.result.as_deref(), Some("ping"));
    assert!(done.next_run_at.is_none(), "a ONCE item has no next slot");
    // The run started at or after its slot, never before.
    let thread_run = b
        .client()
        .ai()
        .threads()
        .get_run(&item.assigned_thread_id, &run.run_id)
        .send()
        .await
        .unwrap();
    assert!(thread_run.created_at >= at.to_rfc3339(), "{thread_run:?}");
    // Exactly one run on the item's thread.
    let messages = b
        .client()
        .ai()
        .threads()
        .list_messages(&item.assigned_thread_id, Default::default())
        .send()
        .await
        .unwrap();
    let inputs = messages.data.iter().filter(|m| m.content == "ping").count();
    assert_eq!(inputs, 2, "one user message and its echo: {messages:?}");
    b.app.stop().await;
}

async fn archive_pause_cancel_and_filters(db: &TestDatabase) {
    let b = board(db, 1024).await;
    let projects = b.client().ai().actor_projects();
    let hourly = || ScheduleSpec {
        schedule_kind: ScheduleKind::Interval,
        next_run_at: Some("2999-01-01T00:00:00Z".into()),
        interval_seconds: Some(3600),
        overlap: None,
    };
    let a = b
        .create(CreateBoardItemRequest {
            schedule: Some(hourly()),
            ..item_request("a", "x")
        })
        .await;
    let c = b
        .create(CreateBoardItemRequest {
            schedule: Some(hourly()),
            ..item_request("c", "x")
        })
        .await;
    assert_eq!(c.task_key, "TASK-2");
    let paused = projects
        .update_board_item(
            &b.project,
            &a.id,
            UpdateBoardItemRequest {
                paused: Some(true),
                title: Some("renamed".into()),
                ..Default::default()
            },
        )
        .send()
        .await
        .unwrap();
    assert_eq!(paused.status, BoardItemStatus::Paused);
    assert_eq!(paused.title, "renamed");
    let listed = projects
        .list_board_items(
            &b.project,
            ListBoardItemsParams {
                status: Some(BoardItemStatus::Paused),
                ..Default::default()
            },
        )
        .send()
        .await
        .unwrap();
    assert_eq!(listed.data.len(), 1);
    assert_eq!(listed.data[0].id, a.id);
    let archived = projects
        .archive_board_item(&b.project, &a.id)
        .send()
        .await
        .unwrap();
    assert_eq!(archived.status, BoardItemStatus::Archived);
    assert!(
        archived.next_run_at.is_none(),
        "archiving stops the schedule"
    );
    let visible = projects
        .list_board_items(&b.project, Default::default())
        .send()
        .await
        .unwrap();
    assert_eq!(
        visible.data.len(),
        1,
        "archived items are hidden by default"
    );
    let only_archived = projects
        .list_board_items(
            &b.project,
            ListBoardItemsParams {
                archived: Some(true),
                ..Default::default()
            },
        )
        .send()
        .await
        .unwrap();
    assert_eq!(only_archived.data[0].id, a.id);
    assert_api_error(
        projects
            .update_board_item(&b.project, &a.id, Default::default())
            .send()
            .await,
        409,
        ErrorCode::BoardItemClosed,
        None,
    );
    let cancelled = projects
        .cancel_board_item(&b.project, &c.id)
        .send()
        .await
        .unwrap();
    assert_eq!(cancelled.status, BoardItemStatus::Cancelled);
    assert!(cancelled.next_run_at.is_none());
    // Removing a schedule with `null` leaves no slot.
    let d = b
        .create(CreateBoardItemRequest {
            schedule: Some(hourly()),
            ..item_request("d", "x")
        })
        .await;
    let r = send(
        b.app
            .request(Method::PATCH, &b.path(&d.id, ""))
            .json(&json!({"schedule": null})),
    )
    .await;
    assert_eq!(r.ok(200)["next_run_at"], Value::Null);
    assert_eq!(r.body["schedule"], Value::Null);
    b.app.stop().await;
}

async fn schedule_and_item_bad_input_is_422_naming_the_field(db: &TestDatabase) {
    let b = board(db, 1024).await;
    let items = format!("/ai/actor-projects/{}/board/items", b.project);
    let post = |body: Value| {
        let request = b.app.request(Method::POST, &items).json(&body);
        async move { send(request).await }
    };
    let cases = [
        (
            json!({"title": "t", "description": "d", "schedule": {"schedule_kind": "INTERVAL", "interval_seconds": 59}}),
            "schedule.interval_seconds",
        ),
        (
            json!({"title": "t", "description": "d", "schedule": {"schedule_kind": "ONCE"}}),
            "schedule.next_run_at",
        ),
        (
            json!({"title": "t", "description": "d", "schedule": {"schedule_kind": "ONCE", "next_run_at": "tomorrow"}}),
            "schedule.next_run_at",
        ),
        (
            json!({"title": "t", "description": "d", "schedule": {"schedule_kind": "ONCE", "next_run_at": "2030-01-01T00:00:00Z", "interval_seconds": 60}}),
            "schedule.interval_seconds",
        ),
        (json!({"title": "", "description": "d"}), "title"),
        (json!({"title": "t", "description": " "}), "description"),
        (
            json!({"title": "t", "description": "d", "capability_tags": ["Bad Tag"]}),
            "capability_tags[0]",
        ),
    ];
    for (body, field) in cases {
        post(body.clone())
            .await
            .assert_error(422, "validation_failed", Some(field));
    }
    // Unknown fields and bad enums name the field too.
    let r =
        post(json!({"title": "t", "description": "d", "schedule": {"schedule_kind": "HOURLY"}}))
            .await;
    assert!(r.status == 400 || r.status == 422, "{}", r.text);
    assert_eq!(r.body["error"]["field"], "schedule.schedule_kind");
    let r = post(json!({"title": "t", "description": "d", "cron": "* * * * *"})).await;
    assert!(r.status == 400 || r.status == 422, "{}", r.text);
    assert_eq!(r.body["error"]["field"], "cron");
    // A thread id that cannot exist is not found, naming the field.
    post(json!({"title": "t", "description": "d", "assigned_thread_id": "nope"}))
        .await
        .assert_error(404, "thread_not_found", Some("assigned_thread_id"));
    let r = send(
        b.app
            .request(Method::GET, &format!("{items}?status=sleeping")),
    )
    .await;
    r.assert_error(400, "invalid_parameter", Some("status"));
    // Unknown items are 404.
    send(b.app.request(
        Method::GET,
        &format!("{items}/item_01jd0000000000000000000000"),
    ))
    .await
    .assert_error(404, "board_item_not_found", None);
    send(b.app.request(Method::GET, &format!("{items}/nonsense")))
        .await
        .assert_error(404, "board_item_not_found", None);
    b.app.stop().await;
}

async fn delegation_routes_by_capability_tags(db: &TestDatabase) {
    let app = spawn_app_with(db, |_| {}).await;
    let agents = app.client.ai().agents();
    let agent = |name: &str, tags: &[&str], subs: Vec<String>| CreateAgentRequest {
        name: name.into(),
        model: Some(echo_model()),
        capability_tags: Some(tags.iter().map(|t| t.to_string()).collect()),
        sub_agent_ids: Some(subs),
        ..Default::default()
    };
    let validator = agents
        .create_agent(agent("validator", &["data-validation", "csv"], vec![]))
        .send()
        .await
        .unwrap();
    let lead = agents
        .create_agent(agent("lead", &["general"], vec![validator.id.clone()]))
        .send()
        .await
        .unwrap();
    let actor = app.actor("u1").await;
    let project = app.project(&actor.id, &lead.id, "p").await;
    let other_project = app.project(&actor.id, &lead.id, "q").await;
    let threads = app.client.ai().threads();
    let lane = |title: &str, purpose: ThreadPurpose| CreateThreadRequest {
        title: title.into(),
        purpose: Some(purpose),
        context_group: Some("ingest".into()),
        ..Default::default()
    };
    let exec = threads
        .create_thread(&project.id, lane("lane", ThreadPurpose::Execution))
        .send()
        .await
        .unwrap();
    let chat = threads
        .create_thread(&project.id, lane("chat", ThreadPurpose::Conversation))
        .send()
        .await
        .unwrap();
    let foreign = threads
        .create_thread(
            &other_project.id,
            lane("elsewhere", ThreadPurpose::Execution),
        )
        .send()
        .await
        .unwrap();
    let projects = app.client.ai().actor_projects();
    let delegate = |target: &str, tags: Option<Vec<&str>>| {
        projects
            .delegate_task(
                &project.id,
                DelegateProjectTaskRequest {
                    target_lane_thread_id: target.into(),
                    title: "Run the data-validation lane".into(),
                    description: Some("Validate the rows.".into()),
                    capability_tags: tags.map(|t| t.into_iter().map(String::from).collect()),
                },
            )
            .send()
    };
    // A tag only the sub-agent has: the sub-agent is assigned, on a thread of its own that
    // inherits the lane's context.
    let routed = delegate(&exec.id, Some(vec!["data-validation"]))
        .await
        .unwrap();
    assert_eq!(routed.assigned_agent_id, validator.id);
    assert_eq!(routed.task_key, "TASK-1");
    let item = projects
        .get_board_item(&project.id, &routed.board_item_id)
        .send()
        .await
        .unwrap();
    assert_ne!(item.assigned_thread_id, exec.id);
    let sub_thread = threads
        .get_thread(&item.assigned_thread_id)
        .send()
        .await
        .unwrap();
    assert_eq!(sub_thread.agent_id, validator.id);
    assert_eq!(sub_thread.context_group.as_deref(), Some("ingest"));
    assert_eq!(sub_thread.purpose, ThreadPurpose::Execution);
    // It starts executing at once, with the chosen agent.
    let done = poll_until("the delegated item completes", WAIT, || async {
        let item = projects
            .get_board_item(&project.id, &routed.board_item_id)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        match item.status {
            BoardItemStatus::Completed => Ok(item),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert_eq!(
        done.last_run.unwrap().result.as_deref(),
        Some("Validate the rows.")
    );
    // No tags: the lane's own agent, on the lane itself.
    let any = delegate(&exec.id, None).await.unwrap();
    assert_eq!(any.assigned_agent_id, lead.id);
    let item = projects
        .get_board_item(&project.id, &any.board_item_id)
        .send()
        .await
        .unwrap();
    assert_eq!(item.assigned_thread_id, exec.id);
    // Tags split between the agents match none of them.
    assert_api_error(
        delegate(&exec.id, Some(vec!["general", "csv"])).await,
        409,
        ErrorCode::NoCapableAgent,
        Some("capability_tags"),
    );
    assert_api_error(
        delegate(&exec.id, Some(vec!["astronomy"])).await,
        409,
        ErrorCode::NoCapableAgent,
        None,
    );
    // A conversation thread is not a lane; another project's thread is not found.
    assert_api_error(
        delegate(&chat.id, None).await,
        422,
        ErrorCode::ValidationFailed,
        Some("target_lane_thread_id"),
    );
    assert_api_error(
        delegate(&foreign.id, None).await,
        404,
        ErrorCode::ThreadNotFound,
        Some("target_lane_thread_id"),
    );
    assert_api_error(
        delegate("thread_nope", None).await,
        404,
        ErrorCode::ThreadNotFound,
        Some("target_lane_thread_id"),
    );
    app.stop().await;
}

async fn path_traversal_attempts_are_refused(db: &TestDatabase) {
    let b = board(db, 1024).await;
    let item = b
        .create(CreateBoardItemRequest {
            schedule: Some(ScheduleSpec {
                schedule_kind: ScheduleKind::Once,
                next_run_at: Some("2999-01-01T00:00:00Z".into()),
                interval_seconds: None,
                overlap: None,
            }),
            ..item_request("files", "x")
        })
        .await;
    let long = "a/".repeat(600);
    let attempts = [
        "..%2Fsecret",
        "%2F..%2F..%2Fetc%2Fpasswd",
        "out%2F..%2F..%2Fx",
        "..",
        "a%00b",
        "C%3A%5CWindows%5Cwin.ini",
        "%5C%5Cserver%5Cshare",
        "a%0Ab",
        long.as_str(),
        "%2F",
    ];
    for raw in attempts {
        for (method, rest) in [
            (Method::PUT, "/filesystem/file"),
            (Method::GET, "/filesystem/file"),
            (Method::GET, "/filesystem/download"),
        ] {
            let r = send(
                b.app
                    .request(
                        method.clone(),
                        &b.path(&item.id, &format!("{rest}?path={raw}")),
                    )
                    .body("pwned"),
            )
            .await;
            r.assert_error(422, "validation_failed", Some("path"));
        }
    }
    // `..` in a directory listing too.
    send(
        b.app
            .request(Method::GET, &b.path(&item.id, "/filesystem?path=..%2F..")),
    )
    .await
    .assert_error(422, "validation_failed", Some("path"));
    // A missing path parameter is a 400 naming it.
    send(
        b.app
            .request(Method::GET, &b.path(&item.id, "/filesystem/file")),
    )
    .await
    .assert_error(400, "invalid_parameter", Some("path"));
    // Normalization: `./a//b/` is `/a/b`.
    let r = send(
        b.app
            .request(
                Method::PUT,
                &b.path(&item.id, "/filesystem/file?path=.%2Fa%2F%2Fb%2F"),
            )
            .header("content-type", "text/csv")
            .body("x,y\n"),
    )
    .await;
    assert_eq!(r.ok(200)["path"], "/a/b");
    assert_eq!(r.body["mime_type"], "text/csv");
    // Nothing was written anywhere else.
    let root = b
        .client()
        .ai()
        .actor_projects()
        .list_board_item_filesystem(&b.project, &item.id, None)
        .send()
        .await
        .unwrap();
    assert_eq!(root.entries.len(), 1);
    assert_eq!(root.entries[0].path, "/a");
    // `/a` is a directory and `/a/b` a file: neither can become the other.
    for (path, message) in [("%2Fa", "a directory"), ("%2Fa%2Fb%2Fc", "parent")] {
        let r = send(
            b.app
                .request(
                    Method::PUT,
                    &b.path(&item.id, &format!("/filesystem/file?path={path}")),
                )
                .body("x"),
        )
        .await;
        r.assert_error(409, "path_conflict", Some("path"));
        assert!(r.text.contains(message), "{}", r.text);
    }
    let root = b
        .client()
        .ai()
        .actor_projects()
        .list_board_item_filesystem(&b.project, &item.id, None)
        .send()
        .await
        .unwrap();
    assert_eq!(root.entries.len(), 1, "nothing was written");
    // A path that does not decode to UTF-8 is refused, not stored with U+FFFD in it.
    send(
        b.app
            .request(
                Method::PUT,
                &b.path(&item.id, "/filesystem/file?path=%2F%FF"),
            )
            .body("x"),
    )
    .await
    .assert_error(400, "invalid_parameter", Some("path"));
    b.app.stop().await;
}

async fn uploads_are_limited_while_streaming(db: &TestDatabase) {
    let b = board(db, 1000).await;
    let item = b.create(item_request("files", "hello")).await;
    let url = b.path(&item.id, "/filesystem/file?path=big.bin");
    // A declared length over the limit is refused before the body is read.
    send(b.app.request(Method::PUT, &url).body(vec![0u8; 1001]))
        .await
        .assert_error(413, "payload_too_large", None);
    // A chunked body (no length) is cut off once it passes the limit.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = (0..8).map(|_| Ok(vec![7u8; 300])).collect();
    let body = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
    send(b.app.request(Method::PUT, &url).body(body))
        .await
        .assert_error(413, "payload_too_large", None);
    // Exactly at the limit is fine, and replaces nothing that failed.
    let r = send(b.app.request(Method::PUT, &url).body(vec![1u8; 1000])).await;
    assert_eq!(r.ok(200)["size"], 1000);
    assert_eq!(r.body["mime_type"], "application/octet-stream");
    let projects = b.client().ai().actor_projects();
    let file = projects
        .download_board_item_filesystem_file(&b.project, &item.id, "/big.bin")
        .send()
        .await
        .unwrap();
    assert_eq!(file.data, vec![1u8; 1000]);
    // A bad Content-Type is refused naming the header.
    send(
        b.app
            .request(Method::PUT, &url)
            .header("content-type", "nonsense")
            .body("x"),
    )
    .await
    .assert_error(422, "validation_failed", Some("Content-Type"));
    // Missing files.
    assert_api_error(
        projects
            .get_board_item_filesystem_file(&b.project, &item.id, "/nope.txt")
            .send()
            .await,
        404,
        ErrorCode::FileNotFound,
        Some("path"),
    );
    b.app.stop().await;
}

async fn another_deployments_items_and_files_are_404(db: &TestDatabase) {
    let b = board(db, 1024).await;
    let item = b.create(item_request("mine", "secret")).await;
    let r = send(
        b.app
            .request(
                Method::PUT,
                &b.path(&item.id, "/filesystem/file?path=a.txt"),
            )
            .body("secret"),
    )
    .await;
    r.ok(200);
    let other = b.app.create_deployment("other").await;
    let projects = other.client.ai().actor_projects();
    let nf = |r: Result<(), tessera_client::Error>, code| assert_api_error(r, 404, code, None);
    nf(
        projects
            .get_board_item(&b.project, &item.id)
            .send()
            .await
            .map(|_| ()),
        ErrorCode::BoardItemNotFound,
    );
    nf(
        projects
            .list_board_items(&b.project, Default::default())
            .send()
            .await
            .map(|_| ()),
        ErrorCode::ProjectNotFound,
    );
    nf(
        projects
            .update_board_item(&b.project, &item.id, Default::default())
            .send()
            .await
            .map(|_| ()),
        ErrorCode::BoardItemNotFound,
    );
    nf(
        projects
            .archive_board_item(&b.project, &item.id)
            .send()
            .await
            .map(|_| ()),
        ErrorCode::BoardItemNotFound,
    );
    nf(
        projects
            .cancel_board_item(&b.project, &item.id)
            .send()
            .await
            .map(|_| ()),
        ErrorCode::BoardItemNotFound,
    );
    nf(
        projects
            .create_board_item(&b.project, item_request("x", "y"))
            .send()
            .await
            .map(|_| ()),
        ErrorCode::ProjectNotFound,
    );
    nf(
        projects
            .list_board_item_filesystem(&b.project, &item.id, None)
            .send()
            .await
            .map(|_| ()),
        ErrorCode::BoardItemNotFound,
    );
    nf(
        projects
            .get_board_item_filesystem_file(&b.project, &item.id, "/a.txt")
            .send()
            .await
            .map(|_| ()),
        ErrorCode::BoardItemNotFound,
    );
    nf(
        projects
            .download_board_item_filesystem_file(&b.project, &item.id, "/a.txt")
            .send()
            .await
            .map(|_| ()),
        ErrorCode::BoardItemNotFound,
    );
    nf(
        projects
            .upload_board_item_filesystem_file(
                &b.project,
                &item.id,
                "/a.txt",
                b"x".to_vec(),
                "text/plain",
            )
            .send()
            .await
            .map(|_| ()),
        ErrorCode::BoardItemNotFound,
    );
    // The owner's file is untouched.
    let file = b
        .client()
        .ai()
        .actor_projects()
        .download_board_item_filesystem_file(&b.project, &item.id, "/a.txt")
        .send()
        .await
        .unwrap();
    assert_eq!(file.data, b"secret");
    b.app.stop().await;
}

async fn creation_and_delegation_are_idempotent_and_refuse_closed_sessions(db: &TestDatabase) {
    let b = board(db, 1024).await;
    let projects = b.client().ai().actor_projects();
    let later = ScheduleSpec {
        schedule_kind: ScheduleKind::Once,
        next_run_at: Some("2099-01-01T00:00:00Z".into()),
        interval_seconds: None,
        overlap: None,
    };
    let req = CreateBoardItemRequest {
        schedule: Some(later),
        ..item_request("report", "Write the report.")
    };
    let create = |key: &str, req: CreateBoardItemRequest| {
        projects
            .create_board_item(&b.project, req)
            .idempotency_key(key)
            .send()
    };
    let first = create("item-1", req.clone()).await.unwrap();
    let retry = create("item-1", req.clone()).await.unwrap();
    assert_eq!(retry.id, first.id);
    assert_eq!(retry.task_key, first.task_key);
    let listed = projects
        .list_board_items(&b.project, ListBoardItemsParams::default())
        .send()
        .await
        .unwrap();
    assert_eq!(listed.data.len(), 1, "nothing new was created");
    let reused = create("item-1", item_request("other", "Something else.")).await;
    assert_api_error(reused, 409, ErrorCode::IdempotencyKeyReused, None);
    // The same key on another project is another key.
    let actor = b.app.actor("u2").await;
    let elsewhere = b.app.project(&actor.id, &b.agent, "q").await;
    let there = projects
        .create_board_item(&elsewhere.id, req.clone())
        .idempotency_key("item-1")
        .send()
        .await
        .unwrap();
    assert_ne!(there.id, first.id);

    // Delegation: a retry answers the same, and delegates nothing new.
    let lane = b
        .client()
        .ai()
        .threads()
        .create_thread(
            &b.project,
            CreateThreadRequest {
                title: "lane".into(),
                purpose: Some(ThreadPurpose::Execution),
                ..Default::default()
            },
        )
        .send()
        .await
        .unwrap();
    let delegation = DelegateProjectTaskRequest {
        target_lane_thread_id: lane.id.clone(),
        title: "Validate".into(),
        description: Some("Validate the rows.".into()),
        capability_tags: None,
    };
    let delegate = |key: &str, req: DelegateProjectTaskRequest| {
        projects
            .delegate_task(&b.project, req)
            .idempotency_key(key)
            .send()
    };
    let d1 = delegate("d-1", delegation.clone()).await.unwrap();
    let d2 = delegate("d-1", delegation.clone()).await.unwrap();
    assert_eq!(d1, d2);
    let listed = projects
        .list_board_items(&b.project, ListBoardItemsParams::default())
        .send()
        .await
        .unwrap();
    assert_eq!(listed.data.len(), 2);
    let bad_key = send(
        b.app
            .request(
                Method::POST,
                &format!("/ai/actor-projects/{}/board/items", b.project),
            )
            .header("Idempotency-Key", "")
            .json(&req),
    )
    .await;
    bad_key.assert_error(400, "invalid_parameter", Some("Idempotency-Key"));

    // A closed session takes no item, assigned or delegated.
    b.client().sessions().close(&lane.id).send().await.unwrap();
    let assigned = projects
        .create_board_item(
            &b.project,
            CreateBoardItemRequest {
                assigned_thread_id: Some(lane.id.clone()),
                ..item_request("late", "Too late.")
            },
        )
        .send()
        .await;
    assert_api_error(assigned, 409, ErrorCode::SessionClosed, None);
    let delegated = delegate("d-2", delegation.clone()).await;
    assert_api_error(delegated, 409, ErrorCode::SessionClosed, None);
    // The refused delegation kept no key: its retry is refused the same way, not replayed.
    let again = delegate("d-2", delegation.clone()).await;
    assert_api_error(again, 409, ErrorCode::SessionClosed, None);
    let listed = projects
        .list_board_items(&b.project, ListBoardItemsParams::default())
        .send()
        .await
        .unwrap();
    assert_eq!(listed.data.len(), 2);
    b.app.stop().await;
}
