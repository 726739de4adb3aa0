//! A session's event log as Server-Sent Events, for any number of clients.
//!
//! One reader per session follows the log ([`Session::follow`]) and hands every line to
//! all of that session's clients through a broadcast channel, so a thousand tabs on one
//! session cost one follower, not a thousand. A client joins in three moves that leave
//! no gap and no duplicate:
//! 1. it subscribes to the broadcast (the reader, started if it was not, follows from
//!    where the log ended when it started, which is before step 2 reads anything);
//! 2. it replays the log itself from the seq it asked for up to where the log ends now;
//! 3. it forwards what the broadcast brings, skipping every seq it has sent already.
//!
//! A client too slow for the broadcast (it lagged past [`BACKLOG`] lines) is caught up
//! from the log again, from the last seq it sent: never skipped.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{broadcast, mpsc};
use uuid::Uuid;

use crate::store::{LogLine, Session, Store};
use crate::worker::Shutdown;

/// Lines a reader keeps for a client that is behind, before the client must catch up
/// from the log instead.
const BACKLOG: usize = 1024;

/// How often an idle stream sends a comment, so proxies and browsers keep it open.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// One event, as read from the log and as sent.
#[derive(Debug)]
pub struct Line {
    pub seq: u64,
    /// The event as one SSE message: `id:` the seq, `event:` the type, `data:` the
    /// line. Made once, by whoever read the line; every client sends the same bytes.
    pub frame: Bytes,
}

impl Line {
    fn of(line: LogLine) -> Option<Line> {
        let event = line.event?;
        let mut raw = line.raw;
        while raw.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            raw.pop();
        }
        let head = format!("id: {}\nevent: {}\ndata: ", event.seq, event.kind);
        let mut frame = Vec::with_capacity(head.len() + raw.len() + 2);
        frame.extend_from_slice(head.as_bytes());
        frame.extend_from_slice(&raw);
        frame.extend_from_slice(b"\n\n");
        Some(Line {
            seq: event.seq,
            frame: Bytes::from(frame),
        })
    }
}

/// The readers of the sessions that have clients now.
pub struct Hub {
    store: Arc<dyn Store>,
    readers: Mutex<HashMap<Uuid, broadcast::Sender<Arc<Line>>>>,
    shutdown: Arc<Shutdown>,
}

impl Hub {
    pub fn new(store: Arc<dyn Store>, shutdown: Arc<Shutdown>) -> Arc<Hub> {
        Arc::new(Hub {
            store,
            readers: Mutex::new(HashMap::new()),
            shutdown,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, broadcast::Sender<Arc<Line>>>> {
        self.readers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Subscribes to session `id`'s lines, starting its reader if it has none.
    fn subscribe(self: &Arc<Hub>, id: Uuid) -> anyhow::Result<broadcast::Receiver<Arc<Line>>> {
        let mut readers = self.lock();
        if let Some(sender) = readers.get(&id) {
            return Ok(sender.subscribe());
        }
        let session = self.store.session(id);
        // Where the log ends before any client replays it: see the module's step 1.
        let feed = session.follow(session.events_end()?)?;
        let (sender, receiver) = broadcast::channel(BACKLOG);
        readers.insert(id, sender.clone());
        drop(readers);
        let hub = self.clone();
        tokio::spawn(async move { hub.read(id, feed, sender).await });
        Ok(receiver)
    }

    /// Follows session `id`'s log for as long as it has clients.
    async fn read(
        self: Arc<Hub>,
        id: Uuid,
        mut feed: Box<dyn crate::store::EventFeed>,
        sender: broadcast::Sender<Arc<Line>>,
    ) {
        loop {
            // A read is a file read or a query: short, but blocking.
            let lines = tokio::task::block_in_place(|| feed.read());
            match lines {
                Ok(lines) => {
                    for line in lines.into_iter().filter_map(Line::of) {
                        let _ = sender.send(Arc::new(line));
                    }
                }
                Err(err) => tracing::warn!(session = %id, "reading the event log failed: {err:#}"),
            }
            {
                // Decided under the lock that subscribing takes, so a client joining
                // now either finds this reader running or starts the next one.
                let mut readers = self.lock();
                if sender.receiver_count() == 0 || self.shutdown.is_requested() || !feed.exists() {
                    readers.remove(&id);
                    return;
                }
            }
            tokio::select! {
                () = feed.wait() => {}
                () = self.shutdown.wait() => {}
            }
        }
    }

    /// Streams session `session`'s events after seq `after` into `out` until the client
    /// goes away, the session is removed or the server stops.
    pub async fn stream(
        self: Arc<Hub>,
        session: Box<dyn Session>,
        after: u64,
        out: mpsc::Sender<Bytes>,
    ) {
        let id = session.id();
        let mut live = match self.subscribe(id) {
            Ok(live) => live,
            Err(err) => {
                tracing::warn!(session = %id, "cannot follow the event log: {err:#}");
                return;
            }
        };
        let mut sent = after;
        if catch_up(&*session, &mut sent, &out).await.is_err() {
            return;
        }
        let mut keep_alive = tokio::time::interval(KEEP_ALIVE);
        keep_alive.tick().await;
        loop {
            tokio::select! {
                received = live.recv() => match received {
                    Ok(line) => {
                        if line.seq <= sent {
                            continue;
                        }
                        if out.send(line.frame.clone()).await.is_err() {
                            return;
                        }
                        sent = line.seq;
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        if catch_up(&*session, &mut sent, &out).await.is_err() {
                            return;
                        }
                    }
                    // The reader stopped: the session was removed, or the server stops.
                    Err(broadcast::error::RecvError::Closed) => break,
                },
                _ = keep_alive.tick() => {
                    if out.send(Bytes::from_static(b": keep-alive\n\n")).await.is_err() {
                        return;
                    }
                }
                () = self.shutdown.wait() => break,
            }
        }
        if self.shutdown.is_requested() {
            // What was committed before the stop and not read yet goes first: the
            // shutdown is the stream's last word, after everything before it.
            if catch_up(&*session, &mut sent, &out).await.is_err() {
                return;
            }
            let _ = out
                .send(Bytes::from_static(b"event: shutdown\ndata: {}\n\n"))
                .await;
        }
    }
}

/// Sends what the log holds after `sent`, up to where it ends now, moving `sent` on.
/// `Err` when the client went away.
async fn catch_up(
    session: &dyn Session,
    sent: &mut u64,
    out: &mpsc::Sender<Bytes>,
) -> Result<(), ()> {
    let from = tokio::task::block_in_place(|| session.events_after(*sent));
    let mut feed = match from.and_then(|from| session.replay(from)) {
        Ok(feed) => feed,
        Err(err) => {
            tracing::warn!(session = %session.id(), "cannot replay the event log: {err:#}");
            return Err(());
        }
    };
    loop {
        let lines = match tokio::task::block_in_place(|| feed.read()) {
            Ok(lines) => lines,
            Err(err) => {
                tracing::warn!(session = %session.id(), "replaying the event log failed: {err:#}");
                return Err(());
            }
        };
        if lines.is_empty() {
            return Ok(());
        }
        for line in lines.into_iter().filter_map(Line::of) {
            if line.seq <= *sent {
                continue;
            }
            out.send(line.frame).await.map_err(|_| ())?;
            *sent = line.seq;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::inbox::EntryKind;
    use crate::ids::V7Ids;
    use crate::store::{NewEntry, NewSession};
    use crate::time::SystemClock;

    fn seq_of(frame: &Bytes) -> u64 {
        let text = std::str::from_utf8(frame).unwrap();
        let id = text.lines().next().unwrap().strip_prefix("id: ").unwrap();
        id.parse().unwrap()
    }

    #[test]
    fn a_client_that_falls_behind_the_broadcast_is_caught_up_from_the_log_without_a_gap() {
        let home = tempfile::tempdir().unwrap();
        let store = crate::store::open(
            None,
            None,
            home.path(),
            Arc::new(SystemClock),
            Arc::new(V7Ids),
        )
        .unwrap();
        let id = store
            .create_session(NewSession {
                agent: "a".to_owned(),
                title: None,
                config: Default::default(),
                events: Default::default(),
                agent_hash: String::new(),
            })
            .unwrap()
            .id;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let shutdown = Arc::new(Shutdown::default());
            let hub = Hub::new(store.clone(), shutdown.clone());
            // A client with room for one frame, which reads nothing while the log grows.
            let (tx, mut slow) = mpsc::channel(1);
            let streaming = tokio::spawn(hub.clone().stream(store.session(id), 0, tx));
            assert_eq!(seq_of(&slow.recv().await.unwrap()), 1, "session.created");
            // A second subscriber that keeps up tells when the reader has sent it all.
            let mut watcher = hub.subscribe(id).unwrap();
            let added = BACKLOG as u64 + 500;
            let session = store.session(id);
            for i in 0..added {
                tokio::task::block_in_place(|| {
                    session.enqueue(NewEntry {
                        kind: EntryKind::User,
                        content: format!("message {i}"),
                        key: None,
                        metadata: Default::default(),
                        raise_session_tokens: 0,
                    })
                })
                .unwrap();
            }
            let last = 1 + added;
            tokio::time::timeout(Duration::from_secs(30), async {
                while watcher.recv().await.map(|line| line.seq) != Ok(last) {}
            })
            .await
            .expect("the reader sends every line");
            // The slow client is now more than the broadcast holds behind.
            let mut seqs = vec![1];
            while seqs.last() != Some(&last) {
                let frame = tokio::time::timeout(Duration::from_secs(30), slow.recv())
                    .await
                    .expect("the slow client gets the rest")
                    .unwrap();
                seqs.push(seq_of(&frame));
            }
            assert_eq!(seqs, (1..=last).collect::<Vec<_>>());
            shutdown.trigger();
            streaming.await.unwrap();
        });
    }
}
