//! Which measured powers feed which daily energy, and the trapezoids.
//!
//! - With a GX's system overview (a `system` device) the site's energies are
//!   its: solar = `dc_pv_power` + the AC-coupled PV (`pv_on_output_l1..3`,
//!   `pv_on_input_l1..3`); consumption = `ac_consumption_l1..3` +
//!   `dc_system_power`; battery charge / discharge = the positive / negative
//!   part of `battery_power`; grid import / export = of `grid_l1..3`; genset
//!   = `genset_l1..3`; SOC = `battery_soc`.
//! - Without one: solar = the solar chargers' `pv_power`; battery = the
//!   battery monitors' `power` (SOC: their `soc`); consumption = solar +
//!   discharge − charge (the balance of an off-grid site); grid and genset
//!   are not known (NULL).
//!
//! Each is integrated per device between consecutive readings (a trapezoid;
//! a power that changes sign within an interval is split where it crosses
//! zero), and `coverage_pct` is the share of the day the contributing
//! devices' bridged intervals cover (the least covered of them).

use std::collections::BTreeMap;

use chrono::NaiveDate;

use crate::reading::{Reading, ReadingTable};

/// A device's powers at one reading (W), by what they feed.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(super) struct Powers {
    pub(super) solar: Option<f64>,
    pub(super) consumption: Option<f64>,
    /// Positive while charging.
    pub(super) battery: Option<f64>,
    /// Positive while importing.
    pub(super) grid: Option<f64>,
    pub(super) genset: Option<f64>,
    /// The battery's state of charge (%), not a power.
    pub(super) soc: Option<f64>,
}

/// The system overview's PV: DC-coupled, and AC-coupled on the output and
/// the input.
pub(super) const SYSTEM_SOLAR: [&str; 7] = [
    "dc_pv_power",
    "pv_on_output_l1_power",
    "pv_on_output_l2_power",
    "pv_on_output_l3_power",
    "pv_on_input_l1_power",
    "pv_on_input_l2_power",
    "pv_on_input_l3_power",
];
/// The system overview's loads: AC consumption and the DC system.
pub(super) const SYSTEM_CONSUMPTION: [&str; 4] = [
    "ac_consumption_l1_power",
    "ac_consumption_l2_power",
    "ac_consumption_l3_power",
    "dc_system_power",
];
/// The system overview's grid (positive: importing).
pub(super) const SYSTEM_GRID: [&str; 3] = ["grid_l1_power", "grid_l2_power", "grid_l3_power"];
/// The system overview's generator.
pub(super) const SYSTEM_GENSET: [&str; 3] =
    ["genset_l1_power", "genset_l2_power", "genset_l3_power"];
/// The other columns the powers are read from: the system's battery and
/// SOC, a solar charger's PV, a battery monitor's power and SOC.
pub(super) const OTHER_POWERS: [&str; 5] =
    ["battery_power", "battery_soc", "pv_power", "power", "soc"];

/// The sum of the columns present, `None` when none is.
fn sum(reading: &Reading, columns: &[&str]) -> Option<f64> {
    columns
        .iter()
        .filter_map(|c| reading.float(c))
        .fold(None, |total, v| Some(total.unwrap_or(0.0) + v))
}

impl Powers {
    /// What `reading` says (see the module doc for which columns).
    pub(super) fn of(reading: &Reading) -> Self {
        match reading.table {
            ReadingTable::System => Self {
                solar: sum(reading, &SYSTEM_SOLAR),
                consumption: sum(reading, &SYSTEM_CONSUMPTION),
                battery: reading.float("battery_power"),
                grid: sum(reading, &SYSTEM_GRID),
                genset: sum(reading, &SYSTEM_GENSET),
                soc: reading.float("battery_soc"),
            },
            ReadingTable::Solar => Self {
                solar: reading.float("pv_power"),
                ..Self::default()
            },
            ReadingTable::Battery => Self {
                battery: reading.float("power"),
                soc: reading.float("soc"),
                ..Self::default()
            },
            ReadingTable::Inverter => Self::default(),
        }
    }

    /// The powers a fraction `f` of the way to `next` (linear); a power only
    /// one side has is taken as it is.
    pub(super) fn at_fraction(self, next: Powers, f: f64) -> Powers {
        let mix = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) => Some(a + (b - a) * f),
            _ => None,
        };
        Powers {
            solar: mix(self.solar, next.solar),
            consumption: mix(self.consumption, next.consumption),
            battery: mix(self.battery, next.battery),
            grid: mix(self.grid, next.grid),
            genset: mix(self.genset, next.genset),
            soc: None,
        }
    }
}

/// The energy (kWh) of the positive and the negative part of a power going
/// linearly from `a` to `b` W over `seconds`.
fn trapezoid(a: f64, b: f64, seconds: f64) -> (f64, f64) {
    let kwh = |w_s: f64| w_s / 3_600_000.0;
    if a >= 0.0 && b >= 0.0 {
        (kwh((a + b) / 2.0 * seconds), 0.0)
    } else if a <= 0.0 && b <= 0.0 {
        (0.0, kwh(-(a + b) / 2.0 * seconds))
    } else {
        // Crosses zero at a / (a − b) of the interval.
        let cross = a / (a - b) * seconds;
        let first = a / 2.0 * cross;
        let second = b / 2.0 * (seconds - cross);
        let (pos, neg) = if a > 0.0 {
            (first, -second)
        } else {
            (second, -first)
        };
        (kwh(pos), kwh(neg))
    }
}

/// One device's part of one day.
#[derive(Debug, Clone)]
pub(super) struct DeviceDay {
    table: ReadingTable,
    solar: Option<f64>,
    consumption: Option<f64>,
    charge: Option<f64>,
    discharge: Option<f64>,
    import: Option<f64>,
    export: Option<f64>,
    genset: Option<f64>,
    covered_s: f64,
    soc: Option<(f64, f64)>,
}

impl DeviceDay {
    pub(super) fn new(table: ReadingTable) -> Self {
        Self {
            table,
            solar: None,
            consumption: None,
            charge: None,
            discharge: None,
            import: None,
            export: None,
            genset: None,
            covered_s: 0.0,
            soc: None,
        }
    }

    /// An interval of `seconds` from powers `a` to `b`.
    pub(super) fn add_interval(&mut self, a: Powers, b: Powers, seconds: f64) {
        let add = |total: &mut Option<f64>, kwh: f64| *total = Some(total.unwrap_or(0.0) + kwh);
        let mut any = false;
        let mut part = |a: Option<f64>,
                        b: Option<f64>,
                        pos: &mut Option<f64>,
                        neg: Option<&mut Option<f64>>| {
            let (Some(a), Some(b)) = (a, b) else { return };
            any = true;
            let (p, n) = trapezoid(a, b, seconds);
            add(pos, p);
            if let Some(neg) = neg {
                add(neg, n);
            }
        };
        part(a.solar, b.solar, &mut self.solar, None);
        part(a.consumption, b.consumption, &mut self.consumption, None);
        part(
            a.battery,
            b.battery,
            &mut self.charge,
            Some(&mut self.discharge),
        );
        part(a.grid, b.grid, &mut self.import, Some(&mut self.export));
        part(a.genset, b.genset, &mut self.genset, None);
        if any {
            self.covered_s += seconds;
        }
    }

    /// A state-of-charge sample.
    pub(super) fn soc(&mut self, soc: f64) {
        self.soc = Some(match self.soc {
            Some((lo, hi)) => (lo.min(soc), hi.max(soc)),
            None => (soc, soc),
        });
    }

    fn has_energy(&self) -> bool {
        [
            self.solar,
            self.consumption,
            self.charge,
            self.import,
            self.genset,
        ]
        .iter()
        .any(Option::is_some)
    }
}

/// Sums what is present.
fn total(values: impl Iterator<Item = Option<f64>>) -> Option<f64> {
    values.fold(None, |acc, v| match (acc, v) {
        (acc, None) => acc,
        (None, Some(v)) => Some(v),
        (Some(a), Some(v)) => Some(a + v),
    })
}

/// A site's day from its devices' parts (the rule in the module doc).
pub(super) fn combine(
    site: &str,
    day: NaiveDate,
    day_seconds: f64,
    devices: &BTreeMap<String, DeviceDay>,
) -> DayEnergy {
    let system: Vec<&DeviceDay> = devices
        .values()
        .filter(|d| d.table == ReadingTable::System && (d.has_energy() || d.soc.is_some()))
        .collect();
    let soc_of = |parts: &[&DeviceDay]| {
        let lo = parts
            .iter()
            .filter_map(|d| d.soc.map(|s| s.0))
            .reduce(f64::min);
        let hi = parts
            .iter()
            .filter_map(|d| d.soc.map(|s| s.1))
            .reduce(f64::max);
        (lo, hi)
    };
    let covered = |parts: &[&DeviceDay]| {
        parts
            .iter()
            .filter(|d| d.has_energy())
            .map(|d| d.covered_s)
            .reduce(f64::min)
            .unwrap_or(0.0)
    };
    let (solar, consumption, charge, discharge, import, export, genset, soc, covered_s) = if system
        .is_empty()
    {
        let chargers: Vec<&DeviceDay> = devices
            .values()
            .filter(|d| d.table == ReadingTable::Solar)
            .collect();
        let batteries: Vec<&DeviceDay> = devices
            .values()
            .filter(|d| d.table == ReadingTable::Battery)
            .collect();
        let solar = total(chargers.iter().map(|d| d.solar));
        let charge = total(batteries.iter().map(|d| d.charge));
        let discharge = total(batteries.iter().map(|d| d.discharge));
        let consumption = match (solar, charge, discharge) {
            (None, None, None) => None,
            (s, c, d) => Some((s.unwrap_or(0.0) + d.unwrap_or(0.0) - c.unwrap_or(0.0)).max(0.0)),
        };
        let contributing: Vec<&DeviceDay> = chargers.iter().chain(&batteries).copied().collect();
        (
            solar,
            consumption,
            charge,
            discharge,
            None,
            None,
            None,
            soc_of(&batteries),
            covered(&contributing),
        )
    } else {
        (
            total(system.iter().map(|d| d.solar)),
            total(system.iter().map(|d| d.consumption)),
            total(system.iter().map(|d| d.charge)),
            total(system.iter().map(|d| d.discharge)),
            total(system.iter().map(|d| d.import)),
            total(system.iter().map(|d| d.export)),
            total(system.iter().map(|d| d.genset)),
            soc_of(&system),
            covered(&system),
        )
    };
    let round = |kwh: Option<f64>| kwh.map(|v| (v * 1e6).round() / 1e6);
    DayEnergy {
        site: site.to_string(),
        day,
        solar_kwh: round(solar),
        consumption_kwh: round(consumption),
        battery_charge_kwh: round(charge),
        battery_discharge_kwh: round(discharge),
        grid_import_kwh: round(import),
        grid_export_kwh: round(export),
        genset_kwh: round(genset),
        min_soc: soc.0,
        max_soc: soc.1,
        coverage_pct: (100.0 * covered_s / day_seconds).clamp(0.0, 100.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trapezoids_split_where_the_power_crosses_zero() {
        // 1 kW for an hour.
        assert_eq!(trapezoid(1000.0, 1000.0, 3600.0), (1.0, 0.0));
        // −1 kW to +1 kW over two hours: half an hour's worth each way.
        let (pos, neg) = trapezoid(-1000.0, 1000.0, 7200.0);
        assert!(
            (pos - 0.5).abs() < 1e-12 && (neg - 0.5).abs() < 1e-12,
            "{pos} {neg}"
        );
        let (pos, neg) = trapezoid(3000.0, -1000.0, 3600.0);
        // Crosses at 3/4 h: 3 kW × 3/4 h / 2 = 1.125 kWh; 1 kW × 1/4 h / 2.
        assert!(
            (pos - 1.125).abs() < 1e-12 && (neg - 0.125).abs() < 1e-12,
            "{pos} {neg}"
        );
    }
}

/// A site's energy on one local day.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct DayEnergy {
    /// The site.
    pub site: String,
    /// The local day.
    pub day: NaiveDate,
    /// PV energy (kWh).
    pub solar_kwh: Option<f64>,
    /// Loads (kWh).
    pub(crate) consumption_kwh: Option<f64>,
    /// Into the battery (kWh).
    pub(crate) battery_charge_kwh: Option<f64>,
    /// Out of the battery (kWh).
    pub(crate) battery_discharge_kwh: Option<f64>,
    /// From the grid (kWh).
    pub(crate) grid_import_kwh: Option<f64>,
    /// To the grid (kWh).
    pub(crate) grid_export_kwh: Option<f64>,
    /// From a generator (kWh).
    pub(crate) genset_kwh: Option<f64>,
    /// The battery's lowest state of charge (%).
    pub(crate) min_soc: Option<f64>,
    /// Its highest (%).
    pub(crate) max_soc: Option<f64>,
    /// How much of the day the powers cover (%).
    pub coverage_pct: f64,
}

impl DayEnergy {
    /// The columns of a day's figures in `energy_daily` (PostgreSQL's and
    /// the local store's alike), in the order of [`Self::figures`].
    pub(crate) const FIGURES: [&'static str; 9] = [
        "solar_kwh",
        "consumption_kwh",
        "battery_charge_kwh",
        "battery_discharge_kwh",
        "grid_import_kwh",
        "grid_export_kwh",
        "genset_kwh",
        "min_soc",
        "max_soc",
    ];

    /// The day's figures, in the order of [`Self::FIGURES`].
    pub(crate) fn figures(&self) -> [Option<f64>; 9] {
        [
            self.solar_kwh,
            self.consumption_kwh,
            self.battery_charge_kwh,
            self.battery_discharge_kwh,
            self.grid_import_kwh,
            self.grid_export_kwh,
            self.genset_kwh,
            self.min_soc,
            self.max_soc,
        ]
    }

    /// A day of `site` from its figures, each read by its column's name
    /// (`figure`), and its coverage.
    pub(crate) fn from_columns(
        site: String,
        day: NaiveDate,
        mut figure: impl FnMut(&str) -> Option<f64>,
        coverage_pct: f64,
    ) -> Self {
        let [
            solar_kwh,
            consumption_kwh,
            battery_charge_kwh,
            battery_discharge_kwh,
            grid_import_kwh,
            grid_export_kwh,
            genset_kwh,
            min_soc,
            max_soc,
        ] = Self::FIGURES.map(&mut figure);
        Self {
            site,
            day,
            solar_kwh,
            consumption_kwh,
            battery_charge_kwh,
            battery_discharge_kwh,
            grid_import_kwh,
            grid_export_kwh,
            genset_kwh,
            min_soc,
            max_soc,
            coverage_pct,
        }
    }

    /// The figures' columns, comma-separated (for a statement's text).
    pub(crate) fn figure_columns() -> String {
        Self::FIGURES.join(", ")
    }

    /// `column = excluded.column` for every figure (an upsert's update).
    pub(crate) fn figure_updates() -> String {
        Self::FIGURES
            .map(|column| format!("{column} = excluded.{column}"))
            .join(", ")
    }
}
