//! Register words ↔ values, as the GX encodes them: big-endian words, high
//! word first, `value = raw / scale` with the register's signedness.
//!
//! Every decoder here is total: any words give a value or a typed
//! [`DecodeError`], never a panic. A string register's text is Latin-1 up
//! to its first NUL; a control character before it makes it no text.
//!
//! One rule beyond the notes' table: with a negative scale (consumed Ah,
//! discharge history) the GX writes `round(value × scale)` into an unsigned
//! register, wrapping a negative product. So a negative scale reads the word
//! as signed: raw 123 → −12.3 Ah, raw 64536 → +100 Ah.

use super::{ModbusType, Register};

/// A decoded register value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Decoded {
    /// A scaled number.
    Number(f64),
    /// A string register's text.
    Text(String),
    /// A placeholder register.
    Reserved,
}

/// The words are no value of the register.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DecodeError {
    /// The words do not fit the register.
    #[error("register at {address} needs {expected} words, got {got}")]
    Words {
        /// The register's address.
        address: u16,
        /// Words the type needs.
        expected: u16,
        /// Words given.
        got: usize,
    },
    /// A string register holds a control character before its end.
    #[error("string register at {address} holds control byte {byte:#04x}: not text")]
    NotText {
        /// The register's address.
        address: u16,
        /// The first control byte.
        byte: u8,
    },
}

/// The raw integer of the words, with the signedness the scale implies.
pub(crate) fn raw_integer(ty: ModbusType, scale: f64, words: &[u16]) -> Option<i128> {
    let wide = words
        .iter()
        .fold(0u128, |acc, w| (acc << 16) | u128::from(*w));
    let signed = match ty {
        ModbusType::I16 | ModbusType::I32 => true,
        ModbusType::U16 | ModbusType::U32 | ModbusType::U64 | ModbusType::Internal(_) => {
            scale < 0.0
        }
        ModbusType::Str(_) | ModbusType::Reserved(_) => return None,
    };
    let bits = 16 * words.len() as u32;
    if signed && bits > 0 && bits < 128 && wide >> (bits - 1) & 1 == 1 {
        Some(wide as i128 - (1i128 << bits))
    } else {
        Some(wide as i128)
    }
}

/// `raw / scale` as the double nearest to the decimal value: a whole scale
/// (10, −100) is one correctly rounded division; a fractional one (0.1,
/// 0.01: a coarser register) is a multiplication by its whole reciprocal,
/// exact for every register width, rather than a division by an inexact
/// 0.01.
pub(crate) fn scaled(raw: i128, scale: f64) -> f64 {
    let reciprocal = (1.0 / scale).round();
    if scale.abs() < 1.0 && reciprocal * scale == 1.0 {
        raw as f64 * reciprocal
    } else {
        raw as f64 / scale
    }
}

/// Decodes a register's words.
pub(crate) fn decode(register: &Register, words: &[u16]) -> Result<Decoded, DecodeError> {
    let expected = register.ty.words();
    if words.len() != usize::from(expected) {
        return Err(DecodeError::Words {
            address: register.address,
            expected,
            got: words.len(),
        });
    }
    Ok(match register.ty {
        ModbusType::Reserved(_) => Decoded::Reserved,
        ModbusType::Str(_) => {
            Decoded::Text(decode_text(words).map_err(|byte| DecodeError::NotText {
                address: register.address,
                byte,
            })?)
        }
        ty => {
            let raw = raw_integer(ty, register.scale, words).unwrap_or_default();
            Decoded::Number(scaled(raw, register.scale))
        }
    })
}

/// Latin-1 text, two characters per word, high byte first, up to the first
/// NUL; the first control byte (C0, DEL, C1) before it when there is one.
fn decode_text(words: &[u16]) -> Result<String, u8> {
    words
        .iter()
        .flat_map(|w| w.to_be_bytes())
        .take_while(|b| *b != 0)
        .map(|b| {
            let c = char::from(b);
            if c.is_control() { Err(b) } else { Ok(c) }
        })
        .collect()
}

/// The words the GX serves for `value` (the simulator's side): the rounded
/// scaled value, wrapped into the register's width.
pub(crate) fn encode_number(ty: ModbusType, scale: f64, value: f64) -> Vec<u16> {
    let words = usize::from(ty.words());
    let raw = (value * scale).round();
    let raw = if raw.is_finite() {
        raw.clamp(i64::MIN as f64, i64::MAX as f64) as i64
    } else {
        0
    };
    let bits = raw as u64;
    (0..words)
        .rev()
        .map(|i| if i >= 4 { 0 } else { (bits >> (16 * i)) as u16 })
        .collect()
}

/// The words of a string register.
pub(crate) fn encode_text(words: u16, text: &str) -> Vec<u16> {
    let mut bytes: Vec<u8> = text
        .chars()
        .map(|c| u8::try_from(u32::from(c)).unwrap_or(b'?'))
        .take(usize::from(words) * 2)
        .collect();
    bytes.resize(usize::from(words) * 2, 0);
    bytes
        .chunks(2)
        .map(|pair| u16::from_be_bytes([pair[0], pair[1]]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registers::RegisterList;

    /// One row of `tests/fixtures/modbus/golden-registers.csv`.
    struct Golden {
        register: u16,
        service: String,
        path: String,
        value: String,
        words: Vec<u16>,
        scale: f64,
    }

    fn golden() -> Vec<Golden> {
        include_str!("../../tests/fixtures/modbus/golden-registers.csv")
            .lines()
            .skip(1)
            .map(|line| {
                let f: Vec<&str> = line.split(',').collect();
                Golden {
                    service: f[0].to_string(),
                    register: f[3].parse().unwrap(),
                    path: f[4].to_string(),
                    value: f[6].to_string(),
                    scale: f[8].parse().unwrap_or(1.0),
                    words: f[9].split(' ').map(|w| w.parse().unwrap()).collect(),
                }
            })
            .collect()
    }

    #[test]
    fn every_golden_row_decodes_to_its_dbus_value() {
        let list = RegisterList::victron();
        let rows = golden();
        assert_eq!(rows.len(), 142);
        for row in rows {
            let register = list.covering(row.register).unwrap();
            assert_eq!(
                (
                    register.address,
                    register.service.as_str(),
                    register.path.as_str()
                ),
                (row.register, row.service.as_str(), row.path.as_str()),
                "the register list agrees with the golden row"
            );
            match decode(register, &row.words).unwrap() {
                Decoded::Number(v) => {
                    let expected: f64 = row.value.parse().unwrap();
                    // Within the register's resolution (one raw count).
                    let resolution = 1.0 / row.scale.abs();
                    assert!(
                        (v - expected).abs() <= resolution / 2.0 + 1e-9,
                        "{} {}: decoded {v}, D-Bus value {expected}",
                        row.register,
                        row.path
                    );
                }
                Decoded::Text(text) => assert_eq!(text, row.value, "{}", row.path),
                Decoded::Reserved => panic!("{} is reserved", row.register),
            }
        }
    }

    /// Decimals a value of a register with this scale can have: 10 → 1,
    /// 100 → 2, −10 → 1, 1 and fractional scales → 0.
    fn resolution_decimals(scale: f64) -> usize {
        let mut decimals = 0;
        let mut s = scale.abs();
        while s >= 10.0 {
            s /= 10.0;
            decimals += 1;
        }
        decimals
    }

    #[test]
    fn every_golden_value_is_its_decimal_to_the_last_digit() {
        let list = RegisterList::victron();
        let mut checked = 0;
        for row in golden() {
            let register = list.covering(row.register).unwrap();
            let Decoded::Number(v) = decode(register, &row.words).unwrap() else {
                continue;
            };
            let text = v.to_string();
            let decimals = text.split_once('.').map_or(0, |(_, f)| f.len());
            assert!(
                decimals <= resolution_decimals(row.scale),
                "{} {}: {text} has more decimals than scale {} allows",
                row.register,
                row.path,
                row.scale
            );
            checked += 1;
        }
        assert!(checked > 100, "{checked}");
        // Fractional and negative scales, beyond the golden table's values.
        for raw in [1i128, 3, 7, 12_345, 65_535, -32_768] {
            assert_eq!(scaled(raw, 0.01), (raw * 100) as f64);
            assert_eq!(scaled(raw, 0.1), (raw * 10) as f64);
            let tenths = format!("{}.{}", raw / 10, (raw % 10).abs());
            let tenths = if raw < 0 && raw / 10 == 0 {
                format!("-{tenths}")
            } else {
                tenths
            };
            let expected: f64 = tenths.parse().unwrap();
            assert_eq!(scaled(raw, 10.0), expected, "{raw} / 10");
            assert_eq!(scaled(-raw, -10.0), expected, "{raw} / 10");
        }
        assert_eq!(scaled(86_517, 100.0).to_string(), "865.17");
        assert_eq!(scaled(-63, 10.0).to_string(), "-6.3");
    }

    #[test]
    fn encoding_the_dbus_value_gives_the_golden_words() {
        let list = RegisterList::victron();
        for row in golden() {
            let register = list.covering(row.register).unwrap();
            let words = match register.ty {
                ModbusType::Str(n) => encode_text(n, &row.value),
                ty => encode_number(ty, register.scale, row.value.parse().unwrap()),
            };
            assert_eq!(words, row.words, "{} {}", row.register, row.path);
        }
    }

    #[test]
    fn positive_consumed_amp_hours_wrap_under_a_negative_scale() {
        let list = RegisterList::victron();
        // Registers 265 and 845: a discharge reads as a small positive word,
        // a surplus as a wrapped word.
        for address in [265, 845] {
            let r = list.covering(address).unwrap();
            assert_eq!(r.scale, -10.0);
            assert_eq!(decode(r, &[123]).unwrap(), Decoded::Number(-12.3));
            assert_eq!(decode(r, &[64536]).unwrap(), Decoded::Number(100.0));
            assert_eq!(decode(r, &[0]).unwrap(), Decoded::Number(0.0));
        }
    }

    /// Words of every shape: any, NUL, printable ASCII pairs, Latin-1
    /// letters, control bytes.
    fn any_word() -> impl proptest::strategy::Strategy<Value = u16> {
        use proptest::prelude::*;
        let pair = |high: std::ops::RangeInclusive<u8>, low: std::ops::RangeInclusive<u8>| {
            (high, low).prop_map(|(h, l)| u16::from_be_bytes([h, l]))
        };
        prop_oneof![
            any::<u16>(),
            Just(0u16),
            pair(0x20..=0x7E, 0x20..=0x7E),
            pair(0x20..=0x7E, 0x00..=0x00),
            pair(0xA0..=0xFF, 0x20..=0xFF),
            pair(0x00..=0x1F, 0x7F..=0x9F),
        ]
    }

    /// A string register's text per the notes (Latin-1, high byte first, up
    /// to the first NUL), or the first control byte (C0, DEL, C1) before it.
    fn expected_text(words: &[u16]) -> Result<String, u8> {
        let mut text = String::new();
        for byte in words
            .iter()
            .flat_map(|w| [(w >> 8) as u8, (w & 0xFF) as u8])
        {
            match byte {
                0 => break,
                0x01..=0x1F | 0x7F..=0x9F => return Err(byte),
                _ => text.push(char::from_u32(u32::from(byte)).unwrap()),
            }
        }
        Ok(text)
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// Any words, for every register of the list: a value (a string
        /// register's Latin-1 text, a finite number), or a typed error for a
        /// string holding a control character and for the wrong number of
        /// words. Never a panic.
        #[test]
        fn any_words_give_a_value_or_a_typed_error(
            pool in proptest::collection::vec(any_word(), 64),
            off_by in 1usize..4,
        ) {
            let list = RegisterList::victron();
            let mut strings = 0;
            for (i, register) in list.iter().enumerate() {
                let n = usize::from(register.ty.words());
                let words: Vec<u16> = pool.iter().cycle().skip(i * 7 % 64).take(n).copied().collect();
                let got = decode(register, &words);
                match register.ty {
                    ModbusType::Str(_) => {
                        strings += 1;
                        let want = expected_text(&words)
                            .map(Decoded::Text)
                            .map_err(|byte| DecodeError::NotText { address: register.address, byte });
                        proptest::prop_assert_eq!(got, want, "{}", register.path);
                    }
                    ModbusType::Reserved(_) => proptest::prop_assert_eq!(got, Ok(Decoded::Reserved)),
                    _ => match got {
                        Ok(Decoded::Number(v)) => proptest::prop_assert!(v.is_finite(), "{}: {v}", register.path),
                        other => proptest::prop_assert!(false, "{}: {other:?}", register.path),
                    },
                }
                for wrong in [n.saturating_sub(off_by), n + off_by] {
                    if wrong == n {
                        continue;
                    }
                    let words: Vec<u16> = pool.iter().cycle().take(wrong).copied().collect();
                    proptest::prop_assert_eq!(
                        decode(register, &words),
                        Err(DecodeError::Words { address: register.address, expected: register.ty.words(), got: wrong })
                    );
                }
            }
            proptest::prop_assert!(strings > 10, "{strings} string registers");
        }
    }

    #[test]
    fn a_string_with_a_control_byte_is_no_text() {
        let reg = Register {
            service: String::new(),
            path: "/Serial".into(),
            unit: String::new(),
            enum_texts: Default::default(),
            address: 800,
            ty: ModbusType::Str(3),
            scale: 1.0,
            writable: false,
        };
        // "HQ" then ESC: no serial number.
        assert_eq!(
            decode(&reg, &[0x4851, 0x1B5B, 0]),
            Err(DecodeError::NotText {
                address: 800,
                byte: 0x1B
            })
        );
        // After the NUL, bytes are padding and not looked at.
        assert_eq!(
            decode(&reg, &[0x4851, 0x00FF, 0x0101]),
            Ok(Decoded::Text("HQ".into()))
        );
        // Latin-1 letters are text.
        assert_eq!(
            decode(&reg, &[0x4DFC, 0x6C6C, 0x6572]),
            Ok(Decoded::Text("Müller".into()))
        );
    }

    #[test]
    fn types_and_scales() {
        let reg = |ty, scale| Register {
            service: String::new(),
            path: String::new(),
            unit: String::new(),
            enum_texts: Default::default(),
            address: 0,
            ty,
            scale,
            writable: false,
        };
        let n = |r: &Register, w: &[u16]| match decode(r, w).unwrap() {
            Decoded::Number(v) => v,
            other => panic!("{other:?}"),
        };
        assert_eq!(n(&reg(ModbusType::I16, 10.0), &[0xFFF6]), -1.0);
        assert_eq!(n(&reg(ModbusType::U16, 10.0), &[0xFFF6]), 6552.6);
        // High word first: 0x0001_0000 = 65536.
        assert_eq!(n(&reg(ModbusType::U32, 1.0), &[1, 0]), 65536.0);
        assert_eq!(n(&reg(ModbusType::I32, 1.0), &[0xFFFF, 0xFFFE]), -2.0);
        assert_eq!(n(&reg(ModbusType::U64, 1.0), &[0, 0, 1, 2]), 65538.0);
        // A fractional scale makes the register coarser: 1 count = 100 s.
        assert_eq!(n(&reg(ModbusType::U16, 0.01), &[3]), 300.0);
        assert_eq!(n(&reg(ModbusType::U32, -1.0), &[0, 5]), -5.0);
        assert_eq!(
            decode(&reg(ModbusType::Reserved(2), 1.0), &[0xFFFF, 0xFFFF]).unwrap(),
            Decoded::Reserved
        );
        assert_eq!(
            decode(&reg(ModbusType::Str(3), 1.0), &[0x4142, 0x4300, 0]).unwrap(),
            Decoded::Text("ABC".into())
        );
        assert_eq!(
            decode(&reg(ModbusType::U32, 1.0), &[1]),
            Err(DecodeError::Words {
                address: 0,
                expected: 2,
                got: 1
            })
        );
    }
}
