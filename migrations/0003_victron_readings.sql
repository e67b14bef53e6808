-- Victron telemetry (schema victron): one wide row per device per poll in four
-- reading tables. Every column but the key is nullable: a value a device does
-- not provide, or one that failed validation, is NULL. The key is
-- UNIQUE (device, "timestamp"), which includes the time column so that the
-- reconcile step can make each table a hypertable, and writes are
-- INSERT ... ON CONFLICT DO NOTHING. "timestamp" is the measurement time.
--
-- Adopts the legacy victron.battery_readings (PRIMARY KEY on id alone, soc NOT
-- NULL, no device column): its rows are kept and attributed to device 'vrm'
-- with source 'vrm' (the VRM cloud poller that wrote them).

CREATE SCHEMA IF NOT EXISTS victron;
COMMENT ON SCHEMA victron IS 'Victron Energy telemetry written by victron-poller';

-- Battery monitors (BMV, SmartShunt, Lynx, BMS) -------------------------------
CREATE TABLE IF NOT EXISTS victron.battery_readings (
    id              SERIAL NOT NULL,
    "timestamp"     TIMESTAMPTZ NOT NULL,
    device          TEXT NOT NULL,
    installation_id VARCHAR(100),
    source          TEXT,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    soc             DOUBLE PRECISION,
    voltage         DOUBLE PRECISION,
    current         DOUBLE PRECISION,
    power           DOUBLE PRECISION,
    state           VARCHAR(20),
    temperature     DOUBLE PRECISION
);

-- Legacy adoption: the key moves to (device, "timestamp").
ALTER TABLE victron.battery_readings ADD COLUMN IF NOT EXISTS device TEXT;
ALTER TABLE victron.battery_readings ADD COLUMN IF NOT EXISTS source TEXT;
UPDATE victron.battery_readings SET device = 'vrm', source = coalesce(source, 'vrm') WHERE device IS NULL;
ALTER TABLE victron.battery_readings ALTER COLUMN device SET NOT NULL;
ALTER TABLE victron.battery_readings ALTER COLUMN soc DROP NOT NULL;
ALTER TABLE victron.battery_readings ALTER COLUMN "timestamp" DROP DEFAULT;
ALTER TABLE victron.battery_readings DROP CONSTRAINT IF EXISTS battery_readings_pkey;

ALTER TABLE victron.battery_readings
    ADD COLUMN IF NOT EXISTS consumed_ah            DOUBLE PRECISION,
    ADD COLUMN IF NOT EXISTS time_to_go_s           DOUBLE PRECISION,
    ADD COLUMN IF NOT EXISTS starter_voltage        DOUBLE PRECISION,
    ADD COLUMN IF NOT EXISTS midpoint_voltage       DOUBLE PRECISION,
    ADD COLUMN IF NOT EXISTS midpoint_deviation_pct DOUBLE PRECISION,
    ADD COLUMN IF NOT EXISTS min_cell_voltage       DOUBLE PRECISION,
    ADD COLUMN IF NOT EXISTS max_cell_voltage       DOUBLE PRECISION,
    ADD COLUMN IF NOT EXISTS state_of_health_pct    DOUBLE PRECISION,
    ADD COLUMN IF NOT EXISTS alarm                  TEXT,
    ADD COLUMN IF NOT EXISTS product_id             INTEGER;

COMMENT ON TABLE victron.battery_readings IS 'Battery monitor readings, one row per device per poll';
COMMENT ON COLUMN victron.battery_readings.soc IS 'State of charge, % (0-100)';
COMMENT ON COLUMN victron.battery_readings.voltage IS 'Battery voltage, V';
COMMENT ON COLUMN victron.battery_readings.current IS 'Battery current, A (positive = charging, negative = discharging)';
COMMENT ON COLUMN victron.battery_readings.power IS 'Battery power, W';
COMMENT ON COLUMN victron.battery_readings.state IS 'charging, discharging or idle';
COMMENT ON COLUMN victron.battery_readings.temperature IS 'Battery temperature, degrees Celsius';
COMMENT ON COLUMN victron.battery_readings.consumed_ah IS 'Consumed amp-hours, Ah (zero or negative while discharged)';
COMMENT ON COLUMN victron.battery_readings.time_to_go_s IS 'Time to go, s; NULL = infinite (not discharging) or unknown';
COMMENT ON COLUMN victron.battery_readings.alarm IS 'Active alarms, comma-separated names; empty = none';
COMMENT ON COLUMN victron.battery_readings.product_id IS 'Victron product id (VE.Direct PID / Modbus product id)';

-- Solar chargers (MPPT) ----------------------------------------------------------
CREATE TABLE IF NOT EXISTS victron.solar_readings (
    "timestamp"           TIMESTAMPTZ NOT NULL,
    device                TEXT NOT NULL,
    installation_id       VARCHAR(100),
    source                TEXT,
    created_at            TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    battery_voltage       DOUBLE PRECISION,
    battery_current       DOUBLE PRECISION,
    battery_temperature   DOUBLE PRECISION,
    pv_voltage            DOUBLE PRECISION,
    pv_current            DOUBLE PRECISION,
    pv_power              DOUBLE PRECISION,
    load_current          DOUBLE PRECISION,
    yield_today_kwh       DOUBLE PRECISION,
    yield_yesterday_kwh   DOUBLE PRECISION,
    yield_total_kwh       DOUBLE PRECISION,
    max_power_today_w     DOUBLE PRECISION,
    max_power_yesterday_w DOUBLE PRECISION,
    charge_state          TEXT,
    mppt_mode             TEXT,
    error_code            INTEGER,
    error                 TEXT,
    product_id            INTEGER
);
COMMENT ON TABLE victron.solar_readings IS 'MPPT solar charger readings, one row per device per poll';

-- Inverters and inverter/chargers (VE.Bus Multi/Quattro, Phoenix) ---------------
CREATE TABLE IF NOT EXISTS victron.inverter_readings (
    "timestamp"          TIMESTAMPTZ NOT NULL,
    device               TEXT NOT NULL,
    installation_id      VARCHAR(100),
    source               TEXT,
    created_at           TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    ac_in_l1_voltage     DOUBLE PRECISION,
    ac_in_l1_current     DOUBLE PRECISION,
    ac_in_l1_frequency   DOUBLE PRECISION,
    ac_in_l1_power       DOUBLE PRECISION,
    ac_in_l2_voltage     DOUBLE PRECISION,
    ac_in_l2_current     DOUBLE PRECISION,
    ac_in_l2_frequency   DOUBLE PRECISION,
    ac_in_l2_power       DOUBLE PRECISION,
    ac_in_l3_voltage     DOUBLE PRECISION,
    ac_in_l3_current     DOUBLE PRECISION,
    ac_in_l3_frequency   DOUBLE PRECISION,
    ac_in_l3_power       DOUBLE PRECISION,
    ac_out_l1_voltage    DOUBLE PRECISION,
    ac_out_l1_current    DOUBLE PRECISION,
    ac_out_l1_frequency  DOUBLE PRECISION,
    ac_out_l1_power      DOUBLE PRECISION,
    ac_out_l2_voltage    DOUBLE PRECISION,
    ac_out_l2_current    DOUBLE PRECISION,
    ac_out_l2_frequency  DOUBLE PRECISION,
    ac_out_l2_power      DOUBLE PRECISION,
    ac_out_l3_voltage    DOUBLE PRECISION,
    ac_out_l3_current    DOUBLE PRECISION,
    ac_out_l3_frequency  DOUBLE PRECISION,
    ac_out_l3_power      DOUBLE PRECISION,
    dc_voltage           DOUBLE PRECISION,
    dc_current           DOUBLE PRECISION,
    soc                  DOUBLE PRECISION,
    state                TEXT,
    mode                 TEXT,
    active_input         TEXT,
    alarms               TEXT,
    error_code           INTEGER,
    product_id           INTEGER
);
COMMENT ON TABLE victron.inverter_readings IS 'Inverter and inverter/charger readings, one row per device per poll';

-- The GX system overview (system service, unit id 100) ------------------------
CREATE TABLE IF NOT EXISTS victron.system_readings (
    "timestamp"               TIMESTAMPTZ NOT NULL,
    device                    TEXT NOT NULL,
    installation_id           VARCHAR(100),
    source                    TEXT,
    created_at                TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    ac_consumption_l1_power   DOUBLE PRECISION,
    ac_consumption_l2_power   DOUBLE PRECISION,
    ac_consumption_l3_power   DOUBLE PRECISION,
    grid_l1_power             DOUBLE PRECISION,
    grid_l2_power             DOUBLE PRECISION,
    grid_l3_power             DOUBLE PRECISION,
    genset_l1_power           DOUBLE PRECISION,
    genset_l2_power           DOUBLE PRECISION,
    genset_l3_power           DOUBLE PRECISION,
    pv_on_output_l1_power     DOUBLE PRECISION,
    pv_on_output_l2_power     DOUBLE PRECISION,
    pv_on_output_l3_power     DOUBLE PRECISION,
    pv_on_input_l1_power      DOUBLE PRECISION,
    pv_on_input_l2_power      DOUBLE PRECISION,
    pv_on_input_l3_power      DOUBLE PRECISION,
    dc_pv_power               DOUBLE PRECISION,
    dc_pv_current             DOUBLE PRECISION,
    dc_system_power           DOUBLE PRECISION,
    battery_voltage           DOUBLE PRECISION,
    battery_current           DOUBLE PRECISION,
    battery_power             DOUBLE PRECISION,
    battery_soc               DOUBLE PRECISION,
    battery_state             TEXT,
    battery_consumed_ah       DOUBLE PRECISION,
    battery_time_to_go_s      DOUBLE PRECISION,
    active_input_source       TEXT
);
COMMENT ON TABLE victron.system_readings IS 'GX system overview readings, one row per GX per poll';

-- Keys and indexes --------------------------------------------------------------
-- A legacy table whose rows share a timestamp cannot take the key; the
-- statement then fails loudly, naming the duplicated key.
CREATE UNIQUE INDEX IF NOT EXISTS battery_readings_device_timestamp_key
    ON victron.battery_readings (device, "timestamp");
CREATE UNIQUE INDEX IF NOT EXISTS solar_readings_device_timestamp_key
    ON victron.solar_readings (device, "timestamp");
CREATE UNIQUE INDEX IF NOT EXISTS inverter_readings_device_timestamp_key
    ON victron.inverter_readings (device, "timestamp");
CREATE UNIQUE INDEX IF NOT EXISTS system_readings_device_timestamp_key
    ON victron.system_readings (device, "timestamp");

CREATE INDEX IF NOT EXISTS idx_battery_readings_timestamp ON victron.battery_readings ("timestamp" DESC);
-- The legacy runner's extra indexes on (installation_id, "timestamp" DESC)
-- and (created_at DESC) serve no query (readers filter on time, or on device
-- and time; retention works on "timestamp") and slow every insert.
DROP INDEX IF EXISTS victron.idx_battery_readings_installation;
DROP INDEX IF EXISTS victron.idx_battery_readings_created_at;
CREATE INDEX IF NOT EXISTS idx_solar_readings_timestamp ON victron.solar_readings ("timestamp" DESC);
CREATE INDEX IF NOT EXISTS idx_inverter_readings_timestamp ON victron.inverter_readings ("timestamp" DESC);
CREATE INDEX IF NOT EXISTS idx_system_readings_timestamp ON victron.system_readings ("timestamp" DESC);
