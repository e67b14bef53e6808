//! Readings held for their time (see [`crate::clock`]): kept, not
//! forwarded, until the time is known and they are re-stamped; those of an
//! earlier boot are parked.

use chrono::{DateTime, Utc};

use super::{LocalStore, StoreError, micros};
use crate::clock::{Mono, Taken, boot_id, from_micros};

/// Why readings held across a reboot are parked.
pub(crate) const HELD_ACROSS_BOOT: &str = "held for its time across a restart of the machine: the measurement time could not be confirmed";

impl LocalStore {
    /// How many readings are held for their time (this handle's count).
    pub(crate) fn held(&self) -> i64 {
        self.held.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The earliest time readings released since the last call were
    /// stamped with (they joined the readings in the past).
    pub(crate) fn take_released_from(&self) -> Option<DateTime<Utc>> {
        self.released_from
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    /// Re-stamps the readings held during this boot, now that the time is
    /// known (`stamp` turns a reading's two clocks into its wall time), and
    /// queues them for forwarding. Returns how many.
    pub(crate) async fn release_held(
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
        let mut earliest: Option<DateTime<Utc>> = None;
        let stamps: Vec<serde_json::Value> = rows
            .iter()
            .map(|&(seq, wall_us, mono)| {
                let taken = Taken {
                    mono: Mono::from_nanos(mono),
                    wall: from_micros(wall_us),
                };
                let at = stamp(taken);
                earliest = Some(earliest.map_or(at, |e| e.min(at)));
                serde_json::json!([seq, micros(at)])
            })
            .collect();
        let released = super::write::execute(
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
        let duplicates = super::write::execute(
            &self.pool(),
            sqlx::query(
                "DELETE FROM readings WHERE held_mono IS NOT NULL AND held_boot = ? AND seq <= ?",
            )
            .bind(boot_id())
            .bind(last),
        )
        .await?
        .rows_affected();
        let mut released_from = self.released_from.lock().unwrap_or_else(|p| p.into_inner());
        *released_from = match (*released_from, earliest) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        drop(released_from);
        self.held.fetch_sub(
            n + i64::try_from(duplicates).unwrap_or(i64::MAX),
            std::sync::atomic::Ordering::Relaxed,
        );
        Ok(released)
    }

    /// Parks the readings held during an earlier boot: their boot-clock
    /// moments mean nothing now, so their time can never be confirmed.
    /// Returns how many.
    pub(crate) async fn park_held_from_earlier_boots(&self) -> Result<u64, StoreError> {
        if self.held() == 0 {
            return Ok(0);
        }
        // Without a boot id (`""`), no boot-clock moment can be trusted.
        let earlier = "held_mono IS NOT NULL AND (held_boot IS NOT ?1 OR ?1 = '')";
        let mut tx = super::write::WriteTx::begin(&self.pool()).await?;
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
}
