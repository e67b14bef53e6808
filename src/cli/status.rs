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
                        document["error"] = json!(error.to_string());
                        print(&document, args.json)?;
                    } else if args.json {
                        // A script always gets one document to parse.
                        print(
                            &json!({"health": "unknown", "error": error.to_string(), "reasons": [error.to_string()]}),
                            true,
                        )?;
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
        Some(p) if p["poller_started_at"].is_null() => {
            down.push("no daemon has written status here yet".into());
        }
        Some(p) => {
            if let Some(stopped) = p["poller_stopped_at"].as_str() {
                down.push(format!("the daemon stopped {}", ago(&json!(stopped))));
            } else if p["last_successful_poll"].is_null() {
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
                d["device"].as_str().unwrap_or("a device"),
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

/// "12 s ago" for a timestamp, "never" for none.
fn ago(value: &Json) -> String {
    value
        .as_str()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| {
            format!(
                "{:.0} s ago",
                (Utc::now() - t.with_timezone(&Utc)).num_milliseconds() as f64 / 1000.0
            )
        })
        .unwrap_or_else(|| "never".into())
}

/// A count or figure, or `none` where the row has none yet.
fn figure(value: &Json) -> String {
    match value {
        Json::Null => "none".into(),
        Json::String(text) => text.clone(),
        other => other.to_string(),
    }
}

fn print_text(doc: &Json) {
    outln!(
        "health       {}",
        doc["health"].as_str().unwrap_or("unknown")
    );
    for reason in doc["reasons"].as_array().into_iter().flatten() {
        outln!("  because    {}", reason.as_str().unwrap_or_default());
    }
    match doc.get("poller") {
        Some(p) if !p.is_null() && !p["poller_started_at"].is_null() => {
            let state = match p["poller_stopped_at"].as_str() {
                Some(_) => format!(", stopped {}", ago(&p["poller_stopped_at"])),
                None => String::new(),
            };
            outln!(
                "poller       {} v{}, started {}{state}, every {} ms",
                figure(&p["poller_host"]),
                figure(&p["poller_version"]),
                ago(&p["poller_started_at"]),
                figure(&p["poll_interval_ms"])
            );
            outln!(
                "last poll    {}; last success {}",
                ago(&p["last_poll_attempt"]),
                ago(&p["last_successful_poll"])
            );
            let collection = match p["collection_health_pct"].as_f64() {
                Some(pct) => format!("collection {pct}% of what the poller could take"),
                None => "collection not known yet".into(),
            };
            outln!(
                "readings     {} in the last hour, {} in 24 h ({collection}), oldest {}",
                figure(&p["readings_last_hour"]),
                figure(&p["readings_last_24h"]),
                ago(&p["oldest_reading_at"])
            );
            outln!(
                "store        {} waiting to be forwarded",
                p["spool_depth"].as_i64().unwrap_or(0)
            );
            match p["last_retention_run"].as_str() {
                Some(_) => outln!(
                    "retention    last run {}, dropped {} rows / {} chunks",
                    ago(&p["last_retention_run"]),
                    p["last_retention_rows_dropped"].as_i64().unwrap_or(0),
                    p["last_retention_chunks_dropped"].as_i64().unwrap_or(0)
                ),
                None => outln!("retention    not run yet"),
            }
        }
        Some(_) => outln!("poller       no daemon has written status yet"),
        None => {}
    }
    if let Some(daemon) = doc.get("daemon").filter(|d| !d.is_null()) {
        let s = &daemon["status"];
        outln!(
            "daemon       {} v{}, status saved {}",
            figure(&s["host"]),
            figure(&s["version"]),
            ago(&daemon["saved_at"])
        );
        outln!(
            "store        {} readings in {}",
            doc["readings_stored"],
            figure(&doc["store"])
        );
        for r in doc["readings_last_hour"].as_array().into_iter().flatten() {
            outln!(
                "  {:<20} {:<18} {} in the last hour, latest {}",
                figure(&r["device"]),
                figure(&r["table"]),
                r["last_hour"],
                ago(&r["latest"])
            );
        }
    }
    let devices = doc
        .get("devices")
        .filter(|d| d.is_array())
        .or_else(|| doc.pointer("/daemon/status/devices"));
    if devices
        .and_then(Json::as_array)
        .is_some_and(|devices| devices.is_empty())
    {
        outln!("devices      none has been polled yet");
    }
    for d in devices.and_then(Json::as_array).into_iter().flatten() {
        let standby = d["standby"].as_bool() == Some(true);
        let ok = standby
            || (d["consecutive_failures"].as_i64().unwrap_or(0) == 0
                && !d["last_success"].is_null());
        let word = if standby {
            "standby"
        } else if d["last_attempt"].is_null() {
            "never polled"
        } else if ok {
            "ok"
        } else {
            "FAILING"
        };
        outln!(
            "device       {:<16} {:<9} {:<26} {:<12} last success {}{}",
            figure(&d["device"]),
            figure(&d["source"]),
            figure(&d["address"]),
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
        outln!("database     {}", figure(&schema["database"]));
        outln!("migrations   {applied} of {} applied", applied + pending);
        outln!("storage      {}", figure(&schema["storage_mode"]));
        outln!(
            "hypertables  {} of 4 reading tables",
            schema["schema"]["hypertables"]
                .as_array()
                .map_or(0, Vec::len)
        );
        for d in schema["degraded"].as_array().into_iter().flatten() {
            outln!(
                "degraded     {}: {}",
                figure(&d["feature"]),
                figure(&d["reason"])
            );
        }
    }
}
