//! `agentq send`: queues a message durably, whether or not a worker runs; with
//! `--wait`, follows the log until its execution finishes.

use std::io::Write;

use anyhow::Result;

use super::{Context, print_result};
use crate::cli::SendArgs;
use crate::config::HomeConfig;
use crate::domain::execution::ExecStatus;
use crate::domain::inbox::{CONTINUE_KEY, EntryKind};
use crate::error::UserError;
use crate::follow::{OnApproval, wait_for_message};
use crate::history::History;
use crate::store::{NewEntry, Position, Session};

/// The longest idempotency key: it is stored hex-encoded as a file name.
const MAX_KEY_BYTES: usize = 120;

pub fn run(ctx: &Context, args: SendArgs) -> Result<u8> {
    let timeout = args.timeout;
    if let Some(key) = &args.key
        && (key.is_empty() || key.len() > MAX_KEY_BYTES)
    {
        return Err(
            UserError::usage(format!("--key must be 1 to {MAX_KEY_BYTES} bytes long")).into(),
        );
    }
    let session = ctx.store.resolve(&args.id)?;
    let config = ctx.config()?;
    let (text, metadata) = if args.continue_ {
        check_continuable(&*session)?;
        if args.raise_budget.is_some() {
            check_raisable(ctx, &config, &*session)?;
        }
        let mut metadata = serde_json::Map::new();
        metadata.insert(CONTINUE_KEY.to_owned(), true.into());
        (String::new(), metadata)
    } else {
        let text = super::message_text(
            args.text,
            args.file.as_ref(),
            config.inbox.max_message_bytes,
        )?;
        (text, serde_json::Map::new())
    };
    // Where the log stands before this message, so `--wait` sees all of its events.
    let from = session.events_end()?;
    let queued = session.enqueue(NewEntry {
        kind: EntryKind::User,
        content: text,
        key: args.key,
        metadata,
        raise_session_tokens: args.raise_budget.unwrap_or(0),
    })?;
    if !args.wait {
        if args.json {
            ctx.out.json(&serde_json::json!({
                "session_id": session.id(),
                "message_id": queued.id,
                "seq": queued.seq,
                "duplicate": queued.duplicate,
            }))?;
        } else {
            writeln!(ctx.out.stdout(), "{}", queued.id)?;
        }
        return Ok(0);
    }
    // A repeated key names a message queued earlier: its events may be anywhere.
    let from = if queued.duplicate {
        Position::START
    } else {
        from
    };
    let note = |text: &str| ctx.out.note(text);
    let on_approval = if args.no_wait_approval {
        OnApproval::Return
    } else {
        OnApproval::Wait
    };
    let waited = wait_for_message(
        &*session,
        from,
        queued.id,
        timeout,
        on_approval,
        None,
        &note,
    );
    let result = super::runtime(1)?.block_on(waited)?;
    print_result(&ctx.out, &result, args.json)?;
    Ok(result.exit_code)
}

/// `--continue` carries on a task the last execution left unfinished: stopped by a
/// limit, failed (for example with the provider unavailable) or cancelled; once, so it
/// is refused while a continuation or a retry of that task waits in the inbox.
fn check_continuable(session: &dyn Session) -> Result<()> {
    let meta = session.meta()?;
    let id = session.id();
    let Some(last) = meta.last_execution else {
        return Err(UserError::usage(format!(
            "nothing to continue: session {id} has no finished execution yet"
        ))
        .into());
    };
    // session.json names it: a missing record is damage, said plainly.
    let status = session.execution(last)?.status;
    if status == ExecStatus::Completed {
        return Err(UserError::usage(format!(
            "nothing to continue: the last execution of session {id} completed; send a new message instead"
        ))
        .into());
    }
    if let Some(refusal) = History::read(session)?.already_queued(session, last)? {
        return Err(UserError::usage(refusal).into());
    }
    Ok(())
}

/// `--raise-budget` adds to `session_max_tokens`: refused where the session has none,
/// rather than accepted and doing nothing.
fn check_raisable(ctx: &Context, config: &HomeConfig, session: &dyn Session) -> Result<()> {
    let meta = session.meta()?;
    let (def, _) =
        crate::definition::load_named(&ctx.home.agents_dir(), &meta.agent, &meta.config, config)?;
    if def.limits.session_max_tokens.is_none() {
        return Err(UserError::usage(format!(
            "--raise-budget adds to session_max_tokens, which agent `{}` does not set for session {}: there is no budget to raise; drop --raise-budget",
            meta.agent,
            session.id()
        ))
        .into());
    }
    Ok(())
}
