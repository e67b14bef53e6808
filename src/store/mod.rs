//! The local store: a SQLite file (WAL, synchronous=FULL) in the state
//! directory. Every batch of readings is committed here first, so a crash, a
//! power cut or a database outage loses nothing that reached it. With a
//! PostgreSQL database the forwarder ships rows in order and removes them
//! after the remote commit; without one, the store *is* the database.
//! Rows that can never be written remotely are parked, not dropped.
//!
//! Values are kept as a JSON array per row, in the order of the reading
//! table's columns (the reading model's).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use sqlx::Row;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};

mod open;
mod rows;
mod salvage;
pub(crate) mod write;

pub use open::INCIDENT_LASTS;

pub(crate) use crate::clock::from_micros;
use crate::clock::{Mono, Taken, boot_id};
use crate::config::StoreSync;
use crate::reading::{Reading, ReadingTable, Value};

/// The store's file name inside the state directory.
pub const FILE_NAME: &str = "victron-poller.sqlite";

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

/// The lock file a running daemon holds in its state directory.
pub const LOCK_NAME: &str = "victron-poller.lock";

/// A state directory held by this process for as long as it lives: one
/// daemon per local store (its writer keeps the readings' order).
#[derive(Debug)]
pub struct StateLock {
    _file: std::fs::File,
}

impl StateLock {
    /// Takes the state directory `dir` (creating it), or says which daemon
    /// has it. The kernel releases it when the process ends, however.
    pub fn take(dir: &Path) -> Result<Self, StoreError> {
        let path = dir.join(LOCK_NAME);
        let open_error = |e: std::io::Error| StoreError::StateDir {
            path: dir.display().to_string(),
            problem: e.to_string(),
        };
        std::fs::create_dir_all(dir).map_err(open_error)?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(open_error)?;
        match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(Self { _file: file }),
            Err(rustix::io::Errno::WOULDBLOCK) => Err(StoreError::InUse {
                path: dir.display().to_string(),
            }),
            Err(e) => Err(open_error(e.into())),
        }
    }
}

/// Whether a daemon runs on the state directory `dir` now: it holds the
/// lock there. Read-only (for `status`, which may run as another user): a
/// lock file that cannot be opened counts as no daemon.
pub fn daemon_runs_on(dir: &Path) -> bool {
    let Ok(file) = std::fs::File::open(dir.join(LOCK_NAME)) else {
        return false;
    };
    matches!(
        rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockShared),
        Err(rustix::io::Errno::WOULDBLOCK)
    )
}

/// Why readings held across a reboot are parked.
pub const HELD_ACROSS_BOOT: &str = "held for its time across a restart of the machine: the measurement time could not be confirmed";

/// The name the daemon saves its [`crate::report::Snapshot`] under.
pub const STATUS_NAME: &str = "daemon";

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
    pub at: DateTime<Utc>,
    /// What happened, for the operator.
    pub what: String,
    /// The moved-aside file, while it lasts: removing it ends the incident.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
}

/// The local store.
#[derive(Debug, Clone)]
pub struct LocalStore {
    /// Replaced when the file is deleted under the running daemon.
    pool: Arc<std::sync::RwLock<SqlitePool>>,
    path: PathBuf,
    sync: StoreSync,
    /// The file's identity when opened (`None`: read-only handle).
    identity: Arc<std::sync::Mutex<Option<open::FileIdentity>>>,
    /// What happened to the file lately.
    incidents: Arc<std::sync::Mutex<Vec<StoreIncident>>>,
    /// The site of readings stored before the store recorded sites (the
    /// column is NULL for them): the configured site.
    legacy_site: Arc<str>,
    /// A status document waiting to be committed with the next batch.
    staged_status: Arc<std::sync::Mutex<Option<StagedStatus>>>,
    /// How many readings wait to be forwarded, kept by this handle's own
    /// writes (it is the file's only writer); `None` for a read-only
    /// handle, which counts.
    waiting: Option<Arc<std::sync::atomic::AtomicI64>>,
    /// How many readings are held for their time (see [`crate::clock`]):
    /// kept, not forwarded, until re-stamped.
    held: Arc<std::sync::atomic::AtomicI64>,
    /// The earliest time held readings were re-stamped to since it was last
    /// taken (µs; `i64::MAX`: none).
    released_from: Arc<std::sync::atomic::AtomicI64>,
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

/// What [`LocalStore::depth`] knows of the oldest waiting reading without
/// asking SQLite: an append can only lower it (to its own oldest), anything
/// else that changes the waiting readings makes it unknown. `generation`
/// counts those changes, so that an answer read while one committed is not
/// kept.
#[derive(Debug, Default)]
struct OldestWaiting {
    known: Option<Option<i64>>,
    generation: u64,
}

/// A status document staged by [`LocalStore::stage_status`].
#[derive(Debug)]
struct StagedStatus {
    name: String,
    doc: String,
    at_us: i64,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS readings (
    seq            INTEGER PRIMARY KEY,
    reading_table  TEXT    NOT NULL,
    device         TEXT    NOT NULL,
    source         TEXT    NOT NULL,
    measured_at_us INTEGER NOT NULL,
    vals           TEXT    NOT NULL,
    site           TEXT,
    held_mono      INTEGER,
    held_boot      TEXT,
    UNIQUE (measured_at_us, reading_table, device)
);
CREATE TABLE IF NOT EXISTS parked (
    seq            INTEGER PRIMARY KEY,
    reading_table  TEXT    NOT NULL,
    device         TEXT    NOT NULL,
    source         TEXT    NOT NULL,
    measured_at_us INTEGER NOT NULL,
    vals           TEXT    NOT NULL,
    error          TEXT    NOT NULL,
    parked_at_us   INTEGER NOT NULL,
    site           TEXT
);
CREATE TABLE IF NOT EXISTS status (
    name          TEXT PRIMARY KEY,
    doc           TEXT NOT NULL,
    updated_at_us INTEGER NOT NULL
);
";

/// The statement that saves a status document.
fn upsert_status(
    status: &StagedStatus,
) -> sqlx::query::Query<'_, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'_>> {
    sqlx::query(
        "INSERT INTO status (name, doc, updated_at_us) VALUES (?, ?, ?)
         ON CONFLICT (name) DO UPDATE SET doc = excluded.doc, updated_at_us = excluded.updated_at_us",
    )
    .bind(&status.name)
    .bind(&status.doc)
    .bind(status.at_us)
}

/// Inserts readings (none already stored: same table, device and time) in
/// one statement, in order; returns how many were new.
async fn insert_rows(
    conn: &mut sqlx::SqliteConnection,
    next_seq: &std::sync::atomic::AtomicI64,
    readings: &[&Reading],
) -> Result<u64, sqlx::Error> {
    if readings.is_empty() {
        return Ok(0);
    }
    let first = next_seq.fetch_add(
        i64::try_from(readings.len()).unwrap_or(i64::MAX),
        std::sync::atomic::Ordering::Relaxed,
    );
    let rows: Vec<serde_json::Value> = readings
        .iter()
        .zip(first..)
        .map(|(r, seq)| {
            let moment = r.unconfirmed.map(Mono::nanos);
            serde_json::json!([
                seq,
                r.table.name(),
                r.device,
                r.source.as_str(),
                micros(r.measured_at),
                encode_values(r.table, &r.values),
                &*r.site,
                moment,
                moment.map(|_| boot_id()),
            ])
        })
        .collect();
    Ok(sqlx::query(
        // Only a reading already stored is skipped: a clash of `seq` (which
        // one writer per store never makes) is an error, not a lost reading.
        "INSERT INTO readings (seq, reading_table, device, source, measured_at_us, vals, site, held_mono, held_boot)
         SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4, value ->> 5, value ->> 6,
                value ->> 7, value ->> 8
         FROM json_each(?) WHERE true ORDER BY key
         ON CONFLICT (measured_at_us, reading_table, device) DO NOTHING",
    )
    .bind(serde_json::Value::Array(rows).to_string())
    .execute(conn)
    .await?
    .rows_affected())
}

/// A time as the store keeps it: microseconds since the Unix epoch.
pub(crate) fn micros(at: DateTime<Utc>) -> i64 {
    at.timestamp_micros()
}

/// The reading table a stored name stands for.
pub(crate) fn table_from_name(name: &str) -> Option<ReadingTable> {
    ReadingTable::ALL.into_iter().find(|t| t.name() == name)
}

/// A reading's values as the store keeps them: a JSON array in the order of
/// its table's columns (`null` for a column without a value, trailing ones
/// left out) — a third of the bytes of an object naming every column, and
/// so fewer pages per commit. (Rows stored as objects are read as well.)
fn encode_values(table: ReadingTable, values: &[(&'static str, Value)]) -> String {
    let columns = table.columns();
    let mut slots = vec![serde_json::Value::Null; columns.len()];
    for (column, value) in values {
        let Some(index) = columns.iter().position(|(c, _)| c == column) else {
            continue;
        };
        slots[index] = match value {
            Value::Float(v) => serde_json::Number::from_f64(*v)
                .map_or(serde_json::Value::Null, serde_json::Value::Number),
            Value::Int(v) => serde_json::Value::from(*v),
            Value::Text(t) => serde_json::Value::from(t.as_ref()),
        };
    }
    while slots.last().is_some_and(serde_json::Value::is_null) {
        slots.pop();
    }
    serde_json::Value::Array(slots).to_string()
}

impl LocalStore {
    /// Opens (creating if needed) the store in `dir`, every commit flushed
    /// to the disk.
    pub async fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_with(dir, StoreSync::Full).await
    }

    /// Opens (creating if needed) the store in `dir`, committing as `sync`
    /// says.
    pub async fn open_with(dir: &Path, sync: StoreSync) -> Result<Self, StoreError> {
        let path = dir.join(FILE_NAME);
        std::fs::create_dir_all(dir).map_err(|e| StoreError::StateDir {
            path: dir.display().to_string(),
            problem: e.to_string(),
        })?;
        let opened = open::open_or_recover(&path, sync).await?;
        Ok(Self {
            pool: Arc::new(std::sync::RwLock::new(opened.pool)),
            path,
            sync,
            identity: Arc::new(std::sync::Mutex::new(opened.identity)),
            incidents: Arc::new(std::sync::Mutex::new(opened.incidents)),
            legacy_site: Arc::from(""),
            staged_status: Arc::default(),
            waiting: Some(Arc::new(std::sync::atomic::AtomicI64::new(opened.waiting))),
            held: Arc::new(std::sync::atomic::AtomicI64::new(opened.held)),
            released_from: Arc::new(std::sync::atomic::AtomicI64::new(i64::MAX)),
            next_seq: Arc::new(std::sync::atomic::AtomicI64::new(opened.highest_seq + 1)),
            oldest_waiting: Arc::default(),
        })
    }

    /// Counts `delta` more (or fewer) readings waiting, after a change
    /// other than an append: the oldest is not known any more.
    fn count_waiting(&self, delta: i64) {
        if let Some(waiting) = &self.waiting {
            waiting.fetch_add(delta, std::sync::atomic::Ordering::Relaxed);
        }
        let mut oldest = self.oldest_waiting();
        oldest.generation += 1;
        oldest.known = None;
    }

    /// Counts `added` readings appended, the oldest measured at `oldest_us`.
    fn count_appended(&self, added: u64, oldest_us: i64) {
        if let Some(waiting) = &self.waiting {
            waiting.fetch_add(
                i64::try_from(added).unwrap_or(i64::MAX),
                std::sync::atomic::Ordering::Relaxed,
            );
        }
        if added > 0 {
            let mut oldest = self.oldest_waiting();
            oldest.generation += 1;
            if let Some(known) = oldest.known {
                oldest.known = Some(Some(known.map_or(oldest_us, |t| t.min(oldest_us))));
            }
        }
    }

    fn oldest_waiting(&self) -> std::sync::MutexGuard<'_, OldestWaiting> {
        self.oldest_waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Readings stored before the store recorded sites belong to `site`.
    pub fn with_legacy_site(mut self, site: &str) -> Self {
        self.legacy_site = Arc::from(site);
        self
    }

    /// Opens an existing store for reading only, for `status`: nothing is
    /// created or written, so an administrator's `status` never leaves files
    /// owned by another user in a service's state directory. While a daemon
    /// has the store open, its WAL index is shared; otherwise the file is
    /// read as immutable (everything was checkpointed into it at close).
    pub async fn open_read_only(dir: &Path) -> Result<Self, StoreError> {
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
            sync: StoreSync::default(),
            identity: Arc::default(),
            incidents: Arc::default(),
            legacy_site: Arc::from(""),
            staged_status: Arc::default(),
            waiting: None,
            held: Arc::default(),
            released_from: Arc::new(std::sync::atomic::AtomicI64::new(i64::MAX)),
            next_seq: Arc::default(),
            oldest_waiting: Arc::default(),
        })
    }

    /// The store's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The pool of the current file.
    pub(crate) fn pool(&self) -> SqlitePool {
        self.pool.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// What happened to the store's file in the last [`INCIDENT_LASTS`]
    /// (a moved-aside file the operator removed ends its incident).
    pub fn incidents(&self) -> Vec<StoreIncident> {
        let since = Utc::now() - chrono::Duration::from_std(INCIDENT_LASTS).unwrap_or_default();
        let mut incidents = self.incidents.lock().unwrap_or_else(|p| p.into_inner());
        incidents.retain(|i| i.at >= since && i.file.as_ref().is_none_or(|f| f.exists()));
        incidents.clone()
    }

    /// Checks that the store's file is still the one this handle writes:
    /// a file deleted (or replaced) under the running daemon is rebuilt from
    /// the open, unlinked one (`VACUUM INTO`: nothing it held is lost) and
    /// reopened. Returns whether it had to; a writer's check only.
    pub async fn check_file(&self) -> Result<bool, StoreError> {
        let Some(opened) = *self.identity.lock().unwrap_or_else(|p| p.into_inner()) else {
            return Ok(false);
        };
        let now = open::FileIdentity::of(&self.path);
        let old = self.pool();
        // A closed pool: an earlier check closed the old file but could not
        // open the new one; it tries again.
        if now == Some(opened) && !old.is_closed() {
            return Ok(false);
        }
        let restoring = self.path.with_extension("sqlite.restoring");
        if !old.is_closed() {
            // Every connection of the old file taken: nothing commits to it
            // between the copy below and its close (a writer's next attempt
            // finds the new file).
            let mut taken = Vec::with_capacity(open::CONNECTIONS as usize);
            for _ in 0..open::CONNECTIONS {
                taken.push(old.acquire().await?);
            }
            let _ = std::fs::remove_file(&restoring);
            let what = if now.is_none() {
                // The directory may have gone with the file.
                if let Some(dir) = self.path.parent() {
                    let _ = std::fs::create_dir_all(dir);
                }
                // The unlinked file is still open here: copy it back.
                let copied = sqlx::query("VACUUM INTO ?")
                    .bind(restoring.display().to_string())
                    .execute(&mut *taken[0])
                    .await;
                match copied {
                    Ok(_) => format!(
                        "the local store {} was deleted while the daemon ran; it was rebuilt from the open file, nothing lost",
                        self.path.display()
                    ),
                    Err(error) => {
                        let _ = std::fs::remove_file(&restoring);
                        format!(
                            "the local store {} was deleted while the daemon ran and could not be rebuilt ({error}): what it held is lost",
                            self.path.display()
                        )
                    }
                }
            } else {
                format!(
                    "the local store {} was replaced by another file while the daemon ran; the daemon now writes to that one",
                    self.path.display()
                )
            };
            tracing::error!(store = %self.path.display(), "{what}");
            self.note_incident(StoreIncident {
                at: Utc::now(),
                what,
                file: None,
            });
            // The old file's connections go first: closing them removes its
            // -wal and -shm by name, which must not be the new file's.
            for mut conn in taken {
                conn.close_on_drop();
            }
            old.close().await;
        }
        // From here a failure leaves the old pool closed, and the next check
        // finishes the move and the reopen.
        if restoring.exists() && !self.path.exists() {
            std::fs::rename(&restoring, &self.path).map_err(|e| StoreError::Open {
                path: self.path.display().to_string(),
                source: sqlx::Error::Io(e),
            })?;
        }
        let opened = open::open_or_recover(&self.path, self.sync).await?;
        self.next_seq
            .fetch_max(opened.highest_seq + 1, std::sync::atomic::Ordering::Relaxed);
        if let Some(waiting) = &self.waiting {
            waiting.store(opened.waiting, std::sync::atomic::Ordering::Relaxed);
        }
        self.held
            .store(opened.held, std::sync::atomic::Ordering::Relaxed);
        self.count_waiting(0);
        *self.identity.lock().unwrap_or_else(|p| p.into_inner()) = opened.identity;
        *self.pool.write().unwrap_or_else(|p| p.into_inner()) = opened.pool;
        for incident in opened.incidents {
            self.note_incident(incident);
        }
        tracing::info!(store = %self.path.display(), "The local store is open again.");
        Ok(true)
    }

    /// Adds an incident (once).
    fn note_incident(&self, incident: StoreIncident) {
        let mut incidents = self.incidents.lock().unwrap_or_else(|p| p.into_inner());
        if !incidents.contains(&incident) {
            incidents.push(incident);
            incidents.sort_by_key(|i| i.at);
        }
    }

    /// Commits readings in one transaction; a reading already stored (same
    /// table, device and time) is ignored. Returns how many were new.
    ///
    /// One statement for the whole batch (its rows as one JSON array), and
    /// without a status document to save nor readings held for their time
    /// no explicit transaction either: a single statement is its own, so a
    /// batch costs one round trip to SQLite's thread and one commit.
    pub async fn append(&self, readings: &[Reading]) -> Result<u64, StoreError> {
        let (held, confirmed): (Vec<&Reading>, Vec<&Reading>) =
            readings.iter().partition(|r| r.unconfirmed.is_some());
        let staged = self.take_staged_status();
        let (added, held) = if held.is_empty() && staged.is_none() {
            let mut conn = self.pool().acquire().await?;
            match insert_rows(&mut conn, &self.next_seq, &confirmed).await {
                Ok(added) => (added, 0),
                Err(error) => {
                    // Not back into the pool: see `write`.
                    conn.close_on_drop();
                    return Err(error.into());
                }
            }
        } else {
            let written = async {
                let mut tx = write::WriteTx::begin(&self.pool()).await?;
                let added = insert_rows(tx.conn(), &self.next_seq, &confirmed).await?;
                let held = insert_rows(tx.conn(), &self.next_seq, &held).await?;
                if let Some(status) = &staged {
                    upsert_status(status).execute(tx.conn()).await?;
                }
                tx.commit().await?;
                Ok::<_, sqlx::Error>((added, held))
            }
            .await;
            match written {
                Ok(counts) => counts,
                Err(error) => {
                    self.restage(staged);
                    return Err(error.into());
                }
            }
        };
        if added == u64::try_from(confirmed.len()).unwrap_or(u64::MAX) {
            let oldest_us = confirmed
                .iter()
                .map(|r| micros(r.measured_at))
                .min()
                .unwrap_or(i64::MAX);
            self.count_appended(added, oldest_us);
        } else {
            // Some were stored already: which is the oldest now is not known.
            self.count_waiting(i64::try_from(added).unwrap_or(i64::MAX));
        }
        self.held.fetch_add(
            i64::try_from(held).unwrap_or(i64::MAX),
            std::sync::atomic::Ordering::Relaxed,
        );
        Ok(added + held)
    }

    /// How many readings are held for their time (this handle's count).
    pub fn held(&self) -> i64 {
        self.held.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The earliest time readings released since the last call were
    /// stamped with (they joined the readings in the past).
    pub fn take_released_from(&self) -> Option<DateTime<Utc>> {
        let us = self
            .released_from
            .swap(i64::MAX, std::sync::atomic::Ordering::Relaxed);
        (us != i64::MAX).then(|| from_micros(us))
    }

    /// Re-stamps the readings held during this boot, now that the time is
    /// known (`stamp` turns a reading's two clocks into its wall time), and
    /// queues them for forwarding. Returns how many.
    pub async fn release_held(
        &self,
        stamp: impl Fn(Taken) -> DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let rows: Vec<(i64, i64, i64)> = sqlx::query_as(
            "SELECT seq, measured_at_us, held_mono FROM readings
             WHERE held_mono IS NOT NULL AND held_boot = ? ORDER BY seq",
        )
        .bind(boot_id())
        .fetch_all(&self.pool())
        .await?;
        if rows.is_empty() {
            return Ok(0);
        }
        let mut earliest = i64::MAX;
        let stamps: Vec<serde_json::Value> = rows
            .iter()
            .map(|&(seq, wall_us, mono)| {
                let taken = Taken {
                    mono: Mono::from_nanos(mono),
                    wall: from_micros(wall_us),
                };
                let at = micros(stamp(taken));
                earliest = earliest.min(at);
                serde_json::json!([seq, at])
            })
            .collect();
        let released = write::execute(
            &self.pool(),
            sqlx::query(
                "UPDATE OR IGNORE readings SET measured_at_us = s.value ->> 1, held_mono = NULL, held_boot = NULL
                 FROM json_each(?) AS s WHERE readings.seq = s.value ->> 0",
            )
            .bind(serde_json::Value::Array(stamps).to_string()),
        )
        .await?
        .rows_affected();
        let n = i64::try_from(released).unwrap_or(i64::MAX);
        self.count_waiting(n);
        // A re-stamped reading that lands on the time of one already stored
        // (same table and device) is that reading again.
        let last = rows.last().map_or(0, |r| r.0);
        let duplicates = write::execute(
            &self.pool(),
            sqlx::query(
                "DELETE FROM readings WHERE held_mono IS NOT NULL AND held_boot = ? AND seq <= ?",
            )
            .bind(boot_id())
            .bind(last),
        )
        .await?
        .rows_affected();
        self.released_from
            .fetch_min(earliest, std::sync::atomic::Ordering::Relaxed);
        self.held.fetch_sub(
            n + i64::try_from(duplicates).unwrap_or(i64::MAX),
            std::sync::atomic::Ordering::Relaxed,
        );
        Ok(released)
    }

    /// Parks the readings held during an earlier boot: their boot-clock
    /// moments mean nothing now, so their time can never be confirmed.
    /// Returns how many.
    pub async fn park_held_from_earlier_boots(&self) -> Result<u64, StoreError> {
        if self.held() == 0 {
            return Ok(0);
        }
        // Without a boot id (`""`), no boot-clock moment can be trusted.
        let earlier = "held_mono IS NOT NULL AND (held_boot IS NOT ?1 OR ?1 = '')";
        let mut tx = write::WriteTx::begin(&self.pool()).await?;
        sqlx::query(&format!(
            "INSERT OR REPLACE INTO parked (seq, reading_table, device, source, measured_at_us, vals, error, parked_at_us, site)
             SELECT seq, reading_table, device, source, measured_at_us, vals, ?2, ?3, site FROM readings WHERE {earlier}"
        ))
        .bind(boot_id())
        .bind(HELD_ACROSS_BOOT)
        .bind(micros(Utc::now()))
        .execute(tx.conn())
        .await?;
        let moved = sqlx::query(&format!("DELETE FROM readings WHERE {earlier}"))
            .bind(boot_id())
            .execute(tx.conn())
            .await?
            .rows_affected();
        tx.commit().await?;
        self.held.fetch_sub(
            i64::try_from(moved).unwrap_or(i64::MAX),
            std::sync::atomic::Ordering::Relaxed,
        );
        Ok(moved)
    }

    /// Stages a status document: the next [`Self::append`] commits it in its
    /// own transaction, so that the document costs no commit (no fsync) of
    /// its own; [`Self::flush_status`] commits one no batch took. A newer
    /// staged document replaces an older one.
    pub fn stage_status(&self, name: &str, doc: &serde_json::Value) {
        let staged = StagedStatus {
            name: name.to_string(),
            doc: doc.to_string(),
            at_us: micros(Utc::now()),
        };
        *self.staged_status.lock().unwrap_or_else(|p| p.into_inner()) = Some(staged);
    }

    /// Commits the staged status document, if no batch took it. Returns
    /// whether there was one.
    pub async fn flush_status(&self) -> Result<bool, StoreError> {
        let Some(status) = self.take_staged_status() else {
            return Ok(false);
        };
        if let Err(error) = write::execute(&self.pool(), upsert_status(&status)).await {
            self.restage(Some(status));
            return Err(error.into());
        }
        Ok(true)
    }

    fn take_staged_status(&self) -> Option<StagedStatus> {
        self.staged_status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    /// Puts back a staged document a failed commit did not write, unless a
    /// newer one was staged meanwhile.
    fn restage(&self, status: Option<StagedStatus>) {
        let mut slot = self.staged_status.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            *slot = status;
        }
    }

    /// The oldest `limit` readings, in order.
    pub async fn oldest(&self, limit: i64) -> Result<Vec<StoredReading>, StoreError> {
        self.oldest_after(i64::MIN, limit).await
    }

    /// The oldest `limit` readings after position `seq`, in order.
    pub async fn oldest_after(
        &self,
        seq: i64,
        limit: i64,
    ) -> Result<Vec<StoredReading>, StoreError> {
        self.select(
            "WHERE seq > ?1 AND held_mono IS NULL ORDER BY seq LIMIT ?2",
            seq,
            limit,
            "",
        )
        .await
    }

    /// The latest reading of a device, if any.
    pub async fn latest(&self, device: &str) -> Result<Option<StoredReading>, StoreError> {
        let found = self
            .select(
                "WHERE device = ?3 ORDER BY measured_at_us DESC LIMIT ?2",
                0,
                1,
                device,
            )
            .await?;
        Ok(found.into_iter().next())
    }

    /// Every confirmed reading measured in `[from, to)`, in time order (by
    /// the time index: a span of minutes costs what its rows cost, however
    /// long the store's backlog).
    pub async fn readings_between(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<StoredReading>, StoreError> {
        let tail = format!(
            "WHERE measured_at_us >= ?1 AND measured_at_us < {} AND held_mono IS NULL
             ORDER BY measured_at_us, seq LIMIT ?2",
            micros(to)
        );
        self.select(&tail, micros(from), i64::MAX, "").await
    }

    /// Readings matching `tail` (binds: ?1 an i64, ?2 a limit, ?3 a text).
    /// They come back as one row of JSON: sqlx's SQLite driver hands rows
    /// over one by one between threads, which costs far more than parsing.
    async fn select(
        &self,
        tail: &str,
        number: i64,
        limit: i64,
        text: &str,
    ) -> Result<Vec<StoredReading>, StoreError> {
        let sql = format!(
            "SELECT json_group_array(json_array(seq, reading_table, device, source, measured_at_us, json(vals), site))
             FROM (SELECT * FROM readings {tail})"
        );
        let json: Option<String> = sqlx::query_scalar(&sql)
            .bind(number)
            .bind(limit)
            .bind(text)
            .fetch_one(&self.pool())
            .await?;
        let Some(json) = json else {
            return Ok(Vec::new());
        };
        rows::parse(&json, &self.legacy_site)
            .map_err(|e| StoreError::Sql(sqlx::Error::Decode(Box::new(e))))
    }

    /// Removes every reading up to and including `seq` (the forwarder ships
    /// the oldest first, so these are exactly the ones it committed).
    pub async fn remove_through(&self, seq: i64) -> Result<(), StoreError> {
        let removed = write::execute(
            &self.pool(),
            sqlx::query("DELETE FROM readings WHERE seq <= ? AND held_mono IS NULL").bind(seq),
        )
        .await?
        .rows_affected();
        self.count_waiting(-i64::try_from(removed).unwrap_or(i64::MAX));
        Ok(())
    }

    /// Moves a reading the database refuses for good to the parked table.
    pub async fn park(&self, seq: i64, error: &str) -> Result<(), StoreError> {
        let mut tx = write::WriteTx::begin(&self.pool()).await?;
        sqlx::query(
            "INSERT OR REPLACE INTO parked (seq, reading_table, device, source, measured_at_us, vals, error, parked_at_us, site)
             SELECT seq, reading_table, device, source, measured_at_us, vals, ?, ?, site FROM readings WHERE seq = ?",
        )
        .bind(error)
        .bind(micros(Utc::now()))
        .bind(seq)
        .execute(tx.conn())
        .await?;
        let moved = sqlx::query("DELETE FROM readings WHERE seq = ?")
            .bind(seq)
            .execute(tx.conn())
            .await?
            .rows_affected();
        tx.commit().await?;
        self.count_waiting(-i64::try_from(moved).unwrap_or(i64::MAX));
        Ok(())
    }

    /// How many readings of each site wait, and the measurement time of
    /// the oldest (readings stored before sites were recorded count for the
    /// legacy site).
    pub async fn depth_by_site(
        &self,
    ) -> Result<HashMap<String, (i64, Option<DateTime<Utc>>)>, StoreError> {
        if self.known_waiting() == Some(0) {
            return Ok(HashMap::new());
        }
        let rows =
            sqlx::query("SELECT site, count(*), min(measured_at_us) FROM readings WHERE held_mono IS NULL GROUP BY site")
                .fetch_all(&self.pool())
                .await?;
        let mut by_site: HashMap<String, (i64, Option<DateTime<Utc>>)> = HashMap::new();
        for row in rows {
            let site: Option<String> = row.get(0);
            let site = site.unwrap_or_else(|| self.legacy_site.to_string());
            let (n, oldest): (i64, Option<i64>) = (row.get(1), row.get(2));
            let entry = by_site.entry(site).or_insert((0, None));
            entry.0 += n;
            entry.1 = match (entry.1, oldest.map(from_micros)) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        Ok(by_site)
    }

    /// How many readings of each site are held for their time.
    pub async fn held_by_site(&self) -> Result<HashMap<String, i64>, StoreError> {
        if self.held() == 0 {
            return Ok(HashMap::new());
        }
        let rows: Vec<(Option<String>, i64)> = sqlx::query_as(
            "SELECT site, count(*) FROM readings WHERE held_mono IS NOT NULL GROUP BY site",
        )
        .fetch_all(&self.pool())
        .await?;
        let mut by_site = HashMap::new();
        for (site, n) in rows {
            *by_site
                .entry(site.unwrap_or_else(|| self.legacy_site.to_string()))
                .or_insert(0) += n;
        }
        Ok(by_site)
    }

    /// How many readings wait, and the measurement time of the oldest.
    /// Asked every poll interval: the count is this handle's own (no scan
    /// of a backlog of days), and the oldest time comes from its index.
    pub async fn depth(&self) -> Result<(i64, Option<DateTime<Utc>>), StoreError> {
        let Some(waiting) = self.known_waiting() else {
            let row = sqlx::query(
                "SELECT count(*), min(measured_at_us) FROM readings WHERE held_mono IS NULL",
            )
            .fetch_one(&self.pool())
            .await?;
            return Ok((row.get(0), row.get::<Option<i64>, _>(1).map(from_micros)));
        };
        if waiting == 0 {
            return Ok((0, None));
        }
        let generation = {
            let oldest = self.oldest_waiting();
            if let Some(known) = oldest.known {
                return Ok((waiting, known.map(from_micros)));
            }
            oldest.generation
        };
        let oldest = self.oldest_confirmed().await?;
        let mut cached = self.oldest_waiting();
        if cached.generation == generation {
            cached.known = Some(oldest.map(micros));
        }
        Ok((waiting, oldest))
    }

    /// The sites of the stored readings (a reading stored before sites were
    /// recorded is the legacy site's).
    pub async fn sites(&self) -> Result<Vec<String>, StoreError> {
        let sites: Vec<Option<String>> =
            sqlx::query_scalar("SELECT DISTINCT site FROM readings ORDER BY 1")
                .fetch_all(&self.pool())
                .await?;
        let mut sites: Vec<String> = sites
            .into_iter()
            .map(|s| s.unwrap_or_else(|| self.legacy_site.to_string()))
            .collect();
        sites.sort();
        sites.dedup();
        Ok(sites)
    }

    /// When the newest confirmed reading was measured.
    pub async fn newest_confirmed(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        let newest: Option<i64> =
            sqlx::query_scalar("SELECT max(measured_at_us) FROM readings WHERE held_mono IS NULL")
                .fetch_one(&self.pool())
                .await?;
        Ok(newest.map(from_micros))
    }

    /// When the first confirmed reading measured at or after `at` was
    /// measured.
    pub async fn next_confirmed(
        &self,
        at: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        let next: Option<i64> = sqlx::query_scalar(
            "SELECT min(measured_at_us) FROM readings WHERE measured_at_us >= ? AND held_mono IS NULL",
        )
        .bind(micros(at))
        .fetch_one(&self.pool())
        .await?;
        Ok(next.map(from_micros))
    }

    /// When the oldest confirmed reading was measured.
    pub async fn oldest_confirmed(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        let oldest: Option<i64> =
            sqlx::query_scalar("SELECT min(measured_at_us) FROM readings WHERE held_mono IS NULL")
                .fetch_one(&self.pool())
                .await?;
        Ok(oldest.map(from_micros))
    }

    /// The count of readings waiting, when this handle keeps it.
    fn known_waiting(&self) -> Option<i64> {
        self.waiting
            .as_ref()
            .map(|w| w.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// How many readings are parked.
    pub async fn parked(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar("SELECT count(*) FROM parked")
            .fetch_one(&self.pool())
            .await?)
    }

    /// Deletes readings measured before `before`, and readings held for
    /// their time longer than `held_for` on the boot clock (without any
    /// reference they would otherwise pile up); returns how many.
    pub async fn expire(
        &self,
        before: DateTime<Utc>,
        held_for: std::time::Duration,
    ) -> Result<u64, StoreError> {
        let held_before =
            Mono::now().nanos() - i64::try_from(held_for.as_nanos()).unwrap_or(i64::MAX);
        let held_expired = write::execute(
            &self.pool(),
            sqlx::query(
                "DELETE FROM readings WHERE held_mono IS NOT NULL AND held_boot = ? AND held_mono < ?",
            )
            .bind(boot_id())
            .bind(held_before),
        )
        .await?
        .rows_affected();
        self.held.fetch_sub(
            i64::try_from(held_expired).unwrap_or(i64::MAX),
            std::sync::atomic::Ordering::Relaxed,
        );
        let mut total = held_expired;
        loop {
            let deleted = write::execute(
                &self.pool(),
                sqlx::query(
                    "DELETE FROM readings WHERE seq IN
                     (SELECT seq FROM readings WHERE measured_at_us < ? AND held_mono IS NULL LIMIT 10000)",
                )
                .bind(micros(before)),
            )
            .await?
            .rows_affected();
            total += deleted;
            self.count_waiting(-i64::try_from(deleted).unwrap_or(i64::MAX));
            if deleted < 10_000 {
                break;
            }
        }
        write::execute(
            &self.pool(),
            sqlx::query("DELETE FROM parked WHERE measured_at_us < ?").bind(micros(before)),
        )
        .await?;
        Ok(total)
    }

    /// Readings per table and device since `since` (embedded status).
    pub async fn counts_since(
        &self,
        since: DateTime<Utc>,
    ) -> Result<Vec<(String, String, i64, DateTime<Utc>)>, StoreError> {
        let rows = sqlx::query(
            "SELECT reading_table, device, count(*), max(measured_at_us) FROM readings
             WHERE measured_at_us >= ? GROUP BY reading_table, device ORDER BY reading_table, device",
        )
        .bind(micros(since))
        .fetch_all(&self.pool())
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), from_micros(r.get(3))))
            .collect())
    }

    /// Loads a named status document and when it was saved.
    pub async fn load_status(
        &self,
        name: &str,
    ) -> Result<Option<(serde_json::Value, DateTime<Utc>)>, StoreError> {
        let row = sqlx::query("SELECT doc, updated_at_us FROM status WHERE name = ?")
            .bind(name)
            .fetch_optional(&self.pool())
            .await?;
        Ok(row.and_then(|r| {
            let doc = serde_json::from_str(r.get::<&str, _>(0)).ok()?;
            Some((doc, from_micros(r.get(1))))
        }))
    }

    /// Closes the pool, finishing the WAL checkpoint.
    pub async fn close(&self) {
        self.pool().close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reading::SourceKind;
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
        assert_eq!(store.depth().await.unwrap().0, 0);
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
        let (depth, oldest) = store.depth().await.unwrap();
        assert_eq!(
            (depth, oldest),
            (1, Some(Utc.timestamp_opt(1_700_000_100, 0).unwrap()))
        );
        // The count this handle keeps is what a reader counts in the file.
        let reader = LocalStore::open_read_only(dir.path()).await.unwrap();
        assert_eq!(reader.depth().await.unwrap(), (depth, oldest));
        reader.close().await;
        store.close().await;

        // Reopened: what was committed is there.
        let store = LocalStore::open(dir.path()).await.unwrap();
        assert_eq!(store.depth().await.unwrap().0, 1);
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
