//! `agentq retry`: queues again the message of the session's last failed execution,
//! the way a job queue retries a failed job. The failed execution's record stays.
//!
//! When the failure is the last thing that happened in the session, the retry carries
//! on from where it failed (like `send --continue`), so the model does not see the
//! question twice; when later messages ran since, the original text is queued again.

use std::io::Write;

use anyhow::Result;

use super::Context;
use crate::cli::RetryArgs;
use crate::domain::execution::ExecStatus;
use crate::domain::inbox::{CONTINUE_KEY, EntryKind};
use crate::domain::transcript::Message;
use crate::error::UserError;
use crate::store::inbox;
use crate::store::session::{NewEntry, read_meta};

/// Metadata key naming the failed execution an entry retries.
pub const RETRY_OF_KEY: &str = "retry_of";

pub fn run(ctx: &Context, args: RetryArgs) -> Result<u8> {
    let dir = ctx.store.resolve(&args.id)?;
    let meta = read_meta(&dir)?;
    let executions = dir.executions()?;
    // A failure already retried (the retry ran, whatever its outcome) is done with.
    let retried: Vec<_> = executions.iter().filter_map(|e| e.retry_of).collect();
    let Some(failed) = executions
        .into_iter()
        .rev()
        .find(|e| e.status == ExecStatus::Failed && !retried.contains(&e.id))
    else {
        return Err(UserError::usage(format!(
            "session {} has no failed execution to retry",
            dir.id
        ))
        .into());
    };
    let queued_already = inbox::list(&dir.inbox_dir())?.entries.iter().any(|f| {
        f.entry.metadata.get(RETRY_OF_KEY).and_then(|v| v.as_str()) == Some(&failed.id.to_string())
    });
    if queued_already {
        return Err(UserError::usage(format!(
            "execution {} is already queued for a retry in session {}",
            failed.id, dir.id
        ))
        .into());
    }
    let mut metadata = serde_json::Map::new();
    metadata.insert(RETRY_OF_KEY.to_owned(), failed.id.to_string().into());
    let carry_on = meta.last_execution == Some(failed.id);
    let content = if carry_on {
        metadata.insert(CONTINUE_KEY.to_owned(), true.into());
        String::new()
    } else {
        let state = dir.read_state()?;
        let lines = ctx.store.read_transcript(&dir, state.transcript)?;
        let original = lines.into_iter().find_map(|line| match line.message {
            Message::User { content } if line.message_id == Some(failed.message_id) => {
                Some(content)
            }
            _ => None,
        });
        match original {
            Some(content) => content,
            // The failed message was itself a `--continue`: it carries on again.
            None => {
                metadata.insert(CONTINUE_KEY.to_owned(), true.into());
                String::new()
            }
        }
    };
    let queued = ctx.store.enqueue(
        &dir,
        NewEntry {
            kind: EntryKind::User,
            content,
            key: None,
            metadata,
            raise_session_tokens: 0,
        },
    )?;
    if args.json {
        super::print_json(&serde_json::json!({
            "session_id": dir.id,
            "message_id": queued.id,
            "retry_of": failed.id,
            "continues": carry_on,
        }))?;
    } else {
        writeln!(crate::commands::stdout(), "{}", queued.id)?;
    }
    Ok(0)
}
