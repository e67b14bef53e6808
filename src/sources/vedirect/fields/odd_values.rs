//! Any bytes as the value of any label, on the path a real block takes: a
//! checksum-valid block → the codec → the merger → the snapshot, its row,
//! serial and firmware. Each value gives a typed value or a counted bad
//! value (the field left empty), never a panic, and never costs the block's
//! other fields. The expected values come from an independent reading of
//! the notes' formats (`std` parsers, explicit byte ranges), not from the
//! parsers under test.

use chrono::Utc;
use proptest::prelude::*;

use super::labels::{Kind, LABELS, Typed};
use super::merger::Merger;
use super::snapshot::Snapshot;
use crate::reading::{ReadingTable, Value};
use crate::sources::vedirect::codec::{Frame, MAX_VALUE, TextBlock, VeDirectCodec, decode_all};

/// A text block of raw fields; its checksum byte makes the 8-bit sum of all
/// its bytes, from the first `\r` to the checksum byte, 0.
fn raw_block(fields: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (label, value) in fields {
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(label);
        out.push(b'\t');
        out.extend_from_slice(value);
    }
    out.extend_from_slice(b"\r\nChecksum\t");
    let sum = out.iter().fold(0u8, |s, b| s.wrapping_add(*b));
    out.push(0u8.wrapping_sub(sum));
    assert_eq!(out.iter().fold(0u8, |s, b| s.wrapping_add(*b)), 0);
    out
}

/// The blocks the codec yields for `bytes`.
fn blocks_of(bytes: &[u8]) -> Vec<TextBlock> {
    decode_all(&mut VeDirectCodec::new(), bytes)
        .into_iter()
        .filter_map(|frame| match frame {
            Frame::Block(block) => Some(block),
            Frame::Hex(_) => None,
        })
        .collect()
}

/// A value every kind reads (for the block before the odd one).
fn good_value(kind: Kind) -> &'static [u8] {
    match kind {
        Kind::Decimal(_) | Kind::Int | Kind::Minutes => b"1500",
        Kind::Hex => b"0x203",
        Kind::OnOff => b"ON",
        Kind::Text => b"HQ1411MYIKN",
        Kind::Firmware { release: false } => b"0308",
        Kind::Firmware { release: true } => b"0308FF",
    }
}

/// A decimal integer as the notes write it (`-?[0-9]+`), read by `std`.
fn expected_int(value: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(value).ok()?;
    let digits = text.strip_prefix('-').unwrap_or(text);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// Bytes that are control characters as Latin-1: C0, DEL and C1.
fn is_control_byte(b: u8) -> bool {
    matches!(b, 0x00..=0x1F | 0x7F..=0x9F)
}

/// A firmware version per the notes: an optional letter, decimal digits
/// whose last two are the minor version, and (`FWE`) two hex digits of
/// release byte, `FF` for a release.
fn expected_firmware(value: &[u8], release: bool) -> Option<String> {
    let text = std::str::from_utf8(value)
        .ok()?
        .trim_matches(|c: char| c.is_ascii_whitespace());
    let (letter, rest) = match text.chars().next() {
        Some(c) if c.is_ascii_alphabetic() => (c.to_string(), &text[1..]),
        _ => (String::new(), text),
    };
    let (digits, byte) = if release {
        if rest.len() < 2 || !rest.is_ascii() {
            return None;
        }
        rest.split_at(rest.len() - 2)
    } else {
        (rest, "")
    };
    if digits.is_empty()
        || !digits.bytes().all(|b| b.is_ascii_digit())
        || !byte.bytes().all(|b| b.is_ascii_hexdigit())
    {
        return None;
    }
    let number: u128 = digits.parse().ok()?;
    let mut out = format!("{letter}{}.{:02}", number / 100, number % 100);
    if release && !byte.eq_ignore_ascii_case("FF") {
        out.push('~');
        out.push_str(byte);
    }
    Some(out)
}

/// What `kind` makes of `value`, read independently of the parsers.
fn expected(kind: Kind, value: &[u8]) -> Option<Typed> {
    match kind {
        Kind::Decimal(k) => {
            let n = expected_int(value)?;
            // The double nearest to the decimal n × 10^−k.
            Some(Typed::Number(format!("{n}e-{k}").parse().unwrap()))
        }
        Kind::Int => expected_int(value).map(Typed::Int),
        Kind::Minutes => expected_int(value).map(|m| match m {
            -1 => Typed::None,
            m => Typed::Number((i128::from(m) * 60) as f64),
        }),
        Kind::Hex => {
            let text = std::str::from_utf8(value)
                .ok()?
                .trim_matches(|c: char| c.is_ascii_whitespace());
            let digits = text
                .strip_prefix("0x")
                .or_else(|| text.strip_prefix("0X"))?;
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            let n = u128::from_str_radix(digits, 16).ok()?;
            i64::try_from(n).ok().map(Typed::Int)
        }
        Kind::OnOff => match value {
            b"ON" => Some(Typed::Bool(true)),
            b"OFF" => Some(Typed::Bool(false)),
            _ => None,
        },
        Kind::Text => {
            if value.iter().any(|b| is_control_byte(*b)) {
                return None;
            }
            let latin1 = value
                .iter()
                .map(|b| char::from_u32(u32::from(*b)).unwrap())
                .collect();
            Some(Typed::Text(latin1))
        }
        Kind::Firmware { release } => {
            expected_firmware(value, release)?;
            Some(Typed::Text(String::from_utf8(value.to_vec()).unwrap()))
        }
    }
}

/// The typed values agree; a number beyond 2^53 went through a rounding of
/// its integer first, so it may be one unit in the last place off.
fn same(got: &Typed, want: &Typed) -> bool {
    match (got, want) {
        (Typed::Number(g), Typed::Number(w)) if w.abs() > 2f64.powi(53) / 1000.0 => {
            (g - w).abs() <= w.abs() * 4.0 * f64::EPSILON
        }
        (Typed::Number(g), Typed::Number(w)) => g.to_bits() == w.to_bits(),
        _ => got == want,
    }
}

/// Everything the source reads off a snapshot: nothing panics, numbers are
/// finite, texts printable.
fn use_all_of(snapshot: &Snapshot) {
    for table in [
        ReadingTable::Battery,
        ReadingTable::Solar,
        ReadingTable::Inverter,
        ReadingTable::System,
    ] {
        for (column, value) in snapshot.columns(table) {
            match value {
                Value::Float(v) => assert!(v.is_finite(), "{column}: {v}"),
                Value::Text(t) => assert!(!t.chars().any(char::is_control), "{column}: {t:?}"),
                _ => {}
            }
        }
    }
    let _ = (snapshot.table(), snapshot.product_id());
    for text in [snapshot.serial().map(str::to_string), snapshot.firmware()]
        .into_iter()
        .flatten()
    {
        assert!(!text.chars().any(char::is_control), "{text:?}");
    }
}

/// `value` as `label`'s value in a cycle between two normal ones: the
/// stream decodes to the three blocks, the odd block's snapshot has the
/// value typed or counted as bad, and its other fields either way.
fn check_label(label: &str, kind: Kind, value: &[u8]) {
    // A field of the block besides the one under test.
    let (witness, witness_value, witness_number) = if label == "CE" {
        ("V", "12065", 12.065)
    } else {
        ("CE", "-65473", -65.473)
    };
    let with = |value: &[u8]| -> Vec<u8> {
        let mut fields: Vec<(&[u8], &[u8])> = Vec::new();
        if label != "PID" {
            fields.push((b"PID", b"0x203"));
        }
        fields.push((label.as_bytes(), value));
        fields.push((witness.as_bytes(), witness_value.as_bytes()));
        raw_block(&fields)
    };
    let normal = with(good_value(kind));
    let odd = with(value);
    let mut stream = normal.clone();
    stream.extend_from_slice(&odd);
    stream.extend_from_slice(&normal);
    let blocks = blocks_of(&stream);

    // Only a line feed or a colon (a HEX frame's start) breaks a line, and
    // the codec bounds a value's length.
    let well_formed = value.len() <= MAX_VALUE && !value.iter().any(|b| matches!(b, b'\n' | b':'));
    let mut merger = Merger::new();
    let at = Utc::now();
    if !well_formed {
        for block in &blocks {
            merger.push(block, at);
            if let Some(snapshot) = merger.latest() {
                use_all_of(snapshot);
            }
        }
        return;
    }
    assert_eq!(blocks.len(), 3, "{label} {value:?}");
    assert_eq!(blocks[1].bytes(), &odd[..]);
    assert_eq!(blocks[1].get(label), Some(value), "{label}");

    merger.push(&blocks[0], at);
    // One-block cycles: the odd block completes the first and itself.
    assert_eq!(merger.push(&blocks[1], at), 2, "{label}");
    let snapshot = merger.latest().unwrap();
    assert_eq!(snapshot.number(witness), Some(witness_number), "{label}");
    match expected(kind, value) {
        Some(want) => {
            let got = snapshot.get(label);
            assert!(
                got.is_some_and(|got| same(got, &want)),
                "{label} {value:?}: {got:?}, expected {want:?}"
            );
            assert_eq!((snapshot.bad_values, snapshot.bad_labels()), (0, 0));
        }
        None => {
            assert_eq!(snapshot.get(label), None, "{label} {value:?}");
            assert_eq!(snapshot.bad_values, 1, "{label} {value:?}");
            let bad: Vec<_> = Snapshot::label_names(snapshot.bad_labels()).collect();
            assert_eq!(bad, [label]);
        }
    }
    let firmware = match (label, kind) {
        ("FW" | "FWE", Kind::Firmware { release }) => expected_firmware(value, release),
        _ => None,
    };
    assert_eq!(snapshot.firmware(), firmware, "{label} {value:?}");
    if label == "SER#" {
        let serial = match expected(kind, value) {
            Some(Typed::Text(text)) => Some(text),
            _ => None,
        };
        assert_eq!(snapshot.serial().map(str::to_string), serial);
    }
    if label != "PID" {
        assert_eq!(snapshot.table(), Some(ReadingTable::Battery));
    }
    use_all_of(snapshot);

    // The next normal block reads as normal again: nothing of the odd one stays.
    merger.push(&blocks[2], at);
    let snapshot = merger.latest().unwrap();
    assert_eq!(
        snapshot.get(label),
        expected(kind, good_value(kind)).as_ref()
    );
    assert_eq!(snapshot.bad_values, 0);
}

/// Values of every shape: random bytes short and long (past the codec's
/// bound), any Unicode text (multi-byte UTF-8), empty, and near misses of
/// each kind's format.
fn any_value() -> impl Strategy<Value = Vec<u8>> {
    let text = |pattern: &'static str| pattern.prop_map(String::into_bytes);
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..8),
        proptest::collection::vec(any::<u8>(), 0..=MAX_VALUE + 8),
        proptest::collection::vec(any::<u8>(), 100..600),
        any::<String>().prop_map(String::into_bytes),
        text("[\\x20-\\x7e]{0,24}"),
        text("[\\u{80}-\\u{7ff}0-9]{0,12}"),
        text("[-+]?[0-9]{0,22}"),
        text(" ?0[xX][0-9a-fA-F+-]{0,18} ?"),
        text("[A-Za-z]?[0-9]{0,7}[0-9A-Fa-f]{0,2}"),
        prop::sample::select(vec![
            &b""[..],
            b"ON",
            b"OFF",
            b"on",
            b"-1",
            b"-9223372036854775808",
            b"9223372036854775808",
            b"0x8000000000000000",
            b"\xE9 1",
            b"\xE91",
            b"1\xE9",
            b"\xC3\xA9",
            b"\xE2\x82\xAC",
            b"12\x0034",
            b"\x1b[2J",
        ])
        .prop_map(<[u8]>::to_vec),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Every label of the table, each with a value of any shape.
    #[test]
    fn any_value_of_any_label_is_typed_or_counted(
        values in proptest::collection::vec(any_value(), LABELS.len()),
    ) {
        for ((label, kind), value) in LABELS.iter().zip(&values) {
            check_label(label, *kind, value);
        }
    }
}

/// The good values read as the notes say, so that the property above
/// compares against real values.
#[test]
fn every_label_reads_its_good_value() {
    for (label, kind) in LABELS {
        assert!(expected(*kind, good_value(*kind)).is_some(), "{label}");
        check_label(label, *kind, good_value(*kind));
    }
}

/// A firmware text with a non-ASCII byte, in an otherwise normal block: the
/// device's numbers are kept, its firmware is unknown, and the value is
/// counted as bad. (Read as Latin-1, `\xE9 1` once became the version
/// "é. 1", and `\xE91` cut the text inside a character and panicked.)
#[test]
fn a_firmware_with_an_odd_byte_is_counted_and_the_block_kept() {
    for fw in [&b"\xE9 1"[..], b"\xE91", b"1\xE9", b"\xC3\xA9"] {
        let mut stream = raw_block(&[(b"PID", b"0x203"), (b"V", b"12065"), (b"FW", b"0308")]);
        let odd = raw_block(&[
            (b"PID", b"0x203"),
            (b"V", b"12066"),
            (b"FW", fw),
            (b"SER#", b"HQ1411MYIKN"),
        ]);
        stream.extend_from_slice(&odd);
        let blocks = blocks_of(&stream);
        assert_eq!(blocks.len(), 2, "{fw:?}");
        assert_eq!(blocks[1].get("FW"), Some(fw));
        let mut merger = Merger::new();
        merger.push(&blocks[0], Utc::now());
        merger.push(&blocks[1], Utc::now());
        let first = merger.recent(1).unwrap();
        assert_eq!(first.firmware().as_deref(), Some("3.08"));
        let odd = merger.latest().unwrap();
        assert_eq!(odd.firmware(), None, "{fw:?}");
        assert_eq!(odd.get("FW"), None, "{fw:?}");
        assert_eq!(odd.bad_values, 1);
        assert_eq!(
            Snapshot::label_names(odd.bad_labels()).collect::<Vec<_>>(),
            ["FW"]
        );
        assert_eq!(odd.number("V"), Some(12.066));
        assert_eq!(odd.serial(), Some("HQ1411MYIKN"));
        let columns = odd.columns(ReadingTable::Battery);
        assert!(
            columns.contains(&("voltage", Value::Float(12.066))),
            "{columns:?}"
        );
    }
}
