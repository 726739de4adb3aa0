//! An execution: one run of the agent loop for one user message
//! (`<session>/executions/<id>.json`).

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::Usage;
use crate::error::exit;
use crate::time::Timestamp;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ExecStatus {
    Pending,
    Running,
    Completed,
    Failed,
    Cancelled,
    Stopped,
}

impl ExecStatus {
    pub fn is_terminal(self) -> bool {
        !matches!(self, ExecStatus::Pending | ExecStatus::Running)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ExecStatus::Pending => "pending",
            ExecStatus::Running => "running",
            ExecStatus::Completed => "completed",
            ExecStatus::Failed => "failed",
            ExecStatus::Cancelled => "cancelled",
            ExecStatus::Stopped => "stopped",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    Completed,
    StepsLimit,
    TokenLimit,
    TimeLimit,
    /// `max_cost_usd` reached.
    CostLimit,
    Error,
    UserRequested,
    ProviderUnavailable,
    TooManyAttempts,
    /// The execution could not start: its agent definition (with the session's
    /// overrides) is gone or invalid, or `agentq.toml` is (exit 2, as for the command
    /// line that names such an agent).
    InvalidDefinition,
    /// `[[checks]]` still failed after `max_check_rounds` rounds.
    ChecksFailed,
    /// The answer was still not JSON valid against `[output]`'s schema after
    /// `max_check_rounds` answers.
    InvalidOutput,
}

impl StopReason {
    pub fn as_str(self) -> &'static str {
        match self {
            StopReason::Completed => "completed",
            StopReason::StepsLimit => "steps_limit",
            StopReason::TokenLimit => "token_limit",
            StopReason::TimeLimit => "time_limit",
            StopReason::CostLimit => "cost_limit",
            StopReason::Error => "error",
            StopReason::UserRequested => "user_requested",
            StopReason::ProviderUnavailable => "provider_unavailable",
            StopReason::TooManyAttempts => "too_many_attempts",
            StopReason::InvalidDefinition => "invalid_definition",
            StopReason::ChecksFailed => "checks_failed",
            StopReason::InvalidOutput => "invalid_output",
        }
    }
}

/// The exit code of a settled execution (ARCHITECTURE.md §7).
pub fn exit_code(status: ExecStatus, reason: Option<StopReason>) -> u8 {
    match (status, reason) {
        (ExecStatus::Completed, _) => exit::COMPLETED,
        (ExecStatus::Stopped, _) => exit::STOPPED,
        (ExecStatus::Cancelled, _) => exit::CANCELLED,
        (ExecStatus::Failed, Some(StopReason::ProviderUnavailable)) => exit::UNAVAILABLE,
        (ExecStatus::Failed, Some(StopReason::InvalidDefinition)) => exit::USAGE,
        _ => exit::FAILED,
    }
}

/// Which process ran (or runs) an execution.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct WorkerInfo {
    pub pid: u32,
    pub host: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ErrorInfo {
    pub message: String,
    /// Where it happened, for example `step 2, tool read_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
}

/// How a `[[checks]]` entry ended in the last round an execution ran its checks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct CheckResult {
    pub name: String,
    pub success: bool,
    /// `None` when it did not exit by itself (killed at its timeout, by a signal) or
    /// could not start.
    pub exit_code: Option<i32>,
    pub duration_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Execution {
    #[serde(default = "super::format_version")]
    pub v: u32,
    pub id: Uuid,
    pub session_id: Uuid,
    pub message_id: Uuid,
    pub message_seq: u64,
    pub status: ExecStatus,
    #[serde(default)]
    pub stop_reason: Option<StopReason>,
    /// How many times a worker started or resumed this execution.
    pub attempts: u32,
    pub steps: u32,
    #[serde(default)]
    pub usage: Usage,
    pub started_at: Timestamp,
    #[serde(default)]
    pub finished_at: Option<Timestamp>,
    #[serde(default)]
    pub duration_ms: Option<u64>,
    #[serde(default)]
    pub response: Option<String>,
    #[serde(default)]
    pub error: Option<ErrorInfo>,
    #[serde(default)]
    pub exit_code: Option<u8>,
    /// US dollars, when `agentq.toml` prices the model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_usd: Option<f64>,
    pub worker: WorkerInfo,
    /// The failed execution this one retries (`agentq retry`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_of: Option<Uuid>,
    /// Left at a checkpoint by a worker that shut down cleanly; resuming it is not a
    /// new attempt.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub suspended: bool,
    /// The agent's `[[checks]]` as the last round left them; empty without checks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<CheckResult>,
    /// The answer as JSON, when the agent has an `[output]` schema and it completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub structured: Option<serde_json::Value>,
    /// The call the execution is parked on, waiting for `agentq approve` or `deny`
    /// (the record is then `running` and `suspended`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub awaiting_approval: Option<super::approval::AwaitingApproval>,
}
impl Execution {
    /// The execution a worker begins for an inbox entry: running, its attempt counted.
    pub fn for_entry(
        entry: &super::inbox::InboxEntry,
        id: Uuid,
        session_id: Uuid,
        worker: WorkerInfo,
        now: Timestamp,
    ) -> Execution {
        Execution {
            retry_of: entry.retry_of(),
            ..Execution::running(
                id,
                session_id,
                (entry.id, entry.seq),
                entry.attempts + 1,
                now,
                worker,
            )
        }
    }

    /// The execution in progress as the state names it, for one whose record was not
    /// written yet (a record is first written when the execution is resumed, suspended
    /// or settled): running, for `worker` (the session's owner, when it is known).
    pub fn running_from(
        current: &super::state::CurrentExecution,
        session_id: Uuid,
        worker: Option<WorkerInfo>,
    ) -> Execution {
        let worker = worker.unwrap_or_else(|| WorkerInfo {
            pid: 0,
            host: "unknown".to_owned(),
        });
        Execution {
            steps: current.steps,
            usage: current.usage,
            ..Execution::running(
                current.execution_id,
                session_id,
                (current.message_id, current.message_seq),
                current.attempts,
                current.started_at,
                worker,
            )
        }
    }

    /// A running execution of `message` (its id and seq), with no step taken yet.
    fn running(
        id: Uuid,
        session_id: Uuid,
        (message_id, message_seq): (Uuid, u64),
        attempts: u32,
        started_at: Timestamp,
        worker: WorkerInfo,
    ) -> Execution {
        Execution {
            v: super::FORMAT_VERSION,
            id,
            session_id,
            message_id,
            message_seq,
            status: ExecStatus::Running,
            stop_reason: None,
            attempts,
            steps: 0,
            usage: Usage::default(),
            started_at,
            finished_at: None,
            duration_ms: None,
            response: None,
            error: None,
            exit_code: None,
            cost_usd: None,
            worker,
            retry_of: None,
            suspended: false,
            checks: Vec::new(),
            structured: None,
            awaiting_approval: None,
        }
    }
}
