//! The fast path: one binary `COPY` per reading table per batch, in one
//! transaction, with its own encoder of the rows (timestamptz, text, float8,
//! int4); when the database refuses it, nothing of it is written and the
//! batch goes through [`super::insert`] instead.

use sqlx::PgPool;

use super::error::{ForwardError, classify};
use super::insert::insert_rows;
use super::rows::{by_table, present_columns};
use crate::reading::Reading;
use crate::reading::{ColumnKind, Value};

/// How a COPY of a batch went.
enum Copied {
    /// Every row is in.
    Done,
    /// The database refused the COPY (typically a row already there: a
    /// replay after a crash between the remote commit and the local removal;
    /// or a value out of range): nothing was written.
    Refused,
}

/// Writes `rows` (any tables) with one binary COPY per table in one
/// transaction: the fast path. When the database refuses it, the batch is
/// inserted with `INSERT … ON CONFLICT DO NOTHING` instead, which skips the
/// rows already there and names a row refused for good.
pub async fn copy_rows(pool: &PgPool, rows: &[&Reading]) -> Result<(), ForwardError> {
    match copy_batch(pool, rows).await? {
        Copied::Done => Ok(()),
        Copied::Refused => insert_rows(pool, rows).await,
    }
}

async fn copy_batch(pool: &PgPool, rows: &[&Reading]) -> Result<Copied, ForwardError> {
    let mut tx = pool.begin().await.map_err(classify)?;
    let mut data = Vec::new();
    for (table, of_table) in by_table(rows) {
        let columns = present_columns(table, &of_table);
        let mut names = String::from("\"timestamp\", device, installation_id, source");
        for (column, _) in &columns {
            names.push_str(", ");
            names.push_str(column);
        }
        data.clear();
        if copy_binary(&mut data, &columns, &of_table).is_err() {
            return Ok(Copied::Refused);
        }
        let sql = format!(
            "COPY victron.{} ({names}) FROM STDIN (FORMAT binary)",
            table.name()
        );
        let copied = async {
            let mut copy = tx.copy_in_raw(&sql).await?;
            copy.send(data.as_slice()).await?;
            copy.finish().await
        };
        match copied.await {
            Ok(_) => {}
            // The server answered: the rows, not the link, are the problem.
            Err(sqlx::Error::Database(_)) => return Ok(Copied::Refused),
            Err(error) => return Err(classify(error)),
        }
    }
    tx.commit().await.map_err(classify)?;
    Ok(Copied::Done)
}

/// A value the binary encoding cannot carry (an integer beyond `integer`).
#[derive(Debug)]
struct OutOfRange;

/// Microseconds from the Unix epoch to PostgreSQL's (2000-01-01 UTC).
const PG_EPOCH_OFFSET_US: i64 = 946_684_800_000_000;

/// The rows in COPY's binary format, for the schema's column types:
/// `timestamptz`, `text`/`varchar`, `double precision` and `integer`.
fn copy_binary(
    out: &mut Vec<u8>,
    columns: &[(&'static str, ColumnKind)],
    rows: &[&Reading],
) -> Result<(), OutOfRange> {
    fn field(out: &mut Vec<u8>, bytes: &[u8]) {
        out.extend_from_slice(&(bytes.len() as i32).to_be_bytes());
        out.extend_from_slice(bytes);
    }
    const NULL: [u8; 4] = (-1_i32).to_be_bytes();
    out.reserve(19 + rows.len() * (40 + 12 * columns.len()));
    out.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
    out.extend_from_slice(&0_i32.to_be_bytes()); // flags
    out.extend_from_slice(&0_i32.to_be_bytes()); // header extension
    let fields = i16::try_from(4 + columns.len()).map_err(|_| OutOfRange)?;
    for row in rows {
        let r: &Reading = row;
        out.extend_from_slice(&fields.to_be_bytes());
        let pg_micros = r.measured_at.timestamp_micros() - PG_EPOCH_OFFSET_US;
        field(out, &pg_micros.to_be_bytes());
        field(out, r.device.as_bytes());
        field(out, r.site.as_bytes());
        field(out, r.source.as_str().as_bytes());
        for (column, kind) in columns {
            match (r.get(column), kind) {
                (Some(Value::Float(f)), ColumnKind::Float) => field(out, &f.to_be_bytes()),
                (Some(Value::Int(i)), ColumnKind::Float) => {
                    field(out, &(*i as f64).to_be_bytes());
                }
                (Some(Value::Int(i)), ColumnKind::Int) => {
                    let i = i32::try_from(*i).map_err(|_| OutOfRange)?;
                    field(out, &i.to_be_bytes());
                }
                (Some(Value::Text(t)), ColumnKind::Text) => field(out, t.as_bytes()),
                _ => out.extend_from_slice(&NULL),
            }
        }
    }
    out.extend_from_slice(&(-1_i16).to_be_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone as _, Utc};

    use super::*;
    use crate::reading::ReadingTable;
    use crate::reading::{Reading, SourceKind};

    fn reading(values: Vec<(&'static str, Value)>) -> Reading {
        Reading {
            site: "ranch".into(),
            device: "bank".into(),
            table: ReadingTable::Battery,
            source: SourceKind::Modbus,
            // One second after PostgreSQL's epoch.
            measured_at: Utc.with_ymd_and_hms(2000, 1, 1, 0, 0, 1).unwrap(),
            unconfirmed: None,
            values,
        }
    }

    #[test]
    fn binary_copy_layout() {
        let row = reading(vec![
            ("soc", Value::Float(0.5)),
            ("product_id", Value::Int(7)),
        ]);
        let columns = [
            ("soc", ColumnKind::Float),
            ("state", ColumnKind::Text),
            ("product_id", ColumnKind::Int),
        ];
        let mut out = Vec::new();
        copy_binary(&mut out, &columns, &[&row]).unwrap();
        let mut expected = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0".to_vec();
        expected.extend_from_slice(&7_i16.to_be_bytes());
        expected.extend_from_slice(&8_i32.to_be_bytes());
        expected.extend_from_slice(&1_000_000_i64.to_be_bytes());
        expected.extend_from_slice(&4_i32.to_be_bytes());
        expected.extend_from_slice(b"bank");
        expected.extend_from_slice(&5_i32.to_be_bytes());
        expected.extend_from_slice(b"ranch"); // installation_id: the site
        expected.extend_from_slice(&6_i32.to_be_bytes());
        expected.extend_from_slice(b"modbus");
        expected.extend_from_slice(&8_i32.to_be_bytes());
        expected.extend_from_slice(&0.5_f64.to_be_bytes());
        expected.extend_from_slice(&(-1_i32).to_be_bytes()); // state NULL
        expected.extend_from_slice(&4_i32.to_be_bytes());
        expected.extend_from_slice(&7_i32.to_be_bytes());
        expected.extend_from_slice(&(-1_i16).to_be_bytes());
        assert_eq!(out, expected);
    }

    #[test]
    fn an_integer_beyond_the_column_is_left_to_the_checked_path() {
        let row = reading(vec![("product_id", Value::Int(1 << 40))]);
        let mut out = Vec::new();
        assert!(copy_binary(&mut out, &[("product_id", ColumnKind::Int)], &[&row]).is_err());
    }
}
