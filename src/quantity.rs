//! What each value column measures: its [`Unit`], its Prometheus name and
//! kind, and which of a device's values matter at a glance. One rule on the
//! column's name (`…voltage` is volts, `…_kwh` kilowatt-hours …), checked by
//! a test against every column of every reading table, so that a new column
//! gets its unit or fails the test.

use crate::reading::{ColumnKind, Reading, ReadingTable, Value};

/// The unit of a measured value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Unit {
    /// Percent (state of charge, state of health, deviation).
    Percent,
    /// Volts.
    Volt,
    /// Amperes.
    Ampere,
    /// Watts.
    Watt,
    /// Degrees Celsius.
    Celsius,
    /// Ampere-hours.
    AmpHour,
    /// Kilowatt-hours.
    KilowattHour,
    /// Seconds.
    Second,
    /// Hertz.
    Hertz,
}

impl Unit {
    /// The symbol people read: `%`, `V`, `A`, `W`, `°C`, `Ah`, `kWh`, `s`, `Hz`.
    pub fn symbol(self) -> &'static str {
        match self {
            Self::Percent => "%",
            Self::Volt => "V",
            Self::Ampere => "A",
            Self::Watt => "W",
            Self::Celsius => "°C",
            Self::AmpHour => "Ah",
            Self::KilowattHour => "kWh",
            Self::Second => "s",
            Self::Hertz => "Hz",
        }
    }

    /// The suffix of a Prometheus metric name in this unit.
    fn prometheus(self) -> &'static str {
        match self {
            Self::Percent => "percent",
            Self::Volt => "volts",
            Self::Ampere => "amperes",
            Self::Watt => "watts",
            Self::Celsius => "celsius",
            Self::AmpHour => "amp_hours",
            Self::KilowattHour => "kwh",
            Self::Second => "seconds",
            Self::Hertz => "hertz",
        }
    }
}

/// The unit of a numeric column, and the column's name without the unit's
/// own token (`yield_today_kwh` → `yield_today`, kWh). `None`: a code or an
/// identifier (`product_id`, `error_code`), or text.
pub fn unit_of(table: ReadingTable, column: &str) -> Option<(Unit, &str)> {
    if table.column_kind(column) != Some(ColumnKind::Float) {
        return None;
    }
    let suffixed = [
        ("_kwh", Unit::KilowattHour),
        ("_pct", Unit::Percent),
        ("_ah", Unit::AmpHour),
        ("_w", Unit::Watt),
        ("_s", Unit::Second),
    ];
    for (suffix, unit) in suffixed {
        if let Some(base) = column.strip_suffix(suffix) {
            return Some((unit, base));
        }
    }
    let contained = [
        ("voltage", Unit::Volt),
        ("current", Unit::Ampere),
        ("power", Unit::Watt),
        ("temperature", Unit::Celsius),
        ("frequency", Unit::Hertz),
        ("soc", Unit::Percent),
    ];
    contained
        .into_iter()
        .find(|(token, _)| column.split('_').any(|part| part == *token))
        .map(|(_, unit)| (unit, column))
}

/// A Prometheus metric of a column: its name and whether it is a counter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrometheusName {
    /// `victron_battery_soc_percent`, `victron_solar_yield_kwh_total` …
    pub name: String,
    /// A device's own running total (only goes up): a counter.
    pub counter: bool,
}

/// The Prometheus metric of a numeric column: `victron_<device kind>_<column>_<unit>`,
/// a total the device counts as `…_<unit>_total` (a counter); `None` for a
/// column without a unit.
pub fn prometheus_name(table: ReadingTable, column: &str) -> Option<PrometheusName> {
    let (unit, base) = unit_of(table, column)?;
    let kind = device_kind(table);
    Some(match base.strip_suffix("_total") {
        Some(base) => PrometheusName {
            name: format!("victron_{kind}_{base}_{}_total", unit.prometheus()),
            counter: true,
        },
        None => PrometheusName {
            name: format!("victron_{kind}_{base}_{}", unit.prometheus()),
            counter: false,
        },
    })
}

/// The kind of device a reading table holds: `battery`, `solar`,
/// `inverter`, `system`.
pub fn device_kind(table: ReadingTable) -> &'static str {
    match table {
        ReadingTable::Battery => "battery",
        ReadingTable::Solar => "solar",
        ReadingTable::Inverter => "inverter",
        ReadingTable::System => "system",
    }
}

/// The values of a device that matter at a glance, in the order shown.
pub fn headline(table: ReadingTable) -> &'static [&'static str] {
    match table {
        ReadingTable::Battery => &[
            "soc",
            "voltage",
            "current",
            "power",
            "time_to_go_s",
            "state",
        ],
        ReadingTable::Solar => &["pv_power", "charge_state", "yield_today_kwh"],
        ReadingTable::Inverter => &[
            "ac_out_l1_power",
            "ac_out_l2_power",
            "ac_out_l3_power",
            "state",
        ],
        ReadingTable::System => &[
            "dc_pv_power",
            "ac_consumption_l1_power",
            "battery_power",
            "battery_soc",
            "grid_l1_power",
            "genset_l1_power",
        ],
    }
}

/// A value of a reading as people read it: `86.2 %`, `52.28 V`,
/// `44h 33m` (a duration), `discharging`; `None` when absent.
pub fn shown(reading: &Reading, column: &str) -> Option<String> {
    Some(match reading.get(column)? {
        Value::Float(v) => match unit_of(reading.table, column).map(|(u, _)| u) {
            Some(Unit::Second) => format!(
                "{}h {:02}m",
                (*v / 3600.0) as i64,
                ((*v % 3600.0) / 60.0) as i64
            ),
            Some(unit) => format!("{} {}", trim_number(*v), unit.symbol()),
            None => trim_number(*v),
        },
        Value::Int(v) => v.to_string(),
        Value::Text(t) => t.to_string(),
    })
}

/// A power as people read it: `1.23 kW` from a kilowatt, else `850 W`.
pub fn watts(w: f64) -> String {
    if w.abs() >= 1000.0 {
        format!("{:.2} kW", w / 1000.0)
    } else {
        format!("{w:.0} W")
    }
}

/// A number with at most two decimals, without trailing zeros.
fn trim_number(v: f64) -> String {
    let text = format!("{v:.2}");
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// A column's label for people: `time_to_go_s` → `time to go`.
pub fn label(table: ReadingTable, column: &str) -> String {
    unit_of(table, column)
        .map_or(column, |(_, base)| base)
        .replace('_', " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_numeric_column_has_a_unit_and_every_code_none() {
        for table in ReadingTable::ALL {
            for (column, kind) in table.columns() {
                let unit = unit_of(table, column);
                match kind {
                    ColumnKind::Float => assert!(unit.is_some(), "{table}.{column} has no unit"),
                    ColumnKind::Int | ColumnKind::Text => {
                        assert!(unit.is_none(), "{table}.{column}")
                    }
                }
            }
        }
    }

    #[test]
    fn units_follow_the_column_names() {
        let expect = [
            (ReadingTable::Battery, "soc", "%"),
            (ReadingTable::Battery, "voltage", "V"),
            (ReadingTable::Battery, "current", "A"),
            (ReadingTable::Battery, "power", "W"),
            (ReadingTable::Battery, "temperature", "°C"),
            (ReadingTable::Battery, "consumed_ah", "Ah"),
            (ReadingTable::Battery, "time_to_go_s", "s"),
            (ReadingTable::Battery, "midpoint_deviation_pct", "%"),
            (ReadingTable::Solar, "yield_today_kwh", "kWh"),
            (ReadingTable::Solar, "max_power_today_w", "W"),
            (ReadingTable::Solar, "pv_voltage", "V"),
            (ReadingTable::Inverter, "ac_out_l1_frequency", "Hz"),
            (ReadingTable::System, "battery_soc", "%"),
            (ReadingTable::System, "battery_time_to_go_s", "s"),
        ];
        for (table, column, symbol) in expect {
            assert_eq!(
                unit_of(table, column).map(|(u, _)| u.symbol()),
                Some(symbol),
                "{table}.{column}"
            );
        }
    }

    #[test]
    fn prometheus_names_are_unique_valid_and_say_their_unit() {
        assert_eq!(
            prometheus_name(ReadingTable::Battery, "soc").unwrap().name,
            "victron_battery_soc_percent"
        );
        assert_eq!(
            prometheus_name(ReadingTable::Battery, "power")
                .unwrap()
                .name,
            "victron_battery_power_watts"
        );
        assert_eq!(
            prometheus_name(ReadingTable::Battery, "voltage")
                .unwrap()
                .name,
            "victron_battery_voltage_volts"
        );
        let total = prometheus_name(ReadingTable::Solar, "yield_total_kwh").unwrap();
        assert_eq!(total.name, "victron_solar_yield_kwh_total");
        assert!(total.counter);
        let today = prometheus_name(ReadingTable::Solar, "yield_today_kwh").unwrap();
        assert_eq!(today.name, "victron_solar_yield_today_kwh");
        assert!(!today.counter);
        assert_eq!(prometheus_name(ReadingTable::Battery, "product_id"), None);

        let mut seen = std::collections::HashSet::new();
        for table in ReadingTable::ALL {
            for (column, _) in table.columns() {
                let Some(metric) = prometheus_name(table, column) else {
                    continue;
                };
                assert!(
                    metric
                        .name
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
                    "{}",
                    metric.name
                );
                assert!(seen.insert(metric.name.clone()), "{} twice", metric.name);
            }
        }
    }

    #[test]
    fn values_are_shown_with_their_unit() {
        let reading = Reading {
            site: std::sync::Arc::from(""),
            device: "bank".into(),
            table: ReadingTable::Battery,
            source: crate::reading::SourceKind::VeDirect,
            measured_at: chrono::Utc::now(),
            unconfirmed: None,
            values: vec![
                ("soc", Value::Float(86.25)),
                ("voltage", Value::Float(52.3)),
                ("time_to_go_s", Value::Float(160_400.0)),
                ("state", Value::Text("discharging".into())),
            ],
        };
        assert_eq!(shown(&reading, "soc").as_deref(), Some("86.25 %"));
        assert_eq!(shown(&reading, "voltage").as_deref(), Some("52.3 V"));
        // 160,400 s = 44 h 33 min 20 s.
        assert_eq!(shown(&reading, "time_to_go_s").as_deref(), Some("44h 33m"));
        assert_eq!(shown(&reading, "state").as_deref(), Some("discharging"));
        assert_eq!(shown(&reading, "current"), None);
        assert_eq!(label(ReadingTable::Battery, "time_to_go_s"), "time to go");
    }

    #[test]
    fn headline_values_are_columns_of_their_table() {
        for table in ReadingTable::ALL {
            for column in headline(table) {
                assert!(table.column_kind(column).is_some(), "{table}.{column}");
            }
        }
    }
}
