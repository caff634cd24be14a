//! Tools under `/ai/tools`: records agents attach through `tool_ids`, and the catalogue of
//! internal tools.

use tessera_api::ops;
use tessera_api::types::{
    CreateToolRequest, DeletedTool, InternalToolList, ListToolsParams, Tool, ToolList,
    UpdateToolRequest,
};

use crate::client::Client;
use crate::request::Request;

/// Tools: [`crate::Ai::tools`].
#[derive(Debug, Clone, Copy)]
pub struct Tools<'a> {
    pub(crate) client: &'a Client,
}

impl<'a> Tools<'a> {
    /// `createAiTool`. Secrets in the configuration are sent once and never returned (the
    /// answer shows `{"set": true}`).
    pub fn create_tool(&self, body: CreateToolRequest) -> Request<'a, Tool> {
        Request::operation(self.client, ops::CREATE_AI_TOOL, &[]).json(body)
    }

    /// `listAiTools`: one page, oldest first.
    pub fn list_tools(&self, params: ListToolsParams) -> Request<'a, ToolList> {
        Request::operation(self.client, ops::LIST_AI_TOOLS, &[]).query(params)
    }

    /// `listInternalTools`: the internal tools every agent has, with their input schemas.
    pub fn list_internal_tools(&self) -> Request<'a, InternalToolList> {
        Request::operation(self.client, ops::LIST_INTERNAL_TOOLS, &[])
    }

    /// `getAiToolById`.
    pub fn get_tool(&self, tool_id: impl AsRef<str>) -> Request<'a, Tool> {
        let tool_id = tool_id.as_ref();
        Request::operation(self.client, ops::GET_AI_TOOL_BY_ID, &[("tool_id", tool_id)])
    }

    /// `updateAiTool`: absent fields stay; a configuration without its secret keeps the stored
    /// one.
    pub fn update_tool(
        &self,
        tool_id: impl AsRef<str>,
        body: UpdateToolRequest,
    ) -> Request<'a, Tool> {
        let tool_id = tool_id.as_ref();
        Request::operation(self.client, ops::UPDATE_AI_TOOL, &[("tool_id", tool_id)]).json(body)
    }

    /// `deleteAiTool`. Fails with `tool_in_use` while an agent attaches the tool.
    pub fn delete_tool(&self, tool_id: impl AsRef<str>) -> Request<'a, DeletedTool> {
        let tool_id = tool_id.as_ref();
        Request::operation(self.client, ops::DELETE_AI_TOOL, &[("tool_id", tool_id)])
    }
}
