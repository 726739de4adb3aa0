//! The data agentq keeps on disk and writes to its event log, as plain serde types.
//!
//! Nothing here does I/O: the store reads and writes these, the worker and the agent
//! loop change them. Field names are part of the on-disk contract (ARCHITECTURE.md §1-3):
//! changes are additive, and every file carries a version `v`.

pub mod approval;
pub mod event;
pub mod execution;
pub mod hook;
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
    /// Some of these tokens were estimated by agentq (about four bytes a token): the
    /// server reported no usage, or zero for an answer it did stream.
    #[serde(default, skip_serializing_if = "is_false")]
    pub estimated: bool,
}

fn is_false(value: &bool) -> bool {
    !value
}

/// For `skip_serializing_if`: a count still at zero.
fn is_zero<T: Default + PartialEq>(n: &T) -> bool {
    *n == T::default()
}

impl Usage {
    pub fn new(input: u64, output: u64) -> Usage {
        Usage {
            input,
            output,
            total: input + output,
            estimated: false,
        }
    }

    /// An estimate, for servers that report no usage.
    pub fn estimate(input: u64, output: u64) -> Usage {
        Usage {
            estimated: true,
            ..Usage::new(input, output)
        }
    }

    pub fn add(&mut self, other: Usage) {
        self.input += other.input;
        self.output += other.output;
        self.total += other.total;
        self.estimated |= other.estimated;
    }
}

/// The version written into every file and event of this format.
pub const FORMAT_VERSION: u32 = 1;

fn format_version() -> u32 {
    FORMAT_VERSION
}
