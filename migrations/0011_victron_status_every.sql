-- Status rows written when something changes and otherwise every few
-- seconds, not every poll: a gateway's CPU is spent on readings, not on
-- rewriting the same row.
-- - status_every_ms: how often the daemon rewrites its rows while nothing in
--   them changes but the times and counts (a device's health, an error, a
--   stop, a failover or the clock's basis are written at once). NULL in rows
--   of daemons from before: they wrote every poll.
-- - is_stale, in both views (one definition: victron.status_is_stale): no
--   successful poll in two poll intervals plus the longer of a poll interval
--   and that period (three poll intervals, as before, for a daemon that
--   writes every poll). A live daemon's last_successful_poll lags by up to
--   the period.
-- The singleton carries the longest period of any site; both views gain the
-- column at their end.

ALTER TABLE victron.site_status ADD COLUMN IF NOT EXISTS status_every_ms INTEGER;
ALTER TABLE victron.polling_status ADD COLUMN IF NOT EXISTS status_every_ms INTEGER;

-- The one definition of stale, for both views.
CREATE OR REPLACE FUNCTION victron.status_is_stale(
    last_successful_poll TIMESTAMPTZ, poll_interval_ms INTEGER, status_every_ms INTEGER)
RETURNS BOOLEAN LANGUAGE sql STABLE AS $$
    SELECT last_successful_poll IS NULL
        OR now() - last_successful_poll
           > make_interval(secs => (2 * coalesce(poll_interval_ms, 0)
                                    + greatest(coalesce(poll_interval_ms, 0),
                                               coalesce(status_every_ms, 0))) / 1000.0)
$$;

CREATE OR REPLACE VIEW victron.site_status_view AS
SELECT
    s.installation_id,
    s.is_healthy,
    s.last_poll_attempt,
    s.last_successful_poll,
    extract(epoch FROM NOW() - s.last_successful_poll)::double precision AS seconds_since_last_success,
    victron.status_is_stale(s.last_successful_poll, s.poll_interval_ms, s.status_every_ms) AS is_stale,
    (s.poller_started_at IS NOT NULL AND s.poller_stopped_at IS NULL) AS is_running,
    s.last_error,
    s.consecutive_failures,
    s.poll_interval_ms,
    s.devices_configured,
    s.devices_healthy,
    s.rows_written_last_batch,
    s.rows_written_total,
    s.spool_depth,
    s.spool_oldest_age_s,
    s.storage_mode,
    s.poller_host,
    s.poller_version,
    s.poller_started_at,
    s.poller_stopped_at,
    s.updated_at,
    s.clock,
    s.clock_offset_s,
    s.held_readings,
    s.status_every_ms
FROM victron.site_status s;
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
    -- restart), at most 24 h.
    SELECT floor(s.devices_configured * 1000.0 / NULLIF(s.poll_interval_ms, 0)
                 * extract(epoch FROM NOW() - GREATEST(NOW() - INTERVAL '24 hours',
                                                       LEAST(s.poller_started_at, r.oldest_reading_at))))::bigint
               AS readings_24h
    FROM victron.polling_status s
    CROSS JOIN readings r
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
