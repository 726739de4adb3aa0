//! Declared command tools (`[[tools.command]]`): a fixed argv run without a shell, in
//! the workspace, with the model's arguments as JSON on standard input.
//!
//! The environment is scrubbed of secrets (`*_KEY`, `*_TOKEN`, `*_SECRET`,
//! `*_PASSWORD`); the process runs in its own process group, which is killed whole at
//! the timeout, when the execution is cancelled or the worker stops, and after the main
//! process exits (so a stray background child can neither linger nor hold the output
//! pipes open); [`super::process`] makes sure it cannot outlive the worker either.
//! Output is capped.

use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use super::files::Workspace;
use super::{ToolOutput, process};
use crate::definition::CommandToolDef;
use crate::provider::ToolSpec;

/// Used when a command declares no timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// Bytes kept of each of stdout and stderr.
const OUTPUT_CAP: usize = 32 * 1024;
/// How often a running command asks whether to stop: the most a shutdown or
/// `--max-duration` waits for it (one cheap call; a cancel's inbox is read at most
/// every 50 ms whatever this is).
const CHECK_EVERY: Duration = Duration::from_millis(10);

pub fn spec(def: &CommandToolDef) -> ToolSpec {
    let parameters = match &def.parameters {
        Some(table) => crate::definition::toml_to_json(toml::Value::Table(table.clone())),
        None => json!({"type": "object", "properties": {}}),
    };
    let description = if def.description.is_empty() {
        format!("Run `{}`", def.argv.join(" "))
    } else {
        def.description.clone()
    };
    ToolSpec {
        name: def.name.clone(),
        description,
        parameters,
    }
}

/// True for variables that must not reach a command: they hold credentials.
pub fn is_secret(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    ["KEY", "TOKEN", "SECRET", "PASSWORD"]
        .iter()
        .any(|word| upper == *word || upper.ends_with(&format!("_{word}")))
}

/// Runs the command and reports its exit code and output to the model.
/// `secrets` names variables to withhold besides those [`is_secret`] recognises (the
/// agent's `api_key_env`, whatever it is called); `owner` is the session the
/// command's processes are marked and recorded for.
pub async fn run(
    def: &CommandToolDef,
    workspace: &Workspace,
    arguments: &Value,
    secrets: &[String],
    owner: Option<&process::Owner>,
    stop: &mut (dyn FnMut() -> bool + Send),
) -> ToolOutput {
    match execute(def, workspace, arguments, secrets, owner, stop).await {
        Ok(output) => output,
        Err(message) => ToolOutput::error(message),
    }
}

async fn execute(
    def: &CommandToolDef,
    workspace: &Workspace,
    arguments: &Value,
    secrets: &[String],
    owner: Option<&process::Owner>,
    stop: &mut (dyn FnMut() -> bool + Send),
) -> Result<ToolOutput, String> {
    let cwd = workspace.resolve(def.cwd.as_deref().unwrap_or("."))?;
    if !cwd.is_dir() {
        return Err(format!(
            "the working directory `{}` does not exist in the workspace",
            def.cwd.as_deref().unwrap_or(".")
        ));
    }
    let Some((program, args)) = def.argv.split_first() else {
        return Err(format!("`{}` declares no program", def.name));
    };
    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
        .current_dir(&cwd)
        .env_clear()
        .envs(std::env::vars_os().filter(|(name, _)| {
            let name = name.to_string_lossy();
            !is_secret(&name) && !secrets.iter().any(|s| *s == name)
        }))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    process::prepare(&mut command, owner);
    let mut child = command
        .spawn()
        .map_err(|e| format!("cannot run `{program}`: {e}"))?;
    let group = child
        .id()
        .and_then(|id| process::Group::register(id, owner));

    let input = serde_json::to_vec(arguments).unwrap_or_default();
    let mut stdin = child.stdin.take();
    let feed = async move {
        if let Some(stdin) = stdin.as_mut() {
            // A command that does not read its input closes the pipe: not an error.
            let _ = stdin.write_all(&input).await;
            let _ = stdin.shutdown().await;
        }
    };
    let stdout = capped(child.stdout.take());
    let stderr = capped(child.stderr.take());
    let timeout = def.timeout.unwrap_or(DEFAULT_TIMEOUT);
    let deadline = Instant::now() + timeout;
    let started = Instant::now();

    let wait = async {
        feed.await;
        loop {
            tokio::select! {
                status = child.wait() => return Ended::Exited(status),
                () = tokio::time::sleep(CHECK_EVERY) => {
                    if stop() {
                        return Ended::Stopped;
                    }
                    if Instant::now() >= deadline {
                        return Ended::TimedOut;
                    }
                }
            }
        }
    };
    let (ended, stdout, stderr) = tokio::join!(
        async {
            let ended = wait.await;
            // Whatever the reason, nothing of the group may outlive the call.
            drop(group);
            ended
        },
        stdout,
        stderr
    );
    let _ = child.wait().await;

    let mut report = match &ended {
        Ended::Exited(Ok(status)) => match status.code() {
            Some(code) => format!("exit code: {code}"),
            None => "exit code: none (killed by a signal)".to_owned(),
        },
        Ended::Exited(Err(e)) => format!("could not wait for the command: {e}"),
        Ended::TimedOut => format!(
            "timed out after {} and was killed",
            crate::time::human_duration(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX))
        ),
        Ended::Stopped => "stopped: the execution was cancelled".to_owned(),
    };
    report.push_str(&format!(
        " ({})",
        crate::time::human_duration(u64::try_from(started.elapsed().as_millis()).unwrap_or(0))
    ));
    for (name, text) in [("stdout", stdout), ("stderr", stderr)] {
        if !text.is_empty() {
            report.push_str(&format!("\n--- {name}\n{text}"));
        }
    }
    let success = matches!(&ended, Ended::Exited(Ok(status)) if status.success());
    Ok(if success {
        ToolOutput::ok(report)
    } else {
        ToolOutput::error(report)
    })
}

enum Ended {
    Exited(std::io::Result<std::process::ExitStatus>),
    TimedOut,
    Stopped,
}

/// Reads a pipe to its end, keeping the first [`OUTPUT_CAP`] bytes.
async fn capped(pipe: Option<impl AsyncRead + Unpin>) -> String {
    let Some(mut pipe) = pipe else {
        return String::new();
    };
    let mut kept = Vec::new();
    let mut total = 0usize;
    let mut buf = [0u8; 8192];
    while let Ok(n) = pipe.read(&mut buf).await {
        if n == 0 {
            break;
        }
        total += n;
        let room = OUTPUT_CAP.saturating_sub(kept.len());
        kept.extend_from_slice(&buf[..n.min(room)]);
    }
    let mut text = String::from_utf8_lossy(&kept).into_owned();
    if total > kept.len() {
        text.push_str(&format!(
            "\n[output cut: {total} bytes in all, the first {} shown]",
            kept.len()
        ));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tool(argv: &[&str], timeout_ms: u64) -> CommandToolDef {
        CommandToolDef {
            name: "t".into(),
            description: String::new(),
            argv: argv.iter().map(|s| (*s).to_owned()).collect(),
            parameters: None,
            timeout: Some(Duration::from_millis(timeout_ms)),
            cwd: None,
            read_only: false,
        }
    }

    fn run_tool(def: &CommandToolDef, args: Value) -> ToolOutput {
        let dir = tempfile::tempdir().unwrap();
        let ws = Workspace::new(dir.path().join("ws"));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let mut stop = || false;
        rt.block_on(run(def, &ws, &args, &[], None, &mut stop))
    }

    #[test]
    fn secrets_are_recognised_by_name() {
        for name in [
            "OPENAI_API_KEY",
            "GITHUB_TOKEN",
            "aws_secret",
            "DB_PASSWORD",
            "TOKEN",
        ] {
            assert!(is_secret(name), "{name}");
        }
        for name in ["PATH", "HOME", "KEYBOARD", "TOKENIZER_PATH"] {
            assert!(!is_secret(name), "{name}");
        }
    }

    #[test]
    fn arguments_arrive_as_json_on_stdin_and_output_comes_back() {
        let out = run_tool(&tool(&["cat"], 5000), json!({"x": "; rm -rf / $(reboot)"}));
        assert!(!out.is_error, "{}", out.content);
        assert!(out.content.starts_with("exit code: 0"));
        assert!(
            out.content.contains(r#"{"x":"; rm -rf / $(reboot)"}"#),
            "{}",
            out.content
        );
    }

    #[test]
    fn a_failing_command_is_a_tool_error_with_its_exit_code() {
        let out = run_tool(
            &tool(&["sh", "-c", "echo oops >&2; exit 3"], 5000),
            json!({}),
        );
        assert!(out.is_error);
        assert!(out.content.starts_with("exit code: 3"), "{}", out.content);
        assert!(out.content.contains("--- stderr\noops"), "{}", out.content);
    }

    #[test]
    fn a_missing_program_is_a_tool_error() {
        let out = run_tool(&tool(&["/nonexistent/program"], 5000), json!({}));
        assert!(
            out.is_error && out.content.contains("cannot run"),
            "{}",
            out.content
        );
    }

    #[test]
    fn the_timeout_kills_the_whole_process_tree() {
        let started = Instant::now();
        let out = run_tool(
            &tool(&["sh", "-c", "sleep 100 & sleep 100"], 300),
            json!({}),
        );
        assert!(
            out.is_error && out.content.contains("timed out"),
            "{}",
            out.content
        );
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the pipes were not held open"
        );
    }

    #[test]
    fn output_is_capped() {
        let out = run_tool(
            &tool(&["sh", "-c", "yes | head -c 200000"], 5000),
            json!({}),
        );
        assert!(
            out.content.contains("[output cut: 200000 bytes"),
            "{}",
            &out.content[out.content.len() - 200..]
        );
    }
}
