//! The `openai` provider against llama-cpp-python's real server.

use serde_json::json;

use super::*;

/// A home talking to the llama server through a recording proxy.
fn setup(max_tokens: u32, agent: &str) -> (TestEnv, Proxy) {
    let proxy = Proxy::to(llama().addr);
    let env = home_with_provider("openai", &format!("{}/v1", proxy.url()));
    env.write_agent("real", &real_agent("real", max_tokens, agent));
    (env, proxy)
}

#[test]
#[ignore = "needs the real servers: scripts/real-server test"]
fn a_plain_answer_streams_in_chunks_and_completes() {
    let (env, proxy) = setup(48, "");
    let result = run_json(&env, "real", "Say hello to Ana.", 0);
    let id = result["session_id"].as_str().unwrap();
    let response = result["response"].as_str().unwrap();
    assert!(!response.trim().is_empty(), "{result}");
    let chunks = chunks(&env, id);
    assert!(chunks.len() > 1, "streamed in pieces: {chunks:?}");
    assert_eq!(chunks.concat(), response);
    // llama-cpp-python reports no usage while streaming: agentq estimates and says so.
    let usage = &result["usage"];
    assert!(usage["total"].as_u64().unwrap() > 0, "{usage}");
    assert_eq!(usage["estimated"], true, "{usage}");

    let seen = proxy.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, "/v1/chat/completions");
    assert_eq!(seen[0].body["stream"], true);
    assert!(
        seen[0].first_text_at.is_some_and(|t| t >= seen[0].sent_at),
        "the proxy saw the answer's first text after the request"
    );
    assert_eq!(
        seen[0].headers.get("authorization").map(String::as_str),
        Some(format!("Bearer {KEY}").as_str())
    );
    assert_key_written_nowhere(&env);
}

#[test]
#[ignore = "needs the real servers: scripts/real-server test"]
fn a_forced_tool_call_is_assembled_run_and_its_result_answered() {
    let (env, proxy) = setup(96, "tool_choice = \"read_file\"\nmax_attempts = 1");
    let result = run_json(&env, "real", "What is in notes.md?", 0);
    let id = result["session_id"].as_str().unwrap();
    assert_eq!(result["steps"], 2, "{result}");

    // Step 1: the call was streamed in pieces and assembled into one call.
    let started = env.payloads(id, "agent.tool.started");
    assert_eq!(started.len(), 1, "{started:?}");
    assert_eq!(started[0]["tool_name"], "read_file");
    assert_eq!(env.payloads(id, "agent.tool.completed").len(), 1);

    let seen = proxy.seen();
    assert_eq!(seen.len(), 2, "one request per step");
    assert_eq!(
        seen[0].body["tool_choice"],
        json!({"type": "function", "function": {"name": "read_file"}})
    );
    // Step 2 leaves the choice to the model, so it can answer.
    assert!(
        seen[1].body.get("tool_choice").is_none(),
        "{}",
        seen[1].body
    );
    // What the server accepted back: the assistant's call with an empty string for its
    // content (not null, not omitted), its arguments as JSON text, and the result.
    let messages = seen[1].body["messages"].as_array().unwrap();
    let call = messages
        .iter()
        .find(|m| m["role"] == "assistant")
        .expect("the assistant's turn goes back");
    assert_eq!(call["content"], "");
    let call_id = call["tool_calls"][0]["id"].as_str().unwrap();
    assert!(!call_id.is_empty());
    assert_eq!(call["tool_calls"][0]["function"]["name"], "read_file");
    let arguments = call["tool_calls"][0]["function"]["arguments"]
        .as_str()
        .unwrap();
    assert!(
        arguments.trim_start().starts_with('{'),
        "JSON text: {arguments}"
    );
    let result_message = messages.last().unwrap();
    assert_eq!(result_message["role"], "tool");
    assert_eq!(result_message["tool_call_id"], call_id);
    assert!(result_message["content"].is_string());
    assert_key_written_nowhere(&env);
}

#[test]
#[ignore = "needs the real servers: scripts/real-server test"]
fn three_messages_of_one_session_are_one_conversation() {
    let (env, proxy) = setup(48, "");
    let (_, answers) = three_messages_answered(&env, "real");

    // The third request carried the whole conversation, in order.
    let seen = proxy.seen();
    assert_eq!(seen.len(), 3);
    let turns: Vec<(String, String)> = seen[2].body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["role"].as_str().unwrap().to_owned(),
                m["content"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let expected: Vec<(String, String)> = [
        ("user", THREE_MESSAGES[0]),
        ("assistant", answers[0].as_str()),
        ("user", THREE_MESSAGES[1]),
        ("assistant", answers[1].as_str()),
        ("user", THREE_MESSAGES[2]),
    ]
    .iter()
    .map(|(r, c)| ((*r).to_owned(), (*c).to_owned()))
    .collect();
    assert_eq!(&turns[1..], &expected[..], "after the system prompt");
    assert_key_written_nowhere(&env);
}

#[test]
#[ignore = "needs the real servers: scripts/real-server test"]
fn a_request_the_server_cannot_stream_fails_saying_what_came_back() {
    // llama-cpp-python cannot stream an automatic tool choice: it answers 200 with an
    // empty body. agentq names that instead of a vague parse error, and does not retry.
    let (env, proxy) = setup(48, "tool_choice = \"auto\"");
    let result = run_json(&env, "real", "What is in notes.md?", 1);
    let error = result["error"].as_str().unwrap();
    assert!(error.contains("HTTP 200"), "{error}");
    assert!(error.contains("an empty body"), "{error}");
    assert!(error.contains("text/event-stream"), "{error}");
    assert_eq!(proxy.seen().len(), 1, "not retried");
}

#[test]
#[ignore = "needs the real servers: scripts/real-server test"]
fn an_answer_kept_to_its_schema_by_the_server_is_valid_at_the_first_try() {
    let proxy = Proxy::to(llama().addr);
    let env = home_with_provider("openai", &format!("{}/v1", proxy.url()));
    // llama-cpp-python takes the schema as `json_object` + `schema` (and refuses
    // OpenAI's `json_schema` shape: see the next test).
    let config = env.home().join("agentq.toml");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("response_format = \"json_object\"\n");
    std::fs::write(&config, text).unwrap();
    env.write_agent("cities", &structured_agent("cities"));

    let result = run_json(&env, "cities", "Which city is the Eiffel Tower in?", 0);
    assert!(result["structured"]["city"].is_string(), "{result}");
    assert_eq!(result["steps"], 1, "no answer was sent back: {result}");
    let seen = proxy.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].body["response_format"],
        json!({"type": "json_object", "schema": city_schema()})
    );
    let id = result["session_id"].as_str().unwrap();
    assert_eq!(
        chunks(&env, id).concat(),
        result["response"].as_str().unwrap()
    );
}

#[test]
#[ignore = "needs the real servers: scripts/real-server test"]
fn a_server_that_refuses_the_json_schema_shape_fails_the_step_saying_so() {
    // The default shape is OpenAI's; llama-cpp-python's request validation refuses it
    // (HTTP 500, naming the field), and the error tells what to change.
    let proxy = Proxy::to(llama().addr);
    let env = home_with_provider("openai", &format!("{}/v1", proxy.url()));
    env.write_agent("cities", &structured_agent("cities"));
    let result = run_json(&env, "cities", "Which city is the Eiffel Tower in?", 1);
    let error = result["error"].as_str().unwrap();
    assert!(
        error.contains("response_format") && error.contains("json_object"),
        "{error}"
    );
    let seen = proxy.seen();
    assert_eq!(seen[0].body["response_format"]["type"], "json_schema");
}
