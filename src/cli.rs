//! The command line as the user types it (ARCHITECTURE.md §7). Parsing, and the ranges
//! of flags whose values could not work (the same ranges as the keys of the same meaning
//! in definitions: a duration is a limit, a count at least 1); the commands turn the
//! values into work.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::domain::session::{EventsPreset, SessionStatus};

const ABOUT: &str = "A job runner for LLM agents whose whole state lives in files";

const AFTER_HELP: &str = "\
Examples:
  agentq init
  id=$(agentq session new --agent demo --title \"notes\")
  agentq send \"$id\" \"What is in the notes?\"
  agentq worker --once
  agentq watch \"$id\" --from-start
  agentq run --agent demo \"Hello\"

Exit codes: 0 completed, 1 failed, 2 usage error, 3 stopped by a limit,
4 waiting for approval (--no-wait-approval), 75 temporarily unavailable,
130 cancelled.";

#[derive(Debug, Parser)]
#[command(name = "agentq", version, about = ABOUT, after_help = AFTER_HELP, propagate_version = true)]
pub struct Cli {
    /// The home directory holding agents/ and sessions/ [default: the current directory]
    #[arg(long, global = true, env = "AGENTQ_HOME", value_name = "DIR")]
    pub home: Option<PathBuf>,

    /// Where the sessions are kept: a postgres:// URL [default: `[store] url` in
    /// agentq.toml, else the files under sessions/]
    #[arg(long, global = true, env = "AGENTQ_STORE", value_name = "URL")]
    pub store: Option<String>,

    /// When to use colours in output (NO_COLOR is honoured with `auto`)
    #[arg(long, global = true, value_enum, default_value_t = ColorChoice::Auto, value_name = "WHEN")]
    pub color: ColorChoice,

    /// More log output on stderr (-v debug, -vv trace)
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

/// A duration flag that is a limit or a wait: see [`crate::time::LIMIT_RANGE`].
fn limit(text: &str) -> Result<Duration, String> {
    crate::time::parse_limit(text)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ColorChoice {
    Auto,
    Always,
    Never,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create agents/, sessions/ and the example agent agents/demo.toml
    #[command(after_help = "Example:\n  agentq --home ./work init")]
    Init,

    /// List, show and check agent definitions
    #[command(
        subcommand,
        after_help = "Examples:\n  agentq agents list\n  agentq agents show demo\n  agentq agents validate"
    )]
    Agents(AgentsCommand),

    /// Create, inspect and manage sessions
    #[command(
        subcommand,
        after_help = "Examples:\n  id=$(agentq session new --agent demo)\n  agentq session list\n  agentq session show \"$id\"\n  agentq session pause \"$id\""
    )]
    Session(SessionCommand),

    /// Queue a message for a session (works with no worker running)
    #[command(
        after_help = "Examples:\n  id=$(agentq session new --agent demo)\n  agentq send \"$id\" \"Summarise the notes\"\n  echo \"text\" | agentq send \"$id\" -\n  agentq send \"$id\" --file prompt.md --key daily-2026-11-21\n  agentq send \"$id\" \"Hello\" --wait --timeout 2m      # a worker must be running\n  agentq send \"$id\" --continue                        # after a stop at a limit"
    )]
    Send(SendArgs),

    /// Cancel the running execution of a session
    #[command(
        after_help = "Example:\n  agentq cancel \"$id\"   # id=$(agentq session new --agent demo)"
    )]
    Cancel(CancelArgs),

    /// Approve the call a session waits on (`approval = "required"`); a worker runs it
    #[command(
        long_about = "Approve the call of a tool with approval = \"required\" that a session's execution is parked on: an inbox entry, so no worker needs to be running; the next worker that takes the session runs the call, once. CALL_ID (whole or a unique prefix) names the call; without it, the one waiting. Approving a call twice is a no-op; a call denied before cannot be approved. Who approved (the user and uid of this process) is recorded in the approval.decided event: an audit record, not an authentication.",
        after_help = "Examples:\n  agentq approve \"$id\"               # the call waiting\n  agentq approve \"$id\" call_3_1 --json"
    )]
    Approve(ApproveArgs),

    /// Deny the call a session waits on: the model gets a tool error with the reason
    #[command(
        long_about = "Deny the call of a tool with approval = \"required\" that a session's execution is parked on: the call never runs, and the model is told it was denied (with --reason) and carries on. An inbox entry, so no worker needs to be running. CALL_ID (whole or a unique prefix) names the call; without it, the one waiting. A call approved before cannot be denied.",
        after_help = "Examples:\n  agentq deny \"$id\" --reason \"not on the production database\"\n  agentq deny \"$id\" call_3_1 --json"
    )]
    Deny(DenyArgs),

    /// Queue again the text of the message whose execution failed last
    #[command(
        after_help = "Example:\n  agentq retry \"$id\" && agentq worker --once   # id=$(agentq session new --agent demo)"
    )]
    Retry(RetryArgs),

    /// Process pending messages: claim sessions, run the agent loop, record events
    #[command(
        after_help = "Examples:\n  agentq worker                 # run until Ctrl-C or SIGTERM\n  agentq worker --once          # handle what is pending now, then exit (cron, CI)\n  agentq worker --concurrency 4 --max-duration 10m"
    )]
    Worker(WorkerArgs),

    /// Follow a session's event log and render it live
    #[command(
        after_help = "Examples:\n  id=$(agentq session new --agent demo)\n  agentq watch \"$id\"\n  agentq watch \"$id\" --from-start --plain\n  agentq watch \"$id\" --json | jq .type\n  agentq watch \"$id\" --exit-on-idle --timeout 5m   # a worker must be running"
    )]
    Watch(WatchArgs),

    /// The home at a glance: pending, running, failed in the last day, live workers
    #[command(after_help = "Examples:\n  agentq status\n  agentq status --json | jq .pending")]
    Status {
        #[arg(long)]
        json: bool,
    },

    /// Migrate agentq's schema in the store, or copy the home's sessions to another store
    #[command(
        subcommand,
        after_help = "Examples:\n  agentq --store postgres://agentq@db/agentq store migrate\n  agentq store copy --to postgres://agentq@db/agentq\n  agentq --store postgres://agentq@db/agentq store copy --to files"
    )]
    Store(StoreCommand),

    /// Print the JSON Schema of agentq's formats
    #[command(
        subcommand,
        after_help = "Example:\n  agentq schema events > events.schema.json"
    )]
    Schema(SchemaCommand),

    /// Print a shell completion script
    #[command(
        after_help = "Examples:\n  agentq completions bash > ~/.local/share/bash-completion/completions/agentq\n  agentq completions zsh > \"${fpath[1]}/_agentq\"\n  agentq completions fish > ~/.config/fish/completions/agentq.fish"
    )]
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },

    /// Serve the HTTP API and the live chat page over the home's sessions
    #[command(
        after_help = "The API (JSON) is under /api/, the chat page at /; see the README's `agentq serve`.\n\nExamples:\n  agentq serve --worker                       # http://127.0.0.1:8700/, processing too\n  agentq serve --listen 127.0.0.1:0           # a free port, printed on stdout\n  agentq serve --listen 0.0.0.0:8700 --token-file /etc/agentq/token"
    )]
    Serve(ServeArgs),

    /// One shot: queue a message, process it here, render it, print the answer
    #[command(
        after_help = "Examples:\n  agentq run --agent demo \"What is in the notes?\"\n  agentq run --agent demo --file prompt.md\n  id=$(agentq session new --agent demo)\n  agentq run --session \"$id\" \"And then?\""
    )]
    Run(RunArgs),
}

#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Create or migrate agentq's tables in the store's database, and say what was done
    #[command(
        long_about = "Create or migrate agentq's tables in the store's database (--store, AGENTQ_STORE or [store] url), under an advisory lock, and say what was done: from which version to which, or that it is already at this agentq's version. Every command does this on first use; a database at a newer version than this agentq knows is refused. The file store has no schema: nothing to migrate.",
        after_help = "Examples:\n  agentq --store postgres://agentq@db/agentq store migrate\n  agentq store migrate --json"
    )]
    Migrate {
        #[arg(long)]
        json: bool,
    },
    /// Copy the home's sessions to another store (the source keeps them)
    #[command(
        long_about = "Copy the home's sessions from the store they are in (--store, AGENTQ_STORE or [store] url) to the one --to names: everything a session is (its record, state, transcript, events with their seqs, executions, pending messages and idempotency keys), so that watch, session show, send --key and workers carry on there as here. Nothing is overwritten: if a session exists in the target, or a worker owns one in the source, nothing is copied. Each session is copied as one consistent snapshot.\n\nThe source keeps its sessions: check the copy, switch the home to the target (--store, AGENTQ_STORE or [store] url), then remove them from the source with `agentq session rm ID` if you wish. Workspaces (the files the agent's tools wrote) are files on each host and are not copied: move them by hand (sessions/ID/workspace on the file store, workspaces/ID with a database).",
        after_help = "Examples:\n  agentq store copy --to postgres://agentq@db/agentq           # files -> Postgres\n  agentq --store postgres://agentq@db/agentq store copy --to files\n  agentq store copy --to postgres://agentq@db/agentq --session \"$id\" --json"
    )]
    Copy(StoreCopyArgs),
}

#[derive(Debug, Args)]
pub struct StoreCopyArgs {
    /// The store to copy to: a postgres:// URL, or `files` (the home's sessions/ directory)
    #[arg(long, value_name = "URL")]
    pub to: String,
    /// Only this session (id or unique prefix); repeat for more [default: every session]
    #[arg(long = "session", value_name = "ID")]
    pub sessions: Vec<String>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, Subcommand)]
pub enum SchemaCommand {
    /// The event log: the envelope and every payload, by `type`
    #[command(after_help = "Example:\n  agentq schema events > events.schema.json")]
    Events,
}

#[derive(Debug, Subcommand)]
pub enum AgentsCommand {
    /// List the agents in agents/
    #[command(
        after_help = "Examples:\n  agentq agents list\n  agentq agents list --json | jq -r '.[].name'"
    )]
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show one agent's definition
    #[command(after_help = "Example:\n  agentq agents show demo")]
    Show {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Check definitions and report every problem (exit 2 if any)
    #[command(
        after_help = "Examples:\n  agentq agents validate\n  agentq agents validate agents/demo.toml --json"
    )]
    Validate {
        /// Files to check [default: every agents/*.toml]
        files: Vec<PathBuf>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum SessionCommand {
    /// Create a session and print its id
    #[command(
        after_help = "Examples:\n  id=$(agentq session new --agent demo)\n  agentq session new --agent demo --title \"release notes\" --set limits.max_steps=5 --events debug"
    )]
    New(SessionNewArgs),
    /// List sessions
    #[command(
        after_help = "Examples:\n  agentq session list\n  agentq session list --status paused --json"
    )]
    List {
        /// Only sessions with this status
        #[arg(long, value_enum)]
        status: Option<StatusFilter>,
        #[arg(long)]
        json: bool,
    },
    /// Show a session: status, counters, usage, budgets, todo list, last and failed executions
    #[command(after_help = "Example:\n  agentq session show \"$id\" --json | jq .session.usage")]
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Show a session's transcript
    #[command(after_help = "Example:\n  agentq session messages \"$id\"")]
    Messages {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Close a session: it takes no new messages
    #[command(after_help = "Example:\n  agentq session close \"$id\"")]
    Close { id: String },
    /// Pause a session: workers skip it (after the current step) until it is resumed
    #[command(after_help = "Example:\n  agentq session pause \"$id\"")]
    Pause { id: String },
    /// Resume a paused session
    #[command(after_help = "Example:\n  agentq session resume \"$id\"")]
    Resume { id: String },
    /// Remove a session and all its files (refused while a worker owns it)
    #[command(after_help = "Example:\n  agentq session rm \"$id\"")]
    Rm { id: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StatusFilter {
    Active,
    Paused,
    Closed,
}

impl StatusFilter {
    pub fn matches(self, status: SessionStatus) -> bool {
        matches!(
            (self, status),
            (StatusFilter::Active, SessionStatus::Active)
                | (StatusFilter::Paused, SessionStatus::Paused)
                | (StatusFilter::Closed, SessionStatus::Closed)
        )
    }
}

#[derive(Debug, Args)]
pub struct SessionNewArgs {
    /// The agent definition to use (agents/NAME.toml)
    #[arg(long, value_name = "NAME")]
    pub agent: String,
    #[arg(long)]
    pub title: Option<String>,
    /// Override a key of the agent definition for this session, e.g. limits.max_steps=5
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// How much detail the event log records
    #[arg(long, value_enum, default_value_t = EventsPreset::Standard)]
    pub events: EventsPreset,
    /// Print the whole session record as JSON instead of the id
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct SendArgs {
    /// Session id or unique prefix
    pub id: String,
    /// The message; `-` reads it from standard input
    #[arg(conflicts_with = "file")]
    pub text: Option<String>,
    /// Read the message from a file
    #[arg(long, value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// No new text: carry on with the task the last execution left stopped, failed or cancelled
    #[arg(long = "continue", conflicts_with_all = ["text", "file"])]
    pub continue_: bool,
    /// With --continue: add this many tokens to the session's session_max_tokens
    // `requires` alone is not enough: clap drops the requirement of an argument that
    // conflicts with one given, so `--raise-budget 5 TEXT` would pass unnoticed.
    #[arg(long, requires = "continue_", conflicts_with_all = ["text", "file"], value_name = "TOKENS", value_parser = clap::value_parser!(u64).range(1..))]
    pub raise_budget: Option<u64>,
    /// Idempotency key: sending the same key again is a no-op returning the first id
    #[arg(long, value_name = "KEY")]
    pub key: Option<String>,
    /// Wait for the answer, print it and exit with the execution's exit code
    #[arg(long)]
    pub wait: bool,
    /// With --wait: give up after this long (exit 75), e.g. 30s, 5m
    #[arg(long, requires = "wait", value_name = "DURATION", value_parser = limit)]
    pub timeout: Option<Duration>,
    /// With --wait: when a call waits for approval, exit 4 at once (with the commands
    /// that decide it) instead of waiting for a person
    #[arg(long, requires = "wait")]
    pub no_wait_approval: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct CancelArgs {
    /// Session id or unique prefix
    pub id: String,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ApproveArgs {
    /// Session id or unique prefix
    pub id: String,
    /// The call to approve (whole or unique prefix) [default: the one waiting]
    pub call_id: Option<String>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct DenyArgs {
    /// Session id or unique prefix
    pub id: String,
    /// The call to deny (whole or unique prefix) [default: the one waiting]
    pub call_id: Option<String>,
    /// Why: the model is told it with the refusal
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RetryArgs {
    /// Session id or unique prefix
    pub id: String,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// Handle every pending message, then exit
    #[arg(long)]
    pub once: bool,
    /// Sessions processed at the same time (each session stays strictly serial)
    #[arg(long, default_value_t = 1, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=256))]
    pub concurrency: u16,
    /// Only this session
    #[arg(long, value_name = "ID")]
    pub session: Option<String>,
    /// Stop claiming new messages after this long, e.g. 10m
    #[arg(long, value_name = "DURATION", value_parser = limit)]
    pub max_duration: Option<Duration>,
    /// Scan on this interval instead of using file notifications (network file systems)
    #[arg(long, value_name = "DURATION", value_parser = limit)]
    pub poll: Option<Duration>,
    /// At most this many workers in this home at once; a worker finding none free exits 0
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub max_workers: Option<u16>,
    /// Write the log to this file instead of stderr
    #[arg(long, value_name = "FILE")]
    pub log_file: Option<std::path::PathBuf>,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address and port to listen on; port 0 picks a free one
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:8700")]
    pub listen: std::net::SocketAddr,
    /// Also run a worker in this process (otherwise any worker on the same store answers)
    #[arg(long)]
    pub worker: bool,
    /// With --worker: sessions processed at the same time
    #[arg(long, default_value_t = 1, value_name = "N", requires = "worker", value_parser = clap::value_parser!(u16).range(1..=256))]
    pub concurrency: u16,
    /// With --worker: scan on this interval instead of using file notifications
    #[arg(long, value_name = "DURATION", requires = "worker", value_parser = limit)]
    pub poll: Option<Duration>,
    /// A file holding the API's bearer token; required to listen off loopback
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Let pages from this origin (e.g. https://app.example.com) call the API (CORS); none by default
    #[arg(long = "allow-origin", value_name = "ORIGIN")]
    pub allow_origins: Vec<String>,
}

#[derive(Debug, Args)]
pub struct WatchArgs {
    /// Session id or unique prefix
    pub id: String,
    /// Start after this event sequence number
    #[arg(long, value_name = "SEQ", conflicts_with = "from_start")]
    pub since: Option<u64>,
    /// Replay the whole log first [default: start at the last execution]
    #[arg(long)]
    pub from_start: bool,
    /// Print the raw event lines
    #[arg(long, conflicts_with = "plain")]
    pub json: bool,
    /// Plain lines, no terminal rendering
    #[arg(long)]
    pub plain: bool,
    /// Exit once nothing is pending or running, with the last execution's exit code
    #[arg(long)]
    pub exit_on_idle: bool,
    /// With --exit-on-idle: give up after this long (exit 75), e.g. 30s, 5m
    #[arg(long, requires = "exit_on_idle", value_name = "DURATION", value_parser = limit)]
    pub timeout: Option<Duration>,
    /// With --exit-on-idle: exit 4 once the session waits for an approval and nothing
    /// else is left to run
    #[arg(long, requires = "exit_on_idle")]
    pub no_wait_approval: bool,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The agent to run (a new session is created unless --session is given)
    #[arg(long, value_name = "NAME", required_unless_present = "session")]
    pub agent: Option<String>,
    /// The message; `-` reads it from standard input
    #[arg(conflicts_with = "file")]
    pub text: Option<String>,
    /// Read the message from a file
    #[arg(long, value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Use this existing session
    #[arg(long, value_name = "ID")]
    pub session: Option<String>,
    /// When a call waits for approval, exit 4 at once (with the commands that decide
    /// it); without it, run waits here for `agentq approve` or `deny`
    #[arg(long)]
    pub no_wait_approval: bool,
    /// Print the result as JSON
    #[arg(long)]
    pub json: bool,
}
