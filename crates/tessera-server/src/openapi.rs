//! The OpenAPI 3.1 document, generated from the handlers' annotations and the wire types.

use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::routes::{
    actors, agent, agents, audit, boards, browser, console, deployments, organizations, projects,
    sessions, threads, tickets, toolkits, tools, users,
};
use crate::stream;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Tessera",
        description = "Agent session server: deployments, actors, agents, actor projects, board items, threads and runs; session management; users, organizations, sign-in and the audit log; session tickets, agent sessions and the console.",
        license(name = "Apache-2.0")
    ),
    paths(
        deployments::get_current_deployment,
        deployments::update_current_deployment,
        deployments::create_secret_key,
        deployments::list_secret_keys,
        deployments::revoke_secret_key,
        actors::create_actor,
        actors::list_actors,
        actors::lookup_actor,
        actors::get_actor,
        agents::create_agent,
        agents::list_agents,
        agents::get_agent,
        agents::update_agent,
        agents::delete_agent,
        tools::create_tool,
        tools::list_tools,
        tools::list_internal_tools,
        tools::get_tool,
        tools::update_tool,
        tools::delete_tool,
        toolkits::enable_toolkit,
        toolkits::list_toolkits,
        toolkits::disable_toolkit,
        toolkits::list_actor_toolkits,
        toolkits::connect_actor_toolkit,
        toolkits::disconnect_actor_toolkit,
        projects::create_actor_project,
        projects::list_actor_projects,
        projects::get_actor_project,
        projects::archive_actor_project,
        boards::create_item,
        boards::list_items,
        boards::delegate,
        boards::get_item,
        boards::update_item,
        boards::archive_item,
        boards::cancel_item,
        boards::list_filesystem,
        boards::get_file,
        boards::upload_file,
        boards::download_file,
        threads::create_thread,
        threads::get_thread,
        threads::list_messages,
        threads::execute,
        threads::get_run,
        stream::stream_thread,
        users::create_user,
        users::list_users,
        users::get_user,
        users::update_user,
        users::delete_user,
        users::disable_user,
        users::enable_user,
        users::create_user_token,
        organizations::create_organization,
        organizations::list_organizations,
        organizations::get_organization,
        organizations::add_member,
        organizations::list_members,
        organizations::remove_member,
        audit::list_audit_events,
        browser::sign_in,
        browser::sign_out,
        browser::get_me,
        browser::set_active_organization,
        browser::jwks,
        tickets::create_backend_session_ticket,
        tickets::create_session_ticket,
        tickets::exchange_session_ticket,
        console::console_sign_in,
        console::console_sign_out,
        agent::get_agent_session,
        agent::list_agent_contexts,
        agent::create_agent_context,
        agent::update_agent_context,
        agent::delete_agent_context,
        agent::list_agent_context_messages,
        agent::send_agent_context_message,
        agent::cancel_agent_context,
        agent::resolve_agent_context_action,
        agent::stream_agent_context,
        sessions::ask_agent_pool,
        sessions::get_pool_response,
        sessions::close_session,
        sessions::update_session_variables,
        sessions::resolve_pending_action,
        sessions::get_usage,
    ),
    components(schemas(tessera_api::ErrorBody, tessera_api::ErrorDetail)),
    modifiers(&Security),
    tags(
        (name = "deployments", description = "The caller's deployment (tenant)."),
        (name = "secret keys", description = "Backend credentials of a deployment."),
        (name = "actors", description = "Who agents work for."),
        (name = "agents", description = "Agent definitions."),
        (name = "tools", description = "Tools agents attach (`Api`, `CodeRunner`, `Mcp`, `PlatformEvent`) and the catalogue of internal tools."),
        (name = "toolkits", description = "Third-party toolkits (`Virtual` tools) of the server's toolkit provider: enabled per deployment, connected per actor; a connected toolkit's tools surface to that actor's runs as `tk_{toolkit}_{tool}`."),
        (name = "actor projects", description = "An actor bound to an agent."),
        (name = "board", description = "Board items (tasks) of a project: schedules, delegation and task workspaces."),
        (name = "threads", description = "Conversations and execution lanes; runs and their event stream."),
        (name = "users", description = "End users of the deployment's app; user tokens."),
        (name = "organizations", description = "Organizations of users and their memberships."),
        (name = "audit", description = "The deployment's audit log."),
        (name = "sessions", description = "Session management (`/api/v1`, secret key as `Authorization: Bearer` or `X-API-Key`): the agent pool endpoint, closing sessions, context variables, pending actions and usage."),
        (name = "browser", description = "Signed-in users: sign-in, sign-out, `/me` (browser session cookie or user token), and the token verification keys."),
        (name = "session tickets", description = "Single-use, time-bound ticket URLs (agent chat, impersonation) and their exchange by the browser."),
        (name = "agent sessions", description = "The browser API of an agent session: its conversations, messages and event stream (session cookie or `session_token`)."),
        (name = "console", description = "Console administrators of the installation: sign-in and tickets for any deployment."),
    )
)]
struct ApiDoc;

struct Security;

impl Modify for Security {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "secret_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "A deployment secret key: `Authorization: Bearer tsk_…`",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "session_cookie",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
                "tessera_session",
                "The browser session cookie set by `POST /sign-in`",
            ))),
        );
        components.add_security_scheme(
            "user_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "A user token from `createUserToken`: `Authorization: Bearer eyJ…`",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "session_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "The `session_token` of `exchangeSessionTicket`: `Authorization: Bearer tas_…`",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "console_session",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
                "tessera_console",
                "The console session cookie set by `POST /console/api/sign-in`",
            ))),
        );
        components.add_security_scheme(
            "console_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "The `token` of `consoleSignIn`: `Authorization: Bearer tca_…`",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "api_key_header",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "X-API-Key",
                "A deployment secret key; accepted on `/api/v1/*` only",
            ))),
        );
    }
}

/// The OpenAPI document served at `/openapi.json` (also used offline by `tessera api`).
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    doc
}

#[cfg(test)]
mod tests {
    use super::*;

    fn document_json() -> serde_json::Value {
        serde_json::to_value(openapi_document()).expect("the document serializes")
    }

    /// The served document and the operation table (used by the SDK and CLI) must agree
    /// exactly: same operationIds, methods and paths.
    #[test]
    fn operations_match_the_ops_table() {
        let doc = document_json();
        let mut documented = Vec::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for (method, op) in item.as_object().expect("path item") {
                if let Some(id) = op.get("operationId").and_then(|v| v.as_str()) {
                    documented.push((id.to_owned(), method.to_uppercase(), path.clone()));
                }
            }
        }
        documented.sort();
        let mut expected: Vec<_> = tessera_api::ops::ALL
            .iter()
            .map(|op| (op.id.to_owned(), op.method.to_owned(), op.path.to_owned()))
            .collect();
        expected.sort();
        assert_eq!(documented, expected);
    }

    #[test]
    fn is_openapi_3_1_with_security_on_every_operation() {
        let doc = document_json();
        assert!(doc["openapi"]
            .as_str()
            .unwrap_or_default()
            .starts_with("3.1"));
        for item in doc["paths"].as_object().expect("paths").values() {
            for op in item.as_object().expect("path item").values() {
                assert!(op.get("security").is_some(), "{op}");
            }
        }
    }

    /// Changes to the public API shape must be deliberate: review the snapshot diff and
    /// accept it with `cargo insta review` (or `INSTA_UPDATE=always cargo test`).
    #[test]
    fn snapshot() {
        insta::assert_json_snapshot!("openapi", document_json());
    }
}
