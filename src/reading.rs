//! The reading: one wide row for one device at one measurement time, the
//! contract between sources (Modbus, VE.Direct) and stores. Which columns
//! exist, and with which type, is defined here once per reading table; the
//! migrations create the same columns (an integration test holds them to it).

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::clock::Mono;

/// The reading tables of schema `victron`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ReadingTable {
    /// `victron.battery_readings`: battery monitors.
    Battery,
    /// `victron.solar_readings`: MPPT solar chargers.
    Solar,
    /// `victron.inverter_readings`: inverters and inverter/chargers.
    Inverter,
    /// `victron.system_readings`: the GX system overview.
    System,
}

impl ReadingTable {
    /// Every table.
    pub const ALL: [ReadingTable; 4] = [Self::Battery, Self::Solar, Self::Inverter, Self::System];

    /// The table name in schema `victron`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Battery => "battery_readings",
            Self::Solar => "solar_readings",
            Self::Inverter => "inverter_readings",
            Self::System => "system_readings",
        }
    }

    /// The value columns (all but the common ones), with their kind. New
    /// columns go at the end of a table's list: the local store keeps a
    /// reading's values by their position in it.
    pub fn columns(self) -> &'static [(&'static str, ColumnKind)] {
        use ColumnKind::{Float, Int, Text};
        match self {
            Self::Battery => &[
                ("soc", Float),
                ("voltage", Float),
                ("current", Float),
                ("power", Float),
                ("state", Text),
                ("temperature", Float),
                ("consumed_ah", Float),
                ("time_to_go_s", Float),
                ("starter_voltage", Float),
                ("midpoint_voltage", Float),
                ("midpoint_deviation_pct", Float),
                ("min_cell_voltage", Float),
                ("max_cell_voltage", Float),
                ("state_of_health_pct", Float),
                ("alarm", Text),
                ("product_id", Int),
            ],
            Self::Solar => &[
                ("battery_voltage", Float),
                ("battery_current", Float),
                ("battery_temperature", Float),
                ("pv_voltage", Float),
                ("pv_current", Float),
                ("pv_power", Float),
                ("load_current", Float),
                ("yield_today_kwh", Float),
                ("yield_yesterday_kwh", Float),
                ("yield_total_kwh", Float),
                ("max_power_today_w", Float),
                ("max_power_yesterday_w", Float),
                ("charge_state", Text),
                ("mppt_mode", Text),
                ("error_code", Int),
                ("error", Text),
                ("product_id", Int),
            ],
            Self::Inverter => &[
                ("ac_in_l1_voltage", Float),
                ("ac_in_l1_current", Float),
                ("ac_in_l1_frequency", Float),
                ("ac_in_l1_power", Float),
                ("ac_in_l2_voltage", Float),
                ("ac_in_l2_current", Float),
                ("ac_in_l2_frequency", Float),
                ("ac_in_l2_power", Float),
                ("ac_in_l3_voltage", Float),
                ("ac_in_l3_current", Float),
                ("ac_in_l3_frequency", Float),
                ("ac_in_l3_power", Float),
                ("ac_out_l1_voltage", Float),
                ("ac_out_l1_current", Float),
                ("ac_out_l1_frequency", Float),
                ("ac_out_l1_power", Float),
                ("ac_out_l2_voltage", Float),
                ("ac_out_l2_current", Float),
                ("ac_out_l2_frequency", Float),
                ("ac_out_l2_power", Float),
                ("ac_out_l3_voltage", Float),
                ("ac_out_l3_current", Float),
                ("ac_out_l3_frequency", Float),
                ("ac_out_l3_power", Float),
                ("dc_voltage", Float),
                ("dc_current", Float),
                ("soc", Float),
                ("state", Text),
                ("mode", Text),
                ("active_input", Text),
                ("alarms", Text),
                ("error_code", Int),
                ("product_id", Int),
            ],
            Self::System => &[
                ("ac_consumption_l1_power", Float),
                ("ac_consumption_l2_power", Float),
                ("ac_consumption_l3_power", Float),
                ("grid_l1_power", Float),
                ("grid_l2_power", Float),
                ("grid_l3_power", Float),
                ("genset_l1_power", Float),
                ("genset_l2_power", Float),
                ("genset_l3_power", Float),
                ("pv_on_output_l1_power", Float),
                ("pv_on_output_l2_power", Float),
                ("pv_on_output_l3_power", Float),
                ("pv_on_input_l1_power", Float),
                ("pv_on_input_l2_power", Float),
                ("pv_on_input_l3_power", Float),
                ("dc_pv_power", Float),
                ("dc_pv_current", Float),
                ("dc_system_power", Float),
                ("battery_voltage", Float),
                ("battery_current", Float),
                ("battery_power", Float),
                ("battery_soc", Float),
                ("battery_state", Text),
                ("battery_consumed_ah", Float),
                ("battery_time_to_go_s", Float),
                ("active_input_source", Text),
            ],
        }
    }

    /// The kind of column `name`, if the table has it.
    pub fn column_kind(self, name: &str) -> Option<ColumnKind> {
        self.columns()
            .iter()
            .find(|(c, _)| *c == name)
            .map(|(_, k)| *k)
    }
}

impl fmt::Display for ReadingTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The SQL type family of a value column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnKind {
    /// `double precision`.
    Float,
    /// `integer`.
    Int,
    /// `text` or `varchar`.
    Text,
}

/// A column value. A column that is absent from a reading is NULL.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A measured quantity in SI units (V, A, W, °C, %, Ah, kWh, s, Hz).
    Float(f64),
    /// A code or identifier.
    Int(i64),
    /// A state or enum text (borrowed when it is one of a fixed set).
    Text(Cow<'static, str>),
}

/// Where a reading came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// A GX over Modbus-TCP.
    Modbus,
    /// A VE.Direct device over serial or TCP.
    VeDirect,
}

impl SourceKind {
    /// The `source` column's text.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Modbus => "modbus",
            Self::VeDirect => "vedirect",
        }
    }
}

/// One device's values at one measurement time.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    /// The site the device belongs to (`installation_id`; `""` for none):
    /// with the device, the reading's identity.
    pub site: Arc<str>,
    /// The device's configured name (unique within its site).
    pub device: String,
    /// The table the row belongs to.
    pub table: ReadingTable,
    /// Modbus or VE.Direct.
    pub source: SourceKind,
    /// When the values were measured (the read completed), UTC.
    pub measured_at: DateTime<Utc>,
    /// While the measurement time is not confirmed: the boot-clock moment
    /// of the measurement (`measured_at` is then the local clock's reading,
    /// which may be wrong). Sources set it; [`crate::clock::TimeKeeper`]
    /// confirms the time, or the reading is held until it can.
    pub unconfirmed: Option<Mono>,
    /// Column values; columns not listed are NULL. Names are from
    /// [`ReadingTable::columns`].
    pub values: Vec<(&'static str, Value)>,
}

/// The current (A) beyond which a battery counts as charging or discharging.
pub(crate) const BATTERY_IDLE_BAND_A: f64 = 0.5;

/// A battery's state from its current (positive while charging), the one rule
/// every source uses: `charging`, `discharging`, or `idle` within
/// ±[`BATTERY_IDLE_BAND_A`].
pub(crate) fn battery_state(current_a: f64) -> &'static str {
    if current_a > BATTERY_IDLE_BAND_A {
        "charging"
    } else if current_a < -BATTERY_IDLE_BAND_A {
        "discharging"
    } else {
        "idle"
    }
}

impl Reading {
    /// The value of `column`, if present.
    pub fn get(&self, column: &str) -> Option<&Value> {
        self.values
            .iter()
            .find(|(c, _)| *c == column)
            .map(|(_, v)| v)
    }

    /// The value of a float column, if present.
    pub fn float(&self, column: &str) -> Option<f64> {
        match self.get(column)? {
            Value::Float(v) => Some(*v),
            Value::Int(v) => Some(*v as f64),
            Value::Text(_) => None,
        }
    }

    /// The value of a text column, if present.
    pub fn text(&self, column: &str) -> Option<&str> {
        match self.get(column)? {
            Value::Text(t) => Some(t),
            _ => None,
        }
    }
}
