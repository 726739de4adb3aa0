//! Completion hooks waiting to be delivered (`[hooks] on_finish`), as the session's
//! state keeps them: each one a snapshot of its definition, taken when its execution
//! settled, so a hook runs as the agent was defined then, even if the file changed or
//! broke since. They sit in `state.json` (or the `state` column) from the write that
//! settles the execution until the hook is delivered or fails for good.
//!
//! A `url_env` hook keeps the variable's name, never its value: the URL is a secret,
//! read from the environment when the hook runs (ARCHITECTURE.md §1: no secret in a
//! file).

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::is_zero;

/// One hook of one settled execution, not delivered yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingHook {
    pub execution_id: Uuid,
    /// Its place in `[hooks] on_finish`, counted from 0 (events name the hook by it).
    pub index: u32,
    pub spec: HookSpec,
    /// Attempts started so far, counted before each starts: a worker that dies during
    /// one leaves it counted.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub attempts: u32,
}

/// What a hook does and with which limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookSpec {
    pub target: HookTarget,
    pub timeout_ms: u64,
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// A command's working directory, relative to the workspace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// The sandbox a command runs in: the agent's own, as for its declared commands.
    #[serde(default)]
    pub sandbox: HookSandbox,
}

/// Where a hook delivers the `execution.finished` line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum HookTarget {
    /// A program run with the line on its standard input.
    Command { argv: Vec<String> },
    /// A URL the line is POSTed to, written in the definition.
    Url { url: String },
    /// A URL read from this environment variable when the hook runs.
    UrlEnv { name: String },
}

impl HookTarget {
    /// `command` or `url`, as events say.
    pub fn kind(&self) -> &'static str {
        match self {
            HookTarget::Command { .. } => "command",
            HookTarget::Url { .. } | HookTarget::UrlEnv { .. } => "url",
        }
    }
}

/// `[tools] workspace`, `env`, `env_pass` and the variables the agent's key is read
/// from, as the execution had them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookSandbox {
    /// `session`, or a directory under the home.
    #[serde(default = "session")]
    pub workspace: String,
    /// `[tools] env = "clean"`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub clean_env: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env_pass: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub withheld: Vec<String>,
}

impl Default for HookSandbox {
    fn default() -> Self {
        HookSandbox {
            workspace: session(),
            clean_env: false,
            env_pass: Vec::new(),
            withheld: Vec::new(),
        }
    }
}

fn session() -> String {
    "session".to_owned()
}
