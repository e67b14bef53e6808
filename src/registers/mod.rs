//! Victron's GX register list as data: `data/victron/attributes.csv`,
//! embedded and parsed once, answering "which register holds this D-Bus path
//! of this service" (the poller) and "what covers this address" (the planner's
//! gap rule and the simulator).
//!
//! Decoding words into values is in [`decode`]; grouping reads into requests
//! in [`plan`]. Nothing here does I/O.

pub(crate) mod decode;
pub mod plan;

use std::collections::BTreeMap;
use std::sync::OnceLock;

/// The register list shipped with the binary.
const ATTRIBUTES_CSV: &str = include_str!("../../data/victron/attributes.csv");

/// How a register's words encode its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum ModbusType {
    /// One word, unsigned.
    U16,
    /// One word, two's complement.
    I16,
    /// Two words, high word first, unsigned.
    U32,
    /// Two words, high word first, two's complement.
    I32,
    /// Four words, most significant first.
    U64,
    /// `n` words, two Latin-1 characters each, high byte first, NUL padded.
    Str(u16),
    /// `n` placeholder words (the GX answers 0xFFFF).
    Reserved(u16),
    /// `n` words computed by the GX (unsigned).
    Internal(u16),
}

impl ModbusType {
    /// Parses `uint16`, `string[6]`, `reserved[3]` ...
    pub(crate) fn parse(text: &str) -> Option<Self> {
        let sized = |prefix: &str| -> Option<u16> {
            text.strip_prefix(prefix)?
                .strip_suffix(']')?
                .parse()
                .ok()
                .filter(|n| *n > 0)
        };
        Some(match text {
            "uint16" => Self::U16,
            "int16" => Self::I16,
            "uint32" => Self::U32,
            "int32" => Self::I32,
            "uint64" => Self::U64,
            _ => {
                if let Some(n) = sized("string[") {
                    Self::Str(n)
                } else if let Some(n) = sized("reserved[") {
                    Self::Reserved(n)
                } else {
                    Self::Internal(sized("INTERNAL[")?)
                }
            }
        })
    }

    /// How many 16-bit registers the value occupies.
    pub(crate) fn words(self) -> u16 {
        match self {
            Self::U16 | Self::I16 => 1,
            Self::U32 | Self::I32 => 2,
            Self::U64 => 4,
            Self::Str(n) | Self::Reserved(n) | Self::Internal(n) => n,
        }
    }
}

/// One row of the register list.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Register {
    /// D-Bus service type, e.g. `com.victronenergy.battery`.
    pub(crate) service: String,
    /// D-Bus path, e.g. `/Dc/0/Voltage`; `RESERVED` for placeholders.
    pub(crate) path: String,
    /// The unit text (`V DC`), empty for enums.
    pub(crate) unit: String,
    /// Enum texts by raw value, for registers documented as enums.
    pub(crate) enum_texts: BTreeMap<i64, String>,
    /// First register address (the PDU address on the wire).
    pub(crate) address: u16,
    /// Encoding.
    pub(crate) ty: ModbusType,
    /// value = raw / scale (never 0: an empty scale means 1).
    pub(crate) scale: f64,
    /// Whether the GX accepts writes.
    pub(crate) writable: bool,
}

impl Register {
    /// Whether `address` falls inside this register.
    pub(crate) fn covers(&self, address: u16) -> bool {
        address >= self.address && u32::from(address) < self.end()
    }

    /// One past the last address (as u32: the map ends near 65535).
    pub(crate) fn end(&self) -> u32 {
        u32::from(self.address) + u32::from(self.ty.words())
    }

    /// The enum text of a raw value, if this register is an enum.
    pub(crate) fn enum_text(&self, raw: i64) -> Option<&str> {
        self.enum_texts.get(&raw).map(String::as_str)
    }
}

/// A malformed row of the register list.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("register list line {line}: {problem}")]
pub(crate) struct ParseError {
    /// 1-based line number.
    pub(crate) line: usize,
    /// What is wrong.
    pub(crate) problem: String,
}

/// The whole register list, ordered by address.
#[derive(Debug, Clone)]
pub(crate) struct RegisterList {
    registers: Vec<Register>,
}

impl RegisterList {
    /// The list embedded in the binary, parsed on first use.
    pub(crate) fn victron() -> &'static RegisterList {
        static LIST: OnceLock<RegisterList> = OnceLock::new();
        LIST.get_or_init(|| {
            RegisterList::parse(ATTRIBUTES_CSV)
                .expect("the embedded attributes.csv parses (checked by a unit test)")
        })
    }

    /// Parses `attributes.csv` text.
    pub(crate) fn parse(text: &str) -> Result<Self, ParseError> {
        let mut registers = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let line_no = index + 1;
            if line.trim().is_empty() {
                continue;
            }
            let fields: Vec<&str> = line.split(',').collect();
            let problem = |problem: String| ParseError {
                line: line_no,
                problem,
            };
            let [service, path, _dbus_type, unit, address, ty, scale, access] = fields[..] else {
                return Err(problem(format!("{} fields, expected 8", fields.len())));
            };
            let address: u16 = address
                .parse()
                .map_err(|_| problem(format!("bad address `{address}`")))?;
            let ty = ModbusType::parse(ty).ok_or_else(|| problem(format!("bad type `{ty}`")))?;
            let scale = match scale.trim() {
                "" => 1.0,
                s => match s.parse::<f64>() {
                    Ok(v) if v != 0.0 && v.is_finite() => v,
                    _ => return Err(problem(format!("bad scale `{s}`"))),
                },
            };
            let (unit, enum_texts) = parse_unit(unit);
            registers.push(Register {
                service: service.to_string(),
                path: path.to_string(),
                unit,
                enum_texts,
                address,
                ty,
                scale,
                writable: access == "W",
            });
        }
        registers.sort_by_key(|r| r.address);
        Ok(Self { registers })
    }

    #[cfg(test)]
    /// Every register, by address.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Register> {
        self.registers.iter()
    }

    /// The register of `service` holding `path`; with several (16- and 32-bit
    /// variants), the one of type `prefer`, else the first by address.
    pub(crate) fn find(
        &self,
        service: &str,
        path: &str,
        prefer: Option<ModbusType>,
    ) -> Option<&Register> {
        let mut candidates = self
            .registers
            .iter()
            .filter(|r| r.service == service && r.path == path);
        let first = candidates.next()?;
        match prefer {
            Some(ty) if first.ty != ty => Some(
                std::iter::once(first)
                    .chain(candidates)
                    .find(|r| r.ty == ty)
                    .unwrap_or(first),
            ),
            _ => Some(first),
        }
    }

    /// The register covering `address`, of any service.
    pub(crate) fn covering(&self, address: u16) -> Option<&Register> {
        let index = self.registers.partition_point(|r| r.address <= address);
        let candidate = self.registers[..index].last()?;
        candidate.covers(address).then_some(candidate)
    }

    /// Whether every address of `start..end` is mapped to `service`.
    pub(crate) fn all_mapped(&self, service: &str, start: u16, end: u32) -> bool {
        let mut address = u32::from(start);
        while address < end {
            let Ok(a) = u16::try_from(address) else {
                return false;
            };
            match self.covering(a) {
                Some(r) if r.service == service => address = r.end(),
                _ => return false,
            }
        }
        true
    }
}

/// Splits the unit column into a unit text and enum texts (`0=Off;2=Fault`).
fn parse_unit(text: &str) -> (String, BTreeMap<i64, String>) {
    let looks_like_enum = text
        .split_once('=')
        .is_some_and(|(k, _)| k.trim().parse::<i64>().is_ok());
    if !looks_like_enum {
        return (text.to_string(), BTreeMap::new());
    }
    let texts = text
        .split(';')
        .filter_map(|item| {
            let (k, v) = item.split_once('=')?;
            Some((k.trim().parse::<i64>().ok()?, v.trim().to_string()))
        })
        .collect();
    (String::new(), texts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_list_parses_completely() {
        let list = RegisterList::parse(ATTRIBUTES_CSV).unwrap();
        assert_eq!(list.iter().count(), ATTRIBUTES_CSV.lines().count());
        assert_eq!(list.iter().count(), 1003);
        let reserved = list
            .iter()
            .filter(|r| matches!(r.ty, ModbusType::Reserved(_)))
            .count();
        assert_eq!(reserved, 54);
    }

    #[test]
    fn no_two_registers_share_an_address() {
        let list = RegisterList::victron();
        let mut previous_end = 0u32;
        for r in list.iter() {
            assert!(
                u32::from(r.address) >= previous_end,
                "{} overlaps",
                r.address
            );
            previous_end = r.end();
        }
    }

    #[test]
    fn find_prefers_the_asked_type_among_duplicates() {
        let list = RegisterList::victron();
        let power16 = list
            .find("com.victronenergy.battery", "/Dc/0/Power", None)
            .unwrap();
        assert_eq!((power16.address, power16.ty), (256, ModbusType::I32));
        let power = list
            .find(
                "com.victronenergy.battery",
                "/Dc/0/Power",
                Some(ModbusType::I16),
            )
            .unwrap();
        assert_eq!(power.address, 258);
        let state = list
            .find("com.victronenergy.solarcharger", "/State", None)
            .unwrap();
        assert_eq!(state.enum_text(3), Some("Bulk"));
        assert!(
            list.find("com.victronenergy.battery", "/Nope", None)
                .is_none()
        );
    }

    #[test]
    fn covering_and_gaps() {
        let list = RegisterList::victron();
        assert_eq!(
            list.covering(257).unwrap().address,
            256,
            "second word of an int32"
        );
        assert_eq!(list.covering(848).unwrap().path, "RESERVED");
        assert!(list.all_mapped("com.victronenergy.system", 840, 861));
        assert!(!list.all_mapped("com.victronenergy.battery", 840, 841));
        assert!(!list.all_mapped("com.victronenergy.system", 0, 1));
    }

    #[test]
    fn malformed_rows_are_errors_with_their_line() {
        let err = RegisterList::parse("a,b,d,V,1,uint16,1,R\nbad,row\n").unwrap_err();
        assert_eq!(err.line, 2);
        let err = RegisterList::parse("a,b,d,V,1,float,1,R\n").unwrap_err();
        assert!(err.problem.contains("bad type"));
        let err = RegisterList::parse("a,b,d,V,99999,uint16,1,R\n").unwrap_err();
        assert!(err.problem.contains("bad address"));
        let err = RegisterList::parse("a,b,d,V,1,uint16,0,R\n").unwrap_err();
        assert!(err.problem.contains("bad scale"));
    }
}
