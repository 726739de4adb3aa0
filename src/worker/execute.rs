//! Running one claimed message to a settled execution, as the session's owner: the
//! worker's side of the lifecycle the store keeps (`crate::store`). This module decides
//! what the execution does (load the agent, run the loop, settle with its outcome); the
//! lease decides how that is written.

use anyhow::Result;
use tracing::{info, warn};
use uuid::Uuid;

use super::Shutdown;
use super::mcp::McpPool;
use crate::agent::{self, LoopEnd, Outcome, Sink, Stop};
use crate::config::{HomeConfig, Price};
use crate::definition::{self, hooks};
use crate::domain::Usage;
use crate::domain::approval::{AwaitingApproval, Decision, DecisionRef};
use crate::domain::event::{AgentStatus, AgentStatusChanged, EventPayload, ExecutionStarted};
use crate::domain::execution::{self, Execution, StopReason, WorkerInfo};
use crate::domain::session::SessionMeta;
use crate::domain::state::AgentState;
use crate::domain::transcript::{Message, TranscriptLine};
use crate::error::UserError;
use crate::home::Home;
use crate::provider;
use crate::store::{Claim, Lease, Parked, Start};
use crate::time::{Clock, Timestamp};
use crate::tools::Toolbox;

/// What happened to the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handled {
    /// Settled, with the execution's exit code.
    Settled(u8),
    /// Left running for a later worker (shutdown).
    Suspended,
    /// Parked on a call that waits for approval; `wake_at` is when its
    /// `approval_timeout` denies it, if it has one.
    Parked {
        parked: Parked,
        wake_at: Option<Timestamp>,
    },
}

/// The owner of one session while it runs a claimed message.
pub struct Owner<'a> {
    pub lease: &'a mut dyn Lease,
    pub home: &'a Home,
    pub clock: &'a dyn Clock,
    pub shutdown: &'a Shutdown,
    pub worker: &'a WorkerInfo,
    /// The MCP servers started for this session while the worker owns it.
    pub mcp: &'a mut McpPool,
}

impl Owner<'_> {
    /// Runs (or resumes) the execution of a claimed message to its end: settled, or
    /// suspended at a checkpoint.
    pub async fn handle(&mut self, claim: Claim) -> Result<Handled> {
        let Claim {
            entry,
            execution: mut exec,
            mut state,
            start,
        } = claim;
        let session = self.lease.session_id();
        if start != Start::New {
            // A previous owner that died while a command ran may have left the
            // command's children running: they go before anything is resumed, so the
            // interrupted call can never run alongside what comes next.
            let leftovers = crate::tools::process::kill_leftovers(&self.commands());
            if leftovers > 0 {
                warn!(session = %session, execution = %exec.id, leftovers, "killed processes of a command the previous worker left running");
            }
        }
        if start != Start::Exhausted {
            self.lease.append(
                Some(exec.id),
                EventPayload::ExecutionStarted(ExecutionStarted {
                    message_id: entry.id,
                    attempt: exec.attempts,
                    worker: self.worker.clone(),
                    resumed: start != Start::New,
                }),
            )?;
        }
        if start == Start::New {
            self.lease.append(
                Some(exec.id),
                EventPayload::AgentStatus(AgentStatusChanged {
                    status: AgentStatus::Processing,
                    previous_status: AgentStatus::Idle,
                }),
            )?;
        }
        if start == Start::Resumed && awaiting(&state).is_some() {
            self.lease.append(
                Some(exec.id),
                EventPayload::AgentStatus(AgentStatusChanged {
                    status: AgentStatus::Processing,
                    previous_status: AgentStatus::Waiting,
                }),
            )?;
        }
        let (outcome, hooks) = if start == Start::Exhausted {
            (gave_up(&exec), self.hooks_now())
        } else {
            let (end, price, hooks) = self.run_loop(&exec, &mut state).await?;
            exec.cost_usd =
                price.map(|p| p.cost(state.current.as_ref().map_or(Usage::default(), |c| c.usage)));
            match end {
                LoopEnd::Settled(outcome) => (outcome, hooks),
                LoopEnd::Suspended => {
                    self.lease.suspend(&exec)?;
                    info!(session = %session, execution = %exec.id, "suspended at a checkpoint (shutdown or pause); it resumes from there");
                    return Ok(Handled::Suspended);
                }
                LoopEnd::Parked(waiting) => return self.park(exec, &state, waiting),
            }
        };
        settle_with(&mut exec, outcome, &state, self.clock.now());
        // Written with the settling, so a crash after it leaves them to deliver.
        hooks.add_to(&mut state, &exec);
        self.lease.settle(&exec, &state)?;
        info!(
            session = %session,
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

    /// Leaves the execution parked on the call that waits for approval.
    fn park(
        &mut self,
        mut exec: Execution,
        state: &AgentState,
        waiting: AwaitingApproval,
    ) -> Result<Handled> {
        let session = self.lease.session_id();
        self.lease.append(
            Some(exec.id),
            EventPayload::AgentStatus(AgentStatusChanged {
                status: AgentStatus::Waiting,
                previous_status: AgentStatus::Processing,
            }),
        )?;
        let seen_through = awaiting(state).map_or(0, |a| a.seen_through);
        let wake_at = waiting.deny_at;
        info!(session = %session, execution = %exec.id, tool = %waiting.tool_name, call = %waiting.tool_call_id, "parked: the call waits for `agentq approve {session}`");
        exec.awaiting_approval = Some(waiting);
        let parked = self.lease.park(&exec, seen_through)?;
        Ok(Handled::Parked { parked, wake_at })
    }

    /// Whom the session's commands run for, and where their process groups are
    /// recorded while they run.
    pub(super) fn commands(&self) -> crate::tools::process::Owner {
        crate::tools::process::Owner {
            session: self.lease.session_id(),
            record: self.lease.local().processes,
        }
    }

    /// The end of an execution that cannot start: it fails with the reason.
    fn cannot_run(&self, meta: &SessionMeta, err: UserError, reason: StopReason) -> LoopEnd {
        warn!(session = %self.lease.session_id(), "cannot run: {err}");
        LoopEnd::Settled(Outcome::failed(
            reason,
            err.message,
            Some(format!("agent {}", meta.agent)),
        ))
    }

    /// The definition with the session's overrides, and `agentq.toml`, checked as
    /// `agents validate` checks them. A problem here (the file deleted or broken since
    /// the session was made) ends the execution with exit 2 (`invalid_definition`),
    /// as `run --agent` does for such an agent: it needs a fix, not a retry.
    fn definition(
        &self,
        meta: &SessionMeta,
    ) -> Result<(definition::AgentDef, definition::Source, HomeConfig), UserError> {
        let home = HomeConfig::load(&self.home.config_path())?;
        let (def, source) =
            definition::load_named(&self.home.agents_dir(), &meta.agent, &meta.config, &home)?;
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
        let key_env = key_env(&def, home);
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

    /// The directory the agent's file tools are confined to (`rel`, its `[tools]
    /// workspace`). A workspace under the home must stay there once symlinks are
    /// followed, and out of agentq's own files.
    pub(super) fn workspace(&self, rel: &str) -> Result<std::path::PathBuf, UserError> {
        if rel == "session" {
            // The session's own directory; a symlink swapped in for it is not followed.
            let path = self.lease.local().workspace;
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
            .home
            .root()
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
        crate::store::local::create_dir_private(&path)
            .map_err(|e| refuse(format!("cannot be created: {e}")))?;
        let real = path
            .canonicalize()
            .map_err(|e| refuse(format!("cannot be checked: {e}")))?;
        if !inside(&real) || real == home {
            return Err(out_of_bounds(&real));
        }
        Ok(real)
    }

    /// The hooks of the definition as it is now, for an execution that ends without
    /// running (none if it cannot be read).
    fn hooks_now(&self) -> hooks::Snapshot {
        let loaded = self
            .lease
            .meta()
            .ok()
            .and_then(|meta| self.definition(&meta).ok());
        loaded.map_or_else(hooks::Snapshot::default, |(def, _, home)| {
            hooks::Snapshot::of(&def, key_env(&def, &home))
        })
    }

    async fn run_loop(
        &mut self,
        exec: &Execution,
        state: &mut AgentState,
    ) -> Result<(LoopEnd, Option<Price>, hooks::Snapshot)> {
        let meta = self.lease.meta()?;
        let (def, source, home) = match self.definition(&meta) {
            Ok(loaded) => loaded,
            Err(err) => {
                return Ok((
                    self.cannot_run(&meta, err, StopReason::InvalidDefinition),
                    None,
                    hooks::Snapshot::default(),
                ));
            }
        };
        let hooks = hooks::Snapshot::of(&def, key_env(&def, &home));
        let Prepared {
            def,
            source_hash,
            provider,
            price,
            key_env,
        } = match self.prepare(def, &source, &home) {
            Ok(ready) => ready,
            Err(err) => return Ok((self.cannot_run(&meta, err, StopReason::Error), None, hooks)),
        };
        if source_hash != meta.agent_hash {
            warn!(
                session = %self.lease.session_id(),
                agent = %meta.agent,
                "the agent definition changed since the session was created; this execution uses the current one"
            );
        }
        let workspace = match self.workspace(&def.tools.workspace) {
            Ok(path) => path,
            Err(err) => return Ok((self.cannot_run(&meta, err, StopReason::Error), None, hooks)),
        };
        let commands = self.commands();
        let mcp = self
            .mcp
            .tools_for(&def, &home, self.home.root(), &key_env, &commands)
            .await;
        let mcp = match mcp {
            Ok(tools) => tools,
            Err(err) => return Ok((self.cannot_run(&meta, err, StopReason::Error), None, hooks)),
        };
        let tools = Toolbox::for_agent(workspace, &def)
            .withholding(key_env)
            .for_session(commands)
            .with_mcp(mcp);
        let mut history: Vec<Message> = self
            .lease
            .history(state.transcript)?
            .into_iter()
            .map(|line| line.message)
            .collect();
        let run = agent::Run {
            def: &def,
            provider: provider.as_ref(),
            tools: &tools,
            preset: meta.events,
            execution_id: exec.id,
            session_usage: meta.usage,
            budgets: agent::Budgets::from_def(&def, meta.extra_session_tokens, price),
        };
        let mut sink = LeaseSink {
            lease: &mut *self.lease,
            execution_id: exec.id,
            clock: self.clock,
            shutdown: self.shutdown,
        };
        let end = agent::run(&run, &mut history, state, &mut sink).await?;
        Ok((end, price, hooks))
    }
}

/// The variables the agent's keys are read from: its own `api_key_env` and its named
/// provider's. Withheld from its commands (and its hooks).
fn key_env(def: &definition::AgentDef, home: &HomeConfig) -> Vec<String> {
    let named = home.providers.get(&def.model.provider);
    def.model
        .api_key_env
        .iter()
        .chain(named.and_then(|p| p.api_key_env.as_ref()))
        .cloned()
        .collect()
}

/// The outcome of an execution that every attempt of was interrupted by a crash.
fn gave_up(exec: &Execution) -> Outcome {
    Outcome::failed(
        StopReason::TooManyAttempts,
        format!(
            "gave up after {} attempts, each interrupted by a crash",
            exec.attempts
        ),
        None,
    )
}

/// Writes an outcome, and the totals the state counted, into the execution's record.
fn settle_with(exec: &mut Execution, outcome: Outcome, state: &AgentState, now: Timestamp) {
    exec.status = outcome.status;
    exec.stop_reason = Some(outcome.stop_reason);
    exec.response = outcome.response;
    exec.error = outcome.error;
    exec.checks = outcome.checks;
    exec.structured = outcome.structured;
    if let Some(current) = &state.current {
        exec.steps = current.steps;
        exec.usage = current.usage;
    }
    exec.finished_at = Some(now);
    exec.duration_ms = Some(now.millis_since(exec.started_at));
    exec.exit_code = Some(execution::exit_code(exec.status, exec.stop_reason));
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

/// The agent loop's sink: its events and checkpoints go through the session's lease.
struct LeaseSink<'a> {
    lease: &'a mut dyn Lease,
    execution_id: Uuid,
    clock: &'a dyn Clock,
    shutdown: &'a Shutdown,
}

impl Sink for LeaseSink<'_> {
    fn emit(&mut self, payload: EventPayload) -> Result<()> {
        if let EventPayload::ProviderRetry(retry) = &payload {
            info!(
                session = %self.lease.session_id(),
                execution = %self.execution_id,
                attempt = retry.attempt,
                delay_ms = retry.delay_ms,
                "retrying the model call: {}",
                retry.error
            );
        }
        self.lease.append(Some(self.execution_id), payload)?;
        Ok(())
    }

    fn checkpoint(&mut self, lines: Vec<TranscriptLine>, state: &mut AgentState) -> Result<()> {
        self.lease.checkpoint(lines, state)
    }

    fn stop_requested(&mut self) -> Option<Stop> {
        if self.lease.cancel_requested() {
            Some(Stop::Cancel)
        } else if self.shutdown.is_requested() {
            Some(Stop::Shutdown)
        } else {
            None
        }
    }

    /// The flag alone: no look at the inbox for a cancel.
    fn shutting_down(&mut self) -> bool {
        self.shutdown.is_requested()
    }

    fn now(&self) -> Timestamp {
        self.clock.now()
    }

    fn paused(&mut self) -> bool {
        self.lease.paused()
    }

    fn decision(&mut self, call: &DecisionRef) -> Result<Decision> {
        self.lease.decision(call)
    }
}

/// The call the state's open step waits on, if one does.
fn awaiting(state: &AgentState) -> Option<&crate::domain::approval::Awaiting> {
    state
        .current
        .as_ref()?
        .open_step
        .as_ref()?
        .awaiting
        .as_ref()
}
