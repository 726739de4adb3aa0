//! Workers end to end (issue 5), through the real binary: sessions run in parallel but
//! each strictly in order; several worker processes share one home through the owner
//! lock, and a live worker takes over a session whose owner died; `--max-duration`,
//! `--max-workers` slots and the live-worker registry; crash-recovery attempts up to
//! `too_many_attempts`; pausing a running execution; `agentq retry`; corrupt
//! `session.json`, `state.json`, execution records and inbox entries moved aside; a full
//! or read-only disk; `--log-file`; a second signal. The fault-injection loops (random
//! kills, racing workers, send crash points, bad input) live in `faults.rs`.
//!
//! Timestamps in the event log are UTC with milliseconds in one fixed format, so they
//! compare as strings.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use super::*;

// ---------------------------------------------------------------------------------
// Agents

/// Streams twenty words 40 ms apart (about 0.8 s) for every message.
const SLOW_AGENT: &str = r#"
name = "slow"
[model]
provider = "scripted"
[[model.script]]
text = "{input}: a b c d e f g h i j k l m n o p q r s"
delay_ms = 40
"#;

/// Four slow steps (a tool call each, about 0.5 s of streaming each), then a quick
/// answer; later messages get the quick answer only.
const STEPPER_AGENT: &str = r#"
name = "stepper"
[model]
provider = "scripted"
[[model.script]]
text = "step one: a b c d e f g h"
delay_ms = 60
tool_calls = [{ name = "list_dir", arguments = { path = "." } }]
[[model.script]]
text = "step two: a b c d e f g h"
delay_ms = 60
tool_calls = [{ name = "list_dir", arguments = { path = "." } }]
[[model.script]]
text = "step three: a b c d e f g h"
delay_ms = 60
tool_calls = [{ name = "list_dir", arguments = { path = "." } }]
[[model.script]]
text = "step four: a b c d e f g h"
delay_ms = 60
tool_calls = [{ name = "list_dir", arguments = { path = "." } }]
[[model.script]]
text = "done: {input}"
[tools]
builtin = ["list_dir"]
"#;

/// The first model call fails for good (400), every later one answers.
const FRAGILE_AGENT: &str = r#"
name = "fragile"
[model]
provider = "scripted"
[[model.script]]
error = { status = 400, message = "injected bad request" }
[[model.script]]
text = "ok: {input}"
"#;

// ---------------------------------------------------------------------------------
// Helpers

fn started(env: &TestEnv, id: &str) -> Vec<Value> {
    env.payloads(id, "execution.started")
}

fn str_of(value: &Value) -> String {
    value
        .as_str()
        .unwrap_or_else(|| panic!("a string: {value}"))
        .to_owned()
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path:?} is not JSON ({e}): {text}"))
}

/// Every execution record of a session, oldest first.
fn executions(env: &TestEnv, id: &str) -> Vec<Value> {
    env.executions(id)
}

/// The execution `state.json` names as current.
fn running_in_state(env: &TestEnv, id: &str) -> Value {
    env.state(id)["current"].clone()
}

fn inbox_names(env: &TestEnv, id: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(env.session_dir(id).join("inbox"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// The user messages of the transcript, in order.
fn user_texts(env: &TestEnv, id: &str) -> Vec<String> {
    env.json(&["session", "messages", id, "--json"])
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["role"] == "user")
        .map(|l| str_of(&l["content"]))
        .collect()
}

/// Asserts a session ran one execution at a time: in its log every execution's events
/// sit between its `execution.started` and its `execution.finished`, with no other
/// execution's events in between. Returns `(started, finished)` timestamps per execution.
fn assert_strictly_serial(env: &TestEnv, id: &str) -> Vec<(String, String)> {
    let mut open: Option<(String, String)> = None;
    let mut spans = Vec::new();
    for event in env.events(id) {
        let Some(exec) = event["execution_id"].as_str() else {
            continue;
        };
        let at = str_of(&event["timestamp"]);
        match event["type"].as_str().unwrap() {
            "execution.started" => {
                assert!(
                    open.is_none(),
                    "session {id}: execution {exec} started while {open:?} was running"
                );
                open = Some((exec.to_owned(), at));
            }
            kind => {
                let Some((running, since)) = &open else {
                    panic!("session {id}: {kind} of {exec} outside any execution");
                };
                assert_eq!(running, exec, "session {id}: {kind} interleaved");
                if kind == "execution.finished" {
                    spans.push((since.clone(), at));
                    open = None;
                }
            }
        }
    }
    assert!(open.is_none(), "session {id}: an execution never finished");
    for pair in spans.windows(2) {
        assert!(pair[0].1 <= pair[1].0, "session {id}: overlapping {pair:?}");
    }
    spans
}

/// Checks that every `*.json` file under `root` parses and every complete line of every
/// `*.ndjson` file does. Returns the NDJSON files ending in an unterminated line (which
/// readers skip and the next writer cuts off).
fn check_files_parse(root: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, torn: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            let kind = entry.file_type().unwrap();
            let name = entry.file_name().to_string_lossy().into_owned();
            if kind.is_dir() {
                walk(&path, torn);
            } else if name.ends_with(".ndjson") {
                let bytes = std::fs::read(&path).unwrap();
                let text =
                    String::from_utf8(bytes).unwrap_or_else(|_| panic!("{path:?} is not UTF-8"));
                let mut lines: Vec<&str> = text.split_inclusive('\n').collect();
                if lines.last().is_some_and(|l| !l.ends_with('\n')) {
                    lines.pop();
                    torn.push(path.clone());
                }
                for line in lines {
                    serde_json::from_str::<Value>(line)
                        .unwrap_or_else(|e| panic!("{path:?}: a line is not JSON ({e}): {line}"));
                }
            } else if name.ends_with(".json") {
                read_json(&path);
            }
        }
    }
    let mut torn = Vec::new();
    walk(root, &mut torn);
    torn
}

fn assert_files_parse(root: &Path) {
    let torn = check_files_parse(root);
    assert!(torn.is_empty(), "unterminated last lines in {torn:?}");
}

/// The chunks streamed since the session's latest `execution.started`, and how many
/// executions were started.
fn chunks_of_latest_start(env: &TestEnv, id: &str) -> (usize, usize) {
    let events = env.events(id);
    let starts = events
        .iter()
        .filter(|e| e["type"] == "execution.started")
        .count();
    let since = events
        .iter()
        .rposition(|e| e["type"] == "execution.started")
        .map_or(events.len(), |i| i + 1);
    let chunks = events[since..]
        .iter()
        .filter(|e| e["type"] == "agent.stream.chunk")
        .count();
    (starts, chunks)
}

/// Processes whose command line contains `marker`, by pid.
fn pids_running(marker: &str) -> Vec<String> {
    let out = std::process::Command::new("pgrep")
        .args(["-f", marker])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Kills, by pid, the processes a test's command tool left running (a worker that exits
/// at once does not wait for them).
struct KillMarked(&'static str);

impl Drop for KillMarked {
    fn drop(&mut self) {
        for pid in pids_running(self.0) {
            let _ = std::process::Command::new("kill")
                .args(["-9", &pid])
                .status();
        }
    }
}

// ---------------------------------------------------------------------------------
// Concurrency and ownership

#[test]
fn concurrency_runs_sessions_at_the_same_time_and_each_one_in_order() {
    let env = TestEnv::new();
    env.write_agent("slow", SLOW_AGENT);
    let sessions: Vec<String> = (0..4).map(|_| env.new_session("slow")).collect();
    let mut sent = BTreeMap::new();
    for (i, id) in sessions.iter().enumerate() {
        let ids: Vec<String> = ["first", "second"]
            .iter()
            .map(|word| env.send(id, &format!("{word} of {i}")))
            .collect();
        sent.insert(id.clone(), ids);
    }
    let out = env.run(&["worker", "--once", "--concurrency", "4"]);
    assert_eq!(code(&out), 0, "{}", describe(&out));

    let mut first_spans = Vec::new();
    for (i, id) in sessions.iter().enumerate() {
        let spans = assert_strictly_serial(&env, id);
        assert_eq!(spans.len(), 2, "{id}");
        first_spans.push(spans[0].clone());
        let done = env.finished(id);
        assert!(done.iter().all(|d| d["status"] == "completed"), "{done:?}");
        let order: Vec<String> = done.iter().map(|d| str_of(&d["message_id"])).collect();
        assert_eq!(order, sent[id], "send order kept in {id}");
        let answers = env.responses(id);
        assert!(
            answers[0].starts_with(&format!("first of {i}: ")),
            "{answers:?}"
        );
        assert!(
            answers[1].starts_with(&format!("second of {i}: ")),
            "{answers:?}"
        );
    }
    // Every session's first execution was running at one and the same moment.
    let latest_start = first_spans.iter().map(|s| &s.0).max().unwrap();
    let earliest_end = first_spans.iter().map(|s| &s.1).min().unwrap();
    assert!(
        latest_start < earliest_end,
        "the first executions of the four sessions overlap: {first_spans:?}"
    );
}

#[test]
fn two_worker_processes_share_a_home_with_one_owner_per_session() {
    let env = TestEnv::new();
    env.write_agent(
        "slow",
        &SLOW_AGENT.replace("delay_ms = 40", "delay_ms = 10"),
    );
    let sessions: Vec<String> = (0..6).map(|_| env.new_session("slow")).collect();
    let mut sent: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for id in &sessions {
        for n in 0..3 {
            let message = env.send(id, &format!("m{n}"));
            sent.entry(id.clone()).or_default().push(message);
        }
    }
    let a = env.spawn_worker(&[]);
    let b = env.spawn_worker(&[]);
    // More messages while both run, so sessions are claimed again and again.
    wait_until("some work done", LONG, || {
        sessions.iter().any(|id| !env.finished(id).is_empty())
    });
    for id in &sessions {
        let message = env.send(id, "m3");
        sent.get_mut(id).unwrap().push(message);
    }
    wait_until("every message settled", LONG, || {
        sessions.iter().all(|id| env.finished(id).len() == 4)
    });
    for worker in [a, b] {
        worker.signal(15);
        let out = worker.wait(LONG);
        assert_eq!(code(&out), 0, "{}", describe(&out));
    }

    let mut owners = BTreeSet::new();
    for id in &sessions {
        assert_strictly_serial(&env, id);
        env.assert_gapless(id);
        let done = env.finished(id);
        assert!(done.iter().all(|d| d["status"] == "completed"), "{done:?}");
        let order: Vec<String> = done.iter().map(|d| str_of(&d["message_id"])).collect();
        assert_eq!(order, sent[id], "each message once, in send order, in {id}");
        let starts = started(&env, id);
        assert_eq!(starts.len(), 4, "no message started twice in {id}");
        owners.extend(starts.iter().map(|s| s["worker"]["pid"].as_u64().unwrap()));
        assert_eq!(env.pending(id), 0);
        // The owner lock stays (never deleted) and is free once the workers are gone.
        assert!(env.unowned(id), "nobody holds the lock any more");
    }
    assert_eq!(owners.len(), 2, "both workers took sessions: {owners:?}");
}

#[test]
fn a_session_whose_lock_is_held_is_left_to_its_owner() {
    let Some(env) = TestEnv::files_only("it holds a session's lock file") else {
        return;
    };
    let held = env.new_session("echo");
    let free = env.new_session("echo");
    env.send(&held, "wait for the owner");
    env.send(&free, "go ahead");
    let lock = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(env.session_dir(&held).join("lock"))
        .unwrap();
    lock.try_lock().expect("the test takes the owner lock");

    env.worker_once();
    assert!(started(&env, &held).is_empty(), "another owner holds it");
    assert_eq!(env.pending(&held), 1);
    assert_eq!(env.responses(&free), vec!["echo: go ahead"]);

    drop(lock);
    env.worker_once();
    assert_eq!(env.responses(&held), vec!["echo: wait for the owner"]);
}

// ---------------------------------------------------------------------------------
// Cron use: --max-duration and --max-workers

#[test]
fn max_duration_stops_claiming_and_suspends_the_running_execution() {
    let env = TestEnv::new();
    env.write_agent("stepper", STEPPER_AGENT);
    let long = env.new_session("stepper");
    let later = env.new_session("echo");
    let first = env.send(&long, "the long one");
    let second = env.send(&long, "after it");
    env.send(&later, "another session");

    let worker = env.spawn_worker(&["--max-duration", "1s"]);
    let out = worker.wait(LONG);
    assert_eq!(code(&out), 0, "{}", describe(&out));
    assert!(env.finished(&long).is_empty(), "suspended, not settled");
    assert!(
        started(&env, &later).is_empty(),
        "no claims after --max-duration"
    );
    let records = executions(&env, &long);
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["status"], "running");
    assert_eq!(records[0]["suspended"], true, "left at a checkpoint");
    assert_eq!(records[0]["attempts"], 1);
    assert_eq!(env.pending(&long), 2);
    let steps_before = env.payloads(&long, "agent.step.completed").len();
    assert!(
        steps_before < 5,
        "it was stopped midway ({steps_before} steps)"
    );

    env.worker_once();
    let starts = started(&env, &long);
    assert_eq!(starts.len(), 3);
    assert_eq!(starts[0]["message_id"], first.as_str());
    assert_eq!(starts[1]["message_id"], first.as_str());
    assert_eq!(starts[1]["resumed"], true);
    assert_eq!(
        starts[1]["attempt"], 1,
        "a clean stop is not another attempt"
    );
    assert_eq!(starts[2]["message_id"], second.as_str());
    let done = env.finished(&long);
    assert_eq!(done.len(), 2);
    assert!(done.iter().all(|d| d["status"] == "completed"), "{done:?}");
    assert_eq!(done[0]["steps"], 5);
    assert_eq!(
        env.responses(&long),
        vec!["done: the long one", "done: after it"]
    );
    // No settled step was run again.
    let steps: Vec<u64> = env
        .payloads(&long, "agent.step.completed")
        .iter()
        .map(|s| s["step_number"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, vec![1, 2, 3, 4, 5, 1]);
    assert_eq!(env.responses(&later), vec!["echo: another session"]);
    env.assert_gapless(&long);

    // With nothing to do, it simply exits when the time is up.
    let out = env.spawn_worker(&["--max-duration", "300ms"]).wait(LONG);
    assert_eq!(code(&out), 0, "{}", describe(&out));
}

#[test]
fn max_workers_lets_no_more_workers_start_than_there_are_slots() {
    let Some(env) = TestEnv::files_only("it reads the slot files in sessions/.workers") else {
        return;
    };
    let busy = env.new_session("echo");
    let waiting = env.new_session("echo");
    env.send(&waiting, "when a slot is free");
    let workers = env.home().join("sessions/.workers");

    // The first worker takes the only slot (and looks after another session only).
    let first = env.spawn_worker(&["--max-workers", "1", "--session", &busy]);
    let pid = u64::from(first.child.id());
    wait_until("the first worker in its slot", LONG, || {
        std::fs::read_to_string(workers.join("slot-0"))
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .is_some_and(|v| v["pid"] == pid)
    });
    let slot = read_json(&workers.join("slot-0"));
    assert_eq!(slot["slot"], 0);

    let out = env.run(&["worker", "--max-workers", "1", "--once"]);
    assert_eq!(code(&out), 0, "{}", describe(&out));
    assert!(stderr(&out).contains("slot"), "{}", describe(&out));
    let out = env.spawn_worker(&["--max-workers", "1"]).wait(LONG);
    assert_eq!(
        code(&out),
        0,
        "exits at once, --once or not: {}",
        describe(&out)
    );
    assert!(started(&env, &waiting).is_empty(), "nothing was processed");
    assert_eq!(env.pending(&waiting), 1);

    first.signal(15);
    let out = first.wait(LONG);
    assert_eq!(code(&out), 0, "{}", describe(&out));
    let out = env.run(&["worker", "--max-workers", "1", "--once"]);
    assert_eq!(code(&out), 0, "{}", describe(&out));
    assert!(stderr(&out).contains("claimed"), "{}", describe(&out));
    assert_eq!(env.responses(&waiting), vec!["echo: when a slot is free"]);
}

#[test]
fn the_workers_directory_shows_each_live_worker() {
    let Some(env) = TestEnv::files_only("it reads the worker files in sessions/.workers") else {
        return;
    };
    let workers = env.home().join("sessions/.workers");
    let worker = env.spawn_worker(&[]);
    let pid = u64::from(worker.child.id());
    let mine = || -> Vec<PathBuf> {
        std::fs::read_dir(&workers)
            .map(|dir| {
                dir.map(|e| e.unwrap().path())
                    .filter(|p| {
                        std::fs::read_to_string(p)
                            .ok()
                            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
                            .is_some_and(|v| v["pid"] == pid)
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    wait_until("the worker's file", LONG, || !mine().is_empty());
    let files = mine();
    assert_eq!(files.len(), 1);
    let record = read_json(&files[0]);
    assert!(
        record["host"].is_string() && record["started_at"].is_string(),
        "{record}"
    );
    let held = File::open(&files[0]).unwrap();
    assert!(
        held.try_lock_shared().is_err(),
        "locked while the worker lives"
    );
    drop(held);

    worker.signal(15);
    let out = worker.wait(LONG);
    assert_eq!(code(&out), 0, "{}", describe(&out));
    assert!(mine().is_empty(), "removed on a clean exit");
}

// ---------------------------------------------------------------------------------
// Crash recovery

#[test]
fn an_execution_killed_three_times_fails_with_too_many_attempts_and_the_next_message_runs() {
    let env = TestEnv::new();
    env.write_agent("slow", SLOW_AGENT);
    let id = env.new_session("slow");
    let doomed = env.send(&id, "doomed");
    let next = env.send(&id, "next");

    for attempt in 1..=3 {
        let worker = env.spawn_worker(&[]);
        wait_until(&format!("a chunk of attempt {attempt}"), LONG, || {
            let (starts, chunks) = chunks_of_latest_start(&env, &id);
            starts == attempt && chunks >= 1
        });
        worker.signal(9);
        let _ = worker.wait(LONG);
        assert!(env.finished(&id).is_empty());
        assert_eq!(env.pending(&id), 2, "nothing leaves the inbox unsettled");
        // One execution, resumed: its first attempt is counted in state.json, the
        // later ones in its record, written as it resumes.
        let current = running_in_state(&env, &id);
        let records = executions(&env, &id);
        if attempt == 1 {
            assert_eq!(current["attempts"], 1);
            assert!(records.is_empty(), "no record before it settles or resumes");
        } else {
            assert_eq!(records.len(), 1, "one execution, resumed");
            assert_eq!(records[0]["id"], current["execution_id"]);
            assert_eq!(records[0]["attempts"], attempt);
        }
    }

    // The third crash was the last attempt: the execution is not started a fourth
    // time, and the log, the record and the error all count three.
    let out = env.run(&["worker", "--once"]);
    // One execution failed (too many attempts): the worker exits 1, as cron must see.
    assert_eq!(code(&out), 1, "{}", describe(&out));
    assert!(!stderr(&out).contains("resuming"), "{}", describe(&out));
    assert!(
        stderr(&out).contains("attempts=3") && !stderr(&out).contains("attempt=4"),
        "{}",
        describe(&out)
    );
    let starts = started(&env, &id);
    let attempts: Vec<u64> = starts
        .iter()
        .map(|s| s["attempt"].as_u64().unwrap())
        .collect();
    assert_eq!(attempts, vec![1, 2, 3, 1], "three crashed starts, the next");
    let resumed: Vec<bool> = starts
        .iter()
        .map(|s| s["resumed"].as_bool().unwrap())
        .collect();
    assert_eq!(resumed, vec![false, true, true, false]);
    assert!(
        starts[..3]
            .iter()
            .all(|s| s["message_id"] == doomed.as_str())
    );
    let records = executions(&env, &id);
    assert_eq!(records[0]["attempts"], 3, "{}", records[0]);

    let done = env.finished(&id);
    assert_eq!(done.len(), 2);
    assert_eq!(done[0]["message_id"], doomed.as_str());
    assert_eq!(done[0]["status"], "failed");
    assert_eq!(done[0]["stop_reason"], "too_many_attempts");
    assert_eq!(done[0]["exit_code"], 1);
    assert!(
        str_of(&done[0]["error"]).contains("gave up after 3 attempts"),
        "{}",
        done[0]
    );
    assert_eq!(done[1]["message_id"], next.as_str());
    assert_eq!(done[1]["status"], "completed");
    assert_eq!(env.responses(&id).len(), 1);
    assert!(env.responses(&id)[0].starts_with("next: "));
    assert_eq!(env.pending(&id), 0);
    let show = env.json(&["session", "show", &id, "--json"]);
    assert_eq!(show["failed"][0]["stop_reason"], "too_many_attempts");
    env.assert_gapless(&id);
}

#[test]
fn a_live_worker_takes_over_a_session_whose_owner_died() {
    let env = TestEnv::new();
    env.write_agent("slow", SLOW_AGENT);
    let id = env.new_session("slow");
    env.send(&id, "orphaned");
    let owner = env.spawn_worker(&["--session", &id]);
    wait_until("the owner streaming", LONG, || {
        !env.events_of(&id, "agent.stream.chunk").is_empty()
    });
    let survivor = env.spawn_worker(&[]);
    let pid = u64::from(survivor.child.id());
    wait_until("the second worker registered", LONG, || {
        env.json(&["status", "--json"])["workers"]
            .as_array()
            .is_some_and(|workers| workers.iter().any(|w| w["pid"] == pid))
    });
    // Some more chunks: the second worker has scanned and found the session owned.
    let seen = env.events_of(&id, "agent.stream.chunk").len();
    wait_until("more chunks", LONG, || {
        env.events_of(&id, "agent.stream.chunk").len() >= seen + 3
    });
    assert_eq!(started(&env, &id).len(), 1, "one owner at a time");
    owner.signal(9);
    let _ = owner.wait(LONG);

    wait_until("the survivor to finish it", LONG, || {
        !env.finished(&id).is_empty()
    });
    let starts = started(&env, &id);
    assert_eq!(starts.len(), 2);
    assert_eq!(starts[1]["resumed"], true);
    assert_eq!(starts[1]["attempt"], 2);
    assert_eq!(starts[1]["worker"]["pid"], pid);
    assert_eq!(env.finished(&id)[0]["status"], "completed");
    survivor.signal(15);
    let out = survivor.wait(LONG);
    assert_eq!(code(&out), 0, "{}", describe(&out));
    assert!(stderr(&out).contains("resuming"), "{}", describe(&out));
    env.assert_gapless(&id);
}

#[test]
fn a_corrupt_record_of_a_crashed_execution_is_moved_aside_and_rebuilt() {
    let Some(env) = TestEnv::files_only("it corrupts an execution record file by hand") else {
        return;
    };
    env.write_agent("slow", SLOW_AGENT);
    let id = env.new_session("slow");
    env.send(&id, "crash and damage");
    let worker = env.spawn_worker(&[]);
    wait_until("a chunk", LONG, || {
        !env.events_of(&id, "agent.stream.chunk").is_empty()
    });
    worker.signal(9);
    let _ = worker.wait(LONG);
    // A first attempt has no record yet (state.json names it); a damaged one is what a
    // power failure can leave of a record written when it resumed.
    let exec_id = str_of(&running_in_state(&env, &id)["execution_id"]);
    let record = env
        .session_dir(&id)
        .join("executions")
        .join(format!("{exec_id}.json"));
    std::fs::write(&record, "{\"id\": tru").unwrap();

    let out = env.run(&["worker", "--once"]);
    assert_eq!(code(&out), 0, "{}", describe(&out));
    let path = record.display().to_string();
    assert!(
        stderr(&out)
            .lines()
            .any(|l| l.contains("ERROR") && l.contains(&path) && l.contains("moved it to")),
        "{}",
        describe(&out)
    );
    let aside: Vec<String> = std::fs::read_dir(record.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&format!("{exec_id}.json.corrupt-")))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    let rebuilt = read_json(&record);
    assert_eq!(rebuilt["status"], "completed");
    let done = env.finished(&id);
    assert_eq!(done.len(), 1);
    assert_eq!(done[0]["status"], "completed");
    assert_eq!(env.responses(&id).len(), 1);
    assert_files_parse(env.home());
}

// ---------------------------------------------------------------------------------
// Pause

#[test]
fn pause_lets_the_running_step_finish_then_suspends_until_resume() {
    let env = TestEnv::new();
    env.write_agent("stepper", STEPPER_AGENT);
    let id = env.new_session("stepper");
    env.send(&id, "many steps");
    env.send(&id, "queued behind");
    let worker = env.spawn_worker(&["--once"]);
    wait_until("the first step streaming", LONG, || {
        !env.events_of(&id, "agent.stream.chunk").is_empty()
    });
    env.ok(&["session", "pause", &id]);
    let out = worker.wait(LONG);
    assert_eq!(code(&out), 0, "{}", describe(&out));

    let steps_started = env.payloads(&id, "agent.step.started").len();
    let steps_done = env.payloads(&id, "agent.step.completed").len();
    assert!(steps_done >= 1, "the running step finished");
    assert_eq!(steps_started, steps_done, "no step started after the pause");
    assert!(steps_done < 5, "paused midway ({steps_done} steps)");
    assert!(env.finished(&id).is_empty());
    assert_eq!(env.pending(&id), 2, "pending messages stay");
    let records = executions(&env, &id);
    assert_eq!(records[0]["status"], "running");
    assert_eq!(records[0]["suspended"], true);

    // Paused: another worker leaves it alone.
    env.worker_once();
    assert_eq!(env.payloads(&id, "agent.step.started").len(), steps_started);

    let worker = env.spawn_worker(&[]);
    env.ok(&["session", "resume", &id]);
    wait_until("both messages settled", LONG, || {
        env.finished(&id).len() == 2
    });
    worker.signal(15);
    assert_eq!(code(&worker.wait(LONG)), 0);
    let starts = started(&env, &id);
    assert_eq!(starts[1]["resumed"], true);
    assert_eq!(starts[1]["attempt"], 1);
    let done = env.finished(&id);
    assert!(done.iter().all(|d| d["status"] == "completed"), "{done:?}");
    assert_eq!(
        env.responses(&id),
        vec!["done: many steps", "done: queued behind"]
    );
    let steps: Vec<u64> = env
        .payloads(&id, "agent.step.completed")
        .iter()
        .map(|s| s["step_number"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, vec![1, 2, 3, 4, 5, 1], "no step repeated");
}

// ---------------------------------------------------------------------------------
// Retry

#[test]
fn retry_queues_the_text_of_the_failed_message_again() {
    let env = TestEnv::new();
    env.write_agent("fragile", FRAGILE_AGENT);
    let id = env.new_session("fragile");
    let fresh = env.new_session("echo");

    let err = env.fails(&["retry", &fresh], 2);
    assert!(err.contains("no failed execution"), "{err}");

    env.send(&id, "the task");
    env.fails(&["worker", "--once"], 1);
    let done = env.finished(&id);
    assert_eq!(done[0]["status"], "failed");
    assert_eq!(done[0]["exit_code"], 1);
    let failed_id = str_of(&executions(&env, &id)[0]["id"]);

    let retried = env.ok(&["retry", &id]);
    let retry_id = retried.trim().to_owned();
    assert!(uuid_like(&retry_id), "prints the new message id: {retried}");
    let queued = env.payloads(&id, "message.queued");
    assert_eq!(queued.last().unwrap()["message_id"], retry_id.as_str());
    assert_eq!(
        queued.last().unwrap()["content_preview"],
        "the task",
        "the message is queued again, text and all"
    );
    let err = env.fails(&["retry", &id], 2);
    assert!(err.contains("already queued"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    env.worker_once();
    let done = env.finished(&id);
    assert_eq!(done.len(), 2);
    assert_eq!(done[1]["status"], "completed");
    assert_eq!(done[1]["message_id"], retry_id.as_str());
    assert_eq!(env.responses(&id), vec!["ok: the task"]);
    assert_eq!(
        user_texts(&env, &id),
        vec!["the task", "the task"],
        "the model is asked again"
    );

    // The failed execution's record stays, listed with its error.
    let records = executions(&env, &id);
    assert_eq!(records.len(), 2);
    assert_eq!(records[0]["id"], failed_id.as_str());
    assert_eq!(records[0]["status"], "failed");
    let show = env.json(&["session", "show", &id, "--json"]);
    let failed = show["failed"].as_array().unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["id"], failed_id.as_str());
    assert!(
        str_of(&failed[0]["error"]["message"]).contains("injected bad request"),
        "{show}"
    );
    let plain = env.ok(&["session", "show", &id]);
    let line = plain
        .lines()
        .find(|l| l.starts_with("failed"))
        .unwrap_or_else(|| panic!("a failed line: {plain}"));
    assert!(line.contains(&failed_id), "{line}");
    assert!(line.contains("injected bad request"), "{line}");

    let completed_only = env.new_session("echo");
    env.send(&completed_only, "fine");
    env.worker_once();
    env.fails(&["retry", &completed_only], 2);
}

#[test]
fn retry_after_later_messages_queues_the_original_text_again() {
    let env = TestEnv::new();
    env.write_agent("fragile", FRAGILE_AGENT);
    let id = env.new_session("fragile");
    env.send(&id, "the first question");
    env.fails(&["worker", "--once"], 1);
    env.send(&id, "a later one");
    env.worker_once();
    let failed_id = str_of(&executions(&env, &id)[0]["id"]);

    let result = env.json(&["retry", &id, "--json"]);
    assert_eq!(result["session_id"], id.as_str());
    assert_eq!(result["retry_of"], failed_id.as_str());
    assert_eq!(result["continues"], false);
    let retry_id = str_of(&result["message_id"]);
    let queued = env.payloads(&id, "message.queued");
    assert_eq!(queued.last().unwrap()["message_id"], retry_id.as_str());
    assert_eq!(
        queued.last().unwrap()["content_preview"],
        "the first question"
    );
    env.fails(&["retry", &id, "--json"], 2);

    env.worker_once();
    let done = env.finished(&id);
    let statuses: Vec<&str> = done.iter().map(|d| d["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, vec!["failed", "completed", "completed"]);
    assert_eq!(done[2]["message_id"], retry_id.as_str());
    assert_eq!(
        env.responses(&id),
        vec!["ok: a later one", "ok: the first question"]
    );
    assert_eq!(
        user_texts(&env, &id),
        vec!["the first question", "a later one", "the first question"]
    );
    assert_eq!(executions(&env, &id)[0]["status"], "failed");
}

#[test]
fn retry_refuses_a_failure_a_retry_already_settled() {
    let env = TestEnv::new();
    env.write_agent("fragile", FRAGILE_AGENT);
    let id = env.new_session("fragile");
    env.send(&id, "only once");
    env.fails(&["worker", "--once"], 1);
    env.ok(&["retry", &id]);
    env.worker_once();
    assert_eq!(env.responses(&id), vec!["ok: only once"]);

    let err = env.fails(&["retry", &id], 2);
    assert!(err.contains("no failed execution"), "{err}");
    env.worker_once();
    assert_eq!(env.responses(&id), vec!["ok: only once"], "answered once");
}

fn uuid_like(text: &str) -> bool {
    text.len() == 36 && text.chars().all(|c| c == '-' || c.is_ascii_hexdigit())
}

// ---------------------------------------------------------------------------------
// Corrupt files

/// Files in a session directory whose names start with `prefix`.
fn named(env: &TestEnv, id: &str, prefix: &str) -> Vec<PathBuf> {
    std::fs::read_dir(env.session_dir(id))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(prefix))
        .collect()
}

#[test]
fn corrupt_session_and_state_files_are_moved_aside_and_rebuilt() {
    let Some(env) = TestEnv::files_only("it corrupts session.json and state.json by hand") else {
        return;
    };
    let garbage_meta = env.new_session("echo");
    let empty_meta = env.new_session("echo");
    let garbage_state = env.new_session("echo");
    let empty_state = env.new_session("echo");
    let healthy = env.new_session("echo");
    for id in [&garbage_state, &empty_state] {
        env.send(id, "before");
        env.worker_once();
    }
    for id in [
        &garbage_meta,
        &empty_meta,
        &garbage_state,
        &empty_state,
        &healthy,
    ] {
        env.send(id, "after");
    }
    let write = |id: &str, file: &str, content: &str| {
        std::fs::write(env.session_dir(id).join(file), content).unwrap();
    };
    write(&garbage_meta, "session.json", "garbage {{{");
    write(&empty_meta, "session.json", "");
    write(&garbage_state, "state.json", "\u{1}not json");
    write(&empty_state, "state.json", "");

    for (id, file) in [
        (&garbage_meta, "session.json"),
        (&empty_meta, "session.json"),
        (&garbage_state, "state.json"),
        (&empty_state, "state.json"),
    ] {
        let err = env.fails(&["session", "show", id], 1);
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
        let path = env.session_dir(id).join(file);
        assert!(err.contains(&path.display().to_string()), "{err}");
        assert!(err.contains("corrupt"), "{err}");
    }
    assert!(
        env.fails(&["session", "show", &empty_meta], 1)
            .contains("empty")
    );

    let out = env.run(&["worker", "--once"]);
    assert_eq!(code(&out), 0, "{}", describe(&out));
    let log = stderr(&out);
    for (id, file) in [
        (&garbage_meta, "session.json"),
        (&empty_meta, "session.json"),
        (&garbage_state, "state.json"),
        (&empty_state, "state.json"),
    ] {
        let path = env.session_dir(id).join(file);
        let line = log
            .lines()
            .find(|l| l.contains(&path.display().to_string()))
            .unwrap_or_else(|| panic!("the log names {path:?}:\n{log}"));
        assert!(line.contains("ERROR"), "{line}");
        assert!(line.contains("corrupt"), "{line}");
        let aside = named(&env, id, &format!("{file}.corrupt-"));
        assert_eq!(aside.len(), 1, "moved aside once: {aside:?}");
        assert!(line.contains(&aside[0].display().to_string()), "{line}");
        read_json(&path);
    }
    assert_eq!(
        std::fs::read_to_string(&named(&env, &garbage_meta, "session.json.corrupt-")[0]).unwrap(),
        "garbage {{{",
        "kept as it was"
    );

    for id in [&garbage_meta, &empty_meta, &healthy] {
        assert_eq!(env.responses(id), vec!["echo: after"], "{id}");
    }
    for id in [&garbage_state, &empty_state] {
        assert_eq!(env.responses(id), vec!["echo: before", "echo: after"]);
        // Rebuilt from the transcript: the model saw the earlier turns.
        let counts: Vec<u64> = env
            .payloads(id, "agent.step.started")
            .iter()
            .map(|s| s["message_count"].as_u64().unwrap())
            .collect();
        assert!(counts.last().unwrap() > &4, "history kept: {counts:?}");
    }
    for id in [
        &garbage_meta,
        &empty_meta,
        &garbage_state,
        &empty_state,
        &healthy,
    ] {
        let show = env.json(&["session", "show", id, "--json"]);
        assert_eq!(show["pending"], 0, "{id}");
        assert_eq!(show["session"]["agent"], "echo");
        let completed = show["session"]["counters"]["completed"].as_u64().unwrap();
        assert_eq!(completed, env.finished(id).len() as u64, "{show}");
        env.assert_gapless(id);
    }
    assert_files_parse(env.home());
}

#[test]
fn a_corrupt_inbox_entry_is_moved_aside_and_the_next_entries_run() {
    let Some(env) = TestEnv::files_only("it corrupts an inbox file by hand") else {
        return;
    };
    let id = env.new_session("echo");
    env.send(&id, "one");
    env.send(&id, "two (to be damaged)");
    env.send(&id, "three (to be emptied)");
    env.send(&id, "four");
    let names = inbox_names(&env, &id);
    let inbox = env.session_dir(&id).join("inbox");
    std::fs::write(inbox.join(&names[1]), "{\"id\": oops").unwrap();
    std::fs::write(inbox.join(&names[2]), "").unwrap();

    let out = env.run(&["worker", "--once"]);
    assert_eq!(code(&out), 0, "{}", describe(&out));
    assert_eq!(env.responses(&id), vec!["echo: one", "echo: four"]);
    let left = inbox_names(&env, &id);
    assert_eq!(left.len(), 2, "{left:?}");
    for damaged in &names[1..3] {
        let aside = left
            .iter()
            .find(|n| n.starts_with(&format!("{damaged}.corrupt-")))
            .unwrap_or_else(|| panic!("{damaged} moved aside: {left:?}"));
        assert!(!aside.ends_with(".json"), "no longer an entry: {aside}");
        let path = inbox.join(damaged).display().to_string();
        assert!(
            stderr(&out)
                .lines()
                .any(|l| l.contains("ERROR") && l.contains(&path)),
            "the log names {path}:\n{}",
            stderr(&out)
        );
    }
    assert_eq!(env.pending(&id), 0);
    assert_strictly_serial(&env, &id);
}

// ---------------------------------------------------------------------------------
// A full disk

/// Unmounts a file system when the test ends, however it ends.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let status = std::process::Command::new("umount").arg(&self.0).status();
        if !status.is_ok_and(|s| s.success()) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
        }
    }
}

/// Writes to `path` until the file system is full.
fn fill(path: &Path) {
    use std::io::Write;
    let mut file = File::create(path).unwrap();
    let block = vec![b'x'; 64 * 1024];
    loop {
        match file.write(&block) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(28) => break,
            Err(e) => panic!("filling {path:?}: {e}"),
        }
    }
    let _ = file.sync_all();
}

/// A home on a small tmpfs of its own (unmounted when the guard drops, before the
/// temp dir goes), after `init`, with the echo agent; `None` (with the reason printed)
/// where mounting is not allowed.
fn small_disk(env: &TestEnv) -> Option<Mounted> {
    let out = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"])
        .arg(env.home())
        .output();
    let mounted = match out {
        Ok(out) if out.status.success() => Mounted(env.home().to_owned()),
        Ok(out) => {
            eprintln!(
                "skipped: cannot mount a small tmpfs ({})",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return None;
        }
        Err(e) => {
            eprintln!("skipped: cannot run mount ({e})");
            return None;
        }
    };
    env.ok(&["init"]);
    env.write_agent("echo", ECHO_AGENT);
    Some(mounted)
}

fn remount(home: &Path, mode: &str) {
    let out = std::process::Command::new("mount")
        .args(["-o", &format!("remount,{mode}")])
        .arg(home)
        .output()
        .unwrap();
    assert!(out.status.success(), "remount {mode}: {}", describe(&out));
}

#[test]
fn a_full_disk_stops_claiming_names_the_path_and_damages_nothing() {
    let Some(env) = TestEnv::files_only_empty(
        "a full or read-only disk under the home, where the file store writes",
    ) else {
        return;
    };
    let Some(_mounted) = small_disk(&env) else {
        return;
    };
    env.write_agent(
        "slow",
        &SLOW_AGENT.replace("q r s", "q r s t u v w x y z a b c d e f"),
    );
    let running = env.new_session("slow");
    let others: Vec<String> = (0..2).map(|_| env.new_session("echo")).collect();
    env.send(&running, "the first");
    let worker = env.spawn_worker(&[]);
    wait_until("the first execution streaming", LONG, || {
        env.events_of(&running, "agent.stream.chunk").len() >= 2
    });
    for id in &others {
        env.send(id, "queued while the disk fills");
    }
    let filler = env.home().join("filler");
    fill(&filler);

    let out = worker.wait(LONG);
    assert_ne!(code(&out), 0, "{}", describe(&out));
    let log = stderr(&out);
    let home = env.home().display().to_string();
    let failing = log
        .lines()
        .find(|l| l.contains("ERROR") && l.contains(&home))
        .unwrap_or_else(|| panic!("an error naming the failing path:\n{log}"));
    assert!(failing.contains("No space left on device"), "{failing}");
    assert!(log.contains("no new claims"), "{log}");
    for id in &others {
        assert!(
            started(&env, id).is_empty(),
            "no claims once the disk is full"
        );
    }
    // What was written stays readable (a torn last line is skipped by readers).
    check_files_parse(env.home());

    std::fs::remove_file(&filler).unwrap();
    env.worker_once();
    assert_eq!(env.finished(&running).len(), 1);
    assert_eq!(env.finished(&running)[0]["status"], "completed");
    for id in &others {
        assert_eq!(env.responses(id), vec!["echo: queued while the disk fills"]);
    }
    env.assert_gapless(&running);
    assert_files_parse(env.home());
}

#[test]
fn a_worker_starting_on_a_full_disk_names_the_failing_path() {
    let Some(env) = TestEnv::files_only_empty(
        "a full or read-only disk under the home, where the file store writes",
    ) else {
        return;
    };
    let Some(_mounted) = small_disk(&env) else {
        return;
    };
    // Leaves `slot-0` behind, so a `--max-workers` worker gets past registering and
    // fails at its first claim instead.
    env.ok(&["worker", "--once", "--max-workers", "1"]);
    let id = env.new_session("echo");
    env.send(&id, "no room");
    let filler = env.home().join("filler");
    fill(&filler);
    let before = check_files_parse(env.home());

    for args in [
        &["worker", "--once"][..],
        &["worker", "--once", "--max-workers", "1"][..],
    ] {
        let out = env.run(args);
        assert_ne!(code(&out), 0, "{}", describe(&out));
        let err = stderr(&out);
        assert!(err.contains("No space left on device"), "{err}");
        assert!(
            err.lines()
                .any(|l| l.contains("No space left")
                    && l.contains(&env.home().display().to_string())),
            "agentq {args:?}: the error names the path that could not be written:\n{err}"
        );
        assert_eq!(check_files_parse(env.home()), before);
        assert!(started(&env, &id).is_empty());
    }

    std::fs::remove_file(&filler).unwrap();
    env.worker_once();
    assert_eq!(env.responses(&id), vec!["echo: no room"]);
}

#[test]
fn a_read_only_home_is_reported_with_its_path_and_left_as_it_was() {
    let Some(env) = TestEnv::files_only_empty(
        "a full or read-only disk under the home, where the file store writes",
    ) else {
        return;
    };
    let Some(_mounted) = small_disk(&env) else {
        return;
    };
    let id = env.new_session("echo");
    env.send(&id, "earlier");
    env.worker_once();
    env.send(&id, "while read-only");
    let snapshot = |root: &Path| -> BTreeMap<PathBuf, Vec<u8>> {
        fn walk(dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    walk(&path, out);
                } else {
                    out.insert(path.clone(), std::fs::read(&path).unwrap());
                }
            }
        }
        let mut out = BTreeMap::new();
        walk(root, &mut out);
        out
    };
    let before = snapshot(env.home());
    remount(env.home(), "ro");

    for args in [
        &["worker", "--once"][..],
        &["worker", "--once", "--max-workers", "2"][..],
    ] {
        let out = env.run(args);
        assert_ne!(code(&out), 0, "{}", describe(&out));
        let err = stderr(&out);
        assert!(
            err.lines().any(|l| l.contains("Read-only file system")
                && l.contains(&env.home().display().to_string())),
            "the error names the path:\n{err}"
        );
    }
    assert_eq!(started(&env, &id).len(), 1, "nothing claimed");
    remount(env.home(), "rw");
    assert_eq!(snapshot(env.home()), before, "nothing changed");

    env.worker_once();
    assert_eq!(
        env.responses(&id),
        vec!["echo: earlier", "echo: while read-only"]
    );
    assert_files_parse(env.home());
}

// ---------------------------------------------------------------------------------
// Logs and signals

#[test]
fn log_file_takes_the_worker_log_instead_of_stderr() {
    let env = TestEnv::new();
    let id = env.new_session("echo");
    env.send(&id, "logged");
    let log = env.home().join("worker.log");
    let out = env.run(&["worker", "--once", "--log-file", log.to_str().unwrap()]);
    assert_eq!(code(&out), 0, "{}", describe(&out));
    assert!(
        !stderr(&out).contains("claimed") && !stderr(&out).contains("finished"),
        "{}",
        describe(&out)
    );
    let text = std::fs::read_to_string(&log).unwrap();
    let claimed = text
        .lines()
        .find(|l| l.contains("claimed"))
        .unwrap_or_else(|| panic!("a claimed line: {text}"));
    assert!(claimed.contains(&id), "{claimed}");
    assert!(text.lines().any(|l| l.contains("finished")), "{text}");
    assert!(
        !text.contains('\u{1b}'),
        "no colour codes in a file: {text}"
    );

    for bad in [
        env.home().join("no/such/dir/worker.log"),
        env.home().to_owned(),
    ] {
        let err = env.fails(
            &["worker", "--once", "--log-file", bad.to_str().unwrap()],
            2,
        );
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.contains("log file"), "{err}");
        assert!(err.contains(&bad.display().to_string()), "{err}");
    }
}

#[test]
fn a_second_signal_while_stopping_exits_at_once_with_readable_files() {
    const MARKER: &str = "sleep 29.8813";
    let env = TestEnv::new();
    env.write_agent(
        "hanging",
        &format!(
            r#"
name = "hanging"
[model]
provider = "scripted"
[[model.script]]
text = "waiting"
tool_calls = [{{ name = "hang", arguments = {{}} }}]
[[model.script]]
text = "carried on"
[[tools.command]]
name = "hang"
argv = ["sh", "-c", "{MARKER}"]
timeout = "60s"
"#
        ),
    );
    let cleanup = KillMarked(MARKER);
    let id = env.new_session("hanging");
    env.send(&id, "hang on");
    let log = env.home().join("worker.log");
    let worker = env.spawn_worker(&["--log-file", log.to_str().unwrap()]);
    wait_until("the command running", LONG, || {
        !env.events_of(&id, "agent.tool.started").is_empty()
    });
    // The first signal kills the running command and stops at once (issue 15); the
    // second, sent as soon as the stop began, exits at once if the stop is not done
    // yet. Either way nothing of the command is left.
    worker.signal(2);
    wait_until("the worker stopping", LONG, || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.contains("stopping"))
    });
    worker.signal(15);
    let out = worker.wait(Duration::from_secs(10));
    assert!([0, 130].contains(&code(&out)), "{}", describe(&out));
    assert!(pids_running(MARKER).is_empty(), "the command was killed");
    // Let go even on the way out at once: a worker of another host need not wait for
    // a lease to expire either.
    assert!(env.unowned(&id), "{}", describe(&out));
    assert_files_parse(env.home());
    assert!(env.finished(&id).is_empty());
    assert_eq!(env.pending(&id), 1);

    drop(cleanup);
    env.worker_once();
    let done = env.finished(&id);
    assert_eq!(done.len(), 1);
    assert_eq!(done[0]["status"], "completed");
    assert_eq!(env.responses(&id), vec!["carried on"]);
    let tools: Vec<Value> = env
        .json(&["session", "messages", &id, "--json"])
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["role"] == "tool")
        .cloned()
        .collect();
    assert_eq!(tools.len(), 1);
    assert!(
        str_of(&tools[0]["content"]).contains("interrupted"),
        "the command is not run twice: {}",
        tools[0]
    );
    assert!(pids_running(MARKER).is_empty());
    assert_files_parse(env.home());
}
