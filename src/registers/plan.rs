//! The read planner: turn the registers a device needs into the fewest read
//! requests. A request covers at most 125 registers of one service and never
//! crosses an address the register list does not map (the GX answers such a
//! read with exception 0x02). Older firmware has more holes than the list
//! knows; a device whose read fails with 0x02 falls back to a finer
//! [`Coalescing`] level.

use super::RegisterList;

/// The most registers one read request may ask for (Modbus and the GX agree).
pub(crate) const MAX_REGISTERS: u16 = 125;

/// One register (or multi-word item) a device needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Need {
    /// First address.
    pub(crate) address: u16,
    /// Number of words.
    pub(crate) words: u16,
}

impl Need {
    fn end(self) -> u32 {
        u32::from(self.address) + u32::from(self.words)
    }
}

/// One read request: `count` registers from `start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Block {
    /// First address.
    pub start: u16,
    /// Number of registers (1 to 125).
    pub count: u16,
}

impl Block {
    /// One past the last address.
    pub(crate) fn end(self) -> u32 {
        u32::from(self.start) + u32::from(self.count)
    }

    /// Whether the block holds all of `need`.
    pub(crate) fn contains(self, need: Need) -> bool {
        need.address >= self.start && need.end() <= self.end()
    }
}

/// How far reads are merged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Coalescing {
    /// Merge across any register the list maps, needed or not (fewest requests).
    AcrossMapped,
    /// Merge only registers that touch (no unneeded register is read).
    Adjacent,
    /// One request per needed register.
    Single,
}

impl Coalescing {
    /// The next finer level, if any.
    pub(crate) fn finer(self) -> Option<Self> {
        match self {
            Self::AcrossMapped => Some(Self::Adjacent),
            Self::Adjacent => Some(Self::Single),
            Self::Single => None,
        }
    }
}

/// Plans the reads of `needs`, all registers of `service`.
pub(crate) fn plan(
    needs: &[Need],
    service: &str,
    list: &RegisterList,
    level: Coalescing,
) -> Vec<Block> {
    let mut sorted: Vec<Need> = needs.to_vec();
    sorted.sort();
    sorted.dedup();
    let mut blocks: Vec<Block> = Vec::new();
    for need in sorted {
        if let Some(last) = blocks.last_mut() {
            if last.contains(need) {
                continue;
            }
            let end = last.end().max(need.end());
            let fits = end - u32::from(last.start) <= u32::from(MAX_REGISTERS);
            let joinable = match level {
                Coalescing::Single => false,
                Coalescing::Adjacent => u32::from(need.address) <= last.end(),
                Coalescing::AcrossMapped => {
                    u32::from(need.address) <= last.end()
                        || list.all_mapped(
                            service,
                            u16::try_from(last.end()).unwrap_or(u16::MAX),
                            u32::from(need.address),
                        )
                }
            };
            if fits && joinable {
                last.count = u16::try_from(end - u32::from(last.start)).unwrap_or(MAX_REGISTERS);
                continue;
            }
        }
        blocks.push(Block {
            start: need.address,
            count: need.words.min(MAX_REGISTERS),
        });
    }
    blocks
}

#[cfg(test)]
mod tests {
    use super::*;

    const SYSTEM: &str = "com.victronenergy.system";

    fn needs(list: &[(u16, u16)]) -> Vec<Need> {
        list.iter()
            .map(|&(address, words)| Need { address, words })
            .collect()
    }

    #[test]
    fn merges_across_mapped_registers_only() {
        let list = RegisterList::victron();
        // 840..846 and 850 are separated by reserved 847..849 (mapped).
        let n = needs(&[(840, 1), (846, 1), (850, 1), (860, 1)]);
        assert_eq!(
            plan(&n, SYSTEM, list, Coalescing::AcrossMapped),
            vec![Block {
                start: 840,
                count: 21
            }]
        );
        assert_eq!(
            plan(&n, SYSTEM, list, Coalescing::Adjacent),
            vec![
                Block {
                    start: 840,
                    count: 1
                },
                Block {
                    start: 846,
                    count: 1
                },
                Block {
                    start: 850,
                    count: 1
                },
                Block {
                    start: 860,
                    count: 1
                }
            ]
        );
        // 800..805 is a string; 806/807 relays; 808 onwards powers: all mapped.
        // 871..901 is not all mapped: no merge across it.
        let n = needs(&[(870, 2), (902, 2)]);
        let blocks = plan(&n, SYSTEM, list, Coalescing::AcrossMapped);
        assert_eq!(
            blocks.len(),
            usize::from(!list.all_mapped(SYSTEM, 872, 902)) + 1
        );
    }

    #[test]
    fn never_more_than_125_registers() {
        let list = RegisterList::victron();
        let all: Vec<Need> = list
            .iter()
            .filter(|r| r.service == "com.victronenergy.vebus")
            .map(|r| Need {
                address: r.address,
                words: r.ty.words(),
            })
            .collect();
        for block in plan(
            &all,
            "com.victronenergy.vebus",
            list,
            Coalescing::AcrossMapped,
        ) {
            assert!((1..=MAX_REGISTERS).contains(&block.count), "{block:?}");
        }
    }

    #[test]
    fn single_level_reads_each_need_alone() {
        let list = RegisterList::victron();
        let n = needs(&[(840, 1), (841, 1), (841, 1)]);
        assert_eq!(plan(&n, SYSTEM, list, Coalescing::Single).len(), 2);
        assert_eq!(Coalescing::AcrossMapped.finer(), Some(Coalescing::Adjacent));
        assert_eq!(Coalescing::Single.finer(), None);
    }
}
