//! The storage conformance suite for task boards: board items, schedule slots (exactly once
//! across concurrent claimers and restarts) and workspace files.
//!
//! Runs on SQLite always and on PostgreSQL when `TESSERA_TEST_POSTGRES_URL` is set.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail loudly by design.

use std::collections::HashSet;
use std::sync::Arc;

use serde_json::json;
use tessera_domain::board::{
    Assignment, BoardItem, BoardItemPatch, ItemStatus, NewBoardItem, Overlap, Schedule,
    ScheduleKind, ScheduleState, WorkspaceId, WorkspacePath,
};
use tessera_domain::records::{NewActor, NewDeployment, NewProject, Project};
use tessera_domain::secret::{PlainSecret, SECRET_KEY_PREFIX};
use tessera_domain::thread::RunStatus;
use tessera_domain::validate::{
    CapabilityTag, DeploymentName, ExternalKey, Label, Metadata, SubjectType,
};
use tessera_domain::{BlobId, BoardItemId, Scope, Timestamp};
use tessera_store::testing::TestDatabase;
use tessera_store::{
    backend_tests, BoardItemFilter, Conflict, ConnectOptions, Entity, Idempotency, NewFile,
    NewSecretKey, PageRequest, SlotOutcome, Store, StoreError,
};

async fn open(db: &TestDatabase) -> Arc<dyn Store> {
    tessera_store::open(&db.url, &ConnectOptions::default())
        .await
        .expect("open store")
}

struct Tenant {
    scope: Scope,
    project: Project,
}

async fn tenant(store: &Arc<dyn Store>, name: &str) -> Tenant {
    let secret = PlainSecret::generate(SECRET_KEY_PREFIX);
    let key = NewSecretKey {
        name: Label::parse("name", "first").unwrap(),
        hash: secret.hash(),
        prefix: secret.display_prefix(),
    };
    let new = NewDeployment {
        name: DeploymentName::parse("name", name).unwrap(),
        backend_host: "http://127.0.0.1:8080".into(),
        frontend_host: "http://127.0.0.1:8080".into(),
    };
    let (dep, _) = store.create_deployment(&new, &key).await.unwrap();
    let scope = Scope::deployment(dep.id);
    let actor = store
        .create_actor(
            &scope,
            &NewActor {
                subject_type: SubjectType::parse("subject_type", "user").unwrap(),
                external_key: ExternalKey::parse("external_key", "u1").unwrap(),
                display_name: None,
                metadata: Metadata::parse("metadata", json!({})).unwrap(),
            },
        )
        .await
        .unwrap();
    let agent = store
        .create_agent(
            &scope,
            &tessera_store::testing::agent_spec("helper", "helps"),
        )
        .await
        .unwrap();
    let project = store
        .create_project(
            &scope,
            &NewProject {
                actor_id: actor.id,
                agent_id: agent.id,
                name: Label::parse("name", "p").unwrap(),
            },
        )
        .await
        .unwrap();
    Tenant { scope, project }
}

fn item(t: &Tenant, title: &str, schedule: Option<Schedule>) -> NewBoardItem {
    NewBoardItem {
        project_id: t.project.id.clone(),
        title: Label::parse("title", title).unwrap(),
        description: format!("do {title}"),
        assignment: Assignment::NewThread {
            agent: None,
            context_of: None,
        },
        capability_tags: vec![CapabilityTag::parse("t", "reports").unwrap()],
        schedule,
        parent_item_id: None,
    }
}

fn once(at: i64) -> Schedule {
    Schedule::new(
        "schedule",
        ScheduleKind::Once,
        Timestamp::from_millis(at),
        None,
        Overlap::Skip,
    )
    .unwrap()
}

fn every(at: i64, secs: u32, overlap: Overlap) -> Schedule {
    Schedule::new(
        "schedule",
        ScheduleKind::Interval,
        Timestamp::from_millis(at),
        Some(secs),
        overlap,
    )
    .unwrap()
}

backend_tests!(
    items_get_task_keys_and_execute_once,
    concurrent_claimers_fire_each_slot_once,
    interval_survives_restart_and_fires_a_missed_slot_once,
    overlap_skip_and_parallel,
    archive_and_pause_stop_the_schedule,
    cancel_cancels_the_queued_run,
    filters_and_tenancy,
    a_slot_queues_its_run_in_the_same_transaction,
    files_round_trip_in_chunks,
    a_path_is_a_file_or_a_directory,
    a_closed_sessions_slot_fails_without_a_run,
    pruning_slots_never_lets_an_old_slot_fire_again,
    orphan_chunks_are_pruned_and_committed_files_kept,
    idempotent_creation_and_closed_sessions,
);

async fn items_get_task_keys_and_execute_once(db: &TestDatabase) {
    let store = open(db).await;
    let t = tenant(&store, "acme").await;
    let a = store
        .create_board_item(&t.scope, &item(&t, "a", None))
        .await
        .unwrap();
    let b = far_off_item(&store, &t, "b").await;
    assert_eq!(
        (a.task_key.as_str(), b.task_key.as_str()),
        ("TASK-1", "TASK-2")
    );
    assert_eq!(a.status, ItemStatus::Scheduled);
    assert_ne!(a.assigned_thread_id, b.assigned_thread_id);
    // The item's own thread runs the project's agent.
    let thread = store
        .get_thread(&t.scope, &a.assigned_thread_id)
        .await
        .unwrap();
    assert_eq!(thread.agent_id, a.assigned_agent_id);
    // Without a schedule the one slot is due at creation.
    let claimed = store
        .claim_due_slots("n1", Timestamp::now(), 100)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].item_id, a.id);
    assert_eq!(claimed[0].outcome, SlotOutcome::Fired);
    assert_eq!(claimed[0].description, "do a");
    assert!(store
        .claim_due_slots("n1", Timestamp::now(), 100)
        .await
        .unwrap()
        .is_empty());
    let a = store
        .get_board_item(&t.scope, &t.project.id, &a.id)
        .await
        .unwrap();
    assert_eq!(a.schedule_state, ScheduleState::Done);
    assert_eq!(a.status, ItemStatus::Running);
    let run = a.last_run.unwrap();
    assert_eq!(Some(run.run_id), claimed[0].run_id);
    assert_eq!(run.status, Some(RunStatus::Queued));
    assert_eq!(
        store
            .board_item_of_run(&t.scope, claimed[0].run_id.as_ref().unwrap())
            .await
            .unwrap(),
        Some((t.project.id.clone(), a.id.clone()))
    );
    // The far-future item is the next due slot.
    assert_eq!(
        store.next_due_slot().await.unwrap(),
        Some(Timestamp::from_millis(i64::MAX / 4))
    );
}

async fn concurrent_claimers_fire_each_slot_once(db: &TestDatabase) {
    let store = open(db).await;
    let t = tenant(&store, "acme").await;
    let due = Timestamp::now().as_millis() - 1000;
    let mut ids = HashSet::new();
    for i in 0..60 {
        let s = if i % 2 == 0 {
            once(due)
        } else {
            every(due, 60, Overlap::Parallel)
        };
        let it = store
            .create_board_item(&t.scope, &item(&t, &format!("i{i}"), Some(s)))
            .await
            .unwrap();
        ids.insert(it.id);
    }
    // Four "nodes", each with its own connection pools, claim in small batches at once.
    let mut nodes = Vec::new();
    for n in 0..4 {
        let store = open(db).await;
        nodes.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let batch = store
                    .claim_due_slots(&format!("n{n}"), Timestamp::now(), 7)
                    .await
                    .unwrap();
                if batch.is_empty() {
                    break;
                }
                mine.extend(batch);
            }
            mine
        }));
    }
    let mut all = Vec::new();
    for node in nodes {
        all.extend(node.await.unwrap());
    }
    let keys: HashSet<(BoardItemId, i64)> = all
        .iter()
        .map(|s| (s.item_id.clone(), s.slot_at.as_millis()))
        .collect();
    assert_eq!(keys.len(), all.len(), "a slot was claimed twice");
    assert_eq!(all.len(), 60, "every due slot is claimed once");
    let claimed_items: HashSet<BoardItemId> = all.iter().map(|s| s.item_id.clone()).collect();
    assert_eq!(claimed_items, ids);
    for id in &ids {
        assert_eq!(store.list_slots(&t.scope, id).await.unwrap().len(), 1);
    }
}

async fn interval_survives_restart_and_fires_a_missed_slot_once(db: &TestDatabase) {
    let t0 = 1_000_000_000_000i64; // a fixed past instant: the clock is simulated
    let minute = 60_000;
    let (t, id) = {
        let store = open(db).await;
        let t = tenant(&store, "acme").await;
        let it = store
            .create_board_item(
                &t.scope,
                &item(&t, "tick", Some(every(t0, 60, Overlap::Parallel))),
            )
            .await
            .unwrap();
        let at = |ms: i64| Timestamp::from_millis(ms);
        assert!(store
            .claim_due_slots("n1", at(t0 - 1), 10)
            .await
            .unwrap()
            .is_empty());
        let first = store.claim_due_slots("n1", at(t0 + 200), 10).await.unwrap();
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].slot_at, at(t0));
        let second = store
            .claim_due_slots("n1", at(t0 + minute + 5), 10)
            .await
            .unwrap();
        assert_eq!(second[0].slot_at, at(t0 + minute));
        store.close().await;
        (t, it.id)
    };
    // "Restart" after ten minutes of downtime: a new store on the same database.
    let store = open(db).await;
    let after = Timestamp::from_millis(t0 + 11 * minute + 30_000);
    let missed = store.claim_due_slots("n2", after, 10).await.unwrap();
    assert_eq!(missed.len(), 1, "missed slots collapse into one firing");
    assert_eq!(missed[0].slot_at.as_millis(), t0 + 11 * minute);
    assert!(store
        .claim_due_slots("n2", after, 10)
        .await
        .unwrap()
        .is_empty());
    let item = store
        .get_board_item(&t.scope, &t.project.id, &id)
        .await
        .unwrap();
    assert_eq!(
        item.next_run_at,
        Some(Timestamp::from_millis(t0 + 12 * minute))
    );
    let slots: Vec<i64> = store
        .list_slots(&t.scope, &id)
        .await
        .unwrap()
        .iter()
        .map(|s| s.slot_at.as_millis())
        .collect();
    assert_eq!(slots, [t0, t0 + minute, t0 + 11 * minute]);
}

async fn overlap_skip_and_parallel(db: &TestDatabase) {
    let store = open(db).await;
    let t = tenant(&store, "acme").await;
    let t0 = 1_000_000_000_000i64;
    let skip = store
        .create_board_item(
            &t.scope,
            &item(&t, "skip", Some(every(t0, 60, Overlap::Skip))),
        )
        .await
        .unwrap();
    let par = store
        .create_board_item(
            &t.scope,
            &item(&t, "par", Some(every(t0, 60, Overlap::Parallel))),
        )
        .await
        .unwrap();
    let first = store
        .claim_due_slots("n", Timestamp::from_millis(t0), 10)
        .await
        .unwrap();
    assert_eq!(first.len(), 2);
    // The first runs are still queued at the next slot.
    let second = store
        .claim_due_slots("n", Timestamp::from_millis(t0 + 60_000), 10)
        .await
        .unwrap();
    let outcome = |id: &BoardItemId| second.iter().find(|s| &s.item_id == id).unwrap().outcome;
    assert_eq!(outcome(&skip.id), SlotOutcome::Skipped);
    assert_eq!(outcome(&par.id), SlotOutcome::Fired);
    assert!(second
        .iter()
        .find(|s| s.item_id == skip.id)
        .unwrap()
        .run_id
        .is_none());
    // A skipped slot is still recorded once and the schedule moves on.
    let skip = store
        .get_board_item(&t.scope, &t.project.id, &skip.id)
        .await
        .unwrap();
    assert_eq!(skip.next_run_at, Some(Timestamp::from_millis(t0 + 120_000)));
    assert_eq!(
        skip.last_run.unwrap().run_id,
        first
            .iter()
            .find(|s| s.item_id == skip.id)
            .unwrap()
            .run_id
            .clone()
            .unwrap()
    );
}

async fn archive_and_pause_stop_the_schedule(db: &TestDatabase) {
    let store = open(db).await;
    let t = tenant(&store, "acme").await;
    let t0 = 1_000_000_000_000i64;
    let a = store
        .create_board_item(&t.scope, &item(&t, "a", Some(every(t0, 60, Overlap::Skip))))
        .await
        .unwrap();
    let p = store
        .create_board_item(&t.scope, &item(&t, "p", Some(every(t0, 60, Overlap::Skip))))
        .await
        .unwrap();
    let archived = store
        .archive_board_item(&t.scope, &t.project.id, &a.id)
        .await
        .unwrap();
    assert_eq!(archived.status, ItemStatus::Archived);
    assert!(archived.archived_at.is_some());
    // Idempotent.
    let again = store
        .archive_board_item(&t.scope, &t.project.id, &a.id)
        .await
        .unwrap();
    assert_eq!(again.archived_at, archived.archived_at);
    let paused = store
        .update_board_item(
            &t.scope,
            &t.project.id,
            &p.id,
            &BoardItemPatch {
                paused: Some(true),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(paused.status, ItemStatus::Paused);
    let later = Timestamp::from_millis(t0 + 3_600_000);
    assert!(store
        .claim_due_slots("n", later, 10)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(store.next_due_slot().await.unwrap(), None);
    // Resuming fires the slot missed while paused, once.
    store
        .update_board_item(
            &t.scope,
            &t.project.id,
            &p.id,
            &BoardItemPatch {
                paused: Some(false),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        store.claim_due_slots("n", later, 10).await.unwrap().len(),
        1
    );
    assert!(store
        .claim_due_slots("n", later, 10)
        .await
        .unwrap()
        .is_empty());
    // An archived item cannot be changed.
    let err = store
        .update_board_item(
            &t.scope,
            &t.project.id,
            &a.id,
            &BoardItemPatch {
                paused: Some(false),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Conflict(Conflict::BoardItemClosed)),
        "{err:?}"
    );
}

async fn cancel_cancels_the_queued_run(db: &TestDatabase) {
    let store = open(db).await;
    let t = tenant(&store, "acme").await;
    let a = store
        .create_board_item(&t.scope, &item(&t, "a", None))
        .await
        .unwrap();
    let slot = store
        .claim_due_slots("n", Timestamp::now(), 10)
        .await
        .unwrap()
        .pop()
        .unwrap();
    let (cancelled, stopping, events) = store
        .cancel_board_item(&t.scope, &t.project.id, &a.id)
        .await
        .unwrap();
    assert_eq!(stopping, None, "a queued run ends at once");
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].kind, "run.status");
    assert_eq!(cancelled.status, ItemStatus::Cancelled);
    let run = store
        .get_run(&t.scope, &slot.thread_id, slot.run_id.as_ref().unwrap())
        .await
        .unwrap();
    assert_eq!(run.status, RunStatus::Cancelled);
    // The event was numbered after the thread's earlier ones.
    let stored = store
        .events_after(&t.scope, &slot.thread_id, 0, 100)
        .await
        .unwrap();
    assert_eq!(stored.last().unwrap().seq, events[0].seq);
    // A claimed run is flagged for its worker instead.
    let b = store
        .create_board_item(&t.scope, &item(&t, "b", None))
        .await
        .unwrap();
    let slot = store
        .claim_due_slots("n", Timestamp::now(), 10)
        .await
        .unwrap()
        .pop()
        .unwrap();
    let claimed = store
        .claim_run("w", Timestamp::now(), 60_000)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(Some(claimed.run.id.clone()), slot.run_id);
    let (running, stopping, _) = store
        .cancel_board_item(&t.scope, &t.project.id, &b.id)
        .await
        .unwrap();
    assert_eq!(stopping, slot.run_id);
    assert_eq!(running.status, ItemStatus::Cancelled);
    assert_eq!(
        store
            .heartbeat(&claimed.lease, Timestamp::now().plus_secs(60))
            .await
            .unwrap(),
        tessera_store::CancelRequest::Cancel
    );
}

async fn filters_and_tenancy(db: &TestDatabase) {
    let store = open(db).await;
    let t = tenant(&store, "acme").await;
    let other = tenant(&store, "other").await;
    let a = far_off_item(&store, &t, "a").await;
    let b = far_off_item(&store, &t, "b").await;
    store
        .archive_board_item(&t.scope, &t.project.id, &b.id)
        .await
        .unwrap();
    let list = |filter: BoardItemFilter| {
        let store = store.clone();
        let scope = t.scope.clone();
        let project = t.project.id.clone();
        async move {
            store
                .list_board_items(&scope, &project, &filter, &PageRequest::default())
                .await
                .unwrap()
                .items
                .into_iter()
                .map(|i| i.id)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        list(BoardItemFilter {
            archived: Some(false),
            ..Default::default()
        })
        .await,
        vec![a.id.clone()]
    );
    assert_eq!(
        list(BoardItemFilter {
            archived: Some(true),
            ..Default::default()
        })
        .await,
        vec![b.id.clone()]
    );
    assert_eq!(list(BoardItemFilter::default()).await.len(), 2);
    assert_eq!(
        list(BoardItemFilter {
            status: Some(ItemStatus::Scheduled),
            ..Default::default()
        })
        .await,
        vec![a.id.clone()]
    );
    assert!(list(BoardItemFilter {
        status: Some(ItemStatus::Running),
        ..Default::default()
    })
    .await
    .is_empty());
    // Another deployment sees nothing, even with the right project id.
    let err = store
        .get_board_item(&other.scope, &t.project.id, &a.id)
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        StoreError::NotFound {
            entity: Entity::BoardItem,
            ..
        }
    ));
    let err = store
        .archive_board_item(&other.scope, &t.project.id, &a.id)
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        StoreError::NotFound {
            entity: Entity::BoardItem,
            ..
        }
    ));
    let err = store
        .create_board_item(&other.scope, &item(&t, "x", None))
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        StoreError::NotFound {
            entity: Entity::Project,
            ..
        }
    ));
    // The other tenant's project numbers its own keys.
    let o = store
        .create_board_item(&other.scope, &item(&other, "o", Some(once(i64::MAX / 4))))
        .await
        .unwrap();
    assert_eq!(o.task_key, "TASK-1");
    assert!(store
        .list_board_items(
            &other.scope,
            &t.project.id,
            &BoardItemFilter::default(),
            &PageRequest::default()
        )
        .await
        .unwrap()
        .items
        .is_empty());
    // Assigning a thread of another deployment is a not-found naming the field.
    let mut foreign = item(&t, "f", None);
    foreign.assignment = Assignment::Thread(o.assigned_thread_id.clone());
    let err = store
        .create_board_item(&t.scope, &foreign)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::NotFound {
                entity: Entity::Thread,
                field: Some("assigned_thread_id"),
                ..
            }
        ),
        "{err:?}"
    );
}

async fn a_slot_queues_its_run_in_the_same_transaction(db: &TestDatabase) {
    let store = open(db).await;
    let t = tenant(&store, "acme").await;
    let item = store
        .create_board_item(&t.scope, &item(&t, "a", None))
        .await
        .unwrap();
    let slot = store
        .claim_due_slots("n", Timestamp::now(), 10)
        .await
        .unwrap()
        .pop()
        .unwrap();
    // The run exists, queued, with the description as its input and its two events.
    let run = store
        .get_run(&t.scope, &slot.thread_id, slot.run_id.as_ref().unwrap())
        .await
        .unwrap();
    assert_eq!(run.status, RunStatus::Queued);
    assert_eq!(Some(run.input_message_id.clone()), slot.message_id);
    let history = store
        .thread_history(&t.scope, &slot.thread_id)
        .await
        .unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].content, "do a");
    let kinds: Vec<&str> = slot.events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds, ["message.created", "run.status"]);
    let stored = store
        .events_after(&t.scope, &slot.thread_id, 0, 100)
        .await
        .unwrap();
    assert_eq!(stored, slot.events);
    // A worker claims it like any other run.
    let claimed = store
        .claim_run("w", Timestamp::now(), 60_000)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(claimed.run.id, run.id);
    let got = store
        .get_board_item(&t.scope, &t.project.id, &item.id)
        .await
        .unwrap();
    assert_eq!(got.status, ItemStatus::Running);
    assert_eq!(got.last_run.unwrap().status, Some(RunStatus::Running));
    // Setting the schedule back onto the slot that fired does not fire it again.
    let at = slot.slot_at.as_millis();
    store
        .update_board_item(
            &t.scope,
            &t.project.id,
            &item.id,
            &BoardItemPatch {
                schedule: Some(Some(once(at))),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(store
        .claim_due_slots("n", Timestamp::now(), 10)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(store.list_slots(&t.scope, &item.id).await.unwrap().len(), 1);
    let got = store
        .get_board_item(&t.scope, &t.project.id, &item.id)
        .await
        .unwrap();
    assert_eq!(got.next_run_at, None);
    assert_eq!(got.schedule_state, ScheduleState::Done);
}

/// Writes `chunks` as a new blob and commits it at `path` of `ws` (a `text/plain` file).
/// A board item of `t` whose one slot is far in the future: nothing of it fires during a test.
async fn far_off_item(store: &Arc<dyn Store>, t: &Tenant, title: &str) -> BoardItem {
    store
        .create_board_item(&t.scope, &item(t, title, Some(once(i64::MAX / 4))))
        .await
        .unwrap()
}

async fn store_file(
    store: &Arc<dyn Store>,
    scope: &Scope,
    ws: &WorkspaceId,
    path: &WorkspacePath,
    chunks: &[&[u8]],
) -> Result<tessera_domain::board::FileMeta, StoreError> {
    let blob = BlobId::generate();
    for (i, c) in chunks.iter().enumerate() {
        store
            .put_blob_chunk(scope, &blob, i as u32, c)
            .await
            .unwrap();
    }
    let file = NewFile {
        path: path.clone(),
        blob_id: blob,
        size: chunks.iter().map(|c| c.len() as u64).sum(),
        chunks: chunks.len() as u32,
        mime_type: "text/plain".into(),
        sha256: "00".into(),
    };
    store.commit_file(scope, ws, &file).await
}

async fn files_round_trip_in_chunks(db: &TestDatabase) {
    let store = open(db).await;
    let t = tenant(&store, "acme").await;
    let other = tenant(&store, "other").await;
    let a = far_off_item(&store, &t, "a").await;
    let ws = WorkspaceId::Item(a.id.clone());
    let path = WorkspacePath::parse_file("path", "/out/report.txt").unwrap();
    let first = store_file(&store, &t.scope, &ws, &path, &[b"hello ", b"world"])
        .await
        .unwrap();
    assert_eq!((first.size, first.chunks), (11, 2));
    let got = store.get_file(&t.scope, &ws, &path).await.unwrap();
    assert_eq!(got, first);
    let mut bytes = Vec::new();
    for i in 0..got.chunks {
        bytes.extend(
            store
                .read_blob_chunk(&t.scope, &got.blob_id, i)
                .await
                .unwrap(),
        );
    }
    assert_eq!(bytes, b"hello world");
    // Replacing deletes the previous version's chunks.
    let second = store_file(&store, &t.scope, &ws, &path, &[b"v2"])
        .await
        .unwrap();
    assert_eq!(second.created_at, first.created_at);
    assert!(store
        .read_blob_chunk(&t.scope, &first.blob_id, 0)
        .await
        .is_err());
    // Listing below a directory; the other deployment sees none of it.
    let listed = store
        .list_files(
            &t.scope,
            &ws,
            &WorkspacePath::parse_dir("p", "/out").unwrap(),
            100,
        )
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);
    assert!(store
        .list_files(
            &t.scope,
            &ws,
            &WorkspacePath::parse_dir("p", "/o").unwrap(),
            100
        )
        .await
        .unwrap()
        .is_empty());
    let err = store.get_file(&other.scope, &ws, &path).await.unwrap_err();
    assert!(matches!(
        err,
        StoreError::NotFound {
            entity: Entity::File,
            ..
        }
    ));
    assert!(store
        .read_blob_chunk(&other.scope, &second.blob_id, 0)
        .await
        .is_err());
    assert!(store
        .list_files(&other.scope, &ws, &WorkspacePath::root(), 100)
        .await
        .unwrap()
        .is_empty());
    // A discarded upload leaves nothing.
    let blob = BlobId::generate();
    store
        .put_blob_chunk(&t.scope, &blob, 0, b"x")
        .await
        .unwrap();
    store.discard_blob(&t.scope, &blob).await.unwrap();
    assert!(store.read_blob_chunk(&t.scope, &blob, 0).await.is_err());
    // A discard of a committed file's blob (an upload whose commit succeeded though its answer
    // was lost) keeps the file's content.
    store.discard_blob(&t.scope, &second.blob_id).await.unwrap();
    assert!(store
        .read_blob_chunk(&t.scope, &second.blob_id, 0)
        .await
        .is_ok());
}

async fn a_path_is_a_file_or_a_directory(db: &TestDatabase) {
    let store = open(db).await;
    let t = tenant(&store, "acme").await;
    let a = far_off_item(&store, &t, "a").await;
    let b = far_off_item(&store, &t, "b").await;
    let (ws, other_ws) = (
        WorkspaceId::Item(a.id.clone()),
        WorkspaceId::Item(b.id.clone()),
    );
    let commit = |ws: &WorkspaceId, path: &str| {
        let (store, scope, ws) = (store.clone(), t.scope.clone(), ws.clone());
        let path = WorkspacePath::parse_file("path", path).unwrap();
        async move {
            let result = store_file(&store, &scope, &ws, &path, &[b"x"]).await;
            if result.is_err() {
                // Nothing was written: the path still names what it named before.
                assert!(store.get_file(&scope, &ws, &path).await.is_err());
            }
            result.map(|_| ())
        }
    };
    commit(&ws, "/out/a/report.txt").await.unwrap();
    // `/out` and `/out/a` are directories now.
    for dir in ["/out", "/out/a"] {
        assert!(
            matches!(
                commit(&ws, dir).await,
                Err(StoreError::Conflict(Conflict::PathIsDirectory))
            ),
            "{dir}"
        );
    }
    // A file cannot go below a file.
    for below in ["/out/a/report.txt/x", "/out/a/report.txt/x/y"] {
        assert!(
            matches!(
                commit(&ws, below).await,
                Err(StoreError::Conflict(Conflict::PathUnderFile))
            ),
            "{below}"
        );
    }
    // Replacing the file, a sibling, a name that only starts like a directory, and the same
    // paths in another workspace are fine.
    for ok in [
        "/out/a/report.txt",
        "/out/b",
        "/outside",
        "/out/a/report.txt.bak",
    ] {
        commit(&ws, ok).await.unwrap();
    }
    commit(&other_ws, "/out").await.unwrap();
    assert!(matches!(
        commit(&other_ws, "/out/a/report.txt").await,
        Err(StoreError::Conflict(Conflict::PathUnderFile))
    ));
    // A file and a file below it committed at the same time: one of them wins.
    for round in 0..50 {
        let (dir, below) = (format!("/race{round}"), format!("/race{round}/f"));
        let (first, second) = tokio::join!(commit(&ws, &dir), commit(&ws, &below));
        assert!(
            first.is_ok() != second.is_ok(),
            "round {round}: {first:?} {second:?}"
        );
    }
}

/// A closed session (issue 6) takes no message: a slot due on its thread fails instead of
/// queueing a run, as `submit_run` refuses one.
async fn a_closed_sessions_slot_fails_without_a_run(db: &TestDatabase) {
    let store = open(db).await;
    let t = tenant(&store, "acme").await;
    let a = store
        .create_board_item(&t.scope, &item(&t, "a", None))
        .await
        .unwrap();
    store
        .close_session(&t.scope, &a.assigned_thread_id, Timestamp::now())
        .await
        .unwrap();
    let claimed = store
        .claim_due_slots("n1", Timestamp::now(), 100)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].outcome, SlotOutcome::Failed);
    assert!(claimed[0].events.is_empty());
    let slots = store.list_slots(&t.scope, &a.id).await.unwrap();
    assert_eq!(slots.len(), 1);
    assert_eq!(slots[0].outcome, SlotOutcome::Failed);
    let a = store
        .get_board_item(&t.scope, &t.project.id, &a.id)
        .await
        .unwrap();
    assert!(a.last_run.is_none());
    assert_eq!(a.schedule_state, ScheduleState::Done);
}

async fn pruning_slots_never_lets_an_old_slot_fire_again(db: &TestDatabase) {
    let store = open(db).await;
    let t = tenant(&store, "acme").await;
    let t0 = 1_000_000_000_000i64; // simulated clock
    let minute = 60_000;
    let at = Timestamp::from_millis;
    let it = store
        .create_board_item(
            &t.scope,
            &item(&t, "tick", Some(every(t0, 60, Overlap::Parallel))),
        )
        .await
        .unwrap();
    let kept = store
        .create_board_item(&t.scope, &item(&t, "single", Some(once(t0))))
        .await
        .unwrap();
    for k in 0..3 {
        let fired = store
            .claim_due_slots("n1", at(t0 + k * minute + 5), 10)
            .await
            .unwrap();
        assert_eq!(fired.len(), if k == 0 { 2 } else { 1 });
    }
    // The runs are done (cancelled here): an open run keeps its slot record.
    store
        .cancel_runs(&t.scope, &it.assigned_thread_id)
        .await
        .unwrap();
    store
        .cancel_runs(&t.scope, &kept.assigned_thread_id)
        .await
        .unwrap();
    let slots = |id: BoardItemId| {
        let store = store.clone();
        let scope = t.scope.clone();
        async move {
            store
                .list_slots(&scope, &id)
                .await
                .unwrap()
                .iter()
                .map(|s| s.slot_at.as_millis())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        slots(it.id.clone()).await,
        [t0, t0 + minute, t0 + 2 * minute]
    );

    // Records that fired before the cutoff go, except each item's latest.
    let pruned = store.prune_slots(at(t0 + 2 * minute + 6)).await.unwrap();
    assert_eq!(pruned, 2);
    assert_eq!(slots(it.id.clone()).await, [t0 + 2 * minute]);
    assert_eq!(slots(kept.id.clone()).await, [t0]);
    assert_eq!(store.prune_slots(at(t0 + 2 * minute + 6)).await.unwrap(), 0);

    // A schedule set back onto a pruned slot does not fire it again.
    let back = |ms: i64| BoardItemPatch {
        schedule: Some(Some(once(ms))),
        ..Default::default()
    };
    store
        .update_board_item(&t.scope, &t.project.id, &it.id, &back(t0))
        .await
        .unwrap();
    assert!(store
        .claim_due_slots("n2", at(t0 + 3 * minute), 10)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(slots(it.id.clone()).await, [t0 + 2 * minute]);
    // Nor onto the kept latest one (its record is there); a slot that never fired still does.
    store
        .update_board_item(&t.scope, &t.project.id, &it.id, &back(t0 + 2 * minute))
        .await
        .unwrap();
    assert!(store
        .claim_due_slots("n2", at(t0 + 3 * minute), 10)
        .await
        .unwrap()
        .is_empty());
    store
        .update_board_item(&t.scope, &t.project.id, &it.id, &back(t0 + 90_000))
        .await
        .unwrap();
    let fresh = store
        .claim_due_slots("n2", at(t0 + 3 * minute), 10)
        .await
        .unwrap();
    assert_eq!(fresh.len(), 1);
    assert_eq!(fresh[0].slot_at, at(t0 + 90_000));
    assert_eq!(fresh[0].outcome, SlotOutcome::Fired);
}

async fn orphan_chunks_are_pruned_and_committed_files_kept(db: &TestDatabase) {
    let store = open(db).await;
    let t = tenant(&store, "acme").await;
    let a = far_off_item(&store, &t, "a").await;
    let ws = WorkspaceId::Item(a.id.clone());
    let path = WorkspacePath::parse_file("path", "/kept.txt").unwrap();
    store_file(&store, &t.scope, &ws, &path, &[b"kept ", b"file"])
        .await
        .unwrap();
    // An upload cut off midway: two chunks, never committed (its node died).
    let orphan = BlobId::generate();
    for i in 0..2 {
        store
            .put_blob_chunk(&t.scope, &orphan, i, b"partial")
            .await
            .unwrap();
    }
    // Within the grace period (an upload could still be under way) nothing goes.
    let hour_ago = Timestamp::now().plus_secs(-3600);
    assert_eq!(store.prune_orphan_chunks(hour_ago).await.unwrap(), 0);
    assert!(store.read_blob_chunk(&t.scope, &orphan, 0).await.is_ok());
    let later = Timestamp::now().plus_secs(1);
    assert_eq!(store.prune_orphan_chunks(later).await.unwrap(), 2);
    for i in 0..2 {
        assert!(store.read_blob_chunk(&t.scope, &orphan, i).await.is_err());
    }
    // The committed file is untouched.
    let meta = store.get_file(&t.scope, &ws, &path).await.unwrap();
    let mut bytes = Vec::new();
    for i in 0..meta.chunks {
        bytes.extend(
            store
                .read_blob_chunk(&t.scope, &meta.blob_id, i)
                .await
                .unwrap(),
        );
    }
    assert_eq!(bytes, b"kept file");
    assert_eq!(store.prune_orphan_chunks(later).await.unwrap(), 0);
}

async fn idempotent_creation_and_closed_sessions(db: &TestDatabase) {
    let store = open(db).await;
    let t = tenant(&store, "acme").await;
    let idem = |key: &str, hash: &str| Idempotency {
        operation: format!("createProjectTaskBoardItem:{}", t.project.id),
        key: key.into(),
        request_hash: hash.into(),
        result: serde_json::Value::Null,
    };
    let new = item(&t, "once", Some(once(i64::MAX / 4)));
    // Concurrent retries: one item.
    let (k1, k1_again) = (idem("k1", "h1"), idem("k1", "h1"));
    let (a, b) = tokio::join!(
        store.create_board_item_once(&t.scope, &new, &k1),
        store.create_board_item_once(&t.scope, &new, &k1_again)
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.id, b.id);
    assert_eq!(a.task_key, b.task_key);
    let again = store
        .create_board_item_once(&t.scope, &new, &idem("k1", "h1"))
        .await
        .unwrap();
    assert_eq!(again.id, a.id);
    let all = store
        .list_board_items(
            &t.scope,
            &t.project.id,
            &BoardItemFilter::default(),
            &PageRequest::first(100),
        )
        .await
        .unwrap();
    assert_eq!(all.items.len(), 1);
    let reused = store
        .create_board_item_once(&t.scope, &new, &idem("k1", "other"))
        .await
        .unwrap_err();
    assert!(
        matches!(reused, StoreError::Conflict(Conflict::IdempotencyKeyReused)),
        "{reused:?}"
    );
    // A failed creation keeps no key: the retry can succeed.
    let mut on_closed = item(&t, "closed", None);
    on_closed.assignment = Assignment::Thread(a.assigned_thread_id.clone());
    store
        .close_session(&t.scope, &a.assigned_thread_id, Timestamp::now())
        .await
        .unwrap();
    let refused = store
        .create_board_item_once(&t.scope, &on_closed, &idem("k2", "h2"))
        .await
        .unwrap_err();
    assert!(
        matches!(refused, StoreError::Conflict(Conflict::SessionClosed)),
        "{refused:?}"
    );
    let mut delegated = item(&t, "lane", None);
    delegated.assignment = Assignment::NewThread {
        agent: None,
        context_of: Some(a.assigned_thread_id.clone()),
    };
    let refused = store
        .create_board_item(&t.scope, &delegated)
        .await
        .unwrap_err();
    assert!(
        matches!(refused, StoreError::Conflict(Conflict::SessionClosed)),
        "{refused:?}"
    );
    let ok = store
        .create_board_item_once(&t.scope, &item(&t, "fine", None), &idem("k2", "h2"))
        .await
        .unwrap();
    assert_ne!(ok.id, a.id);
}
