//! A session as `session list` shows it, and as `serve` lists it: what both share.

use anyhow::Result;
use serde::Serialize;
use uuid::Uuid;

use crate::domain::Usage;
use crate::domain::session::SessionStatus;
use crate::store::Session;
use crate::time::Timestamp;

/// A session as listed: its record and how many entries wait in its inbox.
#[derive(Serialize)]
pub(crate) struct Listed {
    pub(crate) id: Uuid,
    pub(crate) agent: String,
    pub(crate) title: Option<String>,
    pub(crate) status: SessionStatus,
    pub(crate) messages: u64,
    pub(crate) pending: usize,
    pub(crate) usage: Usage,
    pub(crate) created_at: Timestamp,
    pub(crate) updated_at: Timestamp,
}

pub(crate) fn listed(session: &dyn Session) -> Result<Listed> {
    let meta = session.meta()?;
    let pending = session.inbox_counts()?;
    Ok(Listed {
        id: session.id(),
        pending: pending.messages(),
        agent: meta.agent,
        title: meta.title,
        status: meta.status,
        // Settled messages are counted in session.json, waiting ones are entries.
        messages: meta.counters.messages + pending.messages() as u64,
        usage: meta.usage,
        created_at: meta.created_at,
        // `send` does not touch session.json, so its `updated_at` alone would miss
        // the newest message.
        updated_at: pending
            .newest
            .map_or(meta.updated_at, |t| t.max(meta.updated_at)),
    })
}
