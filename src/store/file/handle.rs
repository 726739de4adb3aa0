//! The file store's [`Session`]: one session directory, for commands.

use anyhow::Result;
use uuid::Uuid;

use super::events::{offset_after_seq, offset_of_last};
use super::follow::Follower;
use super::inbox;
use super::session::{Enqueued, NewEntry, meta_with_remedy, state_with_remedy};
use super::{FileStore, SessionDir};
use crate::domain::event::RawEvent;
use crate::domain::execution::{Execution, WorkerInfo};
use crate::domain::inbox::InboxEntry;
use crate::domain::session::{SessionMeta, SessionStatus};
use crate::domain::state::{AgentState, TranscriptMark};
use crate::domain::transcript::TranscriptLine;
use crate::store::{EventFeed, InboxCounts, LogLine, Position, Session};

/// A session directory and the store it is in.
pub struct FileSession {
    pub(super) store: FileStore,
    pub(super) dir: SessionDir,
}

impl Session for FileSession {
    fn id(&self) -> Uuid {
        self.dir.id
    }

    fn meta(&self) -> Result<SessionMeta> {
        meta_with_remedy(&self.dir)
    }

    fn state(&self) -> Result<AgentState> {
        state_with_remedy(&self.dir)
    }

    fn transcript(&self, mark: TranscriptMark) -> Result<Vec<TranscriptLine>> {
        Ok(self.store.read_transcript(&self.dir, mark)?)
    }

    fn executions(&self) -> Result<Vec<Execution>> {
        Ok(self.dir.executions()?)
    }

    fn execution(&self, id: Uuid) -> Result<Execution> {
        Ok(self.dir.read_execution(id)?)
    }

    fn plain_meta(&self) -> Result<SessionMeta> {
        Ok(self.dir.read_meta()?)
    }

    fn plain_state(&self) -> Result<AgentState> {
        Ok(self.dir.read_state()?)
    }

    fn running_execution(&self) -> Option<Execution> {
        let state = self.dir.read_state().ok()?;
        self.dir.running_execution(&state)
    }

    fn inbox(&self) -> Result<Vec<InboxEntry>> {
        Ok(inbox::list(&self.dir.inbox_dir())?
            .entries
            .into_iter()
            .map(|file| file.entry)
            .collect())
    }

    fn inbox_counts(&self) -> Result<InboxCounts> {
        Ok(self.dir.inbox_counts()?)
    }

    fn owner(&self) -> Option<WorkerInfo> {
        // Locked by a worker now: what it wrote into the lock file says who.
        let file = std::fs::File::open(self.dir.lock_path()).ok()?;
        match file.try_lock_shared() {
            Err(std::fs::TryLockError::WouldBlock) => self.dir.lock_owner(),
            _ => None,
        }
    }

    fn last_owner(&self) -> Option<WorkerInfo> {
        self.dir.lock_owner()
    }

    fn enqueue(&self, entry: NewEntry) -> Result<Enqueued> {
        self.store.enqueue(&self.dir, entry)
    }

    fn set_status(&self, to: SessionStatus) -> Result<SessionStatus> {
        let from = self.store.set_status(&self.dir, to)?;
        // Messages that waited while it was paused are announced again.
        if to == SessionStatus::Active && !inbox::entry_names(&self.dir.inbox_dir())?.is_empty() {
            self.store.mark_ready(self.dir.id)?;
        }
        Ok(from)
    }

    fn remove(&self) -> Result<()> {
        self.store.remove_session(&self.dir)
    }

    fn events_end(&self) -> Result<Position> {
        Ok(Position(
            std::fs::metadata(self.dir.events_path()).map_or(0, |m| m.len()),
        ))
    }

    fn events_after(&self, after: u64) -> Result<Position> {
        Ok(Position(offset_after_seq(&self.dir.events_path(), after)?))
    }

    fn last_event(&self, types: &[&str]) -> Result<Option<(Position, RawEvent)>> {
        Ok(offset_of_last(&self.dir.events_path(), types)?
            .map(|(offset, event)| (Position(offset), event)))
    }

    fn follow(&self, from: Position) -> Result<Box<dyn EventFeed>> {
        Ok(Box::new(Follower::open(&self.dir, from.0)?))
    }

    fn replay(&self, from: Position) -> Result<Box<dyn EventFeed>> {
        Ok(Box::new(Follower::unwatched(&self.dir, from.0)?))
    }
}

impl EventFeed for Follower {
    fn read(&mut self) -> Result<Vec<LogLine>> {
        Follower::read(self)
    }

    fn wait(&mut self) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
        Box::pin(Follower::wait(self))
    }

    fn exists(&self) -> bool {
        Follower::exists(self)
    }
}
