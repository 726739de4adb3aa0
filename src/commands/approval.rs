//! What `approve` and `deny` share: finding the call a session's execution is parked
//! on, and queueing the decision as an inbox entry. Like `cancel`, this needs no
//! worker: the next one that takes the session acts on it.
//!
//! One decision per call: the entry's idempotency key names the execution, step and
//! call, so a second `approve` queues nothing (and says so), while a `deny` after an
//! `approve` (or the reverse) is refused, exit 2: the first decision stands, and may
//! have been acted on already.

use std::io::Write;

use anyhow::Result;
use serde::Serialize;
use uuid::Uuid;

use super::Context;
use crate::domain::approval::{DecidedBy, DecisionRef, Verdict};
use crate::domain::inbox::InboxEntry;
use crate::error::UserError;
use crate::store::{NewEntry, Session};
use crate::text::{FIELD_CAP, one_line};

/// A decision as the command line asks for it.
pub(super) struct Asked<'a> {
    pub session: &'a str,
    pub call: Option<&'a str>,
    pub verdict: Verdict,
    pub reason: Option<String>,
    pub json: bool,
}

/// What `--json` prints.
#[derive(Serialize)]
struct Decided {
    session_id: Uuid,
    execution_id: Uuid,
    tool_call_id: String,
    tool_name: Option<String>,
    decision: Verdict,
    /// The entry that records the decision (the first one, when it was made before).
    entry_id: Uuid,
    /// The same decision was queued before: nothing was queued now.
    duplicate: bool,
    by: DecidedBy,
}

/// The call a decision is about.
struct Target {
    call: DecisionRef,
    tool_name: Option<String>,
    /// A decision queued for it before.
    earlier: Option<InboxEntry>,
}

pub(super) fn decide(ctx: &Context, asked: Asked<'_>) -> Result<u8> {
    let session = ctx.store.resolve(asked.session)?;
    let target = target(&*session, asked.call)?;
    let by = this_user();
    let (entry_id, duplicate) = match &target.earlier {
        Some(earlier) => (agreed(&*session, &target, earlier, asked.verdict)?, true),
        None => {
            let queued = session.enqueue(NewEntry {
                kind: asked.verdict.kind(),
                content: asked.reason.clone().unwrap_or_default(),
                key: Some(target.call.key()),
                metadata: target.call.metadata(&by),
                raise_session_tokens: 0,
            })?;
            if queued.duplicate {
                // Another decision was queued between the look and this one.
                let earlier = session.inbox()?.into_iter().find(|e| e.id == queued.id);
                if let Some(earlier) = earlier {
                    agreed(&*session, &target, &earlier, asked.verdict)?;
                }
            }
            (queued.id, queued.duplicate)
        }
    };
    let id = session.id();
    let call = &target.call.tool_call_id;
    if asked.json {
        return ctx
            .out
            .json(&Decided {
                session_id: id,
                execution_id: target.call.execution_id,
                tool_call_id: call.clone(),
                tool_name: target.tool_name,
                decision: asked.verdict,
                entry_id,
                duplicate,
                by,
            })
            .map(|()| 0);
    }
    let mut out = ctx.out.stdout();
    let call = one_line(call, FIELD_CAP);
    let verdict = asked.verdict.as_str();
    if duplicate {
        writeln!(
            out,
            "call {call} of session {id} was already {verdict}; nothing changed"
        )?;
    } else {
        let next = match asked.verdict {
            Verdict::Approved => "the next worker that takes the session runs it",
            Verdict::Denied => "the model is told so when a worker takes the session",
        };
        writeln!(out, "{verdict} call {call} of session {id}: {next}")?;
    }
    Ok(0)
}

/// The call `prefix` names: the one the session waits on, or one decided before in
/// the execution that waits (a decision repeated). Exit 2 when there is none.
fn target(session: &dyn Session, prefix: Option<&str>) -> Result<Target> {
    let id = session.id();
    let state = session.state()?;
    let current = state.current.as_ref();
    let waiting = current.and_then(|current| {
        let awaiting = current.open_step.as_ref()?.awaiting.as_ref()?;
        Some(Target {
            call: DecisionRef {
                execution_id: current.execution_id,
                step: current.steps + 1,
                tool_call_id: awaiting.tool_call_id.clone(),
            },
            tool_name: Some(awaiting.tool_name.clone()),
            earlier: None,
        })
    });
    let decided: Vec<(DecisionRef, InboxEntry)> = match current {
        Some(current) => session
            .inbox()?
            .into_iter()
            .filter_map(|entry| Some((entry.decides()?, entry)))
            .filter(|(call, _)| call.execution_id == current.execution_id)
            .collect(),
        None => Vec::new(),
    };
    let earlier = |call: &DecisionRef| {
        decided
            .iter()
            .filter(|(decided, _)| decided == call)
            .map(|(_, entry)| entry)
            .min_by_key(|entry| entry.seq)
            .cloned()
    };
    let nothing_waits = || {
        UserError::usage(format!(
            "session {id} has no call waiting for approval; `agentq session show {id}` shows what it does"
        ))
    };
    let Some(prefix) = prefix else {
        let mut waiting = waiting.ok_or_else(nothing_waits)?;
        waiting.earlier = earlier(&waiting.call);
        return Ok(waiting);
    };
    // The waiting call first, then the ones decided before, each matched whole first.
    let mut candidates: Vec<Target> = waiting.into_iter().collect();
    for (call, _) in &decided {
        if candidates.iter().all(|t| t.call != *call) {
            candidates.push(Target {
                call: call.clone(),
                tool_name: None,
                earlier: None,
            });
        }
    }
    let exact = candidates
        .iter()
        .position(|t| t.call.tool_call_id == prefix);
    let matching: Vec<usize> = match exact {
        Some(i) => vec![i],
        None => (0..candidates.len())
            .filter(|i| candidates[*i].call.tool_call_id.starts_with(prefix))
            .collect(),
    };
    match matching.as_slice() {
        [i] => {
            let mut target = candidates.swap_remove(*i);
            target.earlier = earlier(&target.call);
            Ok(target)
        }
        [] => Err(match candidates.first().filter(|t| t.tool_name.is_some()) {
            Some(waiting) => UserError::usage(format!(
                "session {id} waits for approval of call {} (`{}`), not `{}`; give that call id, or none",
                waiting.call.tool_call_id,
                waiting.tool_name.as_deref().unwrap_or_default(),
                one_line(prefix, FIELD_CAP)
            )),
            None => nothing_waits(),
        }
        .into()),
        _ => Err(UserError::usage(format!(
            "`{}` matches more than one call of session {id}; give the whole call id",
            one_line(prefix, FIELD_CAP)
        ))
        .into()),
    }
}

/// A decision made before stands: the same one again is a no-op (its entry's id), the
/// other one is refused.
fn agreed(
    session: &dyn Session,
    target: &Target,
    earlier: &InboxEntry,
    verdict: Verdict,
) -> Result<Uuid> {
    if earlier.kind == verdict.kind() {
        return Ok(earlier.id);
    }
    let (was, cannot) = match verdict {
        Verdict::Approved => ("denied", "approved"),
        Verdict::Denied => ("approved", "denied"),
    };
    Err(UserError::usage(format!(
        "call {} of session {} was already {was} (by {}); it cannot be {cannot} now",
        target.call.tool_call_id,
        session.id(),
        one_line(&earlier.decided_by().user, FIELD_CAP)
    ))
    .into())
}

/// Who is deciding, for the record: this process's user and uid.
fn this_user() -> DecidedBy {
    // SAFETY: getuid has no preconditions and cannot fail.
    let uid = unsafe { libc::getuid() };
    let user = ["USER", "LOGNAME"]
        .iter()
        .find_map(|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
        .unwrap_or_else(|| format!("uid {uid}"));
    DecidedBy {
        user,
        uid: Some(uid),
    }
}
