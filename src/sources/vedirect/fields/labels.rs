//! VE.Direct labels and how each is read: the table of every label of the
//! notes with its kind (a decimal in SI units, an integer, hex, ON/OFF,
//! text, a firmware version, minutes), the fast label → slot lookup, and the
//! parsing of a value into a [`Typed`] value.
//!
//! Every parser here takes the value's raw bytes and is total: any bytes
//! give a typed value or "does not parse" (the snapshot counts it and leaves
//! the field empty), never a panic and never a number read from part of the
//! value. Nothing slices device text by byte position: values are matched as
//! bytes, and text is decoded before it is looked at.
//!
//! Units: mV → V, mA → A, mAh → Ah, ‰ → %, minutes → s (`TTG -1` = NULL),
//! 0.01 kWh → kWh, 0.01 V and 0.1 A for inverter AC output; a decimal is
//! scaled by dividing by its power of ten, so the value is the double
//! nearest to the decimal the device sent.

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
pub(super) enum Kind {
    /// Decimal integer in units of 10^−k of the SI unit (mV: 3, 0.01 kWh:
    /// 2, W: 0) → the SI number nearest to that decimal.
    Decimal(u8),
    /// Decimal integer, kept as is.
    Int,
    /// `0x` hex integer.
    Hex,
    /// ON/OFF.
    OnOff,
    /// Text: Latin-1, printable (a control character makes it a bad value).
    Text,
    /// A firmware version: an optional release-candidate letter and decimal
    /// digits, the last two being the minor version (`FW`: `0308`, `159`,
    /// `C208`); with `release`, two hex digits of release byte follow
    /// (`FWE`: `0208FF`). Kept as sent; [`firmware_version`] renders it.
    Firmware {
        /// Whether a release byte ends it.
        release: bool,
    },
    /// Minutes, −1 = infinite.
    Minutes,
}

/// Every label of the notes, with how to read it.
pub(super) const LABELS: &[(&str, Kind)] = &[
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
    ("FW", Kind::Firmware { release: false }),
    ("FWE", Kind::Firmware { release: true }),
    ("BMV", Kind::Text),
    ("HC#", Kind::Text),
];

/// The number of known labels (the snapshot's slots; at most 64, one bit each).
pub(super) const SLOTS: usize = LABELS.len();
const _: () = assert!(SLOTS <= 64);

pub(super) fn slot(label: &[u8]) -> Option<usize> {
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
    // Negative numbers are summed downwards: i64::MIN has no positive twin.
    digits.iter().try_fold(0i64, |n, &d| {
        let d = i64::from(char::from(d).to_digit(10)?);
        let n = n.checked_mul(10)?;
        if negative {
            n.checked_sub(d)
        } else {
            n.checked_add(d)
        }
    })
}

/// A `0x` hex integer (spaces around it allowed); `None` on anything else
/// (a sign, a non-hex byte, no digits) or overflow.
fn parse_hex(value: &[u8]) -> Option<i64> {
    let [b'0', b'x' | b'X', digits @ ..] = value.trim_ascii() else {
        return None;
    };
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0i64, |n, &d| {
        let d = char::from(d).to_digit(16)?;
        n.checked_mul(16)?.checked_add(i64::from(d))
    })
}

/// A text value as Latin-1 characters, or `None` when it holds a control
/// character (C0, DEL, C1: a NUL, a line break or an escape sequence is no
/// serial number or model name, and could not be stored or shown as text).
fn text_of(value: &[u8], mut text: String) -> Option<String> {
    if value.iter().any(|b| char::from(*b).is_control()) {
        return None;
    }
    match std::str::from_utf8(value) {
        Ok(ascii) if value.is_ascii() => text.push_str(ascii),
        // Latin-1, byte by byte.
        _ => text.extend(value.iter().map(|b| char::from(*b))),
    }
    Some(text)
}

/// A firmware version as `x.yy` (`0308` → `3.08`, `159` → `1.59`, `C208` →
/// `C2.08`; with `release`, `0208FF` → `2.08` and a beta's release byte
/// after a tilde, `0208A3` → `2.08~A3`), or `None` when the value is not a
/// version ([`Kind::Firmware`]). Spaces around it are ignored.
pub(super) fn firmware_version(value: &[u8], release: bool) -> Option<String> {
    let value = value.trim_ascii();
    let (letter, rest) = match value {
        [c, rest @ ..] if c.is_ascii_alphabetic() => (Some(char::from(*c)), rest),
        _ => (None, value),
    };
    let (digits, release_byte) = if release {
        let (digits, byte) = rest.split_last_chunk::<2>()?;
        if !byte.iter().all(u8::is_ascii_hexdigit) {
            return None;
        }
        (digits, Some(byte))
    } else {
        (rest, None)
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut significant = digits;
    while let [b'0', rest @ ..] = significant {
        significant = rest;
    }
    let (major, minor) = match significant {
        [] => (&[][..], [b'0', b'0']),
        [d] => (&[][..], [b'0', *d]),
        _ => significant.split_last_chunk::<2>().map(|(m, n)| (m, *n))?,
    };
    let mut out = String::with_capacity(significant.len() + 6);
    out.extend(letter);
    if major.is_empty() {
        out.push('0');
    }
    out.extend(major.iter().map(|d| char::from(*d)));
    out.push('.');
    out.extend(minor.iter().map(|d| char::from(*d)));
    if let Some(byte) = release_byte.filter(|b| !b.eq_ignore_ascii_case(b"FF")) {
        out.push('~');
        out.extend(byte.iter().map(|d| char::from(*d)));
    }
    Some(out)
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
pub(super) fn type_into(kind: Kind, value: &[u8], slot: &mut Option<Typed>) -> bool {
    let typed = match kind {
        Kind::Decimal(k) => parse_int(value).map(|n| Typed::Number(decimal(n, k))),
        Kind::Int => parse_int(value).map(Typed::Int),
        Kind::Hex => parse_hex(value).map(Typed::Int),
        Kind::OnOff => match value {
            b"ON" => Some(Typed::Bool(true)),
            b"OFF" => Some(Typed::Bool(false)),
            _ => None,
        },
        Kind::Firmware { release } if firmware_version(value, release).is_none() => None,
        Kind::Text | Kind::Firmware { .. } => {
            let text = match slot.take() {
                Some(Typed::Text(mut text)) => {
                    text.clear();
                    text
                }
                _ => String::with_capacity(value.len()),
            };
            text_of(value, text).map(Typed::Text)
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

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(parse_int(b"-9223372036854775808"), Some(i64::MIN));
        assert_eq!(parse_int(b"9223372036854775808"), None);
        assert_eq!(parse_int(b"+5"), None);
    }

    #[test]
    fn hex_is_0x_and_hex_digits_only() {
        assert_eq!(parse_hex(b"0xA389"), Some(0xA389));
        assert_eq!(parse_hex(b"0X00000001"), Some(1));
        assert_eq!(parse_hex(b" 0x203 "), Some(0x203));
        assert_eq!(parse_hex(b"0x7FFFFFFFFFFFFFFF"), Some(i64::MAX));
        for odd in [
            &b"0x"[..],
            b"0x+1F",
            b"0x-1",
            b"0x1G",
            b"203",
            b"0x8000000000000000",
            b"0x\xE9",
        ] {
            assert_eq!(parse_hex(odd), None, "{odd:?}");
        }
    }

    #[test]
    fn firmware_versions() {
        for (value, release, version) in [
            (&b"0308"[..], false, Some("3.08")),
            (b"159", false, Some("1.59")),
            (b"C208", false, Some("C2.08")),
            (b"0", false, Some("0.00")),
            (b"5", false, Some("0.05")),
            (b"0105", false, Some("1.05")),
            (b"0208FF", true, Some("2.08")),
            (b"0208ff", true, Some("2.08")),
            (b"0208A3", true, Some("2.08~A3")),
            (b"FF", true, None),
            (b"0208", true, Some("0.02~08")),
            (b"\xE9 1", false, None),
            (b"\xE91", false, None),
            (b"3.08", false, None),
            (b"", false, None),
            (b"12 34", false, None),
        ] {
            assert_eq!(
                firmware_version(value, release).as_deref(),
                version,
                "{value:?}"
            );
        }
    }
}
