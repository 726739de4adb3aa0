//! Done-when checks (`[[checks]]`): the execution completes only when they pass, the
//! model is shown what failed, and a stop or a resume while they run is honoured. On
//! both stores: checks are events and checkpoints, nothing store-specific.

use std::time::Duration;

use serde_json::Value;

use crate::it::*;

const LONG: Duration = Duration::from_secs(60);

/// A CI-like agent whose scripted model answers too early twice: the check fails, the
/// model is told, it writes a wrong then the right `status.txt`, and answers again.
/// `lint` always passes, so every round runs both and reports both.
const FIXER_AGENT: &str = r#"
name = "fixer"
[model]
provider = "scripted"
[[model.script]]
text = "All done."
[[model.script]]
text = "Fixing."
tool_calls = [{ name = "write_file", arguments = { path = "status.txt", content = "no" } }]
[[model.script]]
text = "Fixed."
[[model.script]]
text = "Fixing again."
tool_calls = [{ name = "write_file", arguments = { path = "status.txt", content = "ok" } }]
[[model.script]]
text = "Fixed for real."
[tools]
builtin = ["write_file"]
[[checks]]
name = "status"
argv = ["sh", "-c", "echo run >> runs.log; echo \"status is $(cat status.txt 2>/dev/null || echo missing)\" >&2; grep -qsx ok status.txt"]
timeout = "20s"
[[checks]]
name = "lint"
argv = ["true"]
"#;

/// An agent whose check never passes.
const STUBBORN_AGENT: &str = r#"
name = "stubborn"
[model]
provider = "scripted"
[[model.script]]
text = "Done, trust me."
[[checks]]
name = "tests"
argv = ["sh", "-c", "echo 'running 1 test'; echo 'assertion failed: left == right' >&2; exit 101"]
"#;

/// An agent whose check waits for `go` in the workspace (up to 30 s), counting its runs.
const WAITING_AGENT: &str = r#"
name = "waiting"
[model]
provider = "scripted"
[[model.script]]
text = "Done."
[[checks]]
name = "slow"
argv = ["sh", "-c", "echo $$ >> pids; i=0; while [ ! -f go ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done; test -f go"]
timeout = "60s"
"#;

fn completed_checks(env: &TestEnv, id: &str) -> Vec<(String, u64, bool, Value)> {
    env.payloads(id, "agent.check.completed")
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_owned(),
                p["round"].as_u64().unwrap(),
                p["success"].as_bool().unwrap(),
                p["exit_code"].clone(),
            )
        })
        .collect()
}

fn feedback_lines(env: &TestEnv, id: &str) -> Vec<String> {
    env.json(&["session", "messages", id, "--json"])
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["feedback"] == "check")
        .map(|m| {
            assert_eq!(m["role"], "user", "{m}");
            m["content"].as_str().unwrap().to_owned()
        })
        .collect()
}

#[test]
fn a_check_that_fails_twice_then_passes_completes_with_the_models_fixes() {
    let env = TestEnv::new();
    env.write_agent("fixer", FIXER_AGENT);
    let id = env.new_session("fixer");
    env.send(&id, "make the check pass");
    env.worker_once();

    let done = &env.finished(&id)[0];
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["exit_code"], 0);
    assert_eq!(done["steps"], 5);
    let checks = done["checks"]
        .as_array()
        .expect("execution.finished lists the checks");
    let last: Vec<(&str, bool, &Value)> = checks
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap(),
                c["success"].as_bool().unwrap(),
                &c["exit_code"],
            )
        })
        .collect();
    assert_eq!(
        last,
        [
            ("status", true, &Value::from(0)),
            ("lint", true, &Value::from(0))
        ]
    );
    assert_eq!(env.responses(&id), ["Fixed for real."]);
    assert_eq!(env.executions(&id)[0]["checks"], done["checks"]);

    let status =
        |round, success, code: i64| ("status".to_owned(), round, success, Value::from(code));
    let lint = |round| ("lint".to_owned(), round, true, Value::from(0));
    assert_eq!(
        completed_checks(&env, &id),
        [
            status(1, false, 2),
            lint(1),
            status(2, false, 1),
            lint(2),
            status(3, true, 0),
            lint(3)
        ]
    );
    let started: Vec<(String, u64)> = env
        .payloads(&id, "agent.check.started")
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_owned(),
                p["round"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(started.len(), 6);
    assert_eq!(started[0], ("status".to_owned(), 1));
    let summaries: Vec<String> = env
        .payloads(&id, "agent.check.completed")
        .iter()
        .filter(|p| p["name"] == "status")
        .map(|p| p["output_summary"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        summaries,
        ["status is missing", "status is no", "status is ok"]
    );
    let runs = std::fs::read_to_string(env.workspace(&id).join("runs.log")).unwrap();
    assert_eq!(runs.lines().count(), 3, "one run per round");

    // The model was shown each failure, with the check's output, as a user line.
    let feedback = feedback_lines(&env, &id);
    assert_eq!(feedback.len(), 2, "{feedback:?}");
    assert!(
        feedback[0].contains("The check `status`")
            && feedback[0].contains("exit code: 2")
            && feedback[0].contains("status is missing")
            && feedback[0].contains("round 1 of 3"),
        "{}",
        feedback[0]
    );
    assert!(feedback[1].contains("status is no"), "{}", feedback[1]);
    assert!(
        !feedback[0].contains("`lint`"),
        "only what failed: {}",
        feedback[0]
    );
    assert_eq!(env.state(&id)["model_calls"], 5);

    let watched = env.ok(&["watch", &id, "--from-start", "--plain", "--exit-on-idle"]);
    assert!(watched.contains("→ check status (round 1)"), "{watched}");
    assert!(
        watched.contains("✗ check status (") && watched.contains("): exit 2 — status is missing"),
        "{watched}"
    );
    assert!(watched.contains("✓ check status ("), "{watched}");
    assert!(watched.contains("■ completed"), "{watched}");
    let show = env.ok(&["session", "show", &id]);
    assert!(show.contains("checks    ✓ status, ✓ lint"), "{show}");
    let messages = env.ok(&["session", "messages", &id]);
    assert!(
        messages.contains("checks: Your answer is not accepted yet"),
        "{messages}"
    );
}

#[test]
fn checks_failing_every_round_fail_with_checks_failed_and_exit_1() {
    let env = TestEnv::new();
    env.write_agent("stubborn", STUBBORN_AGENT);
    let id = env.new_session("stubborn");
    env.send(&id, "fix it");
    env.worker_once_exiting(1);

    let done = &env.finished(&id)[0];
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["stop_reason"], "checks_failed");
    assert_eq!(done["exit_code"], 1);
    let error = done["error"].as_str().unwrap();
    assert!(
        error.contains("`tests` (exit code: 101") && error.contains("after 3 rounds"),
        "{error}"
    );
    assert_eq!(done["checks"][0]["success"], false);
    assert_eq!(done["checks"][0]["exit_code"], 101);
    let rounds: Vec<u64> = completed_checks(&env, &id).iter().map(|c| c.1).collect();
    assert_eq!(rounds, [1, 2, 3]);
    assert_eq!(env.state(&id)["model_calls"], 3, "no fourth model call");
    assert_eq!(
        feedback_lines(&env, &id).len(),
        2,
        "the last round is not sent back"
    );
    assert!(env.responses(&id).is_empty(), "no answer was accepted");
    assert_eq!(
        env.payloads(&id, "agent.check.completed")[0]["output_summary"],
        "assertion failed: left == right"
    );
    let watched = env.run(&["watch", &id, "--from-start", "--plain", "--exit-on-idle"]);
    assert_eq!(code(&watched), 1, "{}", describe(&watched));
    assert!(
        stdout(&watched).contains("■ failed (checks_failed)"),
        "{}",
        describe(&watched)
    );
    let show = env.ok(&["session", "show", &id]);
    assert!(show.contains("checks    ✗ tests (exit 101)"), "{show}");

    // max_check_rounds = 1: the first failing round fails the execution.
    let once = env.ok(&[
        "session",
        "new",
        "--agent",
        "stubborn",
        "--set",
        "limits.max_check_rounds=1",
    ]);
    let once = once.trim();
    env.send(once, "fix it");
    env.worker_once_exiting(1);
    assert_eq!(env.finished(once)[0]["stop_reason"], "checks_failed");
    assert_eq!(env.state(once)["model_calls"], 1);
    assert!(feedback_lines(&env, once).is_empty());
}

#[test]
fn a_failing_check_on_the_last_allowed_step_stops_with_steps_limit() {
    let env = TestEnv::new();
    env.write_agent(
        "stubborn",
        &STUBBORN_AGENT.replace("[[checks]]", "[limits]\nmax_steps = 2\n[[checks]]"),
    );
    let id = env.new_session("stubborn");
    env.send(&id, "fix it");
    env.worker_once_exiting(3);
    let done = &env.finished(&id)[0];
    assert_eq!(done["status"], "stopped", "{done}");
    assert_eq!(done["stop_reason"], "steps_limit");
    assert_eq!(done["steps"], 2);
    assert_eq!(completed_checks(&env, &id).len(), 2);
}

#[test]
fn a_check_runs_in_the_workspace_like_a_declared_command() {
    let env = TestEnv::new();
    env.write_agent(
        "sandboxed",
        r#"
name = "sandboxed"
[model]
provider = "scripted"
[[model.script]]
text = "Done."
[limits]
max_check_rounds = 1
[[checks]]
name = "where"
argv = ["sh", "-c", "pwd > sub.txt; env > env.txt"]
cwd = "sub"
[[checks]]
name = "hang"
argv = ["sh", "-c", "sleep 100 & sleep 100"]
timeout = "300ms"
"#,
    );
    let id = env.new_session("sandboxed");
    env.send(&id, "go");
    std::fs::create_dir_all(env.workspace(&id).join("sub")).unwrap();
    let out = env
        .cmd()
        .args(["worker", "--once"])
        .env("X_TOKEN", "hunter2")
        .env("OPENAI_API_KEY", "sk-test")
        .output()
        .unwrap();
    assert_eq!(code(&out), 1, "{}", describe(&out));

    let sub = env.workspace(&id).join("sub");
    let pwd = std::fs::read_to_string(sub.join("sub.txt")).unwrap();
    assert_eq!(
        std::path::Path::new(pwd.trim()).canonicalize().unwrap(),
        sub.canonicalize().unwrap()
    );
    let seen = std::fs::read_to_string(sub.join("env.txt")).unwrap();
    assert!(
        !seen.contains("hunter2") && !seen.contains("sk-test"),
        "{seen}"
    );
    assert!(seen.contains(&format!("AGENTQ_SESSION_ID={id}")), "{seen}");

    let checks = completed_checks(&env, &id);
    assert_eq!(checks[0], ("where".to_owned(), 1, true, Value::from(0)));
    assert_eq!(checks[1], ("hang".to_owned(), 1, false, Value::Null));
    let hang = &env.payloads(&id, "agent.check.completed")[1];
    assert_cut_short(hang, "timed out after 300ms");
}

#[test]
fn cancel_during_a_check_kills_it_and_ends_cancelled() {
    let env = TestEnv::new();
    env.write_agent("waiting", WAITING_AGENT);
    let id = env.new_session("waiting");
    env.send(&id, "go");
    let worker = env.spawn_worker(&[]);
    wait_until("the check to start", LONG, || {
        !env.events_of(&id, "agent.check.started").is_empty()
            && env.workspace(&id).join("pids").exists()
    });
    env.ok(&["cancel", &id]);
    wait_until("the execution to finish", LONG, || {
        !env.finished(&id).is_empty()
    });
    drop(worker);

    let done = &env.finished(&id)[0];
    assert_eq!(done["status"], "cancelled", "{done}");
    assert_eq!(done["exit_code"], 130);
    let check = &env.payloads(&id, "agent.check.completed")[0];
    assert_eq!(check["success"], false);
    assert_cut_short(check, "cancelled");
    let pid: i32 = std::fs::read_to_string(env.workspace(&id).join("pids"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    wait_until("the check's process to be gone", LONG, || !alive(pid));
}

/// Whether `pid` runs (exists and is not a zombie).
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .is_some_and(|(_, rest)| !matches!(rest.trim_start().chars().next(), Some('Z' | 'X')))
    })
}

#[test]
fn a_worker_stopped_during_a_check_suspends_and_the_resumed_execution_runs_it_again() {
    let env = TestEnv::new();
    env.write_agent("waiting", WAITING_AGENT);
    let id = env.new_session("waiting");
    env.send(&id, "go");
    let worker = env.spawn_worker(&[]);
    wait_until("the check to start", LONG, || {
        env.workspace(&id).join("pids").exists()
    });
    worker.signal(15);
    let out = worker.wait(LONG);
    assert_eq!(code(&out), 0, "{}", describe(&out));
    assert!(env.finished(&id).is_empty(), "suspended, not settled");
    let check = &env.payloads(&id, "agent.check.completed")[0];
    assert_cut_short(check, "runs again on resume");
    assert_eq!(env.state(&id)["model_calls"], 1);

    std::fs::write(env.workspace(&id).join("go"), "").unwrap();
    env.worker_once();
    let done = &env.finished(&id)[0];
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["checks"][0]["success"], true);
    assert_eq!(env.responses(&id), ["Done."]);
    assert_eq!(
        env.state(&id)["model_calls"],
        1,
        "the answer was kept: no model call"
    );
    let pids = std::fs::read_to_string(env.workspace(&id).join("pids")).unwrap();
    assert_eq!(pids.lines().count(), 2, "the round ran again: {pids}");
    let rounds: Vec<u64> = env
        .payloads(&id, "agent.check.started")
        .iter()
        .map(|p| p["round"].as_u64().unwrap())
        .collect();
    assert_eq!(rounds, [1, 1]);
    env.assert_gapless(&id);
}

/// A check's `agent.check.completed` says `why` it ended, and that its process group was
/// killed then rather than left to run: its check sleeps far longer than this bound.
fn assert_cut_short(completed: &Value, why: &str) {
    let summary = completed["output_summary"].as_str().unwrap_or_default();
    assert!(summary.contains(why), "{completed}");
    assert!(
        completed["duration_ms"].as_u64().unwrap() < 20_000,
        "its process group was killed at once: {completed}"
    );
}

#[test]
fn run_json_and_send_wait_json_print_the_checks_as_they_ended() {
    let env = TestEnv::new();
    env.write_agent("stubborn", STUBBORN_AGENT);
    let out = env.run(&["run", "--agent", "stubborn", "go", "--json"]);
    assert_eq!(code(&out), 1, "{}", describe(&out));
    let result: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(result["stop_reason"], "checks_failed", "{result}");
    let checks = result["checks"].as_array().expect("the checks are printed");
    assert_eq!(checks.len(), 1, "{result}");
    assert_eq!(checks[0]["name"], "tests");
    assert_eq!(checks[0]["success"], false);
    assert_eq!(checks[0]["exit_code"], 101);

    let id = result["session_id"].as_str().unwrap().to_owned();
    let _worker = env.spawn_worker(&[]);
    let out = env.run(&["send", &id, "again", "--wait", "--json", "--timeout", "60s"]);
    assert_eq!(code(&out), 1, "{}", describe(&out));
    let again: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(again["checks"][0]["name"], "tests", "{again}");
    assert_eq!(again["checks"][0]["exit_code"], 101, "{again}");

    // An agent without checks prints no `checks` at all.
    env.write_agent(
        "plain",
        "name = \"plain\"\n[model]\nprovider = \"scripted\"\n[[model.script]]\ntext = \"hi\"\n",
    );
    let out = env.run(&["run", "--agent", "plain", "hi", "--json"]);
    assert_eq!(code(&out), 0, "{}", describe(&out));
    let plain: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(plain.get("checks").is_none(), "{plain}");
}
