//! Human approval of tool calls (`approval = "required"`): what waits, what was decided,
//! and by whom, as the state, the execution record, the inbox and the event log keep it.
//!
//! A call waits in the state ([`Awaiting`], in the open step), so the loop that resumes
//! the step finds it; the record carries a copy with the call's arguments
//! ([`AwaitingApproval`]) for the commands that show it. A decision is an inbox entry
//! of kind `approve` or `deny` naming the execution, the step and the call
//! ([`DecisionRef`]): the gate runs a call only when such an entry names it.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::inbox::{EntryKind, InboxEntry};
use crate::time::Timestamp;

/// The call of the open step that waits for a person, as the state keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Awaiting {
    pub tool_call_id: String,
    pub tool_name: String,
    /// When the execution first parked on it (a re-park keeps it).
    pub requested_at: Timestamp,
    /// When `[limits] approval_timeout` denies it, fixed at the first park.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deny_at: Option<Timestamp>,
    /// The highest inbox seq the gate had seen when it parked: only a newer entry (a
    /// decision, a cancel, a message) is a reason to claim the session again.
    pub seen_through: u64,
    /// Parked, but `approval.requested` is not in the log yet: the state names the
    /// call before the event is written (whoever acts on the event finds the call
    /// waiting), so a worker killed in between leaves this set, and the next park
    /// writes the event. Absent (false) once it is written, as in states from before
    /// this field.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unreported: bool,
}

/// The waiting call as the execution record (and `session show`, `status`) shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct AwaitingApproval {
    pub tool_call_id: String,
    pub tool_name: String,
    /// The MCP server the tool comes from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    /// The step the call belongs to: a decision names it with the call.
    pub step: u32,
    pub arguments: serde_json::Value,
    pub requested_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deny_at: Option<Timestamp>,
}

/// Who decided: an audit record (the user and uid of the process that queued the
/// decision), not an authentication. `approval_timeout` when no one did in time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct DecidedBy {
    pub user: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
}

impl DecidedBy {
    /// The decision `[limits] approval_timeout` makes.
    pub fn timeout() -> DecidedBy {
        DecidedBy {
            user: "approval_timeout".to_owned(),
            uid: None,
        }
    }
}

/// What the inbox says of a waiting call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// No decision names it; `seen_through` is the highest inbox seq looked at.
    Pending {
        seen_through: u64,
    },
    Approved {
        by: DecidedBy,
    },
    Denied {
        by: DecidedBy,
        reason: Option<String>,
    },
}

/// Which call a decision entry is about, read from its metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecisionRef {
    pub execution_id: Uuid,
    pub step: u32,
    pub tool_call_id: String,
}

/// Metadata keys of an `approve` / `deny` entry.
pub const EXECUTION_KEY: &str = "execution_id";
pub const STEP_KEY: &str = "step";
pub const CALL_KEY: &str = "tool_call_id";
pub const BY_KEY: &str = "by";

impl DecisionRef {
    /// The idempotency key of a decision: one per call, so a second `approve` is a
    /// no-op and a `deny` after an `approve` is told it came too late.
    pub fn key(&self) -> String {
        format!(
            "approval:{}:{}:{}",
            self.execution_id, self.step, self.tool_call_id
        )
    }

    /// The metadata of the entry that decides this call.
    pub fn metadata(&self, by: &DecidedBy) -> serde_json::Map<String, serde_json::Value> {
        let mut metadata = serde_json::Map::new();
        metadata.insert(EXECUTION_KEY.into(), self.execution_id.to_string().into());
        metadata.insert(STEP_KEY.into(), self.step.into());
        metadata.insert(CALL_KEY.into(), self.tool_call_id.clone().into());
        metadata.insert(BY_KEY.into(), serde_json::to_value(by).unwrap_or_default());
        metadata
    }
}

impl InboxEntry {
    /// Whether this is an `approve` or `deny` entry.
    pub fn is_decision(&self) -> bool {
        matches!(self.kind, EntryKind::Approve | EntryKind::Deny)
    }

    /// The call an `approve` or `deny` entry decides.
    pub fn decides(&self) -> Option<DecisionRef> {
        if !self.is_decision() {
            return None;
        }
        let text = |key: &str| self.metadata.get(key).and_then(|v| v.as_str());
        Some(DecisionRef {
            execution_id: Uuid::try_parse(text(EXECUTION_KEY)?).ok()?,
            step: u32::try_from(self.metadata.get(STEP_KEY)?.as_u64()?).ok()?,
            tool_call_id: text(CALL_KEY)?.to_owned(),
        })
    }

    /// Who queued a decision entry (unknown for one that does not say).
    pub fn decided_by(&self) -> DecidedBy {
        self.metadata
            .get(BY_KEY)
            .and_then(|by| serde_json::from_value(by.clone()).ok())
            .unwrap_or_else(|| DecidedBy {
                user: "unknown".to_owned(),
                uid: None,
            })
    }

    /// What a decision entry decides.
    pub fn decision(&self) -> Option<Decision> {
        let by = self.decided_by();
        match self.kind {
            EntryKind::Approve => Some(Decision::Approved { by }),
            EntryKind::Deny => Some(Decision::Denied {
                by,
                reason: Some(self.content.clone()).filter(|r| !r.trim().is_empty()),
            }),
            _ => None,
        }
    }
}

/// The decision for `call` among `entries` (any order): the first queued wins.
pub fn decision_in<'a>(
    entries: impl Iterator<Item = &'a InboxEntry>,
    call: &DecisionRef,
) -> Option<Decision> {
    entries
        .filter(|entry| entry.decides().as_ref() == Some(call))
        .min_by_key(|entry| entry.seq)
        .and_then(InboxEntry::decision)
}

/// `approval.requested`: the execution parked on a call, with everything a person
/// needs to decide (the arguments whole, up to [`ARGUMENTS_CAP`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ApprovalRequested {
    pub tool_call_id: String,
    pub tool_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    pub step: u32,
    pub arguments: serde_json::Value,
    /// The arguments were longer than [`ARGUMENTS_CAP`]: `arguments` holds their text,
    /// cut.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub arguments_truncated: bool,
    pub requested_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deny_at: Option<Timestamp>,
}

/// Bytes of a call's arguments `approval.requested` carries whole.
pub const ARGUMENTS_CAP: usize = 64 * 1024;

/// `approval.decided`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ApprovalDecided {
    pub execution_id: Uuid,
    pub tool_call_id: String,
    pub decision: Verdict,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub by: DecidedBy,
}

/// What a person (or the timeout) said of a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Approved,
    Denied,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Approved => "approved",
            Verdict::Denied => "denied",
        }
    }

    /// The inbox entry that records it.
    pub fn kind(self) -> EntryKind {
        match self {
            Verdict::Approved => EntryKind::Approve,
            Verdict::Denied => EntryKind::Deny,
        }
    }
}

impl ApprovalDecided {
    /// The event that records a decision entry queued.
    pub fn of_entry(entry: &InboxEntry) -> ApprovalDecided {
        let call = entry.decides();
        ApprovalDecided {
            execution_id: call.as_ref().map_or(Uuid::nil(), |c| c.execution_id),
            tool_call_id: call.map(|c| c.tool_call_id).unwrap_or_default(),
            decision: if entry.kind == EntryKind::Approve {
                Verdict::Approved
            } else {
                Verdict::Denied
            },
            reason: Some(entry.content.clone()).filter(|r| !r.trim().is_empty()),
            by: entry.decided_by(),
        }
    }
}

/// The arguments as `approval.requested` carries them: whole, or their text cut at
/// [`ARGUMENTS_CAP`] (and `true`).
pub fn capped_arguments(arguments: &serde_json::Value) -> (serde_json::Value, bool) {
    let text = arguments.to_string();
    if text.len() <= ARGUMENTS_CAP {
        return (arguments.clone(), false);
    }
    let mut end = ARGUMENTS_CAP;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    (serde_json::Value::String(text[..end].to_owned()), true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(kind: EntryKind, seq: u64, call: &DecisionRef, by: &str) -> InboxEntry {
        InboxEntry {
            id: Uuid::now_v7(),
            seq,
            kind,
            content: "too risky".to_owned(),
            metadata: call.metadata(&DecidedBy {
                user: by.to_owned(),
                uid: Some(1000),
            }),
            key: Some(call.key()),
            created_at: Timestamp(0),
            attempts: 0,
        }
    }

    #[test]
    fn a_decision_names_its_execution_step_and_call_and_the_first_one_wins() {
        let call = DecisionRef {
            execution_id: Uuid::now_v7(),
            step: 2,
            tool_call_id: "call_2_1".to_owned(),
        };
        let same_id_other_step = DecisionRef {
            step: 3,
            ..call.clone()
        };
        let entries = [
            entry(EntryKind::Approve, 9, &same_id_other_step, "eve"),
            entry(EntryKind::Deny, 7, &call, "ann"),
            entry(EntryKind::Approve, 8, &call, "bob"),
        ];
        assert_eq!(entries[1].decides(), Some(call.clone()));
        assert_eq!(
            decision_in(entries.iter(), &call),
            Some(Decision::Denied {
                by: DecidedBy {
                    user: "ann".to_owned(),
                    uid: Some(1000)
                },
                reason: Some("too risky".to_owned())
            })
        );
        let other = DecisionRef {
            tool_call_id: "call_2_2".to_owned(),
            ..call
        };
        assert_eq!(decision_in(entries.iter(), &other), None);
    }
}
