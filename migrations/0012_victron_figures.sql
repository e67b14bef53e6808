-- Figures as people read them.
-- - battery_stats_24h: the averages rounded to what the devices resolve
--   (SOC, current and temperature to 0.1, voltage to 0.01, power to 1 W):
--   avg_soc 87.4, not 87.39999999999999. The columns stay double precision,
--   so clients that read them see the same types.
-- - polling_status_view.collection_health_pct: the expected readings of a
--   window that starts with the poller count the poll at its start (a
--   daemon 7.5 s into a 5-s interval has made two polls, not 1.5), and the
--   share is at most 100 (readings at a window's edge, or of devices
--   configured before a restart, no longer make it 133.3 %).

CREATE OR REPLACE VIEW victron.battery_stats_24h AS
SELECT count(*)                                              AS reading_count,
       min("timestamp")                                      AS first_reading,
       max("timestamp")                                      AS last_reading,
       round(avg(soc)::numeric, 1)::double precision         AS avg_soc,
       min(soc)                                              AS min_soc,
       max(soc)                                              AS max_soc,
       round(avg(voltage)::numeric, 2)::double precision     AS avg_voltage,
       min(voltage)                                          AS min_voltage,
       max(voltage)                                          AS max_voltage,
       round(avg(current)::numeric, 1)::double precision     AS avg_current,
       round(avg(power)::numeric, 0)::double precision       AS avg_power,
       round(avg(temperature)::numeric, 1)::double precision AS avg_temperature,
       min(temperature)                                      AS min_temperature,
       max(temperature)                                      AS max_temperature
FROM victron.battery_readings
WHERE "timestamp" >= NOW() - INTERVAL '24 hours';

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
    -- What the poller could have taken in the part of the last 24 h it ran:
    -- since it started, or since the oldest reading if that is earlier (a
    -- restart), at most 24 h. A window that starts with the poller starts
    -- with a poll: one per device at its start and one every interval
    -- after (1 s after a start at a 5-s interval: the first poll, not a
    -- fifth of one).
    SELECT s.devices_configured::bigint
           * (floor(extract(epoch FROM NOW() - w.start) * 1000.0
                    / NULLIF(s.poll_interval_ms, 0))::bigint
              + CASE WHEN w.start > NOW() - INTERVAL '24 hours' THEN 1 ELSE 0 END)
               AS readings_24h
    FROM victron.polling_status s
    CROSS JOIN readings r
    CROSS JOIN LATERAL (
        SELECT GREATEST(NOW() - INTERVAL '24 hours',
                        LEAST(s.poller_started_at, r.oldest_reading_at)) AS start
    ) w
    WHERE s.id = 1
)
SELECT
    s.id,
    s.is_healthy,
    s.last_poll_attempt,
    s.last_successful_poll,
    extract(epoch FROM NOW() - s.last_successful_poll)::double precision AS seconds_since_last_success,
    victron.status_is_stale(s.last_successful_poll, s.poll_interval_ms, s.status_every_ms) AS is_stale,
    s.last_error,
    s.consecutive_failures,
    s.poll_interval_ms,
    s.devices_configured,
    s.devices_healthy,
    d.unhealthy AS devices_unhealthy,
    r.readings_last_hour,
    r.readings_last_24h,
    e.readings_24h AS expected_readings_24h,
    LEAST(100.0, round(100.0 * r.readings_last_24h / NULLIF(e.readings_24h, 0), 1)) AS collection_health_pct,
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
    s.updated_at,
    s.poller_stopped_at,
    (s.poller_started_at IS NOT NULL AND s.poller_stopped_at IS NULL) AS is_running,
    (SELECT count(*) FROM victron.site_status_view) AS sites,
    (SELECT count(*) FROM victron.site_status_view WHERE NOT is_healthy OR is_stale) AS sites_unhealthy,
    s.clock,
    s.clock_offset_s,
    s.held_readings,
    s.status_every_ms
FROM victron.polling_status s
CROSS JOIN readings r
CROSS JOIN devices d
CROSS JOIN expected e
WHERE s.id = 1;
