//! Real model providers (issue 3), end to end: the real binary runs agents whose
//! `base_url` points at a [`FakeServer`] on 127.0.0.1, which records every request and
//! streams scripted SSE chunk by chunk.
//!
//! Covered: OpenAI-compatible streaming (text, tool calls split across chunks, usage
//! reported or not, the leniency real servers need, errors inside the stream), retries
//! before the first byte and the statuses that are not retried, stalled and truncated
//! streams, the Anthropic Messages API, where endpoints and keys come from, and that
//! the key never lands in a file or an output.
//!
//! Every command runs without the developer's `OPENAI_*` / `ANTHROPIC_*` variables
//! (and without proxies): the tests see only what they set.

use std::process::{Output, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use super::fake_server::{
    AnthropicSse, FakeServer, OpenAiSse, Recorded, Reply, refused_url, split_every,
};
use super::*;

// ---------------------------------------------------------------------------------
// Helpers

/// The key the tests give agentq; it must never be written anywhere.
const KEY: &str = "sk-test-secret-123";
const SYSTEM: &str = "You are the agent under test.";
/// The pause before each streamed piece: small, but enough to make chunks separate.
const STEP: Duration = Duration::from_millis(5);

/// Runs agentq with only the provider variables in `vars`.
fn agentq(env: &TestEnv, args: &[&str], vars: &[(&str, &str)]) -> Output {
    let mut cmd = env.cmd();
    for name in OUTSIDE_VARS {
        cmd.env_remove(name);
    }
    cmd.envs(vars.iter().copied())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run agentq")
}

/// An agent definition with the given `[model]` lines and the file tools.
fn agent(name: &str, model: &str) -> String {
    format!(
        "name = \"{name}\"\nsystem = \"{SYSTEM}\"\n[model]\n{model}\n[tools]\nbuiltin = [\"read_file\", \"write_file\", \"list_dir\"]\n"
    )
}

/// An `openai` agent talking to `url`; `extra` adds `[model]` lines.
fn openai_agent(name: &str, url: &str, extra: &str) -> String {
    agent(
        name,
        &format!("provider = \"openai\"\nname = \"gpt-test\"\nbase_url = \"{url}\"\n{extra}"),
    )
}

fn anthropic_agent(name: &str, url: &str, extra: &str) -> String {
    agent(
        name,
        &format!("provider = \"anthropic\"\nname = \"claude-test\"\nbase_url = \"{url}\"\n{extra}"),
    )
}

/// What `agentq run --json` did.
struct Ran {
    out: Output,
    result: Value,
}

impl Ran {
    fn code(&self) -> i32 {
        code(&self.out)
    }

    fn session(&self) -> String {
        self.result["session_id"]
            .as_str()
            .unwrap_or_else(|| panic!("no session id:\n{}", describe(&self.out)))
            .to_owned()
    }

    /// Requires exit `expected`.
    fn expect(self, expected: i32) -> Ran {
        assert_eq!(self.code(), expected, "{}", describe(&self.out));
        self
    }
}

/// `agentq run --agent AGENT TEXT --json` with the given variables.
fn run_json(env: &TestEnv, agent: &str, text: &str, vars: &[(&str, &str)]) -> Ran {
    let out = agentq(env, &["run", "--agent", agent, text, "--json"], vars);
    let result = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    Ran { out, result }
}

/// `run --json` with the test key in `OPENAI_API_KEY`.
fn run_openai(env: &TestEnv, agent: &str, text: &str) -> Ran {
    run_json(env, agent, text, &[("OPENAI_API_KEY", KEY)])
}

fn run_anthropic(env: &TestEnv, agent: &str, text: &str) -> Ran {
    run_json(env, agent, text, &[("ANTHROPIC_API_KEY", KEY)])
}

/// The payload of the session's last `execution.finished`.
fn finished(env: &TestEnv, id: &str) -> Value {
    env.events_of(id, "execution.finished")
        .last()
        .unwrap_or_else(|| panic!("session {id} has no execution.finished"))["payload"]
        .clone()
}

/// The text of every `agent.stream.chunk`, in log order, after checking that their
/// indexes count from 0 in each step.
fn chunks(env: &TestEnv, id: &str) -> Vec<String> {
    let mut next = 0;
    let mut texts = Vec::new();
    for event in env.events(id) {
        match event["type"].as_str().unwrap() {
            "agent.step.started" => next = 0,
            "agent.stream.chunk" => {
                assert_eq!(
                    event["payload"]["chunk_index"], next,
                    "chunk index: {event}"
                );
                next += 1;
                texts.push(event["payload"]["content"].as_str().unwrap().to_owned());
            }
            _ => {}
        }
    }
    texts
}

fn retries(env: &TestEnv, id: &str) -> Vec<Value> {
    env.events_of(id, "provider.retry")
        .into_iter()
        .map(|e| e["payload"].clone())
        .collect()
}

fn usage(input: u64, output: u64) -> Value {
    json!({"input": input, "output": output, "total": input + output})
}

/// The `messages` of a recorded request.
fn messages(request: &Recorded) -> Vec<Value> {
    request.body["messages"]
        .as_array()
        .unwrap_or_else(|| panic!("no messages in {}", request.body))
        .clone()
}

/// A tool call's `function.arguments` string, parsed.
fn arguments(call: &Value) -> Value {
    let text = call["function"]["arguments"]
        .as_str()
        .unwrap_or_else(|| panic!("arguments are not a string: {call}"));
    serde_json::from_str(text).unwrap_or_else(|e| panic!("arguments {text:?}: {e}"))
}

fn session_show(env: &TestEnv, id: &str) -> Value {
    env.json(&["session", "show", id, "--json"])
}

/// Asserts the text appears nowhere in the output.
fn assert_not_in_output(out: &Output, secret: &str, what: &str) {
    assert!(
        !stdout(out).contains(secret) && !stderr(out).contains(secret),
        "{what}: the key is in the output:\n{}",
        describe(out)
    );
}

/// `Sun, 06 Nov 1994 08:49:37 GMT` for a time (whole seconds).
fn http_date(at: SystemTime) -> String {
    let secs = at.duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
    let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{}, {day:02} {} {year} {:02}:{:02}:{:02} GMT",
        WEEKDAYS[days.rem_euclid(7) as usize],
        MONTHS[(month - 1) as usize],
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}

#[test]
fn http_dates_are_formatted_like_servers_send_them() {
    let at = UNIX_EPOCH + Duration::from_secs(784_111_777);
    assert_eq!(http_date(at), "Sun, 06 Nov 1994 08:49:37 GMT");
    let leap = UNIX_EPOCH + Duration::from_secs(951_782_400);
    assert_eq!(http_date(leap), "Tue, 29 Feb 2000 00:00:00 GMT");
}

// ---------------------------------------------------------------------------------
// OpenAI-compatible: answers and requests

#[test]
fn openai_text_answer_is_printed_streamed_and_asked_for_properly() {
    let env = TestEnv::new();
    let server = FakeServer::start(vec![
        OpenAiSse::answer(&["Hel", "lo, ", "wor", "ld"], 12, 4).reply(STEP),
    ]);
    env.write_agent(
        "gpt",
        &openai_agent(
            "gpt",
            &server.openai_url(),
            "temperature = 0.25\nmax_output_tokens = 64",
        ),
    );
    let out = agentq(
        &env,
        &["run", "--agent", "gpt", "Say hello"],
        &[("OPENAI_API_KEY", KEY)],
    );
    assert_eq!(code(&out), 0, "{}", describe(&out));
    assert_eq!(stdout(&out), "Hello, world\n");

    let listed = env.json(&["session", "list", "--json"]);
    let id = listed[0]["id"].as_str().unwrap().to_owned();
    assert_eq!(chunks(&env, &id), vec!["Hel", "lo, ", "wor", "ld"]);
    let done = finished(&env, &id);
    assert_eq!(done["status"], "completed");
    assert_eq!(done["steps"], 1);
    assert_eq!(done["usage"]["execution"], usage(12, 4));
    let step = &env.events_of(&id, "agent.step.completed")[0]["payload"];
    assert_eq!(step["finish_reason"], "stop");
    assert_eq!(step["usage"], usage(12, 4));

    assert_eq!(server.request_count(), 1);
    let request = server.request(0);
    assert_eq!(request.method, "POST");
    assert_eq!(request.path, "/v1/chat/completions");
    assert_eq!(
        request.header("authorization"),
        Some(format!("Bearer {KEY}").as_str())
    );
    assert_eq!(request.header("content-type"), Some("application/json"));
    let body = &request.body;
    assert_eq!(body["model"], "gpt-test");
    assert_eq!(body["stream"], true);
    assert_eq!(body["stream_options"]["include_usage"], true);
    assert_eq!(body["temperature"], 0.25);
    assert_eq!(body["max_tokens"], 64);
    assert_eq!(
        messages(&request),
        vec![
            json!({"role": "system", "content": SYSTEM}),
            json!({"role": "user", "content": "Say hello"}),
        ]
    );
    let tools = body["tools"].as_array().expect("tools");
    let names: Vec<&str> = tools
        .iter()
        .map(|t| {
            assert_eq!(t["type"], "function", "{t}");
            assert!(t["function"]["description"].is_string(), "{t}");
            assert_eq!(t["function"]["parameters"]["type"], "object", "{t}");
            t["function"]["name"].as_str().unwrap()
        })
        .collect();
    assert_eq!(names, vec!["read_file", "write_file", "list_dir"]);
}

/// Milliseconds since midnight of an event's timestamp (`…T06:56:24.611Z`).
fn millis_of_day(event: &Value) -> i64 {
    let stamp = event["timestamp"].as_str().unwrap();
    let time = &stamp[11..23];
    let field = |range: std::ops::Range<usize>| time[range].parse::<i64>().unwrap();
    ((field(0..2) * 60 + field(3..5)) * 60 + field(6..8)) * 1000 + field(9..12)
}

#[test]
fn openai_text_deltas_are_recorded_as_they_arrive_not_when_the_answer_ends() {
    let env = TestEnv::new();
    let server = FakeServer::start(vec![
        Reply::ok()
            .piece_after(STEP, OpenAiSse::new().role().text("early ").bytes())
            .piece_after(
                Duration::from_millis(400),
                OpenAiSse::new().text("late").finish("stop").done().bytes(),
            ),
    ]);
    env.write_agent("gpt", &openai_agent("gpt", &server.openai_url(), ""));
    let id = run_openai(&env, "gpt", "go").expect(0).session();
    let events = env.events_of(&id, "agent.stream.chunk");
    assert_eq!(chunks(&env, &id), vec!["early ", "late"]);
    let apart = (millis_of_day(&events[1]) - millis_of_day(&events[0])).rem_euclid(86_400_000);
    assert!(
        apart >= 200,
        "the first chunk was recorded {apart} ms before the second, not as it arrived"
    );
}

#[test]
fn openai_tool_call_split_across_chunks_runs_and_its_result_goes_back() {
    let env = TestEnv::new();
    let call = OpenAiSse::new()
        .role()
        .tool_call(0, "call_w1", "write_file", "")
        .tool_args(0, "{\"path\": \"no")
        .tool_args(0, "tes.md\", \"content\": \"Ça")
        .tool_args(0, " va\"}")
        .finish("tool_calls")
        .usage(10, 5)
        .done();
    let server = FakeServer::start(vec![
        // Cut every 7 bytes: mid-line, mid-JSON, mid-character.
        Reply::ok().pieces(Duration::from_millis(1), split_every(&call.bytes(), 7)),
        OpenAiSse::answer(&["Saved."], 20, 6).reply(STEP),
    ]);
    env.write_agent("gpt", &openai_agent("gpt", &server.openai_url(), ""));
    let ran = run_openai(&env, "gpt", "Write a note").expect(0);
    assert_eq!(ran.result["response"], "Saved.");
    let id = ran.session();

    let written = env.session_dir(&id).join("workspace").join("notes.md");
    assert_eq!(std::fs::read_to_string(written).unwrap(), "Ça va");
    let tool = &env.events_of(&id, "agent.tool.completed")[0]["payload"];
    assert_eq!(tool["tool_name"], "write_file");
    assert_eq!(tool["tool_call_id"], "call_w1");
    assert_eq!(tool["success"], true);

    assert_eq!(server.request_count(), 2);
    let second = messages(&server.request(1));
    assert_eq!(second.len(), 4, "{second:?}");
    assert_eq!(second[0]["role"], "system");
    assert_eq!(
        second[1],
        json!({"role": "user", "content": "Write a note"})
    );
    let assistant = &second[2];
    assert_eq!(assistant["role"], "assistant");
    assert_eq!(
        assistant["content"], "",
        "an empty string beside tool calls: llama.cpp-based servers answer null with HTTP 500"
    );
    let calls = assistant["tool_calls"].as_array().expect("tool_calls");
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0]["id"], "call_w1");
    assert_eq!(calls[0]["type"], "function");
    assert_eq!(calls[0]["function"]["name"], "write_file");
    assert_eq!(
        arguments(&calls[0]),
        json!({"path": "notes.md", "content": "Ça va"})
    );
    assert_eq!(second[3]["role"], "tool");
    assert_eq!(second[3]["tool_call_id"], "call_w1");
    assert!(
        second[3]["content"].as_str().unwrap().contains("notes.md"),
        "{}",
        second[3]
    );

    // Usage per step, summed per execution and into the session.
    let steps: Vec<Value> = env
        .events_of(&id, "agent.step.completed")
        .iter()
        .map(|e| e["payload"]["usage"].clone())
        .collect();
    assert_eq!(steps, vec![usage(10, 5), usage(20, 6)]);
    assert_eq!(finished(&env, &id)["usage"]["execution"], usage(30, 11));
    assert_eq!(ran.result["usage"], usage(30, 11));
    assert_eq!(session_show(&env, &id)["session"]["usage"], usage(30, 11));
}

#[test]
fn openai_parallel_tool_calls_interleaved_by_index_all_run_in_order() {
    let env = TestEnv::new();
    let calls = OpenAiSse::new()
        .role()
        .text("Working on it.")
        .tool_call(0, "call_a", "write_file", "")
        .tool_call(1, "call_b", "read_file", "{\"pa")
        .tool_call(2, "call_c", "list_dir", "")
        .tool_args(0, "{\"path\":\"a.md\",")
        .tool_args(2, "{\"path\": \".\"}")
        .tool_args(1, "th\": \"a.md\"}")
        .tool_args(0, "\"content\":\"alpha\"}")
        .finish("tool_calls")
        .usage(11, 7)
        .done();
    let server = FakeServer::start(vec![
        Reply::ok().pieces(Duration::from_millis(1), split_every(&calls.bytes(), 13)),
        OpenAiSse::answer(&["All ", "done."], 40, 3).reply(STEP),
    ]);
    env.write_agent("gpt", &openai_agent("gpt", &server.openai_url(), ""));
    let ran = run_openai(&env, "gpt", "Do three things").expect(0);
    assert_eq!(ran.result["response"], "All done.");
    let id = ran.session();
    assert_eq!(chunks(&env, &id), vec!["Working on it.", "All ", "done."]);

    let completed: Vec<(String, String, bool)> = env
        .events_of(&id, "agent.tool.completed")
        .iter()
        .map(|e| {
            let p = &e["payload"];
            (
                p["tool_call_id"].as_str().unwrap().to_owned(),
                p["tool_name"].as_str().unwrap().to_owned(),
                p["success"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        completed,
        vec![
            ("call_a".into(), "write_file".into(), true),
            ("call_b".into(), "read_file".into(), true),
            ("call_c".into(), "list_dir".into(), true),
        ]
    );

    let second = messages(&server.request(1));
    assert_eq!(second.len(), 6, "{second:?}");
    let assistant = &second[2];
    assert_eq!(assistant["content"], "Working on it.");
    let sent: Vec<(Value, Value, Value)> = assistant["tool_calls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["id"].clone(), c["function"]["name"].clone(), arguments(c)))
        .collect();
    assert_eq!(
        sent,
        vec![
            (
                json!("call_a"),
                json!("write_file"),
                json!({"path": "a.md", "content": "alpha"})
            ),
            (json!("call_b"), json!("read_file"), json!({"path": "a.md"})),
            (json!("call_c"), json!("list_dir"), json!({"path": "."})),
        ]
    );
    let results: Vec<(&str, &str)> = second[3..]
        .iter()
        .map(|m| {
            assert_eq!(m["role"], "tool", "{m}");
            (
                m["tool_call_id"].as_str().unwrap(),
                m["content"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(results[0].0, "call_a");
    assert_eq!(results[1].0, "call_b");
    assert!(
        results[1].1.contains("alpha"),
        "read_file ran after write_file: {results:?}"
    );
    assert_eq!(results[2].0, "call_c");
    assert!(results[2].1.contains("a.md"), "{results:?}");
    assert_eq!(finished(&env, &id)["usage"]["execution"], usage(51, 10));
}

#[test]
fn openai_tool_calls_without_index_are_matched_by_id() {
    // Some gateways leave `index` out and repeat the id in every delta.
    let env = TestEnv::new();
    let delta = |id: &str, name: Option<&str>, args: &str| {
        let mut function = json!({"arguments": args});
        if let Some(name) = name {
            function["name"] = json!(name);
        }
        json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"id": id, "type": "function", "function": function}]}}]})
    };
    let sse = OpenAiSse::new()
        .role()
        .data(delta("call_x", Some("write_file"), "{\"path\": \"x.md\", "))
        .data(delta("call_y", Some("list_dir"), "{\"path\""))
        .data(delta("call_x", None, "\"content\": \"ex\"}"))
        .data(delta("call_y", None, ": \".\"}"))
        .finish("tool_calls")
        .done();
    let server = FakeServer::start(vec![
        sse.reply(STEP),
        OpenAiSse::answer(&["ok"], 5, 1).reply(STEP),
    ]);
    env.write_agent("gpt", &openai_agent("gpt", &server.openai_url(), ""));
    let id = run_openai(&env, "gpt", "go").expect(0).session();
    let written = env.session_dir(&id).join("workspace").join("x.md");
    assert_eq!(std::fs::read_to_string(written).unwrap(), "ex");
    let second = messages(&server.request(1));
    let sent: Vec<(Value, Value)> = second[2]["tool_calls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["id"].clone(), arguments(c)))
        .collect();
    assert_eq!(
        sent,
        vec![
            (json!("call_x"), json!({"path": "x.md", "content": "ex"})),
            (json!("call_y"), json!({"path": "."})),
        ]
    );
    assert!(second[4]["content"].as_str().unwrap().contains("x.md"));
}

#[test]
fn openai_invalid_tool_arguments_become_a_tool_error_the_model_sees() {
    let env = TestEnv::new();
    let call = OpenAiSse::new()
        .role()
        .tool_call(0, "call_bad", "read_file", "{\"path\": \"a.md")
        .finish("tool_calls")
        .done();
    let server = FakeServer::start(vec![
        call.reply(STEP),
        OpenAiSse::answer(&["Sorry, my mistake."], 30, 4).reply(STEP),
    ]);
    env.write_agent("gpt", &openai_agent("gpt", &server.openai_url(), ""));
    let ran = run_openai(&env, "gpt", "Read a.md").expect(0);
    assert_eq!(ran.result["response"], "Sorry, my mistake.");
    let id = ran.session();

    let tool = &env.events_of(&id, "agent.tool.completed")[0]["payload"];
    assert_eq!(tool["tool_call_id"], "call_bad");
    assert_eq!(tool["success"], false);
    assert!(
        tool["error"].as_str().unwrap().contains("not valid JSON"),
        "{tool}"
    );

    let second = messages(&server.request(1));
    let call = &second[2]["tool_calls"][0];
    assert_eq!(
        call["function"]["arguments"], "{\"path\": \"a.md",
        "the model's own arguments go back as it sent them"
    );
    let result = &second[3];
    assert_eq!(result["role"], "tool");
    assert_eq!(result["tool_call_id"], "call_bad");
    let content = result["content"].as_str().unwrap();
    assert!(
        content.starts_with("Error:") && content.contains("not valid JSON"),
        "{content}"
    );
}

// ---------------------------------------------------------------------------------
// OpenAI-compatible: usage reported or not

#[test]
fn openai_usage_reported_in_every_chunk_counts_the_last_report() {
    // vLLM's continuous usage stats: every chunk carries the running totals.
    let env = TestEnv::new();
    let chunk = |delta: Value, finish: Value, completion: u64| {
        json!({
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            "usage": {"prompt_tokens": 7, "completion_tokens": completion, "total_tokens": 7 + completion}
        })
    };
    let sse = OpenAiSse::new()
        .data(chunk(json!({"content": "a"}), Value::Null, 1))
        .data(chunk(json!({"content": "b"}), Value::Null, 2))
        .data(chunk(json!({}), json!("stop"), 3))
        .done();
    let server = FakeServer::start(vec![sse.reply(STEP)]);
    env.write_agent("gpt", &openai_agent("gpt", &server.openai_url(), ""));
    let ran = run_openai(&env, "gpt", "go").expect(0);
    let id = ran.session();
    assert_eq!(ran.result["response"], "ab");
    assert_eq!(finished(&env, &id)["usage"]["execution"], usage(7, 3));
    assert_eq!(session_show(&env, &id)["session"]["usage"], usage(7, 3));
}

#[test]
fn openai_usage_only_in_the_last_chunk_is_counted_for_steps_executions_and_session() {
    let env = TestEnv::new();
    let server = FakeServer::start(vec![
        OpenAiSse::answer(&["one"], 9, 2).reply(STEP),
        OpenAiSse::answer(&["two"], 15, 3).reply(STEP),
    ]);
    env.write_agent("gpt", &openai_agent("gpt", &server.openai_url(), ""));
    let first = run_openai(&env, "gpt", "first").expect(0);
    let id = first.session();
    assert_eq!(finished(&env, &id)["usage"]["execution"], usage(9, 2));
    let again = agentq(
        &env,
        &["run", "--session", &id, "second", "--json"],
        &[("OPENAI_API_KEY", KEY)],
    );
    assert_eq!(code(&again), 0, "{}", describe(&again));
    let done = finished(&env, &id);
    assert_eq!(done["usage"]["execution"], usage(15, 3));
    assert_eq!(done["usage"]["session"], usage(24, 5));
    let show = session_show(&env, &id);
    assert_eq!(show["session"]["usage"], usage(24, 5));
    assert_eq!(show["last_execution"]["usage"], usage(15, 3));
    let shown = env.ok(&["session", "show", &id]);
    assert!(
        shown.contains("29 tokens (24 input, 5 output)"),
        "session show gives the totals: {shown}"
    );
}

#[test]
fn openai_usage_absent_still_completes_with_consistent_totals() {
    let env = TestEnv::new();
    let sse = OpenAiSse::new()
        .role()
        .texts(&["no ", "usage"])
        .finish("stop")
        .done();
    let server = FakeServer::start(vec![sse.reply(STEP)]);
    env.write_agent("gpt", &openai_agent("gpt", &server.openai_url(), ""));
    let ran = run_openai(&env, "gpt", "go").expect(0);
    let id = ran.session();
    assert_eq!(ran.result["response"], "no usage");
    let execution = &finished(&env, &id)["usage"]["execution"];
    let (input, output) = (
        execution["input"].as_u64().unwrap(),
        execution["output"].as_u64().unwrap(),
    );
    assert_eq!(execution["total"], input + output, "{execution}");
    assert_eq!(execution["estimated"], true, "marked as an estimate");
    assert_eq!(&session_show(&env, &id)["session"]["usage"], execution);
    let step = &env.events_of(&id, "agent.step.completed")[0]["payload"];
    assert_eq!(step["usage"]["estimated"], true);
}

#[test]
fn openai_usage_of_zero_for_a_streamed_answer_is_estimated_and_the_footer_says_so() {
    let env = TestEnv::new();
    let sse = OpenAiSse::new()
        .role()
        .texts(&["zero ", "usage"])
        .finish("stop")
        .usage(0, 0)
        .done();
    let server = FakeServer::start(vec![sse.reply(STEP)]);
    env.write_agent("gpt", &openai_agent("gpt", &server.openai_url(), ""));
    let ran = run_openai(&env, "gpt", "go").expect(0);
    let usage = &ran.result["usage"];
    assert!(usage["output"].as_u64().unwrap() > 0, "{usage}");
    assert_eq!(usage["estimated"], true);
    let log = agentq(
        &env,
        &[
            "watch",
            &ran.session(),
            "--from-start",
            "--plain",
            "--exit-on-idle",
        ],
        &[],
    );
    assert!(
        stdout(&log).contains(&format!("· ~{} tokens", usage["total"])),
        "the footer marks the estimate:\n{}",
        stdout(&log)
    );
}

// ---------------------------------------------------------------------------------
// Answers that are not streams, and empty answers

/// Runs against a server that answers `reply` (always), requiring exit `code`.
fn run_against(reply: Reply, code: i32) -> (TestEnv, FakeServer, Ran) {
    let env = TestEnv::new();
    let server = FakeServer::start(vec![reply]);
    env.write_agent("gpt", &openai_agent("gpt", &server.openai_url(), ""));
    let ran = run_openai(&env, "gpt", "go").expect(code);
    (env, server, ran)
}

#[test]
fn a_200_with_an_empty_body_fails_saying_so_and_is_not_retried() {
    let (_env, server, ran) = run_against(Reply::ok(), 1);
    let error = ran.result["error"].as_str().unwrap();
    assert!(error.contains("HTTP 200"), "{error}");
    assert!(error.contains("with an empty body"), "{error}");
    assert!(error.contains("text/event-stream"), "{error}");
    assert_eq!(
        server.request_count(),
        1,
        "the same request gets the same answer"
    );
}

#[test]
fn a_200_with_a_json_body_instead_of_a_stream_fails_naming_it() {
    let completion = json!({
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi"}, "finish_reason": "stop"}]
    });
    let (_env, server, ran) = run_against(Reply::json(200, completion), 1);
    let error = ran.result["error"].as_str().unwrap();
    assert!(error.contains("with a JSON body"), "{error}");
    assert!(error.contains("application/json"), "{error}");
    assert!(
        error.contains("chat.completion"),
        "shows what came: {error}"
    );
    assert_eq!(server.request_count(), 1);
    // An error document sent with 200 is quoted by its message.
    let (_env, _server, ran) = run_against(
        Reply::json(200, json!({"error": {"message": "model not loaded"}})),
        1,
    );
    let error = ran.result["error"].as_str().unwrap();
    assert!(error.contains("(model not loaded)"), "{error}");
}

#[test]
fn a_500_that_is_the_servers_request_validation_is_reported_and_not_retried() {
    let validation = "2 validation errors:\n  {'type': 'string_type', 'loc': ('body', 'messages', 1, 'content'), 'msg': 'Input should be a valid string'}";
    let (_env, server, ran) = run_against(Reply::error(500, validation), 1);
    let error = ran.result["error"].as_str().unwrap();
    assert!(error.contains("HTTP 500"), "{error}");
    assert!(
        error.contains("2 validation errors: {'type': 'string_type'"),
        "the body, on one line: {error}"
    );
    assert_eq!(ran.result["stop_reason"], "error");
    assert_eq!(server.request_count(), 1, "sending it again cannot help");
}

#[test]
fn an_answer_with_no_text_and_no_tool_calls_is_marked_empty_and_said_so() {
    let empty = OpenAiSse::new().role().finish("stop").usage(9, 0).done();
    let (env, _server, ran) = run_against(empty.reply(STEP), 0);
    assert_eq!(ran.result["status"], "completed");
    assert_eq!(ran.result["response"], "");
    assert_eq!(ran.result["empty"], true);
    let id = ran.session();
    let done = &env.payloads(&id, "agent.message.completed")[0];
    assert_eq!(done["empty"], true);
    let plain = agentq(
        &env,
        &["watch", &id, "--from-start", "--plain", "--exit-on-idle"],
        &[],
    );
    assert!(
        stdout(&plain).contains("· the model's answer was empty (no text and no tool calls)"),
        "{}",
        stdout(&plain)
    );
    // Without --json, a one-line note goes to stderr; stdout keeps the (empty) answer.
    let out = agentq(
        &env,
        &["run", "--agent", "gpt", "go"],
        &[("OPENAI_API_KEY", KEY)],
    );
    assert_eq!(code(&out), 0, "{}", describe(&out));
    assert_eq!(stdout(&out).trim(), "");
    assert!(
        stderr(&out).contains("agentq: the model's answer was empty"),
        "{}",
        describe(&out)
    );
    // A text answer is not marked.
    let (env, _server, ran) = run_against(OpenAiSse::answer(&["Hi"], 3, 1).reply(STEP), 0);
    assert_eq!(ran.result["empty"], false);
    let done = &env.payloads(&ran.session(), "agent.message.completed")[0];
    assert!(done.get("empty").is_none(), "absent when false: {done}");
}

#[test]
fn a_forcing_tool_choice_holds_until_a_tool_was_called() {
    let env = TestEnv::new();
    let call = OpenAiSse::new()
        .role()
        .tool_call(0, "call_1", "list_dir", "{\"path\": \".\"}")
        .finish("tool_calls")
        .done();
    let server = FakeServer::start(vec![
        call.reply(STEP),
        OpenAiSse::answer(&["Listed."], 5, 2).reply(STEP),
    ]);
    env.write_agent(
        "gpt",
        &openai_agent("gpt", &server.openai_url(), "tool_choice = \"list_dir\""),
    );
    run_openai(&env, "gpt", "go").expect(0);
    assert_eq!(
        server.request(0).body["tool_choice"],
        json!({"type": "function", "function": {"name": "list_dir"}})
    );
    assert!(
        server.request(1).body.get("tool_choice").is_none(),
        "after a call, the model may answer: {}",
        server.request(1).body
    );
    // "auto" and "none" hold for every step, and "required" is sent as it is.
    for (choice, wire) in [("auto", json!("auto")), ("required", json!("required"))] {
        let server = FakeServer::start(vec![OpenAiSse::answer(&["Hi"], 3, 1).reply(STEP)]);
        env.write_agent(
            "gpt",
            &openai_agent(
                "gpt",
                &server.openai_url(),
                &format!("tool_choice = \"{choice}\""),
            ),
        );
        run_openai(&env, "gpt", "go").expect(0);
        assert_eq!(server.request(0).body["tool_choice"], wire);
    }
    // A tool the agent does not have is refused when the definition is checked.
    env.write_agent(
        "gpt",
        &openai_agent("gpt", "http://127.0.0.1:9/v1", "tool_choice = \"rm_rf\""),
    );
    let out = env.run(&["agents", "validate"]);
    assert_eq!(code(&out), 2, "{}", describe(&out));
    assert!(
        stdout(&out).contains("model.tool_choice") && stdout(&out).contains("rm_rf"),
        "{}",
        describe(&out)
    );
}

// ---------------------------------------------------------------------------------
// OpenAI-compatible: leniency

/// Runs a stream that real servers send and agentq must accept: the answer is
/// "Hi there" and the step's finish reason `finish_reason`.
fn accepts(reply: Reply, finish_reason: &str) -> (TestEnv, String) {
    let env = TestEnv::new();
    let server = FakeServer::start(vec![reply]);
    env.write_agent("gpt", &openai_agent("gpt", &server.openai_url(), ""));
    let ran = run_openai(&env, "gpt", "hi").expect(0);
    assert_eq!(ran.result["response"], "Hi there", "{}", describe(&ran.out));
    let id = ran.session();
    assert_eq!(chunks(&env, &id), vec!["Hi ", "there"]);
    let step = &env.events_of(&id, "agent.step.completed")[0]["payload"];
    assert_eq!(step["finish_reason"], finish_reason, "{step}");
    assert_eq!(server.request_count(), 1, "no retry");
    (env, id)
}

/// A chunk without a `finish_reason` key at all.
fn bare(content: &str) -> Value {
    json!({"choices": [{"index": 0, "delta": {"content": content}}]})
}

#[test]
fn openai_accepts_finish_reason_missing() {
    let sse = OpenAiSse::new()
        .data(bare("Hi "))
        .data(bare("there"))
        .done();
    accepts(sse.reply(STEP), "stop");
}

#[test]
fn openai_accepts_finish_reason_null_throughout() {
    let sse = OpenAiSse::new()
        .texts(&["Hi ", "there"])
        .choice(json!({}), Value::Null)
        .done();
    accepts(sse.reply(STEP), "stop");
}

#[test]
fn openai_accepts_finish_reason_empty() {
    let sse = OpenAiSse::new()
        .texts(&["Hi ", "there"])
        .choice(json!({}), json!(""))
        .done();
    accepts(sse.reply(STEP), "stop");
}

#[test]
fn openai_accepts_empty_usage_objects() {
    let with_empty_usage = |delta: Value, finish: Value| json!({"choices": [{"index": 0, "delta": delta, "finish_reason": finish}], "usage": {}});
    let sse = OpenAiSse::new()
        .data(with_empty_usage(json!({"content": "Hi "}), Value::Null))
        .data(with_empty_usage(json!({"content": "there"}), Value::Null))
        .data(with_empty_usage(json!({}), json!("stop")))
        .raw("data: {\"choices\":[],\"usage\":{}}\n\n")
        .done();
    let (env, id) = accepts(sse.reply(STEP), "stop");
    let execution = &finished(&env, &id)["usage"]["execution"];
    assert_eq!(
        execution["total"],
        execution["input"].as_u64().unwrap() + execution["output"].as_u64().unwrap()
    );
}

#[test]
fn openai_accepts_keep_alive_comments() {
    let sse = OpenAiSse::new()
        .raw(": keep-alive\n\n")
        .role()
        .raw(":\n\n")
        .text("Hi ")
        .raw(": OPENROUTER PROCESSING\n\n")
        .text("there")
        .raw(": keep-alive\n\n")
        .finish("stop")
        .usage(3, 2)
        .done();
    let (env, id) = accepts(sse.reply(STEP), "stop");
    assert_eq!(finished(&env, &id)["usage"]["execution"], usage(3, 2));
}

#[test]
fn openai_accepts_crlf_line_endings_even_split_between_cr_and_lf() {
    let sse = OpenAiSse::answer(&["Hi ", "there"], 3, 2);
    let crlf = String::from_utf8(sse.bytes())
        .unwrap()
        .replace('\n', "\r\n")
        .into_bytes();
    // Three-byte pieces put many `\r` and `\n` of one line end in different pieces.
    let reply = Reply::ok().pieces(Duration::from_millis(1), split_every(&crlf, 3));
    accepts(reply, "stop");
}

#[test]
fn openai_accepts_a_finished_stream_without_done() {
    let sse = OpenAiSse::new()
        .role()
        .texts(&["Hi ", "there"])
        .finish("stop")
        .usage(3, 2);
    let (env, id) = accepts(sse.reply(STEP), "stop");
    assert_eq!(finished(&env, &id)["usage"]["execution"], usage(3, 2));
}

#[test]
fn openai_accepts_the_last_frame_without_its_blank_line() {
    let sse = OpenAiSse::new()
        .role()
        .texts(&["Hi ", "there"])
        .finish("stop")
        .raw("data: [DONE]");
    accepts(sse.reply(STEP), "stop");
}

// ---------------------------------------------------------------------------------
// OpenAI-compatible: errors inside the stream

#[test]
fn openai_error_object_in_a_data_frame_fails_the_step() {
    let env = TestEnv::new();
    let sse = OpenAiSse::new()
        .role()
        .text("Let me ")
        .data(json!({"error": {
            "message": "This model's maximum context length is 8192 tokens",
            "type": "invalid_request_error",
            "code": "context_length_exceeded"
        }}));
    let server = FakeServer::start(vec![sse.reply(STEP)]);
    env.write_agent("gpt", &openai_agent("gpt", &server.openai_url(), ""));
    let ran = run_openai(&env, "gpt", "go").expect(1);
    assert_eq!(ran.result["status"], "failed");
    assert_eq!(ran.result["stop_reason"], "error");
    let id = ran.session();
    let done = finished(&env, &id);
    assert_eq!(done["exit_code"], 1);
    assert!(
        done["error"]
            .as_str()
            .unwrap()
            .contains("maximum context length is 8192 tokens"),
        "{done}"
    );
    assert_eq!(server.request_count(), 1);
}

#[test]
fn openai_overloaded_error_in_a_data_frame_is_temporary() {
    let env = TestEnv::new();
    let sse = OpenAiSse::new()
        .role()
        .data(json!({"error": {"message": "The server is overloaded", "type": "server_error"}}));
    let server = FakeServer::start(vec![sse.reply(STEP)]);
    env.write_agent("gpt", &openai_agent("gpt", &server.openai_url(), ""));
    let ran = run_openai(&env, "gpt", "go").expect(75);
    assert_eq!(ran.result["stop_reason"], "provider_unavailable");
    assert!(
        ran.result["error"]
            .as_str()
            .unwrap()
            .contains("The server is overloaded"),
        "{}",
        ran.result
    );
    assert_eq!(server.request_count(), 1, "the stream had begun: no retry");
}

// ---------------------------------------------------------------------------------
// Retries before the first byte

/// A server that fails once with `status`, then answers.
fn retried_once(status: u16) {
    let env = TestEnv::new();
    let server = FakeServer::start(vec![
        Reply::error(status, &format!("try again later ({status})")),
        OpenAiSse::answer(&["Back."], 5, 1).reply(STEP),
    ]);
    env.write_agent("gpt", &openai_agent("gpt", &server.openai_url(), ""));
    let ran = run_openai(&env, "gpt", "go").expect(0);
    assert_eq!(ran.result["response"], "Back.");
    let id = ran.session();
    assert_eq!(server.request_count(), 2);
    let retries = retries(&env, &id);
    assert_eq!(retries.len(), 1, "{retries:?}");
    let retry = &retries[0];
    assert_eq!(retry["attempt"], 2);
    assert_eq!(retry["http_status"], status);
    let delay = retry["delay_ms"].as_u64().unwrap();
    assert!(
        (250..=500).contains(&delay),
        "the first backoff is 500 ms with jitter down to half: {delay}"
    );
    assert!(
        retry["error"]
            .as_str()
            .unwrap()
            .contains(&format!("try again later ({status})")),
        "{retry}"
    );
    // The retry came before anything was streamed.
    let kinds: Vec<String> = env
        .events(&id)
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_owned())
        .filter(|t| t == "provider.retry" || t == "agent.stream.chunk")
        .collect();
    assert_eq!(kinds, vec!["provider.retry", "agent.stream.chunk"]);
}

#[test]
fn status_429_is_retried() {
    retried_once(429);
}

#[test]
fn status_500_is_retried() {
    retried_once(500);
}

#[test]
fn status_503_is_retried() {
    retried_once(503);
}

#[test]
fn status_408_is_retried() {
    retried_once(408);
}

#[test]
fn status_409_is_retried() {
    retried_once(409);
}

#[test]
fn every_retry_writes_its_own_event() {
    let env = TestEnv::new();
    let server = FakeServer::start(vec![
        Reply::error(429, "slow down").header("Retry-After", "0"),
        Reply::error(502, "bad gateway").header("Retry-After", "0"),
        Reply::error(503, "unavailable").header("Retry-After", "0"),
        OpenAiSse::answer(&["Finally."], 5, 1).reply(STEP),
    ]);
    env.write_agent("gpt", &openai_agent("gpt", &server.openai_url(), ""));
    let ran = run_openai(&env, "gpt", "go").expect(0);
    assert_eq!(ran.result["response"], "Finally.");
    let seen: Vec<(u64, u64, u64)> = retries(&env, &ran.session())
        .iter()
        .map(|r| {
            (
                r["attempt"].as_u64().unwrap(),
                r["http_status"].as_u64().unwrap(),
                r["delay_ms"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(seen, vec![(2, 429, 0), (3, 502, 0), (4, 503, 0)]);
    assert_eq!(server.request_count(), 4);
}

#[test]
fn without_retry_after_the_backoff_doubles() {
    let env = TestEnv::new();
    let server = FakeServer::start(vec![
        Reply::error(500, "oops"),
        Reply::error(500, "oops again"),
        OpenAiSse::answer(&["ok"], 5, 1).reply(STEP),
    ]);
    env.write_agent(
        "gpt",
        &openai_agent("gpt", &server.openai_url(), "max_attempts = 3"),
    );
    let ran = run_openai(&env, "gpt", "go").expect(0);
    let delays: Vec<u64> = retries(&env, &ran.session())
        .iter()
        .map(|r| r["delay_ms"].as_u64().unwrap())
        .collect();
    assert_eq!(delays.len(), 2, "{delays:?}");
    // 500 ms then 1 s, each with jitter down to half.
    assert!((250..=500).contains(&delays[0]), "{delays:?}");
    assert!((500..=1000).contains(&delays[1]), "{delays:?}");
}

#[test]
fn retry_after_in_seconds_sets_the_delay() {
    let env = TestEnv::new();
    let server = FakeServer::start(vec![
        Reply::error(429, "rate limited").header("Retry-After", "1"),
        OpenAiSse::answer(&["ok"], 5, 1).reply(STEP),
    ]);
    env.write_agent("gpt", &openai_agent("gpt", &server.openai_url(), ""));
    let ran = run_openai(&env, "gpt", "go").expect(0);
    let retries = retries(&env, &ran.session());
    assert_eq!(retries.len(), 1);
    assert_eq!(retries[0]["delay_ms"], 1000);
    assert_eq!(retries[0]["http_status"], 429);
}

#[test]
fn retry_after_as_an_http_date_sets_the_delay() {
    let env = TestEnv::new();
    let at = http_date(SystemTime::now() + Duration::from_secs(2));
    let server = FakeServer::start(vec![
        Reply::error(503, "maintenance").header("Retry-After", &at),
        OpenAiSse::answer(&["ok"], 5, 1).reply(STEP),
    ]);
    env.write_agent("gpt", &openai_agent("gpt", &server.openai_url(), ""));
    let ran = run_openai(&env, "gpt", "go").expect(0);
    let retries = retries(&env, &ran.session());
    assert_eq!(retries.len(), 1);
    let delay = retries[0]["delay_ms"].as_u64().unwrap();
    // Two seconds ahead, at whole-second precision: more than the backoff (≤ 500 ms).
    assert!(
        (600..=2000).contains(&delay),
        "Retry-After: {at} gave {delay} ms"
    );
}

#[test]
fn a_refused_connection_is_retried_then_reported_unavailable() {
    let env = TestEnv::new();
    env.write_agent(
        "gpt",
        &openai_agent("gpt", &refused_url(), "max_attempts = 2"),
    );
    let ran = run_openai(&env, "gpt", "anyone?").expect(75);
    assert_eq!(ran.result["status"], "failed");
    assert_eq!(ran.result["stop_reason"], "provider_unavailable");
    let id = ran.session();
    let retries = retries(&env, &id);
    assert_eq!(retries.len(), 1, "{retries:?}");
    assert_eq!(retries[0]["attempt"], 2);
    assert_eq!(retries[0]["http_status"], Value::Null);
    assert!(retries[0]["delay_ms"].as_u64().unwrap() > 0);
    assert_eq!(finished(&env, &id)["exit_code"], 75);
}

/// A server that answers `status` with the provider's message: one request, exit 1.
fn fails_at_once(status: u16) {
    let env = TestEnv::new();
    let message = format!("The model `gpt-test` refused this ({status})");
    let server = FakeServer::start(vec![
        Reply::error(status, &message),
        OpenAiSse::answer(&["never"], 1, 1).reply(STEP),
    ]);
    env.write_agent("gpt", &openai_agent("gpt", &server.openai_url(), ""));
    let ran = run_openai(&env, "gpt", "go").expect(1);
    assert_eq!(ran.result["status"], "failed");
    assert_eq!(ran.result["stop_reason"], "error");
    let id = ran.session();
    assert_eq!(server.request_count(), 1, "{status} is not retried");
    assert!(retries(&env, &id).is_empty());
    let done = finished(&env, &id);
    assert_eq!(done["exit_code"], 1);
    let error = done["error"].as_str().unwrap();
    assert!(error.contains(&message), "{error}");
    assert!(error.contains(&status.to_string()), "{error}");
}

#[test]
fn status_400_fails_at_once() {
    fails_at_once(400);
}

#[test]
fn status_401_fails_at_once() {
    fails_at_once(401);
}

#[test]
fn status_403_fails_at_once() {
    fails_at_once(403);
}

#[test]
fn status_404_fails_at_once() {
    fails_at_once(404);
}

#[test]
fn exhausted_retries_fail_unavailable_and_the_session_carries_on_with_a_new_message() {
    let env = TestEnv::new();
    let server = FakeServer::start(vec![
        Reply::error(503, "overloaded"),
        Reply::error(503, "still overloaded"),
        OpenAiSse::answer(&["Recovered."], 5, 2).reply(STEP),
    ]);
    env.write_agent(
        "gpt",
        &openai_agent("gpt", &server.openai_url(), "max_attempts = 2"),
    );
    let ran = run_openai(&env, "gpt", "first").expect(75);
    assert_eq!(ran.result["status"], "failed");
    assert_eq!(ran.result["stop_reason"], "provider_unavailable");
    assert_eq!(ran.result["exit_code"], 75);
    assert!(
        ran.result["error"]
            .as_str()
            .unwrap()
            .contains("still overloaded"),
        "{}",
        ran.result
    );
    let id = ran.session();
    assert_eq!(server.request_count(), 2);
    assert_eq!(retries(&env, &id).len(), 1);

    let out = agentq(
        &env,
        &["run", "--session", &id, "second", "--json"],
        &[("OPENAI_API_KEY", KEY)],
    );
    assert_eq!(code(&out), 0, "{}", describe(&out));
    let again: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(again["response"], "Recovered.");
    let users: Vec<Value> = messages(&server.request(2))
        .into_iter()
        .filter(|m| m["role"] == "user")
        .map(|m| m["content"].clone())
        .collect();
    assert_eq!(users, vec![json!("first"), json!("second")]);
    let show = session_show(&env, &id);
    assert_eq!(show["session"]["counters"]["failed"], 1);
    assert_eq!(show["session"]["counters"]["completed"], 1);
}

#[test]
fn exhausted_retries_leave_the_message_resumable_with_send_continue() {
    let env = TestEnv::new();
    let server = FakeServer::start(vec![
        Reply::error(429, "rate limited"),
        Reply::error(429, "rate limited"),
        OpenAiSse::answer(&["Picked up again."], 5, 2).reply(STEP),
    ]);
    env.write_agent(
        "gpt",
        &openai_agent("gpt", &server.openai_url(), "max_attempts = 2"),
    );
    let id = run_openai(&env, "gpt", "the task").expect(75).session();

    let vars = [("OPENAI_API_KEY", KEY)];
    let sent = agentq(&env, &["send", &id, "--continue"], &vars);
    assert_eq!(code(&sent), 0, "{}", describe(&sent));
    let worked = agentq(&env, &["worker", "--once"], &vars);
    assert_eq!(code(&worked), 0, "{}", describe(&worked));
    let done = finished(&env, &id);
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(
        env.events_of(&id, "agent.message.completed")[0]["payload"]["response"],
        "Picked up again."
    );
    assert_eq!(server.request_count(), 3);
    let users: Vec<Value> = messages(&server.request(2))
        .into_iter()
        .filter(|m| m["role"] == "user")
        .map(|m| m["content"].clone())
        .collect();
    assert_eq!(users.first(), Some(&json!("the task")), "{users:?}");
}

// ---------------------------------------------------------------------------------
// Streams that stall or break off

#[test]
fn a_stalled_stream_fails_the_step_after_the_idle_timeout() {
    let env = TestEnv::new();
    let sse = OpenAiSse::new().role().text("Partial");
    let server = FakeServer::start(vec![
        sse.reply(STEP).stall(),
        OpenAiSse::answer(&["never"], 1, 1).reply(STEP),
    ]);
    env.write_agent(
        "gpt",
        &openai_agent("gpt", &server.openai_url(), "idle_timeout = \"300ms\""),
    );
    let started = std::time::Instant::now();
    let ran = run_openai(&env, "gpt", "go").expect(75);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the idle timeout ended the wait: {:?}",
        started.elapsed()
    );
    assert_eq!(ran.result["stop_reason"], "provider_unavailable");
    let id = ran.session();
    assert_eq!(chunks(&env, &id), vec!["Partial"]);
    let error = finished(&env, &id)["error"].as_str().unwrap().to_owned();
    assert!(error.contains("stalled"), "{error}");
    assert_eq!(
        server.request_count(),
        1,
        "text was shown: the call is not repeated"
    );
}

#[test]
fn a_stream_stalled_mid_line_fails_too() {
    let env = TestEnv::new();
    let server = FakeServer::start(vec![
        Reply::ok()
            .piece_after(STEP, OpenAiSse::new().role().bytes())
            .piece_after(STEP, "data: {\"choices\":[{\"delta\":{\"content\":\"Hal")
            .stall(),
    ]);
    env.write_agent(
        "gpt",
        &openai_agent("gpt", &server.openai_url(), "idle_timeout = \"300ms\""),
    );
    let ran = run_openai(&env, "gpt", "go").expect(75);
    assert_eq!(ran.result["stop_reason"], "provider_unavailable");
    assert_eq!(server.request_count(), 1);
}

#[test]
fn a_server_that_never_answers_fails_after_the_idle_timeout() {
    let env = TestEnv::new();
    let server = FakeServer::start(vec![Reply::silent()]);
    env.write_agent(
        "gpt",
        &openai_agent(
            "gpt",
            &server.openai_url(),
            "idle_timeout = \"300ms\"\nmax_attempts = 1",
        ),
    );
    let mut cmd = env.cmd();
    for name in OUTSIDE_VARS {
        cmd.env_remove(name);
    }
    let child = cmd
        .args(["run", "--agent", "gpt", "hello?", "--json"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn agentq");
    // Well before the fake server gives up on the connection (30 s).
    let out = Background { child }.wait(Duration::from_secs(10));
    assert_eq!(code(&out), 75, "{}", describe(&out));
    let result: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(result["stop_reason"], "provider_unavailable");
    let error = result["error"].as_str().unwrap();
    assert!(error.contains("no response"), "{error}");
    assert_eq!(server.request_count(), 1);
}

#[test]
fn a_truncated_stream_fails_the_step() {
    let env = TestEnv::new();
    let sse = OpenAiSse::new().role().texts(&["Half ", "an answer"]);
    let server = FakeServer::start(vec![
        sse.reply(STEP),
        OpenAiSse::answer(&["never"], 1, 1).reply(STEP),
    ]);
    env.write_agent("gpt", &openai_agent("gpt", &server.openai_url(), ""));
    let ran = run_openai(&env, "gpt", "go").expect(75);
    assert_eq!(ran.result["status"], "failed");
    assert_eq!(ran.result["stop_reason"], "provider_unavailable");
    assert_eq!(ran.result["response"], Value::Null);
    let id = ran.session();
    assert_eq!(chunks(&env, &id), vec!["Half ", "an answer"]);
    assert!(env.events_of(&id, "agent.message.completed").is_empty());
    assert_eq!(server.request_count(), 1);
}

#[test]
fn a_stream_cut_mid_frame_fails_the_step() {
    let env = TestEnv::new();
    let server = FakeServer::start(vec![
        Reply::ok()
            .piece_after(STEP, OpenAiSse::new().role().text("Hal").bytes())
            .piece_after(STEP, "data: {\"choices\":[{\"delta\":{\"content\":\"f"),
    ]);
    env.write_agent("gpt", &openai_agent("gpt", &server.openai_url(), ""));
    let ran = run_openai(&env, "gpt", "go").expect(75);
    assert_eq!(ran.result["stop_reason"], "provider_unavailable");
    assert_eq!(server.request_count(), 1);
}

// ---------------------------------------------------------------------------------
// Anthropic

#[test]
fn anthropic_text_answer_with_pings_and_its_request() {
    let env = TestEnv::new();
    let sse = AnthropicSse::new()
        .message_start(25)
        .ping()
        .text_start(0)
        .text(0, "Bonjour")
        .ping()
        .text(0, ", le monde")
        .block_stop(0)
        .message_delta("end_turn", 12)
        .message_stop();
    let server = FakeServer::start(vec![sse.reply(STEP)]);
    env.write_agent(
        "claude",
        &anthropic_agent(
            "claude",
            &server.url(),
            "temperature = 0.5\nmax_output_tokens = 256",
        ),
    );
    let ran = run_anthropic(&env, "claude", "Greet me").expect(0);
    assert_eq!(ran.result["response"], "Bonjour, le monde");
    let id = ran.session();
    assert_eq!(chunks(&env, &id), vec!["Bonjour", ", le monde"]);
    let done = finished(&env, &id);
    assert_eq!(done["usage"]["execution"], usage(25, 12));
    assert_eq!(session_show(&env, &id)["session"]["usage"], usage(25, 12));
    let step = &env.events_of(&id, "agent.step.completed")[0]["payload"];
    assert_eq!(step["finish_reason"], "end_turn");

    let request = server.request(0);
    assert_eq!(request.method, "POST");
    assert_eq!(request.path, "/v1/messages");
    assert_eq!(request.header("x-api-key"), Some(KEY));
    assert_eq!(request.header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(request.header("authorization"), None);
    let body = &request.body;
    assert_eq!(body["model"], "claude-test");
    assert_eq!(body["stream"], true);
    assert_eq!(body["max_tokens"], 256);
    assert_eq!(body["temperature"], 0.5);
    assert_eq!(
        body["system"], SYSTEM,
        "the system prompt is a top-level field"
    );
    assert_eq!(
        messages(&request),
        vec![json!({"role": "user", "content": "Greet me"})]
    );
    let tools: Vec<&str> = body["tools"]
        .as_array()
        .expect("tools")
        .iter()
        .map(|t| {
            assert_eq!(t["input_schema"]["type"], "object", "{t}");
            assert!(t["description"].is_string(), "{t}");
            t["name"].as_str().unwrap()
        })
        .collect();
    assert_eq!(tools, vec!["read_file", "write_file", "list_dir"]);
}

#[test]
fn anthropic_tool_use_from_json_deltas_runs_and_results_go_back_as_tool_result_blocks() {
    let env = TestEnv::new();
    let sse = AnthropicSse::new()
        .message_start(40)
        .text_start(0)
        .text(0, "Let me write that.")
        .block_stop(0)
        .tool_use_start(1, "toolu_1", "write_file")
        .input_json(1, "")
        .input_json(1, "{\"pa")
        .input_json(1, "th\": \"a.md\", \"con")
        .input_json(1, "tent\": \"Ça va\"}")
        .block_stop(1)
        .tool_use_start(2, "toolu_2", "read_file")
        .input_json(2, "{\"path\": \"missing.md\"}")
        .block_stop(2)
        .message_delta("tool_use", 30)
        .message_stop();
    let server = FakeServer::start(vec![
        Reply::ok().pieces(Duration::from_millis(1), split_every(&sse.bytes(), 11)),
        AnthropicSse::answer(&["Done."], 90, 3).reply(STEP),
    ]);
    env.write_agent("claude", &anthropic_agent("claude", &server.url(), ""));
    let ran = run_anthropic(&env, "claude", "Write a.md").expect(0);
    assert_eq!(ran.result["response"], "Done.");
    let id = ran.session();
    let written = env.session_dir(&id).join("workspace").join("a.md");
    assert_eq!(std::fs::read_to_string(written).unwrap(), "Ça va");
    let outcomes: Vec<(Value, Value)> = env
        .events_of(&id, "agent.tool.completed")
        .iter()
        .map(|e| {
            (
                e["payload"]["tool_call_id"].clone(),
                e["payload"]["success"].clone(),
            )
        })
        .collect();
    assert_eq!(
        outcomes,
        vec![
            (json!("toolu_1"), json!(true)),
            (json!("toolu_2"), json!(false))
        ]
    );

    let second = messages(&server.request(1));
    assert_eq!(second.len(), 3, "{second:?}");
    assert_eq!(second[1]["role"], "assistant");
    let blocks = second[1]["content"].as_array().unwrap();
    assert_eq!(
        blocks[0],
        json!({"type": "text", "text": "Let me write that."})
    );
    assert_eq!(
        blocks[1],
        json!({"type": "tool_use", "id": "toolu_1", "name": "write_file", "input": {"path": "a.md", "content": "Ça va"}})
    );
    assert_eq!(
        blocks[2],
        json!({"type": "tool_use", "id": "toolu_2", "name": "read_file", "input": {"path": "missing.md"}})
    );
    assert_eq!(second[2]["role"], "user");
    let results = second[2]["content"].as_array().unwrap();
    assert_eq!(results.len(), 2, "{results:?}");
    assert_eq!(results[0]["type"], "tool_result");
    assert_eq!(results[0]["tool_use_id"], "toolu_1");
    assert_eq!(results[0]["is_error"], false);
    assert!(
        results[0]["content"].as_str().unwrap().contains("a.md"),
        "{}",
        results[0]
    );
    assert_eq!(results[1]["type"], "tool_result");
    assert_eq!(results[1]["tool_use_id"], "toolu_2");
    assert_eq!(results[1]["is_error"], true);
    assert!(
        results[1]["content"]
            .as_str()
            .unwrap()
            .contains("missing.md"),
        "{}",
        results[1]
    );
    assert_eq!(finished(&env, &id)["usage"]["execution"], usage(130, 33));
}

#[test]
fn anthropic_overloaded_error_event_after_200_is_temporary() {
    let env = TestEnv::new();
    let sse = AnthropicSse::new()
        .message_start(10)
        .text_start(0)
        .text(0, "I was")
        .error("overloaded_error", "Overloaded");
    let server = FakeServer::start(vec![sse.reply(STEP)]);
    env.write_agent("claude", &anthropic_agent("claude", &server.url(), ""));
    let ran = run_anthropic(&env, "claude", "go").expect(75);
    assert_eq!(ran.result["status"], "failed");
    assert_eq!(ran.result["stop_reason"], "provider_unavailable");
    assert!(
        ran.result["error"].as_str().unwrap().contains("Overloaded"),
        "{}",
        ran.result
    );
    assert_eq!(server.request_count(), 1);
}

#[test]
fn anthropic_invalid_request_error_event_after_200_fails() {
    let env = TestEnv::new();
    let sse = AnthropicSse::new()
        .message_start(10)
        .error("invalid_request_error", "messages: roles must alternate");
    let server = FakeServer::start(vec![sse.reply(STEP)]);
    env.write_agent("claude", &anthropic_agent("claude", &server.url(), ""));
    let ran = run_anthropic(&env, "claude", "go").expect(1);
    assert_eq!(ran.result["stop_reason"], "error");
    assert!(
        ran.result["error"]
            .as_str()
            .unwrap()
            .contains("roles must alternate"),
        "{}",
        ran.result
    );
}

#[test]
fn anthropic_http_errors_are_classified_like_openai() {
    let env = TestEnv::new();
    let overloaded =
        json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}});
    let server = FakeServer::start(vec![
        Reply::json(529, overloaded).header("Retry-After", "0"),
        AnthropicSse::answer(&["fine"], 3, 1).reply(STEP),
    ]);
    env.write_agent("claude", &anthropic_agent("claude", &server.url(), ""));
    let ran = run_anthropic(&env, "claude", "go").expect(0);
    assert_eq!(ran.result["response"], "fine");
    let retries = retries(&env, &ran.session());
    assert_eq!(retries.len(), 1);
    assert_eq!(retries[0]["http_status"], 529);

    let bad = json!({"type": "error", "error": {"type": "not_found_error", "message": "model: claude-nope"}});
    let server = FakeServer::start(vec![Reply::json(404, bad)]);
    env.write_agent("nope", &anthropic_agent("nope", &server.url(), ""));
    let ran = run_anthropic(&env, "nope", "go").expect(1);
    assert!(
        ran.result["error"]
            .as_str()
            .unwrap()
            .contains("model: claude-nope"),
        "{}",
        ran.result
    );
    assert_eq!(server.request_count(), 1);
}

#[test]
fn anthropic_truncated_stream_fails_the_step() {
    let env = TestEnv::new();
    let sse = AnthropicSse::new()
        .message_start(10)
        .text_start(0)
        .text(0, "Half");
    let server = FakeServer::start(vec![sse.reply(STEP)]);
    env.write_agent("claude", &anthropic_agent("claude", &server.url(), ""));
    let ran = run_anthropic(&env, "claude", "go").expect(75);
    assert_eq!(ran.result["stop_reason"], "provider_unavailable");
    assert_eq!(server.request_count(), 1);
}

// ---------------------------------------------------------------------------------
// Where endpoints and keys come from

#[test]
fn a_named_provider_in_agentq_toml_sends_its_headers() {
    let env = TestEnv::new();
    let server = FakeServer::start(vec![OpenAiSse::answer(&["local"], 2, 1).reply(STEP)]);
    std::fs::write(
        env.home().join("agentq.toml"),
        format!(
            "[providers.local]\nkind = \"openai\"\nbase_url = \"{}\"\nheaders = {{ X-Team = \"blue\" }}\n",
            server.openai_url()
        ),
    )
    .unwrap();
    env.write_agent(
        "local",
        &agent("local", "provider = \"local\"\nname = \"llama-3\""),
    );
    let ran = run_json(&env, "local", "hi", &[]).expect(0);
    assert_eq!(ran.result["response"], "local");
    let request = server.request(0);
    assert_eq!(request.path, "/v1/chat/completions");
    assert_eq!(request.header("x-team"), Some("blue"));
    assert_eq!(request.body["model"], "llama-3");
    assert_eq!(
        request.header("authorization"),
        None,
        "a local server needs no key, and none was set"
    );
}

#[test]
fn openai_base_url_from_the_environment_is_used_without_one_in_the_definition() {
    let env = TestEnv::new();
    let server = FakeServer::start(vec![OpenAiSse::answer(&["from env"], 2, 1).reply(STEP)]);
    env.write_agent(
        "gpt",
        &agent("gpt", "provider = \"openai\"\nname = \"gpt-test\""),
    );
    let url = server.openai_url();
    let ran = run_json(
        &env,
        "gpt",
        "hi",
        &[("OPENAI_BASE_URL", &url), ("OPENAI_API_KEY", KEY)],
    )
    .expect(0);
    assert_eq!(ran.result["response"], "from env");
    let request = server.request(0);
    assert_eq!(request.path, "/v1/chat/completions");
    assert_eq!(
        request.header("authorization"),
        Some(format!("Bearer {KEY}").as_str())
    );
}

#[test]
fn the_definitions_base_url_wins_over_the_environment() {
    let env = TestEnv::new();
    let chosen = FakeServer::start(vec![OpenAiSse::answer(&["chosen"], 2, 1).reply(STEP)]);
    let other = FakeServer::start(vec![OpenAiSse::answer(&["other"], 2, 1).reply(STEP)]);
    env.write_agent("gpt", &openai_agent("gpt", &chosen.openai_url(), ""));
    let url = other.openai_url();
    let ran = run_json(&env, "gpt", "hi", &[("OPENAI_BASE_URL", &url)]).expect(0);
    assert_eq!(ran.result["response"], "chosen");
    assert_eq!((chosen.request_count(), other.request_count()), (1, 0));
}

#[test]
fn a_named_providers_retry_and_idle_settings_apply() {
    let env = TestEnv::new();
    let config = |url: &str| {
        std::fs::write(
            env.home().join("agentq.toml"),
            format!(
                "[providers.edge]\nkind = \"openai\"\nbase_url = \"{url}\"\nmax_attempts = 1\nidle_timeout = \"300ms\"\n"
            ),
        )
        .unwrap();
    };
    env.write_agent("edge", &agent("edge", "provider = \"edge\"\nname = \"m\""));

    let unavailable = FakeServer::start(vec![Reply::error(503, "down")]);
    config(&unavailable.openai_url());
    let ran = run_json(&env, "edge", "hi", &[]).expect(75);
    assert_eq!(unavailable.request_count(), 1, "max_attempts = 1: no retry");
    assert!(retries(&env, &ran.session()).is_empty());

    let stalled = FakeServer::start(vec![OpenAiSse::new().role().reply(STEP).stall()]);
    config(&stalled.openai_url());
    let ran = run_json(&env, "edge", "hi", &[]).expect(75);
    let error = ran.result["error"].as_str().unwrap();
    assert!(error.contains("stalled"), "{error}");
}

#[test]
fn anthropic_base_url_from_the_environment_is_used_without_one_in_the_definition() {
    let env = TestEnv::new();
    let server = FakeServer::start(vec![AnthropicSse::answer(&["from env"], 2, 1).reply(STEP)]);
    env.write_agent(
        "claude",
        &agent("claude", "provider = \"anthropic\"\nname = \"claude-test\""),
    );
    let url = server.url();
    let ran = run_json(
        &env,
        "claude",
        "hi",
        &[("ANTHROPIC_BASE_URL", &url), ("ANTHROPIC_API_KEY", KEY)],
    )
    .expect(0);
    assert_eq!(ran.result["response"], "from env");
    assert_eq!(server.request(0).header("x-api-key"), Some(KEY));
}

#[test]
fn a_missing_key_is_a_clear_error_before_any_request() {
    let env = TestEnv::new();
    let server = FakeServer::start(vec![OpenAiSse::answer(&["never"], 1, 1).reply(STEP)]);
    env.write_agent(
        "gpt",
        &openai_agent(
            "gpt",
            &server.openai_url(),
            "api_key_env = \"AGENTQ_TEST_MISSING_KEY\"",
        ),
    );
    // A key in the usual variable does not stand in for the one the definition names.
    let out = agentq(
        &env,
        &["run", "--agent", "gpt", "hi"],
        &[("OPENAI_API_KEY", KEY)],
    );
    assert_eq!(code(&out), 1, "{}", describe(&out));
    assert!(
        stderr(&out).contains("AGENTQ_TEST_MISSING_KEY"),
        "the error names the variable:\n{}",
        describe(&out)
    );
    let id = env.json(&["session", "list", "--json"])[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let done = finished(&env, &id);
    assert_eq!(done["status"], "failed");
    assert_eq!(done["exit_code"], 1);
    assert!(
        done["error"]
            .as_str()
            .unwrap()
            .contains("AGENTQ_TEST_MISSING_KEY"),
        "{done}"
    );
    assert_eq!(server.request_count(), 0, "no request without the key");
}

// ---------------------------------------------------------------------------------
// Secrets

#[test]
fn the_key_is_never_written_to_any_file_nor_printed() {
    let env = TestEnv::new();
    let echo = format!("Incorrect API key provided: {KEY}");
    // Success with a tool call, verbose logging on.
    let ok = FakeServer::start(vec![
        OpenAiSse::new()
            .role()
            .tool_call(
                0,
                "call_1",
                "write_file",
                "{\"path\":\"x.md\",\"content\":\"x\"}",
            )
            .finish("tool_calls")
            .done()
            .reply(STEP),
        OpenAiSse::answer(&["ok"], 3, 1).reply(STEP),
    ]);
    // A 401 whose body quotes the key.
    let unauthorized = FakeServer::start(vec![Reply::error(401, &echo)]);
    // A retried 429 quoting it, then an error frame in the stream quoting it.
    let streamed = FakeServer::start(vec![
        Reply::error(429, &echo).header("Retry-After", "0"),
        Reply::ok().piece_after(
            STEP,
            format!(
                "data: {}\n\n",
                json!({"error": {"message": echo, "type": "invalid_request_error"}})
            ),
        ),
    ]);
    // Anthropic, whose error event after 200 quotes it.
    let anthropic = FakeServer::start(vec![
        AnthropicSse::new()
            .message_start(1)
            .error("authentication_error", &format!("invalid x-api-key: {KEY}"))
            .reply(STEP),
    ]);
    env.write_agent("ok", &openai_agent("ok", &ok.openai_url(), ""));
    env.write_agent(
        "unauthorized",
        &openai_agent("unauthorized", &unauthorized.openai_url(), ""),
    );
    env.write_agent(
        "streamed",
        &openai_agent("streamed", &streamed.openai_url(), ""),
    );
    env.write_agent("claude", &anthropic_agent("claude", &anthropic.url(), ""));
    let vars = [("OPENAI_API_KEY", KEY), ("ANTHROPIC_API_KEY", KEY)];

    let runs: [(&str, &[&str], i32); 5] = [
        ("ok", &["-vv", "run", "--agent", "ok", "hi"], 0),
        ("ok --json", &["run", "--agent", "ok", "hi", "--json"], 0),
        (
            "unauthorized",
            &["-vv", "run", "--agent", "unauthorized", "hi"],
            1,
        ),
        (
            "streamed",
            &["run", "--agent", "streamed", "hi", "--json"],
            1,
        ),
        ("claude", &["-vv", "run", "--agent", "claude", "hi"], 1),
    ];
    for (what, args, expected) in runs {
        let out = agentq(&env, args, &vars);
        assert_eq!(code(&out), expected, "{what}:\n{}", describe(&out));
        assert_not_in_output(&out, KEY, what);
    }
    assert_eq!(ok.request_count(), 3, "the key was really used");
    assert_eq!(
        ok.request(0).header("authorization"),
        Some(format!("Bearer {KEY}").as_str())
    );
    assert_eq!(unauthorized.request_count(), 1);
    assert_eq!(streamed.request_count(), 2);
    assert_eq!(anthropic.request(0).header("x-api-key"), Some(KEY));

    // What people read afterwards does not show it either.
    let ids: Vec<String> = env
        .json(&["session", "list", "--json"])
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 5);
    for id in &ids {
        for args in [
            vec!["watch", id, "--from-start", "--plain", "--exit-on-idle"],
            vec!["session", "show", id, "--json"],
            vec!["session", "messages", id, "--json"],
        ] {
            let out = agentq(&env, &args, &vars);
            assert_not_in_output(&out, KEY, &args.join(" "));
        }
    }
    // The errors were reported, without the key.
    let errors: Vec<String> = ids
        .iter()
        .filter_map(|id| finished(&env, id)["error"].as_str().map(str::to_owned))
        .collect();
    assert!(
        errors
            .iter()
            .any(|e| e.contains("Incorrect API key provided")),
        "{errors:?}"
    );

    let leaks = files_containing(env.home(), KEY.as_bytes());
    assert!(leaks.is_empty(), "the key was written to {leaks:?}");
}
