//! The site now, for `status` (and a reading's line for `demo` and
//! `watch`): each device's newest values that matter
//! (with units in `--json`), the site's power flow and its kWh today — read
//! from where the readings are (the local store, or PostgreSQL).

use chrono::Utc;
use serde::Serialize;

use crate::config::Config;
use crate::history::DayEnergy;
use crate::history::flow::Flow;
use crate::history::read::Archive;
use crate::reading::Reading;
use crate::web::api::DeviceNow;

/// How old a device's newest reading may be to be shown.
const NEWEST_WITHIN: chrono::Duration = chrono::Duration::days(1);

/// A site now.
#[derive(Debug, Serialize)]
pub(super) struct SiteNow {
    /// The site (`""` for none).
    site: String,
    /// Its power flow from the devices' newest readings.
    flow: Flow,
    /// Its energy today so far (as the daemon last computed it).
    #[serde(skip_serializing_if = "Option::is_none")]
    today: Option<DayEnergy>,
    /// Each device's newest values.
    devices: Vec<DeviceNow>,
    /// The readings they are from (for the lines people read).
    #[serde(skip)]
    readings: Vec<Reading>,
}

/// The newest values of the configured devices, per site.
pub(super) async fn gather(config: &Config, archive: &Archive) -> anyhow::Result<Vec<SiteNow>> {
    let mut devices: Vec<(String, String)> = config
        .device_sites()
        .into_iter()
        .map(|(device, site)| (site, device))
        .collect();
    devices.sort();
    let readings = archive.latest(&devices, NEWEST_WITHIN).await?;
    let today = crate::history::buckets::local_day(Utc::now(), config.site.timezone);
    let days = archive.days(None, today).await?;
    let mut sites: Vec<String> = devices.iter().map(|(s, _)| s.clone()).collect();
    sites.dedup();
    Ok(sites
        .into_iter()
        .map(|site| {
            let of_site: Vec<&Reading> = readings.iter().filter(|r| *r.site == *site).collect();
            SiteNow {
                flow: Flow::of(of_site.iter().copied()),
                today: days.iter().find(|d| d.site == site).cloned(),
                devices: of_site.iter().map(|r| DeviceNow::of(r)).collect(),
                readings: of_site.into_iter().cloned().collect(),
                site,
            }
        })
        .collect())
}

/// A reading's values that matter, as people read them.
pub(super) fn headline(reading: &Reading) -> String {
    crate::quantity::headline(reading.table)
        .iter()
        .filter_map(|column| {
            crate::quantity::shown(reading, column)
                .map(|v| format!("{} {v}", crate::quantity::label(reading.table, column)))
        })
        .collect::<Vec<_>>()
        .join(" · ")
}

/// A reading as `demo` and `watch` print it: its time, its device and the
/// values that matter.
pub(super) fn line(reading: &Reading) -> String {
    format!(
        "{}  {:<14} {}",
        reading.measured_at.format("%H:%M:%S%.3f"),
        reading.device,
        headline(reading)
    )
}

/// A power for people.
fn watts(value: Option<f64>) -> Option<String> {
    value.map(crate::quantity::watts)
}

/// The lines `status` prints for the sites.
pub(super) fn lines(sites: &[SiteNow]) -> Vec<String> {
    let mut lines = Vec::new();
    for site in sites {
        let flow = &site.flow;
        let mut parts: Vec<String> = [
            ("PV", watts(flow.pv_w)),
            ("loads", watts(flow.loads_w)),
            ("battery", watts(flow.battery_w)),
            ("grid", watts(flow.grid_w)),
            ("genset", watts(flow.genset_w)),
        ]
        .into_iter()
        .filter_map(|(name, value)| value.map(|v| format!("{name} {v}")))
        .collect();
        if let Some(soc) = flow.soc_pct {
            parts.push(format!("SOC {soc:.1} %"));
        }
        if let Some(today) = &site.today {
            let kwh = |v: Option<f64>| v.map_or_else(|| "–".into(), |v| format!("{v:.2}"));
            parts.push(format!(
                "today PV {} kWh, loads {} kWh",
                kwh(today.solar_kwh),
                kwh(today.consumption_kwh)
            ));
        }
        let name = if site.site.is_empty() {
            String::new()
        } else {
            format!("{}: ", site.site)
        };
        lines.push(format!(
            "now          {name}{}",
            if parts.is_empty() {
                "no reading in the last day".into()
            } else {
                parts.join(" · ")
            }
        ));
        for reading in &site.readings {
            lines.push(format!(
                "  {:<14} {}  ({})",
                reading.device,
                headline(reading),
                reading.measured_at.format("%H:%M:%S UTC")
            ));
        }
    }
    lines
}
