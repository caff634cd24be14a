//! End-to-end tests of `send` and `call_raw` against a scripted one-shot HTTP responder, so
//! that status handling is tested without a Tessera server.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::mpsc;
use std::thread;

use serde_json::{json, Value};
use tessera_api::types::{CreateActorProjectRequest, LookupActorParams};
use tessera_api::ErrorCode;

use crate::{Client, Error};

/// A request as the responder saw it.
struct Seen {
    request_line: String,
    headers: Vec<(String, String)>,
    body: String,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Serves one request with `status`, extra `headers` and `body`; returns the base URL and what
/// was received.
fn respond_once(
    status: &'static str,
    headers: &'static str,
    body: &'static str,
) -> (String, mpsc::Receiver<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut request_line = String::new();
        reader.read_line(&mut request_line).unwrap();
        let mut seen_headers = Vec::new();
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let (name, value) = line.split_once(':').unwrap();
            seen_headers.push((name.trim().to_owned(), value.trim().to_owned()));
        }
        let length = seen_headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .map_or(0, |(_, v)| v.parse::<usize>().unwrap());
        let mut request_body = vec![0; length];
        reader.read_exact(&mut request_body).unwrap();
        let mut stream = stream;
        write!(
            stream,
            "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n{headers}\r\n{body}",
            body.len()
        )
        .unwrap();
        stream.flush().unwrap();
        tx.send(Seen {
            request_line: request_line.trim_end().to_owned(),
            headers: seen_headers,
            body: String::from_utf8(request_body).unwrap(),
        })
        .unwrap();
    });
    (format!("http://{addr}/"), rx)
}

#[tokio::test]
async fn send_decodes_a_success_and_sends_credentials() {
    let (url, seen) = respond_once(
        "200 OK",
        "Content-Type: application/json\r\n",
        r#"{"actor":null}"#,
    );
    let client = Client::new(url, "tsk_k");
    let response = client
        .ai()
        .actors()
        .lookup_actor(LookupActorParams {
            subject_type: "user".into(),
            external_key: "a b/c".into(),
        })
        .send()
        .await
        .unwrap();
    assert_eq!(response.actor, None);
    let seen = seen.recv().unwrap();
    assert_eq!(
        seen.request_line,
        "GET /ai/actors/lookup?subject_type=user&external_key=a+b%2Fc HTTP/1.1"
    );
    assert_eq!(seen.header("authorization"), Some("Bearer tsk_k"));
    assert_eq!(seen.header("accept"), Some("application/json"));
}

#[tokio::test]
async fn send_posts_query_and_body() {
    let (url, seen) = respond_once(
        "201 Created",
        "",
        r#"{"id":"proj_1","actor_id":"actor_1","agent_id":"agent_1","name":"p","status":"active","created_at":"2025-01-01T00:00:00Z"}"#,
    );
    let client = Client::new(url, "tsk_k");
    let project = client
        .ai()
        .actor_projects()
        .create_actor_project(
            "actor_1",
            CreateActorProjectRequest {
                agent_id: "agent_1".into(),
                name: "p".into(),
            },
        )
        .idempotency_key("idem-1")
        .send()
        .await
        .unwrap();
    assert_eq!(project.id, "proj_1");
    assert_eq!(project.archived_at, None);
    let seen = seen.recv().unwrap();
    assert_eq!(
        seen.request_line,
        "POST /ai/actor-projects?actor_id=actor_1 HTTP/1.1"
    );
    assert_eq!(seen.header("idempotency-key"), Some("idem-1"));
    assert_eq!(
        serde_json::from_str::<Value>(&seen.body).unwrap(),
        json!({"agent_id": "agent_1", "name": "p"})
    );
}

#[tokio::test]
async fn send_turns_an_error_body_into_api_error() {
    let (url, _seen) = respond_once(
        "404 Not Found",
        "X-Request-Id: req_9\r\n",
        r#"{"error":{"code":"agent_not_found","message":"no agent"}}"#,
    );
    let err = Client::new(url, "k")
        .ai()
        .agents()
        .get_agent("agent/1")
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(404));
    assert_eq!(err.code(), Some(ErrorCode::AgentNotFound));
    assert_eq!(err.request_id(), Some("req_9"));
}

#[tokio::test]
async fn send_reports_an_undecodable_success() {
    let (url, _seen) = respond_once("200 OK", "", "not json");
    let err = Client::new(url, "k")
        .deployments()
        .current()
        .send()
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Decode { status: 200, body, .. } if body == "not json"),
        "{err:?}"
    );
}

#[tokio::test]
async fn ready_returns_unavailable_on_503() {
    let (url, seen) = respond_once("503 Service Unavailable", "", r#"{"status":"unavailable"}"#);
    let health = Client::unauthenticated(url).ready().send().await.unwrap();
    assert_eq!(health.status, "unavailable");
    let seen = seen.recv().unwrap();
    assert_eq!(seen.request_line, "GET /readyz HTTP/1.1");
    assert_eq!(seen.header("authorization"), None);

    // A 503 with an error body is still an error.
    let (url, _seen) = respond_once(
        "503 Service Unavailable",
        "",
        r#"{"error":{"code":"unavailable","message":"db down"}}"#,
    );
    let err = Client::unauthenticated(url)
        .ready()
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Unavailable));
}

#[tokio::test]
async fn call_raw_keeps_non_2xx_answers() {
    let (url, seen) = respond_once(
        "409 Conflict",
        "",
        r#"{"error":{"code":"last_active_key","message":"no"}}"#,
    );
    let url_origin = url.trim_end_matches('/').to_owned();
    let (status, body) = Client::new(url, "k")
        .call_raw("post", "/secret-keys/key_1/revoke", Some(json!({})))
        .await
        .unwrap();
    assert_eq!(status, 409);
    assert_eq!(body["error"]["code"], "last_active_key");
    let seen = seen.recv().unwrap();
    assert_eq!(seen.request_line, "POST /secret-keys/key_1/revoke HTTP/1.1");
    assert_eq!(seen.body, "{}");
    assert_eq!(seen.header("origin"), Some(url_origin.as_str()));

    let (url, _seen) = respond_once("204 No Content", "", "");
    let (status, body) = Client::new(url, "k")
        .call_raw("DELETE", "/x", None)
        .await
        .unwrap();
    assert_eq!((status, body), (204, Value::Null));

    let (url, _seen) = respond_once("502 Bad Gateway", "", "upstream down");
    let (status, body) = Client::new(url, "k")
        .call_raw("GET", "/x?y=1", None)
        .await
        .unwrap();
    assert_eq!((status, body), (502, json!("upstream down")));
}

#[tokio::test]
async fn call_raw_rejects_bad_input_without_sending() {
    let client = Client::new("http://127.0.0.1:9", "k");
    assert!(matches!(
        client.call_raw("GET", "ai/agents", None).await,
        Err(Error::InvalidPath(_))
    ));
    assert!(matches!(
        client.call_raw("GE T", "/ai/agents", None).await,
        Err(Error::InvalidRequest(_))
    ));
}

#[test]
fn futures_and_client_are_send() {
    fn assert_send<T: Send>(_: &T) {}
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Client>();
    assert_send_sync::<Error>();
    let client = Client::new("http://127.0.0.1:9", "k");
    let future = client.deployments().current().send();
    assert_send(&future);
    let raw = client.call_raw("GET", "/healthz", None);
    assert_send(&raw);
}
