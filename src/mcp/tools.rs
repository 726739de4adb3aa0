//! The tools of an agent's MCP servers (`[tools] mcp`), as a toolbox asks for them
//! ([`ToolSource`]): the servers the worker started for the session, and those that
//! could not start, whose tools answer with why.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde_json::Value;

use super::{McpTool, Server};
use crate::provider::ToolSpec;
use crate::tools::{ToolOutput, ToolSource};

/// An agent's MCP servers, as one source of tools.
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

    /// The server and the tool a name the model calls stands for.
    fn find(&self, exposed: &str) -> Option<(&Arc<Server>, &McpTool)> {
        self.tools().find(|(_, tool)| tool.exposed == exposed)
    }

    /// Why a name of a server that did not start cannot be called.
    fn failed_server(&self, exposed: &str) -> Option<(&str, &str)> {
        self.failed
            .iter()
            .find(|(server, _)| exposed.starts_with(&format!("mcp__{server}__")))
            .map(|(server, why)| (server.as_str(), why.as_str()))
    }

    fn tools(&self) -> impl Iterator<Item = (&Arc<Server>, &McpTool)> + '_ {
        self.servers
            .iter()
            .flat_map(|server| server.tools().iter().map(move |tool| (server, tool)))
    }
}

impl ToolSource for McpTools {
    fn specs(&self) -> Vec<ToolSpec> {
        self.tools().map(|(_, tool)| tool.spec()).collect()
    }

    fn names(&self) -> Vec<String> {
        self.tools().map(|(_, tool)| tool.exposed.clone()).collect()
    }

    fn is_read_only(&self, exposed: &str) -> bool {
        self.find(exposed).is_some_and(|(_, tool)| tool.read_only)
    }

    fn needs_approval(&self, exposed: &str) -> bool {
        self.find(exposed)
            .is_some_and(|(_, tool)| tool.needs_approval)
    }

    fn server_of(&self, exposed: &str) -> Option<&str> {
        self.find(exposed)
            .map(|(_, tool)| tool.server.as_str())
            .or_else(|| self.failed_server(exposed).map(|(server, _)| server))
    }

    fn call<'a>(
        &'a self,
        exposed: &'a str,
        arguments: &'a Value,
        stop: &'a mut (dyn FnMut() -> bool + Send),
    ) -> Pin<Box<dyn Future<Output = Option<ToolOutput>> + Send + 'a>> {
        Box::pin(async move {
            if let Some((server, tool)) = self.find(exposed) {
                return Some(server.call(&tool.name, arguments.clone(), stop).await);
            }
            self.failed_server(exposed).map(|(server, why)| {
                ToolOutput::error(format!("the MCP server `{server}` is not available: {why}"))
            })
        })
    }
}
