//! One module per subcommand. Each takes the parsed arguments and the [`Context`], does
//! its work, writes its output through the context's [`Output`], and returns the exit
//! code. The subcommands do not use each other: what several of them share is here
//! (the context, reading a message's text, printing a message's result) or in a module
//! of its own ([`crate::follow`], [`crate::history`]).

mod advice;
pub mod agents;
mod approval;
pub mod approve;
pub mod cancel;
pub mod deny;
pub mod init;
mod listing;
pub mod retry;
pub mod run;
pub mod schema;
pub mod send;
pub mod serve;
pub mod session;
pub mod status;
pub mod store;
pub mod watch;
pub mod worker;

use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context as _, Result};

use crate::cli::Command;
use crate::config::HomeConfig;
use crate::domain::execution::{ExecStatus, StopReason};
use crate::error::UserError;
use crate::follow::MessageResult;
use crate::home::Home;
use crate::ids::V7Ids;
use crate::output::Output;
use crate::store::Store;
use crate::time::SystemClock;
use crate::usage_bail;

/// What every command works with, built once from the global options.
pub struct Context {
    /// The home's sessions.
    pub store: Arc<dyn Store>,
    /// The home's own files (agent definitions, `agentq.toml`).
    pub home: Home,
    /// Where the command's output goes: the process's streams, or a test's buffers.
    pub out: Output,
}

impl Context {
    /// `store` is `--store` (or `AGENTQ_STORE`); without it, `[store] url` in
    /// `agentq.toml`, else the files under `sessions/`.
    pub fn new(home: Option<PathBuf>, store: Option<String>, out: Output) -> Result<Context> {
        Context::open(home, store, out, false)
    }

    /// [`Context::new`] for a command that works in a home (every one but `init`,
    /// which makes one): a directory that is not a home is refused before the store
    /// is opened ([`require_home`]).
    pub fn in_home(home: Option<PathBuf>, store: Option<String>, out: Output) -> Result<Context> {
        Context::open(home, store, out, true)
    }

    fn open(
        home: Option<PathBuf>,
        store: Option<String>,
        out: Output,
        home_required: bool,
    ) -> Result<Context> {
        let home = match home {
            Some(home) => home,
            None => std::env::current_dir().context("finding the current directory")?,
        };
        let home = Home::new(home);
        let url = match store {
            Some(url) => Some(url),
            None => store_in_config(&home)?,
        };
        if home_required {
            require_home(&home, url.as_deref())?;
        }
        let lease = HomeConfig::store_lease(&home.config_path())?;
        let store = crate::store::open(
            url.as_deref(),
            lease,
            home.root(),
            Arc::new(SystemClock),
            Arc::new(V7Ids),
        )?;
        Ok(Context { store, home, out })
    }

    /// For the commands that keep no sessions (`schema`, `completions`), and tests: the
    /// file store, which opens nothing until it is used.
    pub fn with_files(home: Option<PathBuf>, out: Output) -> Result<Context> {
        Context::new(home, Some(crate::store::FILES.to_owned()), out)
    }

    /// `agentq.toml`, read when a command needs it.
    pub fn config(&self) -> Result<HomeConfig> {
        Ok(HomeConfig::load(&self.home.config_path())?)
    }
}

/// Runs one command and returns its exit code. An error from a damaged file of the
/// session a command names says what gets the user out of it.
pub fn dispatch(ctx: &Context, command: Command) -> Result<u8> {
    let session = session_of(&command).map(str::to_owned);
    run_command(ctx, command).map_err(|err| match session {
        Some(id) => advice::explain_damage(err, &id),
        None => advice::advise(err),
    })
}

/// Refuses a home that is not one, naming it: a cron line with `--home /typo` must
/// fail, not find nothing to do forever (nor create `sessions/` wherever it runs).
/// A home is a directory with `agents/`, `agentq.toml`, or the sessions of the file
/// store (`sessions/`), as `agentq init` leaves it ([`crate::store::marks_home`]).
/// Checked before the store is opened: the same refusal (exit 2) whichever store
/// `url` names, and no database is connected to for a directory that is not a home.
fn require_home(home: &Home, url: Option<&str>) -> Result<()> {
    let root = home.root();
    let shown = root.display();
    let make_one = format!("`agentq --home {shown} init` makes one");
    match std::fs::metadata(root) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => {
            usage_bail!("the home {shown} is not a directory; check --home and AGENTQ_HOME")
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            usage_bail!(
                "the home {shown} does not exist; check --home and AGENTQ_HOME, or {make_one}"
            )
        }
        Err(e) => usage_bail!("cannot use the home {shown}: {e}"),
    }
    let marked = home.agents_dir().exists()
        || home.config_path().exists()
        || crate::store::marks_home(url, root);
    if !marked {
        usage_bail!(
            "{shown} is not an agentq home (no agents/, sessions/ or agentq.toml); check --home and AGENTQ_HOME, or {make_one}"
        );
    }
    Ok(())
}

/// `[store] url` of `agentq.toml`, read alone: the rest of the file is checked by the
/// commands that use it, so a problem there does not stop `session list`.
fn store_in_config(home: &Home) -> Result<Option<String>> {
    let path = home.config_path();
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        // No file; or no home, which the command refuses with what to do about it.
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
            ) =>
        {
            return Ok(None);
        }
        // Unreadable, or not text: it might name a store, so nothing goes on without
        // it; the loader words the refusal as for every command that reads the file.
        Err(_) => return Ok(HomeConfig::load(&path)?.store.url),
    };
    // Cheap for the files that do not name a store, which are most.
    if !text.contains("store") {
        return Ok(None);
    }
    let table: toml::Table = match text.parse() {
        Ok(table) => table,
        // Reported, with its line, by the commands that read the whole file.
        Err(_) => return Ok(None),
    };
    match table.get("store").and_then(|store| store.get("url")) {
        None => Ok(None),
        Some(toml::Value::String(url)) => Ok(Some(url.clone())),
        Some(_) => Err(UserError::usage(format!(
            "{}: store.url must be a string (a postgres:// URL)",
            path.display()
        ))
        .into()),
    }
}

/// The session id a command was given, if it takes one.
fn session_of(command: &Command) -> Option<&str> {
    use crate::cli::SessionCommand as S;
    match command {
        Command::Session(
            S::Show { id, .. }
            | S::Messages { id, .. }
            | S::Close { id }
            | S::Pause { id }
            | S::Resume { id }
            | S::Rm { id },
        ) => Some(id),
        Command::Send(args) => Some(&args.id),
        Command::Cancel(args) => Some(&args.id),
        Command::Approve(args) => Some(&args.id),
        Command::Deny(args) => Some(&args.id),
        Command::Retry(args) => Some(&args.id),
        Command::Watch(args) => Some(&args.id),
        _ => None,
    }
}

fn run_command(ctx: &Context, command: Command) -> Result<u8> {
    match command {
        Command::Init => init::run(ctx),
        Command::Agents(cmd) => agents::run(ctx, cmd),
        Command::Session(cmd) => session::run(ctx, cmd),
        Command::Send(args) => send::run(ctx, args),
        Command::Cancel(args) => cancel::run(ctx, args),
        Command::Approve(args) => approve::run(ctx, args),
        Command::Deny(args) => deny::run(ctx, args),
        Command::Retry(args) => retry::run(ctx, args),
        Command::Worker(args) => worker::run(ctx, args),
        Command::Watch(args) => watch::run(ctx, args),
        Command::Run(args) => run::run(ctx, args),
        Command::Serve(args) => serve::run(ctx, args),
        Command::Status { json } => status::run(ctx, json),
        Command::Store(cmd) => store::run(ctx, cmd),
        Command::Schema(what) => schema::run(ctx, what),
        Command::Completions { shell } => {
            // Generated into memory: clap_complete panics on a failed write.
            let mut script = Vec::new();
            clap_complete::generate(
                shell,
                &mut <crate::cli::Cli as clap::CommandFactory>::command(),
                "agentq",
                &mut script,
            );
            ctx.out.stdout().write_all(&script)?;
            Ok(0)
        }
    }
}

/// A runtime for the commands that wait on files, timers or signals.
pub fn runtime(threads: usize) -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// The text of a message from the argument, `-` (standard input) or `--file`.
/// Standard input is read only when asked for with `-`.
pub fn message_text(
    text: Option<String>,
    file: Option<&PathBuf>,
    max_bytes: usize,
) -> Result<String> {
    let bytes = match (text, file) {
        (Some(t), None) if t == "-" => {
            let mut buf = Vec::new();
            std::io::stdin()
                .lock()
                .take(max_bytes as u64 + 1)
                .read_to_end(&mut buf)
                .context("reading the message from standard input")?;
            buf
        }
        (Some(t), None) => t.into_bytes(),
        (None, Some(path)) => {
            let unreadable = |e: std::io::Error| {
                UserError::usage(format!("cannot read {}: {e}", path.display()))
            };
            let file = std::fs::File::open(path).map_err(unreadable)?;
            let mut buf = Vec::new();
            file.take(max_bytes as u64 + 1)
                .read_to_end(&mut buf)
                .map_err(unreadable)?;
            buf
        }
        (None, None) => {
            return Err(UserError::usage(
                "no message given: pass the text, `-` to read standard input, or --file FILE",
            )
            .into());
        }
        (Some(_), Some(_)) => {
            return Err(UserError::usage("give the text or --file, not both").into());
        }
    };
    if bytes.len() > max_bytes {
        return Err(UserError::usage(format!(
            "the message is larger than the limit of {max_bytes} bytes (set [inbox] max_message_bytes in agentq.toml to change it)"
        ))
        .into());
    }
    let text = String::from_utf8(bytes)
        .map_err(|_| UserError::usage("the message is not valid UTF-8 text"))?;
    if text.trim().is_empty() {
        return Err(UserError::usage("the message is empty").into());
    }
    Ok(text)
}

/// Prints the result of one message (`send --wait`, `run`): the answer on stdout and
/// what went wrong on stderr, or the whole result as JSON.
pub fn print_result(out: &Output, result: &MessageResult, json: bool) -> Result<()> {
    if json {
        return out.json(result);
    }
    if let Some(response) = &result.response {
        writeln!(out.human(), "{response}")?;
    }
    if result.empty {
        out.note(crate::render::EMPTY_ANSWER);
    }
    if let Some(parked) = &result.awaiting_approval {
        out.note(&crate::follow::waiting_note(result.session_id, parked));
        return Ok(());
    }
    if result.status != ExecStatus::Completed {
        let reason = result.stop_reason.map_or("", StopReason::as_str);
        let detail = result
            .error
            .as_deref()
            .map(|e| format!(": {e}"))
            .unwrap_or_default();
        // The error may quote a provider's body: `note` keeps it to one safe line.
        out.note(&format!(
            "execution {} ({reason}){detail}",
            result.status.as_str()
        ));
    }
    Ok(())
}
