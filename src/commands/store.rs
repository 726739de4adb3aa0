//! `agentq store migrate|copy`: the store itself rather than one session. `migrate`
//! says what opening the store did to agentq's schema (every command brings it up to
//! date on first use; this one is for doing it on purpose, and seeing it done).
//! `copy` moves a home's sessions to another store through the store-neutral
//! [`crate::store::SessionDump`]: each session exported as one consistent snapshot and
//! imported whole, never over a session that exists there. The source is kept.

use std::collections::HashSet;
use std::io::Write;
use std::sync::Arc;

use anyhow::{Context as _, Result};
use serde::Serialize;
use uuid::Uuid;

use super::Context;
use crate::cli::{StoreCommand, StoreCopyArgs};
use crate::ids::V7Ids;
use crate::plural::count;
use crate::store::{Store, dump};
use crate::time::SystemClock;

pub fn run(ctx: &Context, command: StoreCommand) -> Result<u8> {
    match command {
        StoreCommand::Migrate { json } => migrate(ctx, json),
        StoreCommand::Copy(args) => copy(ctx, args),
    }
}

#[derive(Serialize)]
struct Migration {
    store: String,
    /// Whether the store has a schema at all (the files have none).
    schema: bool,
    /// The version found and the version left; equal when nothing was to do.
    from: Option<i32>,
    to: Option<i32>,
    migrated: bool,
}

fn migrate(ctx: &Context, json: bool) -> Result<u8> {
    let store = ctx.store.describe();
    // Opening the store (for this command, as for every one) already brought the
    // schema up to date, under the migration lock: what it did is what is reported.
    let migration = match ctx.store.migrated() {
        None => Migration {
            store,
            schema: false,
            from: None,
            to: None,
            migrated: false,
        },
        Some(done) => Migration {
            store,
            schema: true,
            from: Some(done.from),
            to: Some(done.to),
            migrated: done.from != done.to,
        },
    };
    if json {
        ctx.out.json(&migration)?;
        return Ok(0);
    }
    let mut out = ctx.out.human();
    match (migration.from, migration.to) {
        (Some(from), Some(to)) if from != to => writeln!(
            out,
            "migrated agentq's schema in {} from version {from} to {to}",
            migration.store
        )?,
        (_, Some(to)) => writeln!(
            out,
            "agentq's schema in {} is already at version {to}",
            migration.store
        )?,
        _ => writeln!(
            out,
            "the file store ({}) has no schema: nothing to migrate",
            migration.store
        )?,
    }
    Ok(0)
}

/// What `store copy --json` prints.
#[derive(Serialize)]
struct Copied {
    from: String,
    to: String,
    sessions: Vec<CopiedSession>,
}

#[derive(Serialize)]
struct CopiedSession {
    id: Uuid,
    events: usize,
    executions: usize,
    pending: usize,
}

fn copy(ctx: &Context, args: StoreCopyArgs) -> Result<u8> {
    // The copy only imports: it takes no lease, so the lease's length does not matter.
    let target = crate::store::open(
        Some(&args.to),
        None,
        ctx.home.root(),
        Arc::new(SystemClock),
        Arc::new(V7Ids),
    )?;
    let (from, to) = (ctx.store.describe(), target.describe());
    if from == to {
        crate::usage_bail!("{to} is the store the sessions are in already; name another with --to");
    }
    let ids = chosen(ctx, &args.sessions)?;
    refuse_before_writing(&*ctx.store, &*target, &ids)?;
    let mut copied = Vec::new();
    for &id in &ids {
        let done = copy_one(&*ctx.store, &*target, id).with_context(|| {
            format!(
                "copying session {id} ({})",
                match copied.len() {
                    0 => "nothing copied before it".to_owned(),
                    n => format!(
                        "{} copied before it, and kept",
                        count(n as u64, "session", "sessions")
                    ),
                }
            )
        })?;
        if !args.json {
            writeln!(
                ctx.out.human(),
                "copied session {id}: {}, {}, {} pending",
                count(done.events as u64, "event", "events"),
                count(done.executions as u64, "execution", "executions"),
                done.pending
            )?;
        }
        copied.push(done);
    }
    if args.json {
        ctx.out.json(&Copied {
            from,
            to,
            sessions: copied,
        })?;
        return Ok(0);
    }
    let mut out = ctx.out.human();
    if copied.is_empty() {
        writeln!(out, "no sessions in {from}: nothing to copy")?;
    } else {
        writeln!(
            out,
            "copied {} from {from} to {to}; they are still in {from} (`agentq session rm ID` removes one there)",
            count(copied.len() as u64, "session", "sessions")
        )?;
    }
    Ok(0)
}

/// The sessions to copy: those `--session` names (whole ids or unique prefixes), or
/// every one, oldest first.
fn chosen(ctx: &Context, named: &[String]) -> Result<Vec<Uuid>> {
    if named.is_empty() {
        return ctx.store.session_ids();
    }
    let mut ids = Vec::new();
    for input in named {
        let id = ctx.store.resolve(input)?.id();
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    Ok(ids)
}

/// Refuses the whole copy, before anything is written, if one of the sessions exists
/// in the target or a worker owns it in the source. (Each import refuses an existing
/// id again, and each export an owned session, for what changes meanwhile.)
fn refuse_before_writing(source: &dyn Store, target: &dyn Store, ids: &[Uuid]) -> Result<()> {
    let existing: HashSet<Uuid> = target.session_ids()?.into_iter().collect();
    if let Some(id) = ids.iter().find(|id| existing.contains(id)) {
        return Err(dump::exists(*id, &target.describe()).into());
    }
    for &id in ids {
        if let Some(worker) = source.session(id).owner() {
            return Err(dump::owned(id, Some(&worker)).into());
        }
    }
    Ok(())
}

fn copy_one(source: &dyn Store, target: &dyn Store, id: Uuid) -> Result<CopiedSession> {
    let dump = source.export(id)?;
    target.import(&dump)?;
    Ok(CopiedSession {
        id,
        events: dump.events.len(),
        executions: dump.executions.len(),
        pending: dump.inbox.len(),
    })
}
