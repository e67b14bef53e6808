//! The one aggregator: readings in, rollup rows and daily energy out. It is
//! fed each device's readings in time order (a rebuild reads them so from
//! the database), keeps one open bucket per device and resolution, and
//! integrates the measured powers between consecutive readings of a device
//! (trapezoids; an interval longer than `max_gap` is not bridged and lowers
//! the day's coverage; an interval across local midnight is split there).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use chrono::{DateTime, NaiveDate, Utc};
use chrono_tz::Tz;

use super::buckets::{Resolution, day_end, day_start, local_day};
pub(crate) use super::energy::DayEnergy;
use super::energy::{DeviceDay, Powers, combine};
use crate::clock::seconds_between;
use crate::reading::{ColumnKind, Reading, ReadingTable, Value};

/// One bucket of one metric of one device.
#[derive(Debug, Clone, PartialEq)]
pub struct Rollup {
    /// The site (`installation_id`).
    pub(crate) site: Arc<str>,
    /// The device.
    pub device: String,
    /// Its reading table.
    pub(crate) table: ReadingTable,
    /// The column.
    pub metric: &'static str,
    /// Which table of rollups.
    pub(crate) resolution: Resolution,
    /// The bucket's start.
    pub(crate) bucket: DateTime<Utc>,
    /// Readings in the bucket with a value.
    pub samples: i64,
    /// Their smallest value.
    pub(crate) min: f64,
    /// Their largest value.
    pub(crate) max: f64,
    /// Their mean.
    pub mean: f64,
    /// The latest value.
    pub(crate) last: f64,
}

/// Statistics of one metric in an open bucket.
#[derive(Debug, Clone, Copy)]
struct Stats {
    samples: i64,
    min: f64,
    max: f64,
    sum: f64,
    last: f64,
}

impl Stats {
    fn new(value: f64) -> Self {
        Self {
            samples: 1,
            min: value,
            max: value,
            sum: value,
            last: value,
        }
    }

    fn add(&mut self, value: f64) {
        self.samples += 1;
        self.min = self.min.min(value);
        self.max = self.max.max(value);
        self.sum += value;
        self.last = value;
    }
}

/// An open bucket of one device: per numeric column of its table.
#[derive(Debug, Clone)]
struct Open {
    start: DateTime<Utc>,
    stats: Vec<Option<Stats>>,
}

/// One device's state.
#[derive(Debug)]
struct Series {
    open: [Option<Open>; 3],
    last: Option<(DateTime<Utc>, Powers)>,
}

/// The aggregator. See the module doc.
#[derive(Debug)]
pub struct Aggregator {
    tz: Tz,
    max_gap_s: f64,
    window: Option<(DateTime<Utc>, DateTime<Utc>)>,
    series: HashMap<(Arc<str>, String, ReadingTable), Series>,
    rollups: Vec<Rollup>,
    days: BTreeMap<(Arc<str>, NaiveDate), BTreeMap<String, DeviceDay>>,
}

impl Aggregator {
    /// An aggregator for local days of `tz`, bridging intervals up to
    /// `max_gap_s` seconds.
    pub(crate) fn new(tz: Tz, max_gap_s: f64) -> Self {
        Self {
            tz,
            max_gap_s,
            window: None,
            series: HashMap::new(),
            rollups: Vec::new(),
            days: BTreeMap::new(),
        }
    }

    /// Counts only what falls in `[from, to)`: readings outside it only
    /// bound the intervals that reach into it.
    pub(crate) fn within(mut self, from: DateTime<Utc>, to: DateTime<Utc>) -> Self {
        self.window = Some((from, to));
        self
    }

    fn inside(&self, at: DateTime<Utc>) -> bool {
        self.window.is_none_or(|(from, to)| from <= at && at < to)
    }

    /// Takes the next reading of its device (in time order per device;
    /// a reading not later than the device's last is ignored).
    pub(crate) fn push(&mut self, reading: &Reading) {
        let at = reading.measured_at;
        let powers = Powers::of(reading);
        let inside = self.inside(at);
        let key = (
            Arc::clone(&reading.site),
            reading.device.clone(),
            reading.table,
        );
        let series = self.series.entry(key).or_insert_with(|| Series {
            open: [None, None, None],
            last: None,
        });
        if series.last.is_some_and(|(last, _)| at <= last) {
            return;
        }
        let previous = series.last.replace((at, powers));
        if inside {
            add_to_buckets(series, &mut self.rollups, self.tz, reading);
        }
        if let Some((from, before)) = previous {
            let gap = (at - from).num_microseconds().unwrap_or(i64::MAX) as f64 / 1e6;
            if gap <= self.max_gap_s {
                self.integrate(reading, from, before, at, powers);
            }
        }
        if let (true, Some(soc)) = (inside, powers.soc) {
            let day = local_day(at, self.tz);
            self.device_day(reading, day).soc(soc);
        }
    }

    /// The energy between two readings of a device, split at local
    /// midnights, into the days it falls on.
    fn integrate(
        &mut self,
        reading: &Reading,
        from: DateTime<Utc>,
        before: Powers,
        to: DateTime<Utc>,
        after: Powers,
    ) {
        let mut start = from;
        while start < to {
            let day = local_day(start, self.tz);
            let end = day_end(day, self.tz).min(to);
            let (lo, hi) = match self.window {
                Some((w_from, w_to)) => (start.max(w_from), end.min(w_to)),
                None => (start, end),
            };
            if lo < hi {
                let span = (to - from).num_microseconds().unwrap_or(1).max(1) as f64;
                let at =
                    |t: DateTime<Utc>| (t - from).num_microseconds().unwrap_or(0) as f64 / span;
                let (a, b) = (
                    before.at_fraction(after, at(lo)),
                    before.at_fraction(after, at(hi)),
                );
                let seconds = (hi - lo).num_microseconds().unwrap_or(0) as f64 / 1e6;
                self.device_day(reading, day).add_interval(a, b, seconds);
            }
            if end <= start {
                break;
            }
            start = end;
        }
    }

    fn device_day(&mut self, reading: &Reading, day: NaiveDate) -> &mut DeviceDay {
        self.days
            .entry((Arc::clone(&reading.site), day))
            .or_default()
            .entry(reading.device.clone())
            .or_insert_with(|| DeviceDay::new(reading.table))
    }

    /// The buckets closed since the last call, final: a device's bucket
    /// closes at its first reading of a later bucket, or when everything
    /// measured before `through` has been fed and the bucket ends by then.
    pub(crate) fn take_closed(&mut self, through: DateTime<Utc>) -> Vec<Rollup> {
        for ((site, device, table), series) in &mut self.series {
            for (index, slot) in series.open.iter_mut().enumerate() {
                let resolution = Resolution::ALL[index];
                let current = resolution.bucket(through, self.tz);
                if let Some(closed) = slot.take_if(|open| open.start < current) {
                    emit(&mut self.rollups, site, device, *table, resolution, closed);
                }
            }
        }
        std::mem::take(&mut self.rollups)
    }

    /// What the buckets still open and the days so far hold, as of
    /// `through` (the days' coverage is of their part before it): what a
    /// reader sees of the current hour and day until they close.
    pub(crate) fn provisional(&self, through: DateTime<Utc>) -> (Vec<Rollup>, Vec<DayEnergy>) {
        let mut rollups = Vec::new();
        for ((site, device, table), series) in &self.series {
            for (index, open) in series.open.iter().enumerate() {
                if let Some(open) = open {
                    emit(
                        &mut rollups,
                        site,
                        device,
                        *table,
                        Resolution::ALL[index],
                        open.clone(),
                    );
                }
            }
        }
        let tz = self.tz;
        let days = self
            .days
            .iter()
            .map(|((site, day), devices)| {
                let (start, end) = (day_start(*day, tz), day_end(*day, tz).min(through));
                let seconds = seconds_between(start, end).max(0.001);
                combine(site, *day, seconds, devices)
            })
            .collect();
        (rollups, days)
    }

    /// Every rollup and every day's energy.
    pub(crate) fn finish(mut self) -> (Vec<Rollup>, Vec<DayEnergy>) {
        for ((site, device, table), series) in std::mem::take(&mut self.series) {
            for (index, open) in series.open.into_iter().enumerate() {
                if let Some(open) = open {
                    emit(
                        &mut self.rollups,
                        &site,
                        &device,
                        table,
                        Resolution::ALL[index],
                        open,
                    );
                }
            }
        }
        let tz = self.tz;
        let days = self
            .days
            .into_iter()
            .map(|((site, day), devices)| {
                let seconds = (day_end(day, tz) - day_start(day, tz)).num_seconds() as f64;
                combine(&site, day, seconds, &devices)
            })
            .collect();
        (self.rollups, days)
    }
}

/// Adds a reading's numeric values to its device's open buckets, emitting
/// the buckets it has left.
fn add_to_buckets(series: &mut Series, rollups: &mut Vec<Rollup>, tz: Tz, reading: &Reading) {
    let columns = reading.table.columns();
    let numbers: Vec<(usize, f64)> = reading
        .values
        .iter()
        .filter_map(|(column, value)| {
            let number = match value {
                Value::Float(v) => *v,
                Value::Int(v) => *v as f64,
                Value::Text(_) => return None,
            };
            let i = columns
                .iter()
                .position(|(c, k)| c == column && *k != ColumnKind::Text)?;
            Some((i, number))
        })
        .collect();
    for (index, resolution) in Resolution::ALL.into_iter().enumerate() {
        let start = resolution.bucket(reading.measured_at, tz);
        let slot = &mut series.open[index];
        if let Some(closed) = slot.take_if(|open| open.start != start) {
            emit(
                rollups,
                &reading.site,
                &reading.device,
                reading.table,
                resolution,
                closed,
            );
        }
        let open = slot.get_or_insert_with(|| Open {
            start,
            stats: vec![None; columns.len()],
        });
        for &(i, number) in &numbers {
            match &mut open.stats[i] {
                Some(stats) => stats.add(number),
                slot @ None => *slot = Some(Stats::new(number)),
            }
        }
    }
}

fn emit(
    rollups: &mut Vec<Rollup>,
    site: &Arc<str>,
    device: &str,
    table: ReadingTable,
    resolution: Resolution,
    open: Open,
) {
    let columns = table.columns();
    for (i, stats) in open.stats.into_iter().enumerate() {
        let Some(stats) = stats else { continue };
        rollups.push(Rollup {
            site: Arc::clone(site),
            device: device.to_string(),
            table,
            metric: columns[i].0,
            resolution,
            bucket: open.start,
            samples: stats.samples,
            min: stats.min,
            max: stats.max,
            mean: stats.sum / stats.samples as f64,
            last: stats.last,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Duration, TimeZone};

    /// One reading of `table` for `device` at `at` with `values`.
    fn reading(
        device: &str,
        table: ReadingTable,
        at: DateTime<Utc>,
        values: &[(&'static str, f64)],
    ) -> Reading {
        Reading {
            site: Arc::from("ranch"),
            device: device.into(),
            table,
            source: SourceKind::VeDirect,
            measured_at: at,
            unconfirmed: None,
            values: values.iter().map(|(c, v)| (*c, Value::Float(*v))).collect(),
        }
    }

    use crate::reading::SourceKind;

    /// The synthetic day of a site without a GX: PV 1 kW from 06:00 to
    /// 18:00 local, 500 W of loads all day, the battery taking the
    /// difference; a reading every 10 s, `hole` seconds missing at noon.
    fn synthetic_day(tz: Tz, day: NaiveDate, hole_s: i64) -> (Vec<Rollup>, Vec<DayEnergy>) {
        let start = day_start(day, tz);
        let end = day_end(day, tz);
        let mut aggregator = Aggregator::new(tz, 60.0);
        let mut at = start;
        let noon = start + Duration::hours(12);
        while at < end {
            if at >= noon && at < noon + Duration::seconds(hole_s) {
                at += Duration::seconds(10);
                continue;
            }
            let local = at.with_timezone(&tz).time();
            let sunny = local >= chrono::NaiveTime::from_hms_opt(6, 0, 0).unwrap()
                && local < chrono::NaiveTime::from_hms_opt(18, 0, 0).unwrap();
            let pv = if sunny { 1000.0 } else { 0.0 };
            aggregator.push(&reading(
                "mppt",
                ReadingTable::Solar,
                at,
                &[("pv_power", pv)],
            ));
            aggregator.push(&reading(
                "bank",
                ReadingTable::Battery,
                at,
                &[
                    ("power", pv - 500.0),
                    ("soc", if sunny { 90.0 } else { 60.0 }),
                ],
            ));
            at += Duration::seconds(10);
        }
        aggregator.finish()
    }

    #[test]
    fn a_synthetic_day_integrates_to_its_energies() {
        let day = NaiveDate::from_ymd_opt(2026, 6, 1).unwrap();
        let (_, days) = synthetic_day(chrono_tz::UTC, day, 0);
        assert_eq!(days.len(), 1);
        let d = &days[0];
        let near = |v: Option<f64>, want: f64| (v.unwrap() - want).abs() / want < 0.005;
        assert!(near(d.solar_kwh, 12.0), "{d:?}");
        assert!(near(d.consumption_kwh, 12.0), "{d:?}");
        assert!(near(d.battery_charge_kwh, 6.0), "{d:?}");
        assert!(near(d.battery_discharge_kwh, 6.0), "{d:?}");
        assert_eq!((d.min_soc, d.max_soc), (Some(60.0), Some(90.0)));
        // The last 10 s of the day have no closing reading.
        assert!(d.coverage_pct > 99.9, "{d:?}");
        assert_eq!(d.grid_import_kwh, None);
    }

    #[test]
    fn a_hole_is_not_bridged_and_lowers_coverage() {
        let day = NaiveDate::from_ymd_opt(2026, 6, 1).unwrap();
        let (_, days) = synthetic_day(chrono_tz::UTC, day, 1800);
        let d = &days[0];
        // 30 minutes of 24 hours missing: 97.9 %; half an hour of PV too.
        assert!((d.coverage_pct - 97.9).abs() < 0.05, "{d:?}");
        assert!((d.solar_kwh.unwrap() - 11.5).abs() < 0.06, "{d:?}");
    }

    #[test]
    fn dst_days_have_23_or_25_hourly_buckets() {
        for (tz, day, hours) in [
            (chrono_tz::Europe::Berlin, (2026, 3, 29), 23),
            (chrono_tz::America::Denver, (2026, 11, 1), 25),
        ] {
            let day = NaiveDate::from_ymd_opt(day.0, day.1, day.2).unwrap();
            let (rollups, days) = synthetic_day(tz, day, 0);
            let hourly = rollups
                .iter()
                .filter(|r| r.resolution == Resolution::Hour && r.device == "mppt")
                .count();
            assert_eq!(hourly, hours, "{tz}");
            let daily: Vec<_> = rollups
                .iter()
                .filter(|r| r.resolution == Resolution::Day && r.device == "mppt")
                .collect();
            assert_eq!(daily.len(), 1);
            assert_eq!(daily[0].bucket, day_start(day, tz));
            assert!(
                (days[0].solar_kwh.unwrap() - 12.0).abs() < 0.06,
                "{tz} {:?}",
                days[0]
            );
        }
    }

    #[test]
    fn rollups_carry_min_max_mean_last() {
        let tz = chrono_tz::UTC;
        let at = Utc.with_ymd_and_hms(2026, 6, 1, 10, 0, 0).unwrap();
        let mut aggregator = Aggregator::new(tz, 60.0);
        for (i, v) in [10.0, 30.0, 20.0].into_iter().enumerate() {
            let t = at + Duration::seconds(60 * i as i64);
            aggregator.push(&reading(
                "bank",
                ReadingTable::Battery,
                t,
                &[("voltage", v)],
            ));
        }
        let (rollups, _) = aggregator.finish();
        let five = rollups
            .iter()
            .find(|r| r.resolution == Resolution::FiveMinutes && r.metric == "voltage")
            .unwrap();
        assert_eq!(
            (five.samples, five.min, five.max, five.last),
            (3, 10.0, 30.0, 20.0)
        );
        assert!((five.mean - 20.0).abs() < 1e-12);
        assert_eq!(five.bucket, at);
    }
}
