//! agentq: a command-line job runner for LLM agents whose state lives in a store
//! (files under the home by default).
//!
//! The binary is a thin shell over this library. The layers, from the bottom: `domain`
//! (data types, no I/O), `store` (the store interface and the file store), `validate`
//! (the checks `agentq.toml` and agent definitions share), `config` (`agentq.toml`),
//! `definition` (agent definitions), `provider` (models), `mcp` and `tools`, `agent`
//! (the loop), `worker` (scheduling sessions and driving their executions), `render`,
//! `commands`. Shared by several of them, each in a module of its own: `text` (the
//! shortening and neutralising every one of them shows text through), `output` (where
//! commands print), `follow` (following one message's execution, for `send --wait`,
//! `run` and `watch`) and `history` (which task each execution worked on, for `retry`
//! and `send --continue`).
//!
//! # What is public, and why
//! Only what something outside the crate uses; everything else is `pub(crate)`.
//! - `cli`, `commands`, `output`, `error`, [`eprintln!`]: the binary parses the command
//!   line, runs the command and renders its error.
//! - `store`, `worker`, `home`, `domain`, `ids`, `time`: the benchmarks run a worker
//!   against a store in-process, and the tests read what it wrote.
//! - `mcp`, `tools`, `render`, `text`: the tests of the MCP client (and the test MCP
//!   server under `examples/`), of the renderers and of text neutralising.
//! - `bench` (hidden): what the benchmarks time below the interface; not an API.

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
    pub use crate::store::file::fs::{Durable, FSYNC_NANOS, FSYNCS};

    use crate::domain::state::AgentState;
    use crate::domain::transcript::TranscriptLine;
    use crate::store::file::fs::UnsyncedSwaps;
    use crate::store::{FileStore, SessionDir};

    /// A session's checkpoints as the file store writes them, timed without a worker.
    pub struct Checkpoints {
        dir: SessionDir,
        unsynced: UnsyncedSwaps,
    }

    impl Checkpoints {
        pub fn open(store: &FileStore, id: &str) -> anyhow::Result<Checkpoints> {
            Ok(Checkpoints {
                dir: store.resolve_dir(id)?,
                unsynced: UnsyncedSwaps::default(),
            })
        }

        /// A step's checkpoint, as the owner writes it after the first.
        pub fn checkpoint(
            &mut self,
            lines: Vec<TranscriptLine>,
            state: &mut AgentState,
        ) -> std::io::Result<()> {
            self.dir.checkpoint(lines, state, false, &mut self.unsynced)
        }

        /// Appends lines to the transcript without measuring them (a long history).
        pub fn grow(
            &self,
            lines: &[TranscriptLine],
            state: &mut AgentState,
        ) -> std::io::Result<()> {
            state.transcript = crate::store::file::transcript::append(
                &self.dir.transcript_path(),
                state.transcript,
                lines,
                Durable::Now,
            )?;
            Ok(())
        }
    }
}
