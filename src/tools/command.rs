//! Declared command tools (`[[tools.command]]`): a fixed argv run without a shell, in
//! the workspace, with the model's arguments as JSON on standard input.
//!
//! The process runs in its own process group, which is killed whole at the timeout,
//! when the execution is cancelled or the worker stops, and after the main process
//! exits (so a stray background child can neither linger nor hold the output pipes
//! open); [`super::process`] makes sure it cannot outlive the worker either. Output is
//! capped.
//!
//! The environment never carries what looks like a credential ([`EnvPolicy`]). A
//! variable looks like one when its name, split into words at `_` and compared without
//! regard to case, has
//! - a word that is, or ends with, KEY, TOKEN, SECRET, PASSWORD, PASSWD, CREDENTIAL,
//!   CREDENTIALS or WEBHOOK (`AWS_ACCESS_KEY_ID`, `APIKEY`, `SLACK_WEBHOOK_URL`), or
//! - a word that is exactly PWD, PAT, AUTH, DSN or JWT (`MYSQL_PWD`, `GITHUB_PAT`,
//!   `SSH_AUTH_SOCK`, `SENTRY_DSN`; not `PATH`), except for `PWD` alone, the shell's
//!   working directory;
//!
//! or when its value holds a URL with a password (`postgres://u:pw@host/db`), a
//! `password=` option (`postgres://h/db?password=pw`, libpq's `host=h password=pw`) or a
//! JSON Web Token (`eyJ….eyJ….…`). `[tools] env = "clean"` passes only PATH, HOME, LANG,
//! TZ and TMPDIR; `env_pass` names variables passed anyway, in either mode, except the
//! variables the agent's API key is read from, which no command ever sees.

use std::ffi::OsString;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use super::files::Workspace;
use super::{ToolOutput, process};
use crate::definition::{CommandToolDef, EnvMode};
use crate::provider::ToolSpec;
use crate::validate::DEFAULT_KEY_ENV;

/// Used when a command declares no timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// Bytes kept of each of stdout and stderr.
pub const OUTPUT_CAP: usize = 32 * 1024;
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

/// Words that make a variable's name a secret's when a word of it is one of them or
/// ends with one (`APIKEY`, `DBPASSWORD`).
const SECRET_ENDINGS: &[&str] = &[
    "KEY",
    "TOKEN",
    "SECRET",
    "PASSWORD",
    "PASSWD",
    "CREDENTIAL",
    "CREDENTIALS",
    "WEBHOOK",
];
/// Words too short to match inside a longer word (`PAT` in `PATH`, `PWD` in `OLDPWD`).
const SECRET_WORDS: &[&str] = &["PWD", "PAT", "AUTH", "DSN", "JWT"];
/// What `env = "clean"` keeps.
const CLEAN_ENV: &[&str] = &["PATH", "HOME", "LANG", "TZ", "TMPDIR"];

/// True for a variable name that looks like it holds a credential (module doc).
pub fn is_secret(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    upper != "PWD"
        && upper.split('_').any(|word| {
            SECRET_WORDS.contains(&word)
                || SECRET_ENDINGS.iter().any(|ending| word.ends_with(ending))
        })
}

/// True for a value that is a credential whatever its variable is called: a URL with a
/// password in it, a `password=` option, or a JSON Web Token. `AGENTQ_STORE` is such a
/// value when its URL carries the database's password.
pub fn is_secret_value(value: &str) -> bool {
    let url_with_password = value.match_indices("://").any(|(at, _)| {
        let rest = &value[at + 3..];
        let authority = rest
            .split(|c: char| matches!(c, '/' | '?' | '#') || c.is_whitespace())
            .next()
            .unwrap_or_default();
        authority
            .rsplit_once('@')
            .is_some_and(|(userinfo, _)| userinfo.contains(':'))
    });
    url_with_password || has_password_option(value) || value.split_whitespace().any(is_jwt)
}

/// `password=…` as an option of a URL's query or of a libpq connection string.
fn has_password_option(value: &str) -> bool {
    value
        .split(|c: char| matches!(c, '?' | '&' | ';') || c.is_whitespace())
        .any(|option| {
            option.split_once('=').is_some_and(|(key, password)| {
                key.eq_ignore_ascii_case("password") && !password.is_empty()
            })
        })
}

/// `header.payload.signature` in base64url, header and payload JSON objects (a
/// base64 `{"` is `eyJ`).
fn is_jwt(word: &str) -> bool {
    let parts: Vec<&str> = word.split('.').collect();
    parts.len() == 3
        && parts[..2].iter().all(|part| part.starts_with("eyJ"))
        && parts.iter().all(|part| {
            !part.is_empty()
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '='))
        })
}

/// Which of agentq's environment variables a command gets.
#[derive(Debug, Clone, Default)]
pub struct EnvPolicy {
    pub mode: EnvMode,
    /// Passed even when they look like secrets, and besides [`CLEAN_ENV`] (explicit opt-in).
    pub pass: Vec<String>,
    /// Never passed, whatever `pass` says: the variables the agent's key is read from.
    pub withheld: Vec<String>,
}

impl EnvPolicy {
    /// True when the variable reaches commands.
    pub fn keeps(&self, name: &str, value: &str) -> bool {
        if self.withheld.iter().any(|w| w == name) || DEFAULT_KEY_ENV.contains(&name) {
            return false;
        }
        if self.pass.iter().any(|p| p == name) {
            return true;
        }
        let allowed = match self.mode {
            EnvMode::Scrubbed => true,
            EnvMode::Clean => CLEAN_ENV.contains(&name),
        };
        allowed && !is_secret(name) && !is_secret_value(value)
    }

    /// The environment a command runs with, out of `vars` (agentq's own).
    pub fn environment(
        &self,
        vars: impl IntoIterator<Item = (OsString, OsString)>,
    ) -> Vec<(OsString, OsString)> {
        vars.into_iter()
            .filter(|(name, value)| self.keeps(&name.to_string_lossy(), &value.to_string_lossy()))
            .collect()
    }
}

/// Runs the command and reports its exit code and output to the model.
/// `env` says which variables the command sees; `owner` is the session the command's
/// processes are marked and recorded for.
pub async fn run(
    def: &CommandToolDef,
    workspace: &Workspace,
    arguments: &Value,
    env: &EnvPolicy,
    owner: Option<&process::Owner>,
    stop: &mut (dyn FnMut() -> bool + Send),
) -> ToolOutput {
    let input = serde_json::to_vec(arguments).unwrap_or_default();
    match execute(def, workspace, &input, env, owner, stop).await {
        Ok(run) if run.success() => ToolOutput::ok(run.report()),
        Ok(run) => ToolOutput::error(run.report()),
        Err(message) => ToolOutput::error(message),
    }
}

/// How one run of a declared program ended, and what it wrote.
#[derive(Debug)]
pub struct CommandRun {
    ended: Ended,
    timeout: Duration,
    pub duration_ms: u64,
    /// Capped at [`OUTPUT_CAP`] each, with a note saying how much was cut.
    pub stdout: String,
    pub stderr: String,
}

impl CommandRun {
    /// Exited with status 0.
    pub fn success(&self) -> bool {
        matches!(&self.ended, Ended::Exited(Ok(status)) if status.success())
    }

    /// The exit code; `None` when it was killed (a signal, the timeout, a stop).
    pub fn exit_code(&self) -> Option<i32> {
        match &self.ended {
            Ended::Exited(Ok(status)) => status.code(),
            _ => None,
        }
    }

    /// How it ended and how long it ran, on one line: `exit code: 1 (1.2s)`.
    pub fn status_line(&self) -> String {
        let ended = match &self.ended {
            Ended::Exited(Ok(status)) => match status.code() {
                Some(code) => format!("exit code: {code}"),
                None => "exit code: none (killed by a signal)".to_owned(),
            },
            Ended::Exited(Err(e)) => format!("could not wait for the command: {e}"),
            Ended::TimedOut => format!(
                "timed out after {} and was killed",
                crate::time::human_duration(
                    u64::try_from(self.timeout.as_millis()).unwrap_or(u64::MAX)
                )
            ),
            Ended::Stopped => "stopped: the execution was cancelled".to_owned(),
        };
        format!(
            "{ended} ({})",
            crate::time::human_duration(self.duration_ms)
        )
    }

    /// What the model is told: [`CommandRun::status_line`], then the output.
    pub fn report(&self) -> String {
        let mut report = self.status_line();
        for (name, text) in [("stdout", &self.stdout), ("stderr", &self.stderr)] {
            if !text.is_empty() {
                report.push_str(&format!("\n--- {name}\n{text}"));
            }
        }
        report
    }
}

/// Runs the program of `def` with `input` on its standard input, to its end, its
/// timeout, or until `stop()` says to stop. `Err` when it could not start.
pub async fn execute(
    def: &CommandToolDef,
    workspace: &Workspace,
    input: &[u8],
    env: &EnvPolicy,
    owner: Option<&process::Owner>,
    stop: &mut (dyn FnMut() -> bool + Send),
) -> Result<CommandRun, String> {
    execute_with(def, workspace, input, (env, &[]), owner, stop).await
}

/// [`execute`], the variables `set` added to what `env` passes (agentq's own, such as
/// a completion hook's `AGENTQ_EXECUTION_ID`).
pub async fn execute_with(
    def: &CommandToolDef,
    workspace: &Workspace,
    input: &[u8],
    (env, set): (&EnvPolicy, &[(&str, String)]),
    owner: Option<&process::Owner>,
    stop: &mut (dyn FnMut() -> bool + Send),
) -> Result<CommandRun, String> {
    let (mut child, group) = spawn(def, workspace, (env, set), owner)?;
    let timeout = def.timeout.unwrap_or(DEFAULT_TIMEOUT);
    let started = Instant::now();
    let (ended, stdout, stderr) = wait(&mut child, group, input, timeout, stop).await;
    let _ = child.wait().await;
    Ok(CommandRun {
        ended,
        timeout,
        duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        stdout,
        stderr,
    })
}

/// Starts the command in its working directory, in a process group of its own.
fn spawn(
    def: &CommandToolDef,
    workspace: &Workspace,
    (env, set): (&EnvPolicy, &[(&str, String)]),
    owner: Option<&process::Owner>,
) -> Result<(tokio::process::Child, Option<process::Group>), String> {
    // The same resolution as the file tools': no symlink out, no file taken for a
    // directory. The definition check already refused absolute paths and `..`.
    let cwd = workspace
        .directory(def.cwd.as_deref().unwrap_or("."))
        .map_err(|why| format!("the working directory of `{}` is unusable: {why}", def.name))?;
    let Some((program, args)) = def.argv.split_first() else {
        return Err(format!("`{}` declares no program", def.name));
    };
    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
        .current_dir(&cwd)
        .env_clear()
        .envs(env.environment(std::env::vars_os()))
        .envs(set.iter().map(|(name, value)| (name, value)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    process::prepare(&mut command, owner);
    let started_in = same_directory(&mut command, &cwd)?;
    let child = command.spawn().map_err(|e| {
        if e.raw_os_error() == Some(started_in) {
            format!(
                "cannot run `{program}`: its working directory `{}` was replaced while it started; run it again",
                def.cwd.as_deref().unwrap_or(".")
            )
        } else {
            format!("cannot run `{program}`: {e}")
        }
    })?;
    let group = child
        .id()
        .and_then(|id| process::Group::register(id, owner));
    Ok((child, group))
}

/// Feeds `input` to the command and waits for it to exit, for `timeout` to pass or
/// for `stop()`, reading its (capped) stdout and stderr meanwhile.
async fn wait(
    child: &mut tokio::process::Child,
    group: Option<process::Group>,
    input: &[u8],
    timeout: Duration,
    stop: &mut (dyn FnMut() -> bool + Send),
) -> (Ended, String, String) {
    let mut stdin = child.stdin.take();
    let feed = async move {
        if let Some(stdin) = stdin.as_mut() {
            // A command that does not read its input closes the pipe: not an error.
            let _ = stdin.write_all(input).await;
            let _ = stdin.shutdown().await;
        }
    };
    let stdout = capped(child.stdout.take());
    let stderr = capped(child.stderr.take());
    let deadline = Instant::now() + timeout;
    let ended = async {
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
    tokio::join!(
        async {
            let ended = ended.await;
            // Whatever the reason, nothing of the group may outlive the call.
            drop(group);
            ended
        },
        stdout,
        stderr
    )
}

#[derive(Debug)]
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

/// Makes the command start in the very directory that was checked: the child, once it
/// has changed into `cwd`, compares `.` with the inode the check saw, so a directory
/// swapped for a symlink between the check and the start is never run in. Returns the
/// error number the spawn fails with when it was swapped.
fn same_directory(
    command: &mut tokio::process::Command,
    cwd: &std::path::Path,
) -> Result<i32, String> {
    use std::os::unix::fs::MetadataExt;
    const SWAPPED: i32 = libc::ESTALE;
    let checked = std::fs::metadata(cwd)
        .map_err(|e| format!("cannot use the working directory {}: {e}", cwd.display()))?;
    let (dev, ino) = (checked.dev(), checked.ino());
    // SAFETY: the closure runs in the forked child after its chdir and before exec, and
    // calls only stat(2), which is async-signal-safe; it allocates nothing.
    unsafe {
        command.pre_exec(move || {
            let mut here: libc::stat = std::mem::zeroed();
            if libc::stat(c".".as_ptr(), &mut here) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if here.st_dev != dev || here.st_ino != ino {
                return Err(std::io::Error::from_raw_os_error(SWAPPED));
            }
            Ok(())
        });
    }
    Ok(SWAPPED)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::check_env_pass;

    #[test]
    fn a_working_directory_swapped_after_its_check_is_never_started_in() {
        let root = tempfile::tempdir().unwrap();
        let checked = root.path().join("work");
        let outside = root.path().join("outside");
        std::fs::create_dir(&checked).unwrap();
        std::fs::create_dir(&outside).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let start = |swap: bool| {
            let mut command = tokio::process::Command::new("true");
            command.current_dir(&checked);
            let swapped = same_directory(&mut command, &checked).unwrap();
            if swap {
                // The race, won: the checked directory is replaced by a symlink out.
                std::fs::rename(&checked, root.path().join("moved")).unwrap();
                std::os::unix::fs::symlink(&outside, &checked).unwrap();
            }
            let _guard = rt.enter();
            command.spawn().map(|_| ()).map_err(|e| (e, swapped))
        };
        start(false).expect("the checked directory starts the command");
        let (err, swapped) = start(true).expect_err("a swapped directory must not");
        assert_eq!(err.raw_os_error(), Some(swapped), "{err}");
    }

    fn tool(argv: &[&str], timeout_ms: u64) -> CommandToolDef {
        CommandToolDef {
            name: "t".into(),
            description: String::new(),
            argv: argv.iter().map(|s| (*s).to_owned()).collect(),
            parameters: None,
            timeout: Some(Duration::from_millis(timeout_ms)),
            cwd: None,
            read_only: false,
            approval: crate::definition::Approval::Never,
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
        rt.block_on(run(def, &ws, &args, &EnvPolicy::default(), None, &mut stop))
    }

    #[test]
    fn secrets_are_recognised_by_name() {
        for name in [
            "OPENAI_API_KEY",
            "GITHUB_TOKEN",
            "aws_secret",
            "DB_PASSWORD",
            "TOKEN",
            "APIKEY",
            "AWS_ACCESS_KEY_ID",
            "GITHUB_PAT",
            "PGPASSWORD",
            "MYSQL_PWD",
            "LDAP_PASSWD",
            "SENTRY_DSN",
            "SLACK_WEBHOOK_URL",
            "CREDENTIALS",
            "GOOGLE_APPLICATION_CREDENTIALS",
            "JWT",
            "NPM_CONFIG__AUTH",
            "SSH_AUTH_SOCK",
        ] {
            assert!(is_secret(name), "{name}");
        }
        for name in [
            "PATH",
            "HOME",
            "KEYBOARD",
            "TOKENIZER_PATH",
            "PWD",
            "OLDPWD",
            "PATHEXT",
            "XAUTHORITY",
            "DATABASE_URL",
            "LANG",
        ] {
            assert!(!is_secret(name), "{name}");
        }
    }

    #[test]
    fn urls_with_a_password_and_json_web_tokens_are_secrets_by_value() {
        for value in [
            "postgres://u:hunter2@h/db",
            "redis://:pw@localhost:6379",
            "see https://user:pass@example.com/x",
            "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl",
            "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl",
            "postgres://agentq@h/db?sslmode=disable&password=hunter2",
            "host=db.internal user=agentq PASSWORD=hunter2",
        ] {
            assert!(is_secret_value(value), "{value}");
        }
        for value in [
            "postgres://h/db",
            "ssh://git@github.com/a/b",
            "https://example.com/a:b@c",
            "/usr/bin:/bin",
            "eyJust.some.text here",
            "eyJ..",
            "postgres://h/db?password=",
            "reset_password=no",
        ] {
            assert!(!is_secret_value(value), "{value}");
        }
    }

    #[test]
    fn env_pass_opts_in_except_for_the_agents_key() {
        let policy = |mode, pass: &[&str]| EnvPolicy {
            mode,
            pass: pass.iter().map(|s| (*s).to_owned()).collect(),
            withheld: vec!["MY_GATEWAY".to_owned()],
        };
        let scrubbed = policy(
            EnvMode::Scrubbed,
            &["GITHUB_PAT", "MY_GATEWAY", "OPENAI_API_KEY"],
        );
        assert!(scrubbed.keeps("GITHUB_PAT", "x"));
        assert!(scrubbed.keeps("EDITOR", "vi"));
        assert!(!scrubbed.keeps("GITLAB_TOKEN", "x"));
        assert!(
            !scrubbed.keeps("MY_GATEWAY", "x"),
            "api_key_env is never passed"
        );
        assert!(
            !scrubbed.keeps("OPENAI_API_KEY", "x"),
            "nor a provider's default key"
        );
        let clean = policy(EnvMode::Clean, &["EDITOR"]);
        for name in CLEAN_ENV {
            assert!(clean.keeps(name, "v"), "{name}");
        }
        assert!(clean.keeps("EDITOR", "vi"));
        assert!(!clean.keeps("USER", "me"));
        assert!(!clean.keeps("HOME", "postgres://u:pw@h"));
        assert_eq!(check_env_pass("GITHUB_PAT", &[]), Ok(()));
        for bad in ["", "1X", "A-B", "A=B", "A B"] {
            assert!(check_env_pass(bad, &[]).is_err(), "{bad:?}");
        }
        assert!(
            check_env_pass("MY_GATEWAY", &["MY_GATEWAY"])
                .unwrap_err()
                .contains("never passed")
        );
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
