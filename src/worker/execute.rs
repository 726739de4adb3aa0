//! Running one inbox message to a settled execution, as the session's owner.
//!
//! The order of writes is what makes a crash at any point recoverable:
//! 1. for a new execution, the user message in the transcript with `state.current`
//!    naming the execution; then the execution record (`running`, its attempt counted);
//! 2. the checkpoints of the agent loop: each step's answer, then each tool result
//!    (transcript lines, the last carrying the state, then `state.json`), a
//!    side-effecting call marked (in `state.json`) before it runs;
//! 3. the record settled (the commit point), then the session totals and the final
//!    events (in one append), each skipped if a previous attempt already wrote them;
//! 4. the inbox entry removed last. `state.current` keeps naming the message until the
//!    next execution replaces it, so a settled message is never run again.
//!
//! A killed worker loses nothing it wrote (the page cache survives it); fsyncs are for
//! power failures, and are spent where a lost write could not be told apart from one
//! never made. Step 1 is not fsynced: the first checkpoint makes it durable (a power
//! failure before it loses only the claim). A checkpoint is durable once its
//! transcript lines are: `state.json` follows without fsync, and a worker that finds
//! it behind rolls forward (`SessionDir::roll_forward`). A checkpoint without lines
//! (a side-effect marker) and the settled record are fsynced. The session totals and
//! the inbox removal are fsynced once per drain (`SessionDir::flush_drain`): an entry
//! brought back is recognised by its seq (`AgentState::has_moved_past`), an older
//! `session.json` by `CurrentExecution::previous_execution`.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tracing::{error, info, warn};
use uuid::Uuid;

use super::Shutdown;
use crate::agent::{self, LoopEnd, Outcome, Sink, Stop};
use crate::config::{HomeConfig, Price};
use crate::definition;
use crate::domain::event::{
    AgentStatus, AgentStatusChanged, EventPayload, ExecutionFinished, ExecutionStarted,
    FinishedCost, FinishedUsage, MessageCompleted,
};
use crate::domain::execution::{self, ErrorInfo, ExecStatus, Execution, StopReason, WorkerInfo};
use crate::domain::inbox::{EntryKind, InboxEntry};
use crate::domain::session::SessionMeta;
use crate::domain::state::{AgentState, CurrentExecution};
use crate::domain::transcript::{Message, TranscriptLine};
use crate::domain::{FORMAT_VERSION, Usage};
use crate::error::UserError;
use crate::provider;
use crate::store::events::{EventLog, offset_of_last};
use crate::store::fs::{Durable, ReadError};
use crate::store::inbox::{self, InboxFile};
use crate::store::session::read_meta;
use crate::store::{SessionDir, Store, transcript};
use crate::time::Timestamp;
use crate::tools::Toolbox;

/// How many times an execution may be started (first, then resumed after a crash):
/// one whose last attempt crashed too fails instead of starting again.
pub const MAX_ATTEMPTS: u32 = 3;

/// What happened to the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handled {
    /// Settled, with the execution's exit code.
    Settled(u8),
    /// Left running for a later worker (shutdown).
    Suspended,
    /// Settled before; its removal from the inbox was lost (a power failure).
    AlreadySettled,
}

pub struct Owner<'a> {
    pub store: &'a Store,
    pub dir: &'a SessionDir,
    pub log: &'a mut EventLog,
    pub shutdown: &'a Shutdown,
    pub worker: &'a WorkerInfo,
    /// The MCP servers started for this session while the worker owns it.
    pub mcp: &'a mut super::mcp::McpPool,
}

impl Owner<'_> {
    /// Runs (or resumes, or finishes settling) the execution of a user entry.
    pub async fn handle(&mut self, file: &InboxFile) -> Result<Handled> {
        let entry = &file.entry;
        let mut state = self
            .dir
            .read_state()
            .with_context(|| format!("reading the state of session {}", self.dir.id))?;
        if state.has_moved_past(entry.seq) {
            warn!(session = %self.dir.id, message_id = %entry.id, "an inbox entry that settled before came back (its removal was lost); removing it again");
            inbox::remove(&file.path)?;
            return Ok(Handled::AlreadySettled);
        }
        let previous = state
            .current
            .clone()
            .filter(|current| current.message_id == entry.id);
        let (mut exec, resumed) = match previous {
            Some(current) => {
                let mut exec = match self.dir.read_execution(current.execution_id) {
                    Ok(exec) => exec,
                    // A crash between naming the execution in the state and writing
                    // its record: the record is rebuilt from the state.
                    Err(ReadError::NotFound { .. }) => Execution {
                        id: current.execution_id,
                        started_at: current.started_at,
                        attempts: current.attempts,
                        ..self.new_execution(entry)
                    },
                    Err(err @ ReadError::Corrupt { .. }) => {
                        let path = self.dir.execution_path(current.execution_id);
                        let aside =
                            crate::store::recover::move_aside(&path, self.store.clock.now())?;
                        error!(session = %self.dir.id, "{err}; moved it to {} and rebuilt it from the state", aside.display());
                        Execution {
                            id: current.execution_id,
                            started_at: current.started_at,
                            attempts: current.attempts,
                            usage: current.usage,
                            steps: current.steps,
                            ..self.new_execution(entry)
                        }
                    }
                    Err(err) => return Err(err.into()),
                };
                if exec.status.is_terminal() {
                    // Settled by a worker that stopped before removing the entry.
                    info!(session = %self.dir.id, execution = %exec.id, "finishing an execution settled before a crash");
                    self.finish(&exec, true)?;
                    inbox::remove(&file.path)?;
                    return Ok(Handled::Settled(execution::exit_code(
                        exec.status,
                        exec.stop_reason,
                    )));
                }
                // A previous owner that died while a command ran may have left the
                // command's children running: they go before anything is resumed, so
                // the interrupted call can never run alongside what comes next.
                let leftovers = crate::tools::process::kill_leftovers(&commands_of(self.dir));
                if leftovers > 0 {
                    warn!(session = %self.dir.id, execution = %exec.id, leftovers, "killed processes of a command the previous worker left running");
                }
                exec.worker = self.worker.clone();
                (exec, true)
            }
            None => (self.new_execution(entry), false),
        };
        // `attempts` counts the starts of an execution (its first and every resume
        // after a crash). One that crashed at its last attempt is not started again:
        // it fails, with the count as it stands, in the log, the record and the error.
        let give_up = resumed && !exec.suspended && exec.attempts >= MAX_ATTEMPTS;
        if resumed && !give_up {
            // A worker that shut down cleanly left it at a checkpoint on purpose;
            // only a crash counts as another attempt.
            if exec.suspended {
                exec.suspended = false;
            } else {
                exec.attempts += 1;
            }
        }
        // The attempt is counted before any work: a new execution's in the state (its
        // record is first written when it settles: one file fewer per message), a
        // resumed one's in its record.
        if give_up {
            warn!(session = %self.dir.id, execution = %exec.id, attempts = exec.attempts, "every attempt was interrupted by a crash; giving up");
        } else if resumed {
            info!(session = %self.dir.id, execution = %exec.id, attempt = exec.attempts, "resuming");
            self.dir.mark_running(&exec)?;
            if let Some(current) = state.current.as_mut() {
                // Carried by the next checkpoint too, so the two never disagree for long.
                current.attempts = exec.attempts;
            }
        } else {
            info!(session = %self.dir.id, message_id = %entry.id, execution = %exec.id, "claimed");
            self.begin(entry, &exec, &mut state)?;
        }
        if !give_up {
            self.log.append(
                Some(exec.id),
                EventPayload::ExecutionStarted(ExecutionStarted {
                    message_id: entry.id,
                    attempt: exec.attempts,
                    worker: self.worker.clone(),
                    resumed,
                }),
            )?;
        }
        if !resumed {
            self.status_event(exec.id, AgentStatus::Processing, AgentStatus::Idle)?;
        }

        // Whether `state.json` (and the transcript it points into) is on disk as the
        // loop left it: a checkpoint writes both durably, a start or resume does not.
        let mut checkpointed = false;
        let outcome = if give_up {
            Outcome {
                status: ExecStatus::Failed,
                stop_reason: StopReason::TooManyAttempts,
                response: None,
                error: Some(ErrorInfo {
                    message: format!(
                        "gave up after {} attempts, each interrupted by a crash",
                        exec.attempts
                    ),
                    context: None,
                }),
            }
        } else {
            let (end, price) = self
                .run_loop(&exec, &mut state, file, &mut checkpointed)
                .await?;
            exec.cost_usd =
                price.map(|p| p.cost(state.current.as_ref().map_or(Usage::default(), |c| c.usage)));
            match end {
                LoopEnd::Settled(outcome) => outcome,
                LoopEnd::Suspended => {
                    exec.suspended = true;
                    self.dir.write_execution(&exec)?;
                    info!(session = %self.dir.id, execution = %exec.id, "suspended at a checkpoint (shutdown or pause); it resumes from there");
                    return Ok(Handled::Suspended);
                }
            }
        };
        let current = state.current.clone();
        exec.status = outcome.status;
        exec.stop_reason = Some(outcome.stop_reason);
        exec.response = outcome.response;
        exec.error = outcome.error;
        if let Some(current) = current {
            exec.steps = current.steps;
            exec.usage = current.usage;
        }
        let now = self.store.clock.now();
        exec.finished_at = Some(now);
        exec.duration_ms = Some(now.millis_since(exec.started_at));
        exec.exit_code = Some(execution::exit_code(exec.status, exec.stop_reason));
        // The state the record settles must be on disk first: written again unless the
        // last checkpoint holds it (a failed model call, for one, changes the call
        // count without a checkpoint; an execution that failed before its first step
        // has none).
        if !checkpointed {
            self.dir.write_state_and_transcript(&state, true)?;
        } else if self.dir.read_state().ok().as_ref() != Some(&state) {
            self.dir.write_state(&state)?;
        }
        // The record is the commit point; the state keeps naming the message (see above).
        self.dir.write_execution(&exec)?;
        self.finish(&exec, false)?;
        inbox::remove(&file.path)?;
        info!(
            session = %self.dir.id,
            execution = %exec.id,
            status = exec.status.as_str(),
            stop_reason = exec.stop_reason.map_or("", StopReason::as_str),
            steps = exec.steps,
            "finished"
        );
        Ok(Handled::Settled(execution::exit_code(
            exec.status,
            exec.stop_reason,
        )))
    }

    fn new_execution(&self, entry: &InboxEntry) -> Execution {
        Execution {
            v: FORMAT_VERSION,
            id: self.store.ids.new_id(),
            session_id: self.dir.id,
            message_id: entry.id,
            message_seq: entry.seq,
            status: ExecStatus::Running,
            stop_reason: None,
            attempts: entry.attempts + 1,
            steps: 0,
            usage: Usage::default(),
            started_at: self.store.clock.now(),
            finished_at: None,
            duration_ms: None,
            response: None,
            error: None,
            exit_code: None,
            cost_usd: None,
            worker: self.worker.clone(),
            retry_of: entry
                .metadata
                .get(crate::commands::retry::RETRY_OF_KEY)
                .and_then(|v| v.as_str())
                .and_then(|id| Uuid::try_parse(id).ok()),
            suspended: false,
        }
    }

    /// Puts the user message into the transcript and names the execution in the state:
    /// from here on, a crash resumes this execution instead of starting another. Not
    /// fsynced (see the module's notes): the first checkpoint makes it durable.
    fn begin(&self, entry: &InboxEntry, exec: &Execution, state: &mut AgentState) -> Result<()> {
        // `send --continue` adds no text: the model carries on from the history as is.
        if !entry.is_continue() {
            let line = TranscriptLine {
                message: Message::User {
                    content: entry.content.clone(),
                },
                message_id: Some(entry.id),
                execution_id: Some(exec.id),
                step: None,
                timestamp: exec.started_at,
                state: None,
            };
            state.transcript = transcript::append(
                &self.dir.transcript_path(),
                state.transcript,
                &[line],
                Durable::Later,
            )?;
        }
        let previous_execution = state.current.as_ref().map(|c| c.execution_id);
        state.current = Some(CurrentExecution {
            execution_id: exec.id,
            message_id: entry.id,
            message_seq: entry.seq,
            previous_execution,
            attempts: exec.attempts,
            steps: 0,
            usage: Usage::default(),
            started_at: exec.started_at,
            failed_steps_in_a_row: 0,
            open_step: None,
        });
        self.dir.write_state_unsynced(state)?;
        Ok(())
    }

    /// The end of an execution that cannot start: it fails with the reason.
    fn cannot_run(&self, meta: &SessionMeta, err: UserError, reason: StopReason) -> LoopEnd {
        warn!(session = %self.dir.id, "cannot run: {err}");
        LoopEnd::Settled(Outcome {
            status: ExecStatus::Failed,
            stop_reason: reason,
            response: None,
            error: Some(ErrorInfo {
                message: err.message,
                context: Some(format!("agent {}", meta.agent)),
            }),
        })
    }

    /// The definition with the session's overrides, and `agentq.toml`, checked as
    /// `agents validate` checks them. A problem here (the file deleted or broken since
    /// the session was made) ends the execution with exit 2 (`invalid_definition`),
    /// as `run --agent` does for such an agent: it needs a fix, not a retry.
    fn definition(
        &self,
        meta: &SessionMeta,
    ) -> Result<(definition::AgentDef, definition::Source, HomeConfig), UserError> {
        let home = HomeConfig::load(&self.store.config_path())?;
        let (def, source) =
            definition::load_named(&self.store.agents_dir(), &meta.agent, &meta.config, &home)?;
        Ok((def, source, home))
    }

    /// Everything else an execution needs from the definition and `agentq.toml`; any
    /// problem (a missing key in the environment) fails it before a model call.
    fn prepare(
        &self,
        def: definition::AgentDef,
        source: &definition::Source,
        home: &HomeConfig,
    ) -> Result<Prepared, UserError> {
        let provider = provider::for_agent(&def, home)?;
        let named = home.providers.get(&def.model.provider);
        let key_env = def
            .model
            .api_key_env
            .iter()
            .chain(named.and_then(|p| p.api_key_env.as_ref()))
            .cloned()
            .collect();
        let price = def
            .model
            .name
            .as_ref()
            .and_then(|name| home.prices.get(name))
            .copied();
        Ok(Prepared {
            def,
            source_hash: source.hash(),
            provider,
            price,
            key_env,
        })
    }

    /// The directory the agent's file tools are confined to. A workspace under the home
    /// must stay there once symlinks are followed, and out of agentq's own files.
    fn workspace(&self, def: &definition::AgentDef) -> Result<std::path::PathBuf, UserError> {
        let rel = def.tools.workspace.as_str();
        if rel == "session" {
            // The session's own directory; a symlink swapped in for it is not followed.
            let path = self.dir.workspace_dir();
            return match std::fs::symlink_metadata(&path) {
                Ok(meta) if meta.file_type().is_symlink() => Err(UserError::usage(format!(
                    "the session workspace {} is a symlink; agentq does not follow it",
                    path.display()
                ))),
                _ => Ok(path),
            };
        }
        let refuse = |why: String| UserError::usage(format!("the workspace `{rel}` {why}"));
        let home = self
            .store
            .home()
            .canonicalize()
            .map_err(|e| refuse(format!("cannot be checked: {e}")))?;
        // Under the home, not the home itself, not in agentq's own directories.
        let inside = |real: &std::path::Path| {
            real.starts_with(&home)
                && !real.starts_with(home.join("agents"))
                && !real.starts_with(home.join("sessions"))
        };
        let out_of_bounds = |real: &std::path::Path| {
            refuse(format!(
                "leads to {}, outside the home or into agentq's own files",
                real.display()
            ))
        };
        // Check the part that exists before creating the rest, so a symlink on the way
        // cannot make us create directories elsewhere.
        let path = home.join(rel);
        let mut existing = path.as_path();
        while !existing.exists() {
            existing = existing.parent().unwrap_or(&home);
        }
        let real = existing
            .canonicalize()
            .map_err(|e| refuse(format!("cannot be checked: {e}")))?;
        if !inside(&real) {
            return Err(out_of_bounds(&real));
        }
        crate::store::fs::create_dir_private(&path)
            .map_err(|e| refuse(format!("cannot be created: {e}")))?;
        let real = path
            .canonicalize()
            .map_err(|e| refuse(format!("cannot be checked: {e}")))?;
        if !inside(&real) || real == home {
            return Err(out_of_bounds(&real));
        }
        Ok(real)
    }

    async fn run_loop(
        &mut self,
        exec: &Execution,
        state: &mut AgentState,
        file: &InboxFile,
        checkpointed: &mut bool,
    ) -> Result<(LoopEnd, Option<Price>)> {
        let meta = read_meta(self.dir)?;
        let (def, source, home) = match self.definition(&meta) {
            Ok(loaded) => loaded,
            Err(err) => {
                return Ok((
                    self.cannot_run(&meta, err, StopReason::InvalidDefinition),
                    None,
                ));
            }
        };
        let Prepared {
            def,
            source_hash,
            provider,
            price,
            key_env,
        } = match self.prepare(def, &source, &home) {
            Ok(ready) => ready,
            Err(err) => return Ok((self.cannot_run(&meta, err, StopReason::Error), None)),
        };
        if source_hash != meta.agent_hash {
            warn!(
                session = %self.dir.id,
                agent = %meta.agent,
                "the agent definition changed since the session was created; this execution uses the current one"
            );
        }
        let workspace = match self.workspace(&def) {
            Ok(path) => path,
            Err(err) => return Ok((self.cannot_run(&meta, err, StopReason::Error), None)),
        };
        let mcp = self
            .mcp
            .tools_for(
                &def,
                &home,
                self.store.home(),
                &key_env,
                &commands_of(self.dir),
            )
            .await;
        let mcp = match mcp {
            Ok(tools) => tools,
            Err(err) => return Ok((self.cannot_run(&meta, err, StopReason::Error), None)),
        };
        let tools = Toolbox::for_agent(workspace, &def)
            .withholding(key_env)
            .for_session(commands_of(self.dir))
            .with_mcp(mcp);
        let mut history: Vec<Message> =
            transcript::read(&self.dir.transcript_path(), state.transcript)?
                .into_iter()
                .map(|line| line.message)
                .collect();
        let run = agent::Run {
            def: &def,
            provider: provider.as_ref(),
            tools: &tools,
            preset: meta.events,
            execution_id: exec.id,
            message_id: exec.message_id,
            session_usage: meta.usage,
            budgets: agent::Budgets::from_def(&def, meta.extra_session_tokens, price),
        };
        let mut sink = StoreSink {
            dir: self.dir,
            log: self.log,
            execution_id: exec.id,
            clock: self.store.clock.as_ref(),
            shutdown: self.shutdown,
            cancels: CancelWatch::new(self.dir.inbox_dir(), file.entry.seq),
            checkpointed,
        };
        let end = agent::run(&run, &mut history, state, &mut sink).await?;
        if matches!(&end, LoopEnd::Settled(o) if o.status == ExecStatus::Cancelled) {
            if let Some(seq) = sink.cancels.seen.iter().map(|(_, seq)| *seq).max() {
                self.store.note_consumed(self.dir, seq)?;
            }
            for (path, _) in sink.cancels.seen {
                inbox::remove(&path)?;
            }
        }
        Ok((end, price))
    }

    /// Adds the execution to the session totals and writes the final events, under the
    /// session lock. When `recovering`, parts an earlier attempt wrote are skipped.
    fn finish(&mut self, exec: &Execution, recovering: bool) -> Result<()> {
        let clock = self.store.clock.clone();
        let mut locked = self.log.lock()?;
        let mut meta = read_meta(self.dir)?;
        if meta.last_execution != Some(exec.id) {
            meta.add_execution(exec);
            // A message settles one execution, so this counts it, as `recount` does. Not
            // by its seq: a `cancel` entry consumed while it ran has a higher one.
            meta.counters.messages += 1;
            // `send` leaves the seq in the entry alone: it is recorded here, before the
            // entry leaves the inbox, so no later message gets the same one.
            meta.last_message_seq = meta.last_message_seq.max(exec.message_seq);
            meta.updated_at = clock.now();
            // Made durable at the end of the drain (see the module's notes).
            self.dir.write_meta_unsynced(&meta)?;
        }
        if recovering {
            let written = offset_of_last(&self.dir.events_path(), &["execution.finished"])?
                .is_some_and(|(_, event)| event.execution_id == Some(exec.id));
            if written {
                return Ok(());
            }
        }
        // The last events of an execution go in one write: a crash leaves all or none,
        // and recovery (above) writes them only if `execution.finished` is missing.
        let mut last = Vec::new();
        if let (ExecStatus::Completed, Some(response)) = (exec.status, &exec.response) {
            last.push(EventPayload::MessageCompleted(MessageCompleted {
                message_id: exec.message_id,
                response: response.clone(),
                empty: response.trim().is_empty(),
            }));
        }
        last.push(EventPayload::AgentStatus(AgentStatusChanged {
            status: exec.status.into(),
            previous_status: AgentStatus::Processing,
        }));
        last.push(EventPayload::ExecutionFinished(ExecutionFinished {
            status: exec.status,
            stop_reason: exec.stop_reason,
            exit_code: execution::exit_code(exec.status, exec.stop_reason),
            steps: exec.steps,
            usage: FinishedUsage {
                execution: exec.usage,
                session: meta.usage,
            },
            duration_ms: exec.duration_ms.unwrap_or(0),
            error: exec.error.as_ref().map(|e| e.message.clone()),
            message_id: Some(exec.message_id),
            cost_usd: exec.cost_usd.map(|execution| FinishedCost {
                execution,
                session: meta.cost_usd.unwrap_or(execution),
            }),
        }));
        locked.append_all(Some(exec.id), last)?;
        Ok(())
    }

    fn status_event(
        &mut self,
        exec_id: Uuid,
        status: AgentStatus,
        previous: AgentStatus,
    ) -> Result<()> {
        self.log.append(
            Some(exec_id),
            EventPayload::AgentStatus(AgentStatusChanged {
                status,
                previous_status: previous,
            }),
        )?;
        Ok(())
    }
}

/// Whom a session's commands run for, and where their process groups are recorded
/// while they run.
fn commands_of(dir: &SessionDir) -> crate::tools::process::Owner {
    crate::tools::process::Owner {
        session: dir.id,
        record: dir.path.join("processes.json"),
    }
}

/// What [`Owner::prepare`] resolves for one execution.
struct Prepared {
    def: definition::AgentDef,
    /// Of the definition file as read for this execution.
    source_hash: String,
    provider: Box<dyn provider::Provider>,
    price: Option<Price>,
    /// Variables the agent's keys come from, withheld from its commands.
    key_env: Vec<String>,
}

/// The agent loop's sink, backed by the session's files.
struct StoreSink<'a> {
    dir: &'a SessionDir,
    log: &'a mut EventLog,
    execution_id: Uuid,
    clock: &'a dyn crate::time::Clock,
    shutdown: &'a Shutdown,
    cancels: CancelWatch,
    /// Set once a checkpoint wrote the state durably.
    checkpointed: &'a mut bool,
}

impl Sink for StoreSink<'_> {
    fn emit(&mut self, payload: EventPayload) -> Result<()> {
        if let EventPayload::ProviderRetry(retry) = &payload {
            info!(
                session = %self.dir.id,
                execution = %self.execution_id,
                attempt = retry.attempt,
                delay_ms = retry.delay_ms,
                "retrying the model call: {}",
                retry.error
            );
        }
        self.log.append(Some(self.execution_id), payload)?;
        Ok(())
    }

    fn checkpoint(&mut self, lines: Vec<TranscriptLine>, state: &mut AgentState) -> Result<()> {
        // The user message `begin` appended without fsync is synced with the first.
        self.dir.checkpoint(lines, state, !*self.checkpointed)?;
        *self.checkpointed = true;
        Ok(())
    }

    fn stop_requested(&mut self) -> Option<Stop> {
        if self.cancels.requested() {
            Some(Stop::Cancel)
        } else if self.shutdown.is_requested() {
            Some(Stop::Shutdown)
        } else {
            None
        }
    }

    fn now(&self) -> Timestamp {
        self.clock.now()
    }

    fn paused(&mut self) -> bool {
        self.dir
            .read_meta()
            .is_ok_and(|meta| meta.status == crate::domain::session::SessionStatus::Paused)
    }
}

/// Notices `cancel` entries queued after the running message. The inbox is listed at
/// most every 50 ms, and only entries not seen before are read.
struct CancelWatch {
    inbox: std::path::PathBuf,
    after_seq: u64,
    checked: Option<Instant>,
    known: std::collections::HashSet<String>,
    /// Cancel entries seen, with their seqs.
    seen: Vec<(std::path::PathBuf, u64)>,
}

impl CancelWatch {
    const INTERVAL: Duration = Duration::from_millis(50);

    fn new(inbox: std::path::PathBuf, after_seq: u64) -> CancelWatch {
        CancelWatch {
            inbox,
            after_seq,
            checked: None,
            known: Default::default(),
            seen: Vec::new(),
        }
    }

    fn requested(&mut self) -> bool {
        if !self.seen.is_empty() {
            return true;
        }
        if self.checked.is_some_and(|t| t.elapsed() < Self::INTERVAL) {
            return false;
        }
        self.checked = Some(Instant::now());
        let Ok(names) = inbox::entry_names(&self.inbox) else {
            return false;
        };
        for name in names {
            if !self.known.insert(name.clone()) {
                continue;
            }
            let path = self.inbox.join(&name);
            if let Ok(entry) = crate::store::fs::read_json::<InboxEntry>(&path)
                && entry.kind == EntryKind::Cancel
                && entry.seq > self.after_seq
            {
                self.seen.push((path, entry.seq));
            }
        }
        !self.seen.is_empty()
    }
}
