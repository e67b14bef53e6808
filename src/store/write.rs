//! Writes to the local store that a failed commit cannot poison.
//!
//! When SQLite's `COMMIT` fails (SQLITE_FULL on a full disk, an I/O error),
//! SQLite may already have rolled the transaction back; sqlx's SQLite
//! connection lowers its transaction depth only when a commit or rollback
//! succeeds, so after such a failure it believes it is still inside one and
//! every later write on it goes into a transaction that never commits, while
//! holding the write lock. The store's writes therefore never use sqlx's
//! transactions: a transaction is `BEGIN IMMEDIATE` … `COMMIT` on a pooled
//! connection of its own ([`WriteTx`]), and after any error on it — or any
//! error of a single statement ([`execute`]) — the connection is closed
//! rather than returned to the pool (the pool opens a fresh one when it is
//! next needed). Closing a connection with an open transaction rolls it
//! back, so whatever state SQLite left it in dies with it.

use sqlx::pool::PoolConnection;
use sqlx::sqlite::{SqliteArguments, SqliteConnection, SqliteQueryResult};
use sqlx::{Sqlite, SqlitePool};

/// A write transaction on a connection of its own: committed by
/// [`WriteTx::commit`], or, dropped or failed, rolled back by closing the
/// connection.
pub(crate) struct WriteTx {
    conn: PoolConnection<Sqlite>,
    committed: bool,
}

impl WriteTx {
    /// Takes a connection and the write lock.
    pub(crate) async fn begin(pool: &SqlitePool) -> Result<Self, sqlx::Error> {
        let conn = pool.acquire().await?;
        let mut tx = Self {
            conn,
            committed: false,
        };
        sqlx::query("BEGIN IMMEDIATE")
            .execute(&mut *tx.conn)
            .await?;
        Ok(tx)
    }

    /// The connection, for the transaction's statements.
    pub(crate) fn conn(&mut self) -> &mut SqliteConnection {
        &mut self.conn
    }

    /// Commits; on failure the connection is closed (see the module doc).
    pub(crate) async fn commit(mut self) -> Result<(), sqlx::Error> {
        let done = sqlx::query("COMMIT").execute(&mut *self.conn).await;
        self.committed = done.is_ok();
        done.map(drop)
    }
}

impl Drop for WriteTx {
    fn drop(&mut self) {
        if !self.committed {
            self.conn.close_on_drop();
        }
    }
}

/// Runs one writing statement in its own implicit transaction; after an
/// error its connection is closed, not pooled.
pub(crate) async fn execute<'q>(
    pool: &SqlitePool,
    query: sqlx::query::Query<'q, Sqlite, SqliteArguments<'q>>,
) -> Result<SqliteQueryResult, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    let done = query.execute(&mut *conn).await;
    if done.is_err() {
        conn.close_on_drop();
    }
    done
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A commit that fails leaves nothing behind: the next write on the
    /// pool commits (here the failure is a deferred foreign key, which
    /// makes COMMIT itself fail, as SQLITE_FULL does on a full disk).
    #[tokio::test]
    async fn a_failed_commit_does_not_poison_later_writes() {
        let dir = tempfile::tempdir().unwrap();
        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(dir.path().join("t.sqlite"))
            .create_if_missing(true)
            .foreign_keys(true);
        let pool = sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await
            .unwrap();
        sqlx::raw_sql(
            "CREATE TABLE parent (id INTEGER PRIMARY KEY);
             CREATE TABLE child (id INTEGER REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED);",
        )
        .execute(&pool)
        .await
        .unwrap();

        let mut tx = WriteTx::begin(&pool).await.unwrap();
        sqlx::query("INSERT INTO child (id) VALUES (7)")
            .execute(tx.conn())
            .await
            .unwrap();
        assert!(tx.commit().await.is_err(), "COMMIT refuses the orphan");

        // The same pool (one connection) writes and commits again.
        execute(&pool, sqlx::query("INSERT INTO parent (id) VALUES (1)"))
            .await
            .unwrap();
        let mut tx = WriteTx::begin(&pool).await.unwrap();
        sqlx::query("INSERT INTO parent (id) VALUES (2)")
            .execute(tx.conn())
            .await
            .unwrap();
        tx.commit().await.unwrap();
        pool.close().await;

        // What a fresh connection sees is what was committed.
        let check = sqlx::sqlite::SqlitePoolOptions::new()
            .connect_with(
                sqlx::sqlite::SqliteConnectOptions::new().filename(dir.path().join("t.sqlite")),
            )
            .await
            .unwrap();
        let ids: Vec<i64> = sqlx::query_scalar("SELECT id FROM parent ORDER BY id")
            .fetch_all(&check)
            .await
            .unwrap();
        let orphans: i64 = sqlx::query_scalar("SELECT count(*) FROM child")
            .fetch_one(&check)
            .await
            .unwrap();
        assert_eq!((ids, orphans), (vec![1, 2], 0));
        check.close().await;
    }
}
