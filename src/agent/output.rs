//! Structured answers (`[output]`): the final answer must be one JSON value valid
//! against the agent's JSON Schema.
//!
//! Validation comes first in [`Loop::verify`], before any check runs. An answer that
//! is not JSON, or not valid, goes back to the model as one user line (tagged
//! [`Feedback::Output`]) listing what is wrong, and the loop goes on within the
//! execution's limits; the answers sent back count against `max_check_rounds`, with
//! their own counter: the answer of the last allowed round fails the execution
//! (`invalid_output`) instead. A valid answer's JSON completes the execution as its
//! `structured` value. Like a round of checks, a rejected answer leaves nothing in the
//! state until its feedback line and its count are checkpointed together.

use std::ops::ControlFlow;

use serde_json::Value;

use super::{Loop, LoopEnd, Outcome};
use crate::domain::execution::StopReason;
use crate::domain::transcript::{Feedback, Message};

/// Validation errors the model is told of, at most: the first ones say enough.
const MAX_ERRORS: usize = 10;

impl Loop<'_> {
    /// Validates `answer` against the agent's `[output]` schema. `Ok(value)`: the
    /// answer passes (`None` without a schema); `Err(flow)`: it went back to the model
    /// (`Continue`), or the execution ends (`Break`).
    pub(super) fn check_output(
        &mut self,
        answer: &str,
    ) -> anyhow::Result<Result<Option<Value>, ControlFlow<LoopEnd>>> {
        let Some(output) = &self.run.def.output else {
            return Ok(Ok(None));
        };
        let step = self.current()?.steps;
        let validator = match output.validator() {
            Ok(validator) => validator,
            Err(why) => {
                return Ok(Err(ControlFlow::Break(LoopEnd::Settled(Outcome::failed(
                    StopReason::InvalidDefinition,
                    format!("[output] schema {why}"),
                    Some(format!("step {step}")),
                )))));
            }
        };
        let problems = match parse_answer(answer) {
            Ok(value) => {
                let problems = validation_errors(&validator, &value);
                if problems.is_empty() {
                    return Ok(Ok(Some(value)));
                }
                problems
            }
            Err(why) => vec![why],
        };
        let round = self.current()?.invalid_answers + 1;
        let max_rounds = self.run.def.limits.max_check_rounds;
        if round >= max_rounds {
            let message = format!(
                "the answer was still not valid against the [output] schema after {} (max_check_rounds): {}",
                crate::plural::count(u64::from(round), "answer", "answers"),
                problems.join("; ")
            );
            return Ok(Err(ControlFlow::Break(LoopEnd::Settled(Outcome::failed(
                StopReason::InvalidOutput,
                message,
                Some(format!("step {step}")),
            )))));
        }
        let content = feedback(&problems, round, max_rounds);
        let mut line = self.transcript_line(step, Message::User { content });
        line.feedback = Some(Feedback::Output);
        self.history.push(line.message.clone());
        super::current_mut(self.state)?.invalid_answers = round;
        // The line carries the state: the answer is counted if and only if the model
        // is told of it.
        self.sink.checkpoint(vec![line], self.state)?;
        Ok(Err(ControlFlow::Continue(())))
    }
}

/// The answer as one JSON value: trimmed, and out of one surrounding Markdown code
/// fence (```` ```json ````) if the model wrote one.
pub(crate) fn parse_answer(answer: &str) -> Result<Value, String> {
    let text = answer.trim();
    let text = unfence(text).unwrap_or(text);
    serde_json::from_str(text).map_err(|e| format!("the answer is not one JSON value: {e}"))
}

/// The inside of a text that is one fenced code block (its info string, such as
/// `json`, dropped); `None` if it is not one.
fn unfence(text: &str) -> Option<&str> {
    let inner = text.strip_prefix("```")?.strip_suffix("```")?;
    let (info, body) = inner.split_once('\n')?;
    (!info.contains('`')).then_some(body.trim())
}

/// What is wrong with `value`, one line per error (the first [`MAX_ERRORS`]).
fn validation_errors(validator: &jsonschema::Validator, value: &Value) -> Vec<String> {
    let mut errors: Vec<String> = Vec::new();
    let mut more = 0;
    for error in validator.iter_errors(value) {
        if errors.len() < MAX_ERRORS {
            let path = error.instance_path().to_string();
            let at = if path.is_empty() { "/" } else { &path };
            errors.push(format!("at {at}: {error}"));
        } else {
            more += 1;
        }
    }
    if more > 0 {
        errors.push(format!(
            "and {}",
            crate::plural::count(more, "more error", "more errors")
        ));
    }
    errors
}

/// The user line that sends an invalid answer back to the model.
fn feedback(problems: &[String], round: u32, max_rounds: u32) -> String {
    let list: Vec<String> = problems.iter().map(|p| format!("- {p}")).collect();
    format!(
        "Your answer is not accepted yet (answer {round} of {max_rounds}): it must be one JSON value valid against the output schema.\n\n{}\n\nAnswer again with only the corrected JSON value.",
        list.join("\n")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_answer_is_one_json_value_maybe_in_one_fence() {
        assert_eq!(parse_answer(" {\"a\": 1}\n").unwrap(), json!({"a": 1}));
        assert_eq!(
            parse_answer("```json\n{\"a\": 1}\n```").unwrap(),
            json!({"a": 1})
        );
        assert_eq!(parse_answer("```\n[1, 2]\n```").unwrap(), json!([1, 2]));
        assert!(parse_answer("{\"a\": 1} {\"b\": 2}").is_err());
        assert!(parse_answer("Here it is: {\"a\": 1}").is_err());
    }

    #[test]
    fn errors_name_where_and_what_at_most_ten() {
        let schema =
            json!({"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]});
        let validator = jsonschema::validator_for(&schema).unwrap();
        let errors = validation_errors(&validator, &json!({"n": "x"}));
        assert_eq!(errors, ["at /n: \"x\" is not of type \"integer\""]);
        let errors = validation_errors(&validator, &json!([]));
        assert_eq!(errors, ["at /: [] is not of type \"object\""]);
        let many = json!({"type": "array", "items": {"type": "string"}});
        let validator = jsonschema::validator_for(&many).unwrap();
        let errors = validation_errors(&validator, &json!([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]));
        assert_eq!(errors.len(), 11);
        assert_eq!(errors[10], "and 2 more errors");
    }
}
