//! The idempotent path: one `INSERT … SELECT FROM UNNEST(…) ON CONFLICT DO
//! NOTHING` per reading table, all in one statement (data-modifying
//! `WITH` clauses: atomic without a transaction, one round trip); a replay
//! inserts nothing twice, and a row refused for good is named by its error.
//! Small batches take it (the direct path): fewer round trips than a `COPY`
//! per table in a transaction.

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use sqlx::postgres::{PgArguments, Postgres};
use sqlx::query::Query;

use super::error::{ForwardError, classify};
use super::rows::{by_table, present_columns};
use crate::reading::Reading;
use crate::reading::{ColumnKind, ReadingTable, Value};

/// A table's rows and the columns they have.
type TableRows<'a> = (
    ReadingTable,
    Vec<&'a Reading>,
    Vec<(&'static str, ColumnKind)>,
);

/// Inserts `rows` (any tables) in one statement.
pub(crate) async fn insert_rows(pool: &PgPool, rows: &[&Reading]) -> Result<(), ForwardError> {
    let tables: Vec<TableRows<'_>> = by_table(rows)
        .map(|(table, of_table)| {
            let columns = present_columns(table, &of_table);
            (table, of_table, columns)
        })
        .collect();
    if tables.is_empty() {
        return Ok(());
    }
    let mut next = 1;
    let inserts: Vec<String> = tables
        .iter()
        .map(|(table, _, columns)| {
            let sql = insert_sql(*table, columns, next);
            next += 4 + columns.len();
            sql
        })
        .collect();
    let sql = match inserts.as_slice() {
        [one] => one.clone(),
        many => format!(
            "WITH {} SELECT 1",
            many.iter()
                .enumerate()
                .map(|(i, insert)| format!("t{i} AS ({insert})"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut query = sqlx::query(&sql);
    for (_, of_table, columns) in &tables {
        query = bind_table(query, of_table, columns);
    }
    query.execute(pool).await.map_err(classify)?;
    Ok(())
}

/// One table's `INSERT`, its parameters numbered from `first`.
fn insert_sql(table: ReadingTable, columns: &[(&'static str, ColumnKind)], first: usize) -> String {
    let mut names = vec!["\"timestamp\"", "device", "installation_id", "source"];
    names.extend(columns.iter().map(|(c, _)| *c));
    let mut casts: Vec<String> = ["timestamptz", "text", "text", "text"]
        .iter()
        .enumerate()
        .map(|(i, ty)| format!("${}::{ty}[]", first + i))
        .collect();
    casts.extend(columns.iter().enumerate().map(|(i, (_, kind))| {
        let ty = match kind {
            ColumnKind::Float => "float8",
            // int8 here: a value too large for the int4 column makes
            // the database refuse that row (22003) instead of wrapping.
            ColumnKind::Int => "int8",
            ColumnKind::Text => "text",
        };
        format!("${}::{ty}[]", first + 4 + i)
    }));
    format!(
        "INSERT INTO victron.{} ({}) SELECT * FROM UNNEST({}) ON CONFLICT (installation_id, device, \"timestamp\") DO NOTHING",
        table.name(),
        names.join(", "),
        casts.join(", ")
    )
}

/// Binds one table's rows, in the order [`insert_sql`] numbers them.
fn bind_table<'q>(
    query: Query<'q, Postgres, PgArguments>,
    rows: &[&'q Reading],
    columns: &[(&'static str, ColumnKind)],
) -> Query<'q, Postgres, PgArguments> {
    let times: Vec<DateTime<Utc>> = rows.iter().map(|r| r.measured_at).collect();
    let devices: Vec<&str> = rows.iter().map(|r| r.device.as_str()).collect();
    let installations: Vec<&str> = rows.iter().map(|r| &*r.site).collect();
    let sources: Vec<&str> = rows.iter().map(|r| r.source.as_str()).collect();
    let mut query = query
        .bind(times)
        .bind(devices)
        .bind(installations)
        .bind(sources);
    for (column, kind) in columns {
        let values = rows.iter().map(|r| r.get(column));
        query = match kind {
            ColumnKind::Float => query.bind(
                values
                    .map(|v| match v {
                        Some(Value::Float(f)) => Some(*f),
                        Some(Value::Int(i)) => Some(*i as f64),
                        _ => None,
                    })
                    .collect::<Vec<_>>(),
            ),
            ColumnKind::Int => query.bind(
                values
                    .map(|v| match v {
                        Some(Value::Int(i)) => Some(*i),
                        _ => None,
                    })
                    .collect::<Vec<_>>(),
            ),
            ColumnKind::Text => query.bind(
                values
                    .map(|v| match v {
                        Some(Value::Text(t)) => Some(t.as_ref()),
                        _ => None,
                    })
                    .collect::<Vec<_>>(),
            ),
        };
    }
    query
}
