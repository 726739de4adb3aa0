//! A third-party MCP server, as published: the reference `mcp-server-time` from PyPI,
//! over stdio, started by a real worker for an agent on the `scripted` provider (the
//! model's side is not what these tests are about).

use super::*;

/// A home whose `agentq.toml` declares the installed server as `time`, and an agent
/// that calls `calls` (TOML inline tables) in one step, then answers `done`.
fn home_with_time_server(calls: &str) -> TestEnv {
    home_with_time_server_and(calls, "")
}

/// [`home_with_time_server`], with `extra` added to the server's table.
fn home_with_time_server_and(calls: &str, extra: &str) -> TestEnv {
    let env = TestEnv::new();
    let program = mcp_time_server();
    std::fs::write(
        env.home().join("agentq.toml"),
        format!(
            "[mcp_servers.time]\ncommand = {:?}\nargs = [\"--local-timezone\", \"UTC\"]\nstartup_timeout = \"30s\"\n{extra}\n",
            program.display().to_string()
        ),
    )
    .unwrap();
    env.write_agent(
        "clock",
        &format!(
            "name = \"clock\"\n[model]\nprovider = \"scripted\"\n[[model.script]]\ntool_calls = [{calls}]\n[[model.script]]\ntext = \"done\"\n[tools]\nmcp = [\"time\"]\n"
        ),
    );
    env
}

/// Processes running the installed server for `env`'s home: by their command line,
/// and their working directory (the home), so that the tests running at the same time
/// do not see each other's.
fn time_servers_running(env: &TestEnv) -> Vec<u32> {
    let program = mcp_time_server().display().to_string();
    let home = env.home().canonicalize().unwrap();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&program))
                && std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd == home)
        })
        .collect()
}

#[test]
#[ignore = "needs the real servers: scripts/real-server test"]
fn the_time_servers_tools_are_listed_called_and_their_errors_seen() {
    assert_isolated();
    let env = home_with_time_server(
        "{ name = \"mcp__time__get_current_time\", arguments = { timezone = \"UTC\" } }, { name = \"mcp__time__get_current_time\", arguments = { timezone = \"Nowhere/Atlantis\" } }",
    );
    // agents show starts it, lists its tools as the model will see them, and stops it.
    let shown = env.json(&["agents", "show", "clock", "--json"]);
    let tools: Vec<&str> = shown["mcp_servers"][0]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        tools,
        ["mcp__time__get_current_time", "mcp__time__convert_time"]
    );
    assert_eq!(shown["mcp_servers"][0]["tools"][0]["read_only"], true);
    assert_eq!(time_servers_running(&env), Vec::<u32>::new());

    let id = env.new_session("clock");
    env.send(&id, "what time is it?");
    env.worker_once();
    assert_eq!(env.responses(&id), ["done"]);
    let results = env.tool_messages(&id);
    let now = results[0]["content"].as_str().unwrap();
    assert_eq!(results[0]["is_error"], false, "{now}");
    let now: Value = serde_json::from_str(now).expect("the structured result, as JSON");
    assert_eq!(now["timezone"], "UTC", "{now}");
    assert!(
        now["datetime"].as_str().is_some_and(|d| d.contains('T')),
        "{now}"
    );
    let refused = results[1]["content"].as_str().unwrap();
    assert_eq!(results[1]["is_error"], true, "{refused}");
    assert!(refused.contains("Atlantis"), "{refused}");
    // Both calls were read-only: run together, and marked so in the events.
    let started = env.payloads(&id, "agent.tool.started");
    assert!(started.iter().all(|s| s["server"] == "time"), "{started:?}");
    assert_eq!(time_servers_running(&env), Vec::<u32>::new());
}

#[test]
#[ignore = "needs the real servers: scripts/real-server test"]
fn an_approval_gated_call_of_the_time_server_parks_and_runs_once_approved() {
    assert_isolated();
    // `get_current_time` is read-only by the server's word; gated, it waits all the same.
    let env = home_with_time_server_and(
        "{ name = \"mcp__time__get_current_time\", arguments = { timezone = \"UTC\" } }",
        "approval_tools = [\"get_current_time\"]",
    );
    let id = env.new_session("clock");
    env.send(&id, "what time is it?");
    env.worker_once();
    let requested = env.payloads(&id, "approval.requested");
    assert_eq!(requested.len(), 1, "{requested:?}");
    assert_eq!(requested[0]["server"], "time");
    assert_eq!(requested[0]["tool_name"], "mcp__time__get_current_time");
    assert_eq!(requested[0]["arguments"]["timezone"], "UTC");
    assert!(
        env.payloads(&id, "agent.tool.started").is_empty(),
        "not run"
    );
    assert!(env.finished(&id).is_empty(), "parked");
    assert_eq!(time_servers_running(&env), Vec::<u32>::new());

    env.ok(&["approve", &id]);
    env.worker_once();
    assert_eq!(env.responses(&id), ["done"]);
    assert_eq!(env.payloads(&id, "agent.tool.started").len(), 1, "run once");
    let result = &env.tool_messages(&id)[0];
    assert_eq!(result["is_error"], false, "{result}");
    let now: Value = serde_json::from_str(result["content"].as_str().unwrap())
        .expect("the structured result, as JSON");
    assert_eq!(now["timezone"], "UTC", "{now}");
    assert_eq!(env.finished(&id)[0]["status"], "completed");
    assert_eq!(time_servers_running(&env), Vec::<u32>::new());
}
