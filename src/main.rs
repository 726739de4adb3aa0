//! The `agentq` binary: parse the command line, run one command, and turn its result
//! into an exit code. Errors are rendered here and nowhere else. Output goes through
//! an [`Output`], whose colours are decided here once: a closed pipe ends the command
//! quietly with 0, like `head` closing it is meant to; any other failed write (a full
//! disk) is an error naming standard output, exit 1. No write panics.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::field::MakeExt;
use tracing_subscriber::fmt::{FormatFields, format};

use agentq::cli::{Cli, Command, StoreCommand, WorkerArgs};
use agentq::commands::{self, Context};
use agentq::eprintln;
use agentq::error;
use agentq::output::Output;
use agentq::text::{ERROR_CAP, one_line};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // --help, --version: print, exit 0 (clap's own `exit` hides a failed write).
        Err(err) if !err.use_stderr() => {
            return match err.print() {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("agentq: writing to standard output: {e}");
                    ExitCode::from(error::exit::FAILED)
                }
            };
        }
        Err(err) => {
            eprintln!("agentq: {}", clap_line(&err.to_string()));
            return ExitCode::from(error::exit::USAGE);
        }
    };
    let out = Output::standard(cli.color);
    if let Err(message) = init_logging(&cli, out.stderr().color()) {
        eprintln!("agentq: {}", one_line(&message, ERROR_CAP));
        return ExitCode::from(error::exit::USAGE);
    }
    // The commands that keep no sessions open no database. Every other works in a
    // home, and refuses a directory that is not one, but `init`, which makes one, and
    // `store migrate`, which touches only the database (a deploy step, from anywhere).
    let context = match cli.command {
        Command::Schema(_) | Command::Completions { .. } => {
            Context::with_files(cli.home.clone(), out)
        }
        Command::Init | Command::Store(StoreCommand::Migrate { .. }) => {
            Context::new(cli.home.clone(), cli.store.clone(), out)
        }
        _ => Context::in_home(cli.home.clone(), cli.store.clone(), out),
    };
    let result = context.and_then(|ctx| {
        let code = commands::dispatch(&ctx, cli.command)?;
        // What is still buffered is written here, where a failure is reported like any
        // other (at exit it would be dropped silently).
        ctx.out.stdout().flush()?;
        Ok(code)
    });
    match result {
        Ok(code) => ExitCode::from(code),
        Err(err) if error::is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("agentq: {}", error::for_terminal(&err));
            ExitCode::from(error::exit_code(&err))
        }
    }
}

/// Logs go to stderr (or `worker --log-file`) through `tracing`: the worker reports
/// claims, finishes, retries and recoveries at `info`, other commands only warnings
/// unless asked with `-v`; coloured when stderr is (`ansi`).
fn init_logging(cli: &Cli, ansi: bool) -> Result<(), String> {
    let base = match cli.command {
        Command::Worker(_) | Command::Serve(_) => tracing::Level::INFO,
        _ => tracing::Level::WARN,
    };
    let level = match cli.verbose {
        0 => base,
        1 => tracing::Level::DEBUG,
        _ => tracing::Level::TRACE,
    };
    let builder = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_target(false)
        // Its report of a failed write is std's `eprintln!`, which panics when stderr
        // is the output that failed; a log line lost is not worth the process.
        .log_internal_errors(false)
        .fmt_fields(neutral_fields());
    match &cli.command {
        Command::Worker(WorkerArgs {
            log_file: Some(path),
            ..
        }) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600) // like every file agentq creates, whatever the umask
                .open(path)
                .map_err(|e| format!("cannot open the log file {}: {e}", path.display()))?;
            builder
                .with_writer(std::sync::Mutex::new(file))
                .with_ansi(false)
                .init();
        }
        _ => builder.with_writer(std::io::stderr).with_ansi(ansi).init(),
    }
    Ok(())
}

/// Log fields as the default formatter writes them (`message key=value …`), but each
/// value neutralised and on one line: log lines quote provider errors, tool names and
/// paths, and a log is read in a terminal (`tail -f`) like any other output.
fn neutral_fields() -> impl for<'w> FormatFields<'w> + 'static {
    format::debug_fn(|out, field, value| {
        let text = format!("{value:?}");
        let text = one_line(&text, ERROR_CAP);
        match field.name() {
            "message" => write!(out, "{text}"),
            name => write!(out, "{name}={text}"),
        }
    })
    .delimited(" ")
}

/// Clap's message without its usage block, on one line:
/// `the following required arguments were not provided: <ID> (see --help)`.
/// It quotes the arguments, which may hold anything: they are neutralised too.
fn clap_line(clap_message: &str) -> String {
    let body: Vec<&str> = clap_message
        .lines()
        .take_while(|line| !line.starts_with("Usage:") && !line.starts_with("For more information"))
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect();
    let text = body.join(" ");
    let text = text.strip_prefix("error: ").unwrap_or(&text);
    format!("{} (see --help)", one_line(text, ERROR_CAP))
}
