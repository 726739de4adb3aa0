//! `agentq send`: queues a message durably, whether or not a worker runs; with
//! `--wait`, follows the log until its execution finishes.

use std::io::Write;

use anyhow::Result;

use super::Context;
use super::watch::wait_for_message;
use crate::cli::SendArgs;
use crate::domain::inbox::EntryKind;
use crate::error::UserError;
use crate::render::PlainRenderer;
use crate::store::session::NewEntry;
use crate::time::parse_duration;

/// The longest idempotency key: it is stored hex-encoded as a file name.
const MAX_KEY_BYTES: usize = 120;

pub fn run(ctx: &Context, args: SendArgs) -> Result<u8> {
    let timeout = args
        .timeout
        .as_deref()
        .map(|t| parse_duration(t).map_err(|e| UserError::usage(format!("--timeout: {e}"))))
        .transpose()?;
    if let Some(key) = &args.key
        && (key.is_empty() || key.len() > MAX_KEY_BYTES)
    {
        return Err(
            UserError::usage(format!("--key must be 1 to {MAX_KEY_BYTES} bytes long")).into(),
        );
    }
    let dir = ctx.store.resolve(&args.id)?;
    let config = ctx.config()?;
    let text = super::message_text(
        args.text,
        args.file.as_ref(),
        config.inbox.max_message_bytes,
    )?;
    // Where the log stands before this message, so `--wait` sees all of its events.
    let offset = std::fs::metadata(dir.events_path()).map_or(0, |m| m.len());
    let queued = ctx.store.enqueue(
        &dir,
        NewEntry {
            kind: EntryKind::User,
            content: text,
            key: args.key,
            metadata: Default::default(),
        },
    )?;
    if !args.wait {
        if args.json {
            super::print_json(&serde_json::json!({
                "session_id": dir.id,
                "message_id": queued.id,
                "seq": queued.seq,
                "duplicate": queued.duplicate,
            }))?;
        } else {
            writeln!(std::io::stdout().lock(), "{}", queued.id)?;
        }
        return Ok(0);
    }
    // A repeated key names a message queued earlier: its events may be anywhere.
    let offset = if queued.duplicate { 0 } else { offset };
    let result = super::runtime(1)?.block_on(wait_for_message::<std::io::Stdout>(
        &dir,
        offset,
        queued.id,
        timeout,
        None::<&mut PlainRenderer<std::io::Stdout>>,
    ))?;
    result.print(args.json)?;
    Ok(result.exit_code)
}
