//! The idempotent path: `INSERT … SELECT FROM UNNEST(…) ON CONFLICT DO
//! NOTHING`, one statement per reading table, in one transaction; a replay
//! inserts nothing twice, and a row refused for good is named by its error.

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use super::error::{ForwardError, classify};
use super::rows::{by_table, present_columns};
use crate::reading::Reading;
use crate::reading::{ColumnKind, ReadingTable, Value};

/// Inserts `rows` (any tables) in one transaction.
pub async fn insert_rows(pool: &PgPool, rows: &[&Reading]) -> Result<(), ForwardError> {
    let mut tx = pool.begin().await.map_err(classify)?;
    for (table, of_table) in by_table(rows) {
        insert_table(&mut tx, table, &of_table).await?;
    }
    tx.commit().await.map_err(classify)?;
    Ok(())
}

async fn insert_table(
    tx: &mut sqlx::PgConnection,
    table: ReadingTable,
    rows: &[&Reading],
) -> Result<(), ForwardError> {
    let columns = present_columns(table, rows);
    let mut names = vec!["\"timestamp\"", "device", "installation_id", "source"];
    let mut casts = vec![
        "$1::timestamptz[]",
        "$2::text[]",
        "$3::text[]",
        "$4::text[]",
    ];
    let placeholders: Vec<String> = (0..columns.len())
        .map(|i| {
            let ty = match columns[i].1 {
                ColumnKind::Float => "float8",
                // int8 here: a value too large for the int4 column makes
                // the database refuse that row (22003) instead of wrapping.
                ColumnKind::Int => "int8",
                ColumnKind::Text => "text",
            };
            format!("${}::{ty}[]", i + 5)
        })
        .collect();
    names.extend(columns.iter().map(|(c, _)| *c));
    casts.extend(placeholders.iter().map(String::as_str));
    let sql = format!(
        "INSERT INTO victron.{} ({}) SELECT * FROM UNNEST({}) ON CONFLICT (installation_id, device, \"timestamp\") DO NOTHING",
        table.name(),
        names.join(", "),
        casts.join(", ")
    );
    let times: Vec<DateTime<Utc>> = rows.iter().map(|r| r.measured_at).collect();
    let devices: Vec<&str> = rows.iter().map(|r| r.device.as_str()).collect();
    let installations: Vec<&str> = rows.iter().map(|r| &*r.site).collect();
    let sources: Vec<&str> = rows.iter().map(|r| r.source.as_str()).collect();
    let mut query = sqlx::query(&sql)
        .bind(times)
        .bind(devices)
        .bind(installations)
        .bind(sources);
    for (column, kind) in &columns {
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
    query.execute(&mut *tx).await.map_err(classify)?;
    Ok(())
}
