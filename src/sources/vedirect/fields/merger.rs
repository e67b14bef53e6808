//! Merging a device's consecutive blocks into one snapshot per cycle
//! ([`Merger`]): which blocks form a cycle, learned from clean cycles.

use chrono::{DateTime, Utc};

use super::snapshot::Snapshot;
use crate::sources::vedirect::codec::TextBlock;

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
    pub(crate) fn lost_block(&mut self) -> bool {
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
    pub(crate) fn break_cycle(&mut self) {
        self.cycle = Cycle::Idle;
    }

    #[cfg(test)]
    /// The latest complete snapshot.
    pub(crate) fn latest(&self) -> Option<&Snapshot> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::vedirect::fields::labels::Typed;
    use crate::sources::vedirect::fields::tests_support::block;

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
}
