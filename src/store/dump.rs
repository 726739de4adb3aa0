//! [`SessionDump`]: everything a session is, as plain data, for moving it from one
//! store to another (`agentq store copy`). One store's [`crate::store::Store::export`]
//! fills it from a consistent snapshot of the session, another's
//! [`crate::store::Store::import`] writes it with its own rules; nothing here does I/O.
//!
//! What makes a copy behave as the original: the documents as they are (meta, state,
//! execution records, inbox entries with their seqs), the settled transcript lines,
//! the idempotency keys, and the event log as its exact lines, each with its `seq`, so
//! `watch --json` prints the same bytes and the next event continues the numbering.

use uuid::Uuid;

use crate::domain::execution::{Execution, WorkerInfo};
use crate::domain::inbox::InboxEntry;
use crate::domain::session::SessionMeta;
use crate::domain::state::AgentState;
use crate::domain::transcript::TranscriptLine;

/// One session, whole.
#[derive(Debug, Clone)]
pub struct SessionDump {
    pub meta: SessionMeta,
    /// `state.json`. Its transcript mark counts the lines of [`SessionDump::transcript`];
    /// the importing store sets the mark to what it wrote them as.
    pub state: AgentState,
    /// The settled transcript lines (those the state's mark counts), in order.
    pub transcript: Vec<TranscriptLine>,
    /// The inbox entries waiting, in run order, with their seqs and keys.
    pub inbox: Vec<InboxEntry>,
    /// Every idempotency key and the message it queued first (settled ones included:
    /// a key keeps deduplicating after its message ran).
    pub keys: Vec<(String, Uuid)>,
    /// Every execution record, oldest first.
    pub executions: Vec<Execution>,
    /// The event log, oldest first.
    pub events: Vec<DumpedEvent>,
    /// The worker that last owned the session (`session show` names its host).
    pub last_owner: Option<WorkerInfo>,
}

/// One event as its log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DumpedEvent {
    pub seq: u64,
    /// Its `type`, for the stores that index by it.
    pub kind: String,
    /// The exact NDJSON line, without its newline.
    pub line: String,
}

impl SessionDump {
    pub fn id(&self) -> Uuid {
        self.meta.id
    }

    /// The seq of the last event: where the importing store's numbering goes on.
    pub fn last_seq(&self) -> u64 {
        self.events.last().map_or(0, |event| event.seq)
    }
}

/// The refusal to copy a session a worker owns (exit 75: once it is idle, the same
/// command works): its next writes would reach one side of the copy only.
pub(crate) fn owned(id: Uuid, worker: Option<&WorkerInfo>) -> crate::error::UserError {
    let by = worker.map_or_else(String::new, |w| {
        format!(
            " by worker {} on {}",
            w.pid,
            crate::text::one_line(&w.host, crate::text::FIELD_CAP)
        )
    });
    crate::error::UserError::unavailable(format!(
        "session {id} is being worked on{by}; a copy must not miss its next writes: copy it once it is idle (or the workers are stopped)"
    ))
}

/// The refusal to copy a session over one with the same id (exit 2): nothing is ever
/// overwritten.
pub(crate) fn exists(id: Uuid, store: &str) -> crate::error::UserError {
    crate::error::UserError::usage(format!(
        "session {id} already exists in {store}; nothing was copied over it: leave it out (name the others with --session) or remove it there first (`agentq --store … session rm {id}`)"
    ))
}
