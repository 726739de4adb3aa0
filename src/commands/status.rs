//! `agentq status`: the home at a glance for whoever runs the workers — what waits and
//! since when, what runs and who owns it, what failed in the last day, which workers
//! are alive. Always exits 0: it reports problems, it does not have them.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Result;
use serde::Serialize;
use uuid::Uuid;

use super::Context;
use crate::domain::approval::AwaitingApproval;
use crate::domain::execution::{ExecStatus, StopReason, WorkerInfo};
use crate::plural::count;
use crate::store::{InboxCounts, Session, WorkerRecord};
use crate::text::{ERROR_CAP, FIELD_CAP, one_line};
use crate::time::{Timestamp, human_duration};

const DAY_MS: i64 = 24 * 3600 * 1000;

#[derive(Serialize)]
struct Status {
    home: PathBuf,
    now: Timestamp,
    /// Messages waiting in all sessions (the running ones are under `running`).
    pending: usize,
    oldest_pending: Option<Pending>,
    sessions: Vec<SessionPending>,
    running: Vec<Running>,
    failed_last_24h: Vec<Failure>,
    workers: Vec<WorkerRecord>,
    /// Sessions (or the workers) that could not be read, with why.
    unreadable: Vec<String>,
    /// The workers could not be listed (said in `unreadable`): none listed is not none
    /// running.
    #[serde(skip)]
    workers_unknown: bool,
}

#[derive(Serialize, Clone)]
struct Pending {
    session_id: Uuid,
    queued_at: Timestamp,
    age_ms: u64,
}

#[derive(Serialize)]
struct SessionPending {
    id: Uuid,
    agent: String,
    status: String,
    pending: usize,
    oldest_queued_at: Option<Timestamp>,
}

#[derive(Serialize)]
struct Running {
    session_id: Uuid,
    execution_id: Uuid,
    message_id: Uuid,
    /// The worker holding the session now; `None` when its worker died (the next
    /// worker resumes it).
    owner: Option<WorkerInfo>,
    /// Left at a checkpoint by a worker that stopped (not one that died); nothing runs
    /// it until the next worker takes the session.
    suspended: bool,
    /// The call it is parked on, waiting for `agentq approve` or `deny`.
    #[serde(skip_serializing_if = "Option::is_none")]
    awaiting_approval: Option<AwaitingApproval>,
    step: u32,
    attempt: u32,
    started_at: Timestamp,
    elapsed_ms: u64,
}

#[derive(Serialize)]
struct Failure {
    session_id: Uuid,
    execution_id: Uuid,
    finished_at: Option<Timestamp>,
    stop_reason: Option<StopReason>,
    error: Option<String>,
}

pub fn run(ctx: &Context, json: bool) -> Result<u8> {
    let status = gather(ctx);
    if json {
        ctx.out.json(&status)?;
    } else {
        print(&mut ctx.out.human(), &status)?;
    }
    Ok(0)
}

fn gather(ctx: &Context) -> Status {
    let store = &ctx.store;
    let now = store.clock().now();
    let mut status = Status {
        home: ctx.home.root().to_owned(),
        now,
        pending: 0,
        oldest_pending: None,
        sessions: Vec::new(),
        running: Vec::new(),
        failed_last_24h: Vec::new(),
        workers: Vec::new(),
        unreadable: Vec::new(),
        workers_unknown: false,
    };
    match store.session_ids() {
        Ok(ids) => {
            for id in ids {
                if let Err(e) = gather_session(&*store.session(id), now, &mut status) {
                    let e = super::advice::explain_damage(e, &id.to_string());
                    status
                        .unreadable
                        .push(format!("session {id}: {}", crate::error::render(&e)));
                }
            }
        }
        Err(e) => status.unreadable.push(format!("{}: {e}", store.describe())),
    }
    // Listed after the sessions: a worker registers before it claims, so every owner
    // named above is among the workers listed now. Listed first, a worker starting
    // meanwhile would be seen owning an execution and missing from the workers.
    match store.live_workers() {
        Ok(workers) => status.workers = workers,
        Err(e) => {
            status.workers_unknown = true;
            status
                .unreadable
                .push(format!("workers: {}", crate::error::render(&e)));
        }
    }
    status
        .failed_last_24h
        .sort_by_key(|f| std::cmp::Reverse(f.finished_at));
    status
}

fn gather_session(session: &dyn Session, now: Timestamp, status: &mut Status) -> Result<()> {
    let id = session.id();
    // Plain: the damage is worded once, for the whole line (see `gather`).
    let meta = session.plain_meta()?;
    // The message being run is counted under `running`, not as waiting: one look at
    // the execution in progress decides both, or a claim between two looks would
    // count its message twice (waiting, then running).
    let running = session.running_execution();
    let counts = InboxCounts::of(
        session.inbox()?.iter(),
        running.as_ref().map(|exec| exec.message_id),
    );
    if counts.waiting > 0 {
        status.pending += counts.waiting;
        status.sessions.push(SessionPending {
            id,
            agent: meta.agent.clone(),
            status: meta.status.as_str().to_owned(),
            pending: counts.waiting,
            oldest_queued_at: counts.oldest_waiting,
        });
        if let Some(queued_at) = counts.oldest_waiting
            && status
                .oldest_pending
                .as_ref()
                .is_none_or(|o| queued_at < o.queued_at)
        {
            status.oldest_pending = Some(Pending {
                session_id: id,
                queued_at,
                age_ms: now.millis_since(queued_at),
            });
        }
    }
    if let Ok(state) = session.plain_state()
        && let Some(exec) = running
        && let Some(current) = state.current
    {
        status.running.push(Running {
            session_id: id,
            execution_id: exec.id,
            message_id: exec.message_id,
            owner: session.owner(),
            suspended: exec.suspended,
            step: current.steps + 1,
            attempt: exec.attempts,
            started_at: exec.started_at,
            // The wait for approval is no time the execution ran.
            elapsed_ms: now
                .millis_since(exec.started_at)
                .saturating_sub(current.parked_ms),
            awaiting_approval: exec.awaiting_approval,
        });
    }
    if meta.counters.failed > 0 {
        for exec in session.executions()? {
            let recent = exec.finished_at.is_some_and(|t| t.0 >= now.0 - DAY_MS);
            if exec.status == ExecStatus::Failed && recent {
                status.failed_last_24h.push(Failure {
                    session_id: id,
                    execution_id: exec.id,
                    finished_at: exec.finished_at,
                    stop_reason: exec.stop_reason,
                    error: exec.error.map(|e| e.message),
                });
            }
        }
    }
    Ok(())
}

/// The page for people: one line per fact, a section per kind (home, workers,
/// pending, running, failed, unreadable), each line starting with what it is about.
fn print(out: &mut impl Write, s: &Status) -> Result<()> {
    let home = s.home.display().to_string();
    writeln!(out, "home      {}", one_line(&home, ERROR_CAP))?;
    print_workers(out, s)?;
    print_pending(out, s)?;
    for r in &s.running {
        print_running(out, r)?;
    }
    print_failed(out, &s.failed_last_24h)?;
    for problem in &s.unreadable {
        writeln!(out, "unreadable {}", one_line(problem, ERROR_CAP))?;
    }
    Ok(())
}

fn print_workers(out: &mut impl Write, s: &Status) -> Result<()> {
    if s.workers_unknown {
        writeln!(
            out,
            "workers   unknown: they could not be listed (see below)"
        )?;
        return Ok(());
    }
    if s.workers.is_empty() {
        writeln!(
            out,
            "workers   none running; start one with `agentq worker`"
        )?;
        return Ok(());
    }
    let list: Vec<String> = s
        .workers
        .iter()
        .map(|w| {
            format!(
                "pid {} on {} (for {})",
                w.pid,
                one_line(&w.host, FIELD_CAP),
                human_duration(s.now.millis_since(w.started_at))
            )
        })
        .collect();
    writeln!(
        out,
        "workers   {} live: {}",
        s.workers.len(),
        list.join(", ")
    )?;
    Ok(())
}

fn print_pending(out: &mut impl Write, s: &Status) -> Result<()> {
    match &s.oldest_pending {
        None => writeln!(out, "pending   nothing")?,
        Some(oldest) => writeln!(
            out,
            "pending   {} in {}; the oldest waits for {} (session {})",
            count(s.pending as u64, "message", "messages"),
            count(s.sessions.len() as u64, "session", "sessions"),
            human_duration(oldest.age_ms),
            oldest.session_id
        )?,
    }
    for p in &s.sessions {
        writeln!(
            out,
            "          {} {} ({}): {} pending",
            p.id,
            one_line(&p.agent, FIELD_CAP),
            p.status,
            p.pending
        )?;
    }
    Ok(())
}

fn print_running(out: &mut impl Write, r: &Running) -> Result<()> {
    let (state, owner) = match &r.owner {
        Some(w) => (
            "running  ",
            format!("worker {} on {}", w.pid, one_line(&w.host, FIELD_CAP)),
        ),
        None if let Some(waiting) = &r.awaiting_approval => (
            "waiting  ",
            format!(
                "approval of `{}` ({}) since {}: agentq approve {} {}",
                one_line(&waiting.tool_name, FIELD_CAP),
                one_line(&waiting.tool_call_id, FIELD_CAP),
                waiting.requested_at,
                r.session_id,
                one_line(&waiting.tool_call_id, FIELD_CAP)
            ),
        ),
        None if r.suspended => (
            "suspended",
            "left at a checkpoint by a stopped worker (the next one resumes it)".to_owned(),
        ),
        None => (
            "running  ",
            "no live worker (the next one resumes it)".to_owned(),
        ),
    };
    writeln!(
        out,
        "{state} session {} · step {} · attempt {} · {} · {}",
        r.session_id,
        r.step,
        r.attempt,
        human_duration(r.elapsed_ms),
        owner
    )?;
    Ok(())
}

/// The failures of the last day, newest first; the ten newest are listed.
fn print_failed(out: &mut impl Write, failed: &[Failure]) -> Result<()> {
    if failed.is_empty() {
        writeln!(out, "failed    none in the last 24 hours")?;
        return Ok(());
    }
    writeln!(out, "failed    {} in the last 24 hours:", failed.len())?;
    for f in failed.iter().take(10) {
        writeln!(
            out,
            "          session {} ({}): {}",
            f.session_id,
            f.stop_reason.map_or("", |r| r.as_str()),
            one_line(f.error.as_deref().unwrap_or(""), ERROR_CAP)
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::Output;

    #[test]
    fn an_empty_home_has_nothing_waiting_running_or_failed() {
        let home = tempfile::tempdir().unwrap();
        std::fs::create_dir(home.path().join("sessions")).unwrap();
        let (out, captured) = Output::captured();
        let ctx = Context::with_files(Some(home.path().to_owned()), out).unwrap();
        assert_eq!(run(&ctx, false).unwrap(), 0);
        assert_eq!(
            captured.stdout(),
            format!(
                "home      {}\n\
                 workers   none running; start one with `agentq worker`\n\
                 pending   nothing\n\
                 failed    none in the last 24 hours\n",
                home.path().display()
            )
        );
    }
}
