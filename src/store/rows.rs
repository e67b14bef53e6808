//! Decoding the store's rows, which come back from SQLite as one JSON array
//! of `[seq, table, device, source, measured_at_us, {column: value, …}, site]`.
//! A streaming visitor turns them straight into readings: no intermediate
//! JSON tree, borrowed keys, and each value typed by its column.

use std::fmt;
use std::sync::Arc;

use serde::Deserializer as _;
use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::{StoredReading, from_micros, table_from_name};
use crate::reading::{ColumnKind, Reading, ReadingTable, SourceKind, Value};

/// Parses the aggregated rows; rows of an unknown table are skipped.
/// A row without a site (stored before sites were recorded) belongs to
/// `legacy_site`.
pub(super) fn parse(
    json: &str,
    legacy_site: &Arc<str>,
) -> Result<Vec<StoredReading>, serde_json::Error> {
    let mut deserializer = serde_json::Deserializer::from_str(json);
    let rows = deserializer.deserialize_seq(RowsVisitor { legacy_site })?;
    deserializer.end()?;
    Ok(rows)
}

struct RowsVisitor<'s> {
    legacy_site: &'s Arc<str>,
}

impl<'de> Visitor<'de> for RowsVisitor<'_> {
    type Value = Vec<StoredReading>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of stored readings")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut rows = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        // Consecutive rows mostly share a site: one allocation per change.
        let mut site = Arc::clone(self.legacy_site);
        while let Some(row) = seq.next_element_seed(RowSeed {
            legacy_site: self.legacy_site,
            last_site: &mut site,
        })? {
            rows.extend(row);
        }
        Ok(rows)
    }
}

struct RowSeed<'s> {
    legacy_site: &'s Arc<str>,
    /// The site of the row before, reused while it repeats.
    last_site: &'s mut Arc<str>,
}

impl<'de> DeserializeSeed<'de> for RowSeed<'_> {
    type Value = Option<StoredReading>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for RowSeed<'_> {
    type Value = Option<StoredReading>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[seq, table, device, source, measured_at_us, values, site]")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        use serde::de::Error as _;
        let missing = || A::Error::custom("a stored reading with fields missing");
        let number: i64 = seq.next_element()?.ok_or_else(missing)?;
        let table: std::borrow::Cow<'de, str> = seq.next_element()?.ok_or_else(missing)?;
        let device: String = seq.next_element()?.ok_or_else(missing)?;
        let source: std::borrow::Cow<'de, str> = seq.next_element()?.ok_or_else(missing)?;
        let measured_at_us: i64 = seq.next_element()?.ok_or_else(missing)?;
        let Some(table) = table_from_name(&table) else {
            seq.next_element::<IgnoredAny>()?;
            seq.next_element::<IgnoredAny>()?;
            return Ok(None);
        };
        let values = seq
            .next_element_seed(ValuesSeed(table))?
            .ok_or_else(missing)?;
        let site: Option<std::borrow::Cow<'de, str>> = seq.next_element()?.flatten();
        let site = match site {
            None => Arc::clone(self.legacy_site),
            Some(site) if *site == **self.last_site => Arc::clone(self.last_site),
            Some(site) => {
                *self.last_site = Arc::from(&*site);
                Arc::clone(self.last_site)
            }
        };
        Ok(Some(StoredReading {
            seq: number,
            reading: Reading {
                site,
                device,
                table,
                source: if source == "vedirect" {
                    SourceKind::VeDirect
                } else {
                    SourceKind::Modbus
                },
                measured_at: from_micros(measured_at_us),
                unconfirmed: None,
                values,
            },
        }))
    }
}

/// The values object, typed by `table`'s columns; unknown columns and values
/// of the wrong kind are dropped (the column stays NULL).
struct ValuesSeed(ReadingTable);

impl<'de> DeserializeSeed<'de> for ValuesSeed {
    type Value = Vec<(&'static str, Value)>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

/// A stored value typed by its column's kind (`None`: of the wrong kind).
fn typed(kind: ColumnKind, value: Scalar) -> Option<Value> {
    match value {
        Scalar::Number(n) => match kind {
            ColumnKind::Float => n.as_f64().map(Value::Float),
            ColumnKind::Int => n.as_i64().map(Value::Int),
            ColumnKind::Text => None,
        },
        Scalar::Text(t) if kind == ColumnKind::Text => Some(Value::Text(t.into())),
        Scalar::Text(_) | Scalar::Null => None,
    }
}

impl<'de> Visitor<'de> for ValuesSeed {
    type Value = Vec<(&'static str, Value)>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of column values (or an object naming them)")
    }

    /// Values in the table's column order.
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let columns = self.0.columns();
        let mut values = Vec::with_capacity(columns.len());
        let mut index = 0;
        while let Some(value) = seq.next_element::<Scalar>()? {
            if let Some((column, kind)) = columns.get(index)
                && let Some(value) = typed(*kind, value)
            {
                values.push((*column, value));
            }
            index += 1;
        }
        Ok(values)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let columns = self.0.columns();
        // In the table's column order, whatever the object's order.
        let mut slots: Vec<Option<Value>> = std::iter::repeat_with(|| None)
            .take(columns.len())
            .collect();
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            let Some(index) = columns.iter().position(|(c, _)| *c == key) else {
                map.next_value::<IgnoredAny>()?;
                continue;
            };
            slots[index] = typed(columns[index].1, map.next_value::<Scalar>()?);
        }
        Ok(columns
            .iter()
            .zip(slots)
            .filter_map(|((column, _), value)| Some((*column, value?)))
            .collect())
    }
}

/// One JSON scalar.
enum Scalar {
    Number(serde_json::Number),
    Text(String),
    Null,
}

impl<'de> serde::Deserialize<'de> for Scalar {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ScalarVisitor)
    }
}

struct ScalarVisitor;

impl Visitor<'_> for ScalarVisitor {
    type Value = Scalar;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a number, a string or null")
    }

    fn visit_i64<E>(self, v: i64) -> Result<Scalar, E> {
        Ok(Scalar::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Scalar, E> {
        Ok(Scalar::Number(v.into()))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Scalar, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Scalar::Null, Scalar::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Scalar, E> {
        Ok(Scalar::Text(v.to_string()))
    }

    fn visit_string<E>(self, v: String) -> Result<Scalar, E> {
        Ok(Scalar::Text(v))
    }

    fn visit_unit<E>(self) -> Result<Scalar, E> {
        Ok(Scalar::Null)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A row as this store writes it (values by column position) and as
    /// earlier stores did (an object naming each column) read alike.
    #[test]
    fn values_by_position_and_by_name_read_alike() {
        let legacy: Arc<str> = Arc::from("ranch");
        // The battery table's first columns: soc, voltage, current, power, state.
        let by_position = r#"[[7,"battery_readings","bank","modbus",1800000000000000,[80.5,52.31,null,-650,"discharging"],"ranch"]]"#;
        let by_name = r#"[[7,"battery_readings","bank","modbus",1800000000000000,{"state":"discharging","power":-650,"voltage":52.31,"soc":80.5},null]]"#;
        let a = parse(by_position, &legacy).unwrap();
        let b = parse(by_name, &legacy).unwrap();
        assert_eq!(a, b);
        assert_eq!(
            a[0].reading.values,
            vec![
                ("soc", Value::Float(80.5)),
                ("voltage", Value::Float(52.31)),
                ("power", Value::Float(-650.0)),
                ("state", Value::Text("discharging".into())),
            ]
        );
    }
}
