//! Why a write did not go through, sorted by what the forwarder does next:
//! retry (transient, timed out), or find and park the refused row
//! (permanent: SQLSTATE class 22 or 23 but a duplicate key).

use std::time::Duration;

use crate::store::StoreError;

/// Why a batch did not go through.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// The database refused data for good (SQLSTATE class 22 or 23).
    #[error("the database refused a row: {0}")]
    Permanent(sqlx::Error),
    /// Worth retrying: the network, the server, the schema not there yet.
    #[error("cannot write to the database: {0}")]
    Transient(sqlx::Error),
    /// No answer within the write timeout: the link may have gone silent.
    #[error("no answer from the database within {0:?}")]
    TimedOut(Duration),
    /// The local store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub(crate) fn classify(error: sqlx::Error) -> ForwardError {
    let permanent = match &error {
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            code.starts_with("22") || (code.starts_with("23") && code != "23505")
        }),
        _ => false,
    };
    if permanent {
        ForwardError::Permanent(error)
    } else {
        ForwardError::Transient(error)
    }
}
