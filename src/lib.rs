//! agentq: a command-line job runner for LLM agents whose whole state lives in files.
//!
//! The binary is a thin shell over this library; the layout follows the architecture:
//! `domain` (data types, no I/O), `store` (the files), `validate` (the checks
//! `agentq.toml` and agent definitions share), `config` (`agentq.toml`), `definition`
//! (agent definitions), `provider` (models), `tools`, `agent` (the loop), `worker`,
//! `render`, `commands`.
//! Shared by several of them, each in a module of its own: `text` (the shortening and
//! neutralising every one of them shows text through), `output` (where commands
//! print), `follow` (following one message's execution, for `send --wait`, `run` and
//! `watch`) and `history` (which task each execution worked on, for `retry` and
//! `send --continue`).

/// `eprintln!` without its panic. std's panics when stderr is closed or full (`2>&-`
/// is quiet, but a closed pipe or `2>/dev/full` is not), and the panic then fails to
/// print too: exit 101. With stderr gone there is no one left to tell, so the line is
/// dropped. Defined before the modules, so it is the `eprintln!` of the whole crate;
/// the binary imports it (`use agentq::eprintln`).
#[macro_export]
macro_rules! eprintln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

pub(crate) mod agent;
pub mod cli;
pub mod commands;
pub(crate) mod config;
pub(crate) mod definition;
pub mod domain;
pub mod error;
pub(crate) mod follow;
pub(crate) mod history;
pub mod home;
pub mod ids;
pub mod mcp;
pub mod output;
pub(crate) mod plural;
pub(crate) mod provider;
pub mod render;
pub mod store;
pub mod text;
pub mod time;
pub mod tools;
pub(crate) mod validate;
pub mod worker;

/// What the benchmarks measure below the interface: the file store's fsync counters
/// and its write primitives, timed on their own. Not part of the library's surface.
#[doc(hidden)]
pub mod bench {
    pub use crate::store::file::events::{LogReader, parse_line};
    pub use crate::store::file::fs::{Durable, FSYNC_NANOS, FSYNCS, UnsyncedSwaps};
    pub use crate::store::file::transcript;
}
