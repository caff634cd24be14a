//! Reading a thread's Server-Sent Events stream.

use futures_util::StreamExt as _;
use tessera_api::ops;

use crate::client::Client;
use crate::error::Error;

/// One event of a thread's stream.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamEvent {
    /// The per-thread sequence number of a durable event (`None` for `message.delta`).
    pub id: Option<i64>,
    /// `message.created`, `message.delta`, `message.completed`, `tool.started`,
    /// `tool.completed`, `run.status`, `notification`.
    pub event: String,
    pub data: serde_json::Value,
}

/// A stream to open: [`crate::Threads::stream`].
#[derive(Debug)]
pub struct StreamRequest<'a> {
    client: &'a Client,
    path: String,
    last_event_id: Option<i64>,
}

impl<'a> StreamRequest<'a> {
    pub(crate) fn new(client: &'a Client, thread_id: &str) -> Self {
        let path = ops::STREAM_AGENT_THREAD
            .fill_path(|name| (name == "thread_id").then_some(thread_id))
            .unwrap_or_default();
        StreamRequest {
            client,
            path,
            last_event_id: None,
        }
    }

    /// A stream at another operation's path (the agent-session stream).
    pub(crate) fn at_path(client: &'a Client, path: String) -> Self {
        StreamRequest {
            client,
            path,
            last_event_id: None,
        }
    }

    /// Resume after this event id (sent as `Last-Event-ID`).
    pub fn last_event_id(mut self, id: i64) -> Self {
        self.last_event_id = Some(id);
        self
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    /// Opens the stream. A non-2xx answer becomes [`Error::Api`].
    pub async fn connect(self) -> Result<ThreadStream, Error> {
        let mut builder = self
            .client
            .http
            .get(self.client.url(&self.path))
            .header(reqwest::header::ACCEPT, "text/event-stream");
        builder = self.client.authorize(builder);
        if let Some(id) = self.last_event_id {
            builder = builder.header("last-event-id", id.to_string());
        }
        let response = builder.send().await?;
        let status = response.status().as_u16();
        if !(200..300).contains(&status) {
            let request_id = response
                .headers()
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let body = response.bytes().await?.to_vec();
            return Err(Error::from_response(status, &body, request_id));
        }
        Ok(ThreadStream {
            bytes: Box::pin(response.bytes_stream()),
            buffer: Vec::new(),
            last_event_id: self.last_event_id,
        })
    }
}

type ByteStream =
    std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>;

/// An open stream; read it with [`ThreadStream::next`].
pub struct ThreadStream {
    bytes: ByteStream,
    buffer: Vec<u8>,
    last_event_id: Option<i64>,
}

impl std::fmt::Debug for ThreadStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThreadStream")
            .field("last_event_id", &self.last_event_id)
            .finish_non_exhaustive()
    }
}

impl ThreadStream {
    /// The id of the last durable event read: pass it to
    /// [`StreamRequest::last_event_id`] to resume after a disconnect.
    pub fn last_event_id(&self) -> Option<i64> {
        self.last_event_id
    }

    /// The next event; `None` when the server closed the stream. Keep-alive comments are
    /// skipped.
    pub async fn next(&mut self) -> Option<Result<StreamEvent, Error>> {
        loop {
            if let Some(block) = take_block(&mut self.buffer) {
                if let Some(event) = parse_block(&block) {
                    if event.id.is_some() {
                        self.last_event_id = event.id;
                    }
                    return Some(Ok(event));
                }
                continue;
            }
            match self.bytes.next().await {
                Some(Ok(chunk)) => self.buffer.extend_from_slice(&chunk),
                Some(Err(err)) => return Some(Err(Error::Transport(err))),
                None => return None,
            }
        }
    }
}

/// Removes and returns the first complete event block (up to a blank line). Works on bytes, so
/// a UTF-8 character split across network chunks stays intact until its block is complete.
fn take_block(buffer: &mut Vec<u8>) -> Option<String> {
    let (end, separator) = [&b"\r\n\r\n"[..], b"\n\n", b"\r\r"]
        .iter()
        .filter_map(|sep| {
            buffer
                .windows(sep.len())
                .position(|w| w == *sep)
                .map(|pos| (pos, sep.len()))
        })
        .min()?;
    let block = String::from_utf8_lossy(&buffer[..end]).replace("\r\n", "\n");
    buffer.drain(..end + separator);
    Some(block)
}

/// Parses one event block; `None` for a block with no data (comments, keep-alives).
fn parse_block(block: &str) -> Option<StreamEvent> {
    let mut id = None;
    let mut event = "message".to_owned();
    let mut data = String::new();
    for line in block.lines() {
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match field {
            "id" => id = value.trim().parse().ok(),
            "event" => event = value.to_owned(),
            "data" => {
                if !data.is_empty() {
                    data.push('\n');
                }
                data.push_str(value);
            }
            _ => {}
        }
    }
    if data.is_empty() {
        return None;
    }
    let data = serde_json::from_str(&data).unwrap_or(serde_json::Value::String(data));
    Some(StreamEvent { id, event, data })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_blocks_and_skips_comments() {
        let mut buf =
            b": keep-alive\n\nid: 3\nevent: run.status\ndata: {\"a\":1}\n\nid: 4".to_vec();
        let first = take_block(&mut buf).unwrap();
        assert!(parse_block(&first).is_none());
        let second = parse_block(&take_block(&mut buf).unwrap()).unwrap();
        assert_eq!(second.id, Some(3));
        assert_eq!(second.event, "run.status");
        assert_eq!(second.data, serde_json::json!({"a": 1}));
        assert!(
            take_block(&mut buf).is_none(),
            "an incomplete block waits for more bytes"
        );
    }
}
