//! The tools of an agent's MCP servers (`[tools] mcp`), as a toolbox holds them: the
//! servers the worker started for the session, and those that could not start, whose
//! tools answer with why.

use std::sync::Arc;

use serde_json::Value;

use super::ToolOutput;
use crate::mcp::{McpTool, Server};
use crate::provider::ToolSpec;

/// The MCP part of a toolbox.
#[derive(Default, Clone)]
pub struct McpTools {
    servers: Vec<Arc<Server>>,
    /// Servers that did not start, with the reason: a call of one of their tools is a
    /// tool error saying so (their tools are unknown, so any `mcp__<server>__…` is).
    failed: Vec<(String, String)>,
}

impl McpTools {
    pub fn new(servers: Vec<Arc<Server>>, failed: Vec<(String, String)>) -> McpTools {
        McpTools { servers, failed }
    }

    pub fn specs(&self) -> impl Iterator<Item = ToolSpec> + '_ {
        self.tools().map(|(_, tool)| tool.spec())
    }

    pub fn names(&self) -> impl Iterator<Item = String> + '_ {
        self.tools().map(|(_, tool)| tool.exposed.clone())
    }

    /// The server and the tool a name the model calls stands for.
    pub fn find(&self, exposed: &str) -> Option<(&Arc<Server>, &McpTool)> {
        self.tools().find(|(_, tool)| tool.exposed == exposed)
    }

    pub fn is_read_only(&self, exposed: &str) -> bool {
        self.find(exposed).is_some_and(|(_, tool)| tool.read_only)
    }

    /// The server a tool comes from, for events and `watch`.
    pub fn server_of(&self, exposed: &str) -> Option<&str> {
        self.find(exposed)
            .map(|(_, tool)| tool.server.as_str())
            .or_else(|| self.failed_server(exposed).map(|(server, _)| server))
    }

    /// Why a name of a server that did not start cannot be called.
    pub fn failed_server(&self, exposed: &str) -> Option<(&str, &str)> {
        self.failed
            .iter()
            .find(|(server, _)| exposed.starts_with(&format!("mcp__{server}__")))
            .map(|(server, why)| (server.as_str(), why.as_str()))
    }

    pub async fn call(
        &self,
        exposed: &str,
        arguments: &Value,
        stop: &mut (dyn FnMut() -> bool + Send),
    ) -> Option<ToolOutput> {
        if let Some((server, tool)) = self.find(exposed) {
            return Some(server.call(&tool.name, arguments.clone(), stop).await);
        }
        self.failed_server(exposed).map(|(server, why)| {
            ToolOutput::error(format!("the MCP server `{server}` is not available: {why}"))
        })
    }

    fn tools(&self) -> impl Iterator<Item = (&Arc<Server>, &McpTool)> + '_ {
        self.servers
            .iter()
            .flat_map(|server| server.tools().iter().map(move |tool| (server, tool)))
    }
}
