//! What a session's settled executions worked on, and whether one of their tasks is
//! already queued again: the rule `retry` and `send --continue` share.
//!
//! A task is retried or continued once at a time: `retry` refuses a failure whose task
//! is already queued again (by an earlier `retry` or a `send --continue`), and
//! `send --continue` refuses while a retry or continuation of the same task waits
//! ([`History::already_queued`]), so the model is never given one task twice.
//!
//! Reading is the only I/O here ([`History::read`], and the inbox listing of
//! `already_queued`); what follows from the records is worked out from them alone.

use std::collections::HashMap;

use anyhow::Result;
use uuid::Uuid;

use crate::domain::execution::{ExecStatus, Execution};
use crate::domain::inbox::{EntryKind, InboxEntry};
use crate::domain::transcript::Message;
use crate::store::Session;

/// The session's settled executions, oldest first, with the task each worked on.
pub struct History {
    pub executions: Vec<Execution>,
    /// The text of every user message in the transcript, by message id.
    texts: HashMap<Uuid, String>,
    /// Per execution: the message whose text set its task. A continuation works on
    /// the task of the execution before it; a retry on the task it retries.
    tasks: HashMap<Uuid, Uuid>,
}

impl History {
    pub fn read(session: &dyn Session) -> Result<History> {
        let executions = session.executions()?;
        // A damaged state is said plainly: the command's advice names the way out.
        let state = session.plain_state()?;
        let texts: HashMap<Uuid, String> = session
            .transcript(state.transcript)?
            .into_iter()
            .filter_map(|line| match (line.message, line.message_id) {
                (Message::User { content }, Some(id)) => Some((id, content)),
                _ => None,
            })
            .collect();
        Ok(History::of(executions, texts))
    }

    /// The tasks of `executions`, given the user messages of the transcript.
    fn of(executions: Vec<Execution>, texts: HashMap<Uuid, String>) -> History {
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
        History {
            executions,
            texts,
            tasks,
        }
    }

    /// The message whose text set the task of an execution, if the transcript has it.
    pub fn task_of(&self, execution: Uuid) -> Option<Uuid> {
        self.tasks.get(&execution).copied()
    }

    /// The text of a user message of the transcript.
    pub fn text_of(&self, message: Uuid) -> Option<&str> {
        self.texts.get(&message).map(String::as_str)
    }

    /// The newest failure no later execution took up again (a retry of it, or a
    /// continuation that carried it on): what `retry` queues again.
    pub fn open_failure(&self) -> Option<&Execution> {
        let executions = &self.executions;
        executions
            .iter()
            .enumerate()
            .rev()
            .find(|(i, e)| {
                e.status == ExecStatus::Failed
                    && executions[i + 1..]
                        .iter()
                        .all(|later| self.task_of(later.id) != self.task_of(e.id))
            })
            .map(|(_, e)| e)
    }

    /// Why the task of `execution` must not be queued again: a retry or a continuation
    /// of it already waits in the inbox. `None` when nothing of it is queued.
    pub fn already_queued(&self, session: &dyn Session, execution: Uuid) -> Result<Option<String>> {
        let entries = session.inbox()?;
        Ok(self.queued_again(session.id(), &entries, execution))
    }

    fn queued_again<'a>(
        &self,
        session: Uuid,
        entries: impl IntoIterator<Item = &'a InboxEntry>,
        execution: Uuid,
    ) -> Option<String> {
        let task = self.task_of(execution);
        let is_last = self.executions.last().map(|e| e.id) == Some(execution);
        for entry in entries {
            if entry.kind != EntryKind::User {
                continue;
            }
            if let Some(of) = entry.retry_of()
                && (of == execution || (task.is_some() && self.task_of(of) == task))
            {
                return Some(format!(
                    "the task of execution {execution} is already queued for a retry in session {session} (message {}); a worker runs it",
                    entry.id
                ));
            }
            // A continuation carries on whatever the session's last execution left.
            if entry.is_continue() && is_last {
                return Some(format!(
                    "a continuation of execution {execution} is already queued in session {session} (message {}); a worker runs it",
                    entry.id
                ));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::execution::WorkerInfo;
    use crate::time::Timestamp;

    fn id(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    fn execution(n: u128, message: u128, status: ExecStatus, retry_of: Option<u128>) -> Execution {
        Execution {
            v: 1,
            id: id(n),
            session_id: id(0),
            message_id: id(message),
            message_seq: 1,
            status,
            stop_reason: None,
            attempts: 1,
            steps: 1,
            usage: Default::default(),
            started_at: Timestamp(0),
            finished_at: None,
            duration_ms: None,
            response: None,
            error: None,
            exit_code: None,
            cost_usd: None,
            worker: WorkerInfo {
                pid: 1,
                host: "host".into(),
            },
            retry_of: retry_of.map(id),
            suspended: false,
            checks: Vec::new(),
            structured: None,
            awaiting_approval: None,
        }
    }

    fn entry(n: u128, metadata: serde_json::Value) -> InboxEntry {
        InboxEntry {
            id: id(n),
            seq: 1,
            kind: EntryKind::User,
            content: String::new(),
            metadata: metadata.as_object().cloned().unwrap_or_default(),
            key: None,
            created_at: Timestamp(0),
            attempts: 0,
        }
    }

    #[test]
    fn retries_and_continuations_keep_the_task_of_what_they_take_up() {
        // Message 100 fails (1), is continued (2, no text of its own), fails again,
        // and is retried (3).
        let history = History::of(
            vec![
                execution(1, 100, ExecStatus::Failed, None),
                execution(2, 200, ExecStatus::Failed, None),
                execution(3, 300, ExecStatus::Completed, Some(2)),
            ],
            HashMap::from([(id(100), "the task".to_owned())]),
        );
        for e in [1, 2, 3] {
            assert_eq!(history.task_of(id(e)), Some(id(100)), "execution {e}");
        }
        assert_eq!(history.text_of(id(100)), Some("the task"));
        assert!(
            history.open_failure().is_none(),
            "both failures were taken up"
        );
    }

    #[test]
    fn a_task_queued_again_is_refused_a_second_time() {
        let history = History::of(
            vec![
                execution(1, 100, ExecStatus::Failed, None),
                execution(2, 200, ExecStatus::Completed, None),
            ],
            HashMap::from([
                (id(100), "first".to_owned()),
                (id(200), "second".to_owned()),
            ]),
        );
        assert_eq!(history.open_failure().map(|e| e.id), Some(id(1)));
        let retry = entry(
            9,
            serde_json::json!({ crate::domain::inbox::RETRY_OF_KEY: id(1).to_string() }),
        );
        let refusal = history.queued_again(id(0), [&retry], id(1));
        assert!(
            refusal.is_some_and(|r| r.contains("already queued for a retry")),
            "a retry waits"
        );
        let continuation = entry(9, serde_json::json!({ "continue": true }));
        assert!(
            history
                .queued_again(id(0), [&continuation], id(1))
                .is_none()
        );
        assert!(
            history
                .queued_again(id(0), [&continuation], id(2))
                .is_some()
        );
    }
}
