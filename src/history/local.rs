//! Daily energy without a database, for `victron-poller energy` on an
//! embedded gateway: the days the local store keeps (written by the live
//! rollups, kept for `history.keep_1d_days`), and for any day its raw
//! readings (the retention window) cover that the store holds no complete
//! day of, the readings through the aggregator.

use std::collections::BTreeMap;

use chrono_tz::Tz;

use super::aggregate::{Aggregator, DayEnergy};
use crate::store::{LocalStore, StoreError};

/// Every local day of energy the store knows, oldest first.
pub async fn energy(
    store: &LocalStore,
    tz: Tz,
    max_gap_s: f64,
) -> Result<Vec<DayEnergy>, StoreError> {
    let mut days: BTreeMap<_, (DayEnergy, bool)> = BTreeMap::new();
    for kept in store.energy_days().await? {
        let complete = kept.is_complete(tz);
        let key = (kept.energy.day, kept.energy.site.clone());
        days.insert(key, (kept.energy, complete));
    }
    for computed in from_readings(store, tz, max_gap_s).await? {
        let key = (computed.day, computed.site.clone());
        match days.get(&key) {
            // A day kept whole is what its readings gave before any of
            // them expired.
            Some((_, true)) => {}
            _ => {
                days.insert(key, (computed, false));
            }
        }
    }
    Ok(days.into_values().map(|(day, _)| day).collect())
}

/// The days the store's confirmed readings give (read in time order, an
/// hour at a time).
async fn from_readings(
    store: &LocalStore,
    tz: Tz,
    max_gap_s: f64,
) -> Result<Vec<DayEnergy>, StoreError> {
    let mut aggregator = Aggregator::new(tz, max_gap_s);
    let (Some(oldest), Some(newest)) = (
        store.oldest_confirmed().await?,
        store.newest_confirmed().await?,
    ) else {
        return Ok(Vec::new());
    };
    let mut from = oldest;
    while from <= newest {
        let to = from + chrono::Duration::hours(1);
        for row in store.readings_between(from, to).await? {
            aggregator.push(&row.reading);
        }
        from = to;
    }
    Ok(aggregator.finish().1)
}
