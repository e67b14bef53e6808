//! The store file's tables: readings, parked readings, status documents,
//! and the rollup and daily-energy tables of a gateway without a database.

/// The readings, parked readings and status tables.
pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS readings (
    seq            INTEGER PRIMARY KEY,
    reading_table  TEXT    NOT NULL,
    device         TEXT    NOT NULL,
    source         TEXT    NOT NULL,
    measured_at_us INTEGER NOT NULL,
    vals           TEXT    NOT NULL,
    site           TEXT,
    held_mono      INTEGER,
    held_boot      TEXT,
    UNIQUE (measured_at_us, reading_table, device)
);
CREATE TABLE IF NOT EXISTS parked (
    seq            INTEGER PRIMARY KEY,
    reading_table  TEXT    NOT NULL,
    device         TEXT    NOT NULL,
    source         TEXT    NOT NULL,
    measured_at_us INTEGER NOT NULL,
    vals           TEXT    NOT NULL,
    error          TEXT    NOT NULL,
    parked_at_us   INTEGER NOT NULL,
    site           TEXT
);
CREATE TABLE IF NOT EXISTS status (
    name          TEXT PRIMARY KEY,
    doc           TEXT NOT NULL,
    updated_at_us INTEGER NOT NULL
);
";

/// The rollup and daily-energy tables of a gateway without a database
/// (written by [`crate::history`], one table per rollup resolution); created
/// with the store, and added to an older one.
pub(super) fn history_schema() -> String {
    let mut sql: String = ["history_5m", "history_1h", "history_1d"]
        .iter()
        .map(|table| {
            format!(
                "CREATE TABLE IF NOT EXISTS {table} (
                    site          TEXT    NOT NULL,
                    device        TEXT    NOT NULL,
                    reading_table TEXT    NOT NULL,
                    metric        TEXT    NOT NULL,
                    bucket_us     INTEGER NOT NULL,
                    samples       INTEGER NOT NULL,
                    min REAL, max REAL, mean REAL, last REAL,
                    PRIMARY KEY (site, device, metric, bucket_us)
                ) WITHOUT ROWID;
                CREATE INDEX IF NOT EXISTS {table}_bucket ON {table} (bucket_us);\n"
            )
        })
        .collect();
    sql.push_str(
        "CREATE TABLE IF NOT EXISTS energy_daily (
            site                  TEXT NOT NULL,
            day                   TEXT NOT NULL,
            solar_kwh REAL, consumption_kwh REAL, battery_charge_kwh REAL,
            battery_discharge_kwh REAL, grid_import_kwh REAL, grid_export_kwh REAL,
            genset_kwh REAL, min_soc REAL, max_soc REAL,
            coverage_pct          REAL    NOT NULL,
            updated_at_us         INTEGER NOT NULL,
            PRIMARY KEY (site, day)
        ) WITHOUT ROWID;",
    );
    sql
}
