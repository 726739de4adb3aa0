//! `session.json`: what a session is, its status, counters and usage totals.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{Usage, is_zero};
use crate::time::Timestamp;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SessionStatus {
    Active,
    Paused,
    Closed,
}

impl SessionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            SessionStatus::Active => "active",
            SessionStatus::Paused => "paused",
            SessionStatus::Closed => "closed",
        }
    }
}

/// How much detail a session's event log records (ARCHITECTURE.md §3).
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    clap::ValueEnum,
    schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum EventsPreset {
    /// No text chunks, no continuation trace, tool arguments summarised.
    Minimal,
    /// Text chunks, tool arguments summarised to 100 characters.
    #[default]
    Standard,
    /// Text chunks, continuation trace, full tool arguments up to 500 characters.
    Debug,
}

impl EventsPreset {
    pub fn streams_chunks(self) -> bool {
        self != EventsPreset::Minimal
    }

    pub fn traces_continuation(self) -> bool {
        self == EventsPreset::Debug
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Counters {
    /// User messages accepted by `send`.
    pub messages: u64,
    /// Executions started (a resumed execution counts once).
    pub executions: u64,
    pub completed: u64,
    pub failed: u64,
    pub cancelled: u64,
    pub stopped: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SessionMeta {
    #[serde(default = "super::format_version")]
    pub v: u32,
    pub id: Uuid,
    pub agent: String,
    #[serde(default)]
    pub title: Option<String>,
    pub status: SessionStatus,
    #[serde(default)]
    pub events: EventsPreset,
    /// Overrides of the agent definition given with `session new --set key=value`,
    /// by dotted key (`limits.max_steps`), applied at every execution.
    #[serde(default)]
    pub config: BTreeMap<String, serde_json::Value>,
    /// Hash of the agent definition when the session was created.
    pub agent_hash: String,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    #[serde(default)]
    pub counters: Counters,
    /// Tokens used by every execution of the session.
    #[serde(default)]
    pub usage: Usage,
    /// The highest inbox `seq` handed out; the next message gets a larger one.
    #[serde(default)]
    pub last_message_seq: u64,
    #[serde(default)]
    pub last_execution: Option<Uuid>,
    /// Tokens added to `session_max_tokens` by `send --continue --raise-budget`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub extra_session_tokens: u64,
    /// The priced cost of every execution, when `agentq.toml` has prices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_usd: Option<f64>,
}

impl SessionMeta {
    /// Adds a settled execution to the counters and totals (not the message count:
    /// a message may take several executions).
    pub fn add_execution(&mut self, exec: &super::execution::Execution) {
        use super::execution::ExecStatus;
        self.counters.executions += 1;
        match exec.status {
            ExecStatus::Completed => self.counters.completed += 1,
            ExecStatus::Failed => self.counters.failed += 1,
            ExecStatus::Cancelled => self.counters.cancelled += 1,
            ExecStatus::Stopped => self.counters.stopped += 1,
            ExecStatus::Pending | ExecStatus::Running => {}
        }
        self.usage.add(exec.usage);
        if let Some(cost) = exec.cost_usd {
            self.cost_usd = Some(self.cost_usd.unwrap_or(0.0) + cost);
        }
        self.last_execution = Some(exec.id);
    }

    /// Counts the settled executions again, from their records (oldest first), as the
    /// worker counted them: each message once its first execution settled.
    pub fn recount(&mut self, records: &[super::execution::Execution]) {
        self.counters = Counters::default();
        self.usage = Usage::default();
        self.cost_usd = None;
        self.last_execution = None;
        let mut messages = std::collections::HashSet::new();
        for exec in records.iter().filter(|e| e.status.is_terminal()) {
            if messages.insert(exec.message_id) {
                self.counters.messages += 1;
            }
            self.last_message_seq = self.last_message_seq.max(exec.message_seq);
            self.add_execution(exec);
        }
    }
}
