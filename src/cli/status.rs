//! `victron-poller status [--json]`: the health check. Is it working, since
//! when, what is wrong — from `victron.polling_status_view` and
//! `victron.device_status` when a database is configured, else from the
//! daemon's [`Snapshot`] in its local store — plus, with a database, the
//! schema state (migrations, storage mode, degraded features). Exit 0
//! healthy, 1 degraded, 2 down, 3 database unreachable.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use clap::Args;
use serde::Serialize;

use super::{Context, Exit};
use crate::clock::seconds_between;
use crate::config::Config;
use crate::db::SchemaReport;
use crate::db::connect_once;
use crate::db::status_rows::{self, PollerView};
use crate::history::read::Archive;
use crate::report::Snapshot;
use crate::report::health::{self, Health, Level};
use crate::status::DeviceStatus;
use crate::store::{STATUS_NAME, StoreReader};

/// Options of `status`.
#[derive(Debug, Args)]
pub(crate) struct StatusArgs {
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Directory of the local store, for a daemon without a database
    /// (default: $STATE_DIRECTORY; the service's /var/lib/victron-poller
    /// with the installed configuration; else as for `run`).
    #[arg(long, env = crate::config::STATE_DIR_ENV, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Only this site (its installation id): its status row and devices.
    #[arg(long, value_name = "SITE")]
    site: Option<String>,
}

/// What `status` prints: the verdict, then what it judged.
#[derive(Debug, Default, Serialize)]
struct Report {
    /// `healthy`, `degraded` or `down` (or why there is no verdict).
    health: String,
    /// What made it degraded or down.
    reasons: Vec<String>,
    /// Why the database could not be asked, when it could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    /// With a database: the poller's row.
    #[serde(skip_serializing_if = "Option::is_none")]
    poller: Option<PollerView>,
    /// With a database: each site's row (only the one asked for).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    sites: Vec<PollerView>,
    /// The devices' status, with their sites. Without a database, a
    /// device's `last_success` is the later of the daemon's saved status
    /// and its newest reading in the local store.
    devices: Vec<SiteDevice>,
    /// With a database: its schema state.
    #[serde(skip_serializing_if = "Option::is_none")]
    schema: Option<SchemaReport>,
    /// Without a database: the local store read.
    #[serde(skip_serializing_if = "Option::is_none")]
    store: Option<PathBuf>,
    /// Readings in it.
    #[serde(skip_serializing_if = "Option::is_none")]
    readings_stored: Option<i64>,
    /// The daemon's last saved snapshot.
    #[serde(skip_serializing_if = "Option::is_none")]
    daemon: Option<Saved>,
    /// Readings of the last hour per device.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    readings_last_hour: Vec<DeviceCount>,
    /// Each site now: its devices' newest values, its flow, its kWh today.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    now: Vec<super::now::SiteNow>,
    /// Why the newest values could not be read, when they could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    now_error: Option<String>,
}

/// A device's status and its site.
#[derive(Debug, Serialize)]
struct SiteDevice {
    /// Its site (`""` for none).
    site: String,
    #[serde(flatten)]
    status: DeviceStatus,
}

/// A snapshot and when the daemon saved it.
#[derive(Debug, Serialize)]
struct Saved {
    status: Snapshot,
    saved_at: DateTime<Utc>,
}

/// One device's readings in the local store.
#[derive(Debug, Serialize)]
struct DeviceCount {
    table: String,
    device: String,
    last_hour: i64,
    latest: DateTime<Utc>,
}

impl Report {
    fn judged(health: &Health) -> Self {
        Self {
            health: health.level.as_str().into(),
            reasons: health.reasons.clone(),
            ..Self::default()
        }
    }

    /// Adds the sites now (or why they cannot be read).
    async fn attach_now(&mut self, config: &Config, archive: &Archive) {
        match super::now::gather(config, archive).await {
            Ok(now) => self.now = now,
            Err(error) => {
                self.now_error = Some(format!("cannot read the newest values: {error:#}"))
            }
        }
    }
}

fn exit_for(level: Level) -> Exit {
    match level {
        Level::Healthy => Exit::Ok,
        Level::Degraded => Exit::Attention,
        Level::Down => Exit::Down,
    }
}

/// What `status` found.
enum Gathered {
    /// A verdict and what it judged.
    Verdict(Health, Report),
    /// The database could not be reached; the daemon's own report, when its
    /// local store was found.
    Unreachable(crate::db::DbError, Report),
}

/// Runs the subcommand. `--json` prints one document whatever happens: a
/// failure to read the status is a document with an `error` field.
pub(crate) async fn exec(
    config: &Config,
    args: StatusArgs,
    context: &Context,
) -> anyhow::Result<Exit> {
    match gather(config, &args, context).await {
        Ok(Gathered::Verdict(health, report)) => {
            print(&report, args.json)?;
            Ok(exit_for(health.level))
        }
        Ok(Gathered::Unreachable(error, report)) => {
            if args.json || report.store.is_some() {
                print(&report, args.json)?;
            }
            Err(error.into())
        }
        Err(error) => {
            if args.json {
                let message = format!("{error:#}");
                let report = Report {
                    health: "unknown".into(),
                    reasons: vec![message.clone()],
                    error: Some(message),
                    ..Report::default()
                };
                print(&report, true)?;
            }
            Err(error)
        }
    }
}

async fn gather(config: &Config, args: &StatusArgs, context: &Context) -> anyhow::Result<Gathered> {
    let dir = context.store_dir(args.state_dir.clone());
    let Some(db) = &config.database else {
        let (health, mut report) = local_view(&dir, &config.device_sites()).await?;
        if dir.join(crate::store::FILE_NAME).is_file() {
            let store = StoreReader::open(&dir).await?;
            report
                .attach_now(config, &Archive::Store(store.clone()))
                .await;
            store.close().await;
        }
        return Ok(Gathered::Verdict(health, report));
    };
    let mut conn = match connect_once(db).await {
        Ok(conn) => conn,
        Err(error) => {
            // The gateway's operator still wants to know what the daemon
            // does while its database is out of reach.
            let message = error.to_string();
            let mut report = if dir.join(crate::store::FILE_NAME).is_file() {
                let (_, mut report) = local_view(&dir, &config.device_sites()).await?;
                report.health = "database unreachable; the daemon's own status follows".into();
                report
            } else {
                Report {
                    health: "unknown".into(),
                    ..Report::default()
                }
            };
            report.reasons.insert(0, message.clone());
            report.error = Some(message);
            return Ok(Gathered::Unreachable(error, report));
        }
    };
    let schema = SchemaReport::collect(&mut conn, db)
        .await
        .context("Failed to read the schema state")?;
    let rows = if schema.migrations.applied.is_empty() {
        status_rows::StatusRows::default()
    } else {
        status_rows::read(&mut conn, args.site.as_deref())
            .await
            .context("Failed to read the status rows")?
    };
    let devices: Vec<DeviceStatus> = rows.devices.iter().map(|(_, d)| d.clone()).collect();
    let pending = schema.migrations.pending.len();
    let health = health::judge_rows(
        pending,
        rows.poller.as_ref(),
        &devices,
        args.site.as_deref(),
    );
    let mut report = Report {
        poller: rows.poller,
        sites: rows.sites,
        devices: rows
            .devices
            .into_iter()
            .map(|(site, status)| SiteDevice { site, status })
            .collect(),
        schema: Some(schema),
        ..Report::judged(&health)
    };
    let pool = crate::db::lazy_pool(db, 1)?;
    report
        .attach_now(config, &Archive::Database(pool.clone()))
        .await;
    pool.close().await;
    Ok(Gathered::Verdict(health, report))
}

/// Prints the report as JSON or as the table for people.
fn print(report: &Report, json: bool) -> anyhow::Result<()> {
    if json {
        outln!("{}", serde_json::to_string_pretty(report)?);
    } else {
        print_text(report);
    }
    Ok(())
}

/// The verdict and report from the daemon's snapshot in the local store.
async fn local_view(
    dir: &Path,
    sites: &HashMap<String, String>,
) -> anyhow::Result<(Health, Report)> {
    let file = dir.join(crate::store::FILE_NAME);
    let missing = match std::fs::metadata(&file) {
        Ok(meta) if meta.is_file() => None,
        Err(error) if error.kind() == std::io::ErrorKind::PermissionDenied => Some(format!(
            "cannot read the local store in {}: permission denied (a service's state \
             directory is root's only): run status as root",
            dir.display()
        )),
        _ => Some(format!(
            "no local store at {}: the daemon has not run with this state directory (see --state-dir)",
            file.display()
        )),
    };
    if let Some(why) = missing {
        let health = Health::from_findings(vec![why], Vec::new());
        let report = Report {
            store: Some(file),
            ..Report::judged(&health)
        };
        return Ok((health, report));
    }
    let store = StoreReader::open(dir).await?;
    let saved = store.load_status(STATUS_NAME).await?;
    let since = Utc::now() - chrono::Duration::hours(1);
    let counts = store.counts_since(since).await?;
    let depth = store.depth().await?.readings;
    store.close().await;
    let saved = match saved {
        Some((doc, saved_at)) => match serde_json::from_value::<Snapshot>(doc) {
            Ok(status) => Ok(Saved { status, saved_at }),
            Err(error) => Err(format!(
                "the daemon's status document cannot be read ({error}): written by another version?"
            )),
        },
        None => Err("the daemon has not run with this local store".into()),
    };
    let health = match &saved {
        Ok(s) => health::judge_saved(
            &s.status,
            s.saved_at,
            Utc::now(),
            crate::store::daemon_runs_on(dir),
        ),
        Err(why) => Health::from_findings(vec![why.clone()], Vec::new()),
    };
    let daemon = saved.ok();
    // One last success per device: the status document is saved every few
    // seconds, while a stored reading is a successful poll of its own; the
    // later of the two is the device's last success.
    let mut newest: HashMap<&str, DateTime<Utc>> = HashMap::new();
    for count in &counts {
        let at = newest.entry(count.device.as_str()).or_insert(count.newest);
        *at = (*at).max(count.newest);
    }
    let devices = daemon
        .as_ref()
        .map(|d| d.status.devices.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|mut status| {
            if let Some(stored) = newest.get(status.device.as_str()).copied() {
                if status.last_success.is_none_or(|t| t < stored) {
                    status.last_success = Some(stored);
                    status.last_attempt = status.last_attempt.max(Some(stored));
                }
            }
            SiteDevice {
                site: sites.get(&status.device).cloned().unwrap_or_default(),
                status,
            }
        })
        .collect();
    let report = Report {
        devices,
        store: Some(file),
        readings_stored: Some(depth),
        daemon,
        readings_last_hour: counts
            .into_iter()
            .map(|count| DeviceCount {
                table: count.table,
                device: count.device,
                last_hour: count.readings,
                latest: count.newest,
            })
            .collect(),
        ..Report::judged(&health)
    };
    Ok((health, report))
}

/// "12 s ago" for a time, "never" for none.
fn ago(at: Option<DateTime<Utc>>) -> String {
    at.map(|t| format!("{:.0} s ago", seconds_between(t, Utc::now())))
        .unwrap_or_else(|| "never".into())
}

/// A site as the table shows it (the empty site as `-`).
fn site_name(site: &str) -> &str {
    if site.is_empty() { "-" } else { site }
}

/// A figure, or `none` where the row has none yet.
fn figure<T: std::fmt::Display>(value: Option<T>) -> String {
    value.map_or_else(|| "none".into(), |v| v.to_string())
}

fn print_text(report: &Report) {
    outln!("health       {}", report.health);
    for reason in &report.reasons {
        outln!("  because    {reason}");
    }
    if report.schema.is_some() {
        match &report.poller {
            Some(p) if p.poller_started_at.is_some() => print_poller(p),
            _ => outln!("poller       no daemon has written status yet"),
        }
    }
    if let Some(daemon) = &report.daemon {
        let s = &daemon.status;
        outln!(
            "daemon       {} v{}, status saved {}",
            s.host,
            s.version,
            ago(Some(daemon.saved_at))
        );
        outln!("clock        {}", s.clock.summary());
        if s.held_readings > 0 {
            outln!(
                "  held       {} reading(s) wait for their time",
                s.held_readings
            );
        }
    }
    if let (Some(depth), Some(store)) = (report.readings_stored, &report.store) {
        outln!("store        {depth} readings in {}", store.display());
        // The newest reading's time is in its device's last success below.
        for r in &report.readings_last_hour {
            outln!(
                "  {:<20} {:<18} {} in the last hour",
                r.device,
                r.table,
                r.last_hour
            );
        }
    }
    if report.devices.is_empty() && (report.schema.is_some() || report.daemon.is_some()) {
        outln!("devices      none has been polled yet");
    }
    for site in &report.sites {
        let state = if site.poller_stopped_at.is_some() {
            format!("stopped {}", ago(site.poller_stopped_at))
        } else if site.is_stale == Some(true) {
            format!("stale, last success {}", ago(site.last_successful_poll))
        } else if site.is_healthy == Some(true) {
            "healthy".to_string()
        } else {
            format!(
                "not healthy ({})",
                site.last_error.as_deref().unwrap_or("a device fails")
            )
        };
        outln!(
            "site         {:<16} {state}; {} of {} device(s) answering, {} waiting",
            site_name(site.installation_id.as_deref().unwrap_or_default()),
            site.devices_healthy.unwrap_or(0),
            site.devices_configured.unwrap_or(0),
            site.spool_depth.unwrap_or(0)
        );
    }
    for SiteDevice { site, status: d } in &report.devices {
        let word = if d.standby {
            "standby"
        } else if d.last_attempt.is_none() {
            "never polled"
        } else if d.is_failing() {
            "FAILING"
        } else {
            "ok"
        };
        outln!(
            "device       {:<12} {:<16} {:<9} {:<26} {:<12} last success {}{}",
            site_name(site),
            d.device,
            d.source.as_str(),
            d.address,
            word,
            ago(d.last_success),
            d.last_error
                .as_deref()
                .filter(|_| d.is_failing())
                .map(|e| format!(" ({e})"))
                .unwrap_or_default()
        );
    }
    if let Some(schema) = &report.schema {
        let applied = schema.migrations.applied.len();
        let pending = schema.migrations.pending.len();
        outln!("database     {}", schema.database);
        outln!("migrations   {applied} of {} applied", applied + pending);
        outln!("storage      {}", schema.storage_mode);
        outln!(
            "hypertables  {} of 4 reading tables",
            schema.schema.hypertables.len()
        );
        for d in &schema.degraded {
            // What this server lacks is worked around (or a companion's
            // feature): a note, not part of the verdict.
            outln!("note         {}: {}", d.feature, d.reason);
        }
    }
    for line in super::now::lines(&report.now) {
        outln!("{line}");
    }
    if let Some(error) = &report.now_error {
        outln!("now          {error}");
    }
}

fn print_poller(p: &PollerView) {
    let stopped = match p.poller_stopped_at {
        Some(_) => format!(", stopped {}", ago(p.poller_stopped_at)),
        None => String::new(),
    };
    outln!(
        "poller       {} v{}, started {}{stopped}, every {} ms",
        figure(p.poller_host.as_deref()),
        figure(p.poller_version.as_deref()),
        ago(p.poller_started_at),
        figure(p.poll_interval_ms)
    );
    outln!(
        "last poll    {}; last success {}",
        ago(p.last_poll_attempt),
        ago(p.last_successful_poll)
    );
    let collection = match p.collection_health_pct {
        Some(pct) => format!("collection {pct}% of what the poller could take"),
        None => "collection not known yet".into(),
    };
    outln!(
        "readings     {} in the last hour, {} in 24 h ({collection}), oldest {}",
        p.readings_last_hour.unwrap_or(0),
        p.readings_last_24h.unwrap_or(0),
        ago(p.oldest_reading_at)
    );
    outln!(
        "store        {} waiting to be forwarded",
        p.spool_depth.unwrap_or(0)
    );
    if let Some(clock) = &p.clock {
        let offset = p
            .clock_offset_s
            .map(|o| format!(", {o:+.3} s to its reference"))
            .unwrap_or_default();
        let held = match p.held_readings.filter(|n| *n > 0) {
            Some(n) => format!(", {n} reading(s) held for their time"),
            None => String::new(),
        };
        outln!("clock        times from {clock}{offset}{held}");
    }
    match p.last_retention_run {
        Some(_) => outln!(
            "retention    last run {}, dropped {} rows / {} chunks",
            ago(p.last_retention_run),
            p.last_retention_rows_dropped.unwrap_or(0),
            p.last_retention_chunks_dropped.unwrap_or(0)
        ),
        None => outln!("retention    not run yet"),
    }
}
