//! Human approval (`approval = "required"`): a gated call parks its execution and runs
//! only once a person approves it, at most once; a denial reaches the model as a tool
//! error; cancel, a killed worker and `approval_timeout` are honoured. On both stores:
//! a parked session must not be claimed again until its inbox grows, which each store
//! decides its own way.

use std::time::Duration;

use crate::it::*;

const LONG: Duration = Duration::from_secs(60);

/// An agent whose model deploys (a gated command that counts its runs in `deploy.log`
/// of the workspace), then answers; twice, for two messages.
const GATED_AGENT: &str = r#"
name = "gated"
[model]
provider = "scripted"
[[model.script]]
text = "Deploying."
tool_calls = [{ name = "deploy", arguments = { target = "prod" } }]
[[model.script]]
text = "Done: {input}"
[[model.script]]
text = "Deploying again."
tool_calls = [{ name = "deploy", arguments = { target = "prod" } }]
[[model.script]]
text = "Done again: {input}"
[[tools.command]]
name = "deploy"
description = "Deploy the site"
argv = ["sh", "-c", "echo ran >> deploy.log; echo deployed"]
approval = "required"
"#;

/// A home with the gated agent, a session of it, and a message parked on its call.
fn parked() -> (TestEnv, String) {
    let env = TestEnv::new();
    env.write_agent("gated", GATED_AGENT);
    let id = env.new_session("gated");
    env.send(&id, "ship it");
    env.worker_once();
    assert_eq!(
        env.payloads(&id, "approval.requested").len(),
        1,
        "parked on the call"
    );
    (env, id)
}

/// How many times the gated command ran.
fn deploys(env: &TestEnv, id: &str) -> usize {
    std::fs::read_to_string(env.workspace(id).join("deploy.log"))
        .map_or(0, |log| log.lines().count())
}

fn statuses(env: &TestEnv, id: &str) -> Vec<(String, String)> {
    env.payloads(id, "agent.status")
        .iter()
        .map(|p| {
            (
                p["previous_status"].as_str().unwrap().to_owned(),
                p["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn pair(from: &str, to: &str) -> (String, String) {
    (from.to_owned(), to.to_owned())
}

#[test]
fn a_gated_command_parks_releases_the_session_and_does_not_run() {
    let (env, id) = parked();

    let requested = &env.payloads(&id, "approval.requested")[0];
    assert_eq!(requested["tool_name"], "deploy", "{requested}");
    assert_eq!(requested["tool_call_id"], "call_1_1");
    assert_eq!(requested["step"], 1);
    assert_eq!(
        requested["arguments"],
        serde_json::json!({"target": "prod"})
    );
    assert_eq!(
        statuses(&env, &id),
        [pair("idle", "processing"), pair("processing", "waiting")]
    );
    assert_eq!(deploys(&env, &id), 0, "nothing ran");
    assert!(env.events_of(&id, "agent.tool.started").is_empty());
    assert!(env.finished(&id).is_empty(), "not settled");
    assert!(env.unowned(&id), "the session was released");
    assert_eq!(env.pending(&id), 1, "its message stays in the inbox");

    let show = env.ok(&["session", "show", &id]);
    assert!(
        show.contains("waiting   ")
            && show.contains("approval of `deploy` call_1_1")
            && show.contains(&format!("agentq approve {id} call_1_1"))
            && show.contains(r#"arguments: {"target":"prod"}"#),
        "{show}"
    );
    let shown = env.json(&["session", "show", &id, "--json"]);
    assert_eq!(
        shown["running"]["awaiting_approval"]["tool_call_id"], "call_1_1",
        "{shown}"
    );
    let status = env.json(&["status", "--json"]);
    assert_eq!(
        status["running"][0]["awaiting_approval"]["tool_name"], "deploy",
        "{status}"
    );
    assert!(env.ok(&["status"]).contains("waiting   session"));
    let watched = env.run(&[
        "watch",
        &id,
        "--from-start",
        "--plain",
        "--exit-on-idle",
        "--no-wait-approval",
    ]);
    assert_eq!(code(&watched), 4, "{}", describe(&watched));
    let watched = stdout(&watched);
    assert!(
        watched.contains("⏸ deploy (call_1_1) waits for approval: target: 'prod'")
            && watched.contains(&format!("agentq approve {id} call_1_1")),
        "{watched}"
    );

    // Nothing new in the inbox: another worker's full scan leaves it parked.
    env.worker_once();
    assert_eq!(
        env.events_of(&id, "execution.started").len(),
        1,
        "not claimed again"
    );
    assert_eq!(deploys(&env, &id), 0);
    env.assert_gapless(&id);
}

#[test]
fn approve_with_no_worker_running_lets_the_next_worker_run_the_call_once() {
    let (env, id) = parked();
    let out = env.ok(&["approve", &id]);
    assert!(
        out.contains("approved call call_1_1") && out.contains("the next worker"),
        "{out}"
    );
    let decided = &env.payloads(&id, "approval.decided")[0];
    assert_eq!(decided["decision"], "approved", "{decided}");
    assert_eq!(decided["tool_call_id"], "call_1_1");
    assert!(
        decided["by"]["user"]
            .as_str()
            .is_some_and(|u| !u.is_empty())
    );
    assert_eq!(deploys(&env, &id), 0, "a decision runs nothing by itself");

    env.worker_once();
    assert_eq!(deploys(&env, &id), 1);
    let done = &env.finished(&id)[0];
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(env.responses(&id), ["Done: ship it"]);
    let tool = &env.tool_messages(&id)[0];
    assert_eq!(tool["is_error"], false, "{tool}");
    assert!(tool["content"].as_str().unwrap().contains("deployed"));
    assert_eq!(
        statuses(&env, &id),
        [
            pair("idle", "processing"),
            pair("processing", "waiting"),
            pair("waiting", "processing"),
            pair("processing", "completed")
        ]
    );
    assert!(
        env.executions(&id)[0].get("awaiting_approval").is_none(),
        "the settled record waits for nothing"
    );

    env.worker_once();
    assert_eq!(deploys(&env, &id), 1, "run once");
    assert_eq!(env.inbox_len(&id), 0, "the decision left the inbox too");
    assert_eq!(env.executions(&id).len(), 1);
    env.assert_gapless(&id);
}

#[test]
fn deny_gives_the_model_the_refusal_as_a_tool_error() {
    let (env, id) = parked();
    let out = env.ok(&["deny", &id, "--reason", "not on a Friday"]);
    assert!(out.contains("denied call call_1_1"), "{out}");
    env.worker_once();

    assert_eq!(deploys(&env, &id), 0, "a denied call never runs");
    let done = &env.finished(&id)[0];
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(env.responses(&id), ["Done: ship it"], "the model went on");
    let tool = &env.tool_messages(&id)[0];
    assert_eq!(tool["is_error"], true, "{tool}");
    let content = tool["content"].as_str().unwrap();
    assert!(
        content.contains("was denied by") && content.ends_with(": not on a Friday"),
        "{content}"
    );
    let decided = &env.payloads(&id, "approval.decided")[0];
    assert_eq!(decided["decision"], "denied");
    assert_eq!(decided["reason"], "not on a Friday");
    assert!(env.events_of(&id, "agent.tool.started").is_empty());
}

#[test]
fn a_second_approve_is_a_no_op_and_a_deny_after_it_exit_2() {
    let (env, id) = parked();
    let first = env.json(&["approve", &id, "--json"]);
    assert_eq!(first["duplicate"], false, "{first}");
    assert_eq!(first["decision"], "approved");
    assert_eq!(first["tool_name"], "deploy");
    let again = env.json(&["approve", &id, "call_1", "--json"]);
    assert_eq!(again["duplicate"], true, "{again}");
    assert_eq!(again["entry_id"], first["entry_id"]);
    assert!(
        env.ok(&["approve", &id])
            .contains("already approved; nothing changed")
    );
    let refused = env.fails(&["deny", &id, "--reason", "changed my mind"], 2);
    assert!(
        refused.contains("call_1_1") && refused.contains("already approved"),
        "{refused}"
    );
    assert_eq!(env.payloads(&id, "approval.decided").len(), 1);

    env.worker_once();
    assert_eq!(deploys(&env, &id), 1);
    assert_eq!(env.finished(&id)[0]["status"], "completed");
}

#[test]
fn approve_with_nothing_waiting_or_a_wrong_call_id_is_exit_2() {
    let env = TestEnv::new();
    env.write_agent("gated", GATED_AGENT);
    let id = env.new_session("gated");
    let none = env.fails(&["approve", &id], 2);
    assert!(none.contains("has no call waiting for approval"), "{none}");
    env.fails(&["deny", &id, "call_1_1"], 2);

    env.send(&id, "ship it");
    env.worker_once();
    let wrong = env.fails(&["approve", &id, "call_9_9"], 2);
    assert!(
        wrong.contains("waits for approval of call call_1_1 (`deploy`), not `call_9_9`"),
        "{wrong}"
    );
    env.fails(&["deny", &id, "call_2", "--json"], 2);
    assert!(env.payloads(&id, "approval.decided").is_empty());
    env.fails(&["approve", "no-such-session"], 2);

    env.ok(&["approve", &id, "call_1_1"]);
    env.worker_once();
    let after = env.fails(&["approve", &id], 2);
    assert!(after.contains("has no call waiting"), "{after}");
}

#[test]
fn cancel_ends_a_parked_execution_and_the_call_never_runs() {
    let (env, id) = parked();
    env.ok(&["cancel", &id]);
    env.worker_once_exiting(130);

    let done = &env.finished(&id)[0];
    assert_eq!(done["status"], "cancelled", "{done}");
    assert_eq!(done["exit_code"], 130);
    assert_eq!(deploys(&env, &id), 0);
    // The open step's call is answered, so the transcript stays a conversation.
    let tool = &env.tool_messages(&id)[0];
    assert_eq!(tool["tool_call_id"], "call_1_1");
    assert_eq!(
        tool["content"], "not run: the execution was cancelled",
        "{tool}"
    );
    env.fails(&["approve", &id], 2);

    // The session goes on: the next message runs from a valid history.
    env.send(&id, "next");
    env.worker_once();
    assert_eq!(env.finished(&id)[1]["status"], "completed");
    assert_eq!(env.inbox_len(&id), 0);
}

#[test]
fn approved_by_a_second_worker_after_the_first_was_killed_mid_park_the_call_runs_once() {
    let env = TestEnv::new();
    env.write_agent("gated", GATED_AGENT);
    let id = env.new_session("gated");
    env.send(&id, "ship it");
    let mut worker = env.spawn_worker(&[]);
    wait_until("the call to wait for approval", LONG, || {
        !env.events_of(&id, "approval.requested").is_empty()
    });
    // kill -9: no release, no clean-up; the park may or may not have been recorded.
    worker.child.kill().unwrap();
    worker.child.wait().unwrap();
    env.ok(&["approve", &id]);
    env.worker_once();

    assert_eq!(deploys(&env, &id), 1, "run once");
    let done = &env.finished(&id)[0];
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(env.tool_messages(&id)[0]["is_error"], false);
    env.worker_once();
    assert_eq!(deploys(&env, &id), 1);
    env.assert_gapless(&id);
}

#[test]
fn a_running_worker_runs_the_call_once_it_is_approved() {
    let env = TestEnv::new();
    env.write_agent("gated", GATED_AGENT);
    let id = env.new_session("gated");
    let _worker = env.spawn_worker(&[]);
    env.send(&id, "ship it");
    wait_until("the session to be parked and released", LONG, || {
        !env.events_of(&id, "approval.requested").is_empty() && env.unowned(&id)
    });
    env.ok(&["approve", &id]);
    wait_until("the execution to finish", LONG, || {
        !env.finished(&id).is_empty()
    });
    assert_eq!(deploys(&env, &id), 1);
    assert_eq!(env.finished(&id)[0]["status"], "completed");
}

#[test]
fn no_wait_approval_exits_4_and_prints_the_approve_command() {
    let env = TestEnv::new();
    env.write_agent("gated", GATED_AGENT);

    // `run`, in-process: text, then JSON.
    let out = env.run(&["run", "--agent", "gated", "ship it", "--no-wait-approval"]);
    assert_eq!(code(&out), 4, "{}", describe(&out));
    let said = stderr(&out);
    assert!(
        said.contains("waiting for approval of `deploy` (call_1_1): agentq approve ")
            && said.contains("agentq deny "),
        "{said}"
    );
    let out = env.run(&[
        "run",
        "--agent",
        "gated",
        "ship it",
        "--no-wait-approval",
        "--json",
    ]);
    assert_eq!(code(&out), 4, "{}", describe(&out));
    let result: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(result["status"], "running", "{result}");
    assert_eq!(result["exit_code"], 4);
    assert_eq!(result["awaiting_approval"]["tool_call_id"], "call_1_1");
    let id = result["session_id"].as_str().unwrap().to_owned();
    assert!(env.unowned(&id), "run let the session go");
    assert_eq!(deploys(&env, &id), 0);

    // `send --wait` with a worker running: text, then JSON.
    let id = env.new_session("gated");
    let _worker = env.spawn_worker(&[]);
    let out = env.run(&["send", &id, "ship it", "--wait", "--no-wait-approval"]);
    assert_eq!(code(&out), 4, "{}", describe(&out));
    assert!(
        stderr(&out).contains(&format!("agentq approve {id} call_1_1")),
        "{}",
        describe(&out)
    );
    env.ok(&["approve", &id]);
    wait_until("the approved call to finish", LONG, || {
        !env.finished(&id).is_empty()
    });
    let out = env.run(&[
        "send",
        &id,
        "again",
        "--wait",
        "--no-wait-approval",
        "--json",
    ]);
    assert_eq!(code(&out), 4, "{}", describe(&out));
    let result: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(
        result["awaiting_approval"]["tool_name"], "deploy",
        "{result}"
    );
    assert_eq!(result["awaiting_approval"]["tool_call_id"], "call_3_1");
}

#[test]
fn run_waits_in_process_for_an_approval_from_another_process_and_hints_once() {
    let env = TestEnv::new();
    env.write_agent("gated", GATED_AGENT);
    let id = env.new_session("gated");
    let run = env.spawn(&["run", "--session", &id, "ship it"]);
    wait_until("the call to wait for approval", LONG, || {
        env.payloads(&id, "approval.requested").len() == 1 && env.unowned(&id)
    });
    env.ok(&["approve", &id]);
    let out = run.wait(LONG);
    assert_eq!(code(&out), 0, "{}", describe(&out));
    assert_eq!(stdout(&out).trim(), "Done: ship it");
    assert_eq!(
        stderr(&out).matches("waits for approval").count(),
        1,
        "{}",
        describe(&out)
    );
    assert_eq!(deploys(&env, &id), 1);

    // `send --wait` keeps waiting through the approval too, and says how once.
    let _worker = env.spawn_worker(&[]);
    let send = env.spawn(&["send", &id, "again", "--wait"]);
    wait_until("the second call to wait", LONG, || {
        env.payloads(&id, "approval.requested").len() == 2 && env.unowned(&id)
    });
    env.ok(&["approve", &id]);
    let out = send.wait(LONG);
    assert_eq!(code(&out), 0, "{}", describe(&out));
    assert_eq!(
        stderr(&out)
            .matches("waiting for approval of `deploy`")
            .count(),
        1,
        "{}",
        describe(&out)
    );
    assert_eq!(deploys(&env, &id), 2);
}

#[test]
fn approval_timeout_denies_by_itself_in_a_running_worker() {
    let env = TestEnv::new();
    let timed = GATED_AGENT.replace(
        "[[tools.command]]",
        "[limits]\napproval_timeout = \"1s\"\n[[tools.command]]",
    );
    env.write_agent("gated", &timed);
    let id = env.new_session("gated");
    let _worker = env.spawn_worker(&[]);
    env.send(&id, "ship it");
    wait_until("the execution to finish", LONG, || {
        !env.finished(&id).is_empty()
    });

    assert_eq!(deploys(&env, &id), 0, "never approved, never run");
    assert_eq!(env.finished(&id)[0]["status"], "completed");
    let requested = &env.events_of(&id, "approval.requested")[0];
    let decided = &env.events_of(&id, "approval.decided")[0];
    assert_eq!(decided["payload"]["decision"], "denied", "{decided}");
    assert_eq!(decided["payload"]["by"]["user"], "approval_timeout");
    let at = |event: &serde_json::Value, key: &str| {
        agentq::time::Timestamp::parse(event[key].as_str().unwrap()).unwrap()
    };
    let deny_at = at(&requested["payload"], "deny_at");
    assert_eq!(
        deny_at.millis_since(at(&requested["payload"], "requested_at")),
        1000
    );
    // The worker came back for it on time, not at its next full scan (30 s).
    let late = at(decided, "timestamp").millis_since(deny_at);
    assert!(late < 10_000, "denied {late} ms after its deny_at");
    let tool = &env.tool_messages(&id)[0];
    assert_eq!(tool["is_error"], true);
    assert!(
        tool["content"]
            .as_str()
            .unwrap()
            .contains("denied by approval_timeout: no approval within 1.0s (approval_timeout)"),
        "{tool}"
    );
}

#[test]
fn worker_once_denies_a_call_whose_approval_timeout_passed() {
    let env = TestEnv::new();
    let timed = GATED_AGENT.replace(
        "[[tools.command]]",
        "[limits]\napproval_timeout = \"1s\"\n[[tools.command]]",
    );
    env.write_agent("gated", &timed);
    let id = env.new_session("gated");
    env.send(&id, "ship it");
    env.worker_once();
    assert!(env.finished(&id).is_empty(), "parked");
    let deny_at = agentq::time::Timestamp::parse(
        env.payloads(&id, "approval.requested")[0]["deny_at"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    wait_until("the call's deny_at to pass", LONG, || {
        agentq::time::Timestamp::from_system(std::time::SystemTime::now()) > deny_at
    });
    env.worker_once();
    assert_eq!(env.finished(&id)[0]["status"], "completed");
    assert_eq!(
        env.payloads(&id, "approval.decided")[0]["by"]["user"],
        "approval_timeout"
    );
    assert_eq!(deploys(&env, &id), 0);
}
