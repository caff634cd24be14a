//! [`Request`]: the one generic request builder behind every operation.
//!
//! Mistakes made while building (a missing path parameter, an invalid header) are kept and
//! returned by [`Request::send`], so that the builder methods themselves stay infallible.

use std::fmt;
use std::marker::PhantomData;

use reqwest::header::{HeaderName, HeaderValue, ACCEPT};
use reqwest::Method;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};
use tessera_api::Operation;

use crate::client::Client;
use crate::error::Error;

/// One API request, answered by a `T`. Build it with a [`Client`] method, optionally add
/// headers, then [`send`](Request::send) it.
#[must_use = "a request does nothing until it is sent"]
pub struct Request<'a, T> {
    client: &'a Client,
    method: Method,
    /// Path (with filled, percent-encoded parameters) and any query string written by hand.
    path: String,
    /// Query parameter objects, appended in order with `RequestBuilder::query`.
    query: Vec<Map<String, Value>>,
    body: Option<Value>,
    /// A non-JSON body and its media type (file uploads).
    raw_body: Option<(Vec<u8>, String)>,
    headers: Vec<(HeaderName, HeaderValue)>,
    /// A non-2xx status whose body is still a `T` (`/readyz` answers 503 with a `Health`).
    decode_also_on: Option<u16>,
    /// The first mistake made while building, reported by `send`.
    error: Option<Error>,
    response: PhantomData<fn() -> T>,
}

/// What came back, before interpretation.
pub(crate) struct RawResponse {
    pub(crate) status: u16,
    pub(crate) request_id: Option<String>,
    pub(crate) body: Vec<u8>,
}

impl<'a, T> Request<'a, T> {
    /// A request for `op`, with `path_params` filling its `{placeholders}`.
    pub(crate) fn operation(
        client: &'a Client,
        op: Operation,
        path_params: &[(&str, &str)],
    ) -> Self {
        let mut request = Request::raw(client, Method::GET, "");
        match Method::from_bytes(op.method.as_bytes()) {
            Ok(method) => request.method = method,
            Err(_) => request.fail(Error::InvalidRequest(format!(
                "operation {} has invalid method {:?}",
                op.id, op.method
            ))),
        }
        let path = op.fill_path(|name| {
            path_params
                .iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| *value)
        });
        match path {
            Ok(path) => request.path = path,
            Err(missing) => request.fail(Error::InvalidPath(format!(
                "operation {} needs path parameter {missing:?}",
                op.id
            ))),
        }
        request
    }

    /// A request for a path outside the operation table (e.g. `/healthz`), used as given.
    pub(crate) fn raw(client: &'a Client, method: Method, path_and_query: &str) -> Self {
        Request {
            client,
            method,
            path: path_and_query.to_owned(),
            query: Vec::new(),
            body: None,
            raw_body: None,
            headers: Vec::new(),
            decode_also_on: None,
            error: None,
            response: PhantomData,
        }
    }

    /// Adds query parameters from a struct or map (the `*Params` types of
    /// [`models`](crate::models)). `None` fields are left out.
    pub fn query(mut self, params: impl Serialize) -> Self {
        match serde_json::to_value(params) {
            Ok(Value::Object(mut map)) => {
                map.retain(|_, value| !value.is_null());
                self.query.push(map);
            }
            Ok(other) => self.fail(Error::InvalidRequest(format!(
                "query parameters must serialize to an object, not {other}"
            ))),
            Err(err) => self.fail(Error::Encode(err)),
        }
        self
    }

    /// Sets the JSON request body.
    pub fn json(mut self, body: impl Serialize) -> Self {
        match serde_json::to_value(body) {
            Ok(value) => self.body = Some(value),
            Err(err) => self.fail(Error::Encode(err)),
        }
        self
    }

    /// Sets a raw request body with its media type (file uploads).
    pub fn bytes(mut self, body: Vec<u8>, content_type: &str) -> Self {
        self.raw_body = Some((body, content_type.to_owned()));
        self
    }

    /// Adds a request header.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        match (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            (Ok(name), Ok(value)) => self.headers.push((name, value)),
            (Err(_), _) => self.fail(Error::InvalidRequest(format!(
                "invalid header name {name:?}"
            ))),
            (_, Err(_)) => self.fail(Error::InvalidRequest(format!(
                "invalid value for header {name:?}"
            ))),
        }
        self
    }

    /// Sets `Idempotency-Key`: a retry with the same key returns the first answer and starts
    /// nothing new.
    pub fn idempotency_key(self, key: &str) -> Self {
        self.header("Idempotency-Key", key)
    }

    /// The HTTP method.
    pub fn method(&self) -> &Method {
        &self.method
    }

    /// The path with its parameters filled and percent-encoded (without the query parameters).
    pub fn path(&self) -> &str {
        &self.path
    }

    pub(crate) fn decode_also_on(mut self, status: u16) -> Self {
        self.decode_also_on = Some(status);
        self
    }

    fn fail(&mut self, error: Error) {
        // The first mistake is the one worth reporting; later ones often follow from it.
        self.error.get_or_insert(error);
    }

    /// The `reqwest` request this becomes, with credentials.
    pub(crate) fn build(self) -> Result<reqwest::RequestBuilder, Error> {
        if let Some(error) = self.error {
            return Err(error);
        }
        let client = self.client;
        let mut builder = client
            .http
            .request(self.method, client.url(&self.path))
            .header(ACCEPT, "application/json");
        builder = client.authorize(builder);
        for params in &self.query {
            builder = builder.query(params);
        }
        for (name, value) in self.headers {
            builder = builder.header(name, value);
        }
        if let Some(body) = &self.body {
            builder = builder.json(body);
        }
        if let Some((bytes, content_type)) = self.raw_body {
            builder = builder
                .header(reqwest::header::CONTENT_TYPE, content_type)
                .body(bytes);
        }
        Ok(builder)
    }

    /// Sends the request and reads the whole answer, whatever its status.
    pub(crate) async fn execute(self) -> Result<RawResponse, Error> {
        let response = self.build()?.send().await?;
        let status = response.status().as_u16();
        let request_id = response
            .headers()
            .get("x-request-id")
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        let body = response.bytes().await?.to_vec();
        Ok(RawResponse {
            status,
            request_id,
            body,
        })
    }
}

impl<T: DeserializeOwned> Request<'_, T> {
    /// Sends the request. A 2xx answer is decoded as `T`; any other status becomes
    /// [`Error::Api`] with the server's error code.
    pub async fn send(self) -> Result<T, Error> {
        let decode_also_on = self.decode_also_on;
        let response = self.execute().await?;
        let status = response.status;
        if (200..300).contains(&status) {
            return serde_json::from_slice(&response.body)
                .map_err(|source| Error::decode(status, source, &response.body));
        }
        if decode_also_on == Some(status) {
            if let Ok(value) = serde_json::from_slice(&response.body) {
                return Ok(value);
            }
        }
        Err(Error::from_response(
            status,
            &response.body,
            response.request_id,
        ))
    }
}

/// A downloaded workspace file: its bytes and what the response headers said about them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileDownload {
    pub data: Vec<u8>,
    /// `Content-Type` of the response (the type stored with the file).
    pub mime_type: String,
    /// The name from `Content-Disposition`.
    pub file_name: Option<String>,
}

impl Request<'_, FileDownload> {
    /// Sends the request and reads the file. Any other status than 2xx becomes
    /// [`Error::Api`].
    pub async fn send(self) -> Result<FileDownload, Error> {
        let response = self.build()?.send().await?;
        let status = response.status().as_u16();
        let header = |name: reqwest::header::HeaderName| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let request_id = header(reqwest::header::HeaderName::from_static("x-request-id"));
        let mime_type = header(reqwest::header::CONTENT_TYPE).unwrap_or_default();
        let file_name = header(reqwest::header::CONTENT_DISPOSITION).and_then(|d| {
            d.split(';')
                .map(str::trim)
                .find_map(|p| p.strip_prefix("filename="))
                .map(|n| n.trim_matches('"').to_owned())
        });
        let body = response.bytes().await?.to_vec();
        if !(200..300).contains(&status) {
            return Err(Error::from_response(status, &body, request_id));
        }
        Ok(FileDownload {
            data: body,
            mime_type,
            file_name,
        })
    }
}

impl<T> fmt::Debug for Request<'_, T> {
    /// Shows header names but not their values, and not the body: either may carry secrets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let header_names: Vec<&str> = self.headers.iter().map(|(name, _)| name.as_str()).collect();
        f.debug_struct("Request")
            .field("method", &self.method)
            .field("path", &self.path)
            .field("query", &self.query)
            .field("headers", &header_names)
            .field("has_body", &self.body.is_some())
            .field("error", &self.error)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests fail loudly.
mod tests {
    use super::*;
    use tessera_api::ops;
    use tessera_api::types::{ListActorProjectsParams, ProjectStatus};

    fn client() -> Client {
        Client::new("http://example.invalid:9/", "tsk_secret")
    }

    #[test]
    fn fills_and_encodes_path_parameters() {
        let client = client();
        let request: Request<'_, Value> =
            Request::operation(&client, ops::GET_AI_AGENT_BY_ID, &[("agent_id", "a/b c?d")]);
        assert_eq!(request.path(), "/ai/agents/a%2Fb%20c%3Fd");
        assert_eq!(request.method(), &Method::GET);
        let built = request.build().unwrap().build().unwrap();
        assert_eq!(
            built.url().as_str(),
            "http://example.invalid:9/ai/agents/a%2Fb%20c%3Fd"
        );
        assert_eq!(
            built.headers().get("authorization").unwrap(),
            "Bearer tsk_secret"
        );
    }

    #[test]
    fn missing_path_parameter_is_reported_on_send() {
        let client = client();
        let request: Request<'_, Value> = Request::operation(&client, ops::GET_ACTOR, &[]);
        match request.build() {
            Err(Error::InvalidPath(message)) => assert!(message.contains("actor_id"), "{message}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn query_skips_absent_fields_and_encodes_values() {
        let client = client();
        let request: Request<'_, Value> =
            Request::operation(&client, ops::LIST_ACTOR_PROJECTS, &[]).query(
                ListActorProjectsParams {
                    actor_id: Some("actor_1&x=y".into()),
                    status: Some(ProjectStatus::Archived),
                    limit: Some(5),
                    ..Default::default()
                },
            );
        let built = request.build().unwrap().build().unwrap();
        assert_eq!(
            built.url().query(),
            Some("actor_id=actor_1%26x%3Dy&status=archived&limit=5")
        );
    }

    #[test]
    fn headers_and_body() {
        let client = Client::unauthenticated("http://example.invalid:9");
        let request: Request<'_, Value> = Request::operation(&client, ops::CREATE_ACTOR, &[])
            .json(serde_json::json!({"subject_type": "user"}))
            .idempotency_key("key-1");
        let debug = format!("{request:?}");
        assert!(debug.contains("idempotency-key"), "{debug}");
        let built = request.build().unwrap().build().unwrap();
        assert_eq!(built.method(), &Method::POST);
        assert_eq!(built.headers().get("idempotency-key").unwrap(), "key-1");
        assert_eq!(
            built.headers().get("content-type").unwrap(),
            "application/json"
        );
        assert!(built.headers().get("authorization").is_none());
        let body = built.body().and_then(|b| b.as_bytes()).unwrap();
        assert_eq!(body, br#"{"subject_type":"user"}"#);
    }

    #[test]
    fn invalid_header_is_reported() {
        let client = client();
        let request: Request<'_, Value> =
            Request::operation(&client, ops::CREATE_ACTOR, &[]).header("bad header", "x");
        assert!(matches!(request.build(), Err(Error::InvalidRequest(_))));
        let request: Request<'_, Value> =
            Request::operation(&client, ops::CREATE_ACTOR, &[]).header("x-ok", "line\nbreak");
        assert!(matches!(request.build(), Err(Error::InvalidRequest(_))));
    }

    #[test]
    fn query_must_be_an_object() {
        let client = client();
        let request: Request<'_, Value> =
            Request::operation(&client, ops::LIST_ACTORS, &[]).query("limit=5");
        assert!(matches!(request.build(), Err(Error::InvalidRequest(_))));
    }
}
