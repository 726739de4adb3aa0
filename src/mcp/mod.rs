//! MCP servers as tool sources (ARCHITECTURE §9): the client side of the Model Context
//! Protocol, through the official `rmcp` SDK, for the worker and `agents show`.
//!
//! What it owns: starting one server ([`Server::start`], a child process over stdio
//! or a streamable-HTTP endpoint), listing its tools once as [`McpTool`]s with the
//! names and schemas a model provider accepts, calling them, and stopping the server.
//! What it guarantees:
//! - nothing waits forever: the start (handshake and tool listing included) is bounded
//!   by `startup_timeout`, each call by `tool_timeout`, and a call gives up within
//!   ~10 ms of being stopped, telling the server with `notifications/cancelled`;
//! - a stdio server runs in a process group of its own, spawned through
//!   [`crate::tools::process`], so neither it nor anything it starts (`npx`, `uvx`
//!   and their children) outlives the [`Server`] or the worker process;
//! - whatever a server does (fails, crashes, floods its stderr, returns megabytes or
//!   images), a call ends in a bounded [`ToolOutput`](crate::tools::ToolOutput), with
//!   failures as error outputs naming the server.
//!
//! The pure parts (names, schemas, result conversion, stderr capping) live in their
//! own files, free of I/O; [`client`] holds the connection.

mod client;
mod names;
mod output;
mod schema;
pub mod tools;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

pub use crate::definition::Approval;
pub use client::{Server, StartError};
pub use names::exposed_name;
pub use schema::clean_schema;

/// Used when a server declares no `startup_timeout`.
pub const DEFAULT_STARTUP_TIMEOUT: Duration = Duration::from_secs(10);
/// Used when a server declares no `tool_timeout`.
pub const DEFAULT_TOOL_TIMEOUT: Duration = Duration::from_secs(60);

/// What the client needs to start one server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSpec {
    /// The `[mcp_servers.NAME]` key, `[A-Za-z0-9_-]+`.
    pub name: String,
    pub transport: Transport,
    pub startup_timeout: Duration,
    pub tool_timeout: Duration,
    /// Only these tools, if given.
    pub enabled_tools: Option<Vec<String>>,
    pub disabled_tools: Vec<String>,
    /// `approval = "required"`: every tool's calls wait for a person.
    pub approval: Approval,
    /// The tools (the server's names) whose calls wait for a person; each must be
    /// one the server lists, or the server does not start.
    pub approval_tools: Vec<String>,
}

impl ServerSpec {
    /// Whether calls of the server's tool `tool` (its own name) wait for a person.
    pub fn needs_approval(&self, tool: &str) -> bool {
        self.approval == Approval::Required || self.approval_tools.iter().any(|t| t == tool)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// A child process speaking JSON-RPC lines on its stdin and stdout.
    Stdio {
        command: String,
        args: Vec<String>,
        /// Exactly the child's environment (plus the session marker that
        /// [`crate::tools::process::prepare`] adds).
        env: BTreeMap<String, String>,
        /// Must exist.
        cwd: PathBuf,
    },
    /// A streamable-HTTP endpoint.
    Http {
        url: String,
        bearer_token: Option<String>,
        headers: BTreeMap<String, String>,
    },
}

/// One tool of a server, as the model sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct McpTool {
    pub server: String,
    /// The server's own name for it, used when calling it.
    pub name: String,
    /// `mcp__<server>__<tool>`: [`exposed_name`].
    pub exposed: String,
    /// The server's description, capped at 1024 characters.
    pub description: String,
    /// [`clean_schema`] of the server's input schema.
    pub input_schema: serde_json::Value,
    /// The server marks it read-only (`annotations.readOnlyHint`): only then may a
    /// resumed execution call it again, and only then may it run alongside other
    /// calls, unless it needs approval.
    pub read_only: bool,
    /// Its calls wait for a person (`approval` or `approval_tools` of its server).
    pub needs_approval: bool,
}

impl McpTool {
    /// The tool as offered to a model.
    pub fn spec(&self) -> crate::provider::ToolSpec {
        crate::provider::ToolSpec {
            name: self.exposed.clone(),
            description: self.description.clone(),
            parameters: self.input_schema.clone(),
        }
    }
}
