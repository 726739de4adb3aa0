//! The whole path, offline: session new -> send -> worker -> events -> watch, and `run`.

use std::time::Duration;

use serde_json::Value;

use super::*;

mod approvals;
mod checks;
mod hooks;
mod structured;

/// An agent whose answers show which script entry (and so which model call) answered.
const COUNTING_AGENT: &str = r#"
name = "counting"
[model]
provider = "scripted"
[[model.script]]
text = "one: {input}"
[[model.script]]
text = "two: {input}"
[[model.script]]
text = "three: {input}"
"#;

/// An agent that never stops calling tools.
const LOOPING_AGENT: &str = r#"
name = "looping"
[model]
provider = "scripted"
[[model.script]]
text = "again"
tool_calls = [{ name = "list_dir", arguments = { path = "." } }]
[limits]
max_steps = 2
[tools]
builtin = ["list_dir"]
"#;

/// An agent that streams slowly, so a test can act while it runs.
const SLOW_AGENT: &str = r#"
name = "slow"
[model]
provider = "scripted"
[[model.script]]
text = "a b c d e f g h i j k l m n o p q r s t u v w x y z a b c d e f g h i j k l m n o p q r s t u v w x y z"
delay_ms = 50
[[model.script]]
text = "quick: {input}"
"#;

#[test]
fn a_message_goes_from_send_through_the_worker_to_an_answer() {
    let env = TestEnv::new();
    let id = env.new_session("echo");
    let message_id = env.send(&id, "hello");
    env.worker_once();

    assert_eq!(env.responses(&id), vec!["echo: hello"]);
    let done = &env.finished(&id)[0];
    assert_eq!(done["status"], "completed");
    assert_eq!(done["stop_reason"], "completed");
    assert_eq!(done["exit_code"], 0);
    assert_eq!(done["steps"], 2);
    assert_eq!(
        done["usage"]["execution"],
        serde_json::json!({"input": 30, "output": 10, "total": 40})
    );
    assert_eq!(done["message_id"], message_id.as_str());

    let tools: Vec<Value> = env.events_of(&id, "agent.tool.completed");
    assert_eq!(tools.len(), 1);
    assert_eq!(tools[0]["payload"]["tool_name"], "list_dir");
    assert_eq!(tools[0]["payload"]["success"], true);

    let show = env.json(&["session", "show", &id, "--json"]);
    assert_eq!(show["session"]["usage"]["total"], 40);
    assert_eq!(show["session"]["counters"]["completed"], 1);
    assert_eq!(show["pending"], 0);
    assert_eq!(show["last_execution"]["response"], "echo: hello");

    let transcript = env.json(&["session", "messages", &id, "--json"]);
    let roles: Vec<&str> = transcript
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, vec!["user", "assistant", "tool", "assistant"]);

    let watched = env.ok(&["watch", &id, "--from-start", "--plain", "--exit-on-idle"]);
    assert!(watched.contains("✓ list_dir"), "{watched}");
    assert!(watched.contains("echo: hello"), "{watched}");
    assert!(watched.contains("■ completed"), "{watched}");
}

#[test]
fn later_messages_continue_the_same_agent_state() {
    let env = TestEnv::new();
    env.write_agent("counting", COUNTING_AGENT);
    let id = env.new_session("counting");
    for text in ["a", "b", "c"] {
        env.send(&id, text);
        // A new worker process each time: the state lives in the files alone.
        env.worker_once();
    }
    assert_eq!(env.responses(&id), vec!["one: a", "two: b", "three: c"]);
    // The model saw every earlier turn: each first step is given the whole history.
    let counts: Vec<u64> = env
        .events_of(&id, "agent.step.started")
        .iter()
        .map(|e| e["payload"]["message_count"].as_u64().unwrap())
        .collect();
    assert_eq!(counts, vec![1, 3, 5]);
    assert_eq!(env.state(&id)["model_calls"], 3);
}

#[test]
fn a_definition_changed_after_the_session_was_created_is_reported_and_used() {
    let env = TestEnv::new();
    env.write_agent("counting", COUNTING_AGENT);
    let id = env.new_session("counting");
    env.send(&id, "a");
    let unchanged = env.run(&["worker", "--once"]);
    assert_eq!(code(&unchanged), 0, "{}", describe(&unchanged));
    assert!(
        !stderr(&unchanged).contains("definition changed"),
        "{}",
        describe(&unchanged)
    );

    env.write_agent(
        "counting",
        &COUNTING_AGENT.replace("two: {input}", "edited: {input}"),
    );
    env.send(&id, "b");
    let changed = env.run(&["worker", "--once"]);
    assert_eq!(code(&changed), 0, "{}", describe(&changed));
    assert!(
        stderr(&changed).contains(
            "the agent definition changed since the session was created; this execution uses the current one"
        ),
        "{}",
        describe(&changed)
    );
    assert_eq!(env.responses(&id), vec!["one: a", "edited: b"]);
}

#[test]
fn messages_queued_before_the_worker_starts_run_in_send_order() {
    let env = TestEnv::new();
    env.write_agent("counting", COUNTING_AGENT);
    let id = env.new_session("counting");
    let first = env.send(&id, "first");
    let second = env.send(&id, "second");
    let third = env.send(&id, "third");
    env.worker_once();
    assert_eq!(
        env.responses(&id),
        vec!["one: first", "two: second", "three: third"]
    );
    let started: Vec<String> = env
        .events_of(&id, "execution.started")
        .iter()
        .map(|e| e["payload"]["message_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(started, vec![first, second, third]);
    assert_eq!(env.inbox_len(&id), 0);
}

#[test]
fn worker_once_on_an_empty_home_exits_0() {
    let env = TestEnv::new();
    env.worker_once();
}

#[test]
fn worker_once_in_a_directory_that_is_not_a_home_is_an_error() {
    // A directory that is not a home is an error, not an idle worker (issue 15).
    // On Postgres too: a database keeps nothing in the home, which its own files mark.
    let empty = TestEnv::empty();
    for args in [
        &["worker", "--once"][..],
        &["session", "list"],
        &["status"],
        &["session", "new", "--agent", "echo"],
    ] {
        let err = empty.fails(args, 2);
        assert!(err.contains("not an agentq home"), "{args:?}: {err}");
    }
    empty.ok(&["init"]);
    empty.worker_once();
}

#[test]
fn the_event_log_has_the_documented_envelope_and_a_gapless_seq() {
    let env = TestEnv::new();
    let id = env.new_session("echo");
    env.send(&id, "one");
    env.send(&id, "two");
    env.worker_once();
    env.ok(&["session", "pause", &id]);
    env.ok(&["session", "resume", &id]);

    for line in env.raw_events(&id) {
        let at = |key: &str| {
            line.find(&format!("\"{key}\":"))
                .unwrap_or_else(|| panic!("{key} in {line}"))
        };
        let order = [
            "v",
            "seq",
            "type",
            "session_id",
            "execution_id",
            "timestamp",
            "payload",
        ]
        .map(at);
        assert!(
            order.windows(2).all(|w| w[0] < w[1]),
            "keys in the documented order: {line}"
        );
    }
    let events = env.events(&id);
    let timestamp = |t: &str| {
        t.len() == 24 && t.ends_with('Z') && t.as_bytes()[10] == b'T' && t.as_bytes()[19] == b'.'
    };
    for (i, event) in events.iter().enumerate() {
        assert_eq!(event.as_object().unwrap().len(), 7, "{event}");
        assert_eq!(event["v"], 1);
        assert_eq!(event["seq"], i as u64 + 1, "seq is gapless from 1");
        assert_eq!(event["session_id"], id.as_str());
        assert!(
            timestamp(event["timestamp"].as_str().unwrap()),
            "{}",
            event["timestamp"]
        );
        assert!(event["payload"].is_object());
        let session_level = matches!(
            event["type"].as_str().unwrap(),
            "session.created" | "session.status" | "message.queued"
        );
        assert_eq!(event["execution_id"].is_null(), session_level, "{event}");
    }
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        &types[..3],
        &["session.created", "message.queued", "message.queued"]
    );
    assert_eq!(
        &types[types.len() - 2..],
        &["session.status", "session.status"]
    );

    // Per execution: started first, finished last, status transitions once each.
    let mut by_execution: std::collections::BTreeMap<String, Vec<&Value>> = Default::default();
    for event in &events {
        if let Some(exec) = event["execution_id"].as_str() {
            by_execution.entry(exec.to_owned()).or_default().push(event);
        }
    }
    assert_eq!(by_execution.len(), 2);
    for list in by_execution.values() {
        assert_eq!(list.first().unwrap()["type"], "execution.started");
        assert_eq!(list.last().unwrap()["type"], "execution.finished");
        let statuses: Vec<(&str, &str)> = list
            .iter()
            .filter(|e| e["type"] == "agent.status")
            .map(|e| {
                (
                    e["payload"]["previous_status"].as_str().unwrap(),
                    e["payload"]["status"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            statuses,
            vec![("idle", "processing"), ("processing", "completed")]
        );
    }
}

#[test]
fn a_torn_last_line_is_skipped_by_watch_and_repaired_by_the_next_writer() {
    use std::io::Write;
    let Some(env) = TestEnv::files_only("a torn line is a file's half-written append") else {
        return;
    };
    let id = env.new_session("echo");
    let log = env.session_dir(&id).join("events.ndjson");
    std::fs::OpenOptions::new()
        .append(true)
        .open(&log)
        .unwrap()
        .write_all(br#"{"v":1,"seq":2,"type":"message.que"#)
        .unwrap();

    let watched = env.ok(&["watch", &id, "--json", "--from-start", "--exit-on-idle"]);
    let lines: Vec<&str> = watched.lines().collect();
    assert_eq!(lines.len(), 1, "only the complete line: {watched}");
    assert!(lines[0].contains("session.created"));

    env.send(&id, "after the tear");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.ends_with('\n'));
    let seqs: Vec<u64> = env
        .events(&id)
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, vec![1, 2]);
}

#[test]
fn max_steps_stops_the_execution_with_exit_3() {
    let env = TestEnv::new();
    env.write_agent("looping", LOOPING_AGENT);
    let out = env.run(&["run", "--agent", "looping", "go"]);
    assert_eq!(code(&out), 3, "{}", describe(&out));
    assert!(
        stderr(&out).contains("stopped (steps_limit)"),
        "{}",
        describe(&out)
    );
}

#[test]
fn send_wait_prints_the_answer_once_a_worker_has_run_it() {
    let env = TestEnv::new();
    let id = env.new_session("echo");
    let _worker = env.spawn_worker(&[]);
    let out = env.run(&["send", &id, "are you there?", "--wait", "--timeout", "30s"]);
    assert_eq!(code(&out), 0, "{}", describe(&out));
    assert_eq!(stdout(&out), "echo: are you there?\n");

    let out = env.run(&["send", &id, "json please", "--wait", "--json"]);
    let result: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(result["status"], "completed");
    assert_eq!(result["exit_code"], 0);
    assert_eq!(result["response"], "echo: json please");
}

#[test]
fn send_wait_gives_up_with_75_when_no_worker_runs() {
    let env = TestEnv::new();
    let id = env.new_session("echo");
    let out = env.run(&["send", &id, "anyone?", "--wait", "--timeout", "300ms"]);
    assert_eq!(code(&out), 75, "{}", describe(&out));
    assert!(stderr(&out).contains("agentq worker"), "{}", describe(&out));
    // The message stays queued for a later worker.
    env.worker_once();
    assert_eq!(env.responses(&id), vec!["echo: anyone?"]);
}

#[test]
fn a_running_worker_picks_up_new_messages_and_stops_cleanly_on_sigterm() {
    let env = TestEnv::new();
    let id = env.new_session("echo");
    let worker = env.spawn_worker(&[]);
    env.send(&id, "while you run");
    wait_until("the answer", LONG, || !env.finished(&id).is_empty());
    env.send(&id, "and again");
    wait_until("the second answer", LONG, || env.finished(&id).len() == 2);
    worker.signal(15);
    let out = worker.wait(LONG);
    assert_eq!(code(&out), 0, "{}", describe(&out));
}

#[test]
fn run_creates_a_session_processes_inline_and_prints_the_answer() {
    let env = TestEnv::new();
    let out = env.run(&["run", "--agent", "demo", "What is in the notes?"]);
    assert_eq!(code(&out), 0, "{}", describe(&out));
    let answer = stdout(&out);
    assert!(
        answer.starts_with("You asked: \"What is in the notes?\""),
        "{answer}"
    );
    assert_eq!(
        answer.lines().count(),
        1,
        "only the answer on stdout when piped: {answer}"
    );
    assert!(
        stderr(&out).contains("✓ read_file"),
        "progress goes to stderr: {}",
        describe(&out)
    );

    let result: Value =
        serde_json::from_str(&env.ok(&["run", "--agent", "echo", "hi", "--json"])).unwrap();
    assert_eq!(result["response"], "echo: hi");
    let id = result["session_id"].as_str().unwrap();
    let again: Value =
        serde_json::from_str(&env.ok(&["run", "--session", id, "more", "--json"])).unwrap();
    assert_eq!(again["session_id"], id);
    assert_eq!(again["response"], "echo: more");
}

#[test]
fn provider_failures_map_to_their_exit_codes() {
    let env = TestEnv::new();
    let failing = |name: &str, status: u16| {
        format!(
            "name = \"{name}\"\n[model]\nprovider = \"scripted\"\n[[model.script]]\nerror = {{ status = {status}, message = \"injected\" }}\n"
        )
    };
    env.write_agent("unavailable", &failing("unavailable", 503));
    env.write_agent("broken", &failing("broken", 400));

    let out = env.run(&["run", "--agent", "unavailable", "x", "--json"]);
    assert_eq!(code(&out), 75, "{}", describe(&out));
    let result: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(result["status"], "failed");
    assert_eq!(result["stop_reason"], "provider_unavailable");
    assert!(result["error"].as_str().unwrap().contains("injected"));

    let out = env.run(&["run", "--agent", "broken", "x", "--json"]);
    assert_eq!(code(&out), 1, "{}", describe(&out));
    let result: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(result["stop_reason"], "error");
}

#[test]
fn cancel_ends_the_running_execution_and_keeps_later_messages() {
    let env = TestEnv::new();
    env.write_agent("slow", SLOW_AGENT);
    let id = env.new_session("slow");
    env.send(&id, "long job");
    env.send(&id, "next");
    let _worker = env.spawn_worker(&[]);
    wait_until("the first chunk", LONG, || {
        !env.events_of(&id, "agent.stream.chunk").is_empty()
    });
    env.ok(&["cancel", &id]);
    wait_until("both executions", LONG, || env.finished(&id).len() == 2);
    let done = env.finished(&id);
    assert_eq!(done[0]["status"], "cancelled");
    assert_eq!(done[0]["stop_reason"], "user_requested");
    assert_eq!(done[0]["exit_code"], 130);
    assert_eq!(done[1]["status"], "completed");
    assert_eq!(env.responses(&id), vec!["quick: next"]);
}

#[test]
fn a_paused_session_waits_until_it_is_resumed() {
    let env = TestEnv::new();
    let id = env.new_session("echo");
    env.ok(&["session", "pause", &id]);
    env.send(&id, "later");
    env.worker_once();
    assert!(env.finished(&id).is_empty());
    env.ok(&["session", "resume", &id]);
    env.worker_once();
    assert_eq!(env.responses(&id), vec!["echo: later"]);
}

#[test]
fn a_worker_killed_mid_execution_is_resumed_by_the_next_one() {
    let env = TestEnv::new();
    env.write_agent("slow", SLOW_AGENT);
    let id = env.new_session("slow");
    env.send(&id, "survive this");
    let worker = env.spawn_worker(&[]);
    wait_until("a few chunks", LONG, || {
        env.events_of(&id, "agent.stream.chunk").len() >= 3
    });
    worker.signal(9);
    let _ = worker.wait(LONG);
    env.worker_once();

    let started = env.events_of(&id, "execution.started");
    assert_eq!(started.len(), 2);
    assert_eq!(started[1]["payload"]["resumed"], true);
    assert_eq!(started[1]["payload"]["attempt"], 2);
    let done = env.finished(&id);
    assert_eq!(done.len(), 1, "settled exactly once");
    assert_eq!(done[0]["status"], "completed");
    let seqs: Vec<u64> = env
        .events(&id)
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
}

#[test]
fn ids_may_be_given_as_a_unique_prefix() {
    let env = TestEnv::new();
    let id = env.new_session("echo");
    let shown = env.json(&["session", "show", &id[..30], "--json"]);
    assert_eq!(shown["session"]["id"], id.as_str());
    let listed = env.json(&["session", "list", "--json"]);
    assert_eq!(listed[0]["id"], id.as_str());
}

#[test]
fn session_rm_removes_everything() {
    let env = TestEnv::new();
    let id = env.new_session("echo");
    env.send(&id, "to be removed");
    env.ok(&["session", "rm", &id]);
    assert!(!env.session_dir(&id).exists());
    assert!(!env.home().join("sessions/.ready").join(&id).exists());
    env.fails(&["session", "show", &id], 2);
}

#[test]
fn session_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let Some(env) = TestEnv::files_only("the session files' modes") else {
        return;
    };
    let id = env.new_session("echo");
    env.send(&id, "x");
    env.worker_once();
    let dir = env.session_dir(&id);
    assert_eq!(
        std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
        0o700
    );
    for file in [
        "session.json",
        "state.json",
        "events.ndjson",
        "transcript.ndjson",
    ] {
        let mode = std::fs::metadata(dir.join(file))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{file}");
    }
}

#[test]
fn init_twice_changes_nothing() {
    let env = TestEnv::empty();
    env.ok(&["init"]);
    let demo = env.home().join("agents/demo.toml");
    let before = std::fs::read_to_string(&demo).unwrap();
    std::fs::write(&demo, format!("{before}\n# edited by the user\n")).unwrap();
    let out = env.ok(&["init"]);
    assert!(out.contains("nothing changed"), "{out}");
    assert!(
        std::fs::read_to_string(&demo)
            .unwrap()
            .ends_with("# edited by the user\n")
    );
    env.ok(&["agents", "validate"]);
}

#[test]
fn watch_follows_a_session_until_it_is_idle() {
    let env = TestEnv::new();
    let id = env.new_session("echo");
    env.send(&id, "watch me");
    let watch = env.spawn(&["watch", &id, "--plain", "--exit-on-idle"]);
    env.worker_once();
    let out = watch.wait(LONG);
    assert_eq!(code(&out), 0, "{}", describe(&out));
    assert!(
        stdout(&out).contains("echo: watch me"),
        "{}",
        describe(&out)
    );

    env.write_agent("looping", LOOPING_AGENT);
    let looping = env.new_session("looping");
    env.send(&looping, "spin");
    env.fails(&["worker", "--once"], 3);
    env.fails(&["watch", &looping, "--exit-on-idle"], 3);
    let _ = Duration::ZERO;
}

#[test]
fn sigterm_mid_execution_leaves_it_at_a_checkpoint_for_the_next_worker() {
    let env = TestEnv::new();
    env.write_agent("slow", SLOW_AGENT);
    let id = env.new_session("slow");
    env.send(&id, "take your time");
    let worker = env.spawn_worker(&[]);
    wait_until("a few chunks", LONG, || {
        env.events_of(&id, "agent.stream.chunk").len() >= 2
    });
    worker.signal(15);
    let out = worker.wait(LONG);
    assert_eq!(code(&out), 0, "{}", describe(&out));
    assert!(env.finished(&id).is_empty(), "suspended, not settled");
    assert_eq!(env.json(&["session", "show", &id, "--json"])["pending"], 1);

    env.worker_once();
    let started = env.events_of(&id, "execution.started");
    assert_eq!(started.len(), 2);
    assert_eq!(started[1]["payload"]["resumed"], true);
    assert_eq!(
        started[1]["payload"]["attempt"], 1,
        "a clean shutdown is not a failed attempt"
    );
    assert_eq!(env.finished(&id)[0]["status"], "completed");
}

#[test]
fn send_continue_carries_on_after_a_provider_failure_without_new_text() {
    let env = TestEnv::new();
    env.write_agent(
        "flaky",
        r#"
name = "flaky"
[model]
provider = "scripted"
[[model.script]]
error = { status = 503, message = "overloaded" }
[[model.script]]
text = "recovered: {input}"
"#,
    );
    let out = env.run(&["run", "--agent", "flaky", "the task", "--json"]);
    assert_eq!(code(&out), 75, "{}", describe(&out));
    let id = serde_json::from_slice::<Value>(&out.stdout).unwrap()["session_id"]
        .as_str()
        .unwrap()
        .to_owned();

    env.ok(&["send", &id, "--continue"]);
    env.worker_once();
    assert_eq!(env.responses(&id), vec!["recovered: the task"]);
    let users: Vec<Value> = env
        .json(&["session", "messages", &id, "--json"])
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["role"] == "user")
        .cloned()
        .collect();
    assert_eq!(users.len(), 1, "--continue adds no user message");

    let err = env.fails(&["send", &id, "--continue"], 2);
    assert!(err.contains("nothing to continue"), "{err}");
}

#[test]
fn a_session_workspace_replaced_by_a_symlink_is_not_followed() {
    let env = TestEnv::new();
    let outside = tempfile::tempdir().unwrap();
    let id = env.new_session("echo");
    let workspace = env.workspace(&id);
    // The file store makes it with the session, Postgres with the first lease here.
    match std::fs::remove_dir(&workspace) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(workspace.parent().unwrap()).unwrap()
        }
        other => other.unwrap(),
    }
    std::os::unix::fs::symlink(outside.path(), &workspace).unwrap();
    env.send(&id, "list it");
    env.fails(&["worker", "--once"], 1);
    let done = env.finished(&id);
    assert_eq!(done[0]["status"], "failed");
    assert!(
        done[0]["error"].as_str().unwrap().contains("symlink"),
        "{}",
        done[0]
    );
    assert_eq!(
        std::fs::read_dir(outside.path()).unwrap().count(),
        0,
        "nothing was touched outside"
    );
}
