//! Request extractors that turn every malformed input into an [`ApiError`] naming the field:
//! JSON bodies, query strings and paging parameters.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use axum::http::StatusCode;
use serde::de::DeserializeOwned;
use tessera_api::ErrorCode;
use tessera_store::{Cursor, Entity, PageRequest};

use crate::error::ApiError;

/// A JSON request body. Content type must be JSON (or absent); syntax errors are 400
/// `malformed_json`; type, enum, missing and unknown fields are 422 `validation_failed` with the
/// path of the field; bodies over the limit are 413.
pub(crate) struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = read_json_body(req, state).await?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// Like [`ApiJson`], but an empty body means `T::default()` (for optional bodies).
pub(crate) struct ApiJsonOrDefault<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Default> FromRequest<S> for ApiJsonOrDefault<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = read_json_body(req, state).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(ApiJsonOrDefault(T::default()));
        }
        parse_json(&bytes).map(ApiJsonOrDefault)
    }
}

/// Checks the content type (JSON or absent) and reads the body within the size limit.
async fn read_json_body<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, ApiError> {
    if let Some(content_type) = req.headers().get(CONTENT_TYPE) {
        let essence = content_type
            .to_str()
            .unwrap_or_default()
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        let is_json = essence == "application/json"
            || (essence.starts_with("application/") && essence.ends_with("+json"));
        if !is_json {
            return Err(ApiError::new(
                ErrorCode::UnsupportedMediaType,
                format!("expected Content-Type: application/json, got {essence:?}"),
            ));
        }
    }
    Bytes::from_request(req, state).await.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                ErrorCode::PayloadTooLarge,
                "the request body exceeds the size limit",
            )
        } else {
            ApiError::new(
                ErrorCode::MalformedJson,
                format!("cannot read the request body: {rejection}"),
            )
        }
    })
}

/// Deserializes a JSON body, reporting the failing field's path.
pub(crate) fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    // Every body is an object; serde would also accept a struct written as an array.
    match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') | None => {}
        Some(_) => {
            if serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_ok() {
                return Err(ApiError::new(
                    ErrorCode::ValidationFailed,
                    "the request body must be a JSON object",
                ));
            }
        }
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        match inner.classify() {
            serde_json::error::Category::Data => field_error(&path, &inner.to_string()),
            serde_json::error::Category::Syntax
            | serde_json::error::Category::Eof
            | serde_json::error::Category::Io => ApiError::new(
                ErrorCode::MalformedJson,
                format!("the request body is not valid JSON: {inner}"),
            ),
        }
    })?;
    de.end().map_err(|err| {
        ApiError::new(
            ErrorCode::MalformedJson,
            format!("the request body is not valid JSON: {err}"),
        )
    })?;
    Ok(value)
}

/// Builds a 422 for a serde data error at `path`, naming the field even when serde reports the
/// error on the parent object (missing and unknown fields).
fn field_error(path: &str, message: &str) -> ApiError {
    let message = strip_position(message);
    let field = field_path(path, &message);
    if field.is_empty() {
        return ApiError::new(ErrorCode::ValidationFailed, message);
    }
    ApiError::new(ErrorCode::ValidationFailed, format!("{field}: {message}")).with_field(field)
}

/// The field a serde error is about. serde_path_to_error's path already ends at an unknown
/// field, but stops at the parent object for a missing one, whose name is in the message.
fn field_path(path: &str, message: &str) -> String {
    let parent = if path == "." { "" } else { path };
    let missing = ["missing field `", "duplicate field `"]
        .iter()
        .find_map(|prefix| message.strip_prefix(prefix))
        .and_then(|rest| rest.split('`').next());
    match (parent, missing) {
        ("", Some(name)) => name.to_owned(),
        (parent, Some(name)) => format!("{parent}.{name}"),
        (parent, None) => parent.to_owned(),
    }
}

/// serde_json appends " at line 1 column 17"; the field path is more useful to clients.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message.to_owned(),
    }
}

/// A query string deserialized into `T`; errors are 400 `invalid_parameter` naming the parameter.
pub(crate) struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or_default();
        check_query_utf8(query)?;
        let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
        serde_path_to_error::deserialize(de)
            .map(ApiQuery)
            .map_err(|err| {
                let path = err.path().to_string();
                let message = err.into_inner().to_string();
                let field = field_path(&path, &message);
                if field.is_empty() {
                    return ApiError::new(ErrorCode::InvalidParameter, message);
                }
                ApiError::invalid_parameter(&field, format!("{field}: {message}"))
            })
    }
}

/// Refuses a query whose names or values do not decode to UTF-8 (`form_urlencoded` would
/// replace the bytes with U+FFFD, and a path or a name would be stored changed).
fn check_query_utf8(query: &str) -> Result<(), ApiError> {
    for pair in query.split('&') {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        if !percent_decodes_to_utf8(name) || !percent_decodes_to_utf8(value) {
            let field: String = form_urlencoded::parse(name.as_bytes())
                .next()
                .map(|(n, _)| n.into_owned())
                .unwrap_or_default();
            return Err(ApiError::invalid_parameter(
                &field,
                format!("{field}: not valid UTF-8 once percent-decoded"),
            ));
        }
    }
    Ok(())
}

/// Whether `raw` (`%XX` escapes; `+` and malformed escapes are kept as they are, as
/// `form_urlencoded` keeps them) decodes to UTF-8.
fn percent_decodes_to_utf8(raw: &str) -> bool {
    percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .is_ok()
}

/// An id type that appears in paths, and the entity a bad one is "not found" as.
pub(crate) trait PathId: Sized {
    const ENTITY: Entity;
    fn parse_id(raw: &str) -> Option<Self>;
}

macro_rules! path_ids {
    ($($ty:ty => $entity:ident),*) => {$(
        impl PathId for $ty {
            const ENTITY: Entity = Entity::$entity;
            fn parse_id(raw: &str) -> Option<Self> {
                <$ty>::parse(raw).ok()
            }
        }
    )*};
}

path_ids!(
    tessera_domain::ActorId => Actor,
    tessera_domain::AgentId => Agent,
    tessera_domain::ProjectId => Project,
    tessera_domain::SecretKeyId => SecretKey,
    tessera_domain::ThreadId => Thread,
    tessera_domain::RunId => Run,
    tessera_domain::UserId => User,
    tessera_domain::OrganizationId => Organization,
    tessera_domain::ActionId => Action,
    tessera_domain::ResponseId => Response,
    tessera_domain::BoardItemId => BoardItem,
    tessera_domain::ToolId => Tool
);

/// The single id of a path (`/ai/agents/{agent_id}`). An id that cannot exist — malformed,
/// wrong prefix, not even UTF-8 — is answered like an unknown one: 404 with the entity's code.
pub(crate) struct IdPath<T>(pub T);

impl<S: Send + Sync, T: PathId + Send> FromRequestParts<S> for IdPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::not_found(T::ENTITY))?;
        T::parse_id(&raw)
            .map(IdPath)
            .ok_or_else(|| ApiError::not_found(T::ENTITY))
    }
}

/// Two ids of a path (`/ai/threads/{thread_id}/runs/{run_id}`), checked outer first.
pub(crate) struct IdPath2<A, B>(pub A, pub B);

impl<S: Send + Sync, A: PathId + Send, B: PathId + Send> FromRequestParts<S> for IdPath2<A, B> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path((a, b)) = Path::<(String, String)>::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::not_found(A::ENTITY))?;
        let a = A::parse_id(&a).ok_or_else(|| ApiError::not_found(A::ENTITY))?;
        let b = B::parse_id(&b).ok_or_else(|| ApiError::not_found(B::ENTITY))?;
        Ok(IdPath2(a, b))
    }
}

/// Validates paging parameters; `parse_cursor` checks that a cursor is an id of the listed kind.
pub(crate) fn page_request<E>(
    limit: Option<u32>,
    before: Option<String>,
    after: Option<String>,
    parse_cursor: impl Fn(&str) -> Result<(), E>,
) -> Result<PageRequest, ApiError> {
    let limit = limit.unwrap_or(PageRequest::DEFAULT_LIMIT);
    if limit == 0 || limit > PageRequest::MAX_LIMIT {
        return Err(ApiError::invalid_parameter(
            "limit",
            format!("limit must be between 1 and {}", PageRequest::MAX_LIMIT),
        ));
    }
    let check = |field: &str, value: String| {
        parse_cursor(&value).map(|()| value).map_err(|_| {
            ApiError::invalid_parameter(field, format!("{field} is not an id from this list"))
        })
    };
    let cursor = match (before, after) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid_parameter(
                "before",
                "use either before or after, not both",
            ))
        }
        (Some(before), None) => Cursor::Before(check("before", before)?),
        (None, Some(after)) => Cursor::After(check("after", after)?),
        (None, None) => Cursor::First,
    };
    Ok(PageRequest { limit, cursor })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_api::CreateAgentRequest;

    fn err_of(body: &str) -> ApiError {
        match parse_json::<CreateAgentRequest>(body.as_bytes()) {
            Ok(_) => panic!("expected an error for {body}"),
            Err(e) => e,
        }
    }

    #[test]
    fn queries_must_decode_to_utf8() {
        for good in [
            "",
            "path=%2Fa%20b",
            "path=/caf%C3%A9",
            "a=%",
            "a=%zz&b=1",
            "limit=5&x",
            "q=%E2%82%AC+x",
        ] {
            assert!(check_query_utf8(good).is_ok(), "{good}");
        }
        for (bad, field) in [
            ("path=%2F%FF", "path"),
            ("a=1&name=%C0%AF", "name"),
            ("%FF=1", "\u{fffd}"),
        ] {
            let err = check_query_utf8(bad).unwrap_err();
            assert_eq!(err.code, ErrorCode::InvalidParameter, "{bad}");
            assert_eq!(err.field.as_deref(), Some(field), "{bad}");
        }
    }

    #[test]
    fn json_errors_name_the_field() {
        let e = err_of(r#"{"name": 5}"#);
        assert_eq!(e.code, ErrorCode::ValidationFailed);
        assert_eq!(e.field.as_deref(), Some("name"));
        assert_eq!(err_of("{}").field.as_deref(), Some("name"));
        let e = err_of(r#"{"name":"a","instructions":"x"}"#);
        assert_eq!(e.field.as_deref(), Some("instructions"));
        let e = err_of(r#"{"name":"a","multitask":"sometimes"}"#);
        assert_eq!(e.field.as_deref(), Some("multitask"));
        let e = err_of(r#"{"name":"a","model":{"provider":"x","model":"y","temperature":"hot"}}"#);
        assert_eq!(e.field.as_deref(), Some("model.temperature"));
        let e = err_of(r#"{"name":"a","model":{"provider":"x"}}"#);
        assert_eq!(e.field.as_deref(), Some("model.model"));
        let e = err_of(r#"{"name":"a","capability_tags":["x", 3]}"#);
        assert_eq!(e.field.as_deref(), Some("capability_tags[1]"));
    }

    #[test]
    fn syntax_errors_are_malformed_json() {
        assert_eq!(err_of(r#"{"name":"#).code, ErrorCode::MalformedJson);
        assert_eq!(err_of("").code, ErrorCode::MalformedJson);
        assert_eq!(
            err_of(r#"{"name":"a"} trailing"#).code,
            ErrorCode::MalformedJson
        );
    }

    #[test]
    fn paging_is_checked() {
        let ok = |_: &str| Ok::<(), ()>(());
        assert_eq!(page_request(None, None, None, ok).unwrap().limit, 50);
        assert_eq!(
            page_request(Some(0), None, None, ok)
                .unwrap_err()
                .field
                .as_deref(),
            Some("limit")
        );
        assert!(page_request(Some(101), None, None, ok).is_err());
        assert!(page_request(None, Some("a".into()), Some("b".into()), ok).is_err());
        let e = page_request(None, None, Some("zz".into()), |_| Err::<(), ()>(())).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("after"));
    }
}
