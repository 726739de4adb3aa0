//! Formats that keep loading: `tests/fixtures/home-v1/`, a home written by agentq at
//! commit d8ee8d2 (see tests/fixtures/README.md), is copied into a temp home, read by
//! every command that reads a session, and carried on by a worker.
//!
//! A failure here means today's agentq cannot read what an earlier one left on disk.
//! The fix is a migration (or a reader that accepts both), never a regenerated fixture.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

use super::*;

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/home-v1");

/// Every directory and file of the fixture with its mode and size, as `find` saw them
/// in the home agentq wrote: git keeps neither empty directories nor modes.
const MANIFEST: &str = include_str!("../fixtures/home-v1.manifest");

// The sessions of the fixture, oldest first.
/// Completed in 3 steps; a task list (todo_write) and a file written to its workspace.
const PLANNED: &str = "01a23568-0204-72e3-b845-fb612122557b";
/// Stopped by `--set limits.max_steps=2` (steps_limit), exit 3.
const STOPPED: &str = "01a23568-029c-7039-a285-6ee0d2d7ad4b";
/// Failed by a scripted HTTP 400 after one step, exit 1; then closed.
const FAILED: &str = "01a23568-0305-7472-b269-6148f510b04b";
/// Cancelled while its first answer streamed, exit 130.
const CANCELLED: &str = "01a23568-0378-7251-8e32-079d1c4b9821";
/// Its worker got SIGTERM in step 3 of 5: the execution is suspended at the checkpoint
/// after step 2, its message still in the inbox. Events preset `debug`.
const SUSPENDED: &str = "01a23568-0588-7048-bb09-49ad0e11a464";
const SUSPENDED_MESSAGE: &str = "01a23568-05a4-7277-a3b3-af1c0acdd3d8";
const SUSPENDED_EXECUTION: &str = "01a23568-05bc-76f2-ac9d-0cee983a6778";
/// One message answered, a second queued with `--key fixture-key` that no worker took.
const PENDING: &str = "01a23568-09a4-74e1-ba46-3a2c8cca7fc4";
const PENDING_MESSAGE: &str = "01a23568-0a0c-77b4-a00d-9483b7d11dae";
/// Its history outgrew `context_window = 1000`: compacted with a summary. Preset `minimal`.
const COMPACTED: &str = "01a23568-0a24-75e8-9ba7-169e5539248e";

const ALL: [&str; 7] = [
    PLANNED, STOPPED, FAILED, CANCELLED, SUSPENDED, PENDING, COMPACTED,
];

/// What `session list` says of each: id, agent, status, messages, pending, tokens, title.
#[rustfmt::skip]
const LISTED: [(&str, &str, &str, u64, u64, u64, &str); 7] = [
    (PLANNED, "planner", "active", 1, 0, 212, "completed with a plan"),
    (STOPPED, "looper", "active", 1, 0, 70, "stopped at the step limit"),
    (FAILED, "broken", "closed", 1, 0, 30, "failed and closed"),
    (CANCELLED, "slow", "active", 1, 0, 0, "cancelled mid-stream"),
    (SUSPENDED, "stepper", "active", 1, 1, 0, "suspended at a checkpoint"),
    (PENDING, "echo", "active", 2, 1, 40, "answered, then one pending"),
    (COMPACTED, "compact", "active", 1, 0, 1726, "compacted"),
];

struct Entry {
    dir: bool,
    mode: u32,
    size: Option<u64>,
    path: &'static str,
}

fn manifest() -> Vec<Entry> {
    MANIFEST
        .lines()
        .map(|line| {
            let fields: Vec<&str> = line.splitn(4, ' ').collect();
            let [kind, mode, size, path] = fields[..] else {
                panic!("manifest line `{line}`: expected `KIND MODE SIZE PATH`");
            };
            Entry {
                dir: kind == "d",
                mode: u32::from_str_radix(mode, 8).expect("octal mode"),
                size: size.parse().ok(),
                path,
            }
        })
        .collect()
}

/// A temp home holding the fixture as agentq left it: the files copied, the empty
/// directories made again, every mode restored from the manifest.
fn v1_home() -> TestEnv {
    let env = TestEnv::empty();
    let entries = manifest();
    for e in &entries {
        let to = env.home().join(e.path);
        if e.dir {
            std::fs::create_dir_all(&to).unwrap();
        } else {
            let from = Path::new(FIXTURE).join(e.path);
            let copied = std::fs::copy(&from, &to)
                .unwrap_or_else(|err| panic!("copying {}: {err}", from.display()));
            // A checkout that changed a byte (line endings) would move every offset
            // state.json keeps into the transcript.
            assert_eq!(Some(copied), e.size, "size of {}", e.path);
        }
    }
    // Directories last: a 0700 directory is still writable by its owner, but its mode
    // is set once nothing more is created in it.
    for e in entries.iter().rev() {
        let mode = std::fs::Permissions::from_mode(e.mode);
        std::fs::set_permissions(env.home().join(e.path), mode).unwrap();
    }
    let listed: BTreeSet<&str> = entries.iter().map(|e| e.path).collect();
    for path in tree(Path::new(FIXTURE)) {
        assert!(
            listed.contains(path.as_str()),
            "{path} is in tests/fixtures/home-v1 but not in its manifest"
        );
    }
    env
}

/// Every path under `root`, relative to it.
fn tree(root: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let relative = path.strip_prefix(root).unwrap().to_string_lossy();
            found.push(relative.into_owned());
            if path.is_dir() {
                stack.push(path);
            }
        }
    }
    found
}

fn fixture_events(id: &str) -> String {
    std::fs::read_to_string(
        Path::new(FIXTURE)
            .join("sessions")
            .join(id)
            .join("events.ndjson"),
    )
    .unwrap()
}

/// The event types of a session's log in order, without the text chunks.
fn types(events: &[Value]) -> Vec<&str> {
    events
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .filter(|t| *t != "agent.stream.chunk")
        .collect()
}

fn parse_lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).expect("an event line"))
        .collect()
}

/// How an execution ended: `[status, stop_reason, exit_code, steps]`.
fn outcome(execution: &Value) -> Value {
    json!([
        execution["status"],
        execution["stop_reason"],
        execution["exit_code"],
        execution["steps"]
    ])
}

/// The roles of a session's transcript, from `session messages --json`.
fn roles(env: &TestEnv, id: &str) -> Vec<String> {
    env.json(&["session", "messages", id, "--json"])
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].as_str().unwrap().to_owned())
        .collect()
}

fn state(env: &TestEnv, id: &str) -> Value {
    let text = std::fs::read_to_string(env.session_dir(id).join("state.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn assert_lines(text: &str, expected: &[&str]) {
    for line in expected {
        assert!(
            text.lines().any(|l| l == *line),
            "no line `{line}` in:\n{text}"
        );
    }
}

// ---------------------------------------------------------------------------------
// Reading

#[test]
fn session_list_reads_every_session_of_the_v1_home() {
    let env = v1_home();
    let listed = env.json(&["session", "list", "--json"]);
    let rows: Vec<Value> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            json!([
                r["id"],
                r["agent"],
                r["status"],
                r["messages"],
                r["pending"],
                r["usage"]["total"],
                r["title"]
            ])
        })
        .collect();
    let want: Vec<Value> = LISTED
        .iter()
        .map(|(id, agent, status, messages, pending, tokens, title)| {
            json!([id, agent, status, messages, pending, tokens, title])
        })
        .collect();
    assert_eq!(rows, want);
    assert_eq!(listed[0]["created_at"], "2026-12-02T06:18:58.436Z");
    assert_eq!(
        listed[5]["updated_at"], "2026-12-02T06:19:00.492Z",
        "the queued message's time, newer than session.json's (send does not touch it)"
    );

    let out = env.run(&["session", "list"]);
    assert_eq!(code(&out), 0, "{}", describe(&out));
    assert_eq!(stderr(&out), "", "no session was skipped");
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1 + LISTED.len(), "{text}");
    assert!(lines[0].starts_with("ID "), "{text}");
    for (line, (id, agent, status, messages, pending, tokens, title)) in
        lines[1..].iter().zip(&LISTED)
    {
        // The columns before the age ("5s ago", which moves with the clock) and the title.
        let cells: Vec<&str> = line.split_whitespace().collect();
        assert!(cells[0].len() >= 8 && id.starts_with(cells[0]), "{line}");
        let counts = [messages, pending, tokens].map(u64::to_string);
        assert_eq!(
            cells[1..6],
            [*agent, *status, &counts[0], &counts[1], &counts[2]],
            "{line}"
        );
        assert!(line.ends_with(title), "{line}");
    }

    let closed = env.json(&["session", "list", "--status", "closed", "--json"]);
    assert_eq!(closed.as_array().unwrap().len(), 1, "{closed}");
    assert_eq!(closed[0]["id"], FAILED);
}

#[test]
fn session_show_reads_each_way_an_execution_ended() {
    let env = v1_home();
    let show = |id: &str| env.json(&["session", "show", id, "--json"]);
    let last = |id: &str| show(id)["last_execution"].clone();

    let planned = show(PLANNED);
    assert_eq!(
        planned["todos"],
        json!([
            {"content": "read the brief", "status": "completed"},
            {"content": "write the notes", "status": "in_progress"},
            {"content": "review the notes", "status": "pending"},
        ])
    );
    assert_eq!(planned["session"]["counters"]["completed"], 1);
    assert_eq!(planned["session"]["events"], "standard");
    let done = &planned["last_execution"];
    assert_eq!(outcome(done), json!(["completed", "completed", 0, 3]));
    assert_eq!(done["response"], "planned: plan the release");
    assert_eq!(
        done["usage"],
        json!({"input": 180, "output": 32, "total": 212})
    );

    let stopped = show(STOPPED);
    assert_eq!(stopped["session"]["config"], json!({"limits.max_steps": 2}));
    assert_eq!(
        stopped["budgets"]["max_steps"], 2,
        "the session's --set applies"
    );
    assert_eq!(stopped["session"]["counters"]["stopped"], 1);
    let done = &stopped["last_execution"];
    assert_eq!(outcome(done), json!(["stopped", "steps_limit", 3, 2]));

    let failed = show(FAILED);
    assert_eq!(failed["session"]["status"], "closed");
    let done = last(FAILED);
    assert_eq!(outcome(&done), json!(["failed", "error", 1, 1]));
    assert_eq!(
        done["error"],
        json!({"message": "model provider error (HTTP 400): the request was refused", "context": "step 2"})
    );
    assert_eq!(failed["failed"][0]["id"], done["id"]);

    let done = last(CANCELLED);
    assert_eq!(
        outcome(&done),
        json!(["cancelled", "user_requested", 130, 0])
    );

    let suspended = show(SUSPENDED);
    assert_eq!(suspended["pending"], 1);
    assert_eq!(suspended["last_execution"], Value::Null);
    assert_eq!(suspended["session"]["events"], "debug");
    let running = &suspended["running"];
    assert_eq!(running["id"], SUSPENDED_EXECUTION);
    assert_eq!(running["message_id"], SUSPENDED_MESSAGE);
    assert_eq!(running["status"], "running");
    assert_eq!(running["suspended"], true);
    assert_eq!(running["attempts"], 1);

    let pending = show(PENDING);
    assert_eq!(pending["pending"], 1);
    assert_eq!(pending["session"]["counters"]["messages"], 1);
    assert_eq!(pending["last_execution"]["response"], "echo: first message");

    let compacted = show(COMPACTED);
    assert_eq!(compacted["session"]["events"], "minimal");
    assert_eq!(
        compacted["last_execution"]["response"],
        "answer after compaction: summarise big.txt"
    );
    assert_eq!(compacted["session"]["usage"]["estimated"], true);

    // The plain view: the definitions are the ones the sessions were made with.
    for id in ALL {
        let text = env.ok(&["session", "show", id]);
        assert!(text.starts_with(&format!("session   {id}\n")), "{text}");
        assert!(
            !text.contains("definition changed") && !text.contains("no longer exists"),
            "{text}"
        );
    }
    assert_lines(
        &env.ok(&["session", "show", PLANNED]),
        &[
            "status    active",
            "messages  1 (1 settled, 0 pending)",
            "runs      1 execution: 1 completed, 0 failed, 0 stopped, 0 cancelled",
            "usage     212 tokens (180 input, 32 output)",
            "todo      [x] read the brief",
            "todo      [>] write the notes",
            "todo      [ ] review the notes",
        ],
    );
    assert_lines(
        &env.ok(&["session", "show", STOPPED]),
        &["set       limits.max_steps = 2", "budgets   2 steps"],
    );
    assert_lines(
        &env.ok(&["session", "show", FAILED]),
        &[
            "status    closed",
            "error     model provider error (HTTP 400): the request was refused",
        ],
    );
    let text = env.ok(&["session", "show", SUSPENDED]);
    assert_lines(&text, &["messages  1 (0 settled, 1 pending)"]);
    assert!(
        text.lines().any(|l| l.starts_with(&format!(
            "suspended {SUSPENDED_EXECUTION} (attempt 1, since "
        )) && l.ends_with("the next worker resumes it")),
        "{text}"
    );
    assert_lines(
        &env.ok(&["session", "show", PENDING]),
        &["messages  2 (1 settled, 1 pending)"],
    );

    // The closed session stays closed.
    env.fails(&["send", FAILED, "once more"], 2);
}

#[test]
fn session_messages_give_back_each_transcript() {
    let env = v1_home();
    let messages = env.json(&["session", "messages", PLANNED, "--json"]);
    assert_eq!(
        roles(&env, PLANNED),
        [
            "user",
            "assistant",
            "tool",
            "assistant",
            "tool",
            "assistant"
        ]
    );
    assert_eq!(messages[0]["content"], "plan the release");
    assert_eq!(messages[1]["tool_calls"][0]["name"], "todo_write");
    assert_eq!(
        messages[1]["tool_calls"][0]["arguments"]["todos"][1],
        json!({"content": "write the notes", "status": "in_progress"})
    );
    assert_eq!(
        messages[2]["content"],
        "3 tasks: 1 completed, 1 in progress, 1 pending"
    );
    assert_eq!(messages[4]["content"], "wrote 25 bytes to notes.md");
    assert_eq!(messages[5]["content"], "planned: plan the release");
    assert_eq!(
        std::fs::read_to_string(env.session_dir(PLANNED).join("workspace/notes.md")).unwrap(),
        "# Notes\nplan the release\n"
    );

    assert_eq!(
        env.ok(&["session", "messages", STOPPED]),
        "user: look around\n\
         assistant: Looking again.\n  → list_dir path: '.'\n  ✓ list_dir: (empty directory)\n\
         assistant: Looking again.\n  → list_dir path: '.'\n  ✓ list_dir: (empty directory)\n"
    );
    assert_eq!(
        env.ok(&["session", "messages", CANCELLED]),
        "user: take your time\n",
        "the cancelled step left nothing in the transcript"
    );
    let text = env.ok(&["session", "messages", SUSPENDED]);
    assert_lines(
        &text,
        &[
            "user: four steps",
            "assistant: step one of four",
            "assistant: step two of four",
        ],
    );
    assert!(!text.contains("three"), "step 3 never settled:\n{text}");
    assert!(
        text.ends_with("1 message queued (they enter the transcript when a worker takes them: `agentq worker`)\n"),
        "{text}"
    );
    let text = env.ok(&["session", "messages", COMPACTED]);
    assert_lines(
        &text,
        &[
            "user: summarise big.txt",
            "  ✓ list_dir: big.txt",
            "assistant: answer after compaction: summarise big.txt",
        ],
    );
    let compacted = env.json(&["session", "messages", COMPACTED, "--json"]);
    assert_eq!(
        compacted[2]["content"].as_str().unwrap().len(),
        4000,
        "the transcript keeps the compacted tool result whole"
    );
}

#[test]
fn watch_from_start_replays_every_log_as_it_was_written() {
    let env = v1_home();
    let json_watch = |id: &str| {
        let out = env.run(&["watch", id, "--from-start", "--json", "--exit-on-idle"]);
        assert_eq!(stderr(&out), "", "no line of {id} was skipped");
        (code(&out), stdout(&out))
    };
    for (id, exit) in [
        (PLANNED, 0),
        (STOPPED, 3),
        (FAILED, 1),
        (CANCELLED, 130),
        (COMPACTED, 0),
    ] {
        let (code, log) = json_watch(id);
        assert_eq!(code, exit, "exit code of watch {id}");
        assert_eq!(
            log,
            fixture_events(id),
            "watch --json of {id} gives the log back"
        );
    }
    // The others are not idle; the whole log is shown before watch gives up.
    for id in [SUSPENDED, PENDING] {
        let out = env.run(&[
            "watch",
            id,
            "--from-start",
            "--json",
            "--exit-on-idle",
            "--timeout",
            "200ms",
        ]);
        assert_eq!(code(&out), 75, "watch {id}:\n{}", describe(&out));
        assert_eq!(stdout(&out), fixture_events(id));
    }

    assert_eq!(
        types(&parse_lines(&json_watch(PLANNED).1)),
        [
            "session.created",
            "message.queued",
            "execution.started",
            "agent.status",
            "agent.step.started",
            "agent.tool.started",
            "agent.tool.completed",
            "agent.step.completed",
            "agent.step.started",
            "agent.tool.started",
            "agent.tool.completed",
            "agent.step.completed",
            "agent.step.started",
            "agent.step.completed",
            "agent.message.completed",
            "agent.status",
            "execution.finished",
        ]
    );
    assert_eq!(
        types(&parse_lines(&json_watch(CANCELLED).1)),
        [
            "session.created",
            "message.queued",
            "execution.started",
            "agent.status",
            "agent.step.started",
            "cancel.requested",
            "agent.status",
            "execution.finished",
        ]
    );

    let plain = |id: &str| {
        let out = env.run(&["watch", id, "--from-start", "--plain", "--exit-on-idle"]);
        stdout(&out)
    };
    let text = plain(PLANNED);
    assert_lines(
        &text,
        &[
            "session 01a23568-0204 created: agent planner, \"completed with a plan\"",
            "queued message #1: plan the release",
            "· step 1",
            "Planning the work.",
            "→ write_file path: 'notes.md', content: '# Notes plan the release '",
            "planned: plan the release",
        ],
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("■ completed · 3 steps · 212 tokens · ")
                && l.ends_with(" · exit 0")),
        "{text}"
    );
    let text = plain(STOPPED);
    assert!(
        text.contains("■ stopped (steps_limit) · 2 steps · 70 tokens · "),
        "{text}"
    );
    assert_lines(
        &plain(FAILED),
        &[
            "  error: model provider error (HTTP 400): the request was refused",
            "session closed (was active)",
        ],
    );
    let text = plain(CANCELLED);
    assert_lines(&text, &["cancel requested"]);
    assert!(
        text.contains("■ cancelled (user_requested) · 0 steps"),
        "{text}"
    );
    assert_lines(
        &plain(COMPACTED),
        &[
            "· context compacted: 3 messages summarised (1212 → 216 tokens)",
            "answer after compaction: summarise big.txt",
        ],
    );
}

// ---------------------------------------------------------------------------------
// Carrying on

/// `watch --json` of a session in the background, its output collected line by line.
struct Watching {
    process: Background,
    output: Arc<Mutex<String>>,
    reader: std::thread::JoinHandle<()>,
}

impl Watching {
    fn start(env: &TestEnv, args: &[&str]) -> Watching {
        let mut process = env.spawn(args);
        let pipe = process.child.stdout.take().unwrap();
        let output = Arc::new(Mutex::new(String::new()));
        let collected = Arc::clone(&output);
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let line = line.unwrap();
                let mut text = collected.lock().unwrap();
                text.push_str(&line);
                text.push('\n');
            }
        });
        Watching {
            process,
            output,
            reader,
        }
    }

    fn text(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    fn finish(self) -> (i32, String) {
        let out = self.process.wait(LONG);
        self.reader.join().unwrap();
        let text = self.output.lock().unwrap().clone();
        (code(&out), text)
    }
}

#[test]
fn a_worker_carries_on_where_the_v1_home_left_off() {
    let env = v1_home();
    // A watcher follows the suspended session from its first line, live.
    let watching = Watching::start(
        &env,
        &[
            "watch",
            SUSPENDED,
            "--from-start",
            "--json",
            "--exit-on-idle",
        ],
    );
    let before = fixture_events(SUSPENDED);
    wait_until("the watcher at the end of the log", LONG, || {
        watching.text() == before
    });
    // The key of the queued message still names it: sending again queues nothing.
    let again = env.ok(&["send", PENDING, "second message", "--key", "fixture-key"]);
    assert_eq!(again.trim(), PENDING_MESSAGE);
    assert_eq!(env.pending(PENDING), 1);
    env.send(COMPACTED, "one more question");

    env.worker_once_exiting(0);

    // The suspended execution resumed after step 2, as the same execution and attempt.
    let events = env.events(SUSPENDED);
    let resumed: Vec<Value> = events[parse_lines(&before).len()..].to_vec();
    assert_eq!(
        types(&resumed),
        [
            "execution.started",
            "agent.step.started",
            "agent.tool.started",
            "agent.tool.completed",
            "agent.step.completed",
            "agent.continuation",
            "agent.step.started",
            "agent.tool.started",
            "agent.tool.completed",
            "agent.step.completed",
            "agent.continuation",
            "agent.step.started",
            "agent.step.completed",
            "agent.continuation",
            "agent.message.completed",
            "agent.status",
            "execution.finished",
        ]
    );
    assert!(
        resumed
            .iter()
            .all(|e| e["execution_id"] == SUSPENDED_EXECUTION),
        "{resumed:?}"
    );
    let start = &resumed[0]["payload"];
    assert_eq!(start["message_id"], SUSPENDED_MESSAGE);
    assert_eq!(start["resumed"], true);
    assert_eq!(start["attempt"], 1, "a clean stop is not another attempt");
    let steps: Vec<u64> = env
        .payloads(SUSPENDED, "agent.step.completed")
        .iter()
        .map(|p| p["step_number"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, [1, 2, 3, 4, 5], "no settled step ran again");
    assert_eq!(env.responses(SUSPENDED), ["done: four steps"]);
    let done = env.finished(SUSPENDED);
    assert_eq!(done.len(), 1);
    assert_eq!(outcome(&done[0]), json!(["completed", "completed", 0, 5]));
    assert_eq!(
        done[0]["usage"]["execution"],
        json!({"input": 200, "output": 21, "total": 221}),
        "the usage of the steps before the stop is counted"
    );
    env.assert_gapless(SUSPENDED);
    let show = env.json(&["session", "show", SUSPENDED, "--json"]);
    assert_eq!(show["pending"], 0);
    assert_eq!(show["running"], Value::Null);
    assert_eq!(show["last_execution"]["id"], SUSPENDED_EXECUTION);
    assert_eq!(show["last_execution"]["status"], "completed");
    assert_eq!(show["session"]["counters"]["completed"], 1);
    let text = env.ok(&["session", "messages", SUSPENDED]);
    assert!(text.ends_with("assistant: done: four steps\n"), "{text}");
    assert_eq!(env.tool_messages(SUSPENDED).len(), 4);

    // The watcher saw it through and exited with its code.
    let (exit, seen) = watching.finish();
    assert_eq!(exit, 0, "{seen}");
    assert_eq!(parse_lines(&seen), env.events(SUSPENDED));

    // The queued message was answered in the same conversation: the script's cursor
    // (model_calls in state.json) went on from the first message's two calls.
    assert_eq!(
        env.responses(PENDING),
        ["echo: first message", "echo: second message"]
    );
    let done = env.finished(PENDING);
    assert_eq!(done[1]["message_id"], PENDING_MESSAGE);
    assert_eq!(done[1]["steps"], 1);
    assert_eq!(done[1]["usage"]["session"]["total"], 65);
    env.assert_gapless(PENDING);
    assert_eq!(env.pending(PENDING), 0);
    let text = env.ok(&["session", "messages", PENDING]);
    assert!(
        text.ends_with("user: second message\nassistant: echo: second message\n"),
        "{text}"
    );

    // The next message of the compacted session sees the summary in place of the
    // compacted turns: 1 + the 4 messages after them, and no second compaction.
    let steps = env.payloads(COMPACTED, "agent.step.started");
    assert_eq!(steps.last().unwrap()["message_count"], 5, "{steps:?}");
    assert_eq!(env.payloads(COMPACTED, "context.compacted").len(), 1);
    assert_eq!(
        env.responses(COMPACTED).last().unwrap(),
        "answer after compaction: one more question"
    );
    assert_eq!(
        state(&env, COMPACTED)["compaction"],
        json!({"through": 3, "summary": "SUMMARY: big.txt holds 40 lines of x"}),
        "the summary is kept"
    );

    // The settled sessions were left as they were.
    for id in [PLANNED, STOPPED, FAILED, CANCELLED] {
        let log = std::fs::read_to_string(env.session_dir(id).join("events.ndjson")).unwrap();
        assert_eq!(log, fixture_events(id), "events of {id}");
    }
    assert_eq!(
        state(&env, PLANNED)["todos"][2],
        json!({"content": "review the notes", "status": "pending"})
    );
}

#[test]
fn the_stopped_task_of_the_v1_home_carries_on_with_send_continue() {
    let env = v1_home();
    env.ok(&["send", STOPPED, "--continue"]);
    env.worker_once_exiting(3);
    let done = env.finished(STOPPED);
    assert_eq!(done.len(), 2);
    assert_eq!(done[1]["status"], "stopped");
    assert_eq!(done[1]["stop_reason"], "steps_limit");
    assert_eq!(
        done[1]["steps"], 2,
        "each execution gets the session's 2 steps"
    );
    assert_eq!(done[1]["usage"]["session"]["total"], 140);
    env.assert_gapless(STOPPED);
    let show = env.json(&["session", "show", STOPPED, "--json"]);
    assert_eq!(show["session"]["counters"]["stopped"], 2);
    // The same task: no new user message, two more steps of calls and results.
    assert_eq!(
        roles(&env, STOPPED),
        [
            "user",
            "assistant",
            "tool",
            "assistant",
            "tool",
            "assistant",
            "tool",
            "assistant",
            "tool"
        ]
    );
}
