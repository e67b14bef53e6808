-- The site's energy record beyond the raw readings' 72 hours.
-- - victron.history_5m, history_1h, history_1d: per site, device and metric
--   (every numeric column of every reading table), the bucket's samples,
--   min, max, mean and last value. Daily buckets start at local midnight of
--   the site's time zone; a bucket is named by its start (a UTC instant).
--   The daemon's aggregator writes them; a recomputed bucket replaces the
--   old one. Each resolution has its own retention (history.keep_*_days).
-- - victron.energy_daily: per site and local day, the energy the measured
--   powers integrate to (kWh), the SOC range, and how much of the day the
--   readings cover. Plain tables on every server flavour.

CREATE TABLE IF NOT EXISTS victron.history_5m (
    installation_id TEXT NOT NULL,
    device          TEXT NOT NULL,
    reading_table   TEXT NOT NULL,
    metric          TEXT NOT NULL,
    bucket          TIMESTAMPTZ NOT NULL,
    samples         INTEGER NOT NULL,
    min             DOUBLE PRECISION,
    max             DOUBLE PRECISION,
    mean            DOUBLE PRECISION,
    last            DOUBLE PRECISION,
    PRIMARY KEY (installation_id, device, metric, bucket)
);
CREATE INDEX IF NOT EXISTS idx_history_5m_bucket ON victron.history_5m (bucket);
COMMENT ON TABLE victron.history_5m IS 'victron-poller rollups: 5-minute buckets of every numeric reading column';

CREATE TABLE IF NOT EXISTS victron.history_1h (LIKE victron.history_5m INCLUDING ALL);
CREATE INDEX IF NOT EXISTS idx_history_1h_bucket ON victron.history_1h (bucket);
COMMENT ON TABLE victron.history_1h IS 'victron-poller rollups: hourly buckets of every numeric reading column';

CREATE TABLE IF NOT EXISTS victron.history_1d (LIKE victron.history_5m INCLUDING ALL);
CREATE INDEX IF NOT EXISTS idx_history_1d_bucket ON victron.history_1d (bucket);
COMMENT ON TABLE victron.history_1d IS 'victron-poller rollups: local-day buckets of every numeric reading column';

CREATE TABLE IF NOT EXISTS victron.energy_daily (
    installation_id       TEXT NOT NULL,
    day                   DATE NOT NULL,
    solar_kwh             DOUBLE PRECISION,
    consumption_kwh       DOUBLE PRECISION,
    battery_charge_kwh    DOUBLE PRECISION,
    battery_discharge_kwh DOUBLE PRECISION,
    grid_import_kwh       DOUBLE PRECISION,
    grid_export_kwh       DOUBLE PRECISION,
    genset_kwh            DOUBLE PRECISION,
    min_soc               DOUBLE PRECISION,
    max_soc               DOUBLE PRECISION,
    coverage_pct          DOUBLE PRECISION NOT NULL,
    updated_at            TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    PRIMARY KEY (installation_id, day)
);
COMMENT ON TABLE victron.energy_daily IS 'victron-poller energy per site and local day (kWh), from the measured powers';
