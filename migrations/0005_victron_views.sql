-- Views over the victron schema: the legacy helper views (now with explicit
-- column lists) and polling_status_view, the one query an operator runs:
--     SELECT * FROM victron.polling_status_view;
-- TimescaleDB catalog lookups live in functions that check for the extension
-- first, so the views work on every server flavour.

CREATE OR REPLACE VIEW victron.latest_battery_reading AS
SELECT id, "timestamp", installation_id, soc, voltage, current, power, state,
       temperature, created_at, device, source, consumed_ah, time_to_go_s,
       starter_voltage, midpoint_voltage, midpoint_deviation_pct, min_cell_voltage,
       max_cell_voltage, state_of_health_pct, alarm, product_id
FROM victron.battery_readings
ORDER BY "timestamp" DESC
LIMIT 1;
COMMENT ON VIEW victron.latest_battery_reading IS 'Most recent battery reading from Victron';

CREATE OR REPLACE VIEW victron.battery_stats_24h AS
SELECT count(*)         AS reading_count,
       min("timestamp") AS first_reading,
       max("timestamp") AS last_reading,
       avg(soc)         AS avg_soc,
       min(soc)         AS min_soc,
       max(soc)         AS max_soc,
       avg(voltage)     AS avg_voltage,
       min(voltage)     AS min_voltage,
       max(voltage)     AS max_voltage,
       avg(current)     AS avg_current,
       avg(power)       AS avg_power,
       avg(temperature) AS avg_temperature,
       min(temperature) AS min_temperature,
       max(temperature) AS max_temperature
FROM victron.battery_readings
WHERE "timestamp" >= NOW() - INTERVAL '24 hours';
COMMENT ON VIEW victron.battery_stats_24h IS '24-hour battery statistics';

-- How many of the four reading tables are hypertables (0 without TimescaleDB).
CREATE OR REPLACE FUNCTION victron.reading_hypertable_count()
RETURNS integer
LANGUAGE plpgsql STABLE
AS $$
DECLARE
    n integer := 0;
BEGIN
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb') THEN
        SELECT count(*) INTO n
        FROM timescaledb_information.hypertables
        WHERE hypertable_schema = 'victron'
          AND hypertable_name IN ('battery_readings', 'solar_readings', 'inverter_readings', 'system_readings');
    END IF;
    RETURN n;
EXCEPTION WHEN OTHERS THEN
    RETURN NULL;
END
$$;

-- How many of the four reading tables carry a TimescaleDB retention policy.
CREATE OR REPLACE FUNCTION victron.reading_retention_policy_count()
RETURNS integer
LANGUAGE plpgsql STABLE
AS $$
DECLARE
    n integer := 0;
BEGIN
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb') THEN
        SELECT count(*) INTO n
        FROM timescaledb_information.jobs
        WHERE proc_name = 'policy_retention'
          AND hypertable_schema = 'victron'
          AND hypertable_name IN ('battery_readings', 'solar_readings', 'inverter_readings', 'system_readings');
    END IF;
    RETURN n;
EXCEPTION WHEN OTHERS THEN
    RETURN NULL;
END
$$;

CREATE OR REPLACE VIEW victron.polling_status_view AS
WITH readings AS (
    SELECT
        (SELECT count(*) FROM victron.battery_readings  WHERE "timestamp" >= NOW() - INTERVAL '1 hour')
      + (SELECT count(*) FROM victron.solar_readings    WHERE "timestamp" >= NOW() - INTERVAL '1 hour')
      + (SELECT count(*) FROM victron.inverter_readings WHERE "timestamp" >= NOW() - INTERVAL '1 hour')
      + (SELECT count(*) FROM victron.system_readings   WHERE "timestamp" >= NOW() - INTERVAL '1 hour')
            AS readings_last_hour,
        (SELECT count(*) FROM victron.battery_readings  WHERE "timestamp" >= NOW() - INTERVAL '24 hours')
      + (SELECT count(*) FROM victron.solar_readings    WHERE "timestamp" >= NOW() - INTERVAL '24 hours')
      + (SELECT count(*) FROM victron.inverter_readings WHERE "timestamp" >= NOW() - INTERVAL '24 hours')
      + (SELECT count(*) FROM victron.system_readings   WHERE "timestamp" >= NOW() - INTERVAL '24 hours')
            AS readings_last_24h,
        LEAST((SELECT min("timestamp") FROM victron.battery_readings),
              (SELECT min("timestamp") FROM victron.solar_readings),
              (SELECT min("timestamp") FROM victron.inverter_readings),
              (SELECT min("timestamp") FROM victron.system_readings)) AS oldest_reading_at,
        GREATEST((SELECT max("timestamp") FROM victron.battery_readings),
                 (SELECT max("timestamp") FROM victron.solar_readings),
                 (SELECT max("timestamp") FROM victron.inverter_readings),
                 (SELECT max("timestamp") FROM victron.system_readings)) AS newest_reading_at
),
devices AS (
    SELECT count(*) FILTER (WHERE consecutive_failures > 0 OR last_success IS NULL) AS unhealthy
    FROM victron.device_status
),
expected AS (
    SELECT floor(s.devices_configured * 86400000.0 / NULLIF(s.poll_interval_ms, 0))::bigint AS readings_24h
    FROM victron.polling_status s
    WHERE s.id = 1
)
SELECT
    s.id,
    s.is_healthy,
    s.last_poll_attempt,
    s.last_successful_poll,
    extract(epoch FROM NOW() - s.last_successful_poll)::double precision AS seconds_since_last_success,
    (s.last_successful_poll IS NULL
        OR NOW() - s.last_successful_poll
           > 3 * make_interval(secs => coalesce(s.poll_interval_ms, 0) / 1000.0)) AS is_stale,
    s.last_error,
    s.consecutive_failures,
    s.poll_interval_ms,
    s.devices_configured,
    s.devices_healthy,
    d.unhealthy AS devices_unhealthy,
    r.readings_last_hour,
    r.readings_last_24h,
    e.readings_24h AS expected_readings_24h,
    round(100.0 * r.readings_last_24h / NULLIF(e.readings_24h, 0), 1) AS collection_health_pct,
    r.newest_reading_at,
    r.oldest_reading_at,
    extract(epoch FROM NOW() - r.oldest_reading_at)::double precision AS oldest_reading_age_s,
    s.rows_written_last_batch,
    s.rows_written_total,
    s.spool_depth,
    s.spool_oldest_age_s,
    s.storage_mode,
    victron.reading_hypertable_count() AS reading_hypertables,
    victron.reading_retention_policy_count() AS retention_policies,
    s.retention_window_s,
    s.last_retention_run,
    s.last_retention_rows_dropped,
    s.last_retention_chunks_dropped,
    s.last_retention_error,
    s.poller_host,
    s.poller_version,
    s.poller_started_at,
    s.requests_this_hour,
    s.hour_window_start,
    s.updated_at
FROM victron.polling_status s
CROSS JOIN readings r
CROSS JOIN devices d
CROSS JOIN expected e
WHERE s.id = 1;
COMMENT ON VIEW victron.polling_status_view IS 'victron-poller health at a glance: SELECT * FROM victron.polling_status_view';
