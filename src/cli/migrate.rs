//! `victron-poller migrate [--check]`: apply the embedded migrations and the
//! reconcile step, printing one line per change and per degraded feature.

use anyhow::Context as _;
use clap::Args;

use super::{Exit, require_database};
use crate::config::Config;
use crate::db::connect_once;
use crate::db::migrate;

/// Options of `migrate`.
#[derive(Debug, Args)]
pub(crate) struct MigrateArgs {
    /// Change nothing; exit 1 while a migration is pending.
    #[arg(long)]
    check: bool,
}

/// Runs the subcommand.
pub(crate) async fn exec(config: &Config, args: MigrateArgs) -> anyhow::Result<Exit> {
    let db = require_database(config)?;
    let mut conn = connect_once(db).await?;

    if args.check {
        let status = migrate::status(&mut conn)
            .await
            .context("Failed to read the applied migrations")?;
        for m in &status.pending {
            outln!("pending   {}", m.file);
        }
        for m in &status.modified {
            outln!("modified  {} (changed after it was applied)", m.file);
        }
        for v in &status.unknown {
            outln!("unknown   migration {v} (applied by a newer victron-poller)");
        }
        if status.is_current() {
            outln!("up to date: {} migrations applied", status.applied.len());
            return Ok(Exit::Ok);
        }
        return Ok(Exit::Attention);
    }

    let report = migrate::migrate(&mut conn, config.retention.window).await?;
    for m in &report.applied_now {
        outln!("applied   {}", m.file);
    }
    for action in &report.reconcile.actions {
        outln!("upgraded  {action}");
    }
    for refusal in &report.reconcile.refused {
        outln!("refused   {refusal}");
    }
    if report.applied_now.is_empty() && report.reconcile.actions.is_empty() {
        outln!("up to date: nothing to change");
    }
    outln!("storage   {}", report.storage_mode);
    for d in &report.degraded {
        outln!("degraded  {d}");
    }
    Ok(Exit::Ok)
}
