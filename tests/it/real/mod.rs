//! agentq against real servers, started by the tests themselves on 127.0.0.1:
//! llama-cpp-python's OpenAI-compatible server with SmolLM2-135M-Instruct, LiteLLM's
//! proxy serving the Anthropic Messages API in front of it (issue 14), and the
//! reference MCP server `mcp-server-time` over stdio (issue 16).
//!
//! `scripts/real-server install` puts both into a cache outside the repository (from
//! PyPI only) and writes a manifest there; these tests read it. They are `#[ignore]`d,
//! so `cargo test` lists them as ignored (never as passed) where nothing is installed;
//! `scripts/real-server test` (which `.ci/run` calls) runs them in a network namespace
//! that has only loopback, so nothing a dependency tries can leave the machine. Each
//! test checks that it runs in such a namespace before it starts anything.
//!
//! The servers are shared by the tests of one process: started on first use, from a
//! thread that lives as long as the process, with a parent-death signal, so they end
//! with it. Between agentq and each server sits a [`Proxy`] that records every request
//! as it went over the wire: the tests assert what agentq sent, not what it meant to.
//!
//! A 135M model rarely picks a tool on its own, and its words change with the build:
//! tests force tool calls with `tool_choice` and assert structure (a call assembled,
//! run, answered), never wording.

mod gateway;
mod mcp;
mod openai;
pub mod servers;

use std::process::{Output, Stdio};

use serde_json::Value;

use super::*;
pub use servers::*;

/// The key agentq is given for the servers; it must never be written anywhere.
pub const KEY: &str = "sk-agentq-real-test-5e1f0c";
/// The variable agent definitions name in `api_key_env`.
pub const KEY_ENV: &str = "AGENTQ_REAL_KEY";

// ---------------------------------------------------------------------------------
// agentq

/// A home whose `agentq.toml` names the provider `real` at `url`, of `kind`, with the
/// key read from [`KEY_ENV`]; and a `notes/` directory for the file tools.
pub fn home_with_provider(kind: &str, url: &str) -> TestEnv {
    let env = TestEnv::new();
    std::fs::write(
        env.home().join("agentq.toml"),
        format!(
            "[providers.real]\nkind = \"{kind}\"\nbase_url = \"{url}\"\napi_key_env = \"{KEY_ENV}\"\n"
        ),
    )
    .unwrap();
    std::fs::create_dir_all(env.home().join("notes")).unwrap();
    std::fs::write(
        env.home().join("notes/notes.md"),
        "Buy milk. Call Ana at noon.\n",
    )
    .unwrap();
    env
}

/// An agent on the `real` provider, deterministic, with answers of at most
/// `max_tokens`; `extra` adds lines to `[model]`.
pub fn real_agent(name: &str, max_tokens: u32, extra: &str) -> String {
    format!(
        r#"name = "{name}"
system = "You are a helpful assistant. Answer in one short sentence."
[model]
provider = "real"
name = "{MODEL}"
temperature = 0
max_output_tokens = {max_tokens}
{extra}
[tools]
builtin = ["read_file", "list_dir"]
workspace = "notes"
"#
    )
}

/// The schema of [`structured_agent`]'s answers.
pub fn city_schema() -> Value {
    serde_json::json!({
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 40}},
        "required": ["city"],
        "additionalProperties": false,
    })
}

/// An agent on the `real` provider, without tools, whose answer must be one JSON
/// object valid against [`city_schema`] (`[output]`, constrained by default). A 135M
/// model asked for JSON rarely writes it unaided: a valid answer at the first try is
/// the server keeping it to the schema.
pub fn structured_agent(name: &str) -> String {
    format!(
        r#"name = "{name}"
system = "Answer with JSON only."
[model]
provider = "real"
name = "{MODEL}"
temperature = 0
max_output_tokens = 96
max_attempts = 1
[output]
schema = '''{}'''
"#,
        city_schema()
    )
}

/// The real binary with the key in [`KEY_ENV`] and nothing of the developer's
/// provider variables.
pub fn agentq(env: &TestEnv, args: &[&str]) -> Output {
    let mut cmd = env.cmd();
    for name in OUTSIDE_VARS {
        cmd.env_remove(name);
    }
    cmd.env(KEY_ENV, key_for(env))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run agentq")
}

/// The key this home's provider gets: the gateway's own for an Anthropic provider.
fn key_for(env: &TestEnv) -> &'static str {
    let config = std::fs::read_to_string(env.home().join("agentq.toml")).unwrap_or_default();
    if config.contains("kind = \"anthropic\"") {
        GATEWAY_KEY
    } else {
        KEY
    }
}

/// `agentq run --agent AGENT TEXT --json`, required to exit `code`.
pub fn run_json(env: &TestEnv, agent: &str, text: &str, code: i32) -> Value {
    let out = agentq(env, &["run", "--agent", agent, text, "--json"]);
    assert_eq!(
        super::code(&out),
        code,
        "agentq run --agent {agent}:\n{}",
        describe(&out)
    );
    serde_json::from_str(&stdout(&out))
        .unwrap_or_else(|e| panic!("run --json printed no JSON ({e}):\n{}", describe(&out)))
}

/// The text of the session's `agent.stream.chunk` events, in order.
pub fn chunks(env: &TestEnv, id: &str) -> Vec<String> {
    env.payloads(id, "agent.stream.chunk")
        .iter()
        .map(|p| p["content"].as_str().unwrap().to_owned())
        .collect()
}

/// The key appears in no file under the home (sessions, logs, definitions).
pub fn assert_key_written_nowhere(env: &TestEnv) {
    for key in [KEY, GATEWAY_KEY] {
        let found = files_containing(env.home(), key.as_bytes());
        assert!(found.is_empty(), "the key was written to {found:?}");
    }
}

/// The three messages the conversation tests send, in order.
pub const THREE_MESSAGES: [&str; 3] =
    ["My name is Ana.", "I live in Lisbon.", "Say goodbye to me."];

/// Queues [`THREE_MESSAGES`] to a new session of `agent`, runs `worker --once`, and
/// requires three completed executions; returns the session and its answers.
pub fn three_messages_answered(env: &TestEnv, agent: &str) -> (String, Vec<String>) {
    let id = env.new_session(agent);
    for text in THREE_MESSAGES {
        env.send(&id, text);
    }
    let out = agentq(env, &["worker", "--once"]);
    assert_eq!(code(&out), 0, "{}", describe(&out));
    let finished = env.finished(&id);
    assert_eq!(finished.len(), 3);
    assert!(
        finished.iter().all(|f| f["status"] == "completed"),
        "{finished:?}"
    );
    env.assert_gapless(&id);
    let answers = env.responses(&id);
    (id, answers)
}
