//! `victron-poller history rebuild [--site S] [--from DATE] [--to DATE]`:
//! recomputes the rollups and daily energy of whole local days from the raw
//! readings in PostgreSQL (legacy data, repairs, a changed time zone).

use chrono::NaiveDate;
use clap::{Args, Subcommand};

use super::{Exit, require_database};
use crate::config::Config;
use crate::history::rebuild::{self, Range};

/// Options of `history`.
#[derive(Debug, Args)]
pub struct HistoryArgs {
    #[command(subcommand)]
    action: HistoryAction,
}

/// What `history` does.
#[derive(Debug, Subcommand)]
enum HistoryAction {
    /// Recompute rollups and daily energy of whole local days from the raw
    /// readings; what was there for those days is replaced.
    Rebuild {
        /// Only this site (`installation_id`); default every site.
        #[arg(long)]
        site: Option<String>,
        /// The first local day (YYYY-MM-DD); default the oldest raw reading's.
        #[arg(long)]
        from: Option<NaiveDate>,
        /// The last local day, included; default the newest raw reading's.
        #[arg(long)]
        to: Option<NaiveDate>,
    },
}

/// Runs the subcommand.
pub async fn exec(config: &Config, args: HistoryArgs) -> anyhow::Result<Exit> {
    let HistoryAction::Rebuild { site, from, to } = args.action;
    let db = require_database(config)?;
    let mut conn = crate::db::connect_once(db).await?;
    crate::db::migrate::migrate(&mut conn, config.retention.window).await?;
    drop(conn);
    let pool = crate::db::connect(db).await?;
    let range = Range { site, from, to };
    let report = rebuild::rebuild(
        &pool,
        config.site.timezone,
        config.history.max_gap.as_secs_f64(),
        &range,
    )
    .await?;
    pool.close().await;
    match report.days {
        None => outln!("nothing to rebuild: no raw readings in that range"),
        Some((first, last)) => outln!(
            "rebuilt {first} … {last} ({}): {} readings → {} rollups, {} day(s) of energy in {:.1} s",
            config.site.timezone.name(),
            report.readings,
            report.rollups,
            report.energy_days,
            report.elapsed.as_secs_f64()
        ),
    }
    Ok(Exit::Ok)
}
