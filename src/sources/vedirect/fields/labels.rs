//! VE.Direct labels and how each is read: the table of every label of the
//! notes with its kind (a decimal in SI units, an integer, hex, ON/OFF,
//! text, a firmware version, minutes) and the fast label → slot lookup,
//! both from one list, and the parsing of a value into a [`Typed`] value.
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

/// Declares, from one list, the table of labels ([`LABELS`], whose order
/// is the snapshot's slots) and the lookup of a label's slot ([`slot`]): a
/// label is written once.
macro_rules! labels {
    ($($label:literal => $kind:expr,)*) => {
        /// Every label of the notes, with how to read it.
        pub(super) const LABELS: &[(&str, Kind)] = &[$((ascii($label), $kind)),*];

        /// The slot of `label`: its place in [`LABELS`].
        pub(super) fn slot(label: &[u8]) -> Option<usize> {
            // A match compiles to a decision tree: much faster than scanning
            // LABELS. Each arm's slot is found in LABELS when compiling.
            match label {
                $($label => Some(const { position($label) }),)*
                _ => None,
            }
        }
    };
}

labels! {
    b"V" => Kind::Decimal(3),
    b"V2" => Kind::Decimal(3),
    b"V3" => Kind::Decimal(3),
    b"VS" => Kind::Decimal(3),
    b"VM" => Kind::Decimal(3),
    b"DM" => Kind::Decimal(1),
    b"VPV" => Kind::Decimal(3),
    b"PPV" => Kind::Decimal(0),
    b"I" => Kind::Decimal(3),
    b"I2" => Kind::Decimal(3),
    b"I3" => Kind::Decimal(3),
    b"IL" => Kind::Decimal(3),
    b"LOAD" => Kind::OnOff,
    b"T" => Kind::Decimal(0),
    b"P" => Kind::Decimal(0),
    b"CE" => Kind::Decimal(3),
    b"SOC" => Kind::Decimal(1),
    b"TTG" => Kind::Minutes,
    b"Alarm" => Kind::OnOff,
    b"Relay" => Kind::OnOff,
    b"AR" => Kind::Int,
    b"OR" => Kind::Hex,
    b"H1" => Kind::Decimal(3),
    b"H2" => Kind::Decimal(3),
    b"H3" => Kind::Decimal(3),
    b"H4" => Kind::Int,
    b"H5" => Kind::Int,
    b"H6" => Kind::Decimal(3),
    b"H7" => Kind::Decimal(3),
    b"H8" => Kind::Decimal(3),
    b"H9" => Kind::Decimal(0),
    b"H10" => Kind::Int,
    b"H11" => Kind::Int,
    b"H12" => Kind::Int,
    b"H13" => Kind::Int,
    b"H14" => Kind::Int,
    b"H15" => Kind::Decimal(3),
    b"H16" => Kind::Decimal(3),
    b"H17" => Kind::Decimal(2),
    b"H18" => Kind::Decimal(2),
    b"H19" => Kind::Decimal(2),
    b"H20" => Kind::Decimal(2),
    b"H21" => Kind::Decimal(0),
    b"H22" => Kind::Decimal(2),
    b"H23" => Kind::Decimal(0),
    b"HSDS" => Kind::Int,
    b"ERR" => Kind::Int,
    b"CS" => Kind::Int,
    b"MPPT" => Kind::Int,
    b"MODE" => Kind::Int,
    b"WARN" => Kind::Int,
    b"MON" => Kind::Int,
    b"AC_OUT_V" => Kind::Decimal(2),
    b"AC_OUT_I" => Kind::Decimal(1),
    b"AC_OUT_S" => Kind::Decimal(0),
    b"DC_IN_V" => Kind::Decimal(2),
    b"DC_IN_I" => Kind::Decimal(1),
    b"DC_IN_P" => Kind::Decimal(0),
    b"PID" => Kind::Hex,
    b"SER#" => Kind::Text,
    b"FW" => Kind::Firmware { release: false },
    b"FWE" => Kind::Firmware { release: true },
    b"BMV" => Kind::Text,
    b"HC#" => Kind::Text,
}

/// The number of known labels (the snapshot's slots; at most 64, one bit each).
pub(super) const SLOTS: usize = LABELS.len();
const _: () = assert!(SLOTS <= 64);

/// A label as text (every label is ASCII).
const fn ascii(label: &'static [u8]) -> &'static str {
    match std::str::from_utf8(label) {
        Ok(text) => text,
        Err(_) => panic!("a VE.Direct label is ASCII"),
    }
}

/// The place of `label` in [`LABELS`].
const fn position(label: &[u8]) -> usize {
    let mut i = 0;
    while i < LABELS.len() {
        let known = LABELS[i].0.as_bytes();
        if known.len() == label.len() {
            let mut j = 0;
            while j < label.len() && known[j] == label[j] {
                j += 1;
            }
            if j == label.len() {
                return i;
            }
        }
        i += 1;
    }
    panic!("a label of the lookup is in LABELS")
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
