//! The Postgres store (ARCHITECTURE.md §8), for workers on many hosts sharing one
//! queue: [`PgStore`] ([`store`]), its sessions ([`session`]), the owner's lease
//! ([`lease`]) and the event log ([`events`]), on this module's foundation: the
//! connection, how a URL is shown (never with its password), how the database's errors
//! map to exit codes, and agentq's schema with its migrations ([`schema`]).
//!
//! Everything one operation writes is one transaction, so what the file store orders
//! its writes for (a crash between them) cannot happen here: a settled execution, its
//! totals, its closing events and the removal of its inbox entry commit together or
//! not at all. Every transaction that changes a session first locks its row
//! (`SELECT … FOR UPDATE`), which orders the writers of one session as the file
//! store's event-log lock does; an owner's transactions also check that the lease's
//! `epoch` is still theirs, and write nothing if it is not ([`crate::store::LeaseLost`]).
//!
//! The store interface is synchronous (the worker runs each session on a thread of its
//! own), and a client of the `postgres` crate must not be used inside an async
//! runtime: each [`Db`] owns its client on a thread of its own, and a call hands it a
//! closure and waits for the answer, as a file write waits for the disk.

pub(crate) mod events;
mod held;
mod import;
mod lease;
mod pending;
mod prepared;
pub mod schema;
mod session;
mod store;
mod takeover;
mod write;

pub use store::PgStore;

pub(crate) use held::release_all;

use std::fmt;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use uuid::Uuid;

use crate::error::UserError;
use crate::store::LeaseLost;

/// A database URL (`postgres://user:password@host:port/database?options`), shown
/// everywhere with its password replaced.
#[derive(Clone)]
pub struct DbUrl {
    url: String,
}

impl DbUrl {
    pub fn parse(url: &str) -> Result<DbUrl, UserError> {
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(UserError::usage(format!(
                "the store `{}` is neither `files` nor a Postgres URL (postgres://… or postgresql://…)",
                redact(url)
            )));
        }
        url.parse::<postgres::Config>().map_err(|e| {
            UserError::usage(format!("the store URL {} is not valid: {e}", redact(url)))
        })?;
        Ok(DbUrl {
            url: url.to_owned(),
        })
    }

    fn config(&self) -> postgres::Config {
        // Checked by `parse`.
        let mut config: postgres::Config = self.url.parse().unwrap_or_default();
        // The URL's own `options` come last, so that a setting of its own wins.
        let options = format!(
            "-c idle_in_transaction_session_timeout={} {}",
            IDLE_IN_TRANSACTION.as_millis(),
            config.get_options().unwrap_or_default()
        );
        config.options(options.trim_end());
        config
    }
}

impl fmt::Display for DbUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact(&self.url))
    }
}

impl fmt::Debug for DbUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DbUrl({self})")
    }
}

/// `url` with the password of its user part (`user:password@`) and of a `password=`
/// option replaced by `***`.
pub fn redact(url: &str) -> String {
    let mut shown = url.to_owned();
    if let Some(scheme_end) = shown.find("://") {
        let rest = &shown[scheme_end + 3..];
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        if let Some(at) = rest[..authority_end].rfind('@')
            && let Some(colon) = rest[..at].find(':')
        {
            let (start, end) = (scheme_end + 3 + colon + 1, scheme_end + 3 + at);
            shown.replace_range(start..end, "***");
        }
    }
    if let Some(query) = shown.find('?') {
        let (head, tail) = shown.split_at(query + 1);
        let options: Vec<String> = tail
            .split('&')
            .map(|option| match option.split_once('=') {
                Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}=***"),
                _ => option.to_owned(),
            })
            .collect();
        shown = format!("{head}{}", options.join("&"));
    }
    shown
}

/// How long the server lets a connection sit inside a transaction without a statement
/// before it ends the connection. agentq's transactions never wait between their
/// statements, so one that does is a client that stalled (stopped, partitioned, its
/// host frozen) while holding a session's row locked (`SELECT … FOR UPDATE`): without
/// this, the worker taking the expired lease over would wait on that lock for as long
/// as the stall lasts, forever for a host that never comes back. Ended, the
/// transaction commits nothing, and the stalled owner finds its connection gone.
const IDLE_IN_TRANSACTION: Duration = Duration::from_secs(5);

/// A call's work, given the connection, or `None` when there is none to give (it
/// broke, and could not be made again in [`RECONNECT_FOR`]).
type Job = Box<dyn FnOnce(Option<&mut postgres::Client>) + Send>;

/// The first wait before connecting again after the connection broke; each failed
/// attempt doubles it, up to [`BACKOFF_MAX`], with up to a quarter of it added at
/// random so that many workers cut off together do not come back in step.
const BACKOFF_FIRST: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How long one call keeps trying to connect again before it fails (exit 75); the next
/// call tries again, so a worker outlives an outage of any length, call after call.
const RECONNECT_FOR: Duration = Duration::from_secs(30);

/// The wait after `attempt` failed attempts (0 for the first wait).
fn backoff(attempt: u32) -> Duration {
    let base = BACKOFF_FIRST
        .saturating_mul(1 << attempt.min(16))
        .min(BACKOFF_MAX);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    base + base.mul_f64(f64::from(nanos % 1000) / 4000.0)
}

/// One connection to the database, owned by a thread of its own. When the connection
/// breaks (the server restarted, a backend terminated, the network cut), the call that
/// was running fails as a lost connection (exit 75) and the next call connects again,
/// backing off ([`backoff`]): a one-shot command fails fast, and a long-lived user (the
/// worker, a lease, a listener) goes on once the database is back.
///
/// The call that failed is never run again here: a write whose commit was sent but
/// whose answer was lost may or may not have committed, and only its caller can tell.
/// An owner's write fails as any store error does, the drain stops, and the session is
/// taken up again from its last checkpoint, the lease's epoch fencing out a writer that
/// lost it meanwhile.
pub struct Db {
    url: DbUrl,
    jobs: mpsc::Sender<Job>,
    /// How the connection's transactions commit unless told otherwise.
    commits: Commit,
}

impl Db {
    /// Connects, or says in one line why not, naming the URL without its password:
    /// exit 75 where trying again later can help (the server unreachable or starting),
    /// 2 where the URL needs a fix (wrong credentials, no such database).
    pub fn connect(url: &DbUrl) -> Result<Db, UserError> {
        Db::connect_as(url, Commit::Durable)
    }

    /// [`Db::connect`], for a connection whose commits are `commits` unless a
    /// transaction says otherwise ([`Db::transaction_as`]): set when the connection
    /// starts (and starts again), so it costs no round trip.
    pub(crate) fn connect_as(url: &DbUrl, commits: Commit) -> Result<Db, UserError> {
        let mut config = url.config();
        if commits == Commit::Deferred {
            // Added to what the URL's own `options` say.
            let options = match config.get_options() {
                Some(given) => format!("{given} -c synchronous_commit=off"),
                None => "-c synchronous_commit=off".to_owned(),
            };
            config.options(&options);
        }
        let (ready_tx, ready_rx) = mpsc::channel();
        let (jobs, queue) = mpsc::channel::<Job>();
        let shown = url.clone();
        std::thread::Builder::new()
            .name("agentq-db".to_owned())
            .spawn(move || {
                let mut client = match config.connect(postgres::NoTls) {
                    Ok(client) => {
                        let _ = ready_tx.send(Ok(()));
                        Some(client)
                    }
                    Err(err) => {
                        let _ = ready_tx.send(Err(describe(&shown, "cannot connect to", &err)));
                        return;
                    }
                };
                for job in queue {
                    if client.as_ref().is_none_or(|c| c.is_closed()) {
                        prepared::forget();
                        client = reconnect(&config, &shown);
                    }
                    job(client.as_mut());
                }
            })
            .map_err(|e| UserError::unavailable(format!("cannot start a thread: {e}")))?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Db {
                url: url.clone(),
                jobs,
                commits,
            }),
            Ok(Err(err)) => Err(err),
            Err(_) => Err(UserError::unavailable(format!(
                "the connection to {url} ended before it was made"
            ))),
        }
    }

    pub fn url(&self) -> &DbUrl {
        &self.url
    }

    /// Runs `work` with the connection and waits for its answer. A database error is
    /// described as [`Db::connect`] describes one, `doing` saying what was being done.
    /// A statement outside a transaction commits as the connection's commits do.
    pub fn call<T: Send + 'static>(
        &self,
        doing: &str,
        work: impl FnOnce(&mut postgres::Client) -> Result<T, postgres::Error> + Send + 'static,
    ) -> Result<T, UserError> {
        let (answer_tx, answer_rx) = mpsc::channel();
        let job: Job = Box::new(move |client| {
            let answer = client.map(work);
            if let Some(Err(_)) = answer {
                prepared::forget();
            }
            let _ = answer_tx.send(answer);
        });
        let lost =
            || UserError::unavailable(format!("lost the connection to {} while {doing}", self.url));
        self.jobs.send(job).map_err(|_| lost())?;
        match answer_rx.recv() {
            Ok(Some(Ok(value))) => Ok(value),
            Ok(Some(Err(err))) => Err(describe(&self.url, doing, &err)),
            Ok(None) | Err(_) => Err(lost()),
        }
    }
}

/// Connects again after the connection broke, backing off between attempts, for at
/// most [`RECONNECT_FOR`]; one log line when it is found broken, one when it is back.
fn reconnect(config: &postgres::Config, url: &DbUrl) -> Option<postgres::Client> {
    let lost_at = Instant::now();
    tracing::warn!("lost the connection to {url}; connecting again");
    let mut attempt = 0;
    loop {
        match config.connect(postgres::NoTls) {
            Ok(client) => {
                tracing::warn!(
                    "connected to {url} again after {} ms",
                    lost_at.elapsed().as_millis()
                );
                return Some(client);
            }
            Err(err) if lost_at.elapsed() >= RECONNECT_FOR => {
                tracing::warn!("{}", describe(url, "cannot connect again to", &err).message);
                return None;
            }
            Err(_) => {
                std::thread::sleep(backoff(attempt));
                attempt += 1;
            }
        }
    }
}

/// Connections kept for the leases a worker takes one after another, so a claim costs
/// a query and not a connection: a new one is a backend the server forks, whose caches
/// start cold. A lease takes one ([`Pool::take`]) and gives it back when it lets go;
/// one broken meanwhile connects again on its next call, as any [`Db`] does.
#[derive(Default)]
pub(crate) struct Pool {
    idle: std::sync::Mutex<Vec<std::sync::Arc<Db>>>,
}

impl Pool {
    /// More idle connections than this are closed: a worker holds as many as it runs
    /// sessions at once, and the server's connection slots are shared by every host.
    const IDLE_MAX: usize = 8;

    /// An idle connection to `url`, or a new one.
    pub(crate) fn take(&self, url: &DbUrl) -> Result<std::sync::Arc<Db>, UserError> {
        let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        match idle {
            Some(db) => Ok(db),
            // A lease's writes are mostly not durable ([`Commit::Deferred`]).
            None => Db::connect_as(url, Commit::Deferred).map(std::sync::Arc::new),
        }
    }

    /// Keeps `db` for the next [`Pool::take`]; its caller uses it no more.
    pub(crate) fn give(&self, db: std::sync::Arc<Db>) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < Self::IDLE_MAX {
            idle.push(db);
        }
    }
}

/// Why a transaction of [`Db::transaction`] wrote nothing.
pub(crate) enum TxError {
    Db(postgres::Error),
    /// The session's lease is no longer this owner's.
    Lost(Uuid),
    /// Anything else: a document that does not parse, a refusal for the user.
    Other(anyhow::Error),
}

impl From<postgres::Error> for TxError {
    fn from(err: postgres::Error) -> TxError {
        TxError::Db(err)
    }
}

impl From<anyhow::Error> for TxError {
    fn from(err: anyhow::Error) -> TxError {
        TxError::Other(err)
    }
}

impl From<UserError> for TxError {
    fn from(err: UserError) -> TxError {
        TxError::Other(err.into())
    }
}

impl From<serde_json::Error> for TxError {
    fn from(err: serde_json::Error) -> TxError {
        TxError::Other(err.into())
    }
}

/// When a transaction's commit returns, as the file store chooses where to fsync
/// (`crate::store`, "Durability in the file store"): on the server's defaults
/// (`synchronous_commit = on`) each durable commit waits for a WAL flush, which costs
/// what an fsync costs.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Commit {
    /// Flushed to disk before the call returns: what an acknowledgement depends on (a
    /// queued message, a checkpoint before a tool call runs, a settled execution).
    Durable,
    /// Committed, visible and fenced like any other, but flushed by the server a moment
    /// later (`synchronous_commit = off`), or by the next durable commit, which flushes
    /// the WAL up to itself and so everything committed before it. Only a crash of the
    /// database server (not of a worker) can lose it, and then nothing after it either:
    /// what the file store leaves unsynced, a claim, the events, a resumed record, the
    /// inbox removals, a release. The database stays consistent either way.
    Deferred,
}

impl Db {
    /// Runs `work` in one durable transaction ([`Db::transaction_as`]).
    pub(crate) fn transaction<T: Send + 'static>(
        &self,
        doing: &str,
        work: impl FnOnce(&mut postgres::Transaction<'_>) -> Result<T, TxError> + Send + 'static,
    ) -> anyhow::Result<T> {
        self.transaction_as(doing, Commit::Durable, work)
    }

    /// Runs `work` in one transaction, committed as `commit` says if it returns `Ok`,
    /// rolled back otherwise: a database error is described as [`Db::call`] describes
    /// one, a lost lease is [`LeaseLost`].
    pub(crate) fn transaction_as<T: Send + 'static>(
        &self,
        doing: &str,
        commit: Commit,
        work: impl FnOnce(&mut postgres::Transaction<'_>) -> Result<T, TxError> + Send + 'static,
    ) -> anyhow::Result<T> {
        let switch = match (self.commits, commit) {
            (Commit::Durable, Commit::Deferred) => Some("SET LOCAL synchronous_commit TO off"),
            (Commit::Deferred, Commit::Durable) => Some("SET LOCAL synchronous_commit TO on"),
            _ => None,
        };
        self.refusable(doing, move |client| {
            let mut tx = client.transaction()?;
            if let Some(switch) = switch {
                tx.batch_execute(switch)?;
            }
            let value = work(&mut tx)?;
            tx.commit()?;
            Ok(value)
        })
    }

    /// Runs `work`, which only reads, outside a transaction: for one statement, whose
    /// snapshot is its own, a transaction would only add a round trip before it and
    /// one after. Its errors are told as [`Db::transaction_as`] tells them.
    pub(crate) fn read<T: Send + 'static>(
        &self,
        doing: &str,
        work: impl FnOnce(&mut postgres::Client) -> Result<T, TxError> + Send + 'static,
    ) -> anyhow::Result<T> {
        self.refusable(doing, work)
    }

    /// [`Db::call`] for work that may also refuse: a lost lease, or an error of its
    /// own, which are passed on as they are.
    fn refusable<T: Send + 'static>(
        &self,
        doing: &str,
        work: impl FnOnce(&mut postgres::Client) -> Result<T, TxError> + Send + 'static,
    ) -> anyhow::Result<T> {
        enum Refused {
            Lost(Uuid),
            Other(anyhow::Error),
        }
        let outcome = self.call(doing, move |client| match work(client) {
            Ok(value) => Ok(Ok(value)),
            Err(TxError::Db(err)) => Err(err),
            Err(TxError::Lost(session)) => Ok(Err(Refused::Lost(session))),
            Err(TxError::Other(err)) => Ok(Err(Refused::Other(err))),
        })?;
        match outcome {
            Ok(value) => Ok(value),
            Err(Refused::Lost(session)) => Err(anyhow::Error::new(LeaseLost { session })),
            Err(Refused::Other(err)) => Err(err),
        }
    }
}

/// One line for a database error, naming the URL (redacted), with the exit code of
/// ARCHITECTURE.md §7: 2 for what the URL or the database's setup must fix, 75 for
/// what may pass (a server down or starting, a timeout, a read-only replica, a lost
/// connection), 1 for the rest.
fn describe(url: &DbUrl, doing: &str, err: &postgres::Error) -> UserError {
    use postgres::error::SqlState;
    let why = match err.as_db_error() {
        Some(db) => db.message().to_owned(),
        None => {
            let mut text = err.to_string();
            let mut source = std::error::Error::source(err);
            while let Some(cause) = source {
                text = format!("{text}: {cause}");
                source = cause.source();
            }
            text
        }
    };
    let message = format!("{doing} {url}: {why}");
    let code = err.code();
    let needs_a_fix = [
        SqlState::INVALID_PASSWORD,
        SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
        SqlState::INVALID_CATALOG_NAME,
        SqlState::INSUFFICIENT_PRIVILEGE,
    ];
    let may_pass = [
        SqlState::READ_ONLY_SQL_TRANSACTION,
        SqlState::QUERY_CANCELED,
        SqlState::CANNOT_CONNECT_NOW,
        SqlState::ADMIN_SHUTDOWN,
        SqlState::TOO_MANY_CONNECTIONS,
        SqlState::T_R_SERIALIZATION_FAILURE,
        SqlState::T_R_DEADLOCK_DETECTED,
    ];
    match code {
        Some(code) if needs_a_fix.contains(code) => UserError::usage(message),
        Some(code) if may_pass.contains(code) => UserError::unavailable(message),
        Some(_) => UserError::failed(message),
        // No answer from the server at all: it is down, unreachable, or went away.
        None => UserError::unavailable(message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_shown_without_their_passwords() {
        assert_eq!(
            redact("postgres://agentq:s3cret@db.internal:5432/agentq"),
            "postgres://agentq:***@db.internal:5432/agentq"
        );
        assert_eq!(
            redact("postgresql://u:p%40ss@h/d?sslmode=disable&password=hunter2"),
            "postgresql://u:***@h/d?sslmode=disable&password=***"
        );
        assert_eq!(redact("postgres://agentq@h/d"), "postgres://agentq@h/d");
        assert_eq!(redact("postgres://h/d?user=x"), "postgres://h/d?user=x");
    }

    #[test]
    fn only_postgres_urls_are_taken_and_the_refusal_hides_the_password() {
        let err = DbUrl::parse("mysql://root:s3cret@h/d").unwrap_err();
        assert!(err.message.contains("root:***@h/d"), "{}", err.message);
        assert!(!err.message.contains("s3cret"));
        let url = DbUrl::parse("postgres://agentq:s3cret@127.0.0.1:5/agentq").unwrap();
        assert_eq!(url.to_string(), "postgres://agentq:***@127.0.0.1:5/agentq");
        assert!(!format!("{url:?}").contains("s3cret"));
    }
}
