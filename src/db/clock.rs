//! The database server's clock as a reference for measurement times: its
//! `clock_timestamp()`, bracketed by the boot-clock moments the query went
//! out and its answer came back (see [`crate::clock`]).

use sqlx::PgPool;

use crate::clock::{Mono, TimeKeeper};

/// Asks the server for its time and tells `clock`. The connection is taken
/// from the pool first, so that only the query's round trip bounds the
/// sample.
pub(crate) async fn sample(pool: &PgPool, clock: &TimeKeeper) -> Result<(), sqlx::Error> {
    let mut conn = pool.acquire().await?;
    let sent = Mono::now();
    let server: chrono::DateTime<chrono::Utc> = sqlx::query_scalar("SELECT clock_timestamp()")
        .fetch_one(&mut *conn)
        .await?;
    clock.database_sample(sent, Mono::now(), server);
    Ok(())
}
