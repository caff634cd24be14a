//! The operation table: every operation's SPEC operationId, HTTP method and path template.
//!
//! The server's OpenAPI document is tested against this table, and the SDK builds its requests
//! from it, so the three cannot drift apart.

/// One API operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Operation {
    pub id: &'static str,
    pub method: &'static str,
    /// Path template with `{name}` placeholders.
    pub path: &'static str,
}

macro_rules! operations {
    ($($konst:ident = ($id:literal, $method:literal, $path:literal);)*) => {
        $(pub const $konst: Operation = Operation { id: $id, method: $method, path: $path };)*
        /// Every operation, in documentation order.
        pub const ALL: &[Operation] = &[$($konst,)*];
    };
}

operations! {
    GET_CURRENT_DEPLOYMENT = ("getCurrentDeployment", "GET", "/deployments/current");
    UPDATE_CURRENT_DEPLOYMENT = ("updateCurrentDeployment", "PATCH", "/deployments/current");
    CREATE_SECRET_KEY = ("createSecretKey", "POST", "/secret-keys");
    LIST_SECRET_KEYS = ("listSecretKeys", "GET", "/secret-keys");
    REVOKE_SECRET_KEY = ("revokeSecretKey", "POST", "/secret-keys/{key_id}/revoke");
    CREATE_ACTOR = ("createActor", "POST", "/ai/actors");
    LIST_ACTORS = ("listActors", "GET", "/ai/actors");
    LOOKUP_ACTOR = ("lookupActor", "GET", "/ai/actors/lookup");
    GET_ACTOR = ("getActor", "GET", "/ai/actors/{actor_id}");
    CREATE_AI_AGENT = ("createAiAgent", "POST", "/ai/agents");
    LIST_AI_AGENTS = ("listAiAgents", "GET", "/ai/agents");
    GET_AI_AGENT_BY_ID = ("getAiAgentById", "GET", "/ai/agents/{agent_id}");
    UPDATE_AI_AGENT = ("updateAiAgent", "PATCH", "/ai/agents/{agent_id}");
    DELETE_AI_AGENT = ("deleteAiAgent", "DELETE", "/ai/agents/{agent_id}");
    CREATE_AI_TOOL = ("createAiTool", "POST", "/ai/tools");
    LIST_AI_TOOLS = ("listAiTools", "GET", "/ai/tools");
    LIST_INTERNAL_TOOLS = ("listInternalTools", "GET", "/ai/tools/internal");
    GET_AI_TOOL_BY_ID = ("getAiToolById", "GET", "/ai/tools/{tool_id}");
    UPDATE_AI_TOOL = ("updateAiTool", "PATCH", "/ai/tools/{tool_id}");
    DELETE_AI_TOOL = ("deleteAiTool", "DELETE", "/ai/tools/{tool_id}");
    ENABLE_TOOLKIT = ("enableToolkit", "POST", "/ai/toolkits");
    LIST_TOOLKITS = ("listToolkits", "GET", "/ai/toolkits");
    DISABLE_TOOLKIT = ("disableToolkit", "DELETE", "/ai/toolkits/{toolkit}");
    LIST_ACTOR_TOOLKITS = ("listActorToolkits", "GET", "/ai/actors/{actor_id}/toolkits");
    CONNECT_ACTOR_TOOLKIT = ("connectActorToolkit", "POST", "/ai/actors/{actor_id}/toolkits/{toolkit}/connect");
    DISCONNECT_ACTOR_TOOLKIT = ("disconnectActorToolkit", "DELETE", "/ai/actors/{actor_id}/toolkits/{toolkit}");
    CREATE_ACTOR_PROJECT_FLAT = ("createActorProjectFlat", "POST", "/ai/actor-projects");
    LIST_ACTOR_PROJECTS = ("listActorProjects", "GET", "/ai/actor-projects");
    GET_ACTOR_PROJECT = ("getActorProject", "GET", "/ai/actor-projects/{project_id}");
    ARCHIVE_ACTOR_PROJECT = ("archiveActorProject", "POST", "/ai/actor-projects/{project_id}/archive");
    CREATE_AGENT_THREAD = ("createAgentThread", "POST", "/ai/actor-projects/{project_id}/threads");
    GET_AGENT_THREAD_BY_ID = ("getAgentThreadById", "GET", "/ai/threads/{thread_id}");
    GET_AGENT_THREAD_MESSAGES = ("getAgentThreadMessages", "GET", "/ai/threads/{thread_id}/messages");
    EXECUTE_AGENT_THREAD_ASYNC = ("executeAgentThreadAsync", "POST", "/ai/threads/{thread_id}/run");
    GET_AGENT_THREAD_RUN = ("getAgentThreadRun", "GET", "/ai/threads/{thread_id}/runs/{run_id}");
    STREAM_AGENT_THREAD = ("streamAgentThread", "GET", "/ai/threads/{thread_id}/stream");
    CREATE_PROJECT_TASK_BOARD_ITEM = ("createProjectTaskBoardItem", "POST", "/ai/actor-projects/{project_id}/board/items");
    LIST_PROJECT_TASK_BOARD_ITEMS = ("listProjectTaskBoardItems", "GET", "/ai/actor-projects/{project_id}/board/items");
    DELEGATE_PROJECT_TASK = ("delegateProjectTask", "POST", "/ai/actor-projects/{project_id}/board/items/delegate");
    GET_PROJECT_TASK_BOARD_ITEM = ("getProjectTaskBoardItem", "GET", "/ai/actor-projects/{project_id}/board/items/{item_id}");
    UPDATE_PROJECT_TASK_BOARD_ITEM = ("updateProjectTaskBoardItem", "PATCH", "/ai/actor-projects/{project_id}/board/items/{item_id}");
    ARCHIVE_PROJECT_TASK_BOARD_ITEM = ("archiveProjectTaskBoardItem", "POST", "/ai/actor-projects/{project_id}/board/items/{item_id}/archive");
    CANCEL_PROJECT_TASK_BOARD_ITEM = ("cancelProjectTaskBoardItem", "POST", "/ai/actor-projects/{project_id}/board/items/{item_id}/cancel");
    LIST_PROJECT_TASK_BOARD_ITEM_FILESYSTEM = ("listProjectTaskBoardItemFilesystem", "GET", "/ai/actor-projects/{project_id}/board/items/{item_id}/filesystem");
    GET_PROJECT_TASK_BOARD_ITEM_FILESYSTEM_FILE = ("getProjectTaskBoardItemFilesystemFile", "GET", "/ai/actor-projects/{project_id}/board/items/{item_id}/filesystem/file");
    UPLOAD_PROJECT_TASK_BOARD_ITEM_FILESYSTEM_FILE = ("uploadProjectTaskBoardItemFilesystemFile", "PUT", "/ai/actor-projects/{project_id}/board/items/{item_id}/filesystem/file");
    DOWNLOAD_PROJECT_TASK_BOARD_ITEM_FILESYSTEM_FILE = ("downloadProjectTaskBoardItemFilesystemFile", "GET", "/ai/actor-projects/{project_id}/board/items/{item_id}/filesystem/download");
    CREATE_USER = ("createUser", "POST", "/users");
    LIST_USERS = ("listUsers", "GET", "/users");
    GET_USER = ("getUser", "GET", "/users/{user_id}");
    UPDATE_USER = ("updateUser", "PATCH", "/users/{user_id}");
    DELETE_USER = ("deleteUser", "DELETE", "/users/{user_id}");
    DISABLE_USER = ("disableUser", "POST", "/users/{user_id}/disable");
    ENABLE_USER = ("enableUser", "POST", "/users/{user_id}/enable");
    CREATE_USER_TOKEN = ("createUserToken", "POST", "/users/{user_id}/tokens");
    CREATE_ORGANIZATION = ("createOrganization", "POST", "/organizations");
    LIST_ORGANIZATIONS = ("listOrganizations", "GET", "/organizations");
    GET_ORGANIZATION = ("getOrganization", "GET", "/organizations/{organization_id}");
    ADD_ORGANIZATION_MEMBER = ("addOrganizationMember", "POST", "/organizations/{organization_id}/members");
    LIST_ORGANIZATION_MEMBERS = ("listOrganizationMembers", "GET", "/organizations/{organization_id}/members");
    REMOVE_ORGANIZATION_MEMBER = ("removeOrganizationMember", "DELETE", "/organizations/{organization_id}/members/{user_id}");
    LIST_AUDIT_EVENTS = ("listAuditEvents", "GET", "/audit-events");
    SIGN_IN = ("signIn", "POST", "/sign-in");
    SIGN_OUT = ("signOut", "POST", "/sign-out");
    GET_ME = ("getMe", "GET", "/me");
    SET_ACTIVE_ORGANIZATION = ("setActiveOrganization", "POST", "/me/active-organization");
    GET_JWKS = ("getJwks", "GET", "/.well-known/jwks.json");
    CREATE_BACKEND_SESSION_TICKET = ("createBackendSessionTicket", "POST", "/session/tickets");
    CREATE_SESSION_TICKET = ("createSessionTicket", "POST", "/console/api/deployments/{deployment_id}/session/tickets");
    EXCHANGE_SESSION_TICKET = ("exchangeSessionTicket", "POST", "/session/tickets/exchange");
    CONSOLE_SIGN_IN = ("consoleSignIn", "POST", "/console/api/sign-in");
    CONSOLE_SIGN_OUT = ("consoleSignOut", "POST", "/console/api/sign-out");
    GET_AGENT_SESSION = ("getAgentSession", "GET", "/agent/session");
    LIST_AGENT_CONTEXTS = ("listAgentContexts", "GET", "/agent/contexts");
    CREATE_AGENT_CONTEXT = ("createAgentContext", "POST", "/agent/contexts");
    UPDATE_AGENT_CONTEXT = ("updateAgentContext", "PATCH", "/agent/contexts/{context_id}");
    DELETE_AGENT_CONTEXT = ("deleteAgentContext", "DELETE", "/agent/contexts/{context_id}");
    LIST_AGENT_CONTEXT_MESSAGES = ("listAgentContextMessages", "GET", "/agent/contexts/{context_id}/messages");
    SEND_AGENT_CONTEXT_MESSAGE = ("sendAgentContextMessage", "POST", "/agent/contexts/{context_id}/messages");
    CANCEL_AGENT_CONTEXT = ("cancelAgentContext", "POST", "/agent/contexts/{context_id}/cancel");
    RESOLVE_AGENT_CONTEXT_ACTION = ("resolveAgentContextAction", "POST", "/agent/contexts/{context_id}/actions/{action_id}");
    STREAM_AGENT_CONTEXT = ("streamAgentContext", "GET", "/agent/contexts/{context_id}/stream");
    ASK_AGENT_POOL = ("askAgentPool", "POST", "/api/v1/ask/{endpoint_slug}");
    GET_POOL_RESPONSE = ("getPoolResponse", "GET", "/api/v1/responses/{response_id}");
    CLOSE_SESSION = ("closeSession", "POST", "/api/v1/sessions/{thread_id}/close");
    UPDATE_SESSION_VARIABLES = ("updateSessionVariables", "PATCH", "/api/v1/sessions/{thread_id}");
    RESOLVE_PENDING_ACTION = ("resolvePendingAction", "POST", "/api/v1/sessions/{thread_id}/actions/{action_id}");
    GET_USAGE = ("getUsage", "GET", "/api/v1/usage");
}

/// Finds an operation by its operationId.
pub fn by_id(id: &str) -> Option<Operation> {
    ALL.iter().copied().find(|op| op.id == id)
}

impl Operation {
    /// The path with each `{name}` replaced by the percent-encoded value from `params`.
    /// Returns the first placeholder that has no value as the error.
    pub fn fill_path<'a>(
        &self,
        mut params: impl FnMut(&str) -> Option<&'a str>,
    ) -> Result<String, String> {
        let mut out = String::with_capacity(self.path.len() + 32);
        let mut rest = self.path;
        while let Some(start) = rest.find('{') {
            out.push_str(&rest[..start]);
            let Some(end) = rest[start..].find('}') else {
                break;
            };
            let name = &rest[start + 1..start + end];
            let value = params(name).ok_or_else(|| name.to_owned())?;
            out.push_str(&encode_path_segment(value));
            rest = &rest[start + end + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }

    /// Names of the `{placeholders}` in the path template.
    pub fn path_params(&self) -> Vec<&'static str> {
        let mut names = Vec::new();
        let mut rest = self.path;
        while let Some(start) = rest.find('{') {
            let Some(end) = rest[start..].find('}') else {
                break;
            };
            names.push(&rest[start + 1..start + end]);
            rest = &rest[start + end + 1..];
        }
        names
    }
}

/// Percent-encodes everything outside RFC 3986's unreserved set.
pub fn encode_path_segment(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for op in ALL {
            assert!(seen.insert(op.id), "duplicate {}", op.id);
            assert!(seen.insert(op.path) || ALL.iter().filter(|o| o.path == op.path).count() > 1);
        }
    }

    #[test]
    fn fills_and_encodes_path_params() {
        let path = GET_AI_AGENT_BY_ID
            .fill_path(|n| (n == "agent_id").then_some("a/b c"))
            .unwrap();
        assert_eq!(path, "/ai/agents/a%2Fb%20c");
        assert_eq!(
            GET_AI_AGENT_BY_ID.fill_path(|_| None).unwrap_err(),
            "agent_id"
        );
        assert_eq!(ARCHIVE_ACTOR_PROJECT.path_params(), vec!["project_id"]);
    }
}
