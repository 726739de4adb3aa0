//! Statements prepared once per connection. A query the `postgres` crate is given as
//! text costs two round trips (parse and describe it, then bind and run it) and the
//! server plans it again each time; one prepared before costs one, and a message's
//! fifteen-odd statements are most of a worker's time on a loopback database.
//!
//! A [`super::Db`] runs every statement on its own thread, so that thread keeps its
//! connection's statements ([`STATEMENTS`]). They are forgotten when the connection is
//! made again (a statement belongs to the server's backend that prepared it) and after
//! any database error, so a statement the server no longer knows or can no longer run
//! as prepared (its table's columns changed by a migration) is prepared again on the
//! next call, not kept failing.

use std::cell::RefCell;
use std::collections::HashMap;

use postgres::types::ToSql;
use postgres::{GenericClient, Row, Statement};

thread_local! {
    /// The statements prepared on this thread's connection, by their text.
    static STATEMENTS: RefCell<HashMap<&'static str, Statement>> = RefCell::new(HashMap::new());
}

/// Forgets this thread's statements: its connection is new, or one may be stale.
pub(super) fn forget() {
    STATEMENTS.with(|statements| statements.borrow_mut().clear());
}

/// Queries by prepared statements, on a client or inside a transaction. Only for SQL
/// whose text is fixed (`&'static str`): each text is kept for the connection's life.
pub(crate) trait Prepared: GenericClient {
    /// `sql`, prepared on this connection the first time it is asked for.
    fn prepared(&mut self, sql: &'static str) -> Result<Statement, postgres::Error> {
        if let Some(statement) = STATEMENTS.with(|s| s.borrow().get(sql).cloned()) {
            return Ok(statement);
        }
        let statement = self.prepare(sql)?;
        STATEMENTS.with(|s| s.borrow_mut().insert(sql, statement.clone()));
        Ok(statement)
    }

    fn run(
        &mut self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, postgres::Error> {
        let statement = self.prepared(sql)?;
        self.execute(&statement, params)
    }

    fn rows(
        &mut self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, postgres::Error> {
        let statement = self.prepared(sql)?;
        self.query(&statement, params)
    }

    fn row(
        &mut self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Row, postgres::Error> {
        let statement = self.prepared(sql)?;
        self.query_one(&statement, params)
    }

    fn row_opt(
        &mut self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, postgres::Error> {
        let statement = self.prepared(sql)?;
        self.query_opt(&statement, params)
    }
}

impl<C: GenericClient> Prepared for C {}
