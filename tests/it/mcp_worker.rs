//! MCP servers through the whole of agentq: `agentq.toml` names the project's test
//! server (`examples/mcp_test_server.rs`), an agent on the `scripted` provider calls its
//! tools, and a real worker starts, uses and stops it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use super::mcp::test_server;
use super::*;

const LONG: Duration = Duration::from_secs(30);

/// A home whose `agentq.toml` declares the test server as `t`, writing what it does to
/// `events` and `count` beside the home; `extra` adds keys to its table.
fn home_with_server(extra: &str) -> (TestEnv, PathBuf) {
    let env = TestEnv::new();
    let notes = env.home().join("server-notes");
    std::fs::create_dir(&notes).unwrap();
    let config = format!(
        "[mcp_servers.t]\ncommand = {command:?}\nenv = {{ EVENTS_FILE = {events:?}, COUNT_FILE = {count:?} }}\n{extra}\n",
        command = test_server().display().to_string(),
        events = notes.join("events").display().to_string(),
        count = notes.join("count").display().to_string(),
    );
    std::fs::write(env.home().join("agentq.toml"), config).unwrap();
    (env, notes)
}

/// An agent using server `t` that makes `calls` (TOML inline tables) in one step, then
/// answers `done`.
fn calling_agent(name: &str, calls: &str) -> String {
    format!(
        "name = \"{name}\"\n[model]\nprovider = \"scripted\"\n[[model.script]]\ntool_calls = [{calls}]\n[[model.script]]\ntext = \"done\"\n[tools]\nmcp = [\"t\"]\n"
    )
}

/// A home with the test server (`extra` added to its table) and an agent making
/// `calls`; one message sent and answered by `worker --once`. Returns the session too.
fn one_message_answered(extra: &str, calls: &str) -> (TestEnv, PathBuf, String) {
    let (env, notes_dir) = home_with_server(extra);
    env.write_agent("user", &calling_agent("user", calls));
    let id = env.new_session("user");
    env.send(&id, "go");
    env.worker_once();
    assert_eq!(env.responses(&id), ["done"]);
    (env, notes_dir, id)
}

fn notes(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("events"))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The processes whose command line runs the test server.
fn test_servers_running(home: &Path) -> Vec<u32> {
    let marker = home.join("server-notes");
    let marker = marker.to_string_lossy();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| String::from_utf8_lossy(&env).contains(marker.as_ref()))
        })
        .collect()
}

fn tool_results(env: &TestEnv, id: &str) -> Vec<(String, bool)> {
    env.tool_messages(id)
        .iter()
        .map(|m| {
            (
                m["content"].as_str().unwrap_or_default().to_owned(),
                m["is_error"].as_bool().unwrap_or(false),
            )
        })
        .collect()
}

#[test]
fn an_agent_calls_an_mcp_tool_and_the_model_gets_its_result() {
    let (env, _notes, id) = one_message_answered(
        "",
        "{ name = \"mcp__t__echo\", arguments = { text = \"hello from t\" } }, { name = \"mcp__t__fail\", arguments = { message = \"no luck\" } }",
    );
    let results = tool_results(&env, &id);
    assert_eq!(
        results[0],
        ("hello from t".to_owned(), false),
        "{results:?}"
    );
    assert!(
        results[1].1 && results[1].0.contains("no luck"),
        "{results:?}"
    );
    // Events name the server; views show `server › tool`.
    let started = env.payloads(&id, "agent.tool.started");
    assert_eq!(started[0]["server"], "t", "{started:?}");
    assert_eq!(started[0]["tool_name"], "mcp__t__echo");
    let completed = env.payloads(&id, "agent.tool.completed");
    assert_eq!(completed[1]["server"], "t");
    assert_eq!(completed[1]["success"], false);
    let plain = env.ok(&["watch", &id, "--from-start", "--plain", "--exit-on-idle"]);
    assert!(plain.contains("✓ t › echo"), "{plain}");
    assert!(plain.contains("✗ t › fail"), "{plain}");
    // Nothing of the server is left once the worker let the session go.
    assert_eq!(test_servers_running(env.home()), Vec::<u32>::new());
}

#[test]
fn a_server_starts_once_per_claim_and_serves_every_message_of_it() {
    let (env, notes_dir) = home_with_server("");
    // The scripted model calls `count` once per message, three messages long.
    let step = "[[model.script]]\ntool_calls = [{ name = \"mcp__t__count\", arguments = {} }]\n[[model.script]]\ntext = \"done\"\n";
    env.write_agent(
        "user",
        &format!(
            "name = \"user\"\n[model]\nprovider = \"scripted\"\n{}[tools]\nmcp = [\"t\"]\n",
            step.repeat(4)
        ),
    );
    let id = env.new_session("user");
    for text in ["one", "two", "three"] {
        env.send(&id, text);
    }
    env.worker_once();
    assert_eq!(env.responses(&id), ["done", "done", "done"]);
    let counts: Vec<String> = tool_results(&env, &id)
        .into_iter()
        .map(|(c, _)| c)
        .collect();
    // One server process answered all three: its count went on.
    assert_eq!(counts, ["1", "2", "3"]);
    let started = notes(&notes_dir).iter().filter(|l| *l == "started").count();
    assert_eq!(started, 1, "{:?}", notes(&notes_dir));
    // The next claim starts it again.
    env.send(&id, "four");
    env.worker_once();
    let started = notes(&notes_dir).iter().filter(|l| *l == "started").count();
    assert_eq!(started, 2, "{:?}", notes(&notes_dir));
    assert_eq!(test_servers_running(env.home()), Vec::<u32>::new());
}

#[test]
fn a_server_that_does_not_start_fails_its_tools_or_with_required_the_execution() {
    // `sleep 30` never answers the handshake.
    let env = TestEnv::new();
    std::fs::write(
        env.home().join("agentq.toml"),
        "[mcp_servers.t]\ncommand = \"sleep\"\nargs = [\"30\"]\nstartup_timeout = \"500ms\"\n[mcp_servers.r]\ncommand = \"sleep\"\nargs = [\"30\"]\nstartup_timeout = \"500ms\"\nrequired = true\n",
    )
    .unwrap();
    env.write_agent(
        "user",
        &calling_agent(
            "user",
            "{ name = \"mcp__t__echo\", arguments = { text = \"x\" } }",
        ),
    );
    env.write_agent(
        "strict",
        &calling_agent(
            "strict",
            "{ name = \"mcp__r__echo\", arguments = { text = \"x\" } }",
        )
        .replace("mcp = [\"t\"]", "mcp = [\"r\"]"),
    );
    let id = env.new_session("user");
    env.send(&id, "go");
    env.worker_once();
    assert_eq!(env.responses(&id), ["done"]);
    let results = tool_results(&env, &id);
    assert!(results[0].1, "{results:?}");
    assert!(
        results[0].0.contains("`t` is not available") && results[0].0.contains("500ms"),
        "{results:?}"
    );
    let strict = env.new_session("strict");
    env.send(&strict, "go");
    env.worker_once_exiting(1);
    let finished = env.finished(&strict);
    assert_eq!(finished[0]["status"], "failed");
    let error = finished[0]["error"].to_string();
    assert!(error.contains("`r` is required"), "{error}");
    // agents show says which did not start, and exits 1.
    let out = env.run(&["agents", "show", "user"]);
    assert_eq!(code(&out), 1, "{}", describe(&out));
    assert!(
        stdout(&out).contains("# MCP server t: did not start"),
        "{}",
        describe(&out)
    );
}

#[test]
fn agents_show_lists_each_tool_of_each_server() {
    let (env, _notes) = home_with_server("disabled_tools = [\"crash\"]");
    env.write_agent(
        "user",
        &calling_agent("user", "{ name = \"mcp__t__echo\", arguments = {} }"),
    );
    let text = env.ok(&["agents", "show", "user"]);
    assert!(text.contains("# MCP server t: 8 tools"), "{text}");
    assert!(
        text.contains("#   mcp__t__echo (read-only): Returns its text."),
        "{text}"
    );
    assert!(!text.contains("mcp__t__crash"), "{text}");
    let shown = env.json(&["agents", "show", "user", "--json"]);
    let servers = shown["mcp_servers"].as_array().unwrap();
    assert_eq!(servers[0]["name"], "t");
    assert_eq!(servers[0]["error"], Value::Null);
    let echo = &servers[0]["tools"][0];
    assert_eq!(echo["name"], "mcp__t__echo");
    assert_eq!(echo["server_tool"], "echo");
    assert_eq!(echo["input_schema"]["type"], "object");
    assert_eq!(test_servers_running(env.home()), Vec::<u32>::new());
}

/// A worker in the middle of a (side-effecting) call of `sleep` for a minute.
fn worker_in_a_long_call() -> (TestEnv, PathBuf, String, Background) {
    let (env, notes_dir) = home_with_server("");
    env.write_agent(
        "user",
        &calling_agent(
            "user",
            "{ name = \"mcp__t__sleep\", arguments = { ms = 60000 } }",
        ),
    );
    let id = env.new_session("user");
    env.send(&id, "go");
    let worker = env.spawn_worker(&[]);
    wait_until("the call to run at the server", LONG, || {
        notes(&notes_dir).iter().any(|l| l == "sleep")
    });
    (env, notes_dir, id, worker)
}

#[test]
fn a_side_effecting_mcp_call_cut_by_kill_9_is_never_made_again() {
    let (env, notes_dir, id, worker) = worker_in_a_long_call();
    worker.signal(9);
    let _ = worker.wait(LONG);
    // The server dies with the worker (its watchdog), before any other worker comes.
    wait_until("the server to die with the worker", LONG, || {
        test_servers_running(env.home()).is_empty()
    });
    env.worker_once();
    assert_eq!(env.responses(&id), ["done"]);
    let results = tool_results(&env, &id);
    assert!(
        results[0].1 && results[0].0.contains("interrupted"),
        "{results:?}"
    );
    let sleeps = notes(&notes_dir).iter().filter(|l| *l == "sleep").count();
    assert_eq!(
        sleeps,
        1,
        "the call was made again: {:?}",
        notes(&notes_dir)
    );
}

#[test]
fn cancel_stops_a_running_mcp_call_and_tells_the_server() {
    let (env, notes_dir, id, worker) = worker_in_a_long_call();
    assert_eq!(test_servers_running(env.home()).len(), 1, "the server runs");
    env.ok(&["cancel", &id]);
    wait_until("the execution to end cancelled", LONG, || {
        env.finished(&id)
            .first()
            .is_some_and(|f| f["status"] == "cancelled")
    });
    wait_until("the server to hear of it", LONG, || {
        notes(&notes_dir).iter().any(|l| l == "cancelled sleep")
    });
    // The session is let go once drained: its server is stopped, the connection
    // closed first, while the worker still runs (not only when it exits).
    wait_until(
        "the connection to be closed with the session released",
        LONG,
        || notes(&notes_dir).iter().any(|l| l == "closed"),
    );
    wait_until("the server to stop with the session released", LONG, || {
        test_servers_running(env.home()).is_empty()
    });
    worker.signal(15);
    let out = worker.wait(LONG);
    assert_eq!(code(&out), 0, "{}", describe(&out));
}

#[test]
fn a_call_past_tool_timeout_is_a_tool_error_and_the_execution_goes_on() {
    let (env, notes_dir, id) = one_message_answered(
        "tool_timeout = \"300ms\"",
        "{ name = \"mcp__t__sleep\", arguments = { ms = 60000 } }",
    );
    let results = tool_results(&env, &id);
    assert!(
        results[0].1 && results[0].0.contains("300ms"),
        "{results:?}"
    );
    // The server was told to give up.
    assert!(
        notes(&notes_dir).iter().any(|l| l == "cancelled sleep"),
        "{:?}",
        notes(&notes_dir)
    );
    assert_eq!(test_servers_running(env.home()), Vec::<u32>::new());
}

#[test]
fn a_crashed_server_fails_its_calls_until_the_next_claim_starts_it_again() {
    let (env, notes_dir) = home_with_server("");
    let step = |call: &str| {
        format!("[[model.script]]\ntool_calls = [{call}]\n[[model.script]]\ntext = \"done\"\n")
    };
    let crash = step("{ name = \"mcp__t__crash\", arguments = {} }");
    let echo = step("{ name = \"mcp__t__echo\", arguments = { text = \"back\" } }");
    env.write_agent(
        "user",
        &format!(
            "name = \"user\"\n[model]\nprovider = \"scripted\"\n{crash}{echo}{echo}[tools]\nmcp = [\"t\"]\n"
        ),
    );
    let id = env.new_session("user");
    env.send(&id, "crash it");
    env.send(&id, "call it again");
    env.worker_once();
    let results = tool_results(&env, &id);
    assert!(results[0].1 && results[0].0.contains("`t`"), "{results:?}");
    assert!(results[1].1 && results[1].0.contains("`t`"), "{results:?}");
    // The next claim starts it again.
    env.send(&id, "and now?");
    env.worker_once();
    let results = tool_results(&env, &id);
    assert_eq!(results[2], ("back".to_owned(), false), "{results:?}");
    let starts = notes(&notes_dir).iter().filter(|l| *l == "started").count();
    assert_eq!(starts, 2, "{:?}", notes(&notes_dir));
    assert_eq!(env.responses(&id), ["done", "done", "done"]);
}

/// `count` (side-effecting: it counts its runs in the count file), then `echo` (which
/// its server marks read-only), in one step.
const COUNT_THEN_ECHO: &str = "{ name = \"mcp__t__count\", arguments = {} }, { name = \"mcp__t__echo\", arguments = { text = \"seen\" } }";

/// How many times the server ran `count`.
fn counted(notes: &Path) -> usize {
    std::fs::read_to_string(notes.join("count")).map_or(0, |c| c.lines().count())
}

fn tools_started(env: &TestEnv, id: &str) -> Vec<String> {
    env.payloads(id, "agent.tool.started")
        .iter()
        .map(|p| p["tool_name"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[test]
fn an_mcp_server_with_approval_required_parks_its_tool_calls() {
    let (env, notes_dir) = home_with_server("approval = \"required\"");
    env.write_agent("user", &calling_agent("user", COUNT_THEN_ECHO));
    let id = env.new_session("user");
    env.send(&id, "go");
    env.worker_once();

    let requested = env.payloads(&id, "approval.requested");
    assert_eq!(requested.len(), 1, "{requested:?}");
    assert_eq!(requested[0]["tool_name"], "mcp__t__count");
    assert_eq!(requested[0]["server"], "t", "{requested:?}");
    assert_eq!(requested[0]["tool_call_id"], "call_1_1");
    assert_eq!(counted(&notes_dir), 0, "nothing ran");
    assert_eq!(tools_started(&env, &id), Vec::<String>::new());
    assert!(env.finished(&id).is_empty(), "not settled");
    assert!(env.unowned(&id), "the session was released");
    assert_eq!(test_servers_running(env.home()), Vec::<u32>::new());

    env.ok(&["approve", &id]);
    assert_eq!(counted(&notes_dir), 0, "a decision runs nothing by itself");
    env.worker_once();
    assert_eq!(counted(&notes_dir), 1);
    // `echo` is read-only by its server's word, and gated all the same: never run in
    // a read-only batch, past the gate.
    let requested = env.payloads(&id, "approval.requested");
    assert_eq!(requested.len(), 2, "{requested:?}");
    assert_eq!(requested[1]["tool_name"], "mcp__t__echo");
    assert_eq!(requested[1]["tool_call_id"], "call_1_2");
    assert_eq!(tools_started(&env, &id), ["mcp__t__count"]);

    env.ok(&["deny", &id, "--reason", "no echoes today"]);
    env.worker_once();
    assert_eq!(env.responses(&id), ["done"], "the model went on");
    let results = tool_results(&env, &id);
    assert_eq!(results[0], ("1".to_owned(), false), "{results:?}");
    assert!(
        results[1].1
            && results[1].0.contains("`mcp__t__echo` was denied by")
            && results[1].0.ends_with(": no echoes today"),
        "{results:?}"
    );
    assert_eq!(
        tools_started(&env, &id),
        ["mcp__t__count"],
        "a denied call never runs"
    );
    assert_eq!(env.finished(&id)[0]["status"], "completed");

    env.worker_once();
    assert_eq!(counted(&notes_dir), 1, "run once");
    assert_eq!(env.inbox_len(&id), 0);
    assert_eq!(test_servers_running(env.home()), Vec::<u32>::new());
    env.assert_gapless(&id);
}

#[test]
fn approval_tools_gates_only_the_tools_it_names() {
    let (env, notes_dir) = home_with_server("approval_tools = [\"count\"]");
    env.write_agent(
        "user",
        &calling_agent(
            "user",
            "{ name = \"mcp__t__echo\", arguments = { text = \"seen\" } }, { name = \"mcp__t__count\", arguments = {} }",
        ),
    );
    let shown = env.ok(&["agents", "show", "user"]);
    assert!(
        shown.contains("#   mcp__t__count (approval required): ")
            && shown.contains("#   mcp__t__echo (read-only): "),
        "{shown}"
    );
    let tools = env.json(&["agents", "show", "user", "--json"])["mcp_servers"][0]["tools"].clone();
    let gated: Vec<&str> = tools
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["needs_approval"] == true)
        .map(|t| t["server_tool"].as_str().unwrap())
        .collect();
    assert_eq!(gated, ["count"]);

    let id = env.new_session("user");
    env.send(&id, "go");
    env.worker_once();
    // `echo` ran at once; `count` waits.
    assert_eq!(tools_started(&env, &id), ["mcp__t__echo"]);
    let requested = env.payloads(&id, "approval.requested");
    assert_eq!(requested.len(), 1, "{requested:?}");
    assert_eq!(requested[0]["tool_name"], "mcp__t__count");
    assert_eq!(requested[0]["tool_call_id"], "call_1_2");
    assert_eq!(counted(&notes_dir), 0);

    env.ok(&["approve", &id, "call_1_2"]);
    env.worker_once();
    assert_eq!(counted(&notes_dir), 1);
    assert_eq!(env.responses(&id), ["done"]);
    assert_eq!(
        tool_results(&env, &id),
        [("seen".to_owned(), false), ("1".to_owned(), false)]
    );
    // The read-only call that ran before the park was not made again.
    assert_eq!(tools_started(&env, &id), ["mcp__t__echo", "mcp__t__count"]);
}

#[test]
fn approval_tools_naming_a_tool_the_server_lacks_keeps_the_server_from_starting() {
    // A misspelt name would leave `count` ungated: the server is not used at all.
    let (env, notes_dir) = home_with_server("approval_tools = [\"cuont\"]");
    env.write_agent(
        "user",
        &calling_agent("user", "{ name = \"mcp__t__count\", arguments = {} }"),
    );
    let out = env.run(&["agents", "show", "user"]);
    assert_eq!(code(&out), 1, "{}", describe(&out));
    assert!(
        stdout(&out).contains("# MCP server t: did not start: ")
            && stdout(&out).contains(
                "approval_tools names `cuont`, which is not one of the tools it offers (echo, fail,"
            ),
        "{}",
        describe(&out)
    );
    let id = env.new_session("user");
    env.send(&id, "go");
    env.worker_once();
    assert_eq!(env.responses(&id), ["done"]);
    let results = tool_results(&env, &id);
    assert!(
        results[0].1
            && results[0].0.contains("`t` is not available")
            && results[0].0.contains("approval_tools names `cuont`"),
        "{results:?}"
    );
    assert_eq!(counted(&notes_dir), 0);
    assert_eq!(test_servers_running(env.home()), Vec::<u32>::new());
}
