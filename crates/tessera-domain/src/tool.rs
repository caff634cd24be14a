//! Tool records: what an agent may call besides the internal tools. Every tool has a
//! model-safe name, a description, a JSON-Schema input and a `configuration` whose `type`
//! selects the variant (`Api`, `CodeRunner`, `Mcp`, `PlatformEvent`).
//!
//! The secret of a configuration (a bearer token, a basic password, a header value, an OAuth
//! client secret) is never part of the stored configuration: it travels as a [`ToolSecret`],
//! is sealed with the installation's secrets key bound to the tool's id, and is stored apart.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::id::{PlatformEventId, RunId, ThreadId, ToolId};
use crate::token::{self, SecretsKey};
use crate::validate::ValidationError;
use crate::Timestamp;

/// The internal tools of the SPEC's catalogue. A tool record may not take one of these names
/// (also those not offered by this server yet), so adding one later cannot shadow a record.
pub const INTERNAL_TOOL_NAMES: &[&str] = &[
    "list_files",
    "read_file",
    "write_file",
    "execute_code",
    "delegate_task",
    "schedule_task",
    "ask_user",
    "notify_user",
    "request_variables",
    "publish_app",
];

/// Names starting with this are reserved for tools discovered on MCP servers
/// (`mcp_{slug}_{tool}`).
pub const MCP_PREFIX: &str = "mcp_";

/// Names starting with this are reserved for the tools of third-party toolkits
/// (`tk_{toolkit}_{tool}`, see [`crate::toolkit`]).
pub const TOOLKIT_PREFIX: &str = "tk_";

/// Longest name a model can call (the model APIs' limit for function names).
pub const MAX_TOOL_NAME: usize = 64;

/// The model-facing name of a third-party tool under `namespace` (`mcp_{slug}` for an MCP
/// server's, `tk_{toolkit}` for a toolkit's): `{namespace}_{tool}` when `tool` is made of
/// `[A-Za-z0-9_-]` and the whole fits in [`MAX_TOOL_NAME`]. Otherwise the tool part is `tool`
/// with every other character replaced by `_`, cut so that `_` and 8 hex digits of the SHA-256
/// of the original name still fit, and those appended. The result depends only on the
/// namespace and the tool's own name, and two different names cannot meet (up to a hash
/// collision).
pub fn namespaced_tool_name(namespace: &str, tool: &str) -> String {
    use sha2::Digest as _;
    let plain = format!("{namespace}_{tool}");
    let safe = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    if !tool.is_empty() && tool.chars().all(safe) && plain.len() <= MAX_TOOL_NAME {
        return plain;
    }
    let digest: String = sha2::Sha256::digest(tool.as_bytes())[..4]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let sanitized: String = tool
        .chars()
        .map(|c| if safe(c) { c } else { '_' })
        .collect();
    let room = MAX_TOOL_NAME.saturating_sub(format!("{namespace}__{digest}").len());
    let cut: String = sanitized.chars().take(room).collect();
    format!("{namespace}_{cut}_{digest}")
}

/// The thread event kind of an emitted platform event (SPEC §5 `platform.event`).
pub const PLATFORM_EVENT: &str = "platform.event";

fn err(field: &str, message: impl Into<String>) -> ValidationError {
    ValidationError::new(field, message)
}

/// A tool name the model can use: `^[a-zA-Z0-9_-]{1,64}$`, not an internal tool's name and not
/// in the `mcp_` or `tk_` namespaces.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct ToolName(String);

impl ToolName {
    pub fn parse(field: &str, value: impl Into<String>) -> Result<Self, ValidationError> {
        let value: String = value.into();
        if value.is_empty()
            || value.len() > 64
            || !value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(err(field, "must match ^[a-zA-Z0-9_-]{1,64}$"));
        }
        if INTERNAL_TOOL_NAMES.contains(&value.as_str()) {
            return Err(err(
                field,
                format!("`{value}` is the name of an internal tool"),
            ));
        }
        if value.starts_with(MCP_PREFIX) {
            return Err(err(
                field,
                "names starting with `mcp_` are reserved for MCP server tools",
            ));
        }
        if value.starts_with(TOOLKIT_PREFIX) {
            return Err(err(
                field,
                "names starting with `tk_` are reserved for toolkit tools",
            ));
        }
        Ok(Self(value))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ToolName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ToolName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl<'de> Deserialize<'de> for ToolName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        // Stored names were checked when written; the reserved lists may grow, so reading
        // only re-checks the shape.
        if raw.is_empty() || raw.len() > 64 {
            return Err(serde::de::Error::custom("bad tool name"));
        }
        Ok(Self(raw))
    }
}

/// A JSON Schema (object type at the top, as function calling requires) that compiles. It
/// may not reference documents outside itself.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct InputSchema(Value);

impl fmt::Debug for InputSchema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "InputSchema({})", self.0)
    }
}

/// Refuses every external document: schemas are self-contained.
struct NoLoader;

impl boon::UrlLoader for NoLoader {
    fn load(&self, url: &str) -> Result<Value, Box<dyn std::error::Error>> {
        Err(format!("external schema references are not allowed ({url})").into())
    }
}

const SCHEMA_URL: &str = "urn:tessera:tool-input";

fn compile(schema: &Value) -> Result<(boon::Schemas, boon::SchemaIndex), String> {
    let mut schemas = boon::Schemas::new();
    let mut compiler = boon::Compiler::new();
    compiler.set_default_draft(boon::Draft::V2020_12);
    compiler.use_loader(Box::new(NoLoader));
    compiler
        .add_resource(SCHEMA_URL, schema.clone())
        .map_err(|e| e.to_string())?;
    let index = compiler
        .compile(SCHEMA_URL, &mut schemas)
        .map_err(|e| e.to_string())?;
    Ok((schemas, index))
}

impl InputSchema {
    /// Largest schema accepted, serialized.
    pub const MAX_BYTES: usize = 64 * 1024;

    pub fn parse(field: &str, value: Value) -> Result<Self, ValidationError> {
        let Value::Object(map) = &value else {
            return Err(err(field, "must be a JSON Schema object"));
        };
        if map.get("type") != Some(&Value::String("object".into())) {
            return Err(err(
                field,
                "must describe an object (`\"type\": \"object\"`): tool arguments are a JSON object",
            ));
        }
        if value.to_string().len() > Self::MAX_BYTES {
            return Err(err(
                field,
                format!("must be at most {} bytes", Self::MAX_BYTES),
            ));
        }
        compile(&value).map_err(|e| err(field, format!("is not a valid JSON Schema: {e}")))?;
        Ok(Self(value))
    }

    /// A schema that accepts any object.
    pub fn any_object() -> Self {
        Self(serde_json::json!({"type": "object"}))
    }

    pub fn as_value(&self) -> &Value {
        &self.0
    }

    /// The names under `properties`.
    pub fn properties(&self) -> Vec<&str> {
        self.0
            .get("properties")
            .and_then(Value::as_object)
            .map(|p| p.keys().map(String::as_str).collect())
            .unwrap_or_default()
    }

    /// The names under `required`.
    pub fn required(&self) -> Vec<&str> {
        self.0
            .get("required")
            .and_then(Value::as_array)
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default()
    }

    /// Checks a model's arguments. The error text goes back to the model.
    pub fn validate(&self, args: &Value) -> Result<(), String> {
        let (schemas, index) = compile(&self.0)?;
        schemas.validate(args, index).map_err(|e| {
            let text = e.to_string();
            // One line per error, the schema location kept out of it.
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .take(8)
                .collect::<Vec<_>>()
                .join("; ")
        })
    }
}

/// The secret of a tool's configuration. `Debug` hides it; it is only ever stored sealed.
#[derive(Clone, PartialEq, Eq)]
pub struct ToolSecret(String);

impl ToolSecret {
    pub const MAX_LEN: usize = 8 * 1024;

    pub fn parse(field: &str, value: impl Into<String>) -> Result<Self, ValidationError> {
        let value: String = value.into();
        if value.is_empty() || value.len() > Self::MAX_LEN {
            return Err(err(field, format!("must be 1-{} bytes", Self::MAX_LEN)));
        }
        if value.chars().any(|c| c == '\r' || c == '\n' || c == '\0') {
            return Err(err(field, "must not contain line breaks or NUL"));
        }
        Ok(Self(value))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Sealed for storage, bound to the tool's id (a sealed secret moved to another tool's
    /// row does not open).
    pub fn seal(&self, key: &SecretsKey, tool: &ToolId) -> Vec<u8> {
        token::seal(key, self.0.as_bytes(), &secret_aad(tool))
    }

    /// Opens a stored secret of `tool`.
    pub fn open(key: &SecretsKey, tool: &ToolId, sealed: &[u8]) -> Result<Self, token::OpenError> {
        let bytes = token::open(key, sealed, &secret_aad(tool))?;
        String::from_utf8(bytes)
            .map(Self)
            .map_err(|_| token::OpenError)
    }
}

fn secret_aad(tool: &ToolId) -> Vec<u8> {
    format!("tessera:tool-secret:{tool}").into_bytes()
}

impl fmt::Debug for ToolSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ToolSecret(<redacted>)")
    }
}

// ---------------------------------------------------------------------------------------------
// Configurations

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum HttpMethod {
    Get,
    Post,
    Put,
    Patch,
    Delete,
}

impl HttpMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Get => "GET",
            Self::Post => "POST",
            Self::Put => "PUT",
            Self::Patch => "PATCH",
            Self::Delete => "DELETE",
        }
    }

    /// Whether the arguments not used elsewhere travel as a JSON body.
    pub fn has_body(self) -> bool {
        matches!(self, Self::Post | Self::Put | Self::Patch)
    }
}

/// How an Api tool authenticates. The secret of `bearer`, `basic` and `header` is the tool's
/// [`ToolSecret`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ApiAuth {
    None,
    /// `Authorization: Bearer <secret>`.
    Bearer,
    /// `Authorization: Basic base64(username:secret)`.
    Basic {
        username: String,
    },
    /// `<name>: <secret>`.
    Header {
        name: String,
    },
    /// `Authorization: Bearer <a short token signed by the server naming actor and thread>`.
    ActorToken {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        audience: Option<String>,
    },
}

/// A URL with `{param}` placeholders in its path and query, filled from the arguments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct UrlTemplate(String);

impl UrlTemplate {
    pub const MAX_LEN: usize = 2048;

    pub fn parse(field: &str, value: impl Into<String>) -> Result<Self, ValidationError> {
        let value: String = value.into();
        if value.len() > Self::MAX_LEN {
            return Err(err(
                field,
                format!("must be at most {} characters", Self::MAX_LEN),
            ));
        }
        let rest = value
            .strip_prefix("https://")
            .or_else(|| value.strip_prefix("http://"))
            .ok_or_else(|| err(field, "must start with http:// or https://"))?;
        let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let authority = &rest[..authority_end];
        if authority.is_empty() {
            return Err(err(field, "must name a host"));
        }
        if authority.contains(['{', '}']) {
            return Err(err(
                field,
                "placeholders may only appear in the path and query",
            ));
        }
        if authority.contains('@') {
            return Err(err(field, "must not carry credentials (use `auth`)"));
        }
        if value.contains('#') {
            return Err(err(field, "must not have a fragment"));
        }
        if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(err(field, "must not contain spaces or control characters"));
        }
        let template = Self(value);
        template.placeholders().map_err(|m| err(field, m))?;
        Ok(template)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The placeholder names, in order.
    pub fn placeholders(&self) -> Result<Vec<&str>, String> {
        let mut names = Vec::new();
        let mut rest = self.0.as_str();
        while let Some(start) = rest.find(['{', '}']) {
            if rest.as_bytes()[start] == b'}' {
                return Err("has a `}` without `{`".to_owned());
            }
            let after = &rest[start + 1..];
            let end = after
                .find('}')
                .ok_or_else(|| "has a `{` without `}`".to_owned())?;
            let name = &after[..end];
            if name.is_empty()
                || name.len() > 64
                || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            {
                return Err(format!(
                    "placeholder `{{{name}}}` must be [A-Za-z0-9_]{{1,64}}"
                ));
            }
            names.push(name);
            rest = &after[end + 1..];
        }
        Ok(names)
    }

    /// The URL with every placeholder replaced by its argument, percent-encoded. Strings,
    /// numbers and booleans may fill a placeholder.
    pub fn fill(&self, args: &serde_json::Map<String, Value>) -> Result<String, String> {
        let mut out = String::with_capacity(self.0.len() + 32);
        let mut rest = self.0.as_str();
        while let Some(start) = rest.find('{') {
            out.push_str(&rest[..start]);
            let after = &rest[start + 1..];
            let end = after.find('}').ok_or("malformed URL template")?;
            let name = &after[..end];
            let value = args
                .get(name)
                .ok_or_else(|| format!("the argument `{name}` is required by the URL"))?;
            out.push_str(&percent_encode(&scalar_text(name, value)?));
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }
}

/// A string, number or boolean argument as text.
pub fn scalar_text(name: &str, value: &Value) -> Result<String, String> {
    match value {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        _ => Err(format!(
            "the argument `{name}` must be a string, number or boolean to go into the URL"
        )),
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters, so a value cannot add path
/// segments, a query or a fragment.
pub fn percent_encode(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for b in raw.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `configuration` of an `Api` tool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiConfig {
    pub url: UrlTemplate,
    pub method: HttpMethod,
    /// Static, non-secret headers (secrets go in `auth`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Arguments sent as query parameters. For `GET`/`DELETE` every argument not used by the
    /// URL goes to the query; for the others the remaining arguments are the JSON body.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub query_params: Vec<String>,
    pub auth: ApiAuth,
    /// Largest response body read, bytes (absent: the server's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_response_bytes: Option<u64>,
}

impl ApiConfig {
    pub const MAX_HEADERS: usize = 32;
    pub const MAX_RESPONSE_BYTES: u64 = 10 * 1024 * 1024;
}

/// Headers an Api tool may not set itself: they belong to the connection, the auth or the body.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "authorization",
    "proxy-authorization",
    "cookie",
    "te",
    "upgrade",
];

pub fn check_header_name(field: &str, name: &str) -> Result<(), ValidationError> {
    if name.is_empty()
        || name.len() > 128
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
    {
        return Err(err(
            field,
            "must be a header name ([A-Za-z0-9_-], at most 128)",
        ));
    }
    if RESERVED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
        return Err(err(
            field,
            format!("`{name}` cannot be set by a tool (use `auth` for credentials)"),
        ));
    }
    Ok(())
}

fn check_header_value(field: &str, value: &str) -> Result<(), ValidationError> {
    if value.len() > 4096 || value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
        return Err(err(field, "must be at most 4096 bytes without line breaks"));
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CodeLanguage {
    Python,
    Javascript,
    Bash,
}

/// Resource limits of a CodeRunner tool; absent fields take the sandbox's defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CodeLimits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_seconds: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_processes: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_output_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wall_seconds: Option<u32>,
}

impl CodeLimits {
    pub fn check(&self, field: &str) -> Result<(), ValidationError> {
        let ranges: [(&str, Option<u64>, u64); 5] = [
            ("cpu_seconds", self.cpu_seconds.map(u64::from), 600),
            ("memory_mb", self.memory_mb.map(u64::from), 16_384),
            ("max_processes", self.max_processes.map(u64::from), 1024),
            ("max_output_bytes", self.max_output_bytes, 64 * 1024 * 1024),
            ("wall_seconds", self.wall_seconds.map(u64::from), 3600),
        ];
        for (name, value, max) in ranges {
            if let Some(v) = value {
                if v == 0 || v > max {
                    return Err(err(
                        &format!("{field}.{name}"),
                        format!("must be between 1 and {max}"),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// `configuration` of a `CodeRunner` tool: fixed code run in the sandbox with the model's
/// JSON input on stdin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CodeRunnerConfig {
    pub language: CodeLanguage,
    pub code: String,
    /// Whether the sandbox has network access (default: none).
    #[serde(default)]
    pub network: bool,
    #[serde(default)]
    pub limits: CodeLimits,
}

impl CodeRunnerConfig {
    pub const MAX_CODE_BYTES: usize = 256 * 1024;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum McpTransport {
    StreamableHttp,
    /// A local process; only when the operator enables it.
    Stdio,
}

/// How an MCP server is authenticated; the secret of `bearer` and
/// `oauth_client_credentials` is the tool's [`ToolSecret`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum McpAuth {
    None,
    Bearer,
    OauthClientCredentials {
        token_url: String,
        client_id: String,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        scopes: Vec<String>,
    },
}

/// `configuration` of an `Mcp` tool: a server whose tools surface as `mcp_{slug}_{tool}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct McpConfig {
    /// `[a-z0-9]{1,16}`: the middle part of the exposed tool names.
    pub slug: String,
    pub transport: McpTransport,
    /// The server's URL (`streamable_http`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The program and its arguments (`stdio`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    pub auth: McpAuth,
}

/// `configuration` of a `PlatformEvent` tool: calling it emits an event of `event_type` whose
/// payload is the model's arguments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlatformEventConfig {
    pub event_type: String,
}

/// What a tool does; `type` selects the variant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum ToolConfig {
    Api(ApiConfig),
    CodeRunner(CodeRunnerConfig),
    Mcp(McpConfig),
    PlatformEvent(PlatformEventConfig),
}

impl ToolConfig {
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::Api(_) => "Api",
            Self::CodeRunner(_) => "CodeRunner",
            Self::Mcp(_) => "Mcp",
            Self::PlatformEvent(_) => "PlatformEvent",
        }
    }

    /// The request field that holds this configuration's secret, when it needs one.
    pub fn secret_field(&self) -> Option<&'static str> {
        match self {
            Self::Api(api) => match api.auth {
                ApiAuth::Bearer => Some("configuration.auth.token"),
                ApiAuth::Basic { .. } => Some("configuration.auth.password"),
                ApiAuth::Header { .. } => Some("configuration.auth.value"),
                ApiAuth::None | ApiAuth::ActorToken { .. } => None,
            },
            Self::Mcp(mcp) => match mcp.auth {
                McpAuth::Bearer => Some("configuration.auth.token"),
                McpAuth::OauthClientCredentials { .. } => Some("configuration.auth.client_secret"),
                McpAuth::None => None,
            },
            Self::CodeRunner(_) | Self::PlatformEvent(_) => None,
        }
    }
}

fn check_http_url(field: &str, url: &str) -> Result<(), ValidationError> {
    UrlTemplate::parse(field, url).and_then(|t| match t.placeholders() {
        Ok(p) if p.is_empty() => Ok(()),
        _ => Err(err(field, "must not have placeholders")),
    })
}

fn check_short(field: &str, value: &str, max: usize) -> Result<(), ValidationError> {
    if value.is_empty() || value.chars().count() > max || value.chars().any(char::is_control) {
        return Err(err(
            field,
            format!("must be 1-{max} characters without control characters"),
        ));
    }
    Ok(())
}

/// Everything that defines a tool, validated. Stored as one unit; updates replace it whole.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolSpec {
    pub name: ToolName,
    pub description: String,
    pub input_schema: InputSchema,
    #[serde(default)]
    pub requires_confirmation: bool,
    /// How long a confirmation of this tool stays open (absent: the server's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirmation_expires_in_seconds: Option<u32>,
    /// Longest a call may take (absent: the server's `runtime.tool_timeout_seconds`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u32>,
    pub configuration: ToolConfig,
}

impl ToolSpec {
    pub const MAX_DESCRIPTION: usize = 4000;
    pub const MAX_TIMEOUT_SECONDS: u32 = 600;
    pub const MAX_CONFIRMATION_SECONDS: u32 = 86_400;

    /// Rules that span fields: the configuration against the input schema, limits. Field
    /// names are those of the request.
    pub fn check(&self) -> Result<(), ValidationError> {
        if self.description.chars().count() > Self::MAX_DESCRIPTION {
            return Err(err(
                "description",
                format!("must be at most {} characters", Self::MAX_DESCRIPTION),
            ));
        }
        if let Some(t) = self.timeout_seconds {
            if t == 0 || t > Self::MAX_TIMEOUT_SECONDS {
                return Err(err(
                    "timeout_seconds",
                    format!("must be between 1 and {}", Self::MAX_TIMEOUT_SECONDS),
                ));
            }
        }
        if let Some(t) = self.confirmation_expires_in_seconds {
            if t == 0 || t > Self::MAX_CONFIRMATION_SECONDS {
                return Err(err(
                    "confirmation_expires_in_seconds",
                    format!("must be between 1 and {}", Self::MAX_CONFIRMATION_SECONDS),
                ));
            }
        }
        let properties = self.input_schema.properties();
        let required = self.input_schema.required();
        match &self.configuration {
            ToolConfig::Api(api) => {
                let placeholders = api
                    .url
                    .placeholders()
                    .map_err(|m| err("configuration.url", m))?;
                for p in placeholders {
                    if !required.contains(&p) {
                        return Err(err(
                            "configuration.url",
                            format!(
                                "placeholder `{{{p}}}` must be a required property of input_schema"
                            ),
                        ));
                    }
                }
                for (i, q) in api.query_params.iter().enumerate() {
                    if !properties.contains(&q.as_str()) {
                        return Err(err(
                            &format!("configuration.query_params[{i}]"),
                            format!("`{q}` is not a property of input_schema"),
                        ));
                    }
                }
                if api.headers.len() > ApiConfig::MAX_HEADERS {
                    return Err(err(
                        "configuration.headers",
                        format!("must have at most {} entries", ApiConfig::MAX_HEADERS),
                    ));
                }
                for (name, value) in &api.headers {
                    let field = format!("configuration.headers.{name}");
                    check_header_name(&field, name)?;
                    check_header_value(&field, value)?;
                }
                match &api.auth {
                    ApiAuth::Basic { username } => {
                        if username.contains(':') {
                            return Err(err("configuration.auth.username", "must not contain `:`"));
                        }
                        check_short("configuration.auth.username", username, 256)?;
                    }
                    ApiAuth::Header { name } => {
                        check_header_name("configuration.auth.name", name)?;
                        if api.headers.keys().any(|h| h.eq_ignore_ascii_case(name)) {
                            return Err(err("configuration.auth.name", "is also a static header"));
                        }
                    }
                    ApiAuth::ActorToken {
                        audience: Some(aud),
                    } => check_short("configuration.auth.audience", aud, 256)?,
                    ApiAuth::None | ApiAuth::Bearer | ApiAuth::ActorToken { audience: None } => {}
                }
                if let Some(max) = api.max_response_bytes {
                    if max == 0 || max > ApiConfig::MAX_RESPONSE_BYTES {
                        return Err(err(
                            "configuration.max_response_bytes",
                            format!("must be between 1 and {}", ApiConfig::MAX_RESPONSE_BYTES),
                        ));
                    }
                }
            }
            ToolConfig::CodeRunner(code) => {
                if code.code.trim().is_empty() || code.code.len() > CodeRunnerConfig::MAX_CODE_BYTES
                {
                    return Err(err(
                        "configuration.code",
                        format!("must be 1-{} bytes", CodeRunnerConfig::MAX_CODE_BYTES),
                    ));
                }
                code.limits.check("configuration.limits")?;
            }
            ToolConfig::Mcp(mcp) => {
                if mcp.slug.is_empty()
                    || mcp.slug.len() > 16
                    || !mcp
                        .slug
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
                {
                    return Err(err("configuration.slug", "must match [a-z0-9]{1,16}"));
                }
                match mcp.transport {
                    McpTransport::StreamableHttp => {
                        let Some(url) = &mcp.url else {
                            return Err(err(
                                "configuration.url",
                                "is required for streamable_http",
                            ));
                        };
                        check_http_url("configuration.url", url)?;
                        if !mcp.command.is_empty() {
                            return Err(err(
                                "configuration.command",
                                "is only for the stdio transport",
                            ));
                        }
                    }
                    McpTransport::Stdio => {
                        if mcp.command.is_empty() || mcp.command.len() > 64 {
                            return Err(err(
                                "configuration.command",
                                "must list the program and its arguments (1-64 items)",
                            ));
                        }
                        for (i, part) in mcp.command.iter().enumerate() {
                            check_short(&format!("configuration.command[{i}]"), part, 1024)?;
                        }
                        if mcp.url.is_some() {
                            return Err(err(
                                "configuration.url",
                                "is only for the streamable_http transport",
                            ));
                        }
                    }
                }
                if let McpAuth::OauthClientCredentials {
                    token_url,
                    client_id,
                    scopes,
                } = &mcp.auth
                {
                    check_http_url("configuration.auth.token_url", token_url)?;
                    check_short("configuration.auth.client_id", client_id, 256)?;
                    if scopes.len() > 32 {
                        return Err(err(
                            "configuration.auth.scopes",
                            "must have at most 32 items",
                        ));
                    }
                    for (i, s) in scopes.iter().enumerate() {
                        check_short(&format!("configuration.auth.scopes[{i}]"), s, 256)?;
                    }
                }
            }
            ToolConfig::PlatformEvent(event) => {
                if event.event_type.is_empty()
                    || event.event_type.len() > 128
                    || !event.event_type.bytes().all(|b| {
                        b.is_ascii_lowercase()
                            || b.is_ascii_digit()
                            || matches!(b, b'_' | b'.' | b'-')
                    })
                {
                    return Err(err(
                        "configuration.event_type",
                        "must match [a-z0-9_.-]{1,128}",
                    ));
                }
            }
        }
        Ok(())
    }
}

/// A stored tool. `sealed_secret` is its configuration's secret, sealed; never served.
#[derive(Debug, Clone, PartialEq)]
pub struct Tool {
    pub id: ToolId,
    pub spec: ToolSpec,
    pub sealed_secret: Option<Vec<u8>>,
    /// Incremented on every update; used for optimistic concurrency.
    pub version: i64,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// What an update does to the stored secret.
#[derive(Debug, Clone, PartialEq)]
pub enum SecretChange {
    Keep,
    Set(Vec<u8>),
    Clear,
}

/// A platform event to store, stream on its thread and queue for webhook delivery.
#[derive(Debug, Clone, PartialEq)]
pub struct NewPlatformEvent {
    pub id: PlatformEventId,
    pub event_type: String,
    pub tool_id: ToolId,
    pub payload: Value,
    /// The model's tool call that emits it: one event per call of a run, so a resumed run that
    /// repeats the call gets the stored event back.
    pub call_id: Option<String>,
}

/// A stored platform event.
#[derive(Debug, Clone, PartialEq)]
pub struct PlatformEvent {
    pub id: PlatformEventId,
    pub event_type: String,
    pub tool_id: ToolId,
    pub thread_id: ThreadId,
    pub run_id: RunId,
    pub payload: Value,
    pub created_at: Timestamp,
}

impl PlatformEvent {
    /// The event's JSON as streamed (`platform.event`) and delivered to webhooks.
    pub fn json(&self) -> Value {
        serde_json::json!({
            "id": self.id.as_str(),
            "type": self.event_type,
            "tool_id": self.tool_id.as_str(),
            "thread_id": self.thread_id.as_str(),
            "run_id": self.run_id.as_str(),
            "payload": self.payload,
            "created_at": self.created_at.to_rfc3339(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_are_model_safe_and_not_reserved() {
        assert!(ToolName::parse("name", "get_order-2").is_ok());
        for bad in [
            "",
            "has space",
            "dot.ted",
            &"x".repeat(65),
            "notify_user",
            "mcp_x_y",
            "tk_github_x",
        ] {
            assert_eq!(
                ToolName::parse("name", bad).unwrap_err().field,
                "name",
                "{bad}"
            );
        }
    }

    #[test]
    fn schemas_must_compile_and_describe_objects() {
        assert!(InputSchema::parse("s", json!({"type": "object"})).is_ok());
        assert!(InputSchema::parse("s", json!({"type": "string"})).is_err());
        assert!(InputSchema::parse("s", json!([])).is_err());
        let bad = InputSchema::parse(
            "s",
            json!({"type": "object", "properties": {"a": {"type": 12}}}),
        );
        assert!(bad.unwrap_err().message.contains("not a valid JSON Schema"));
        let external = InputSchema::parse(
            "s",
            json!({"type": "object", "properties": {"a": {"$ref": "file:///etc/passwd"}}}),
        );
        assert!(external.is_err());
    }

    #[test]
    fn arguments_are_checked_against_the_schema() {
        let s = InputSchema::parse(
            "s",
            json!({"type": "object", "properties": {"n": {"type": "integer", "minimum": 1}}, "required": ["n"], "additionalProperties": false}),
        )
        .unwrap();
        assert!(s.validate(&json!({"n": 3})).is_ok());
        assert!(s.validate(&json!({"n": 0})).is_err());
        assert!(s.validate(&json!({})).unwrap_err().contains('n'));
        assert!(s.validate(&json!({"n": 1, "x": 2})).is_err());
    }

    #[test]
    fn url_templates_fill_escaped_values_in_path_and_query_only() {
        let t = UrlTemplate::parse("url", "https://api.example.com/orders/{id}?v={v}").unwrap();
        assert_eq!(t.placeholders().unwrap(), vec!["id", "v"]);
        let args = json!({"id": "../a b/?#", "v": 2})
            .as_object()
            .unwrap()
            .clone();
        assert_eq!(
            t.fill(&args).unwrap(),
            "https://api.example.com/orders/..%2Fa%20b%2F%3F%23?v=2"
        );
        assert!(t.fill(&serde_json::Map::new()).is_err());
        for bad in [
            "ftp://x/",
            "https://{host}/x",
            "https://u:p@x/",
            "https://x/{a",
            "https://x/a}",
            "https://x/{a.b}",
            "https://x/#f",
            "https://",
        ] {
            assert!(UrlTemplate::parse("url", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn secrets_seal_bound_to_their_tool() {
        let key = SecretsKey::generate();
        let a = ToolId::generate();
        let secret = ToolSecret::parse("t", "s3cr3t-value").unwrap();
        let sealed = secret.seal(&key, &a);
        assert!(!sealed.windows(12).any(|w| w == b"s3cr3t-value"));
        assert_eq!(ToolSecret::open(&key, &a, &sealed).unwrap(), secret);
        assert!(ToolSecret::open(&key, &ToolId::generate(), &sealed).is_err());
        assert!(ToolSecret::open(&SecretsKey::generate(), &a, &sealed).is_err());
        assert_eq!(format!("{secret:?}"), "ToolSecret(<redacted>)");
    }

    fn api_spec(url: &str, schema: Value) -> ToolSpec {
        ToolSpec {
            name: ToolName::parse("name", "t").unwrap(),
            description: String::new(),
            input_schema: InputSchema::parse("input_schema", schema).unwrap(),
            requires_confirmation: false,
            confirmation_expires_in_seconds: None,
            timeout_seconds: None,
            configuration: ToolConfig::Api(ApiConfig {
                url: UrlTemplate::parse("url", url).unwrap(),
                method: HttpMethod::Get,
                headers: BTreeMap::new(),
                query_params: vec![],
                auth: ApiAuth::None,
                max_response_bytes: None,
            }),
        }
    }

    #[test]
    fn url_placeholders_must_be_required_arguments() {
        let ok = api_spec(
            "https://x/{id}",
            json!({"type": "object", "properties": {"id": {"type": "string"}}, "required": ["id"]}),
        );
        assert!(ok.check().is_ok());
        let optional = api_spec(
            "https://x/{id}",
            json!({"type": "object", "properties": {"id": {"type": "string"}}}),
        );
        assert_eq!(optional.check().unwrap_err().field, "configuration.url");
    }

    #[test]
    fn configurations_round_trip_with_their_type_tag() {
        let raw = json!({"type": "PlatformEvent", "event_type": "order.refund"});
        let c: ToolConfig = serde_json::from_value(raw.clone()).unwrap();
        assert_eq!(serde_json::to_value(&c).unwrap(), raw);
        let raw = json!({"type": "Api", "url": "https://x/", "method": "POST", "auth": {"type": "basic", "username": "u"}});
        let c: ToolConfig = serde_json::from_value(raw).unwrap();
        assert_eq!(c.secret_field(), Some("configuration.auth.password"));
    }
}
