//! Recovering a session whose `session.json` or `state.json` is corrupt, or whose
//! `state.json` fell behind the transcript.
//!
//! Neither file is ever silently replaced by a default. The corrupt file is moved aside
//! as `<name>.corrupt-<timestamp>` (kept for inspection) and rebuilt from what is only
//! ever appended: the event log, the transcript and the execution records. The caller
//! logs what happened, naming the file.

use std::io;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use super::SessionDir;
use super::events::{LogReader, parse_line};
use super::fs::{AtPath, ReadError, read_json};
use super::{inbox, transcript};
use crate::domain::FORMAT_VERSION;
use crate::domain::event::EventPayload;
use crate::domain::session::{Counters, SessionMeta, SessionStatus};
use crate::domain::state::{AgentState, CurrentExecution, OpenStep, TranscriptMark};
use crate::domain::transcript::{CarriedState, Message, TranscriptLine};
use crate::time::Timestamp;

/// How old a temp file must be before it counts as left behind by a killed writer.
const STALE_TEMP: std::time::Duration = std::time::Duration::from_secs(600);

/// Removes temp files that writers killed between writing and renaming left behind
/// (never visible as data: readers skip dot files). Only old ones: a young one may
/// belong to a `send` writing right now. Returns how many were removed.
pub fn remove_stale_temps(dirs: &[&Path]) -> usize {
    let mut removed = 0;
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let stale = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > STALE_TEMP);
            if name.starts_with('.')
                && name.contains(".tmp-")
                && stale
                && std::fs::remove_file(entry.path()).is_ok()
            {
                removed += 1;
            }
        }
    }
    removed
}

/// Renames a corrupt file (or a directory where a file belongs, or the reverse) out of
/// the way; returns where it went.
pub fn move_aside(path: &Path, now: Timestamp) -> io::Result<PathBuf> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stamp = now.to_string().replace([':', '.'], "-");
    let aside = path.with_file_name(format!("{name}.corrupt-{stamp}"));
    std::fs::rename(path, &aside).at(path)?;
    Ok(aside)
}

/// Makes sure a directory agentq keeps its own files in is one: missing, it is made;
/// a file (or anything else) in its place is moved aside first, since agentq never
/// puts one there. Returns where the thing in the way went, for the caller to log. A
/// symlink is moved aside too: followed, it would lead agentq's writes elsewhere.
pub fn ensure_dir(path: &Path, now: Timestamp) -> io::Result<Option<PathBuf>> {
    let aside = match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => return Ok(None),
        Ok(_) => Some(move_aside(path, now)?),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).at(path),
    };
    super::fs::create_dir_private(path)?;
    Ok(aside)
}

/// [`super::fs::try_lock_file`], for a lock file in a place agentq owns: a directory
/// where the file belongs is moved aside and the file made again. Nobody can hold a
/// directory as the lock, so nothing is taken from a holder, and every taker opens the
/// same new file.
pub fn try_lock_clearing(path: &Path) -> io::Result<Option<std::fs::File>> {
    match super::fs::try_lock_file(path) {
        Err(e) if e.kind() == io::ErrorKind::IsADirectory => {
            let now = Timestamp::from_system(std::time::SystemTime::now());
            // NotFound: another taker moved it first.
            if let Err(e) = move_aside(path, now)
                && e.kind() != io::ErrorKind::NotFound
            {
                return Err(e);
            }
            super::fs::try_lock_file(path)
        }
        other => other,
    }
}

impl SessionDir {
    /// Rebuilds `state.json`: whole, from the last checkpoint line of the transcript
    /// ([`SessionDir::roll_forward`] from the start). A transcript written before
    /// checkpoint lines carried the state has none; then the state is rebuilt from the
    /// transcript (every complete line is settled) and the execution records: the
    /// latest one stays `current`, as it would have (a `running` one is resumed, a
    /// settled one keeps its message from running again), and the task list and any
    /// compaction are lost (the agent rebuilds them as it goes on).
    pub(crate) fn rebuild_state(&self) -> Result<AgentState> {
        if let Some(state) = self.roll_forward(&AgentState::default())? {
            return Ok(state);
        }
        let records = self.executions()?;
        let known: std::collections::HashSet<_> = records.iter().map(|e| e.id).collect();
        let path = self.transcript_path();
        let mut lines: Vec<TranscriptLine> = Vec::new();
        let mut bytes = 0u64;
        if path.exists() {
            let mut reader = LogReader::open_at(&path, 0)?;
            for raw in reader.read_lines()? {
                let Ok(line) = serde_json::from_slice::<TranscriptLine>(&raw) else {
                    bail!(
                        "{} has a line that is not a transcript message; cannot rebuild the state from it",
                        path.display()
                    );
                };
                // The start of an execution whose record a power failure took: the
                // message is still in the inbox and starts again, so its lines go.
                if line.execution_id.is_some_and(|id| !known.contains(&id)) {
                    break;
                }
                bytes += raw.len() as u64 + 1;
                lines.push(line);
            }
        }
        let model_calls = lines
            .iter()
            .filter(|l| matches!(l.message, Message::Assistant { .. }))
            .count() as u64;
        let current = records.last().map(|exec| {
            let mine: Vec<&TranscriptLine> = lines
                .iter()
                .filter(|l| l.execution_id == Some(exec.id))
                .collect();
            let mut steps: Vec<u32> = mine.iter().filter_map(|l| l.step).collect();
            steps.dedup();
            // A last step whose tool calls are not all answered is still open.
            let open = !exec.status.is_terminal() && has_unanswered_calls(&mine);
            CurrentExecution {
                execution_id: exec.id,
                message_id: exec.message_id,
                message_seq: exec.message_seq,
                previous_execution: records.iter().rev().nth(1).map(|e| e.id),
                attempts: exec.attempts,
                steps: (steps.len() as u32).saturating_sub(u32::from(open)),
                usage: exec.usage,
                started_at: exec.started_at,
                failed_steps_in_a_row: 0,
                failed_check_rounds: 0,
                invalid_answers: 0,
                parked_ms: 0,
                // Which call was running is not known any more: the remaining calls
                // run (the one state.json could have told about included).
                open_step: open.then(|| OpenStep {
                    finish_reason: None,
                    usage: Default::default(),
                    tool_started: None,
                    awaiting: None,
                }),
            }
        });
        Ok(AgentState {
            v: FORMAT_VERSION,
            transcript: TranscriptMark {
                lines: lines.len() as u64,
                bytes,
            },
            model_calls,
            current,
            compaction: None,
            todos: Vec::new(),
            hooks: Vec::new(),
        })
    }

    /// The state of the last checkpoint past `state`'s transcript mark, if there is
    /// one: `state.json` is written without fsync after the checkpoint's lines are made
    /// durable, so a power failure (or a kill between the two writes) can leave it
    /// behind, never ahead. Lines are read up to the first that is incomplete or does
    /// not parse (a torn tail).
    pub(crate) fn roll_forward(&self, state: &AgentState) -> Result<Option<AgentState>> {
        let path = self.transcript_path();
        if !path.exists() {
            return Ok(None);
        }
        let mut mark = state.transcript;
        let mut newer = None;
        for raw in LogReader::open_at(&path, mark.bytes)?.read_lines()? {
            let Ok(line) = serde_json::from_slice::<CarriedState>(&raw) else {
                break;
            };
            mark.lines += 1;
            mark.bytes += raw.len() as u64 + 1;
            if let Some(settled) = line.state {
                newer = Some(AgentState {
                    transcript: mark,
                    ..settled
                });
            }
        }
        Ok(newer)
    }

    /// Rebuilds `session.json` from the event log (creation, status changes, queued
    /// messages) and the execution records (counters, usage, costs).
    pub(crate) fn rebuild_meta(&self) -> Result<SessionMeta> {
        let path = self.events_path();
        let mut reader = LogReader::open_at(&path, 0)?;
        let mut meta: Option<SessionMeta> = None;
        let mut last_seq = 0;
        let mut updated_at = Timestamp(0);
        for raw in reader.read_lines()? {
            let Some(event) = parse_line(&raw).and_then(|e| e.into_event().ok().flatten()) else {
                continue;
            };
            updated_at = updated_at.max(event.timestamp);
            match event.payload {
                EventPayload::SessionCreated(created) => {
                    meta = Some(SessionMeta {
                        v: FORMAT_VERSION,
                        id: self.id,
                        agent: created.agent,
                        title: created.title,
                        status: SessionStatus::Active,
                        events: created.events,
                        config: created.config.into_iter().collect(),
                        agent_hash: created.agent_hash.unwrap_or_default(),
                        created_at: event.timestamp,
                        updated_at: event.timestamp,
                        counters: Counters::default(),
                        usage: Default::default(),
                        last_message_seq: 0,
                        last_execution: None,
                        extra_session_tokens: 0,
                        cost_usd: None,
                    });
                }
                EventPayload::SessionStatus(change) => {
                    if let Some(meta) = meta.as_mut() {
                        meta.status = change.status;
                    }
                }
                EventPayload::MessageQueued(queued) => last_seq = last_seq.max(queued.seq),
                _ => {}
            }
        }
        let Some(mut meta) = meta else {
            bail!(
                "{} has no session.created event; cannot rebuild session.json from it",
                path.display()
            );
        };
        meta.last_message_seq = last_seq.max(inbox::highest_seq(&self.inbox_dir())?);
        meta.updated_at = updated_at;
        meta.recount(&self.executions()?);
        Ok(meta)
    }

    /// Recounts `session.json` from the execution records when it fell behind them:
    /// the worker fsyncs it once per drain, so a power failure can take the totals of
    /// the last few executions. Behind means it does not end with the execution that
    /// `state.json` (fsynced at every checkpoint) says settled last. Takes both files
    /// as the owner just read them; returns a note for the caller to log when it
    /// recounted.
    pub(crate) fn catch_up_meta(
        &self,
        mut meta: SessionMeta,
        state: &AgentState,
    ) -> Result<Option<String>> {
        let Some(current) = &state.current else {
            return Ok(None);
        };
        let settled_last = match self.read_execution(current.execution_id) {
            Ok(exec) if exec.status.is_terminal() => Some(exec.id),
            _ => current.previous_execution,
        };
        if settled_last.is_none() || meta.last_execution == settled_last {
            return Ok(None);
        }
        meta.recount(&self.executions()?);
        super::fs::write_json(&self.meta_path(), &meta)?;
        Ok(Some(format!(
            "{} was behind the execution records (a power failure?); recounted it from them",
            self.meta_path().display()
        )))
    }

    /// Repairs a transcript that lost or garbled lines `state.json` counts as settled
    /// (truncated or overwritten by a disk or a person): the file is moved aside, the
    /// lines before the damage are written back, and the state is rebuilt from them
    /// ([`SessionDir::rebuild_state`]: the last checkpoint among them). The history the
    /// agent sees is shorter, but every later append starts where a line ends. Returns
    /// the rebuilt state and a message for the caller to log, or `None` when the
    /// transcript is whole.
    pub(crate) fn repair_transcript(
        &self,
        state: &AgentState,
        now: Timestamp,
        unsynced: &mut super::fs::UnsyncedSwaps,
    ) -> Result<Option<(AgentState, String)>> {
        let path = self.transcript_path();
        let damage = match transcript::check(&path, state.transcript) {
            Ok(()) => return Ok(None),
            Err(e) if e.kind() == io::ErrorKind::InvalidData => e,
            Err(e) => return Err(e.into()),
        };
        let mut kept = Vec::new();
        let mut lines = 0u64;
        let aside = if path.exists() {
            let aside = move_aside(&path, now)
                .with_context(|| format!("moving the damaged {} aside", path.display()))?;
            let lines_of = if aside.is_file() {
                LogReader::open_at(&aside, 0)?.read_lines()?
            } else {
                Vec::new()
            };
            for raw in lines_of {
                if serde_json::from_slice::<TranscriptLine>(&raw).is_err() {
                    break;
                }
                kept.extend_from_slice(&raw);
                kept.push(b'\n');
                lines += 1;
            }
            Some(aside)
        } else {
            None
        };
        super::fs::replace(&path, &kept)?;
        let rebuilt = self.rebuild_state()?;
        self.write_state(&rebuilt, super::fs::Durable::Now, unsynced)?;
        let moved = aside.map_or_else(
            || "it was missing".to_owned(),
            |aside| format!("moved it to {}", aside.display()),
        );
        let message = format!(
            "{damage}; {moved}, kept its first {lines} whole lines and rebuilt state.json from them"
        );
        Ok(Some((rebuilt, message)))
    }

    /// Whether the session needs an owner though its inbox may be empty: a file a
    /// worker repairs is damaged (`session.json` or `state.json` missing or corrupt,
    /// or a directory; the transcript shorter than the state's mark), or the state
    /// holds completion hooks to deliver (a worker killed after a settling left them,
    /// and the marker may be gone). A cheap check, for the worker's full scan: such a
    /// session with nothing in its inbox is claimed anyway, to be repaired (instead of
    /// waiting for a message that `send` could not queue) or to deliver its hooks.
    /// (Lines garbled inside the transcript are found by whoever reads it, who marks
    /// the session ready for the same claim.)
    pub(crate) fn needs_owner(&self) -> bool {
        let rebuilt = |r: Result<(), ReadError>| {
            matches!(
                r,
                Err(ReadError::Corrupt { .. } | ReadError::NotFound { .. })
            )
        };
        if rebuilt(self.read_meta().map(drop)) {
            return true;
        }
        match self.read_state() {
            Err(ReadError::Corrupt { .. } | ReadError::NotFound { .. }) => true,
            Ok(state) => {
                let len = std::fs::metadata(self.transcript_path()).map_or(0, |m| m.len());
                len < state.transcript.bytes || !state.hooks.is_empty()
            }
            Err(_) => false,
        }
    }
}

/// Whether the last answer among an execution's lines has tool calls that are not all
/// answered yet: its step is still open.
fn has_unanswered_calls(lines: &[&TranscriptLine]) -> bool {
    let last_answer = lines
        .iter()
        .rposition(|l| matches!(l.message, Message::Assistant { .. }));
    match last_answer.map(|i| (i, &lines[i].message)) {
        Some((i, Message::Assistant { tool_calls, .. })) => lines.len() - 1 - i < tool_calls.len(),
        _ => false,
    }
}

/// Reads a file that may be corrupt: a corrupt one is moved aside and rebuilt with
/// `rebuild`, then written back; a missing one is rebuilt the same way. Returns the
/// value and, if it was rebuilt, a message saying what happened, for the caller to log.
pub fn read_or_rebuild<T: serde::Serialize + serde::de::DeserializeOwned>(
    path: &Path,
    now: Timestamp,
    rebuild: impl FnOnce() -> Result<T>,
) -> Result<(T, Option<String>)> {
    match read_json::<T>(path) {
        Ok(value) => Ok((value, None)),
        Err(ReadError::Corrupt { reason, .. }) => {
            let aside = move_aside(path, now)
                .with_context(|| format!("moving the corrupt {} aside", path.display()))?;
            let value = rebuild()?;
            super::fs::write_json(path, &value)?;
            let message = format!(
                "{} was corrupt ({reason}); moved it to {} and rebuilt it from the session's logs",
                path.display(),
                aside.display()
            );
            Ok((value, Some(message)))
        }
        // Gone (deleted by hand): nothing to move aside, the same rebuild.
        Err(ReadError::NotFound { .. }) => {
            let value = rebuild()?;
            super::fs::write_json(path, &value)?;
            let message = format!(
                "{} was missing; rebuilt it from the session's logs",
                path.display()
            );
            Ok((value, Some(message)))
        }
        Err(err) => Err(err.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::super::fs::Durable;
    use super::super::transcript;
    use super::*;

    fn line(text: &str, state: Option<AgentState>) -> TranscriptLine {
        TranscriptLine {
            message: Message::User {
                content: text.into(),
            },
            message_id: None,
            execution_id: None,
            step: None,
            feedback: None,
            timestamp: Timestamp(0),
            state: state.map(Box::new),
        }
    }

    fn calls(n: u64) -> AgentState {
        AgentState {
            model_calls: n,
            ..AgentState::default()
        }
    }

    #[test]
    fn rolls_forward_to_the_last_complete_checkpoint_past_the_mark() {
        let home = tempfile::tempdir().unwrap();
        let dir = SessionDir {
            id: uuid::Uuid::nil(),
            path: home.path().to_owned(),
        };
        let path = dir.transcript_path();
        let start = AgentState::default();
        assert_eq!(dir.roll_forward(&start).unwrap(), None, "no transcript yet");

        let one = transcript::append(
            &path,
            start.transcript,
            &[line("a", Some(calls(1)))],
            Durable::Later,
        )
        .unwrap();
        let two = transcript::append(
            &path,
            one,
            &[line("b", None), line("c", Some(calls(2))), line("d", None)],
            Durable::Later,
        )
        .unwrap();
        // A checkpoint torn by a power failure: not a line yet.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .and_then(|mut f| std::io::Write::write_all(&mut f, b"{\"role\":\"user\",\"conte"))
            .unwrap();

        let newest = dir.roll_forward(&start).unwrap().expect("a checkpoint");
        assert_eq!(newest.model_calls, 2);
        assert_eq!(
            newest.transcript.lines, 3,
            "up to its line, not the one after"
        );
        assert_eq!(
            newest.transcript.bytes,
            two.bytes - (line_len(&line("d", None)))
        );

        let at_one = AgentState {
            transcript: one,
            ..calls(1)
        };
        assert_eq!(dir.roll_forward(&at_one).unwrap(), Some(newest.clone()));
        assert_eq!(dir.roll_forward(&newest).unwrap(), None, "nothing newer");
    }

    fn line_len(line: &TranscriptLine) -> u64 {
        serde_json::to_vec(line).unwrap().len() as u64 + 1
    }
}
