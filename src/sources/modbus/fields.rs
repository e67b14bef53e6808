//! Which GX registers fill which reading columns, per device class. Fields
//! name a D-Bus path; the address, type, scale and enum texts come from the
//! register list ([`RegisterList`]), so no address is typed here.
//!
//! Validation: a value outside a field's plausible range is stored as NULL,
//! and so is a 0 in a field that only some devices of the class have (the GX
//! answers 0, not an error, for values a device lacks).

use std::borrow::Cow;

use crate::config::ModbusClass;
use crate::reading::{ReadingTable, Value};
use crate::registers::decode::{Decoded, decode, raw_integer};
use crate::registers::plan::{Block, Need};
use crate::registers::{ModbusType, Register, RegisterList};

/// How a register becomes a column value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Kind {
    /// A measured quantity within `min..=max`; with `zero_absent`, 0 is NULL.
    Number {
        min: f64,
        max: f64,
        zero_absent: bool,
    },
    /// The register's enum text.
    Enum,
    /// The raw integer code.
    Code,
    /// One alarm register; active alarms are joined into the column's text.
    Alarm,
    /// The number of AC phases (not stored; hides absent phases).
    Phases,
    /// The GX's clock, UTC seconds (not stored; a clock reference).
    Clock,
}

#[cfg(test)]
impl Kind {
    /// Whether the field fills a column (the others steer decoding).
    pub(crate) fn is_column(self) -> bool {
        !matches!(self, Self::Phases | Self::Clock)
    }
}

/// One register → column mapping.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct FieldSpec {
    /// Target column (unused where the kind is no column).
    pub(crate) column: &'static str,
    /// D-Bus path in the class's service.
    pub(crate) path: &'static str,
    /// Which variant when the list has a 16- and a 32-bit register.
    pub(crate) prefer: Option<ModbusType>,
    /// How the value is turned into the column.
    pub(crate) kind: Kind,
}

const fn num(column: &'static str, path: &'static str, min: f64, max: f64) -> FieldSpec {
    FieldSpec {
        column,
        path,
        prefer: None,
        kind: Kind::Number {
            min,
            max,
            zero_absent: false,
        },
    }
}

/// A field some devices of the class lack: 0 means "not provided".
const fn opt(column: &'static str, path: &'static str, min: f64, max: f64) -> FieldSpec {
    FieldSpec {
        column,
        path,
        prefer: None,
        kind: Kind::Number {
            min,
            max,
            zero_absent: true,
        },
    }
}

const fn typed(mut spec: FieldSpec, ty: ModbusType) -> FieldSpec {
    spec.prefer = Some(ty);
    spec
}

const fn en(column: &'static str, path: &'static str) -> FieldSpec {
    FieldSpec {
        column,
        path,
        prefer: None,
        kind: Kind::Enum,
    }
}

const fn code(column: &'static str, path: &'static str) -> FieldSpec {
    FieldSpec {
        column,
        path,
        prefer: None,
        kind: Kind::Code,
    }
}

const fn alarm(column: &'static str, path: &'static str) -> FieldSpec {
    FieldSpec {
        column,
        path,
        prefer: None,
        kind: Kind::Alarm,
    }
}

const V: f64 = 1000.0; // volts, generous
const A: f64 = 10_000.0; // amps
const W: f64 = 1_000_000.0; // watts

const BATTERY: &[FieldSpec] = &[
    typed(num("power", "/Dc/0/Power", -W, W), ModbusType::I32),
    num("voltage", "/Dc/0/Voltage", 0.0, 100.0),
    opt("starter_voltage", "/Dc/1/Voltage", 0.0, 100.0),
    num("current", "/Dc/0/Current", -A, A),
    opt("temperature", "/Dc/0/Temperature", -60.0, 120.0),
    opt("midpoint_voltage", "/Dc/0/MidVoltage", 0.0, 100.0),
    num(
        "midpoint_deviation_pct",
        "/Dc/0/MidVoltageDeviation",
        0.0,
        100.0,
    ),
    typed(
        num("consumed_ah", "/ConsumedAmphours", -100_000.0, 100_000.0),
        ModbusType::U16,
    ),
    num("soc", "/Soc", 0.0, 100.0),
    alarm("alarm", "/Alarms/Alarm"),
    alarm("alarm", "/Alarms/LowVoltage"),
    alarm("alarm", "/Alarms/HighVoltage"),
    alarm("alarm", "/Alarms/LowStarterVoltage"),
    alarm("alarm", "/Alarms/HighStarterVoltage"),
    alarm("alarm", "/Alarms/LowSoc"),
    alarm("alarm", "/Alarms/LowTemperature"),
    alarm("alarm", "/Alarms/HighTemperature"),
    alarm("alarm", "/Alarms/MidVoltage"),
    alarm("alarm", "/Alarms/LowFusedVoltage"),
    alarm("alarm", "/Alarms/HighFusedVoltage"),
    alarm("alarm", "/Alarms/FuseBlown"),
    alarm("alarm", "/Alarms/HighInternalTemperature"),
    // 0 = charging or "infinite": no time to go.
    opt("time_to_go_s", "/TimeToGo", 0.0, 10.0 * 365.0 * 86_400.0),
    opt("state_of_health_pct", "/Soh", 0.0, 100.0),
    alarm("alarm", "/Alarms/HighChargeCurrent"),
    alarm("alarm", "/Alarms/HighDischargeCurrent"),
    alarm("alarm", "/Alarms/CellImbalance"),
    alarm("alarm", "/Alarms/InternalFailure"),
    alarm("alarm", "/Alarms/HighChargeTemperature"),
    alarm("alarm", "/Alarms/LowChargeTemperature"),
    alarm("alarm", "/Alarms/LowCellVoltage"),
    opt("min_cell_voltage", "/System/MinCellVoltage", 0.0, 10.0),
    opt("max_cell_voltage", "/System/MaxCellVoltage", 0.0, 10.0),
];

const SOLAR: &[FieldSpec] = &[
    num("battery_voltage", "/Dc/0/Voltage", 0.0, 100.0),
    num("battery_current", "/Dc/0/Current", -1000.0, 1000.0),
    opt("battery_temperature", "/Dc/0/Temperature", -60.0, 120.0),
    en("charge_state", "/State"),
    num("pv_voltage", "/Pv/V", 0.0, V),
    num("pv_current", "/Pv/I", 0.0, 1000.0),
    num("yield_today_kwh", "/History/Daily/0/Yield", 0.0, 10_000.0),
    num("max_power_today_w", "/History/Daily/0/MaxPower", 0.0, W),
    num(
        "yield_yesterday_kwh",
        "/History/Daily/1/Yield",
        0.0,
        10_000.0,
    ),
    num("max_power_yesterday_w", "/History/Daily/1/MaxPower", 0.0, W),
    code("error_code", "/ErrorCode"),
    en("error", "/ErrorCode"),
    num("yield_total_kwh", "/Yield/User", 0.0, 10_000_000.0),
    en("mppt_mode", "/MppOperationMode"),
    typed(num("pv_power", "/Yield/Power", 0.0, W), ModbusType::U32),
];

const VEBUS: &[FieldSpec] = &[
    num("ac_in_l1_voltage", "/Ac/ActiveIn/L1/V", 0.0, V),
    num("ac_in_l2_voltage", "/Ac/ActiveIn/L2/V", 0.0, V),
    num("ac_in_l3_voltage", "/Ac/ActiveIn/L3/V", 0.0, V),
    num("ac_in_l1_current", "/Ac/ActiveIn/L1/I", -A, A),
    num("ac_in_l2_current", "/Ac/ActiveIn/L2/I", -A, A),
    num("ac_in_l3_current", "/Ac/ActiveIn/L3/I", -A, A),
    num("ac_in_l1_frequency", "/Ac/ActiveIn/L1/F", 0.0, 100.0),
    num("ac_in_l2_frequency", "/Ac/ActiveIn/L2/F", 0.0, 100.0),
    num("ac_in_l3_frequency", "/Ac/ActiveIn/L3/F", 0.0, 100.0),
    num("ac_in_l1_power", "/Ac/ActiveIn/L1/P", -W, W),
    num("ac_in_l2_power", "/Ac/ActiveIn/L2/P", -W, W),
    num("ac_in_l3_power", "/Ac/ActiveIn/L3/P", -W, W),
    num("ac_out_l1_voltage", "/Ac/Out/L1/V", 0.0, V),
    num("ac_out_l2_voltage", "/Ac/Out/L2/V", 0.0, V),
    num("ac_out_l3_voltage", "/Ac/Out/L3/V", 0.0, V),
    num("ac_out_l1_current", "/Ac/Out/L1/I", -A, A),
    num("ac_out_l2_current", "/Ac/Out/L2/I", -A, A),
    num("ac_out_l3_current", "/Ac/Out/L3/I", -A, A),
    num("ac_out_l1_frequency", "/Ac/Out/L1/F", 0.0, 100.0),
    num("ac_out_l1_power", "/Ac/Out/L1/P", -W, W),
    num("ac_out_l2_power", "/Ac/Out/L2/P", -W, W),
    num("ac_out_l3_power", "/Ac/Out/L3/P", -W, W),
    num("dc_voltage", "/Dc/0/Voltage", 0.0, 100.0),
    num("dc_current", "/Dc/0/Current", -A, A),
    FieldSpec {
        column: "",
        path: "/Ac/NumberOfPhases",
        prefer: None,
        kind: Kind::Phases,
    },
    en("active_input", "/Ac/ActiveIn/ActiveInput"),
    num("soc", "/Soc", 0.0, 100.0),
    en("state", "/State"),
    code("error_code", "/VebusError"),
    en("mode", "/Mode"),
    alarm("alarms", "/Alarms/HighTemperature"),
    alarm("alarms", "/Alarms/LowBattery"),
    alarm("alarms", "/Alarms/Overload"),
    alarm("alarms", "/Alarms/TemperatureSensor"),
    alarm("alarms", "/Alarms/VoltageSensor"),
    alarm("alarms", "/Alarms/L1/HighTemperature"),
    alarm("alarms", "/Alarms/L1/LowBattery"),
    alarm("alarms", "/Alarms/L1/Overload"),
    alarm("alarms", "/Alarms/L1/Ripple"),
    alarm("alarms", "/Alarms/L2/HighTemperature"),
    alarm("alarms", "/Alarms/L2/LowBattery"),
    alarm("alarms", "/Alarms/L2/Overload"),
    alarm("alarms", "/Alarms/L2/Ripple"),
    alarm("alarms", "/Alarms/L3/HighTemperature"),
    alarm("alarms", "/Alarms/L3/LowBattery"),
    alarm("alarms", "/Alarms/L3/Overload"),
    alarm("alarms", "/Alarms/L3/Ripple"),
    alarm("alarms", "/Alarms/PhaseRotation"),
    alarm("alarms", "/Alarms/GridLost"),
];

const SYSTEM: &[FieldSpec] = &[
    num("pv_on_output_l1_power", "/Ac/PvOnOutput/L1/Power", 0.0, W),
    num("pv_on_output_l2_power", "/Ac/PvOnOutput/L2/Power", 0.0, W),
    num("pv_on_output_l3_power", "/Ac/PvOnOutput/L3/Power", 0.0, W),
    num("pv_on_input_l1_power", "/Ac/PvOnGrid/L1/Power", 0.0, W),
    num("pv_on_input_l2_power", "/Ac/PvOnGrid/L2/Power", 0.0, W),
    num("pv_on_input_l3_power", "/Ac/PvOnGrid/L3/Power", 0.0, W),
    num(
        "ac_consumption_l1_power",
        "/Ac/Consumption/L1/Power",
        0.0,
        W,
    ),
    num(
        "ac_consumption_l2_power",
        "/Ac/Consumption/L2/Power",
        0.0,
        W,
    ),
    num(
        "ac_consumption_l3_power",
        "/Ac/Consumption/L3/Power",
        0.0,
        W,
    ),
    num("grid_l1_power", "/Ac/Grid/L1/Power", -W, W),
    num("grid_l2_power", "/Ac/Grid/L2/Power", -W, W),
    num("grid_l3_power", "/Ac/Grid/L3/Power", -W, W),
    num("genset_l1_power", "/Ac/Genset/L1/Power", -W, W),
    num("genset_l2_power", "/Ac/Genset/L2/Power", -W, W),
    num("genset_l3_power", "/Ac/Genset/L3/Power", -W, W),
    en("active_input_source", "/Ac/ActiveIn/Source"),
    num("battery_voltage", "/Dc/Battery/Voltage", 0.0, 100.0),
    num("battery_current", "/Dc/Battery/Current", -A, A),
    num("battery_power", "/Dc/Battery/Power", -W, W),
    num("battery_soc", "/Dc/Battery/Soc", 0.0, 100.0),
    en("battery_state", "/Dc/Battery/State"),
    num(
        "battery_consumed_ah",
        "/Dc/Battery/ConsumedAmphours",
        -100_000.0,
        100_000.0,
    ),
    opt(
        "battery_time_to_go_s",
        "/Dc/Battery/TimeToGo",
        0.0,
        10.0 * 365.0 * 86_400.0,
    ),
    num("dc_pv_power", "/Dc/Pv/Power", 0.0, W),
    num("dc_pv_current", "/Dc/Pv/Current", -A, A),
    num("dc_system_power", "/Dc/System/Power", -W, W),
    FieldSpec {
        column: "",
        path: "/DateAndTime",
        prefer: None,
        kind: Kind::Clock,
    },
];

/// The field list of a class.
pub(crate) fn specs(class: ModbusClass) -> &'static [FieldSpec] {
    match class {
        ModbusClass::System => SYSTEM,
        ModbusClass::Battery => BATTERY,
        ModbusClass::SolarCharger => SOLAR,
        ModbusClass::VeBus => VEBUS,
    }
}

/// The reading table of a class.
pub fn table(class: ModbusClass) -> ReadingTable {
    match class {
        ModbusClass::System => ReadingTable::System,
        ModbusClass::Battery => ReadingTable::Battery,
        ModbusClass::SolarCharger => ReadingTable::Solar,
        ModbusClass::VeBus => ReadingTable::Inverter,
    }
}

/// A field bound to its register.
#[derive(Debug, Clone)]
pub(crate) struct Field {
    pub(crate) spec: FieldSpec,
    pub(crate) register: Register,
}

impl Field {
    pub(crate) fn need(&self) -> Need {
        Need {
            address: self.register.address,
            words: self.register.ty.words(),
        }
    }
}

/// A class's fields resolved against the register list.
#[derive(Debug, Clone)]
pub(crate) struct FieldMap {
    class: ModbusClass,
    fields: Vec<Field>,
}

/// A field names a path the register list lacks.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{service} has no register for {path}")]
pub(crate) struct UnknownPath {
    service: &'static str,
    path: &'static str,
}

impl FieldMap {
    /// Binds the class's fields to registers.
    pub(crate) fn resolve(class: ModbusClass, list: &RegisterList) -> Result<Self, UnknownPath> {
        let service = class.service();
        let fields = specs(class)
            .iter()
            .map(|spec| {
                list.find(service, spec.path, spec.prefer)
                    .map(|register| Field {
                        spec: *spec,
                        register: register.clone(),
                    })
                    .ok_or(UnknownPath {
                        service,
                        path: spec.path,
                    })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { class, fields })
    }

    /// Every register range the class reads.
    pub(crate) fn needs(&self) -> Vec<Need> {
        self.fields.iter().map(Field::need).collect()
    }

    #[cfg(test)]
    pub(crate) fn fields(&self) -> &[Field] {
        &self.fields
    }

    /// The GX's clock (UTC seconds) and the index of the block that held
    /// it, when this class reads it and the block was read.
    pub(crate) fn gx_clock(&self, blocks: &[(Block, Vec<u16>)]) -> Option<(u64, usize)> {
        let field = self.fields.iter().find(|f| f.spec.kind == Kind::Clock)?;
        let need = field.need();
        blocks
            .iter()
            .enumerate()
            .find_map(|(index, (block, words))| {
                if !block.contains(need) || words.len() != usize::from(block.count) {
                    return None;
                }
                let offset = usize::from(need.address - block.start);
                let words = &words[offset..offset + usize::from(need.words)];
                let raw = raw_integer(field.register.ty, 1.0, words)?;
                Some((u64::try_from(raw).ok()?, index))
            })
    }

    /// Column values from the words read for `blocks` (parallel slices).
    /// A field whose words are missing (a failed block) is left out (NULL).
    pub(crate) fn decode(&self, blocks: &[(Block, Vec<u16>)]) -> Vec<(&'static str, Value)> {
        let mut values: Vec<(&'static str, Value)> = Vec::new();
        let mut alarms: Vec<(&'static str, String)> = Vec::new();
        let mut phases: Option<f64> = None;
        for field in &self.fields {
            let need = field.need();
            let Some(words) = blocks.iter().find_map(|(block, words)| {
                if !block.contains(need) || words.len() != usize::from(block.count) {
                    return None;
                }
                let offset = usize::from(need.address - block.start);
                Some(&words[offset..offset + usize::from(need.words)])
            }) else {
                continue;
            };
            let register = &field.register;
            let Ok(Decoded::Number(number)) = decode(register, words) else {
                continue;
            };
            let raw = raw_integer(register.ty, register.scale, words).unwrap_or_default();
            match field.spec.kind {
                Kind::Number {
                    min,
                    max,
                    zero_absent,
                } => {
                    if (zero_absent && number == 0.0) || !(min..=max).contains(&number) {
                        continue;
                    }
                    values.push((field.spec.column, Value::Float(number)));
                }
                Kind::Enum => {
                    let text = register
                        .enum_text(raw as i64)
                        .map_or_else(|| format!("unknown ({raw})"), str::to_string);
                    values.push((field.spec.column, Value::Text(text.into())));
                }
                Kind::Code => values.push((field.spec.column, Value::Int(raw as i64))),
                Kind::Alarm => {
                    if raw >= 1 && field.spec.path != "/Alarms/Alarm" {
                        let name = field
                            .spec
                            .path
                            .trim_start_matches("/Alarms/")
                            .replace('/', "");
                        let text =
                            if raw == 1 && register.enum_text(1).is_some_and(|t| t != "Alarm") {
                                format!("{name} (warning)")
                            } else {
                                name
                            };
                        alarms.push((field.spec.column, text));
                    }
                    if !values.iter().any(|(c, _)| *c == field.spec.column) {
                        values.push((field.spec.column, Value::Text(Cow::Borrowed(""))));
                    }
                }
                Kind::Phases => phases = Some(number),
                Kind::Clock => {}
            }
        }
        for (column, text) in alarms {
            if let Some((_, Value::Text(joined))) = values.iter_mut().find(|(c, _)| *c == column) {
                let joined = joined.to_mut();
                if !joined.is_empty() {
                    joined.push(',');
                }
                joined.push_str(&text);
            }
        }
        self.derive(&mut values, phases);
        values
    }

    /// Class rules over the decoded values.
    fn derive(&self, values: &mut Vec<(&'static str, Value)>, phases: Option<f64>) {
        let get = |values: &Vec<(&'static str, Value)>, column: &str| {
            values.iter().find_map(|(c, v)| match v {
                Value::Float(f) if *c == column => Some(*f),
                _ => None,
            })
        };
        match self.class {
            ModbusClass::Battery => {
                // Without a midpoint, its deviation is meaningless.
                if get(values, "midpoint_voltage").is_none() {
                    values.retain(|(c, _)| *c != "midpoint_deviation_pct");
                }
                if let Some(current) = get(values, "current") {
                    let state = crate::reading::battery_state(current);
                    values.push(("state", Value::Text(Cow::Borrowed(state))));
                }
            }
            ModbusClass::VeBus => {
                // The GX answers 0 for phases a single-phase system lacks.
                if let Some(n) = phases.filter(|n| *n >= 1.0) {
                    values.retain(|(c, _)| {
                        let phase = c
                            .strip_prefix("ac_in_l")
                            .or_else(|| c.strip_prefix("ac_out_l"))
                            .and_then(|rest| rest.chars().next())
                            .and_then(|p| p.to_digit(10));
                        phase.is_none_or(|p| f64::from(p) <= n)
                    });
                }
            }
            ModbusClass::System | ModbusClass::SolarCharger => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registers::plan::{Coalescing, MAX_REGISTERS, plan};

    /// The GX's clock (830–833) lies inside the system overview's one
    /// block: the reference costs no request of its own.
    #[test]
    fn the_gx_clock_is_read_with_the_system_block() {
        let list = RegisterList::victron();
        let map = FieldMap::resolve(ModbusClass::System, list).unwrap();
        let blocks = plan(
            &map.needs(),
            ModbusClass::System.service(),
            list,
            Coalescing::AcrossMapped,
        );
        assert_eq!(blocks.len(), 1, "{blocks:?}");
        assert!(
            blocks[0].start <= 830 && blocks[0].end() >= 834,
            "{blocks:?}"
        );
        let mut words = vec![0u16; usize::from(blocks[0].count)];
        let at = usize::from(830 - blocks[0].start);
        words[at..at + 4].copy_from_slice(&[0, 0, 0x6B2C, 0x4E00]);
        let seconds = u64::from(0x6B2C_u32) << 16 | 0x4E00;
        assert_eq!(map.gx_clock(&[(blocks[0], words)]), Some((seconds, 0)));
    }

    #[test]
    fn every_field_resolves_and_targets_a_real_column() {
        let list = RegisterList::victron();
        for class in ModbusClass::ALL {
            let map = FieldMap::resolve(class, list).unwrap();
            for field in map.fields() {
                if !field.spec.kind.is_column() {
                    continue;
                }
                let kind = table(class).column_kind(field.spec.column);
                assert!(
                    kind.is_some(),
                    "{class:?}: {} is not a column",
                    field.spec.column
                );
                assert!(!matches!(field.register.ty, ModbusType::Reserved(_)));
            }
        }
    }

    /// The fewest blocks covering `needs`, by exhaustive dynamic programming:
    /// a block may span needs i..=j when it fits in 125 registers and every
    /// address inside is mapped.
    fn minimal_block_count(needs: &[Need], service: &str, list: &RegisterList) -> usize {
        let mut n: Vec<Need> = needs.to_vec();
        n.sort();
        n.dedup();
        let mut best = vec![usize::MAX; n.len() + 1];
        best[0] = 0;
        for j in 0..n.len() {
            for i in 0..=j {
                let start = n[i].address;
                let end = n[i..=j]
                    .iter()
                    .map(|x| u32::from(x.address) + u32::from(x.words))
                    .max()
                    .unwrap();
                if end - u32::from(start) <= u32::from(MAX_REGISTERS)
                    && list.all_mapped(service, start, end)
                    && best[i] != usize::MAX
                {
                    best[j + 1] = best[j + 1].min(best[i] + 1);
                }
            }
        }
        best[n.len()]
    }

    #[test]
    fn default_field_sets_plan_to_the_minimal_number_of_blocks() {
        let list = RegisterList::victron();
        let mut total = 0;
        for class in ModbusClass::ALL {
            let map = FieldMap::resolve(class, list).unwrap();
            let blocks = plan(
                &map.needs(),
                class.service(),
                list,
                Coalescing::AcrossMapped,
            );
            assert_eq!(
                blocks.len(),
                minimal_block_count(&map.needs(), class.service(), list),
                "{class:?}: {blocks:?}"
            );
            for block in &blocks {
                assert!(
                    list.all_mapped(class.service(), block.start, block.end()),
                    "{block:?} crosses a gap"
                );
                assert!(block.count <= MAX_REGISTERS);
            }
            for need in map.needs() {
                assert!(blocks.iter().any(|b| b.contains(need)), "{need:?} not read");
            }
            total += blocks.len();
        }
        // System 1, battery 2 (256..326 and 1290..1291), solar charger 1, VE.Bus 1.
        assert_eq!(total, 5);
    }

    fn block_of(
        list: &RegisterList,
        class: ModbusClass,
        values: &[(&str, f64)],
    ) -> Vec<(Block, Vec<u16>)> {
        let map = FieldMap::resolve(class, list).unwrap();
        let blocks = plan(
            &map.needs(),
            class.service(),
            list,
            Coalescing::AcrossMapped,
        );
        blocks
            .into_iter()
            .map(|block| {
                let mut words = vec![0u16; usize::from(block.count)];
                for (path, value) in values {
                    let r = list.find(class.service(), path, None).unwrap();
                    if block.contains(Need {
                        address: r.address,
                        words: r.ty.words(),
                    }) {
                        let encoded =
                            crate::registers::decode::encode_number(r.ty, r.scale, *value);
                        let at = usize::from(r.address - block.start);
                        words[at..at + encoded.len()].copy_from_slice(&encoded);
                    }
                }
                (block, words)
            })
            .collect()
    }

    /// Every column a Modbus class can emit, derived ones included, is a
    /// column of its table: a misspelt name fails here, not silently in the
    /// forwarder.
    #[test]
    fn every_column_a_class_emits_exists_in_its_table() {
        let list = RegisterList::victron();
        for class in ModbusClass::ALL {
            let table = table(class);
            let values: Vec<(&str, f64)> = specs(class)
                .iter()
                .filter(|spec| spec.kind.is_column())
                .map(|spec| (spec.path, 1.0))
                .collect();
            let map = FieldMap::resolve(class, list).unwrap();
            let emitted = map.decode(&block_of(list, class, &values));
            for spec in specs(class).iter().filter(|s| s.kind.is_column()) {
                assert!(
                    table.column_kind(spec.column).is_some(),
                    "{class:?}: {} is not a column of {}",
                    spec.column,
                    table.name()
                );
            }
            assert!(!emitted.is_empty(), "{class:?}");
            for (column, _) in &emitted {
                assert!(
                    table.column_kind(column).is_some(),
                    "{class:?} emits {column}, not a column of {}",
                    table.name()
                );
            }
        }
    }

    #[test]
    fn battery_values_zero_rules_alarms_and_state() {
        let list = RegisterList::victron();
        let map = FieldMap::resolve(ModbusClass::Battery, list).unwrap();
        let blocks = block_of(
            list,
            ModbusClass::Battery,
            &[
                ("/Dc/0/Voltage", 52.31),
                ("/Dc/0/Current", -12.5),
                ("/Soc", 87.5),
                ("/ConsumedAmphours", -40.2),
                ("/Alarms/LowVoltage", 2.0),
                ("/Alarms/LowCellVoltage", 1.0),
                ("/Dc/0/MidVoltageDeviation", 1.5),
            ],
        );
        let values = map.decode(&blocks);
        let reading = crate::reading::Reading {
            site: "ranch".into(),
            device: "b".into(),
            table: ReadingTable::Battery,
            source: crate::reading::SourceKind::Modbus,
            measured_at: chrono::Utc::now(),
            unconfirmed: None,
            values,
        };
        assert_eq!(reading.float("voltage"), Some(52.31));
        assert_eq!(reading.float("current"), Some(-12.5));
        assert_eq!(reading.float("soc"), Some(87.5));
        assert_eq!(reading.float("consumed_ah"), Some(-40.2));
        assert_eq!(reading.text("state"), Some("discharging"));
        assert_eq!(
            reading.text("alarm"),
            Some("LowVoltage,LowCellVoltage (warning)")
        );
        // Absent on this device (0 from the GX): NULL, not 0.
        for column in [
            "starter_voltage",
            "temperature",
            "time_to_go_s",
            "state_of_health_pct",
            "min_cell_voltage",
            "midpoint_deviation_pct",
        ] {
            assert_eq!(reading.get(column), None, "{column}");
        }
        // A real 0 stays: power and SOC can be 0.
        assert_eq!(reading.float("power"), Some(0.0));
    }

    #[test]
    fn implausible_values_become_null_and_failed_blocks_leave_fields_out() {
        let list = RegisterList::victron();
        let map = FieldMap::resolve(ModbusClass::Battery, list).unwrap();
        let mut blocks = block_of(
            list,
            ModbusClass::Battery,
            &[("/Soc", 99.0), ("/Dc/0/Voltage", 500.0)],
        );
        let values = map.decode(&blocks);
        assert!(
            values
                .iter()
                .any(|(c, v)| *c == "soc" && *v == Value::Float(99.0))
        );
        assert!(
            !values.iter().any(|(c, _)| *c == "voltage"),
            "500 V on a battery is implausible"
        );
        blocks.retain(|(b, _)| b.start != 256);
        let values = map.decode(&blocks);
        assert!(!values.iter().any(|(c, _)| *c == "soc"));
        // A block with the wrong number of words is ignored, not sliced.
        let values = map.decode(&[(
            Block {
                start: 256,
                count: 71,
            },
            vec![0; 3],
        )]);
        assert!(values.is_empty());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// Any words in every block of every class (some of the wrong
        /// length, as a confused server sends): each column once, a column
        /// of the class's table, numbers finite and within their field's
        /// plausible range, texts printable. Never a panic.
        #[test]
        fn any_words_give_plausible_columns(
            pool in proptest::collection::vec(proptest::prelude::any::<u16>(), 256),
            short_block in proptest::prelude::any::<proptest::sample::Index>(),
        ) {
            let list = RegisterList::victron();
            for class in ModbusClass::ALL {
                let map = FieldMap::resolve(class, list).unwrap();
                let blocks = plan(&map.needs(), class.service(), list, Coalescing::AcrossMapped);
                let short = short_block.index(blocks.len() + 1);
                let read: Vec<(Block, Vec<u16>)> = blocks
                    .iter()
                    .enumerate()
                    .map(|(i, block)| {
                        let count = usize::from(block.count) - usize::from(i == short);
                        (*block, pool.iter().cycle().skip(i * 31).take(count).copied().collect())
                    })
                    .collect();
                let values = map.decode(&read);
                let mut seen = std::collections::HashSet::new();
                for (column, value) in &values {
                    proptest::prop_assert!(seen.insert(*column), "{class:?}: {column} twice");
                    proptest::prop_assert!(table(class).column_kind(column).is_some(), "{column}");
                    match value {
                        Value::Float(v) => {
                            let in_range = specs(class).iter().any(|spec| match spec.kind {
                                Kind::Number { min, max, .. } => {
                                    spec.column == *column && (min..=max).contains(v)
                                }
                                _ => false,
                            });
                            proptest::prop_assert!(in_range, "{class:?}: {column} = {v}");
                        }
                        Value::Text(text) => proptest::prop_assert!(
                            !text.chars().any(char::is_control),
                            "{class:?}: {column} = {text:?}"
                        ),
                        Value::Int(_) => {}
                    }
                }
            }
        }
    }

    #[test]
    fn single_phase_vebus_hides_l2_and_l3() {
        let list = RegisterList::victron();
        let map = FieldMap::resolve(ModbusClass::VeBus, list).unwrap();
        let blocks = block_of(
            list,
            ModbusClass::VeBus,
            &[
                ("/Ac/NumberOfPhases", 1.0),
                ("/Ac/Out/L1/V", 230.1),
                ("/State", 9.0),
                ("/Mode", 3.0),
            ],
        );
        let values = map.decode(&blocks);
        let columns: Vec<&str> = values.iter().map(|(c, _)| *c).collect();
        assert!(columns.contains(&"ac_out_l1_voltage"));
        assert!(
            !columns
                .iter()
                .any(|c| c.contains("_l2_") || c.contains("_l3_")),
            "{columns:?}"
        );
        assert!(
            values.contains(&("state", Value::Text("Inverting".into()))),
            "{values:?}"
        );
        assert!(values.contains(&("mode", Value::Text("On".into()))));
        assert!(values.contains(&("alarms", Value::Text("".into()))));
    }
}
