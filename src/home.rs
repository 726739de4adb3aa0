//! The home directory's own files: agent definitions and `agentq.toml`. They are files
//! on every host, whichever store keeps the sessions (ARCHITECTURE.md §8), deployed
//! like code.

use std::path::{Path, PathBuf};

/// A home directory, for what is read from it besides the sessions.
#[derive(Debug, Clone)]
pub struct Home {
    root: PathBuf,
}

impl Home {
    pub fn new(root: PathBuf) -> Home {
        Home { root }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `agents/`: one definition per agent.
    pub fn agents_dir(&self) -> PathBuf {
        self.root.join("agents")
    }

    /// `agentq.toml`: providers, prices, MCP servers, limits.
    pub fn config_path(&self) -> PathBuf {
        self.root.join("agentq.toml")
    }
}
