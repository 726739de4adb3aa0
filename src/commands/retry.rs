//! `agentq retry`: queues again the message of the session's last failed execution,
//! the way a job queue retries a failed job: its text goes to the inbox once more, as a
//! new message the model answers afresh. The failed execution's record stays.
//!
//! A task is retried or continued once at a time: `retry` refuses a failure whose task
//! is already queued again (by an earlier `retry` or a `send --continue`), and
//! `send --continue` refuses while a retry or continuation of the same task waits
//! ([`already_queued`]), so the model is never given one task twice.

use std::collections::HashMap;
use std::io::Write;

use anyhow::Result;
use uuid::Uuid;

use super::Context;
use crate::cli::RetryArgs;
use crate::domain::execution::{ExecStatus, Execution};
use crate::domain::inbox::{EntryKind, InboxEntry};
use crate::domain::transcript::Message;
use crate::error::UserError;
use crate::store::session::NewEntry;
use crate::store::{FileStore, SessionDir, inbox};

// Where it lived before; the worker reads it from the domain.
pub use crate::domain::inbox::RETRY_OF_KEY;

pub fn run(ctx: &Context, args: RetryArgs) -> Result<u8> {
    let dir = ctx.store.resolve(&args.id)?;
    let history = History::read(&ctx.store, &dir)?;
    // The newest failure no later execution took up again (a retry of it, or a
    // continuation that carried it on).
    let failed = history.executions.iter().enumerate().rev().find(|(i, e)| {
        e.status == ExecStatus::Failed
            && history.executions[i + 1..]
                .iter()
                .all(|later| history.task_of(later.id) != history.task_of(e.id))
    });
    let Some((_, failed)) = failed else {
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
            "session {} has no failed execution to retry: {why}",
            dir.id
        ))
        .into());
    };
    if let Some(refusal) = already_queued(&dir, &history, failed.id)? {
        return Err(UserError::usage(refusal).into());
    }
    let Some(task) = history.task_of(failed.id) else {
        return Err(UserError::usage(format!(
            "the message of execution {} is not in the transcript of session {}; send it again instead",
            failed.id, dir.id
        ))
        .into());
    };
    let mut metadata = serde_json::Map::new();
    metadata.insert(RETRY_OF_KEY.to_owned(), failed.id.to_string().into());
    let queued = ctx.store.enqueue(
        &dir,
        NewEntry {
            kind: EntryKind::User,
            content: history.texts[&task].clone(),
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
            // Always false since a retry queues the text again; kept for the scripts
            // written when a retry could carry on instead.
            "continues": false,
        }))?;
    } else {
        writeln!(crate::commands::stdout(), "{}", queued.id)?;
    }
    Ok(0)
}

/// Why the task of `execution` must not be queued again: a retry or a continuation of
/// it already waits in the inbox. `None` when nothing of it is queued.
pub(crate) fn already_queued(
    dir: &SessionDir,
    history: &History,
    execution: Uuid,
) -> Result<Option<String>> {
    let task = history.task_of(execution);
    let is_last = history.executions.last().map(|e| e.id) == Some(execution);
    for file in inbox::list(&dir.inbox_dir())?.entries {
        let entry: &InboxEntry = &file.entry;
        if entry.kind != EntryKind::User {
            continue;
        }
        let retry_of = entry
            .metadata
            .get(RETRY_OF_KEY)
            .and_then(|v| v.as_str())
            .and_then(|id| Uuid::try_parse(id).ok());
        if let Some(of) = retry_of
            && (of == execution || (task.is_some() && history.task_of(of) == task))
        {
            return Ok(Some(format!(
                "the task of execution {execution} is already queued for a retry in session {} (message {}); a worker runs it",
                dir.id, entry.id
            )));
        }
        // A continuation carries on whatever the session's last execution left.
        if entry.is_continue() && is_last {
            return Ok(Some(format!(
                "a continuation of execution {execution} is already queued in session {} (message {}); a worker runs it",
                dir.id, entry.id
            )));
        }
    }
    Ok(None)
}

/// The session's settled executions, oldest first, with the task each worked on.
pub(crate) struct History {
    pub executions: Vec<Execution>,
    /// The text of every user message in the transcript, by message id.
    texts: HashMap<Uuid, String>,
    /// Per execution: the message whose text set its task. A continuation works on
    /// the task of the execution before it; a retry on the task it retries.
    tasks: HashMap<Uuid, Uuid>,
}

impl History {
    pub fn read(store: &FileStore, dir: &SessionDir) -> Result<History> {
        let executions = dir.executions()?;
        let state = dir.read_state()?;
        let texts: HashMap<Uuid, String> = store
            .read_transcript(dir, state.transcript)?
            .into_iter()
            .filter_map(|line| match (line.message, line.message_id) {
                (Message::User { content }, Some(id)) => Some((id, content)),
                _ => None,
            })
            .collect();
        let mut tasks = HashMap::new();
        let mut previous: Option<Uuid> = None;
        for exec in &executions {
            let task = if let Some(of) = exec.retry_of.and_then(|of| tasks.get(&of).copied()) {
                Some(of)
            } else if texts.contains_key(&exec.message_id) {
                Some(exec.message_id)
            } else {
                previous
            };
            if let Some(task) = task {
                tasks.insert(exec.id, task);
            }
            previous = task;
        }
        Ok(History {
            executions,
            texts,
            tasks,
        })
    }

    /// The message whose text set the task of an execution, if the transcript has it.
    pub fn task_of(&self, execution: Uuid) -> Option<Uuid> {
        self.tasks.get(&execution).copied()
    }
}
