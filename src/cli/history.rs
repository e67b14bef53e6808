//! `victron-poller history rebuild [--site S] [--from DATE] [--to DATE]`:
//! recomputes the rollups and daily energy of whole local days from the raw
//! readings in PostgreSQL (legacy data, repairs, a changed time zone), or,
//! without a database, from the local store's readings into its own
//! rollups.

use chrono::{NaiveDate, Utc};
use clap::{Args, Subcommand};

use super::{Exit, require_database};
use crate::config::Config;
use crate::history::buckets::{day_end, day_start, first_day_from, local_day};
use crate::history::live::LiveRollups;
use crate::history::rebuild::{self, Range};
use crate::history::sqlite::LocalRollups;
use crate::store::LocalStore;

/// Options of `history`.
#[derive(Debug, Args)]
pub(crate) struct HistoryArgs {
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
        /// Without a database: the directory of the local store, whose own
        /// rollups are rebuilt (default as for `run`).
        #[arg(long, env = crate::config::STATE_DIR_ENV, value_name = "DIR")]
        state_dir: Option<std::path::PathBuf>,
    },
}

/// Runs the subcommand.
pub(crate) async fn exec(config: &Config, args: HistoryArgs) -> anyhow::Result<Exit> {
    let HistoryAction::Rebuild {
        site,
        from,
        to,
        state_dir,
    } = args.action;
    if config.database.is_none() {
        return in_local_store(config, site, from, to, state_dir).await;
    }
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

/// Without a database: the local store's readings through the live
/// rollups' steps, from the first day its retention has not started on (or
/// `from`) to `to` (or up to the last five-minute boundary).
async fn in_local_store(
    config: &Config,
    site: Option<String>,
    from: Option<NaiveDate>,
    to: Option<NaiveDate>,
    state_dir: Option<std::path::PathBuf>,
) -> anyhow::Result<Exit> {
    let started = std::time::Instant::now();
    let dir = super::run::state_dir(state_dir);
    if !dir.join(crate::store::FILE_NAME).is_file() {
        anyhow::bail!(
            "no database is configured and there is no local store in {}",
            dir.display()
        );
    }
    let store = LocalStore::open_with(&dir, config.store.sync)
        .await?
        .with_legacy_site(config.site.installation_id.as_deref().unwrap_or_default());
    let tz = config.site.timezone;
    let now = Utc::now();
    let Some(oldest) = store.oldest_confirmed().await? else {
        store.close().await;
        outln!("nothing to rebuild: no readings in the local store");
        return Ok(Exit::Ok);
    };
    let window = chrono::Duration::from_std(config.retention.window).unwrap_or_default();
    let first = from.unwrap_or_else(|| local_day(oldest, tz).max(first_day_from(now - window, tz)));
    let last = to.unwrap_or_else(|| local_day(now, tz));
    let sites = match site {
        Some(site) => vec![site],
        None => store.sites().await?,
    };
    let mut live = LiveRollups::new(
        tz,
        config.history.max_gap.as_secs_f64(),
        sites,
        day_start(first, tz),
    );
    let end = day_end(last, tz).min(live.boundary(now));
    let rows = LocalRollups(store.clone());
    let mut step = live.advance(&rows, end).await?;
    let last_day = live.finish(&rows).await?;
    step.rollups += last_day.rollups;
    step.days_completed += last_day.days_completed;
    store.close().await;
    outln!(
        "rebuilt {first} … {last} ({}) in the local store: {} readings → {} rollups, {} whole day(s) in {:.1} s",
        tz.name(),
        step.readings,
        step.rollups,
        step.days_completed,
        started.elapsed().as_secs_f64()
    );
    Ok(Exit::Ok)
}
