//! The `agentq` binary: parse the command line, run one command, and turn its result
//! into an exit code. Errors are rendered here and nowhere else.

use std::io::IsTerminal;
use std::os::unix::fs::OpenOptionsExt;
use std::process::ExitCode;

use clap::Parser;

use agentq::cli::{Cli, ColorChoice, Command, WorkerArgs};
use agentq::commands::{self, Context};
use agentq::error;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) if !err.use_stderr() => err.exit(), // --help, --version: print, exit 0
        Err(err) => {
            eprintln!("agentq: {}", one_line(&err.to_string()));
            return ExitCode::from(error::exit::USAGE);
        }
    };
    if let Err(message) = init_logging(&cli) {
        eprintln!("agentq: {message}");
        return ExitCode::from(error::exit::USAGE);
    }
    let result = Context::new(cli.home.clone(), cli.color)
        .and_then(|ctx| commands::dispatch(&ctx, cli.command));
    match result {
        Ok(code) => ExitCode::from(code),
        Err(err) if error::is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("agentq: {}", agentq::render::sanitize(&error::render(&err)));
            ExitCode::from(error::exit_code(&err))
        }
    }
}

/// Logs go to stderr (or `worker --log-file`) through `tracing`: the worker reports
/// claims, finishes, retries and recoveries at `info`, other commands only warnings
/// unless asked with `-v`.
fn init_logging(cli: &Cli) -> Result<(), String> {
    let base = match cli.command {
        Command::Worker(_) => tracing::Level::INFO,
        _ => tracing::Level::WARN,
    };
    let level = match cli.verbose {
        0 => base,
        1 => tracing::Level::DEBUG,
        _ => tracing::Level::TRACE,
    };
    let ansi = match cli.color {
        ColorChoice::Always => true,
        ColorChoice::Never => false,
        ColorChoice::Auto => {
            std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
                && std::io::stderr().is_terminal()
        }
    };
    let builder = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_target(false);
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

/// Clap's message without its usage block, on one line:
/// `the following required arguments were not provided: <ID> (see --help)`.
fn one_line(clap_message: &str) -> String {
    let body: Vec<&str> = clap_message
        .lines()
        .take_while(|line| !line.starts_with("Usage:") && !line.starts_with("For more information"))
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect();
    let text = body.join(" ");
    let text = text.strip_prefix("error: ").unwrap_or(&text);
    format!("{text} (see --help)")
}
