//! `victron-poller energy [--days N] [--site S] [--json]`: a table of daily
//! energy and the SOC range, from `victron.energy_daily` — or, without a
//! database, computed from the readings in the local store. Today's row
//! until the daemon writes it (its live rollups write the day so far every
//! five minutes) is computed from the raw readings so far, and marked so.

use chrono::{NaiveDate, Utc};
use clap::Args;

use super::{Context, Exit};
use crate::config::Config;
use crate::history::DayEnergy;
use crate::history::buckets::local_day;

/// Options of `energy`.
#[derive(Debug, Args)]
pub(crate) struct EnergyArgs {
    /// How many local days, up to today.
    #[arg(long, default_value_t = 14)]
    days: u32,
    /// Only this site (`installation_id`).
    #[arg(long)]
    site: Option<String>,
    /// One JSON array of days instead of the table.
    #[arg(long)]
    json: bool,
    /// Directory of the local store, read without a database (default as
    /// for `status`).
    #[arg(long, env = crate::config::STATE_DIR_ENV, value_name = "DIR")]
    state_dir: Option<std::path::PathBuf>,
}

/// Runs the subcommand.
pub(crate) async fn exec(
    config: &Config,
    args: EnergyArgs,
    context: &Context,
) -> anyhow::Result<Exit> {
    let today = local_day(Utc::now(), config.site.timezone);
    let first = today - chrono::Duration::days(i64::from(args.days.max(1)) - 1);
    let mut so_far = Vec::new();
    let days = match &config.database {
        Some(db) => {
            let pool = crate::db::connect(db).await?;
            let mut days =
                crate::history::postgres::energy_days(&pool, first, args.site.as_deref()).await?;
            // Today's row may not be written yet: computed from the raw
            // readings, for each site that has none.
            let written: Vec<String> = days
                .iter()
                .filter(|d| d.day == today)
                .map(|d| d.site.clone())
                .collect();
            let computed = crate::history::rebuild::day_so_far(
                &pool,
                config.site.timezone,
                config.history.max_gap.as_secs_f64(),
                args.site.as_deref(),
                today,
                Utc::now(),
            )
            .await?;
            pool.close().await;
            for day in computed {
                if !written.contains(&day.site) {
                    so_far.push(day.site.clone());
                    days.push(day);
                }
            }
            days.sort_by(|a, b| (&a.site, a.day).cmp(&(&b.site, b.day)));
            days
        }
        None => {
            let dir = context.store_dir(args.state_dir.clone());
            let store = crate::store::StoreReader::open(&dir).await?;
            let days = crate::history::local::energy(
                &store,
                config.site.timezone,
                config.history.max_gap.as_secs_f64(),
            )
            .await?;
            store.close().await;
            days.into_iter()
                .filter(|d| d.day >= first && args.site.as_ref().is_none_or(|s| *s == d.site))
                .collect()
        }
    };
    print(config, &days, first, args.json, (today, &so_far))
}

/// The table, or `--json`'s array. `so_far`: today, and the sites whose
/// row for it was computed from the raw readings here (marked `*`).
fn print(
    config: &Config,
    days: &[DayEnergy],
    first: NaiveDate,
    json: bool,
    so_far: (NaiveDate, &[String]),
) -> anyhow::Result<Exit> {
    if json {
        outln!("{}", serde_json::to_string_pretty(days)?);
        return Ok(Exit::Ok);
    }
    if days.is_empty() {
        outln!(
            "no daily energy since {first}: run the daemon, or `victron-poller history rebuild`"
        );
        return Ok(Exit::Ok);
    }
    let kwh = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| format!("{v:.2}"));
    let soc = |d: &DayEnergy| match (d.min_soc, d.max_soc) {
        (Some(lo), Some(hi)) => format!("{lo:.0}–{hi:.0}"),
        _ => "-".into(),
    };
    outln!(
        "{:<12} {:<12} {:>8} {:>8} {:>8} {:>9} {:>8} {:>8} {:>8} {:>9} {:>9}",
        "site",
        "day",
        "solar",
        "loads",
        "charge",
        "discharge",
        "grid in",
        "grid out",
        "genset",
        "soc %",
        "coverage"
    );
    let computed = |d: &DayEnergy| d.day == so_far.0 && so_far.1.contains(&d.site);
    for d in days {
        let day = if computed(d) {
            format!("{}*", d.day)
        } else {
            d.day.to_string()
        };
        outln!(
            "{:<12} {:<12} {:>8} {:>8} {:>8} {:>9} {:>8} {:>8} {:>8} {:>9} {:>8.1}%",
            if d.site.is_empty() { "-" } else { &d.site },
            day,
            kwh(d.solar_kwh),
            kwh(d.consumption_kwh),
            kwh(d.battery_charge_kwh),
            kwh(d.battery_discharge_kwh),
            kwh(d.grid_import_kwh),
            kwh(d.grid_export_kwh),
            kwh(d.genset_kwh),
            soc(d),
            d.coverage_pct
        );
    }
    outln!("(kWh per local day, {})", config.site.timezone.name());
    if days.iter().any(computed) {
        outln!(
            "* today so far, from the raw readings (the daemon writes the day's row every five minutes)"
        );
    }
    Ok(Exit::Ok)
}
