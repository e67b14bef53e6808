//! The series the page and the API draw: the site's power flow and SOC per
//! 5-minute bucket (from the rollups, the open buckets from the raw
//! readings), one metric of one device over any range at the step the range
//! calls for, and the days of energy. A bucket without data is a gap
//! (`None`), never a line across it.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use chrono_tz::Tz;
use serde::Serialize;

use crate::history::aggregate::Rollup;
use crate::history::flow::{self, Flow};
use crate::history::read::{Archive, ReadError};
use crate::history::{DayEnergy, Resolution};
use crate::reading::{Reading, Value};

/// The farthest back the open buckets are computed from the raw readings
/// (the live rollups close a bucket within minutes; a daemon that has not
/// rolled up yet shows its last hour).
const RAW_TAIL: Duration = Duration::hours(1);

/// The length of a 5-minute bucket.
fn five_minutes() -> Duration {
    Duration::minutes(5)
}

/// One point of a series; `None`: no data (a gap).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Point<T> {
    /// The bucket's start, or the reading's time.
    pub(crate) at: DateTime<Utc>,
    /// The value.
    pub(crate) value: Option<T>,
}

/// How the record is read: where, and the site's local days.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Reader<'a> {
    pub(crate) archive: &'a Archive,
    /// Each configured device's site.
    pub(crate) device_sites: &'a std::collections::HashMap<String, String>,
    pub(crate) tz: Tz,
    pub(crate) max_gap_s: f64,
}

impl<'a> Reader<'a> {
    /// The configured devices of `site`.
    fn devices_of(&self, site: &str) -> Vec<&'a str> {
        let mut devices: Vec<&str> = self
            .device_sites
            .iter()
            .filter(|(_, s)| *s == site)
            .map(|(d, _)| d.as_str())
            .collect();
        devices.sort_unstable();
        devices
    }

    /// The rollups of `metrics` in `range` at `resolution`, with the open
    /// buckets after the last rolled one computed from the raw readings.
    async fn buckets(
        &self,
        resolution: Resolution,
        site: &str,
        device: Option<&str>,
        metrics: &[&str],
        (from, to): (DateTime<Utc>, DateTime<Utc>),
    ) -> Result<Vec<Rollup>, ReadError> {
        let devices = match device {
            Some(device) => vec![device],
            None => self.devices_of(site),
        };
        let mut rollups = self
            .archive
            .rollups(resolution, site, &devices, metrics, (from, to))
            .await?;
        let rolled_through = rollups
            .iter()
            .map(|r| r.bucket + bucket_length(resolution))
            .max();
        let tail_from = rolled_through.unwrap_or(from).max(from).max(to - RAW_TAIL);
        if tail_from < to {
            let open = self
                .archive
                .open_buckets(resolution, site, (tail_from, to), (self.tz, self.max_gap_s))
                .await?;
            rollups.extend(open.into_iter().filter(|r| {
                r.bucket >= tail_from
                    && device.is_none_or(|d| r.device == d)
                    && (metrics.is_empty() || metrics.contains(&r.metric))
            }));
        }
        Ok(rollups)
    }

    /// `site`'s last `days` local days of energy, today included.
    pub(crate) async fn days(
        &self,
        site: &str,
        days: i64,
        now: DateTime<Utc>,
    ) -> Result<Vec<DayEnergy>, ReadError> {
        let today = crate::history::buckets::local_day(now, self.tz);
        let first = today - Duration::days(days - 1);
        self.archive.days(Some(site), first).await
    }

    /// The site's flow per 5-minute bucket over `range`.
    pub(crate) async fn flow(
        &self,
        site: &str,
        (from, to): (DateTime<Utc>, DateTime<Utc>),
    ) -> Result<Vec<Point<Flow>>, ReadError> {
        let start = Resolution::FiveMinutes.bucket(from, self.tz);
        let rollups = self
            .buckets(
                Resolution::FiveMinutes,
                site,
                None,
                &flow::metrics(),
                (start, to),
            )
            .await?;
        // Each device's means in each bucket, as a reading: the flow of
        // means is the mean flow (every part of it is a sum).
        let mut buckets: BTreeMap<DateTime<Utc>, BTreeMap<&str, Reading>> = BTreeMap::new();
        for r in &rollups {
            if r.mean.is_nan() {
                continue;
            }
            let reading = buckets
                .entry(r.bucket)
                .or_default()
                .entry(&r.device)
                .or_insert_with(|| Reading {
                    site: r.site.clone(),
                    device: r.device.clone(),
                    table: r.table,
                    source: crate::reading::SourceKind::Modbus,
                    measured_at: r.bucket,
                    unconfirmed: None,
                    values: Vec::new(),
                });
            reading.values.retain(|(c, _)| *c != r.metric);
            reading.values.push((r.metric, Value::Float(r.mean)));
        }
        let mut points = Vec::new();
        let mut at = start;
        while at < to {
            let value = buckets.get(&at).map(|devices| Flow::of(devices.values()));
            points.push(Point { at, value });
            at += five_minutes();
        }
        Ok(points)
    }

    /// One metric of one device over `range`, at `step` (see [`Step`]).
    pub(crate) async fn metric(
        &self,
        site: &str,
        device: &str,
        metric: &str,
        (from, to): (DateTime<Utc>, DateTime<Utc>),
        step: Step,
    ) -> Result<Vec<Point<f64>>, ReadError> {
        let resolution = match step {
            Step::Raw => {
                let rows = self.archive.raw(site, device, metric, (from, to)).await?;
                return Ok(with_gaps(rows, self.max_gap_s));
            }
            Step::FiveMinutes => Resolution::FiveMinutes,
            Step::Hour => Resolution::Hour,
            Step::Day => Resolution::Day,
        };
        let start = resolution.bucket(from, self.tz);
        let rollups = self
            .buckets(resolution, site, Some(device), &[metric], (start, to))
            .await?;
        let means: BTreeMap<DateTime<Utc>, f64> = rollups
            .iter()
            .filter(|r| !r.mean.is_nan())
            .map(|r| (r.bucket, r.mean))
            .collect();
        let mut points = Vec::new();
        let mut at = start;
        while at < to {
            points.push(Point {
                at,
                value: means.get(&at).copied(),
            });
            at = match resolution {
                // A local day is 23 to 25 hours: 26 hours on is the next one.
                Resolution::Day => resolution.bucket(at + Duration::hours(26), self.tz),
                _ => at + bucket_length(resolution),
            };
        }
        Ok(points)
    }
}

/// The nominal length of a bucket (a local day may be 23 or 25 hours).
fn bucket_length(resolution: Resolution) -> Duration {
    match resolution {
        Resolution::FiveMinutes => five_minutes(),
        Resolution::Hour => Duration::hours(1),
        Resolution::Day => Duration::days(1),
    }
}

/// Raw points with a gap (a `None` point) wherever two readings are further
/// apart than the history's `max_gap_s`: what the energy does not bridge,
/// a chart does not either.
fn with_gaps(rows: Vec<(DateTime<Utc>, f64)>, max_gap_s: f64) -> Vec<Point<f64>> {
    let mut points: Vec<Point<f64>> = Vec::with_capacity(rows.len());
    let mut last: Option<DateTime<Utc>> = None;
    for (at, value) in rows {
        if let Some(last) = last
            && crate::clock::seconds_between(last, at) > max_gap_s
        {
            points.push(Point {
                at: last + Duration::milliseconds(1),
                value: None,
            });
        }
        points.push(Point {
            at,
            value: Some(value),
        });
        last = Some(at);
    }
    points
}

/// The step of a metric's series.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Step {
    /// Every reading.
    Raw,
    /// 5-minute means.
    #[serde(rename = "5m")]
    FiveMinutes,
    /// Hourly means.
    #[serde(rename = "1h")]
    Hour,
    /// Daily means (local days).
    #[serde(rename = "1d")]
    Day,
}

impl Step {
    /// The step a range calls for: raw up to 3 hours, 5-minute means up to
    /// 2 days, hourly up to 60 days, daily beyond (at most about 1,500
    /// bucketed points; raw, as many as the device polled).
    pub(crate) fn for_range(from: DateTime<Utc>, to: DateTime<Utc>) -> Self {
        let span = to - from;
        if span <= Duration::hours(3) {
            Self::Raw
        } else if span <= Duration::days(2) {
            Self::FiveMinutes
        } else if span <= Duration::days(60) {
            Self::Hour
        } else {
            Self::Day
        }
    }

    /// A bucket's nominal length; `None` for raw.
    pub(crate) fn length(self) -> Option<Duration> {
        match self {
            Self::Raw => None,
            Self::FiveMinutes => Some(five_minutes()),
            Self::Hour => Some(Duration::hours(1)),
            Self::Day => Some(Duration::days(1)),
        }
    }

    /// `raw`, `5m`, `1h` or `1d`.
    pub(crate) fn parse(text: &str) -> Option<Self> {
        match text {
            "raw" => Some(Self::Raw),
            "5m" => Some(Self::FiveMinutes),
            "1h" => Some(Self::Hour),
            "1d" => Some(Self::Day),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn the_step_follows_the_range() {
        let t = Utc.with_ymd_and_hms(2026, 12, 7, 0, 0, 0).unwrap();
        assert_eq!(Step::for_range(t, t + Duration::hours(3)), Step::Raw);
        assert_eq!(
            Step::for_range(t, t + Duration::hours(24)),
            Step::FiveMinutes
        );
        assert_eq!(Step::for_range(t, t + Duration::days(30)), Step::Hour);
        assert_eq!(Step::for_range(t, t + Duration::days(365)), Step::Day);
    }

    #[test]
    fn a_gap_longer_than_the_bridged_one_is_a_gap_in_the_series() {
        let t = Utc.with_ymd_and_hms(2026, 12, 7, 0, 0, 0).unwrap();
        let rows = vec![
            (t, 1.0),
            (t + Duration::seconds(1), 2.0),
            (t + Duration::seconds(400), 3.0),
        ];
        let points = with_gaps(rows, 300.0);
        let values: Vec<Option<f64>> = points.iter().map(|p| p.value).collect();
        assert_eq!(values, [Some(1.0), Some(2.0), None, Some(3.0)]);
    }
}
