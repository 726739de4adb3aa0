//! What gets a user out of an error, worded for the command line: the store says what
//! happened and which way out there is ([`Remedy`]); the commands name the commands.

use std::io;

use crate::error::{Remedy, UserError};
use crate::store::ReadError;

/// The remedy an error carries, as a command to run; the error itself unchanged
/// otherwise (same text first, same exit code).
pub fn advise(err: anyhow::Error) -> anyhow::Error {
    let Some(user) = err.chain().find_map(|c| c.downcast_ref::<UserError>()) else {
        return err;
    };
    let Some(remedy) = &user.remedy else {
        return err;
    };
    let message = format!("{}; {}", crate::error::render(&err), words(remedy));
    UserError {
        kind: user.kind,
        message,
        remedy: None,
    }
    .into()
}

fn words(remedy: &Remedy) -> String {
    match remedy {
        Remedy::RebuildFromEventLog { session } => format!(
            "a worker rebuilds it from the session's event log (`agentq worker --once`), or remove the session with `agentq session rm {session}`"
        ),
        Remedy::RebuildFromLogs => "a worker rebuilds it from the session's logs, keeping a damaged one aside (`agentq worker --once`)".to_owned(),
        Remedy::RepairOrRemove { session } => format!(
            "repair or remove that file, or remove the session with `agentq session rm {session}`"
        ),
        Remedy::StartAnother { agent } => {
            format!("start another with `agentq session new --agent {agent}`")
        }
        Remedy::CancelOrWait { session } => {
            format!("cancel it with `agentq cancel {session}` or wait, then remove it")
        }
        Remedy::RemoveAndResend => "remove that file, then `agentq send` again".to_owned(),
    }
}

/// Adds what to do to an error that a damaged file of session `id` caused (a file
/// where a directory belongs or the reverse, unreadable, garbled, gone), unless it
/// already says: a one-line error names the path and the way out.
pub fn explain_damage(err: anyhow::Error, id: &str) -> anyhow::Error {
    use io::ErrorKind as K;
    let err = advise(err);
    let user_facing = err.chain().any(|c| c.downcast_ref::<UserError>().is_some());
    let damage = err.chain().any(|c| {
        c.downcast_ref::<ReadError>().is_some()
            || c.downcast_ref::<io::Error>().is_some_and(|io| {
                matches!(
                    io.kind(),
                    K::NotFound
                        | K::NotADirectory
                        | K::IsADirectory
                        | K::PermissionDenied
                        | K::InvalidData
                        | K::UnexpectedEof
                )
            })
    });
    let text = crate::error::render(&err);
    // About a file of this session: its path holds the id (which a prefix starts).
    let ours = text.contains(id);
    if user_facing || !damage || !ours || text.contains("`agentq ") {
        return err;
    }
    // A new error, so the way out follows the path instead of preceding it; the exit
    // code (1) is the same as the original's.
    anyhow::anyhow!(
        "{text}; repair that file of session {id} or move it aside, or remove the session with `agentq session rm {id}`"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_remedy_becomes_the_command_to_run_after_the_whole_message() {
        let id = uuid::Uuid::nil();
        let err = anyhow::Error::new(
            UserError::usage(format!("session {id} is being worked on"))
                .with_remedy(Remedy::CancelOrWait { session: id }),
        )
        .context("removing it");
        let advised = advise(err);
        assert_eq!(
            crate::error::render(&advised),
            format!(
                "removing it: session {id} is being worked on; cancel it with `agentq cancel {id}` or wait, then remove it"
            )
        );
        assert_eq!(crate::error::exit_code(&advised), 2, "the exit code stays");
    }

    #[test]
    fn an_error_without_a_remedy_is_left_alone() {
        let err = anyhow::anyhow!("disk");
        assert_eq!(crate::error::render(&advise(err)), "disk");
    }
}
