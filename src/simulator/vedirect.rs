//! A VE.Direct device, simulated: a BMV-712 battery monitor (a main and a
//! history block per cycle) or a SmartSolar MPPT (one block), with valid
//! checksums, async HEX frames between blocks as real devices send them,
//! values that move over time, and an optional rate of corrupted blocks.
//! [`VeDirectSim::next_cycle`] gives the bytes of one cycle; `simulate
//! vedirect` writes them once a second to a pseudo-terminal or TCP clients.

use crate::sources::vedirect::codec::{encode_block, encode_hex};

/// Which device to simulate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SimDevice {
    /// A BMV-712 Smart battery monitor: main + history block each cycle.
    Bmv,
    /// A SmartSolar MPPT 75/15 solar charger: one block each cycle.
    Mppt,
}

/// Generates one device's output, cycle after cycle.
#[derive(Debug, Clone)]
pub struct VeDirectSim {
    device: SimDevice,
    cycle: u64,
    rng: u64,
    corrupt_rate: f64,
    /// Blocks corrupted so far.
    pub(crate) corrupted: u64,
}

impl VeDirectSim {
    /// A simulator; `corrupt_rate` (0 to 1) is the share of blocks with a flipped bit.
    pub fn new(device: SimDevice, corrupt_rate: f64, seed: u64) -> Self {
        Self {
            device,
            cycle: 0,
            rng: seed | 1,
            corrupt_rate: corrupt_rate.clamp(0.0, 1.0),
            corrupted: 0,
        }
    }

    /// xorshift64: reproducible noise for values and corruption.
    fn random(&mut self) -> f64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng >> 11) as f64 / (1u64 << 53) as f64
    }

    /// The bytes of the next cycle: its blocks and HEX frames.
    pub fn next_cycle(&mut self) -> Vec<u8> {
        let t = self.cycle as f64;
        self.cycle += 1;
        let wave = (std::f64::consts::TAU * t / 300.0).sin();
        let mut out = Vec::with_capacity(512);
        match self.device {
            SimDevice::Bmv => {
                let current_ma = (-8200.0 + 6000.0 * wave).round() as i64;
                let volts_mv = (26_200.0 + 0.4 * current_ma as f64 / 10.0).round() as i64;
                let soc = (873.0 - t / 36.0).max(200.0).round() as i64;
                let consumed = -(1000 - soc) * 250;
                let power = volts_mv * current_ma / 1_000_000;
                let main = encode_block(&[
                    ("PID", "0xA381"),
                    ("V", &volts_mv.to_string()),
                    ("VS", "12780"),
                    ("I", &current_ma.to_string()),
                    ("P", &power.to_string()),
                    ("CE", &consumed.to_string()),
                    ("SOC", &soc.to_string()),
                    ("TTG", if current_ma < 0 { "1440" } else { "-1" }),
                    ("Alarm", "OFF"),
                    ("Relay", "OFF"),
                    ("AR", "0"),
                    ("BMV", "712 Smart"),
                    ("FW", "0413"),
                    ("MON", "0"),
                ]);
                self.push_block(&mut out, main);
                out.extend(encode_hex(
                    0xA,
                    &[0xFF, 0x0F, 0x00, (soc & 0xFF) as u8, (soc >> 8) as u8],
                ));
                let history = encode_block(&[
                    ("H1", "-180000"),
                    ("H2", "-45000"),
                    ("H3", "-60000"),
                    ("H4", "42"),
                    ("H5", "0"),
                    ("H6", "-2316635"),
                    ("H7", "11500"),
                    ("H8", "14420"),
                    ("H9", "86400"),
                    ("H10", "12"),
                    ("H11", "0"),
                    ("H12", "0"),
                    ("H15", "12100"),
                    ("H16", "14200"),
                    ("H17", "34512"),
                    ("H18", "41001"),
                ]);
                self.push_block(&mut out, history);
            }
            SimDevice::Mppt => {
                let ppv = (180.0 + 60.0 * wave).max(0.0).round() as i64;
                let vpv = 38_400 + (self.random() * 200.0) as i64;
                let volts_mv = 13_210;
                let current_ma = ppv * 1_000_000 / volts_mv;
                let yield_today = 40 + (t / 60.0) as i64;
                let block = encode_block(&[
                    ("PID", "0xA053"),
                    ("FW", "159"),
                    ("SER#", "HQ1942K7LJ8"),
                    ("V", &volts_mv.to_string()),
                    ("I", &current_ma.to_string()),
                    ("VPV", &vpv.to_string()),
                    ("PPV", &ppv.to_string()),
                    ("CS", "3"),
                    ("MPPT", "2"),
                    ("OR", "0x00000000"),
                    ("ERR", "0"),
                    ("LOAD", "ON"),
                    ("IL", "400"),
                    ("H19", "12345"),
                    ("H20", &yield_today.to_string()),
                    ("H21", "238"),
                    ("H22", "96"),
                    ("H23", "251"),
                    ("HSDS", "17"),
                ]);
                self.push_block(&mut out, block);
                out.extend(encode_hex(0xA, &[0x4F, 0x10, 0x00, 0x01, 0x02, 0x03]));
                out.extend(encode_hex(0xA, &[0x50, 0x10, 0x00, 0x04, 0x05, 0x06]));
            }
        }
        out
    }

    fn push_block(&mut self, out: &mut Vec<u8>, mut block: Vec<u8>) {
        if self.corrupt_rate > 0.0 && self.random() < self.corrupt_rate {
            // Flip the low bit of one digit (a digit stays a digit): the
            // block keeps its shape but its checksum no longer adds up.
            let digits: Vec<usize> = block[..block.len() - 1]
                .iter()
                .enumerate()
                .filter(|(_, b)| b.is_ascii_digit())
                .map(|(i, _)| i)
                .collect();
            let pick = (self.random() * digits.len() as f64) as usize;
            if let Some(&at) = digits.get(pick) {
                block[at] ^= 0x01;
                self.corrupted += 1;
            }
        }
        out.extend(block);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::vedirect::codec::{Frame, VeDirectCodec, decode_all};

    #[test]
    fn cycles_decode_to_valid_blocks_and_hex_frames() {
        for (device, blocks_per_cycle, hex_per_cycle) in
            [(SimDevice::Bmv, 2, 1), (SimDevice::Mppt, 1, 2)]
        {
            let mut sim = VeDirectSim::new(device, 0.0, 7);
            let mut codec = VeDirectCodec::new();
            let bytes: Vec<u8> = (0..10).flat_map(|_| sim.next_cycle()).collect();
            let frames = decode_all(&mut codec, &bytes);
            let blocks = frames
                .iter()
                .filter(|f| matches!(f, Frame::Block(_)))
                .count();
            assert_eq!(blocks, 10 * blocks_per_cycle, "{device:?}");
            assert_eq!(codec.stats().hex_valid, 10 * hex_per_cycle, "{device:?}");
            assert_eq!(codec.stats().blocks_invalid, 0);
        }
    }

    #[test]
    fn the_corruption_rate_spoils_that_share_of_blocks() {
        let mut sim = VeDirectSim::new(SimDevice::Mppt, 0.25, 11);
        let mut codec = VeDirectCodec::new();
        let bytes: Vec<u8> = (0..400).flat_map(|_| sim.next_cycle()).collect();
        decode_all(&mut codec, &bytes);
        let stats = codec.stats();
        assert_eq!(stats.blocks_invalid, sim.corrupted);
        assert_eq!(stats.blocks_valid + stats.blocks_invalid, 400);
        assert!((60..=140).contains(&sim.corrupted), "{}", sim.corrupted);
    }
}
