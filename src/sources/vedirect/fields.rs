//! VE.Direct labels → typed values in SI units, enums to text, product ids to
//! names; merging a device's consecutive blocks into one snapshot; and the
//! snapshot → reading-table row mapping (the product id decides the table).
//!
//! Units: mV → V, mA → A, mAh → Ah, ‰ → %, minutes → s (`TTG -1` = NULL),
//! 0.01 kWh → kWh, 0.01 V and 0.1 A for inverter AC output.

use std::borrow::Cow;

use chrono::{DateTime, Utc};

use super::codec::TextBlock;
use crate::reading::{ReadingTable, Value};

/// A typed field value.
#[derive(Debug, Clone, PartialEq)]
pub enum Typed {
    /// A quantity in SI units.
    Number(f64),
    /// A whole number without unit (counts, codes, bitmasks).
    Int(i64),
    /// ON/OFF.
    Bool(bool),
    /// Text (serial number, model, firmware, enum texts).
    Text(String),
    /// A number the device marks as not applicable (`TTG -1`).
    None,
}

/// How a label's value is read.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    /// Decimal integer in units of 10^−k of the SI unit (mV: 3, 0.01 kWh:
    /// 2, W: 0) → the SI number nearest to that decimal.
    Decimal(u8),
    /// Decimal integer, kept as is.
    Int,
    /// `0x` hex integer.
    Hex,
    /// ON/OFF.
    OnOff,
    /// Text.
    Text,
    /// Minutes, −1 = infinite.
    Minutes,
}

/// Every label of the notes, with how to read it.
const LABELS: &[(&str, Kind)] = &[
    ("V", Kind::Decimal(3)),
    ("V2", Kind::Decimal(3)),
    ("V3", Kind::Decimal(3)),
    ("VS", Kind::Decimal(3)),
    ("VM", Kind::Decimal(3)),
    ("DM", Kind::Decimal(1)),
    ("VPV", Kind::Decimal(3)),
    ("PPV", Kind::Decimal(0)),
    ("I", Kind::Decimal(3)),
    ("I2", Kind::Decimal(3)),
    ("I3", Kind::Decimal(3)),
    ("IL", Kind::Decimal(3)),
    ("LOAD", Kind::OnOff),
    ("T", Kind::Decimal(0)),
    ("P", Kind::Decimal(0)),
    ("CE", Kind::Decimal(3)),
    ("SOC", Kind::Decimal(1)),
    ("TTG", Kind::Minutes),
    ("Alarm", Kind::OnOff),
    ("Relay", Kind::OnOff),
    ("AR", Kind::Int),
    ("OR", Kind::Hex),
    ("H1", Kind::Decimal(3)),
    ("H2", Kind::Decimal(3)),
    ("H3", Kind::Decimal(3)),
    ("H4", Kind::Int),
    ("H5", Kind::Int),
    ("H6", Kind::Decimal(3)),
    ("H7", Kind::Decimal(3)),
    ("H8", Kind::Decimal(3)),
    ("H9", Kind::Decimal(0)),
    ("H10", Kind::Int),
    ("H11", Kind::Int),
    ("H12", Kind::Int),
    ("H13", Kind::Int),
    ("H14", Kind::Int),
    ("H15", Kind::Decimal(3)),
    ("H16", Kind::Decimal(3)),
    ("H17", Kind::Decimal(2)),
    ("H18", Kind::Decimal(2)),
    ("H19", Kind::Decimal(2)),
    ("H20", Kind::Decimal(2)),
    ("H21", Kind::Decimal(0)),
    ("H22", Kind::Decimal(2)),
    ("H23", Kind::Decimal(0)),
    ("HSDS", Kind::Int),
    ("ERR", Kind::Int),
    ("CS", Kind::Int),
    ("MPPT", Kind::Int),
    ("MODE", Kind::Int),
    ("WARN", Kind::Int),
    ("MON", Kind::Int),
    ("AC_OUT_V", Kind::Decimal(2)),
    ("AC_OUT_I", Kind::Decimal(1)),
    ("AC_OUT_S", Kind::Decimal(0)),
    ("DC_IN_V", Kind::Decimal(2)),
    ("DC_IN_I", Kind::Decimal(1)),
    ("DC_IN_P", Kind::Decimal(0)),
    ("PID", Kind::Hex),
    ("SER#", Kind::Text),
    ("FW", Kind::Text),
    ("FWE", Kind::Text),
    ("BMV", Kind::Text),
    ("HC#", Kind::Text),
];

/// The number of known labels (the snapshot's slots; at most 64, one bit each).
const SLOTS: usize = LABELS.len();
const _: () = assert!(SLOTS <= 64);

fn slot(label: &[u8]) -> Option<usize> {
    // A match compiles to a decision tree: much faster than scanning LABELS.
    // A unit test holds it to LABELS' order.
    Some(match label {
        b"V" => 0,
        b"V2" => 1,
        b"V3" => 2,
        b"VS" => 3,
        b"VM" => 4,
        b"DM" => 5,
        b"VPV" => 6,
        b"PPV" => 7,
        b"I" => 8,
        b"I2" => 9,
        b"I3" => 10,
        b"IL" => 11,
        b"LOAD" => 12,
        b"T" => 13,
        b"P" => 14,
        b"CE" => 15,
        b"SOC" => 16,
        b"TTG" => 17,
        b"Alarm" => 18,
        b"Relay" => 19,
        b"AR" => 20,
        b"OR" => 21,
        b"H1" => 22,
        b"H2" => 23,
        b"H3" => 24,
        b"H4" => 25,
        b"H5" => 26,
        b"H6" => 27,
        b"H7" => 28,
        b"H8" => 29,
        b"H9" => 30,
        b"H10" => 31,
        b"H11" => 32,
        b"H12" => 33,
        b"H13" => 34,
        b"H14" => 35,
        b"H15" => 36,
        b"H16" => 37,
        b"H17" => 38,
        b"H18" => 39,
        b"H19" => 40,
        b"H20" => 41,
        b"H21" => 42,
        b"H22" => 43,
        b"H23" => 44,
        b"HSDS" => 45,
        b"ERR" => 46,
        b"CS" => 47,
        b"MPPT" => 48,
        b"MODE" => 49,
        b"WARN" => 50,
        b"MON" => 51,
        b"AC_OUT_V" => 52,
        b"AC_OUT_I" => 53,
        b"AC_OUT_S" => 54,
        b"DC_IN_V" => 55,
        b"DC_IN_I" => 56,
        b"DC_IN_P" => 57,
        b"PID" => 58,
        b"SER#" => 59,
        b"FW" => 60,
        b"FWE" => 61,
        b"BMV" => 62,
        b"HC#" => 63,
        _ => return None,
    })
}

/// A decimal integer, optionally negative; `None` on anything else or overflow.
fn parse_int(value: &[u8]) -> Option<i64> {
    let (negative, digits) = match value.split_first()? {
        (b'-', rest) => (true, rest),
        _ => (false, value),
    };
    if digits.is_empty() {
        return None;
    }
    let mut n: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(i64::from(d - b'0'))?;
    }
    Some(if negative { -n } else { n })
}

fn parse_hex(value: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(value).ok()?.trim();
    let digits = text
        .strip_prefix("0x")
        .or_else(|| text.strip_prefix("0X"))?;
    i64::from_str_radix(digits, 16).ok()
}

/// `n × 10^−k` as the double nearest to that decimal: dividing by the
/// exact power of ten rounds once (`86517 / 100` = 865.17), where
/// multiplying by an inexact 0.01 does not (865.1700000000001).
fn decimal(n: i64, k: u8) -> f64 {
    // Powers of ten up to 10^22 are exact doubles.
    n as f64 / 10f64.powi(i32::from(k))
}

/// Types one field into `slot`, reusing a text's allocation; false when the
/// value does not parse.
fn type_into(kind: Kind, value: &[u8], slot: &mut Option<Typed>) -> bool {
    let typed = match kind {
        Kind::Decimal(k) => parse_int(value).map(|n| Typed::Number(decimal(n, k))),
        Kind::Int => parse_int(value).map(Typed::Int),
        Kind::Hex => parse_hex(value).map(Typed::Int),
        Kind::OnOff => match value {
            b"ON" => Some(Typed::Bool(true)),
            b"OFF" => Some(Typed::Bool(false)),
            _ => None,
        },
        Kind::Text => {
            let mut text = match slot.take() {
                Some(Typed::Text(mut text)) => {
                    text.clear();
                    text
                }
                _ => String::with_capacity(value.len()),
            };
            match std::str::from_utf8(value) {
                Ok(utf8) if value.is_ascii() => text.push_str(utf8),
                // Latin-1, byte by byte.
                _ => text.extend(value.iter().map(|b| char::from(*b))),
            }
            Some(Typed::Text(text))
        }
        Kind::Minutes => parse_int(value).map(|minutes| match minutes {
            -1 => Typed::None,
            minutes => Typed::Number(minutes as f64 * 60.0),
        }),
    };
    match typed {
        Some(typed) => {
            *slot = Some(typed);
            true
        }
        None => false,
    }
}

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
    /// Blocks merged into it.
    pub blocks: u32,
    /// When its last block arrived.
    pub received_at: DateTime<Utc>,
}

impl Snapshot {
    fn empty(at: DateTime<Utc>) -> Self {
        Self {
            values: Box::new(std::array::from_fn(|_| None)),
            present: 0,
            unknown_labels: 0,
            bad_values: 0,
            blocks: 0,
            received_at: at,
        }
    }

    /// Empties the snapshot for reuse.
    fn reset(&mut self, at: DateTime<Utc>) {
        self.present = 0;
        self.unknown_labels = 0;
        self.bad_values = 0;
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
    pub fn merge(&mut self, block: &TextBlock, at: DateTime<Utc>) {
        for (label, value) in block.fields() {
            match slot(label) {
                Some(i) => {
                    if type_into(LABELS[i].1, value, &mut self.values[i]) {
                        self.present |= 1 << i;
                    } else {
                        self.present &= !(1 << i);
                        self.bad_values += 1;
                    }
                }
                None => self.unknown_labels += 1,
            }
        }
        self.blocks += 1;
        self.received_at = at;
    }

    /// The typed value of `label`.
    pub fn get(&self, label: &str) -> Option<&Typed> {
        let i = slot(label.as_bytes())?;
        if self.present >> i & 1 == 0 {
            return None;
        }
        self.values[i].as_ref()
    }

    fn number(&self, label: &str) -> Option<f64> {
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
    pub fn serial(&self) -> Option<&str> {
        self.text("SER#")
    }

    /// The firmware version as `x.yy` (`FW 0308` → 3.08, `FW 159` → 1.59).
    pub fn firmware(&self) -> Option<String> {
        let fw = self.text("FW").or_else(|| self.text("FWE"))?.trim();
        let digits = fw.trim_start_matches('0');
        match digits.len() {
            0 => Some("0.00".into()),
            1 | 2 => Some(format!("0.{digits:0>2}")),
            n => Some(format!("{}.{}", &digits[..n - 2], &digits[n - 2..])),
        }
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

/// Merges a device's consecutive blocks into one snapshot per cycle.
///
/// A cycle starts with a block whose first field is `PID`; the blocks after
/// it (a BMV's history block, an MPPT's second half) join it. A cycle is
/// complete when the next one starts, or as soon as it has as many blocks as
/// the device's cycles have (learned, below), so that it is published
/// without waiting for the next cycle.
///
/// The number of blocks per cycle is learned only from a *clean* cycle: one
/// that started with its `PID` block, lost no block to a failed checksum
/// ([`Self::lost_block`]), and was closed by the next `PID` block. It is
/// learned again from every clean cycle, so a device whose layout changes
/// (a firmware update, a BMV switched to another mode) is followed: a cycle
/// with fewer blocks is published when the next one starts, and a block
/// beyond the learned count shows that cycles grew. Nothing here depends on
/// when blocks arrive, only on their order, so a bridge that delivers the
/// stream in bursts gives the same snapshots as the line itself.
#[derive(Debug, Default)]
pub struct Merger {
    /// Where the current cycle stands.
    cycle: Cycle,
    /// The current cycle's snapshot while it is [`Cycle::Reading`] (its
    /// storage is reused from cycle to cycle).
    open: Option<Snapshot>,
    /// Blocks per cycle, from the last clean cycle.
    blocks_per_cycle: Option<u32>,
    /// The latest complete snapshot.
    complete: Option<Snapshot>,
    /// The one completed before it (one block can complete two cycles).
    previous: Option<Snapshot>,
}

/// The state of the cycle being received.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Cycle {
    /// No cycle to join: blocks wait for the next `PID` block.
    #[default]
    Idle,
    /// Merging a cycle's blocks; `lost` blocks of it failed their checksum.
    Reading {
        /// Blocks lost since this cycle's `PID` block.
        lost: u32,
    },
    /// Published as soon as it had the learned number of blocks; counting
    /// the blocks that still follow before the next `PID` block.
    Published {
        /// Blocks of this cycle so far.
        blocks: u32,
    },
}

impl Merger {
    /// A merger with nothing seen.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a valid block; returns how many snapshots it completed: 0, 1, or
    /// 2 (the cycle its `PID` closed, and itself when cycles are one block
    /// long). [`Self::recent`] holds them.
    pub fn push(&mut self, block: &TextBlock, at: DateTime<Utc>) -> usize {
        // PID is always a cycle's first field.
        let starts_cycle = block
            .fields()
            .next()
            .is_some_and(|(label, _)| label == b"PID");
        let mut completed = 0;
        if starts_cycle {
            match self.cycle {
                Cycle::Reading { lost } => {
                    if lost == 0 {
                        self.blocks_per_cycle = self.open.as_ref().map(|open| open.blocks);
                    }
                    self.publish();
                    completed = 1;
                }
                Cycle::Published { blocks } => self.blocks_per_cycle = Some(blocks),
                Cycle::Idle => {}
            }
            match self.open.as_mut() {
                Some(open) => {
                    open.reset(at);
                    open.merge(block, at);
                }
                None => self.open = Some(Snapshot::from_block(block, at)),
            }
            self.cycle = Cycle::Reading { lost: 0 };
        } else {
            match &mut self.cycle {
                Cycle::Reading { .. } => {
                    if let Some(open) = self.open.as_mut() {
                        open.merge(block, at);
                    }
                }
                // More blocks than the last clean cycle had: the layout grew.
                // This cycle is out already; the next `PID` block learns the
                // new count from it.
                Cycle::Published { blocks } => {
                    *blocks += 1;
                    return 0;
                }
                // A continuation without its cycle's first block: nothing to join.
                Cycle::Idle => return 0,
            }
        }
        completed + usize::from(self.complete_if_full())
    }

    /// Notes that a block failed its checksum (or was abandoned) right
    /// before the next block pushed; returns true when that completed a
    /// snapshot (the cycle cannot get the blocks it still lacked).
    pub fn lost_block(&mut self) -> bool {
        match &mut self.cycle {
            Cycle::Reading { lost } => {
                *lost += 1;
                self.complete_if_full()
            }
            // The lost block may have been the next cycle's `PID` block: the
            // blocks until the next `PID` block cannot be placed.
            Cycle::Published { .. } => {
                self.cycle = Cycle::Idle;
                false
            }
            Cycle::Idle => false,
        }
    }

    /// Publishes the cycle being read when it has (or has lost) as many
    /// blocks as the device's cycles have.
    fn complete_if_full(&mut self) -> bool {
        let (Cycle::Reading { lost }, Some(expected), Some(open)) =
            (self.cycle, self.blocks_per_cycle, self.open.as_ref())
        else {
            return false;
        };
        if open.blocks + lost < expected {
            return false;
        }
        let blocks = open.blocks;
        self.publish();
        self.cycle = if lost == 0 {
            Cycle::Published { blocks }
        } else {
            // Whatever follows cannot be told from the next cycle's blocks.
            Cycle::Idle
        };
        true
    }

    /// Makes the open snapshot the latest complete one, and that one the
    /// previous (rotating storage, not allocating).
    fn publish(&mut self) {
        let Some(open) = self.open.as_mut() else {
            return;
        };
        match self.complete.as_mut() {
            Some(complete) => {
                match self.previous.as_mut() {
                    Some(previous) => std::mem::swap(previous, complete),
                    None => self.previous = Some(complete.clone()),
                }
                std::mem::swap(complete, open);
            }
            None => self.complete = Some(open.clone()),
        }
    }

    /// Forgets the cycle being read (a gap in the stream broke it).
    pub fn break_cycle(&mut self) {
        self.cycle = Cycle::Idle;
    }

    /// The latest complete snapshot.
    pub fn latest(&self) -> Option<&Snapshot> {
        self.complete.as_ref()
    }

    /// A recently completed snapshot: 0 the latest, 1 the one before.
    pub fn recent(&self, back: usize) -> Option<&Snapshot> {
        match back {
            0 => self.complete.as_ref(),
            1 => self.previous.as_ref(),
            _ => None,
        }
    }
}

/// The table a product id's rows belong in.
pub fn table_of_product(pid: i64) -> Option<ReadingTable> {
    match pid {
        0x0203..=0x0205 | 0xA381..=0xA38F => Some(ReadingTable::Battery),
        0x0300 | 0xA040..=0xA0FF | 0xA100..=0xA1FF => Some(ReadingTable::Solar),
        0xA200..=0xA2FF => Some(ReadingTable::Inverter),
        _ => None,
    }
}

/// A product name for the ids the notes list.
pub fn product_name(pid: i64) -> Option<&'static str> {
    Some(match pid {
        0x0203 => "BMV-700",
        0x0204 => "BMV-702",
        0x0205 => "BMV-700H",
        0xA381 => "BMV-712 Smart",
        0xA382 => "BMV-710H Smart",
        0xA383 => "BMV-712 Smart Rev2",
        0xA389 => "SmartShunt 500A/50mV",
        0xA38A => "SmartShunt 1000A/50mV",
        0xA38B => "SmartShunt 2000A/50mV",
        0xA042 => "BlueSolar MPPT 75/15",
        0xA04C => "BlueSolar MPPT 75/10",
        0xA053 => "SmartSolar MPPT 75/15",
        0xA05F => "SmartSolar MPPT 100/20",
        0xA060 => "SmartSolar MPPT 100/20 48V",
        0xA075 => "SmartSolar MPPT 75/15 rev2",
        0xA201 => "Phoenix Inverter 12V 250VA 230V",
        0xA3F0 => "Orion XS",
        0xA040..=0xA07E => "MPPT solar charger",
        0xA100..=0xA1FF => "MPPT solar charger (VE.Can)",
        0xA200..=0xA2FF => "Phoenix inverter",
        _ => return None,
    })
}

/// `CS`: state of operation.
pub fn state_text(cs: i64) -> Cow<'static, str> {
    Cow::Borrowed(match cs {
        0 => "Off",
        1 => "Low power",
        2 => "Fault",
        3 => "Bulk",
        4 => "Absorption",
        5 => "Float",
        6 => "Storage",
        7 => "Equalize (manual)",
        9 => "Inverting",
        11 => "Power supply",
        245 => "Starting up",
        246 => "Repeated absorption",
        247 => "Auto equalize / recondition",
        248 => "BatterySafe",
        252 => "External control",
        other => return Cow::Owned(format!("unknown ({other})")),
    })
}

/// `ERR`: charger error code.
pub fn error_text(err: i64) -> Cow<'static, str> {
    Cow::Borrowed(match err {
        0 => "No error",
        2 => "Battery voltage too high",
        17 => "Charger temperature too high",
        18 => "Charger over-current",
        19 => "Charger current reversed",
        20 => "Bulk time limit exceeded",
        21 => "Current sensor issue",
        26 => "Terminals overheated",
        28 => "Converter issue",
        33 => "Input voltage too high (solar panel)",
        34 => "Input current too high (solar panel)",
        38 => "Input shutdown (battery voltage too high)",
        39 => "Input shutdown (current flow while off)",
        65 => "Lost communication with a device",
        66 => "Synchronised charging configuration issue",
        67 => "BMS connection lost",
        68 => "Network misconfigured",
        116 => "Factory calibration data lost",
        117 => "Invalid or incompatible firmware",
        119 => "User settings invalid",
        other => return Cow::Owned(format!("unknown ({other})")),
    })
}

/// `MPPT`: tracker mode.
pub fn mppt_text(mode: i64) -> Cow<'static, str> {
    Cow::Borrowed(match mode {
        0 => "Off",
        1 => "Voltage or current limited",
        2 => "MPP tracker active",
        other => return Cow::Owned(format!("unknown ({other})")),
    })
}

/// `MODE`: device mode.
pub fn mode_text(mode: i64) -> Cow<'static, str> {
    Cow::Borrowed(match mode {
        0 => "Off",
        2 => "On",
        4 => "Off",
        5 => "Eco",
        0xFD => "Hibernate",
        other => return Cow::Owned(format!("unknown ({other})")),
    })
}

/// `AR` / `WARN`: alarm reason bits, as comma-separated names.
pub fn alarm_reasons(bits: i64) -> String {
    const NAMES: [&str; 14] = [
        "LowVoltage",
        "HighVoltage",
        "LowSoc",
        "LowStarterVoltage",
        "HighStarterVoltage",
        "LowTemperature",
        "HighTemperature",
        "MidVoltage",
        "Overload",
        "DcRipple",
        "LowAcOutVoltage",
        "HighAcOutVoltage",
        "ShortCircuit",
        "BmsLockout",
    ];
    NAMES
        .iter()
        .enumerate()
        .filter(|(i, _)| bits >> i & 1 == 1)
        .map(|(_, n)| *n)
        .collect::<Vec<_>>()
        .join(",")
}

/// `OR`: off reason bits, as comma-separated names.
pub fn off_reasons(bits: i64) -> String {
    const NAMES: [&str; 9] = [
        "No input power",
        "Switched off (power switch)",
        "Switched off (device mode)",
        "Remote input",
        "Protection active",
        "Pay-as-you-go",
        "BMS",
        "Engine shutdown detection",
        "Analysing input voltage",
    ];
    NAMES
        .iter()
        .enumerate()
        .filter(|(i, _)| bits >> i & 1 == 1)
        .map(|(_, n)| *n)
        .collect::<Vec<_>>()
        .join(",")
}

/// `MON`: DC monitor mode.
pub fn monitor_mode_text(mon: i64) -> Cow<'static, str> {
    Cow::Borrowed(match mon {
        -9 => "Solar charger",
        -8 => "Wind turbine",
        -7 => "Shaft generator",
        -6 => "Alternator",
        -5 => "Fuel cell",
        -4 => "Water generator",
        -3 => "DC/DC charger",
        -2 => "AC charger",
        -1 => "Generic source",
        0 => "Battery monitor",
        1 => "Generic load",
        2 => "Electric drive",
        3 => "Fridge",
        4 => "Water pump",
        5 => "Bilge pump",
        6 => "DC system",
        7 => "Inverter",
        8 => "Water heater",
        other => return Cow::Owned(format!("unknown ({other})")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::vedirect::codec::{Frame, VeDirectCodec, decode_all, encode_block};

    fn block(fields: &[(&str, &str)]) -> TextBlock {
        match decode_all(&mut VeDirectCodec::new(), &encode_block(fields)).remove(0) {
            Frame::Block(b) => b,
            Frame::Hex(_) => unreachable!(),
        }
    }

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
    fn the_label_lookup_follows_the_table() {
        for (i, (label, _)) in LABELS.iter().enumerate() {
            assert_eq!(slot(label.as_bytes()), Some(i), "{label}");
        }
        assert_eq!(slot(b"NOPE"), None);
        assert_eq!(parse_int(b"-2316635"), Some(-2_316_635));
        assert_eq!(parse_int(b"-"), None);
        assert_eq!(parse_int(b"12a"), None);
        assert_eq!(parse_int(b"99999999999999999999"), None);
    }

    #[test]
    fn enums_become_text() {
        assert_eq!(state_text(3), "Bulk");
        assert_eq!(state_text(99), "unknown (99)");
        assert_eq!(error_text(33), "Input voltage too high (solar panel)");
        assert_eq!(mppt_text(2), "MPP tracker active");
        assert_eq!(alarm_reasons(1 | 64), "LowVoltage,HighTemperature");
        assert_eq!(off_reasons(1), "No input power");
        assert_eq!(monitor_mode_text(-9), "Solar charger");
        assert_eq!(mode_text(2), "On");
        assert_eq!(product_name(0xA05F), Some("SmartSolar MPPT 100/20"));
        assert_eq!(table_of_product(0xA389), Some(ReadingTable::Battery));
        assert_eq!(table_of_product(0xA201), Some(ReadingTable::Inverter));
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

    #[test]
    fn a_bmv_cycle_of_two_blocks_merges_into_one_snapshot() {
        let main = block(&[("PID", "0x203"), ("V", "12000"), ("SOC", "900")]);
        let history = block(&[("H1", "-1000"), ("H4", "7")]);
        let mut merger = Merger::new();
        assert_eq!(0, merger.push(&main, Utc::now()));
        assert_eq!(0, merger.push(&history, Utc::now()));
        assert!(
            merger.latest().is_none(),
            "the cycle's length is not known yet"
        );
        assert_eq!(
            merger.push(&main, Utc::now()),
            1,
            "the next main block completes the cycle"
        );
        let s = merger.latest().unwrap();
        assert_eq!((s.blocks, s.get("H4")), (2, Some(&Typed::Int(7))));
        // Now the cycle length (2) is known: the history block completes it.
        assert_eq!(1, merger.push(&history, Utc::now()));
        assert_eq!(merger.latest().unwrap().blocks, 2);
        // A history block with no main block before it joins nothing.
        let mut fresh = Merger::new();
        assert_eq!(0, fresh.push(&history, Utc::now()));
        assert!(fresh.latest().is_none());
    }

    /// An MPPT cycle in two blocks; `n` shows in the first block's voltage
    /// (12.000 V + n mV) and the second block's yield (H19 = n).
    fn split(n: u32) -> (TextBlock, TextBlock) {
        let v = format!("{}", 12000 + n);
        let h19 = n.to_string();
        (
            block(&[("PID", "0xA060"), ("V", &v), ("PPV", "10")]),
            block(&[("ERR", "0"), ("H19", &h19)]),
        )
    }

    /// A snapshot's cycle and its second block's H19.
    fn cycle_of(s: &Snapshot) -> (u32, Option<f64>) {
        let volts = s.number("V").unwrap();
        (((volts - 12.0) * 1000.0).round() as u32, s.number("H19"))
    }

    fn latest(merger: &Merger) -> (u32, Option<f64>) {
        cycle_of(merger.latest().unwrap())
    }

    #[test]
    fn a_cycle_that_lost_a_block_teaches_nothing() {
        let mut merger = Merger::new();
        let now = Utc::now();
        let (a0, _) = split(0);
        assert_eq!(0, merger.push(&a0, now));
        // Cycle 0's second block fails its checksum.
        assert!(!merger.lost_block());
        let (a1, b1) = split(1);
        assert_eq!(1, merger.push(&a1, now), "cycle 1 completes cycle 0");
        assert_eq!(latest(&merger), (0, None));
        assert_eq!(0, merger.push(&b1, now), "the length is not known yet");
        let (a2, b2) = split(2);
        assert_eq!(1, merger.push(&a2, now));
        assert_eq!(latest(&merger), (1, Some(0.01)));
        assert_eq!(
            1,
            merger.push(&b2, now),
            "two blocks a cycle, learned from cycle 1"
        );
        assert_eq!(latest(&merger), (2, Some(0.02)));
    }

    #[test]
    fn a_lost_first_block_drops_its_cycle_only() {
        let mut merger = Merger::new();
        let now = Utc::now();
        for n in 0..3 {
            let (a, b) = split(n);
            merger.push(&a, now);
            merger.push(&b, now);
        }
        assert_eq!(latest(&merger), (2, Some(0.02)));
        // Cycle 3's first block is lost: its second block belongs nowhere.
        assert!(!merger.lost_block());
        let (_, b3) = split(3);
        assert_eq!(0, merger.push(&b3, now));
        assert_eq!(latest(&merger), (2, Some(0.02)));
        let (a4, b4) = split(4);
        assert_eq!(0, merger.push(&a4, now));
        assert_eq!(1, merger.push(&b4, now));
        assert_eq!(latest(&merger), (4, Some(0.04)));
        // A lost second block: the cycle is published without it at once.
        let (a5, _) = split(5);
        assert_eq!(0, merger.push(&a5, now));
        assert!(merger.lost_block());
        assert_eq!(latest(&merger), (5, None));
        let (a6, b6) = split(6);
        assert_eq!(0, merger.push(&a6, now), "cycle 5 was already out");
        assert_eq!(1, merger.push(&b6, now));
        assert_eq!(latest(&merger), (6, Some(0.06)));
    }

    #[test]
    fn a_layout_change_is_learned_again() {
        let mut merger = Merger::new();
        let now = Utc::now();
        let mut published = Vec::new();
        let mut push = |merger: &mut Merger, block: &TextBlock| {
            for back in (0..merger.push(block, now)).rev() {
                published.push(cycle_of(merger.recent(back).unwrap()));
            }
        };
        // One block a cycle for cycles 0..5, two for 5..10, one for 10..15.
        for n in 0..15 {
            let (a, b) = split(n);
            push(&mut merger, &a);
            if (5..10).contains(&n) {
                push(&mut merger, &b);
            }
        }
        let cycles: Vec<u32> = published.iter().map(|(n, _)| *n).collect();
        assert_eq!(cycles, (0..15).collect::<Vec<_>>());
        let with_h19: Vec<u32> = published
            .iter()
            .filter(|(_, h19)| h19.is_some())
            .map(|(n, _)| *n)
            .collect();
        // Cycle 5 went out before its second block showed the change.
        assert_eq!(with_h19, vec![6, 7, 8, 9]);
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
