//! The inbox of a session: one file per pending entry, published by temp file and
//! rename so a reader never sees half an entry, removed only once settled.

use std::io;
use std::path::{Path, PathBuf};

use super::fs::{self, AtPath, ReadError};
use uuid::Uuid;

use crate::domain::inbox::{EntryKind, InboxEntry};
use crate::time::Timestamp;

/// An entry as found in the inbox.
#[derive(Debug, Clone)]
pub struct InboxFile {
    pub path: PathBuf,
    pub entry: InboxEntry,
}

/// What a listing found: entries in run order, and files that could not be read.
#[derive(Debug, Default)]
pub struct Listing {
    pub entries: Vec<InboxFile>,
    pub unreadable: Vec<ReadError>,
}

/// Writes an entry durably: temp file, fsync, rename, fsync the directory. A missing
/// inbox (removed by hand) is made again, durably, rather than refusing every message.
pub fn publish(inbox: &Path, entry: &InboxEntry) -> io::Result<PathBuf> {
    let path = inbox.join(entry.file_name());
    if let Err(e) = std::fs::symlink_metadata(inbox)
        && e.kind() == io::ErrorKind::NotFound
        && let Some(session) = inbox.parent()
    {
        // Not recursive: a session removed meanwhile must not come back as an inbox.
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(inbox)
            .or_else(|e| match e.kind() {
                io::ErrorKind::AlreadyExists => Ok(()),
                _ => Err(e),
            })
            .at(inbox)?;
        fs::sync_dir(session)?;
    }
    fs::write_json(&path, entry)?;
    Ok(path)
}

/// Names of entry files in run order (temp files, which start with a dot, excluded).
pub fn entry_names(inbox: &Path) -> io::Result<Vec<String>> {
    let entries = match std::fs::read_dir(inbox) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(fs::with_path(e, inbox)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.at(inbox)?;
        if let Some(name) = entry.file_name().to_str()
            && !name.starts_with('.')
            && name.ends_with(".json")
        {
            names.push(name.to_owned());
        }
    }
    names.sort_unstable();
    Ok(names)
}

/// Reads every entry, in run order.
pub fn list(inbox: &Path) -> io::Result<Listing> {
    let mut listing = Listing::default();
    for name in entry_names(inbox)? {
        let path = inbox.join(&name);
        match fs::read_json::<InboxEntry>(&path) {
            Ok(entry) => listing.entries.push(InboxFile { path, entry }),
            // Settled and removed between the listing and the read.
            Err(ReadError::NotFound { .. }) => {}
            Err(err) => listing.unreadable.push(err),
        }
    }
    Ok(listing)
}

/// The first readable entry in run order (what runs next), and the unreadable entries
/// before it. Reads one entry, not all of them, however many wait.
pub fn head(inbox: &Path) -> io::Result<Listing> {
    let mut listing = Listing::default();
    for name in entry_names(inbox)? {
        let path = inbox.join(&name);
        match fs::read_json::<InboxEntry>(&path) {
            Ok(entry) => {
                listing.entries.push(InboxFile { path, entry });
                break;
            }
            Err(ReadError::NotFound { .. }) => {}
            Err(err) => listing.unreadable.push(err),
        }
    }
    Ok(listing)
}

/// What waits in an inbox, counted the one way every command counts it: user
/// messages only (a `cancel` entry is a request about one, not a message), the one
/// an execution is running apart from those waiting.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// User messages no execution has started on.
    pub waiting: usize,
    /// Whether the message of the running execution is in the inbox (it stays there
    /// until its execution has settled).
    pub running: bool,
    pub oldest_waiting: Option<Timestamp>,
    /// When the newest user message was queued.
    pub newest: Option<Timestamp>,
}

impl Counts {
    /// User messages in the inbox, waiting or running.
    pub fn messages(&self) -> usize {
        self.waiting + usize::from(self.running)
    }
}

/// Counts the entries of `inbox`; `running` is the message of the execution in
/// progress, if one is. An entry that cannot be read is not a message anyone can run,
/// and is not counted.
pub fn count(inbox: &Path, running: Option<Uuid>) -> io::Result<Counts> {
    let entries = list(inbox)?.entries;
    Ok(Counts::of(entries.iter().map(|file| &file.entry), running))
}

impl Counts {
    /// Counts `entries`, whichever store they come from; `running` is the message of
    /// the execution in progress, if one is.
    pub fn of<'a>(entries: impl Iterator<Item = &'a InboxEntry>, running: Option<Uuid>) -> Counts {
        let mut counts = Counts::default();
        for entry in entries.filter(|entry| entry.kind == EntryKind::User) {
            counts.newest = Some(
                counts
                    .newest
                    .map_or(entry.created_at, |t| t.max(entry.created_at)),
            );
            if Some(entry.id) == running {
                counts.running = true;
            } else {
                counts.waiting += 1;
                counts.oldest_waiting = Some(
                    counts
                        .oldest_waiting
                        .map_or(entry.created_at, |t| t.min(entry.created_at)),
                );
            }
        }
        counts
    }
}

/// The highest `seq` among the entry names, read from the zero-padded prefix.
pub fn highest_seq(inbox: &Path) -> io::Result<u64> {
    Ok(entry_names(inbox)?
        .iter()
        .filter_map(|name| name.split('-').next()?.parse::<u64>().ok())
        .max()
        .unwrap_or(0))
}

/// Removes a settled entry. Not fsynced: the owner makes its removals durable once at
/// the end of its drain (`SessionDir::flush_drain`); an entry that a power failure
/// brings back is recognised as settled and removed again, never run twice.
pub fn remove(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(fs::with_path(e, path)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: u64) -> InboxEntry {
        InboxEntry {
            id: Uuid::now_v7(),
            seq,
            kind: EntryKind::User,
            content: format!("message {seq}"),
            metadata: Default::default(),
            key: None,
            created_at: Timestamp(0),
            attempts: 0,
        }
    }

    #[test]
    fn entries_list_in_seq_order_and_temp_files_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        for seq in [10, 2, 1] {
            publish(dir.path(), &entry(seq)).unwrap();
        }
        std::fs::write(dir.path().join(".000000000099-x.json.tmp-1-0"), b"{").unwrap();
        let listing = list(dir.path()).unwrap();
        let seqs: Vec<u64> = listing.entries.iter().map(|f| f.entry.seq).collect();
        assert_eq!(seqs, vec![1, 2, 10]);
        assert!(listing.unreadable.is_empty());
        assert_eq!(highest_seq(dir.path()).unwrap(), 10);
    }

    #[test]
    fn an_unreadable_entry_is_reported_not_dropped() {
        let dir = tempfile::tempdir().unwrap();
        publish(dir.path(), &entry(1)).unwrap();
        std::fs::write(dir.path().join("000000000002-bad.json"), b"not json").unwrap();
        let listing = list(dir.path()).unwrap();
        assert_eq!(listing.entries.len(), 1);
        assert_eq!(listing.unreadable.len(), 1);
    }

    #[test]
    fn counts_are_of_user_messages_with_the_running_one_apart() {
        let dir = tempfile::tempdir().unwrap();
        let running = entry(1);
        let waiting = InboxEntry {
            created_at: Timestamp(5),
            ..entry(2)
        };
        let cancel = InboxEntry {
            kind: EntryKind::Cancel,
            created_at: Timestamp(9),
            ..entry(3)
        };
        for e in [&running, &waiting, &cancel] {
            publish(dir.path(), e).unwrap();
        }
        std::fs::write(dir.path().join("000000000004-bad.json"), b"{").unwrap();
        let counts = count(dir.path(), Some(running.id)).unwrap();
        assert_eq!(
            counts,
            Counts {
                waiting: 1,
                running: true,
                oldest_waiting: Some(Timestamp(5)),
                newest: Some(Timestamp(5)),
            }
        );
        assert_eq!(counts.messages(), 2);
        assert_eq!(count(dir.path(), None).unwrap().waiting, 2);
    }

    #[test]
    fn removing_a_missing_entry_is_not_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = publish(dir.path(), &entry(1)).unwrap();
        remove(&path).unwrap();
        remove(&path).unwrap();
        assert!(entry_names(dir.path()).unwrap().is_empty());
    }
}
