//! Daily energy without a database, for `victron-poller energy` on an
//! embedded gateway: the days the local store keeps (written by the live
//! rollups, kept for `history.keep_1d_days`), and for any day its raw
//! readings (the retention window) cover that the store holds no complete
//! day of, the readings through the aggregator.

use std::collections::BTreeMap;

use chrono_tz::Tz;

use super::aggregate::{Aggregator, DayEnergy};
use crate::store::{StoreError, StoreReader};

/// Every local day of energy the store knows, oldest first.
pub(crate) async fn energy(
    store: &StoreReader,
    tz: Tz,
    max_gap_s: f64,
) -> Result<Vec<DayEnergy>, StoreError> {
    let mut days: BTreeMap<_, (DayEnergy, bool)> = BTreeMap::new();
    for kept in super::sqlite::StoredRollups(store.clone())
        .energy_days()
        .await?
    {
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
    store: &StoreReader,
    tz: Tz,
    max_gap_s: f64,
) -> Result<Vec<DayEnergy>, StoreError> {
    let mut aggregator = Aggregator::new(tz, max_gap_s);
    // An hour at a time, skipping to the next reading over any gap (a
    // stray time years away costs one query, not one per hour between).
    let mut next = store.oldest_confirmed().await?;
    while let Some(from) = next {
        let Some(to) = from.checked_add_signed(chrono::Duration::hours(1)) else {
            break;
        };
        for row in store.readings_between(from, to).await? {
            aggregator.push(&row.reading);
        }
        next = store.next_confirmed(to).await?;
    }
    Ok(aggregator.finish().1)
}
