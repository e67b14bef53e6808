//! `victron-poller status [--json]`: is it working, since when, what is
//! wrong — from `victron.polling_status_view` and `victron.device_status`
//! when a database is configured, else from the local store's status
//! document — plus, with a database, the schema state (migrations, storage
//! mode, degraded features). Exit 0 healthy, 1 degraded, 2 down.

use std::path::PathBuf;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use clap::Args;
use serde_json::{Value as Json, json};

use super::Exit;
use crate::config::Config;
use crate::db::SchemaReport;
use crate::db::connect_once;
use crate::health::{Health, Level};
use crate::store::LocalStore;

/// Options of `status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Directory of the local store, for a daemon without a database
    /// (default as for `run`).
    #[arg(long, env = "VICTRON_POLLER_STATE_DIR", value_name = "DIR")]
    state_dir: Option<PathBuf>,
}

fn exit_for(level: Level) -> Exit {
    match level {
        Level::Healthy => Exit::Ok,
        Level::Degraded => Exit::Attention,
        Level::Down => Exit::Down,
    }
}

/// Runs the subcommand.
pub async fn exec(config: &Config, args: StatusArgs) -> anyhow::Result<Exit> {
    let (health, document) = match &config.database {
        Some(db) => {
            let mut conn = match connect_once(db).await {
                Ok(conn) => conn,
                Err(error) => {
                    // The gateway's operator still wants to know what the
                    // daemon does while its database is out of reach.
                    let dir = super::run::state_dir(args.state_dir.clone());
                    if dir.join(crate::store::FILE_NAME).is_file() {
                        let (_, mut document) = local_view(&dir).await?;
                        if let Some(reasons) = document["reasons"].as_array_mut() {
                            reasons.insert(0, json!(error.to_string()));
                        }
                        document["health"] =
                            json!("database unreachable; the daemon's own status follows");
                        print(&document, args.json)?;
                    }
                    return Err(error.into());
                }
            };
            let schema = SchemaReport::collect(&mut conn, db)
                .await
                .context("Failed to read the schema state")?;
            let poller: Option<Json> = if schema.migrations.applied.is_empty() {
                None
            } else {
                sqlx::query_scalar("SELECT row_to_json(v) FROM victron.polling_status_view v")
                    .fetch_optional(&mut conn)
                    .await
                    .context("Failed to read victron.polling_status_view")?
            };
            let devices: Json = if schema.migrations.applied.is_empty() {
                json!([])
            } else {
                sqlx::query_scalar("SELECT coalesce(json_agg(d ORDER BY device), '[]'::json) FROM victron.device_status d")
                    .fetch_one(&mut conn)
                    .await
                    .context("Failed to read victron.device_status")?
            };
            let health = judge_database(&schema, poller.as_ref(), &devices);
            let doc = json!({
                "health": health.level.as_str(), "reasons": health.reasons,
                "poller": poller, "devices": devices, "schema": schema,
            });
            (health, doc)
        }
        None => local_view(&super::run::state_dir(args.state_dir.clone())).await?,
    };
    print(&document, args.json)?;
    Ok(exit_for(health.level))
}

/// Prints the document as JSON or as the table for people.
fn print(document: &Json, json: bool) -> anyhow::Result<()> {
    if json {
        outln!("{}", serde_json::to_string_pretty(document)?);
    } else {
        print_text(document);
    }
    Ok(())
}

fn judge_database(schema: &SchemaReport, poller: Option<&Json>, devices: &Json) -> Health {
    let mut down = Vec::new();
    let mut degraded = Vec::new();
    if !schema.migrations.is_current() {
        degraded.push(format!(
            "{} migration(s) pending: run `victron-poller migrate`",
            schema.migrations.pending.len()
        ));
    }
    match poller {
        None => down.push("no poller has written status here yet".into()),
        Some(p) => {
            if p["last_successful_poll"].is_null() {
                down.push("no successful poll yet".into());
            } else if p["is_stale"].as_bool() == Some(true) {
                down.push(format!(
                    "no successful poll for {:.0} s (3 poll intervals)",
                    p["seconds_since_last_success"].as_f64().unwrap_or_default()
                ));
            }
            if let Some(n) = p["devices_unhealthy"].as_i64().filter(|n| *n > 0) {
                degraded.push(format!("{n} device(s) failing"));
            }
            let interval_s = p["poll_interval_ms"].as_f64().unwrap_or(5000.0) / 1000.0;
            if let Some(age) = p["spool_oldest_age_s"]
                .as_f64()
                .filter(|a| *a > 3.0 * interval_s.max(5.0))
            {
                degraded.push(format!("readings wait in the local store since {age:.0} s"));
            }
        }
    }
    for d in devices.as_array().into_iter().flatten() {
        if d["consecutive_failures"].as_i64().unwrap_or(0) > 0 {
            degraded.push(format!(
                "{}: {}",
                d["device"].as_str().unwrap_or("?"),
                d["last_error"].as_str().unwrap_or("failing")
            ));
        }
    }
    Health::from_findings(down, degraded)
}

/// The verdict and document from the local store's status document.
async fn local_view(dir: &std::path::Path) -> anyhow::Result<(Health, Json)> {
    let file = dir.join(crate::store::FILE_NAME);
    if !file.is_file() {
        let health = Health::from_findings(
            vec![format!(
                "no local store at {}: the daemon has not run with this state directory (see --state-dir)",
                file.display()
            )],
            Vec::new(),
        );
        let doc =
            json!({"health": health.level.as_str(), "reasons": health.reasons, "store": file});
        return Ok((health, doc));
    }
    let store = LocalStore::open_read_only(dir).await?;
    let saved = store.load_status("daemon").await?;
    let since = Utc::now() - chrono::Duration::hours(1);
    let counts = store.counts_since(since).await?;
    let (depth, _) = store.depth().await?;
    store.close().await;
    let health = judge_local(saved.as_ref());
    let readings: Vec<Json> = counts
                .iter()
                .map(|(table, device, n, last)| json!({"table": table, "device": device, "last_hour": n, "latest": last}))
                .collect();
    let doc = json!({
        "health": health.level.as_str(), "reasons": health.reasons,
        "store": dir.join(crate::store::FILE_NAME), "readings_stored": depth,
        "daemon": saved.map(|(d, at)| json!({"status": d, "saved_at": at})),
        "readings_last_hour": readings,
    });
    Ok((health, doc))
}

fn judge_local(saved: Option<&(Json, DateTime<Utc>)>) -> Health {
    match saved {
        Some((doc, at)) => crate::health::judge_document(doc, *at, Utc::now()),
        None => Health::from_findings(
            vec!["the daemon has not run with this local store".into()],
            Vec::new(),
        ),
    }
}

fn print_text(doc: &Json) {
    let ago = |v: &Json| -> String {
        v.as_str()
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| {
                format!(
                    "{:.0} s ago",
                    (Utc::now() - t.with_timezone(&Utc)).num_milliseconds() as f64 / 1000.0
                )
            })
            .unwrap_or_else(|| "never".into())
    };
    outln!("health       {}", doc["health"].as_str().unwrap_or("?"));
    for reason in doc["reasons"].as_array().into_iter().flatten() {
        outln!("  because    {}", reason.as_str().unwrap_or_default());
    }
    if let Some(p) = doc.get("poller").filter(|p| !p.is_null()) {
        outln!(
            "poller       {} v{}, started {}, every {} ms",
            p["poller_host"].as_str().unwrap_or("?"),
            p["poller_version"].as_str().unwrap_or("?"),
            ago(&p["poller_started_at"]),
            p["poll_interval_ms"]
        );
        outln!(
            "last poll    {}; last success {}",
            ago(&p["last_poll_attempt"]),
            ago(&p["last_successful_poll"])
        );
        outln!(
            "readings     {} in the last hour, {} in 24 h (collection {}%), oldest {}",
            p["readings_last_hour"],
            p["readings_last_24h"],
            p["collection_health_pct"],
            ago(&p["oldest_reading_at"])
        );
        outln!("store        {} waiting to be forwarded", p["spool_depth"]);
        outln!(
            "retention    last run {}, dropped {} rows / {} chunks",
            ago(&p["last_retention_run"]),
            p["last_retention_rows_dropped"],
            p["last_retention_chunks_dropped"]
        );
    }
    if let Some(daemon) = doc.get("daemon").filter(|d| !d.is_null()) {
        let s = &daemon["status"];
        outln!(
            "daemon       {} v{}, status saved {}",
            s["host"].as_str().unwrap_or("?"),
            s["version"].as_str().unwrap_or("?"),
            ago(&daemon["saved_at"])
        );
        outln!(
            "store        {} readings in {}",
            doc["readings_stored"],
            doc["store"].as_str().unwrap_or("?")
        );
        for r in doc["readings_last_hour"].as_array().into_iter().flatten() {
            outln!(
                "  {:<20} {:<18} {} in the last hour, latest {}",
                r["device"].as_str().unwrap_or("?"),
                r["table"].as_str().unwrap_or("?"),
                r["last_hour"],
                ago(&r["latest"])
            );
        }
    }
    let devices = doc
        .get("devices")
        .filter(|d| d.is_array())
        .or_else(|| doc.pointer("/daemon/status/devices"));
    for d in devices.and_then(Json::as_array).into_iter().flatten() {
        let standby = d["standby"].as_bool() == Some(true);
        let ok = standby
            || (d["consecutive_failures"].as_i64().unwrap_or(0) == 0
                && !d["last_success"].is_null());
        let word = match (standby, ok) {
            (true, _) => "standby",
            (false, true) => "ok    ",
            (false, false) => "FAILING",
        };
        outln!(
            "device       {:<16} {:<9} {:<26} {}  last success {}{}",
            d["device"].as_str().unwrap_or("?"),
            d["source"].as_str().unwrap_or("?"),
            d["address"].as_str().unwrap_or("?"),
            word,
            ago(&d["last_success"]),
            d["last_error"]
                .as_str()
                .filter(|_| !ok)
                .map(|e| format!(" ({e})"))
                .unwrap_or_default()
        );
    }
    if let Some(schema) = doc.get("schema") {
        let applied = schema["migrations"]["applied"]
            .as_array()
            .map_or(0, Vec::len);
        let pending = schema["migrations"]["pending"]
            .as_array()
            .map_or(0, Vec::len);
        outln!(
            "database     {}",
            schema["database"].as_str().unwrap_or("?")
        );
        outln!("migrations   {applied} of {} applied", applied + pending);
        outln!(
            "storage      {}",
            schema["storage_mode"].as_str().unwrap_or("?")
        );
        outln!(
            "hypertables  {} of 4 reading tables",
            schema["schema"]["hypertables"]
                .as_array()
                .map_or(0, Vec::len)
        );
        for d in schema["degraded"].as_array().into_iter().flatten() {
            outln!(
                "degraded     {}: {}",
                d["feature"].as_str().unwrap_or("?"),
                d["reason"].as_str().unwrap_or("?")
            );
        }
    }
}
