//! `agentq retry`: queues again the message of the session's last failed execution,
//! the way a job queue retries a failed job: its text goes to the inbox once more, as a
//! new message the model answers afresh. The failed execution's record stays.
//!
//! A failure whose task is already queued again is refused (see [`crate::history`]),
//! so the model is never given one task twice.

use std::io::Write;

use anyhow::Result;

use super::Context;
use crate::cli::RetryArgs;
use crate::domain::execution::ExecStatus;
use crate::domain::inbox::EntryKind;
use crate::domain::inbox::RETRY_OF_KEY;
use crate::error::UserError;
use crate::history::History;
use crate::store::NewEntry;

pub fn run(ctx: &Context, args: RetryArgs) -> Result<u8> {
    let session = ctx.store.resolve(&args.id)?;
    let id = session.id();
    let history = History::read(&*session)?;
    let Some(failed) = history.open_failure() else {
        let any_failed = history
            .executions
            .iter()
            .any(|e| e.status == ExecStatus::Failed);
        let why = if any_failed {
            "each failed execution was retried or carried on since"
        } else {
            "nothing failed"
        };
        return Err(UserError::usage(format!(
            "session {id} has no failed execution to retry: {why}"
        ))
        .into());
    };
    if let Some(refusal) = history.already_queued(&*session, failed.id)? {
        return Err(UserError::usage(refusal).into());
    }
    let Some(text) = history.task_of(failed.id).and_then(|t| history.text_of(t)) else {
        return Err(UserError::usage(format!(
            "the message of execution {} is not in the transcript of session {id}; send it again instead",
            failed.id
        ))
        .into());
    };
    let mut metadata = serde_json::Map::new();
    metadata.insert(RETRY_OF_KEY.to_owned(), failed.id.to_string().into());
    let queued = session.enqueue(NewEntry {
        kind: EntryKind::User,
        content: text.to_owned(),
        key: None,
        metadata,
        raise_session_tokens: 0,
    })?;
    if args.json {
        ctx.out.json(&serde_json::json!({
            "session_id": id,
            "message_id": queued.id,
            "retry_of": failed.id,
            // Always false since a retry queues the text again; kept for the scripts
            // written when a retry could carry on instead.
            "continues": false,
        }))?;
    } else {
        writeln!(ctx.out.stdout(), "{}", queued.id)?;
    }
    Ok(0)
}
