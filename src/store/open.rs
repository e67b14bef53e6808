//! Opening the local store: its connection options, the schema and the
//! upgrade of older stores, the integrity check at start, and what happens
//! when the file is damaged (a power cut on an SD card) or taken away while
//! the daemon runs.
//!
//! A damaged store never stops the gateway: the file and its `-wal`/`-shm`
//! are moved aside as `victron-poller.sqlite.corrupt-<UTC time>`, a fresh
//! store is started, and the readings the damaged file still yields are
//! copied into it ([`super::salvage`]). The
//! daemon stays degraded for a day ([`INCIDENT_LASTS`]) or until the
//! operator removes the moved-aside file.

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, Utc};
use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

use super::schema::{SCHEMA, history_schema};
use super::{FILE_NAME, LocalStore, StoreError, StoreIncident};
use crate::config::StoreSync;

/// How long a damaged or lost store keeps the daemon degraded.
pub(crate) const INCIDENT_LASTS: Duration = Duration::from_secs(24 * 3600);

/// The connections of a daemon's store: its writer and one reader.
pub(super) const CONNECTIONS: u32 = 2;

/// What a moved-aside damaged store is called after: `<file>.corrupt-<time>`.
const CORRUPT_MARK: &str = ".corrupt-";
/// The time format in that name.
const CORRUPT_TIME: &str = "%Y%m%dT%H%M%SZ";

/// An open store and what its file held.
pub(super) struct Opened {
    pub(super) pool: SqlitePool,
    /// The file's identity when opened: a file deleted or replaced under a
    /// running daemon is told by it.
    pub(super) identity: Option<FileIdentity>,
    /// Damaged stores moved aside in the last day.
    pub(super) incidents: Vec<StoreIncident>,
    /// Readings waiting to be forwarded.
    pub(super) waiting: i64,
    /// Readings held for their time.
    pub(super) held: i64,
    /// The highest `seq` the file ever held.
    pub(super) highest_seq: i64,
}

/// A file's device and inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct FileIdentity {
    dev: u64,
    ino: u64,
}

impl FileIdentity {
    /// The identity of the file at `path` now; `None` when it is gone.
    pub(super) fn of(path: &Path) -> Option<Self> {
        use std::os::unix::fs::MetadataExt as _;
        let meta = std::fs::metadata(path).ok()?;
        Some(Self {
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }
}

/// Why a store could not be opened as it is.
enum OpenFailure {
    /// The file is damaged: SQLite says so, or the integrity check fails.
    Damaged(String),
    /// Anything else (permissions, a full disk, a directory): not the
    /// file's fault, so it is left alone.
    Other(sqlx::Error),
}

impl From<sqlx::Error> for OpenFailure {
    fn from(error: sqlx::Error) -> Self {
        if is_damage(&error) {
            Self::Damaged(error.to_string())
        } else {
            Self::Other(error)
        }
    }
}

/// SQLITE_CORRUPT (11) or SQLITE_NOTADB (26), with any extended code.
fn is_damage(error: &sqlx::Error) -> bool {
    let sqlx::Error::Database(db) = error else {
        return false;
    };
    db.code()
        .and_then(|code| code.parse::<i64>().ok())
        .is_some_and(|code| matches!(code & 0xff, 11 | 26))
}

/// What is wrong with the directory, when SQLite cannot open or write a
/// file in it for want of permission (SQLITE_CANTOPEN, SQLITE_READONLY,
/// SQLITE_PERM, SQLITE_AUTH) rather than for the file's own sake.
fn unusable_directory(error: &sqlx::Error) -> Option<String> {
    match error {
        sqlx::Error::Io(io) => Some(io.to_string()),
        sqlx::Error::Database(db) => {
            let code = db.code()?.parse::<i64>().ok()?;
            matches!(code & 0xff, 3 | 8 | 14 | 23).then(|| db.message().to_string())
        }
        _ => None,
    }
}

/// The connection options of the daemon's store.
pub(super) fn options(path: &Path, sync: StoreSync) -> SqliteConnectOptions {
    // By file name, not a URL: a state directory with `?` or `%` in its
    // path is a path like any other.
    SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        // FULL: a committed batch survives a power cut, not only a
        // crash; NORMAL (WAL): it survives a crash, and a power cut may
        // take the last commits, never the store's integrity.
        .synchronous(match sync {
            StoreSync::Full => SqliteSynchronous::Full,
            StoreSync::Normal => SqliteSynchronous::Normal,
        })
        // A commit appends its pages to the WAL: with a second's readings
        // on a few small pages it writes one or two filesystem blocks,
        // not four 4 KB pages (an SD card's wear). Takes effect when the
        // file is created; an older store keeps its page size.
        .page_size(1024)
        // 256 KiB of cache per connection (SQLite's default is 2 MiB):
        // the writer appends at the end and readers read in order, and a
        // gateway's memory is small.
        .pragma("cache_size", "-256")
        .busy_timeout(Duration::from_secs(10))
}

/// Opens the store at `path`; a damaged one is moved aside, replaced by a
/// fresh one, and what it still yields is copied over.
pub(super) async fn open_or_recover(path: &Path, sync: StoreSync) -> Result<Opened, StoreError> {
    let open_error = |source: sqlx::Error| match unusable_directory(&source) {
        Some(problem) => StoreError::StateDir {
            path: path
                .parent()
                .map(|d| d.display().to_string())
                .unwrap_or_default(),
            problem,
        },
        None => StoreError::Open {
            path: path.display().to_string(),
            source,
        },
    };
    let existed = path.exists();
    let mut opened = match open_checked(path, sync).await {
        Ok(opened) => {
            if !existed {
                tracing::info!(store = %path.display(), "A new, empty local store was created.");
            }
            opened
        }
        Err(OpenFailure::Other(error)) => return Err(open_error(error)),
        Err(OpenFailure::Damaged(why)) => {
            let aside = move_aside(path).map_err(|e| open_error(sqlx::Error::Io(e)))?;
            tracing::error!(
                store = %path.display(),
                moved_to = %aside.display(),
                error = %why,
                "The local store is damaged: it is moved aside and a new one started."
            );
            let opened = match open_checked(path, sync).await {
                Ok(opened) => opened,
                Err(OpenFailure::Other(error)) => return Err(open_error(error)),
                Err(OpenFailure::Damaged(why)) => {
                    return Err(open_error(sqlx::Error::Protocol(format!(
                        "a new store is damaged at once: {why}"
                    ))));
                }
            };
            let saved = super::salvage::salvage(&aside, &opened.pool).await;
            let other_rows = super::salvage::copy_tables(&aside, &opened.pool).await;
            tracing::error!(
                readings = saved,
                rollups_and_parked = other_rows,
                moved_to = %aside.display(),
                "Readings copied from the damaged local store into the new one."
            );
            let note = serde_json::json!({"readings_saved": saved, "error": why});
            let _ = super::write::execute(
                &opened.pool,
                sqlx::query(
                    "INSERT OR REPLACE INTO status (name, doc, updated_at_us) VALUES (?, ?, ?)",
                )
                .bind(format!("quarantine:{}", file_name(&aside)))
                .bind(note.to_string())
                .bind(Utc::now().timestamp_micros()),
            )
            .await;
            // Counted again, with what was copied.
            let mut reopened = count(opened.pool, opened.identity)
                .await
                .map_err(open_error)?;
            reopened.highest_seq = reopened.highest_seq.max(opened.highest_seq);
            reopened
        }
    };
    opened.incidents = incidents(path, &opened.pool).await;
    Ok(opened)
}

/// Opens `path`, brings its schema up to date and checks its integrity.
async fn open_checked(path: &Path, sync: StoreSync) -> Result<Opened, OpenFailure> {
    // The file is created once, here; the pool's connections never create
    // it, so a store deleted under the daemon is not silently replaced by
    // an empty file before the daemon notices (see `check_file`).
    if !path.exists() {
        use sqlx::ConnectOptions as _;
        let conn = options(path, sync).connect().await?;
        sqlx::Connection::close(conn).await?;
    }
    let pool = SqlitePoolOptions::new()
        .max_connections(CONNECTIONS)
        // A local file's connection cannot have died idle: no ping (a
        // round trip to SQLite's thread) before each use, and connections
        // are kept for the daemon's life (each new one is a reopen).
        .test_before_acquire(false)
        .idle_timeout(None)
        .max_lifetime(None)
        .connect_with(options(path, sync).create_if_missing(false))
        .await?;
    let checked = async {
        let check: String = sqlx::query_scalar("PRAGMA quick_check(1)")
            .fetch_one(&pool)
            .await?;
        if check != "ok" {
            return Err(OpenFailure::Damaged(format!(
                "the integrity check failed: {check}"
            )));
        }
        upgrade(&pool).await?;
        Ok(())
    }
    .await;
    if let Err(failure) = checked {
        pool.close().await;
        return Err(failure);
    }
    let identity = FileIdentity::of(path);
    Ok(count(pool, identity).await?)
}

/// Creates the tables a store needs, and the columns an older store lacks.
async fn upgrade(pool: &SqlitePool) -> Result<(), sqlx::Error> {
    sqlx::raw_sql(SCHEMA).execute(pool).await?;
    sqlx::raw_sql(&history_schema()).execute(pool).await?;
    // A store written before readings carried their site (its rows keep
    // NULL: see `legacy_site`), or before readings could be held for
    // their time, gains the columns.
    let added = [
        ("readings", "site", "TEXT"),
        ("parked", "site", "TEXT"),
        ("readings", "held_mono", "INTEGER"),
        ("readings", "held_boot", "TEXT"),
    ];
    for (table, column, ty) in added {
        let has: bool = sqlx::query_scalar(&format!(
            "SELECT count(*) > 0 FROM pragma_table_info('{table}') WHERE name = '{column}'"
        ))
        .fetch_one(pool)
        .await?;
        if !has {
            sqlx::query(&format!("ALTER TABLE {table} ADD COLUMN {column} {ty}"))
                .execute(pool)
                .await?;
        }
    }
    Ok(())
}

/// What the store holds: the waiting and held readings, the highest seq.
async fn count(pool: SqlitePool, identity: Option<FileIdentity>) -> Result<Opened, sqlx::Error> {
    // Above every seq the file holds or (with AUTOINCREMENT, in a store
    // created before the store kept its own counter) ever held.
    let counted: bool =
        sqlx::query_scalar("SELECT count(*) > 0 FROM sqlite_master WHERE name = 'sqlite_sequence'")
            .fetch_one(&pool)
            .await?;
    let highest_seq: i64 = sqlx::query_scalar(&format!(
        "SELECT max(coalesce((SELECT max(seq) FROM readings), 0), coalesce((SELECT max(seq) FROM parked), 0){})",
        if counted {
            ", coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'readings'), 0)"
        } else {
            ""
        }
    ))
    .fetch_one(&pool)
    .await?;
    let (waiting, held): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE held_mono IS NULL), count(*) FILTER (WHERE held_mono IS NOT NULL) FROM readings",
    )
    .fetch_one(&pool)
    .await?;
    Ok(Opened {
        pool,
        identity,
        incidents: Vec::new(),
        waiting,
        held,
        highest_seq,
    })
}

/// Renames the store and its `-wal` and `-shm` to `<file>.corrupt-<time>`
/// (and its `-wal`, `-shm`), so SQLite can still read them together.
fn move_aside(path: &Path) -> std::io::Result<PathBuf> {
    let stamp = Utc::now().format(CORRUPT_TIME);
    let aside = PathBuf::from(format!("{}{CORRUPT_MARK}{stamp}", path.display()));
    for suffix in ["-wal", "-shm"] {
        let from = PathBuf::from(format!("{}{suffix}", path.display()));
        // SQLite removes them when the last connection closes, which may
        // be a moment after the pool that found the damage closed: one
        // that is gone by now is no error.
        match std::fs::rename(&from, format!("{}{suffix}", aside.display())) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => return Err(error),
            _ => {}
        }
    }
    std::fs::rename(path, &aside)?;
    Ok(aside)
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The damaged stores moved aside next to `path` in the last day, as
/// incidents (with how many readings were saved from each, when known).
async fn incidents(path: &Path, pool: &SqlitePool) -> Vec<StoreIncident> {
    let Some(dir) = path.parent() else {
        return Vec::new();
    };
    let prefix = format!("{FILE_NAME}{CORRUPT_MARK}");
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let since = Utc::now() - chrono::Duration::from_std(INCIDENT_LASTS).unwrap_or_default();
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(stamp) = name.strip_prefix(&prefix) else {
            continue;
        };
        let Ok(at) = NaiveDateTime::parse_from_str(stamp, CORRUPT_TIME) else {
            continue; // its -wal or -shm, or another file
        };
        let at: DateTime<Utc> = at.and_utc();
        if at < since {
            continue;
        }
        let note: Option<String> = sqlx::query_scalar("SELECT doc FROM status WHERE name = ?")
            .bind(format!("quarantine:{name}"))
            .fetch_optional(pool)
            .await
            .ok()
            .flatten();
        let saved = note
            .and_then(|n| serde_json::from_str::<serde_json::Value>(&n).ok())
            .and_then(|n| n.get("readings_saved").and_then(serde_json::Value::as_u64));
        let saved = saved.map_or_else(String::new, |n| {
            format!("; {n} reading(s) were copied from it")
        });
        found.push(StoreIncident {
            at,
            what: format!(
                "the local store was damaged and moved aside to {}{saved} (remove that file once looked at)",
                dir.join(&name).display()
            ),
            file: Some(dir.join(&name)),
        });
    }
    found.sort_by_key(|i| i.at);
    found
}

impl LocalStore {
    /// Checks that the store's file is still the one this handle writes:
    /// a file deleted (or replaced) under the running daemon is rebuilt from
    /// the open, unlinked one (`VACUUM INTO`: nothing it held is lost) and
    /// reopened. Returns whether it had to; a writer's check only.
    pub(crate) async fn check_file(&self) -> Result<bool, StoreError> {
        let Some(opened) = *self.identity.lock().unwrap_or_else(|p| p.into_inner()) else {
            return Ok(false);
        };
        let now = FileIdentity::of(&self.path);
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
            let mut taken = Vec::with_capacity(CONNECTIONS as usize);
            for _ in 0..CONNECTIONS {
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
        let opened = open_or_recover(&self.path, self.sync).await?;
        self.next_seq
            .fetch_max(opened.highest_seq + 1, std::sync::atomic::Ordering::Relaxed);
        self.waiting
            .store(opened.waiting, std::sync::atomic::Ordering::Relaxed);
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
    pub(super) fn note_incident(&self, incident: StoreIncident) {
        let mut incidents = self.incidents.lock().unwrap_or_else(|p| p.into_inner());
        if !incidents.contains(&incident) {
            incidents.push(incident);
            incidents.sort_by_key(|i| i.at);
        }
    }

    /// What happened to the store's file in the last [`INCIDENT_LASTS`]
    /// (a moved-aside file the operator removed ends its incident).
    pub(crate) fn incidents(&self) -> Vec<StoreIncident> {
        let since = Utc::now() - chrono::Duration::from_std(INCIDENT_LASTS).unwrap_or_default();
        let mut incidents = self.incidents.lock().unwrap_or_else(|p| p.into_inner());
        incidents.retain(|i| i.at >= since && i.file.as_ref().is_none_or(|f| f.exists()));
        incidents.clone()
    }
}
