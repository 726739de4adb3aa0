//! The continuation decision: after every step, whether to run another, and if not,
//! why. Every check is recorded, so the debug preset can trace each evaluation.

use std::time::Duration;

use crate::config::Price;
use crate::definition::{AgentDef, ToolErrorPolicy};
use crate::domain::Usage;
use crate::domain::event::Evaluation;
use crate::domain::execution::StopReason;
use crate::domain::state::CurrentExecution;
use crate::time::Timestamp;

/// The limits in force for one execution: the definition's, with the session's raises.
#[derive(Debug, Clone, PartialEq)]
pub struct Budgets {
    pub max_steps: u32,
    pub max_tokens: Option<u64>,
    /// Over the whole session, including what `send --raise-budget` added.
    pub session_max_tokens: Option<u64>,
    pub timeout: Option<Duration>,
    pub max_cost_usd: Option<f64>,
    /// The model's price, when `agentq.toml` has one.
    pub price: Option<Price>,
    pub on_tool_error: ToolErrorPolicy,
    pub max_consecutive_errors: u32,
}

impl Budgets {
    pub fn from_def(def: &AgentDef, extra_session_tokens: u64, price: Option<Price>) -> Budgets {
        let limits = &def.limits;
        Budgets {
            max_steps: limits.max_steps,
            max_tokens: limits.max_tokens,
            session_max_tokens: limits
                .session_max_tokens
                .map(|max| max.saturating_add(extra_session_tokens)),
            timeout: limits.timeout,
            max_cost_usd: limits.max_cost_usd,
            price,
            on_tool_error: limits.on_tool_error,
            max_consecutive_errors: limits.max_consecutive_errors,
        }
    }

    /// The wall-clock moment the execution runs out of time.
    pub fn deadline(&self, started_at: Timestamp) -> Option<Timestamp> {
        self.timeout.map(|t| {
            Timestamp(
                started_at
                    .0
                    .saturating_add(i64::try_from(t.as_millis()).unwrap_or(i64::MAX)),
            )
        })
    }

    pub fn cost(&self, usage: Usage) -> Option<f64> {
        self.price.map(|p| p.cost(usage))
    }
}

/// A limit already reached before a step, so no model call is made: a resumed
/// execution at its step limit, or a session whose token budget earlier executions
/// spent.
pub fn exhausted(
    budgets: &Budgets,
    current: &CurrentExecution,
    session_before: Usage,
) -> Option<StopReason> {
    let mut session = session_before;
    session.add(current.usage);
    if current.steps >= budgets.max_steps {
        Some(StopReason::StepsLimit)
    } else if budgets
        .max_tokens
        .is_some_and(|max| current.usage.total >= max)
        || budgets
            .session_max_tokens
            .is_some_and(|max| session.total >= max)
    {
        Some(StopReason::TokenLimit)
    } else if matches!((budgets.cost(current.usage), budgets.max_cost_usd), (Some(c), Some(max)) if c >= max)
    {
        Some(StopReason::CostLimit)
    } else {
        None
    }
}

/// What the step did, as far as continuing is concerned.
pub struct StepFacts<'a> {
    pub step: u32,
    pub tool_calls: usize,
    /// Tool errors of the step, and the last error message.
    pub errors: u32,
    pub last_error: Option<&'a str>,
}

pub struct Decision {
    /// `None`: run another step.
    pub stop_reason: Option<StopReason>,
    /// Why, for an error stop.
    pub error: Option<String>,
    pub evaluations: Vec<Evaluation>,
}

/// Evaluates every check in order; the first that fails decides.
pub fn evaluate(
    budgets: &Budgets,
    current: &CurrentExecution,
    session_before: Usage,
    facts: &StepFacts<'_>,
    now: Timestamp,
) -> Decision {
    let policy_stop = budgets.on_tool_error == ToolErrorPolicy::Stop && facts.errors > 0;
    let checks: Vec<Check> = step_checks(budgets, current, facts, policy_stop)
        .into_iter()
        .chain(limit_checks(
            budgets,
            current,
            session_before,
            facts.step,
            now,
        ))
        .collect();
    let stop_reason = checks.iter().find(|c| c.stop).map(|c| c.reason);
    let error = match stop_reason {
        Some(StopReason::Error) if policy_stop => Some(format!(
            "a tool failed and on_tool_error is \"stop\": {}",
            facts.last_error.unwrap_or("")
        )),
        Some(StopReason::Error) => Some(format!(
            "{} steps in a row had all their tool calls fail (max_consecutive_errors); the last error: {}",
            current.failed_steps_in_a_row,
            facts.last_error.unwrap_or("")
        )),
        _ => None,
    };
    Decision {
        stop_reason,
        error,
        evaluations: checks.into_iter().map(Check::into_evaluation).collect(),
    }
}

/// One check of the continuation decision.
struct Check {
    name: &'static str,
    /// The check failed: the execution stops, for `reason`.
    stop: bool,
    detail: String,
    reason: StopReason,
}

impl Check {
    fn into_evaluation(self) -> Evaluation {
        Evaluation {
            check: self.name.to_owned(),
            passed: !self.stop,
            detail: self.detail,
        }
    }
}

/// What the step itself says: the model answered, or its tool errors end the
/// execution (`policy_stop`: on the first error, as `on_tool_error = "stop"` asks).
fn step_checks(
    budgets: &Budgets,
    current: &CurrentExecution,
    facts: &StepFacts<'_>,
    policy_stop: bool,
) -> [Check; 3] {
    // Counted in steps, not calls: a model that makes four failing calls in one step
    // sees all four errors before it is judged.
    let too_many = current.failed_steps_in_a_row >= budgets.max_consecutive_errors;
    [
        Check {
            name: "answered",
            stop: facts.tool_calls == 0,
            detail: crate::plural::count(facts.tool_calls as u64, "tool call", "tool calls"),
            reason: StopReason::Completed,
        },
        Check {
            name: "on_tool_error",
            stop: policy_stop,
            detail: format!(
                "{} tool errors, policy {:?}",
                facts.errors, budgets.on_tool_error
            )
            .to_lowercase(),
            reason: StopReason::Error,
        },
        Check {
            name: "max_consecutive_errors",
            stop: too_many,
            detail: format!(
                "{} of {}",
                current.failed_steps_in_a_row, budgets.max_consecutive_errors
            ),
            reason: StopReason::Error,
        },
    ]
}

/// The limits: steps, tokens (of the execution and of the session), cost and time.
fn limit_checks(
    budgets: &Budgets,
    current: &CurrentExecution,
    session_before: Usage,
    step: u32,
    now: Timestamp,
) -> [Check; 5] {
    let usage = current.usage;
    let mut session = session_before;
    session.add(usage);
    // A wait for approval is not the execution's time.
    let elapsed = now
        .millis_since(current.started_at)
        .saturating_sub(current.parked_ms);
    let cost = budgets.cost(usage);
    [
        Check {
            name: "max_steps",
            stop: step >= budgets.max_steps,
            detail: format!("step {step} of {}", budgets.max_steps),
            reason: StopReason::StepsLimit,
        },
        Check {
            name: "max_tokens",
            stop: budgets.max_tokens.is_some_and(|max| usage.total >= max),
            detail: limit_detail(usage.total, budgets.max_tokens),
            reason: StopReason::TokenLimit,
        },
        Check {
            name: "session_max_tokens",
            stop: budgets
                .session_max_tokens
                .is_some_and(|max| session.total >= max),
            detail: limit_detail(session.total, budgets.session_max_tokens),
            reason: StopReason::TokenLimit,
        },
        Check {
            name: "max_cost_usd",
            stop: matches!((cost, budgets.max_cost_usd), (Some(c), Some(max)) if c >= max),
            detail: format!(
                "${:.4} of {}",
                cost.unwrap_or(0.0),
                budgets
                    .max_cost_usd
                    .map_or("no limit".to_owned(), |m| format!("${m}"))
            ),
            reason: StopReason::CostLimit,
        },
        Check {
            name: "timeout",
            stop: budgets
                .timeout
                .is_some_and(|t| u128::from(elapsed) >= t.as_millis()),
            detail: format!(
                "{elapsed} ms elapsed of {:?}",
                budgets.timeout.map(|t| t.as_millis())
            ),
            reason: StopReason::TimeLimit,
        },
    ]
}

/// The tokens used against a token limit, for the continuation trace.
fn limit_detail(used: u64, max: Option<u64>) -> String {
    let used = crate::plural::count(used, "token", "tokens");
    match max {
        Some(max) => format!("{used} of {max}"),
        None => format!("{used}, no limit"),
    }
}
