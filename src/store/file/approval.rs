//! The file store's side of approvals: finding a decision in the inbox, and telling
//! whether a parked session has anything new to be claimed for.
//!
//! A parked session keeps its message in the inbox (the execution is not settled), so
//! "has entries" no longer means "has work": the full scan skips a session whose state
//! parks it on a call when no entry is newer than the park looked at and the call's
//! `deny_at` has not passed. `approve`, `deny`, `cancel` and `send` mark the session
//! ready as ever, which the scan never skips; the park clears the marker, then looks
//! at the inbox once more, so a decision whose marker it cleared is not lost.

use std::io;
use std::path::Path;

use super::SessionDir;
use super::inbox;
use crate::domain::approval::{Decision, DecisionRef, decision_in};
use crate::time::Timestamp;

/// The first decision naming `call` in the inbox, else the highest seq it holds.
pub(super) fn decision(inbox_dir: &Path, call: &DecisionRef) -> io::Result<Decision> {
    let listing = inbox::list(inbox_dir)?;
    let entries = listing.entries.iter().map(|file| &file.entry);
    if let Some(decided) = decision_in(entries, call) {
        return Ok(decided);
    }
    Ok(Decision::Pending {
        seen_through: inbox::highest_seq(inbox_dir)?,
    })
}

/// Whether an entry newer than `seen_through` is in the inbox.
pub(super) fn has_newer(inbox_dir: &Path, seen_through: u64) -> io::Result<bool> {
    Ok(inbox::highest_seq(inbox_dir)? > seen_through)
}

/// Whether the session waits on an approval with nothing new to act on: no entry newer
/// than its park, and its `deny_at` (if any) still ahead. Anything unreadable says no:
/// the drain that claims it reports what is wrong.
pub(super) fn parked_and_quiet(dir: &SessionDir, now: Timestamp) -> bool {
    let Ok(state) = dir.read_state() else {
        return false;
    };
    let Some(awaiting) = state
        .current
        .and_then(|current| current.open_step)
        .and_then(|open| open.awaiting)
    else {
        return false;
    };
    awaiting.deny_at.is_none_or(|deny_at| now < deny_at)
        && has_newer(&dir.inbox_dir(), awaiting.seen_through).is_ok_and(|newer| !newer)
}
