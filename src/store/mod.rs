//! The local store: a SQLite file (WAL, synchronous=FULL) in the state
//! directory. Every batch of readings is committed here first, so a crash, a
//! power cut or a database outage loses nothing that reached it. With a
//! PostgreSQL database the forwarder ships rows in order and removes them
//! after the remote commit; without one, the store *is* the database.
//! Rows that can never be written remotely are parked, not dropped.
//!
//! Values are kept as a JSON array per row, in the order of the reading
//! table's columns (the reading model's).
//!
//! Two handles: [`LocalStore`], the daemon's (the file's only writer, it
//! counts its own writes), and [`StoreReader`] for `status` and `energy`
//! (nothing created or written). By concern: the handles and their errors
//! here; `open` (options,
//! integrity check, recovery from a damaged or deleted file) with
//! `salvage` (what can be read from a damaged one) and `schema`; `write`
//! (the one way to write: a transaction closed on error); `readings`
//! (append, read back by time) with `rows` (decoding); `queue` (the
//! forward queue, its depth, parking, retention); `held` (readings held
//! for their time); `status_doc` (the status document); `lock` (one daemon
//! per state directory).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};

mod held;
mod lock;
mod open;
mod queue;
mod readings;
mod rows;
mod salvage;
mod schema;
mod status_doc;
pub(crate) mod write;

use queue::OldestWaiting;
use status_doc::StagedStatus;

pub(crate) use lock::{LOCK_NAME, StateLock, daemon_runs_on};
pub(crate) use open::INCIDENT_LASTS;
pub(crate) use readings::{micros, table_from_name};
pub use status_doc::STATUS_NAME;

pub(crate) use crate::clock::from_micros;
use crate::config::StoreSync;
use crate::reading::Reading;

/// The store's file name inside the state directory.
pub(crate) const FILE_NAME: &str = "victron-poller.sqlite";

/// Why the local store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The state directory or file could not be created or opened.
    #[error("cannot open the local store at {path}: {source}")]
    Open {
        /// The file.
        path: String,
        /// The cause.
        source: sqlx::Error,
    },
    /// A statement failed (disk full, I/O error ...).
    #[error("local store error: {0}")]
    Sql(#[from] sqlx::Error),
    /// A status document could not be encoded.
    #[error("cannot encode a status document: {0}")]
    Encode(#[from] serde_json::Error),
    /// The state directory cannot be used: it cannot be created, is not a
    /// directory, or is not writable by the daemon's user.
    #[error(
        "the state directory {path} cannot be used: {problem}; give the daemon a directory \
         its user can write (--state-dir, or STATE_DIRECTORY as systemd sets it)"
    )]
    StateDir {
        /// The directory.
        path: String,
        /// What is wrong, once.
        problem: String,
    },
    /// Another daemon runs on the same state directory.
    #[error(
        "another victron-poller daemon runs on the state directory {path} (it holds {LOCK_NAME}); \
         give each daemon its own --state-dir"
    )]
    InUse {
        /// The directory.
        path: String,
    },
}

/// A reading as stored, with its position in the queue.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredReading {
    /// Insertion order.
    pub seq: i64,
    /// The reading.
    pub reading: Reading,
}

/// Something that happened to the store's file that the operator should
/// know of for a while ([`INCIDENT_LASTS`]): a damaged store moved aside, a
/// store deleted under the running daemon.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StoreIncident {
    /// When it happened.
    pub(crate) at: DateTime<Utc>,
    /// What happened, for the operator.
    pub(crate) what: String,
    /// The moved-aside file, while it lasts: removing it ends the incident.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) file: Option<PathBuf>,
}

/// The readings waiting to be forwarded (of a site, or all).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Backlog {
    /// How many.
    pub readings: i64,
    /// The measurement time of the oldest.
    pub(crate) oldest: Option<DateTime<Utc>>,
}

/// How many readings of one table and device the store holds since a time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DeviceCount {
    /// The reading table's name.
    pub(crate) table: String,
    /// The device.
    pub(crate) device: String,
    /// How many readings.
    pub(crate) readings: i64,
    /// The newest one's measurement time.
    pub(crate) newest: DateTime<Utc>,
}

/// The local store as `status` and `energy` read it: nothing is created or
/// written. [`LocalStore`], the daemon's handle, reads all of it too.
#[derive(Debug, Clone)]
pub struct StoreReader {
    /// Replaced when the file is deleted under the running daemon.
    pool: Arc<std::sync::RwLock<SqlitePool>>,
    path: PathBuf,
    /// The site of readings stored before the store recorded sites (the
    /// column is NULL for them): the configured site.
    legacy_site: Arc<str>,
}

/// The local store, as the daemon writes it: its file's only writer, so
/// it keeps counts of its own writes (readings waiting, held, the next
/// `seq`) instead of asking SQLite. Everything a [`StoreReader`] reads, it
/// reads too.
#[derive(Debug, Clone)]
pub struct LocalStore {
    reader: StoreReader,
    sync: StoreSync,
    /// The file's identity when opened.
    identity: Arc<std::sync::Mutex<Option<open::FileIdentity>>>,
    /// What happened to the file lately.
    incidents: Arc<std::sync::Mutex<Vec<StoreIncident>>>,
    /// A status document waiting to be committed with the next batch.
    staged_status: Arc<std::sync::Mutex<Option<StagedStatus>>>,
    /// How many readings wait to be forwarded, kept by this handle's own
    /// writes.
    waiting: Arc<std::sync::atomic::AtomicI64>,
    /// How many readings are held for their time (see [`crate::clock`]):
    /// kept, not forwarded, until re-stamped.
    held: Arc<std::sync::atomic::AtomicI64>,
    /// The earliest time held readings were re-stamped to since it was last
    /// taken.
    released_from: Arc<std::sync::Mutex<Option<DateTime<Utc>>>>,
    /// The next reading's `seq`: kept by the only writer, above every seq
    /// the file ever held, so it never repeats — a forwarder's pending
    /// `remove_through(seq)` can never take a newer reading, even after the
    /// table emptied (what SQLite's AUTOINCREMENT guarantees with a write to
    /// its counter table in every commit).
    next_seq: Arc<std::sync::atomic::AtomicI64>,
    /// The measurement time of the oldest waiting reading, as this handle's
    /// writes keep it (asked every poll interval for the status).
    oldest_waiting: Arc<std::sync::Mutex<OldestWaiting>>,
}

impl std::ops::Deref for LocalStore {
    type Target = StoreReader;

    fn deref(&self) -> &StoreReader {
        &self.reader
    }
}

impl LocalStore {
    /// Opens (creating if needed) the store in `dir`, every commit flushed
    /// to the disk.
    pub async fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_with(dir, StoreSync::Full).await
    }

    /// Opens (creating if needed) the store in `dir`, committing as `sync`
    /// says.
    pub(crate) async fn open_with(dir: &Path, sync: StoreSync) -> Result<Self, StoreError> {
        let path = dir.join(FILE_NAME);
        std::fs::create_dir_all(dir).map_err(|e| StoreError::StateDir {
            path: dir.display().to_string(),
            problem: e.to_string(),
        })?;
        let opened = open::open_or_recover(&path, sync).await?;
        Ok(Self {
            reader: StoreReader {
                pool: Arc::new(std::sync::RwLock::new(opened.pool)),
                path,
                legacy_site: Arc::from(""),
            },
            sync,
            identity: Arc::new(std::sync::Mutex::new(opened.identity)),
            incidents: Arc::new(std::sync::Mutex::new(opened.incidents)),
            staged_status: Arc::default(),
            waiting: Arc::new(std::sync::atomic::AtomicI64::new(opened.waiting)),
            held: Arc::new(std::sync::atomic::AtomicI64::new(opened.held)),
            released_from: Arc::default(),
            next_seq: Arc::new(std::sync::atomic::AtomicI64::new(opened.highest_seq + 1)),
            oldest_waiting: Arc::default(),
        })
    }

    /// Readings stored before the store recorded sites belong to `site`.
    pub(crate) fn with_legacy_site(mut self, site: &str) -> Self {
        self.reader.legacy_site = Arc::from(site);
        self
    }

    /// Closes the pool after a checkpoint, so that the file holds
    /// everything (a reader opens it as immutable when no daemon runs).
    /// Passive, and given a second at most: neither a reader of the file
    /// nor a connection still busy makes a stop wait for it.
    pub async fn close(&self) {
        let pool = self.pool();
        let checkpoint = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)").execute(&pool);
        match tokio::time::timeout(std::time::Duration::from_secs(1), checkpoint).await {
            Ok(Ok(_)) => {}
            // Nothing is lost: the WAL stays beside the file, and a reader
            // then reads both.
            Ok(Err(error)) => {
                tracing::warn!(%error, "The last checkpoint of the local store failed.");
            }
            Err(_) => {
                tracing::warn!("No connection for the last checkpoint of the local store in time.")
            }
        }
        pool.close().await;
    }
}

impl StoreReader {
    /// Opens an existing store for reading only, for `status`: nothing is
    /// created or written, so an administrator's `status` never leaves files
    /// owned by another user in a service's state directory. While a daemon
    /// has the store open, its WAL index is shared; otherwise the file is
    /// read as immutable (everything was checkpointed into it at close).
    pub async fn open(dir: &Path) -> Result<Self, StoreError> {
        let path = dir.join(FILE_NAME);
        let open_error = |source| StoreError::Open {
            path: path.display().to_string(),
            source,
        };
        if !path.is_file() {
            let missing = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
            return Err(open_error(sqlx::Error::Io(missing)));
        }
        let in_use = dir.join(format!("{FILE_NAME}-shm")).exists();
        let options = SqliteConnectOptions::new()
            .filename(&path)
            .read_only(true)
            .immutable(!in_use)
            .busy_timeout(std::time::Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await
            .map_err(open_error)?;
        Ok(Self {
            pool: Arc::new(std::sync::RwLock::new(pool)),
            path,
            legacy_site: Arc::from(""),
        })
    }

    /// Readings stored before the store recorded sites belong to `site`
    /// (as the daemon that wrote them was configured).
    pub(crate) fn with_legacy_site(mut self, site: &str) -> Self {
        self.legacy_site = Arc::from(site);
        self
    }

    /// The store's file.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The pool of the current file.
    pub(crate) fn pool(&self) -> SqlitePool {
        self.pool.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Closes the pool.
    pub async fn close(&self) {
        self.pool().close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reading::{ReadingTable, SourceKind, Value};
    use chrono::TimeZone;

    fn reading(device: &str, second: i64, soc: f64) -> Reading {
        Reading {
            site: "ranch".into(),
            device: device.into(),
            table: ReadingTable::Battery,
            source: SourceKind::VeDirect,
            measured_at: Utc.timestamp_opt(1_700_000_000 + second, 0).unwrap(),
            unconfirmed: None,
            values: vec![
                ("soc", Value::Float(soc)),
                ("state", Value::Text("idle".into())),
                ("product_id", Value::Int(0xA389)),
            ],
        }
    }

    /// A staged status document rides on the next batch's commit; one no
    /// batch took is committed by `flush_status`; a newer one replaces it.
    #[tokio::test]
    async fn a_staged_status_document_is_committed_with_the_next_batch() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path()).await.unwrap();
        store.stage_status("daemon", &serde_json::json!({"n": 1}));
        assert!(store.load_status("daemon").await.unwrap().is_none());
        store.append(&[reading("bank", 0, 50.0)]).await.unwrap();
        let (doc, _) = store.load_status("daemon").await.unwrap().unwrap();
        assert_eq!(doc, serde_json::json!({"n": 1}));
        assert!(!store.flush_status().await.unwrap(), "the batch took it");

        store.stage_status("daemon", &serde_json::json!({"n": 2}));
        store.stage_status("daemon", &serde_json::json!({"n": 3}));
        assert!(store.flush_status().await.unwrap());
        let (doc, _) = store.load_status("daemon").await.unwrap().unwrap();
        assert_eq!(doc, serde_json::json!({"n": 3}));
        store.close().await;
    }

    /// Closing the daemon's handle leaves every reading in the file itself,
    /// even while another handle still has it open (then SQLite's own
    /// checkpoint at the last close does not happen): a reader that opens
    /// the file as immutable sees them all.
    #[tokio::test]
    async fn close_leaves_every_reading_in_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path()).await.unwrap();
        let readings: Vec<Reading> = (0..50).map(|i| reading("bank", i, 50.0)).collect();
        store.append(&readings).await.unwrap();
        let other = StoreReader::open(dir.path()).await.unwrap();
        assert_eq!(other.depth().await.unwrap().readings, 50);
        store.close().await;
        // The file alone, its WAL ignored.
        let file = SqliteConnectOptions::new()
            .filename(dir.path().join(FILE_NAME))
            .read_only(true)
            .immutable(true);
        let pool = SqlitePoolOptions::new().connect_with(file).await.unwrap();
        let in_file: i64 = sqlx::query_scalar("SELECT count(*) FROM readings")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(in_file, 50);
        pool.close().await;
        other.close().await;
    }

    #[tokio::test]
    async fn append_read_remove_park_expire() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path()).await.unwrap();
        assert_eq!(
            store
                .append(&[reading("a", 0, 50.0), reading("a", 1, 51.0)])
                .await
                .unwrap(),
            2
        );
        assert_eq!(
            store.append(&[reading("a", 1, 51.0)]).await.unwrap(),
            0,
            "a replay is ignored"
        );
        let rows = store.oldest(10).await.unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(
            rows[0].reading,
            reading("a", 0, 50.0),
            "values survive the round trip"
        );
        store.remove_through(rows[0].seq).await.unwrap();
        store.park(rows[1].seq, "value out of range").await.unwrap();
        assert_eq!(store.depth().await.unwrap().readings, 0);
        assert_eq!(store.parked().await.unwrap(), 1);

        store
            .append(&[reading("b", 0, 1.0), reading("b", 100, 2.0)])
            .await
            .unwrap();
        let expired = store
            .expire(
                Utc.timestamp_opt(1_700_000_050, 0).unwrap(),
                std::time::Duration::from_secs(3600),
            )
            .await
            .unwrap();
        assert_eq!(expired, 1);
        let depth = store.depth().await.unwrap();
        assert_eq!(
            (depth.readings, depth.oldest),
            (1, Some(Utc.timestamp_opt(1_700_000_100, 0).unwrap()))
        );
        // The count this handle keeps is what a reader counts in the file.
        let reader = StoreReader::open(dir.path()).await.unwrap();
        assert_eq!(reader.depth().await.unwrap(), depth);
        reader.close().await;
        store.close().await;

        // Reopened: what was committed is there.
        let store = LocalStore::open(dir.path()).await.unwrap();
        assert_eq!(store.depth().await.unwrap().readings, 1);
        assert_eq!(
            store
                .latest("b")
                .await
                .unwrap()
                .unwrap()
                .reading
                .float("soc"),
            Some(2.0)
        );
    }
}
