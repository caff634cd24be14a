//! The SDK's [`Error`]: the server's error answers, transport failures and decoding failures.

use tessera_api::{ErrorBody, ErrorCode};

/// Bodies quoted in errors are cut to this many bytes.
const MAX_QUOTED_BODY: usize = 1024;

/// Everything a request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server answered with a non-2xx status. Built from its
    /// `{"error": {code, message, field, request_id}}` body; a body of another shape gives
    /// `code_str` `"unknown"` and the body text as `message`.
    #[error("{}", api_display(*.status, .code_str, .message, .field.as_deref(), .request_id.as_deref()))]
    Api {
        status: u16,
        /// The code, if this SDK knows it; match on this.
        code: Option<ErrorCode>,
        /// The code as sent (`"unknown"` when the body carried none).
        code_str: String,
        message: String,
        /// The request field or parameter at fault, if any.
        field: Option<String>,
        /// The server's request id (from the body, else the `X-Request-Id` header).
        request_id: Option<String>,
    },
    /// The request could not be sent or the response could not be read.
    #[error(transparent)]
    Transport(#[from] reqwest::Error),
    /// A 2xx answer whose body is not the expected JSON.
    #[error("could not decode the HTTP {status} response body")]
    Decode {
        status: u16,
        source: serde_json::Error,
        /// The body, cut to 1 KiB.
        body: String,
    },
    /// A path parameter is missing, or a raw path is malformed.
    #[error("invalid request path: {0}")]
    InvalidPath(String),
    /// An invalid HTTP method, header name/value, or query parameters that are not an object.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// A request body or query could not be serialized as JSON.
    #[error("could not encode the request")]
    Encode(#[source] serde_json::Error),
}

impl Error {
    /// The HTTP status the server answered with, if it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Api { status, .. } | Error::Decode { status, .. } => Some(*status),
            Error::Transport(err) => err.status().map(|status| status.as_u16()),
            Error::InvalidPath(_) | Error::InvalidRequest(_) | Error::Encode(_) => None,
        }
    }

    /// The server's error code, if it sent one this SDK knows.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Error::Api { code, .. } => *code,
            Error::Transport(_)
            | Error::Decode { .. }
            | Error::InvalidPath(_)
            | Error::InvalidRequest(_)
            | Error::Encode(_) => None,
        }
    }

    /// The server's request id, to find the answer in its logs.
    pub fn request_id(&self) -> Option<&str> {
        match self {
            Error::Api { request_id, .. } => request_id.as_deref(),
            Error::Transport(_)
            | Error::Decode { .. }
            | Error::InvalidPath(_)
            | Error::InvalidRequest(_)
            | Error::Encode(_) => None,
        }
    }

    /// The error for a non-2xx answer with this body. `header_request_id` (`X-Request-Id`) is
    /// used when the body carries none.
    pub(crate) fn from_response(
        status: u16,
        body: &[u8],
        header_request_id: Option<String>,
    ) -> Error {
        match serde_json::from_slice::<ErrorBody>(body) {
            Ok(ErrorBody { error }) => Error::Api {
                status,
                code: ErrorCode::from_code(&error.code),
                code_str: error.code,
                message: error.message,
                field: error.field,
                request_id: error.request_id.or(header_request_id),
            },
            Err(_) => {
                let text = quote_body(body);
                let message = if text.trim().is_empty() {
                    format!("HTTP {status} with no error body")
                } else {
                    text
                };
                Error::Api {
                    status,
                    code: None,
                    code_str: "unknown".to_owned(),
                    message,
                    field: None,
                    request_id: header_request_id,
                }
            }
        }
    }

    pub(crate) fn decode(status: u16, source: serde_json::Error, body: &[u8]) -> Error {
        Error::Decode {
            status,
            source,
            body: quote_body(body),
        }
    }
}

fn api_display(
    status: u16,
    code: &str,
    message: &str,
    field: Option<&str>,
    request_id: Option<&str>,
) -> String {
    let mut out = format!("{code} (HTTP {status}): {message}");
    if let Some(field) = field {
        out.push_str(&format!(" [field: {field}]"));
    }
    if let Some(request_id) = request_id {
        out.push_str(&format!(" [request id: {request_id}]"));
    }
    out
}

/// The body as text, cut to [`MAX_QUOTED_BODY`] bytes at a character boundary.
fn quote_body(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    if text.len() <= MAX_QUOTED_BODY {
        return text.into_owned();
    }
    let mut end = MAX_QUOTED_BODY;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests fail loudly.
mod tests {
    use super::*;

    #[test]
    fn parses_a_well_formed_error_body() {
        let body = br#"{"error":{"code":"validation_failed","message":"too long","field":"name","request_id":"req_1"}}"#;
        let err = Error::from_response(422, body, Some("req_header".into()));
        match &err {
            Error::Api {
                status,
                code,
                code_str,
                message,
                field,
                request_id,
            } => {
                assert_eq!(*status, 422);
                assert_eq!(*code, Some(ErrorCode::ValidationFailed));
                assert_eq!(code_str, "validation_failed");
                assert_eq!(message, "too long");
                assert_eq!(field.as_deref(), Some("name"));
                assert_eq!(request_id.as_deref(), Some("req_1"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(err.status(), Some(422));
        assert_eq!(err.code(), Some(ErrorCode::ValidationFailed));
        assert_eq!(err.request_id(), Some("req_1"));
        assert_eq!(
            err.to_string(),
            "validation_failed (HTTP 422): too long [field: name] [request id: req_1]"
        );
    }

    #[test]
    fn falls_back_to_the_header_request_id() {
        let body = br#"{"error":{"code":"actor_not_found","message":"no such actor"}}"#;
        let err = Error::from_response(404, body, Some("req_h".into()));
        assert_eq!(err.request_id(), Some("req_h"));
        assert_eq!(err.code(), Some(ErrorCode::ActorNotFound));
        assert_eq!(
            err.to_string(),
            "actor_not_found (HTTP 404): no such actor [request id: req_h]"
        );
    }

    #[test]
    fn keeps_an_unknown_code() {
        let body = br#"{"error":{"code":"brand_new_code","message":"new"}}"#;
        let err = Error::from_response(409, body, None);
        assert_eq!(err.code(), None);
        assert_eq!(err.status(), Some(409));
        match err {
            Error::Api { code_str, .. } => assert_eq!(code_str, "brand_new_code"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn non_json_body_becomes_unknown() {
        let err = Error::from_response(502, b"<html>Bad Gateway</html>", None);
        match &err {
            Error::Api {
                code,
                code_str,
                message,
                field,
                ..
            } => {
                assert_eq!(*code, None);
                assert_eq!(code_str, "unknown");
                assert_eq!(message, "<html>Bad Gateway</html>");
                assert_eq!(*field, None);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(err.status(), Some(502));

        // JSON, but not the error shape.
        let err = Error::from_response(503, br#"{"status":"unavailable"}"#, None);
        assert!(
            matches!(&err, Error::Api { code_str, message, .. } if code_str == "unknown" && message == r#"{"status":"unavailable"}"#)
        );

        let err = Error::from_response(500, b"", None);
        assert!(
            matches!(&err, Error::Api { message, .. } if message == "HTTP 500 with no error body")
        );
    }

    #[test]
    fn quoted_bodies_are_cut_to_1_kib() {
        let long = "é".repeat(2000);
        let quoted = quote_body(long.as_bytes());
        assert!(quoted.len() <= MAX_QUOTED_BODY + "…".len());
        assert!(quoted.ends_with('…'));

        let source = serde_json::from_slice::<u8>(b"x").unwrap_err();
        match Error::decode(200, source, long.as_bytes()) {
            Error::Decode { status, body, .. } => {
                assert_eq!(status, 200);
                assert!(body.len() <= MAX_QUOTED_BODY + "…".len());
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(quote_body(b"short"), "short");
    }
}
