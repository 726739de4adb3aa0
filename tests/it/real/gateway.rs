//! The `anthropic` provider through LiteLLM's proxy (the Messages API, `/v1/messages`)
//! in front of the real llama server.

use serde_json::Value;

use super::*;

/// A home talking to the gateway through a recording proxy.
fn setup(max_tokens: u32, agent: &str) -> (TestEnv, Proxy) {
    let proxy = Proxy::to(gateway().addr);
    let env = home_with_provider("anthropic", &proxy.url());
    env.write_agent("real", &real_agent("real", max_tokens, agent));
    (env, proxy)
}

#[test]
#[ignore = "needs the real servers: scripts/real-server test"]
fn through_the_gateway_a_plain_answer_streams_and_completes() {
    let (env, proxy) = setup(48, "");
    let result = run_json(&env, "real", "Say hello to Ana.", 0);
    let id = result["session_id"].as_str().unwrap();
    let response = result["response"].as_str().unwrap();
    assert!(!response.trim().is_empty(), "{result}");
    assert_eq!(result["empty"], false);
    let chunks = chunks(&env, id);
    assert!(chunks.len() > 1, "streamed in pieces: {chunks:?}");
    assert_eq!(chunks.concat(), response);
    assert!(result["usage"]["total"].as_u64().unwrap() > 0, "{result}");

    let seen = proxy.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, "/v1/messages");
    assert_eq!(
        seen[0].headers.get("x-api-key").map(String::as_str),
        Some(GATEWAY_KEY)
    );
    // A text-only user turn travels as a plain string.
    assert_eq!(
        seen[0].body["messages"][0],
        serde_json::json!({"role": "user", "content": "Say hello to Ana."})
    );
    assert_key_written_nowhere(&env);
}

#[test]
#[ignore = "needs the real servers: scripts/real-server test"]
fn through_the_gateway_a_tool_call_sent_as_many_blocks_is_one_call() {
    let (env, proxy) = setup(96, "tool_choice = \"read_file\"");
    let result = run_json(&env, "real", "What is in notes.md?", 0);
    let id = result["session_id"].as_str().unwrap();
    assert_eq!(result["steps"], 2, "{result}");

    // The gateway streams one tool_use block per argument fragment, all with the same
    // id: agentq runs one call with the arguments put together.
    let started = env.payloads(id, "agent.tool.started");
    assert_eq!(started.len(), 1, "one call, not one per block: {started:?}");
    assert_eq!(started[0]["tool_name"], "read_file");
    let completed = env.payloads(id, "agent.tool.completed");
    let error = completed[0]["error"].as_str().unwrap_or("");
    assert!(
        !error.contains("missing argument"),
        "the arguments were assembled: {error}"
    );

    let seen = proxy.seen();
    assert_eq!(seen.len(), 2, "one request per step");
    assert_eq!(
        seen[0].body["tool_choice"],
        serde_json::json!({"type": "tool", "name": "read_file"})
    );
    assert!(seen[1].body.get("tool_choice").is_none());
    let messages = seen[1].body["messages"].as_array().unwrap();
    let call = &messages[1];
    assert_eq!(call["role"], "assistant");
    let tool_use = &call["content"][0];
    assert_eq!(tool_use["type"], "tool_use");
    assert!(tool_use["input"]["path"].is_string(), "{tool_use}");
    let results = &messages[2]["content"][0];
    assert_eq!(results["type"], "tool_result");
    assert_eq!(results["tool_use_id"], tool_use["id"]);

    // The execution ends visibly: an answer, or an answer marked empty. (LiteLLM drops
    // the content of an assistant turn that only calls tools; llama-cpp-python's
    // function-calling template then fails and the gateway streams an empty answer.)
    let response = result["response"].as_str().unwrap();
    assert_eq!(result["empty"], response.trim().is_empty(), "{result}");
    let completed = env.payloads(id, "agent.message.completed");
    assert_eq!(
        completed[0]
            .get("empty")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        response.trim().is_empty()
    );
    assert_key_written_nowhere(&env);
}

#[test]
#[ignore = "needs the real servers: scripts/real-server test"]
fn through_the_gateway_three_messages_are_one_conversation() {
    let (env, proxy) = setup(48, "");
    let (_, answers) = three_messages_answered(&env, "real");

    let seen = proxy.seen();
    assert_eq!(seen.len(), 3);
    let roles: Vec<&str> = seen[2].body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["user", "assistant", "user", "assistant", "user"]);
    assert_eq!(seen[2].body["messages"][1]["content"], answers[0].as_str());
    assert_eq!(seen[2].body["messages"][4]["content"], THREE_MESSAGES[2]);
    assert_key_written_nowhere(&env);
}

#[test]
#[ignore = "needs the real servers: scripts/real-server test"]
fn through_the_gateway_an_answer_kept_to_its_schema_comes_as_the_answer_tools_input() {
    let proxy = Proxy::to(gateway().addr);
    let env = home_with_provider("anthropic", &proxy.url());
    env.write_agent("cities", &structured_agent("cities"));

    let result = run_json(&env, "cities", "Which city is the Eiffel Tower in?", 0);
    assert!(result["structured"]["city"].is_string(), "{result}");
    assert_eq!(result["steps"], 1, "no answer was sent back: {result}");
    let seen = proxy.seen();
    assert_eq!(seen.len(), 1);
    let body = &seen[0].body;
    assert_eq!(body["tools"][0]["name"], "answer");
    assert_eq!(body["tools"][0]["input_schema"], city_schema());
    assert_eq!(
        body["tool_choice"],
        serde_json::json!({"type": "tool", "name": "answer"})
    );
    // The answer tool's input streamed as the answer's text, and no tool ran.
    let id = result["session_id"].as_str().unwrap();
    assert_eq!(
        chunks(&env, id).concat(),
        result["response"].as_str().unwrap()
    );
    assert!(env.payloads(id, "agent.tool.started").is_empty());
}
