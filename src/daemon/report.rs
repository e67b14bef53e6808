//! What the running daemon says about itself: the status document (saved in
//! the local store for `status`, and judged live for `/healthz`), the
//! Prometheus metrics, and the one-line summary systemd shows.

use std::sync::atomic::Ordering;

use chrono::{DateTime, Utc};
use serde_json::{Value as Json, json};

use super::{Shared, host_name};
use crate::health::{Health, judge_document};
use crate::metrics::{Kind, MetricsText};

/// The local store's depth and oldest reading (one query: callers share it).
pub(super) async fn store_depth(shared: &Shared) -> (i64, Option<DateTime<Utc>>) {
    shared.store.depth().await.unwrap_or_default()
}

/// The daemon's status document: counters, the local store (`depth`, from
/// [`store_depth`]), every device, hung sources and the database's state.
pub(super) fn status_document(
    shared: &Shared,
    (depth, oldest): (i64, Option<DateTime<Utc>>),
) -> Json {
    let stalled: Vec<Json> = shared
        .status
        .stalled(shared.config.health.stall_timeout)
        .into_iter()
        .map(|(device, idle)| json!({"device": device, "idle_s": idle.as_secs_f64()}))
        .collect();
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "host": host_name(),
        "started_at": shared.started_at,
        "stopped_at": shared.stopped_at.get(),
        "poll_interval_ms": shared.poll_interval.as_millis() as u64,
        "rows_stored": shared.counters.rows_stored.load(Ordering::Relaxed),
        "rows_forwarded": shared.forward.rows_forwarded.load(Ordering::Relaxed),
        "rows_parked": shared.forward.rows_parked.load(Ordering::Relaxed),
        "rows_expired_unforwarded": shared.counters.rows_expired_unforwarded.load(Ordering::Relaxed),
        "forward_errors": shared.forward.errors.load(Ordering::Relaxed),
        "spool_depth": depth,
        "spool_oldest": oldest,
        "database": shared.config.database.as_ref().map(|d| d.redacted_url()),
        "database_down_since": shared.link.down_since(),
        "stall_timeout_ms": shared.config.health.stall_timeout.as_millis() as u64,
        "stalled": stalled,
        "devices": shared.status.snapshot(),
    })
}

/// One line for `systemctl status`; `depth`: readings in the local store.
pub(super) fn one_line(shared: &Shared, depth: i64) -> String {
    let devices = shared.status.snapshot();
    let active = devices.iter().filter(|d| !d.standby).count();
    let healthy = devices
        .iter()
        .filter(|d| !d.standby && d.is_healthy())
        .count();
    let mut line = format!("{healthy} of {active} device(s) answering");
    if active < devices.len() {
        line.push_str(&format!(", {} on standby", devices.len() - active));
    }
    if shared.config.database.is_some() {
        line.push_str(&format!(", {depth} reading(s) waiting to be forwarded"));
    } else {
        line.push_str(&format!(", {depth} reading(s) in the local store"));
    }
    line
}

/// Answers the health endpoint from the live daemon.
#[derive(Debug)]
pub(super) struct DaemonObserver {
    shared: Shared,
}

impl DaemonObserver {
    pub(super) fn new(shared: Shared) -> Self {
        Self { shared }
    }
}

impl crate::http::Observe for DaemonObserver {
    async fn health(&self) -> Health {
        let now = Utc::now();
        let doc = status_document(&self.shared, store_depth(&self.shared).await);
        judge_document(&doc, now, now)
    }

    async fn metrics(&self) -> String {
        render_metrics(&self.shared).await
    }
}

async fn render_metrics(shared: &Shared) -> String {
    let now = Utc::now();
    let devices = shared.status.snapshot();
    let (depth, oldest) = store_depth(shared).await;
    let health = judge_document(&status_document(shared, (depth, oldest)), now, now);
    let count = |n: u64| n as f64;
    let mut page = MetricsText::new();

    page.family(
        "victron_poller_info",
        Kind::Gauge,
        "The daemon's version and host (always 1).",
    )
    .sample(
        "victron_poller_info",
        &[
            ("version", env!("CARGO_PKG_VERSION")),
            ("host", &host_name()),
        ],
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
            crate::health::Level::Healthy => 0.0,
            crate::health::Level::Degraded => 1.0,
            crate::health::Level::Down => 2.0,
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
            |d| {
                d.last_success
                    .map(|t| (Utc::now() - t).num_milliseconds() as f64 / 1000.0)
            },
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
        for d in &devices {
            if let Some(v) = value(d) {
                page.sample(
                    name,
                    &[("device", &d.device), ("source", d.source.as_str())],
                    v,
                );
            }
        }
    }

    let forward = &shared.forward;
    let counters = &shared.counters;
    let totals: [(&str, Kind, &str, f64); 12] = [
        (
            "victron_poller_store_readings",
            Kind::Gauge,
            "Readings in the local store not yet forwarded (all of them without a database).",
            depth as f64,
        ),
        (
            "victron_poller_store_oldest_age_seconds",
            Kind::Gauge,
            "Age of the oldest reading in the local store (0 when empty).",
            oldest.map_or(0.0, |o| (now - o).num_milliseconds() as f64 / 1000.0),
        ),
        (
            "victron_poller_rows_stored_total",
            Kind::Counter,
            "Readings committed to the local store.",
            count(counters.rows_stored.load(Ordering::Relaxed)),
        ),
        (
            "victron_poller_rows_forwarded_total",
            Kind::Counter,
            "Readings committed to PostgreSQL.",
            count(forward.rows_forwarded.load(Ordering::Relaxed)),
        ),
        (
            "victron_poller_forward_errors_total",
            Kind::Counter,
            "Failed attempts to forward to PostgreSQL.",
            count(forward.errors.load(Ordering::Relaxed)),
        ),
        (
            "victron_poller_rows_parked_total",
            Kind::Counter,
            "Readings PostgreSQL refused for good, set aside in the local store.",
            count(forward.rows_parked.load(Ordering::Relaxed)),
        ),
        (
            "victron_poller_rows_expired_unforwarded_total",
            Kind::Counter,
            "Readings dropped from the local store before they could be forwarded.",
            count(counters.rows_expired_unforwarded.load(Ordering::Relaxed)),
        ),
        (
            "victron_poller_retention_runs_total",
            Kind::Counter,
            "Retention runs completed (local store and database).",
            count(counters.retention_runs.load(Ordering::Relaxed)),
        ),
        (
            "victron_poller_retention_failures_total",
            Kind::Counter,
            "Retention runs that failed.",
            count(counters.retention_failures.load(Ordering::Relaxed)),
        ),
        (
            "victron_poller_database_up",
            Kind::Gauge,
            "1 when the database is reachable (or none is configured), else 0.",
            if shared.link.down_since().is_some() {
                0.0
            } else {
                1.0
            },
        ),
        (
            "victron_poller_log_lines_dropped_total",
            Kind::Counter,
            "Log lines dropped because whoever reads the daemon's output fell behind.",
            count(crate::logging::dropped_lines()),
        ),
        (
            "victron_poller_start_time_seconds",
            Kind::Gauge,
            "When the daemon started, in seconds since the Unix epoch.",
            shared.started_at.timestamp_millis() as f64 / 1000.0,
        ),
    ];
    for (name, kind, help, value) in totals {
        page.family(name, kind, help).sample(name, &[], value);
    }
    page.finish()
}
