//! The route table and the handlers behind it, one module per resource.

use std::panic::AssertUnwindSafe;

use axum::extract::{DefaultBodyLimit, Request};
use axum::middleware::{from_fn, from_fn_with_state, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, patch, post};
use axum::Router;
use futures_util::FutureExt as _;
use tessera_api::ErrorCode;

use crate::error::ApiError;
use crate::AppState;

pub(crate) mod actors;
pub(crate) mod agent;
pub(crate) mod agents;
pub(crate) mod audit;
pub(crate) mod boards;
pub(crate) mod browser;
pub(crate) mod console;
pub(crate) mod deployments;
pub(crate) mod organizations;
pub(crate) mod projects;
pub(crate) mod sessions;
pub(crate) mod system;
pub(crate) mod threads;
pub(crate) mod tickets;
pub(crate) mod toolkits;
pub(crate) mod tools;
pub(crate) mod users;
pub(crate) mod vanity;

pub(crate) fn router(state: AppState, max_body_bytes: usize) -> Router {
    Router::new()
        .route(
            "/deployments/current",
            get(deployments::get_current_deployment).patch(deployments::update_current_deployment),
        )
        .route(
            "/secret-keys",
            post(deployments::create_secret_key).get(deployments::list_secret_keys),
        )
        .route(
            "/secret-keys/{key_id}/revoke",
            post(deployments::revoke_secret_key),
        )
        .route(
            "/ai/actors",
            post(actors::create_actor).get(actors::list_actors),
        )
        .route("/ai/actors/lookup", get(actors::lookup_actor))
        .route("/ai/actors/{actor_id}", get(actors::get_actor))
        .route(
            "/ai/agents",
            post(agents::create_agent).get(agents::list_agents),
        )
        .route(
            "/ai/agents/{agent_id}",
            get(agents::get_agent)
                .patch(agents::update_agent)
                .delete(agents::delete_agent),
        )
        .route("/ai/tools", post(tools::create_tool).get(tools::list_tools))
        .route("/ai/tools/internal", get(tools::list_internal_tools))
        .route(
            "/ai/tools/{tool_id}",
            get(tools::get_tool)
                .patch(tools::update_tool)
                .delete(tools::delete_tool),
        )
        .route(
            "/ai/toolkits",
            post(toolkits::enable_toolkit).get(toolkits::list_toolkits),
        )
        .route("/ai/toolkits/{toolkit}", delete(toolkits::disable_toolkit))
        .route(
            "/ai/actors/{actor_id}/toolkits",
            get(toolkits::list_actor_toolkits),
        )
        .route(
            "/ai/actors/{actor_id}/toolkits/{toolkit}",
            delete(toolkits::disconnect_actor_toolkit),
        )
        .route(
            "/ai/actors/{actor_id}/toolkits/{toolkit}/connect",
            post(toolkits::connect_actor_toolkit),
        )
        .route(
            "/ai/actor-projects",
            post(projects::create_actor_project).get(projects::list_actor_projects),
        )
        .route(
            "/ai/actor-projects/{project_id}",
            get(projects::get_actor_project),
        )
        .route(
            "/ai/actor-projects/{project_id}/archive",
            post(projects::archive_actor_project),
        )
        .route(
            "/ai/actor-projects/{project_id}/threads",
            post(threads::create_thread),
        )
        .merge(board_routes())
        .route("/ai/threads/{thread_id}", get(threads::get_thread))
        .route(
            "/ai/threads/{thread_id}/messages",
            get(threads::list_messages),
        )
        .route("/ai/threads/{thread_id}/run", post(threads::execute))
        .route(
            "/ai/threads/{thread_id}/runs/{run_id}",
            get(threads::get_run),
        )
        .route(
            "/ai/threads/{thread_id}/stream",
            get(crate::stream::stream_thread),
        )
        .merge(session_routes())
        .merge(identity_routes())
        .merge(ticket_routes())
        .route("/healthz", get(system::healthz))
        .route("/readyz", get(system::readyz))
        .route("/metrics", get(crate::observe::metrics))
        .route("/openapi.json", get(system::openapi_json))
        .fallback(route_not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(from_fn_with_state(state.clone(), vanity::cors))
        .layer(from_fn(catch_panic))
        .layer(from_fn_with_state(state.clone(), crate::observe::track))
        .with_state(state)
}

/// Board items of a project and their workspace filesystems.
fn board_routes() -> Router<AppState> {
    const ITEM: &str = "/ai/actor-projects/{project_id}/board/items/{item_id}";
    Router::new()
        .route(
            "/ai/actor-projects/{project_id}/board/items",
            post(boards::create_item).get(boards::list_items),
        )
        .route(
            "/ai/actor-projects/{project_id}/board/items/delegate",
            post(boards::delegate),
        )
        .route(ITEM, get(boards::get_item).patch(boards::update_item))
        .route(&format!("{ITEM}/archive"), post(boards::archive_item))
        .route(&format!("{ITEM}/cancel"), post(boards::cancel_item))
        .route(&format!("{ITEM}/filesystem"), get(boards::list_filesystem))
        .route(
            &format!("{ITEM}/filesystem/file"),
            get(boards::get_file).put(boards::upload_file),
        )
        .route(
            &format!("{ITEM}/filesystem/download"),
            get(boards::download_file),
        )
}

/// Session management under `/api/v1` (which also accepts `X-API-Key`).
fn session_routes() -> Router<AppState> {
    Router::new()
        .route(
            "/api/v1/ask/{endpoint_slug}",
            post(sessions::ask_agent_pool),
        )
        .route(
            "/api/v1/responses/{response_id}",
            get(sessions::get_pool_response),
        )
        .route(
            "/api/v1/sessions/{thread_id}",
            axum::routing::patch(sessions::update_session_variables),
        )
        .route(
            "/api/v1/sessions/{thread_id}/close",
            post(sessions::close_session),
        )
        .route(
            "/api/v1/sessions/{thread_id}/actions/{action_id}",
            post(sessions::resolve_pending_action),
        )
        .route("/api/v1/usage", get(sessions::get_usage))
}

/// Users, organizations, the audit log (backend) and the browser sign-in endpoints.
fn identity_routes() -> Router<AppState> {
    Router::new()
        .route("/users", post(users::create_user).get(users::list_users))
        .route(
            "/users/{user_id}",
            get(users::get_user)
                .patch(users::update_user)
                .delete(users::delete_user),
        )
        .route("/users/{user_id}/disable", post(users::disable_user))
        .route("/users/{user_id}/enable", post(users::enable_user))
        .route("/users/{user_id}/tokens", post(users::create_user_token))
        .route(
            "/organizations",
            post(organizations::create_organization).get(organizations::list_organizations),
        )
        .route(
            "/organizations/{organization_id}",
            get(organizations::get_organization),
        )
        .route(
            "/organizations/{organization_id}/members",
            post(organizations::add_member).get(organizations::list_members),
        )
        .route(
            "/organizations/{organization_id}/members/{user_id}",
            delete(organizations::remove_member),
        )
        .route("/audit-events", get(audit::list_audit_events))
        .route(
            "/sign-in",
            get(browser::sign_in_form).post(browser::sign_in),
        )
        .route("/sign-out", post(browser::sign_out))
        .route("/me", get(browser::get_me))
        .route(
            "/me/active-organization",
            post(browser::set_active_organization),
        )
        .route("/.well-known/jwks.json", get(browser::jwks))
        .route("/static/tessera.css", get(browser::stylesheet))
}

/// Session tickets, the agent-session browser API, the vanity pages and the console sign-in.
fn ticket_routes() -> Router<AppState> {
    Router::new()
        .route(
            "/session/tickets",
            post(tickets::create_backend_session_ticket),
        )
        .route(
            "/session/tickets/exchange",
            post(tickets::exchange_session_ticket),
        )
        .route(
            "/console/api/deployments/{deployment_id}/session/tickets",
            post(tickets::create_session_ticket),
        )
        .route("/console/api/sign-in", post(console::console_sign_in))
        .route("/console/api/sign-out", post(console::console_sign_out))
        .route("/agent/session", get(agent::get_agent_session))
        .route(
            "/agent/contexts",
            get(agent::list_agent_contexts).post(agent::create_agent_context),
        )
        .route(
            "/agent/contexts/{context_id}",
            patch(agent::update_agent_context).delete(agent::delete_agent_context),
        )
        .route(
            "/agent/contexts/{context_id}/messages",
            get(agent::list_agent_context_messages).post(agent::send_agent_context_message),
        )
        .route(
            "/agent/contexts/{context_id}/cancel",
            post(agent::cancel_agent_context),
        )
        .route(
            "/agent/contexts/{context_id}/actions/{action_id}",
            post(agent::resolve_agent_context_action),
        )
        .route(
            "/agent/contexts/{context_id}/stream",
            get(agent::stream_agent_context),
        )
        .route("/vanity/agents", get(vanity::vanity_agents))
        .route("/static/tessera.js", get(vanity::client_js))
        .route("/static/vanity-agents.js", get(vanity::vanity_agents_js))
        .route("/static/sign-in-ticket.js", get(vanity::sign_in_ticket_js))
}

async fn route_not_found() -> ApiError {
    ApiError::new(ErrorCode::RouteNotFound, "no operation exists at this path")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        "this path does not support this HTTP method",
    )
}

/// A panicking handler answers 500 (and is logged) instead of dropping the connection.
async fn catch_panic(req: Request, next: Next) -> Response {
    match AssertUnwindSafe(next.run(req)).catch_unwind().await {
        Ok(response) => response,
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_owned());
            ApiError::internal(anyhow::anyhow!("handler panicked: {message}")).into_response()
        }
    }
}
