//! `agentq cancel`: asks the owner of a session to cancel the running execution (or the
//! next one to start), through a `cancel` entry in the inbox.

use std::io::Write;

use anyhow::Result;

use super::Context;
use crate::cli::CancelArgs;
use crate::domain::inbox::EntryKind;
use crate::store::NewEntry;

pub fn run(ctx: &Context, args: CancelArgs) -> Result<u8> {
    let session = ctx.store.resolve(&args.id)?;
    let id = session.id();
    let has_work = session
        .inbox()?
        .iter()
        .any(|entry| entry.kind == EntryKind::User);
    let requested = if has_work {
        Some(session.enqueue(NewEntry {
            kind: EntryKind::Cancel,
            content: String::new(),
            key: None,
            metadata: Default::default(),
            raise_session_tokens: 0,
        })?)
    } else {
        None
    };
    if args.json {
        ctx.out.json(&serde_json::json!({
            "session_id": id,
            "requested": requested.is_some(),
            "entry_id": requested.map(|r| r.id),
        }))?;
    } else {
        let mut out = ctx.out.stdout();
        match requested {
            Some(_) => writeln!(
                out,
                "cancel requested for session {id}: the running execution stops at its next safe point"
            )?,
            None => writeln!(
                out,
                "nothing to cancel: session {id} has no running or pending message"
            )?,
        }
    }
    Ok(0)
}
