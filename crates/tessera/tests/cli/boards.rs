//! Task boards with real `tessera serve` processes: every slot fires exactly once with two
//! nodes on one PostgreSQL database, a slot missed while the only node was down fires once
//! after the restart, and a 50 MiB file goes up and down through a server whose memory does
//! not grow by the file's size.

use std::collections::HashMap;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tessera_client::models::{
    BoardItem, BoardItemStatus, CreateActorProjectRequest, CreateActorRequest, CreateAgentRequest,
    CreateBoardItemRequest, ListMessagesParams, MessageRole, ModelConfig, ScheduleKind,
    ScheduleSpec,
};
use tessera_client::Client;
use tessera_domain::Timestamp;
use tessera_store::backend_tests;
use tessera_store::testing::TestDatabase;
use tokio::time::Instant;

use crate::support::{bootstrap_key, tessera, write_file, Server};

backend_tests!(
    a_slot_missed_while_down_fires_once_after_restart,
    fifty_mib_round_trip_in_constant_memory
);

async fn poll_until<T, F, Fut>(what: &str, within: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + within;
    loop {
        match probe().await {
            Ok(value) => return value,
            Err(last) => {
                assert!(
                    Instant::now() < deadline,
                    "timed out after {within:?} waiting for {what}; last seen: {last}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// An echo agent's project; returns its id.
async fn project(client: &Client) -> String {
    let ai = client.ai();
    let actor = ai
        .actors()
        .create_actor(CreateActorRequest {
            subject_type: "user".into(),
            external_key: "u1".into(),
            display_name: None,
            metadata: None,
        })
        .send()
        .await
        .unwrap();
    let agent = ai
        .agents()
        .create_agent(CreateAgentRequest {
            name: "worker".into(),
            model: Some(ModelConfig {
                provider: "echo".into(),
                model: "echo".into(),
                temperature: None,
                max_output_tokens: None,
            }),
            ..Default::default()
        })
        .send()
        .await
        .unwrap();
    ai.actor_projects()
        .create_actor_project(
            &actor.id,
            CreateActorProjectRequest {
                agent_id: agent.id,
                name: "p".into(),
            },
        )
        .send()
        .await
        .unwrap()
        .id
}

fn scheduled(
    title: &str,
    kind: ScheduleKind,
    at: Timestamp,
    interval: Option<u32>,
) -> CreateBoardItemRequest {
    CreateBoardItemRequest {
        title: title.into(),
        description: format!("run {title}"),
        schedule: Some(ScheduleSpec {
            schedule_kind: kind,
            next_run_at: Some(at.to_rfc3339()),
            interval_seconds: interval,
            overlap: None,
        }),
        assigned_thread_id: None,
        capability_tags: None,
    }
}

/// How many times the item's description was sent to its thread (one per fired slot).
async fn runs_on_thread(client: &Client, item: &BoardItem) -> usize {
    let messages = client
        .ai()
        .threads()
        .list_messages(
            &item.assigned_thread_id,
            ListMessagesParams {
                limit: Some(100),
                ..Default::default()
            },
        )
        .send()
        .await
        .unwrap();
    messages
        .data
        .iter()
        .filter(|m| m.role == MessageRole::User && m.content == item.description)
        .count()
}

async fn wait_completed(client: &Client, project: &str, id: &str) -> BoardItem {
    poll_until(
        &format!("item {id} to complete"),
        Duration::from_secs(60),
        || async {
            let item = client
                .ai()
                .actor_projects()
                .get_board_item(project, id)
                .send()
                .await
                .map_err(|e| e.to_string())?;
            let done = item
                .last_run
                .as_ref()
                .is_some_and(|r| r.status == Some(tessera_client::models::RunStatus::Completed));
            if done {
                Ok(item)
            } else {
                Err(format!("{:?} {:?}", item.status, item.last_run))
            }
        },
    )
    .await
}

/// Two nodes, one PostgreSQL database: items created on either node, all due in the same
/// second, plus interval items whose missed slots are due at once; every slot fires exactly
/// once. Then one node is SIGKILLed and the other fires what comes due next, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_fire_every_slot_exactly_once() {
    let Some(db) = TestDatabase::postgres().await else {
        eprintln!(
            "skipped: TESSERA_TEST_POSTGRES_URL is not set; the multi-node test needs PostgreSQL"
        );
        return;
    };
    let key = bootstrap_key();
    let mut a = Server::start(&db.url, &key).await;
    let b = Server::start(&db.url, &key).await;
    let (ca, cb) = (a.client(&key), b.client(&key));
    let project = project(&ca).await;
    let due = Timestamp::now().plus_millis(3000);
    // Interval items whose first slot was 9.5 minutes ago: the latest missed grid point (30 s
    // ago) fires once; the next one is 30 s away, after the checks below.
    let interval_first = Timestamp::now().plus_millis(-570_000);
    let mut items = Vec::new();
    for i in 0..40 {
        let client = if i % 2 == 0 { &ca } else { &cb };
        let req = if i % 4 == 3 {
            scheduled(
                &format!("tick{i}"),
                ScheduleKind::Interval,
                interval_first,
                Some(60),
            )
        } else {
            scheduled(&format!("once{i}"), ScheduleKind::Once, due, None)
        };
        items.push(
            client
                .ai()
                .actor_projects()
                .create_board_item(&project, req)
                .send()
                .await
                .unwrap(),
        );
    }
    let mut keys: Vec<&str> = items.iter().map(|i| i.task_key.as_str()).collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), items.len(), "task keys are unique across nodes");
    for item in &items {
        let done = wait_completed(&cb, &project, &item.id).await;
        let slot = done.last_run.as_ref().unwrap().slot_at.clone();
        if done.schedule.as_ref().unwrap().schedule_kind == ScheduleKind::Once {
            assert_eq!(slot, due.to_rfc3339());
        } else {
            assert_eq!(
                slot,
                interval_first.plus_millis(540_000).to_rfc3339(),
                "the latest missed slot fired"
            );
        }
    }
    // Let any duplicate show up before counting.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for item in &items {
        assert_eq!(
            runs_on_thread(&ca, item).await,
            1,
            "{} fired once",
            item.task_key
        );
    }
    // Which node recorded each slot (both may have; each slot exactly once).
    let store = tessera_store::open(&db.url, &Default::default())
        .await
        .unwrap();
    let dep = ca.deployments().current().send().await.unwrap();
    let scope =
        tessera_domain::Scope::deployment(tessera_domain::DeploymentId::parse(&dep.id).unwrap());
    let mut by_node: HashMap<String, usize> = HashMap::new();
    for item in &items {
        let id = tessera_domain::BoardItemId::parse(&item.id).unwrap();
        let slots = store.list_slots(&scope, &id).await.unwrap();
        assert_eq!(slots.len(), 1, "{}: {slots:?}", item.task_key);
        *by_node.entry(slots[0].node.clone()).or_default() += 1;
    }
    eprintln!("slots recorded per node: {by_node:?}");

    // Node A dies; what comes due next is fired by B alone, once.
    a.kill_hard();
    let due2 = Timestamp::now().plus_millis(1500);
    let mut later = Vec::new();
    for i in 0..10 {
        later.push(
            cb.ai()
                .actor_projects()
                .create_board_item(
                    &project,
                    scheduled(&format!("after{i}"), ScheduleKind::Once, due2, None),
                )
                .send()
                .await
                .unwrap(),
        );
    }
    for item in &later {
        wait_completed(&cb, &project, &item.id).await;
    }
    for item in &later {
        assert_eq!(runs_on_thread(&cb, item).await, 1);
        let id = tessera_domain::BoardItemId::parse(&item.id).unwrap();
        assert_eq!(store.list_slots(&scope, &id).await.unwrap().len(), 1);
    }
    store.close().await;
    drop(b);
    db.cleanup().await;
}

async fn a_slot_missed_while_down_fires_once_after_restart(db: &TestDatabase) {
    let key = bootstrap_key();
    let mut server = Server::start(&db.url, &key).await;
    let client = server.client(&key);
    let project = project(&client).await;
    let first = Timestamp::now().plus_millis(2000);
    let projects = client.ai().actor_projects();
    let tick = projects
        .create_board_item(
            &project,
            scheduled("tick", ScheduleKind::Interval, first, Some(60)),
        )
        .send()
        .await
        .unwrap();
    let once = projects
        .create_board_item(&project, scheduled("once", ScheduleKind::Once, first, None))
        .send()
        .await
        .unwrap();
    // Down before the slot, back after it.
    server.kill_hard();
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let server = Server::start(&db.url, &key).await;
    let client = server.client(&key);
    for item in [&tick, &once] {
        let done = wait_completed(&client, &project, &item.id).await;
        assert_eq!(done.last_run.unwrap().slot_at, first.to_rfc3339());
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let tick = client
        .ai()
        .actor_projects()
        .get_board_item(&project, &tick.id)
        .send()
        .await
        .unwrap();
    assert_eq!(runs_on_thread(&client, &tick).await, 1);
    assert_eq!(runs_on_thread(&client, &once).await, 1);
    // The interval continues on its grid.
    assert_eq!(
        tick.next_run_at,
        Some(first.plus_millis(60_000).to_rfc3339())
    );
    assert_eq!(tick.status, BoardItemStatus::Scheduled);
}

/// Resident and peak resident memory of a process, in bytes.
fn memory(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Deterministic content: 1 MiB blocks, each different.
fn block(i: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 << 20);
    let mut x = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    while out.len() < 1 << 20 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out
}

async fn fifty_mib_round_trip_in_constant_memory(db: &TestDatabase) {
    const MIB: usize = 1 << 20;
    const SIZE: usize = 50 * MIB;
    let key = bootstrap_key();
    let server = Server::start_with_env(
        &db.url,
        &key,
        &[("TESSERA_MAX_UPLOAD_BYTES", (64 * MIB).to_string())],
    )
    .await;
    let pid = server.pid().unwrap();
    let client = server.client(&key);
    let project = project(&client).await;
    let item = client
        .ai()
        .actor_projects()
        .create_board_item(
            &project,
            scheduled(
                "files",
                ScheduleKind::Once,
                Timestamp::from_millis(32_503_680_000_000),
                None,
            ),
        )
        .send()
        .await
        .unwrap();
    let url = format!(
        "{}/ai/actor-projects/{project}/board/items/{}/filesystem",
        server.url, item.id
    );
    let http = reqwest::Client::new();
    // Warm up the paths (pools, caches) with a small file first, then take the baseline.
    let small = http
        .put(format!("{url}/file?path=/warm.bin"))
        .bearer_auth(&key)
        .body(vec![1u8; MIB])
        .send()
        .await
        .unwrap();
    assert_eq!(small.status(), 200);
    let warm = http
        .get(format!("{url}/download?path=/warm.bin"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(warm.bytes().await.unwrap().len(), MIB);
    let (baseline, _) = memory(pid);

    // Upload 50 MiB as a stream generated on the fly (the test holds one block at a time).
    let mut expected = Sha256::new();
    for i in 0..SIZE / MIB {
        expected.update(block(i));
    }
    let expected = format!("{:x}", expected.finalize());
    let blocks =
        futures_util::stream::iter((0..SIZE / MIB).map(|i| Ok::<_, std::io::Error>(block(i))));
    let upload = http
        .put(format!("{url}/file?path=/big/data.bin"))
        .bearer_auth(&key)
        .header("content-type", "application/x-test")
        .header("content-length", SIZE.to_string())
        .body(reqwest::Body::wrap_stream(blocks))
        .send()
        .await
        .unwrap();
    assert_eq!(
        upload.status(),
        200,
        "{}",
        upload.text().await.unwrap_or_default()
    );
    let meta: serde_json::Value = upload.json().await.unwrap();
    assert_eq!(meta["size"], SIZE as u64);
    assert_eq!(meta["sha256"], expected.as_str());

    // Download as a stream, hashing as it arrives.
    use futures_util::StreamExt as _;
    let download = http
        .get(format!("{url}/download?path=/big/data.bin"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(download.status(), 200);
    assert_eq!(
        download.headers()["content-type"].to_str().unwrap(),
        "application/x-test"
    );
    assert_eq!(
        download.headers()["content-length"].to_str().unwrap(),
        SIZE.to_string()
    );
    let mut got = Sha256::new();
    let mut received = 0usize;
    let mut stream = download.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        received += chunk.len();
        got.update(&chunk);
    }
    assert_eq!(received, SIZE);
    assert_eq!(format!("{:x}", got.finalize()), expected);

    // The server's peak resident memory grew by far less than the file: it never held it.
    let (_, peak) = memory(pid);
    let growth = peak.saturating_sub(baseline);
    eprintln!(
        "server RSS baseline {} MiB, peak {} MiB, growth {} MiB for a {} MiB round trip",
        baseline / MIB as u64,
        peak / MIB as u64,
        growth / MIB as u64,
        SIZE / MIB
    );
    assert!(
        growth < (SIZE / 2) as u64,
        "the server's memory grew by {growth} bytes for a {SIZE}-byte file"
    );
}

/// The board operations through `tessera api call`, including a raw upload (`--data-file`)
/// and a download printed as text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn board_operations_through_tessera_api_call() {
    let db = TestDatabase::sqlite();
    let key = bootstrap_key();
    let server = Server::start(&db.url, &key).await;
    let client = server.client(&key);
    let project = project(&client).await;
    let dir = tempfile::tempdir().unwrap();
    let body = write_file(
        dir.path(),
        "item.json",
        r#"{"title": "Later", "description": "x", "schedule": {"schedule_kind": "ONCE", "next_run_at": "2999-01-01T00:00:00Z"}}"#,
    );
    let created = tessera(vec![
        "api".to_owned(),
        "call".to_owned(),
        "createProjectTaskBoardItem".to_owned(),
        "--param".to_owned(),
        format!("project_id={project}"),
        "--body".to_owned(),
        format!("@{}", body.display()),
    ])
    .against(&server, &key)
    .run()
    .await
    .ok();
    let item = created.stdout_json();
    assert_eq!(item["task_key"], "TASK-1");
    let item_id = item["id"].as_str().unwrap().to_owned();
    let data = write_file(dir.path(), "notes.txt", "line one\nline two\n");
    let uploaded = tessera(vec![
        "api".to_owned(),
        "call".to_owned(),
        "uploadProjectTaskBoardItemFilesystemFile".to_owned(),
        "--param".to_owned(),
        format!("project_id={project}"),
        "--param".to_owned(),
        format!("item_id={item_id}"),
        "--param".to_owned(),
        "path=/notes/today.txt".to_owned(),
        "--data-file".to_owned(),
        data.display().to_string(),
        "--content-type".to_owned(),
        "text/plain".to_owned(),
    ])
    .against(&server, &key)
    .run()
    .await
    .ok();
    assert_eq!(uploaded.stdout_json()["size"], 18);
    assert_eq!(uploaded.stdout_json()["mime_type"], "text/plain");
    let downloaded = tessera(vec![
        "api".to_owned(),
        "call".to_owned(),
        "downloadProjectTaskBoardItemFilesystemFile".to_owned(),
        "--param".to_owned(),
        format!("project_id={project}"),
        "--param".to_owned(),
        format!("item_id={item_id}"),
        "--param".to_owned(),
        "path=/notes/today.txt".to_owned(),
    ])
    .against(&server, &key)
    .run()
    .await
    .ok();
    assert_eq!(downloaded.stdout, "line one\nline two\n\n");
    let listed = tessera(vec![
        "api".to_owned(),
        "call".to_owned(),
        "listProjectTaskBoardItems".to_owned(),
        "--param".to_owned(),
        format!("project_id={project}"),
        "--param".to_owned(),
        "status=scheduled".to_owned(),
    ])
    .against(&server, &key)
    .run()
    .await
    .ok();
    assert_eq!(listed.stdout_json()["data"][0]["id"], item_id.as_str());
    // A traversal attempt is refused with the documented error, on standard error.
    let refused = tessera(vec![
        "api".to_owned(),
        "call".to_owned(),
        "getProjectTaskBoardItemFilesystemFile".to_owned(),
        "--param".to_owned(),
        format!("project_id={project}"),
        "--param".to_owned(),
        format!("item_id={item_id}"),
        "--param".to_owned(),
        "path=../../etc/passwd".to_owned(),
    ])
    .against(&server, &key)
    .run()
    .await
    .failed();
    assert!(
        refused.stderr.contains("validation_failed"),
        "{}",
        refused.stderr
    );
    db.cleanup().await;
}
