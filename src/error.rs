//! The errors a user can see, and the exit code each one maps to.
//!
//! Most code returns `anyhow::Result` with context naming the path or id involved.
//! Where the exit code must differ from the generic failure (1), the root cause is a
//! [`UserError`] carrying its [`ExitKind`]; `main` finds it in the chain and exits with
//! its code. This is the only place exit codes for errors are decided.

use std::fmt;

/// Exit codes of the CLI contract (ARCHITECTURE.md §7).
pub mod exit {
    pub const COMPLETED: u8 = 0;
    pub const FAILED: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const STOPPED: u8 = 3;
    /// `--no-wait-approval`: the execution waits for a person's approval (never the
    /// exit code of a finished execution).
    pub const AWAITING_APPROVAL: u8 = 4;
    pub const UNAVAILABLE: u8 = 75;
    pub const CANCELLED: u8 = 130;

    /// Of two outcomes, the one a script must hear about: `worker --once` ran several
    /// executions but has one exit code. A failure is never hidden behind a milder
    /// outcome: invalid input (2, needs a fix before anything can run) over failed (1)
    /// over unavailable (75, retry later) over stopped by a limit (3) over cancelled
    /// (130, someone asked for it) over completed (0).
    pub fn worst(a: u8, b: u8) -> u8 {
        fn rank(code: u8) -> u8 {
            match code {
                COMPLETED => 0,
                CANCELLED => 1,
                STOPPED | AWAITING_APPROVAL => 2,
                UNAVAILABLE => 3,
                USAGE => 5,
                // FAILED, and any code this version does not know.
                _ => 4,
            }
        }
        if rank(b) > rank(a) { b } else { a }
    }
}

/// Which exit code an error ends the process with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitKind {
    /// Bad arguments or input, unknown agent or session, invalid definition: exit 2.
    Usage,
    /// Something outside agentq is temporarily unavailable: exit 75.
    Unavailable,
    /// Anything else that went wrong: exit 1.
    Failed,
}

impl ExitKind {
    pub fn code(self) -> u8 {
        match self {
            ExitKind::Usage => exit::USAGE,
            ExitKind::Unavailable => exit::UNAVAILABLE,
            ExitKind::Failed => exit::FAILED,
        }
    }
}

/// An error whose message is written for the user: what is wrong and, where it helps,
/// what to do about it, in one line.
#[derive(Debug)]
pub struct UserError {
    pub kind: ExitKind,
    pub message: String,
    /// What gets the user out of it, for the interface showing the error to word
    /// (`commands::advice` for the CLI): the store knows the situation, not the commands.
    pub remedy: Option<Remedy>,
}

/// The way out of an error, in the terms of the layer that raised it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Remedy {
    /// A worker rebuilds the session's missing `session.json` from its event log; or
    /// the session can be removed.
    RebuildFromEventLog { session: uuid::Uuid },
    /// A worker rebuilds the damaged file from the session's logs, keeping it aside.
    RebuildFromLogs,
    /// A person must repair or move the file; or the session can be removed.
    RepairOrRemove { session: uuid::Uuid },
    /// The session takes no more messages: start another of the same agent.
    StartAnother { agent: String },
    /// A worker owns the session: cancel what it runs, or wait.
    CancelOrWait { session: uuid::Uuid },
    /// Remove the damaged key file, then send again.
    RemoveAndResend,
}

impl UserError {
    pub fn usage(message: impl Into<String>) -> Self {
        UserError {
            kind: ExitKind::Usage,
            message: message.into(),
            remedy: None,
        }
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        UserError {
            kind: ExitKind::Unavailable,
            message: message.into(),
            remedy: None,
        }
    }

    /// A failure (exit 1) written for the user.
    pub fn failed(message: impl Into<String>) -> Self {
        UserError {
            kind: ExitKind::Failed,
            message: message.into(),
            remedy: None,
        }
    }

    pub fn with_remedy(self, remedy: Remedy) -> Self {
        UserError {
            remedy: Some(remedy),
            ..self
        }
    }
}

impl fmt::Display for UserError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for UserError {}

/// Returns early with a usage error (exit 2), formatted like `format!`.
#[macro_export]
macro_rules! usage_bail {
    ($($arg:tt)*) => {
        return Err($crate::error::UserError::usage(format!($($arg)*)).into())
    };
}

/// The exit code for an error chain: the first [`UserError`] decides, else 1.
pub fn exit_code(err: &anyhow::Error) -> u8 {
    err.chain()
        .find_map(|cause| cause.downcast_ref::<UserError>())
        .map_or(exit::FAILED, |e| e.kind.code())
}

/// True when the error is a closed pipe on output, which ends a command successfully
/// (`agentq watch ID --json | head -1`).
pub fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// The error line a person reads on stderr: the chain rendered by [`render`], with what
/// it quotes from outside (a provider's body, a path, a key name from a file)
/// neutralised and capped, so it stays one safe line however hostile the text.
pub fn for_terminal(err: &anyhow::Error) -> String {
    crate::text::one_line(&render(err), crate::text::ERROR_CAP).into_owned()
}

/// Renders an error chain as one line: `outer: inner: root`.
pub fn render(err: &anyhow::Error) -> String {
    let mut line = String::new();
    for (i, cause) in err.chain().enumerate() {
        let text = cause.to_string();
        // anyhow contexts often repeat their source's text; skip exact repeats.
        if i > 0 && line.ends_with(&text) {
            continue;
        }
        if i > 0 {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line.replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn the_first_user_error_in_the_chain_decides_the_code() {
        let err =
            anyhow::Error::new(UserError::unavailable("provider down")).context("running step 2");
        assert_eq!(exit_code(&err), 75);
        assert_eq!(render(&err), "running step 2: provider down");
    }

    #[test]
    fn the_worst_outcome_decides_and_a_failure_is_never_hidden() {
        use exit::*;
        // Mildest first: each code hides every one before it.
        let ladder = [COMPLETED, CANCELLED, STOPPED, UNAVAILABLE, FAILED, USAGE];
        for (i, milder) in ladder.iter().enumerate() {
            for worse in &ladder[i..] {
                assert_eq!(worst(*milder, *worse), *worse, "{milder} then {worse}");
                assert_eq!(worst(*worse, *milder), *worse, "{worse} then {milder}");
            }
        }
        assert_eq!(
            worst(COMPLETED, 42),
            42,
            "an unknown code counts as a failure"
        );
    }

    #[test]
    fn the_terminal_line_neutralises_what_the_error_quotes() {
        let body = format!("bad\x1b]52;c;aGk=\x07\u{202e}\n{}", "x".repeat(5000));
        let err = anyhow::Error::new(UserError::unavailable(body)).context("calling the model");
        let line = for_terminal(&err);
        assert!(
            line.starts_with("calling the model: bad␛]52;c;aGk=␇<U+202E> x"),
            "{line}"
        );
        assert!(line.ends_with("more bytes)"), "{line}");
        assert!(line.chars().count() < 1100);
    }

    #[test]
    fn other_errors_exit_1() {
        let err: anyhow::Error = Err::<(), _>(std::io::Error::other("disk"))
            .context("writing state.json")
            .unwrap_err();
        assert_eq!(exit_code(&err), 1);
        assert!(!is_broken_pipe(&err));
    }
}
