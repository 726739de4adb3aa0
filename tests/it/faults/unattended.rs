//! kill -9 at random moments of the unattended features (issue 20): calls parked for
//! a person's approval, and completion hooks. Under the kills a gated call runs only
//! once it is approved and at most once then (a worker killed after the durable
//! start-mark of an approved call answers it "interrupted", never runs it again), a
//! denied call never runs, and every settled execution's hooks are delivered at least
//! once, each with its execution's id as the idempotency key, after a final clean
//! drain. Both scenarios report a `FAULT-SUITE` line like the others of the suite.

use super::*;
use crate::it::fake_server::{FakeServer, Reply};

/// Sessions of each scenario.
const SESSIONS: usize = 5;
/// Each session is kept this many messages ahead of the workers.
const QUEUED: usize = 2;
/// Kills of each scenario when `FAULT_ITERATIONS` is not set: a few seconds each
/// under `cargo test`; `scripts/fault-suite` asks for more.
const DEFAULT_ITERATIONS: u64 = 40;

/// What one session looks like on disk while its worker is stopped.
struct Look {
    state: Value,
    /// The record of the state's current execution, if it has one.
    record: Option<Value>,
    record_path: Option<PathBuf>,
}

impl Look {
    fn of(env: &TestEnv, id: &str) -> Result<Option<Look>, String> {
        let dir = env.session_dir(id);
        let Some(state) = read_json(&dir.join("state.json"))? else {
            return Ok(None);
        };
        let (record, record_path) = match state["current"]["execution_id"].as_str() {
            Some(execution) => {
                let path = dir.join("executions").join(format!("{execution}.json"));
                (read_json(&path)?, Some(path))
            }
            None => (None, None),
        };
        Ok(Some(Look {
            state,
            record,
            record_path,
        }))
    }

    fn terminal(&self) -> bool {
        self.record
            .as_ref()
            .is_some_and(|r| is_terminal(&r["status"]))
    }

    /// Started or resumed by `pid` (one without a record yet was just begun).
    fn owned_by(&self, pid: u32) -> bool {
        self.record
            .as_ref()
            .is_none_or(|r| r["worker"]["pid"].as_u64() == Some(u64::from(pid)))
    }

    /// An execution a crash now would fail for good (`too_many_attempts`): running,
    /// not suspended at a checkpoint or a park, at its last attempt.
    fn at_limit(&self) -> Option<PathBuf> {
        let record = self.record.as_ref()?;
        let limit = !is_terminal(&record["status"])
            && record["suspended"] != true
            && record["attempts"]
                .as_u64()
                .is_some_and(|a| a >= MAX_ATTEMPTS);
        limit.then(|| self.record_path.clone()).flatten()
    }

    /// `(execution, call)` the open step waits on for a decision.
    fn waiting(&self) -> Option<(String, String)> {
        let current = &self.state["current"];
        let call = current["open_step"]["awaiting"]["tool_call_id"].as_str()?;
        Some((
            current["execution_id"].as_str()?.to_owned(),
            call.to_owned(),
        ))
    }
}

/// Lets the stopped worker go on until no execution is at its last attempt (a kill
/// then would end it `failed` by design, which these scenarios are not about) and no
/// hook has its last attempt counted, then stops it again. `true` if it had to.
fn defer_past_limits(env: &TestEnv, ids: &[String], pid: u32) -> Result<bool, String> {
    let at_limit = |env: &TestEnv| -> Result<Vec<String>, String> {
        let mut found = Vec::new();
        for id in ids {
            let Some(look) = Look::of(env, id)? else {
                continue;
            };
            if let Some(path) = look.at_limit() {
                found.push(path.display().to_string());
            }
            for hook in look.state["hooks"].as_array().into_iter().flatten() {
                if hook["attempts"].as_u64() >= hook["spec"]["max_attempts"].as_u64() {
                    found.push(format!("session {id}: hook {hook}"));
                }
            }
        }
        Ok(found)
    };
    if at_limit(env)?.is_empty() {
        return Ok(false);
    }
    signal(pid, libc::SIGCONT);
    let mut error = None;
    wait_until(
        "the executions and hooks at their last attempt",
        LONG,
        || match at_limit(env) {
            Ok(found) => found.is_empty(),
            Err(e) => {
                error = Some(e);
                true
            }
        },
    );
    signal(pid, libc::SIGSTOP);
    wait_stopped(pid);
    error.map_or(Ok(true), Err)
}

/// Sleeps what is left of `delay` since `from`.
fn sleep_until(from: Instant, delay: Duration) {
    if let Some(left) = delay.checked_sub(from.elapsed()) {
        std::thread::sleep(left);
    }
}

/// Sends the next message of session `i`.
fn send_next(env: &TestEnv, ids: &[String], sent: &mut [Vec<Sent>], i: usize) {
    let text = format!("message {} of session {i}", sent[i].len());
    let id = env.send(&ids[i], &text);
    sent[i].push(Sent { id, text });
}

/// Messages of a session not finished yet, by the log.
fn unfinished(env: &TestEnv, id: &str, sent: &[Sent]) -> usize {
    sent.len().saturating_sub(finishes(env, id).len())
}

/// Keeps every session [`QUEUED`] messages ahead, `most` messages at most.
fn top_up(env: &TestEnv, ids: &[String], sent: &mut [Vec<Sent>], most: usize) {
    for i in 0..ids.len() {
        if unfinished(env, &ids[i], &sent[i]) < QUEUED && sent[i].len() < most {
            send_next(env, ids, sent, i);
        }
    }
}

/// Stops `pid` (SIGSTOP) and waits until it is.
fn stop(pid: u32) {
    signal(pid, libc::SIGSTOP);
    wait_stopped(pid);
}

/// Kills the stopped worker and records what the kill left that is wrong: an exit of
/// its own, a panic.
fn kill(worker: &mut Logged, iteration: u64, problems: &mut Vec<String>) {
    signal(worker.child.id(), libc::SIGKILL);
    let (status, log) = worker.wait(LONG);
    if status.signal() != Some(libc::SIGKILL) {
        problems.push(format!(
            "iteration {iteration}: the worker exited by itself ({status}):\n{log}"
        ));
    }
    if log.contains("panicked") {
        problems.push(format!("iteration {iteration}: {log}"));
    }
}

/// A worker in the background, its log in the home's `worker-N.log`.
fn spawn_logged(env: &TestEnv, iteration: u64) -> Logged {
    let log = env.home().join(format!("worker-{iteration}.log"));
    Logged::spawn(env, &["worker", "--concurrency", "3"], log)
}

// ---------------------------------------------------------------------------------
// Parked approvals

/// An agent whose every message makes one gated call (`deploy`, `approval =
/// "required"`, with a mark of its own) and then answers `done: <message>`, whatever
/// the decision. The call appends its mark to `effects.log`, so its runs are counted.
fn gated_agent(messages: usize) -> String {
    let mut toml = String::from(
        r#"name = "gated"
description = "One gated call per message"
[model]
provider = "scripted"
"#,
    );
    for k in 0..messages {
        let _ = write!(
            toml,
            r#"[[model.script]]
text = "message {k} wants to deploy"
delay_ms = 4
tool_calls = [{{ name = "deploy", arguments = {{ mark = "m{k}" }} }}]
[[model.script]]
text = "done: {{input}}"
delay_ms = 4
"#
        );
    }
    toml.push_str(
        r#"[limits]
max_steps = 10
[[tools.command]]
name = "deploy"
description = "Deploys: appends its arguments to a log, one line per run"
argv = ["sh", "-c", 'line=$(cat); sleep 0.02; printf "%s\n" "$line" >> effects.log']
approval = "required"
timeout = "20s"
"#,
    );
    toml
}

/// A decision the test made, by session index and call id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Approved,
    Denied,
}

/// The decisions made so far, and how many of each.
#[derive(Default)]
struct Decisions {
    made: HashMap<(usize, String), Verdict>,
    approvals: u64,
    denials: u64,
    /// Made while no worker ran.
    with_no_worker: u64,
    /// Made while a worker ran.
    racing: u64,
}

impl Decisions {
    fn approved(&self, i: usize) -> usize {
        self.made
            .iter()
            .filter(|((s, _), v)| *s == i && **v == Verdict::Approved)
            .count()
    }

    /// Approves (two in three) or denies every call that waits and was not decided
    /// yet, with `agentq approve|deny ID CALL`.
    fn decide_waiting(
        &mut self,
        env: &TestEnv,
        ids: &[String],
        rng: &mut Rng,
        worker_running: bool,
        problems: &mut Vec<String>,
    ) {
        for (i, id) in ids.iter().enumerate() {
            let look = match Look::of(env, id) {
                Ok(Some(look)) => look,
                Ok(None) => continue,
                Err(e) => {
                    problems.push(e);
                    continue;
                }
            };
            let Some((execution, call)) = look.waiting() else {
                continue;
            };
            if self.made.contains_key(&(i, call.clone())) {
                continue;
            }
            let verdict = if rng.between(0, 2) == 0 {
                Verdict::Denied
            } else {
                Verdict::Approved
            };
            let out = match verdict {
                Verdict::Approved => env.run(&["approve", id, &call, "--json"]),
                Verdict::Denied => env.run(&[
                    "deny",
                    id,
                    &call,
                    "--reason",
                    "the fault suite says no",
                    "--json",
                ]),
            };
            let answer: Option<Value> = serde_json::from_slice(&out.stdout).ok();
            let agreed = code(&out) == 0
                && answer.as_ref().is_some_and(|a| {
                    a["tool_call_id"] == call.as_str()
                        && a["execution_id"] == execution.as_str()
                        && a["duplicate"] == false
                });
            if !agreed {
                problems.push(format!(
                    "session {id}: deciding call {call} ({verdict:?}):\n{}",
                    describe(&out)
                ));
                continue;
            }
            self.made.insert((i, call), verdict);
            match verdict {
                Verdict::Approved => self.approvals += 1,
                Verdict::Denied => self.denials += 1,
            }
            if worker_running {
                self.racing += 1;
            } else {
                self.with_no_worker += 1;
            }
        }
    }
}

/// What the kills of the approval scenario hit, counted with the worker stopped.
#[derive(Default)]
struct ParkKills {
    total: u64,
    /// Some session had a call parked, waiting for a decision.
    parked: u64,
    /// A decision was in an inbox, its call still waiting: not acted on yet.
    decision_unread: u64,
    /// An approved call was running (its start-mark written).
    mid_tool: u64,
    /// The worker had an unsettled execution in hand.
    mid_execution: u64,
    deferred: u64,
}

/// Looks at every session while the worker is stopped: what the kill hits, and the
/// gate's invariant at this moment (no session has more effects than approvals).
fn inspect_parks(
    env: &TestEnv,
    ids: &[String],
    pid: u32,
    decisions: &Decisions,
    kills: &mut ParkKills,
    early_runs: &mut u64,
    problems: &mut Vec<String>,
) {
    let (mut parked, mut unread, mut mid_tool, mut running) = (false, false, false, false);
    for (i, id) in ids.iter().enumerate() {
        let dir = env.session_dir(id);
        let runs = std::fs::read_to_string(dir.join("workspace").join("effects.log"))
            .map_or(0, |log| log.lines().count());
        let approved = decisions.approved(i);
        if runs > approved {
            *early_runs += (runs - approved) as u64;
            problems.push(format!(
                "session {id}: {runs} deploys ran, {approved} were approved"
            ));
        }
        let look = match Look::of(env, id) {
            Ok(Some(look)) => look,
            Ok(None) => continue,
            Err(e) => {
                problems.push(e);
                continue;
            }
        };
        if let Some((_, call)) = look.waiting() {
            parked = true;
            let decided = inbox_entries(&dir).iter().any(|name| {
                read_json(&dir.join("inbox").join(name))
                    .ok()
                    .flatten()
                    .is_some_and(|e| {
                        (e["kind"] == "approve" || e["kind"] == "deny")
                            && e["metadata"]["tool_call_id"] == call.as_str()
                    })
            });
            unread |= decided;
        }
        if !look.terminal() && look.owned_by(pid) && look.record.is_some() {
            running |= look.record.as_ref().is_some_and(|r| r["suspended"] != true);
            mid_tool |= look.state["current"]["open_step"]["tool_started"].is_string();
        }
    }
    kills.parked += u64::from(parked);
    kills.decision_unread += u64::from(unread);
    kills.mid_tool += u64::from(mid_tool);
    kills.mid_execution += u64::from(running);
}

/// The gate's outcomes in one session, over its transcript and `effects.log`.
#[derive(Default)]
struct GateTally {
    /// Calls parked (`approval.requested` events, one per call and park).
    parks: u64,
    parked_calls: u64,
    /// Effects of calls never approved (or with no call in the transcript).
    unapproved_runs: u64,
    /// Effects beyond the first of an approved call.
    approved_run_twice: u64,
    /// Effects of denied calls.
    denied_runs: u64,
    /// Approved calls answered "interrupted" (killed after their start-mark): allowed.
    approved_interrupted: u64,
    /// Approved calls that ran and were answered with their output.
    approved_ran: u64,
    denied_answered: u64,
    /// Runs given a cut-short input (their worker killed while writing it).
    cut_short: u64,
    /// Approved calls answered as run whose effect is missing.
    missing_effects: u64,
}

fn audit_gate(
    env: &TestEnv,
    i: usize,
    id: &str,
    sent: &[Sent],
    decisions: &Decisions,
    gate: &mut GateTally,
    tally: &mut Tally,
) {
    let dir = env.session_dir(id);
    let transcript = read_ndjson(&dir.join("transcript.ndjson"));
    tally.unparsable += transcript.unparsable.len() as u64 + u64::from(transcript.torn);
    tally.problems.extend(transcript.unparsable.iter().cloned());
    let requested = events_of(env, id, "approval.requested");
    gate.parks += requested.len() as u64;
    let parked: HashSet<String> = requested
        .iter()
        .filter_map(|e| e["payload"]["tool_call_id"].as_str().map(str::to_owned))
        .collect();
    gate.parked_calls += parked.len() as u64;

    let index: HashMap<&str, usize> = sent
        .iter()
        .enumerate()
        .map(|(k, s)| (s.id.as_str(), k))
        .collect();
    let mut message_of_execution: HashMap<String, usize> = HashMap::new();
    let mut calls: Vec<(usize, String, String)> = Vec::new();
    let mut results: HashMap<String, (bool, String)> = HashMap::new();
    for line in &transcript.values {
        let execution = line["execution_id"].as_str().unwrap_or("").to_owned();
        match line["role"].as_str() {
            Some("user") => {
                if let Some(&k) = line["message_id"].as_str().and_then(|m| index.get(m)) {
                    message_of_execution.insert(execution, k);
                }
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
            _ => {}
        }
    }
    for k in 0..sent.len() {
        let called: Vec<&str> = calls
            .iter()
            .filter(|(m, _, _)| *m == k)
            .map(|(_, _, mark)| mark.as_str())
            .collect();
        let own = format!("m{k}");
        if called != [own.as_str()] {
            tally.extra_calls += called.iter().filter(|m| **m != own).count() as u64;
            tally.problem(format!(
                "session {id}: message {k} called {called:?}, its script says [{own:?}]"
            ));
        }
    }

    let effects =
        std::fs::read_to_string(dir.join("workspace").join("effects.log")).unwrap_or_default();
    let mut runs: HashMap<String, u64> = HashMap::new();
    let mut cut_short = 0;
    for line in effects.lines() {
        match serde_json::from_str::<Value>(line)
            .ok()
            .and_then(|v| v["mark"].as_str().map(str::to_owned))
        {
            Some(mark) => *runs.entry(mark).or_default() += 1,
            // Its worker was killed while it wrote the call's input: an approved
            // call, answered "interrupted" (checked below).
            None => cut_short += 1,
        }
    }
    let interrupted_before = gate.approved_interrupted;
    for (_, call, mark) in &calls {
        let n = runs.remove(mark).unwrap_or(0);
        let result = results.get(call);
        match decisions.made.get(&(i, call.clone())) {
            None => {
                gate.unapproved_runs += n;
                tally.problem(format!(
                    "session {id}: call {call} ({mark}) was never decided; it ran {n} times, answered {result:?}"
                ));
            }
            Some(Verdict::Denied) => {
                gate.denied_runs += n;
                match result {
                    Some((true, content)) if content.contains("denied by") => {
                        gate.denied_answered += 1;
                    }
                    _ => tally.problem(format!(
                        "session {id}: denied call {call} answered {result:?}"
                    )),
                }
                if n > 0 {
                    tally.problem(format!("session {id}: denied call {call} ran {n} times"));
                }
            }
            Some(Verdict::Approved) => {
                if n > 1 {
                    gate.approved_run_twice += n - 1;
                    tally.problem(format!("session {id}: approved call {call} ran {n} times"));
                }
                match result {
                    Some((false, _)) if n == 0 => {
                        gate.missing_effects += 1;
                        tally.problem(format!(
                            "session {id}: approved call {call} was answered as run, but did not run"
                        ));
                    }
                    Some((false, _)) => gate.approved_ran += 1,
                    Some((true, content)) if content.starts_with("interrupted") => {
                        gate.approved_interrupted += 1;
                    }
                    _ => tally.problem(format!(
                        "session {id}: approved call {call} answered {result:?}"
                    )),
                }
            }
        }
    }
    let interrupted = gate.approved_interrupted - interrupted_before;
    gate.cut_short += cut_short;
    if cut_short > interrupted {
        gate.unapproved_runs += cut_short - interrupted;
        tally.problem(format!(
            "session {id}: {cut_short} cut-off runs, but only {interrupted} interrupted approved calls"
        ));
    }
    // What is left ran with no call of the transcript behind it.
    for (mark, n) in runs {
        gate.unapproved_runs += n;
        tally.problem(format!(
            "session {id}: {mark} ran {n} times without a call in the transcript"
        ));
    }
}

#[test]
fn kill_9_at_random_around_parked_approvals() {
    let iterations = env_number("FAULT_ITERATIONS").unwrap_or(DEFAULT_ITERATIONS);
    let seed = env_number("FAULT_SEED").unwrap_or_else(fresh_seed);
    println!(
        "FAULT-SUITE-SEED approvals seed={seed} iterations={iterations} (replay: FAULT_SEED={seed} FAULT_ITERATIONS={iterations})"
    );
    let mut rng = Rng::new(seed);
    let started = Instant::now();
    let env = TestEnv::new();
    let most = 2 + iterations as usize;
    env.write_agent("gated", &gated_agent(most));
    let ids: Vec<String> = (0..SESSIONS).map(|_| env.new_session("gated")).collect();
    let mut sent: Vec<Vec<Sent>> = vec![Vec::new(); SESSIONS];
    let mut decisions = Decisions::default();
    let mut kills = ParkKills::default();
    let mut problems = Vec::new();
    let mut early_runs = 0;

    for iteration in 0..iterations {
        top_up(&env, &ids, &mut sent, most);
        // Half the rounds decide what waits before the worker starts, the others
        // while it runs (and some both: what parks in the meantime).
        let before = rng.between(0, 1) == 0;
        if before {
            decisions.decide_waiting(&env, &ids, &mut rng, false, &mut problems);
        }
        let born = Instant::now();
        let mut worker = spawn_logged(&env, iteration);
        let pid = worker.child.id();
        let delay = Duration::from_millis(if rng.between(0, 4) == 0 {
            rng.between(0, 40)
        } else {
            rng.between(40, 400)
        });
        if !before || rng.between(0, 2) == 0 {
            let at = delay.mul_f64(rng.between(0, 100) as f64 / 100.0);
            sleep_until(born, at);
            decisions.decide_waiting(&env, &ids, &mut rng, true, &mut problems);
        }
        sleep_until(born, delay);
        stop(pid);
        match defer_past_limits(&env, &ids, pid) {
            Ok(deferred) => kills.deferred += u64::from(deferred),
            Err(e) => problems.push(e),
        }
        inspect_parks(
            &env,
            &ids,
            pid,
            &decisions,
            &mut kills,
            &mut early_runs,
            &mut problems,
        );
        kills.total += 1;
        kill(&mut worker, iteration, &mut problems);
    }
    let killing = started.elapsed();

    // Clean workers, with every waiting call decided before each, until every
    // message has finished (each round takes a session one message further).
    let mut drains: u64 = 0;
    loop {
        decisions.decide_waiting(&env, &ids, &mut rng, false, &mut problems);
        let out = env.run(&["worker", "--once", "--concurrency", "5"]);
        drains += 1;
        if code(&out) != 0 || stderr(&out).contains("panicked") {
            problems.push(format!("a final worker --once:\n{}", describe(&out)));
            break;
        }
        let left: usize = (0..SESSIONS)
            .map(|i| unfinished(&env, &ids[i], &sent[i]))
            .sum();
        if left == 0 || drains > 4 * QUEUED as u64 + 10 {
            break;
        }
    }

    let mut tally = Tally::default();
    let mut gate = GateTally::default();
    for (i, id) in ids.iter().enumerate() {
        audit_log(
            &env,
            id,
            &sent[i],
            &|text| format!("done: {text}"),
            &mut tally,
        );
        audit_gate(&env, i, id, &sent[i], &decisions, &mut gate, &mut tally);
        if env.pending(id) != 0 {
            tally.problem(format!(
                "session {id}: entries still pending after the drain"
            ));
        }
    }
    let files = check_files(env.home());
    tally.unparsable += (files.unparsable.len() + files.torn.len()) as u64;
    tally.missing_effects += gate.missing_effects;
    report(
        "approvals",
        &[
            ("seed", seed),
            ("iterations", iterations),
            ("kills", kills.total),
            ("kills_parked", kills.parked),
            ("kills_decision_unread", kills.decision_unread),
            ("kills_mid_tool", kills.mid_tool),
            ("kills_mid_execution", kills.mid_execution),
            ("deferred", kills.deferred),
            ("parks", gate.parks),
            ("parked_calls", gate.parked_calls),
            ("approvals", decisions.approvals),
            ("denials", decisions.denials),
            ("decided_with_no_worker", decisions.with_no_worker),
            ("decided_racing", decisions.racing),
            ("approved_ran", gate.approved_ran),
            ("approved_interrupted", gate.approved_interrupted),
            ("denied_answered", gate.denied_answered),
            ("cut_short_runs", gate.cut_short),
            ("unapproved_runs", gate.unapproved_runs + early_runs),
            ("approved_run_twice", gate.approved_run_twice),
            ("denied_runs", gate.denied_runs),
            ("final_drains", drains),
            ("killing_ms", killing.as_millis() as u64),
            ("total_ms", started.elapsed().as_millis() as u64),
        ]
        .into_iter()
        .chain(tally.counts())
        .collect::<Vec<_>>(),
    );

    let replay = format!("replay with FAULT_SEED={seed} FAULT_ITERATIONS={iterations}");
    if !problems.is_empty() || !tally.problems.is_empty() {
        println!(
            "FAULT-SUITE-REPRO seed={seed} approvals: FAULT_SEED={seed} FAULT_ITERATIONS={iterations}"
        );
    }
    assert!(problems.is_empty(), "{replay}: {}", problems.join("\n"));
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
    assert_eq!(
        (
            gate.unapproved_runs + early_runs,
            gate.approved_run_twice,
            gate.denied_runs
        ),
        (0, 0, 0),
        "{replay}: runs without approval, approved runs twice, denied runs"
    );
    assert_eq!(tally.completed, tally.messages, "{replay}");
    assert!(
        decisions.approvals > 0 && decisions.denials > 0 && kills.parked > 0,
        "{replay}: the schedule must approve, deny and kill while calls wait"
    );
}

// ---------------------------------------------------------------------------------
// Settling and completion hooks

/// Messages queued in every session before the first worker starts.
const FIRST_HOOKED: usize = 3;

/// An agent that answers `done: <message>` at once, with two hooks on every
/// execution: a command appending `AGENTQ_EXECUTION_ID AGENTQ_HOOK_ATTEMPT <stdin>` to
/// `hooks.log` in the workspace, and a POST to `url`.
fn hooked_agent(url: &str) -> String {
    format!(
        r#"name = "hooked"
description = "Answers at once; two hooks on every execution"
[model]
provider = "scripted"
[[model.script]]
text = "done: {{input}}"
delay_ms = 4
[[hooks.on_finish]]
argv = ["sh", "-c", 'line=$(cat); sleep 0.01; printf "%s %s %s\n" "$AGENTQ_EXECUTION_ID" "$AGENTQ_HOOK_ATTEMPT" "$line" >> hooks.log']
[[hooks.on_finish]]
url = "{url}/hooks/finished"
"#
    )
}

/// What the kills of the hook scenario hit, counted with the worker stopped.
#[derive(Default)]
struct HookKills {
    total: u64,
    /// Waited for a settle to happen, then killed within 15 ms of it.
    aimed: u64,
    /// The worker had an unsettled execution in hand.
    mid_execution: u64,
    /// An execution of this worker settled, its inbox entry not removed yet.
    settling: u64,
    /// Hooks were in a state to deliver.
    hooks_pending: u64,
    /// A hook had an attempt counted: running, or cut short by an earlier kill.
    mid_hook: u64,
    /// A state held hooks for an execution whose record was not settled yet (the
    /// state is written first).
    before_record: u64,
    deferred: u64,
}

/// The executions whose hooks some session's state holds to deliver.
fn hooks_pending(env: &TestEnv, ids: &[String]) -> HashSet<String> {
    let mut executions = HashSet::new();
    for id in ids {
        let state = read_json(&env.session_dir(id).join("state.json"))
            .ok()
            .flatten()
            .unwrap_or_default();
        for hook in state["hooks"].as_array().into_iter().flatten() {
            if let Some(execution) = hook["execution_id"].as_str() {
                executions.insert(execution.to_owned());
            }
        }
    }
    executions
}

fn inspect_hooks(
    env: &TestEnv,
    ids: &[String],
    pid: u32,
    kills: &mut HookKills,
    problems: &mut Vec<String>,
) {
    let (mut running, mut settling, mut pending, mut mid_hook, mut before_record) =
        (false, false, false, false, false);
    for id in ids {
        let dir = env.session_dir(id);
        let look = match Look::of(env, id) {
            Ok(Some(look)) => look,
            Ok(None) => continue,
            Err(e) => {
                problems.push(e);
                continue;
            }
        };
        let hooks = look.state["hooks"].as_array().cloned().unwrap_or_default();
        pending |= !hooks.is_empty();
        mid_hook |= hooks.iter().any(|h| h["attempts"].as_u64() > Some(0));
        let current = look.state["current"]["execution_id"].as_str();
        before_record |= !look.terminal()
            && hooks.iter().any(|h| {
                h["execution_id"].as_str().is_some() && h["execution_id"].as_str() == current
            });
        if look.record.is_some() && look.owned_by(pid) {
            if look.terminal() {
                let message = look.state["current"]["message_id"].as_str().unwrap_or("-");
                settling |= inbox_entries(&dir).iter().any(|n| n.contains(message));
            } else {
                running = true;
            }
        }
    }
    kills.mid_execution += u64::from(running);
    kills.settling += u64::from(settling);
    kills.hooks_pending += u64::from(pending);
    kills.mid_hook += u64::from(mid_hook);
    kills.before_record += u64::from(before_record);
}

/// The hooks' deliveries, over every session.
#[derive(Default)]
struct HookTally {
    executions: u64,
    /// Command runs (lines of `hooks.log`) and POSTs received.
    command_runs: u64,
    posts: u64,
    /// A hook of a settled execution with no delivery at all, or reported failed, or
    /// still in the state after the final drain.
    undelivered: u64,
    /// Deliveries beyond the first of a hook (at least once allows them).
    duplicate_deliveries: u64,
    /// Deliveries keyed otherwise than by their execution's id (the command's
    /// `AGENTQ_EXECUTION_ID`, the POST's `Idempotency-Key`, against the line given).
    key_mismatches: u64,
    /// Command runs given a cut-short line: their worker was killed while it wrote
    /// the line to their input, and they ran on (as a declared command may). Not
    /// deliveries; the next attempt is.
    cut_short: u64,
    /// Executions whose command hook saw the same attempt number twice.
    attempt_repeats: u64,
    completed_events: u64,
}

fn audit_hooks(
    env: &TestEnv,
    ids: &[String],
    requests: &[crate::it::fake_server::Recorded],
    hooks: &mut HookTally,
    tally: &mut Tally,
) {
    // By execution: the POSTs, with the line each carried.
    let mut posted: HashMap<String, Vec<Value>> = HashMap::new();
    for request in requests {
        hooks.posts += 1;
        let execution = request.body["execution_id"]
            .as_str()
            .unwrap_or("")
            .to_owned();
        if request.header("idempotency-key") != Some(execution.as_str()) {
            hooks.key_mismatches += 1;
            tally.problem(format!(
                "a POST for execution {execution:?} keyed {:?}",
                request.header("idempotency-key")
            ));
        }
        posted
            .entry(execution)
            .or_default()
            .push(request.body.clone());
    }
    let mut known = HashSet::new();
    for id in ids {
        let dir = env.session_dir(id);
        let finished: HashMap<String, Value> = events_of(env, id, "execution.finished")
            .into_iter()
            .filter_map(|e| Some((e["execution_id"].as_str()?.to_owned(), e)))
            .collect();
        let mut ran: HashMap<String, Vec<u64>> = HashMap::new();
        let mut cut_short: Vec<String> = Vec::new();
        let log =
            std::fs::read_to_string(dir.join("workspace").join("hooks.log")).unwrap_or_default();
        for line in log.lines() {
            hooks.command_runs += 1;
            let mut parts = line.splitn(3, ' ');
            let (key, attempt, given) = (parts.next(), parts.next(), parts.next());
            let given: Option<Value> = given.and_then(|g| serde_json::from_str(g).ok());
            let attempt = attempt.and_then(|a| a.parse::<u64>().ok());
            let (Some(key), Some(attempt)) = (key, attempt) else {
                tally.unparsable += 1;
                tally.problem(format!("session {id}: a hooks.log line {line:?}"));
                continue;
            };
            let Some(given) = given else {
                // Its worker was killed before it had written the whole line to the
                // command's input, and the command ran on regardless: not a delivery.
                hooks.cut_short += 1;
                cut_short.push(key.to_owned());
                continue;
            };
            let execution = given["execution_id"].as_str().unwrap_or("").to_owned();
            if key != execution {
                hooks.key_mismatches += 1;
                tally.problem(format!(
                    "session {id}: a command hook given execution {execution}'s line ran with AGENTQ_EXECUTION_ID={key}"
                ));
            }
            ran.entry(execution).or_default().push(attempt);
        }
        // Each hook's reports of one kind, by execution and hook: their errors (none
        // for `hook.completed`), one per event.
        let reported = |kind: &str| -> HashMap<(String, u64), Vec<String>> {
            let mut found: HashMap<_, Vec<String>> = HashMap::new();
            for event in events_of(env, id, kind) {
                let p = &event["payload"];
                let key = (
                    p["execution_id"].as_str().unwrap_or("").to_owned(),
                    p["hook"].as_u64().unwrap_or(u64::MAX),
                );
                let error = p["error"].as_str().unwrap_or("").to_owned();
                found.entry(key).or_default().push(error);
            }
            found
        };
        let completed = reported("hook.completed");
        let failed = reported("hook.failed");
        hooks.completed_events += completed
            .values()
            .map(|each| each.len() as u64)
            .sum::<u64>();
        for (execution, event) in &finished {
            hooks.executions += 1;
            known.insert(execution.clone());
            let runs = ran.get(execution).map_or(&[][..], Vec::as_slice);
            let posts = posted.get(execution).map_or(&[][..], Vec::as_slice);
            for (hook, n) in [(0u64, runs.len()), (1, posts.len())] {
                let key = (execution.clone(), hook);
                let done = completed.get(&key).map_or(0, Vec::len);
                let why = failed.get(&key).map_or(&[][..], Vec::as_slice);
                if n == 0 || done == 0 || !why.is_empty() {
                    hooks.undelivered += 1;
                    tally.problem(format!(
                        "session {id}: hook {hook} of execution {execution}: {n} deliveries, {done} hook.completed, {} hook.failed {why:?}",
                        why.len()
                    ));
                }
                hooks.duplicate_deliveries += (n as u64).saturating_sub(1);
            }
            let mut attempts = runs.to_vec();
            attempts.sort_unstable();
            attempts.dedup();
            if attempts.len() != runs.len() {
                hooks.attempt_repeats += 1;
            }
            for body in posts {
                if body != event {
                    tally.problem(format!(
                        "session {id}: execution {execution} was POSTed {body}, its line is {event}"
                    ));
                }
            }
        }
        for execution in ran.keys().chain(&cut_short) {
            if !finished.contains_key(execution) {
                tally.problem(format!(
                    "session {id}: a command hook ran for execution {execution}, which never finished"
                ));
            }
        }
        let left = env.state(id)["hooks"].as_array().map_or(0, Vec::len);
        if left > 0 {
            hooks.undelivered += left as u64;
            tally.problem(format!(
                "session {id}: {left} hooks left to deliver after the drain"
            ));
        }
    }
    for execution in posted.keys() {
        if !known.contains(execution) {
            tally.problem(format!(
                "a POST for execution {execution:?}, which no session finished"
            ));
        }
    }
}

#[test]
fn kill_9_at_random_around_settle_and_hooks() {
    let iterations = env_number("FAULT_ITERATIONS").unwrap_or(DEFAULT_ITERATIONS);
    let seed = env_number("FAULT_SEED").unwrap_or_else(fresh_seed);
    println!(
        "FAULT-SUITE-SEED hooks seed={seed} iterations={iterations} (replay: FAULT_SEED={seed} FAULT_ITERATIONS={iterations})"
    );
    let mut rng = Rng::new(seed);
    let started = Instant::now();
    let server = FakeServer::start(vec![Reply::json(200, json!({"ok": true}))]);
    let env = TestEnv::new();
    env.write_agent("hooked", &hooked_agent(&server.url()));
    let most = FIRST_HOOKED.max(iterations as usize * 2 / SESSIONS);
    let ids: Vec<String> = (0..SESSIONS).map(|_| env.new_session("hooked")).collect();
    let mut sent: Vec<Vec<Sent>> = vec![Vec::new(); SESSIONS];
    for _ in 0..FIRST_HOOKED {
        for i in 0..SESSIONS {
            send_next(&env, &ids, &mut sent, i);
        }
    }
    let mut kills = HookKills::default();
    let mut problems = Vec::new();

    for iteration in 0..iterations {
        top_up(&env, &ids, &mut sent, most);
        let left_over = hooks_pending(&env, &ids);
        let born = Instant::now();
        let mut worker = spawn_logged(&env, iteration);
        let pid = worker.child.id();
        // Two kills in three wait for this worker's first settle (hooks of a new
        // execution in a state) and land within 15 ms of it: in the settle's writes,
        // a hook's run or its POST, the writes after it. The others land anywhere in
        // the first 300 ms.
        if rng.between(0, 2) == 0 {
            sleep_until(born, Duration::from_millis(rng.between(0, 300)));
        } else {
            let until = born + Duration::from_secs(5);
            while hooks_pending(&env, &ids).is_subset(&left_over) && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(1));
            }
            kills.aimed += 1;
            std::thread::sleep(Duration::from_millis(rng.between(0, 15)));
        }
        stop(pid);
        match defer_past_limits(&env, &ids, pid) {
            Ok(deferred) => kills.deferred += u64::from(deferred),
            Err(e) => problems.push(e),
        }
        inspect_hooks(&env, &ids, pid, &mut kills, &mut problems);
        kills.total += 1;
        kill(&mut worker, iteration, &mut problems);
    }
    let killing = started.elapsed();

    // A clean worker settles what is left and delivers every hook still pending.
    let out = env.run(&["worker", "--once", "--concurrency", "5"]);
    if code(&out) != 0 || stderr(&out).contains("panicked") {
        problems.push(format!("the final worker --once:\n{}", describe(&out)));
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
        if env.pending(id) != 0 {
            tally.problem(format!(
                "session {id}: entries still pending after the drain"
            ));
        }
    }
    let mut hooks = HookTally::default();
    audit_hooks(&env, &ids, &server.requests(), &mut hooks, &mut tally);
    let files = check_files(env.home());
    tally.unparsable += (files.unparsable.len() + files.torn.len()) as u64;
    report(
        "hooks",
        &[
            ("seed", seed),
            ("iterations", iterations),
            ("kills", kills.total),
            ("kills_aimed", kills.aimed),
            ("kills_mid_execution", kills.mid_execution),
            ("kills_settling", kills.settling),
            ("kills_hooks_pending", kills.hooks_pending),
            ("kills_mid_hook", kills.mid_hook),
            ("kills_before_record", kills.before_record),
            ("deferred", kills.deferred),
            ("executions", hooks.executions),
            ("hook_command_runs", hooks.command_runs),
            ("hook_posts", hooks.posts),
            ("hook_completed_events", hooks.completed_events),
            ("hooks_undelivered", hooks.undelivered),
            ("hook_duplicate_deliveries", hooks.duplicate_deliveries),
            ("hook_key_mismatches", hooks.key_mismatches),
            ("hook_attempt_repeats", hooks.attempt_repeats),
            ("hook_cut_short", hooks.cut_short),
            ("killing_ms", killing.as_millis() as u64),
            ("total_ms", started.elapsed().as_millis() as u64),
        ]
        .into_iter()
        .chain(tally.counts())
        .collect::<Vec<_>>(),
    );

    let replay = format!("replay with FAULT_SEED={seed} FAULT_ITERATIONS={iterations}");
    if !problems.is_empty() || !tally.problems.is_empty() {
        println!(
            "FAULT-SUITE-REPRO seed={seed} hooks: FAULT_SEED={seed} FAULT_ITERATIONS={iterations}"
        );
    }
    assert!(problems.is_empty(), "{replay}: {}", problems.join("\n"));
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
    assert_eq!(
        (hooks.undelivered, hooks.key_mismatches),
        (0, 0),
        "{replay}: hooks undelivered, deliveries keyed otherwise"
    );
    assert_eq!(tally.completed, tally.messages, "{replay}");
    assert!(
        kills.hooks_pending > 0,
        "{replay}: the schedule must kill while hooks wait to be delivered"
    );
}
