//! The newest reading of each device, kept in memory as batches are
//! committed: what `/metrics`, the page on the gateway and its API show as
//! the site now, without a query. A device that gave no reading since the
//! daemon started is absent (never zeros).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use crate::reading::Reading;

/// A device of a site.
type SiteDevice = (Arc<str>, String);

/// The newest reading per site and device. Cloning shares the board.
#[derive(Debug, Clone, Default)]
pub struct LatestReadings {
    board: Arc<Mutex<BTreeMap<SiteDevice, Reading>>>,
}

impl LatestReadings {
    /// An empty board.
    pub fn new() -> Self {
        Self::default()
    }

    /// Keeps each device's newest reading of `batch` (a reading older than
    /// the one kept, a replay, does not replace it).
    pub fn record(&self, batch: &[Reading]) {
        let mut board = self.board.lock().unwrap_or_else(PoisonError::into_inner);
        for reading in batch {
            let key = (Arc::clone(&reading.site), reading.device.clone());
            match board.get(&key) {
                Some(kept) if kept.measured_at > reading.measured_at => {}
                _ => {
                    board.insert(key, reading.clone());
                }
            }
        }
    }

    /// Every device's newest reading, by site and device.
    pub fn all(&self) -> Vec<Reading> {
        let board = self.board.lock().unwrap_or_else(PoisonError::into_inner);
        board.values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reading::{ReadingTable, SourceKind, Value};
    use chrono::{TimeZone, Utc};

    fn reading(device: &str, second: u32, soc: f64) -> Reading {
        Reading {
            site: Arc::from("ranch"),
            device: device.into(),
            table: ReadingTable::Battery,
            source: SourceKind::VeDirect,
            measured_at: Utc.with_ymd_and_hms(2026, 12, 7, 10, 0, second).unwrap(),
            unconfirmed: None,
            values: vec![("soc", Value::Float(soc))],
        }
    }

    #[test]
    fn the_newest_reading_of_each_device_is_kept() {
        let board = LatestReadings::new();
        assert!(board.all().is_empty());
        board.record(&[reading("bank", 1, 80.0), reading("bank", 2, 81.0)]);
        board.record(&[reading("spare", 1, 50.0), reading("bank", 0, 10.0)]);
        let all = board.all();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].device, "bank");
        assert_eq!(all[0].float("soc"), Some(81.0));
        assert_eq!(all[1].float("soc"), Some(50.0));
    }
}
