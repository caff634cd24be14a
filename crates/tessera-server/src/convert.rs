//! Conversions at the API edge: wire requests into validated domain values (errors name the
//! field as the client sent it) and stored records into wire responses.

use tessera_api as api;
use tessera_domain::agent::{
    Agent, AgentLimits, AgentSpec, ApprovalRule, ModelRef, MultitaskPolicy,
};
use tessera_domain::records::{
    Actor, Deployment, DeploymentSettings, NewActor, NewProject, Project, ProjectStatus,
    SecretKeyRecord,
};
use tessera_domain::thread::{
    self, ContextGroup, Message, NewThread, Role, Run, RunStatus, Thread, ThreadPurpose,
    ThreadStatus,
};
use tessera_domain::validate::{
    parse_list, CapabilityTag, Description, EndpointSlug, ExternalKey, Label, Metadata, ModelName,
    ProviderName, SubjectType, ToolPattern,
};
use tessera_domain::ProjectId;
use tessera_domain::{ActorId, AgentId, Timestamp, ToolId, ValidationError};
use tessera_store::Page;

fn ts(t: Timestamp) -> String {
    t.to_rfc3339()
}

// --- requests → domain ------------------------------------------------------------------------

pub(crate) fn new_actor(req: api::CreateActorRequest) -> Result<NewActor, ValidationError> {
    Ok(NewActor {
        subject_type: SubjectType::parse("subject_type", req.subject_type)?,
        external_key: ExternalKey::parse("external_key", req.external_key)?,
        display_name: req
            .display_name
            .map(|n| Label::parse("display_name", n))
            .transpose()?,
        metadata: match req.metadata {
            Some(value) => Metadata::parse("metadata", value)?,
            None => Metadata::empty(),
        },
    })
}

/// A deployment's settings from the wire (errors name fields under `settings`).
pub(crate) fn deployment_settings(
    req: api::DeploymentSettings,
) -> Result<DeploymentSettings, ValidationError> {
    Ok(DeploymentSettings {
        default_model: req
            .default_model
            .map(|m| model_ref(m).map_err(|e| e.under("default_model")))
            .transpose()
            .map_err(|e| e.under("settings"))?,
    })
}

fn model_config(m: ModelRef) -> api::ModelConfig {
    api::ModelConfig {
        provider: m.provider.into_string(),
        model: m.model.into_string(),
        temperature: m.temperature,
        max_output_tokens: m.max_output_tokens,
    }
}

/// A model reference; errors name its own fields (`provider`, `temperature`, …).
fn model_ref(req: api::ModelConfig) -> Result<ModelRef, ValidationError> {
    let provider = ProviderName::parse("provider", req.provider)?;
    let name = ModelName::parse("model", req.model)?;
    ModelRef::new(provider, name, req.temperature, req.max_output_tokens)
}

fn model_field(req: api::ModelConfig) -> Result<ModelRef, ValidationError> {
    model_ref(req).map_err(|e| e.under("model"))
}

fn limits(req: api::AgentLimits) -> Result<AgentLimits, ValidationError> {
    AgentLimits::new(
        req.max_iterations,
        req.token_budget,
        req.run_timeout_seconds,
    )
    .map_err(|e| e.under("limits"))
}

fn multitask(policy: api::MultitaskPolicy) -> MultitaskPolicy {
    match policy {
        api::MultitaskPolicy::Enqueue => MultitaskPolicy::Enqueue,
        api::MultitaskPolicy::Reject => MultitaskPolicy::Reject,
        api::MultitaskPolicy::Interrupt => MultitaskPolicy::Interrupt,
    }
}

fn ids<T: PartialEq>(
    field: &str,
    raw: Vec<String>,
    max: usize,
    parse: fn(&str) -> Result<T, tessera_domain::id::IdParseError>,
) -> Result<Vec<T>, ValidationError> {
    parse_list(field, raw, max, |f, v| {
        parse(&v).map_err(|e| ValidationError::new(f, e.to_string()))
    })
}

fn approval_rules(raw: Vec<api::ApprovalRule>) -> Result<Vec<ApprovalRule>, ValidationError> {
    if raw.len() > AgentSpec::MAX_APPROVAL_RULES {
        return Err(ValidationError::new(
            "approval_rules",
            format!("must have at most {} items", AgentSpec::MAX_APPROVAL_RULES),
        ));
    }
    raw.into_iter()
        .enumerate()
        .map(|(i, rule)| {
            Ok(ApprovalRule {
                tool: ToolPattern::parse(&format!("approval_rules[{i}].tool"), rule.tool)?,
                expires_in_seconds: ApprovalRule::check_expiry(
                    &format!("approval_rules[{i}].expires_in_seconds"),
                    rule.expires_in_seconds,
                )?,
            })
        })
        .collect()
}

pub(crate) fn agent_spec(req: api::CreateAgentRequest) -> Result<AgentSpec, ValidationError> {
    let spec = AgentSpec {
        name: Label::parse("name", req.name)?,
        description: Description::parse("description", req.description.unwrap_or_default())?,
        model: req.model.map(model_field).transpose()?,
        tool_ids: ids(
            "tool_ids",
            req.tool_ids.unwrap_or_default(),
            AgentSpec::MAX_TOOLS,
            ToolId::parse,
        )?,
        sub_agent_ids: ids(
            "sub_agent_ids",
            req.sub_agent_ids.unwrap_or_default(),
            AgentSpec::MAX_SUB_AGENTS,
            AgentId::parse,
        )?,
        capability_tags: parse_list(
            "capability_tags",
            req.capability_tags.unwrap_or_default(),
            AgentSpec::MAX_CAPABILITY_TAGS,
            CapabilityTag::parse,
        )?,
        endpoint_slug: req
            .endpoint_slug
            .map(|s| EndpointSlug::parse("endpoint_slug", s))
            .transpose()?,
        approval_rules: approval_rules(req.approval_rules.unwrap_or_default())?,
        limits: limits(req.limits.unwrap_or_default())?,
        multitask: req.multitask.map(multitask).unwrap_or_default(),
    };
    spec.check(None)?;
    Ok(spec)
}

/// Applies a PATCH to a stored spec; the result is validated as a whole.
pub(crate) fn patch_agent_spec(
    id: &AgentId,
    mut spec: AgentSpec,
    req: api::UpdateAgentRequest,
) -> Result<AgentSpec, ValidationError> {
    if let Some(name) = req.name {
        spec.name = Label::parse("name", name)?;
    }
    if let Some(description) = req.description {
        spec.description = Description::parse("description", description)?;
    }
    if let Some(m) = req.model {
        spec.model = m.map(model_field).transpose()?;
    }
    if let Some(tool_ids) = req.tool_ids {
        spec.tool_ids = ids("tool_ids", tool_ids, AgentSpec::MAX_TOOLS, ToolId::parse)?;
    }
    if let Some(sub) = req.sub_agent_ids {
        spec.sub_agent_ids = ids(
            "sub_agent_ids",
            sub,
            AgentSpec::MAX_SUB_AGENTS,
            AgentId::parse,
        )?;
    }
    if let Some(tags) = req.capability_tags {
        spec.capability_tags = parse_list(
            "capability_tags",
            tags,
            AgentSpec::MAX_CAPABILITY_TAGS,
            CapabilityTag::parse,
        )?;
    }
    if let Some(slug) = req.endpoint_slug {
        spec.endpoint_slug = slug
            .map(|s| EndpointSlug::parse("endpoint_slug", s))
            .transpose()?;
    }
    if let Some(rules) = req.approval_rules {
        spec.approval_rules = approval_rules(rules)?;
    }
    if let Some(l) = req.limits {
        spec.limits = limits(l)?;
    }
    if let Some(m) = req.multitask {
        spec.multitask = multitask(m);
    }
    spec.check(Some(id))?;
    Ok(spec)
}

pub(crate) fn new_project(
    actor_id: ActorId,
    req: api::CreateActorProjectRequest,
) -> Result<NewProject, ValidationError> {
    Ok(NewProject {
        actor_id,
        agent_id: AgentId::parse(&req.agent_id)
            .map_err(|e| ValidationError::new("agent_id", e.to_string()))?,
        name: Label::parse("name", req.name)?,
    })
}

pub(crate) fn new_thread(
    project_id: ProjectId,
    req: api::CreateThreadRequest,
) -> Result<NewThread, ValidationError> {
    if let Some(instructions) = &req.system_instructions {
        thread::check_system_instructions("system_instructions", instructions)?;
    }
    Ok(NewThread {
        project_id,
        title: Label::parse("title", req.title)?,
        system_instructions: req.system_instructions,
        purpose: match req.purpose.unwrap_or_default() {
            api::ThreadPurpose::Conversation => ThreadPurpose::Conversation,
            api::ThreadPurpose::Execution => ThreadPurpose::Execution,
        },
        capability_tags: parse_list(
            "capability_tags",
            req.capability_tags.unwrap_or_default(),
            AgentSpec::MAX_CAPABILITY_TAGS,
            CapabilityTag::parse,
        )?,
        context_group: req
            .context_group
            .map(|c| ContextGroup::parse("context_group", c))
            .transpose()?,
    })
}

/// Most files a message may reference.
pub(crate) const MAX_MESSAGE_FILES: usize = 20;

/// Checks a message a caller sends; returns its content and attachment paths.
pub(crate) fn new_message(req: api::NewMessage) -> Result<(String, Vec<String>), ValidationError> {
    thread::check_message_content("message.content", &req.content)?;
    let files = req.files.unwrap_or_default();
    if files.len() > MAX_MESSAGE_FILES {
        return Err(ValidationError::new(
            "message.files",
            format!("must have at most {MAX_MESSAGE_FILES} items"),
        ));
    }
    for (i, path) in files.iter().enumerate() {
        if path.is_empty() || path.len() > 1024 || path.contains('\0') {
            return Err(ValidationError::new(
                format!("message.files[{i}]"),
                "must be a path of 1-1024 bytes",
            ));
        }
    }
    Ok((req.content, files))
}

// --- records → responses ----------------------------------------------------------------------

pub(crate) fn deployment(d: Deployment) -> api::Deployment {
    api::Deployment {
        id: d.id.into_string(),
        name: d.name,
        backend_host: d.backend_host,
        frontend_host: d.frontend_host,
        settings: api::DeploymentSettings {
            default_model: d.settings.default_model.map(model_config),
        },
        created_at: ts(d.created_at),
    }
}

pub(crate) fn secret_key(k: SecretKeyRecord) -> api::SecretKey {
    api::SecretKey {
        id: k.id.into_string(),
        name: k.name,
        prefix: k.prefix,
        created_at: ts(k.created_at),
        last_used_at: k.last_used_at.map(ts),
        revoked_at: k.revoked_at.map(ts),
    }
}

pub(crate) fn actor(a: Actor) -> api::Actor {
    api::Actor {
        id: a.id.into_string(),
        subject_type: a.subject_type,
        external_key: a.external_key,
        display_name: a.display_name,
        metadata: a.metadata,
        created_at: ts(a.created_at),
    }
}

pub(crate) fn agent(a: Agent) -> api::Agent {
    let s = a.spec;
    api::Agent {
        id: a.id.into_string(),
        name: s.name.into_string(),
        description: s.description.into_string(),
        model: s.model.map(model_config),
        tool_ids: s.tool_ids.into_iter().map(ToolId::into_string).collect(),
        sub_agent_ids: s
            .sub_agent_ids
            .into_iter()
            .map(AgentId::into_string)
            .collect(),
        capability_tags: s
            .capability_tags
            .into_iter()
            .map(CapabilityTag::into_string)
            .collect(),
        endpoint_slug: s.endpoint_slug.map(EndpointSlug::into_string),
        approval_rules: s
            .approval_rules
            .into_iter()
            .map(|r| api::ApprovalRule {
                tool: r.tool.into_string(),
                expires_in_seconds: r.expires_in_seconds,
            })
            .collect(),
        limits: api::AgentLimits {
            max_iterations: Some(s.limits.max_iterations),
            token_budget: s.limits.token_budget,
            run_timeout_seconds: Some(s.limits.run_timeout_seconds),
        },
        multitask: match s.multitask {
            MultitaskPolicy::Enqueue => api::MultitaskPolicy::Enqueue,
            MultitaskPolicy::Reject => api::MultitaskPolicy::Reject,
            MultitaskPolicy::Interrupt => api::MultitaskPolicy::Interrupt,
        },
        created_at: ts(a.created_at),
        updated_at: ts(a.updated_at),
    }
}

pub(crate) fn project(p: Project) -> api::ActorProject {
    api::ActorProject {
        id: p.id.into_string(),
        actor_id: p.actor_id.into_string(),
        agent_id: p.agent_id.into_string(),
        name: p.name,
        status: match p.status {
            ProjectStatus::Active => api::ProjectStatus::Active,
            ProjectStatus::Archived => api::ProjectStatus::Archived,
        },
        created_at: ts(p.created_at),
        archived_at: p.archived_at.map(ts),
    }
}

pub(crate) fn project_status(s: api::ProjectStatus) -> ProjectStatus {
    match s {
        api::ProjectStatus::Active => ProjectStatus::Active,
        api::ProjectStatus::Archived => ProjectStatus::Archived,
    }
}

pub(crate) fn thread(t: Thread) -> api::Thread {
    api::Thread {
        id: t.id.into_string(),
        project_id: t.project_id.into_string(),
        actor_id: t.actor_id.into_string(),
        agent_id: t.agent_id.into_string(),
        title: t.title,
        system_instructions: t.system_instructions,
        purpose: match t.purpose {
            ThreadPurpose::Conversation => api::ThreadPurpose::Conversation,
            ThreadPurpose::Execution => api::ThreadPurpose::Execution,
        },
        capability_tags: t.capability_tags,
        context_group: t.context_group,
        status: match t.status {
            ThreadStatus::Idle => api::ThreadStatus::Idle,
            ThreadStatus::Running => api::ThreadStatus::Running,
            ThreadStatus::WaitingForInput => api::ThreadStatus::WaitingForInput,
        },
        created_at: ts(t.created_at),
        updated_at: ts(t.updated_at),
    }
}

pub(crate) fn message(m: Message) -> api::Message {
    api::Message {
        id: m.id.into_string(),
        thread_id: m.thread_id.into_string(),
        run_id: m.run_id.map(|r| r.into_string()),
        role: match m.role {
            Role::User => api::MessageRole::User,
            Role::Assistant => api::MessageRole::Assistant,
            Role::Tool => api::MessageRole::Tool,
            Role::System => api::MessageRole::System,
        },
        content: m.content,
        tool_calls: m
            .tool_calls
            .into_iter()
            .map(|c| api::ToolCall {
                id: c.id,
                name: c.name,
                arguments: c.arguments,
            })
            .collect(),
        tool_call_id: m.tool_call_id,
        tool_name: m.tool_name,
        is_error: m.is_error,
        attachments: m.attachments,
        usage: m.usage.map(|u| api::TokenUsage {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
        }),
        created_at: ts(m.created_at),
    }
}

pub(crate) fn run_status(s: RunStatus) -> api::RunStatus {
    match s {
        RunStatus::Queued => api::RunStatus::Queued,
        RunStatus::Running => api::RunStatus::Running,
        RunStatus::WaitingForInput => api::RunStatus::WaitingForInput,
        RunStatus::Completed => api::RunStatus::Completed,
        RunStatus::Failed => api::RunStatus::Failed,
        RunStatus::Cancelled => api::RunStatus::Cancelled,
    }
}

pub(crate) fn run(r: Run) -> api::Run {
    api::Run {
        id: r.id.into_string(),
        thread_id: r.thread_id.into_string(),
        status: run_status(r.status),
        attempt: r.attempt,
        input_message_id: r.input_message_id.into_string(),
        stop_reason: r.stop_reason.map(|s| s.as_str().to_owned()),
        error: r.error,
        cancel_requested: r.cancel_requested,
        usage: api::RunUsage {
            prompt_tokens: r.usage.prompt_tokens,
            completion_tokens: r.usage.completion_tokens,
            iterations: r.usage.iterations,
            tool_calls: r.usage.tool_calls,
            wall_ms: r.usage.wall_ms,
        },
        created_at: ts(r.created_at),
        started_at: r.started_at.map(ts),
        finished_at: r.finished_at.map(ts),
    }
}

/// The parts of a list response: items plus paging hints.
pub(crate) struct ListParts<T> {
    pub data: Vec<T>,
    pub has_more: bool,
    pub first_id: Option<String>,
    pub last_id: Option<String>,
}

pub(crate) fn list<R, T>(page: Page<R>, map: fn(R) -> T, id_of: fn(&T) -> &str) -> ListParts<T> {
    let data: Vec<T> = page.items.into_iter().map(map).collect();
    ListParts {
        first_id: data.first().map(|i| id_of(i).to_owned()),
        last_id: data.last().map(|i| id_of(i).to_owned()),
        has_more: page.has_more,
        data,
    }
}

macro_rules! list_from_parts {
    ($($list:ident => $item:ident),*) => {$(
        impl From<ListParts<api::$item>> for api::$list {
            fn from(p: ListParts<api::$item>) -> Self {
                Self { data: p.data, has_more: p.has_more, first_id: p.first_id, last_id: p.last_id }
            }
        }
    )*};
}

list_from_parts!(
    ActorList => Actor,
    AgentList => Agent,
    ActorProjectList => ActorProject,
    SecretKeyList => SecretKey,
    MessageList => Message,
    AgentContextList => AgentContext
);

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_domain::thread::{TokenUsage, ToolCall};
    use tessera_domain::{MessageId, RunId, ThreadId};

    /// Stream events carry messages built by the domain; they must look exactly like the
    /// messages of `GET /ai/threads/{id}/messages`.
    #[test]
    fn event_messages_match_api_messages() {
        let m = Message {
            id: MessageId::generate(),
            thread_id: ThreadId::generate(),
            run_id: Some(RunId::generate()),
            role: Role::Assistant,
            content: "hi".into(),
            tool_calls: vec![ToolCall {
                id: "c1".into(),
                name: "notify_user".into(),
                arguments: serde_json::json!({"message": "x"}),
            }],
            tool_call_id: None,
            tool_name: None,
            is_error: false,
            attachments: vec!["a.txt".into()],
            usage: Some(TokenUsage {
                prompt_tokens: 3,
                completion_tokens: 4,
            }),
            created_at: Timestamp::from_millis(1_700_000_000_000),
        };
        let from_event = tessera_domain::event::message_json(&m);
        let from_api = serde_json::to_value(message(m)).unwrap();
        assert_eq!(from_event, from_api);
    }
}
