//! Reading what a damaged store still holds. First through SQLite, in
//! order of `seq`, one row at a time around what cannot be read; when SQLite
//! cannot read the file at all (its header or schema pages are gone), by
//! scanning the file's pages and its WAL's frames for the readings table's
//! rows directly, in SQLite's documented file format: each page that is a
//! table b-tree leaf, each cell's record decoded and kept only when it has
//! the shape of a reading (a known table and source, a time, values that
//! are JSON). Nothing here trusts the file: every length and offset is
//! checked, so damaged bytes give fewer rows, never a panic.
//!
//! A raw scan can also find rows that were deleted (forwarded, expired)
//! but whose page was not reused; forwarding them again is harmless (the
//! database ignores a reading it has), and retention expires them again.

use std::path::Path;
use std::time::Duration;

use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};

use crate::reading::{ReadingTable, SourceKind};

/// Rows copied per statement.
const CHUNK: usize = 500;

/// Copies the readings the damaged store at `damaged` (and its `-wal`)
/// still yields into `into`; returns how many.
pub(super) async fn salvage(damaged: &Path, into: &SqlitePool) -> u64 {
    match through_sqlite(damaged, into).await {
        Some(saved) => saved,
        None => {
            let mut rows = Vec::new();
            let wal = std::fs::read(format!("{}-wal", damaged.display())).unwrap_or_default();
            let main = std::fs::read(damaged).unwrap_or_default();
            // The WAL's frames are newer than the file's pages, the later
            // the newer; the first version of a row copied is kept.
            scan_wal(&wal, &mut rows);
            scan_pages(&main, page_size_of(&main), &mut rows);
            let mut saved = 0;
            for chunk in rows.chunks(CHUNK) {
                saved += copy_rows(into, chunk).await;
            }
            saved
        }
    }
}

/// Copies the damaged store's other tables — the rollups and days of
/// energy (without a database, the site's only long-term record) and the
/// parked readings — table by table through SQLite; a table that cannot be
/// read whole is skipped. Returns how many rows were copied.
pub(super) async fn copy_tables(damaged: &Path, into: &SqlitePool) -> u64 {
    let Ok(mut conn) = into.acquire().await else {
        return 0;
    };
    // The attachment goes with the connection.
    conn.close_on_drop();
    if sqlx::query("ATTACH DATABASE ? AS damaged")
        .bind(damaged.display().to_string())
        .execute(&mut *conn)
        .await
        .is_err()
    {
        return 0;
    }
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM main.sqlite_master WHERE type = 'table'
         AND name NOT IN ('readings', 'status') AND name NOT LIKE 'sqlite_%' ORDER BY name",
    )
    .fetch_all(&mut *conn)
    .await
    .unwrap_or_default();
    let mut copied = 0;
    for table in tables {
        let columns: Vec<String> =
            sqlx::query_scalar("SELECT name FROM pragma_table_info(?) ORDER BY cid")
                .bind(&table)
                .fetch_all(&mut *conn)
                .await
                .unwrap_or_default();
        if columns.is_empty() {
            continue;
        }
        let list = columns
            .iter()
            .map(|c| format!("\"{c}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "INSERT OR IGNORE INTO main.\"{table}\" ({list}) SELECT {list} FROM damaged.\"{table}\""
        );
        if let Ok(done) = sqlx::query(&sql).execute(&mut *conn).await {
            copied += done.rows_affected();
        }
    }
    copied
}

/// Reads the readings through SQLite, skipping what cannot be read;
/// `None` when SQLite cannot read the table at all.
async fn through_sqlite(damaged: &Path, into: &SqlitePool) -> Option<u64> {
    // Without a WAL beside it the file is read as immutable: no locks and
    // no shared-memory index, which a read-only connection to a WAL-mode
    // file without its `-shm` would otherwise retry for (with sleeps that
    // grow on a loaded machine). With a WAL, its frames are read too.
    let has_wal = Path::new(&format!("{}-wal", damaged.display())).exists();
    let options = SqliteConnectOptions::new()
        .filename(damaged)
        .read_only(true)
        .immutable(!has_wal)
        .busy_timeout(Duration::from_secs(1));
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await
        .ok()?;
    let mut saved = 0;
    let mut read_any = false;
    let mut after = i64::MIN;
    // After an unreadable chunk, rows are read one by one for a while, so
    // that every readable row before and after the damage is kept.
    let mut one_by_one = 0usize;
    // Bounded: every round moves `after` forward or ends.
    loop {
        let limit = if one_by_one > 0 { 1 } else { CHUNK };
        let chunk: Result<Vec<String>, sqlx::Error> = sqlx::query_scalar(
            "SELECT json_array(seq, reading_table, device, source, measured_at_us, vals, site, held_mono, held_boot)
             FROM readings WHERE seq > ? ORDER BY seq LIMIT ?",
        )
        .bind(after)
        .bind(i64::try_from(limit).unwrap_or(1))
        .fetch_all(&pool)
        .await;
        match chunk {
            Ok(rows) if rows.is_empty() => break,
            Ok(rows) => {
                read_any = true;
                let last = rows
                    .last()
                    .and_then(|r| serde_json::from_str::<serde_json::Value>(r).ok())
                    .and_then(|r| r.get(0).and_then(serde_json::Value::as_i64));
                let Some(last) = last else { break };
                saved += copy_rows(into, &rows).await;
                after = last;
                one_by_one = one_by_one.saturating_sub(rows.len());
            }
            Err(_) if one_by_one == 0 => one_by_one = CHUNK,
            Err(_) => match next_readable(&pool, after).await {
                Some(next) => {
                    read_any = true;
                    after = next - 1;
                }
                None => break,
            },
        }
    }
    pool.close().await;
    read_any.then_some(saved)
}

/// The first seq past an unreadable stretch after `after`: probes further
/// and further ahead (a seek by key avoids the damaged pages before it).
async fn next_readable(pool: &SqlitePool, after: i64) -> Option<i64> {
    let start = after.max(0);
    for shift in 0..48 {
        let probe = start.checked_add(1_i64 << shift)?;
        let found: Result<Option<i64>, sqlx::Error> =
            sqlx::query_scalar("SELECT seq FROM readings WHERE seq > ? ORDER BY seq LIMIT 1")
                .bind(probe)
                .fetch_optional(pool)
                .await;
        match found {
            Ok(Some(seq)) => return Some(seq),
            Ok(None) => return None,
            Err(_) => continue,
        }
    }
    None
}

/// Inserts rows (JSON arrays in the readings' column order); returns how
/// many were new.
async fn copy_rows(into: &SqlitePool, rows: &[String]) -> u64 {
    let array = format!("[{}]", rows.join(","));
    super::write::execute(
        into,
        sqlx::query(
            "INSERT OR IGNORE INTO readings (seq, reading_table, device, source, measured_at_us, vals, site, held_mono, held_boot)
             SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4, value ->> 5,
                    value ->> 6, value ->> 7, value ->> 8
             FROM json_each(?) WHERE true ORDER BY key",
        )
        .bind(array),
    )
    .await
    .map_or(0, |done| done.rows_affected())
}

/// The page size the header names, else the store's own (1 KiB).
fn page_size_of(file: &[u8]) -> usize {
    let named = file
        .get(16..18)
        .map(|b| u16::from_be_bytes([b[0], b[1]]))
        .map(|n| if n == 1 { 65_536 } else { usize::from(n) });
    match named {
        Some(n) if n >= 512 && n.is_power_of_two() => n,
        _ => 1024,
    }
}

/// Scans a WAL's frames, newest first.
fn scan_wal(wal: &[u8], rows: &mut Vec<String>) {
    let Some(size) = wal
        .get(8..12)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .filter(|n| *n >= 512 && n.is_power_of_two() && *n <= 65_536)
    else {
        return;
    };
    let frames: Vec<&[u8]> = wal
        .get(32..)
        .unwrap_or_default()
        .chunks_exact(24 + size)
        .map(|frame| &frame[24..])
        .collect();
    for page in frames.into_iter().rev() {
        scan_page(page, 0, rows);
    }
}

/// Scans every page of a database file.
fn scan_pages(file: &[u8], size: usize, rows: &mut Vec<String>) {
    for (index, page) in file.chunks(size).enumerate() {
        // The first page's b-tree header follows the 100-byte file header.
        scan_page(page, if index == 0 { 100 } else { 0 }, rows);
    }
}

/// The readings rows in one table b-tree leaf page.
fn scan_page(page: &[u8], header_at: usize, rows: &mut Vec<String>) {
    if page.get(header_at) != Some(&0x0D) {
        return;
    }
    let Some(count) = be16(page, header_at + 3) else {
        return;
    };
    for i in 0..usize::from(count) {
        let Some(cell) = be16(page, header_at + 8 + 2 * i) else {
            return;
        };
        if let Some(row) = reading_at(page, usize::from(cell)) {
            rows.push(row);
        }
    }
}

fn be16(bytes: &[u8], at: usize) -> Option<u16> {
    let b = bytes.get(at..at + 2)?;
    Some(u16::from_be_bytes([b[0], b[1]]))
}

/// A SQLite varint at `at`: its value and length.
fn varint(bytes: &[u8], at: usize) -> Option<(i64, usize)> {
    let mut value: u64 = 0;
    for i in 0..9 {
        let b = *bytes.get(at + i)?;
        if i == 8 {
            return Some((((value << 8) | u64::from(b)) as i64, 9));
        }
        value = (value << 7) | u64::from(b & 0x7f);
        if b & 0x80 == 0 {
            return Some((value as i64, i + 1));
        }
    }
    None
}

/// One column of a record.
#[derive(Debug, PartialEq)]
enum Column<'a> {
    Null,
    Int(i64),
    Text(&'a str),
    Other,
}

/// The row whose cell starts at `cell`, when it has a reading's shape.
fn reading_at(page: &[u8], cell: usize) -> Option<String> {
    let (size, n) = varint(page, cell)?;
    let (rowid, m) = varint(page, cell + n)?;
    let start = cell + n + m;
    let size = usize::try_from(size).ok()?;
    // Rows spilling onto overflow pages are not followed.
    let payload = page.get(start..start.checked_add(size)?)?;
    let columns = record(payload)?;
    if !(6..=9).contains(&columns.len()) || columns[0] != Column::Null {
        return None;
    }
    let text = |i: usize| match columns.get(i) {
        Some(Column::Text(t)) => Some(*t),
        _ => None,
    };
    let optional_text = |i: usize| match columns.get(i) {
        None | Some(Column::Null) => Some(None),
        Some(Column::Text(t)) => Some(Some(*t)),
        _ => None,
    };
    let table = text(1).filter(|t| ReadingTable::ALL.iter().any(|k| k.name() == *t))?;
    let device = text(2).filter(|d| !d.is_empty())?;
    let source = text(3).filter(|s| {
        [SourceKind::Modbus, SourceKind::VeDirect]
            .iter()
            .any(|k| k.as_str() == *s)
    })?;
    let Column::Int(measured) = columns[4] else {
        return None;
    };
    let vals = text(5)?;
    if !serde_json::from_str::<serde_json::Value>(vals).is_ok_and(|v| v.is_array() || v.is_object())
    {
        return None;
    }
    let site = optional_text(6)?;
    let (held_mono, held_boot) = match (columns.get(7), optional_text(8)?) {
        (None | Some(Column::Null), None) => (None, None),
        // A held reading names the boot its moment belongs to (a boot id);
        // the parked table's rows, of the same width, do not.
        (Some(Column::Int(mono)), Some(boot)) if is_boot_id(boot) => (Some(*mono), Some(boot)),
        _ => return None,
    };
    Some(
        serde_json::json!([
            rowid, table, device, source, measured, vals, site, held_mono, held_boot
        ])
        .to_string(),
    )
}

/// `8-4-4-4-12` hexadecimal digits, as the kernel's boot id.
fn is_boot_id(text: &str) -> bool {
    let groups: Vec<&str> = text.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// A record's columns (SQLite's record format).
fn record(payload: &[u8]) -> Option<Vec<Column<'_>>> {
    let (header, n) = varint(payload, 0)?;
    let header = usize::try_from(header).ok()?;
    if header > payload.len() || header < n {
        return None;
    }
    let mut at = n;
    let mut body = header;
    let mut columns = Vec::new();
    while at < header {
        let (kind, used) = varint(payload, at)?;
        at += used;
        let (column, len) = match kind {
            0 | 10 | 11 => (Column::Null, 0),
            1..=6 => {
                let len = [1, 2, 3, 4, 6, 8][usize::try_from(kind - 1).ok()?];
                let bytes = payload.get(body..body + len)?;
                let mut value = if bytes[0] & 0x80 != 0 { -1_i64 } else { 0 };
                for b in bytes {
                    value = (value << 8) | i64::from(*b);
                }
                (Column::Int(value), len)
            }
            7 => (Column::Other, 8),
            8 => (Column::Int(0), 0),
            9 => (Column::Int(1), 0),
            k if k >= 13 && k % 2 == 1 => {
                let len = usize::try_from((k - 13) / 2).ok()?;
                let bytes = payload.get(body..body.checked_add(len)?)?;
                (
                    std::str::from_utf8(bytes).map_or(Column::Other, Column::Text),
                    len,
                )
            }
            k if k >= 12 => (Column::Other, usize::try_from((k - 12) / 2).ok()?),
            _ => return None,
        };
        body = body.checked_add(len)?;
        if body > payload.len() {
            return None;
        }
        columns.push(column);
    }
    Some(columns)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A store SQLite wrote, then its first page wiped (header and schema
    /// gone: SQLite cannot read it at all): the scan finds every reading
    /// the other pages hold, exactly as SQLite had them.
    #[tokio::test]
    async fn a_store_without_its_header_still_yields_its_readings() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sqlite");
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(
                SqliteConnectOptions::new()
                    .filename(&path)
                    .create_if_missing(true)
                    .page_size(1024),
            )
            .await
            .unwrap();
        sqlx::raw_sql(super::super::schema::SCHEMA)
            .execute(&pool)
            .await
            .unwrap();
        for seq in 1..=300_i64 {
            sqlx::query(
                "INSERT INTO readings (seq, reading_table, device, source, measured_at_us, vals, site)
                 VALUES (?, 'battery_readings', 'bank', 'vedirect', ?, ?, 'ranch')",
            )
            .bind(seq)
            .bind(1_700_000_000_000_000 + seq * 1_000_000)
            .bind(format!("[{seq}.5,null,\"bulk\",{seq}]"))
            .execute(&pool)
            .await
            .unwrap();
        }
        let expected: Vec<String> = sqlx::query_scalar(
            "SELECT json_array(seq, reading_table, device, source, measured_at_us, vals, site, held_mono, held_boot)
             FROM readings ORDER BY seq",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        pool.close().await;
        let mut file = std::fs::read(&path).unwrap();
        file[..1024].fill(0);
        let mut rows = Vec::new();
        scan_pages(&file, 1024, &mut rows);
        let mut found: Vec<serde_json::Value> = rows
            .iter()
            .map(|r| serde_json::from_str(r).unwrap())
            .collect();
        found.sort_by_key(|r| r[0].as_i64());
        let expected: Vec<serde_json::Value> = expected
            .iter()
            .map(|r| serde_json::from_str(r).unwrap())
            .collect();
        // The first page held no readings (the schema); all are found.
        assert_eq!(found, expected);
    }

    /// The damaged store's days of energy and parked readings are copied
    /// into the new store; its readings are the readings' salvage's.
    #[tokio::test]
    async fn rollups_days_and_parked_readings_are_copied() {
        let dir = tempfile::tempdir().unwrap();
        let pool_at = async |name: &str| {
            let pool = SqlitePoolOptions::new()
                .max_connections(1)
                .connect_with(
                    SqliteConnectOptions::new()
                        .filename(dir.path().join(name))
                        .create_if_missing(true),
                )
                .await
                .unwrap();
            sqlx::raw_sql(super::super::schema::SCHEMA)
                .execute(&pool)
                .await
                .unwrap();
            sqlx::raw_sql(&super::super::schema::history_schema())
                .execute(&pool)
                .await
                .unwrap();
            pool
        };
        let damaged = pool_at("damaged.sqlite").await;
        sqlx::raw_sql(
            "INSERT INTO energy_daily (site, day, solar_kwh, coverage_pct, updated_at_us)
             VALUES ('ranch', '2026-12-01', 7.25, 99.0, 1), ('ranch', '2026-12-02', 6.5, 100.0, 2);
             INSERT INTO parked (seq, reading_table, device, source, measured_at_us, vals, error, parked_at_us)
             VALUES (9, 'battery_readings', 'bank', 'vedirect', 5, '[1]', 'out of range', 6);",
        )
        .execute(&damaged)
        .await
        .unwrap();
        damaged.close().await;
        let new = pool_at("new.sqlite").await;
        let copied = copy_tables(&dir.path().join("damaged.sqlite"), &new).await;
        assert_eq!(copied, 3);
        let solar: Vec<f64> = sqlx::query_scalar("SELECT solar_kwh FROM energy_daily ORDER BY day")
            .fetch_all(&new)
            .await
            .unwrap();
        assert_eq!(solar, vec![7.25, 6.5]);
        let parked: String = sqlx::query_scalar("SELECT error FROM parked WHERE seq = 9")
            .fetch_one(&new)
            .await
            .unwrap();
        assert_eq!(parked, "out of range");
        new.close().await;
    }

    proptest! {
        /// Any bytes at all: no panic.
        #[test]
        fn scanning_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
            let mut rows = Vec::new();
            scan_pages(&bytes, 1024, &mut rows);
            scan_wal(&bytes, &mut rows);
            let mut leaf = bytes.clone();
            if !leaf.is_empty() {
                leaf[0] = 0x0D;
            }
            scan_page(&leaf, 0, &mut rows);
        }
    }
}
