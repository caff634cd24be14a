//! `GET /ai/threads/{id}/stream`: the thread's events as Server-Sent Events.
//!
//! Durable events carry their per-thread sequence number as the SSE `id`, so a client
//! reconnecting with `Last-Event-ID` gets exactly what it missed. They come from storage on
//! (re)connection, and afterwards from the hub, which hands over what this node just stored;
//! storage is read again only when that leaves a gap (events stored by another node, or out of
//! order). Text deltas come live from the hub and carry no id. The subscription is taken before
//! storage is read, so nothing falls in between. Memory per client is bounded: the hub's channel
//! is bounded, and a client too slow to keep up lags and simply re-reads from storage (missing
//! only deltas, whose text is in the stored message).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures_util::stream::Stream;
use serde_json::json;
use tessera_domain::event::{MESSAGE_COMPLETED, MESSAGE_DELTA};
use tessera_domain::{Scope, ThreadId};
use tessera_runtime::hub::Live;
use tessera_store::{Store, ThreadEvent};
use tokio::sync::broadcast::{
    self,
    error::{RecvError, TryRecvError},
};

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::extract::IdPath;
use crate::AppState;

/// Events read from storage per query.
const BATCH: u32 = 200;
/// Re-check storage this often even without a signal (covers a missed cross-node wake-up).
const RECHECK: Duration = Duration::from_secs(5);
/// Comment lines that keep proxies from closing an idle stream.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

struct Cursor {
    store: std::sync::Arc<dyn Store>,
    scope: Scope,
    thread: ThreadId,
    live: broadcast::Receiver<Live>,
    /// The last durable event queued (sent or in `backlog`).
    seen_seq: i64,
    /// Storage may hold events after `seen_seq` that the hub did not hand over.
    must_read: bool,
    backlog: VecDeque<Item>,
}

/// What the cursor sends next.
enum Item {
    Durable(ThreadEvent),
    Delta(SseEvent),
}

fn durable(e: &ThreadEvent) -> SseEvent {
    SseEvent::default()
        .id(e.seq.to_string())
        .event(e.kind.clone())
        .data(e.data.to_string())
}

fn delta(run_id: &tessera_domain::RunId, message_id: String, text: String) -> SseEvent {
    SseEvent::default().event(MESSAGE_DELTA).data(
        json!({"run_id": run_id.as_str(), "message_id": message_id, "text": text}).to_string(),
    )
}

impl Cursor {
    /// The next SSE event; `None` ends the stream (storage failed: the client reconnects with
    /// its `Last-Event-ID`).
    async fn next(&mut self) -> Option<SseEvent> {
        loop {
            match self.backlog.pop_front() {
                Some(Item::Durable(e)) => return Some(durable(&e)),
                Some(Item::Delta(event)) => return Some(event),
                None => {}
            }
            // Live items already waiting go first: a delta is published before the step that
            // stores its message commits, so it must not trail that message's event.
            match self.live.try_recv() {
                Ok(item) => {
                    if let Some(event) = self.take(item) {
                        return Some(event);
                    }
                    continue;
                }
                Err(TryRecvError::Lagged(_)) => {
                    self.must_read = true;
                    continue;
                }
                Err(TryRecvError::Closed) => return None,
                Err(TryRecvError::Empty) => {}
            }
            if self.must_read {
                self.must_read = false;
                match self
                    .store
                    .events_after(&self.scope, &self.thread, self.seen_seq, BATCH)
                    .await
                {
                    Ok(events) if !events.is_empty() => {
                        // A full batch may have more behind it.
                        self.must_read = events.len() == BATCH as usize;
                        self.queue(events);
                        continue;
                    }
                    Ok(_) => {}
                    Err(err) => {
                        tracing::warn!(error = %err, thread_id = %self.thread, "stream: reading events failed");
                        return None;
                    }
                }
            }
            match tokio::time::timeout(RECHECK, self.live.recv()).await {
                Ok(Ok(item)) => {
                    if let Some(event) = self.take(item) {
                        return Some(event);
                    }
                }
                // Lagged, or quiet for a while (covers a missed cross-node wake-up).
                Ok(Err(RecvError::Lagged(_))) | Err(_) => self.must_read = true,
                Ok(Err(RecvError::Closed)) => return None,
            }
        }
    }

    /// Takes a live item: a delta to send now, or stored events to queue (when they follow what
    /// was queued; otherwise storage is read to fill the gap).
    fn take(&mut self, item: Live) -> Option<SseEvent> {
        match item {
            Live::Delta {
                run_id,
                message_id,
                text,
            } => return Some(delta(&run_id, message_id, text)),
            Live::Stored(events) => {
                let fresh: Vec<&ThreadEvent> =
                    events.iter().filter(|e| e.seq > self.seen_seq).collect();
                let contiguous = fresh
                    .iter()
                    .enumerate()
                    .all(|(i, e)| e.seq == self.seen_seq + 1 + i as i64);
                if !self.must_read && contiguous {
                    for e in fresh {
                        self.seen_seq = e.seq;
                        self.backlog.push_back(Item::Durable(e.clone()));
                    }
                } else {
                    self.must_read = true;
                }
            }
            Live::Look => self.must_read = true,
        }
        None
    }
}

impl Cursor {
    /// Queues events read from storage. Deltas are published before the step storing their
    /// message commits, so any delta of a message completed in `events` is in the channel by
    /// now (it may have arrived after the channel was last checked, while storage was read):
    /// each such delta goes right before its message's completion; the rest (a message still
    /// streaming) after the events.
    fn queue(&mut self, events: Vec<ThreadEvent>) {
        let mut deltas: Vec<(String, SseEvent)> = Vec::new();
        let mut later = Vec::new();
        loop {
            match self.live.try_recv() {
                Ok(Live::Delta {
                    run_id,
                    message_id,
                    text,
                }) => {
                    let event = delta(&run_id, message_id.clone(), text);
                    deltas.push((message_id, event));
                }
                // Stored after the read, or already in it: sorted out once `events` are queued.
                Ok(Live::Stored(stored)) => later.push(stored),
                Ok(Live::Look) | Err(TryRecvError::Lagged(_)) => self.must_read = true,
                Err(TryRecvError::Empty) | Err(TryRecvError::Closed) => break,
            }
        }
        for e in events {
            if e.kind == MESSAGE_COMPLETED {
                if let Some(id) = e.data["message"]["id"].as_str() {
                    let (its, others): (Vec<_>, Vec<_>) =
                        deltas.into_iter().partition(|(m, _)| m == id);
                    deltas = others;
                    self.backlog
                        .extend(its.into_iter().map(|(_, d)| Item::Delta(d)));
                }
            }
            self.seen_seq = self.seen_seq.max(e.seq);
            self.backlog.push_back(Item::Durable(e));
        }
        self.backlog
            .extend(deltas.into_iter().map(|(_, d)| Item::Delta(d)));
        for stored in later {
            self.take(Live::Stored(stored));
        }
    }
}

/// Streams the thread's events. Reconnect with `Last-Event-ID: <seq>` (or `?after=<seq>`) to
/// resume after the last event received.
#[utoipa::path(
    get, path = "/ai/threads/{thread_id}/stream", operation_id = "streamAgentThread", tag = "threads",
    params(
        ("thread_id" = String, Path, description = "Thread id (`thread_…`)"),
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this event id."),
        ("after" = Option<i64>, Query, description = "Resume after this event id (for clients that cannot set headers)."),
    ),
    responses(
        (status = 200, description = "`text/event-stream` of `message.created`, `message.delta`, `message.completed`, `tool.started`, `tool.completed`, `run.status`, `notification` events", content_type = "text/event-stream", body = String),
        (status = 400, body = tessera_api::ErrorBody, description = "`invalid_parameter`"),
        (status = 401, body = tessera_api::ErrorBody, description = "`unauthorized`"),
        (status = 404, body = tessera_api::ErrorBody, description = "`thread_not_found`"),
    ),
    security(("secret_key" = []))
)]
pub(crate) async fn stream_thread(
    caller: Caller,
    State(state): State<AppState>,
    IdPath(thread): IdPath<ThreadId>,
    headers: HeaderMap,
    crate::extract::ApiQuery(q): crate::extract::ApiQuery<StreamParams>,
) -> ApiResult<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>> {
    state.store.get_thread(&caller.scope, &thread).await?;
    open(&state, caller.scope, thread, &headers, q.after)
}

/// The SSE response for a thread the caller may see (checked by the caller), resuming after
/// `Last-Event-ID` (or `after`). Shared by the backend and browser APIs.
pub(crate) fn open(
    state: &AppState,
    scope: Scope,
    thread: ThreadId,
    headers: &HeaderMap,
    after: Option<i64>,
) -> ApiResult<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>> {
    let last_seq = match headers.get("last-event-id") {
        Some(value) => value
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<i64>().ok())
            .filter(|v| *v >= 0)
            .ok_or_else(|| {
                ApiError::invalid_parameter("Last-Event-ID", "Last-Event-ID must be an event id")
            })?,
        None => after.unwrap_or(0).max(0),
    };
    let cursor = Cursor {
        live: state.runtime.hub.subscribe(&thread),
        store: state.store.clone(),
        scope,
        thread,
        seen_seq: last_seq,
        must_read: true,
        backlog: VecDeque::new(),
    };
    let stream = futures_util::stream::unfold(cursor, |mut cursor| async move {
        cursor.next().await.map(|event| (Ok(event), cursor))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)))
}

#[derive(Debug, Default, serde::Deserialize)]
pub(crate) struct StreamParams {
    pub after: Option<i64>,
}
