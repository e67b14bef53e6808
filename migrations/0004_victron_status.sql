-- Poller and device status (schema victron). polling_status is the legacy
-- singleton, now enforced by CHECK (id = 1) and written with an upsert every
-- cycle; device_status holds one row per configured device.
--
-- Adopts the legacy polling_status (SERIAL id, no CHECK): the serial default
-- is replaced by 1 and any stray row other than id 1 is removed (the row is
-- status, rewritten every cycle; no reading lives here).

CREATE TABLE IF NOT EXISTS victron.polling_status (
    id                   INTEGER PRIMARY KEY DEFAULT 1,
    last_poll_attempt    TIMESTAMPTZ,
    last_successful_poll TIMESTAMPTZ,
    last_error           TEXT,
    requests_this_hour   INTEGER DEFAULT 0,
    hour_window_start    TIMESTAMPTZ DEFAULT NOW(),
    consecutive_failures INTEGER DEFAULT 0,
    is_healthy           BOOLEAN DEFAULT TRUE,
    updated_at           TIMESTAMPTZ NOT NULL DEFAULT NOW()
);

ALTER TABLE victron.polling_status ALTER COLUMN id SET DEFAULT 1;
DROP SEQUENCE IF EXISTS victron.polling_status_id_seq;
DELETE FROM victron.polling_status WHERE id <> 1;

DO $$
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM pg_constraint
        WHERE conrelid = 'victron.polling_status'::regclass AND conname = 'polling_status_singleton'
    ) THEN
        ALTER TABLE victron.polling_status ADD CONSTRAINT polling_status_singleton CHECK (id = 1);
    END IF;
END
$$;

ALTER TABLE victron.polling_status
    ADD COLUMN IF NOT EXISTS poller_host                   TEXT,
    ADD COLUMN IF NOT EXISTS poller_version                TEXT,
    ADD COLUMN IF NOT EXISTS poller_started_at             TIMESTAMPTZ,
    ADD COLUMN IF NOT EXISTS poll_interval_ms              INTEGER,
    ADD COLUMN IF NOT EXISTS devices_configured            INTEGER,
    ADD COLUMN IF NOT EXISTS devices_healthy               INTEGER,
    ADD COLUMN IF NOT EXISTS rows_written_last_batch       INTEGER,
    ADD COLUMN IF NOT EXISTS rows_written_total            BIGINT,
    ADD COLUMN IF NOT EXISTS spool_depth                   BIGINT,
    ADD COLUMN IF NOT EXISTS spool_oldest_age_s            DOUBLE PRECISION,
    ADD COLUMN IF NOT EXISTS retention_window_s            BIGINT,
    ADD COLUMN IF NOT EXISTS last_retention_run            TIMESTAMPTZ,
    ADD COLUMN IF NOT EXISTS last_retention_rows_dropped   BIGINT,
    ADD COLUMN IF NOT EXISTS last_retention_chunks_dropped INTEGER,
    ADD COLUMN IF NOT EXISTS last_retention_error          TEXT,
    ADD COLUMN IF NOT EXISTS storage_mode                  TEXT;

COMMENT ON TABLE victron.polling_status IS 'victron-poller health: one row (id = 1), upserted every poll cycle';
COMMENT ON COLUMN victron.polling_status.storage_mode IS 'timescaledb, timescaledb-apache or postgres';
COMMENT ON COLUMN victron.polling_status.spool_depth IS 'Readings waiting in the local store to be forwarded';

INSERT INTO victron.polling_status (id, updated_at) VALUES (1, NOW()) ON CONFLICT (id) DO NOTHING;

CREATE OR REPLACE FUNCTION victron.update_polling_status_timestamp()
RETURNS TRIGGER
LANGUAGE plpgsql
AS $$
BEGIN
    NEW.updated_at = NOW();
    RETURN NEW;
END
$$;

DROP TRIGGER IF EXISTS trg_update_polling_status_timestamp ON victron.polling_status;
CREATE TRIGGER trg_update_polling_status_timestamp
    BEFORE UPDATE ON victron.polling_status
    FOR EACH ROW EXECUTE FUNCTION victron.update_polling_status_timestamp();

CREATE TABLE IF NOT EXISTS victron.device_status (
    device               TEXT PRIMARY KEY,
    source               TEXT NOT NULL,
    address              TEXT,
    product_id           INTEGER,
    product_name         TEXT,
    serial               TEXT,
    firmware             TEXT,
    last_attempt         TIMESTAMPTZ,
    last_success         TIMESTAMPTZ,
    last_error           TEXT,
    last_error_class     TEXT,
    consecutive_failures INTEGER NOT NULL DEFAULT 0,
    backoff_ms           BIGINT NOT NULL DEFAULT 0,
    updated_at           TIMESTAMPTZ NOT NULL DEFAULT NOW()
);
COMMENT ON TABLE victron.device_status IS 'One row per configured device: identity, address and polling health';
COMMENT ON COLUMN victron.device_status.address IS 'host:port/unit id for Modbus-TCP, a serial path or host:port for VE.Direct';
