//! `state.json`: the agent's state between steps. Small on purpose: the history itself
//! lives in the transcript, and the state says how much of it is settled.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{Usage, is_zero};
use crate::time::Timestamp;

/// How much of `transcript.ndjson` belongs to settled steps. Lines past this point were
/// written by a step that never finished and are cut off before the next append.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TranscriptMark {
    pub lines: u64,
    pub bytes: u64,
}

/// The execution in progress, so a later worker can resume it after a crash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CurrentExecution {
    pub execution_id: Uuid,
    pub message_id: Uuid,
    /// The message's inbox `seq`. Messages run in `seq` order, so every user entry with
    /// a lower seq has settled: one found in the inbox again (its removal was lost with
    /// a power failure) is not run twice, and `send` never hands out a seq up to this.
    /// 0 in states written before agentq recorded it.
    #[serde(default)]
    pub message_seq: u64,
    /// The execution that settled before this one, whose totals `session.json` must
    /// already hold: how a worker tells that `session.json` fell behind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_execution: Option<Uuid>,
    /// Starts and resumes after a crash so far; also in the execution's record once
    /// it has one (a record is first written when the execution is resumed, suspended
    /// or settled).
    #[serde(default = "one")]
    pub attempts: u32,
    /// Steps settled so far; a resumed execution continues with the next one.
    pub steps: u32,
    pub usage: Usage,
    pub started_at: Timestamp,
    /// Steps in a row whose tool calls all failed, for `max_consecutive_errors`.
    /// (States written before agentq counted steps counted calls under the old name.)
    #[serde(default, alias = "consecutive_errors")]
    pub failed_steps_in_a_row: u32,
    /// Rounds of `[[checks]]` that failed and went back to the model, for
    /// `max_check_rounds`. Checkpointed with the feedback line that ends the round.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub failed_check_rounds: u32,
    /// Answers that were not valid against `[output]`'s schema and went back to the
    /// model, for `max_check_rounds`. Checkpointed with the feedback line.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub invalid_answers: u32,
    /// Milliseconds spent parked waiting for approvals that were decided: not counted
    /// against `[limits] timeout`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub parked_ms: u64,
    /// Step `steps + 1`, when the model's answer is in the transcript but its tool
    /// calls are not all answered yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_step: Option<OpenStep>,
}

/// A step whose answer is settled and whose tool calls are being run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenStep {
    pub finish_reason: Option<String>,
    pub usage: Usage,
    /// A side-effecting call that was started: if it has no result when the step is
    /// resumed, it is answered with an error rather than run again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_started: Option<String>,
    /// A call that waits for a person's approval (`approval = "required"`): the
    /// execution is parked on it until a decision is queued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub awaiting: Option<super::approval::Awaiting>,
}

/// How the model sees the transcript once it outgrew the context window: the first
/// `through` messages are replaced by `summary` (or, when summarising failed, dropped).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compaction {
    pub through: u64,
    #[serde(default)]
    pub summary: Option<String>,
}

/// One task of the agent's plan, kept by the `todo_write` tool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Todo {
    pub content: String,
    pub status: TodoStatus,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TodoStatus {
    Pending,
    InProgress,
    Completed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentState {
    #[serde(default = "super::format_version")]
    pub v: u32,
    pub transcript: TranscriptMark,
    /// Model calls made in this session so far; the scripted provider's cursor.
    #[serde(default)]
    pub model_calls: u64,
    #[serde(default)]
    pub current: Option<CurrentExecution>,
    /// Older turns replaced by a summary to fit the context window; the transcript
    /// itself keeps everything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compaction: Option<Compaction>,
    /// The agent's task list (`todo_write`), shown by `session show`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub todos: Vec<Todo>,
    /// Completion hooks of settled executions not delivered yet (`domain::hook`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hooks: Vec<super::hook::PendingHook>,
}

fn one() -> u32 {
    1
}

impl AgentState {
    /// The seq of the message last claimed (0 if none, or not recorded).
    pub fn claimed_seq(&self) -> u64 {
        self.current.as_ref().map_or(0, |c| c.message_seq)
    }

    /// Whether the session has moved past an inbox entry with this seq: a later message
    /// was claimed, so this one settled (or was consumed) before.
    pub fn has_moved_past(&self, seq: u64) -> bool {
        seq < self.claimed_seq()
    }
}

impl Default for AgentState {
    fn default() -> Self {
        AgentState {
            v: super::FORMAT_VERSION,
            transcript: TranscriptMark::default(),
            model_calls: 0,
            current: None,
            compaction: None,
            todos: Vec::new(),
            hooks: Vec::new(),
        }
    }
}
