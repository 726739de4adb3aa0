//! `watch` as people and scripts see it (issue 6), and the CLI around it: snapshots of
//! the plain and terminal renderings of one execution that has everything (a retried
//! model call, streamed text, tool calls, a failed tool, a stop at the step limit);
//! escape sequences from the model neutralised everywhere but `--json`; following a
//! session before it has work, after it is removed, into a closed pipe and until
//! Ctrl-C; `--since` on a large log; the rendering in a real pseudo-terminal; colours;
//! `status`, `schema events`, completions, `--help` examples and `session list`.
//!
//! Pseudo-terminal tests run agentq under util-linux `script` and are skipped, with the
//! reason printed, where it is missing. Waiting on signal handlers reads
//! `/proc/PID/status` (Linux).

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use agentq::bench::parse_line;
use agentq::domain::event::Event;
use agentq::render::{Renderer, TerminalRenderer};
use assert_cmd::cargo::CommandCargoExt;
use serde_json::{Map, Value};

use super::fake_server::*;
use super::*;

// ---------------------------------------------------------------------------------
// Agents and fixtures

/// Model output full of terminal control: a screen clear, an OSC 0 title, an OSC 8
/// hyperlink, a bell, a carriage return and a C1 CSI; a tool path with an OSC title in
/// it (the failed tool's error repeats it); and an answer with colour codes.
const HOSTILE_AGENT: &str = r#"
name = "hostile"
[model]
provider = "scripted"
[[model.script]]
text = "Look\u001b[2J clear \u001b]0;pwned\u0007 title \u001b]8;;https://evil.example/\u001b\\link\u001b]8;;\u001b\\ bell\u0007 cr\rX c1\u009b31m done."
tool_calls = [{ name = "read_file", arguments = { path = "\u001b]0;tool-title\u0007.md" } }]
[[model.script]]
text = "Final \u001b[31mred\u001b[0m answer\u0007."
[tools]
builtin = ["read_file"]
"#;

/// The raw sequences of [`HOSTILE_AGENT`] that must never reach a terminal.
const RAW_SEQUENCES: &[&str] = &[
    "\x1b[2J",
    "\x1b]0;",
    "\x1b]8;;",
    "\x1b[31mred",
    "\x07",
    "\u{9b}",
    "cr\rX",
];

/// Streams sixty words 50 ms apart (about 3 s): long enough to look at it running.
const SLOW_AGENT: &str = r#"
name = "slow"
[model]
provider = "scripted"
[[model.script]]
text = "a b c d e f g h i j k l m n o p q r s t u v w x y z a b c d e f g h i j k l m n o p q r s t u v w x y z a b c d e f g h"
delay_ms = 50
"#;

/// Streams twenty words 50 ms apart: about a second.
const SECOND_AGENT: &str = r#"
name = "second"
[model]
provider = "scripted"
[[model.script]]
text = "a b c d e f g h i j k l m n o p q r s t"
delay_ms = 50
"#;

/// Every model call fails for good.
const BROKEN_AGENT: &str = r#"
name = "broken"
[model]
provider = "scripted"
[[model.script]]
error = { status = 400, message = "injected bad request" }
"#;

/// The columns of the pseudo-terminals and of the in-process terminal renderings.
const COLUMNS: usize = 60;

/// A session whose one execution has it all: the first model call fails with 503 and is
/// retried, then three steps stream text and call tools (the second one fails), and the
/// step limit (3) stops it: exit 3.
struct Scenario {
    env: TestEnv,
    id: String,
}

fn scenario() -> Scenario {
    let env = TestEnv::new();
    let server = FakeServer::start(vec![
        Reply::error(503, "overloaded, try again").header("Retry-After", "0"),
        OpenAiSse::new()
            .role()
            .texts(&[
                "Let me ",
                "look around the workspace first, ",
                "to see which files exist before I read any of them.",
            ])
            .tool_call(0, "call_a", "list_dir", r#"{"path": "."}"#)
            .finish("tool_calls")
            .usage(10, 5)
            .done()
            .reply(Duration::ZERO),
        OpenAiSse::new()
            .role()
            .texts(&["Now the ", "notes."])
            .tool_call(0, "call_b", "read_file", r#"{"path": "notes.md"}"#)
            .finish("tool_calls")
            .usage(20, 5)
            .done()
            .reply(Duration::ZERO),
        OpenAiSse::new()
            .role()
            .texts(&["No notes; ", "looking again."])
            .tool_call(0, "call_c", "list_dir", r#"{"path": "."}"#)
            .finish("tool_calls")
            .usage(30, 5)
            .done()
            .reply(Duration::ZERO),
    ]);
    env.write_agent(
        "gpt",
        &format!(
            "name = \"gpt\"\n[model]\nprovider = \"openai\"\nname = \"gpt-test\"\nbase_url = \"{}\"\n[limits]\nmax_steps = 3\n[tools]\nbuiltin = [\"read_file\", \"list_dir\"]\n",
            server.openai_url()
        ),
    );
    let id = env
        .ok(&[
            "session",
            "new",
            "--agent",
            "gpt",
            "--title",
            "the scenario",
        ])
        .trim()
        .to_owned();
    env.send(&id, "what is in the notes?");
    let mut worker = env.cmd();
    for proxy in [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
    ] {
        worker.env_remove(proxy);
    }
    let out = worker
        .env("OPENAI_API_KEY", "sk-test")
        .args(["worker", "--once"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    // The execution ends at its step limit: the worker says so (exit 3).
    assert_eq!(code(&out), 3, "{}", describe(&out));
    assert_eq!(server.request_count(), 4, "one retry, three steps");
    let kinds: Vec<String> = env
        .events(&id)
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_owned())
        .collect();
    assert!(kinds.iter().any(|k| k == "provider.retry"), "{kinds:?}");
    Scenario { env, id }
}

/// Replaces what changes from run to run (ids, timestamps, durations, the worker's pid
/// and host, the fake server's port) with placeholders. insta's own `filters` need a
/// crate feature this project does not enable; these are the same regex filters.
fn stable(text: &str) -> String {
    let filters = [
        (
            r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
            "[uuid]",
        ),
        (r"\b[0-9a-f]{8}-[0-9a-f]{4}\b", "[id]"),
        (r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", "[timestamp]"),
        (r"worker \d+ on [^ )]+", "worker [pid] on [host]"),
        (r"127\.0\.0\.1:\d+", "127.0.0.1:[port]"),
        (r"\b\d+(\.\d)?(ms|s)\b|\b\d+m\d\ds\b", "[duration]"),
    ];
    filters
        .iter()
        .fold(text.to_owned(), |text, (pattern, replacement)| {
            regex::Regex::new(pattern)
                .unwrap()
                .replace_all(&text, *replacement)
                .into_owned()
        })
}

/// The typed events of a session's log, as `watch` reads them.
fn typed_events(env: &TestEnv, id: &str) -> Vec<Event> {
    env.raw_events(id)
        .iter()
        .filter_map(|line| {
            parse_line(line.as_bytes())
                .expect("every line is an event")
                .into_event()
                .expect("a payload of its type")
        })
        .collect()
}

/// The terminal rendering of a session's log, in-process: no spinners, [`COLUMNS`] wide.
fn render_terminal(env: &TestEnv, id: &str, color: bool) -> String {
    let mut out = Vec::new();
    {
        let mut renderer = TerminalRenderer::new(&mut out, color, false).with_width(COLUMNS);
        let meta = env.json(&["session", "show", id, "--json"]);
        renderer
            .header(
                id,
                meta["session"]["agent"].as_str().unwrap(),
                meta["session"]["title"].as_str(),
            )
            .unwrap();
        for event in typed_events(env, id) {
            renderer.render(&event).unwrap();
        }
        renderer.live().unwrap();
        renderer.finish().unwrap();
    }
    String::from_utf8(out).unwrap()
}

/// Control characters other than newline and tab, which nothing but `--json` may print.
fn controls(text: &str) -> Vec<char> {
    text.chars()
        .filter(|c| c.is_control() && *c != '\n' && *c != '\t')
        .collect()
}

fn has_sgr(text: &str) -> bool {
    regex::Regex::new(r"\x1b\[[0-9;]*m").unwrap().is_match(text)
}

/// A hostile session after one execution (exit 0).
fn hostile_session(env: &TestEnv) -> String {
    env.write_agent("hostile", HOSTILE_AGENT);
    let id = env.new_session("hostile");
    env.send(&id, "hi");
    env.worker_once();
    id
}

// ---------------------------------------------------------------------------------
// Background processes

/// A background agentq whose standard output is collected as it arrives.
struct Streaming {
    process: Background,
    output: Arc<Mutex<Vec<u8>>>,
    reader: Option<JoinHandle<()>>,
}

impl Streaming {
    fn start(env: &TestEnv, args: &[&str]) -> Streaming {
        let mut process = env.spawn(args);
        let mut stdout = process.child.stdout.take().unwrap();
        let output = Arc::new(Mutex::new(Vec::new()));
        let reader = {
            let output = output.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = stdout.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    output
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .extend_from_slice(&buf[..n]);
                }
            })
        };
        Streaming {
            process,
            output,
            reader: Some(reader),
        }
    }

    fn text(&self) -> String {
        let bytes = self.output.lock().unwrap_or_else(PoisonError::into_inner);
        String::from_utf8_lossy(&bytes).into_owned()
    }

    fn wait_for(&self, what: &str) {
        wait_until(&format!("{what:?} on watch's stdout"), LONG, || {
            self.text().contains(what)
        });
    }

    fn running(&mut self) -> bool {
        self.process.child.try_wait().unwrap().is_none()
    }

    fn pid(&self) -> u32 {
        self.process.child.id()
    }

    /// Waits for the exit; returns the exit code, all of stdout and stderr.
    fn finish(mut self, timeout: Duration) -> (i32, String, String) {
        let process = std::mem::replace(&mut self.process, Background { child: dummy() });
        let out = process.wait(timeout);
        if let Some(reader) = self.reader.take() {
            reader.join().unwrap();
        }
        (code(&out), self.text(), stderr(&out))
    }
}

fn dummy() -> std::process::Child {
    Command::new("true").spawn().unwrap()
}

/// Whether process `pid` catches `signal` (from `SigCgt` in `/proc/PID/status`); `None`
/// where there is no `/proc`.
fn catches(pid: u32, signal: u32) -> Option<bool> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let mask = status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())?;
    Some(mask & (1 << (signal - 1)) != 0)
}

// ---------------------------------------------------------------------------------
// Pseudo-terminals

/// What agentq wrote to a pseudo-terminal, with its exit code.
pub(crate) struct Pty {
    pub(crate) code: i32,
    /// Everything, line ends normalised to `\n`.
    pub(crate) raw: String,
}

impl Pty {
    /// What the terminal shows at the end: per line, the text after the last carriage
    /// return (a spinner is drawn, then cleared with `\r`), without CSI sequences.
    fn screen(&self) -> Vec<String> {
        let csi = regex::Regex::new(r"\x1b\[[0-9;?]*[A-Za-z]").unwrap();
        self.raw
            .split('\n')
            .map(|line| {
                let visible = line.rsplit('\r').next().unwrap_or("");
                csi.replace_all(visible, "").into_owned()
            })
            .collect()
    }
}

pub(crate) fn script_available() -> bool {
    let found = Command::new("script")
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        eprintln!("skipped: util-linux `script` is not installed, so no pseudo-terminal");
    }
    found
}

fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// Runs `agentq --home HOME ARGS` in a pseudo-terminal [`COLUMNS`] wide (util-linux
/// `script`), with `TERM=xterm`, no `NO_COLOR` unless `vars` sets it, and `vars`.
pub(crate) fn in_pty(env: &TestEnv, args: &[&str], vars: &[(&str, &str)]) -> Pty {
    let agentq = Command::cargo_bin("agentq").unwrap();
    let mut line = format!(
        "stty cols {COLUMNS} rows 40 && exec {} --home {}",
        quote(&agentq.get_program().to_string_lossy()),
        quote(&env.home().to_string_lossy())
    );
    for arg in args {
        line.push(' ');
        line.push_str(&quote(arg));
    }
    let child = Command::new("script")
        .args(["-qfec", &line, "/dev/null"])
        .env_remove("NO_COLOR")
        .env_remove("AGENTQ_HOME")
        .envs(env.store_url().map(|url| ("AGENTQ_STORE", url)))
        .env_remove("CLICOLOR")
        .env_remove("CLICOLOR_FORCE")
        .env("TERM", "xterm")
        .env("SHELL", "/bin/sh")
        .envs(vars.iter().copied())
        .current_dir(env.home())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn script");
    let out = Background { child }.wait(LONG);
    Pty {
        code: code(&out),
        raw: stdout(&out).replace("\r\n", "\n"),
    }
}

/// A finished `demo` session (its answer is long enough to wrap).
fn demo_session(env: &TestEnv) -> String {
    let id = env.new_session("demo");
    env.send(&id, "hi");
    env.worker_once();
    id
}

/// The demo agent's answer to "hi".
fn demo_answer(env: &TestEnv, id: &str) -> String {
    env.events_of(id, "agent.message.completed")[0]["payload"]["response"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Checks that the screen shows `answer` word-wrapped to [`COLUMNS`] over several
/// indented lines.
fn assert_wrapped(screen: &[String], answer: &str) {
    let first_word = answer.split_whitespace().next().unwrap();
    let start = screen
        .iter()
        .position(|l| l.starts_with(&format!("  {first_word}")))
        .unwrap_or_else(|| panic!("the answer on the screen:\n{}", screen.join("\n")));
    let words: Vec<&str> = answer.split_whitespace().collect();
    let mut lines: Vec<String> = Vec::new();
    let mut count = 0;
    for line in &screen[start..] {
        if count >= words.len() {
            break;
        }
        assert!(line.starts_with("  "), "indented: {line:?}");
        count += line.split_whitespace().count();
        lines.push(line.clone());
    }
    assert!(lines.len() >= 2, "wrapped over several lines: {lines:#?}");
    for line in &lines {
        assert!(
            line.chars().count() <= COLUMNS,
            "{line:?} is wider than {COLUMNS}"
        );
    }
    let joined: Vec<&str> = lines.iter().flat_map(|l| l.split_whitespace()).collect();
    assert_eq!(joined, words, "every word, in order, none lost");
}

// ---------------------------------------------------------------------------------
// Snapshots of the renderings

#[test]
fn plain_rendering_of_an_execution_with_a_retry_a_failed_tool_and_a_limit_stop() {
    let s = scenario();
    let out = s
        .env
        .run(&["watch", &s.id, "--from-start", "--plain", "--exit-on-idle"]);
    assert_eq!(code(&out), 3, "the step limit: {}", describe(&out));
    let text = stdout(&out);
    assert!(controls(&text).is_empty(), "{text:?}");
    insta::assert_snapshot!("plain", stable(&text));
}

#[test]
fn terminal_rendering_of_the_same_execution_without_colours() {
    let s = scenario();
    let text = render_terminal(&s.env, &s.id, false);
    assert!(controls(&text).is_empty(), "{text:?}");
    let screen: Vec<String> = text.lines().map(str::to_owned).collect();
    assert_wrapped(
        &screen,
        "Let me look around the workspace first, to see which files exist before I read any of them.",
    );
    insta::assert_snapshot!("terminal", stable(&text));
}

#[test]
fn terminal_rendering_of_the_same_execution_with_colours() {
    let s = scenario();
    // The test's stdout is no terminal: the colours come from the renderer's `color`
    // alone, not from what `console` would detect.
    let text = render_terminal(&s.env, &s.id, true);
    assert!(has_sgr(&text), "{text:?}");
    // ESC is shown as `\e`, so the snapshot is readable text.
    let visible = text.replace('\x1b', r"\e");
    insta::assert_snapshot!("terminal_colour", stable(&visible));
}

// ---------------------------------------------------------------------------------
// Escape sequences from the model

#[test]
fn escape_sequences_from_the_model_never_reach_plain_output() {
    let env = TestEnv::new();
    let id = hostile_session(&env);
    let text = env.ok(&["watch", &id, "--from-start", "--plain", "--exit-on-idle"]);
    assert!(controls(&text).is_empty(), "{text:?}");
    // The text is there, its controls shown as visible stand-ins.
    assert!(text.contains("Look␛[2J clear ␛]0;pwned␇ title"), "{text}");
    assert!(text.contains("cr␍X c1\u{fffd}31m"), "{text}");
    assert!(text.contains("Final ␛[31mred␛[0m answer␇."), "{text}");
    assert!(text.contains("✗ read_file"), "{text}");
    assert!(text.contains("␛]0;tool-title␇.md"), "{text}");
}

#[test]
fn escape_sequences_from_the_model_never_reach_the_output_of_run() {
    let env = TestEnv::new();
    env.write_agent("hostile", HOSTILE_AGENT);
    let out = env.run(&["run", "--agent", "hostile", "hi"]);
    assert_eq!(code(&out), 0, "{}", describe(&out));
    // Not a terminal: the answer alone on stdout, the progress on stderr.
    assert_eq!(stdout(&out), "Final ␛[31mred␛[0m answer␇.\n");
    let progress = stderr(&out);
    assert!(controls(&progress).is_empty(), "{progress:?}");
    assert!(progress.contains("Look␛[2J clear"), "{progress}");
}

#[test]
fn json_prints_the_log_lines_untouched() {
    let env = TestEnv::new();
    let id = hostile_session(&env);
    let out = env.ok(&["watch", &id, "--from-start", "--json", "--exit-on-idle"]);
    let log: String = env
        .raw_events(&id)
        .iter()
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(out, log, "byte for byte");
    // JSON escapes the C0 controls itself: the line holds no raw ESC or BEL.
    assert!(out.contains(r#""content":"Look\u001b[2J ""#), "{out}");
    assert!(
        out.contains(r#""content":"\u001b]0;pwned\u0007 ""#),
        "{out}"
    );
    assert!(!out.contains('\x1b') && !out.contains('\x07'));
}

#[test]
fn escape_sequences_from_the_model_never_reach_a_terminal() {
    if !script_available() {
        return;
    }
    let env = TestEnv::new();
    let id = hostile_session(&env);
    for (args, vars) in [
        (vec!["watch", &id, "--from-start", "--exit-on-idle"], vec![]),
        (
            vec!["watch", &id, "--from-start", "--exit-on-idle"],
            vec![("NO_COLOR", "1")],
        ),
        (vec!["run", "--agent", "hostile", "again"], vec![]),
    ] {
        let pty = in_pty(&env, &args, &vars);
        assert_eq!(pty.code, 0, "{args:?}: {:?}", pty.raw);
        for raw in RAW_SEQUENCES {
            assert!(
                !pty.raw.contains(raw),
                "{args:?} {vars:?} let {raw:?} through: {:?}",
                pty.raw
            );
        }
        let screen = pty.screen().join("\n");
        assert!(screen.contains("␛[2J clear ␛]0;pwned␇"), "{screen}");
        assert!(screen.contains("Final ␛[31mred␛[0m"), "{screen}");
    }
}

// ---------------------------------------------------------------------------------
// Following

#[test]
fn watch_started_before_the_session_has_work_picks_it_up() {
    let env = TestEnv::new();
    let id = env.new_session("echo");
    let mut watch = Streaming::start(&env, &["watch", &id, "--plain"]);
    // With no execution yet, the default start is the beginning.
    watch.wait_for("created: agent echo");
    env.send(&id, "anyone there?");
    watch.wait_for("queued message #1: anyone there?");
    env.worker_once();
    watch.wait_for("echo: anyone there?");
    watch.wait_for("■ completed");
    let text = watch.text();
    assert!(text.contains("✓ list_dir"), "{text}");
    // Without --exit-on-idle it follows on, until killed (when `watch` drops).
    assert!(watch.running(), "{text}");
}

#[test]
fn exit_on_idle_waits_for_pending_work_and_returns_its_exit_code() {
    let env = TestEnv::new();
    env.write_agent("broken", BROKEN_AGENT);
    let id = env.new_session("broken");
    env.send(&id, "please");
    // `send && watch --exit-on-idle`, as in CI: the message waits, so watch does too.
    let mut watch = Streaming::start(&env, &["watch", &id, "--plain", "--exit-on-idle"]);
    watch.wait_for("queued message #1: please");
    assert!(watch.running(), "{}", watch.text());
    env.fails(&["worker", "--once"], 1);
    let (code, out, err) = watch.finish(LONG);
    assert_eq!(code, 1, "the failed execution's exit code: {out}{err}");
    assert!(out.contains("■ failed (error)"), "{out}");
    assert!(out.contains("error: "), "{out}");
}

/// The state letter and the CPU time used so far of process `pid`, from
/// `/proc/PID/stat`; `None` where there is no `/proc`. A zombie keeps its CPU time.
fn proc_stat(pid: u32) -> Option<(char, Duration)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command name in parentheses: state, ppid, … utime (12th), stime (13th).
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let per_second = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).ok()?;
    Some((
        state,
        Duration::from_millis(ticks * 1000 / per_second.max(1)),
    ))
}

#[test]
fn exit_on_idle_sleeps_while_it_waits() {
    let env = TestEnv::new();
    env.write_agent("second", SECOND_AGENT);
    let id = env.new_session("second");
    env.send(&id, "take a second");
    let started = std::time::Instant::now();
    let watch = Streaming::start(&env, &["watch", &id, "--plain", "--exit-on-idle"]);
    let pid = watch.pid();
    if proc_stat(pid).is_none() {
        eprintln!("skipped: no /proc to read watch's CPU time");
        return;
    }
    watch.wait_for("queued message #1: take a second");
    // About a second of streaming, which watch follows live, then idleness.
    env.worker_once();
    let mut cpu = Duration::ZERO;
    wait_until("watch to exit", LONG, || match proc_stat(pid) {
        Some(('Z', used)) => {
            cpu = used;
            true
        }
        _ => false,
    });
    let wall = started.elapsed();
    let (code, out, _) = watch.finish(LONG);
    assert_eq!(code, 0, "{out}");
    assert!(
        cpu < wall / 4,
        "watch used {cpu:?} of CPU in {wall:?} of waiting and following"
    );
}

#[test]
fn watch_of_a_removed_session_exits_2_with_one_line() {
    let env = TestEnv::new();
    let id = env.new_session("echo");
    env.send(&id, "hello");
    env.worker_once();
    let watch = Streaming::start(&env, &["watch", &id, "--plain"]);
    watch.wait_for("■ completed");
    env.ok(&["session", "rm", &id]);
    let (code, _, err) = watch.finish(LONG);
    assert_eq!(code, 2, "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err:?}");
    assert!(err.contains(&id) && err.contains("removed"), "{err}");
}

#[test]
fn ctrl_c_stops_a_following_watch_with_130() {
    let env = TestEnv::new();
    let id = env.new_session("echo");
    let watch = Streaming::start(&env, &["watch", &id, "--plain"]);
    watch.wait_for("created: agent echo");
    let pid = watch.pid();
    if catches(pid, 2).is_none() {
        eprintln!("skipped: no /proc to see when watch is ready for SIGINT");
        return;
    }
    wait_until("watch to handle SIGINT", LONG, || {
        catches(pid, 2) == Some(true)
    });
    watch.process.signal(2);
    let (code, _, err) = watch.finish(LONG);
    assert_eq!(code, 130, "{err}");
    assert_eq!(err, "", "no message for Ctrl-C");
}

#[test]
fn a_closed_pipe_ends_watch_with_0() {
    let Some(env) = TestEnv::files_only("it writes a large events.ndjson by hand") else {
        return;
    };
    let id = env.new_session("echo");
    // Far more than a pipe holds, so watch is still writing when the reader goes.
    generate_log(&env, &id, 20_000, 10);
    let mut watch = env.spawn(&["watch", &id, "--from-start", "--json"]);
    let mut lines = BufReader::new(watch.child.stdout.take().unwrap());
    let mut first = String::new();
    lines.read_line(&mut first).unwrap();
    assert!(first.contains("\"seq\":1,"), "{first}");
    drop(lines);
    let out = watch.wait(LONG);
    assert_eq!(code(&out), 0, "{}", describe(&out));
    assert_eq!(stderr(&out), "", "a closed pipe is no error");
}

#[test]
fn a_pipe_closed_while_following_ends_watch_with_0_at_the_next_event() {
    let env = TestEnv::new();
    let id = env.new_session("echo");
    let mut watch = env.spawn(&["watch", &id, "--plain"]);
    let mut lines = BufReader::new(watch.child.stdout.take().unwrap());
    let mut first = String::new();
    lines.read_line(&mut first).unwrap();
    assert!(first.contains("created"), "{first}");
    drop(lines);
    env.send(&id, "into the void");
    env.worker_once();
    let out = watch.wait(LONG);
    assert_eq!(code(&out), 0, "{}", describe(&out));
    assert_eq!(stderr(&out), "");
}

// ---------------------------------------------------------------------------------
// `--since` and the default start on a large log

/// Replaces a session's log with `count` valid events: its `session.created`, an
/// execution started at seq 2, and another started at `last_start` that finishes (exit
/// 0) on the last line; text chunks in between.
fn generate_log(env: &TestEnv, id: &str, count: u64, last_start: u64) {
    let path = env.session_dir(id).join("events.ndjson");
    let created = std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .to_owned();
    assert!(created.contains("session.created"));
    let first = "01900000-0000-7000-8000-000000000001";
    let last = "01900000-0000-7000-8000-000000000002";
    let message = "01900000-0000-7000-8000-000000000003";
    let mut file = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    writeln!(file, "{created}").unwrap();
    for seq in 2..=count {
        let execution = if seq < last_start { first } else { last };
        let (kind, payload) = if seq == 2 || seq == last_start {
            (
                "execution.started",
                format!(
                    r#"{{"message_id":"{message}","attempt":1,"worker":{{"pid":1,"host":"h"}},"resumed":false}}"#
                ),
            )
        } else if seq == count {
            (
                "execution.finished",
                r#"{"status":"completed","stop_reason":"completed","exit_code":0,"steps":1,"usage":{"execution":{"input":1,"output":1,"total":2},"session":{"input":1,"output":1,"total":2}},"duration_ms":5,"error":null,"message_id":null}"#.to_owned(),
            )
        } else {
            (
                "agent.stream.chunk",
                format!(r#"{{"content":"word{seq} ","chunk_index":{seq}}}"#),
            )
        };
        writeln!(
            file,
            r#"{{"v":1,"seq":{seq},"type":"{kind}","session_id":"{id}","execution_id":"{execution}","timestamp":"2026-01-01T00:00:00.000Z","payload":{payload}}}"#
        )
        .unwrap();
    }
    file.flush().unwrap();
}

/// The seqs of `watch ARGS --json --exit-on-idle`, after checking each line is JSON.
fn watched_seqs(env: &TestEnv, args: &[&str]) -> Vec<u64> {
    let mut all = vec!["watch"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--json", "--exit-on-idle"]);
    env.ok(&all)
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["seq"]
                .as_u64()
                .unwrap()
        })
        .collect()
}

fn assert_run(seqs: &[u64], first: u64, last: u64) {
    assert_eq!(seqs.len() as u64, last - first + 1, "count");
    assert_eq!(seqs.first(), Some(&first));
    assert_eq!(seqs.last(), Some(&last));
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "consecutive");
}

#[test]
fn since_and_the_default_start_pick_the_right_lines_of_a_large_log() {
    const COUNT: u64 = 200_000;
    const LAST_START: u64 = 199_000;
    let Some(env) = TestEnv::files_only("it writes a large events.ndjson by hand") else {
        return;
    };
    let id = env.new_session("echo");
    generate_log(&env, &id, COUNT, LAST_START);

    // Late starts only: printing most of the log would take the test's time, not
    // watch's.
    for since in [199_990, 198_765, COUNT - 1] {
        let seqs = watched_seqs(&env, &[&id, "--since", &since.to_string()]);
        assert_run(&seqs, since + 1, COUNT);
    }
    assert!(watched_seqs(&env, &[&id, "--since", &COUNT.to_string()]).is_empty());
    assert!(watched_seqs(&env, &[&id, "--since", "999999999"]).is_empty());
    // Without --since: the last execution, from its `execution.started`.
    assert_run(&watched_seqs(&env, &[&id]), LAST_START, COUNT);

    // The rendered default start shows the last execution only.
    let plain = env.ok(&["watch", &id, "--plain", "--exit-on-idle"]);
    assert!(plain.starts_with("started execution"), "{}", &plain[..200]);
    assert!(plain.contains(&format!("word{} ", LAST_START + 1)));
    assert!(!plain.contains(&format!("word{} ", LAST_START - 1)));
    assert!(plain.ends_with("■ completed · 1 step · 2 tokens · 5ms · exit 0\n"));
}

// ---------------------------------------------------------------------------------
// A real pseudo-terminal

#[test]
fn watch_renders_header_tools_wrapped_text_and_footer_in_a_terminal() {
    if !script_available() {
        return;
    }
    let env = TestEnv::new();
    let id = demo_session(&env);
    let answer = demo_answer(&env, &id);
    let pty = in_pty(&env, &["watch", &id, "--from-start", "--exit-on-idle"], &[]);
    assert_eq!(pty.code, 0, "{:?}", pty.raw);
    let screen = pty.screen();
    assert!(
        screen[0].starts_with(&format!("● session {id} · agent demo")),
        "{screen:#?}"
    );
    assert!(
        screen
            .iter()
            .any(|l| l.starts_with("  ✓ write_file path: 'notes.md'")),
        "{screen:#?}"
    );
    assert!(
        screen
            .iter()
            .any(|l| l.starts_with("  ✓ read_file path: 'notes.md'")),
        "{screen:#?}"
    );
    assert_wrapped(&screen, &answer);
    assert!(
        screen
            .iter()
            .any(|l| l.starts_with("■ completed · 2 steps")),
        "{screen:#?}"
    );
    // Colours on a colour terminal, by default.
    assert!(has_sgr(&pty.raw), "{:?}", pty.raw);
}

#[test]
fn run_renders_header_tools_wrapped_text_and_footer_in_a_terminal() {
    if !script_available() {
        return;
    }
    let env = TestEnv::new();
    let pty = in_pty(&env, &["run", "--agent", "demo", "hi"], &[]);
    assert_eq!(pty.code, 0, "{:?}", pty.raw);
    let screen = pty.screen();
    let ids = env.json(&["session", "list", "--json"]);
    let id = ids[0]["id"].as_str().unwrap();
    let answer = demo_answer(&env, id);
    assert!(
        screen[0].starts_with(&format!("● session {id} · agent demo")),
        "{screen:#?}"
    );
    assert!(
        screen.iter().any(|l| l.starts_with("  ✓ write_file")),
        "{screen:#?}"
    );
    assert!(
        screen.iter().any(|l| l.starts_with("  ✓ read_file")),
        "{screen:#?}"
    );
    assert_wrapped(&screen, &answer);
    assert!(
        screen
            .iter()
            .any(|l| l.starts_with("■ completed · 2 steps")),
        "{screen:#?}"
    );
    // On a terminal the rendering is the output: the answer is not printed twice.
    let words = answer.split_whitespace().next().unwrap();
    let shown = screen
        .iter()
        .filter(|l| l.trim_start().starts_with(words))
        .count();
    assert_eq!(shown, 1, "{screen:#?}");
}

// ---------------------------------------------------------------------------------
// Colours

#[test]
fn no_color_and_color_never_give_no_escape_codes_and_color_always_gives_some() {
    let env = TestEnv::new();
    let id = env.new_session("echo");
    env.send(&id, "hello");
    env.worker_once();
    let watch = ["watch", &id, "--from-start", "--exit-on-idle"];
    let piped = |color: Option<&str>, no_color: bool, plain: bool| {
        let mut cmd = env.cmd();
        if !no_color {
            cmd.env_remove("NO_COLOR");
        }
        if let Some(when) = color {
            cmd.args(["--color", when]);
        }
        cmd.args(watch);
        if plain {
            cmd.arg("--plain");
        }
        let out = cmd.stdin(Stdio::null()).output().unwrap();
        assert_eq!(code(&out), 0, "{}", describe(&out));
        stdout(&out)
    };
    // Not a terminal: plain lines.
    let text = piped(None, true, false);
    assert!(!text.contains('\x1b'), "NO_COLOR: {text:?}");
    let text = piped(Some("never"), false, false);
    assert!(!text.contains('\x1b'), "--color never: {text:?}");
    let text = piped(None, false, false);
    assert!(!text.contains('\x1b'), "auto, not a terminal: {text:?}");
    let text = piped(Some("always"), false, false);
    assert!(has_sgr(&text), "--color always: {text:?}");
    let text = piped(Some("always"), true, false);
    assert!(
        has_sgr(&text),
        "--color always wins over NO_COLOR: {text:?}"
    );
    assert!(text.contains("✓ list_dir"), "{text}");
    // `--plain` means no escape codes at all.
    let text = piped(Some("always"), false, true);
    assert!(!text.contains('\x1b'), "--plain: {text:?}");

    if !script_available() {
        return;
    }
    let pty = in_pty(&env, &watch, &[("NO_COLOR", "1")]);
    assert!(!pty.raw.contains('\x1b'), "NO_COLOR: {:?}", pty.raw);
    assert!(pty.raw.contains("● session"), "{:?}", pty.raw);
    let mut never = vec!["--color", "never"];
    never.extend_from_slice(&watch);
    let pty = in_pty(&env, &never, &[]);
    assert!(!pty.raw.contains('\x1b'), "--color never: {:?}", pty.raw);
    let mut always = vec!["--color", "always"];
    always.extend_from_slice(&watch);
    let pty = in_pty(&env, &always, &[]);
    assert!(has_sgr(&pty.raw), "--color always: {:?}", pty.raw);
    // `run` draws a spinner on a terminal; with NO_COLOR it has no colours either.
    let pty = in_pty(
        &env,
        &["run", "--agent", "demo", "hi"],
        &[("NO_COLOR", "1")],
    );
    assert!(!has_sgr(&pty.raw), "NO_COLOR: {:?}", pty.raw);
}

#[test]
fn color_always_wins_over_no_color_in_a_terminal() {
    if !script_available() {
        return;
    }
    let env = TestEnv::new();
    let id = env.new_session("echo");
    env.send(&id, "hello");
    env.worker_once();
    let pty = in_pty(
        &env,
        &[
            "--color",
            "always",
            "watch",
            &id,
            "--from-start",
            "--exit-on-idle",
        ],
        &[("NO_COLOR", "1")],
    );
    assert_eq!(pty.code, 0);
    assert!(has_sgr(&pty.raw), "{:?}", pty.raw);
}

// ---------------------------------------------------------------------------------
// `agentq status`

#[test]
fn status_shows_pending_running_failed_and_workers() {
    let env = TestEnv::new();
    env.write_agent("slow", SLOW_AGENT);
    env.write_agent("broken", BROKEN_AGENT);
    let broken = env.new_session("broken");
    env.send(&broken, "fail");
    env.fails(&["worker", "--once", "--session", &broken], 1);

    let waiting = env.new_session("echo");
    let running = env.new_session("slow");
    env.send(&waiting, "the oldest");
    env.send(&running, "take your time");
    let worker = env.spawn_worker(&["--session", &running]);
    let pid = u64::from(worker.child.id());
    let mut status = Value::Null;
    wait_until("status to show the execution running", LONG, || {
        status = env.json(&["status", "--json"]);
        status["running"]
            .as_array()
            .is_some_and(|r| r.len() == 1 && r[0]["owner"].is_object())
    });
    let host = agentq::worker::this_worker().host;

    // One message waits; the other is running, and counted there (issue 15).
    assert_eq!(status["pending"], 1, "{status:#}");
    let per_session: BTreeSet<(String, u64)> = status["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["id"].as_str().unwrap().to_owned(),
                s["pending"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(per_session, BTreeSet::from([(waiting.clone(), 1)]));
    assert_eq!(status["oldest_pending"]["session_id"], waiting.as_str());
    assert!(status["oldest_pending"]["age_ms"].is_u64());

    let exec = &status["running"][0];
    assert_eq!(exec["session_id"], running.as_str());
    assert_eq!(exec["owner"]["pid"], pid);
    assert_eq!(exec["owner"]["host"], host.as_str());
    assert_eq!(exec["step"], 1);
    assert_eq!(exec["attempt"], 1);

    let failed = status["failed_last_24h"].as_array().unwrap();
    assert_eq!(failed.len(), 1, "{status:#}");
    assert_eq!(failed[0]["session_id"], broken.as_str());
    assert!(
        failed[0]["error"]
            .as_str()
            .unwrap()
            .contains("injected bad request")
    );

    let workers = status["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 1, "{status:#}");
    assert_eq!(workers[0]["pid"], pid);
    assert_eq!(workers[0]["host"], host.as_str());

    let text = env.ok(&["status"]);
    for expected in [
        format!("workers   1 live: pid {pid} on {host}"),
        "pending   1 message in 1 session; the oldest waits for".to_owned(),
        format!("(session {waiting})"),
        format!("running   session {running} · step 1 · attempt 1 · "),
        format!("worker {pid} on {host}"),
        "failed    1 in the last 24 hours:".to_owned(),
        format!("session {broken} (error): "),
    ] {
        assert!(text.contains(&expected), "{expected:?} in:\n{text}");
    }
}

#[test]
fn status_exits_0_on_a_fresh_and_a_damaged_home_and_2_on_a_missing_one() {
    let fresh = TestEnv::empty();
    fresh.ok(&["init"]);
    let status = fresh.json(&["status", "--json"]);
    assert_eq!(status["pending"], 0);
    assert_eq!(status["workers"], Value::Array(vec![]));
    assert!(fresh.ok(&["status"]).contains("pending   nothing"));

    // A cron line with a typo in --home must fail, not report nothing forever
    // (issue 15); an empty directory is no home either.
    let missing = fresh.home().join("not").join("here");
    let empty = TestEnv::empty();
    for home in [&missing, &empty.home().to_owned()] {
        let out = Command::cargo_bin("agentq")
            .unwrap()
            .arg("--home")
            .arg(home)
            .args(["status", "--json"])
            .env_remove("AGENTQ_HOME")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert_eq!(code(&out), 2, "{}", describe(&out));
        assert!(stderr(&out).contains(&home.display().to_string()));
        assert!(out.stdout.is_empty());
    }
}

#[test]
fn status_says_when_the_workers_cannot_be_listed_instead_of_none_running() {
    let env = TestEnv::new();
    env.new_session("echo");
    match env.store_url() {
        None => std::fs::write(env.home().join("sessions/.workers"), "not a directory").unwrap(),
        Some(url) => {
            let mut db = ::postgres::Client::connect(url, ::postgres::NoTls).unwrap();
            db.batch_execute("ALTER TABLE workers RENAME TO workers_elsewhere")
                .unwrap();
        }
    }
    let status = env.json(&["status", "--json"]);
    assert_eq!(status["workers"], Value::Array(vec![]));
    let unreadable = status["unreadable"].as_array().unwrap();
    assert_eq!(unreadable.len(), 1, "{status:#}");
    assert!(
        unreadable[0].as_str().unwrap().starts_with("workers: "),
        "{status:#}"
    );
    let text = env.ok(&["status"]);
    assert!(
        text.contains("workers   unknown: they could not be listed"),
        "{text}"
    );
    assert!(!text.contains("none running"), "{text}");
    assert!(text.contains("unreadable workers: "), "{text}");
}

#[test]
fn status_lists_a_session_whose_session_json_is_damaged_as_unreadable() {
    let Some(env) = TestEnv::files_only("it damages a session.json by hand") else {
        return;
    };
    let id = env.new_session("echo");
    std::fs::write(env.session_dir(&id).join("session.json"), "{not json").unwrap();
    let status = env.json(&["status", "--json"]);
    let unreadable = status["unreadable"].as_array().unwrap();
    assert_eq!(unreadable.len(), 1, "{status:#}");
    assert!(unreadable[0].as_str().unwrap().contains(&id));
    assert!(env.ok(&["status"]).contains("unreadable"));
}

// ---------------------------------------------------------------------------------
// `agentq schema events`

/// Checks `value` against the parts of JSON Schema that agentq's schema uses: `$ref`,
/// `type`, `const`, `enum`, `required`, `properties` (no unknown keys), `items`,
/// `anyOf`/`oneOf`.
fn conforms(schema: &Value, defs: &Map<String, Value>, value: &Value) -> Result<(), String> {
    if let Some(reference) = schema["$ref"].as_str() {
        let name = reference.trim_start_matches("#/$defs/");
        let def = defs
            .get(name)
            .ok_or_else(|| format!("unresolved {reference}"))?;
        return conforms(def, defs, value);
    }
    if let Some(kind) = schema.get("type") {
        let kinds: Vec<&str> = match kind {
            Value::Array(list) => list.iter().filter_map(Value::as_str).collect(),
            other => other.as_str().into_iter().collect(),
        };
        let fits = |k: &str| match k {
            "null" => value.is_null(),
            "boolean" => value.is_boolean(),
            "integer" => value.is_i64() || value.is_u64(),
            "number" => value.is_number(),
            "string" => value.is_string(),
            "array" => value.is_array(),
            "object" => value.is_object(),
            _ => false,
        };
        if !kinds.iter().any(|k| fits(k)) {
            return Err(format!("{value} is not {kinds:?}"));
        }
    }
    if let Some(expected) = schema.get("const")
        && expected != value
    {
        return Err(format!("{value} is not {expected}"));
    }
    if let Some(options) = schema["enum"].as_array()
        && !options.contains(value)
    {
        return Err(format!("{value} is not one of {options:?}"));
    }
    for key in ["anyOf", "oneOf"] {
        if let Some(branches) = schema[key].as_array()
            && !branches.iter().any(|b| conforms(b, defs, value).is_ok())
        {
            return Err(format!("{value} fits no branch of {key}"));
        }
    }
    if let Some(object) = value.as_object() {
        for required in schema["required"].as_array().into_iter().flatten() {
            let required = required.as_str().unwrap();
            if !object.contains_key(required) {
                return Err(format!("`{required}` missing in {value}"));
            }
        }
        if let Some(properties) = schema["properties"].as_object() {
            for (key, field) in object {
                let sub = properties
                    .get(key)
                    .ok_or_else(|| format!("`{key}` is not in the schema"))?;
                conforms(sub, defs, field).map_err(|e| format!("{key}: {e}"))?;
            }
        }
    }
    if let (Some(items), Some(list)) = (schema.get("items"), value.as_array()) {
        for item in list {
            conforms(items, defs, item)?;
        }
    }
    Ok(())
}

#[test]
fn schema_events_describes_every_event_a_run_writes() {
    let env = TestEnv::new();
    let schema = env.json(&["schema", "events"]);
    let defs = schema["$defs"].as_object().expect("$defs");
    let types: Vec<&str> = schema["properties"]["type"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert!(types.len() >= 16, "{types:?}");
    let branches = schema["oneOf"].as_array().unwrap();
    assert_eq!(branches.len(), types.len(), "one branch per type");
    for name in &types {
        let branch = branches
            .iter()
            .find(|b| b["properties"]["type"]["const"] == *name)
            .unwrap_or_else(|| panic!("no branch for {name}"));
        let reference = branch["properties"]["payload"]["$ref"].as_str().unwrap();
        assert!(
            defs.contains_key(reference.trim_start_matches("#/$defs/")),
            "{name}: {reference}"
        );
    }
    let required: Vec<&str> = schema["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap())
        .collect();
    assert_eq!(
        required,
        [
            "v",
            "seq",
            "type",
            "session_id",
            "execution_id",
            "timestamp",
            "payload"
        ]
    );

    // Runs with text, tools, a failed tool, a pause, a resume and the debug preset.
    let hostile = hostile_session(&env);
    let echo = env.new_session("echo");
    env.send(&echo, "hello");
    env.worker_once();
    env.ok(&["session", "pause", &echo]);
    env.ok(&["session", "resume", &echo]);
    let debug = env
        .ok(&["session", "new", "--agent", "echo", "--events", "debug"])
        .trim()
        .to_owned();
    env.send(&debug, "in detail");
    env.worker_once();

    let mut seen = BTreeSet::new();
    for id in [&hostile, &echo, &debug] {
        for event in env.events(id) {
            let kind = event["type"].as_str().unwrap().to_owned();
            assert!(types.contains(&kind.as_str()), "{kind} is in the enum");
            let envelope = Value::Object(
                schema
                    .as_object()
                    .unwrap()
                    .iter()
                    .filter(|(k, _)| !matches!(k.as_str(), "oneOf" | "$defs"))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            );
            conforms(&envelope, defs, &event).unwrap_or_else(|e| panic!("{e}\n{event}"));
            let branch = branches
                .iter()
                .find(|b| b["properties"]["type"]["const"] == kind.as_str())
                .unwrap();
            conforms(&branch["properties"]["payload"], defs, &event["payload"])
                .unwrap_or_else(|e| panic!("{kind}: {e}\n{event}"));
            seen.insert(kind);
        }
    }
    for kind in [
        "session.created",
        "session.status",
        "message.queued",
        "execution.started",
        "agent.status",
        "agent.step.started",
        "agent.stream.chunk",
        "agent.tool.started",
        "agent.tool.completed",
        "agent.step.completed",
        "agent.continuation",
        "agent.message.completed",
        "execution.finished",
    ] {
        assert!(seen.contains(kind), "the runs wrote {kind}: {seen:?}");
    }
}

#[test]
fn the_scenarios_retry_and_limit_events_fit_the_schema() {
    let s = scenario();
    let schema = s.env.json(&["schema", "events"]);
    let defs = schema["$defs"].as_object().unwrap();
    for event in s.env.events(&s.id) {
        let branch = schema["oneOf"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["properties"]["type"]["const"] == event["type"])
            .unwrap_or_else(|| panic!("a branch for {event}"));
        conforms(&branch["properties"]["payload"], defs, &event["payload"])
            .unwrap_or_else(|e| panic!("{e}\n{event}"));
    }
}

// ---------------------------------------------------------------------------------
// Completions, version, help

#[test]
fn completions_are_printed_for_bash_zsh_and_fish() {
    let env = TestEnv::empty();
    for shell in ["bash", "zsh", "fish"] {
        let script = env.ok(&["completions", shell]);
        assert!(script.contains("agentq"), "{shell}");
        assert!(script.contains("watch"), "{shell} completes subcommands");
        assert!(script.contains("exit-on-idle"), "{shell} completes flags");
    }
    env.fails(&["completions", "tcsh"], 2);
}

#[test]
fn version_is_printed() {
    let env = TestEnv::empty();
    assert_eq!(
        env.ok(&["--version"]),
        format!("agentq {}\n", env!("CARGO_PKG_VERSION"))
    );
}

/// The subcommands a `--help` lists (without `help`).
fn subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_owned)
        .collect()
}

#[test]
fn every_command_help_has_an_example() {
    let env = TestEnv::empty();
    let top = env.ok(&["--help"]);
    assert!(top.contains("Example"), "{top}");
    let commands = subcommands(&top);
    assert!(commands.len() >= 12, "{commands:?}");
    let mut leaves = Vec::new();
    for command in &commands {
        let help = env.ok(&[command, "--help"]);
        // Groups (`session`, `agents`, `schema`) too.
        assert!(help.contains("Example"), "agentq {command} --help:\n{help}");
        let nested = subcommands(&help);
        if nested.is_empty() {
            leaves.push(vec![command.clone()]);
        } else {
            leaves.extend(nested.into_iter().map(|n| vec![command.clone(), n]));
        }
    }
    for leaf in ["session", "agents"] {
        assert!(
            leaves.iter().filter(|l| l[0] == leaf).count() >= 3,
            "{leaves:?}"
        );
    }
    for path in &leaves {
        let mut args: Vec<&str> = path.iter().map(String::as_str).collect();
        args.push("--help");
        let help = env.ok(&args);
        assert!(help.contains("Example"), "agentq {args:?}:\n{help}");
    }
}

// ---------------------------------------------------------------------------------
// `agentq session list`

#[test]
fn session_list_is_an_aligned_table_whose_prefixes_work_and_json_has_every_field() {
    let env = TestEnv::new();
    env.write_agent(
        "a-much-longer-agent-name",
        &ECHO_AGENT.replace("name = \"echo\"", "name = \"a-much-longer-agent-name\""),
    );
    let done = env.new_session("echo");
    env.send(&done, "hello");
    env.worker_once();
    let paused = env
        .ok(&[
            "session",
            "new",
            "--agent",
            "demo",
            "--title",
            "a title with spaces",
        ])
        .trim()
        .to_owned();
    env.ok(&["session", "pause", &paused]);
    let queued = env.new_session("a-much-longer-agent-name");
    env.send(&queued, "later");

    let table = env.ok(&["session", "list"]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 4, "{table}");
    let header = lines[0];
    let columns = [
        "ID", "AGENT", "STATUS", "MSGS", "PENDING", "TOKENS", "ACTIVE", "TITLE",
    ];
    let words: Vec<&str> = header.split_whitespace().collect();
    assert_eq!(words, columns, "{table}");
    let starts: Vec<usize> = columns.iter().map(|c| header.find(c).unwrap()).collect();
    let at = |line: &str, i: usize| line.chars().nth(i).unwrap_or(' ');
    for row in &lines[1..] {
        for (c, name) in columns.iter().enumerate() {
            let numeric = matches!(*name, "MSGS" | "PENDING" | "TOKENS" | "ACTIVE");
            if numeric {
                // Right-aligned under the header's last character.
                let end = starts[c] + name.len() - 1;
                assert!(
                    at(row, end) != ' ' && at(row, end + 1) == ' ',
                    "{name} in {row:?}\n{table}"
                );
            } else {
                assert!(
                    at(row, starts[c]) != ' ' || *name == "TITLE",
                    "{name} in {row:?}\n{table}"
                );
                if c > 0 {
                    assert_eq!(at(row, starts[c] - 1), ' ', "{name} in {row:?}\n{table}");
                }
            }
        }
    }
    let ids = [&done, &paused, &queued];
    for row in &lines[1..] {
        let prefix = row.split_whitespace().next().unwrap();
        let full = ids
            .iter()
            .find(|id| id.starts_with(prefix))
            .unwrap_or_else(|| panic!("{prefix} is a prefix of an id"));
        let shown = env.json(&["session", "show", prefix, "--json"]);
        assert_eq!(shown["session"]["id"], full.as_str(), "{prefix}");
    }
    // Cells are separated by at least two spaces and hold no two spaces in a row.
    let cells = |id: &str| -> Vec<String> {
        let row = lines[1..]
            .iter()
            .find(|r| id.starts_with(r.split_whitespace().next().unwrap()))
            .unwrap();
        regex::Regex::new(" {2,}")
            .unwrap()
            .splitn(row, columns.len())
            .map(str::to_owned)
            .collect()
    };
    let done_row = cells(&done);
    assert_eq!(
        done_row[1..6],
        ["echo", "active", "1", "0", "40"],
        "{table}"
    );
    assert!(done_row[6].ends_with(" ago"), "{table}");
    // An empty title leaves no trailing spaces, so the row may end before the column.
    assert_eq!(done_row.get(7).map_or("", String::as_str), "", "{table}");
    let paused_row = cells(&paused);
    assert_eq!(
        paused_row[1..6],
        ["demo", "paused", "0", "0", "0"],
        "{table}"
    );
    assert_eq!(paused_row[7], "a title with spaces", "{table}");
    let queued_row = cells(&queued);
    assert_eq!(
        queued_row[1..6],
        ["a-much-longer-agent-name", "active", "1", "1", "0"],
        "{table}"
    );

    let listed = env.json(&["session", "list", "--json"]);
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 3);
    let fields: BTreeSet<&str> = [
        "id",
        "agent",
        "title",
        "status",
        "messages",
        "pending",
        "usage",
        "created_at",
        "updated_at",
    ]
    .into();
    for entry in listed {
        let keys: BTreeSet<&str> = entry
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(keys, fields, "{entry}");
    }
    let entry = |id: &str| listed.iter().find(|e| e["id"] == id).unwrap();
    assert_eq!(entry(&done)["messages"], 1);
    assert_eq!(entry(&done)["pending"], 0);
    assert_eq!(entry(&done)["usage"]["total"], 40);
    assert_eq!(entry(&done)["status"], "active");
    assert_eq!(entry(&paused)["status"], "paused");
    assert_eq!(entry(&paused)["title"], "a title with spaces");
    assert_eq!(entry(&queued)["pending"], 1);
    assert_eq!(entry(&queued)["agent"], "a-much-longer-agent-name");
    let paused_only = env.json(&["session", "list", "--status", "paused", "--json"]);
    assert_eq!(paused_only.as_array().unwrap().len(), 1);
}
