//! Following a session's event log as it grows: tails by byte offset, woken early by
//! file-system notifications, with a short poll as the baseline where they are missing.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use tokio::sync::mpsc;

use super::SessionDir;
use super::events::{LogReader, parse_line};

/// How often the log is checked when no notification arrives.
const POLL: Duration = Duration::from_millis(200);

pub struct Follower {
    path: PathBuf,
    reader: LogReader,
    wake: mpsc::UnboundedReceiver<()>,
    _watcher: Option<notify::RecommendedWatcher>,
}

pub use crate::store::LogLine as Line;

impl Follower {
    /// Starts following at byte `offset` of the session's log.
    pub fn open(dir: &SessionDir, offset: u64) -> Result<Follower> {
        Follower::open_as(dir, offset, true)
    }

    /// [`Follower::open`] for reading what the log holds now: no notification watch
    /// (a thread and an inotify instance each), so waiting only polls.
    pub fn unwatched(dir: &SessionDir, offset: u64) -> Result<Follower> {
        Follower::open_as(dir, offset, false)
    }

    fn open_as(dir: &SessionDir, offset: u64, watched: bool) -> Result<Follower> {
        let path = dir.events_path();
        let reader = LogReader::open_at(&path, offset)?;
        let (tx, wake) = mpsc::unbounded_channel();
        let watcher = if watched { watch(&dir.path, tx) } else { None };
        Ok(Follower {
            path,
            reader,
            wake,
            _watcher: watcher,
        })
    }

    /// Lines appended since the last call, without waiting.
    pub fn read(&mut self) -> Result<Vec<Line>> {
        let lines = self.reader.read_lines()?;
        Ok(lines
            .into_iter()
            .map(|raw| {
                let event = parse_line(&raw);
                Line { raw, event }
            })
            .collect())
    }

    /// Waits until the log may have grown (a notification, or the poll interval).
    pub async fn wait(&mut self) {
        tokio::select! {
            heard = self.wake.recv() => {
                // No one left to tell (no watch could be set up, or none was wanted):
                // the poll is all there is.
                if heard.is_none() {
                    tokio::time::sleep(POLL).await;
                }
            }
            () = tokio::time::sleep(POLL) => {}
        }
        // Several notifications for one write are common; one read handles them all.
        while self.wake.try_recv().is_ok() {}
    }

    /// False once the session (and so its log) was removed.
    pub fn exists(&self) -> bool {
        self.path.exists()
    }
}

fn watch(
    dir: &std::path::Path,
    wake: mpsc::UnboundedSender<()>,
) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher;
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // Only changes wake the follower: opening or reading files in the directory
        // (its own look into inbox/, for one) is no reason to read the log again.
        if event.is_ok_and(|e| !matches!(e.kind, notify::EventKind::Access(_))) {
            let _ = wake.send(());
        }
    })
    .ok()?;
    watcher
        .watch(dir, notify::RecursiveMode::NonRecursive)
        .ok()?;
    Some(watcher)
}
