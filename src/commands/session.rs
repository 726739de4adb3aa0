//! `agentq session new|list|show|messages|close|pause|resume|rm`.

use std::collections::BTreeMap;
use std::io::Write;

use anyhow::Result;
use serde::Serialize;

use super::Context;
use super::advice::{advise, explain_damage};
use super::listing::{Listed, listed};
use crate::agent::Budgets;
use crate::cli::{SessionCommand, SessionNewArgs, StatusFilter};
use crate::definition;
use crate::domain::execution::{ExecStatus, Execution, WorkerInfo};
use crate::domain::inbox::EntryKind;
use crate::domain::session::{SessionMeta, SessionStatus};
use crate::domain::state::{Todo, TodoStatus};
use crate::domain::transcript::{Feedback, Message};
use crate::error::{Remedy, UserError};
use crate::plural::count;
use crate::store::{NewSession, Session};
use crate::text::{ERROR_CAP, FIELD_CAP, one_line, preview, sanitize, summarize_args};
use crate::time::human_duration;
use uuid::Uuid;

pub fn run(ctx: &Context, command: SessionCommand) -> Result<u8> {
    match command {
        SessionCommand::New(args) => new(ctx, args),
        SessionCommand::List { status, json } => list(ctx, status, json),
        SessionCommand::Show { id, json } => show(ctx, &id, json),
        SessionCommand::Messages { id, json } => messages(ctx, &id, json),
        SessionCommand::Close { id } => set_status(ctx, &id, SessionStatus::Closed),
        SessionCommand::Pause { id } => set_status(ctx, &id, SessionStatus::Paused),
        SessionCommand::Resume { id } => set_status(ctx, &id, SessionStatus::Active),
        SessionCommand::Rm { id } => remove(ctx, &id),
    }
}

fn parse_overrides(pairs: &[String]) -> Result<BTreeMap<String, serde_json::Value>, UserError> {
    let mut overrides = BTreeMap::new();
    for pair in pairs {
        let Some((key, value)) = pair.split_once('=') else {
            return Err(UserError::usage(format!(
                "--set `{}` needs the form KEY=VALUE, e.g. limits.max_steps=5",
                pair.escape_default()
            )));
        };
        let key = key.trim();
        if key.is_empty()
            || !key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
        {
            return Err(UserError::usage(format!(
                "--set `{}`: the key must be a dotted name such as limits.max_steps",
                key.escape_default()
            )));
        }
        let value = definition::parse_override_value(value.trim())
            .map_err(|e| UserError::usage(format!("--set `{}`: {e}", key.escape_default())))?;
        overrides.insert(key.to_owned(), value);
    }
    Ok(overrides)
}

fn new(ctx: &Context, args: SessionNewArgs) -> Result<u8> {
    let overrides = parse_overrides(&args.set)?;
    let config = ctx.config()?;
    let (_, source) = definition::load_named(
        &ctx.home.agents_dir(),
        &args.agent,
        &BTreeMap::new(),
        &config,
    )?;
    if let Err(problems) = source.load(&overrides, &config) {
        let listed: Vec<String> = problems.iter().map(ToString::to_string).collect();
        return Err(UserError::usage(format!(
            "--set does not fit agent `{}`: {}",
            args.agent,
            listed.join("; ")
        ))
        .into());
    }
    let meta = ctx.store.create_session(NewSession {
        agent: args.agent,
        title: args.title,
        config: overrides,
        events: args.events,
        agent_hash: source.hash(),
    })?;
    if args.json {
        ctx.out.json(&meta)?;
    } else {
        writeln!(ctx.out.stdout(), "{}", meta.id)?;
    }
    Ok(0)
}

fn list(ctx: &Context, status: Option<StatusFilter>, json: bool) -> Result<u8> {
    let rows = listed_rows(ctx, status)?;
    if json {
        ctx.out.json(&rows)?;
        return Ok(0);
    }
    let mut out = ctx.out.human();
    if rows.is_empty() {
        writeln!(out, "no sessions")?;
        return Ok(0);
    }
    // Prefixes unique among all sessions, so what is shown can be typed back.
    let all: Vec<String> = ctx
        .store
        .session_ids()?
        .iter()
        .map(Uuid::to_string)
        .collect();
    let prefixes = unique_prefixes(&all, 8);
    let now = ctx.store.clock().now();
    let cells: Vec<[String; 8]> = rows
        .iter()
        .map(|r| {
            let id = r.id.to_string();
            [
                prefixes.get(&id).cloned().unwrap_or(id),
                one_line(&r.agent, FIELD_CAP).into_owned(),
                r.status.as_str().to_owned(),
                r.messages.to_string(),
                r.pending.to_string(),
                r.usage.total.to_string(),
                format!("{} ago", human_duration(now.millis_since(r.updated_at))),
                one_line(r.title.as_deref().unwrap_or(""), FIELD_CAP).into_owned(),
            ]
        })
        .collect();
    let header = [
        "ID", "AGENT", "STATUS", "MSGS", "PENDING", "TOKENS", "ACTIVE", "TITLE",
    ];
    let numeric = [false, false, false, true, true, true, true, false];
    for line in table(header, numeric, &cells) {
        writeln!(out, "{line}")?;
    }
    Ok(0)
}

/// The sessions `list` shows, those of `status` if given. One damaged session is
/// reported and skipped; the others are listed.
fn listed_rows(ctx: &Context, status: Option<StatusFilter>) -> Result<Vec<Listed>> {
    let mut rows = Vec::new();
    for id in ctx.store.session_ids()? {
        match listed(&*ctx.store.session(id)) {
            Ok(row) if status.is_none_or(|s| s.matches(row.status)) => rows.push(row),
            Ok(_) => {}
            Err(err) => ctx.out.note(&format!(
                "skipping session {id}: {}",
                crate::error::render(&explain_damage(err, &id.to_string()))
            )),
        }
    }
    Ok(rows)
}

/// The lines of a table with a header: columns two spaces apart, as wide as their
/// widest cell, `numeric` ones right-aligned; nothing trails a line.
fn table<const N: usize>(
    header: [&str; N],
    numeric: [bool; N],
    rows: &[[String; N]],
) -> Vec<String> {
    let widths: Vec<usize> = (0..N)
        .map(|c| {
            rows.iter()
                .map(|row| row[c].chars().count())
                .chain([header[c].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let format_row = |cells: &[String]| {
        let mut line = String::new();
        for (c, cell) in cells.iter().enumerate() {
            let last = c + 1 == cells.len();
            let pad = widths[c].saturating_sub(cell.chars().count());
            match (numeric[c], last) {
                (true, _) => line.push_str(&format!("{}{cell}", " ".repeat(pad))),
                (false, true) => line.push_str(cell),
                (false, false) => line.push_str(&format!("{cell}{}", " ".repeat(pad))),
            }
            if !last {
                line.push_str("  ");
            }
        }
        line.trim_end().to_owned()
    };
    std::iter::once(format_row(&header.map(str::to_owned)))
        .chain(rows.iter().map(|row| format_row(row)))
        .collect()
}

/// For each id, its shortest prefix of at least `min` characters that no other id
/// shares.
fn unique_prefixes(ids: &[String], min: usize) -> std::collections::HashMap<String, String> {
    let mut sorted: Vec<&String> = ids.iter().collect();
    sorted.sort();
    let common = |a: &str, b: &str| a.bytes().zip(b.bytes()).take_while(|(x, y)| x == y).count();
    let mut prefixes = std::collections::HashMap::new();
    for (i, id) in sorted.iter().enumerate() {
        let before = if i > 0 { common(id, sorted[i - 1]) } else { 0 };
        let after = sorted.get(i + 1).map_or(0, |next| common(id, next));
        let len = (before.max(after) + 1).max(min).min(id.len());
        prefixes.insert((*id).clone(), id[..len].to_owned());
    }
    prefixes
}

#[derive(Serialize)]
struct Shown {
    session: SessionMeta,
    pending: usize,
    /// The execution in progress, if one is running (or was left running by a crash).
    running: Option<Execution>,
    last_execution: Option<Execution>,
    /// The limits in force for the next execution; absent when the definition is
    /// missing or invalid.
    budgets: Option<ShownBudgets>,
    todos: Vec<Todo>,
    /// The most recent failed executions (at most ten), newest first.
    failed: Vec<Execution>,
    /// The worker (`{pid, host}`) that last owned the session, running or not: with a
    /// database store, the host whose `workspaces/<id>/` holds the session's files.
    last_worker: Option<WorkerInfo>,
}

#[derive(Serialize)]
struct ShownBudgets {
    max_steps: u32,
    max_tokens: Option<u64>,
    session_max_tokens: Option<u64>,
    timeout_ms: Option<u64>,
    max_cost_usd: Option<f64>,
    on_tool_error: String,
    max_consecutive_errors: u32,
}

fn budgets(ctx: &Context, meta: &SessionMeta) -> Option<ShownBudgets> {
    let home = ctx.config().ok()?;
    let (def, _) =
        definition::load_named(&ctx.home.agents_dir(), &meta.agent, &meta.config, &home).ok()?;
    let b = Budgets::from_def(&def, meta.extra_session_tokens, None);
    Some(ShownBudgets {
        max_steps: b.max_steps,
        max_tokens: b.max_tokens,
        session_max_tokens: b.session_max_tokens,
        timeout_ms: b
            .timeout
            .map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
        max_cost_usd: b.max_cost_usd,
        on_tool_error: format!("{:?}", b.on_tool_error).to_lowercase(),
        max_consecutive_errors: b.max_consecutive_errors,
    })
}

fn show(ctx: &Context, id: &str, json: bool) -> Result<u8> {
    let session = ctx.store.resolve(id)?;
    let shown = gather_shown(ctx, &*session)?;
    if json {
        ctx.out.json(&shown)?;
        return Ok(0);
    }
    let mut out = ctx.out.human();
    print_record(
        &mut out,
        &shown.session,
        definition_change(ctx, &shown.session),
    )?;
    print_counts(&mut out, &shown)?;
    if let Some(worker) = &shown.last_worker {
        writeln!(
            out,
            "host      {} (last run by worker {})",
            one_line(&worker.host, FIELD_CAP),
            worker.pid
        )?;
    }
    print_failed_and_todos(&mut out, &shown)?;
    if let Some(e) = &shown.running {
        print_running(&mut out, e)?;
    }
    if let Some(e) = &shown.last_execution {
        print_last(&mut out, e)?;
    }
    Ok(0)
}

/// Everything `show` reports of a session. A damaged execution record is reported,
/// and the rest of the session still shown.
fn gather_shown(ctx: &Context, session: &dyn Session) -> Result<Shown> {
    let meta = session.meta()?;
    let state = session.state()?;
    let running = session.running_execution();
    let last_execution = meta
        .last_execution
        .and_then(|id| match session.execution(id) {
            Ok(exec) => Some(exec),
            Err(err) => {
                // What the store says, and the way out of a damaged record (which no
                // worker rebuilds).
                let damaged =
                    UserError::failed(err.to_string()).with_remedy(Remedy::RepairOrRemove {
                        session: session.id(),
                    });
                let line = format!(
                    "agentq: {}\n",
                    crate::error::render(&advise(damaged.into()))
                );
                // TODO: send it through `ctx.out.note`, which would neutralise what a
                // parse error quotes from the file; written whole for now, because
                // issue 17 changes no output. A failed write is dropped, as by
                // `eprintln!`: with stderr gone, no one is left to tell.
                let _ = ctx.out.stderr().write_all(line.as_bytes());
                None
            }
        });
    Ok(Shown {
        last_worker: session.last_owner(),
        pending: session.inbox_counts()?.messages(),
        budgets: budgets(ctx, &meta),
        session: meta,
        running,
        last_execution,
        todos: state.todos,
        failed: session
            .executions()?
            .into_iter()
            .rev()
            .filter(|e| e.status == ExecStatus::Failed)
            .take(10)
            .collect(),
    })
}

/// What has become of the session's agent definition since the session was created,
/// as a clause of the `agent` line; empty when it is unchanged.
fn definition_change(ctx: &Context, m: &SessionMeta) -> &'static str {
    let current_hash = definition::path_for(&ctx.home.agents_dir(), &m.agent)
        .ok()
        .and_then(|path| definition::Source::read(&path).ok())
        .map(|source| source.hash());
    match current_hash {
        Some(hash) if hash == m.agent_hash => "",
        Some(_) => "; the definition changed since the session was created",
        None => "; the definition no longer exists",
    }
}

/// The session's own record: id, agent, title, status, preset, overrides, times.
fn print_record(out: &mut impl Write, m: &SessionMeta, changed: &str) -> Result<()> {
    writeln!(out, "session   {}", m.id)?;
    writeln!(
        out,
        "agent     {} ({}{changed})",
        one_line(&m.agent, FIELD_CAP),
        m.agent_hash
    )?;
    if let Some(title) = &m.title {
        writeln!(out, "title     {}", one_line(title, FIELD_CAP))?;
    }
    writeln!(out, "status    {}", m.status.as_str())?;
    writeln!(
        out,
        "events    {}",
        format!("{:?}", m.events).to_lowercase()
    )?;
    for (key, value) in &m.config {
        writeln!(
            out,
            "set       {} = {}",
            one_line(key, FIELD_CAP),
            one_line(&value.to_string(), FIELD_CAP)
        )?;
    }
    writeln!(out, "created   {}", m.created_at)?;
    writeln!(out, "updated   {}", m.updated_at)?;
    Ok(())
}

/// Messages, executions by outcome, usage, and the budgets of the next execution.
fn print_counts(out: &mut impl Write, shown: &Shown) -> Result<()> {
    let m = &shown.session;
    let c = &m.counters;
    writeln!(
        out,
        "messages  {} ({} settled, {} pending)",
        c.messages + shown.pending as u64,
        c.messages,
        shown.pending
    )?;
    writeln!(
        out,
        "runs      {}: {} completed, {} failed, {} stopped, {} cancelled",
        count(c.executions, "execution", "executions"),
        c.completed,
        c.failed,
        c.stopped,
        c.cancelled
    )?;
    writeln!(
        out,
        "usage     {} ({} input, {} output){}",
        count(m.usage.total, "token", "tokens"),
        m.usage.input,
        m.usage.output,
        m.cost_usd.map(|c| format!(", ${c:.4}")).unwrap_or_default()
    )?;
    if let Some(b) = &shown.budgets {
        writeln!(out, "budgets   {}", budget_list(b))?;
    }
    Ok(())
}

/// `8 steps, 2000 tokens, 1m, $0.5`: the limits that are set.
fn budget_list(b: &ShownBudgets) -> String {
    let mut limits = vec![count(u64::from(b.max_steps), "step", "steps")];
    if let Some(t) = b.max_tokens {
        limits.push(count(t, "token", "tokens"));
    }
    if let Some(t) = b.session_max_tokens {
        limits.push(count(t, "session token", "session tokens"));
    }
    if let Some(ms) = b.timeout_ms {
        limits.push(crate::time::human_duration(ms));
    }
    if let Some(c) = b.max_cost_usd {
        limits.push(format!("${c}"));
    }
    limits.join(", ")
}

fn print_failed_and_todos(out: &mut impl Write, shown: &Shown) -> Result<()> {
    for e in &shown.failed {
        writeln!(
            out,
            "failed    {} {} ({}): {}",
            e.id,
            e.finished_at.map(|t| t.to_string()).unwrap_or_default(),
            e.stop_reason.map_or("", |r| r.as_str()),
            one_line(
                e.error.as_ref().map_or("", |err| err.message.as_str()),
                ERROR_CAP
            )
        )?;
    }
    for todo in &shown.todos {
        let mark = match todo.status {
            TodoStatus::Completed => "[x]",
            TodoStatus::InProgress => "[>]",
            TodoStatus::Pending => "[ ]",
        };
        writeln!(
            out,
            "todo      {mark} {}",
            one_line(&todo.content, FIELD_CAP)
        )?;
    }
    Ok(())
}

/// The execution in progress, or one a stopped worker left at a checkpoint.
fn print_running(out: &mut impl Write, e: &Execution) -> Result<()> {
    if let Some(waiting) = &e.awaiting_approval {
        // Parked: nothing runs it until a person decides.
        let call = one_line(&waiting.tool_call_id, FIELD_CAP);
        writeln!(
            out,
            "waiting   {} · approval of `{}` {call} since {} · agentq approve {} {call}",
            e.id,
            crate::render::tool_label(&waiting.tool_name, waiting.server.as_deref()),
            waiting.requested_at,
            e.session_id,
        )?;
        writeln!(
            out,
            "          arguments: {}",
            one_line(&waiting.arguments.to_string(), ERROR_CAP)
        )?;
        if let Some(deny_at) = waiting.deny_at {
            writeln!(
                out,
                "          denied by itself at {deny_at} (approval_timeout)"
            )?;
        }
    } else if e.suspended {
        // Left at a checkpoint by a worker that stopped: nothing runs it now.
        writeln!(
            out,
            "suspended {} (attempt {}, since {}); the next worker resumes it",
            e.id, e.attempts, e.started_at
        )?;
    } else {
        writeln!(
            out,
            "running   {} (attempt {}, worker {} on {}, since {})",
            e.id,
            e.attempts,
            e.worker.pid,
            one_line(&e.worker.host, FIELD_CAP),
            e.started_at
        )?;
    }
    Ok(())
}

fn print_last(out: &mut impl Write, e: &Execution) -> Result<()> {
    writeln!(
        out,
        "last      {} {} ({}), {}, {}, exit {}",
        e.id,
        e.status.as_str(),
        e.stop_reason.map_or("", |r| r.as_str()),
        count(u64::from(e.steps), "step", "steps"),
        count(e.usage.total, "token", "tokens"),
        e.exit_code.unwrap_or_default()
    )?;
    if let Some(error) = &e.error {
        writeln!(out, "error     {}", one_line(&error.message, ERROR_CAP))?;
    }
    if !e.checks.is_empty() {
        let shown: Vec<String> = e
            .checks
            .iter()
            .map(|c| {
                let name = one_line(&c.name, FIELD_CAP);
                if c.success {
                    format!("✓ {name}")
                } else {
                    format!("✗ {name} ({})", crate::render::check_exit(c.exit_code))
                }
            })
            .collect();
        writeln!(out, "checks    {}", shown.join(", "))?;
    }
    Ok(())
}

fn messages(ctx: &Context, id: &str, json: bool) -> Result<u8> {
    let session = ctx.store.resolve(id)?;
    let state = session.state()?;
    let lines = session.transcript(state.transcript)?;
    if json {
        ctx.out.json(&lines)?;
        return Ok(0);
    }
    let mut out = ctx.out.human();
    for line in &lines {
        match &line.message {
            // A line agentq wrote for the model (failed checks, an invalid structured
            // answer) is not the user's.
            Message::User { content } if line.feedback.is_some() => {
                let tag = match line.feedback {
                    Some(Feedback::Output) => "output",
                    _ => "checks",
                };
                writeln!(out, "{tag}: {}", sanitize(content))?
            }
            Message::User { content } => writeln!(out, "user: {}", sanitize(content))?,
            Message::Assistant {
                content,
                tool_calls,
            } => {
                if !content.is_empty() {
                    writeln!(out, "assistant: {}", sanitize(content))?;
                }
                for call in tool_calls {
                    let args = summarize_args(&call.arguments, 100);
                    writeln!(
                        out,
                        "  → {} {}",
                        one_line(&call.name, FIELD_CAP),
                        one_line(&args, FIELD_CAP)
                    )?;
                }
            }
            Message::Tool {
                name,
                content,
                is_error,
                ..
            } => {
                let mark = if *is_error { "✗" } else { "✓" };
                let preview = preview(content, 200);
                writeln!(
                    out,
                    "  {mark} {}: {}",
                    one_line(name, FIELD_CAP),
                    one_line(&preview, FIELD_CAP)
                )?;
            }
        }
    }
    // Queued messages reach the transcript only when a worker takes them: say so,
    // rather than let an empty transcript look like nothing was sent.
    let queued = session
        .inbox()?
        .iter()
        .filter(|entry| entry.kind == EntryKind::User)
        .count() as u64;
    let before = if lines.is_empty() {
        "no messages in the transcript yet; "
    } else {
        ""
    };
    if queued > 0 {
        let taken_by = if session.meta()?.status == SessionStatus::Paused {
            format!(
                "the session is paused: `agentq session resume {}` lets a worker take them",
                session.id()
            )
        } else {
            "they enter the transcript when a worker takes them: `agentq worker`".to_owned()
        };
        let queued = count(queued, "message queued", "messages queued");
        writeln!(out, "{before}{queued} ({taken_by})")?;
    } else if lines.is_empty() {
        writeln!(out, "no messages yet")?;
    }
    Ok(0)
}

fn set_status(ctx: &Context, id: &str, to: SessionStatus) -> Result<u8> {
    let session = ctx.store.resolve(id)?;
    // Resuming also wakes workers for the messages that waited while it was paused.
    let from = session.set_status(to)?;
    let id = session.id();
    let mut out = ctx.out.human();
    if from == to {
        writeln!(out, "session {id} is already {}", to.as_str())?;
    } else {
        writeln!(
            out,
            "session {id} {}",
            match to {
                SessionStatus::Active => "resumed",
                SessionStatus::Paused => "paused",
                SessionStatus::Closed => "closed",
            }
        )?;
    }
    Ok(0)
}

fn remove(ctx: &Context, id: &str) -> Result<u8> {
    let session = ctx.store.resolve(id)?;
    session.remove()?;
    writeln!(ctx.out.stdout(), "removed session {}", session.id())?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_as_short_as_uniqueness_allows() {
        let ids: Vec<String> = ["0193a7c2-aaaa", "0193a7c2-aabb", "0193b000-0000"]
            .map(String::from)
            .to_vec();
        let p = unique_prefixes(&ids, 8);
        assert_eq!(p["0193a7c2-aaaa"], "0193a7c2-aaa");
        assert_eq!(p["0193a7c2-aabb"], "0193a7c2-aab");
        assert_eq!(p["0193b000-0000"], "0193b000");
    }
}
