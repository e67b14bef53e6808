//! What VE.Direct's numbers mean: product ids to names and reading tables,
//! state, error, MPPT and mode codes to text, alarm bits to names.

use std::borrow::Cow;

use crate::reading::ReadingTable;

/// The table a product id's rows belong in.
pub(crate) fn table_of_product(pid: i64) -> Option<ReadingTable> {
    match pid {
        0x0203..=0x0205 | 0xA381..=0xA38F => Some(ReadingTable::Battery),
        0x0300 | 0xA040..=0xA0FF | 0xA100..=0xA1FF => Some(ReadingTable::Solar),
        0xA200..=0xA2FF => Some(ReadingTable::Inverter),
        _ => None,
    }
}

/// A product name for the ids the notes list.
pub(crate) fn product_name(pid: i64) -> Option<&'static str> {
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
pub(crate) fn state_text(cs: i64) -> Cow<'static, str> {
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
pub(crate) fn error_text(err: i64) -> Cow<'static, str> {
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
pub(crate) fn mppt_text(mode: i64) -> Cow<'static, str> {
    Cow::Borrowed(match mode {
        0 => "Off",
        1 => "Voltage or current limited",
        2 => "MPP tracker active",
        other => return Cow::Owned(format!("unknown ({other})")),
    })
}

/// `MODE`: device mode.
pub(crate) fn mode_text(mode: i64) -> Cow<'static, str> {
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
pub(crate) fn alarm_reasons(bits: i64) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enums_become_text() {
        assert_eq!(state_text(3), "Bulk");
        assert_eq!(state_text(99), "unknown (99)");
        assert_eq!(error_text(33), "Input voltage too high (solar panel)");
        assert_eq!(mppt_text(2), "MPP tracker active");
        assert_eq!(alarm_reasons(1 | 64), "LowVoltage,HighTemperature");
        assert_eq!(mode_text(2), "On");
        assert_eq!(product_name(0xA05F), Some("SmartSolar MPPT 100/20"));
        assert_eq!(table_of_product(0xA389), Some(ReadingTable::Battery));
        assert_eq!(table_of_product(0xA201), Some(ReadingTable::Inverter));
    }
}
