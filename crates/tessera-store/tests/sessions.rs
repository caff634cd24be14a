//! Conformance of session management storage on both backends: pausing a run on pending
//! actions, decisions (one winner among concurrent ones), expiry by two nodes at once, the
//! exactly-once marks of a confirmed action, context variables and closing, and (PostgreSQL)
//! decisions, sweeps, stops and slot claims whose locks cross.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail loudly by design.

mod common;
use common::*;

use tessera_domain::session::{ActionKind, ActionStatus, NewAction, PendingAction, VariablePatch};
use tessera_domain::ActionId;

backend_tests!(
    pause_decide_expire_and_execute_once,
    concurrent_decisions_have_one_winner,
    a_decision_under_a_key_replays_its_answer,
    variables_are_atomic_and_close_is_idempotent,
    a_question_is_answered_by_the_next_message_not_a_new_run,
    a_message_after_its_question_expired_is_no_answer,
    a_run_waiting_on_a_question_and_a_confirmation_resumes_when_both_are_decided_at_once,
    a_close_waits_for_a_step_in_flight_instead_of_deadlocking,
    an_interruption_waits_for_a_step_in_flight_instead_of_deadlocking,
    a_cancel_that_crosses_a_decision_runs_again,
    a_decision_that_crosses_a_cancel_runs_again,
    an_expiry_and_a_warning_that_cross_a_stop_run_again,
    a_board_cancel_that_crosses_a_decision_runs_again,
    a_slot_claim_that_crosses_a_thread_lock_runs_again,
);

fn action(call: &str, expires_at: Timestamp) -> NewAction {
    NewAction {
        id: ActionId::generate(),
        call_id: call.into(),
        tool: "notify_user".into(),
        kind: ActionKind::Confirmation,
        preview: json!({"message": call}),
        expires_at,
    }
}

/// An `ask_user` question of call `call`.
fn question(call: &str, preview: serde_json::Value, expires_at: Timestamp) -> NewAction {
    NewAction {
        id: ActionId::generate(),
        call_id: call.into(),
        tool: "ask_user".into(),
        kind: ActionKind::Question,
        preview,
        expires_at,
    }
}

/// A thread whose run is claimed and then paused on `actions`.
async fn paused(store: &Arc<dyn Store>, t: &Tenant, actions: &[NewAction]) -> (Thread, Claimed) {
    let th = thread(store, t, "t").await;
    queue(store, &t.scope, &th.id, "hi").await;
    let claimed = claim(store, "node-a").await;
    let (pending, events) = store.pause_run(&claimed.lease, actions).await.unwrap();
    assert_eq!(pending.len(), actions.len());
    assert!(events.iter().any(|e| e.kind == "pending_action.created"));
    (th, claimed)
}

async fn pause_decide_expire_and_execute_once(db: &TestDatabase) {
    let store = open(db).await;
    let other_node = open(db).await;
    let t = tenant(&store, "one").await;
    let now = Timestamp::now();
    let (th, claimed) = paused(
        &store,
        &t,
        &[
            action("soon", now.plus_secs(1)),
            action("later", now.plus_secs(3600)),
        ],
    )
    .await;
    let run = store
        .get_run(&t.scope, &th.id, &claimed.run.id)
        .await
        .unwrap();
    assert_eq!(run.status, RunStatus::WaitingForInput);
    assert_eq!(
        store.get_thread(&t.scope, &th.id).await.unwrap().status,
        ThreadStatus::WaitingForInput
    );
    // A paused run is nobody's to claim, even past its old lease.
    assert!(store
        .claim_run("node-b", now.plus_millis(2 * LEASE_MS), LEASE_MS)
        .await
        .unwrap()
        .is_none());
    let actions = store.run_actions(&t.scope, &claimed.run.id).await.unwrap();
    let (soon, later) = (actions[0].clone(), actions[1].clone());
    // The scheduler's next deadline is the first warning.
    assert_eq!(
        store.next_action_deadline().await.unwrap(),
        Some(soon.warn_at())
    );

    // Another deployment sees no such action.
    let stranger = tenant(&store, "two").await;
    let err = store
        .resolve_action(&stranger.scope, &th.id, &later.id, true, Timestamp::now())
        .await
        .unwrap_err();
    assert!(is_not_found(&err, Entity::Action), "{err:?}");

    let (confirmed, _) = store
        .resolve_action(&t.scope, &th.id, &later.id, true, Timestamp::now())
        .await
        .unwrap();
    assert_eq!(confirmed.status, ActionStatus::Confirmed);
    assert!(confirmed.callback_id.is_some());
    // One action is still open: the run stays paused.
    assert!(store
        .claim_run("node-b", Timestamp::now(), LEASE_MS)
        .await
        .unwrap()
        .is_none());
    let again = store
        .resolve_action(&t.scope, &th.id, &later.id, false, Timestamp::now())
        .await
        .unwrap_err();
    assert!(
        matches!(err_conflict(&again), Some(Conflict::ActionDecided)),
        "{again:?}"
    );

    // Two nodes' schedulers wake for the same deadline: exactly one expires the action.
    let due = now.plus_secs(2);
    let warned = store.warn_expiring_actions(due).await.unwrap();
    assert_eq!(
        warned
            .iter()
            .filter(|e| e.kind == "pending_action.expiring")
            .count(),
        1
    );
    assert!(other_node
        .warn_expiring_actions(due)
        .await
        .unwrap()
        .is_empty());
    let (a, b) = tokio::join!(
        store.expire_due_actions(due),
        other_node.expire_due_actions(due)
    );
    let expired = a.unwrap().len() + b.unwrap().len();
    assert_eq!(expired, 1, "one node expires it");
    assert_eq!(store.next_action_deadline().await.unwrap(), None);
    let late = store
        .resolve_action(&t.scope, &th.id, &soon.id, true, Timestamp::now())
        .await
        .unwrap_err();
    assert!(
        matches!(err_conflict(&late), Some(Conflict::ActionExpired)),
        "{late:?}"
    );

    // Every action decided: the run is claimable again, by a new attempt.
    let resumed = claim(&other_node, "node-b").await;
    assert_eq!(resumed.run.id, claimed.run.id);
    assert!(resumed.lease.attempt > claimed.lease.attempt);
    // The old attempt is fenced out.
    assert!(matches!(
        store.start_action(&claimed.lease, "later").await,
        Err(StoreError::LeaseLost)
    ));
    // The confirmed call starts once: a second start (a resumed attempt) is told it started.
    assert_eq!(
        store
            .start_action(&resumed.lease, "later")
            .await
            .unwrap()
            .status,
        ActionStatus::Confirmed
    );
    assert_eq!(
        store
            .start_action(&resumed.lease, "later")
            .await
            .unwrap()
            .status,
        ActionStatus::Executing
    );
    store
        .finish_action(&resumed.lease, "later", &Ok("sent".into()))
        .await
        .unwrap();
    let done = store.start_action(&resumed.lease, "later").await.unwrap();
    assert_eq!(
        (done.status, done.result.as_deref()),
        (ActionStatus::Completed, Some("sent"))
    );
    let statuses: Vec<ActionStatus> = store
        .run_actions(&t.scope, &claimed.run.id)
        .await
        .unwrap()
        .iter()
        .map(|a| a.status)
        .collect();
    assert_eq!(statuses, [ActionStatus::Expired, ActionStatus::Completed]);
}

fn err_conflict(err: &StoreError) -> Option<Conflict> {
    match err {
        StoreError::Conflict(c) => Some(*c),
        _ => None,
    }
}

async fn concurrent_decisions_have_one_winner(db: &TestDatabase) {
    let store = open(db).await;
    let t = tenant(&store, "race").await;
    let (th, claimed) = paused(&store, &t, &[action("c", Timestamp::now().plus_secs(600))]).await;
    let id = store.run_actions(&t.scope, &claimed.run.id).await.unwrap()[0]
        .id
        .clone();
    let attempts = (0..8).map(|i| {
        let (store, scope, th, id) = (store.clone(), t.scope.clone(), th.id.clone(), id.clone());
        tokio::spawn(async move {
            store
                .resolve_action(&scope, &th, &id, i % 2 == 0, Timestamp::now())
                .await
        })
    });
    let results = futures_util::future::join_all(attempts).await;
    let wins = results.iter().filter(|r| matches!(r, Ok(Ok(_)))).count();
    assert_eq!(wins, 1, "{results:?}");
    for r in &results {
        if let Ok(Err(e)) = r {
            assert!(
                matches!(err_conflict(e), Some(Conflict::ActionDecided)),
                "{e:?}"
            );
        }
    }
}

async fn a_decision_under_a_key_replays_its_answer(db: &TestDatabase) {
    let store = open(db).await;
    let t = tenant(&store, "decide-once").await;
    let (th, claimed) = paused(&store, &t, &[action("c", Timestamp::now().plus_secs(600))]).await;
    let id = store.run_actions(&t.scope, &claimed.run.id).await.unwrap()[0]
        .id
        .clone();
    let operation = format!("resolvePendingAction:{id}");

    // Retries of one decision racing each other: one decides, the others wait for its
    // transaction and replay its answer (with its callback id) instead of `action_already_decided`.
    let attempts = (0..8).map(|_| {
        let (store, scope, th, id) = (store.clone(), t.scope.clone(), th.id.clone(), id.clone());
        let operation = operation.clone();
        tokio::spawn(async move {
            let answer = |a: &PendingAction| json!({"callback_id": a.callback_id.as_ref().map(|c| c.as_str())});
            let key = IdempotentWrite {
                operation: &operation,
                key: "k",
                request_hash: "confirm",
                answer: &answer,
            };
            store
                .resolve_action_once(&scope, &th, &id, true, Timestamp::now(), &key)
                .await
        })
    });
    let mut decided = Vec::new();
    let mut replays = Vec::new();
    for r in futures_util::future::join_all(attempts).await {
        match r.unwrap() {
            Ok(Written::Done((action, events))) => {
                assert!(!events.is_empty());
                decided.push(action);
            }
            Ok(Written::Replayed(first)) => replays.push(first),
            Err(e) => panic!("a retry of the same decision failed: {e:?}"),
        }
    }
    assert_eq!(decided.len(), 1, "exactly one retry decides");
    let callback = decided[0]
        .callback_id
        .clone()
        .expect("a confirmation has a callback");
    assert_eq!(replays.len(), 7);
    let answer = json!({"callback_id": callback.as_str()});
    assert!(replays.iter().all(|r| *r == answer), "{replays:?}");

    // Without the key, or with another key, the decision is refused as made; the same key with
    // another request is refused as reused; a refusal records nothing.
    let err = store
        .resolve_action(&t.scope, &th.id, &id, true, Timestamp::now())
        .await
        .unwrap_err();
    assert_eq!(err_conflict(&err), Some(Conflict::ActionDecided), "{err:?}");
    let answer = |_: &PendingAction| json!({});
    let other = IdempotentWrite {
        operation: &operation,
        key: "other",
        request_hash: "confirm",
        answer: &answer,
    };
    let err = store
        .resolve_action_once(&t.scope, &th.id, &id, true, Timestamp::now(), &other)
        .await
        .unwrap_err();
    assert_eq!(err_conflict(&err), Some(Conflict::ActionDecided), "{err:?}");
    assert_eq!(
        store
            .idempotent_result(&t.scope, &operation, "other", "confirm")
            .await
            .unwrap(),
        None
    );
    let reused = IdempotentWrite {
        key: "k",
        request_hash: "cancel",
        ..other
    };
    let err = store
        .resolve_action_once(&t.scope, &th.id, &id, false, Timestamp::now(), &reused)
        .await
        .unwrap_err();
    assert_eq!(
        err_conflict(&err),
        Some(Conflict::IdempotencyKeyReused),
        "{err:?}"
    );

    // Another deployment does not see the action, nor the key this one recorded.
    let stranger = tenant(&store, "decide-stranger").await;
    let recorded = IdempotentWrite { key: "k", ..other };
    let err = store
        .resolve_action_once(
            &stranger.scope,
            &th.id,
            &id,
            true,
            Timestamp::now(),
            &recorded,
        )
        .await
        .unwrap_err();
    assert!(is_not_found(&err, Entity::Action), "{err:?}");
    assert_eq!(
        store
            .idempotent_result(&stranger.scope, &operation, "k", "confirm")
            .await
            .unwrap(),
        None
    );
}

async fn variables_are_atomic_and_close_is_idempotent(db: &TestDatabase) {
    let store = open(db).await;
    let t = tenant(&store, "vars").await;
    let th = thread(&store, &t, "t").await;
    let patch = |v: serde_json::Value| {
        VariablePatch::parse("context_variables", v.as_object().unwrap()).unwrap()
    };
    let first: serde_json::Map<_, _> = (0..20).map(|i| (format!("V{i}"), json!(i))).collect();
    assert_eq!(
        store
            .update_variables(&t.scope, &th.id, &patch(json!(first)))
            .await
            .unwrap(),
        (20, 20)
    );
    let over = store
        .update_variables(&t.scope, &th.id, &patch(json!({"V0": "changed", "NEW": 1})))
        .await
        .unwrap_err();
    assert!(matches!(over, StoreError::Invalid(_)), "{over:?}");
    let state = store.session_state(&t.scope, &th.id).await.unwrap();
    assert_eq!(
        state.variables.get("V0"),
        Some(&json!(0)),
        "a refused patch changes nothing"
    );
    let stranger = tenant(&store, "else").await;
    assert!(matches!(
        store
            .update_variables(&stranger.scope, &th.id, &patch(json!({"A": 1})))
            .await,
        Err(StoreError::NotFound {
            entity: Entity::Thread,
            ..
        })
    ));
    queue(&store, &t.scope, &th.id, "hi").await;
    let now = Timestamp::now();
    let (record, _, events) = store.close_session(&t.scope, &th.id, now).await.unwrap();
    assert!(!record.billable);
    assert!(events.iter().any(|e| e.kind == "session.closed"));
    assert!(events
        .iter()
        .any(|e| e.kind == "run.status" && e.data["status"] == "cancelled"));
    let (again, stop, events) = store
        .close_session(&t.scope, &th.id, now.plus_secs(60))
        .await
        .unwrap();
    assert_eq!(again, record);
    assert!(stop.is_empty() && events.is_empty());
    let refused = store
        .submit_run(
            &t.scope,
            &th.id,
            &submission(&th.id, "more", MultitaskPolicy::Enqueue),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err_conflict(&refused), Some(Conflict::SessionClosed)),
        "{refused:?}"
    );
    let refused = store
        .update_variables(&t.scope, &th.id, &patch(json!({"A": 1})))
        .await
        .unwrap_err();
    assert!(
        matches!(err_conflict(&refused), Some(Conflict::SessionClosed)),
        "{refused:?}"
    );
}

/// An `ask_user` question: paused like an action but streamed as the call's `tool.started`,
/// never decided as a pending action, and answered by the next message, which joins the
/// waiting run (the multitask policy does not apply) and resumes it.
async fn a_question_is_answered_by_the_next_message_not_a_new_run(db: &TestDatabase) {
    let store = open(db).await;
    let t = tenant(&store, "q").await;
    let th = thread(&store, &t, "t").await;
    queue(&store, &t.scope, &th.id, "ask me").await;
    let claimed = claim(&store, "node-a").await;
    let question = question(
        "call_1",
        json!({"question": "Which plan?", "choices": ["Basic", "Pro"]}),
        Timestamp::now().plus_secs(3600),
    );
    let (_, events) = store
        .pause_run(&claimed.lease, std::slice::from_ref(&question))
        .await
        .unwrap();
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds, ["tool.started", "run.status"], "{events:?}");
    assert_eq!(events[0].data["question"], "Which plan?");
    assert_eq!(events[0].data["choices"], json!(["Basic", "Pro"]));
    assert_eq!(events[0].data["call_id"], "call_1");
    let view = store
        .response_view(&t.scope, &claimed.run.id, false)
        .await
        .unwrap();
    assert!(view.pending.is_empty(), "a question is no pending action");
    assert_eq!(view.questions.len(), 1);
    // It cannot be confirmed or cancelled as an action.
    let err = store
        .resolve_action(
            &t.scope,
            &th.id,
            &view.questions[0].id,
            true,
            Timestamp::now(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }), "{err:?}");
    // No expiring warning is ever due for it.
    assert!(store
        .warn_expiring_actions(Timestamp::now().plus_secs(7200))
        .await
        .unwrap()
        .is_empty());

    // The answer, under `reject` and with an idempotency key: it joins the paused run.
    let mut answer = submission(&th.id, " pro ", MultitaskPolicy::Reject);
    let new_run = answer.run_id.clone();
    answer.idempotency = Some(tessera_store::Idempotency {
        operation: "test".into(),
        key: "k1".into(),
        request_hash: "h".into(),
        result: json!({"run_id": new_run.as_str(), "status": "queued"}),
    });
    let (run, _, events) = created(store.submit_run(&t.scope, &th.id, &answer).await.unwrap());
    assert_eq!(run.id, claimed.run.id, "the waiting run resumes");
    assert_eq!(run.status, RunStatus::Running);
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds, ["message.created", "run.status"]);
    assert_eq!(events[0].data["message"]["run_id"], claimed.run.id.as_str());
    assert!(
        store.get_run(&t.scope, &th.id, &new_run).await.is_err(),
        "no new run was made"
    );
    let replayed = store
        .idempotent_result(&t.scope, "test", "k1", "h")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        replayed["run_id"],
        claimed.run.id.as_str(),
        "the retry names the resumed run"
    );
    let actions = store.run_actions(&t.scope, &claimed.run.id).await.unwrap();
    assert_eq!(actions[0].status, ActionStatus::Completed);
    assert_eq!(
        actions[0].result.as_deref(),
        Some("Pro"),
        "in the choice's spelling"
    );
    // The resumed run is claimable at once; the next message is a new run again.
    let resumed = claim(&store, "node-b").await;
    assert_eq!(resumed.run.id, claimed.run.id);
    let (next, _, _) =
        submit_with(&store, &t.scope, &th.id, "thanks", MultitaskPolicy::Enqueue).await;
    assert_ne!(next.id, claimed.run.id);
    assert_eq!(next.status, RunStatus::Queued);
    // Not reported as an action outcome.
    let view = store
        .response_view(&t.scope, &claimed.run.id, true)
        .await
        .unwrap();
    assert!(view.action_results.is_empty() && view.questions.is_empty());
}

/// A question past its expiry is answered by nobody: the next message is a submission like any
/// other (the waiting run is still open, so the multitask policy applies), and once the expiry
/// is swept the waiting run resumes before the message's run.
async fn a_message_after_its_question_expired_is_no_answer(db: &TestDatabase) {
    let store = open(db).await;
    let t = tenant(&store, "late").await;
    let th = thread(&store, &t, "t").await;
    queue(&store, &t.scope, &th.id, "ask me").await;
    let claimed = claim(&store, "node-a").await;
    let question = question(
        "call_1",
        json!({"question": "Which plan?"}),
        Timestamp::now().plus_millis(300),
    );
    store
        .pause_run(&claimed.lease, std::slice::from_ref(&question))
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;

    // Not swept yet: the run still waits, so `reject` refuses the message.
    let err = store
        .submit_run(
            &t.scope,
            &th.id,
            &submission(&th.id, "pro", MultitaskPolicy::Reject),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err_conflict(&err), Some(Conflict::RunActive)),
        "{err:?}"
    );
    // `enqueue` makes a run of its own; the question stays unanswered.
    let (late, _, _) = submit_with(&store, &t.scope, &th.id, "pro", MultitaskPolicy::Enqueue).await;
    assert_ne!(late.id, claimed.run.id);
    assert_eq!(late.status, RunStatus::Queued);
    let history = store.thread_history(&t.scope, &th.id).await.unwrap();
    let input = history
        .iter()
        .find(|m| m.id == late.input_message_id)
        .unwrap();
    assert_eq!(
        input.run_id.as_ref(),
        Some(&late.id),
        "the message is the new run's"
    );
    let actions = store.run_actions(&t.scope, &claimed.run.id).await.unwrap();
    assert_eq!(actions[0].status, ActionStatus::Pending);
    assert_eq!(actions[0].result, None);
    let run = store
        .get_run(&t.scope, &th.id, &claimed.run.id)
        .await
        .unwrap();
    assert_eq!(run.status, RunStatus::WaitingForInput);

    // The sweep expires it and hands the waiting run back first; the message's run waits.
    store.expire_due_actions(Timestamp::now()).await.unwrap();
    let actions = store.run_actions(&t.scope, &claimed.run.id).await.unwrap();
    assert_eq!(actions[0].status, ActionStatus::Expired);
    let resumed = claim(&store, "node-b").await;
    assert_eq!(resumed.run.id, claimed.run.id);
    assert!(store
        .claim_run("node-b", Timestamp::now(), LEASE_MS)
        .await
        .unwrap()
        .is_none());
}

/// A run that waits on a question and a confirmation resumes once both are decided — also when
/// the answer and the confirmation commit at the same time. On PostgreSQL each decision counts
/// what is still open before it commits; unless one waits for the other, both see the other's
/// call still open and nobody resumes the run, which then waits forever. The interleaving is
/// forced there: the thread's row is held while the answer queues behind it and the
/// confirmation is decided, then let go. (SQLite has one writer: the two run one after the
/// other.)
async fn a_run_waiting_on_a_question_and_a_confirmation_resumes_when_both_are_decided_at_once(
    db: &TestDatabase,
) {
    use sqlx::Connection as _;
    let store = open(db).await;
    let t = tenant(&store, "both").await;
    let th = thread(&store, &t, "t").await;
    queue(&store, &t.scope, &th.id, "go").await;
    let claimed = claim(&store, "node-a").await;
    let now = Timestamp::now();
    let question = NewAction {
        id: ActionId::generate_at(now),
        ..question("call_q", json!({"question": "Why?"}), now.plus_secs(3600))
    };
    let confirmation = NewAction {
        id: ActionId::generate_at(now.plus_millis(1)),
        ..action("call_c", now.plus_secs(3600))
    };
    store
        .pause_run(&claimed.lease, &[question, confirmation])
        .await
        .unwrap();
    let action_id = store
        .run_actions(&t.scope, &claimed.run.id)
        .await
        .unwrap()
        .into_iter()
        .find(|a| a.kind == ActionKind::Confirmation)
        .unwrap()
        .id;

    // PostgreSQL: hold the thread's row.
    let mut held = if db.backend() == tessera_store::Backend::Postgres {
        Some(
            hold(
                db,
                "SELECT id FROM threads WHERE id = $1 FOR UPDATE",
                th.id.as_str(),
            )
            .await,
        )
    } else {
        None
    };
    let answer = {
        let (store, scope, th) = (store.clone(), t.scope.clone(), th.id.clone());
        tokio::spawn(async move {
            store
                .submit_run(
                    &scope,
                    &th,
                    &submission(&th, "because", MultitaskPolicy::Enqueue),
                )
                .await
        })
    };
    if let Some((conn, pid)) = held.as_mut() {
        // The answer waits for the thread's row.
        wait_until_blocked_by(conn, *pid, "the answer never waited").await;
    }
    let confirm = {
        let (store, scope, th, id) = (
            store.clone(),
            t.scope.clone(),
            th.id.clone(),
            action_id.clone(),
        );
        tokio::spawn(async move {
            store
                .resolve_action(&scope, &th, &id, true, Timestamp::now())
                .await
        })
    };
    if let Some((mut conn, _)) = held {
        // The confirmation has recorded its decision and waits for the thread's row too.
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        sqlx::query("COMMIT").execute(&mut conn).await.unwrap();
        conn.close().await.unwrap();
    }
    let (run, _, _) = created(answer.await.unwrap().unwrap());
    assert_eq!(run.id, claimed.run.id, "the answer joined the waiting run");
    confirm.await.unwrap().unwrap();

    let run = store
        .get_run(&t.scope, &th.id, &claimed.run.id)
        .await
        .unwrap();
    assert_eq!(
        run.status,
        RunStatus::Running,
        "both decided: the run resumes"
    );
    let resumed = claim(&store, "node-b").await;
    assert_eq!(resumed.run.id, claimed.run.id);
}

/// Stops a thread's runs while its worker is in the middle of writing a step.
type Stopper = fn(
    Arc<dyn Store>,
    Scope,
    ThreadId,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// A worker's step transaction locks its run (the fence) and then the thread (its event
/// numbers). On PostgreSQL, a connection here takes those two locks in that order with `stop`
/// started in between: `stop` must wait for the run rather than hold the thread, or the two
/// deadlock (this connection is made the deadlock victim, so the test fails if they do).
async fn stop_during_a_step(db: &TestDatabase, stop: Stopper) {
    use sqlx::Connection as _;
    let store = open(db).await;
    let t = tenant(&store, "one").await;
    let th = thread(&store, &t, "t").await;
    queue(&store, &t.scope, &th.id, "hi").await;
    let claimed = claim(&store, "node-a").await;
    let mut step = if db.backend() == tessera_store::Backend::Postgres {
        let (mut conn, pid) = hold(
            db,
            "UPDATE runs SET attempt = attempt WHERE id = $1",
            claimed.run.id.as_str(),
        )
        .await;
        sqlx::query("SET LOCAL deadlock_timeout = '100ms'")
            .execute(&mut conn)
            .await
            .unwrap();
        Some((conn, pid))
    } else {
        None
    };
    let stopping = tokio::spawn(stop(store.clone(), t.scope.clone(), th.id.clone()));
    if let Some((conn, pid)) = step.as_mut() {
        // The stop waits for this step...
        wait_until_blocked_by(conn, *pid, "the stop never waited").await;
    }
    if let Some((mut conn, _)) = step {
        // ... and the step goes on to number its events on the thread row and commits.
        sqlx::query("UPDATE threads SET last_seq = last_seq WHERE id = $1")
            .bind(th.id.as_str())
            .execute(&mut conn)
            .await
            .expect("the step's thread update (a deadlock victim if the stop held the thread)");
        sqlx::query("COMMIT").execute(&mut conn).await.unwrap();
        conn.close().await.unwrap();
    }
    stopping.await.unwrap();
    let run = store
        .get_run(&t.scope, &th.id, &claimed.run.id)
        .await
        .unwrap();
    assert!(run.cancel_requested, "the active run was asked to stop");
}

async fn a_close_waits_for_a_step_in_flight_instead_of_deadlocking(db: &TestDatabase) {
    stop_during_a_step(db, |store, scope, th| {
        Box::pin(async move {
            store
                .close_session(&scope, &th, Timestamp::now())
                .await
                .unwrap();
        })
    })
    .await;
}

async fn an_interruption_waits_for_a_step_in_flight_instead_of_deadlocking(db: &TestDatabase) {
    stop_during_a_step(db, |store, scope, th| {
        Box::pin(async move {
            let (_, interrupted, _) = created(
                store
                    .submit_run(
                        &scope,
                        &th,
                        &submission(&th, "now", MultitaskPolicy::Interrupt),
                    )
                    .await
                    .unwrap(),
            );
            assert_eq!(interrupted.len(), 1);
        })
    })
    .await;
}

/// On PostgreSQL, a connection here locks `first` (a statement taking one row lock, bound to
/// its id), `op` starts and waits for it, and the connection then locks `second`, which `op`
/// already holds: the two deadlock, which a third connection sees (each waits for the other)
/// before PostgreSQL breaks it. This connection waits longest before it checks for a deadlock
/// (10 s against the server's default 1 s), so PostgreSQL aborts `op`'s transaction, which must
/// run again and complete once this connection commits. A machine that stalls for longer than
/// the server's `deadlock_timeout` in between can make this connection the victim instead: the
/// test then fails, it never passes without the crossing. On SQLite `op` just runs.
async fn crossing<T: Send + 'static>(
    db: &TestDatabase,
    first: (&str, &str),
    second: (&str, &str),
    op: impl std::future::Future<Output = tessera_store::StoreResult<T>> + Send + 'static,
) -> T {
    use sqlx::Connection as _;
    if db.backend() != tessera_store::Backend::Postgres {
        return op.await.unwrap();
    }
    let (mut conn, pid) = hold(db, first.0, first.1).await;
    sqlx::query("SET LOCAL deadlock_timeout = '10s'")
        .execute(&mut conn)
        .await
        .unwrap();
    let task = tokio::spawn(op);
    wait_until_blocked_by(
        &mut conn,
        pid,
        "the operation never waited for the first lock",
    )
    .await;
    let (op_pid,): (i32,) = sqlx::query_as(
        "SELECT pid FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid)) LIMIT 1",
    )
    .bind(pid)
    .fetch_one(&mut conn)
    .await
    .unwrap();
    let mut monitor = sqlx::PgConnection::connect(&db.url).await.unwrap();
    // This connection waits until PostgreSQL aborted the operation's transaction, releasing
    // `second`; meanwhile the monitor sees the cycle.
    let second_lock = async {
        sqlx::query(second.0)
            .bind(second.1)
            .execute(&mut conn)
            .await
            .expect("this connection's second lock (the operation should have been the victim)")
    };
    let cycle = async {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            let (crossed,): (bool,) = sqlx::query_as(
                "SELECT $1 = ANY(pg_blocking_pids($2)) AND $2 = ANY(pg_blocking_pids($1))",
            )
            .bind(op_pid)
            .bind(pid)
            .fetch_one(&mut monitor)
            .await
            .unwrap();
            if crossed {
                return true;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        false
    };
    let (_, crossed) = tokio::join!(second_lock, cycle);
    assert!(
        crossed,
        "the operation and this connection never waited for each other"
    );
    monitor.close().await.unwrap();
    sqlx::query("COMMIT").execute(&mut conn).await.unwrap();
    conn.close().await.unwrap();
    task.await
        .unwrap()
        .expect("the operation runs again after its transaction was aborted as a deadlock victim")
}

const LOCK_RUN: &str = "UPDATE runs SET attempt = attempt WHERE id = $1";
const LOCK_ACTION: &str = "UPDATE pending_actions SET status = status WHERE id = $1";

/// A cancellation locks the paused run, then its pending actions (to cancel them); here the
/// action is held first by a transaction that then wants the run, as a decision on it does.
async fn a_cancel_that_crosses_a_decision_runs_again(db: &TestDatabase) {
    let store = open(db).await;
    let t = tenant(&store, "one").await;
    let (th, claimed) = paused(&store, &t, &[action("a", Timestamp::now().plus_secs(3600))]).await;
    let pending = store.run_actions(&t.scope, &claimed.run.id).await.unwrap();
    let op = {
        let (store, scope, th) = (store.clone(), t.scope.clone(), th.id.clone());
        async move { store.cancel_runs(&scope, &th).await }
    };
    let runs = crossing(
        db,
        (LOCK_ACTION, pending[0].id.as_str()),
        (LOCK_RUN, claimed.run.id.as_str()),
        op,
    )
    .await;
    assert_eq!(runs.len(), 1);
    let actions = store.run_actions(&t.scope, &claimed.run.id).await.unwrap();
    assert_eq!(actions[0].status, ActionStatus::Cancelled);
}

/// A decision locks the action, then the thread and the run (to resume it); here the run is
/// held first by a transaction that then wants the action, as a cancellation does.
async fn a_decision_that_crosses_a_cancel_runs_again(db: &TestDatabase) {
    let store = open(db).await;
    let t = tenant(&store, "one").await;
    let (th, claimed) = paused(&store, &t, &[action("a", Timestamp::now().plus_secs(3600))]).await;
    let pending = store.run_actions(&t.scope, &claimed.run.id).await.unwrap();
    let op = {
        let (store, scope, th, id) = (
            store.clone(),
            t.scope.clone(),
            th.id.clone(),
            pending[0].id.clone(),
        );
        async move {
            store
                .resolve_action(&scope, &th, &id, true, Timestamp::now())
                .await
        }
    };
    let (decided, _) = crossing(
        db,
        (LOCK_RUN, claimed.run.id.as_str()),
        (LOCK_ACTION, pending[0].id.as_str()),
        op,
    )
    .await;
    assert_eq!(decided.status, ActionStatus::Confirmed);
    let run = store
        .get_run(&t.scope, &th.id, &claimed.run.id)
        .await
        .unwrap();
    assert_eq!(run.status, RunStatus::Running, "the decided run resumes");
}

/// The scheduler's sweeps lock the due actions first, then their threads (and, for an expiry,
/// the run it resumes); here a transaction holding the run (or the thread) then wants the
/// action, as a cancellation (or a close) does.
async fn an_expiry_and_a_warning_that_cross_a_stop_run_again(db: &TestDatabase) {
    let store = open(db).await;
    let t = tenant(&store, "one").await;
    let now = Timestamp::now();
    let (th, claimed) = paused(&store, &t, &[action("a", now.plus_secs(60))]).await;
    let pending = store.run_actions(&t.scope, &claimed.run.id).await.unwrap();
    let action_id = pending[0].id.as_str();

    let warning_due = pending[0].warn_at();
    let op = {
        let store = store.clone();
        async move { store.warn_expiring_actions(warning_due).await }
    };
    let lock_thread = "UPDATE threads SET last_seq = last_seq WHERE id = $1";
    let warned = crossing(
        db,
        (lock_thread, th.id.as_str()),
        (LOCK_ACTION, action_id),
        op,
    )
    .await;
    assert_eq!(warned.len(), 1);
    assert_eq!(warned[0].kind, "pending_action.expiring");

    let op = {
        let store = store.clone();
        async move { store.expire_due_actions(now.plus_secs(61)).await }
    };
    let resolved = crossing(
        db,
        (LOCK_RUN, claimed.run.id.as_str()),
        (LOCK_ACTION, action_id),
        op,
    )
    .await;
    assert_eq!(resolved.len(), 1);
    let actions = store.run_actions(&t.scope, &claimed.run.id).await.unwrap();
    assert_eq!(actions[0].status, ActionStatus::Expired);
    let run = store
        .get_run(&t.scope, &th.id, &claimed.run.id)
        .await
        .unwrap();
    assert_eq!(
        run.status,
        RunStatus::Running,
        "the run resumes past its expired action"
    );
}

/// Cancelling a board item stops its paused run as a thread's cancellation does: the item, the
/// run, then the run's actions; here the action is held first by a transaction that then wants
/// the run, as a decision does.
async fn a_board_cancel_that_crosses_a_decision_runs_again(db: &TestDatabase) {
    use tessera_domain::board::ItemStatus;
    let store = open(db).await;
    let t = tenant(&store, "one").await;
    let item = board_item(&store, &t).await;
    let slot = store
        .claim_due_slots("n", Timestamp::now(), 10)
        .await
        .unwrap()
        .pop()
        .expect("the item's slot fires");
    let claimed = claim(&store, "node-a").await;
    assert_eq!(slot.run_id.as_ref(), Some(&claimed.run.id));
    store
        .pause_run(
            &claimed.lease,
            &[action("a", Timestamp::now().plus_secs(3600))],
        )
        .await
        .unwrap();
    let pending = store.run_actions(&t.scope, &claimed.run.id).await.unwrap();
    let op = {
        let (store, scope, project, id) = (
            store.clone(),
            t.scope.clone(),
            t.project.id.clone(),
            item.id.clone(),
        );
        async move { store.cancel_board_item(&scope, &project, &id).await }
    };
    let (cancelled, stopping, _) = crossing(
        db,
        (LOCK_ACTION, pending[0].id.as_str()),
        (LOCK_RUN, claimed.run.id.as_str()),
        op,
    )
    .await;
    assert_eq!(cancelled.status, ItemStatus::Cancelled);
    assert_eq!(stopping.as_ref(), Some(&claimed.run.id));
    let actions = store.run_actions(&t.scope, &claimed.run.id).await.unwrap();
    assert_eq!(actions[0].status, ActionStatus::Cancelled);
}

/// A board item on a new thread, without a schedule: its one slot is due at once.
async fn board_item(store: &Arc<dyn Store>, t: &Tenant) -> tessera_domain::board::BoardItem {
    use tessera_domain::board::{Assignment, NewBoardItem};
    store
        .create_board_item(
            &t.scope,
            &NewBoardItem {
                project_id: t.project.id.clone(),
                title: Label::parse("title", "report").unwrap(),
                description: "write the report".into(),
                assignment: Assignment::NewThread {
                    agent: None,
                    context_of: None,
                },
                capability_tags: vec![],
                schedule: None,
                parent_item_id: None,
            },
        )
        .await
        .unwrap()
}

/// The board scheduler's slot claim holds the due items it took (from its first statement)
/// while it locks their threads to number their events; here a thread is held first by a
/// transaction that then wants the item, as the expiry sweep wanting another of the claim's
/// threads would. The aborted claim runs again; the slot fires once, from that claim or (when
/// the item was still locked then, and skipped) from the next.
async fn a_slot_claim_that_crosses_a_thread_lock_runs_again(db: &TestDatabase) {
    use tessera_store::SlotOutcome;
    let store = open(db).await;
    let t = tenant(&store, "one").await;
    let item = board_item(&store, &t).await;
    let op = {
        let store = store.clone();
        async move { store.claim_due_slots("n", Timestamp::now(), 10).await }
    };
    let lock_thread = "UPDATE threads SET last_seq = last_seq WHERE id = $1";
    let lock_item = "UPDATE board_items SET updated_at = updated_at WHERE id = $1";
    let mut slots = crossing(
        db,
        (lock_thread, item.assigned_thread_id.as_str()),
        (lock_item, item.id.as_str()),
        op,
    )
    .await;
    slots.extend(
        store
            .claim_due_slots("n", Timestamp::now(), 10)
            .await
            .unwrap(),
    );
    assert_eq!(slots.len(), 1, "the item's one slot fires once: {slots:?}");
    assert_eq!(slots[0].item_id, item.id);
    assert_eq!(slots[0].outcome, SlotOutcome::Fired);
    let claimed = claim(&store, "node-a").await;
    assert_eq!(slots[0].run_id.as_ref(), Some(&claimed.run.id));
    assert_eq!(claimed.run.thread_id, item.assigned_thread_id);
}
