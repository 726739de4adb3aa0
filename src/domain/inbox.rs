//! An inbox entry: one message waiting for a worker, one file in `<session>/inbox/`.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::time::Timestamp;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    /// A message for the agent: one execution.
    User,
    /// A request to cancel the running execution.
    Cancel,
    /// A person approved a call that waits for approval (`agentq approve`).
    Approve,
    /// A person denied it (`agentq deny`); `content` is the reason.
    Deny,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InboxEntry {
    pub id: Uuid,
    /// Order within the session: entries run in ascending `seq`.
    pub seq: u64,
    pub kind: EntryKind,
    pub content: String,
    #[serde(default)]
    pub metadata: serde_json::Map<String, serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    pub created_at: Timestamp,
    /// Executions already attempted for this entry before it was (re-)queued.
    #[serde(default)]
    pub attempts: u32,
}

/// `metadata.continue = true` marks an entry of `send --continue`: no new text, the
/// agent carries on from where the last execution stopped.
pub const CONTINUE_KEY: &str = "continue";

/// `metadata.retry_of = "<execution id>"` marks an entry of `agentq retry`: it names the
/// failed execution whose task the entry queues again.
pub const RETRY_OF_KEY: &str = "retry_of";

impl InboxEntry {
    pub fn is_continue(&self) -> bool {
        self.metadata
            .get(CONTINUE_KEY)
            .and_then(serde_json::Value::as_bool)
            == Some(true)
    }

    /// The failed execution an entry of `agentq retry` queues again.
    pub fn retry_of(&self) -> Option<Uuid> {
        self.metadata
            .get(RETRY_OF_KEY)
            .and_then(|v| v.as_str())
            .and_then(|id| Uuid::try_parse(id).ok())
    }

    /// The file name: zero-padded `seq` first, so a sorted listing is the run order.
    pub fn file_name(&self) -> String {
        format!("{:012}-{}.json", self.seq, self.id)
    }
}
