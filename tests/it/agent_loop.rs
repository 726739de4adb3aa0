//! The agent loop end to end (issue 4), through the real binary and the scripted
//! provider: every stop reason with its status and exit code, budgets that hold across
//! worker processes, `send --continue`, the file tools' confinement to the workspace
//! (the escape-attempt suite), declared command tools, context compaction with a
//! scripted summariser, costs, and resuming after a kill without re-running a tool.
//!
//! The scripted provider answers model call N of a session with `[[model.script]]`
//! entry N (the last repeats); a compaction summary is a model call too.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::*;

// ---------------------------------------------------------------------------------
// Helpers

/// Runs `agentq ARGS --json` (a `run`) and returns its exit code and result.
fn run_json(env: &TestEnv, args: &[&str]) -> (i32, Value) {
    let mut all = args.to_vec();
    all.push("--json");
    let out = env.run(&all);
    let result = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "agentq {all:?}: the result is not JSON ({e}):\n{}",
            describe(&out)
        )
    });
    (code(&out), result)
}

/// `agentq run --agent AGENT TEXT --json`.
fn run_agent(env: &TestEnv, agent: &str, text: &str) -> (i32, Value) {
    run_json(env, &["run", "--agent", agent, text])
}

fn session_of(result: &Value) -> String {
    result["session_id"]
        .as_str()
        .expect("session_id")
        .to_owned()
}

/// The only `execution.finished` of the session.
fn the_finish(env: &TestEnv, id: &str) -> Value {
    let done = env.finished(id);
    assert_eq!(done.len(), 1, "one settled execution: {done:?}");
    done[0].clone()
}

/// The transcript as `session messages --json` prints it.
fn transcript(env: &TestEnv, id: &str) -> Vec<Value> {
    env.json(&["session", "messages", id, "--json"])
        .as_array()
        .expect("a list of messages")
        .clone()
}

fn roles(lines: &[Value]) -> Vec<String> {
    lines
        .iter()
        .map(|l| l["role"].as_str().unwrap().to_owned())
        .collect()
}

fn tool_messages(env: &TestEnv, id: &str) -> Vec<Value> {
    transcript(env, id)
        .into_iter()
        .filter(|l| l["role"] == "tool")
        .collect()
}

/// The `agent.status` transitions of each execution, in the order of the log.
fn status_transitions(env: &TestEnv, id: &str) -> BTreeMap<String, Vec<(String, String)>> {
    let mut by_execution: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    for event in env.events_of(id, "agent.status") {
        let exec = event["execution_id"].as_str().unwrap().to_owned();
        by_execution.entry(exec).or_default().push((
            event["payload"]["previous_status"]
                .as_str()
                .unwrap()
                .to_owned(),
            event["payload"]["status"].as_str().unwrap().to_owned(),
        ));
    }
    by_execution
}

/// Every execution of the session went idle -> processing -> `last` once each.
fn assert_status_once_each(env: &TestEnv, id: &str, finals: &[&str]) {
    let transitions = status_transitions(env, id);
    let executions: Vec<String> = env
        .events_of(id, "execution.finished")
        .iter()
        .map(|e| e["execution_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(executions.len(), finals.len(), "{transitions:?}");
    for (exec, last) in executions.iter().zip(finals) {
        let pair = |a: &str, b: &str| (a.to_owned(), b.to_owned());
        assert_eq!(
            transitions.get(exec),
            Some(&vec![pair("idle", "processing"), pair("processing", last)]),
            "execution {exec}"
        );
    }
    assert_eq!(transitions.len(), finals.len(), "{transitions:?}");
}

fn workspace(env: &TestEnv, id: &str) -> PathBuf {
    env.session_dir(id).join("workspace")
}

/// A session of `agent`, with its workspace created (so a test can put files in it).
fn session_with_workspace(env: &TestEnv, agent: &str) -> (String, PathBuf) {
    let id = env.new_session(agent);
    let ws = workspace(env, &id);
    std::fs::create_dir_all(&ws).unwrap();
    (id, ws)
}

/// A TOML basic string holding `text` (JSON string escapes are valid TOML ones).
fn toml_str(text: &str) -> String {
    serde_json::to_string(text).unwrap()
}

fn count_lines(path: &Path) -> usize {
    std::fs::read_to_string(path).map_or(0, |t| t.lines().count())
}

// ---------------------------------------------------------------------------------
// Stop reasons, statuses and exit codes

/// Calls `list_dir` forever with a fixed usage per step, so token and cost limits
/// fall on a known step.
fn looping(name: &str, usage: (u64, u64), limits: &str) -> String {
    format!(
        r#"
name = "{name}"
[model]
provider = "scripted"
name = "m"
[[model.script]]
text = "again"
tool_calls = [{{ name = "list_dir", arguments = {{ path = "." }} }}]
usage = {{ input = {}, output = {} }}
[limits]
{limits}
[tools]
builtin = ["list_dir"]
"#,
        usage.0, usage.1
    )
}

#[test]
fn an_answer_without_tool_calls_completes_with_exit_0() {
    let env = TestEnv::new();
    let (exit, result) = run_agent(&env, "echo", "hello");
    assert_eq!(exit, 0, "{result}");
    assert_eq!(result["status"], "completed");
    assert_eq!(result["stop_reason"], "completed");
    assert_eq!(result["response"], "echo: hello");
    let id = session_of(&result);
    let done = the_finish(&env, &id);
    assert_eq!(done["exit_code"], 0);
    assert_eq!(done["steps"], 2);
    assert!(
        done.get("cost_usd").is_none_or(Value::is_null),
        "no price table, no cost: {done}"
    );
    assert_status_once_each(&env, &id, &["completed"]);
}

#[test]
fn max_steps_stops_with_steps_limit_and_exit_3() {
    let env = TestEnv::new();
    env.write_agent("loop", &looping("loop", (10, 5), "max_steps = 3"));
    let (exit, result) = run_agent(&env, "loop", "spin");
    assert_eq!(exit, 3, "{result}");
    assert_eq!(result["status"], "stopped");
    assert_eq!(result["stop_reason"], "steps_limit");
    assert_eq!(result["steps"], 3);
    let id = session_of(&result);
    let done = the_finish(&env, &id);
    assert_eq!(done["status"], "stopped");
    assert_eq!(done["stop_reason"], "steps_limit");
    assert_eq!(done["exit_code"], 3);
    assert_eq!(env.events_of(&id, "agent.step.started").len(), 3);
    assert_status_once_each(&env, &id, &["stopped"]);
}

#[test]
fn max_tokens_stops_with_token_limit_at_the_step_that_reaches_it() {
    let env = TestEnv::new();
    // 150 tokens a step: the third step brings the execution to 450 >= 400.
    env.write_agent(
        "tokens",
        &looping("tokens", (100, 50), "max_steps = 50\nmax_tokens = 400"),
    );
    let (exit, result) = run_agent(&env, "tokens", "spend");
    assert_eq!(exit, 3, "{result}");
    assert_eq!(result["status"], "stopped");
    assert_eq!(result["stop_reason"], "token_limit");
    assert_eq!(result["steps"], 3);
    let done = the_finish(&env, &session_of(&result));
    assert_eq!(done["exit_code"], 3);
    assert_eq!(done["usage"]["execution"]["total"], 450);
}

#[test]
fn session_max_tokens_stops_with_token_limit() {
    let env = TestEnv::new();
    env.write_agent(
        "session-tokens",
        &looping(
            "session-tokens",
            (100, 50),
            "max_steps = 50\nsession_max_tokens = 250",
        ),
    );
    let (exit, result) = run_agent(&env, "session-tokens", "spend");
    assert_eq!(exit, 3, "{result}");
    assert_eq!(result["status"], "stopped");
    assert_eq!(result["stop_reason"], "token_limit");
    assert_eq!(result["steps"], 2);
    let done = the_finish(&env, &session_of(&result));
    assert_eq!(done["usage"]["session"]["total"], 300);
}

#[test]
fn the_timeout_stops_a_step_that_outlasts_it_with_time_limit() {
    let env = TestEnv::new();
    // Forty words at 150 ms each: the step would stream for six seconds.
    env.write_agent(
        "timed",
        r#"
name = "timed"
[model]
provider = "scripted"
[[model.script]]
text = "w1 w2 w3 w4 w5 w6 w7 w8 w9 w10 w11 w12 w13 w14 w15 w16 w17 w18 w19 w20 w21 w22 w23 w24 w25 w26 w27 w28 w29 w30 w31 w32 w33 w34 w35 w36 w37 w38 w39 w40"
delay_ms = 150
[limits]
timeout = "500ms"
"#,
    );
    let started = Instant::now();
    let (exit, result) = run_agent(&env, "timed", "take long");
    let took = started.elapsed();
    assert_eq!(exit, 3, "{result}");
    assert_eq!(result["status"], "stopped");
    assert_eq!(result["stop_reason"], "time_limit");
    assert!(
        took < Duration::from_secs(4),
        "stopped at the deadline, not after the step: {took:?}"
    );
    let id = session_of(&result);
    let done = the_finish(&env, &id);
    assert_eq!(done["exit_code"], 3);
    assert!(done["duration_ms"].as_u64().unwrap() < 4000, "{done}");
    assert!(
        !env.events_of(&id, "agent.stream.chunk").is_empty(),
        "the step had begun"
    );
    assert_status_once_each(&env, &id, &["stopped"]);
}

#[test]
fn the_timeout_interrupts_a_long_command_with_time_limit() {
    let env = TestEnv::new();
    env.write_agent(
        "timed-command",
        r#"
name = "timed-command"
[model]
provider = "scripted"
[[model.script]]
text = "waiting"
tool_calls = [{ name = "wait", arguments = {} }]
[[model.script]]
text = "never reached"
[limits]
timeout = "500ms"
[[tools.command]]
name = "wait"
argv = ["sleep", "100.3141"]
timeout = "60s"
"#,
    );
    let started = Instant::now();
    let (exit, result) = run_agent(&env, "timed-command", "wait");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(exit, 3, "{result}");
    assert_eq!(result["stop_reason"], "time_limit");
    assert_no_process("sleep 100.3141");
}

#[test]
fn max_cost_usd_stops_with_cost_limit_and_costs_are_reported() {
    let env = TestEnv::new();
    // $1 per 1000 input tokens and $2 per 1000 output tokens: each step costs $2.
    std::fs::write(
        env.home().join("agentq.toml"),
        "[prices.\"m\"]\ninput_per_mtok = 1000.0\noutput_per_mtok = 2000.0\n",
    )
    .unwrap();
    env.write_agent(
        "pricey",
        &looping("pricey", (1000, 500), "max_steps = 50\nmax_cost_usd = 5.0"),
    );
    let (exit, result) = run_agent(&env, "pricey", "spend");
    assert_eq!(exit, 3, "{result}");
    assert_eq!(result["status"], "stopped");
    assert_eq!(result["stop_reason"], "cost_limit");
    assert_eq!(result["steps"], 3);
    let id = session_of(&result);
    let done = the_finish(&env, &id);
    assert_eq!(done["exit_code"], 3);
    assert_eq!(done["cost_usd"], json!({"execution": 6.0, "session": 6.0}));

    // A second execution adds to the session's cost; each execution has its own budget.
    let (exit, again) = run_json(&env, &["run", "--session", &id, "more"]);
    assert_eq!(exit, 3, "{again}");
    assert_eq!(again["stop_reason"], "cost_limit");
    let done = env.finished(&id);
    assert_eq!(
        done[1]["cost_usd"],
        json!({"execution": 6.0, "session": 12.0})
    );
    let show = env.json(&["session", "show", &id, "--json"]);
    assert_eq!(show["session"]["cost_usd"], 12.0);
    assert_eq!(show["last_execution"]["cost_usd"], 6.0);
    let plain = env.ok(&["session", "show", &id]);
    assert!(plain.contains("$12.0000"), "{plain}");
}

#[test]
fn a_priced_completed_execution_reports_its_cost() {
    let env = TestEnv::new();
    std::fs::write(
        env.home().join("agentq.toml"),
        "[prices.\"m\"]\ninput_per_mtok = 1000.0\noutput_per_mtok = 2000.0\n",
    )
    .unwrap();
    env.write_agent(
        "priced",
        r#"
name = "priced"
[model]
provider = "scripted"
name = "m"
[[model.script]]
text = "cheap"
usage = { input = 250, output = 125 }
"#,
    );
    let (exit, result) = run_agent(&env, "priced", "x");
    assert_eq!(exit, 0, "{result}");
    let id = session_of(&result);
    assert_eq!(
        the_finish(&env, &id)["cost_usd"],
        json!({"execution": 0.5, "session": 0.5})
    );
    assert_eq!(
        env.json(&["session", "show", &id, "--json"])["session"]["cost_usd"],
        0.5
    );
}

#[test]
fn on_tool_error_stop_fails_the_execution_at_the_first_tool_error() {
    let env = TestEnv::new();
    env.write_agent(
        "strict",
        r#"
name = "strict"
[model]
provider = "scripted"
[[model.script]]
text = "reading"
tool_calls = [{ name = "read_file", arguments = { path = "missing.txt" } }]
[[model.script]]
text = "never reached"
[limits]
on_tool_error = "stop"
[tools]
builtin = ["read_file"]
"#,
    );
    let (exit, result) = run_agent(&env, "strict", "read it");
    assert_eq!(exit, 1, "{result}");
    assert_eq!(result["status"], "failed");
    assert_eq!(result["stop_reason"], "error");
    let error = result["error"].as_str().unwrap();
    assert!(error.contains("on_tool_error"), "{error}");
    assert!(error.contains("missing.txt"), "{error}");
    let id = session_of(&result);
    let done = the_finish(&env, &id);
    assert_eq!(done["exit_code"], 1);
    assert_eq!(done["steps"], 1);
    assert_status_once_each(&env, &id, &["failed"]);
}

#[test]
fn by_default_the_model_sees_a_tool_error_and_may_recover() {
    let env = TestEnv::new();
    env.write_agent(
        "lenient",
        r#"
name = "lenient"
[model]
provider = "scripted"
[[model.script]]
text = "reading"
tool_calls = [{ name = "read_file", arguments = { path = "missing.txt" } }]
[[model.script]]
text = "it is missing"
[tools]
builtin = ["read_file"]
"#,
    );
    let (exit, result) = run_agent(&env, "lenient", "read it");
    assert_eq!(exit, 0, "{result}");
    assert_eq!(result["response"], "it is missing");
    let tools = tool_messages(&env, &session_of(&result));
    assert_eq!(tools.len(), 1);
    assert_eq!(tools[0]["is_error"], true);
    assert!(
        tools[0]["content"]
            .as_str()
            .unwrap()
            .contains("does not exist")
    );
}

#[test]
fn max_consecutive_errors_fails_the_execution() {
    let env = TestEnv::new();
    env.write_agent(
        "clumsy",
        r#"
name = "clumsy"
[model]
provider = "scripted"
[[model.script]]
text = "trying"
tool_calls = [{ name = "read_file", arguments = { path = "missing.txt" } }]
[limits]
max_steps = 10
max_consecutive_errors = 2
[tools]
builtin = ["read_file"]
"#,
    );
    let (exit, result) = run_agent(&env, "clumsy", "read it");
    assert_eq!(exit, 1, "{result}");
    assert_eq!(result["status"], "failed");
    assert_eq!(result["stop_reason"], "error");
    assert_eq!(result["steps"], 2);
    assert!(
        result["error"]
            .as_str()
            .unwrap()
            .contains("max_consecutive_errors"),
        "{result}"
    );
    assert_eq!(the_finish(&env, &session_of(&result))["exit_code"], 1);
}

#[test]
fn max_consecutive_errors_defaults_to_3() {
    let env = TestEnv::new();
    env.write_agent(
        "clumsy",
        r#"
name = "clumsy"
[model]
provider = "scripted"
[[model.script]]
text = "trying"
tool_calls = [{ name = "read_file", arguments = { path = "missing.txt" } }]
[tools]
builtin = ["read_file"]
"#,
    );
    let (exit, result) = run_agent(&env, "clumsy", "read it");
    assert_eq!(exit, 1, "{result}");
    assert_eq!(result["stop_reason"], "error");
    assert_eq!(result["steps"], 3);
}

#[test]
fn a_success_between_errors_resets_the_consecutive_count() {
    let env = TestEnv::new();
    env.write_agent(
        "uneven",
        r#"
name = "uneven"
[model]
provider = "scripted"
[[model.script]]
text = "miss"
tool_calls = [{ name = "read_file", arguments = { path = "missing.txt" } }]
[[model.script]]
text = "hit"
tool_calls = [{ name = "list_dir", arguments = { path = "." } }]
[[model.script]]
text = "miss again"
tool_calls = [{ name = "read_file", arguments = { path = "missing.txt" } }]
[[model.script]]
text = "done"
[limits]
max_consecutive_errors = 2
[tools]
builtin = ["read_file", "list_dir"]
"#,
    );
    let (exit, result) = run_agent(&env, "uneven", "go");
    assert_eq!(exit, 0, "{result}");
    assert_eq!(result["response"], "done");
}

#[test]
fn cancel_ends_a_running_execution_cancelled_with_exit_130() {
    let env = TestEnv::new();
    env.write_agent(
        "slow",
        r#"
name = "slow"
[model]
provider = "scripted"
[[model.script]]
text = "a b c d e f g h i j k l m n o p q r s t u v w x y z a b c d e f g h i j k l m n"
delay_ms = 50
"#,
    );
    let run = env.spawn(&["run", "--agent", "slow", "long job", "--json"]);
    let sessions = env.home().join("sessions");
    let mut id = String::new();
    wait_until("the first chunk", LONG, || {
        let Some(found) = std::fs::read_dir(&sessions).ok().and_then(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .find(|n| !n.starts_with('.'))
        }) else {
            return false;
        };
        id = found;
        std::fs::read_to_string(env.session_dir(&id).join("events.ndjson"))
            .is_ok_and(|t| t.contains("agent.stream.chunk"))
    });
    env.ok(&["cancel", &id]);
    let out = run.wait(LONG);
    assert_eq!(code(&out), 130, "{}", describe(&out));
    let result: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(result["status"], "cancelled");
    assert_eq!(result["stop_reason"], "user_requested");
    let done = the_finish(&env, &id);
    assert_eq!(done["status"], "cancelled");
    assert_eq!(done["exit_code"], 130);
    assert_status_once_each(&env, &id, &["cancelled"]);
}

// ---------------------------------------------------------------------------------
// Continuation trace

#[test]
fn the_debug_preset_traces_one_continuation_per_step() {
    let env = TestEnv::new();
    env.write_agent(
        "three",
        r#"
name = "three"
[model]
provider = "scripted"
[[model.script]]
text = "one"
tool_calls = [{ name = "list_dir", arguments = { path = "." } }]
[[model.script]]
text = "two"
tool_calls = [{ name = "list_dir", arguments = { path = "." } }]
[[model.script]]
text = "three"
[tools]
builtin = ["list_dir"]
"#,
    );
    let id = env
        .ok(&["session", "new", "--agent", "three", "--events", "debug"])
        .trim()
        .to_owned();
    env.send(&id, "go");
    env.worker_once();
    let traces = env.payloads(&id, "agent.continuation");
    assert_eq!(traces.len(), 3, "{traces:?}");
    for (i, trace) in traces.iter().enumerate() {
        assert_eq!(trace["step_number"], i as u64 + 1);
        let checks: Vec<&str> = trace["evaluations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["check"].as_str().unwrap())
            .collect();
        for check in ["answered", "max_steps", "max_tokens", "timeout"] {
            assert!(checks.contains(&check), "{check} in {trace}");
        }
        assert!(
            trace["evaluations"]
                .as_array()
                .unwrap()
                .iter()
                .all(|e| e["detail"].is_string() && e["passed"].is_boolean())
        );
    }
    assert_eq!(traces[0]["should_continue"], true);
    assert!(traces[0]["stop_reason"].is_null());
    assert_eq!(traces[1]["should_continue"], true);
    assert_eq!(traces[2]["should_continue"], false);
    assert_eq!(traces[2]["stop_reason"], "completed");
    let answered = traces[2]["evaluations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["check"] == "answered")
        .unwrap()
        .clone();
    assert_eq!(answered["passed"], false, "the check that stopped it fails");
    let tool_started = env.payloads(&id, "agent.tool.started");
    assert_eq!(
        tool_started[0]["args"],
        json!({"path": "."}),
        "debug records the full arguments"
    );

    // The standard preset writes none.
    let (_, result) = run_agent(&env, "three", "go");
    assert!(
        env.events_of(&session_of(&result), "agent.continuation")
            .is_empty()
    );
}

// ---------------------------------------------------------------------------------
// Budgets across worker runs, and `send --continue`

const SESSION_BUDGET: &str = r#"
name = "budget"
[model]
provider = "scripted"
[[model.script]]
text = "first answer"
usage = { input = 30, output = 30 }
[[model.script]]
text = "working"
tool_calls = [{ name = "list_dir", arguments = { path = "." } }]
usage = { input = 30, output = 30 }
[[model.script]]
text = "still working"
tool_calls = [{ name = "list_dir", arguments = { path = "." } }]
usage = { input = 30, output = 30 }
[[model.script]]
text = "finished: {input}"
usage = { input = 30, output = 30 }
[limits]
session_max_tokens = 100
[tools]
builtin = ["list_dir"]
"#;

#[test]
fn session_max_tokens_counts_an_earlier_execution_run_by_another_worker() {
    let env = TestEnv::new();
    env.write_agent("budget", SESSION_BUDGET);
    let id = env.new_session("budget");
    env.send(&id, "first");
    env.worker_once();
    assert_eq!(env.finished(&id)[0]["status"], "completed");
    assert_eq!(env.finished(&id)[0]["usage"]["session"]["total"], 60);

    // Another worker process: 60 earlier + 60 now passes the session's 100.
    env.send(&id, "second");
    env.fails(&["worker", "--once"], 3);
    let second = &env.finished(&id)[1];
    assert_eq!(second["status"], "stopped");
    assert_eq!(second["stop_reason"], "token_limit");
    assert_eq!(second["exit_code"], 3);
    assert_eq!(second["steps"], 1);
    assert_eq!(second["usage"]["execution"]["total"], 60);
    assert_eq!(second["usage"]["session"]["total"], 120);

    // Continuing without more budget stops again, for the same reason.
    env.ok(&["send", &id, "--continue"]);
    env.fails(&["worker", "--once"], 3);
    let third = &env.finished(&id)[2];
    assert_eq!(third["status"], "stopped");
    assert_eq!(third["stop_reason"], "token_limit");
    assert_eq!(third["exit_code"], 3);

    // With the budget raised the task carries on to its answer.
    env.ok(&["send", &id, "--continue", "--raise-budget", "500"]);
    env.worker_once();
    let last = env.finished(&id).last().unwrap().clone();
    assert_eq!(last["status"], "completed", "{last}");
    let responses: Vec<Value> = env
        .payloads(&id, "agent.message.completed")
        .into_iter()
        .map(|p| p["response"].clone())
        .collect();
    assert_eq!(
        responses.last().unwrap(),
        "finished: second",
        "the continued task is the second message"
    );
    let show = env.json(&["session", "show", &id, "--json"]);
    assert_eq!(show["budgets"]["session_max_tokens"], 600);

    let err = env.fails(&["send", &id, "--continue"], 2);
    assert!(err.contains("nothing to continue"), "{err}");
    assert_status_once_each(&env, &id, &["completed", "stopped", "stopped", "completed"]);
}

#[test]
fn continuing_with_the_session_budget_spent_stops_before_any_model_call() {
    let env = TestEnv::new();
    env.write_agent("budget", SESSION_BUDGET);
    let id = env.new_session("budget");
    env.send(&id, "first");
    env.worker_once();
    env.send(&id, "second");
    env.fails(&["worker", "--once"], 3);
    assert_eq!(env.finished(&id)[1]["stop_reason"], "token_limit");
    let state = |env: &TestEnv| -> Value {
        serde_json::from_str(
            &std::fs::read_to_string(env.session_dir(&id).join("state.json")).unwrap(),
        )
        .unwrap()
    };
    let calls_before = state(&env)["model_calls"].clone();
    let steps_before = env.events_of(&id, "agent.step.started").len();

    env.ok(&["send", &id, "--continue"]);
    env.fails(&["worker", "--once"], 3);
    let third = &env.finished(&id)[2];
    assert_eq!(third["stop_reason"], "token_limit");
    assert_eq!(third["steps"], 0, "nothing more is spent: {third}");
    assert_eq!(third["usage"]["session"]["total"], 120, "{third}");
    assert_eq!(state(&env)["model_calls"], calls_before);
    assert_eq!(env.events_of(&id, "agent.step.started").len(), steps_before);
}

#[test]
fn continue_carries_on_under_a_limit_raised_in_the_definition() {
    let env = TestEnv::new();
    env.write_agent("budget", SESSION_BUDGET);
    let id = env.new_session("budget");
    env.send(&id, "first");
    env.send(&id, "second");
    env.fails(&["worker", "--once"], 3);
    assert_eq!(env.finished(&id)[1]["stop_reason"], "token_limit");

    env.write_agent(
        "budget",
        &SESSION_BUDGET.replace("session_max_tokens = 100", "session_max_tokens = 1000"),
    );
    env.ok(&["send", &id, "--continue"]);
    env.worker_once();
    let last = env.finished(&id).last().unwrap().clone();
    assert_eq!(last["status"], "completed", "{last}");
    assert_eq!(
        env.payloads(&id, "agent.message.completed").last().unwrap()["response"],
        "finished: second"
    );
}

#[test]
fn continue_after_steps_limit_resumes_the_same_task_without_a_new_user_message() {
    let env = TestEnv::new();
    env.write_agent(
        "long-task",
        r#"
name = "long-task"
[model]
provider = "scripted"
[[model.script]]
text = "step one"
tool_calls = [{ name = "write_file", arguments = { path = "one.txt", content = "1" } }]
[[model.script]]
text = "step two"
tool_calls = [{ name = "write_file", arguments = { path = "two.txt", content = "2" } }]
[[model.script]]
text = "step three"
tool_calls = [{ name = "write_file", arguments = { path = "three.txt", content = "3" } }]
[[model.script]]
text = "finished: {input}"
[limits]
max_steps = 2
[tools]
builtin = ["write_file"]
"#,
    );
    let (exit, result) = run_agent(&env, "long-task", "the task");
    assert_eq!(exit, 3, "{result}");
    assert_eq!(result["stop_reason"], "steps_limit");
    let id = session_of(&result);
    assert_eq!(
        roles(&transcript(&env, &id)),
        ["user", "assistant", "tool", "assistant", "tool"]
    );

    let transcript_path = env.session_dir(&id).join("transcript.ndjson");
    let before = std::fs::read(&transcript_path).unwrap();

    env.ok(&["send", &id, "--continue"]);
    env.worker_once();
    let after = std::fs::read(&transcript_path).unwrap();
    assert!(
        after.len() > before.len() && after.starts_with(&before),
        "the transcript is appended to, never rewritten"
    );
    let done = env.finished(&id);
    assert_eq!(done.len(), 2);
    assert_eq!(done[1]["status"], "completed", "{}", done[1]);
    assert_eq!(done[1]["steps"], 2);
    assert_eq!(
        env.payloads(&id, "agent.message.completed")[0]["response"],
        "finished: the task"
    );
    let lines = transcript(&env, &id);
    assert_eq!(
        roles(&lines),
        [
            "user",
            "assistant",
            "tool",
            "assistant",
            "tool",
            "assistant",
            "tool",
            "assistant"
        ],
        "--continue adds no user message"
    );
    assert_eq!(lines[0]["content"], "the task");
    // The model was given the whole history when it carried on.
    let counts: Vec<u64> = env
        .payloads(&id, "agent.step.started")
        .iter()
        .map(|p| p["message_count"].as_u64().unwrap())
        .collect();
    assert_eq!(counts, [1, 3, 5, 7]);
    for name in ["one.txt", "two.txt", "three.txt"] {
        assert!(workspace(&env, &id).join(name).exists(), "{name}");
    }
    assert_status_once_each(&env, &id, &["stopped", "completed"]);
}

// ---------------------------------------------------------------------------------
// The escape-attempt suite

const CANARY: &str = "CANARY-5a1f-do-not-read";

/// Every path under `root`, not following symlinks.
fn tree(root: &Path) -> BTreeSet<PathBuf> {
    fn walk(dir: &Path, root: &Path, out: &mut BTreeSet<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.filter_map(Result::ok) {
            let path = entry.path();
            out.insert(path.strip_prefix(root).unwrap().to_owned());
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                walk(&path, root, out);
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(root, root, &mut out);
    out
}

#[test]
fn file_tools_refuse_every_path_that_leads_out_of_the_workspace() {
    use std::os::unix::fs::symlink;
    let env = TestEnv::new();
    let outside = tempfile::tempdir().unwrap();
    let canary = outside.path().join("canary.txt");
    std::fs::write(&canary, CANARY).unwrap();
    let home_secret = env.home().join("home-secret.txt");
    std::fs::write(&home_secret, CANARY).unwrap();

    let outside_abs = |name: &str| outside.path().join(name).to_string_lossy().into_owned();
    // Every call below must be refused.
    let mut calls: Vec<String> = Vec::new();
    let mut call = |tool: &str, args: String| {
        calls.push(format!("{{ name = \"{tool}\", arguments = {{ {args} }} }}"))
    };
    let escapes = |abs: String| {
        vec![
            toml_str("../x"),
            toml_str(&abs),
            toml_str("a/../../x"),
            r#""a\u0000b""#.to_owned(),
            toml_str("link"),
            toml_str("outdir/canary.txt"),
            toml_str("devnull"),
            toml_str("homelink"),
            toml_str("dangling"),
        ]
    };
    for path in escapes("/etc/passwd".to_owned()) {
        call("read_file", format!("path = {path}"));
    }
    for path in escapes(outside_abs("canary.txt")).into_iter().chain([
        toml_str("outdir/new.txt"),
        toml_str(&outside_abs("new.txt")),
    ]) {
        call("write_file", format!("path = {path}, content = \"pwned\""));
    }
    for path in escapes(outside_abs("canary.txt")) {
        call(
            "edit_file",
            format!(
                "path = {path}, old_string = {}, new_string = \"pwned\"",
                toml_str(CANARY)
            ),
        );
    }
    for path in [
        toml_str(".."),
        toml_str("/etc"),
        toml_str(&outside_abs("")),
        toml_str("a/../.."),
        r#""a\u0000b""#.to_owned(),
        toml_str("outdir"),
        toml_str("devnull"),
        toml_str("dangling"),
    ] {
        call("list_dir", format!("path = {path}"));
    }
    for path in escapes("/etc/passwd".to_owned()).into_iter().chain([
        toml_str(".."),
        toml_str("outdir"),
        toml_str("/etc"),
    ]) {
        call(
            "search_files",
            format!("pattern = \"root|CANARY\", path = {path}"),
        );
    }
    let escape_calls = calls.len();
    let agent = format!(
        r#"
name = "escape"
[model]
provider = "scripted"
[[model.script]]
text = "trying every way out"
tool_calls = [{}]
[[model.script]]
text = "looking around"
tool_calls = [{{ name = "search_files", arguments = {{ pattern = "CANARY|root" }} }}, {{ name = "list_dir", arguments = {{ path = "." }} }}]
[[model.script]]
text = "I stayed inside"
[limits]
max_consecutive_errors = 1000
[tools]
builtin = ["read_file", "write_file", "edit_file", "list_dir", "search_files"]
"#,
        calls.join(",\n  ")
    );
    env.write_agent("escape", &agent);
    let (id, ws) = session_with_workspace(&env, "escape");
    symlink(&canary, ws.join("link")).unwrap();
    symlink(outside.path(), ws.join("outdir")).unwrap();
    symlink("/dev/null", ws.join("devnull")).unwrap();
    symlink(&home_secret, ws.join("homelink")).unwrap();
    symlink(outside.path().join("through-link.txt"), ws.join("dangling")).unwrap();
    let home_before = tree(env.home());
    let outside_before = tree(outside.path());
    let passwd_before = std::fs::read("/etc/passwd").unwrap();

    let (exit, result) = run_json(&env, &["run", "--session", &id, "break out"]);
    assert_eq!(exit, 0, "{result}");
    assert_eq!(result["response"], "I stayed inside");

    // Every escape attempt is a tool error, recorded and shown to the model.
    let completed = env.payloads(&id, "agent.tool.completed");
    assert_eq!(completed.len(), escape_calls + 2);
    let lines = transcript(&env, &id);
    let asked = lines[1]["tool_calls"].as_array().unwrap();
    assert_eq!(asked.len(), escape_calls);
    let results: BTreeMap<&str, &Value> = lines
        .iter()
        .filter(|l| l["role"] == "tool")
        .map(|l| (l["tool_call_id"].as_str().unwrap(), l))
        .collect();
    for (call, event) in asked.iter().zip(&completed) {
        let what = format!("{} {}", call["name"], call["arguments"]);
        assert_eq!(event["tool_call_id"], call["id"], "{what}");
        assert_eq!(event["success"], false, "{what} was not refused: {event}");
        let error = event["error"].as_str().unwrap();
        assert!(
            [
                "outside the workspace",
                "absolute path",
                "NUL byte",
                "symlink"
            ]
            .iter()
            .any(|reason| error.contains(reason)),
            "{what}: an unclear refusal: {error}"
        );
        let seen = results[call["id"].as_str().unwrap()];
        assert_eq!(seen["is_error"], true, "{what}");
        assert_eq!(seen["content"], error, "{what}: the model sees the error");
    }
    // Looking around the workspace itself works, and shows nothing from outside.
    for event in &completed[escape_calls..] {
        assert_eq!(event["success"], true, "{event}");
    }
    for line in results.values() {
        let content = line["content"].as_str().unwrap();
        assert!(!content.contains(CANARY), "read from outside: {content}");
        assert!(!content.contains("root:"), "read /etc/passwd: {content}");
    }

    // Nothing outside the workspace was written, and nothing new appeared anywhere.
    assert_eq!(std::fs::read_to_string(&canary).unwrap(), CANARY);
    assert_eq!(std::fs::read_to_string(&home_secret).unwrap(), CANARY);
    assert_eq!(std::fs::read("/etc/passwd").unwrap(), passwd_before);
    assert_eq!(tree(outside.path()), outside_before);
    let session = Path::new("sessions").join(&id);
    let bookkeeping = [
        "events.ndjson",
        "transcript.ndjson",
        "state.json",
        ".state.json.spare",
        "session.json",
        ".session.json.spare",
        "lock",
        "executions",
        "inbox",
    ];
    let new: Vec<PathBuf> = tree(env.home())
        .difference(&home_before)
        .filter(|p| {
            !bookkeeping.iter().any(|b| p.starts_with(session.join(b)))
                && !p.starts_with("sessions/.ready")
        })
        .cloned()
        .collect();
    assert!(new.is_empty(), "new files: {new:?}");
}

#[test]
fn symlinks_inside_the_workspace_still_work() {
    use std::os::unix::fs::symlink;
    let env = TestEnv::new();
    env.write_agent(
        "inside",
        r#"
name = "inside"
[model]
provider = "scripted"
[[model.script]]
text = "reading"
tool_calls = [{ name = "read_file", arguments = { path = "alias/f.txt" } }]
[[model.script]]
text = "done"
[tools]
builtin = ["read_file"]
"#,
    );
    let (id, ws) = session_with_workspace(&env, "inside");
    std::fs::create_dir_all(ws.join("real")).unwrap();
    std::fs::write(ws.join("real/f.txt"), "inside").unwrap();
    symlink(ws.join("real"), ws.join("alias")).unwrap();
    let (exit, _) = run_json(&env, &["run", "--session", &id, "x"]);
    assert_eq!(exit, 0);
    assert_eq!(tool_messages(&env, &id)[0]["content"], "inside");
}

/// An agent whose one step points read_file, write_file and edit_file at `path` in its
/// workspace, then answers; tool errors do not stop it.
fn file_tools_agent(env: &TestEnv, name: &str, path: &str) {
    env.write_agent(
        name,
        &format!(
            r#"
name = "{name}"
[model]
provider = "scripted"
[[model.script]]
text = "poking"
tool_calls = [
  {{ name = "read_file", arguments = {{ path = "{path}" }} }},
  {{ name = "write_file", arguments = {{ path = "{path}", content = "x" }} }},
  {{ name = "edit_file", arguments = {{ path = "{path}", old_string = "a", new_string = "b" }} }},
]
[[model.script]]
text = "done"
[limits]
max_consecutive_errors = 10
[tools]
builtin = ["read_file", "write_file", "edit_file"]
"#
        ),
    );
}

/// Each of the three file tools answered with an error saying the file is not a
/// regular one.
fn assert_every_file_tool_refused(env: &TestEnv, id: &str) {
    let completed = env.payloads(id, "agent.tool.completed");
    assert_eq!(completed.len(), 3);
    for event in completed {
        assert_eq!(event["success"], false, "{event}");
        assert!(
            event["error"]
                .as_str()
                .unwrap()
                .contains("not a regular file"),
            "{event}"
        );
    }
}

#[test]
fn special_files_in_the_workspace_are_refused_promptly() {
    let env = TestEnv::new();
    file_tools_agent(&env, "fifo", "pipe");
    let (id, ws) = session_with_workspace(&env, "fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(ws.join("pipe"))
        .status()
        .unwrap();
    assert!(made.success());
    let run = env.spawn(&["run", "--session", &id, "x", "--json"]);
    let out = run.wait(Duration::from_secs(5));
    assert_eq!(code(&out), 0, "{}", describe(&out));
    assert_every_file_tool_refused(&env, &id);
}

#[test]
fn a_device_node_in_the_workspace_is_refused_by_every_file_tool() {
    let env = TestEnv::new();
    file_tools_agent(&env, "device", "nul");
    let (id, ws) = session_with_workspace(&env, "device");
    // A character device like /dev/null (1, 3); making one needs root.
    let made = std::process::Command::new("mknod")
        .arg(ws.join("nul"))
        .args(["c", "1", "3"])
        .output()
        .unwrap();
    if !made.status.success() {
        eprintln!(
            "skipped: mknod is not allowed here ({})",
            stderr(&made).trim()
        );
        return;
    }
    let (exit, result) = run_json(&env, &["run", "--session", &id, "x"]);
    assert_eq!(exit, 0, "{result}");
    assert_every_file_tool_refused(&env, &id);
}

#[test]
fn read_file_returns_a_line_range_and_caps_big_files() {
    let env = TestEnv::new();
    env.write_agent(
        "reader",
        r#"
name = "reader"
[model]
provider = "scripted"
[[model.script]]
text = "reading"
tool_calls = [
  { name = "read_file", arguments = { path = "lines.txt", offset = 2, limit = 2 } },
  { name = "read_file", arguments = { path = "lines.txt" } },
  { name = "read_file", arguments = { path = "huge.txt" } },
]
[[model.script]]
text = "read"
[tools]
builtin = ["read_file"]
"#,
    );
    let (id, ws) = session_with_workspace(&env, "reader");
    let lines: String = (1..=3000).map(|i| format!("line {i}\n")).collect();
    std::fs::write(ws.join("lines.txt"), lines).unwrap();
    let huge = "y".repeat(63) + "\n";
    std::fs::write(ws.join("huge.txt"), huge.repeat(8 * 1024)).unwrap();
    let (exit, result) = run_json(&env, &["run", "--session", &id, "read"]);
    assert_eq!(exit, 0, "{result}");
    let tools = tool_messages(&env, &id);
    assert_eq!(
        tools[0]["content"],
        "line 2\nline 3\n[showing lines 2-3 of 3000 lines]"
    );
    let default = tools[1]["content"].as_str().unwrap();
    assert!(
        default.ends_with("line 2000\n[showing lines 1-2000 of 3000 lines]"),
        "{}",
        &default[default.len() - 80..]
    );
    let capped = tools[2]["content"].as_str().unwrap();
    assert!(capped.len() < 300 * 1024, "{}", capped.len());
    assert!(
        capped.ends_with("of the first 256 KiB]"),
        "{}",
        &capped[capped.len() - 80..]
    );
}

// ---------------------------------------------------------------------------------
// edit_file, search_files, todo_write

#[test]
fn edit_file_replaces_a_unique_string_and_explains_missing_and_ambiguous_ones() {
    let env = TestEnv::new();
    env.write_agent(
        "editor",
        r#"
name = "editor"
[model]
provider = "scripted"
[[model.script]]
text = "writing"
tool_calls = [{ name = "write_file", arguments = { path = "notes.txt", content = "alpha beta beta gamma\n" } }]
[[model.script]]
text = "editing"
tool_calls = [
  { name = "edit_file", arguments = { path = "notes.txt", old_string = "alpha", new_string = "ALPHA" } },
  { name = "edit_file", arguments = { path = "notes.txt", old_string = "delta", new_string = "DELTA" } },
  { name = "edit_file", arguments = { path = "notes.txt", old_string = "beta", new_string = "BETA" } },
]
[[model.script]]
text = "edited"
[tools]
builtin = ["write_file", "edit_file"]
"#,
    );
    let (exit, result) = run_agent(&env, "editor", "edit");
    assert_eq!(exit, 0, "{result}");
    let id = session_of(&result);
    assert_eq!(
        std::fs::read_to_string(workspace(&env, &id).join("notes.txt")).unwrap(),
        "ALPHA beta beta gamma\n"
    );
    let tools = tool_messages(&env, &id);
    assert_eq!(tools.len(), 4);
    assert_eq!(tools[1]["is_error"], false);
    assert_eq!(tools[1]["content"], "replaced 1 occurrence in notes.txt");
    assert_eq!(tools[2]["is_error"], true);
    let missing = tools[2]["content"].as_str().unwrap();
    assert!(
        missing.contains("`old_string` was not found in `notes.txt`"),
        "{missing}"
    );
    assert_eq!(tools[3]["is_error"], true);
    let ambiguous = tools[3]["content"].as_str().unwrap();
    assert!(
        ambiguous.contains("occurs 2 times") && ambiguous.contains("unique"),
        "{ambiguous}"
    );
}

#[test]
fn search_files_matches_regex_or_plain_text_and_caps_its_results() {
    let env = TestEnv::new();
    env.write_agent(
        "searcher",
        r#"
name = "searcher"
[model]
provider = "scripted"
[[model.script]]
text = "searching"
tool_calls = [
  { name = "search_files", arguments = { pattern = '^fn \w+' } },
  { name = "search_files", arguments = { pattern = "main(" } },
  { name = "search_files", arguments = { pattern = "main", path = "src" } },
  { name = "search_files", arguments = { pattern = "needle" } },
  { name = "search_files", arguments = { pattern = "nowhere-to-be-found" } },
]
[[model.script]]
text = "found"
[tools]
builtin = ["search_files"]
"#,
    );
    let (id, ws) = session_with_workspace(&env, "searcher");
    std::fs::create_dir_all(ws.join("src")).unwrap();
    std::fs::write(ws.join("src/a.rs"), "fn main() {}\nlet x = 1;\n").unwrap();
    std::fs::write(ws.join("b.md"), "main idea\n").unwrap();
    let many: String = (1..=150).map(|i| format!("needle {i}\n")).collect();
    std::fs::write(ws.join("many.txt"), many).unwrap();

    let (exit, result) = run_json(&env, &["run", "--session", &id, "search"]);
    assert_eq!(exit, 0, "{result}");
    let tools = tool_messages(&env, &id);
    let content = |i: usize| tools[i]["content"].as_str().unwrap().to_owned();
    assert!(tools.iter().all(|t| t["is_error"] == false), "{tools:?}");
    assert_eq!(content(0), "src/a.rs:1: fn main() {}", "a regex");
    assert_eq!(
        content(1),
        "src/a.rs:1: fn main() {}",
        "not a regex: searched as text"
    );
    assert_eq!(content(2), "src/a.rs:1: fn main() {}", "under a path");
    let capped = content(3);
    let matches: Vec<&str> = capped
        .lines()
        .filter(|l| l.starts_with("many.txt:"))
        .collect();
    assert_eq!(matches.len(), 100, "capped");
    assert_eq!(matches[0], "many.txt:1: needle 1");
    assert!(
        capped.contains("[showing the first 100 matches"),
        "{capped}"
    );
    assert_eq!(content(4), "no matches for `nowhere-to-be-found`");
}

#[test]
fn todo_write_keeps_the_plan_in_the_session_and_refuses_two_in_progress() {
    let env = TestEnv::new();
    env.write_agent(
        "planner",
        r#"
name = "planner"
[model]
provider = "scripted"
[[model.script]]
text = "planning"
tool_calls = [{ name = "todo_write", arguments = { todos = [
  { content = "read the code", status = "completed" },
  { content = "write the fix", status = "in_progress" },
  { content = "run the tests", status = "pending" },
] } }]
[[model.script]]
text = "replanning"
tool_calls = [{ name = "todo_write", arguments = { todos = [
  { content = "write the fix", status = "in_progress" },
  { content = "run the tests", status = "in_progress" },
] } }]
[[model.script]]
text = "planned"
[tools]
builtin = ["todo_write"]
"#,
    );
    let (exit, result) = run_agent(&env, "planner", "plan");
    assert_eq!(exit, 0, "{result}");
    let id = session_of(&result);
    let tools = tool_messages(&env, &id);
    assert_eq!(tools[0]["is_error"], false);
    assert_eq!(
        tools[0]["content"],
        "3 tasks: 1 completed, 1 in progress, 1 pending"
    );
    assert_eq!(tools[1]["is_error"], true);
    assert!(
        tools[1]["content"]
            .as_str()
            .unwrap()
            .contains("at most one"),
        "{}",
        tools[1]
    );

    let show = env.json(&["session", "show", &id, "--json"]);
    assert_eq!(
        show["todos"],
        json!([
            {"content": "read the code", "status": "completed"},
            {"content": "write the fix", "status": "in_progress"},
            {"content": "run the tests", "status": "pending"},
        ]),
        "the refused list left the plan as it was"
    );
    let plain = env.ok(&["session", "show", &id]);
    for line in [
        "[x] read the code",
        "[>] write the fix",
        "[ ] run the tests",
    ] {
        assert!(plain.contains(line), "{line} in:\n{plain}");
    }
}

// ---------------------------------------------------------------------------------
// Declared command tools

fn assert_no_process(marker: &str) {
    wait_until(
        &format!("no process running `{marker}`"),
        Duration::from_secs(2),
        || {
            let out = std::process::Command::new("pgrep")
                .args(["-f", marker])
                .output()
                .unwrap();
            out.stdout.is_empty()
        },
    );
}

#[test]
fn a_declared_command_runs_without_a_shell_in_the_workspace() {
    let env = TestEnv::new();
    env.write_agent(
        "commands",
        r#"
name = "commands"
[model]
provider = "scripted"
[[model.script]]
text = "running"
tool_calls = [
  { name = "echo_input", arguments = { arg = "; touch pwned $(touch pwned2) `touch pwned3` | touch pwned4" } },
  { name = "where", arguments = {} },
  { name = "mixed", arguments = {} },
  { name = "loud", arguments = {} },
]
[[model.script]]
text = "ran"
[[tools.command]]
name = "echo_input"
description = "Echo the arguments back"
argv = ["cat"]
parameters = { type = "object", properties = { arg = { type = "string" } } }
[[tools.command]]
name = "where"
argv = ["pwd"]
[[tools.command]]
name = "mixed"
argv = ["sh", "-c", "echo out; echo err >&2; exit 3"]
[[tools.command]]
name = "loud"
argv = ["sh", "-c", "yes | head -c 100000"]
"#,
    );
    let (id, ws) = session_with_workspace(&env, "commands");
    let (exit, result) = run_json(&env, &["run", "--session", &id, "run them"]);
    assert_eq!(exit, 0, "{result}");
    let started = env.payloads(&id, "agent.step.started");
    assert_eq!(
        started[0]["available_tools"],
        json!(["echo_input", "where", "mixed", "loud"])
    );

    let tools = tool_messages(&env, &id);
    let content = |i: usize| tools[i]["content"].as_str().unwrap().to_owned();
    assert_eq!(tools[0]["is_error"], false, "{}", content(0));
    assert!(content(0).starts_with("exit code: 0"), "{}", content(0));
    assert!(
        content(0)
            .contains(r#"{"arg":"; touch pwned $(touch pwned2) `touch pwned3` | touch pwned4"}"#),
        "the arguments arrive as JSON on stdin: {}",
        content(0)
    );
    for dir in [ws.clone(), env.home().to_owned(), env.session_dir(&id)] {
        for name in ["pwned", "pwned2", "pwned3", "pwned4"] {
            assert!(!dir.join(name).exists(), "{name} created in {dir:?}");
        }
    }
    let real_ws = ws.canonicalize().unwrap();
    assert!(
        content(1).contains(&format!("--- stdout\n{}\n", real_ws.display())),
        "runs in the workspace: {}",
        content(1)
    );
    assert_eq!(
        tools[2]["is_error"], true,
        "a non-zero exit is a tool error"
    );
    let mixed = content(2);
    assert!(mixed.starts_with("exit code: 3"), "{mixed}");
    assert!(mixed.contains("--- stdout\nout\n"), "{mixed}");
    assert!(mixed.contains("--- stderr\nerr\n"), "{mixed}");
    let loud = content(3);
    assert!(
        loud.contains("[output cut: 100000 bytes in all, the first 32768 shown]"),
        "output is capped: {}",
        &loud[loud.len().saturating_sub(200)..]
    );
    assert!(loud.len() < 40 * 1024, "{}", loud.len());
}

#[test]
fn cancel_kills_a_running_command_and_its_children() {
    let env = TestEnv::new();
    env.write_agent(
        "stuck",
        r#"
name = "stuck"
[model]
provider = "scripted"
[[model.script]]
text = "waiting"
tool_calls = [{ name = "hang", arguments = {} }]
[[model.script]]
text = "never"
[[tools.command]]
name = "hang"
argv = ["sh", "-c", "sleep 100.5772 & sleep 100.5772"]
timeout = "60s"
"#,
    );
    let id = env.new_session("stuck");
    let run = env.spawn(&["run", "--session", &id, "hang", "--json"]);
    wait_until("the command to start", LONG, || {
        !env.events_of(&id, "agent.tool.started").is_empty()
    });
    let cancelled_at = Instant::now();
    env.ok(&["cancel", &id]);
    let out = run.wait(LONG);
    assert!(
        cancelled_at.elapsed() < Duration::from_secs(5),
        "{:?}",
        cancelled_at.elapsed()
    );
    assert_eq!(code(&out), 130, "{}", describe(&out));
    assert_no_process("sleep 100.5772");
    let done = the_finish(&env, &id);
    assert_eq!(done["status"], "cancelled");
    assert_eq!(done["stop_reason"], "user_requested");
}

#[test]
fn a_command_working_directory_cannot_lead_out_of_the_workspace() {
    use std::os::unix::fs::symlink;
    let env = TestEnv::new();
    env.write_agent(
        "wander",
        r#"
name = "wander"
[model]
provider = "scripted"
[[model.script]]
text = "running"
tool_calls = [{ name = "mark", arguments = {} }]
[[model.script]]
text = "done"
[[tools.command]]
name = "mark"
argv = ["touch", "ran-here"]
cwd = "out"
"#,
    );
    let outside = tempfile::tempdir().unwrap();
    let (id, ws) = session_with_workspace(&env, "wander");
    symlink(outside.path(), ws.join("out")).unwrap();
    let (exit, result) = run_json(&env, &["run", "--session", &id, "x"]);
    assert_eq!(exit, 0, "{result}");
    let tools = tool_messages(&env, &id);
    assert_eq!(tools[0]["is_error"], true);
    assert!(
        tools[0]["content"]
            .as_str()
            .unwrap()
            .contains("outside the workspace"),
        "{}",
        tools[0]
    );
    assert!(!outside.path().join("ran-here").exists());
}

#[test]
fn a_command_timeout_kills_its_whole_process_group() {
    let env = TestEnv::new();
    env.write_agent(
        "sleepy",
        r#"
name = "sleepy"
[model]
provider = "scripted"
[[model.script]]
text = "sleeping"
tool_calls = [{ name = "nap", arguments = {} }]
[[model.script]]
text = "woke up"
[[tools.command]]
name = "nap"
argv = ["sh", "-c", "sleep 100.2718 & sleep 100.2718"]
timeout = "500ms"
"#,
    );
    let started = Instant::now();
    let (exit, result) = run_agent(&env, "sleepy", "nap");
    let took = started.elapsed();
    assert_eq!(exit, 0, "{result}");
    assert!(took < Duration::from_secs(4), "killed promptly: {took:?}");
    assert_no_process("sleep 100.2718");
    let tools = tool_messages(&env, &session_of(&result));
    assert_eq!(tools[0]["is_error"], true);
    let content = tools[0]["content"].as_str().unwrap();
    assert!(
        content.starts_with("timed out after 500ms and was killed"),
        "{content}"
    );
}

#[test]
fn command_tools_get_an_environment_without_secrets() {
    let env = TestEnv::new();
    env.write_agent(
        "envy",
        r#"
name = "envy"
[model]
provider = "scripted"
[[model.script]]
text = "looking"
tool_calls = [{ name = "show_env", arguments = {} }]
[[model.script]]
text = "seen"
[[tools.command]]
name = "show_env"
argv = ["env"]
"#,
    );
    let out = env
        .cmd()
        .args(["run", "--agent", "envy", "env please", "--json"])
        .env("MY_API_KEY", "value-of-my-api-key")
        .env("GH_TOKEN", "value-of-gh-token")
        .env("X_SECRET", "value-of-x-secret")
        .env("DB_PASSWORD", "value-of-db-password")
        .env("AGENTQ_TEST_PLAIN", "plain-value")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", describe(&out));
    let result: Value = serde_json::from_slice(&out.stdout).unwrap();
    let tools = tool_messages(&env, &session_of(&result));
    let content = tools[0]["content"].as_str().unwrap();
    assert_eq!(tools[0]["is_error"], false, "{content}");
    assert!(content.contains("\nPATH="), "{content}");
    assert!(
        content.contains("AGENTQ_TEST_PLAIN=plain-value"),
        "{content}"
    );
    for secret in [
        "MY_API_KEY",
        "GH_TOKEN",
        "X_SECRET",
        "DB_PASSWORD",
        "value-of-",
    ] {
        assert!(!content.contains(secret), "{secret} leaked:\n{content}");
    }
}

#[test]
fn the_variable_named_by_api_key_env_never_reaches_a_command() {
    let env = TestEnv::new();
    env.write_agent(
        "keyed",
        r#"
name = "keyed"
[model]
provider = "scripted"
api_key_env = "LLM_CREDENTIAL"
[[model.script]]
text = "looking"
tool_calls = [{ name = "show_env", arguments = {} }]
[[model.script]]
text = "seen"
[[tools.command]]
name = "show_env"
argv = ["env"]
"#,
    );
    let out = env
        .cmd()
        .args(["run", "--agent", "keyed", "env please", "--json"])
        .env("LLM_CREDENTIAL", "value-of-the-model-key")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", describe(&out));
    let result: Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = session_of(&result);
    let content = tool_messages(&env, &id)[0]["content"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(content.contains("\nPATH="), "{content}");
    assert!(
        !content.contains("value-of-the-model-key"),
        "the model's API key reached the command and the transcript:\n{content}"
    );
}

#[test]
fn a_tool_that_is_not_declared_is_an_error_and_runs_nothing() {
    let env = TestEnv::new();
    env.write_agent(
        "undeclared",
        r#"
name = "undeclared"
[model]
provider = "scripted"
[[model.script]]
text = "trying"
tool_calls = [
  { name = "sh", arguments = { command = "touch pwned" } },
  { name = "touch", arguments = { path = "pwned" } },
  { name = "list_dir", arguments = { path = 3 } },
]
[[model.script]]
text = "could not"
[limits]
max_consecutive_errors = 10
[tools]
builtin = ["list_dir"]
[[tools.command]]
name = "listing"
argv = ["ls"]
"#,
    );
    let (id, ws) = session_with_workspace(&env, "undeclared");
    let (exit, result) = run_json(&env, &["run", "--session", &id, "try"]);
    assert_eq!(exit, 0, "{result}");
    let tools = tool_messages(&env, &id);
    assert_eq!(tools.len(), 3);
    assert_eq!(
        tools[2]["is_error"], true,
        "invalid arguments are a tool error"
    );
    let refused = tools[2]["content"].as_str().unwrap();
    assert!(
        refused.starts_with("argument `path` must be a string (") && refused.ends_with(", not 3"),
        "says what a valid value is: {refused}"
    );
    for (tool, name) in tools.iter().zip(["sh", "touch"]) {
        assert_eq!(tool["is_error"], true);
        let content = tool["content"].as_str().unwrap();
        assert!(
            content.contains(&format!("unknown tool `{name}`")),
            "{content}"
        );
        assert!(content.contains("list_dir, listing"), "{content}");
    }
    for dir in [ws, env.home().to_owned()] {
        assert!(!dir.join("pwned").exists());
    }
}

// ---------------------------------------------------------------------------------
// Context compaction

#[test]
fn a_long_history_is_compacted_with_a_scripted_summary() {
    let env = TestEnv::new();
    env.write_agent(
        "compact",
        r#"
name = "compact"
[model]
provider = "scripted"
context_window = 4000
[[model.script]]
text = "reading the big file"
tool_calls = [{ name = "read_file", arguments = { path = "big.txt" } }]
[[model.script]]
text = "looking around"
tool_calls = [{ name = "list_dir", arguments = { path = "." } }]
[[model.script]]
text = "SUMMARY: big.txt holds 20000 x characters"
[[model.script]]
text = "answer after compaction"
[tools]
builtin = ["read_file", "list_dir"]
"#,
    );
    let (id, ws) = session_with_workspace(&env, "compact");
    let big = "x".repeat(99) + "\n";
    std::fs::write(ws.join("big.txt"), big.repeat(200)).unwrap();

    let (exit, result) = run_json(&env, &["run", "--session", &id, "summarise big.txt"]);
    assert_eq!(exit, 0, "{result}");
    assert_eq!(result["response"], "answer after compaction");

    let compacted = env.payloads(&id, "context.compacted");
    assert_eq!(compacted.len(), 1, "{compacted:?}");
    let c = &compacted[0];
    assert_eq!(c["summarized"], true, "{c}");
    assert!(c["before_tokens"].as_u64().unwrap() > 4000 * 8 / 10, "{c}");
    assert!(
        c["after_tokens"].as_u64().unwrap() < c["before_tokens"].as_u64().unwrap() / 4,
        "{c}"
    );
    assert_eq!(c["dropped_messages"], 3, "{c}");

    // The step after the compaction is given a smaller prompt: the summary, the
    // latest user message and the unfinished exchange, not the whole history.
    let counts: Vec<u64> = env
        .payloads(&id, "agent.step.started")
        .iter()
        .map(|p| p["message_count"].as_u64().unwrap())
        .collect();
    assert_eq!(counts, [1, 3, 4]);
    let types: Vec<String> = env
        .events(&id)
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_owned())
        .filter(|t| t == "context.compacted" || t == "agent.step.started")
        .collect();
    assert_eq!(
        types,
        [
            "agent.step.started",
            "agent.step.started",
            "context.compacted",
            "agent.step.started"
        ]
    );

    // The transcript on disk keeps every message, the big result whole.
    let lines = transcript(&env, &id);
    assert_eq!(
        roles(&lines),
        [
            "user",
            "assistant",
            "tool",
            "assistant",
            "tool",
            "assistant"
        ]
    );
    assert_eq!(lines[2]["content"].as_str().unwrap().len(), 20000);
    assert!(
        lines
            .iter()
            .all(|l| !l["content"].as_str().unwrap_or("").contains("SUMMARY:")),
        "the summary is not a transcript message"
    );
    let state: Value = serde_json::from_str(
        &std::fs::read_to_string(env.session_dir(&id).join("state.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        state["compaction"]["summary"],
        "SUMMARY: big.txt holds 20000 x characters"
    );
    assert_eq!(state["model_calls"], 4, "the summary was a model call");
    let state_size = std::fs::metadata(env.session_dir(&id).join("state.json"))
        .unwrap()
        .len();
    assert!(
        state_size < 4096,
        "state.json points into the transcript, it does not copy it: {state_size} bytes"
    );
}

#[test]
fn when_the_summariser_fails_the_oldest_turns_are_dropped_instead() {
    let env = TestEnv::new();
    env.write_agent(
        "dropper",
        r#"
name = "dropper"
[model]
provider = "scripted"
context_window = 4000
[[model.script]]
text = "reading the big file"
tool_calls = [{ name = "read_file", arguments = { path = "big.txt" } }]
[[model.script]]
text = "looking around"
tool_calls = [{ name = "list_dir", arguments = { path = "." } }]
[[model.script]]
error = { status = 400, message = "the summariser is broken" }
[[model.script]]
text = "answer without a summary: {input}"
[tools]
builtin = ["read_file", "list_dir"]
"#,
    );
    let (id, ws) = session_with_workspace(&env, "dropper");
    std::fs::write(ws.join("big.txt"), "z".repeat(20_000)).unwrap();
    let (exit, result) = run_json(&env, &["run", "--session", &id, "the task"]);
    assert_eq!(exit, 0, "{result}");
    assert_eq!(result["response"], "answer without a summary: the task");
    let compacted = env.payloads(&id, "context.compacted");
    assert_eq!(compacted.len(), 1, "{compacted:?}");
    assert_eq!(compacted[0]["summarized"], false);
    assert_eq!(compacted[0]["dropped_messages"], 3);
    assert!(
        compacted[0]["after_tokens"].as_u64().unwrap()
            < compacted[0]["before_tokens"].as_u64().unwrap()
    );
    // Without a summary the prompt keeps the latest user message and the unfinished
    // exchange: user, assistant, tool.
    let counts: Vec<u64> = env
        .payloads(&id, "agent.step.started")
        .iter()
        .map(|p| p["message_count"].as_u64().unwrap())
        .collect();
    assert_eq!(counts, [1, 3, 3]);
    assert_eq!(
        transcript(&env, &id).len(),
        6,
        "the transcript keeps everything"
    );
}

// ---------------------------------------------------------------------------------
// Checkpoints and resume

#[test]
fn a_worker_killed_between_steps_is_resumed_without_running_a_tool_twice() {
    let env = TestEnv::new();
    env.write_agent(
        "effects",
        r#"
name = "effects"
[model]
provider = "scripted"
[[model.script]]
text = "first"
tool_calls = [{ name = "side_effect", arguments = {} }]
[[model.script]]
text = "second"
tool_calls = [{ name = "side_effect", arguments = {} }]
[[model.script]]
text = "slowly streaming the third step while a kill lands"
delay_ms = 150
tool_calls = [{ name = "side_effect", arguments = {} }]
[[model.script]]
text = "all done"
[[tools.command]]
name = "side_effect"
argv = ["sh", "-c", "echo ran >> side-effects.log"]
"#,
    );
    let id = env.new_session("effects");
    env.send(&id, "do three things");
    let log = workspace(&env, &id).join("side-effects.log");
    let worker = env.spawn_worker(&[]);
    wait_until("the third step streaming", LONG, || {
        env.payloads(&id, "agent.stream.chunk")
            .iter()
            .any(|c| c["content"] == "slowly ")
    });
    worker.signal(9);
    let _ = worker.wait(LONG);
    assert_eq!(count_lines(&log), 2, "two steps settled before the kill");
    assert!(env.finished(&id).is_empty());

    env.worker_once();
    let started = env.payloads(&id, "execution.started");
    assert_eq!(started.len(), 2);
    assert_eq!(started[1]["resumed"], true);
    assert_eq!(started[1]["attempt"], 2);
    let done = the_finish(&env, &id);
    assert_eq!(done["status"], "completed");
    assert_eq!(done["steps"], 4);
    assert_eq!(
        env.payloads(&id, "agent.message.completed")[0]["response"],
        "all done"
    );
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        "ran\nran\nran\n",
        "one line per settled step: no tool call ran twice"
    );
    let tool_runs = env.payloads(&id, "agent.tool.completed");
    assert_eq!(tool_runs.len(), 3);
    let ids: BTreeSet<&str> = tool_runs
        .iter()
        .map(|t| t["tool_call_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 3);
    let lines = transcript(&env, &id);
    assert_eq!(
        roles(&lines),
        [
            "user",
            "assistant",
            "tool",
            "assistant",
            "tool",
            "assistant",
            "tool",
            "assistant"
        ],
        "the interrupted step left nothing behind"
    );
    assert_status_once_each(&env, &id, &["completed"]);
    let seqs: Vec<u64> = env
        .events(&id)
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
}
