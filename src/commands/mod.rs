//! One module per subcommand. Each takes the parsed arguments and the [`Context`], does
//! its work, writes its output, and returns the exit code.

pub mod agents;
pub mod cancel;
pub mod init;
pub mod retry;
pub mod run;
pub mod schema;
pub mod send;
pub mod session;
pub mod status;
pub mod watch;
pub mod worker;

use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context as _, Result};

use crate::cli::{ColorChoice, Command};
use crate::config::HomeConfig;
use crate::error::UserError;
use crate::ids::V7Ids;
use crate::store::Store;
use crate::time::SystemClock;

/// What every command works with, built once from the global options.
pub struct Context {
    pub store: Store,
    /// Whether standard output gets colours.
    pub color: bool,
}

impl Context {
    pub fn new(home: Option<PathBuf>, color: ColorChoice) -> Result<Context> {
        let home = match home {
            Some(home) => home,
            None => std::env::current_dir().context("finding the current directory")?,
        };
        let color = match color {
            ColorChoice::Always => true,
            ColorChoice::Never => false,
            ColorChoice::Auto => {
                std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
                    && std::io::stdout().is_terminal()
            }
        };
        Ok(Context {
            store: Store::new(home, Arc::new(SystemClock), Arc::new(V7Ids)),
            color,
        })
    }

    /// `agentq.toml`, read when a command needs it.
    pub fn config(&self) -> Result<HomeConfig> {
        Ok(HomeConfig::load(&self.store.config_path())?)
    }
}

/// Runs one command and returns its exit code.
pub fn dispatch(ctx: &Context, command: Command) -> Result<u8> {
    match command {
        Command::Init => init::run(ctx),
        Command::Agents(cmd) => agents::run(ctx, cmd),
        Command::Session(cmd) => session::run(ctx, cmd),
        Command::Send(args) => send::run(ctx, args),
        Command::Cancel(args) => cancel::run(ctx, args),
        Command::Retry(args) => retry::run(ctx, args),
        Command::Worker(args) => worker::run(ctx, args),
        Command::Watch(args) => watch::run(ctx, args),
        Command::Run(args) => run::run(ctx, args),
        Command::Status { json } => status::run(ctx, json),
        Command::Schema(what) => schema::run(what),
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut <crate::cli::Cli as clap::CommandFactory>::command(),
                "agentq",
                &mut std::io::stdout(),
            );
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

/// The value of a duration flag such as `--timeout`, refused with the flag's name.
pub fn duration_flag(flag: &str, text: Option<&str>) -> Result<Option<std::time::Duration>> {
    text.map(|t| {
        crate::time::parse_duration(t).map_err(|e| UserError::usage(format!("{flag}: {e}")).into())
    })
    .transpose()
}

/// Prints a value as pretty JSON on stdout.
pub fn print_json<T: serde::Serialize>(value: &T) -> Result<()> {
    // Serialised first, so a closed pipe surfaces as the plain I/O error it is.
    let mut text = serde_json::to_vec_pretty(value)?;
    text.push(b'\n');
    std::io::stdout().lock().write_all(&text)?;
    Ok(())
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
