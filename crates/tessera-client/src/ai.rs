//! Runtime objects under `/ai`: actors, agents and actor projects.

use tessera_api::ops;
use tessera_api::types::{
    Actor, ActorList, ActorProject, ActorProjectList, Agent, AgentList, CreateActorProjectParams,
    CreateActorProjectRequest, CreateActorRequest, CreateAgentRequest, DeletedAgent,
    ListActorProjectsParams, ListActorsParams, ListAgentsParams, LookupActorParams,
    LookupActorResponse, UpdateAgentRequest,
};

use crate::client::Client;
use crate::request::Request;

/// Runtime objects: [`Client::ai`].
#[derive(Debug, Clone, Copy)]
pub struct Ai<'a> {
    client: &'a Client,
}

impl<'a> Ai<'a> {
    pub(crate) fn new(client: &'a Client) -> Self {
        Ai { client }
    }

    /// Actors: who agents work for.
    pub fn actors(&self) -> Actors<'a> {
        Actors {
            client: self.client,
        }
    }

    /// Agents.
    pub fn agents(&self) -> Agents<'a> {
        Agents {
            client: self.client,
        }
    }

    /// Actor projects: one actor bound to one agent.
    pub fn actor_projects(&self) -> ActorProjects<'a> {
        ActorProjects {
            client: self.client,
        }
    }

    /// Tools agents attach, and the internal tool catalogue.
    pub fn tools(&self) -> crate::tools::Tools<'a> {
        crate::tools::Tools {
            client: self.client,
        }
    }

    /// Third-party toolkits: enabled per deployment, connected per actor.
    pub fn toolkits(&self) -> crate::toolkits::Toolkits<'a> {
        crate::toolkits::Toolkits {
            client: self.client,
        }
    }

    /// Threads, their messages, runs and event stream.
    pub fn threads(&self) -> crate::threads::Threads<'a> {
        crate::threads::Threads::new(self.client)
    }
}

/// Actors: [`Ai::actors`].
#[derive(Debug, Clone, Copy)]
pub struct Actors<'a> {
    client: &'a Client,
}

impl<'a> Actors<'a> {
    /// `createActor`. Fails with `actor_exists` when the `(subject_type, external_key)` pair is
    /// taken.
    pub fn create_actor(&self, body: CreateActorRequest) -> Request<'a, Actor> {
        Request::operation(self.client, ops::CREATE_ACTOR, &[]).json(body)
    }

    /// `listActors`: one page, oldest first.
    pub fn list_actors(&self, params: ListActorsParams) -> Request<'a, ActorList> {
        Request::operation(self.client, ops::LIST_ACTORS, &[]).query(params)
    }

    /// `lookupActor`: the actor with this `(subject_type, external_key)`; `actor` is `None`
    /// when there is none (not an error).
    pub fn lookup_actor(&self, params: LookupActorParams) -> Request<'a, LookupActorResponse> {
        Request::operation(self.client, ops::LOOKUP_ACTOR, &[]).query(params)
    }

    /// `getActor`.
    pub fn get_actor(&self, actor_id: impl AsRef<str>) -> Request<'a, Actor> {
        let actor_id = actor_id.as_ref();
        Request::operation(self.client, ops::GET_ACTOR, &[("actor_id", actor_id)])
    }
}

/// Agents: [`Ai::agents`].
#[derive(Debug, Clone, Copy)]
pub struct Agents<'a> {
    client: &'a Client,
}

impl<'a> Agents<'a> {
    /// `createAiAgent`.
    pub fn create_agent(&self, body: CreateAgentRequest) -> Request<'a, Agent> {
        Request::operation(self.client, ops::CREATE_AI_AGENT, &[]).json(body)
    }

    /// `listAiAgents`: one page, oldest first.
    pub fn list_agents(&self, params: ListAgentsParams) -> Request<'a, AgentList> {
        Request::operation(self.client, ops::LIST_AI_AGENTS, &[]).query(params)
    }

    /// `getAiAgentById`.
    pub fn get_agent(&self, agent_id: impl AsRef<str>) -> Request<'a, Agent> {
        let agent_id = agent_id.as_ref();
        Request::operation(
            self.client,
            ops::GET_AI_AGENT_BY_ID,
            &[("agent_id", agent_id)],
        )
    }

    /// `updateAiAgent`: absent fields stay as they are.
    pub fn update_agent(
        &self,
        agent_id: impl AsRef<str>,
        body: UpdateAgentRequest,
    ) -> Request<'a, Agent> {
        let agent_id = agent_id.as_ref();
        Request::operation(self.client, ops::UPDATE_AI_AGENT, &[("agent_id", agent_id)]).json(body)
    }

    /// `deleteAiAgent`. Fails with `agent_in_use` while an active project uses the agent.
    pub fn delete_agent(&self, agent_id: impl AsRef<str>) -> Request<'a, DeletedAgent> {
        let agent_id = agent_id.as_ref();
        Request::operation(self.client, ops::DELETE_AI_AGENT, &[("agent_id", agent_id)])
    }
}

/// Actor projects: [`Ai::actor_projects`].
#[derive(Debug, Clone, Copy)]
pub struct ActorProjects<'a> {
    pub(crate) client: &'a Client,
}

impl<'a> ActorProjects<'a> {
    /// `createActorProjectFlat`: a project of actor `actor_id` (sent as `?actor_id=`).
    pub fn create_actor_project(
        &self,
        actor_id: impl AsRef<str>,
        body: CreateActorProjectRequest,
    ) -> Request<'a, ActorProject> {
        let params = CreateActorProjectParams {
            actor_id: actor_id.as_ref().to_owned(),
        };
        Request::operation(self.client, ops::CREATE_ACTOR_PROJECT_FLAT, &[])
            .query(params)
            .json(body)
    }

    /// `getActorProject`.
    pub fn get_actor_project(&self, project_id: impl AsRef<str>) -> Request<'a, ActorProject> {
        let project_id = project_id.as_ref();
        Request::operation(
            self.client,
            ops::GET_ACTOR_PROJECT,
            &[("project_id", project_id)],
        )
    }

    /// `listActorProjects`: one page, oldest first.
    pub fn list_actor_projects(
        &self,
        params: ListActorProjectsParams,
    ) -> Request<'a, ActorProjectList> {
        Request::operation(self.client, ops::LIST_ACTOR_PROJECTS, &[]).query(params)
    }

    /// `archiveActorProject`.
    pub fn archive_actor_project(&self, project_id: impl AsRef<str>) -> Request<'a, ActorProject> {
        let project_id = project_id.as_ref();
        Request::operation(
            self.client,
            ops::ARCHIVE_ACTOR_PROJECT,
            &[("project_id", project_id)],
        )
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests fail loudly.
mod tests {
    use super::*;
    use tessera_api::types::{CreateSecretKeyRequest, PageParams};

    /// Every operation of the table has exactly one SDK method, with the table's method and path.
    #[test]
    fn every_operation_has_a_method() {
        let client = Client::new("http://example.invalid", "k");
        let ai = client.ai();
        let actor = CreateActorRequest {
            subject_type: "user".into(),
            external_key: "e".into(),
            display_name: None,
            metadata: None,
        };
        let lookup = LookupActorParams {
            subject_type: "user".into(),
            external_key: "e".into(),
        };
        let project = CreateActorProjectRequest {
            agent_id: "x".into(),
            name: "p".into(),
        };
        fn seen<T>(request: Request<'_, T>) -> (String, String) {
            (request.method().to_string(), request.path().to_owned())
        }
        let mut sdk = vec![
            seen(client.deployments().current()),
            seen(client.deployments().update_current(&Default::default())),
            seen(
                client
                    .secret_keys()
                    .create(CreateSecretKeyRequest::default()),
            ),
            seen(client.secret_keys().list(PageParams::default())),
            seen(client.secret_keys().revoke("x")),
            seen(ai.actors().create_actor(actor)),
            seen(ai.actors().list_actors(ListActorsParams::default())),
            seen(ai.actors().lookup_actor(lookup)),
            seen(ai.actors().get_actor("x")),
            seen(ai.agents().create_agent(CreateAgentRequest::default())),
            seen(ai.agents().list_agents(ListAgentsParams::default())),
            seen(ai.agents().get_agent("x")),
            seen(ai.agents().update_agent("x", UpdateAgentRequest::default())),
            seen(ai.agents().delete_agent("x")),
            seen(
                ai.tools().create_tool(
                    serde_json::from_value(serde_json::json!({
                        "name": "t",
                        "configuration": {"type": "PlatformEvent", "event_type": "e"}
                    }))
                    .unwrap(),
                ),
            ),
            seen(ai.tools().list_tools(Default::default())),
            seen(ai.tools().list_internal_tools()),
            seen(ai.tools().get_tool("x")),
            seen(ai.tools().update_tool("x", Default::default())),
            seen(ai.tools().delete_tool("x")),
            seen(ai.actor_projects().create_actor_project("x", project)),
            seen(
                ai.actor_projects()
                    .list_actor_projects(ListActorProjectsParams::default()),
            ),
            seen(ai.actor_projects().get_actor_project("x")),
            seen(ai.actor_projects().archive_actor_project("x")),
            seen(ai.actor_projects().create_board_item(
                "x",
                tessera_api::types::CreateBoardItemRequest {
                    title: "t".into(),
                    description: "d".into(),
                    schedule: None,
                    assigned_thread_id: None,
                    capability_tags: None,
                },
            )),
            seen(
                ai.actor_projects()
                    .list_board_items("x", Default::default()),
            ),
            seen(ai.actor_projects().get_board_item("x", "x")),
            seen(
                ai.actor_projects()
                    .update_board_item("x", "x", Default::default()),
            ),
            seen(ai.actor_projects().archive_board_item("x", "x")),
            seen(ai.actor_projects().cancel_board_item("x", "x")),
            seen(ai.actor_projects().delegate_task(
                "x",
                tessera_api::types::DelegateProjectTaskRequest {
                    target_lane_thread_id: "x".into(),
                    title: "t".into(),
                    description: None,
                    capability_tags: None,
                },
            )),
            seen(
                ai.actor_projects()
                    .list_board_item_filesystem("x", "x", None),
            ),
            seen(
                ai.actor_projects()
                    .get_board_item_filesystem_file("x", "x", "/a"),
            ),
            seen(ai.actor_projects().upload_board_item_filesystem_file(
                "x",
                "x",
                "/a",
                vec![],
                "text/plain",
            )),
            seen(
                ai.actor_projects()
                    .download_board_item_filesystem_file("x", "x", "/a"),
            ),
            seen(ai.threads().create_thread("x", Default::default())),
            seen(ai.threads().get_thread("x")),
            seen(ai.threads().list_messages("x", Default::default())),
            seen(ai.threads().send_message("x", "hi")),
            seen(ai.threads().get_run("x", "x")),
            ("GET".to_owned(), ai.threads().stream("x").path().to_owned()),
        ];
        let users = client.users();
        let orgs = client.organizations();
        let me = client.me();
        sdk.extend([
            seen(users.create_user(Default::default())),
            seen(users.list_users(Default::default())),
            seen(users.get_user("x")),
            seen(users.update_user("x", Default::default())),
            seen(users.delete_user("x")),
            seen(users.disable_user("x")),
            seen(users.enable_user("x")),
            seen(users.create_user_token("x", Default::default())),
            seen(orgs.create_organization(Default::default())),
            seen(orgs.list_organizations(PageParams::default())),
            seen(orgs.get_organization("x")),
            seen(orgs.add_member(
                "x",
                tessera_api::types::AddOrganizationMemberRequest {
                    user_id: "u".into(),
                    role: tessera_api::types::OrganizationRole::Member,
                },
            )),
            seen(orgs.list_members("x", PageParams::default())),
            seen(orgs.remove_member("x", "x")),
            seen(client.audit_events().list_audit_events(Default::default())),
            seen(me.sign_in(Default::default())),
            seen(me.sign_out()),
            seen(me.get_me()),
            seen(me.set_active_organization("x")),
            seen(me.jwks()),
        ]);
        let tickets = client.session_tickets();
        let console = client.console();
        let agent = client.agent();
        sdk.extend([
            seen(tickets.create_backend_session_ticket(Default::default())),
            seen(tickets.exchange("x")),
            seen(console.sign_in(Default::default())),
            seen(console.sign_out()),
            seen(console.create_session_ticket("x", Default::default())),
            seen(agent.get_session()),
            seen(agent.list_contexts(Default::default())),
            seen(agent.create_context(Default::default())),
            seen(agent.update_context("x", "t")),
            seen(agent.delete_context("x")),
            seen(agent.list_messages("x", Default::default())),
            seen(agent.send_message("x", "hi")),
            seen(agent.cancel("x")),
            seen(agent.resolve_action("x", "x", true)),
            ("GET".to_owned(), agent.stream("x").path().to_owned()),
        ]);
        let toolkits = client.ai().toolkits();
        sdk.extend([
            seen(toolkits.enable_toolkit(Default::default())),
            seen(toolkits.list_toolkits()),
            seen(toolkits.disable_toolkit("x")),
            seen(toolkits.list_actor_toolkits("x")),
            seen(toolkits.connect_actor_toolkit("x", "x", Default::default())),
            seen(toolkits.disconnect_actor_toolkit("x", "x")),
        ]);
        let sessions = client.sessions();
        sdk.extend([
            seen(sessions.ask("x", Default::default())),
            seen(sessions.get_response("x")),
            seen(sessions.close("x")),
            seen(sessions.update_variables("x", Default::default())),
            seen(sessions.resolve_action("x", "x", true)),
            seen(sessions.usage(Default::default())),
        ]);
        let mut table: Vec<(String, String)> = ops::ALL
            .iter()
            .map(|op| {
                let path = op.fill_path(|_| Some("x")).unwrap();
                (op.method.to_owned(), path)
            })
            .collect();
        sdk.sort();
        table.sort();
        assert_eq!(sdk, table);
    }
}
