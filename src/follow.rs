//! Following one message's execution until it settles, and the terminal view of a
//! session: what `send --wait`, `run` and `watch` share.
//!
//! [`wait_for_message`] reads the session's event log (through
//! [`Session::follow`], which the file store does by tailing the file) from where it
//! stood before the message was queued, passes every event to a renderer if there is one,
//! and returns the message's [`MessageResult`] once its `execution.finished` is read.
//! While it waits it says why nothing happens (no worker, a paused session) rather
//! than wait in silence. It prints nothing itself: events go to the caller's renderer,
//! notes to the caller's `note`.

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde::Serialize;
use uuid::Uuid;

use crate::domain::Usage;
use crate::domain::approval::AwaitingApproval;
use crate::domain::event::{Event, EventPayload, ExecutionFinished};
use crate::domain::execution::{CheckResult, ExecStatus, StopReason};
use crate::domain::session::SessionStatus;
use crate::error::UserError;
use crate::render::{Renderer, TerminalRenderer};
use crate::store::{Position, Session};
use crate::text::{FIELD_CAP, one_line};

/// The live view of a session on a terminal, its header (id, agent, title) drawn:
/// `watch`'s default there, and `run`'s. `spinners` when stderr is a terminal.
pub fn terminal_view<W: Write>(
    out: W,
    color: bool,
    spinners: bool,
    session: &dyn Session,
) -> Result<TerminalRenderer<W>> {
    let mut terminal = TerminalRenderer::new(out, color, spinners);
    let meta = session.meta()?;
    terminal.header(
        &session.id().to_string(),
        &meta.agent,
        meta.title.as_deref(),
    )?;
    Ok(terminal)
}

/// The result of one message, as `send --wait --json` and `run --json` print it.
#[derive(Debug, Clone, Serialize)]
pub struct MessageResult {
    pub session_id: Uuid,
    pub message_id: Uuid,
    pub execution_id: Option<Uuid>,
    pub status: ExecStatus,
    pub stop_reason: Option<StopReason>,
    pub exit_code: u8,
    pub response: Option<String>,
    /// The answer has no text: the model completed with nothing to say.
    pub empty: bool,
    /// The answer as JSON, for an agent with an `[output]` schema.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub structured: Option<serde_json::Value>,
    /// The agent's `[[checks]]` as their last round left them; absent without checks.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<CheckResult>,
    pub usage: Usage,
    pub steps: u32,
    pub error: Option<String>,
    /// With `--no-wait-approval`: the call the execution is parked on (it is still
    /// `running`, and the exit code is 4).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub awaiting_approval: Option<AwaitingApproval>,
}

/// Collects what the log says about one message's execution.
struct Tracker {
    session_id: Uuid,
    message_id: Uuid,
    execution_id: Option<Uuid>,
    response: Option<String>,
    empty: bool,
    structured: Option<serde_json::Value>,
    claimed: bool,
}

impl Tracker {
    fn new(session_id: Uuid, message_id: Uuid) -> Tracker {
        Tracker {
            session_id,
            message_id,
            execution_id: None,
            response: None,
            empty: false,
            structured: None,
            claimed: false,
        }
    }

    fn observe(&mut self, event: &Event) -> Option<MessageResult> {
        match &event.payload {
            EventPayload::ExecutionStarted(p) if p.message_id == self.message_id => {
                self.execution_id = event.execution_id;
                self.claimed = true;
            }
            EventPayload::MessageCompleted(p) if p.message_id == self.message_id => {
                self.response = Some(p.response.clone());
                self.empty = p.empty;
                self.structured = p.structured.clone();
            }
            EventPayload::ExecutionFinished(p)
                if p.message_id == Some(self.message_id)
                    || (p.message_id.is_none()
                        && event.execution_id.is_some()
                        && event.execution_id == self.execution_id) =>
            {
                return Some(self.result(event.execution_id, p));
            }
            _ => {}
        }
        None
    }

    fn result(&self, execution_id: Option<Uuid>, p: &ExecutionFinished) -> MessageResult {
        MessageResult {
            session_id: self.session_id,
            message_id: self.message_id,
            execution_id,
            status: p.status,
            stop_reason: p.stop_reason,
            exit_code: p.exit_code,
            response: self.response.clone(),
            empty: self.empty,
            structured: self.structured.clone(),
            checks: p.checks.clone(),
            usage: p.usage.execution,
            steps: p.steps,
            error: p.error.clone(),
            awaiting_approval: None,
        }
    }

    /// The call this message's execution parked on, if the event says so.
    fn parked_on(&self, event: &Event) -> Option<AwaitingApproval> {
        match &event.payload {
            EventPayload::ApprovalRequested(p)
                if self.execution_id.is_some() && event.execution_id == self.execution_id =>
            {
                Some(AwaitingApproval {
                    tool_call_id: p.tool_call_id.clone(),
                    tool_name: p.tool_name.clone(),
                    server: p.server.clone(),
                    step: p.step,
                    arguments: p.arguments.clone(),
                    requested_at: p.requested_at,
                    deny_at: p.deny_at,
                })
            }
            _ => None,
        }
    }

    /// The result of an execution that waits for approval: running, exit 4.
    fn waiting(&self, parked: AwaitingApproval) -> MessageResult {
        MessageResult {
            session_id: self.session_id,
            message_id: self.message_id,
            execution_id: self.execution_id,
            status: ExecStatus::Running,
            stop_reason: None,
            exit_code: crate::error::exit::AWAITING_APPROVAL,
            response: None,
            empty: false,
            structured: None,
            checks: Vec::new(),
            usage: Usage::default(),
            steps: parked.step.saturating_sub(1),
            error: None,
            awaiting_approval: Some(parked),
        }
    }
}

/// What a wait does when the message's execution parks on a call that needs approval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnApproval {
    /// Keep waiting (a person decides meanwhile), after saying how once.
    Wait,
    /// Return at once with exit code 4 (`--no-wait-approval`).
    Return,
}

/// How long `send --wait` waits for a worker before saying that none seems to run.
const NO_WORKER_HINT_AFTER: Duration = Duration::from_secs(10);

/// Follows the log from `from` until the execution of `message_id` finishes, passing
/// every event to `renderer` if there is one, and telling `note` once if the message
/// waits for something that may never come.
pub async fn wait_for_message(
    session: &dyn Session,
    from: Position,
    message_id: Uuid,
    timeout: Option<Duration>,
    on_approval: OnApproval,
    mut renderer: Option<&mut dyn Renderer>,
    note: &dyn Fn(&str),
) -> Result<MessageResult> {
    let mut follower = session.follow(from)?;
    let started = Instant::now();
    let mut hinted = false;
    let mut tracker = Tracker::new(session.id(), message_id);
    loop {
        for line in follower.read()? {
            let Some(event) = line.event.and_then(|raw| raw.into_event().ok().flatten()) else {
                continue;
            };
            if let Some(r) = renderer.as_deref_mut() {
                r.render(&event)?;
            }
            if let Some(result) = tracker.observe(&event) {
                if let Some(r) = renderer.as_deref_mut() {
                    r.finish()?;
                }
                return Ok(result);
            }
            if let Some(parked) = tracker.parked_on(&event) {
                if on_approval == OnApproval::Return {
                    if let Some(r) = renderer.as_deref_mut() {
                        r.finish()?;
                    }
                    return Ok(tracker.waiting(parked));
                }
                // A renderer shows the event, with the commands; without one, say it.
                if renderer.is_none() {
                    note(&waiting_note(session.id(), &parked));
                }
            }
        }
        if let Some(r) = renderer.as_deref_mut() {
            r.live()?;
        }
        if !follower.exists() {
            return Err(UserError::usage(format!(
                "session {} was removed while waiting",
                session.id()
            ))
            .into());
        }
        let waited = started.elapsed();
        if let Some(limit) = timeout
            && waited >= limit
        {
            return Err(UserError::unavailable(format!(
                "gave up waiting for message {message_id} after {}: {}",
                human_limit(limit),
                why_not_done(session, tracker.claimed)?
            ))
            .into());
        }
        // A paused session is said at once: no worker will take it however long we wait.
        if !tracker.claimed && !hinted && (waited >= NO_WORKER_HINT_AFTER || is_paused(session)?) {
            hinted = true;
            note(&format!(
                "waiting: message {message_id} is queued, but {}",
                why_not_done(session, false)?
            ));
        }
        tokio::select! {
            () = follower.wait() => {}
            _ = tokio::signal::ctrl_c() => return Err(Interrupted.into()),
        }
    }
}

/// Why what is waited for has not finished yet, for the messages of `--wait` and
/// `--timeout`: the running execution, a paused session, or no worker.
pub fn why_not_done(session: &dyn Session, running: bool) -> Result<String> {
    let awaiting = session
        .plain_state()
        .ok()
        .and_then(|state| state.current?.open_step?.awaiting);
    Ok(if let Some(awaiting) = awaiting.filter(|_| running) {
        format!(
            "its execution waits for approval of `{}` ({}): {}",
            one_line(&awaiting.tool_name, FIELD_CAP),
            one_line(&awaiting.tool_call_id, FIELD_CAP),
            crate::render::approval::commands(session.id(), &awaiting.tool_call_id)
        )
    } else if running {
        "its execution is still running".to_owned()
    } else if is_paused(session)? {
        let id = session.id();
        format!("session {id} is paused; workers skip it until `agentq session resume {id}`")
    } else {
        "no worker has picked it up; start one with `agentq worker` (`--once` to handle what is queued and exit)"
            .to_owned()
    })
}

fn is_paused(session: &dyn Session) -> Result<bool> {
    Ok(session.meta()?.status == SessionStatus::Paused)
}

/// A `--timeout` as its messages say it: `after 30s`.
pub fn human_limit(limit: Duration) -> String {
    crate::time::human_duration(u64::try_from(limit.as_millis()).unwrap_or(u64::MAX))
}

/// What a wait without a renderer says, once, of a call that waits for approval.
pub fn waiting_note(session: Uuid, parked: &AwaitingApproval) -> String {
    format!(
        "waiting for approval of `{}` ({}): {}",
        one_line(&parked.tool_name, FIELD_CAP),
        one_line(&parked.tool_call_id, FIELD_CAP),
        crate::render::approval::commands(session, &parked.tool_call_id)
    )
}

/// Ctrl-C while waiting; `main` exits 130 for it.
#[derive(Debug, thiserror::Error)]
#[error("interrupted")]
pub struct Interrupted;
