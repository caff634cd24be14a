//! The storage conformance suite for threads, messages, runs, leases and thread events: every
//! backend must behave identically.
//!
//! Runs on SQLite always and on PostgreSQL when `TESSERA_TEST_POSTGRES_URL` is set.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail loudly by design.

use std::collections::HashSet;

mod common;
use common::*;

async fn claim_none(store: &Arc<dyn Store>) {
    let got = store
        .claim_run("idle-worker", Timestamp::now(), LEASE_MS)
        .await
        .unwrap();
    assert!(
        got.is_none(),
        "nothing should be claimable, got {:?}",
        got.map(|c| c.run)
    );
}

/// Runs `workers` claims at the same moment; returns the successful ones.
async fn claim_concurrently(store: &Arc<dyn Store>, workers: usize) -> Vec<Claimed> {
    let barrier = Arc::new(tokio::sync::Barrier::new(workers));
    let mut tasks = Vec::new();
    for i in 0..workers {
        let store = store.clone();
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            store
                .claim_run(&format!("worker-{i}"), Timestamp::now(), LEASE_MS)
                .await
                .unwrap()
        }));
    }
    let mut claims = Vec::new();
    for task in tasks {
        if let Some(c) = task.await.unwrap() {
            claims.push(c);
        }
    }
    claims
}

fn assistant_message(thread_id: &ThreadId, run_id: &RunId, call_id: &str) -> Message {
    Message {
        id: MessageId::generate(),
        thread_id: thread_id.clone(),
        run_id: Some(run_id.clone()),
        role: Role::Assistant,
        content: "Let me look that up.".into(),
        tool_calls: vec![ToolCall {
            id: call_id.into(),
            name: "lookup".into(),
            arguments: json!({"query": "weather", "days": 3}),
        }],
        tool_call_id: None,
        tool_name: None,
        is_error: false,
        attachments: vec![],
        usage: Some(TokenUsage {
            prompt_tokens: 120,
            completion_tokens: 30,
        }),
        created_at: Timestamp::now(),
    }
}

fn tool_message(thread_id: &ThreadId, run_id: &RunId, call_id: &str) -> Message {
    Message {
        tool_call_id: Some(call_id.into()),
        tool_name: Some("lookup".into()),
        is_error: true,
        ..tessera_store::testing::message(
            thread_id,
            run_id,
            Role::Tool,
            "lookup failed: upstream timeout",
        )
    }
}

fn step(message: Message, key: &str) -> StepMessage {
    let kind = if message.role == Role::Assistant {
        event::MESSAGE_COMPLETED
    } else {
        event::MESSAGE_CREATED
    };
    StepMessage {
        event: event::message_event(kind, &message),
        message,
        step_key: key.to_owned(),
    }
}

fn note(text: &str) -> NewEvent {
    NewEvent {
        kind: event::NOTIFICATION,
        data: json!({ "text": text }),
    }
}

fn end(status: RunStatus, stop_reason: StopReason) -> RunEnd {
    RunEnd {
        status,
        stop_reason,
        error: None,
        usage: RunUsage::default(),
    }
}

async fn all_events(
    store: &Arc<dyn Store>,
    scope: &Scope,
    thread_id: &ThreadId,
) -> Vec<ThreadEvent> {
    store
        .events_after(scope, thread_id, 0, 10_000)
        .await
        .unwrap()
}

async fn history(store: &Arc<dyn Store>, scope: &Scope, thread_id: &ThreadId) -> Vec<Message> {
    store.thread_history(scope, thread_id).await.unwrap()
}

/// The first page of the thread's messages, oldest first (read as rows on every backend).
async fn first_page(store: &Arc<dyn Store>, scope: &Scope, thread_id: &ThreadId) -> Vec<Message> {
    store
        .list_messages(
            scope,
            thread_id,
            &PageRequest::default(),
            Order::OldestFirst,
        )
        .await
        .unwrap()
        .items
}

fn kinds(events: &[ThreadEvent]) -> Vec<&str> {
    events.iter().map(|e| e.kind.as_str()).collect()
}

fn seqs(events: &[ThreadEvent]) -> Vec<i64> {
    events.iter().map(|e| e.seq).collect()
}

/// A thread without its `updated_at`, which every appended event moves.
fn settled(thread: Thread) -> Thread {
    Thread {
        updated_at: Timestamp::from_millis(0),
        ..thread
    }
}

fn is_lease_lost<T: std::fmt::Debug>(result: Result<T, StoreError>) -> bool {
    matches!(result, Err(StoreError::LeaseLost))
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

backend_tests!(
    threads_need_an_active_project_in_scope,
    submit_stores_the_message_and_queues_a_run,
    a_submission_creates_its_new_thread_or_nothing,
    new_threads_share_their_project_and_hold_off_its_archive,
    event_numbers_are_per_thread_and_gapless_under_concurrency,
    concurrent_writes_that_fail_leave_the_others_alone,
    reject_policy_refuses_while_a_run_is_open,
    concurrent_rejecting_submissions_to_an_idle_thread_accept_one,
    a_submission_without_a_policy_follows_the_agents,
    enqueue_policy_queues_behind_the_open_run,
    a_submission_claims_its_run_for_a_free_worker_only_when_nothing_is_open,
    interrupt_policy_cancels_queued_runs_and_flags_the_running_one,
    idempotent_submits_replay_the_first_answer,
    concurrent_idempotent_submits_create_one_run,
    concurrent_idempotent_cancels_stop_once,
    claims_take_the_oldest_run_one_per_thread,
    batch_claims_take_up_to_the_limit_one_run_per_thread,
    concurrent_claims_take_each_run_once,
    waiting_runs_tells_claimable_runs_from_blocked_ones,
    concurrent_claims_take_one_run_per_thread,
    heartbeats_extend_the_lease,
    expired_leases_are_reclaimed_and_fence_the_old_worker,
    record_step_stores_each_step_once,
    the_history_reads_every_field_as_stored,
    finish_run_records_the_end_and_frees_the_thread,
    finish_run_after_stores_the_last_step_and_the_end_together,
    cancel_runs_stops_queued_and_flags_running_runs,
    messages_page_in_both_orders,
    events_after_returns_later_events_in_order,
    nothing_crosses_deployments,
);

async fn threads_need_an_active_project_in_scope(db: &TestDatabase) {
    let store = open(db).await;
    let a = tenant(&store, "threads-a").await;
    let b = tenant(&store, "threads-b").await;

    let new = NewThread {
        project_id: a.project.id.clone(),
        title: Label::parse("title", "Trip planning").unwrap(),
        system_instructions: Some("Answer in French.".into()),
        purpose: ThreadPurpose::Execution,
        capability_tags: vec![
            CapabilityTag::parse("t", "travel").unwrap(),
            CapabilityTag::parse("t", "data-validation").unwrap(),
        ],
        context_group: Some(ContextGroup::parse("c", "workspace:1:user:2").unwrap()),
    };
    let t = store.create_thread(&a.scope, &new).await.unwrap();
    assert!(t.id.as_str().starts_with(ThreadId::PREFIX));
    assert_eq!(t.project_id, a.project.id);
    assert_eq!(
        t.actor_id, a.project.actor_id,
        "the actor comes from the project"
    );
    assert_eq!(
        t.agent_id, a.project.agent_id,
        "the agent comes from the project"
    );
    assert_eq!(t.title, "Trip planning");
    assert_eq!(t.system_instructions.as_deref(), Some("Answer in French."));
    assert_eq!(t.purpose, ThreadPurpose::Execution);
    assert_eq!(t.capability_tags, vec!["travel", "data-validation"]);
    assert_eq!(t.context_group.as_deref(), Some("workspace:1:user:2"));
    assert_eq!(t.status, ThreadStatus::Idle);
    assert_eq!(store.get_thread(&a.scope, &t.id).await.unwrap(), t);

    // The defaults round-trip too.
    let plain = thread(&store, &a, "plain").await;
    let got = store.get_thread(&a.scope, &plain.id).await.unwrap();
    assert_eq!(got.system_instructions, None);
    assert_eq!(got.purpose, ThreadPurpose::Conversation);
    assert!(got.capability_tags.is_empty());
    assert_eq!(got.context_group, None);

    // Another deployment's project, or an unknown one, is not found.
    let err = store
        .create_thread(&b.scope, &new_thread(&a.project.id, "x"))
        .await
        .unwrap_err();
    assert!(is_not_found(&err, Entity::Project), "got {err:?}");
    let err = store
        .create_thread(&a.scope, &new_thread(&ProjectId::generate(), "x"))
        .await
        .unwrap_err();
    assert!(is_not_found(&err, Entity::Project), "got {err:?}");

    // Nothing new in an archived project.
    store
        .archive_project(&a.scope, &a.project.id)
        .await
        .unwrap();
    let err = store
        .create_thread(&a.scope, &new_thread(&a.project.id, "late"))
        .await
        .unwrap_err();
    assert!(is_conflict(&err, Conflict::ProjectArchived), "got {err:?}");
    // The other tenant's active project still works.
    thread(&store, &b, "fine").await;
    store.close().await;
}

async fn a_submission_creates_its_new_thread_or_nothing(db: &TestDatabase) {
    let store = open(db).await;
    let a = tenant(&store, "new-thread-a").await;
    let b = tenant(&store, "new-thread-b").await;
    let fresh = |project: &ProjectId, key: &str, hash: &str| {
        let id = ThreadId::generate();
        let mut s = submission(&id, "first words", MultitaskPolicy::Reject);
        s.new_thread = Some(Box::new(new_thread(project, "pool session")));
        s.idempotency = Some(Idempotency {
            operation: "askAgentPool:p".into(),
            key: key.into(),
            request_hash: hash.into(),
            result: json!({"thread_id": id.as_str()}),
        });
        (id, s)
    };

    // The thread and its first run in one transaction.
    let (id, s) = fresh(&a.project.id, "k-1", "h");
    let (run, _, events) = created(store.submit_run(&a.scope, &id, &s).await.unwrap());
    let made = store.get_thread(&a.scope, &id).await.unwrap();
    assert_eq!(
        (&made.project_id, &made.agent_id, made.title.as_str()),
        (&a.project.id, &a.project.agent_id, "pool session")
    );
    assert_eq!(run.thread_id, id);
    assert_eq!(history(&store, &a.scope, &id).await.len(), 1);
    assert_eq!(events.len(), 2);

    // A retry with the same key replays and creates no thread.
    let (other_id, retry) = fresh(&a.project.id, "k-1", "h");
    assert_eq!(
        store.submit_run(&a.scope, &other_id, &retry).await.unwrap(),
        SubmitOutcome::Replayed {
            result: json!({"thread_id": id.as_str()})
        }
    );
    let err = store.get_thread(&a.scope, &other_id).await.unwrap_err();
    assert!(is_not_found(&err, Entity::Thread), "got {err:?}");

    // A refused submission leaves no thread: a reused key, another deployment's project, an
    // archived project.
    let (reused_id, reused) = fresh(&a.project.id, "k-1", "another request");
    let err = store
        .submit_run(&a.scope, &reused_id, &reused)
        .await
        .unwrap_err();
    assert!(
        is_conflict(&err, Conflict::IdempotencyKeyReused),
        "got {err:?}"
    );
    let (foreign_id, foreign) = fresh(&a.project.id, "k-2", "h");
    let err = store
        .submit_run(&b.scope, &foreign_id, &foreign)
        .await
        .unwrap_err();
    assert!(is_not_found(&err, Entity::Project), "got {err:?}");
    store
        .archive_project(&a.scope, &a.project.id)
        .await
        .unwrap();
    let (late_id, late) = fresh(&a.project.id, "k-3", "h");
    let err = store
        .submit_run(&a.scope, &late_id, &late)
        .await
        .unwrap_err();
    assert!(is_conflict(&err, Conflict::ProjectArchived), "got {err:?}");
    for (scope, gone, key) in [
        (&a.scope, &reused_id, "k-1"),
        (&b.scope, &foreign_id, "k-2"),
        (&a.scope, &late_id, "k-3"),
    ] {
        let err = store.get_thread(scope, gone).await.unwrap_err();
        assert!(is_not_found(&err, Entity::Thread), "got {err:?}");
        if key != "k-1" {
            assert_eq!(
                store
                    .idempotent_result(scope, "askAgentPool:p", key, "h")
                    .await
                    .unwrap(),
                None,
                "a refusal records no key"
            );
        }
    }
    store.close().await;
}

async fn new_threads_share_their_project_and_hold_off_its_archive(db: &TestDatabase) {
    let store = open(db).await;
    let a = tenant(&store, "share").await;
    if db.backend() != tessera_store::Backend::Postgres {
        // One writer at a time: nothing to cross.
        thread(&store, &a, "t").await;
        return;
    }
    // A new thread in flight (an ask's submission holds its project until it commits).
    let (mut in_flight, pid) = hold(
        db,
        "SELECT id FROM actor_projects WHERE id = $1 FOR SHARE",
        a.project.id.as_str(),
    )
    .await;
    // Another new thread of the project does not wait for it ...
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        store.create_thread(&a.scope, &new_thread(&a.project.id, "side by side")),
    )
    .await
    .expect("a new thread waited for another one")
    .unwrap();
    // ... but an archive of the project does.
    let archiving = {
        let (store, scope, id) = (store.clone(), a.scope.clone(), a.project.id.clone());
        tokio::spawn(async move { store.archive_project(&scope, &id).await })
    };
    wait_until_blocked_by(&mut in_flight, pid, "the archive never waited").await;
    sqlx::query("COMMIT").execute(&mut in_flight).await.unwrap();
    archiving.await.unwrap().unwrap();
    store.close().await;
}

async fn submit_stores_the_message_and_queues_a_run(db: &TestDatabase) {
    let store = open(db).await;
    let a = tenant(&store, "submit").await;
    let t = thread(&store, &a, "t").await;

    let mut first = submission(&t.id, "Hello there", MultitaskPolicy::Enqueue);
    first.message.attachments = vec!["files/notes.txt".into()];
    let (run, interrupted, events) =
        created(store.submit_run(&a.scope, &t.id, &first).await.unwrap());
    assert!(interrupted.is_empty());
    assert_eq!(run.id, first.run_id);
    assert_eq!(run.thread_id, t.id);
    assert_eq!(run.status, RunStatus::Queued);
    assert_eq!(run.attempt, 0);
    assert_eq!(run.input_message_id, first.message.id);
    assert_eq!(run.stop_reason, None);
    assert!(!run.cancel_requested);
    assert_eq!(run.started_at, None);
    assert_eq!(run.finished_at, None);

    assert_eq!(
        kinds(&events),
        vec![event::MESSAGE_CREATED, event::RUN_STATUS]
    );
    assert_eq!(seqs(&events), vec![1, 2]);
    for e in &events {
        assert_eq!(e.thread_id, t.id);
        assert_eq!(e.run_id.as_ref(), Some(&run.id));
    }
    assert_eq!(events[0].data["message"]["id"], first.message.id.as_str());
    assert_eq!(events[0].data["message"]["content"], "Hello there");
    assert_eq!(events[1].data["run_id"], run.id.as_str());
    assert_eq!(events[1].data["status"], "queued");
    // What was returned is what was stored.
    assert_eq!(all_events(&store, &a.scope, &t.id).await, events);

    assert_eq!(store.get_run(&a.scope, &t.id, &run.id).await.unwrap(), run);
    assert_eq!(
        history(&store, &a.scope, &t.id).await,
        vec![first.message.clone()]
    );
    let listed = store
        .list_messages(&a.scope, &t.id, &PageRequest::default(), Order::OldestFirst)
        .await
        .unwrap();
    assert_eq!(listed.items, vec![first.message.clone()]);
    assert!(!listed.has_more);

    // Numbering continues on the next submit.
    let (second, _, events) = submit_with(
        &store,
        &a.scope,
        &t.id,
        "And again",
        MultitaskPolicy::Enqueue,
    )
    .await;
    assert_eq!(seqs(&events), vec![3, 4]);
    assert_eq!(
        kinds(&events),
        vec![event::MESSAGE_CREATED, event::RUN_STATUS]
    );
    assert_eq!(events[1].run_id.as_ref(), Some(&second.id));
    assert_eq!(history(&store, &a.scope, &t.id).await.len(), 2);

    // Unknown thread: nothing is stored anywhere.
    let ghost = ThreadId::generate();
    let err = store
        .submit_run(
            &a.scope,
            &ghost,
            &submission(&ghost, "hi", MultitaskPolicy::Enqueue),
        )
        .await
        .unwrap_err();
    assert!(is_not_found(&err, Entity::Thread), "got {err:?}");

    // Another deployment's thread is not found either, and gets nothing.
    let b = tenant(&store, "submit-b").await;
    let err = store
        .submit_run(
            &b.scope,
            &t.id,
            &submission(&t.id, "hi", MultitaskPolicy::Enqueue),
        )
        .await
        .unwrap_err();
    assert!(is_not_found(&err, Entity::Thread), "got {err:?}");
    assert_eq!(history(&store, &a.scope, &t.id).await.len(), 2);
    assert_eq!(all_events(&store, &a.scope, &t.id).await.len(), 4);
    store.close().await;
}

async fn event_numbers_are_per_thread_and_gapless_under_concurrency(db: &TestDatabase) {
    let store = open(db).await;
    let a = tenant(&store, "seq").await;
    let t1 = thread(&store, &a, "one").await;
    let t2 = thread(&store, &a, "two").await;

    let (_, _, e1) = submit_with(&store, &a.scope, &t1.id, "a", MultitaskPolicy::Enqueue).await;
    let (_, _, e2) = submit_with(&store, &a.scope, &t2.id, "b", MultitaskPolicy::Enqueue).await;
    let (_, _, e3) = submit_with(&store, &a.scope, &t1.id, "c", MultitaskPolicy::Enqueue).await;
    assert_eq!(seqs(&e1), vec![1, 2]);
    assert_eq!(seqs(&e2), vec![1, 2], "each thread numbers its own events");
    assert_eq!(seqs(&e3), vec![3, 4]);

    // Concurrent submits to one thread: every event gets its own number, none is skipped.
    let barrier = Arc::new(tokio::sync::Barrier::new(8));
    let mut tasks = Vec::new();
    for i in 0..8 {
        let store = store.clone();
        let barrier = barrier.clone();
        let scope = a.scope.clone();
        let thread_id = t2.id.clone();
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let s = submission(&thread_id, &format!("m{i}"), MultitaskPolicy::Enqueue);
            created(store.submit_run(&scope, &thread_id, &s).await.unwrap()).2
        }));
    }
    let mut numbers = Vec::new();
    for task in tasks {
        let events = task.await.unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(
            events[1].seq,
            events[0].seq + 1,
            "one submit's events are adjacent"
        );
        numbers.extend(seqs(&events));
    }
    numbers.sort_unstable();
    assert_eq!(numbers, (3..=18).collect::<Vec<i64>>());
    let stored = all_events(&store, &a.scope, &t2.id).await;
    assert_eq!(seqs(&stored), (1..=18).collect::<Vec<i64>>());
    assert_eq!(history(&store, &a.scope, &t2.id).await.len(), 9);
    assert_eq!(all_events(&store, &a.scope, &t1.id).await.len(), 4);
    store.close().await;
}

/// A submission without a policy of its own follows the thread's agent's, read by its own
/// transaction: whatever the agent says at that moment, the default once it is deleted.
async fn a_submission_without_a_policy_follows_the_agents(db: &TestDatabase) {
    let store = open(db).await;
    let a = tenant(&store, "policy").await;
    let other = tenant(&store, "policy-other").await;
    let t = thread(&store, &a, "t").await;
    // A submission to `t` without a policy of its own.
    let send = |text: &str| {
        let submit = SubmitRun {
            policy: None,
            ..submission(&t.id, text, MultitaskPolicy::Enqueue)
        };
        let (store, scope, thread_id) = (&store, &a.scope, &t.id);
        async move { store.submit_run(scope, thread_id, &submit).await }
    };
    let set_policy = |policy: MultitaskPolicy| {
        let (store, scope, agent_id) = (&store, &a.scope, &t.agent_id);
        async move {
            let agent = store.get_agent(scope, agent_id).await.unwrap();
            let mut spec = agent.spec.clone();
            spec.multitask = policy;
            store
                .update_agent(scope, &agent.id, agent.version, &spec)
                .await
                .unwrap();
        }
    };

    // The agent's default, `enqueue`: the second run queues behind the first.
    let first = created(send("one").await.unwrap()).0;
    let second = created(send("two").await.unwrap()).0;
    assert_eq!(
        (first.status, second.status),
        (RunStatus::Queued, RunStatus::Queued)
    );

    // `reject` while runs are open: refused, nothing written.
    set_policy(MultitaskPolicy::Reject).await;
    let err = send("three").await.unwrap_err();
    assert!(is_conflict(&err, Conflict::RunActive), "got {err:?}");
    assert_eq!(history(&store, &a.scope, &t.id).await.len(), 2);

    // `interrupt`: the running run is asked to stop, the queued one is cancelled at once
    // (on PostgreSQL, after the open runs were locked).
    let claimed = claim(&store, "w").await;
    assert_eq!(claimed.run.id, first.id);
    set_policy(MultitaskPolicy::Interrupt).await;
    let (fourth, interrupted, _) = created(send("four").await.unwrap());
    assert_eq!(interrupted, vec![first.id.clone()]);
    let running = store.get_run(&a.scope, &t.id, &first.id).await.unwrap();
    assert_eq!(running.status, RunStatus::Running, "its worker stops it");
    assert!(running.cancel_requested);
    let queued = store.get_run(&a.scope, &t.id, &second.id).await.unwrap();
    assert_eq!(queued.status, RunStatus::Cancelled);
    assert_eq!(queued.stop_reason, Some(StopReason::Interrupted));
    store
        .finish_run(
            &claimed.lease,
            &end(RunStatus::Cancelled, StopReason::Interrupted),
        )
        .await
        .unwrap();

    // The agent deleted: the default again, `enqueue`.
    // (No active project may use it: the thread's is archived first.)
    store
        .archive_project(&a.scope, &t.project_id)
        .await
        .unwrap();
    store.delete_agent(&a.scope, &t.agent_id).await.unwrap();
    let fifth = created(send("five").await.unwrap()).0;
    assert_eq!(fifth.status, RunStatus::Queued);
    assert_eq!(
        store
            .get_run(&a.scope, &t.id, &fourth.id)
            .await
            .unwrap()
            .status,
        RunStatus::Queued,
        "queued behind, not interrupting"
    );

    // Another deployment's thread, or none: not found.
    for (scope, id) in [(&other.scope, &t.id), (&a.scope, &ThreadId::generate())] {
        let submit = SubmitRun {
            policy: None,
            ..submission(id, "six", MultitaskPolicy::Enqueue)
        };
        let err = store.submit_run(scope, id, &submit).await.unwrap_err();
        assert!(is_not_found(&err, Entity::Thread), "{err:?}");
    }
    store.close().await;
}

/// SQLite writes concurrent submissions, steps and ends in one transaction (group commit); a
/// refused one must roll back alone, and everyone else's must be stored in full.
async fn concurrent_writes_that_fail_leave_the_others_alone(db: &TestDatabase) {
    let store = open(db).await;
    let a = tenant(&store, "group").await;
    let busy = thread(&store, &a, "busy").await;
    submit_with(&store, &a.scope, &busy.id, "first", MultitaskPolicy::Reject).await;
    let mut fresh = Vec::new();
    for i in 0..8 {
        fresh.push(thread(&store, &a, &format!("fresh-{i}")).await);
    }
    let stale = Lease {
        run_id: RunId::generate(),
        attempt: 1,
    };

    let barrier = Arc::new(tokio::sync::Barrier::new(24));
    let mut refused = Vec::new();
    let mut accepted = Vec::new();
    let mut fenced = Vec::new();
    for (i, t) in fresh.iter().enumerate() {
        for (thread_id, list) in [(&busy.id, &mut refused), (&t.id, &mut accepted)] {
            let (store, barrier, scope) = (store.clone(), barrier.clone(), a.scope.clone());
            let thread_id = thread_id.clone();
            list.push(tokio::spawn(async move {
                let s = submission(&thread_id, &format!("m{i}"), MultitaskPolicy::Reject);
                barrier.wait().await;
                store.submit_run(&scope, &thread_id, &s).await
            }));
        }
        let (store, barrier, lease) = (store.clone(), barrier.clone(), stale.clone());
        fenced.push(tokio::spawn(async move {
            barrier.wait().await;
            store
                .finish_run(&lease, &end(RunStatus::Completed, StopReason::Completed))
                .await
        }));
    }
    for task in refused {
        let err = task.await.unwrap().unwrap_err();
        assert!(is_conflict(&err, Conflict::RunActive), "got {err:?}");
    }
    for task in fenced {
        assert!(is_lease_lost(task.await.unwrap()));
    }
    for task in accepted {
        let (run, _, events) = created(task.await.unwrap().unwrap());
        assert_eq!(run.status, RunStatus::Queued);
        assert_eq!(seqs(&events), vec![1, 2]);
    }
    assert_eq!(history(&store, &a.scope, &busy.id).await.len(), 1);
    // The refused submissions reserved no event numbers: the next event is number 3.
    store.cancel_runs(&a.scope, &busy.id).await.unwrap();
    assert_eq!(
        seqs(&all_events(&store, &a.scope, &busy.id).await),
        vec![1, 2, 3]
    );
    for t in &fresh {
        assert_eq!(history(&store, &a.scope, &t.id).await.len(), 1);
        assert_eq!(seqs(&all_events(&store, &a.scope, &t.id).await), vec![1, 2]);
    }
    store.close().await;
}

/// Submissions racing for an idle thread under `reject`: exactly one is accepted. SQLite answers
/// the open-run check inside the submission's thread update; PostgreSQL must check again after
/// its update waited for the thread's lock, or the waiting submissions would not see the
/// winner's run.
async fn concurrent_rejecting_submissions_to_an_idle_thread_accept_one(db: &TestDatabase) {
    let store = open(db).await;
    let a = tenant(&store, "reject-race").await;
    let t = thread(&store, &a, "t").await;
    let racers = 16;
    let barrier = Arc::new(tokio::sync::Barrier::new(racers));
    let tasks: Vec<_> = (0..racers)
        .map(|i| {
            let (store, barrier, scope, thread_id) = (
                store.clone(),
                barrier.clone(),
                a.scope.clone(),
                t.id.clone(),
            );
            tokio::spawn(async move {
                let s = submission(&thread_id, &format!("m{i}"), MultitaskPolicy::Reject);
                barrier.wait().await;
                store.submit_run(&scope, &thread_id, &s).await
            })
        })
        .collect();
    let mut accepted = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(outcome) => {
                created(outcome);
                accepted += 1;
            }
            Err(err) => assert!(is_conflict(&err, Conflict::RunActive), "got {err:?}"),
        }
    }
    assert_eq!(accepted, 1, "exactly one submission may open a run");
    assert_eq!(history(&store, &a.scope, &t.id).await.len(), 1);
    assert_eq!(seqs(&all_events(&store, &a.scope, &t.id).await), vec![1, 2]);
    store.close().await;
}

async fn reject_policy_refuses_while_a_run_is_open(db: &TestDatabase) {
    let store = open(db).await;
    let a = tenant(&store, "reject").await;
    let t = thread(&store, &a, "t").await;

    // No open run: `reject` accepts.
    let (first, _, _) = submit_with(&store, &a.scope, &t.id, "one", MultitaskPolicy::Reject).await;

    // Queued run open: refused, and nothing is written.
    let err = store
        .submit_run(
            &a.scope,
            &t.id,
            &submission(&t.id, "two", MultitaskPolicy::Reject),
        )
        .await
        .unwrap_err();
    assert!(is_conflict(&err, Conflict::RunActive), "got {err:?}");
    assert_eq!(history(&store, &a.scope, &t.id).await.len(), 1);
    assert_eq!(all_events(&store, &a.scope, &t.id).await.len(), 2);

    // Running run open: still refused.
    let claimed = claim(&store, "w").await;
    assert_eq!(claimed.run.id, first.id);
    let refused = submission(&t.id, "three", MultitaskPolicy::Reject);
    let err = store
        .submit_run(&a.scope, &t.id, &refused)
        .await
        .unwrap_err();
    assert!(is_conflict(&err, Conflict::RunActive), "got {err:?}");
    let err = store
        .get_run(&a.scope, &t.id, &refused.run_id)
        .await
        .unwrap_err();
    assert!(is_not_found(&err, Entity::Run), "got {err:?}");

    // Once the run is finished the thread accepts again.
    store
        .finish_run(
            &claimed.lease,
            &end(RunStatus::Completed, StopReason::Completed),
        )
        .await
        .unwrap();
    let (run, _, _) = submit_with(&store, &a.scope, &t.id, "four", MultitaskPolicy::Reject).await;
    assert_eq!(run.status, RunStatus::Queued);
    assert_eq!(history(&store, &a.scope, &t.id).await.len(), 2);
    store.close().await;
}

async fn enqueue_policy_queues_behind_the_open_run(db: &TestDatabase) {
    let store = open(db).await;
    let a = tenant(&store, "enqueue").await;
    let t = thread(&store, &a, "t").await;

    let first = queue(&store, &a.scope, &t.id, "one").await;
    let (second, interrupted, _) =
        submit_with(&store, &a.scope, &t.id, "two", MultitaskPolicy::Enqueue).await;
    assert!(interrupted.is_empty());
    assert_ne!(second.id, first.id);
    for id in [&first.id, &second.id] {
        let run = store.get_run(&a.scope, &t.id, id).await.unwrap();
        assert_eq!(run.status, RunStatus::Queued);
        assert!(!run.cancel_requested);
    }

    // Also behind a running run, which is left alone.
    let claimed = claim(&store, "w").await;
    assert_eq!(claimed.run.id, first.id);
    let (third, interrupted, _) =
        submit_with(&store, &a.scope, &t.id, "three", MultitaskPolicy::Enqueue).await;
    assert!(interrupted.is_empty());
    assert_eq!(third.status, RunStatus::Queued);
    let running = store.get_run(&a.scope, &t.id, &first.id).await.unwrap();
    assert_eq!(running.status, RunStatus::Running);
    assert!(!running.cancel_requested);
    assert_eq!(
        store
            .heartbeat(&claimed.lease, Timestamp::now().plus_secs(60))
            .await
            .unwrap(),
        CancelRequest::None
    );
    assert_eq!(history(&store, &a.scope, &t.id).await.len(), 3);
    store.close().await;
}

/// Submits with a free worker waiting (`StartHere`); returns the run and, when it was claimed
/// for that worker, the claim.
async fn submit_here(
    store: &Arc<dyn Store>,
    scope: &Scope,
    thread_id: &ThreadId,
    text: &str,
    policy: MultitaskPolicy,
) -> Result<(Run, Option<Claimed>, Vec<ThreadEvent>), StoreError> {
    let submit = SubmitRun {
        start: Some(StartHere {
            owner: "api-node".into(),
            lease_ms: LEASE_MS,
        }),
        ..submission(thread_id, text, policy)
    };
    match store.submit_run(scope, thread_id, &submit).await? {
        SubmitOutcome::Created {
            run,
            events,
            started,
            ..
        } => Ok((run, started.map(|c| *c), events)),
        SubmitOutcome::Replayed { result } => panic!("unexpected replay {result}"),
    }
}

async fn a_submission_claims_its_run_for_a_free_worker_only_when_nothing_is_open(
    db: &TestDatabase,
) {
    let store = open(db).await;
    let a = tenant(&store, "start-here").await;
    let t = thread(&store, &a, "t").await;

    // An idle thread: the run is claimed in the submission's transaction, as a claim would.
    let (run, started, events) =
        submit_here(&store, &a.scope, &t.id, "go", MultitaskPolicy::Enqueue)
            .await
            .unwrap();
    let started = started.expect("claimed for the free worker");
    assert_eq!(run.status, RunStatus::Running);
    assert_eq!(run.attempt, 1);
    assert!(run.started_at.is_some());
    assert_eq!(started.run, run);
    assert_eq!(
        started.lease,
        Lease {
            run_id: run.id.clone(),
            attempt: 1
        }
    );
    assert_eq!(started.scope, a.scope);
    assert_eq!(started.stop, CancelRequest::None);
    assert_eq!(started.thread.id, t.id);
    assert_eq!(started.thread.status, ThreadStatus::Running);
    assert!(
        started.events.is_empty(),
        "the submission's events carry them"
    );
    // message.created, then queued and running, numbered without a gap.
    assert_eq!(
        kinds(&events),
        vec![event::MESSAGE_CREATED, event::RUN_STATUS, event::RUN_STATUS]
    );
    let statuses: Vec<_> = events[1..]
        .iter()
        .map(|e| e.data["status"].clone())
        .collect();
    assert_eq!(statuses, vec![json!("queued"), json!("running")]);
    assert_eq!(events, all_events(&store, &a.scope, &t.id).await);
    assert!(events.windows(2).all(|w| w[1].seq == w[0].seq + 1));
    // No worker can claim it, and its lease works like any claim's.
    claim_none(&store).await;
    assert_eq!(
        store
            .heartbeat(&started.lease, Timestamp::now().plus_secs(60))
            .await
            .unwrap(),
        CancelRequest::None
    );

    // While it is open, later submissions queue behind it whatever the policy allows.
    let (second, none, _) = submit_here(&store, &a.scope, &t.id, "two", MultitaskPolicy::Enqueue)
        .await
        .unwrap();
    assert!(none.is_none());
    assert_eq!(second.status, RunStatus::Queued);
    assert_eq!(second.attempt, 0);
    let refused = submit_here(&store, &a.scope, &t.id, "three", MultitaskPolicy::Reject).await;
    assert!(matches!(
        refused,
        Err(StoreError::Conflict(Conflict::RunActive))
    ));
    let (third, none, _) = submit_here(&store, &a.scope, &t.id, "four", MultitaskPolicy::Interrupt)
        .await
        .unwrap();
    assert!(none.is_none(), "the interrupted run is still open");
    assert_eq!(third.status, RunStatus::Queued);
    let first = store.get_run(&a.scope, &t.id, &run.id).await.unwrap();
    assert!(first.cancel_requested, "the running run was asked to stop");
    let second = store.get_run(&a.scope, &t.id, &second.id).await.unwrap();
    assert_eq!(
        second.status,
        RunStatus::Cancelled,
        "queued runs stop at once"
    );

    // The started run ends like a claimed one; then the queued run is the workers', not the
    // next submission's: a queued run goes first.
    store
        .finish_run(
            &started.lease,
            &end(RunStatus::Cancelled, StopReason::Interrupted),
        )
        .await
        .unwrap();
    let (fifth, none, _) = submit_here(&store, &a.scope, &t.id, "five", MultitaskPolicy::Enqueue)
        .await
        .unwrap();
    assert!(none.is_none(), "a queued run waits on the thread");
    assert_eq!(fifth.status, RunStatus::Queued);
    for queued in [&third, &fifth] {
        let next = claim(&store, "w").await;
        assert_eq!(next.run.id, queued.id);
        store
            .finish_run(
                &next.lease,
                &end(RunStatus::Completed, StopReason::Completed),
            )
            .await
            .unwrap();
    }

    // A node that dies after the submission loses nothing: once the lease expires, any worker
    // resumes the run, and the dead node's lease is fenced off.
    let u = thread(&store, &a, "u").await;
    let t0 = Timestamp::now();
    let (run, started, _) = submit_here(&store, &a.scope, &u.id, "go", MultitaskPolicy::Reject)
        .await
        .unwrap();
    let started = started.expect("claimed on an idle thread");
    let later = Timestamp::from_millis(t0.as_millis() + LEASE_MS + 1_000);
    let resumed = store
        .claim_run("w2", later, LEASE_MS)
        .await
        .unwrap()
        .expect("the expired run is reclaimed");
    assert_eq!(resumed.run.id, run.id);
    assert_eq!(resumed.lease.attempt, 2);
    assert!(matches!(
        store.heartbeat(&started.lease, later).await,
        Err(StoreError::LeaseLost)
    ));

    // `interrupt` with only queued runs open cancels them and starts the new run at once.
    let v = thread(&store, &a, "v").await;
    let queued = queue(&store, &a.scope, &v.id, "waiting").await;
    let (run, started, _) = submit_here(&store, &a.scope, &v.id, "now", MultitaskPolicy::Interrupt)
        .await
        .unwrap();
    assert!(started.is_some());
    assert_eq!(run.status, RunStatus::Running);
    let queued = store.get_run(&a.scope, &v.id, &queued.id).await.unwrap();
    assert_eq!(queued.status, RunStatus::Cancelled);
    store.close().await;
}

async fn interrupt_policy_cancels_queued_runs_and_flags_the_running_one(db: &TestDatabase) {
    let store = open(db).await;
    let a = tenant(&store, "interrupt").await;
    let t = thread(&store, &a, "t").await;

    // Only a queued run: it is cancelled at once as interrupted.
    let r1 = queue(&store, &a.scope, &t.id, "one").await;
    let (r2, interrupted, events) =
        submit_with(&store, &a.scope, &t.id, "two", MultitaskPolicy::Interrupt).await;
    assert!(
        interrupted.is_empty(),
        "a queued run needs no worker to stop it"
    );
    let cancelled = store.get_run(&a.scope, &t.id, &r1.id).await.unwrap();
    assert_eq!(cancelled.status, RunStatus::Cancelled);
    assert_eq!(cancelled.stop_reason, Some(StopReason::Interrupted));
    assert!(cancelled.finished_at.is_some());
    assert_eq!(
        kinds(&events),
        vec![event::RUN_STATUS, event::MESSAGE_CREATED, event::RUN_STATUS]
    );
    assert_eq!(seqs(&events), vec![3, 4, 5]);
    assert_eq!(events[0].run_id.as_ref(), Some(&r1.id));
    assert_eq!(events[0].data["status"], "cancelled");
    assert_eq!(events[0].data["stop_reason"], "interrupted");
    assert_eq!(events[2].run_id.as_ref(), Some(&r2.id));
    assert_eq!(r2.status, RunStatus::Queued);

    // A running run and a queued one behind it.
    let claimed = claim(&store, "w").await;
    assert_eq!(claimed.run.id, r2.id, "the interrupted run is not claimed");
    let r3 = queue(&store, &a.scope, &t.id, "three").await;
    let (r4, interrupted, events) =
        submit_with(&store, &a.scope, &t.id, "four", MultitaskPolicy::Interrupt).await;
    assert_eq!(interrupted, vec![r2.id.clone()]);
    let running = store.get_run(&a.scope, &t.id, &r2.id).await.unwrap();
    assert_eq!(running.status, RunStatus::Running, "its worker stops it");
    assert!(running.cancel_requested);
    let queued = store.get_run(&a.scope, &t.id, &r3.id).await.unwrap();
    assert_eq!(queued.status, RunStatus::Cancelled);
    assert_eq!(queued.stop_reason, Some(StopReason::Interrupted));
    assert_eq!(
        kinds(&events),
        vec![event::RUN_STATUS, event::MESSAGE_CREATED, event::RUN_STATUS]
    );
    assert_eq!(events[0].run_id.as_ref(), Some(&r3.id));
    assert_eq!(r4.status, RunStatus::Queued);
    assert_eq!(
        store
            .heartbeat(&claimed.lease, Timestamp::now().plus_secs(60))
            .await
            .unwrap(),
        CancelRequest::Interrupt
    );

    // The newest run waits for the interrupted one to end, then is next.
    claim_none(&store).await;
    store
        .finish_run(
            &claimed.lease,
            &end(RunStatus::Cancelled, StopReason::Interrupted),
        )
        .await
        .unwrap();
    assert_eq!(claim(&store, "w").await.run.id, r4.id);
    store.close().await;
}

async fn idempotent_submits_replay_the_first_answer(db: &TestDatabase) {
    let store = open(db).await;
    let a = tenant(&store, "idem").await;
    let t = thread(&store, &a, "t").await;
    let operation = format!("executeAgentThreadAsync:{}", t.id);

    let mut first = submission(&t.id, "once", MultitaskPolicy::Enqueue);
    let result = json!({"run_id": first.run_id.as_str(), "status": "queued"});
    let idem = Idempotency {
        operation: operation.clone(),
        key: "key-1".into(),
        request_hash: "hash-1".into(),
        result: result.clone(),
    };
    first.idempotency = Some(idem.clone());
    let (run, _, _) = created(store.submit_run(&a.scope, &t.id, &first).await.unwrap());

    // The retry carries new ids (the caller makes them per request) but the same key and hash.
    let mut retry = submission(&t.id, "once", MultitaskPolicy::Enqueue);
    retry.idempotency = Some(Idempotency {
        result: json!({"run_id": retry.run_id.as_str(), "status": "queued"}),
        ..idem.clone()
    });
    let outcome = store.submit_run(&a.scope, &t.id, &retry).await.unwrap();
    assert_eq!(
        outcome,
        SubmitOutcome::Replayed {
            result: result.clone()
        }
    );
    assert_eq!(
        history(&store, &a.scope, &t.id).await,
        vec![first.message.clone()]
    );
    assert_eq!(all_events(&store, &a.scope, &t.id).await.len(), 2);
    let err = store
        .get_run(&a.scope, &t.id, &retry.run_id)
        .await
        .unwrap_err();
    assert!(is_not_found(&err, Entity::Run), "got {err:?}");
    // Even a `reject` retry replays instead of conflicting with the run it created.
    retry.policy = Some(MultitaskPolicy::Reject);
    assert_eq!(
        store.submit_run(&a.scope, &t.id, &retry).await.unwrap(),
        SubmitOutcome::Replayed {
            result: result.clone()
        }
    );

    // The same key for another request is refused.
    let mut other = submission(&t.id, "something else", MultitaskPolicy::Enqueue);
    other.idempotency = Some(Idempotency {
        request_hash: "hash-2".into(),
        ..idem.clone()
    });
    let err = store.submit_run(&a.scope, &t.id, &other).await.unwrap_err();
    assert!(
        is_conflict(&err, Conflict::IdempotencyKeyReused),
        "got {err:?}"
    );
    assert_eq!(history(&store, &a.scope, &t.id).await.len(), 1);

    // A different key is a different request.
    let mut fresh = submission(&t.id, "twice", MultitaskPolicy::Enqueue);
    fresh.idempotency = Some(Idempotency {
        key: "key-2".into(),
        ..idem.clone()
    });
    created(store.submit_run(&a.scope, &t.id, &fresh).await.unwrap());
    assert_eq!(history(&store, &a.scope, &t.id).await.len(), 2);

    // Looking the key up directly.
    assert_eq!(
        store
            .idempotent_result(&a.scope, &operation, "key-1", "hash-1")
            .await
            .unwrap(),
        Some(result.clone())
    );
    let err = store
        .idempotent_result(&a.scope, &operation, "key-1", "hash-2")
        .await
        .unwrap_err();
    assert!(
        is_conflict(&err, Conflict::IdempotencyKeyReused),
        "got {err:?}"
    );
    assert_eq!(
        store
            .idempotent_result(&a.scope, &operation, "nope", "hash-1")
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .idempotent_result(&a.scope, "otherOperation", "key-1", "hash-1")
            .await
            .unwrap(),
        None,
        "keys are scoped to their operation"
    );

    // Keys belong to their deployment.
    let b = tenant(&store, "idem-b").await;
    assert_eq!(
        store
            .idempotent_result(&b.scope, &operation, "key-1", "hash-1")
            .await
            .unwrap(),
        None
    );
    let tb = thread(&store, &b, "tb").await;
    let mut in_b = submission(&tb.id, "once", MultitaskPolicy::Enqueue);
    in_b.idempotency = Some(idem.clone());
    created(store.submit_run(&b.scope, &tb.id, &in_b).await.unwrap());

    // A cancellation under a key records its answer in its own transaction; a retry replays
    // it although nothing is left to cancel, and a refused one records nothing.
    let answer = |runs: &[Run]| json!({"cancelled": runs.len()});
    let cancel_op = format!("cancelThreadRuns:{}", t.id);
    let cancel = IdempotentWrite {
        operation: &cancel_op,
        key: "cancel-1",
        request_hash: "h",
        answer: &answer,
    };
    let Written::Done(stopped) = store
        .cancel_runs_once(&a.scope, &t.id, &cancel)
        .await
        .unwrap()
    else {
        panic!("the first cancellation replayed");
    };
    assert_eq!(stopped.len(), 2);
    assert_eq!(
        store
            .cancel_runs_once(&a.scope, &t.id, &cancel)
            .await
            .unwrap(),
        Written::Replayed(json!({"cancelled": 2}))
    );
    assert_eq!(
        store
            .idempotent_result(&a.scope, &cancel_op, "cancel-1", "h")
            .await
            .unwrap(),
        Some(json!({"cancelled": 2}))
    );
    let reused = IdempotentWrite {
        request_hash: "other",
        ..cancel
    };
    let err = store
        .cancel_runs_once(&a.scope, &t.id, &reused)
        .await
        .unwrap_err();
    assert!(
        is_conflict(&err, Conflict::IdempotencyKeyReused),
        "got {err:?}"
    );
    let refused = IdempotentWrite {
        key: "cancel-2",
        ..cancel
    };
    let err = store
        .cancel_runs_once(&a.scope, &t.id, &refused)
        .await
        .unwrap_err();
    assert!(is_conflict(&err, Conflict::RunNotActive), "got {err:?}");
    assert_eq!(
        store
            .idempotent_result(&a.scope, &cancel_op, "cancel-2", "h")
            .await
            .unwrap(),
        None,
        "a refusal records nothing"
    );
    // Another deployment's thread is not found, even with a key this deployment recorded.
    let err = store
        .cancel_runs_once(&b.scope, &t.id, &cancel)
        .await
        .unwrap_err();
    assert!(is_not_found(&err, Entity::Thread), "got {err:?}");
    assert_eq!(
        store
            .idempotent_result(&b.scope, &cancel_op, "cancel-1", "h")
            .await
            .unwrap(),
        None
    );

    // Pruning deletes records older than the cut-off only.
    assert_eq!(
        store
            .prune_idempotency(Timestamp::now().plus_secs(-3600))
            .await
            .unwrap(),
        0
    );
    assert!(store
        .idempotent_result(&a.scope, &operation, "key-1", "hash-1")
        .await
        .unwrap()
        .is_some());
    assert_eq!(
        store
            .prune_idempotency(Timestamp::now().plus_secs(1))
            .await
            .unwrap(),
        4
    );
    assert_eq!(
        store
            .idempotent_result(&a.scope, &operation, "key-1", "hash-1")
            .await
            .unwrap(),
        None
    );
    // After pruning the key is free again: the same request creates a new run.
    retry.policy = Some(MultitaskPolicy::Enqueue);
    let (again, _, _) = created(store.submit_run(&a.scope, &t.id, &retry).await.unwrap());
    assert_eq!(again.id, retry.run_id);
    assert_ne!(again.id, run.id);
    store.close().await;
}

async fn concurrent_idempotent_submits_create_one_run(db: &TestDatabase) {
    let store = open(db).await;
    let a = tenant(&store, "idem-race").await;
    let t = thread(&store, &a, "t").await;
    let operation = format!("executeAgentThreadAsync:{}", t.id);

    // Retries of one request racing each other: one creates, the others replay its answer.
    let barrier = Arc::new(tokio::sync::Barrier::new(6));
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let store = store.clone();
        let barrier = barrier.clone();
        let scope = a.scope.clone();
        let thread_id = t.id.clone();
        let operation = operation.clone();
        tasks.push(tokio::spawn(async move {
            let mut s = submission(&thread_id, "once", MultitaskPolicy::Enqueue);
            s.idempotency = Some(Idempotency {
                operation,
                key: "race".into(),
                request_hash: "h".into(),
                result: json!({"run_id": s.run_id.as_str()}),
            });
            barrier.wait().await;
            store.submit_run(&scope, &thread_id, &s).await
        }));
    }
    let mut created_runs = Vec::new();
    let mut replays = Vec::new();
    for task in tasks {
        match task.await.unwrap() {
            Ok(SubmitOutcome::Created { run, .. }) => created_runs.push(run),
            Ok(SubmitOutcome::Replayed { result }) => replays.push(result),
            Err(err) => panic!("a retry of the same request failed: {err:?}"),
        }
    }
    assert_eq!(created_runs.len(), 1, "exactly one retry creates the run");
    let answer = json!({"run_id": created_runs[0].id.as_str()});
    assert_eq!(replays.len(), 5);
    assert!(
        replays.iter().all(|r| *r == answer),
        "replays carry the first answer"
    );
    assert_eq!(history(&store, &a.scope, &t.id).await.len(), 1);
    assert_eq!(all_events(&store, &a.scope, &t.id).await.len(), 2);
    store.close().await;
}

async fn concurrent_idempotent_cancels_stop_once(db: &TestDatabase) {
    let store = open(db).await;
    let a = tenant(&store, "cancel-race").await;
    let t = thread(&store, &a, "t").await;
    let run = queue(&store, &a.scope, &t.id, "first").await;
    let operation = format!("executeAgentThreadAsync:{}", t.id);

    // Retries of one cancellation racing each other: one cancels, the others wait for its
    // transaction and replay its answer instead of finding nothing to cancel.
    let barrier = Arc::new(tokio::sync::Barrier::new(6));
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let store = store.clone();
        let barrier = barrier.clone();
        let scope = a.scope.clone();
        let thread_id = t.id.clone();
        let operation = operation.clone();
        tasks.push(tokio::spawn(async move {
            let answer = |runs: &[Run]| json!({"run_ids": runs.iter().map(|r| r.id.as_str()).collect::<Vec<_>>()});
            let key = IdempotentWrite {
                operation: &operation,
                key: "race",
                request_hash: "h",
                answer: &answer,
            };
            barrier.wait().await;
            store.cancel_runs_once(&scope, &thread_id, &key).await
        }));
    }
    let mut done = Vec::new();
    let mut replays = Vec::new();
    for task in tasks {
        match task.await.unwrap() {
            Ok(Written::Done(runs)) => done.push(runs),
            Ok(Written::Replayed(first)) => replays.push(first),
            Err(err) => panic!("a retry of the same cancellation failed: {err:?}"),
        }
    }
    assert_eq!(done.len(), 1, "exactly one retry cancels");
    assert_eq!(done[0].len(), 1);
    assert_eq!(done[0][0].id, run.id);
    assert_eq!(replays.len(), 5);
    let answer = json!({"run_ids": [run.id.as_str()]});
    assert!(
        replays.iter().all(|r| *r == answer),
        "replays carry the first answer: {replays:?}"
    );
    store.close().await;
}

async fn claims_take_the_oldest_run_one_per_thread(db: &TestDatabase) {
    let store = open(db).await;
    let a = tenant(&store, "claims").await;
    let t1 = thread(&store, &a, "one").await;
    let t2 = thread(&store, &a, "two").await;
    claim_none(&store).await;

    let r1 = queue(&store, &a.scope, &t1.id, "first").await;
    let r2 = queue(&store, &a.scope, &t1.id, "second").await;
    let r3 = queue(&store, &a.scope, &t2.id, "third").await;

    let before = Timestamp::now();
    let c1 = claim(&store, "w1").await;
    assert_eq!(c1.run.id, r1.id, "the oldest run first");
    assert_eq!(c1.scope, a.scope);
    assert_eq!(
        c1.lease,
        Lease {
            run_id: r1.id.clone(),
            attempt: 1
        }
    );
    assert_eq!(c1.run.status, RunStatus::Running);
    assert_eq!(c1.run.attempt, 1);
    assert!(c1.run.started_at.is_some_and(|s| s >= before));
    assert_eq!(c1.thread.id, t1.id);
    assert_eq!(c1.thread.status, ThreadStatus::Running);
    assert_eq!(kinds(&c1.events), vec![event::RUN_STATUS]);
    assert_eq!(seqs(&c1.events), vec![5]);
    assert_eq!(c1.events[0].run_id.as_ref(), Some(&r1.id));
    assert_eq!(c1.events[0].data["status"], "running");
    assert_eq!(
        store.get_run(&a.scope, &t1.id, &r1.id).await.unwrap(),
        c1.run
    );
    assert_eq!(
        settled(store.get_thread(&a.scope, &t1.id).await.unwrap()),
        settled(c1.thread.clone())
    );
    assert_eq!(
        all_events(&store, &a.scope, &t1.id).await.last(),
        c1.events.last()
    );

    // The thread's next run waits; another thread's run does not.
    let c2 = claim(&store, "w2").await;
    assert_eq!(c2.run.id, r3.id);
    assert_eq!(c2.thread.id, t2.id);
    assert_eq!(c2.lease.attempt, 1);
    claim_none(&store).await;
    assert_eq!(
        store
            .get_run(&a.scope, &t1.id, &r2.id)
            .await
            .unwrap()
            .status,
        RunStatus::Queued
    );

    // Finishing the first frees its thread for the next run.
    store
        .finish_run(&c1.lease, &end(RunStatus::Completed, StopReason::Completed))
        .await
        .unwrap();
    let c3 = claim(&store, "w3").await;
    assert_eq!(c3.run.id, r2.id);
    assert_eq!(c3.lease.attempt, 1);
    assert_eq!(c3.thread.status, ThreadStatus::Running);
    claim_none(&store).await;
    store.close().await;
}

async fn batch_claims_take_up_to_the_limit_one_run_per_thread(db: &TestDatabase) {
    let store = open(db).await;
    let a = tenant(&store, "batch").await;
    let b = tenant(&store, "batch-b").await;
    let t1 = thread(&store, &a, "one").await;
    let t2 = thread(&store, &a, "two").await;
    let t3 = thread(&store, &b, "three").await;
    let r1 = queue(&store, &a.scope, &t1.id, "first").await;
    let r2 = queue(&store, &a.scope, &t1.id, "second").await;
    let r3 = queue(&store, &a.scope, &t2.id, "third").await;
    let r4 = queue(&store, &b.scope, &t3.id, "fourth").await;

    let none = store
        .claim_runs("w", Timestamp::now(), LEASE_MS, 0)
        .await
        .unwrap();
    assert!(none.is_empty(), "a limit of 0 claims nothing");
    let two = store
        .claim_runs("w", Timestamp::now(), LEASE_MS, 2)
        .await
        .unwrap();
    let ids: Vec<&RunId> = two.iter().map(|c| &c.run.id).collect();
    assert_eq!(ids, vec![&r1.id, &r3.id], "oldest first, one per thread");
    // The rest, across deployments: t1's second run waits for its first.
    let rest = store
        .claim_runs("w", Timestamp::now(), LEASE_MS, 10)
        .await
        .unwrap();
    let ids: Vec<&RunId> = rest.iter().map(|c| &c.run.id).collect();
    assert_eq!(ids, vec![&r4.id]);
    assert_eq!(rest[0].scope, b.scope);
    for c in two.iter().chain(&rest) {
        assert_eq!(c.run.status, RunStatus::Running);
        assert_eq!(c.lease.attempt, 1);
        assert_eq!(c.thread.status, ThreadStatus::Running);
        assert_eq!(kinds(&c.events), vec![event::RUN_STATUS]);
        assert_eq!(c.events[0].thread_id, c.thread.id);
        assert_eq!(c.events[0].run_id.as_ref(), Some(&c.run.id));
        let scope = &c.scope;
        assert_eq!(
            all_events(&store, scope, &c.thread.id).await.last(),
            c.events.last(),
            "each claim's event is stored on its own thread"
        );
    }
    assert_eq!(
        seqs(&two[0].events),
        vec![5],
        "after t1's four submission events"
    );
    assert_eq!(seqs(&two[1].events), vec![3]);
    assert_eq!(seqs(&rest[0].events), vec![3]);
    claim_none(&store).await;
    assert_eq!(
        store
            .get_run(&a.scope, &t1.id, &r2.id)
            .await
            .unwrap()
            .status,
        RunStatus::Queued
    );
    store.close().await;
}

async fn waiting_runs_tells_claimable_runs_from_blocked_ones(db: &TestDatabase) {
    use tessera_store::WaitingRuns;
    let store = open(db).await;
    let a = tenant(&store, "waiting").await;
    let t = thread(&store, &a, "t").await;
    let now = Timestamp::now();
    let waiting = |at: Timestamp| {
        let store = store.clone();
        async move { store.waiting_runs(at).await.unwrap() }
    };
    assert_eq!(waiting(now).await, WaitingRuns::None);

    let first = queue(&store, &a.scope, &t.id, "one").await;
    assert_eq!(waiting(now).await, WaitingRuns::Claimable);
    let claimed = claim(&store, "w").await;
    assert_eq!(claimed.run.id, first.id);
    assert_eq!(
        waiting(now).await,
        WaitingRuns::None,
        "a leased run waits for nobody"
    );
    // A run queued behind the active one waits, but no claim can take it yet.
    queue(&store, &a.scope, &t.id, "two").await;
    assert_eq!(waiting(now).await, WaitingRuns::Blocked);
    // Once the active run's lease expired, a claim would take it over.
    let expired = Timestamp::from_millis(now.as_millis() + LEASE_MS + 1_000);
    assert_eq!(waiting(expired).await, WaitingRuns::Claimable);
    // Once it ended, the queued run can start.
    store
        .finish_run(
            &claimed.lease,
            &end(RunStatus::Completed, StopReason::Completed),
        )
        .await
        .unwrap();
    assert_eq!(waiting(now).await, WaitingRuns::Claimable);
    // Another deployment's runs count as well: the workers serve every deployment.
    let b = tenant(&store, "waiting-b").await;
    let u = thread(&store, &b, "u").await;
    claim(&store, "w").await;
    assert_eq!(waiting(now).await, WaitingRuns::None);
    queue(&store, &b.scope, &u.id, "three").await;
    assert_eq!(waiting(now).await, WaitingRuns::Claimable);
    store.close().await;
}

async fn concurrent_claims_take_each_run_once(db: &TestDatabase) {
    let store = open(db).await;
    let a = tenant(&store, "race").await;
    for round in 0..3 {
        let mut queued = HashSet::new();
        for i in 0..4 {
            let t = thread(&store, &a, &format!("t{round}-{i}")).await;
            queued.insert(queue(&store, &a.scope, &t.id, "go").await.id);
        }
        let claims = claim_concurrently(&store, 8).await;
        let claimed: HashSet<_> = claims.iter().map(|c| c.run.id.clone()).collect();
        assert_eq!(claims.len(), 4, "round {round}: one claim per run");
        assert_eq!(
            claimed, queued,
            "round {round}: every run claimed, none twice"
        );
        assert!(claims.iter().all(|c| c.lease.attempt == 1));
        let threads: HashSet<_> = claims.iter().map(|c| c.thread.id.clone()).collect();
        assert_eq!(threads.len(), 4);
        claim_none(&store).await;
        for c in &claims {
            store
                .finish_run(&c.lease, &end(RunStatus::Completed, StopReason::Completed))
                .await
                .unwrap();
        }
    }
    store.close().await;
}

async fn concurrent_claims_take_one_run_per_thread(db: &TestDatabase) {
    let store = open(db).await;
    let a = tenant(&store, "race-one").await;
    let t = thread(&store, &a, "t").await;
    let mut runs = Vec::new();
    for i in 0..3 {
        runs.push(queue(&store, &a.scope, &t.id, &format!("m{i}")).await);
    }
    for (i, expected) in runs.iter().enumerate() {
        let claims = claim_concurrently(&store, 8).await;
        assert_eq!(claims.len(), 1, "turn {i}: a thread runs one run at a time");
        assert_eq!(claims[0].run.id, expected.id, "turn {i}: in queue order");
        claim_none(&store).await;
        store
            .finish_run(
                &claims[0].lease,
                &end(RunStatus::Completed, StopReason::Completed),
            )
            .await
            .unwrap();
    }
    assert!(claim_concurrently(&store, 8).await.is_empty());
    store.close().await;
}

async fn heartbeats_extend_the_lease(db: &TestDatabase) {
    let store = open(db).await;
    let a = tenant(&store, "heartbeat").await;
    let t = thread(&store, &a, "t").await;
    let run = queue(&store, &a.scope, &t.id, "go").await;

    let t0 = Timestamp::now();
    let c = store.claim_run("w1", t0, LEASE_MS).await.unwrap().unwrap();
    assert_eq!(c.run.id, run.id);
    // Within the lease nobody else may take it.
    assert!(store
        .claim_run("w2", t0.plus_secs(59), LEASE_MS)
        .await
        .unwrap()
        .is_none());
    // Extended to t0 + 120 s: still ours at t0 + 90 s, past the original expiry.
    assert_eq!(
        store.heartbeat(&c.lease, t0.plus_secs(120)).await.unwrap(),
        CancelRequest::None
    );
    assert!(store
        .claim_run("w2", t0.plus_secs(90), LEASE_MS)
        .await
        .unwrap()
        .is_none());
    // And taken over once the extended lease is past.
    let taken = store
        .claim_run("w2", t0.plus_secs(121), LEASE_MS)
        .await
        .unwrap()
        .expect("the expired lease is reclaimed");
    assert_eq!(taken.run.id, run.id);
    assert_eq!(taken.lease.attempt, 2);
    store.close().await;
}

async fn expired_leases_are_reclaimed_and_fence_the_old_worker(db: &TestDatabase) {
    let store = open(db).await;
    let a = tenant(&store, "fence").await;
    let t = thread(&store, &a, "t").await;
    let run = queue(&store, &a.scope, &t.id, "go").await;

    let t0 = Timestamp::now();
    let old = store.claim_run("w1", t0, 1).await.unwrap().unwrap();
    assert_eq!(old.lease.attempt, 1);
    let later = Timestamp::from_millis(t0.as_millis() + 1_000);
    let new = store
        .claim_run("w2", later, LEASE_MS)
        .await
        .unwrap()
        .expect("the expired run is reclaimed");
    assert_eq!(new.run.id, run.id);
    assert_eq!(
        new.lease,
        Lease {
            run_id: run.id.clone(),
            attempt: 2
        }
    );
    assert_eq!(new.run.status, RunStatus::Running);
    assert_eq!(
        new.run.started_at, old.run.started_at,
        "the run started once"
    );
    assert_eq!(new.thread.id, t.id);
    assert_eq!(new.thread.status, ThreadStatus::Running);
    assert_eq!(kinds(&new.events), vec![event::RUN_STATUS]);
    let events_before = all_events(&store, &a.scope, &t.id).await;

    // The old worker is fenced off from every write.
    assert!(is_lease_lost(
        store.heartbeat(&old.lease, later.plus_secs(600)).await
    ));
    assert!(is_lease_lost(
        store
            .record_step(
                &old.lease,
                &[step(assistant_message(&t.id, &run.id, "call_1"), "s1")]
            )
            .await
    ));
    assert!(is_lease_lost(
        store.append_events(&old.lease, &[note("stale")]).await
    ));
    assert!(is_lease_lost(
        store
            .finish_run(&old.lease, &end(RunStatus::Failed, StopReason::ModelError))
            .await
    ));
    // None of its writes landed.
    assert_eq!(all_events(&store, &a.scope, &t.id).await, events_before);
    assert_eq!(history(&store, &a.scope, &t.id).await.len(), 1);
    let current = store.get_run(&a.scope, &t.id, &run.id).await.unwrap();
    assert_eq!(current.status, RunStatus::Running);
    assert_eq!(current.attempt, 2);
    assert_eq!(current.stop_reason, None);
    assert_eq!(
        store.get_thread(&a.scope, &t.id).await.unwrap().status,
        ThreadStatus::Running
    );

    // The new lease works, including the step key the old worker tried to use.
    assert_eq!(
        store
            .heartbeat(&new.lease, Timestamp::now().plus_secs(60))
            .await
            .unwrap(),
        CancelRequest::None
    );
    let reply = assistant_message(&t.id, &run.id, "call_1");
    let stored = store
        .record_step(&new.lease, &[step(reply.clone(), "s1")])
        .await
        .unwrap();
    assert_eq!(stored.len(), 1);
    let appended = store
        .append_events(&new.lease, &[note("fresh")])
        .await
        .unwrap();
    assert_eq!(appended.len(), 1);
    assert_eq!(appended[0].seq, stored[0].seq + 1);
    assert_eq!(appended[0].data, json!({"text": "fresh"}));
    let (done, _) = store
        .finish_run(
            &new.lease,
            &end(RunStatus::Completed, StopReason::Completed),
        )
        .await
        .unwrap();
    assert_eq!(done.status, RunStatus::Completed);
    assert_eq!(done.attempt, 2);
    assert_eq!(history(&store, &a.scope, &t.id).await[1], reply);
    store.close().await;
}

/// The model's context (`thread_history`, one JSON value on SQLite) gives every field of every
/// message exactly as the messages page (rows) does: text that needs escaping, tool calls,
/// attachments, usage, errors; an empty thread and another tenant's see nothing.
async fn the_history_reads_every_field_as_stored(db: &TestDatabase) {
    let store = open(db).await;
    let a = tenant(&store, "history").await;
    let t = thread(&store, &a, "t").await;
    assert!(history(&store, &a.scope, &t.id).await.is_empty());
    let text = "quote \" backslash \\ newline \n tab \t é 漢字 🙂 </script> \u{7f}";
    let mut first = submission(&t.id, text, MultitaskPolicy::Enqueue);
    first.message.attachments = vec!["file_a".into(), "file_b".into()];
    let run = created(store.submit_run(&a.scope, &t.id, &first).await.unwrap()).0;
    let c = claim(&store, "w").await;
    let mut assistant = assistant_message(&t.id, &run.id, "call_1");
    assistant.tool_calls.push(ToolCall {
        id: "call_2".into(),
        name: "nested".into(),
        arguments: json!({"deep": {"list": [1, 2.5, null, true, "x"]}, "empty": {}}),
    });
    let tool = tool_message(&t.id, &run.id, "call_1");
    store
        .record_step(
            &c.lease,
            &[
                step(assistant.clone(), "1:assistant"),
                step(tool.clone(), "1:tool"),
            ],
        )
        .await
        .unwrap();

    let got = history(&store, &a.scope, &t.id).await;
    assert_eq!(got, first_page(&store, &a.scope, &t.id).await);
    assert_eq!(got, vec![first.message.clone(), assistant, tool]);
    assert_eq!(got[0].content, text);
    assert_eq!(got[0].attachments, ["file_a", "file_b"]);

    let stranger = tenant(&store, "stranger").await;
    assert!(history(&store, &stranger.scope, &t.id).await.is_empty());

    // Arguments nested as deep as a message's own column can be read back: the one value
    // nests them two levels deeper, past serde_json's limit, and the rows are read instead.
    let mut deep = json!(1);
    for _ in 0..DEEPEST_READABLE_ARGUMENTS {
        deep = json!([deep]);
    }
    let c = {
        store
            .finish_run(&c.lease, &end(RunStatus::Completed, StopReason::Completed))
            .await
            .unwrap();
        queue(&store, &a.scope, &t.id, "again").await;
        claim(&store, "w").await
    };
    let mut nested = assistant_message(&t.id, &c.run.id, "call_deep");
    nested.tool_calls[0].arguments = deep;
    store
        .record_step(&c.lease, &[step(nested.clone(), "2:assistant")])
        .await
        .unwrap();
    let got = history(&store, &a.scope, &t.id).await;
    assert_eq!(got.last(), Some(&nested));
    assert_eq!(got, first_page(&store, &a.scope, &t.id).await);
}

/// How deep a tool call's arguments can nest and still be read from a message's `tool_calls`
/// column: serde_json's limit of 128 levels, less the list of calls and the call itself.
const DEEPEST_READABLE_ARGUMENTS: usize = 125;

async fn record_step_stores_each_step_once(db: &TestDatabase) {
    let store = open(db).await;
    let a = tenant(&store, "steps").await;
    let t = thread(&store, &a, "t").await;
    let run = queue(&store, &a.scope, &t.id, "What's the weather?").await;
    let c = claim(&store, "w").await;
    let user = history(&store, &a.scope, &t.id).await;
    assert_eq!(user.len(), 1);

    let assistant = assistant_message(&t.id, &run.id, "call_1");
    let tool = tool_message(&t.id, &run.id, "call_1");
    let events = store
        .record_step(
            &c.lease,
            &[
                step(assistant.clone(), "1:assistant"),
                step(tool.clone(), "1:tool:call_1"),
            ],
        )
        .await
        .unwrap();
    assert_eq!(
        kinds(&events),
        vec![event::MESSAGE_COMPLETED, event::MESSAGE_CREATED]
    );
    assert_eq!(seqs(&events), vec![4, 5]);
    assert!(events.iter().all(|e| e.run_id.as_ref() == Some(&run.id)));
    assert_eq!(events[0].data["message"]["id"], assistant.id.as_str());
    assert_eq!(events[1].data["message"]["id"], tool.id.as_str());
    assert_eq!(all_events(&store, &a.scope, &t.id).await[3..], events[..]);

    let stored = history(&store, &a.scope, &t.id).await;
    assert_eq!(
        stored,
        vec![user[0].clone(), assistant.clone(), tool.clone()]
    );
    assert_eq!(
        stored[1].tool_calls[0].arguments,
        json!({"query": "weather", "days": 3})
    );
    assert_eq!(
        stored[1].usage,
        Some(TokenUsage {
            prompt_tokens: 120,
            completion_tokens: 30
        })
    );
    assert_eq!(stored[2].tool_call_id.as_deref(), Some("call_1"));
    assert_eq!(stored[2].tool_name.as_deref(), Some("lookup"));
    assert!(stored[2].is_error);

    // A retried step makes new message ids but keeps its keys: nothing new is stored.
    let retried = store
        .record_step(
            &c.lease,
            &[
                step(assistant_message(&t.id, &run.id, "call_1"), "1:assistant"),
                step(tool_message(&t.id, &run.id, "call_1"), "1:tool:call_1"),
            ],
        )
        .await
        .unwrap();
    assert!(retried.is_empty(), "got {retried:?}");
    assert_eq!(history(&store, &a.scope, &t.id).await, stored);
    assert_eq!(all_events(&store, &a.scope, &t.id).await.len(), 5);

    // A step that is half old, half new stores only the new half.
    let second = assistant_message(&t.id, &run.id, "call_2");
    let events = store
        .record_step(
            &c.lease,
            &[
                step(tool_message(&t.id, &run.id, "call_1"), "1:tool:call_1"),
                step(second.clone(), "2:assistant"),
            ],
        )
        .await
        .unwrap();
    assert_eq!(kinds(&events), vec![event::MESSAGE_COMPLETED]);
    assert_eq!(seqs(&events), vec![6]);
    let all = history(&store, &a.scope, &t.id).await;
    assert_eq!(all.len(), 4);
    assert_eq!(all[3], second);
    store.close().await;
}

async fn finish_run_records_the_end_and_frees_the_thread(db: &TestDatabase) {
    let store = open(db).await;
    let a = tenant(&store, "finish").await;
    let t = thread(&store, &a, "t").await;
    let r1 = queue(&store, &a.scope, &t.id, "one").await;
    let r2 = queue(&store, &a.scope, &t.id, "two").await;
    let c = claim(&store, "w").await;
    assert_eq!(c.run.id, r1.id);

    let usage = RunUsage {
        prompt_tokens: 1_200,
        completion_tokens: 345,
        iterations: 3,
        tool_calls: 2,
        wall_ms: 0,
    };
    let (run, events) = store
        .finish_run(
            &c.lease,
            &RunEnd {
                status: RunStatus::Failed,
                stop_reason: StopReason::ModelError,
                error: Some("provider unavailable".into()),
                usage,
            },
        )
        .await
        .unwrap();
    assert_eq!(run.id, r1.id);
    assert_eq!(run.status, RunStatus::Failed);
    assert_eq!(run.stop_reason, Some(StopReason::ModelError));
    assert_eq!(run.error.as_deref(), Some("provider unavailable"));
    assert_eq!(run.usage.prompt_tokens, 1_200);
    assert_eq!(run.usage.completion_tokens, 345);
    assert_eq!(run.usage.iterations, 3);
    assert_eq!(run.usage.tool_calls, 2);
    let started = run.started_at.expect("started");
    let finished = run.finished_at.expect("finished");
    assert!(finished >= started);
    assert_eq!(
        run.usage.wall_ms,
        (finished.as_millis() - started.as_millis()) as u64,
        "wall time runs from start to finish"
    );
    assert!(
        run.usage.wall_ms < 600_000,
        "wall_ms = {}",
        run.usage.wall_ms
    );
    assert_eq!(store.get_run(&a.scope, &t.id, &r1.id).await.unwrap(), run);

    assert_eq!(kinds(&events), vec![event::RUN_STATUS]);
    assert_eq!(events[0].run_id.as_ref(), Some(&r1.id));
    assert_eq!(
        events[0].data,
        json!({
            "run_id": r1.id.as_str(),
            "status": "failed",
            "stop_reason": "model_error",
            "error": "provider unavailable",
        })
    );
    assert_eq!(
        all_events(&store, &a.scope, &t.id).await.last(),
        events.last()
    );
    assert_eq!(
        store.get_thread(&a.scope, &t.id).await.unwrap().status,
        ThreadStatus::Idle
    );

    // The finished run's lease is dead.
    assert!(is_lease_lost(
        store
            .heartbeat(&c.lease, Timestamp::now().plus_secs(60))
            .await
    ));
    assert!(is_lease_lost(
        store
            .finish_run(&c.lease, &end(RunStatus::Completed, StopReason::Completed))
            .await
    ));
    assert!(is_lease_lost(
        store.append_events(&c.lease, &[note("late")]).await
    ));
    assert_eq!(
        store.get_run(&a.scope, &t.id, &r1.id).await.unwrap().status,
        RunStatus::Failed
    );

    // The thread's next queued run is claimed.
    let next = claim(&store, "w").await;
    assert_eq!(next.run.id, r2.id);
    assert_eq!(next.thread.status, ThreadStatus::Running);
    let (done, _) = store
        .finish_run(
            &next.lease,
            &end(RunStatus::Completed, StopReason::Completed),
        )
        .await
        .unwrap();
    assert_eq!(done.stop_reason, Some(StopReason::Completed));
    assert_eq!(done.error, None);
    assert_eq!(
        store.get_thread(&a.scope, &t.id).await.unwrap().status,
        ThreadStatus::Idle
    );
    claim_none(&store).await;
    store.close().await;
}

async fn finish_run_after_stores_the_last_step_and_the_end_together(db: &TestDatabase) {
    let store = open(db).await;
    let a = tenant(&store, "finish-after").await;
    let t = thread(&store, &a, "t").await;
    let run = queue(&store, &a.scope, &t.id, "hello").await;
    let c = claim(&store, "w").await;
    let reply = assistant_message(&t.id, &run.id, "call_9");
    let (ended, events) = store
        .finish_run_after(
            &c.lease,
            &[step(reply.clone(), "1:assistant")],
            &end(RunStatus::Completed, StopReason::Completed),
        )
        .await
        .unwrap();
    assert_eq!(ended.status, RunStatus::Completed);
    assert_eq!(
        kinds(&events),
        vec![event::MESSAGE_COMPLETED, event::RUN_STATUS],
        "the step's event comes before the end"
    );
    assert_eq!(seqs(&events), vec![4, 5]);
    assert_eq!(events[1].data["status"], "completed");
    assert_eq!(all_events(&store, &a.scope, &t.id).await[3..], events[..]);
    assert_eq!(history(&store, &a.scope, &t.id).await[1], reply);
    let thread = store.get_thread(&a.scope, &t.id).await.unwrap();
    assert_eq!(thread.status, ThreadStatus::Idle);

    // Fenced like every worker write: a second end (or a stale worker) writes nothing.
    assert!(is_lease_lost(
        store
            .finish_run_after(
                &c.lease,
                &[step(
                    assistant_message(&t.id, &run.id, "call_x"),
                    "2:assistant"
                )],
                &end(RunStatus::Failed, StopReason::ModelError),
            )
            .await
    ));
    assert_eq!(history(&store, &a.scope, &t.id).await.len(), 2);
    assert_eq!(all_events(&store, &a.scope, &t.id).await.len(), 5);
    store.close().await;
}

async fn cancel_runs_stops_queued_and_flags_running_runs(db: &TestDatabase) {
    let store = open(db).await;
    let a = tenant(&store, "cancel").await;
    let b = tenant(&store, "cancel-b").await;
    let t = thread(&store, &a, "t").await;

    let err = store.cancel_runs(&a.scope, &t.id).await.unwrap_err();
    assert!(is_conflict(&err, Conflict::RunNotActive), "got {err:?}");
    let err = store
        .cancel_runs(&a.scope, &ThreadId::generate())
        .await
        .unwrap_err();
    assert!(is_not_found(&err, Entity::Thread), "got {err:?}");

    // A queued run is cancelled at once.
    let r1 = queue(&store, &a.scope, &t.id, "one").await;
    let err = store.cancel_runs(&b.scope, &t.id).await.unwrap_err();
    assert!(is_not_found(&err, Entity::Thread), "got {err:?}");
    assert_eq!(
        store.get_run(&a.scope, &t.id, &r1.id).await.unwrap().status,
        RunStatus::Queued,
        "another deployment cannot cancel"
    );
    let affected = store.cancel_runs(&a.scope, &t.id).await.unwrap();
    assert_eq!(affected.len(), 1);
    assert_eq!(affected[0].id, r1.id);
    assert_eq!(affected[0].status, RunStatus::Cancelled);
    assert_eq!(affected[0].stop_reason, Some(StopReason::Cancelled));
    assert!(affected[0].finished_at.is_some());
    assert_eq!(
        store.get_run(&a.scope, &t.id, &r1.id).await.unwrap(),
        affected[0]
    );
    let events = all_events(&store, &a.scope, &t.id).await;
    let last = events.last().unwrap();
    assert_eq!(last.kind, event::RUN_STATUS);
    assert_eq!(last.run_id.as_ref(), Some(&r1.id));
    assert_eq!(last.data["status"], "cancelled");
    assert_eq!(last.data["stop_reason"], "cancelled");
    claim_none(&store).await;
    let err = store.cancel_runs(&a.scope, &t.id).await.unwrap_err();
    assert!(is_conflict(&err, Conflict::RunNotActive), "got {err:?}");

    // A running run is flagged for its worker; the queued one behind it is cancelled.
    let r2 = queue(&store, &a.scope, &t.id, "two").await;
    let c = claim(&store, "w").await;
    assert_eq!(c.run.id, r2.id);
    let r3 = queue(&store, &a.scope, &t.id, "three").await;
    let affected = store.cancel_runs(&a.scope, &t.id).await.unwrap();
    let ids: Vec<_> = affected.iter().map(|r| r.id.clone()).collect();
    assert_eq!(ids, vec![r2.id.clone(), r3.id.clone()]);
    assert_eq!(affected[0].status, RunStatus::Running);
    assert!(affected[0].cancel_requested);
    assert_eq!(affected[1].status, RunStatus::Cancelled);
    assert_eq!(affected[1].stop_reason, Some(StopReason::Cancelled));
    assert_eq!(
        store
            .heartbeat(&c.lease, Timestamp::now().plus_secs(60))
            .await
            .unwrap(),
        CancelRequest::Cancel
    );
    let running = store.get_run(&a.scope, &t.id, &r2.id).await.unwrap();
    assert_eq!(running.status, RunStatus::Running);
    assert!(running.cancel_requested);

    // The worker stops; nothing is left to run.
    store
        .finish_run(&c.lease, &end(RunStatus::Cancelled, StopReason::Cancelled))
        .await
        .unwrap();
    assert_eq!(
        store.get_thread(&a.scope, &t.id).await.unwrap().status,
        ThreadStatus::Idle
    );
    claim_none(&store).await;
    let err = store.cancel_runs(&a.scope, &t.id).await.unwrap_err();
    assert!(is_conflict(&err, Conflict::RunNotActive), "got {err:?}");
    store.close().await;
}

async fn messages_page_in_both_orders(db: &TestDatabase) {
    let store = open(db).await;
    let a = tenant(&store, "paging").await;
    let t = thread(&store, &a, "t").await;
    let other = thread(&store, &a, "other").await;
    queue(&store, &a.scope, &other.id, "elsewhere").await;
    let mut ids = Vec::new();
    for i in 0..5 {
        queue(&store, &a.scope, &t.id, &format!("m{i}")).await;
        ids.push(history(&store, &a.scope, &t.id).await[i].id.to_string());
    }
    let contents: Vec<_> = history(&store, &a.scope, &t.id)
        .await
        .into_iter()
        .map(|m| m.content)
        .collect();
    assert_eq!(contents, vec!["m0", "m1", "m2", "m3", "m4"]);

    let list = |cursor: Cursor, order: Order| {
        let store = store.clone();
        let scope = a.scope.clone();
        let thread_id = t.id.clone();
        async move {
            let page = store
                .list_messages(&scope, &thread_id, &PageRequest { limit: 2, cursor }, order)
                .await
                .unwrap();
            let got: Vec<String> = page.items.iter().map(|m| m.id.to_string()).collect();
            (got, page.has_more)
        }
    };
    let want = |idx: &[usize]| idx.iter().map(|&i| ids[i].clone()).collect::<Vec<_>>();
    let after = |i: usize| Cursor::After(ids[i].clone());
    let before = |i: usize| Cursor::Before(ids[i].clone());

    // Oldest first.
    let old = Order::OldestFirst;
    assert_eq!(list(Cursor::First, old).await, (want(&[0, 1]), true));
    assert_eq!(list(after(1), old).await, (want(&[2, 3]), true));
    assert_eq!(list(after(3), old).await, (want(&[4]), false));
    assert_eq!(list(after(4), old).await, (want(&[]), false));
    assert_eq!(list(before(3), old).await, (want(&[1, 2]), true));
    assert_eq!(list(before(1), old).await, (want(&[0]), false));

    // Newest first: "after" continues towards older messages.
    let new = Order::NewestFirst;
    assert_eq!(list(Cursor::First, new).await, (want(&[4, 3]), true));
    assert_eq!(list(after(3), new).await, (want(&[2, 1]), true));
    assert_eq!(list(after(1), new).await, (want(&[0]), false));
    assert_eq!(list(after(0), new).await, (want(&[]), false));
    assert_eq!(list(before(1), new).await, (want(&[3, 2]), true));
    assert_eq!(list(before(3), new).await, (want(&[4]), false));

    // A page as large as the thread has nothing more.
    let all = store
        .list_messages(&a.scope, &t.id, &PageRequest::first(5), Order::NewestFirst)
        .await
        .unwrap();
    assert_eq!(all.items.len(), 5);
    assert!(!all.has_more);
    assert_eq!(all.items[0].content, "m4");
    assert!(all.items.iter().all(|m| m.thread_id == t.id));
    store.close().await;
}

async fn events_after_returns_later_events_in_order(db: &TestDatabase) {
    let store = open(db).await;
    let a = tenant(&store, "events").await;
    let t = thread(&store, &a, "t").await;
    let other = thread(&store, &a, "other").await;
    for i in 0..4 {
        queue(&store, &a.scope, &t.id, &format!("m{i}")).await;
    }
    queue(&store, &a.scope, &other.id, "x").await;
    let c = claim(&store, "w").await;
    let appended = store
        .append_events(&c.lease, &[note("a"), note("b")])
        .await
        .unwrap();
    assert_eq!(seqs(&appended), vec![10, 11]);
    assert_eq!(
        kinds(&appended),
        vec![event::NOTIFICATION, event::NOTIFICATION]
    );

    let all = store.events_after(&a.scope, &t.id, 0, 100).await.unwrap();
    assert_eq!(seqs(&all), (1..=11).collect::<Vec<i64>>());
    assert!(all.iter().all(|e| e.thread_id == t.id));
    assert_eq!(all[9..], appended[..]);
    assert_eq!(all[10].data, json!({"text": "b"}));

    let middle = store.events_after(&a.scope, &t.id, 4, 3).await.unwrap();
    assert_eq!(seqs(&middle), vec![5, 6, 7]);
    assert_eq!(middle[..], all[4..7]);
    let tail = store.events_after(&a.scope, &t.id, 9, 100).await.unwrap();
    assert_eq!(seqs(&tail), vec![10, 11]);
    assert!(store
        .events_after(&a.scope, &t.id, 11, 100)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        seqs(
            &store
                .events_after(&a.scope, &other.id, 0, 100)
                .await
                .unwrap()
        ),
        vec![1, 2]
    );
    store.close().await;
}

async fn nothing_crosses_deployments(db: &TestDatabase) {
    let store = open(db).await;
    let a = tenant(&store, "tenant-a").await;
    let b = tenant(&store, "tenant-b").await;
    let t = thread(&store, &a, "t").await;
    let tb = thread(&store, &b, "tb").await;
    let run = queue(&store, &a.scope, &t.id, "secret").await;

    let err = store.get_thread(&b.scope, &t.id).await.unwrap_err();
    assert!(is_not_found(&err, Entity::Thread), "got {err:?}");
    let err = store
        .list_messages(&b.scope, &t.id, &PageRequest::default(), Order::OldestFirst)
        .await
        .unwrap_err();
    assert!(is_not_found(&err, Entity::Thread), "got {err:?}");
    let err = store.get_run(&b.scope, &t.id, &run.id).await.unwrap_err();
    assert!(is_not_found(&err, Entity::Run), "got {err:?}");
    // Naming one's own thread does not reach another thread's run either.
    let err = store.get_run(&b.scope, &tb.id, &run.id).await.unwrap_err();
    assert!(is_not_found(&err, Entity::Run), "got {err:?}");
    let err = store.get_run(&a.scope, &tb.id, &run.id).await.unwrap_err();
    assert!(is_not_found(&err, Entity::Run), "got {err:?}");
    assert!(store
        .events_after(&b.scope, &t.id, 0, 100)
        .await
        .unwrap()
        .is_empty());
    assert!(history(&store, &b.scope, &t.id).await.is_empty());

    // The owner still sees everything.
    assert_eq!(
        settled(store.get_thread(&a.scope, &t.id).await.unwrap()),
        settled(t.clone())
    );
    assert_eq!(first_page(&store, &a.scope, &t.id).await.len(), 1);
    assert_eq!(store.get_run(&a.scope, &t.id, &run.id).await.unwrap(), run);
    assert_eq!(all_events(&store, &a.scope, &t.id).await.len(), 2);
    // The worker's claim reports the run's own deployment.
    assert_eq!(claim(&store, "w").await.scope, a.scope);
    store.close().await;
}
