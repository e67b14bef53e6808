//! The VE.Direct stream decoder: bytes in, checksum-verified text blocks and
//! HEX frames out (a [`tokio_util::codec::Decoder`]).
//!
//! - A text block is `\r\n<label>\t<value>` fields ending with
//!   `\r\nChecksum\t<byte>`; the 8-bit sum of its bytes, from the `\r` of its
//!   first field to the checksum byte, is 0. Bytes before that `\r` (junk, a
//!   cut-off block) are not part of it.
//! - A `:` anywhere except in the checksum position starts a HEX frame that
//!   runs to `\n`. It is taken out of the text (not summed, not part of a
//!   field) and checked with the 0x55 rule, so async HEX frames straight after
//!   a checksum, or even inside a block, never spoil the text.
//! - A block that fails its checksum is dropped whole and counted; a block,
//!   label, value or HEX frame past its size bound is abandoned and the
//!   decoder resynchronises on the next line start.

use bytes::{Buf, BytesMut};
use tokio_util::codec::Decoder;

pub use super::frame::{DecodeStats, Frame, HexFrame, TextBlock, encode_block, encode_hex};
use super::frame::{hex_digit, parse_hex};

/// Longest block kept, in bytes (real blocks are under 300).
pub(crate) const MAX_BLOCK: usize = 1024;
/// Longest label kept (the longest real ones, `Checksum` and `AC_OUT_V`,
/// have 8 bytes).
pub(crate) const MAX_LABEL: usize = 16;
/// Longest value (`SmartShunt 500A/50mV`: 20).
pub(crate) const MAX_VALUE: usize = 64;
/// Longest HEX frame, `:` to `\n`.
pub(crate) const MAX_HEX: usize = 512;
/// Most fields in one block.
pub(crate) const MAX_FIELDS: usize = 48;

/// Whether `label` can be a label: not empty, and only ASCII letters,
/// digits, `#` and `_` (`SER#`, `AC_OUT_V`).
fn is_label(label: &[u8]) -> bool {
    !label.is_empty()
        && label
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'#' | b'_'))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Between blocks: waiting for a line start.
    Idle,
    /// Saw `\r` between blocks; a `\n` starts a block.
    IdleCr,
    /// Reading a label.
    Label,
    /// Reading a value.
    Value,
    /// The next byte is the checksum byte, whatever it is.
    ChecksumByte,
}

/// The decoder. Holds the partial block across calls.
#[derive(Debug)]
pub struct VeDirectCodec {
    state: State,
    /// Where to go back to after a HEX frame, when inside one.
    in_hex: Option<State>,
    hex: Vec<u8>,
    block: Vec<u8>,
    /// Fields completed in the current block.
    fields: usize,
    sum: u8,
    label_start: usize,
    tab_at: usize,
    /// The last broken block's checksum byte was a CR: a LF completes a line start.
    pending_cr: bool,
    /// The current block broke the line structure (an empty or odd label, a
    /// bare LF): it is rejected even if its 8-bit sum happens to be 0.
    malformed: bool,
    stats: DecodeStats,
}

impl Default for VeDirectCodec {
    fn default() -> Self {
        Self::new()
    }
}

impl VeDirectCodec {
    /// A decoder at the start of a stream.
    pub fn new() -> Self {
        Self {
            state: State::Idle,
            in_hex: None,
            hex: Vec::with_capacity(128),
            block: Vec::with_capacity(MAX_BLOCK),
            fields: 0,
            sum: 0,
            label_start: 0,
            tab_at: 0,
            pending_cr: false,
            malformed: false,
            stats: DecodeStats::default(),
        }
    }

    /// What was decoded and dropped so far.
    pub fn stats(&self) -> DecodeStats {
        self.stats
    }

    fn clear_block(&mut self) {
        self.block.clear();
        self.fields = 0;
        self.sum = 0;
    }

    fn begin_block(&mut self, line_start: &[u8]) {
        self.clear_block();
        self.malformed = line_start != b"\r\n";
        self.block.extend_from_slice(line_start);
        self.sum = line_start.iter().fold(0u8, |s, b| s.wrapping_add(*b));
        self.label_start = self.block.len();
        self.state = State::Label;
    }

    fn abandon(&mut self) {
        self.stats.resyncs += 1;
        self.clear_block();
        self.state = State::Idle;
    }

    /// Decodes from the start of `bytes` up to and including the first byte
    /// that completes a frame; returns how many bytes it used and the frame.
    /// Runs of ordinary bytes inside labels and values, and between blocks,
    /// are handled a slice at a time.
    pub(crate) fn scan(&mut self, bytes: &[u8]) -> (usize, Option<Frame>) {
        self.scan_with(bytes, false)
    }

    /// As [`Self::scan`]; with `more_to_come`, a block start whose block is
    /// not complete in `bytes` yet is left unconsumed (the caller comes back
    /// with more bytes) so that it can still take the fast path.
    fn scan_with(&mut self, bytes: &[u8], more_to_come: bool) -> (usize, Option<Frame>) {
        let mut i = 0;
        while i < bytes.len() {
            if self.in_hex.is_none() && self.state == State::Idle && !self.pending_cr {
                // Between blocks: jump to the next byte that matters.
                let Some(skip) = memchr::memchr3(b'\r', b'\n', b':', &bytes[i..]) else {
                    return (bytes.len(), None);
                };
                i += skip;
                match fast_block(&bytes[i..]) {
                    Fast::Block(used, block) => {
                        self.stats.blocks_valid += 1;
                        return (i + used, Some(Frame::Block(block)));
                    }
                    Fast::Incomplete if more_to_come => return (i, None),
                    Fast::Incomplete | Fast::No => {}
                }
            }
            if self.in_hex.is_none() {
                let rest = &bytes[i..];
                let run = rest
                    .iter()
                    .position(|&b| matches!(b, b'\t' | b'\r' | b'\n' | b':'))
                    .unwrap_or(rest.len());
                if run > 0 {
                    match self.state {
                        State::Idle => {
                            i += run;
                            continue;
                        }
                        State::Label | State::Value => {
                            let chunk = &rest[..run];
                            self.block.extend_from_slice(chunk);
                            self.sum = chunk.iter().fold(self.sum, |s, b| s.wrapping_add(*b));
                            let too_long = match self.state {
                                State::Label => self.block.len() - self.label_start > MAX_LABEL,
                                _ => self.block.len() - self.tab_at > MAX_VALUE + 2,
                            };
                            if too_long {
                                self.abandon();
                            }
                            i += run;
                            continue;
                        }
                        State::IdleCr | State::ChecksumByte => {}
                    }
                }
            }
            let frame = self.feed(bytes[i]);
            i += 1;
            if frame.is_some() {
                return (i, frame);
            }
        }
        (i, None)
    }

    /// Feeds one byte; returns a frame when one completes.
    #[inline]
    fn feed(&mut self, b: u8) -> Option<Frame> {
        if let Some(resume) = self.in_hex {
            return self.feed_hex(b, resume);
        }
        if b == b':' && self.state != State::ChecksumByte {
            self.in_hex = Some(self.state);
            self.hex.clear();
            return None;
        }
        self.feed_text(b)
    }

    fn feed_text(&mut self, b: u8) -> Option<Frame> {
        match self.state {
            State::Idle => match b {
                b'\r' => self.state = State::IdleCr,
                b'\n' if std::mem::take(&mut self.pending_cr) => self.begin_block(b"\r\n"),
                b'\n' => self.begin_block(b"\n"),
                _ => {}
            },
            State::IdleCr => match b {
                b'\n' => self.begin_block(b"\r\n"),
                b'\r' => {}
                _ => self.state = State::Idle,
            },
            State::Label => {
                self.push(b);
                match b {
                    b'\t' => {
                        self.tab_at = self.block.len() - 1;
                        let label = &self.block[self.label_start..self.tab_at];
                        if label == b"PID" {
                            // PID opens every block: whatever came before it is not part of it.
                            self.restart_at_field();
                        }
                        let label = &self.block[self.label_start..self.tab_at];
                        if !is_label(label) {
                            self.malformed = true;
                        }
                        self.state = if label.eq_ignore_ascii_case(b"Checksum") {
                            State::ChecksumByte
                        } else {
                            State::Value
                        };
                    }
                    // A line break inside a label: a new label starts after it.
                    b'\n' => {
                        self.malformed = true;
                        self.label_start = self.block.len();
                    }
                    b'\r' => self.malformed = true,
                    _ if self.block.len() - self.label_start > MAX_LABEL => self.abandon(),
                    _ => {}
                }
            }
            State::Value => {
                self.push(b);
                match b {
                    b'\n' => {
                        if self.block[self.block.len() - 2] != b'\r' {
                            // A bare LF: no real device ends a line this way.
                            self.malformed = true;
                        }
                        if self.fields >= MAX_FIELDS || self.block.len() > MAX_BLOCK {
                            // Too long to be a block; this line end may start the next one.
                            let line_start: &[u8] = if self.block[self.block.len() - 2] == b'\r' {
                                b"\r\n"
                            } else {
                                b"\n"
                            };
                            self.abandon();
                            self.begin_block(line_start);
                            return None;
                        }
                        self.fields += 1;
                        self.label_start = self.block.len();
                        self.state = State::Label;
                    }
                    _ if self.block.len() - self.tab_at > MAX_VALUE + 2 => {
                        self.abandon();
                        // A CR here may be the first half of the next line start.
                        if b == b'\r' {
                            self.state = State::IdleCr;
                        }
                    }
                    _ => {}
                }
            }
            State::ChecksumByte => {
                self.push(b);
                let valid = self.sum == 0 && !self.malformed;
                self.state = State::Idle;
                if valid {
                    self.stats.blocks_valid += 1;
                    // Exact-size copies; the working buffers keep their capacity.
                    let block = TextBlock {
                        bytes: self.block.clone(),
                    };
                    self.clear_block();
                    return Some(Frame::Block(block));
                }
                self.stats.blocks_invalid += 1;
                // The "checksum byte" of a broken block may be the next line's CR.
                self.pending_cr = b == b'\r';
                self.clear_block();
            }
        }
        None
    }

    /// Drops everything before the current field's line start.
    fn restart_at_field(&mut self) {
        let start = self.label_start;
        let line = if start >= 2 && &self.block[start - 2..start] == b"\r\n" {
            start - 2
        } else {
            start.saturating_sub(1)
        };
        if line == 0 && self.fields == 0 {
            return;
        }
        self.stats.resyncs += 1;
        self.block.drain(..line);
        self.malformed = !self.block.starts_with(b"\r\n");
        self.fields = 0;
        self.sum = self.block.iter().fold(0u8, |s, b| s.wrapping_add(*b));
        self.label_start -= line;
        self.tab_at -= line;
    }

    #[inline]
    fn push(&mut self, b: u8) {
        self.block.push(b);
        self.sum = self.sum.wrapping_add(b);
    }

    fn feed_hex(&mut self, b: u8, resume: State) -> Option<Frame> {
        let end_of_frame = b == b'\n' || b == b'\r';
        if !end_of_frame && hex_digit(b).is_some() && self.hex.len() < MAX_HEX {
            self.hex.push(b);
            return None;
        }
        self.in_hex = None;
        self.state = resume;
        let frame = if end_of_frame {
            parse_hex(&self.hex)
        } else {
            None
        };
        let result = match frame {
            Some(frame) => {
                self.stats.hex_valid += 1;
                Some(Frame::Hex(frame))
            }
            None => {
                self.stats.hex_invalid += 1;
                None
            }
        };
        if b != b'\n' {
            // Not part of the frame (a CR, or the byte that showed this was no
            // frame): the text gets it back, so a line start is never lost.
            let text = self.feed(b);
            return result.or(text);
        }
        result
    }
}

/// The bytes that matter inside a block's fields.
static SPECIAL: [bool; 256] = {
    let mut table = [false; 256];
    table[b'\t' as usize] = true;
    table[b'\n' as usize] = true;
    table[b':' as usize] = true;
    table
};

/// The common case in one go: a complete, well-formed block with a valid
/// checksum starting at `bytes[0..2] == "\r\n"`, with no HEX frame inside.
/// Returns `None` whenever anything is unusual (incomplete, corrupt, a `:`,
/// an odd line), and the byte-at-a-time state machine decides instead, so
/// both paths yield exactly the same blocks.
fn fast_block(bytes: &[u8]) -> Fast {
    const END: &[u8] = b"\r\nChecksum\t";
    if bytes.len() < 2 {
        return Fast::Incomplete;
    }
    if !bytes.starts_with(b"\r\n") {
        return Fast::No;
    }
    let window = &bytes[..bytes.len().min(MAX_BLOCK + 1)];
    let Some(at) = memchr::memmem::find(window, END) else {
        return if window.len() <= MAX_BLOCK {
            Fast::Incomplete
        } else {
            Fast::No
        };
    };
    let end = at + END.len() + 1;
    if end > bytes.len() {
        return Fast::Incomplete;
    }
    if end > MAX_BLOCK {
        return Fast::No;
    }
    match checked_block(&bytes[..end], at) {
        Some(block) => Fast::Block(end, block),
        None => Fast::No,
    }
}

/// What the fast path made of a block start.
enum Fast {
    /// A valid block of this many bytes.
    Block(usize, TextBlock),
    /// The block may be complete once more bytes arrive.
    Incomplete,
    /// Not a block the fast path takes: the state machine decides.
    No,
}

/// Checks a candidate block (`END` at `at`) and builds it.
fn checked_block(block: &[u8], at: usize) -> Option<TextBlock> {
    if block.iter().fold(0u8, |s, b| s.wrapping_add(*b)) != 0 {
        return None;
    }
    // The fields: stop only at tabs, line feeds and colons.
    let mut fields = 0;
    let mut line = 2;
    let mut tab = 0;
    for (k, &b) in block[2..at + 2].iter().enumerate() {
        if !SPECIAL[usize::from(b)] {
            continue;
        }
        let i = k + 2;
        match b {
            b'\t' if tab == 0 => tab = i,
            b'\t' => {}
            b'\n' => {
                if tab == 0 || block[i - 1] != b'\r' || fields >= MAX_FIELDS {
                    return None;
                }
                let label = &block[line..tab];
                if !is_label(label)
                    || label.len() > MAX_LABEL
                    || i - 1 - (tab + 1) > MAX_VALUE
                    || (label == b"PID" && fields > 0)
                    || label.eq_ignore_ascii_case(b"Checksum")
                {
                    return None;
                }
                fields += 1;
                line = i + 1;
                tab = 0;
            }
            _ => return None,
        }
    }
    if line != at + 2 {
        return None;
    }
    Some(TextBlock {
        bytes: block.to_vec(),
    })
}

impl Decoder for VeDirectCodec {
    type Item = Frame;
    type Error = std::io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, std::io::Error> {
        let (used, frame) = self.scan_with(src, true);
        src.advance(used);
        Ok(frame)
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, std::io::Error> {
        // At the end of the stream nothing more comes: finish what is there.
        let (used, frame) = self.scan_with(src, false);
        src.advance(used);
        Ok(frame)
    }
}

/// Decodes a whole byte slice (captures, tests).
pub fn decode_all(codec: &mut VeDirectCodec, bytes: &[u8]) -> Vec<Frame> {
    let mut frames = Vec::new();
    decode_each(codec, bytes, |frame| frames.push(frame));
    frames
}

/// Decodes a byte slice, handing each frame to `on_frame` as it completes.
pub fn decode_each(codec: &mut VeDirectCodec, mut bytes: &[u8], mut on_frame: impl FnMut(Frame)) {
    while !bytes.is_empty() {
        let (used, frame) = codec.scan(bytes);
        bytes = &bytes[used..];
        if let Some(frame) = frame {
            on_frame(frame);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blocks(frames: &[Frame]) -> Vec<&TextBlock> {
        frames
            .iter()
            .filter_map(|f| match f {
                Frame::Block(b) => Some(b),
                Frame::Hex(_) => None,
            })
            .collect()
    }

    #[test]
    fn a_block_with_its_checksum() {
        let bytes = encode_block(&[
            ("PID", "0x203"),
            ("V", "26201"),
            ("BMV", "SmartShunt 500A/50mV"),
        ]);
        let mut codec = VeDirectCodec::new();
        let frames = decode_all(&mut codec, &bytes);
        let block = blocks(&frames)[0];
        assert_eq!(block.get("V"), Some(&b"26201"[..]));
        assert_eq!(block.get("BMV"), Some(&b"SmartShunt 500A/50mV"[..]));
        assert_eq!(block.fields().count(), 3);
        assert_eq!(codec.stats().blocks_valid, 1);
    }

    #[test]
    fn a_wrong_checksum_drops_the_whole_block() {
        let mut bytes = encode_block(&[("V", "12000"), ("I", "-100")]);
        *bytes.last_mut().unwrap() ^= 1;
        let mut codec = VeDirectCodec::new();
        assert!(decode_all(&mut codec, &bytes).is_empty());
        assert_eq!(
            (codec.stats().blocks_valid, codec.stats().blocks_invalid),
            (0, 1)
        );
    }

    #[test]
    fn junk_before_a_block_is_not_part_of_it() {
        let mut bytes = vec![0xB4, b'x', 0];
        bytes.extend(encode_block(&[("V", "12000")]));
        let mut codec = VeDirectCodec::new();
        assert_eq!(blocks(&decode_all(&mut codec, &bytes)).len(), 1);
    }

    #[test]
    fn hex_frames_between_and_inside_blocks_are_taken_out() {
        let hex = encode_hex(0xA, &[0x50, 0x10, 0x00, 0x01, 0x02]);
        let block = encode_block(&[("V", "12000"), ("I", "-100")]);
        // Straight after the checksum byte, and between two fields.
        let mut bytes = block.clone();
        bytes.extend_from_slice(&hex);
        let split = block.iter().position(|b| *b == b'I').unwrap() - 2;
        bytes.extend_from_slice(&block[..split]);
        bytes.extend_from_slice(&hex);
        bytes.extend_from_slice(&block[split..]);
        let mut codec = VeDirectCodec::new();
        let frames = decode_all(&mut codec, &bytes);
        assert_eq!(blocks(&frames).len(), 2);
        let hexes: Vec<_> = frames
            .iter()
            .filter(|f| matches!(f, Frame::Hex(_)))
            .collect();
        assert_eq!(hexes.len(), 2);
        if let Frame::Hex(h) = hexes[0] {
            assert_eq!((h.command, h.register()), (0xA, Some(0x1050)));
        }
    }

    #[test]
    fn a_colon_checksum_byte_is_not_a_hex_frame() {
        // Find a value that makes the checksum byte ':'.
        let bytes = (0..200_000)
            .map(|n| encode_block(&[("V", &n.to_string())]))
            .find(|b| *b.last().unwrap() == b':')
            .unwrap();
        let mut with_hex = bytes.clone();
        with_hex.extend(encode_hex(0xA, &[0x4F, 0x10, 0x00]));
        with_hex.extend(&bytes);
        let mut codec = VeDirectCodec::new();
        let frames = decode_all(&mut codec, &with_hex);
        assert_eq!(blocks(&frames).len(), 2);
        assert_eq!(codec.stats().hex_valid, 1);
    }

    #[test]
    fn the_faq_hex_examples_check() {
        assert_eq!(encode_hex(7, &[0x00, 0x10, 0x00]), b":70010003E\n");
        let mut codec = VeDirectCodec::new();
        let frames = decode_all(&mut codec, b":7001000C80076\n:7FF0F0040\n:7FF0F0041\n");
        assert_eq!(frames.len(), 2);
        assert_eq!(codec.stats().hex_invalid, 1);
        let Frame::Hex(reply) = &frames[0] else {
            panic!()
        };
        assert_eq!(reply.payload, vec![0x00, 0x10, 0x00, 0xC8, 0x00]);
    }

    #[test]
    fn oversized_garbage_is_abandoned_and_the_next_block_recovered() {
        let mut bytes = b"\r\nV\t".to_vec();
        bytes.extend(std::iter::repeat_n(b'9', 5000));
        bytes.extend(encode_block(&[("V", "12000")]));
        let mut codec = VeDirectCodec::new();
        let frames = decode_all(&mut codec, &bytes);
        assert_eq!(blocks(&frames).len(), 1);
        assert!(codec.stats().resyncs >= 1);
    }

    #[test]
    fn the_tokio_decoder_yields_across_chunk_boundaries() {
        let mut bytes = encode_block(&[("V", "12000")]);
        bytes.extend(encode_hex(0xA, &[1, 2]));
        bytes.extend(encode_block(&[("V", "12001")]));
        let mut codec = VeDirectCodec::new();
        let mut out = Vec::new();
        let mut buf = BytesMut::new();
        for chunk in bytes.chunks(7) {
            buf.extend_from_slice(chunk);
            while let Some(frame) = codec.decode(&mut buf).unwrap() {
                out.push(frame);
            }
        }
        assert_eq!(out.len(), 3);
    }

    /// Byte at a time, never the fast path.
    fn decode_bytewise(bytes: &[u8]) -> (Vec<Frame>, DecodeStats) {
        let mut codec = VeDirectCodec::new();
        let frames = bytes.iter().filter_map(|&b| codec.feed(b)).collect();
        (frames, codec.stats())
    }

    fn pieces() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        use proptest::prelude::*;
        let block = (0u32..100_000, 0usize..4).prop_map(|(n, kind)| match kind {
            0 => encode_block(&[("PID", "0x203"), ("V", &n.to_string()), ("SOC", "900")]),
            1 => encode_block(&[("H1", &format!("-{n}")), ("H2", "0")]),
            2 => encode_hex(0xA, &[0x50, 0x10, (n & 0xFF) as u8]),
            _ => {
                let mut b = encode_block(&[("V", &n.to_string())]);
                let at = b.len() / 2;
                b[at] ^= 0x20;
                b
            }
        });
        let noise = proptest::collection::vec(
            prop_oneof![
                Just(b'\r'),
                Just(b'\n'),
                Just(b'\t'),
                Just(b':'),
                any::<u8>()
            ],
            0..8,
        );
        proptest::collection::vec(prop_oneof![block, noise], 0..40).prop_map(|parts| parts.concat())
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(400))]

        /// The fast path changes nothing: same frames and counts as byte at a time,
        /// whether the input comes whole or in small chunks.
        #[test]
        fn the_fast_path_agrees_with_the_state_machine(bytes in pieces(), chunk in 1usize..64) {
            let (expected, expected_stats) = decode_bytewise(&bytes);
            let mut codec = VeDirectCodec::new();
            let whole = decode_all(&mut codec, &bytes);
            proptest::prop_assert_eq!(&whole, &expected);
            proptest::prop_assert_eq!(codec.stats(), expected_stats);

            let mut codec = VeDirectCodec::new();
            let mut buffer = BytesMut::new();
            let mut chunked = Vec::new();
            for piece in bytes.chunks(chunk) {
                buffer.extend_from_slice(piece);
                while let Some(frame) = codec.decode(&mut buffer).unwrap() {
                    chunked.push(frame);
                }
            }
            while let Some(frame) = codec.decode_eof(&mut buffer).unwrap() {
                chunked.push(frame);
                if buffer.is_empty() {
                    break;
                }
            }
            proptest::prop_assert_eq!(&chunked, &expected);
        }
    }
}
