//! The site's power flow at one moment — PV, loads, battery in or out,
//! grid, generator (W) and the state of charge (%) — from its devices'
//! readings, by the rule the daily energy integrates ([`super::energy`]):
//! a GX's system overview when the site has one, else its solar chargers
//! and battery monitors, loads being what PV and the battery leave.

use serde::Serialize;

use super::energy::Powers;
use crate::reading::{Reading, ReadingTable};

/// A site's powers (W) and state of charge (%); `None`: no device says.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Flow {
    /// PV, DC- and AC-coupled.
    pub pv_w: Option<f64>,
    /// What the loads draw.
    pub loads_w: Option<f64>,
    /// Into the battery (positive) or out of it (negative).
    pub battery_w: Option<f64>,
    /// From the grid (positive) or to it (negative).
    pub grid_w: Option<f64>,
    /// From a generator.
    pub genset_w: Option<f64>,
    /// The battery's state of charge.
    pub soc_pct: Option<f64>,
}

/// Every column the flow is made of (what a series of it needs read back).
pub fn metrics() -> Vec<&'static str> {
    use super::energy::{
        OTHER_POWERS, SYSTEM_CONSUMPTION, SYSTEM_GENSET, SYSTEM_GRID, SYSTEM_SOLAR,
    };
    [
        &SYSTEM_SOLAR[..],
        &SYSTEM_CONSUMPTION,
        &SYSTEM_GRID,
        &SYSTEM_GENSET,
        &OTHER_POWERS,
    ]
    .concat()
}

/// Sums what is present.
fn total(values: impl Iterator<Item = Option<f64>>) -> Option<f64> {
    values
        .flatten()
        .fold(None, |sum, v| Some(sum.unwrap_or(0.0) + v))
}

/// The mean of what is present.
fn mean(values: impl Iterator<Item = Option<f64>>) -> Option<f64> {
    let present: Vec<f64> = values.flatten().collect();
    (!present.is_empty()).then(|| present.iter().sum::<f64>() / present.len() as f64)
}

impl Flow {
    /// The flow the readings (one per device, of one site) say.
    pub fn of<'a>(readings: impl IntoIterator<Item = &'a Reading>) -> Self {
        let readings: Vec<(&Reading, Powers)> =
            readings.into_iter().map(|r| (r, Powers::of(r))).collect();
        let of_table = |table: ReadingTable| {
            readings
                .iter()
                .filter(move |(r, _)| r.table == table)
                .map(|(_, p)| *p)
        };
        let system: Vec<Powers> = of_table(ReadingTable::System)
            .filter(|p| {
                // As the daily energy counts a system overview: any power
                // or the SOC.
                [p.solar, p.consumption, p.battery, p.grid, p.genset, p.soc]
                    .iter()
                    .any(Option::is_some)
            })
            .collect();
        if !system.is_empty() {
            return Self {
                pv_w: total(system.iter().map(|p| p.solar)),
                loads_w: total(system.iter().map(|p| p.consumption)),
                battery_w: total(system.iter().map(|p| p.battery)),
                grid_w: total(system.iter().map(|p| p.grid)),
                genset_w: total(system.iter().map(|p| p.genset)),
                soc_pct: mean(system.iter().map(|p| p.soc)),
            };
        }
        let pv_w = total(of_table(ReadingTable::Solar).map(|p| p.solar));
        let battery_w = total(of_table(ReadingTable::Battery).map(|p| p.battery));
        let loads_w = match (pv_w, battery_w) {
            (None, None) => None,
            (pv, battery) => Some((pv.unwrap_or(0.0) - battery.unwrap_or(0.0)).max(0.0)),
        };
        Self {
            pv_w,
            loads_w,
            battery_w,
            grid_w: None,
            genset_w: None,
            soc_pct: mean(of_table(ReadingTable::Battery).map(|p| p.soc)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reading::{SourceKind, Value};
    use std::sync::Arc;

    fn reading(table: ReadingTable, values: &[(&'static str, f64)]) -> Reading {
        Reading {
            site: Arc::from(""),
            device: format!("{table}"),
            table,
            source: SourceKind::Modbus,
            measured_at: chrono::Utc::now(),
            unconfirmed: None,
            values: values.iter().map(|(c, v)| (*c, Value::Float(*v))).collect(),
        }
    }

    #[test]
    fn a_system_overview_gives_the_flow() {
        let system = reading(
            ReadingTable::System,
            &[
                ("dc_pv_power", 1200.0),
                ("pv_on_output_l1_power", 300.0),
                ("ac_consumption_l1_power", 700.0),
                ("dc_system_power", 50.0),
                ("battery_power", 750.0),
                ("battery_soc", 81.5),
            ],
        );
        // A charger of the same site does not count twice.
        let charger = reading(ReadingTable::Solar, &[("pv_power", 1200.0)]);
        let flow = Flow::of([&system, &charger]);
        assert_eq!(flow.pv_w, Some(1500.0));
        assert_eq!(flow.loads_w, Some(750.0));
        assert_eq!(flow.battery_w, Some(750.0));
        assert_eq!(flow.grid_w, None);
        assert_eq!(flow.soc_pct, Some(81.5));
    }

    #[test]
    fn the_flow_is_made_of_its_metrics_only() {
        for table in ReadingTable::ALL {
            let float = |keep: bool| -> Vec<(&'static str, f64)> {
                table
                    .columns()
                    .iter()
                    .filter(|(c, k)| {
                        *k == crate::reading::ColumnKind::Float && metrics().contains(c) == keep
                    })
                    .map(|(c, _)| (*c, 100.0))
                    .collect()
            };
            let others = reading(table, &float(false));
            assert_eq!(Flow::of([&others]), Flow::default(), "{table}");
            let own = reading(table, &float(true));
            let flow = Flow::of([&own]);
            if table != ReadingTable::Inverter {
                assert!(flow.pv_w.is_some() || flow.soc_pct.is_some(), "{table}");
            }
        }
    }

    #[test]
    fn without_one_loads_are_what_pv_and_the_battery_leave() {
        let a = reading(ReadingTable::Solar, &[("pv_power", 400.0)]);
        let b = reading(ReadingTable::Solar, &[("pv_power", 100.0)]);
        let bank = reading(ReadingTable::Battery, &[("power", -200.0), ("soc", 64.0)]);
        let flow = Flow::of([&a, &b, &bank]);
        assert_eq!(flow.pv_w, Some(500.0));
        assert_eq!(flow.battery_w, Some(-200.0));
        // 500 W of PV and 200 W out of the battery: 700 W of loads.
        assert_eq!(flow.loads_w, Some(700.0));
        assert_eq!(flow.soc_pct, Some(64.0));
        assert_eq!(Flow::of([]), Flow::default());
    }
}
