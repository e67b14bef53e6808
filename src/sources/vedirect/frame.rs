//! What the VE.Direct stream carries: checksum-verified text blocks
//! ([`TextBlock`]) and checked HEX frames ([`HexFrame`]), the decoder's
//! counts of what it dropped, and the encoders the simulator and the tests
//! use to write valid ones.

/// A checksum-verified text block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextBlock {
    /// The block's text bytes (HEX frames removed), from the `\r\n` of its
    /// first field to the checksum byte. Well-formed: every field line is
    /// `<label>\t<value>` and ends with `\r\n`.
    pub(super) bytes: Vec<u8>,
}

impl TextBlock {
    /// The fields in order, as raw bytes (the checksum field excluded).
    pub(crate) fn fields(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        // The checksum line is always the last 12 bytes: CR LF, the 8
        // letters of "Checksum", a tab and the checksum byte. Cutting 10
        // keeps its CR LF, which ends the last field's line; the first 2
        // bytes are the first field's CR LF.
        let body = self
            .bytes
            .get(2..self.bytes.len().saturating_sub(10))
            .unwrap_or_default();
        body.split(|b| *b == b'\n').filter_map(|line| {
            // The label ends at the first tab; the value is the rest, as sent.
            let mut parts = line.strip_suffix(b"\r")?.splitn(2, |b| *b == b'\t');
            Some((parts.next()?, parts.next()?))
        })
    }

    /// The value of `label`, if the block has it.
    pub fn get(&self, label: &str) -> Option<&[u8]> {
        self.fields()
            .find(|(l, _)| *l == label.as_bytes())
            .map(|(_, v)| v)
    }

    /// The block's bytes as sent (HEX frames removed).
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// A HEX protocol frame whose 0x55 check passed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HexFrame {
    /// The command or response nibble (`7` get reply, `A` async ...).
    pub(crate) command: u8,
    /// The payload bytes, without the check byte.
    pub(crate) payload: Vec<u8>,
}

impl HexFrame {
    #[cfg(test)]
    /// The register id of a get/set/async reply (little-endian first two bytes).
    pub(crate) fn register(&self) -> Option<u16> {
        Some(u16::from_le_bytes([
            *self.payload.first()?,
            *self.payload.get(1)?,
        ]))
    }
}

/// One item of the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A text block with a valid checksum.
    Block(TextBlock),
    /// A HEX frame with a valid check.
    Hex(HexFrame),
}

/// What the decoder dropped, for status and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DecodeStats {
    /// Text blocks that reached their checksum and passed it.
    pub blocks_valid: u64,
    /// Text blocks that reached their checksum and failed it (dropped).
    pub blocks_invalid: u64,
    /// HEX frames that passed their check.
    pub hex_valid: u64,
    /// HEX frames that failed their check or were malformed (dropped).
    pub(crate) hex_invalid: u64,
    /// Partial blocks or frames abandoned for exceeding a size bound.
    pub(crate) resyncs: u64,
}

/// Parses and checks the hex digits of a HEX frame (between `:` and the line end).
pub(super) fn parse_hex(text: &[u8]) -> Option<HexFrame> {
    let (&first, rest) = text.split_first()?;
    let command = hex_digit(first)?;
    if rest.is_empty() || rest.len() % 2 != 0 {
        return None;
    }
    let mut bytes = Vec::with_capacity(rest.len() / 2);
    for pair in rest.chunks_exact(2) {
        bytes.push(hex_digit(pair[0])? << 4 | hex_digit(pair[1])?);
    }
    let sum = bytes.iter().fold(command, |s, b| s.wrapping_add(*b));
    if sum != 0x55 {
        return None;
    }
    bytes.pop();
    Some(HexFrame {
        command,
        payload: bytes,
    })
}

pub(super) fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'A'..=b'F' => Some(c - b'A' + 10),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

/// Builds a valid text block from fields (simulator and tests).
pub fn encode_block(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    for (label, value) in fields {
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(label.as_bytes());
        out.push(b'\t');
        out.extend_from_slice(value.as_bytes());
    }
    out.extend_from_slice(b"\r\nChecksum\t");
    let sum = out.iter().fold(0u8, |s, b| s.wrapping_add(*b));
    out.push(0u8.wrapping_sub(sum));
    out
}

/// Builds a valid HEX frame (`:` … `\n`).
pub fn encode_hex(command: u8, payload: &[u8]) -> Vec<u8> {
    let sum = payload
        .iter()
        .fold(command & 0x0F, |s, b| s.wrapping_add(*b));
    let check = 0x55u8.wrapping_sub(sum);
    let mut text = format!(":{:X}", command & 0x0F);
    for b in payload.iter().chain(std::iter::once(&check)) {
        text.push_str(&format!("{b:02X}"));
    }
    text.push('\n');
    text.into_bytes()
}
