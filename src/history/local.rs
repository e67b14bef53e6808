//! Daily energy without a database: the local store's readings (what the
//! store keeps: the retention window) through the aggregator, for
//! `victron-poller energy` on an embedded gateway.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;

use super::aggregate::{Aggregator, DayEnergy};
use crate::store::{LocalStore, StoreError};

/// Readings per page read from the store.
const PAGE: i64 = 20_000;

/// Every local day of energy the store's readings give.
pub async fn energy(
    store: &LocalStore,
    tz: Tz,
    max_gap_s: f64,
) -> Result<Vec<DayEnergy>, StoreError> {
    let mut aggregator = Aggregator::new(tz, max_gap_s);
    for (table, device) in store.series().await? {
        let mut after = DateTime::<Utc>::MIN_UTC;
        loop {
            let page = store.series_after(table, &device, after, PAGE).await?;
            for row in &page {
                aggregator.push(&row.reading);
            }
            match page.last() {
                Some(last) if page.len() as i64 == PAGE => after = last.reading.measured_at,
                _ => break,
            }
        }
    }
    Ok(aggregator.finish().1)
}
