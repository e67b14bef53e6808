//! The `/metrics` page of a [`Snapshot`] ([`page`]), and the writer of the
//! Prometheus text exposition format (version 0.0.4) it uses: one `# HELP`
//! and `# TYPE` line per family, then its samples, label values escaped.
//! Small enough to own; the integration tests check the output with
//! Prometheus's own Python parser.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};

use super::Snapshot;
use super::health::{Health, Level};
use crate::clock::{Basis, seconds_between};

/// The kind of a metric family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Only goes up (resets when the daemon restarts).
    Counter,
    /// Any value.
    Gauge,
}

/// A metrics page being written.
#[derive(Debug, Default)]
pub(crate) struct MetricsText {
    text: String,
}

impl MetricsText {
    /// An empty page.
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Starts a family: its help text and kind. Counter names end in `_total`.
    pub(crate) fn family(&mut self, name: &str, kind: Kind, help: &str) -> &mut Self {
        let kind = match kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        };
        let help = help.replace('\\', r"\\").replace('\n', r"\n");
        let _ = writeln!(self.text, "# HELP {name} {help}");
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
        self
    }

    /// One sample of the current family.
    pub(crate) fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) -> &mut Self {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (label, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                let _ = write!(self.text, "{label}=\"{}\"", escape_label(value));
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {}", number(value));
        self
    }

    /// The finished page.
    pub(crate) fn finish(self) -> String {
        self.text
    }
}

fn escape_label(value: &str) -> String {
    value
        .replace('\\', r"\\")
        .replace('"', "\\\"")
        .replace('\n', r"\n")
}

fn number(value: f64) -> String {
    if value.is_nan() {
        "NaN".into()
    } else if value.is_infinite() {
        if value > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{value}")
    }
}

/// The `/metrics` page of a snapshot and its verdict, as of `now`.
pub(crate) fn page(snapshot: &Snapshot, health: &Health, now: DateTime<Utc>) -> String {
    let devices = &snapshot.devices;
    let count = |n: u64| n as f64;
    let mut page = MetricsText::new();

    page.family(
        "victron_poller_info",
        Kind::Gauge,
        "The daemon's version and host (always 1).",
    )
    .sample(
        "victron_poller_info",
        &[("version", &snapshot.version), ("host", &snapshot.host)],
        1.0,
    );
    page.family(
        "victron_poller_health",
        Kind::Gauge,
        "The health verdict: 0 healthy, 1 degraded, 2 down (as `status` exits).",
    )
    .sample(
        "victron_poller_health",
        &[],
        match health.level {
            Level::Healthy => 0.0,
            Level::Degraded => 1.0,
            Level::Down => 2.0,
        },
    );

    type DeviceValue = fn(&crate::status::DeviceStatus) -> Option<f64>;
    let per_device: [(&str, Kind, &str, DeviceValue); 7] = [
        (
            "victron_poller_polls_total",
            Kind::Counter,
            "Polls of a device since start (successful or not).",
            |d| Some(d.polls as f64),
        ),
        (
            "victron_poller_poll_failures_total",
            Kind::Counter,
            "Failed polls of a device since start.",
            |d| Some(d.failures as f64),
        ),
        (
            "victron_poller_consecutive_failures",
            Kind::Gauge,
            "Failed polls of a device since its last success.",
            |d| Some(f64::from(d.consecutive_failures)),
        ),
        (
            "victron_poller_device_up",
            Kind::Gauge,
            "1 when the device's last poll succeeded, else 0.",
            |d| Some(if d.is_healthy() { 1.0 } else { 0.0 }),
        ),
        (
            "victron_poller_device_standby",
            Kind::Gauge,
            "1 when another daemon holds the device's lock and polls it.",
            |d| Some(if d.standby { 1.0 } else { 0.0 }),
        ),
        (
            "victron_poller_last_success_age_seconds",
            Kind::Gauge,
            "Seconds since the device's last successful poll (absent before the first).",
            |d| d.last_success.map(|t| seconds_between(t, Utc::now())),
        ),
        (
            "victron_poller_vedirect_corrupt_blocks_total",
            Kind::Counter,
            "VE.Direct blocks dropped for a bad checksum.",
            |d| {
                (d.source == crate::reading::SourceKind::VeDirect)
                    .then_some(d.corrupt_blocks as f64)
            },
        ),
    ];
    for (name, kind, help, value) in per_device {
        page.family(name, kind, help);
        for d in devices {
            if let Some(v) = value(d) {
                page.sample(
                    name,
                    &[("device", &d.device), ("source", d.source.as_str())],
                    v,
                );
            }
        }
    }

    let totals: [(&str, Kind, &str, f64); 11] = [
        (
            "victron_poller_store_readings",
            Kind::Gauge,
            "Readings in the local store not yet forwarded (all of them without a database).",
            snapshot.spool_depth as f64,
        ),
        (
            "victron_poller_store_oldest_age_seconds",
            Kind::Gauge,
            "Age of the oldest reading in the local store (0 when empty).",
            snapshot
                .spool_oldest
                .map_or(0.0, |o| seconds_between(o, now)),
        ),
        (
            "victron_poller_rows_stored_total",
            Kind::Counter,
            "Readings committed to the local store.",
            count(snapshot.rows_stored),
        ),
        (
            "victron_poller_rows_forwarded_total",
            Kind::Counter,
            "Readings committed to PostgreSQL.",
            count(snapshot.rows_forwarded),
        ),
        (
            "victron_poller_forward_errors_total",
            Kind::Counter,
            "Failed attempts to forward to PostgreSQL.",
            count(snapshot.forward_errors),
        ),
        (
            "victron_poller_rows_parked_total",
            Kind::Counter,
            "Readings PostgreSQL refused for good, set aside in the local store.",
            count(snapshot.rows_parked),
        ),
        (
            "victron_poller_rows_expired_unforwarded_total",
            Kind::Counter,
            "Readings dropped from the local store before they could be forwarded.",
            count(snapshot.rows_expired_unforwarded),
        ),
        (
            "victron_poller_retention_runs_total",
            Kind::Counter,
            "Retention runs completed (local store and database).",
            count(snapshot.retention_runs),
        ),
        (
            "victron_poller_retention_failures_total",
            Kind::Counter,
            "Retention runs that failed.",
            count(snapshot.retention_failures),
        ),
        (
            "victron_poller_log_lines_dropped_total",
            Kind::Counter,
            "Log lines dropped because whoever reads the daemon's output fell behind.",
            count(snapshot.log_lines_dropped),
        ),
        (
            "victron_poller_start_time_seconds",
            Kind::Gauge,
            "When the daemon started, in seconds since the Unix epoch.",
            snapshot.started_at.timestamp_millis() as f64 / 1000.0,
        ),
    ];
    for (name, kind, help, value) in totals {
        page.family(name, kind, help).sample(name, &[], value);
    }
    // Only with a database: a gauge of something that does not exist would
    // read as "up" (and `up == 0` alerts would never fire for it), so it is
    // absent, as Prometheus exporters leave out what they do not have.
    if snapshot.database.is_some() {
        let name = "victron_poller_database_up";
        page.family(
            name,
            Kind::Gauge,
            "1 when the database is reachable, else 0 (absent without a database).",
        )
        .sample(
            name,
            &[],
            if snapshot.database_down_since.is_some() {
                0.0
            } else {
                1.0
            },
        );
    }
    faults(&mut page, snapshot);
    clock(&mut page, snapshot);
    page.finish()
}

/// The local store's faults and the tasks restarted after a panic.
fn faults(page: &mut MetricsText, snapshot: &Snapshot) {
    let writes = &snapshot.store_writes;
    let restarts: u64 = snapshot.restarts.iter().map(|r| r.panics).sum();
    let families: [(&str, Kind, &str, f64); 5] = [
        (
            "victron_poller_store_writes_failing",
            Kind::Gauge,
            "1 while the local store refuses writes (a full disk), else 0.",
            if writes.failing_since.is_some() {
                1.0
            } else {
                0.0
            },
        ),
        (
            "victron_poller_readings_in_memory",
            Kind::Gauge,
            "Readings waiting in memory for the local store to take writes again.",
            writes.readings_in_memory as f64,
        ),
        (
            "victron_poller_readings_dropped_total",
            Kind::Counter,
            "Readings lost because the local store refused them for too long.",
            writes.readings_dropped as f64,
        ),
        (
            "victron_poller_store_incidents",
            Kind::Gauge,
            "Things that happened to the local store's file lately (damaged and moved aside, deleted).",
            snapshot.store_incidents.len() as f64,
        ),
        (
            "victron_poller_task_panics_recent",
            Kind::Gauge,
            "Panics of the daemon's tasks (each restarted) within the last hour.",
            restarts as f64,
        ),
    ];
    for (name, kind, help, value) in families {
        page.family(name, kind, help).sample(name, &[], value);
    }
}

/// The clock's families: where measurement times come from, the kernel's
/// synchronisation, the offset to each reference, steps, held readings.
fn clock(page: &mut MetricsText, snapshot: &Snapshot) {
    let clock = &snapshot.clock;
    page.family(
        "victron_poller_clock_basis",
        Kind::Gauge,
        "1 for where measurement times come from: local, gx, database, carried (the last trusted offset on the boot clock) or held (readings wait for a clock reference).",
    );
    for basis in [
        Basis::Local,
        Basis::Gx,
        Basis::Database,
        Basis::Carried,
        Basis::Held,
    ] {
        let value = if clock.basis == basis { 1.0 } else { 0.0 };
        page.sample(
            "victron_poller_clock_basis",
            &[("basis", basis.as_str())],
            value,
        );
    }
    if let Some(synchronised) = clock.synchronised {
        page.family(
            "victron_poller_clock_synchronised",
            Kind::Gauge,
            "1 when the kernel says its clock is synchronised (an NTP client steers it), else 0.",
        )
        .sample(
            "victron_poller_clock_synchronised",
            &[],
            if synchronised { 1.0 } else { 0.0 },
        );
    }
    page.family(
        "victron_poller_clock_offset_seconds",
        Kind::Gauge,
        "The local clock minus a reference's clock (positive: the local clock is ahead).",
    );
    for reference in &clock.references {
        page.sample(
            "victron_poller_clock_offset_seconds",
            &[("reference", &reference.name)],
            reference.offset_s,
        );
    }
    page.family(
        "victron_poller_clock_steps_total",
        Kind::Counter,
        "Steps of the local wall clock seen since start.",
    )
    .sample("victron_poller_clock_steps_total", &[], clock.steps as f64);
    page.family(
        "victron_poller_readings_held",
        Kind::Gauge,
        "Readings waiting in the local store for their measurement time to be known.",
    )
    .sample(
        "victron_poller_readings_held",
        &[],
        snapshot.held_readings as f64,
    );
}

/// The devices' newest values as gauges (a device's running total as a
/// counter), named by [`crate::quantity::prometheus_name`] and labelled
/// with the site and device: `victron_battery_soc_percent{site="ranch",device="bank"} 81.5`.
/// A value a device did not give has no sample (never 0); the measurement
/// time of each device is `victron_reading_timestamp_seconds`.
pub(crate) fn values(readings: &[crate::reading::Reading]) -> String {
    use std::collections::BTreeMap;
    /// Whether a counter, its help, and its samples (reading, value).
    type Family = (bool, String, Vec<(usize, f64)>);
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    for (index, reading) in readings.iter().enumerate() {
        for (column, _) in reading.table.columns() {
            let (Some(metric), Some(value)) = (
                crate::quantity::prometheus_name(reading.table, column),
                reading.float(column).filter(|v| v.is_finite()),
            ) else {
                continue;
            };
            let unit =
                crate::quantity::unit_of(reading.table, column).map_or("", |(u, _)| u.symbol());
            let family = families.entry(metric.name).or_insert_with(|| {
                let help = format!(
                    "The newest {column} ({unit}) of each {} device ({}).",
                    crate::quantity::device_kind(reading.table),
                    reading.table.name()
                );
                (metric.counter, help, Vec::new())
            });
            family.2.push((index, value));
        }
    }
    let mut page = MetricsText::new();
    for (name, (counter, help, samples)) in &families {
        let kind = if *counter { Kind::Counter } else { Kind::Gauge };
        page.family(name, kind, help);
        for (index, value) in samples {
            let reading = &readings[*index];
            page.sample(
                name,
                &[("site", &reading.site), ("device", &reading.device)],
                *value,
            );
        }
    }
    if !readings.is_empty() {
        let name = "victron_reading_timestamp_seconds";
        page.family(
            name,
            Kind::Gauge,
            "When each device's newest values were measured (Unix time).",
        );
        for reading in readings {
            page.sample(
                name,
                &[("site", &reading.site), ("device", &reading.device)],
                reading.measured_at.timestamp_micros() as f64 / 1e6,
            );
        }
    }
    page.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_samples_and_escaping() {
        let mut page = MetricsText::new();
        page.family("x_total", Kind::Counter, "Things.\nMore")
            .sample("x_total", &[("device", "a\"b\\c\nd")], 3.0)
            .sample("x_total", &[], 0.5);
        page.family("y", Kind::Gauge, "Y.")
            .sample("y", &[], f64::INFINITY);
        assert_eq!(
            page.finish(),
            "# HELP x_total Things.\\nMore\n# TYPE x_total counter\n\
             x_total{device=\"a\\\"b\\\\c\\nd\"} 3\nx_total 0.5\n\
             # HELP y Y.\n# TYPE y gauge\ny +Inf\n"
        );
    }

    fn snapshot(database: Option<&str>, down: bool) -> Snapshot {
        let now = Utc::now();
        Snapshot {
            database: database.map(str::to_string),
            database_down_since: down.then_some(now),
            ..Snapshot::starting("test", now)
        }
    }

    /// The value of the sample `name` (without labels) on `page`, if any.
    fn value(page: &str, name: &str) -> Option<f64> {
        page.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .map(|v| v.parse().unwrap())
    }

    /// `victron_poller_database_up` is there only with a database: 1 while
    /// it answers, 0 while it does not; without one it is absent, not 1.
    #[test]
    fn database_up_only_with_a_database() {
        let health = Health::from_findings(Vec::new(), Vec::new());
        let now = Utc::now();
        let none = page(&snapshot(None, false), &health, now);
        assert!(!none.contains("victron_poller_database_up"), "{none}");
        assert_eq!(value(&none, "victron_poller_health"), Some(0.0));
        let db = Some("postgres://victron@db:5432/ranch");
        let up = page(&snapshot(db, false), &health, now);
        assert_eq!(value(&up, "victron_poller_database_up"), Some(1.0));
        let down = page(&snapshot(db, true), &health, now);
        assert_eq!(value(&down, "victron_poller_database_up"), Some(0.0));
        assert!(down.contains("# TYPE victron_poller_database_up gauge\n"));
    }
}
