//! A device's latest values, merged from a cycle's valid blocks
//! ([`Snapshot`]), and the snapshot → reading-table row mapping (the product
//! id decides the table).

use std::borrow::Cow;

use chrono::{DateTime, Utc};

use super::catalog::{
    alarm_reasons, error_text, mode_text, mppt_text, state_text, table_of_product,
};
use super::labels::{LABELS, SLOTS, Typed, firmware_version, slot, type_into};
use crate::reading::{ReadingTable, Value};
use crate::sources::vedirect::codec::TextBlock;

/// A device's latest values, merged from consecutive valid blocks.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// One slot per label; a slot counts only while its `present` bit is set
    /// (slots keep their allocations across cycles).
    values: Box<[Option<Typed>; SLOTS]>,
    present: u64,
    /// Labels the table does not know, counted not kept.
    pub unknown_labels: u32,
    /// Fields whose value did not parse (left empty).
    pub bad_values: u32,
    /// Which labels had a value that did not parse (one bit per slot).
    bad_labels: u64,
    /// Blocks merged into it.
    pub(crate) blocks: u32,
    /// When its last block arrived.
    pub(crate) received_at: DateTime<Utc>,
}

impl Snapshot {
    pub(super) fn empty(at: DateTime<Utc>) -> Self {
        Self {
            values: Box::new(std::array::from_fn(|_| None)),
            present: 0,
            unknown_labels: 0,
            bad_values: 0,
            bad_labels: 0,
            blocks: 0,
            received_at: at,
        }
    }

    /// Empties the snapshot for reuse.
    pub(super) fn reset(&mut self, at: DateTime<Utc>) {
        self.present = 0;
        self.unknown_labels = 0;
        self.bad_values = 0;
        self.bad_labels = 0;
        self.blocks = 0;
        self.received_at = at;
    }

    /// Types a single block into a fresh snapshot.
    pub fn from_block(block: &TextBlock, at: DateTime<Utc>) -> Self {
        let mut snapshot = Self::empty(at);
        snapshot.merge(block, at);
        snapshot
    }

    /// Adds a block's fields (later values win).
    pub(crate) fn merge(&mut self, block: &TextBlock, at: DateTime<Utc>) {
        for (label, value) in block.fields() {
            match slot(label) {
                Some(i) => {
                    if type_into(LABELS[i].1, value, &mut self.values[i]) {
                        self.present |= 1 << i;
                    } else {
                        self.present &= !(1 << i);
                        self.bad_values += 1;
                        self.bad_labels |= 1 << i;
                    }
                }
                None => self.unknown_labels += 1,
            }
        }
        self.blocks += 1;
        self.received_at = at;
    }

    /// The labels whose values did not parse, as bits of the label table's
    /// order (see [`Self::label_names`]).
    pub(crate) fn bad_labels(&self) -> u64 {
        self.bad_labels
    }

    /// The labels of the set bits of `bits` ([`Self::bad_labels`]).
    pub(crate) fn label_names(bits: u64) -> impl Iterator<Item = &'static str> {
        LABELS
            .iter()
            .enumerate()
            .filter(move |(i, _)| bits >> i & 1 == 1)
            .map(|(_, (label, _))| *label)
    }

    /// The typed value of `label`.
    pub fn get(&self, label: &str) -> Option<&Typed> {
        let i = slot(label.as_bytes())?;
        if self.present >> i & 1 == 0 {
            return None;
        }
        self.values[i].as_ref()
    }

    pub(super) fn number(&self, label: &str) -> Option<f64> {
        match self.get(label)? {
            Typed::Number(n) => Some(*n),
            Typed::Int(n) => Some(*n as f64),
            _ => None,
        }
    }

    fn int(&self, label: &str) -> Option<i64> {
        match self.get(label)? {
            Typed::Int(n) => Some(*n),
            _ => None,
        }
    }

    fn text(&self, label: &str) -> Option<&str> {
        match self.get(label)? {
            Typed::Text(t) => Some(t),
            _ => None,
        }
    }

    /// The product id (`PID`).
    pub fn product_id(&self) -> Option<i64> {
        self.int("PID")
    }

    /// The serial number (`SER#`).
    pub(crate) fn serial(&self) -> Option<&str> {
        self.text("SER#")
    }

    /// The firmware version as `x.yy` (`FW 0308` → 3.08, `FW 159` → 1.59,
    /// `FWE 0208FF` → 2.08); `None` without a valid `FW` or `FWE` (a value
    /// that is no version was counted as a bad value and left empty).
    pub fn firmware(&self) -> Option<String> {
        [("FW", false), ("FWE", true)]
            .into_iter()
            .find_map(|(label, release)| firmware_version(self.text(label)?.as_bytes(), release))
    }

    /// Which reading table this device's rows go to: from the product id,
    /// else from the fields it sends.
    pub fn table(&self) -> Option<ReadingTable> {
        if let Some(pid) = self.product_id() {
            if let Some(table) = table_of_product(pid) {
                return Some(table);
            }
        }
        if self.get("SOC").is_some() || self.get("CE").is_some() {
            Some(ReadingTable::Battery)
        } else if self.get("PPV").is_some() || self.get("VPV").is_some() {
            Some(ReadingTable::Solar)
        } else if self.get("AC_OUT_V").is_some() {
            Some(ReadingTable::Inverter)
        } else {
            None
        }
    }

    /// The reading-table columns of this snapshot for `table`.
    pub fn columns(&self, table: ReadingTable) -> Vec<(&'static str, Value)> {
        let mut out: Vec<(&'static str, Value)> = Vec::with_capacity(16);
        let mut num = |column: &'static str, v: Option<f64>| {
            if let Some(v) = v.filter(|v| v.is_finite()) {
                out.push((column, Value::Float(v)));
            }
        };
        match table {
            ReadingTable::Battery => {
                num("voltage", self.number("V"));
                num("current", self.number("I"));
                num("power", self.number("P"));
                num("consumed_ah", self.number("CE"));
                num("soc", self.number("SOC"));
                num("time_to_go_s", self.number("TTG"));
                num("temperature", self.number("T"));
                num("starter_voltage", self.number("VS"));
                num("midpoint_voltage", self.number("VM"));
                num("midpoint_deviation_pct", self.number("DM"));
                if let Some(current) = self.number("I") {
                    let state = crate::reading::battery_state(current);
                    out.push(("state", Value::Text(Cow::Borrowed(state))));
                }
                if let Some(Typed::Bool(on)) = self.get("Alarm") {
                    let reasons = if *on {
                        alarm_reasons(self.int("AR").unwrap_or(0))
                    } else {
                        String::new()
                    };
                    out.push(("alarm", Value::Text(Cow::Owned(reasons))));
                }
            }
            ReadingTable::Solar => {
                num("battery_voltage", self.number("V"));
                num("battery_current", self.number("I"));
                num("pv_voltage", self.number("VPV"));
                num("pv_power", self.number("PPV"));
                let pv_current = match (self.number("PPV"), self.number("VPV")) {
                    (Some(p), Some(v)) if v > 0.5 => Some(p / v),
                    _ => None,
                };
                num("pv_current", pv_current);
                num("load_current", self.number("IL"));
                num("yield_total_kwh", self.number("H19"));
                num("yield_today_kwh", self.number("H20"));
                num("max_power_today_w", self.number("H21"));
                num("yield_yesterday_kwh", self.number("H22"));
                num("max_power_yesterday_w", self.number("H23"));
                if let Some(cs) = self.int("CS") {
                    out.push(("charge_state", Value::Text(state_text(cs))));
                }
                if let Some(mode) = self.int("MPPT") {
                    out.push(("mppt_mode", Value::Text(mppt_text(mode))));
                }
                if let Some(err) = self.int("ERR") {
                    out.push(("error_code", Value::Int(err)));
                    out.push(("error", Value::Text(error_text(err))));
                }
            }
            ReadingTable::Inverter => {
                num("ac_out_l1_voltage", self.number("AC_OUT_V"));
                num("ac_out_l1_current", self.number("AC_OUT_I"));
                num("dc_voltage", self.number("V"));
                num("dc_current", self.number("I"));
                if let Some(cs) = self.int("CS") {
                    out.push(("state", Value::Text(state_text(cs))));
                }
                if let Some(mode) = self.int("MODE") {
                    out.push(("mode", Value::Text(mode_text(mode))));
                }
                let bits = self.int("AR").unwrap_or(0) | self.int("WARN").unwrap_or(0);
                if self.get("AR").is_some() || self.get("WARN").is_some() {
                    out.push(("alarms", Value::Text(Cow::Owned(alarm_reasons(bits)))));
                }
            }
            ReadingTable::System => {}
        }
        if let Some(pid) = self.product_id() {
            out.push(("product_id", Value::Int(pid)));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::vedirect::fields::labels::Kind;
    use crate::sources::vedirect::fields::merger::Merger;
    use crate::sources::vedirect::fields::tests_support::block;

    #[test]
    fn units_become_si() {
        let s = Snapshot::from_block(
            &block(&[
                ("PID", "0x203"),
                ("V", "12065"),
                ("I", "-7625"),
                ("P", "-92"),
                ("CE", "-65473"),
                ("SOC", "839"),
                ("TTG", "-1"),
                ("Alarm", "OFF"),
                ("AR", "0"),
                ("FW", "0308"),
                ("H6", "-2316635"),
                ("H17", "12345"),
            ]),
            Utc::now(),
        );
        assert_eq!(s.get("V"), Some(&Typed::Number(12.065)));
        assert_eq!(s.get("I"), Some(&Typed::Number(-7.625)));
        assert_eq!(s.get("CE"), Some(&Typed::Number(-65.473)));
        assert_eq!(s.get("SOC"), Some(&Typed::Number(83.9)));
        assert_eq!(s.get("TTG"), Some(&Typed::None));
        assert_eq!(s.get("H6"), Some(&Typed::Number(-2316.635)));
        assert_eq!(s.get("H17"), Some(&Typed::Number(123.45)));
        assert_eq!(s.product_id(), Some(0x203));
        assert_eq!(s.firmware().as_deref(), Some("3.08"));
        assert_eq!(s.table(), Some(ReadingTable::Battery));
        let cols = s.columns(ReadingTable::Battery);
        assert!(cols.contains(&("soc", Value::Float(83.9))));
        assert!(cols.contains(&("state", Value::Text("discharging".into()))));
        assert!(cols.contains(&("alarm", Value::Text("".into()))));
        assert!(
            !cols.iter().any(|(c, _)| *c == "time_to_go_s"),
            "TTG -1 is NULL"
        );
    }

    #[test]
    fn bad_values_are_counted_and_left_empty() {
        let s = Snapshot::from_block(
            &block(&[("V", "12x"), ("SOC", "99999999999999999999"), ("ZZZ", "1")]),
            Utc::now(),
        );
        assert_eq!((s.bad_values, s.unknown_labels), (2, 1));
        assert_eq!(s.get("V"), None);
    }

    /// Every column a VE.Direct device can emit, for each table, is a column
    /// of that table: a misspelt name fails here, not silently in the
    /// forwarder.
    #[test]
    fn every_column_a_device_emits_exists_in_its_table() {
        for (pid, table) in [
            ("0x203", ReadingTable::Battery),
            ("0xA05F", ReadingTable::Solar),
            ("0xA201", ReadingTable::Inverter),
        ] {
            // Every label, with a value of its kind.
            let fields: Vec<(&str, &str)> = LABELS
                .iter()
                .map(|(label, kind)| {
                    let value = match (label, kind) {
                        (&"PID", _) => pid,
                        (_, Kind::Hex) => "0x1",
                        (_, Kind::OnOff) => "ON",
                        (_, Kind::Text) => "x",
                        _ => "1500",
                    };
                    (*label, value)
                })
                .collect();
            let half = fields.len() / 2;
            let mut merger = Merger::new();
            let now = Utc::now();
            // Two blocks a cycle (at most 48 fields a block); PID first.
            let (first, second) = fields.split_at(half);
            let mut first = first.to_vec();
            let pid_at = fields.iter().position(|(l, _)| *l == "PID").unwrap();
            let mut second = second.to_vec();
            let pid = if pid_at < half {
                first.remove(pid_at)
            } else {
                second.remove(pid_at - half)
            };
            first.insert(0, pid);
            for _ in 0..2 {
                merger.push(&block(&first), now);
                merger.push(&block(&second), now);
            }
            let snapshot = merger.latest().unwrap();
            assert_eq!(snapshot.table(), Some(table));
            let columns = snapshot.columns(table);
            assert!(columns.len() > 5, "{table:?}: {columns:?}");
            for (column, _) in &columns {
                assert!(
                    table.column_kind(column).is_some(),
                    "{column} is not a column of {}",
                    table.name()
                );
            }
        }
    }

    #[test]
    fn scaled_labels_are_the_nearest_double_to_their_decimal() {
        let s = Snapshot::from_block(
            &block(&[
                ("H19", "86517"),
                ("V", "12619"),
                ("I", "-6300"),
                ("SOC", "3"),
            ]),
            Utc::now(),
        );
        assert_eq!(s.number("H19").unwrap().to_string(), "865.17");
        assert_eq!(s.number("V").unwrap().to_string(), "12.619");
        assert_eq!(s.number("I").unwrap().to_string(), "-6.3");
        assert_eq!(s.number("SOC").unwrap().to_string(), "0.3");
    }
}
