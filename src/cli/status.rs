//! `victron-poller status [--json]`: the database schema state at a glance:
//! migrations applied, storage mode, hypertables, degraded features.
//! Exit 0 when the schema is current, 1 when a migration is pending.

use anyhow::Context as _;
use clap::Args;

use super::{Exit, require_database};
use crate::config::Config;
use crate::db::SchemaReport;
use crate::db::migrate::connect_once;
use crate::db::server::READING_TABLES;

/// Options of `status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

/// Runs the subcommand.
pub async fn exec(config: &Config, args: StatusArgs) -> anyhow::Result<Exit> {
    let db = require_database(config)?;
    let mut conn = connect_once(db).await?;
    let report = SchemaReport::collect(&mut conn, db)
        .await
        .context("Failed to read the schema state")?;
    let exit = if report.migrations.is_current() {
        Exit::Ok
    } else {
        Exit::Attention
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report);
    }
    Ok(exit)
}

fn print_table(r: &SchemaReport) {
    let ext = |name: &str, e: &crate::db::server::Extension| match (&e.installed, &e.available) {
        (Some(v), _) => format!("{name} {v}"),
        (None, Some(v)) => format!("{name} {v} available, not enabled"),
        (None, None) => format!("{name} absent"),
    };
    let licence = r
        .server
        .timescaledb_license
        .as_deref()
        .map(|l| format!(" ({l} licence)"))
        .unwrap_or_default();
    println!("database     {}", r.database);
    println!("server       PostgreSQL {}", r.server.version);
    println!(
        "extensions   {}{licence}, {}",
        ext("timescaledb", &r.server.timescaledb),
        ext("vector", &r.server.vector)
    );
    let total =
        r.migrations.applied.len() + r.migrations.pending.len() + r.migrations.modified.len();
    println!(
        "migrations   {} of {total} applied",
        r.migrations.applied.len()
    );
    for m in &r.migrations.pending {
        println!("  pending    {}", m.file);
    }
    for m in &r.migrations.modified {
        println!("  modified   {}", m.file);
    }
    for v in &r.migrations.unknown {
        println!("  unknown    {v} (applied by a newer victron-poller)");
    }
    println!("storage      {}", r.storage_mode);
    println!(
        "hypertables  {} of {} reading tables",
        r.schema.hypertables.len(),
        READING_TABLES.len()
    );
    if r.degraded.is_empty() {
        println!("degraded     none");
    }
    for d in &r.degraded {
        println!("degraded     {d}");
    }
}
