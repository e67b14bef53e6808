-- The site is part of every identity, so that many sites can share one
-- database: two sites with a device called "house-bank" are two series.
-- - The reading tables: installation_id (the site) becomes NOT NULL, '' for
--   none (rows without a site get ''; the legacy VRM rows keep theirs), and
--   the unique key becomes (installation_id, device, "timestamp") — still a
--   valid hypertable key, since it holds the time column.
-- - device_status is keyed (installation_id, device).

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['battery_readings', 'solar_readings', 'inverter_readings', 'system_readings'] LOOP
        EXECUTE format('UPDATE victron.%I SET installation_id = '''' WHERE installation_id IS NULL', t);
        EXECUTE format('ALTER TABLE victron.%I ALTER COLUMN installation_id SET DEFAULT ''''', t);
        EXECUTE format('ALTER TABLE victron.%I ALTER COLUMN installation_id SET NOT NULL', t);
        EXECUTE format('CREATE UNIQUE INDEX IF NOT EXISTS %I ON victron.%I (installation_id, device, "timestamp")',
                       t || '_site_device_timestamp_key', t);
        EXECUTE format('DROP INDEX IF EXISTS victron.%I', t || '_device_timestamp_key');
    END LOOP;
END
$$;

ALTER TABLE victron.device_status ADD COLUMN IF NOT EXISTS installation_id TEXT NOT NULL DEFAULT '';
ALTER TABLE victron.device_status DROP CONSTRAINT IF EXISTS device_status_pkey;
ALTER TABLE victron.device_status ADD CONSTRAINT device_status_pkey PRIMARY KEY (installation_id, device);
COMMENT ON COLUMN victron.device_status.installation_id IS 'The site the device belongs to ('''' for none)';
