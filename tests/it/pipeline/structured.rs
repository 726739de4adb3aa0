//! Structured answers (`[output]`): an answer that is not JSON valid against the
//! agent's schema goes back to the model with what is wrong, a valid one completes the
//! execution with its JSON as `structured`, and one still invalid after
//! `max_check_rounds` answers fails with `invalid_output`. On both stores: validation
//! is events and checkpoints, nothing store-specific.

use serde_json::{Value, json};

use crate::it::*;

/// A triage agent whose scripted model answers in prose, then with JSON of the wrong
/// shape, then (in a Markdown fence) with the right one.
const TRIAGE_AGENT: &str = r#"
name = "triage"
[model]
provider = "scripted"
[[model.script]]
text = "The bug is serious, I would say severity 2."
[[model.script]]
text = '{"severity": "high", "labels": ["crash"]}'
[[model.script]]
text = """```json
{"severity": 2, "labels": ["crash", "linux"]}
```"""
[output]
schema = { type = "object", required = ["severity", "labels"], additionalProperties = false, properties = { severity = { type = "integer", minimum = 1, maximum = 4 }, labels = { type = "array", items = { type = "string" } } } }
"#;

/// An agent whose answer never fits its schema (kept in a file next to it).
const STUBBORN_AGENT: &str = r#"
name = "shapeless"
[model]
provider = "scripted"
[[model.script]]
text = '{"answer": 42}'
[output]
schema_file = "shapeless.schema.json"
"#;

const STUBBORN_SCHEMA: &str =
    r#"{"type": "object", "required": ["answer"], "properties": {"answer": {"type": "string"}}}"#;

fn output_feedback(env: &TestEnv, id: &str) -> Vec<String> {
    env.json(&["session", "messages", id, "--json"])
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["feedback"] == "output")
        .map(|m| {
            assert_eq!(m["role"], "user", "{m}");
            m["content"].as_str().unwrap().to_owned()
        })
        .collect()
}

#[test]
fn an_answer_not_valid_against_the_schema_goes_back_until_a_valid_one_completes() {
    let env = TestEnv::new();
    env.write_agent("triage", TRIAGE_AGENT);
    let out = env.run(&["run", "--agent", "triage", "triage issue 7", "--json"]);
    assert_eq!(code(&out), 0, "{}", describe(&out));
    let result: Value = serde_json::from_slice(&out.stdout).unwrap();
    let expected = json!({"severity": 2, "labels": ["crash", "linux"]});
    assert_eq!(result["status"], "completed", "{result}");
    assert_eq!(result["structured"], expected, "{result}");
    assert_eq!(result["steps"], 3);
    let id = result["session_id"].as_str().unwrap().to_owned();

    let completed = env.payloads(&id, "agent.message.completed");
    assert_eq!(completed.len(), 1);
    assert_eq!(completed[0]["structured"], expected);
    assert!(
        completed[0]["response"]
            .as_str()
            .unwrap()
            .starts_with("```json"),
        "the answer's text is kept as written"
    );
    assert_eq!(env.executions(&id)[0]["structured"], expected);
    assert_eq!(env.state(&id)["model_calls"], 3);

    // The model was told, each time, what was wrong.
    let feedback = output_feedback(&env, &id);
    assert_eq!(feedback.len(), 2, "{feedback:?}");
    assert!(
        feedback[0].contains("answer 1 of 3") && feedback[0].contains("not one JSON value"),
        "{}",
        feedback[0]
    );
    assert!(
        feedback[1].contains("answer 2 of 3")
            && feedback[1].contains("at /severity: \"high\" is not of type \"integer\""),
        "{}",
        feedback[1]
    );
    let messages = env.ok(&["session", "messages", &id]);
    assert!(
        messages.contains("output: Your answer is not accepted yet"),
        "{messages}"
    );

    // `send --wait --json` prints it too (the script starts over for a new message).
    let _worker = env.spawn_worker(&[]);
    let out = env.run(&["send", &id, "again", "--wait", "--json", "--timeout", "60s"]);
    assert_eq!(code(&out), 0, "{}", describe(&out));
    let again: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(again["structured"], expected, "{again}");
}

#[test]
fn an_answer_still_invalid_after_max_check_rounds_fails_with_invalid_output() {
    let env = TestEnv::new();
    env.write_agent("shapeless", STUBBORN_AGENT);
    std::fs::write(
        env.home().join("agents/shapeless.schema.json"),
        STUBBORN_SCHEMA,
    )
    .unwrap();
    let id = env.new_session("shapeless");
    env.send(&id, "answer");
    env.worker_once_exiting(1);

    let done = &env.finished(&id)[0];
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["stop_reason"], "invalid_output");
    assert_eq!(done["exit_code"], 1);
    let error = done["error"].as_str().unwrap();
    assert!(
        error.contains("after 3 answers") && error.contains("at /answer: 42 is not of type"),
        "{error}"
    );
    assert_eq!(env.state(&id)["model_calls"], 3, "no fourth model call");
    assert_eq!(
        output_feedback(&env, &id).len(),
        2,
        "the last answer is not sent back"
    );
    assert!(env.responses(&id).is_empty(), "no answer was accepted");
    let execution = &env.executions(&id)[0];
    assert_eq!(execution["stop_reason"], "invalid_output");
    assert!(execution.get("structured").is_none(), "{execution}");

    // `run --json` exits 1 with the reason; max_check_rounds = 1 fails at once.
    let once = env.ok(&[
        "session",
        "new",
        "--agent",
        "shapeless",
        "--set",
        "limits.max_check_rounds=1",
    ]);
    let out = env.run(&["run", "--session", once.trim(), "answer", "--json"]);
    assert_eq!(code(&out), 1, "{}", describe(&out));
    let result: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(result["stop_reason"], "invalid_output", "{result}");
    assert_eq!(result["steps"], 1);
    assert!(result.get("structured").is_none(), "{result}");
}
