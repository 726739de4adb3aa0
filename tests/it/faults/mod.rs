//! The fault-injection suite (issue 5): workers killed with SIGKILL at random moments,
//! worker processes racing over one home, `send` interrupted between its writes, and
//! bad input of every kind. Under all of it agentq must lose no message, settle none
//! twice, keep each session's messages in order, never run a side-effecting tool twice,
//! and leave only files the next reader can parse.
//!
//! Every scenario prints one machine-readable line before it asserts,
//! `FAULT-SUITE test=NAME key=value …`, so `scripts/fault-suite` can add up what was
//! found even when an assertion fails. `FAULT_ITERATIONS` (default 100) is the number of
//! kills and `FAULT_SEED` replays a kill schedule; the seed of every run is printed.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt::Write as _;
use std::fs::File;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::*;

// Hostile input (issue 15): one module per class of hole, each walking every site of
// its class.
mod hostile_damaged;
mod hostile_exit_codes;
mod hostile_inodes;
mod hostile_messages;
mod hostile_processes;
mod hostile_secrets;
mod hostile_text;
mod hostile_values;
// Workers on several hosts over one Postgres database (issue 18).
mod multihost;
// kill -9 around parked approvals and completion hooks (issue 20).
mod unattended;

// ---------------------------------------------------------------------------------
// Helpers: the report line, the random kill schedule, processes

/// How many times an execution may be started before it ends `failed`
/// (`too_many_attempts`, src/worker/execute.rs): a record left running at this many
/// attempts fails on its next start.
const MAX_ATTEMPTS: u64 = 3;

/// A whole number from the environment, for the script's knobs.
fn env_number(name: &str) -> Option<u64> {
    let text = std::env::var(name).ok()?;
    Some(
        text.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={text:?} is not a whole number")),
    )
}

/// Prints `FAULT-SUITE test=NAME k=v …` for `scripts/fault-suite`.
pub(crate) fn report(test: &str, pairs: &[(&str, u64)]) {
    let mut line = format!("FAULT-SUITE test={test}");
    for (key, value) in pairs {
        let _ = write!(line, " {key}={value}");
    }
    println!("{line}");
}

/// xorshift64*: small, fast and good enough to pick kill moments. Seeded through
/// splitmix64, so every seed (0 too) gives a full-period stream.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Rng((z ^ (z >> 31)) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `lo..=hi`.
    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

fn fresh_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ (u64::from(std::process::id()) << 32)
}

fn signal(pid: u32, signal: libc::c_int) {
    let pid = libc::pid_t::try_from(pid).expect("a pid fits pid_t");
    // SAFETY: kill(2) has no memory-safety preconditions. The pid is a child of this
    // test that has not been reaped yet, so it cannot name another process.
    let rc = unsafe { libc::kill(pid, signal) };
    assert_eq!(
        rc,
        0,
        "kill({pid}, {signal}): {}",
        std::io::Error::last_os_error()
    );
}

/// Waits until every thread of `pid` has stopped (SIGSTOP is delivered asynchronously)
/// or the process is gone.
fn wait_stopped(pid: u32) {
    wait_until("the worker to stop on SIGSTOP", LONG, || {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            return true;
        };
        tasks.flatten().all(|task| {
            std::fs::read_to_string(task.path().join("stat")).map_or(true, |stat| {
                // The state letter follows the parenthesised command name.
                stat.rsplit_once(')').is_none_or(|(_, rest)| {
                    matches!(
                        rest.trim_start().chars().next(),
                        Some('T' | 't' | 'Z' | 'X')
                    )
                })
            })
        })
    });
}

/// A process started with its stderr going to a file (a worker that logs a line per
/// claim would fill a pipe nobody reads and hang). Killed when dropped.
struct Logged {
    child: Child,
    log: PathBuf,
}

impl Logged {
    fn spawn(env: &TestEnv, args: &[&str], log: PathBuf) -> Logged {
        let child = env
            .cmd()
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn agentq");
        Logged { child, log }
    }

    /// Waits for the exit, at most `timeout`; returns the status and the log.
    fn wait(&mut self, timeout: Duration) -> (std::process::ExitStatus, String) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                return (status, log);
            }
            assert!(
                Instant::now() < deadline,
                "process {} did not exit within {timeout:?}",
                self.child.id()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------
// Helpers: reading the home back

/// A file read as JSON: `Ok(None)` when it does not exist.
fn read_json(path: &Path) -> Result<Option<Value>, String> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| format!("{} does not parse ({e})", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// The lines of an NDJSON file: the parsed ones, the ones that did not parse, and
/// whether the file ends in an unterminated line.
struct Ndjson {
    values: Vec<Value>,
    unparsable: Vec<String>,
    torn: bool,
}

fn read_ndjson(path: &Path) -> Ndjson {
    parse_ndjson(
        &std::fs::read(path).unwrap_or_default(),
        &path.display().to_string(),
    )
}

/// NDJSON lines from wherever they were kept (a file, a database's rows), `origin`
/// naming it in what does not parse.
fn parse_ndjson(bytes: &[u8], origin: &str) -> Ndjson {
    let torn = bytes.last().is_some_and(|b| *b != b'\n');
    let mut values = Vec::new();
    let mut unparsable = Vec::new();
    for line in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        match serde_json::from_slice(line) {
            Ok(value) => values.push(value),
            Err(e) => unparsable.push(format!("{origin}: {e}: {}", String::from_utf8_lossy(line))),
        }
    }
    Ndjson {
        values,
        unparsable,
        torn,
    }
}

/// The last `max` bytes of a file (empty when it is missing).
fn tail(path: &Path, max: u64) -> Vec<u8> {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut file) = File::open(path) else {
        return Vec::new();
    };
    let len = file.metadata().map_or(0, |m| m.len());
    file.seek(SeekFrom::Start(len.saturating_sub(max)))
        .expect("seek");
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).expect("read");
    bytes
}

/// The `type` of the last complete line of an event log, and whether a torn line follows.
fn last_event(path: &Path) -> (Option<String>, bool) {
    let bytes = tail(path, 16 * 1024);
    let torn = bytes.last().is_some_and(|b| *b != b'\n');
    let complete = match bytes.iter().rposition(|b| *b == b'\n') {
        Some(end) => &bytes[..end],
        None => &[][..],
    };
    let last = complete.rsplit(|b| *b == b'\n').next().unwrap_or_default();
    let kind = serde_json::from_slice::<Value>(last)
        .ok()
        .and_then(|e| e["type"].as_str().map(str::to_owned));
    (kind, torn)
}

fn is_terminal(status: &Value) -> bool {
    matches!(
        status.as_str(),
        Some("completed" | "failed" | "cancelled" | "stopped")
    )
}

/// Names of the inbox entries of a session (what a worker would run).
fn inbox_entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir.join("inbox"))
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().to_str().map(str::to_owned))
                .filter(|n| !n.starts_with('.') && n.ends_with(".json"))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// What a walk over every file of a home found.
#[derive(Default)]
struct FileCheck {
    json_files: u64,
    ndjson_lines: u64,
    unparsable: Vec<String>,
    torn: Vec<String>,
    /// Temp files of a replace that a kill interrupted: harmless, ignored by readers.
    temp_leftovers: u64,
    corrupt_aside: Vec<String>,
}

/// Parses every `*.json` and every line of every `*.ndjson` under `home`, except in
/// workspaces (the agent's own files).
fn check_files(home: &Path) -> FileCheck {
    fn walk(dir: &Path, check: &mut FileCheck) {
        for entry in std::fs::read_dir(dir).expect("read_dir").flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            let kind = entry.file_type().expect("file type");
            if kind.is_dir() {
                if name != "workspace" {
                    walk(&path, check);
                }
                continue;
            }
            if name.contains(".corrupt-") {
                check.corrupt_aside.push(path.display().to_string());
            } else if name.starts_with('.') && name.contains(".tmp-") {
                check.temp_leftovers += 1;
            } else if name.ends_with(".ndjson") {
                let log = read_ndjson(&path);
                check.ndjson_lines += log.values.len() as u64;
                check.unparsable.extend(log.unparsable);
                if log.torn {
                    check.torn.push(path.display().to_string());
                }
            } else if name.ends_with(".json") {
                check.json_files += 1;
                if let Err(e) = read_json(&path) {
                    check.unparsable.push(e);
                }
            }
        }
    }
    let mut check = FileCheck::default();
    walk(home, &mut check);
    check
}

/// Every path under `root` (directories too) with the content of each file.
fn snapshot(root: &Path) -> BTreeMap<String, Option<Vec<u8>>> {
    fn walk(root: &Path, dir: &Path, into: &mut BTreeMap<String, Option<Vec<u8>>>) {
        for entry in std::fs::read_dir(dir).expect("read_dir").flatten() {
            let path = entry.path();
            let name = path.strip_prefix(root).unwrap().display().to_string();
            if entry.file_type().unwrap().is_dir() {
                into.insert(format!("{name}/"), None);
                walk(root, &path, into);
            } else {
                into.insert(name, Some(std::fs::read(&path).unwrap_or_default()));
            }
        }
    }
    let mut files = BTreeMap::new();
    walk(root, root, &mut files);
    files
}

fn assert_unchanged(
    what: &str,
    before: &BTreeMap<String, Option<Vec<u8>>>,
    after: &BTreeMap<String, Option<Vec<u8>>>,
) {
    let added: Vec<&String> = after.keys().filter(|k| !before.contains_key(*k)).collect();
    let removed: Vec<&String> = before.keys().filter(|k| !after.contains_key(*k)).collect();
    let changed: Vec<&String> = before
        .iter()
        .filter(|(k, v)| after.get(*k).is_some_and(|a| a != *v))
        .map(|(k, _)| k)
        .collect();
    assert!(
        added.is_empty() && removed.is_empty() && changed.is_empty(),
        "{what} changed the home:\n  added {added:?}\n  removed {removed:?}\n  changed {changed:?}"
    );
}

/// A refusal: exit `expected`, one `agentq: ` line on stderr naming every part of
/// `says`, nothing on stdout, no panic.
fn assert_refused(out: &Output, expected: i32, says: &[&str], what: &str) {
    assert_eq!(code(out), expected, "{what}:\n{}", describe(out));
    let err = stderr(out);
    assert!(
        out.stdout.is_empty(),
        "{what}: nothing on stdout:\n{}",
        describe(out)
    );
    assert!(
        err.starts_with("agentq: ") && err.ends_with('\n') && err.lines().count() == 1,
        "{what}: one `agentq: ` line on stderr:\n{}",
        describe(out)
    );
    assert!(!err.contains("panicked"), "{what}: {err}");
    for part in says {
        assert!(err.contains(part), "{what}: should mention {part:?}: {err}");
    }
}

/// Runs `worker --once` and returns its stderr; it must exit 0.
fn worker_once_log(env: &TestEnv) -> String {
    worker_once_log_exiting(env, 0)
}

/// Runs `worker --once` and returns its stderr; it must exit `expected`, the worst
/// outcome of the executions it ran.
fn worker_once_log_exiting(env: &TestEnv, expected: i32) -> String {
    let out = env.run(&["worker", "--once"]);
    assert_eq!(code(&out), expected, "worker --once:\n{}", describe(&out));
    assert!(!stderr(&out).contains("panicked"), "{}", describe(&out));
    stderr(&out)
}

/// Events of a type, parsed leniently (the audit counts unparsable lines itself).
fn events_of(env: &TestEnv, id: &str, kind: &str) -> Vec<Value> {
    read_ndjson(&env.session_dir(id).join("events.ndjson"))
        .values
        .into_iter()
        .filter(|e| e["type"] == kind)
        .collect()
}

fn seqs(env: &TestEnv, id: &str) -> Vec<u64> {
    read_ndjson(&env.session_dir(id).join("events.ndjson"))
        .values
        .iter()
        .map(|e| e["seq"].as_u64().unwrap_or(0))
        .collect()
}

fn assert_gapless(env: &TestEnv, id: &str) {
    let seqs = seqs(env, id);
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "seq of session {id}"
    );
}

/// `(status, message_id)` of every `execution.finished`.
fn finishes(env: &TestEnv, id: &str) -> Vec<(String, String)> {
    events_of(env, id, "execution.finished")
        .iter()
        .map(|e| {
            (
                e["payload"]["status"].as_str().unwrap_or("").to_owned(),
                e["payload"]["message_id"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

/// A single-step agent with no delays: it answers `echo: <message>`.
const FAST_AGENT: &str = r#"
name = "fast"
[model]
provider = "scripted"
[[model.script]]
text = "echo: {input}"
usage = { input = 3, output = 2 }
"#;

/// Streams slowly, so a test can kill a worker mid-execution.
const SLOW_AGENT: &str = r#"
name = "slow"
[model]
provider = "scripted"
[[model.script]]
text = "one two three four five six seven eight nine ten eleven twelve"
delay_ms = 150
"#;

// ---------------------------------------------------------------------------------
// Auditing sessions after the faults

/// A message as `send` accepted it.
#[derive(Debug, Clone)]
struct Sent {
    id: String,
    text: String,
}

/// What the audits found, over all sessions of a scenario.
#[derive(Default)]
struct Tally {
    messages: u64,
    completed: u64,
    /// Executions finished, or answers given, more than once for one message.
    duplicates: u64,
    /// Messages with no finished execution.
    losses: u64,
    /// Messages finished but not `completed`.
    not_completed: u64,
    out_of_order: u64,
    seq_gaps: u64,
    unparsable: u64,
    /// Side effects of one tool call found more than once.
    rerun_tools: u64,
    /// Settled (successful) tool calls whose side effect is missing.
    missing_effects: u64,
    /// Tool calls answered "interrupted" (their worker died while they ran).
    interrupted_tools: u64,
    /// Tool calls a message made that its script does not have: the model was asked
    /// again after the message was answered, using up the next message's script.
    extra_calls: u64,
    /// `(session, message index)` of the messages behind a problem, for the replay.
    flagged: Vec<(String, usize)>,
    problems: Vec<String>,
}

impl Tally {
    /// What the audits counted, as the suite's summary line reports it.
    fn counts(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("interrupted_tools", self.interrupted_tools),
            ("messages", self.messages),
            ("completed", self.completed),
            ("duplicates", self.duplicates),
            ("losses", self.losses),
            ("not_completed", self.not_completed),
            ("out_of_order", self.out_of_order),
            ("seq_gaps", self.seq_gaps),
            ("unparsable", self.unparsable),
            ("rerun_tools", self.rerun_tools),
            ("extra_calls", self.extra_calls),
            ("missing_effects", self.missing_effects),
            ("problems", self.problems.len() as u64),
        ]
    }

    fn problem(&mut self, text: String) {
        if self.problems.len() < 40 {
            self.problems.push(text);
        }
    }
}

/// Checks a session's event log against the messages `send` accepted: `seq` gapless
/// from 1, one `message.queued` per message in send order, exactly one
/// `execution.finished` per message, `completed`, in send order, and one answer each,
/// equal to `answer(text)`, in send order; the execution records agree.
fn audit_log(
    env: &TestEnv,
    id: &str,
    sent: &[Sent],
    answer: &dyn Fn(&str) -> String,
    tally: &mut Tally,
) {
    let dir = env.session_dir(id);
    let log = read_ndjson(&dir.join("events.ndjson"));
    let records: Vec<(String, Result<Option<Value>, String>)> =
        std::fs::read_dir(dir.join("executions"))
            .expect("executions/")
            .flatten()
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .filter(|name| !name.starts_with('.') && name.ends_with(".json"))
            .map(|name| {
                let record = read_json(&dir.join("executions").join(&name));
                (name, record)
            })
            .collect();
    audit_events(id, &log, &records, sent, answer, tally);
}

/// [`audit_log`] of a session read from any store: its event log and its execution
/// records (each named, parsed or why not).
fn audit_events(
    id: &str,
    log: &Ndjson,
    records: &[(String, Result<Option<Value>, String>)],
    sent: &[Sent],
    answer: &dyn Fn(&str) -> String,
    tally: &mut Tally,
) {
    tally.unparsable += log.unparsable.len() as u64 + u64::from(log.torn);
    for line in &log.unparsable {
        tally.problem(format!("session {id}: unparsable event line {line}"));
    }
    if log.torn {
        tally.problem(format!("session {id}: events.ndjson ends in a torn line"));
    }
    let mut expected_seq = 1;
    for event in &log.values {
        let seq = event["seq"].as_u64().unwrap_or(0);
        if seq != expected_seq {
            tally.seq_gaps += 1;
            tally.problem(format!(
                "session {id}: seq {seq} where {expected_seq} was due"
            ));
        }
        expected_seq = seq + 1;
    }
    let of = |kind: &str| -> Vec<&Value> {
        log.values
            .iter()
            .filter(|e| e["type"] == kind)
            .map(|e| &e["payload"])
            .collect()
    };
    let ids: Vec<&str> = sent.iter().map(|s| s.id.as_str()).collect();
    let queued: Vec<&str> = of("message.queued")
        .iter()
        .filter_map(|p| p["message_id"].as_str())
        .collect();
    if queued != ids {
        tally.problem(format!(
            "session {id}: message.queued {queued:?} differs from what send returned {ids:?}"
        ));
    }

    let finished = of("execution.finished");
    let answers = of("agent.message.completed");
    let mut finish_order = Vec::new();
    let mut answer_order = Vec::new();
    for message in sent {
        tally.messages += 1;
        let mine: Vec<&&Value> = finished
            .iter()
            .filter(|p| p["message_id"] == message.id.as_str())
            .collect();
        match mine.len() {
            0 => {
                tally.losses += 1;
                tally.problem(format!(
                    "session {id}: message {} ({:?}) never finished",
                    message.id, message.text
                ));
            }
            n => {
                if n > 1 {
                    tally.duplicates += n as u64 - 1;
                    tally.problem(format!(
                        "session {id}: message {} finished {n} times",
                        message.id
                    ));
                }
                if mine.iter().all(|p| p["status"] == "completed") {
                    tally.completed += 1;
                } else {
                    tally.not_completed += 1;
                    tally.problem(format!(
                        "session {id}: message {} finished {:?}",
                        message.id,
                        mine.iter()
                            .map(|p| format!(
                                "{} ({}: {})",
                                p["status"], p["stop_reason"], p["error"]
                            ))
                            .collect::<Vec<_>>()
                    ));
                }
            }
        }
        let said: Vec<&&Value> = answers
            .iter()
            .filter(|p| p["message_id"] == message.id.as_str())
            .collect();
        if said.len() > 1 {
            tally.duplicates += said.len() as u64 - 1;
            tally.problem(format!(
                "session {id}: message {} answered {} times",
                message.id,
                said.len()
            ));
        }
        let expected = answer(&message.text);
        for p in &said {
            if p["response"] != expected.as_str() {
                tally.problem(format!(
                    "session {id}: message {} answered {} instead of {expected:?}",
                    message.id, p["response"]
                ));
            }
        }
    }
    for p in &finished {
        let message = p["message_id"].as_str().unwrap_or("");
        if !ids.contains(&message) {
            tally.problem(format!(
                "session {id}: an execution finished for a message never sent: {p}"
            ));
        }
        if !finish_order.contains(&message) {
            finish_order.push(message);
        }
    }
    for p in &answers {
        let message = p["message_id"].as_str().unwrap_or("");
        if !answer_order.contains(&message) {
            answer_order.push(message);
        }
    }
    let sent_finished: Vec<&str> = ids
        .iter()
        .copied()
        .filter(|m| finish_order.contains(m))
        .collect();
    let sent_answered: Vec<&str> = ids
        .iter()
        .copied()
        .filter(|m| answer_order.contains(m))
        .collect();
    if finish_order != sent_finished || answer_order != sent_answered {
        tally.out_of_order += 1;
        tally.problem(format!(
            "session {id}: finished in the order {finish_order:?}, answered in {answer_order:?}, sent in {ids:?}"
        ));
    }

    // The records: every one parses, none is left running, one completed per message.
    let mut completed_records: HashMap<String, u64> = HashMap::new();
    for (name, record) in records {
        match record {
            Ok(Some(record)) => {
                if !is_terminal(&record["status"]) {
                    tally.problem(format!("session {id}: execution {name} left {record}"));
                }
                if record["status"] == "completed" {
                    let message = record["message_id"].as_str().unwrap_or("").to_owned();
                    *completed_records.entry(message).or_default() += 1;
                }
            }
            Ok(None) => {}
            Err(e) => {
                tally.unparsable += 1;
                tally.problem(e.clone());
            }
        }
    }
    for message in sent {
        let n = completed_records.get(&message.id).copied().unwrap_or(0);
        if n != 1 {
            tally.problem(format!(
                "session {id}: {n} completed execution records for message {}",
                message.id
            ));
        }
    }
}

// ---------------------------------------------------------------------------------
// kill -9 at random moments

const KILL_SESSIONS: usize = 5;
/// Messages queued in every session before the first worker starts.
const FIRST_MESSAGES: usize = 4;
/// Each session is kept this many messages ahead of the workers.
const BACKLOG: usize = 2;
/// Milliseconds between streamed words: kills land mid-stream.
const WORD_DELAY_MS: u64 = 4;

/// The marks of the tool calls of message `k` of a session, in order.
fn marks(k: usize) -> Vec<String> {
    vec![
        format!("m{k}-s1"),
        format!("m{k}-s2-a"),
        format!("m{k}-s2-b"),
    ]
}

/// An agent that spends three steps on every message: one side-effecting call, two
/// more in one step, then the answer `done: <message>`. The script has one entry per
/// model call of a session (the cursor is the session's count of model calls), so every
/// (message, step) calls the tool with arguments of its own: a call run twice, or a
/// step taken again after its message settled, shows up in `effects.log`.
fn effects_agent(messages: usize) -> String {
    effects_agent_appending_to(messages, "effects.log")
}

/// [`effects_agent`] whose tool appends to `log` (a shell word, run in the workspace).
fn effects_agent_appending_to(messages: usize, log: &str) -> String {
    paced_effects_agent(messages, log, WORD_DELAY_MS, 0)
}

/// [`effects_agent_appending_to`] streaming a word every `word_delay_ms`, its tool
/// taking `tool_ms` before its effect: slow enough for a test to stop a worker
/// mid-stream or mid-tool.
fn paced_effects_agent(messages: usize, log: &str, word_delay_ms: u64, tool_ms: u64) -> String {
    let mut toml = String::from(
        r#"name = "effects"
description = "Three steps per message, with side effects"
[model]
provider = "scripted"
"#,
    );
    let words = "streams a few words";
    for k in 0..messages {
        let [one, two_a, two_b] = <[String; 3]>::try_from(marks(k)).unwrap();
        let _ = write!(
            toml,
            r#"[[model.script]]
text = "message {k} step 1 {words}"
delay_ms = {word_delay_ms}
tool_calls = [{{ name = "effect", arguments = {{ mark = "{one}" }} }}]
[[model.script]]
text = "message {k} step 2 {words}"
delay_ms = {word_delay_ms}
tool_calls = [
  {{ name = "effect", arguments = {{ mark = "{two_a}" }} }},
  {{ name = "effect", arguments = {{ mark = "{two_b}" }} }},
]
[[model.script]]
text = "done: {{input}}"
delay_ms = {word_delay_ms}
"#
        );
    }
    let _ = write!(
        toml,
        r#"[limits]
max_steps = 10
[[tools.command]]
name = "effect"
description = "Appends its arguments to a log, one line per call"
argv = ["sh", "-c", 'line=$(cat); {pause}printf "%s\n" "$line" >> {log}']
timeout = "20s"
"#,
        pause = if tool_ms == 0 {
            String::new()
        } else {
            format!("sleep {}.{:03}; ", tool_ms / 1000, tool_ms % 1000)
        }
    );
    toml
}

/// What the kills hit, counted at the moment of each kill (the worker stopped).
#[derive(Default)]
struct Kills {
    total: u64,
    /// Kills that caught the worker with an execution in hand: unsettled, or settled
    /// with its inbox entry not removed yet.
    interrupted: u64,
    mid_stream: u64,
    mid_tool: u64,
    between_steps: u64,
    /// Settled, but the inbox entry not removed yet.
    settling: u64,
    /// A log ended in an unterminated line.
    mid_write: u64,
    /// A replace's temp file was there, or the transcript ran past `state.json`'s mark.
    mid_checkpoint: u64,
    /// Kills held back until an execution at its last attempt had settled.
    deferred: u64,
    /// Workers that exited on their own instead of being killed.
    exited: u64,
}

/// The sessions' files at one kill.
#[derive(Default)]
struct Moment {
    running: usize,
    mid_stream: bool,
    mid_tool: bool,
    between_steps: bool,
    settling: bool,
    mid_write: bool,
    mid_checkpoint: bool,
    /// Records of executions that fail on their next start.
    at_limit: Vec<PathBuf>,
    unreadable: Vec<String>,
}

/// Looks at every session while the worker is stopped.
/// Only executions `pid` (the worker being killed) started or resumed count as
/// interrupted; every running one at its last attempt is reported, whoever left it.
fn inspect(env: &TestEnv, ids: &[String], pid: u32, known_temps: &mut HashSet<PathBuf>) -> Moment {
    let mut moment = Moment::default();
    for id in ids {
        let dir = env.session_dir(id);
        // A replace cut short leaves its temp file; new ones are this worker's.
        let mut mid_checkpoint = false;
        for sub in [dir.clone(), dir.join("executions"), dir.join("inbox")] {
            for entry in std::fs::read_dir(&sub).into_iter().flatten().flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with('.')
                    && name.contains(".tmp-")
                    && known_temps.insert(entry.path())
                {
                    mid_checkpoint = true;
                }
            }
        }
        let (last, torn) = last_event(&dir.join("events.ndjson"));
        let transcript_tail = tail(&dir.join("transcript.ndjson"), 1);
        let mid_write = torn || transcript_tail.last().is_some_and(|b| *b != b'\n');
        let state = match read_json(&dir.join("state.json")) {
            Ok(Some(state)) => state,
            Ok(None) => continue,
            Err(e) => {
                moment.unreadable.push(e);
                continue;
            }
        };
        // Transcript lines appended, state.json not yet pointing past them.
        let transcript_len =
            std::fs::metadata(dir.join("transcript.ndjson")).map_or(0, |m| m.len());
        mid_checkpoint |= state["transcript"]["bytes"]
            .as_u64()
            .is_some_and(|mark| mark < transcript_len);
        let current = &state["current"];
        let Some(execution) = current["execution_id"].as_str() else {
            continue;
        };
        let record_path = dir.join("executions").join(format!("{execution}.json"));
        let record = match read_json(&record_path) {
            Ok(record) => record,
            Err(e) => {
                moment.unreadable.push(e);
                continue;
            }
        };
        let terminal = record.as_ref().is_some_and(|r| is_terminal(&r["status"]));
        if !terminal
            && record
                .as_ref()
                .and_then(|r| r["attempts"].as_u64())
                .is_some_and(|a| a >= MAX_ATTEMPTS)
        {
            moment.at_limit.push(record_path);
        }
        // The record names the worker that last started or resumed the execution. One
        // without a record yet was just begun (state.json first, then the record).
        let mine = record
            .as_ref()
            .is_none_or(|r| r["worker"]["pid"].as_u64() == Some(u64::from(pid)));
        if !mine {
            continue;
        }
        moment.mid_checkpoint |= mid_checkpoint;
        moment.mid_write |= mid_write;
        if terminal {
            let message = current["message_id"].as_str().unwrap_or("-");
            if inbox_entries(&dir).iter().any(|n| n.contains(message)) {
                moment.settling = true;
            }
            continue;
        }
        moment.running += 1;
        if current["open_step"]["tool_started"].is_string() {
            moment.mid_tool = true;
        } else {
            match last.as_deref() {
                Some("agent.step.started" | "agent.stream.chunk") => moment.mid_stream = true,
                Some("agent.tool.started") => moment.mid_tool = true,
                _ => moment.between_steps = true,
            }
        }
    }
    moment
}

/// Tool calls against their side effects in one session: each message called exactly
/// its own marks, once each; a call that settled successfully left its line exactly
/// once; a call answered "interrupted" (its worker died while it ran) left it at most
/// once; no line belongs to a call the transcript does not have.
fn audit_effects(env: &TestEnv, id: &str, sent: &[Sent], tally: &mut Tally) {
    let dir = env.session_dir(id);
    let transcript = read_ndjson(&dir.join("transcript.ndjson"));
    let state = read_json(&dir.join("state.json")).ok().flatten();
    let file_len = std::fs::metadata(dir.join("transcript.ndjson")).map_or(0, |m| m.len());
    let mark = state
        .as_ref()
        .and_then(|s| s["transcript"]["bytes"].as_u64());
    if mark != Some(file_len) {
        tally.problem(format!(
            "session {id}: the transcript is {file_len} bytes, state.json marks {mark:?}"
        ));
    }
    let effects =
        std::fs::read_to_string(dir.join("workspace").join("effects.log")).unwrap_or_default();
    audit_tool_calls(id, &transcript, &effects, sent, tally);
}

/// [`audit_effects`] of a session read from any store: its transcript, and the lines
/// its tool calls left (`effects`).
fn audit_tool_calls(
    id: &str,
    transcript: &Ndjson,
    effects: &str,
    sent: &[Sent],
    tally: &mut Tally,
) {
    tally.unparsable += transcript.unparsable.len() as u64 + u64::from(transcript.torn);
    for line in &transcript.unparsable {
        tally.problem(format!("session {id}: unparsable transcript line {line}"));
    }

    let index: HashMap<&str, usize> = sent
        .iter()
        .enumerate()
        .map(|(k, s)| (s.id.as_str(), k))
        .collect();
    let mut message_of_execution: HashMap<String, usize> = HashMap::new();
    let mut user_lines = vec![0u64; sent.len()];
    let mut calls: Vec<(usize, String, String)> = Vec::new();
    let mut results: HashMap<String, (bool, String)> = HashMap::new();
    for line in &transcript.values {
        let execution = line["execution_id"].as_str().unwrap_or("").to_owned();
        match line["role"].as_str() {
            Some("user") => {
                let Some(&k) = line["message_id"].as_str().and_then(|m| index.get(m)) else {
                    tally.problem(format!(
                        "session {id}: a user line of no sent message: {line}"
                    ));
                    continue;
                };
                user_lines[k] += 1;
                message_of_execution.insert(execution, k);
            }
            Some("assistant") => {
                let k = message_of_execution
                    .get(&execution)
                    .copied()
                    .unwrap_or(usize::MAX);
                for call in line["tool_calls"].as_array().into_iter().flatten() {
                    calls.push((
                        k,
                        call["id"].as_str().unwrap_or("").to_owned(),
                        call["arguments"]["mark"].as_str().unwrap_or("").to_owned(),
                    ));
                }
            }
            Some("tool") => {
                let call = line["tool_call_id"].as_str().unwrap_or("").to_owned();
                let result = (
                    line["is_error"] == true,
                    line["content"].as_str().unwrap_or("").to_owned(),
                );
                if results.insert(call.clone(), result).is_some() {
                    tally.problem(format!("session {id}: call {call} answered twice"));
                }
            }
            _ => tally.problem(format!(
                "session {id}: a transcript line without a role: {line}"
            )),
        }
    }
    for (k, n) in user_lines.iter().enumerate() {
        if *n != 1 {
            tally.problem(format!(
                "session {id}: message {k} is {n} times in the transcript"
            ));
        }
    }
    for k in 0..sent.len() {
        let called: Vec<&str> = calls
            .iter()
            .filter(|(m, _, _)| *m == k)
            .map(|(_, _, mark)| mark.as_str())
            .collect();
        if called != marks(k) {
            let own = marks(k);
            tally.extra_calls += called
                .iter()
                .filter(|m| !own.iter().any(|o| o == *m))
                .count() as u64;
            tally.flagged.push((id.to_owned(), k));
            tally.problem(format!(
                "session {id}: message {k} called {called:?}, its script says {:?}",
                marks(k)
            ));
        }
    }

    let mut count: HashMap<String, u64> = HashMap::new();
    let mut partial = 0u64;
    for line in effects.lines() {
        match serde_json::from_str::<Value>(line)
            .ok()
            .and_then(|v| v["mark"].as_str().map(str::to_owned))
        {
            Some(mark) => *count.entry(mark).or_default() += 1,
            // A worker killed while feeding the command its input: cut short.
            None => partial += 1,
        }
    }
    let mut interrupted = 0u64;
    for (k, call, mark) in &calls {
        let n = count.get(mark).copied().unwrap_or(0);
        if n > 1 {
            tally.rerun_tools += n - 1;
            tally.flagged.push((id.to_owned(), *k));
            tally.problem(format!(
                "session {id}: the call for {mark} took effect {n} times"
            ));
        }
        match results.get(call) {
            Some((false, _)) if n == 0 => {
                tally.missing_effects += 1;
                tally.flagged.push((id.to_owned(), *k));
                tally.problem(format!(
                    "session {id}: the call for {mark} settled as run, but left no effect"
                ));
            }
            Some((false, _)) => {}
            Some((true, content)) if content.starts_with("interrupted") => interrupted += 1,
            Some((true, content)) => {
                tally.problem(format!(
                    "session {id}: the call for {mark} failed: {content}"
                ));
            }
            None => tally.problem(format!("session {id}: the call for {mark} has no result")),
        }
    }
    tally.interrupted_tools += interrupted;
    let called: HashSet<&str> = calls.iter().map(|(_, _, m)| m.as_str()).collect();
    for mark in count.keys() {
        if !called.contains(mark.as_str()) {
            tally.problem(format!(
                "session {id}: {mark} took effect without a call in the transcript"
            ));
        }
    }
    if partial > interrupted {
        tally.problem(format!(
            "session {id}: {partial} cut-off effect lines, but only {interrupted} interrupted calls"
        ));
    }
}

#[test]
fn kill_9_at_random_moments_loses_duplicates_and_reruns_nothing() {
    let iterations = env_number("FAULT_ITERATIONS").unwrap_or(100);
    let seed = env_number("FAULT_SEED").unwrap_or_else(fresh_seed);
    println!(
        "FAULT-SUITE-SEED kill9 seed={seed} iterations={iterations} (replay: FAULT_SEED={seed} FAULT_ITERATIONS={iterations})"
    );
    let mut rng = Rng::new(seed);
    let started = Instant::now();
    let env = TestEnv::new();
    // Enough script for a session that keeps getting messages for the whole run.
    let most = FIRST_MESSAGES.max(iterations as usize * 2 / KILL_SESSIONS);
    env.write_agent("effects", &effects_agent(most));
    let ids: Vec<String> = (0..KILL_SESSIONS)
        .map(|_| env.new_session("effects"))
        .collect();
    let mut sent: Vec<Vec<Sent>> = vec![Vec::new(); KILL_SESSIONS];
    let send = |i: usize, sent: &mut Vec<Vec<Sent>>| {
        let text = format!("message {} of session {i}", sent[i].len());
        let id = env.send(&ids[i], &text);
        sent[i].push(Sent { id, text });
    };
    for _ in 0..FIRST_MESSAGES {
        for i in 0..KILL_SESSIONS {
            send(i, &mut sent);
        }
    }
    let top_up = |sent: &mut Vec<Vec<Sent>>| {
        for i in 0..KILL_SESSIONS {
            let queued = inbox_entries(&env.session_dir(&ids[i])).len();
            if queued < BACKLOG && sent[i].len() < most {
                send(i, sent);
            }
        }
    };

    let mut kills = Kills::default();
    let mut known_temps = HashSet::new();
    let mut worker_problems = Vec::new();
    let mut iteration_of: HashMap<u64, u64> = HashMap::new();
    for iteration in 0..iterations {
        // Every fourth round the messages are queued while the worker runs.
        let racing_sends = iteration % 4 == 3;
        if !racing_sends {
            top_up(&mut sent);
        }
        let born = Instant::now();
        let worker = env.spawn_worker(&["--concurrency", "3"]);
        let pid = worker.child.id();
        iteration_of.insert(u64::from(pid), iteration);
        if racing_sends {
            top_up(&mut sent);
        }
        // One kill in five lands during start-up and recovery, the rest mid-work.
        let delay = if rng.between(0, 4) == 0 {
            rng.between(0, 40)
        } else {
            rng.between(40, 350)
        };
        if let Some(left) = Duration::from_millis(delay).checked_sub(born.elapsed()) {
            std::thread::sleep(left);
        }
        // Stopped first, so the files can be read exactly as the kill leaves them.
        let mut moment;
        loop {
            signal(pid, libc::SIGSTOP);
            wait_stopped(pid);
            moment = inspect(&env, &ids, pid, &mut known_temps);
            if moment.at_limit.is_empty() {
                break;
            }
            // A fourth start would fail the execution by design (too_many_attempts);
            // this scenario is about crashes, not that limit: let it settle first.
            kills.deferred += 1;
            signal(pid, libc::SIGCONT);
            let at_limit = std::mem::take(&mut moment.at_limit);
            wait_until("an execution at its last attempt to settle", LONG, || {
                at_limit.iter().all(|record| {
                    read_json(record)
                        .ok()
                        .flatten()
                        .is_some_and(|r| is_terminal(&r["status"]))
                })
            });
        }
        signal(pid, libc::SIGKILL);
        let out = worker.wait(LONG);
        kills.total += 1;
        if out.status.signal() != Some(libc::SIGKILL) {
            kills.exited += 1;
            worker_problems.push(format!(
                "iteration {iteration}: the worker exited by itself:\n{}",
                describe(&out)
            ));
        }
        if stderr(&out).contains("panicked") {
            worker_problems.push(format!("iteration {iteration}: {}", describe(&out)));
        }
        worker_problems.extend(
            moment
                .unreadable
                .iter()
                .map(|e| format!("iteration {iteration}, at the kill: {e}")),
        );
        let interrupted = moment.running > 0 || moment.settling;
        kills.interrupted += u64::from(interrupted);
        kills.mid_stream += u64::from(moment.mid_stream);
        kills.mid_tool += u64::from(moment.mid_tool);
        kills.between_steps += u64::from(moment.between_steps);
        kills.settling += u64::from(moment.settling);
        kills.mid_write += u64::from(moment.mid_write);
        kills.mid_checkpoint += u64::from(moment.mid_checkpoint);
    }
    let killing = started.elapsed();

    // A clean worker drains everything that is left.
    let out = env.run(&["worker", "--once", "--concurrency", "5"]);
    if code(&out) != 0 || stderr(&out).contains("panicked") {
        worker_problems.push(format!("the final worker --once:\n{}", describe(&out)));
    }

    let mut tally = Tally::default();
    for (i, id) in ids.iter().enumerate() {
        audit_log(
            &env,
            id,
            &sent[i],
            &|text| format!("done: {text}"),
            &mut tally,
        );
        audit_effects(&env, id, &sent[i], &mut tally);
        if env.pending(id) != 0 {
            tally.problem(format!(
                "session {id}: messages still pending after the drain"
            ));
        }
    }
    let files = check_files(env.home());
    tally.unparsable += (files.unparsable.len() + files.torn.len()) as u64;
    report(
        "kill9",
        &[
            ("seed", seed),
            ("iterations", iterations),
            ("kills", kills.total),
            ("interrupted", kills.interrupted),
            ("mid_stream", kills.mid_stream),
            ("mid_tool", kills.mid_tool),
            ("between_steps", kills.between_steps),
            ("settling", kills.settling),
            ("mid_write", kills.mid_write),
            ("mid_checkpoint", kills.mid_checkpoint),
            ("deferred", kills.deferred),
            ("json_files", files.json_files),
            ("temp_leftovers", files.temp_leftovers),
            ("killing_ms", killing.as_millis() as u64),
            ("total_ms", started.elapsed().as_millis() as u64),
        ]
        .into_iter()
        .chain(tally.counts())
        .collect::<Vec<_>>(),
    );

    // Which kills the messages behind a problem lived through.
    let mut replay = format!("replay with FAULT_SEED={seed} FAULT_ITERATIONS={iterations}");
    // The first message of a session to go wrong is where to look: a step taken out of
    // turn shifts the script for every later message of that session.
    let mut flagged: BTreeMap<&str, usize> = BTreeMap::new();
    for (session, k) in &tally.flagged {
        let first = flagged.entry(session.as_str()).or_insert(*k);
        *first = (*first).min(*k);
    }
    for (session, k) in flagged {
        let i = ids
            .iter()
            .position(|id| id == session)
            .expect("a session of this test");
        let message = &sent[i][k].id;
        let runs: Vec<String> = events_of(&env, session, "execution.started")
            .iter()
            .filter(|e| e["payload"]["message_id"] == message.as_str())
            .map(|e| {
                let pid = e["payload"]["worker"]["pid"].as_u64().unwrap_or(0);
                iteration_of
                    .get(&pid)
                    .map_or("the final drain".to_owned(), |n| format!("iteration {n}"))
            })
            .collect();
        let line = format!(
            "session {i} message {k} ({message}) ran in {}",
            runs.join(", ")
        );
        println!("FAULT-SUITE-REPRO seed={seed} {line}");
        let _ = write!(replay, "\n  {line}");
    }
    assert!(
        worker_problems.is_empty(),
        "{replay}: {}",
        worker_problems.join("\n")
    );
    assert!(
        tally.problems.is_empty(),
        "{replay}: {} problems:\n{}",
        tally.problems.len(),
        tally.problems.join("\n")
    );
    assert!(
        files.unparsable.is_empty() && files.torn.is_empty() && files.corrupt_aside.is_empty(),
        "{replay}: unparsable {:?}, torn {:?}, moved aside {:?}",
        files.unparsable,
        files.torn,
        files.corrupt_aside
    );
    assert_eq!(tally.completed, tally.messages, "{replay}");
    // The schedule must actually hit executions, not idle workers.
    assert!(
        kills.interrupted * 2 >= kills.total,
        "{replay}: only {} of {} kills interrupted an execution",
        kills.interrupted,
        kills.total
    );
    assert!(
        tally.messages >= (KILL_SESSIONS * FIRST_MESSAGES) as u64,
        "{replay}"
    );
}

/// Answers at once; a second model call (which must not happen for one message)
/// would run a side-effecting tool and answer differently.
const ANSWER_ONCE_AGENT: &str = r#"
name = "once"
[model]
provider = "scripted"
[[model.script]]
text = "the answer"
[[model.script]]
text = "asked again"
tool_calls = [{ name = "effect", arguments = { mark = "after-the-answer" } }]
[[model.script]]
text = "a second answer"
[[tools.command]]
name = "effect"
argv = ["sh", "-c", 'line=$(cat); printf "%s\n" "$line" >> effects.log']
"#;

/// The window the kill test found: the final answer is checkpointed (transcript,
/// `state.json` with the step closed), then the worker dies before the execution
/// record is settled. The files are put back exactly as such a kill leaves them; the
/// next worker must settle the execution with that answer, without another model call.
#[test]
fn a_worker_killed_after_the_final_answer_checkpoint_is_not_asked_again() {
    let env = TestEnv::new();
    env.write_agent("once", ANSWER_ONCE_AGENT);
    let id = env.new_session("once");
    let dir = env.session_dir(&id);
    let message = env.send(&id, "answer once");
    let meta = std::fs::read(dir.join("session.json")).unwrap();
    let entry_name = inbox_entries(&dir).remove(0);
    let entry = std::fs::read(dir.join("inbox").join(&entry_name)).unwrap();
    worker_once_log(&env);
    let state = std::fs::read(dir.join("state.json")).unwrap();

    // The record as it was while running, the log up to the last step, the session
    // totals not yet added, the entry still queued; transcript and state.json as settled.
    let record_path = std::fs::read_dir(dir.join("executions"))
        .unwrap()
        .flatten()
        .next()
        .expect("the record")
        .path();
    let mut record = read_json(&record_path).unwrap().unwrap();
    for key in [
        "stop_reason",
        "finished_at",
        "duration_ms",
        "response",
        "exit_code",
        "cost_usd",
    ] {
        record[key] = Value::Null;
    }
    record["status"] = json!("running");
    record["steps"] = json!(0);
    record["usage"] = json!({"input": 0, "output": 0, "total": 0});
    std::fs::write(&record_path, serde_json::to_vec_pretty(&record).unwrap()).unwrap();
    let events = std::fs::read_to_string(dir.join("events.ndjson")).unwrap();
    // The settling events (the answer, the last status, `execution.finished`) are
    // not written yet.
    let mut kept = String::new();
    for line in events.lines() {
        let event: Value = serde_json::from_str(line).unwrap();
        let settling = event["type"] == "agent.message.completed"
            || event["type"] == "execution.finished"
            || (event["type"] == "agent.status" && event["payload"]["status"] == "completed");
        if settling {
            break;
        }
        kept.push_str(line);
        kept.push('\n');
    }
    std::fs::write(dir.join("events.ndjson"), kept).unwrap();
    std::fs::write(dir.join("session.json"), &meta).unwrap();
    std::fs::write(dir.join("inbox").join(&entry_name), &entry).unwrap();
    assert_eq!(std::fs::read(dir.join("state.json")).unwrap(), state);

    let log = worker_once_log(&env);
    assert_eq!(
        finishes(&env, &id),
        vec![("completed".to_owned(), message)],
        "{log}"
    );
    let answers: Vec<Value> = events_of(&env, &id, "agent.message.completed")
        .iter()
        .map(|e| e["payload"]["response"].clone())
        .collect();
    assert_eq!(answers, vec![json!("the answer")], "answered once:\n{log}");
    assert!(
        !dir.join("workspace").join("effects.log").exists(),
        "a tool ran after the message was answered"
    );
    let state = read_json(&dir.join("state.json")).unwrap().unwrap();
    assert_eq!(
        state["model_calls"], 1,
        "the model was called again: {state}"
    );
    assert_gapless(&env, &id);
    report("answer_checkpoint_crash", &[("cases", 1)]);
}

// ---------------------------------------------------------------------------------
// Workers racing over one home

const RACE_SESSIONS: usize = 100;
const RACE_MESSAGES: usize = 10;
/// Of each session's messages, this many are queued while the workers run.
const RACE_LATE: usize = 2;
const RACE_WORKERS: usize = 4;

/// Sends `messages` (session index, message number) from `threads` threads, each
/// keeping its sessions' messages in order; returns what each session got.
fn send_all(
    env: &TestEnv,
    ids: &[String],
    numbers: std::ops::Range<usize>,
    threads: usize,
) -> Vec<Vec<Sent>> {
    let chunks: Vec<Vec<usize>> = (0..threads)
        .map(|t| (0..ids.len()).filter(|i| i % threads == t).collect())
        .collect();
    let mut sent = vec![Vec::new(); ids.len()];
    std::thread::scope(|scope| {
        let handles: Vec<_> = chunks
            .iter()
            .map(|chunk| {
                let numbers = numbers.clone();
                scope.spawn(move || {
                    let mut mine = Vec::new();
                    for k in numbers {
                        for &i in chunk {
                            let text = format!("s{i}-m{k}");
                            let id = env.send(&ids[i], &text);
                            mine.push((i, Sent { id, text }));
                        }
                    }
                    mine
                })
            })
            .collect();
        for handle in handles {
            for (i, message) in handle.join().expect("sender thread") {
                sent[i].push(message);
            }
        }
    });
    sent
}

/// One owner at a time, with no crash to resume from: each execution's events form one
/// block, started once (attempt 1). Collects the pids of the workers that ran them.
fn audit_one_owner_at_a_time(id: &str, log: &Ndjson, pids: &mut BTreeSet<u64>, tally: &mut Tally) {
    let mut done: HashSet<&str> = HashSet::new();
    let mut current: Option<&str> = None;
    for event in &log.values {
        let Some(execution) = event["execution_id"].as_str() else {
            continue;
        };
        if current != Some(execution) {
            if done.contains(execution) || current.is_some() {
                tally.problem(format!(
                    "session {id}: events of execution {execution} interleave with another's"
                ));
            }
            current = Some(execution);
        }
        match event["type"].as_str() {
            Some("execution.started") => {
                pids.insert(event["payload"]["worker"]["pid"].as_u64().unwrap_or(0));
                if event["payload"]["attempt"] != 1 {
                    tally.problem(format!("session {id}: a restarted execution: {event}"));
                }
            }
            Some("execution.finished") => {
                done.insert(execution);
                current = None;
            }
            _ => {}
        }
    }
}

#[test]
fn four_workers_racing_over_100_sessions_run_every_message_once_in_order() {
    let started = Instant::now();
    let env = TestEnv::new();
    env.write_agent("fast", FAST_AGENT);
    let ids: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                scope.spawn(|| {
                    (0..RACE_SESSIONS / 4)
                        .map(|_| env.new_session("fast"))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("session thread"))
            .collect()
    });
    let mut sent = send_all(&env, &ids, 0..RACE_MESSAGES - RACE_LATE, 4);
    let queued = started.elapsed();

    let logs = tempfile::tempdir().expect("log dir");
    let racing = Instant::now();
    let mut workers: Vec<Logged> = (0..RACE_WORKERS)
        .map(|w| {
            Logged::spawn(
                &env,
                &["worker", "--concurrency", "2"],
                logs.path().join(format!("worker-{w}.log")),
            )
        })
        .collect();
    // The rest is queued while the workers run.
    let late = send_all(&env, &ids, RACE_MESSAGES - RACE_LATE..RACE_MESSAGES, 2);
    for (all, more) in sent.iter_mut().zip(late) {
        all.extend(more);
    }
    let dirs: Vec<PathBuf> = ids.iter().map(|id| env.session_dir(id)).collect();
    wait_until(
        "every inbox to be drained",
        Duration::from_secs(300),
        || dirs.iter().all(|d| inbox_entries(d).is_empty()),
    );
    let drained = racing.elapsed();
    let mut worker_logs = Vec::new();
    for worker in &mut workers {
        signal(worker.child.id(), libc::SIGTERM);
    }
    for worker in &mut workers {
        let (status, log) = worker.wait(LONG);
        worker_logs.push((status, log));
    }

    let mut tally = Tally::default();
    let mut pids = BTreeSet::new();
    for (i, id) in ids.iter().enumerate() {
        audit_log(
            &env,
            id,
            &sent[i],
            &|text| format!("echo: {text}"),
            &mut tally,
        );
        let log = read_ndjson(&env.session_dir(id).join("events.ndjson"));
        audit_one_owner_at_a_time(id, &log, &mut pids, &mut tally);
    }
    let files = check_files(env.home());
    tally.unparsable += (files.unparsable.len() + files.torn.len()) as u64;
    report(
        "race",
        &[
            ("workers", RACE_WORKERS as u64),
            ("sessions", RACE_SESSIONS as u64),
            ("workers_that_ran", pids.len() as u64),
            ("messages", tally.messages),
            ("completed", tally.completed),
            ("duplicates", tally.duplicates),
            ("losses", tally.losses),
            ("not_completed", tally.not_completed),
            ("out_of_order", tally.out_of_order),
            ("seq_gaps", tally.seq_gaps),
            ("unparsable", tally.unparsable),
            ("problems", tally.problems.len() as u64),
            ("queue_ms", queued.as_millis() as u64),
            ("drain_ms", drained.as_millis() as u64),
            ("total_ms", started.elapsed().as_millis() as u64),
        ],
    );

    for (status, log) in &worker_logs {
        assert_eq!(status.code(), Some(0), "a worker's exit:\n{log}");
        assert!(
            !log.contains(" ERROR ") && !log.contains("panicked"),
            "a worker's log:\n{log}"
        );
    }
    assert!(
        tally.problems.is_empty(),
        "{} problems:\n{}",
        tally.problems.len(),
        tally.problems.join("\n")
    );
    assert!(
        files.unparsable.is_empty() && files.torn.is_empty(),
        "{:?} {:?}",
        files.unparsable,
        files.torn
    );
    assert_eq!(tally.messages, (RACE_SESSIONS * RACE_MESSAGES) as u64);
    assert_eq!(tally.completed, tally.messages);
    assert!(
        pids.len() >= 2,
        "the workers raced: executions ran in {pids:?}"
    );
}

// ---------------------------------------------------------------------------------
// The crash points of `send`

/// An inbox entry as `send` writes it, for the files a crashed `send` leaves behind.
fn entry_json(id: &str, seq: u64, content: &str) -> String {
    serde_json::to_string_pretty(&json!({
        "id": id,
        "seq": seq,
        "kind": "user",
        "content": content,
        "metadata": {},
        "created_at": "2026-11-21T06:00:00.000Z",
        "attempts": 0,
    }))
    .unwrap()
}

#[test]
fn temp_files_of_a_send_that_crashed_before_its_rename_are_ignored() {
    let env = TestEnv::new();
    env.write_agent("fast", FAST_AGENT);
    let id = env.new_session("fast");
    let real = env.send(&id, "the real one");
    let inbox = env.session_dir(&id).join("inbox");
    // A send killed mid-write leaves half a temp file; one killed just before its
    // rename leaves a whole one. Neither was ever acknowledged.
    let ghost_a = "01900000-0000-7000-8000-00000000000a";
    let ghost_b = "01900000-0000-7000-8000-00000000000b";
    let half = entry_json(ghost_a, 2, "half written");
    let partial = inbox.join(format!(".000000000002-{ghost_a}.json.tmp-4242-0"));
    std::fs::write(&partial, &half.as_bytes()[..half.len() / 2]).unwrap();
    let whole = inbox.join(format!(".000000000003-{ghost_b}.json.tmp-4242-1"));
    std::fs::write(&whole, entry_json(ghost_b, 3, "never renamed")).unwrap();
    let leftovers = [
        (partial.clone(), std::fs::read(&partial).unwrap()),
        (whole.clone(), std::fs::read(&whole).unwrap()),
    ];
    let mut cases = 0;

    // Nothing of them is visible: one message pending, in every listing.
    let listed = env.json(&["session", "list", "--json"]);
    assert_eq!(listed[0]["pending"], 1, "{listed}");
    assert_eq!(env.pending(&id), 1);
    cases += 1;

    // A later send numbers its message after the real one, not after the ghosts.
    let later = env.ok(&["send", &id, "the next one", "--json"]);
    let later: Value = serde_json::from_str(&later).unwrap();
    assert_eq!(later["seq"], 2, "{later}");
    cases += 1;

    let log = worker_once_log(&env);
    let done = finishes(&env, &id);
    let later_id = later["message_id"].as_str().unwrap();
    assert_eq!(
        done,
        vec![
            ("completed".to_owned(), real.clone()),
            ("completed".to_owned(), later_id.to_owned())
        ],
        "{log}"
    );
    for (path, bytes) in &leftovers {
        assert_eq!(
            std::fs::read(path).unwrap(),
            *bytes,
            "{} was touched",
            path.display()
        );
    }
    assert!(
        !log.contains("corrupt") && !log.contains(ghost_a) && !log.contains(ghost_b),
        "temp files are not entries, not even corrupt ones:\n{log}"
    );
    cases += 1;
    assert_eq!(env.pending(&id), 0);
    let again = worker_once_log(&env);
    assert_eq!(finishes(&env, &id).len(), 2, "{again}");
    assert_gapless(&env, &id);
    report("send_temp_file", &[("cases", cases)]);
}

/// Where a message of a session ran: the `message_seq` of its execution record.
fn seq_of(env: &TestEnv, id: &str, message: &str) -> u64 {
    std::fs::read_dir(env.session_dir(id).join("executions"))
        .unwrap()
        .flatten()
        .filter_map(|e| read_json(&e.path()).ok().flatten())
        .find(|r| r["message_id"] == message)
        .and_then(|r| r["message_seq"].as_u64())
        .expect("an execution record of the message")
}

#[test]
fn an_entry_renamed_into_the_inbox_without_its_marker_is_still_run() {
    let env = TestEnv::new();
    env.write_agent("fast", FAST_AGENT);
    let ready = env.home().join("sessions").join(".ready");
    let mut cases = 0;

    // The marker alone lost: everything else of the send was written.
    let a = env.new_session("fast");
    let first = env.send(&a, "marker lost");
    std::fs::remove_file(ready.join(&a)).unwrap();
    assert_eq!(env.pending(&a), 1, "listed as pending");
    let log = worker_once_log(&env);
    assert_eq!(
        finishes(&env, &a),
        vec![("completed".to_owned(), first.clone())],
        "{log}"
    );
    cases += 1;

    // The send killed right after its rename: no marker, and neither session.json
    // nor the log know of the message yet.
    let b = env.new_session("fast");
    let dir = env.session_dir(&b);
    let meta = std::fs::read(dir.join("session.json")).unwrap();
    let events = std::fs::read(dir.join("events.ndjson")).unwrap();
    let crashed = env.send(&b, "send crashed after the rename");
    std::fs::write(dir.join("session.json"), &meta).unwrap();
    std::fs::write(dir.join("events.ndjson"), &events).unwrap();
    std::fs::remove_file(ready.join(&b)).unwrap();
    assert_eq!(env.pending(&b), 1, "listed as pending");
    let log = worker_once_log(&env);
    assert_eq!(
        finishes(&env, &b),
        vec![("completed".to_owned(), crashed.clone())],
        "{log}"
    );
    cases += 1;

    // The next message of each goes after it, with a seq of its own.
    let next_a = env.send(&a, "next");
    let next_b = env.send(&b, "next");
    worker_once_log(&env);
    for (id, first, next) in [(&a, &first, &next_a), (&b, &crashed, &next_b)] {
        let done = finishes(&env, id);
        assert_eq!(
            done,
            vec![
                ("completed".to_owned(), first.clone()),
                ("completed".to_owned(), next.clone())
            ]
        );
        assert_gapless(&env, id);
        let show = env.json(&["session", "show", id, "--json"]);
        assert_eq!(show["session"]["counters"]["completed"], 2, "{show}");
        assert!(
            seq_of(&env, id, next) > seq_of(&env, id, first),
            "a message sent after another has a higher seq: {} then {}",
            seq_of(&env, id, first),
            seq_of(&env, id, next)
        );
    }
    cases += 2;
    report("send_marker_lost", &[("cases", cases)]);
}

#[test]
fn worker_once_runs_every_session_whose_marker_was_lost() {
    let env = TestEnv::new();
    env.write_agent("fast", FAST_AGENT);
    let ids: Vec<String> = (0..3).map(|_| env.new_session("fast")).collect();
    let messages: Vec<String> = ids.iter().map(|id| env.send(id, "unmarked")).collect();
    let ready = env.home().join("sessions").join(".ready");
    for id in &ids {
        std::fs::remove_file(ready.join(id)).unwrap();
    }
    // More unmarked sessions than --concurrency: the start-up scan finds them all, and
    // all of them must be run before `--once` exits.
    let log = worker_once_log(&env);
    for (id, message) in ids.iter().zip(&messages) {
        assert_eq!(
            finishes(&env, id),
            vec![("completed".to_owned(), message.clone())],
            "session {id}:\n{log}"
        );
    }
    report("send_markers_lost", &[("cases", 1)]);
}

#[test]
fn a_half_created_session_directory_is_invisible() {
    let env = TestEnv::new();
    env.write_agent("fast", FAST_AGENT);
    let real = env.new_session("fast");
    // A whole session moved to the staging name a crashed `session new` leaves, with a
    // queued message and a stale marker, and one that stopped after its first file.
    let ghost = env.new_session("fast");
    env.send(&ghost, "never to be seen");
    let sessions = env.home().join("sessions");
    std::fs::rename(
        sessions.join(&ghost),
        sessions.join(format!(".new-{ghost}")),
    )
    .unwrap();
    let barely = "01900000-0000-7000-8000-0000000000bb";
    std::fs::create_dir(sessions.join(format!(".new-{barely}"))).unwrap();
    std::fs::write(
        sessions.join(format!(".new-{barely}")).join("session.json"),
        b"{\"v\":1,",
    )
    .unwrap();
    let staged = |env: &TestEnv| {
        let mut all = snapshot(env.home());
        all.retain(|k, _| k.starts_with("sessions/.new-"));
        all
    };
    let before = staged(&env);
    let mut cases = 0;

    let listed = env.json(&["session", "list", "--json"]);
    let listed: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, vec![real.as_str()]);
    cases += 1;
    for args in [
        vec!["session", "show", ghost.as_str()],
        vec!["send", ghost.as_str(), "hello"],
        vec!["session", "show", barely],
    ] {
        let out = env.run(&args);
        assert_refused(&out, 2, &["no session"], &format!("{args:?}"));
        cases += 1;
    }
    // The two share a prefix (UUID v7 ids begin with the time); the staged one does
    // not make it ambiguous.
    let shared = real
        .chars()
        .zip(ghost.chars())
        .take_while(|(a, b)| a == b)
        .count();
    assert!(shared >= 4, "{real} {ghost}");
    let prefix = &real[..shared];
    let shown = env.json(&["session", "show", prefix, "--json"]);
    assert_eq!(shown["session"]["id"], real.as_str());
    cases += 1;

    let log = worker_once_log(&env);
    assert!(!log.contains(&ghost), "{log}");
    assert_eq!(
        staged(&env),
        before,
        "a worker left the staging directories alone"
    );
    assert!(
        !sessions.join(".ready").join(&ghost).exists(),
        "the stale marker is cleared"
    );
    cases += 1;
    report("session_half_created", &[("cases", cases)]);
}

// ---------------------------------------------------------------------------------
// Bad input: definitions

/// A valid definition of agent `bad`; cases replace one part of it.
const BAD_BASE: &str = r#"name = "bad"
[model]
provider = "scripted"
[[model.script]]
text = "fine"
"#;

#[test]
fn definitions_with_unknown_keys_or_wrong_types_are_refused_naming_the_key() {
    let env = TestEnv::new();
    let existing = env.new_session("echo");
    env.send(&existing, "queued before");
    let with = |extra: &str| format!("{BAD_BASE}{extra}");
    let cases: Vec<(String, &str, &str)> = vec![
        (
            with("[limits]\nmax_steps = \"ten\"\n"),
            "limits.max_steps",
            "found a string",
        ),
        (
            with("[limits]\ntimeout = 5\n"),
            "limits.timeout",
            "a duration",
        ),
        (
            with("[limits]\non_tool_error = \"explode\"\n"),
            "limits.on_tool_error",
            "one of continue, stop",
        ),
        (
            with("[limits]\nmax_consecutive_errors = 1.5\n"),
            "limits.max_consecutive_errors",
            "found a float",
        ),
        (
            BAD_BASE.replace("[model]", "limits = [1, 2]\n[model]"),
            "limits",
            "expected a table",
        ),
        (
            BAD_BASE.replace("provider = \"scripted\"", "provider = 5"),
            "model.provider",
            "expected a string",
        ),
        (
            BAD_BASE.replace("provider = \"scripted\"", "provider = \"gpt\""),
            "model.provider",
            "unknown provider",
        ),
        (
            BAD_BASE.replace("[[model.script]]", "temprature = 1.0\n[[model.script]]"),
            "model.temprature",
            "did you mean `temperature`",
        ),
        (
            BAD_BASE.replace(
                "text = \"fine\"",
                "text = \"fine\"\ntool_calls = [{ arguments = {} }]",
            ),
            "model.script[0].tool_calls[0].name",
            "missing",
        ),
        (
            BAD_BASE.replace("[[model.script]]\ntext = \"fine\"\n", "script = \"fine\"\n"),
            "model.script",
            "expected a list of tables",
        ),
        (
            BAD_BASE.replace("text = \"fine\"", "text = \"fine\"\nspeed = 3"),
            "model.script[0].speed",
            "unknown key",
        ),
        (
            with("[tools]\nbuiltin = \"read_file\"\n"),
            "tools.builtin",
            "expected a list of strings",
        ),
        (
            with("[tools]\nbuiltin = [\"rm_rf\"]\n"),
            "tools.builtin[0]",
            "unknown tool",
        ),
        (
            with("[[tools.command]]\nname = \"x\"\nargv = \"sh -c ls\"\n"),
            "tools.command[0].argv",
            "expected a list of strings",
        ),
        (
            with("[[tools.command]]\nname = \"x\"\nargv = []\n"),
            "tools.command[0].argv",
            "at least the program",
        ),
        (
            with("[[tools.command]]\nname = \"x\"\nargv = [\"ls\"]\nshell = true\n"),
            "tools.command[0].shell",
            "unknown key",
        ),
        (
            with("[[tools.command]]\nname = \"x\"\nargv = [\"ls\"]\ncwd = \"../up\"\n"),
            "tools.command[0].cwd",
            "without `..`",
        ),
        (
            with("[tools]\nworkspace = \"/etc\"\n"),
            "tools.workspace",
            "relative path",
        ),
        (
            with("[tools]\nworkspace = \"../outside\"\n"),
            "tools.workspace",
            "without `..`",
        ),
        (
            with("[tools]\nworkspace = \"sessions/other\"\n"),
            "tools.workspace",
            "agentq's own files",
        ),
        // NUL bytes cannot come through argv; they can through TOML escapes.
        (
            with("[tools]\nworkspace = \"ws\\u0000x\"\n"),
            "tools.workspace",
            "relative path",
        ),
        (
            BAD_BASE.replace("name = \"bad\"", "name = \"bad\\u0000\""),
            "name",
            "does not match the file name",
        ),
        (
            with("[[tools.command]]\nname = \"x\"\nargv = [\"ls\"]\ncwd = \"a\\u0000b\"\n"),
            "tools.command[0].cwd",
            "relative path",
        ),
        // What the model is sent as the function's parameters must be an object schema.
        (
            with(
                "[[tools.command]]\nname = \"x\"\nargv = [\"ls\"]\nparameters = { type = \"array\" }\n",
            ),
            "tools.command[0].parameters",
            "type = \"object\"",
        ),
        (
            with(
                "[[tools.command]]\nname = \"x\"\nargv = [\"ls\"]\nparameters = { properties = {} }\n",
            ),
            "tools.command[0].parameters",
            "type = \"object\"",
        ),
    ];
    let before = snapshot(env.home());
    for (toml, key, says) in &cases {
        env.write_agent("bad", toml);
        let what = format!("`{key}` in\n{toml}");
        let out = env.run(&["session", "new", "--agent", "bad"]);
        assert_refused(&out, 2, &["bad.toml", key, says], &what);
        let out = env.run(&["agents", "validate", "agents/bad.toml", "--json"]);
        assert_eq!(code(&out), 2, "{what}:\n{}", describe(&out));
        let report: Value = serde_json::from_slice(&out.stdout).expect("validate --json");
        let keys: Vec<&str> = report[0]["problems"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|p| p["key"].as_str())
            .collect();
        assert!(keys.contains(key), "{what}: validate lists {keys:?}");
    }
    // Overrides are checked like the file.
    let mut overrides = 0;
    for (set, says) in [
        ("tools.workspace=/etc", "relative path"),
        ("tools.workspace=../x", "without `..`"),
        ("limits.timeout=soon", "limits.timeout"),
        ("model.provider=nobody", "unknown provider"),
    ] {
        let out = env.run(&["session", "new", "--agent", "echo", "--set", set]);
        assert_refused(&out, 2, &["--set", says], set);
        overrides += 1;
    }
    std::fs::remove_file(env.home().join("agents/bad.toml")).unwrap();
    assert_unchanged("refused definitions", &before, &snapshot(env.home()));
    report(
        "bad_definitions",
        &[("cases", cases.len() as u64 + overrides)],
    );
}

#[test]
fn unreadable_definition_and_config_files_are_refused_naming_them() {
    let env = TestEnv::new();
    let id = env.new_session("echo");
    let mut cases = 0;

    let latin1 = b"name = \"latin\"\ndescription = \"caf\xe9\"\n[model]\nprovider = \"scripted\"\n";
    std::fs::write(env.home().join("agents/latin.toml"), latin1).unwrap();
    let before = snapshot(env.home());
    let out = env.run(&["session", "new", "--agent", "latin"]);
    assert_refused(&out, 2, &["latin.toml", "UTF-8"], "a definition in Latin-1");
    let out = env.run(&["agents", "validate", "agents/latin.toml"]);
    assert_eq!(code(&out), 2, "{}", describe(&out));
    assert!(stdout(&out).contains("latin.toml"), "{}", describe(&out));
    assert_unchanged("a Latin-1 definition", &before, &snapshot(env.home()));
    cases += 1;

    for (config, says) in [
        (&b"[inbox]\nmax_message_bytes = 10 # caf\xe9\n"[..], "UTF-8"),
        (&b"[inbox\nmax_message_bytes = 10\n"[..], "agentq.toml"),
        (&b"[inbox]\nmax_message_bytes = \"ten\"\n"[..], "\"ten\""),
        (&b"[inbox]\nmax_mesage_bytes = 10\n"[..], "max_mesage_bytes"),
    ] {
        std::fs::write(env.home().join("agentq.toml"), config).unwrap();
        let before = snapshot(env.home());
        let out = env.run(&["send", &id, "hello"]);
        let what = format!("agentq.toml {:?}", String::from_utf8_lossy(config));
        assert_refused(&out, 2, &["agentq.toml", says], &what);
        assert_unchanged(&what, &before, &snapshot(env.home()));
        cases += 1;
    }
    report("bad_config_files", &[("cases", cases)]);
}

#[test]
fn an_agent_gone_or_broken_after_its_session_was_made_fails_that_session_only() {
    let env = TestEnv::new();
    env.write_agent("fast", FAST_AGENT);
    env.write_agent("gone", &FAST_AGENT.replace("\"fast\"", "\"gone\""));
    env.write_agent("broken", &FAST_AGENT.replace("\"fast\"", "\"broken\""));
    let gone = env.new_session("gone");
    let broken = env.new_session("broken");
    let fine = env.new_session("fast");
    std::fs::remove_file(env.home().join("agents/gone.toml")).unwrap();
    env.write_agent("broken", "name = \"broken\"\n[model]\nprovider = 5\n");
    for id in [&gone, &broken, &fine] {
        env.send(id, "hello");
    }
    // An execution whose definition is gone or broken fails with exit 2, as the
    // command line that names such an agent does; the worker exits 2 with it.
    let log = worker_once_log_exiting(&env, 2);
    for (id, says) in [(&gone, "gone.toml"), (&broken, "model.provider")] {
        let done = events_of(&env, id, "execution.finished");
        assert_eq!(done.len(), 1, "{log}");
        let payload = &done[0]["payload"];
        assert_eq!(payload["status"], "failed", "{payload}");
        assert_eq!(payload["stop_reason"], "invalid_definition", "{payload}");
        assert_eq!(payload["exit_code"], 2, "{payload}");
        assert!(
            payload["error"].as_str().unwrap().contains(says),
            "{payload}"
        );
    }
    assert_eq!(
        finishes(&env, &fine),
        vec![(
            "completed".to_owned(),
            events_of(&env, &fine, "message.queued")[0]["payload"]["message_id"]
                .as_str()
                .unwrap()
                .to_owned()
        )]
    );
    report("agent_gone_later", &[("cases", 2)]);
}

// ---------------------------------------------------------------------------------
// Bad input: messages and ids

#[test]
fn message_files_that_are_empty_oversized_binary_or_not_utf8_are_refused() {
    let env = TestEnv::new();
    std::fs::write(
        env.home().join("agentq.toml"),
        "[inbox]\nmax_message_bytes = 64\n",
    )
    .unwrap();
    let id = env.new_session("echo");
    env.send(&id, "already queued");
    let files: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty.txt", Vec::new(), "empty"),
        ("blank.txt", b" \n\t\r\n  ".to_vec(), "empty"),
        ("big.txt", vec![b'a'; 65], "64 bytes"),
        ("latin1.txt", b"caf\xe9 cr\xe8me".to_vec(), "UTF-8"),
        (
            "image.png",
            b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x10".to_vec(),
            "UTF-8",
        ),
        ("utf16.txt", b"\xff\xfeh\0i\0".to_vec(), "UTF-8"),
        ("truncated.txt", b"caf\xc3".to_vec(), "UTF-8"),
    ];
    for (name, bytes, _) in &files {
        std::fs::write(env.home().join(name), bytes).unwrap();
    }
    let before = snapshot(env.home());
    for (name, _, says) in &files {
        let out = env.run(&["send", &id, "--file", name]);
        assert_refused(&out, 2, &[says], name);
    }
    assert_unchanged("refused message files", &before, &snapshot(env.home()));
    assert_eq!(env.pending(&id), 1);
    report("bad_message_files", &[("cases", files.len() as u64)]);
}

#[test]
fn a_message_with_nul_and_control_bytes_is_stored_and_answered_intact() {
    let env = TestEnv::new();
    env.write_agent("fast", FAST_AGENT);
    let id = env.new_session("fast");
    // Valid UTF-8, so `send` takes it: it is data, stored JSON-escaped.
    let text = "nul\0 bell\x07 esc\x1b[2J del\x7f c1\u{9b}31m end";
    std::fs::write(env.home().join("controls.txt"), text).unwrap();
    let message = env.ok(&["send", &id, "--file", "controls.txt"]);
    let message = message.trim();
    let entry = std::fs::read_dir(env.session_dir(&id).join("inbox"))
        .unwrap()
        .flatten()
        .next()
        .expect("the entry");
    let stored = std::fs::read(entry.path()).unwrap();
    assert!(
        !stored.iter().any(|b| *b < 0x20 && *b != b'\n'),
        "control bytes are escaped in the file"
    );
    let parsed = read_json(&entry.path()).unwrap().unwrap();
    assert_eq!(parsed["content"], text);

    worker_once_log(&env);
    let answers = events_of(&env, &id, "agent.message.completed");
    assert_eq!(answers[0]["payload"]["message_id"], message);
    assert_eq!(answers[0]["payload"]["response"], format!("echo: {text}"));
    let messages = env.json(&["session", "messages", &id, "--json"]);
    assert_eq!(messages[0]["content"], text);
    // Shown on a terminal, the control characters lose their power.
    let shown = env.ok(&["session", "messages", &id]);
    assert!(
        !shown
            .chars()
            .any(|c| c.is_control() && c != '\n' && c != '\t'),
        "{shown:?}"
    );
    let check = check_files(env.home());
    assert!(check.unparsable.is_empty(), "{:?}", check.unparsable);
    report("control_bytes_message", &[("cases", 1)]);
}

#[test]
fn ids_that_are_paths_are_refused_by_every_command_that_takes_one() {
    let env = TestEnv::new();
    let id = env.new_session("echo");
    env.send(&id, "queued");
    let before = snapshot(env.home());
    let mut cases = 0;
    // refusals.rs covers send, session show/rm/close, cancel and watch.
    for input in ["../x", "/etc/passwd", "sessions/../../x", "./..", "~root"] {
        for args in [
            vec!["session", "messages", input],
            vec!["session", "pause", input],
            vec!["session", "resume", input],
            vec!["retry", input],
            vec!["session", "show", input, "--json"],
        ] {
            let out = env.run(&args);
            assert_refused(&out, 2, &["is not a session id"], &format!("{args:?}"));
            cases += 1;
        }
        for args in [
            vec!["worker", "--once", "--session", input],
            vec!["run", "--agent", "echo", "--session", input, "hi"],
        ] {
            let out = env.spawn(&args).wait(LONG);
            assert_refused(&out, 2, &["is not a session id"], &format!("{args:?}"));
            cases += 1;
        }
    }
    assert_unchanged("ids that are paths", &before, &snapshot(env.home()));

    // Where a path-like string is data, it stays data.
    let outside = tempfile::tempdir().unwrap();
    let key = format!("../../../{}/key", outside.path().display());
    let first = env.ok(&["send", &id, "keyed", "--key", &key]);
    let again = env.ok(&["send", &id, "keyed again", "--key", &key]);
    assert_eq!(first, again, "the key works as a key");
    assert_eq!(
        std::fs::read_dir(outside.path()).unwrap().count(),
        0,
        "nothing written where the key points"
    );
    let keys: Vec<String> = std::fs::read_dir(env.session_dir(&id).join("keys"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        keys.len() == 1 && keys[0].bytes().all(|b| b.is_ascii_hexdigit()),
        "{keys:?}"
    );
    cases += 1;
    let titled = env.ok(&[
        "session",
        "new",
        "--agent",
        "echo",
        "--title",
        "../../etc/passwd",
    ]);
    let shown = env.json(&["session", "show", titled.trim(), "--json"]);
    assert_eq!(shown["session"]["title"], "../../etc/passwd");
    assert!(env.session_dir(titled.trim()).is_dir());
    cases += 1;
    report("path_ids", &[("cases", cases)]);
}

// ---------------------------------------------------------------------------------
// Bad input: damaged files in the home

/// Two sessions with a message pending each; `damage` breaks the first.
fn damaged_pair(env: &TestEnv) -> (String, String) {
    env.write_agent("fast", FAST_AGENT);
    let broken = env.new_session("fast");
    let fine = env.new_session("fast");
    env.send(&broken, "in the damaged session");
    env.send(&fine, "in the healthy session");
    (broken, fine)
}

fn moved_aside(dir: &Path, name: &str) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(&format!("{name}.corrupt-"))
        })
        .collect()
}

#[test]
fn a_corrupt_or_empty_session_json_is_reported_then_moved_aside_and_rebuilt() {
    let mut cases = 0;
    for damage in [&b"{\"v\":1,\"id\":"[..], b"", b"\0\0\0\0", b"[]"] {
        let env = TestEnv::new();
        let (broken, fine) = damaged_pair(&env);
        let meta = env.session_dir(&broken).join("session.json");
        std::fs::write(&meta, damage).unwrap();
        let what = format!("session.json {:?}", String::from_utf8_lossy(damage));

        // Commands that need the file fail naming it, and change nothing.
        let before = snapshot(env.home());
        for args in [
            vec!["session", "show", broken.as_str()],
            vec!["session", "pause", broken.as_str()],
            vec!["session", "close", broken.as_str()],
        ] {
            let out = env.run(&args);
            assert_refused(
                &out,
                1,
                &["session.json", "corrupt"],
                &format!("{what}: {args:?}"),
            );
        }
        let out = env.run(&["session", "list", "--json"]);
        assert_eq!(code(&out), 0, "{}", describe(&out));
        assert!(
            stderr(&out).contains("skipping session"),
            "{}",
            describe(&out)
        );
        let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
        assert_unchanged(&what, &before, &snapshot(env.home()));
        // `send` does not need it (issue 15): the message is queued, and run below.
        env.send(&broken, "queued while session.json is corrupt");

        // A worker moves it aside, says so naming it, rebuilds it, and goes on.
        let log = worker_once_log(&env);
        assert!(
            log.contains(&meta.display().to_string()) && log.contains("corrupt"),
            "{what}:\n{log}"
        );
        let aside = moved_aside(&env.session_dir(&broken), "session.json");
        assert_eq!(aside.len(), 1, "{what}");
        assert_eq!(std::fs::read(&aside[0]).unwrap(), damage, "kept as it was");
        let rebuilt = env.json(&["session", "show", &broken, "--json"]);
        assert_eq!(rebuilt["session"]["agent"], "fast", "{rebuilt}");
        assert_eq!(rebuilt["session"]["counters"]["completed"], 2, "{rebuilt}");
        for (id, sent) in [(&broken, 2), (&fine, 1)] {
            let done = finishes(&env, id);
            assert_eq!(done.len(), sent, "{what}: {log}");
            assert_eq!(done[0].0, "completed");
            assert_gapless(&env, id);
        }
        cases += 1;
    }
    report("corrupt_session_json", &[("cases", cases)]);
}

#[test]
fn a_corrupt_or_empty_state_json_is_moved_aside_and_rebuilt_from_the_logs() {
    let mut cases = 0;
    for damage in [&b"{\"v\":1,\"transcript\":"[..], b""] {
        let env = TestEnv::new();
        let (broken, fine) = damaged_pair(&env);
        // One message settled already: the rebuilt state must carry on after it.
        worker_once_log(&env);
        env.send(&broken, "after the damage");
        env.send(&fine, "after the damage");
        let state = env.session_dir(&broken).join("state.json");
        std::fs::write(&state, damage).unwrap();
        let what = format!("state.json {:?}", String::from_utf8_lossy(damage));

        let log = worker_once_log(&env);
        assert!(
            log.contains(&state.display().to_string()) && log.contains("corrupt"),
            "{what}:\n{log}"
        );
        assert_eq!(
            moved_aside(&env.session_dir(&broken), "state.json").len(),
            1
        );
        for id in [&broken, &fine] {
            let done = finishes(&env, id);
            assert_eq!(done.len(), 2, "{what}:\n{log}");
            assert!(done.iter().all(|(s, _)| s == "completed"), "{done:?}");
            assert_gapless(&env, id);
        }
        let messages = env.json(&["session", "messages", &broken, "--json"]);
        let users: Vec<&Value> = messages
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["role"] == "user")
            .collect();
        assert_eq!(
            users.len(),
            2,
            "each message once in the transcript: {messages}"
        );
        cases += 1;
    }
    report("corrupt_state_json", &[("cases", cases)]);
}

#[test]
fn a_corrupt_or_empty_inbox_entry_is_moved_aside_and_later_ones_still_run() {
    let mut cases = 0;
    for damage in [
        &b"{\"id\": 1"[..],
        b"",
        b"{\"id\":\"not-a-uuid\",\"seq\":1}",
    ] {
        let env = TestEnv::new();
        let (broken, fine) = damaged_pair(&env);
        let later = env.send(&broken, "queued after the damaged one");
        let inbox = env.session_dir(&broken).join("inbox");
        let first = inbox.join(inbox_entries(&env.session_dir(&broken))[0].clone());
        std::fs::write(&first, damage).unwrap();
        let what = format!("an inbox entry {:?}", String::from_utf8_lossy(damage));

        let log = worker_once_log(&env);
        assert!(
            log.contains(&first.display().to_string()) && log.contains("corrupt"),
            "{what}:\n{log}"
        );
        let name = first.file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(moved_aside(&inbox, &name).len(), 1, "{what}");
        assert_eq!(
            finishes(&env, &broken),
            vec![("completed".to_owned(), later.clone())],
            "{what}"
        );
        assert_eq!(finishes(&env, &fine).len(), 1);
        assert_eq!(env.pending(&broken), 0);
        // The damaged file is no longer an entry: a second worker leaves it be.
        let again = worker_once_log(&env);
        assert!(!again.contains("corrupt"), "{again}");
        cases += 1;
    }
    report("corrupt_inbox_entry", &[("cases", cases)]);
}

#[test]
fn a_corrupt_or_empty_execution_record_is_rebuilt_when_its_execution_resumes() {
    let mut cases = 0;
    for damage in [&b"{\"v\":1,\"status\":\"runn"[..], b""] {
        let env = TestEnv::new();
        env.write_agent("slow", SLOW_AGENT);
        env.write_agent("fast", FAST_AGENT);
        let id = env.new_session("slow");
        let fine = env.new_session("fast");
        let message = env.send(&id, "interrupted");
        let worker = env.spawn_worker(&[]);
        wait_until("a few chunks", LONG, || {
            events_of(&env, &id, "agent.stream.chunk").len() >= 2
        });
        worker.signal(9);
        let _ = worker.wait(LONG);
        env.send(&fine, "meanwhile");
        // A first attempt has no record yet (state.json names it); a damaged one is
        // what a power failure can leave of a record written when it resumed.
        let dir = env.session_dir(&id);
        let executions = dir.join("executions");
        let state = read_json(&dir.join("state.json"))
            .unwrap()
            .expect("the state");
        let exec_id = state["current"]["execution_id"].as_str().expect("named");
        let record = executions.join(format!("{exec_id}.json"));
        std::fs::write(&record, damage).unwrap();
        let what = format!("an execution record {:?}", String::from_utf8_lossy(damage));

        let log = worker_once_log(&env);
        assert!(
            log.contains(&record.display().to_string()) && log.contains("corrupt"),
            "{what}:\n{log}"
        );
        let name = record.file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(moved_aside(&executions, &name).len(), 1, "{what}");
        assert_eq!(
            finishes(&env, &id),
            vec![("completed".to_owned(), message.clone())],
            "{what}:\n{log}"
        );
        let rebuilt = read_json(&record).unwrap().expect("rebuilt");
        assert_eq!(rebuilt["status"], "completed");
        assert_eq!(finishes(&env, &fine).len(), 1);
        assert_gapless(&env, &id);
        cases += 1;
    }
    report("corrupt_execution_record", &[("cases", cases)]);
}

#[test]
fn logs_ending_mid_line_are_skipped_by_readers_and_repaired_by_the_next_writer() {
    use std::io::Write;
    let env = TestEnv::new();
    env.write_agent("fast", FAST_AGENT);
    let id = env.new_session("fast");
    env.send(&id, "first");
    worker_once_log(&env);
    let dir = env.session_dir(&id);
    let append = |name: &str, bytes: &[u8]| {
        std::fs::OpenOptions::new()
            .append(true)
            .open(dir.join(name))
            .unwrap()
            .write_all(bytes)
            .unwrap();
    };
    // What writers killed mid-append would leave.
    append(
        "events.ndjson",
        br#"{"v":1,"seq":99,"type":"agent.stream.ch"#,
    );
    append(
        "transcript.ndjson",
        br#"{"role":"assistant","content":"cut o"#,
    );
    let mut cases = 0;

    // Readers skip the torn lines.
    let shown = env.json(&["session", "show", &id, "--json"]);
    assert_eq!(shown["session"]["counters"]["completed"], 1, "{shown}");
    let messages = env.json(&["session", "messages", &id, "--json"]);
    assert_eq!(messages.as_array().unwrap().len(), 2, "{messages}");
    let out = env
        .spawn(&["watch", &id, "--json", "--from-start", "--exit-on-idle"])
        .wait(LONG);
    assert_eq!(code(&out), 0, "{}", describe(&out));
    let watched = stdout(&out);
    assert_eq!(watched.lines().count(), 11, "{watched}");
    assert!(
        watched
            .lines()
            .all(|l| serde_json::from_str::<Value>(l).is_ok()),
        "{watched}"
    );
    cases += 1;

    // The next appends cut them off (`send` the event log's, the worker the
    // transcript's), and both carry on gapless.
    let message = env.send(&id, "second");
    let log = worker_once_log(&env);
    for name in ["events.ndjson", "transcript.ndjson"] {
        let file = read_ndjson(&dir.join(name));
        assert!(
            file.unparsable.is_empty() && !file.torn,
            "{name}: {:?}",
            file.unparsable
        );
    }
    assert_gapless(&env, &id);
    let done = finishes(&env, &id);
    assert_eq!(done.len(), 2, "{log}");
    assert_eq!(done[1], ("completed".to_owned(), message));
    let answers = events_of(&env, &id, "agent.message.completed");
    assert_eq!(answers[1]["payload"]["response"], "echo: second");
    let messages = env.json(&["session", "messages", &id, "--json"]);
    assert_eq!(messages.as_array().unwrap().len(), 4, "{messages}");
    cases += 2;
    report("torn_logs", &[("cases", cases)]);
}

// ---------------------------------------------------------------------------------
// Bad input: what the model asks tools to do

#[test]
fn command_tool_arguments_with_shell_metacharacters_stay_plain_data() {
    let env = TestEnv::new();
    env.write_agent(
        "meta",
        r#"
name = "meta"
[model]
provider = "scripted"
[[model.script]]
text = "trying to reach a shell"
tool_calls = [
  { name = "echo_stdin", arguments = { "$(touch key1)" = "`touch value1`; touch value2 && touch value3 || touch value4 > value5", "newline" = "a\nb; touch value6", "glob" = "* ?" } },
  { name = "literal_argv", arguments = { "path" = "; touch value7" } },
  { name = "nul_argv", arguments = {} },
]
[[model.script]]
text = "stayed plain"
[limits]
max_consecutive_errors = 10
[[tools.command]]
name = "echo_stdin"
argv = ["cat"]
[[tools.command]]
name = "literal_argv"
argv = ["printf", "[%s]", "$HOME", "*", "$(touch argv1)", "{path}", ";", "|", "`touch argv2`"]
[[tools.command]]
name = "nul_argv"
argv = ["printf\u0000touch", "argv3"]
"#,
    );
    let id = env.new_session("meta");
    let ws = env.session_dir(&id).join("workspace");
    let before = snapshot(env.home());
    let out = env.run(&["run", "--session", &id, "go", "--json"]);
    assert_eq!(code(&out), 0, "{}", describe(&out));
    let tools: Vec<Value> = env.tool_messages(&id);
    let content = |i: usize| tools[i]["content"].as_str().unwrap().to_owned();
    let mut cases = 0;

    // The arguments arrive as JSON on standard input, byte for byte.
    let sent = json!({
        "$(touch key1)": "`touch value1`; touch value2 && touch value3 || touch value4 > value5",
        "newline": "a\nb; touch value6",
        "glob": "* ?",
    });
    assert_eq!(tools[0]["is_error"], false, "{}", content(0));
    let stdout_part = content(0);
    let echoed = stdout_part
        .split("--- stdout\n")
        .nth(1)
        .and_then(|s| s.lines().next())
        .unwrap_or_default()
        .to_owned();
    assert_eq!(
        serde_json::from_str::<Value>(&echoed).ok(),
        Some(sent),
        "{stdout_part}"
    );
    cases += 3;
    // The declared argv is passed as written: no expansion, no substitution.
    assert_eq!(tools[1]["is_error"], false, "{}", content(1));
    assert!(
        content(1).contains("[$HOME][*][$(touch argv1)][{path}][;][|][`touch argv2`]"),
        "{}",
        content(1)
    );
    cases += 1;
    // A NUL in the program name is a tool error, not a truncated program.
    assert_eq!(tools[2]["is_error"], true, "{}", content(2));
    assert!(content(2).contains("printf"), "{}", content(2));
    cases += 1;

    let mut created = BTreeSet::new();
    for dir in [ws.clone(), env.home().to_owned(), env.session_dir(&id)] {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("key") || name.starts_with("value") || name.starts_with("argv") {
                created.insert(entry.path());
            }
        }
    }
    assert!(created.is_empty(), "a shell ran: {created:?}");
    let after = snapshot(env.home());
    let new: Vec<&String> = after
        .keys()
        .filter(|k| !before.contains_key(*k))
        .filter(|k| !k.starts_with(&format!("sessions/{id}/")) && !k.starts_with("sessions/."))
        .collect();
    assert!(new.is_empty(), "{new:?}");
    report("shell_metacharacters", &[("cases", cases)]);
}

#[test]
fn a_workspace_that_is_a_symlink_out_of_bounds_is_refused() {
    let env = TestEnv::new();
    let outside = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink("agents", env.home().join("to-agents")).unwrap();
    std::os::unix::fs::symlink(outside.path(), env.home().join("to-outside")).unwrap();
    let mut cases = 0;
    for (name, link) in [("agentsws", "to-agents"), ("outsidews", "to-outside")] {
        env.write_agent(
            name,
            &format!(
                r#"
name = "{name}"
[model]
provider = "scripted"
[[model.script]]
text = "writing through the link"
tool_calls = [{{ name = "write_file", arguments = {{ path = "planted.toml", content = "name = \"planted\"" }} }}]
[[model.script]]
text = "done"
[tools]
builtin = ["write_file"]
workspace = "{link}"
"#
            ),
        );
        let id = env.new_session(name);
        let before_agents = snapshot(&env.home().join("agents"));
        let out = env.run(&["run", "--session", &id, "go", "--json"]);
        let result: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        // The execution fails before any model call, naming the workspace.
        assert_eq!(code(&out), 1, "{link}:\n{}", describe(&out));
        assert_eq!(result["status"], "failed", "{result}");
        assert_eq!(result["steps"], 0, "{result}");
        let error = result["error"].as_str().unwrap_or_default();
        assert!(
            error.contains(&format!("workspace `{link}`")) && error.contains("outside the home"),
            "{link}: {error}"
        );
        assert_unchanged(
            &format!("{link}: agents/"),
            &before_agents,
            &snapshot(&env.home().join("agents")),
        );
        assert!(
            !outside.path().join("planted.toml").exists(),
            "{link}: written outside the home"
        );
        cases += 1;
    }
    report("workspace_symlink", &[("cases", cases)]);
}

// ---------------------------------------------------------------------------------
// Power failures: what the worker fsyncs only once per drain, or at the next
// checkpoint, can come back older. Each test puts back what such a failure could
// leave (a file as it was before a write) and checks that nothing runs twice, no
// seq is handed out twice, and the totals come out right.

/// The one inbox entry of a session, as bytes, with its file name.
fn only_entry(env: &TestEnv, id: &str) -> (String, Vec<u8>) {
    let inbox = env.session_dir(id).join("inbox");
    let names = inbox_entries(&env.session_dir(id));
    assert_eq!(names.len(), 1, "{names:?}");
    let bytes = std::fs::read(inbox.join(&names[0])).unwrap();
    (names[0].clone(), bytes)
}

#[test]
fn an_entry_whose_removal_was_lost_is_removed_again_not_run_twice() {
    let env = TestEnv::new();
    env.write_agent("fast", FAST_AGENT);
    let id = env.new_session("fast");
    let first = env.send(&id, "first");
    let (name, bytes) = only_entry(&env, &id);
    worker_once_log(&env);
    let second = env.send(&id, "second");
    worker_once_log(&env);

    // The removal of the first entry did not reach the disk; the second message ran
    // after it, so the session has moved past its seq.
    let inbox = env.session_dir(&id).join("inbox");
    std::fs::write(inbox.join(&name), &bytes).unwrap();
    let log = worker_once_log(&env);

    assert!(log.contains("came back"), "{log}");
    assert!(inbox_entries(&env.session_dir(&id)).is_empty());
    let settled: Vec<String> = finishes(&env, &id).into_iter().map(|(_, m)| m).collect();
    assert_eq!(settled, vec![first, second], "each message once");
    let meta = read_json(&env.session_dir(&id).join("session.json"))
        .unwrap()
        .unwrap();
    assert_eq!(meta["counters"]["messages"], 2);
    assert_eq!(meta["counters"]["executions"], 2);
    assert_gapless(&env, &id);
}

#[test]
fn a_session_json_left_behind_the_records_is_recounted_and_its_seqs_not_reused() {
    let env = TestEnv::new();
    env.write_agent("fast", FAST_AGENT);
    let id = env.new_session("fast");
    let meta_path = env.session_dir(&id).join("session.json");
    env.send(&id, "first");
    worker_once_log(&env);
    let after_first = std::fs::read(&meta_path).unwrap();
    let second = env.send(&id, "second");
    worker_once_log(&env);
    let up_to_date = read_json(&meta_path).unwrap().unwrap();

    // The write of session.json for the second message was lost: it says one
    // message, seq 1, while the inbox is empty and the second record settled.
    std::fs::write(&meta_path, &after_first).unwrap();
    let third = env.send(&id, "third");
    assert_eq!(
        seq_of_queued(&env, &id, &third),
        seq_of(&env, &id, &second) + 1,
        "a seq above every message claimed"
    );
    let log = worker_once_log(&env);

    assert!(log.contains("recounted"), "{log}");
    let meta = read_json(&meta_path).unwrap().unwrap();
    assert_eq!(meta["counters"]["messages"], 3);
    assert_eq!(meta["counters"]["executions"], 3);
    assert_eq!(meta["counters"]["completed"], 3);
    let per_message = up_to_date["usage"]["total"].as_u64().unwrap() / 2;
    assert_eq!(meta["usage"]["total"].as_u64().unwrap(), 3 * per_message);
    assert_eq!(finishes(&env, &id).len(), 3);
    assert_gapless(&env, &id);
}

#[test]
fn a_state_json_emptied_by_a_power_failure_is_rebuilt_naming_the_last_settled_execution() {
    let env = TestEnv::new();
    env.write_agent("fast", FAST_AGENT);
    let id = env.new_session("fast");
    let dir = env.session_dir(&id);
    let first = env.send(&id, "first");
    let (name, bytes) = only_entry(&env, &id);
    worker_once_log(&env);
    let settled_lines = std::fs::read_to_string(dir.join("transcript.ndjson"))
        .unwrap()
        .lines()
        .count();

    // The next message's start reached the transcript but not its record, state.json
    // was emptied, and the first entry's removal was lost.
    let orphan = json!({
        "role": "user",
        "content": "a start whose record was lost",
        "message_id": "01a00000-0000-7000-8000-000000000001",
        "execution_id": "01a00000-0000-7000-8000-000000000002",
        "timestamp": "2026-11-21T06:00:00.000Z",
    });
    let mut transcript = std::fs::OpenOptions::new()
        .append(true)
        .open(dir.join("transcript.ndjson"))
        .unwrap();
    std::io::Write::write_all(&mut transcript, format!("{orphan}\n").as_bytes()).unwrap();
    std::fs::write(dir.join("state.json"), b"").unwrap();
    std::fs::write(dir.join("inbox").join(&name), &bytes).unwrap();
    let log = worker_once_log(&env);

    assert!(
        log.contains("state.json") && log.contains("moved it to"),
        "{log}"
    );
    let settled: Vec<String> = finishes(&env, &id).into_iter().map(|(_, m)| m).collect();
    assert_eq!(settled, vec![first], "not run again");
    let state = read_json(&dir.join("state.json")).unwrap().unwrap();
    assert_eq!(
        state["transcript"]["lines"].as_u64().unwrap() as usize,
        settled_lines,
        "the orphan start is not part of the history"
    );
    assert_eq!(state["current"]["message_seq"], 1);

    // The session carries on from the settled history.
    let next = env.send(&id, "next");
    worker_once_log(&env);
    assert_eq!(finishes(&env, &id).last().unwrap().1, next);
    let transcript = std::fs::read_to_string(dir.join("transcript.ndjson")).unwrap();
    assert!(!transcript.contains("a start whose record was lost"));
}

#[test]
fn a_state_json_left_behind_by_a_power_failure_rolls_forward_to_the_last_checkpoint() {
    let env = TestEnv::new();
    env.write_agent("fast", FAST_AGENT);
    let id = env.new_session("fast");
    let dir = env.session_dir(&id);
    let first = env.send(&id, "first");
    worker_once_log(&env);
    let behind = std::fs::read(dir.join("state.json")).unwrap();
    let second = env.send(&id, "second");
    worker_once_log(&env);

    // state.json is written without fsync after each checkpoint's transcript lines are
    // synced: a power failure can bring back an older version.
    std::fs::write(dir.join("state.json"), &behind).unwrap();
    let third = env.send(&id, "third");
    let log = worker_once_log(&env);

    assert!(log.contains("rolled forward"), "{log}");
    let settled: Vec<String> = finishes(&env, &id).into_iter().map(|(_, m)| m).collect();
    assert_eq!(
        settled,
        vec![first, second, third],
        "each message once, in order"
    );
    let messages = env.json(&["session", "messages", &id, "--json"]);
    let texts: Vec<&str> = messages
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    assert_eq!(
        texts,
        [
            "first",
            "echo: first",
            "second",
            "echo: second",
            "third",
            "echo: third"
        ],
        "the second exchange is kept, not cut off as unsettled"
    );
    let state = read_json(&dir.join("state.json")).unwrap().unwrap();
    let transcript = std::fs::read(dir.join("transcript.ndjson")).unwrap();
    assert_eq!(
        state["transcript"]["bytes"].as_u64().unwrap() as usize,
        transcript.len()
    );
    assert_gapless(&env, &id);
}

#[test]
fn a_corrupt_state_json_is_rebuilt_from_the_last_checkpoint_with_the_task_list() {
    let env = TestEnv::new();
    env.write_agent(
        "planner",
        r#"
name = "planner"
[model]
provider = "scripted"
[[model.script]]
text = "planning"
tool_calls = [{ name = "todo_write", arguments = { todos = [
  { content = "write the fix", status = "in_progress" },
  { content = "run the tests", status = "pending" },
] } }]
[[model.script]]
text = "planned"
[[model.script]]
text = "carrying on"
[tools]
builtin = ["todo_write"]
"#,
    );
    let id = env.new_session("planner");
    let dir = env.session_dir(&id);
    env.send(&id, "plan");
    worker_once_log(&env);
    let todos = env.json(&["session", "show", &id, "--json"])["todos"].clone();
    assert_eq!(todos.as_array().map(Vec::len), Some(2), "{todos}");

    std::fs::write(dir.join("state.json"), b"{\"v\":1,\"transc").unwrap();
    env.send(&id, "go on");
    let log = worker_once_log(&env);

    assert!(log.contains("corrupt"), "{log}");
    let show = env.json(&["session", "show", &id, "--json"]);
    assert_eq!(show["todos"], todos, "the task list survives the rebuild");
    let done = finishes(&env, &id);
    assert_eq!(done.len(), 2, "{done:?}");
    assert!(done.iter().all(|(s, _)| s == "completed"), "{done:?}");
    let last = env.json(&["session", "messages", &id, "--json"]);
    let last = last.as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        last["content"], "carrying on",
        "the model's script resumes where it was"
    );
}

/// The seq `send` gave a message, from its `message.queued` event.
fn seq_of_queued(env: &TestEnv, id: &str, message: &str) -> u64 {
    events_of(env, id, "message.queued")
        .iter()
        .find(|e| e["payload"]["message_id"] == message)
        .and_then(|e| e["payload"]["seq"].as_u64())
        .expect("a message.queued event")
}
