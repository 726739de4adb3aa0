//! The data agentq keeps on disk and writes to its event log, as plain serde types.
//!
//! Nothing here does I/O: the store reads and writes these, the worker and the agent
//! loop change them. Field names are part of the on-disk contract (ARCHITECTURE.md §1-3):
//! changes are additive, and every file carries a version `v`.

pub mod event;
pub mod execution;
pub mod inbox;
pub mod session;
pub mod state;
pub mod transcript;

use serde::{Deserialize, Serialize};

/// Tokens counted by the provider (or estimated by the scripted one).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
pub struct Usage {
    pub input: u64,
    pub output: u64,
    pub total: u64,
}

impl Usage {
    pub fn new(input: u64, output: u64) -> Usage {
        Usage {
            input,
            output,
            total: input + output,
        }
    }

    pub fn add(&mut self, other: Usage) {
        self.input += other.input;
        self.output += other.output;
        self.total += other.total;
    }
}

/// The version written into every file and event of this format.
pub const FORMAT_VERSION: u32 = 1;

fn format_version() -> u32 {
    FORMAT_VERSION
}
