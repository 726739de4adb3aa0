//! Completion hooks (`[hooks] on_finish`): after an execution settles, a program gets
//! its `execution.finished` line on stdin, or a URL gets it POSTed (retried, keyed by
//! the execution's id), at least once, even across a worker killed in between; a hook
//! never changes the execution's outcome, and a `url_env` URL is written nowhere. On
//! both stores: hooks live in the session's state, which both keep.

use serde_json::Value;

use crate::it::fake_server::{FakeServer, Reply};
use crate::it::*;

/// An agent that answers at once and has `hooks` (TOML for `[[hooks.on_finish]]`).
fn agent_with(hooks: &str) -> String {
    format!(
        r#"
name = "hooked"
[model]
provider = "scripted"
[[model.script]]
text = "done: {{input}}"
[[model.script]]
error = {{ status = 400, message = "injected bad request" }}
{hooks}
"#
    )
}

/// A session of `agent_with(hooks)` with one message queued.
fn session_with(env: &TestEnv, hooks: &str) -> String {
    env.write_agent("hooked", &agent_with(hooks));
    let id = env.new_session("hooked");
    env.send(&id, "ship it");
    id
}

/// The raw `execution.finished` line of the session's only execution.
fn finished_line(env: &TestEnv, id: &str) -> String {
    let lines: Vec<String> = env
        .raw_events(id)
        .into_iter()
        .filter(|l| l.contains("\"type\":\"execution.finished\""))
        .collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    lines[0].clone()
}

/// The events `hook.completed` and `hook.failed`, whole, in log order.
fn hook_events(env: &TestEnv, id: &str) -> Vec<Value> {
    env.events(id)
        .into_iter()
        .filter(|e| e["type"] == "hook.completed" || e["type"] == "hook.failed")
        .collect()
}

/// `worker --once`, with `vars` set in its environment; requires exit 0. Returns its
/// stderr (the worker's log).
fn worker_once_with(env: &TestEnv, vars: &[(&str, &str)]) -> String {
    let mut cmd = env.cmd();
    cmd.args(["worker", "--once"]);
    for (name, value) in vars {
        cmd.env(name, value);
    }
    let out = cmd.output().expect("run the worker");
    assert_eq!(code(&out), 0, "worker --once:\n{}", describe(&out));
    stderr(&out)
}

/// Whether `pid` runs (exists and is not a zombie).
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .is_some_and(|(_, rest)| !matches!(rest.trim_start().chars().next(), Some('Z' | 'X')))
    })
}

fn state_hooks(env: &TestEnv, id: &str) -> Value {
    env.state(id).get("hooks").cloned().unwrap_or(Value::Null)
}

#[test]
fn a_command_hook_gets_the_exact_execution_finished_line_on_stdin() {
    let env = TestEnv::new();
    let id = session_with(
        &env,
        r#"
[[hooks.on_finish]]
argv = ["sh", "-c", "cat > stdin.txt; echo \"$AGENTQ_EXECUTION_ID $AGENTQ_HOOK_ATTEMPT ${X_TOKEN:-absent} $(pwd)\" > env.txt"]
"#,
    );
    worker_once_with(&env, &[("X_TOKEN", "hunter2")]);

    let line = finished_line(&env, &id);
    let workspace = env.workspace(&id);
    let stdin = std::fs::read_to_string(workspace.join("stdin.txt")).unwrap();
    assert_eq!(stdin, format!("{line}\n"), "the line as the log holds it");
    let finished: Value = serde_json::from_str(&line).unwrap();
    let exec_id = finished["execution_id"].as_str().unwrap();
    let env_line = std::fs::read_to_string(workspace.join("env.txt")).unwrap();
    let real = workspace.canonicalize().unwrap();
    assert_eq!(
        env_line.trim(),
        format!("{exec_id} 1 absent {}", real.display()),
        "its id and attempt, no secret, in the workspace"
    );

    let hooks = hook_events(&env, &id);
    assert_eq!(hooks.len(), 1, "{hooks:?}");
    let hook = &hooks[0];
    assert_eq!(hook["type"], "hook.completed", "{hook}");
    assert_eq!(hook["execution_id"], Value::Null, "a session-level event");
    assert!(hook["seq"].as_u64() > finished["seq"].as_u64(), "{hook}");
    let p = &hook["payload"];
    assert_eq!(p["execution_id"], exec_id);
    assert_eq!(
        (
            &p["hook"],
            &p["kind"],
            &p["target"],
            &p["attempts"],
            &p["exit_code"]
        ),
        (
            &Value::from(0),
            &Value::from("command"),
            &Value::from("sh"),
            &Value::from(1),
            &Value::from(0)
        ),
        "{p}"
    );
    assert_eq!(state_hooks(&env, &id), Value::Null, "delivered: none left");
    env.assert_gapless(&id);
    let watched = env.ok(&["watch", &id, "--from-start", "--plain", "--exit-on-idle"]);
    assert!(watched.contains("✓ hook 0: command sh"), "{watched}");
}

#[test]
fn a_failing_command_hook_is_reported_once_and_the_exit_code_stays_0() {
    let env = TestEnv::new();
    let id = session_with(
        &env,
        r#"
[[hooks.on_finish]]
argv = ["sh", "-c", "echo ran >> runs.txt; exit 3"]
"#,
    );
    env.worker_once_exiting(0);
    env.worker_once_exiting(0);

    let hooks = hook_events(&env, &id);
    assert_eq!(hooks.len(), 1, "not run again: {hooks:?}");
    assert_eq!(hooks[0]["type"], "hook.failed");
    let p = &hooks[0]["payload"];
    assert_eq!(p["exit_code"], 3, "{p}");
    assert!(
        p["error"].as_str().unwrap().starts_with("exit code: 3"),
        "{p}"
    );
    let runs = std::fs::read_to_string(env.workspace(&id).join("runs.txt")).unwrap();
    assert_eq!(runs, "ran\n");
    assert_eq!(env.finished(&id)[0]["exit_code"], 0);
    let record = &env.executions(&id)[0];
    assert_eq!(
        (&record["status"], &record["exit_code"]),
        (&Value::from("completed"), &Value::from(0))
    );
    assert_eq!(state_hooks(&env, &id), Value::Null);
}

#[test]
fn when_filters_the_executions_a_hook_runs_for() {
    let env = TestEnv::new();
    let id = session_with(
        &env,
        r#"
[[hooks.on_finish]]
argv = ["sh", "-c", "echo \"completed $AGENTQ_EXECUTION_ID\" >> hooks.log"]
when = ["completed"]
[[hooks.on_finish]]
argv = ["sh", "-c", "echo \"failed or cancelled $AGENTQ_EXECUTION_ID\" >> hooks.log"]
when = ["failed", "cancelled"]
[[hooks.on_finish]]
argv = ["sh", "-c", "echo \"any $AGENTQ_EXECUTION_ID\" >> hooks.log"]
"#,
    );
    env.send(&id, "and fail");
    env.worker_once_exiting(1);

    let ids: Vec<String> = env
        .finished(&id)
        .iter()
        .map(|f| f["status"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, ["completed", "failed"]);
    let execs: Vec<String> = env
        .events_of(&id, "execution.finished")
        .iter()
        .map(|e| e["execution_id"].as_str().unwrap().to_owned())
        .collect();
    let log = std::fs::read_to_string(env.workspace(&id).join("hooks.log")).unwrap();
    assert_eq!(
        log.lines().collect::<Vec<_>>(),
        [
            format!("completed {}", execs[0]),
            format!("any {}", execs[0]),
            format!("failed or cancelled {}", execs[1]),
            format!("any {}", execs[1]),
        ]
    );
    let hooks: Vec<(String, u64)> = hook_events(&env, &id)
        .iter()
        .map(|e| {
            (
                e["payload"]["execution_id"].as_str().unwrap().to_owned(),
                e["payload"]["hook"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        hooks,
        [
            (execs[0].clone(), 0),
            (execs[0].clone(), 2),
            (execs[1].clone(), 1),
            (execs[1].clone(), 2)
        ]
    );
}

/// A command hook that blocks on its first attempt (until killed) and returns at once
/// on the others, counting its attempts in `attempts.txt` (and its pids in `pids.txt`).
const BLOCKING_HOOK: &str = r#"
[[hooks.on_finish]]
argv = ["sh", "-c", "echo $$ >> pids.txt; echo $AGENTQ_HOOK_ATTEMPT >> attempts.txt; if [ $AGENTQ_HOOK_ATTEMPT = 1 ]; then sleep 60; fi"]
timeout = "90s"
"#;

/// Runs a worker until the hook of `BLOCKING_HOOK` started its first attempt, and
/// kills it there (-9): the execution settled, the hook not delivered.
fn kill_a_worker_during_the_first_attempt(env: &TestEnv, id: &str) {
    let worker = env.spawn_worker(&[]);
    let attempts = env.workspace(id).join("attempts.txt");
    wait_until("the hook's first attempt", LONG, || attempts.exists());
    worker.signal(9);
    worker.wait(LONG);
    assert_eq!(env.finished(id).len(), 1, "the execution settled");
    assert!(hook_events(env, id).is_empty());
    assert_eq!(env.inbox_len(id), 0, "nothing queued");
    assert_eq!(
        state_hooks(env, id)[0]["attempts"],
        1,
        "the attempt is counted"
    );
}

#[test]
fn pending_hooks_are_found_with_an_empty_inbox_and_no_marker() {
    let env = TestEnv::new();
    let id = session_with(&env, BLOCKING_HOOK);
    kill_a_worker_during_the_first_attempt(&env, &id);
    // The marker would lead the next worker here: without it, only the state says
    // there is work (the files' full scan; on Postgres, there is no marker).
    let marker = env.home().join("sessions/.ready").join(&id);
    let _ = std::fs::remove_file(&marker);

    env.worker_once();
    let hooks = hook_events(&env, &id);
    assert_eq!(hooks.len(), 1, "{hooks:?}");
    assert_eq!(hooks[0]["type"], "hook.completed");
    assert_eq!(hooks[0]["payload"]["attempts"], 2);
    let attempts = std::fs::read_to_string(env.workspace(&id).join("attempts.txt")).unwrap();
    assert_eq!(attempts, "1\n2\n");
    let pids = std::fs::read_to_string(env.workspace(&id).join("pids.txt")).unwrap();
    let first: i32 = pids.lines().next().unwrap().parse().unwrap();
    // Its `sleep 60` would outlive this wait, had it not been killed with its worker
    // (the death signal) or by the next owner (the record of its process group).
    wait_until(
        "the attempt the killed worker left running to be killed",
        LONG,
        || !alive(first),
    );
    assert_eq!(state_hooks(&env, &id), Value::Null);
    assert_eq!(env.finished(&id).len(), 1, "the execution is not run again");
    assert_eq!(env.executions(&id)[0]["exit_code"], 0);
    env.assert_gapless(&id);
}

#[test]
fn a_hook_whose_finished_line_a_damaged_log_lost_is_given_up_once() {
    let env = TestEnv::new();
    let id = session_with(&env, BLOCKING_HOOK);
    kill_a_worker_during_the_first_attempt(&env, &id);
    // The log loses its last lines (the settled execution's `execution.finished`
    // among them), as a repair that set a damaged tail aside leaves it.
    env.lose_events_from(&id, "execution.finished");

    env.worker_once();
    let hooks = hook_events(&env, &id);
    assert_eq!(hooks.len(), 1, "{hooks:?}");
    assert_eq!(hooks[0]["type"], "hook.failed");
    let error = hooks[0]["payload"]["error"].as_str().unwrap();
    assert!(
        error.contains("execution.finished line is missing"),
        "{error}"
    );
    assert_eq!(state_hooks(&env, &id), Value::Null, "given up, not kept");
    let attempts = std::fs::read_to_string(env.workspace(&id).join("attempts.txt")).unwrap();
    assert_eq!(attempts, "1\n", "no attempt without the line to give it");

    // Nothing brings a worker back to the session.
    env.worker_once();
    assert_eq!(hook_events(&env, &id).len(), 1);
}

#[test]
fn a_hook_whose_settling_was_cut_before_its_finished_line_is_delivered_not_given_up() {
    let Some(env) = TestEnv::files_only(
        "a database settles the record and its line in one transaction: nothing in between",
    ) else {
        return;
    };
    let id = session_with(&env, BLOCKING_HOOK);
    let inbox = env.session_dir(&id).join("inbox");
    let entry = std::fs::read_dir(&inbox)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let queued = std::fs::read(&entry).unwrap();
    kill_a_worker_during_the_first_attempt(&env, &id);
    // As a kill after the terminal record and before `execution.finished` leaves it:
    // no line, the message still in the inbox, the hooks pending in the state.
    env.lose_events_from(&id, "execution.finished");
    std::fs::write(&entry, queued).unwrap();

    env.worker_once();
    let hooks = hook_events(&env, &id);
    assert_eq!(hooks.len(), 1, "{hooks:?}");
    assert_eq!(hooks[0]["type"], "hook.completed", "{hooks:?}");
    finished_line(&env, &id);
    let attempts = std::fs::read_to_string(env.workspace(&id).join("attempts.txt")).unwrap();
    assert_eq!(
        attempts, "1\n2\n",
        "delivered by the worker that finished the settling"
    );
    assert_eq!(env.inbox_len(&id), 0);
    assert_eq!(state_hooks(&env, &id), Value::Null);
}

#[test]
fn a_worker_stopped_during_a_hook_leaves_it_pending_and_uncounted() {
    let env = TestEnv::new();
    let id = session_with(&env, BLOCKING_HOOK);
    let worker = env.spawn_worker(&[]);
    let attempts = env.workspace(&id).join("attempts.txt");
    wait_until("the hook's first attempt", LONG, || attempts.exists());
    worker.signal(15);
    let out = worker.wait(LONG);
    assert_eq!(code(&out), 0, "{}", describe(&out));
    assert!(hook_events(&env, &id).is_empty());
    assert_eq!(
        state_hooks(&env, &id)[0].get("attempts"),
        None,
        "a shutdown is not the hook's failure"
    );
}

/// A webhook on the fake server: its URL with a secret in the path and the query.
fn webhook(server: &FakeServer) -> String {
    format!("{}/services/T000/B000?token=s3cr3t", server.url())
}

#[test]
fn a_url_hook_is_retried_after_a_500_with_one_idempotency_key() {
    let server = FakeServer::start(vec![
        Reply::error(500, "try later"),
        Reply::json(503, serde_json::json!({})).header("Retry-After", "0"),
        Reply::json(200, serde_json::json!({"ok": true})),
    ]);
    let env = TestEnv::new();
    let id = session_with(
        &env,
        &format!("[[hooks.on_finish]]\nurl = \"{}\"\n", webhook(&server)),
    );
    env.worker_once();

    let line = finished_line(&env, &id);
    let finished: Value = serde_json::from_str(&line).unwrap();
    let exec_id = finished["execution_id"].as_str().unwrap();
    let requests = server.requests();
    assert_eq!(requests.len(), 3, "{requests:?}");
    for request in &requests {
        assert_eq!(request.method, "POST");
        assert_eq!(request.path, "/services/T000/B000?token=s3cr3t");
        assert_eq!(request.header("idempotency-key"), Some(exec_id));
        assert_eq!(request.header("content-type"), Some("application/json"));
        assert_eq!(request.body, finished, "the execution.finished line");
    }
    let hooks = hook_events(&env, &id);
    assert_eq!(hooks.len(), 1, "{hooks:?}");
    let p = &hooks[0]["payload"];
    assert_eq!(hooks[0]["type"], "hook.completed", "{p}");
    assert_eq!(
        (&p["kind"], &p["attempts"], &p["http_status"]),
        (&Value::from("url"), &Value::from(3), &Value::from(200))
    );
    assert_eq!(p["target"], server.url(), "scheme and host only");
    assert!(
        env.raw_events(&id).iter().all(|l| !l.contains("s3cr3t")),
        "the URL's path and query are in no event"
    );
}

#[test]
fn a_4xx_is_not_retried_and_hook_failed_leaves_exit_0() {
    let server = FakeServer::start(vec![Reply::error(404, "no such hook")]);
    let env = TestEnv::new();
    let id = session_with(
        &env,
        &format!(
            "[[hooks.on_finish]]\nurl = \"{}\"\nmax_attempts = 4\n",
            webhook(&server)
        ),
    );
    env.worker_once_exiting(0);

    assert_eq!(server.request_count(), 1, "a 404 is final");
    let hooks = hook_events(&env, &id);
    assert_eq!(hooks.len(), 1, "{hooks:?}");
    assert_eq!(hooks[0]["type"], "hook.failed");
    let p = &hooks[0]["payload"];
    assert_eq!(
        (&p["http_status"], &p["attempts"]),
        (&Value::from(404), &Value::from(1))
    );
    assert_eq!(p["error"], "HTTP 404");
    assert_eq!(env.finished(&id)[0]["exit_code"], 0);
    assert_eq!(env.executions(&id)[0]["exit_code"], 0);
    assert_eq!(state_hooks(&env, &id), Value::Null);
}

#[test]
fn a_url_hook_gives_up_after_max_attempts() {
    let server = FakeServer::start(vec![
        Reply::json(429, serde_json::json!({})).header("Retry-After", "0"),
    ]);
    let env = TestEnv::new();
    let id = session_with(
        &env,
        &format!(
            "[[hooks.on_finish]]\nurl = \"{}\"\nmax_attempts = 2\n",
            webhook(&server)
        ),
    );
    env.worker_once_exiting(0);

    assert_eq!(server.request_count(), 2);
    let hooks = hook_events(&env, &id);
    assert_eq!(hooks.len(), 1, "{hooks:?}");
    assert_eq!(hooks[0]["type"], "hook.failed");
    let p = &hooks[0]["payload"];
    assert_eq!(
        (&p["http_status"], &p["attempts"]),
        (&Value::from(429), &Value::from(2))
    );
}

#[test]
fn a_worker_killed_between_settle_and_hook_runs_it_once_later_with_the_same_key() {
    // The first POST is held unanswered: the worker is killed while it waits.
    let server = FakeServer::start(vec![
        Reply::silent(),
        Reply::json(200, serde_json::json!({})),
    ]);
    let env = TestEnv::new();
    let id = session_with(
        &env,
        &format!("[[hooks.on_finish]]\nurl = \"{}\"\n", webhook(&server)),
    );
    let worker = env.spawn_worker(&[]);
    wait_until("the hook's first POST", LONG, || {
        server.request_count() == 1
    });
    worker.signal(9);
    worker.wait(LONG);
    assert_eq!(env.finished(&id).len(), 1, "settled before the hook");
    assert!(hook_events(&env, &id).is_empty());

    env.worker_once();
    let requests = server.requests();
    assert_eq!(requests.len(), 2, "delivered again, once: {requests:?}");
    let exec_id = env.finished_line_id(&id);
    for request in &requests {
        assert_eq!(request.header("idempotency-key"), Some(exec_id.as_str()));
    }
    let hooks = hook_events(&env, &id);
    assert_eq!(hooks.len(), 1, "{hooks:?}");
    assert_eq!(hooks[0]["type"], "hook.completed");
    assert_eq!(hooks[0]["payload"]["attempts"], 2);
    assert_eq!(env.finished(&id).len(), 1);
    assert_eq!(env.executions(&id)[0]["exit_code"], 0);
    assert_eq!(state_hooks(&env, &id), Value::Null);
    env.worker_once();
    assert_eq!(server.request_count(), 2, "nothing left to deliver");
}

#[test]
fn a_url_env_webhook_is_written_to_no_file() {
    let server = FakeServer::start(vec![Reply::json(200, serde_json::json!({}))]);
    let secret = "XXXXsecretXXXX";
    let url = format!("{}/services/T000/B000/{secret}", server.url());
    let refused = format!("{}/{secret}", fake_server_refused());
    let env = TestEnv::new();
    let id = session_with(
        &env,
        r#"
[[hooks.on_finish]]
url_env = "AGENTQ_TEST_WEBHOOK_URL"
[[hooks.on_finish]]
url_env = "AGENTQ_TEST_DOWN_WEBHOOK_URL"
max_attempts = 1
[[hooks.on_finish]]
url_env = "AGENTQ_TEST_UNSET_WEBHOOK_URL"
"#,
    );
    let log = worker_once_with(
        &env,
        &[
            ("AGENTQ_TEST_WEBHOOK_URL", &url),
            ("AGENTQ_TEST_DOWN_WEBHOOK_URL", &refused),
        ],
    );

    assert_eq!(server.request_count(), 1);
    assert_eq!(
        server.request(0).path,
        format!("/services/T000/B000/{secret}")
    );
    let kinds: Vec<Value> = hook_events(&env, &id)
        .iter()
        .map(|e| e["type"].clone())
        .collect();
    assert_eq!(kinds, ["hook.completed", "hook.failed", "hook.failed"]);
    let unset = &hook_events(&env, &id)[2]["payload"];
    assert!(
        unset["error"]
            .as_str()
            .unwrap()
            .contains("AGENTQ_TEST_UNSET_WEBHOOK_URL"),
        "{unset}"
    );
    assert_eq!(
        files_containing(env.home(), secret.as_bytes()),
        Vec::<String>::new(),
        "no file under the home holds the URL"
    );
    for line in env.raw_events(&id) {
        assert!(!line.contains(secret), "{line}");
    }
    assert!(!env.state(&id).to_string().contains(secret));
    assert!(!log.contains(secret), "nor the worker's log: {log}");
}

#[test]
fn agents_validate_refuses_bad_hook_definitions() {
    let env = TestEnv::new();
    env.write_agent(
        "hooked",
        &agent_with(
            r#"
[hooks]
on_finish = [
  { argv = ["./notify.sh"] },
  { url = "https://hooks.example.com/x", url_env = "HOOK_URL" },
  { url = "not a url" },
  { url_env = "https://hooks.slack.com/services/T/B/secret" },
  { argv = ["notify"], when = ["done"], max_attempts = 2 },
]
"#,
        ),
    );
    let out = env.run(&["agents", "validate", "agents/hooked.toml"]);
    assert_eq!(code(&out), 2, "{}", describe(&out));
    let said = format!("{}{}", stdout(&out), stderr(&out));
    for key in [
        "hooks.on_finish[0].argv",
        "hooks.on_finish[1]:",
        "hooks.on_finish[2].url",
        "hooks.on_finish[3].url_env",
        "hooks.on_finish[4].when[0]",
        "hooks.on_finish[4].max_attempts",
    ] {
        assert!(said.contains(key), "{key} in:\n{said}");
    }
    assert!(
        !said.contains("secret"),
        "a pasted URL is not echoed: {said}"
    );
    // A session of it cannot be made either.
    env.fails(&["session", "new", "--agent", "hooked"], 2);
}

impl TestEnv {
    /// The id of the session's only execution, from its `execution.finished`.
    fn finished_line_id(&self, id: &str) -> String {
        let line: Value = serde_json::from_str(&finished_line(self, id)).unwrap();
        line["execution_id"].as_str().unwrap().to_owned()
    }
}

/// A URL on 127.0.0.1 where nothing listens.
fn fake_server_refused() -> String {
    crate::it::fake_server::refused_url()
        .trim_end_matches("/v1")
        .to_owned()
}
