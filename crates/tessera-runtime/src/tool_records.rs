//! The tools an agent attaches (`tool_ids`): offered to its model with their input schemas,
//! their arguments validated before anything runs (an invalid call goes back to the model as
//! the tool's error), and dispatched by variant — `Api` to [`crate::api_tool`],
//! `PlatformEvent` to the store, `CodeRunner` to the sandbox ([`crate::code_tools`]). An `Mcp`
//! record stands for a server: its tools are discovered when a run starts ([`crate::mcp`],
//! cached per record) and offered as `mcp_{slug}_{tool}`.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::json;
use tessera_domain::thread::ToolCall;
use tessera_domain::token::SecretsKey;
use tessera_domain::tool::{NewPlatformEvent, PlatformEventConfig, Tool, ToolConfig, ToolSecret};
use tessera_domain::{ActorId, DeploymentId, PlatformEventId, RunId, ThreadId, ToolId};

use crate::provider::ToolSpec;
use crate::tool_net::NetPolicy;
use crate::tools::{ToolContext, ToolExecutor, ToolOutput};

/// What an actor token names. The server signs it with its token signing key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActorTokenRequest {
    pub deployment_id: DeploymentId,
    pub actor_id: ActorId,
    pub subject_type: String,
    pub external_key: String,
    pub thread_id: ThreadId,
    pub run_id: RunId,
    pub tool_id: ToolId,
    pub audience: String,
}

/// Keys tools need that only the server holds: the secrets key that opens configuration
/// secrets, and the signing key of actor tokens.
#[async_trait]
pub trait ToolCredentials: Send + Sync {
    async fn secrets_key(&self) -> Result<SecretsKey, String>;

    /// A short-lived signed token naming the actor and thread (`actor_token` auth).
    async fn actor_token(&self, request: &ActorTokenRequest) -> Result<String, String>;
}

/// Settings and keys for executing tool records, shared by a node's runs.
pub struct ToolRecordsConfig {
    /// Which otherwise refused targets `Api` tools may reach.
    pub net: NetPolicy,
    /// Largest response body an `Api` tool reads unless it sets its own cap.
    pub max_response_bytes: u64,
    /// Redirects an `Api` call follows (each hop checked like the first).
    pub max_redirects: usize,
    pub credentials: Arc<dyn ToolCredentials>,
    /// Runs `CodeRunner` tools (the sandbox and workspace of `execute_code`); `None` refuses
    /// them with a clear error.
    pub code: Option<Arc<crate::code_tools::CodeTools>>,
    /// What `Mcp` tools may reach (`[mcp]`).
    pub mcp: crate::mcp::McpPolicy,
    /// One MCP client per `Mcp` record (and version), shared by the node's runs so that
    /// sessions and the tool list cache outlive a run.
    pub mcp_clients: McpClients,
    /// The operator's toolkit provider (`[toolkits]`); `None`: no toolkit tools are offered.
    pub toolkits: Option<Arc<crate::toolkits::Toolkits>>,
    /// A call's timeout when its record sets none (`runtime.tool_timeout_seconds`).
    pub tool_timeout: Duration,
}

/// How much longer than its tool's timeout an MCP client waits by itself (see `mcp_server`).
const MCP_TIMEOUT_MARGIN: Duration = Duration::from_secs(1);

/// The node's MCP clients, by tool record.
#[derive(Default)]
pub struct McpClients {
    clients:
        tokio::sync::Mutex<std::collections::HashMap<ToolId, (i64, Arc<crate::mcp::McpClient>)>>,
}

/// An MCP server's tool, offered to a run's model.
struct McpOffer {
    /// The `Mcp` record it comes from (its confirmation and timeout settings apply).
    record: usize,
    tool: crate::mcp::McpTool,
    client: Arc<crate::mcp::McpClient>,
}

/// The tool records of one run's agent.
pub struct RecordTools {
    tools: Vec<Tool>,
    config: Arc<ToolRecordsConfig>,
    mcp: Vec<McpOffer>,
}

impl RecordTools {
    pub fn new(tools: Vec<Tool>, config: Arc<ToolRecordsConfig>) -> Self {
        Self {
            tools,
            config,
            mcp: Vec::new(),
        }
    }

    /// Like [`RecordTools::new`], with the tools of the `Mcp` records' servers discovered (from
    /// each client's cache while it is fresh). A server that cannot be reached contributes no
    /// tools to this run (logged); the run goes on with the others.
    pub async fn load(tools: Vec<Tool>, config: Arc<ToolRecordsConfig>) -> Self {
        let mut this = Self::new(tools, config);
        let mut seen = std::collections::HashSet::new();
        for (index, tool) in this.tools.iter().enumerate() {
            let ToolConfig::Mcp(mcp) = &tool.spec.configuration else {
                continue;
            };
            let listed = match this.mcp_client(tool, mcp).await {
                Ok(client) => client
                    .tools()
                    .await
                    .map(|tools| (client, tools))
                    .map_err(|e| e.to_string()),
                Err(err) => Err(err),
            };
            match listed {
                Ok((client, tools)) => {
                    for offered in tools {
                        // Two records of one agent with the same slug: the first one's tool wins.
                        if seen.insert(offered.exposed_name.clone()) {
                            this.mcp.push(McpOffer {
                                record: index,
                                tool: offered,
                                client: client.clone(),
                            });
                        }
                    }
                }
                Err(err) => tracing::warn!(
                    tool_id = %tool.id,
                    error = %err,
                    "the MCP server of a tool could not be listed; its tools are not offered"
                ),
            }
        }
        this
    }

    /// The record's client: the node's, or a new one when the record is new or changed.
    async fn mcp_client(
        &self,
        tool: &Tool,
        mcp: &tessera_domain::tool::McpConfig,
    ) -> Result<Arc<crate::mcp::McpClient>, String> {
        let mut clients = self.config.mcp_clients.clients.lock().await;
        if let Some((version, client)) = clients.get(&tool.id) {
            if *version == tool.version {
                return Ok(client.clone());
            }
        }
        let client = Arc::new(
            crate::mcp::McpClient::new(self.mcp_server(tool, mcp).await?, self.config.mcp)
                .map_err(|e| e.to_string())?,
        );
        if let Some((_, old)) = clients.insert(tool.id.clone(), (tool.version, client.clone())) {
            old.close().await;
        }
        Ok(client)
    }

    /// The MCP client's settings from the record (and its opened secret).
    async fn mcp_server(
        &self,
        tool: &Tool,
        mcp: &tessera_domain::tool::McpConfig,
    ) -> Result<crate::mcp::McpServerConfig, String> {
        use tessera_domain::tool::{McpAuth, McpTransport};
        let transport = match mcp.transport {
            McpTransport::StreamableHttp => crate::mcp::McpTransport::StreamableHttp {
                url: mcp.url.clone().ok_or("the Mcp tool has no url")?,
            },
            McpTransport::Stdio => {
                let (command, args) = mcp
                    .command
                    .split_first()
                    .ok_or("the Mcp tool has no command")?;
                crate::mcp::McpTransport::Stdio {
                    command: command.into(),
                    args: args.to_vec(),
                    env: Default::default(),
                }
            }
        };
        let auth = match &mcp.auth {
            McpAuth::None => crate::mcp::McpAuth::None,
            McpAuth::Bearer => crate::mcp::McpAuth::Bearer {
                token: self.secret(tool).await?.expose().to_owned(),
            },
            McpAuth::OauthClientCredentials {
                token_url,
                client_id,
                scopes,
            } => crate::mcp::McpAuth::OauthClientCredentials {
                token_url: token_url.clone(),
                client_id: client_id.clone(),
                client_secret: self.secret(tool).await?.expose().to_owned(),
                scope: (!scopes.is_empty()).then(|| scopes.join(" ")),
                audience: None,
            },
        };
        let mut server = crate::mcp::McpServerConfig::new(mcp.slug.clone(), transport);
        server.auth = auth;
        // The run's timer bounds a call (and ends the run past it, `tool_timeout`); the client's
        // own limit, a second later, only bounds connecting and listing, and never races it.
        let timeout = tool
            .spec
            .timeout_seconds
            .map_or(self.config.tool_timeout, |s| {
                Duration::from_secs(u64::from(s))
            });
        server.call_timeout = timeout + MCP_TIMEOUT_MARGIN;
        Ok(server)
    }

    fn find(&self, name: &str) -> Option<&Tool> {
        self.tools
            .iter()
            .find(|t| {
                t.spec.name.as_str() == name && !matches!(t.spec.configuration, ToolConfig::Mcp(_))
            })
            .or_else(|| self.offer(name).map(|o| &self.tools[o.record]))
    }

    fn offer(&self, name: &str) -> Option<&McpOffer> {
        self.mcp.iter().find(|o| o.tool.exposed_name == name)
    }

    /// The configuration secret of `tool`, opened.
    pub(crate) async fn secret(&self, tool: &Tool) -> Result<ToolSecret, String> {
        let sealed = tool
            .sealed_secret
            .as_deref()
            .ok_or_else(|| format!("the tool `{}` has no stored secret", tool.spec.name))?;
        let key = self.config.credentials.secrets_key().await?;
        ToolSecret::open(&key, &tool.id, sealed).map_err(|e| {
            tracing::error!(tool_id = %tool.id, "a tool secret does not open with the secrets key");
            format!("the tool's secret cannot be decrypted on this server: {e}")
        })
    }
}

#[async_trait]
impl ToolExecutor for RecordTools {
    fn specs(&self) -> Vec<ToolSpec> {
        let records = self
            .tools
            .iter()
            .filter(|t| !matches!(t.spec.configuration, ToolConfig::Mcp(_)))
            .map(|t| ToolSpec {
                name: t.spec.name.as_str().to_owned(),
                description: t.spec.description.clone(),
                parameters: t.spec.input_schema.as_value().clone(),
            });
        let servers = self.mcp.iter().map(|o| ToolSpec {
            name: o.tool.exposed_name.clone(),
            description: o.tool.description.clone(),
            parameters: o.tool.input_schema.clone(),
        });
        records.chain(servers).collect()
    }

    fn requiring_confirmation(&self) -> Vec<String> {
        let records = self
            .tools
            .iter()
            .filter(|t| {
                t.spec.requires_confirmation && !matches!(t.spec.configuration, ToolConfig::Mcp(_))
            })
            .map(|t| t.spec.name.as_str().to_owned());
        let servers = self
            .mcp
            .iter()
            .filter(|o| self.tools[o.record].spec.requires_confirmation)
            .map(|o| o.tool.exposed_name.clone());
        records.chain(servers).collect()
    }

    fn timeout(&self, tool: &str) -> Option<Duration> {
        self.find(tool)
            .and_then(|t| t.spec.timeout_seconds)
            .map(|s| Duration::from_secs(u64::from(s)))
    }

    fn confirmation_expiry(&self, tool: &str) -> Option<u32> {
        self.find(tool)
            .and_then(|t| t.spec.confirmation_expires_in_seconds)
    }

    async fn execute(&self, ctx: &ToolContext<'_>, call: &ToolCall) -> ToolOutput {
        if let Some(offer) = self.offer(&call.name) {
            // The MCP server validates its own tools' arguments.
            return match offer.client.call(&call.name, call.arguments.clone()).await {
                Ok(Ok(text)) => ToolOutput {
                    result: Ok(text),
                    events: Vec::new(),
                },
                Ok(Err(text)) => ToolOutput::error(text),
                Err(err) => ToolOutput::error(format!("the MCP server failed: {err}")),
            };
        }
        let Some(tool) = self.find(&call.name) else {
            return ToolOutput::error(format!("unknown tool `{}`", call.name));
        };
        if let Err(problem) = tool.spec.input_schema.validate(&call.arguments) {
            return ToolOutput::error(format!(
                "invalid arguments for `{}` (the tool did not run): {problem}",
                call.name
            ));
        }
        match &tool.spec.configuration {
            ToolConfig::Api(api) => {
                crate::api_tool::call(self, &self.config, ctx, tool, api, &call.arguments).await
            }
            ToolConfig::PlatformEvent(event) => emit(ctx, tool, event, call).await,
            ToolConfig::CodeRunner(runner) => match &self.config.code {
                Some(code) => run_code(code, ctx, runner, &call.arguments).await,
                None => ToolOutput::error("CodeRunner tools are not enabled on this server"),
            },
            ToolConfig::Mcp(_) => ToolOutput::error(format!(
                "`{}` is an MCP server; call its tools (`mcp_…`) instead",
                call.name
            )),
        }
    }
}

/// A `CodeRunner` call: the tool's fixed code with the model's JSON arguments on stdin, in the
/// sandbox with the task workspace mounted, under the tool's limits (capped at the operator's).
async fn run_code(
    code: &crate::code_tools::CodeTools,
    ctx: &ToolContext<'_>,
    runner: &tessera_domain::tool::CodeRunnerConfig,
    args: &serde_json::Value,
) -> ToolOutput {
    use tessera_domain::tool::CodeLanguage;
    let language = match runner.language {
        CodeLanguage::Python => crate::sandbox::Language::Python,
        CodeLanguage::Javascript => crate::sandbox::Language::Javascript,
        CodeLanguage::Bash => crate::sandbox::Language::Bash,
    };
    let stdin = args.to_string().into_bytes();
    let limits = code.limits_for(&runner.limits);
    match code
        .run_in_workspace(
            ctx,
            language,
            runner.code.clone(),
            stdin,
            runner.network,
            limits,
        )
        .await
    {
        Ok(value) => ToolOutput {
            result: Ok(value.to_string()),
            events: Vec::new(),
        },
        Err(message) => ToolOutput::error(message),
    }
}

/// A `PlatformEvent` call: stored, streamed on the thread and queued for webhooks, at once.
/// Once per call: a resumed run repeating the call gets the event stored the first time.
async fn emit(
    ctx: &ToolContext<'_>,
    tool: &Tool,
    event: &PlatformEventConfig,
    call: &ToolCall,
) -> ToolOutput {
    let new = NewPlatformEvent {
        id: PlatformEventId::generate(),
        event_type: event.event_type.clone(),
        tool_id: tool.id.clone(),
        payload: call.arguments.clone(),
        call_id: Some(call.id.clone()),
    };
    match ctx.store.emit_platform_event(ctx.lease, &new).await {
        Ok((stored, events)) => ToolOutput {
            result: Ok(json!({"event_id": stored.id.as_str(), "type": stored.event_type, "status": "emitted"}).to_string()),
            events,
        },
        Err(err) => ToolOutput::error(format!("the event could not be emitted: {err}")),
    }
}
