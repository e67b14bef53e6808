//! The forward queue: the readings that wait to be shipped, oldest first,
//! removed after the remote commit or parked when they can never be
//! written; how many wait, and since when (kept by the only writer's own
//! writes, asked of SQLite otherwise).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::Row;

use super::{Backlog, LocalStore, StoreError, StoreReader, StoredReading, micros};
use crate::clock::{Mono, boot_id, from_micros};

/// What [`LocalStore::depth`] knows of the oldest waiting reading without
/// asking SQLite: an append can only lower it (to its own oldest), anything
/// else that changes the waiting readings makes it unknown. `generation`
/// counts those changes, so that an answer read while one committed is not
/// kept.
#[derive(Debug, Default)]
pub(super) struct OldestWaiting {
    known: Option<Option<i64>>,
    generation: u64,
}

impl LocalStore {
    /// Counts `delta` more (or fewer) readings waiting, after a change
    /// other than an append: the oldest is not known any more.
    pub(super) fn count_waiting(&self, delta: i64) {
        self.waiting
            .fetch_add(delta, std::sync::atomic::Ordering::Relaxed);
        let mut oldest = self.oldest_waiting();
        oldest.generation += 1;
        oldest.known = None;
    }

    /// Counts `added` readings appended, the oldest measured at `oldest_us`.
    pub(super) fn count_appended(&self, added: u64, oldest_us: i64) {
        self.waiting.fetch_add(
            i64::try_from(added).unwrap_or(i64::MAX),
            std::sync::atomic::Ordering::Relaxed,
        );
        if added > 0 {
            let mut oldest = self.oldest_waiting();
            oldest.generation += 1;
            if let Some(known) = oldest.known {
                oldest.known = Some(Some(known.map_or(oldest_us, |t| t.min(oldest_us))));
            }
        }
    }

    /// What this handle knows of the oldest waiting reading's time.
    pub(super) fn oldest_waiting(&self) -> std::sync::MutexGuard<'_, OldestWaiting> {
        self.oldest_waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// How many readings wait, as this handle (the only writer) counts them.
    pub(super) fn waiting(&self) -> i64 {
        self.waiting.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Removes every reading up to and including `seq` (the forwarder ships
    /// the oldest first, so these are exactly the ones it committed).
    pub(crate) async fn remove_through(&self, seq: i64) -> Result<(), StoreError> {
        let removed = super::write::execute(
            &self.pool(),
            sqlx::query("DELETE FROM readings WHERE seq <= ? AND held_mono IS NULL").bind(seq),
        )
        .await?
        .rows_affected();
        self.count_waiting(-i64::try_from(removed).unwrap_or(i64::MAX));
        Ok(())
    }

    /// Moves a reading the database refuses for good to the parked table.
    pub(crate) async fn park(&self, seq: i64, error: &str) -> Result<(), StoreError> {
        let mut tx = super::write::WriteTx::begin(&self.pool()).await?;
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
    pub(crate) async fn depth_by_site(&self) -> Result<HashMap<String, Backlog>, StoreError> {
        if self.waiting() == 0 {
            return Ok(HashMap::new());
        }
        self.reader.depth_by_site().await
    }

    /// How many readings of each site are held for their time.
    pub(crate) async fn held_by_site(&self) -> Result<HashMap<String, i64>, StoreError> {
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
    pub async fn depth(&self) -> Result<Backlog, StoreError> {
        let waiting = self.waiting();
        if waiting == 0 {
            return Ok(Backlog::default());
        }
        let generation = {
            let oldest = self.oldest_waiting();
            if let Some(known) = oldest.known {
                return Ok(Backlog {
                    readings: waiting,
                    oldest: known.map(from_micros),
                });
            }
            oldest.generation
        };
        let oldest = self.oldest_confirmed().await?;
        let mut cached = self.oldest_waiting();
        if cached.generation == generation {
            cached.known = Some(oldest.map(micros));
        }
        Ok(Backlog {
            readings: waiting,
            oldest,
        })
    }

    /// Deletes readings measured before `before`, and readings held for
    /// their time longer than `held_for` on the boot clock (without any
    /// reference they would otherwise pile up); returns how many.
    pub(crate) async fn expire(
        &self,
        before: DateTime<Utc>,
        held_for: std::time::Duration,
    ) -> Result<u64, StoreError> {
        let held_before =
            Mono::now().nanos() - i64::try_from(held_for.as_nanos()).unwrap_or(i64::MAX);
        let held_expired = super::write::execute(
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
            let deleted = super::write::execute(
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
        super::write::execute(
            &self.pool(),
            sqlx::query("DELETE FROM parked WHERE measured_at_us < ?").bind(micros(before)),
        )
        .await?;
        Ok(total)
    }
}

impl StoreReader {
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

    /// How many readings are parked.
    pub async fn parked(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar("SELECT count(*) FROM parked")
            .fetch_one(&self.pool())
            .await?)
    }
}

impl StoreReader {
    /// How many readings of each site wait, and the measurement time of
    /// the oldest (readings stored before sites were recorded count for the
    /// legacy site).
    pub(crate) async fn depth_by_site(&self) -> Result<HashMap<String, Backlog>, StoreError> {
        let rows =
            sqlx::query("SELECT site, count(*), min(measured_at_us) FROM readings WHERE held_mono IS NULL GROUP BY site")
                .fetch_all(&self.pool())
                .await?;
        let mut by_site: HashMap<String, Backlog> = HashMap::new();
        for row in rows {
            let site: Option<String> = row.get(0);
            let site = site.unwrap_or_else(|| self.legacy_site.to_string());
            let (n, oldest): (i64, Option<i64>) = (row.get(1), row.get(2));
            let entry = by_site.entry(site).or_default();
            entry.readings += n;
            entry.oldest = match (entry.oldest, oldest.map(from_micros)) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        Ok(by_site)
    }

    /// How many readings wait, and the measurement time of the oldest.
    pub async fn depth(&self) -> Result<Backlog, StoreError> {
        let row = sqlx::query(
            "SELECT count(*), min(measured_at_us) FROM readings WHERE held_mono IS NULL",
        )
        .fetch_one(&self.pool())
        .await?;
        Ok(Backlog {
            readings: row.get(0),
            oldest: row.get::<Option<i64>, _>(1).map(from_micros),
        })
    }
}
