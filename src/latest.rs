//! The newest readings of each device, kept in memory as batches are
//! committed: what `/metrics`, the page on the gateway and its API show as
//! the site now, without a query, and the last few of each device for
//! `watch` (a batch holds several polls of a device). A device that gave no
//! reading since the daemon started is absent (never zeros).

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

use crate::reading::Reading;

/// A device of a site.
type SiteDevice = (Arc<str>, String);

/// How many of each device's newest readings are kept: several batches of
/// polls at 5 per second (a few hundred kilobytes for a site of 5 devices).
pub const KEPT_PER_DEVICE: usize = 32;

/// The newest readings per site and device. Cloning shares the board.
#[derive(Debug, Clone, Default)]
pub struct LatestReadings {
    board: Arc<Mutex<BTreeMap<SiteDevice, VecDeque<Reading>>>>,
}

impl LatestReadings {
    /// An empty board.
    pub fn new() -> Self {
        Self::default()
    }

    /// Keeps each device's newest readings of `batch` (a reading older
    /// than those kept, a replay, is not kept).
    pub fn record(&self, batch: &[Reading]) {
        let mut board = self.board.lock().unwrap_or_else(PoisonError::into_inner);
        for reading in batch {
            let key = (Arc::clone(&reading.site), reading.device.clone());
            let kept = board.entry(key).or_default();
            if kept
                .back()
                .is_some_and(|last| last.measured_at >= reading.measured_at)
            {
                continue;
            }
            if kept.len() == KEPT_PER_DEVICE {
                kept.pop_front();
            }
            kept.push_back(reading.clone());
        }
    }

    /// Every device's newest reading, by site and device.
    pub fn all(&self) -> Vec<Reading> {
        let board = self.board.lock().unwrap_or_else(PoisonError::into_inner);
        board
            .values()
            .filter_map(|kept| kept.back().cloned())
            .collect()
    }

    /// The kept readings measured after `after`, in time order.
    pub fn after(&self, after: chrono::DateTime<chrono::Utc>) -> Vec<Reading> {
        let board = self.board.lock().unwrap_or_else(PoisonError::into_inner);
        let mut found: Vec<Reading> = board
            .values()
            .flat_map(|kept| kept.iter().filter(|r| r.measured_at > after).cloned())
            .collect();
        found.sort_by_key(|r| r.measured_at);
        found
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
        // Every kept reading after a time, in time order.
        let after = board.after(Utc.with_ymd_and_hms(2026, 12, 7, 10, 0, 0).unwrap());
        let seen: Vec<(&str, Option<f64>)> = after
            .iter()
            .map(|r| (r.device.as_str(), r.float("soc")))
            .collect();
        assert_eq!(
            seen,
            [
                ("bank", Some(80.0)),
                ("spare", Some(50.0)),
                ("bank", Some(81.0))
            ]
        );
    }

    #[test]
    fn a_device_keeps_its_last_readings_only() {
        let board = LatestReadings::new();
        let many: Vec<Reading> = (0..50).map(|s| reading("bank", s, f64::from(s))).collect();
        board.record(&many);
        let kept = board.after(Utc.with_ymd_and_hms(2026, 12, 7, 9, 0, 0).unwrap());
        assert_eq!(kept.len(), KEPT_PER_DEVICE);
        assert_eq!(
            kept[0].float("soc"),
            Some(f64::from(50 - KEPT_PER_DEVICE as u32))
        );
    }
}
