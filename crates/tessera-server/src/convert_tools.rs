//! Conversions at the API edge for tools: wire configurations into validated domain values and
//! a secret to seal, stored tools into wire responses that only say whether a secret is set.

use tessera_api as api;
use tessera_domain::token::SecretsKey;
use tessera_domain::tool::{
    ApiAuth, ApiConfig, CodeLanguage, CodeLimits, CodeRunnerConfig, HttpMethod, InputSchema,
    McpAuth, McpConfig, McpTransport, PlatformEventConfig, SecretChange, Tool, ToolConfig,
    ToolName, ToolSecret, ToolSpec, UrlTemplate,
};
use tessera_domain::{ToolId, ValidationError};

/// The secret a request carried for its configuration.
enum SecretInput {
    /// A new value.
    Plain(ToolSecret),
    /// Omitted or `{"set": true}`: keep the stored one (updates only).
    Keep,
}

fn secret_input(
    field: &str,
    raw: Option<api::SecretValue>,
) -> Result<SecretInput, ValidationError> {
    match raw {
        Some(api::SecretValue::Plain(v)) => Ok(SecretInput::Plain(ToolSecret::parse(field, v)?)),
        Some(api::SecretValue::Status(api::SecretStatus { set: true })) | None => {
            Ok(SecretInput::Keep)
        }
        Some(api::SecretValue::Status(api::SecretStatus { set: false })) => {
            Err(ValidationError::new(
                field,
                "send the secret itself, or omit it to keep the stored one",
            ))
        }
    }
}

fn method(m: api::HttpMethod) -> HttpMethod {
    match m {
        api::HttpMethod::Get => HttpMethod::Get,
        api::HttpMethod::Post => HttpMethod::Post,
        api::HttpMethod::Put => HttpMethod::Put,
        api::HttpMethod::Patch => HttpMethod::Patch,
        api::HttpMethod::Delete => HttpMethod::Delete,
    }
}

/// A wire configuration as a domain configuration and the secret it carried.
fn configuration(
    c: api::ToolConfiguration,
) -> Result<(ToolConfig, Option<SecretInput>), ValidationError> {
    Ok(match c {
        api::ToolConfiguration::Api(a) => {
            let (auth, secret) = match a.auth.unwrap_or(api::ApiToolAuth::None {}) {
                api::ApiToolAuth::None {} => (ApiAuth::None, None),
                api::ApiToolAuth::Bearer { token } => (
                    ApiAuth::Bearer,
                    Some(secret_input("configuration.auth.token", token)?),
                ),
                api::ApiToolAuth::Basic { username, password } => (
                    ApiAuth::Basic { username },
                    Some(secret_input("configuration.auth.password", password)?),
                ),
                api::ApiToolAuth::Header { name, value } => (
                    ApiAuth::Header { name },
                    Some(secret_input("configuration.auth.value", value)?),
                ),
                api::ApiToolAuth::ActorToken { audience } => {
                    (ApiAuth::ActorToken { audience }, None)
                }
            };
            (
                ToolConfig::Api(ApiConfig {
                    url: UrlTemplate::parse("configuration.url", a.url)?,
                    method: method(a.method),
                    headers: a.headers.unwrap_or_default(),
                    query_params: a.query_params.unwrap_or_default(),
                    auth,
                    max_response_bytes: a.max_response_bytes,
                }),
                secret,
            )
        }
        api::ToolConfiguration::CodeRunner(c) => {
            let limits = c.limits.unwrap_or_default();
            (
                ToolConfig::CodeRunner(CodeRunnerConfig {
                    language: match c.language {
                        api::CodeLanguage::Python => CodeLanguage::Python,
                        api::CodeLanguage::Javascript => CodeLanguage::Javascript,
                        api::CodeLanguage::Bash => CodeLanguage::Bash,
                    },
                    code: c.code,
                    network: c.network.unwrap_or(false),
                    limits: CodeLimits {
                        cpu_seconds: limits.cpu_seconds,
                        memory_mb: limits.memory_mb,
                        max_processes: limits.max_processes,
                        max_output_bytes: limits.max_output_bytes,
                        wall_seconds: limits.wall_seconds,
                    },
                }),
                None,
            )
        }
        api::ToolConfiguration::Mcp(m) => {
            let (auth, secret) = match m.auth.unwrap_or(api::McpToolAuth::None {}) {
                api::McpToolAuth::None {} => (McpAuth::None, None),
                api::McpToolAuth::Bearer { token } => (
                    McpAuth::Bearer,
                    Some(secret_input("configuration.auth.token", token)?),
                ),
                api::McpToolAuth::OauthClientCredentials {
                    token_url,
                    client_id,
                    client_secret,
                    scopes,
                } => (
                    McpAuth::OauthClientCredentials {
                        token_url,
                        client_id,
                        scopes: scopes.unwrap_or_default(),
                    },
                    Some(secret_input(
                        "configuration.auth.client_secret",
                        client_secret,
                    )?),
                ),
            };
            (
                ToolConfig::Mcp(McpConfig {
                    slug: m.slug,
                    transport: match m.transport {
                        api::McpTransport::StreamableHttp => McpTransport::StreamableHttp,
                        api::McpTransport::Stdio => McpTransport::Stdio,
                    },
                    url: m.url,
                    command: m.command.unwrap_or_default(),
                    auth,
                }),
                secret,
            )
        }
        api::ToolConfiguration::PlatformEvent(p) => (
            ToolConfig::PlatformEvent(PlatformEventConfig {
                event_type: p.event_type,
            }),
            None,
        ),
    })
}

/// A create request as a spec and the sealed secret to store with it.
pub(crate) fn new_tool(
    id: &ToolId,
    req: api::CreateToolRequest,
    key: &SecretsKey,
) -> Result<(ToolSpec, Option<Vec<u8>>), ValidationError> {
    let (configuration, secret) = configuration(req.configuration)?;
    let spec = ToolSpec {
        name: ToolName::parse("name", req.name)?,
        description: req.description.unwrap_or_default(),
        input_schema: match req.input_schema {
            Some(v) => InputSchema::parse("input_schema", v)?,
            None => InputSchema::any_object(),
        },
        requires_confirmation: req.requires_confirmation.unwrap_or(false),
        confirmation_expires_in_seconds: req.confirmation_expires_in_seconds,
        timeout_seconds: req.timeout_seconds,
        configuration,
    };
    spec.check()?;
    let sealed = match (spec.configuration.secret_field(), secret) {
        (Some(_), Some(SecretInput::Plain(s))) => Some(s.seal(key, id)),
        (Some(field), _) => {
            return Err(ValidationError::new(
                field,
                "is required for this auth type",
            ));
        }
        (None, _) => None,
    };
    Ok((spec, sealed))
}

/// An update request applied to a stored tool: the new spec and what happens to its secret.
pub(crate) fn patch_tool(
    current: &Tool,
    req: api::UpdateToolRequest,
    key: &SecretsKey,
) -> Result<(ToolSpec, SecretChange), ValidationError> {
    let mut spec = current.spec.clone();
    if let Some(name) = req.name {
        spec.name = ToolName::parse("name", name)?;
    }
    if let Some(d) = req.description {
        spec.description = d;
    }
    if let Some(s) = req.input_schema {
        spec.input_schema = InputSchema::parse("input_schema", s)?;
    }
    if let Some(r) = req.requires_confirmation {
        spec.requires_confirmation = r;
    }
    if let Some(e) = req.confirmation_expires_in_seconds {
        spec.confirmation_expires_in_seconds = e;
    }
    if let Some(t) = req.timeout_seconds {
        spec.timeout_seconds = t;
    }
    let mut change = SecretChange::Keep;
    if let Some(c) = req.configuration {
        let (configuration, secret) = configuration(c)?;
        let old_field = current.spec.configuration.secret_field();
        let new_field = configuration.secret_field();
        change = match (new_field, secret) {
            (Some(_), Some(SecretInput::Plain(s))) => SecretChange::Set(s.seal(key, &current.id)),
            // Same kind of secret as stored: keep it.
            (Some(field), _) if old_field == Some(field) && current.sealed_secret.is_some() => {
                SecretChange::Keep
            }
            (Some(field), _) => {
                return Err(ValidationError::new(
                    field,
                    "is required for this auth type",
                ));
            }
            (None, _) if current.sealed_secret.is_some() => SecretChange::Clear,
            (None, _) => SecretChange::Keep,
        };
        spec.configuration = configuration;
    }
    spec.check()?;
    Ok((spec, change))
}

fn secret_status(set: bool) -> Option<api::SecretValue> {
    Some(api::SecretValue::Status(api::SecretStatus { set }))
}

fn wire_method(m: HttpMethod) -> api::HttpMethod {
    match m {
        HttpMethod::Get => api::HttpMethod::Get,
        HttpMethod::Post => api::HttpMethod::Post,
        HttpMethod::Put => api::HttpMethod::Put,
        HttpMethod::Patch => api::HttpMethod::Patch,
        HttpMethod::Delete => api::HttpMethod::Delete,
    }
}

/// A stored tool as served: secrets appear only as `{"set": true|false}`.
pub(crate) fn tool(t: Tool) -> api::Tool {
    let set = t.sealed_secret.is_some();
    let s = t.spec;
    let configuration = match s.configuration {
        ToolConfig::Api(a) => api::ToolConfiguration::Api(api::ApiToolConfiguration {
            url: a.url.as_str().to_owned(),
            method: wire_method(a.method),
            headers: (!a.headers.is_empty()).then_some(a.headers),
            query_params: (!a.query_params.is_empty()).then_some(a.query_params),
            auth: Some(match a.auth {
                ApiAuth::None => api::ApiToolAuth::None {},
                ApiAuth::Bearer => api::ApiToolAuth::Bearer {
                    token: secret_status(set),
                },
                ApiAuth::Basic { username } => api::ApiToolAuth::Basic {
                    username,
                    password: secret_status(set),
                },
                ApiAuth::Header { name } => api::ApiToolAuth::Header {
                    name,
                    value: secret_status(set),
                },
                ApiAuth::ActorToken { audience } => api::ApiToolAuth::ActorToken { audience },
            }),
            max_response_bytes: a.max_response_bytes,
        }),
        ToolConfig::CodeRunner(c) => {
            api::ToolConfiguration::CodeRunner(api::CodeRunnerToolConfiguration {
                language: match c.language {
                    CodeLanguage::Python => api::CodeLanguage::Python,
                    CodeLanguage::Javascript => api::CodeLanguage::Javascript,
                    CodeLanguage::Bash => api::CodeLanguage::Bash,
                },
                code: c.code,
                network: Some(c.network),
                limits: Some(api::CodeRunnerLimits {
                    cpu_seconds: c.limits.cpu_seconds,
                    memory_mb: c.limits.memory_mb,
                    max_processes: c.limits.max_processes,
                    max_output_bytes: c.limits.max_output_bytes,
                    wall_seconds: c.limits.wall_seconds,
                }),
            })
        }
        ToolConfig::Mcp(m) => api::ToolConfiguration::Mcp(api::McpToolConfiguration {
            slug: m.slug,
            transport: match m.transport {
                McpTransport::StreamableHttp => api::McpTransport::StreamableHttp,
                McpTransport::Stdio => api::McpTransport::Stdio,
            },
            url: m.url,
            command: (!m.command.is_empty()).then_some(m.command),
            auth: Some(match m.auth {
                McpAuth::None => api::McpToolAuth::None {},
                McpAuth::Bearer => api::McpToolAuth::Bearer {
                    token: secret_status(set),
                },
                McpAuth::OauthClientCredentials {
                    token_url,
                    client_id,
                    scopes,
                } => api::McpToolAuth::OauthClientCredentials {
                    token_url,
                    client_id,
                    client_secret: secret_status(set),
                    scopes: (!scopes.is_empty()).then_some(scopes),
                },
            }),
        }),
        ToolConfig::PlatformEvent(p) => {
            api::ToolConfiguration::PlatformEvent(api::PlatformEventToolConfiguration {
                event_type: p.event_type,
            })
        }
    };
    api::Tool {
        id: t.id.into_string(),
        name: s.name.as_str().to_owned(),
        description: s.description,
        input_schema: s.input_schema.as_value().clone(),
        requires_confirmation: s.requires_confirmation,
        confirmation_expires_in_seconds: s.confirmation_expires_in_seconds,
        timeout_seconds: s.timeout_seconds,
        configuration,
        created_at: t.created_at.to_rfc3339(),
        updated_at: t.updated_at.to_rfc3339(),
    }
}
