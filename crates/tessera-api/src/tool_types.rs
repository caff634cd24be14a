//! Tools (`/ai/tools`): records agents attach through `tool_ids`, and the catalogue of
//! internal tools.
//!
//! Secrets in a configuration (`auth.token`, `auth.password`, `auth.value`,
//! `auth.client_secret`) are write-only: a request sends the plain value, every response shows
//! `{"set": true}` instead. An update that omits the secret (or sends `{"set": true}`) keeps the
//! stored one.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::types::double_option;

/// A secret field: the plain value in requests, `{"set": true}` in responses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum SecretValue {
    /// The secret itself (requests only; never returned).
    Plain(String),
    /// Whether a secret is stored.
    Status(SecretStatus),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SecretStatus {
    pub set: bool,
}

impl SecretValue {
    pub fn plain(value: impl Into<String>) -> Self {
        Self::Plain(value.into())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum HttpMethod {
    Get,
    Post,
    Put,
    Patch,
    Delete,
}

/// How an `Api` tool authenticates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ApiToolAuth {
    None {},
    /// `Authorization: Bearer <token>`.
    Bearer {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token: Option<SecretValue>,
    },
    /// `Authorization: Basic …`.
    Basic {
        username: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        password: Option<SecretValue>,
    },
    /// `<name>: <value>`.
    Header {
        name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        value: Option<SecretValue>,
    },
    /// `Authorization: Bearer <token>` where the token is a short-lived EdDSA JWT signed by
    /// Tessera naming the actor and thread (`sub` = actor id), verifiable with
    /// `/.well-known/jwks.json`. `audience` defaults to the URL's origin.
    ActorToken {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        audience: Option<String>,
    },
}

/// `configuration` of an `Api` tool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiToolConfiguration {
    /// `http(s)://host/path/{param}?q={param}`: placeholders in the path and query are filled
    /// from the arguments (percent-encoded); each must be a required property of `input_schema`.
    #[schema(example = "https://api.example.com/orders/{order_id}")]
    pub url: String,
    pub method: HttpMethod,
    /// Static, non-secret headers (credentials go in `auth`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<BTreeMap<String, String>>,
    /// Arguments sent as query parameters. With `GET`/`DELETE`, every argument the URL does not
    /// use goes to the query; otherwise the remaining arguments are the JSON body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query_params: Option<Vec<String>>,
    /// Default `{"type": "none"}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<ApiToolAuth>,
    /// Largest response body read, 1-10 485 760 bytes (default: the server's
    /// `tools.max_response_bytes`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_response_bytes: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CodeLanguage {
    Python,
    Javascript,
    Bash,
}

/// Sandbox limits of a `CodeRunner` tool; omitted fields take the sandbox's defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CodeRunnerLimits {
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

/// `configuration` of a `CodeRunner` tool: fixed code run in the sandbox with the model's JSON
/// input on stdin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CodeRunnerToolConfiguration {
    pub language: CodeLanguage,
    /// At most 256 KiB.
    pub code: String,
    /// Network access inside the sandbox (default `false`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<CodeRunnerLimits>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum McpTransport {
    StreamableHttp,
    Stdio,
}

/// How an MCP server is authenticated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum McpToolAuth {
    None {},
    Bearer {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token: Option<SecretValue>,
    },
    OauthClientCredentials {
        token_url: String,
        client_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client_secret: Option<SecretValue>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        scopes: Option<Vec<String>>,
    },
}

/// `configuration` of an `Mcp` tool: a server whose tools surface as `mcp_{slug}_{tool}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct McpToolConfiguration {
    /// `[a-z0-9]{1,16}`.
    pub slug: String,
    pub transport: McpTransport,
    /// `streamable_http`: the server's URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// `stdio`: the program and its arguments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// Default `{"type": "none"}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<McpToolAuth>,
}

/// `configuration` of a `PlatformEvent` tool: a call emits an event of `event_type` whose
/// payload is the call's arguments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlatformEventToolConfiguration {
    /// `[a-z0-9_.-]{1,128}`.
    #[schema(example = "order.refund_requested")]
    pub event_type: String,
}

/// What a tool does; `type` selects the variant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type")]
pub enum ToolConfiguration {
    Api(ApiToolConfiguration),
    CodeRunner(CodeRunnerToolConfiguration),
    Mcp(McpToolConfiguration),
    PlatformEvent(PlatformEventToolConfiguration),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Tool {
    pub id: String,
    pub name: String,
    pub description: String,
    #[schema(value_type = Object)]
    pub input_schema: serde_json::Value,
    pub requires_confirmation: bool,
    #[serde(default)]
    pub confirmation_expires_in_seconds: Option<u32>,
    #[serde(default)]
    pub timeout_seconds: Option<u32>,
    pub configuration: ToolConfiguration,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateToolRequest {
    /// `^[a-zA-Z0-9_-]{1,64}$`; not an internal tool's name, not starting with `mcp_`. Unique
    /// among the tools of each agent that attaches it.
    #[schema(example = "get_order")]
    pub name: String,
    /// At most 4000 characters; the model reads it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// A JSON Schema with `"type": "object"` (default `{"type": "object"}`); the model's
    /// arguments are validated against it before the tool runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub input_schema: Option<serde_json::Value>,
    /// Every call waits for a person's confirmation (default `false`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requires_confirmation: Option<bool>,
    /// How long a confirmation stays open, 1-86 400 s (default: the server's
    /// `sessions.action_expiry_seconds`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirmation_expires_in_seconds: Option<u32>,
    /// Longest a call may take, 1-600 s (default: the server's `runtime.tool_timeout_seconds`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u32>,
    pub configuration: ToolConfiguration,
}

/// Changes to a tool: absent fields stay; `configuration` replaces the whole configuration,
/// except that omitted secrets are kept when the auth type stays the same.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateToolRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub input_schema: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requires_confirmation: Option<bool>,
    #[serde(
        default,
        deserialize_with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<u32>, nullable)]
    pub confirmation_expires_in_seconds: Option<Option<u32>>,
    #[serde(
        default,
        deserialize_with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<u32>, nullable)]
    pub timeout_seconds: Option<Option<u32>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub configuration: Option<ToolConfiguration>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListToolsParams {
    /// Page size, 1-100 (default 50).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// Return items that come before this id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<String>,
    /// Return items that come after this id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
}

/// A page of tools.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ToolList {
    pub data: Vec<Tool>,
    /// More items exist beyond this page in the direction of travel.
    pub has_more: bool,
    /// Id of the first item: pass as `before` for the previous page.
    #[serde(default)]
    pub first_id: Option<String>,
    /// Id of the last item: pass as `after` for the next page.
    #[serde(default)]
    pub last_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DeletedTool {
    pub id: String,
    pub deleted: bool,
}

/// An internal tool every agent has.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct InternalTool {
    pub name: String,
    pub description: String,
    #[schema(value_type = Object)]
    pub input_schema: serde_json::Value,
}

/// The catalogue of internal tools this server offers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct InternalToolList {
    pub data: Vec<InternalTool>,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn configurations_parse_by_type_and_refuse_unknown_fields() {
        let c: ToolConfiguration = serde_json::from_str(
            r#"{"type":"Api","url":"https://x/","method":"GET","auth":{"type":"bearer","token":"t"}}"#,
        )
        .unwrap();
        let ToolConfiguration::Api(api) = c else {
            panic!("not Api")
        };
        assert_eq!(
            api.auth,
            Some(ApiToolAuth::Bearer {
                token: Some(SecretValue::plain("t"))
            })
        );
        let kept: ApiToolAuth =
            serde_json::from_str(r#"{"type":"bearer","token":{"set":true}}"#).unwrap();
        assert_eq!(
            kept,
            ApiToolAuth::Bearer {
                token: Some(SecretValue::Status(SecretStatus { set: true }))
            }
        );
        assert!(serde_json::from_str::<ToolConfiguration>(
            r#"{"type":"Api","url":"https://x/","method":"GET","extra":1}"#
        )
        .is_err());
        assert!(serde_json::from_str::<ApiToolAuth>(r#"{"type":"none","token":"x"}"#).is_err());
        assert!(serde_json::from_str::<ToolConfiguration>(r#"{"type":"Virtual"}"#).is_err());
    }
}
