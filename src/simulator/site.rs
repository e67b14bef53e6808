//! The site behind the simulated GX, as one model stepped through simulated
//! time: an off-grid house with a 1.6 kWp roof array on an MPPT, a 250 Ah
//! 48 V bank under a SmartShunt, a MultiPlus inverting for the AC loads, and
//! a generator on the Multi's AC input 1 that starts at low charge. Every
//! animated D-Bus path of [`super::gx`] is derived from [`SiteModel`], so the
//! served values obey the energy balance
//!
//! ```text
//! PV (DC, after the MPPT) + grid + genset
//!     = AC consumption + DC loads + battery charging + the Multi's losses
//! ```
//!
//! and the DC bus balances exactly as the GX computes it (dbus-systemcalc-py):
//! `battery = PV + VE.Bus − DC system`. Signs as on a GX: battery power and
//! current positive when charging; VE.Bus DC current positive from the Multi
//! into the bank, negative when inverting; grid and genset power positive
//! when imported.

use std::f64::consts::{PI, TAU};

use crate::config::ModbusClass;
use crate::reading::BATTERY_IDLE_BAND_A;

/// Seconds in a day.
pub(crate) const DAY_S: f64 = 86_400.0;
/// The longest integration step (simulated seconds).
pub(crate) const MAX_STEP_S: f64 = 10.0;
/// At most this many steps per [`SiteModel::advance_to`] (a long gap
/// between reads is crossed in coarser steps, not in a long stall).
const MAX_STEPS_PER_ADVANCE: f64 = 20_000.0;

/// Bank capacity; consumed Ah = −(100 − SOC) × 2.5, as the fixed values.
const CAPACITY_AH: f64 = 250.0;
/// Open-circuit voltage 52.41 V at 87.3 % (the fixed values' point) ...
const OCV_REF_V: f64 = 52.41;
const OCV_REF_SOC: f64 = 87.3;
/// ... rising 3.22 V over 100 % (16 LiFePO4 cells, linearised).
const OCV_V_PER_PCT: f64 = 0.0322;
/// Terminal voltage = OCV + R × I (the fixed values' 0.02 V/A).
const INTERNAL_RESISTANCE_OHM: f64 = 0.02;
/// Charge the bank accepts below [`TAPER_SOC`]; above, it tapers to 0 at 100 %.
const MAX_CHARGE_W: f64 = 3000.0;
const TAPER_SOC: f64 = 95.0;

const PV_PEAK_W: f64 = 1600.0;
const SUNRISE_H: f64 = 6.0;
const SUNSET_H: f64 = 20.0;
const PV_MPP_V: f64 = 98.4;
const MPPT_EFFICIENCY: f64 = 0.97;

const INVERTER_EFFICIENCY: f64 = 0.93;
const CHARGER_EFFICIENCY: f64 = 0.92;
const INVERTER_V: f64 = 230.1;
const INVERTER_HZ: f64 = 50.0;
const GENSET_V: f64 = 228.7;
const GENSET_HZ: f64 = 50.2;
/// AC power the Multi's charger draws from the running generator.
const GENSET_CHARGE_AC_W: f64 = 2000.0;
/// The generator starts below this SOC and stops at [`GENSET_STOP_SOC`].
const GENSET_START_SOC: f64 = 30.0;
const GENSET_STOP_SOC: f64 = 80.0;

/// DC loads on the bus (a 12 V converter): `/Dc/System/Power`.
const DC_LOAD_W: f64 = 35.0;
/// Time-to-go is capped at 10 days (the register holds up to 75 days).
const MAX_TIME_TO_GO_S: f64 = 864_000.0;

/// The site's power flows at one instant: W, and V and A for the bank.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub(crate) struct Flows {
    /// Power the panels give the MPPT (its `/Yield/Power`).
    pub(crate) pv_panel_w: f64,
    /// The MPPT's output into the DC bus (the system's `/Dc/Pv/Power`).
    pub(crate) pv_dc_w: f64,
    /// Whether the MPPT holds PV back because the bank takes no more.
    pub(crate) pv_limited: bool,
    /// AC loads on the Multi's output (`/Ac/Consumption/L1/Power`).
    pub(crate) ac_load_w: f64,
    /// DC loads (`/Dc/System/Power`).
    pub(crate) dc_load_w: f64,
    /// Power imported from the grid: this site has none.
    pub(crate) grid_w: f64,
    /// Power drawn from the generator on AC input 1.
    pub(crate) genset_w: f64,
    /// The Multi's DC side: positive into the bank, negative when inverting.
    pub(crate) vebus_dc_w: f64,
    /// Battery power, positive when charging.
    pub(crate) battery_w: f64,
    /// Battery terminal voltage.
    pub(crate) battery_v: f64,
    /// Battery current, positive when charging.
    pub(crate) battery_a: f64,
}

impl Flows {}

/// The whole simulated site; every animated value is derived from it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SiteModel {
    /// Simulated seconds since the model started.
    clock_s: f64,
    /// Simulated time of day, `0..DAY_S`.
    time_of_day_s: f64,
    /// State of charge, %.
    soc: f64,
    /// The generator runs (hysteresis between the start and stop SOC).
    genset_running: bool,
    yield_today_kwh: f64,
    max_power_today_w: f64,
    yield_yesterday_kwh: f64,
    max_power_yesterday_w: f64,
    yield_total_kwh: f64,
    /// The flows at `clock_s`, recomputed after every step.
    flows: Flows,
}

impl SiteModel {
    /// The site at `start_hour` (0–24, simulated local time) with the bank at
    /// `soc` %. Today's yield so far is the clear-sky harvest since midnight.
    pub(crate) fn new(start_hour: f64, soc: f64) -> Self {
        let time_of_day_s = (start_hour * 3600.0).rem_euclid(DAY_S);
        let (mut yield_today_kwh, mut max_power_today_w) = (0.0_f64, 0.0_f64);
        let mut t = 0.0;
        while t < time_of_day_s {
            let dt = 60.0_f64.min(time_of_day_s - t);
            let w = pv_panel_w(t / 3600.0, t) * MPPT_EFFICIENCY;
            yield_today_kwh += w * dt / 3.6e6;
            max_power_today_w = max_power_today_w.max(w);
            t += dt;
        }
        let soc = soc.clamp(0.0, 100.0);
        let mut site = Self {
            clock_s: 0.0,
            time_of_day_s,
            soc,
            genset_running: soc < GENSET_START_SOC,
            yield_today_kwh,
            max_power_today_w,
            yield_yesterday_kwh: 5.12,
            max_power_yesterday_w: 1610.0,
            yield_total_kwh: 1234.5,
            flows: Flows::default(),
        };
        site.flows = site.compute_flows();
        site
    }

    /// Simulated time of day, in hours (0 ≤ h < 24).
    pub(crate) fn time_of_day_h(&self) -> f64 {
        self.time_of_day_s / 3600.0
    }

    #[cfg(test)]
    /// State of charge, %.
    pub(crate) fn soc(&self) -> f64 {
        self.soc
    }

    #[cfg(test)]
    /// The flows now.
    pub(crate) fn flows(&self) -> Flows {
        self.flows
    }

    /// Steps the model to `clock_s` simulated seconds since it started, in
    /// equal steps of at most [`MAX_STEP_S`] (coarser only for a gap of more
    /// than 20 000 of them). Earlier times leave it unchanged.
    pub(crate) fn advance_to(&mut self, clock_s: f64) {
        let gap = clock_s - self.clock_s;
        if gap.is_nan() || gap <= 0.0 {
            return;
        }
        let steps = (gap / MAX_STEP_S).ceil().clamp(1.0, MAX_STEPS_PER_ADVANCE);
        let dt = gap / steps;
        for _ in 0..steps as u32 {
            self.step(dt);
        }
        self.clock_s = clock_s;
    }

    /// One explicit step of `dt` simulated seconds: the bank charges or
    /// discharges with the current flows, the yields grow, the generator
    /// starts or stops, midnight rolls today's yield into yesterday's.
    pub(crate) fn step(&mut self, dt: f64) {
        if dt.is_nan() || dt <= 0.0 {
            return;
        }
        let f = self.flows;
        let delta_soc = f.battery_a * dt / 3600.0 / CAPACITY_AH * 100.0;
        self.soc = (self.soc + delta_soc).clamp(0.0, 100.0);
        let kwh = f.pv_dc_w * dt / 3.6e6;
        self.yield_today_kwh += kwh;
        self.yield_total_kwh += kwh;
        self.max_power_today_w = self.max_power_today_w.max(f.pv_dc_w);
        if self.genset_running && self.soc >= GENSET_STOP_SOC {
            self.genset_running = false;
        } else if !self.genset_running && self.soc < GENSET_START_SOC {
            self.genset_running = true;
        }
        self.clock_s += dt;
        self.time_of_day_s += dt;
        if self.time_of_day_s >= DAY_S {
            self.time_of_day_s = self.time_of_day_s.rem_euclid(DAY_S);
            self.yield_yesterday_kwh = self.yield_today_kwh;
            self.max_power_yesterday_w = self.max_power_today_w;
            self.yield_today_kwh = 0.0;
            self.max_power_today_w = 0.0;
        }
        self.flows = self.compute_flows();
    }

    /// The flows for the present state. The bank takes what the sources
    /// leave after the loads, up to its acceptance: the Multi's charger
    /// takes what PV leaves of it, and PV is held back only beyond it.
    fn compute_flows(&self) -> Flows {
        let hour = self.time_of_day_h();
        let ac_load_w = ac_load_w(hour, self.clock_s);
        let dc_load_w = DC_LOAD_W;
        let pv_available_w = pv_panel_w(hour, self.clock_s) * MPPT_EFFICIENCY;
        let (inverter_dc_w, charger_max_dc_w) = if self.genset_running {
            // Passthru: the generator feeds the loads, the charger the bank.
            (0.0, GENSET_CHARGE_AC_W * CHARGER_EFFICIENCY)
        } else {
            (ac_load_w / INVERTER_EFFICIENCY, 0.0)
        };
        let accept_w = charge_acceptance_w(self.soc);
        let headroom_w = accept_w - (pv_available_w - dc_load_w - inverter_dc_w);
        let charger_dc_w = charger_max_dc_w.min(headroom_w.max(0.0));
        let pv_dc_w = pv_available_w
            .min(accept_w + dc_load_w + inverter_dc_w - charger_dc_w)
            .max(0.0);
        let vebus_dc_w = charger_dc_w - inverter_dc_w;
        let battery_w = pv_dc_w + vebus_dc_w - dc_load_w;
        let genset_w = if self.genset_running {
            ac_load_w + charger_dc_w / CHARGER_EFFICIENCY
        } else {
            0.0
        };
        let battery_v = terminal_voltage(self.soc, battery_w);
        Flows {
            pv_panel_w: pv_dc_w / MPPT_EFFICIENCY,
            pv_dc_w,
            pv_limited: pv_dc_w + 1e-9 < pv_available_w,
            ac_load_w,
            dc_load_w,
            grid_w: 0.0,
            genset_w,
            vebus_dc_w,
            battery_w,
            battery_v,
            battery_a: battery_w / battery_v,
        }
    }

    /// The D-Bus value of `path` of `class` now; `None` for paths the
    /// simulated devices do not have (the GX serves 0).
    pub(crate) fn value(&self, class: ModbusClass, path: &str) -> Option<f64> {
        let f = &self.flows;
        let v = f.battery_v;
        let genset = self.genset_running;
        let producing = f.pv_panel_w > 0.0;
        let consumed_ah = -(100.0 - self.soc) / 100.0 * CAPACITY_AH;
        let time_to_go_s = if f.battery_a < -BATTERY_IDLE_BAND_A {
            (self.soc / 100.0 * CAPACITY_AH / -f.battery_a * 3600.0).min(MAX_TIME_TO_GO_S)
        } else {
            0.0 // charging or idle: "infinite", which the GX serves as 0
        };
        let battery_state = if f.battery_a > BATTERY_IDLE_BAND_A {
            1.0
        } else if f.battery_a < -BATTERY_IDLE_BAND_A {
            2.0
        } else {
            0.0
        };
        let pv_v = if producing {
            PV_MPP_V * (0.94 + 0.06 * f.pv_panel_w / PV_PEAK_W)
        } else {
            0.0
        };
        let (out_v, out_hz) = if genset {
            (GENSET_V, GENSET_HZ)
        } else {
            (INVERTER_V, INVERTER_HZ)
        };
        let value = match (class, path) {
            (ModbusClass::System, "/Ac/Consumption/L1/Power") => f.ac_load_w,
            (ModbusClass::System, "/Ac/Grid/L1/Power") => f.grid_w,
            (ModbusClass::System, "/Ac/Genset/L1/Power") => f.genset_w,
            (ModbusClass::System, "/Ac/ActiveIn/Source") => {
                if genset {
                    2.0 // Generator
                } else {
                    240.0 // Not connected
                }
            }
            (ModbusClass::System, "/Dc/Battery/Voltage") => v,
            (ModbusClass::System, "/Dc/Battery/Current") => f.battery_a,
            (ModbusClass::System, "/Dc/Battery/Power") => f.battery_w,
            (ModbusClass::System, "/Dc/Battery/Soc") => self.soc,
            (ModbusClass::System, "/Dc/Battery/State") => battery_state,
            (ModbusClass::System, "/Dc/Battery/ConsumedAmphours") => consumed_ah,
            (ModbusClass::System, "/Dc/Battery/TimeToGo") => time_to_go_s,
            (ModbusClass::System, "/Dc/Pv/Power") => f.pv_dc_w,
            (ModbusClass::System, "/Dc/Pv/Current") => f.pv_dc_w / v,
            (ModbusClass::System, "/Dc/System/Power") => f.dc_load_w,
            (ModbusClass::System, "/Dc/Vebus/Current") => f.vebus_dc_w / v,
            (ModbusClass::System, "/Dc/Vebus/Power") => f.vebus_dc_w,
            (ModbusClass::Battery, "/Dc/0/Voltage") => v,
            (ModbusClass::Battery, "/Dc/0/Current") => f.battery_a,
            (ModbusClass::Battery, "/Dc/0/Power") => f.battery_w,
            (ModbusClass::Battery, "/ConsumedAmphours") => consumed_ah,
            (ModbusClass::Battery, "/Soc") => self.soc,
            (ModbusClass::Battery, "/TimeToGo") => time_to_go_s,
            (ModbusClass::Battery, "/History/ChargeCycles") => 42.0,
            (ModbusClass::Battery, "/History/DeepestDischarge") => -180.0,
            (ModbusClass::SolarCharger, "/Dc/0/Voltage") => v,
            (ModbusClass::SolarCharger, "/Dc/0/Current") => f.pv_dc_w / v,
            (ModbusClass::SolarCharger, "/Mode") => 1.0,
            (ModbusClass::SolarCharger, "/State") => {
                if !producing {
                    0.0 // Off
                } else if self.soc >= 99.5 {
                    5.0 // Float
                } else if self.soc >= TAPER_SOC {
                    4.0 // Absorption
                } else {
                    3.0 // Bulk
                }
            }
            (ModbusClass::SolarCharger, "/Pv/V") => pv_v,
            (ModbusClass::SolarCharger, "/Pv/I") => {
                if producing {
                    f.pv_panel_w / pv_v
                } else {
                    0.0
                }
            }
            (ModbusClass::SolarCharger, "/History/Daily/0/Yield") => self.yield_today_kwh,
            (ModbusClass::SolarCharger, "/History/Daily/0/MaxPower") => self.max_power_today_w,
            (ModbusClass::SolarCharger, "/History/Daily/1/Yield") => self.yield_yesterday_kwh,
            (ModbusClass::SolarCharger, "/History/Daily/1/MaxPower") => self.max_power_yesterday_w,
            (ModbusClass::SolarCharger, "/ErrorCode") => 0.0,
            (ModbusClass::SolarCharger, "/Yield/Power") => f.pv_panel_w,
            (ModbusClass::SolarCharger, "/Yield/User") => self.yield_total_kwh,
            (ModbusClass::SolarCharger, "/MppOperationMode") => {
                if !producing {
                    0.0 // Off
                } else if f.pv_limited {
                    1.0 // Voltage/current limited
                } else {
                    2.0 // MPPT active
                }
            }
            (ModbusClass::VeBus, "/Ac/NumberOfPhases") => 1.0,
            (ModbusClass::VeBus, "/Ac/ActiveIn/L1/V") => {
                if genset {
                    GENSET_V
                } else {
                    0.0
                }
            }
            (ModbusClass::VeBus, "/Ac/ActiveIn/L1/I") => f.genset_w / GENSET_V,
            (ModbusClass::VeBus, "/Ac/ActiveIn/L1/F") => {
                if genset {
                    GENSET_HZ
                } else {
                    0.0
                }
            }
            (ModbusClass::VeBus, "/Ac/ActiveIn/L1/P") => f.genset_w,
            (ModbusClass::VeBus, "/Ac/Out/L1/V") => out_v,
            (ModbusClass::VeBus, "/Ac/Out/L1/I") => f.ac_load_w / out_v,
            (ModbusClass::VeBus, "/Ac/Out/L1/F") => out_hz,
            (ModbusClass::VeBus, "/Ac/Out/L1/P") => f.ac_load_w,
            (ModbusClass::VeBus, "/Ac/ActiveIn/ActiveInput") => {
                if genset {
                    0.0 // AC Input 1
                } else {
                    240.0 // Disconnected
                }
            }
            (ModbusClass::VeBus, "/Dc/0/Voltage") => v,
            (ModbusClass::VeBus, "/Dc/0/Current") => f.vebus_dc_w / v,
            (ModbusClass::VeBus, "/Soc") => self.soc,
            (ModbusClass::VeBus, "/State") => {
                if !genset {
                    9.0 // Inverting
                } else if self.soc < 70.0 {
                    3.0 // Bulk
                } else {
                    4.0 // Absorption
                }
            }
            (ModbusClass::VeBus, "/VebusError") => 0.0,
            (ModbusClass::VeBus, "/Mode") => 3.0,
            _ => return None,
        };
        Some(value)
    }
}

/// Open-circuit voltage at `soc` %.
fn open_circuit_voltage(soc: f64) -> f64 {
    OCV_REF_V + OCV_V_PER_PCT * (soc - OCV_REF_SOC)
}

/// Terminal voltage while the bank takes `power_w` (negative: gives):
/// `V = OCV + R·I` with `I = P / V`, i.e. `V² − OCV·V − R·P = 0`.
fn terminal_voltage(soc: f64, power_w: f64) -> f64 {
    let ocv = open_circuit_voltage(soc);
    (ocv + (ocv * ocv + 4.0 * INTERNAL_RESISTANCE_OHM * power_w)
        .max(0.0)
        .sqrt())
        / 2.0
}

/// The most the bank takes at `soc` %: full below the taper, 0 when full.
fn charge_acceptance_w(soc: f64) -> f64 {
    MAX_CHARGE_W * ((100.0 - soc) / (100.0 - TAPER_SOC)).clamp(0.0, 1.0)
}

/// Panel power at `hour` (clear sky: a sine arch from sunrise to sunset),
/// dimmed up to 25 % by passing clouds that move with the clock.
fn pv_panel_w(hour: f64, clock_s: f64) -> f64 {
    if hour <= SUNRISE_H || hour >= SUNSET_H {
        return 0.0;
    }
    let sun = (PI * (hour - SUNRISE_H) / (SUNSET_H - SUNRISE_H))
        .sin()
        .powf(1.3);
    let wave = |period_s: f64, phase: f64| 0.5 + 0.5 * (TAU * clock_s / period_s + phase).sin();
    let clouds = 1.0 - 0.25 * wave(1370.0, 0.0) * wave(410.0, 1.3);
    PV_PEAK_W * sun * clouds
}

/// AC loads at `hour`: standby, a fridge cycling 15 of every 40 minutes,
/// the house awake 06:30–22:30, breakfast and dinner peaks, a small ripple.
fn ac_load_w(hour: f64, clock_s: f64) -> f64 {
    let bump = |start: f64, end: f64| {
        if hour > start && hour < end {
            0.5 - 0.5 * (TAU * (hour - start) / (end - start)).cos()
        } else {
            0.0
        }
    };
    let awake = if (6.5..22.5).contains(&hour) {
        220.0
    } else {
        0.0
    };
    let fridge = if clock_s.rem_euclid(2400.0) < 900.0 {
        110.0
    } else {
        0.0
    };
    let ripple = 40.0 * (TAU * clock_s / 173.0).sin();
    180.0 + awake + fridge + 900.0 * bump(6.75, 8.75) + 1100.0 * bump(17.5, 21.5) + ripple
}

#[cfg(test)]
mod tests {
    use super::*;
    use ModbusClass::{Battery, SolarCharger, System, VeBus};

    fn get(site: &SiteModel, class: ModbusClass, path: &str) -> f64 {
        site.value(class, path)
            .unwrap_or_else(|| panic!("{class:?} {path} not simulated"))
    }

    #[test]
    fn the_site_balances_and_the_soc_follows_the_battery_over_a_day() {
        // Midnight at 40 %: the night drains the bank below the generator's
        // start, the generator charges it, the sun takes over up to the
        // taper (PV held back), the evening peak drains it again.
        let mut site = SiteModel::new(0.0, 40.0);
        let (mut charging, mut discharging, mut genset, mut limited) = (0, 0, 0, 0);
        let mut pv_peak = (0.0_f64, 0.0_f64);
        for _ in 0..(DAY_S / MAX_STEP_S) as usize {
            let hour = site.time_of_day_h();
            let pv = get(&site, System, "/Dc/Pv/Power");
            let grid = get(&site, System, "/Ac/Grid/L1/Power");
            let gen_w = get(&site, System, "/Ac/Genset/L1/Power");
            let load = get(&site, System, "/Ac/Consumption/L1/Power");
            let dc_loads = get(&site, System, "/Dc/System/Power");
            let battery = get(&site, System, "/Dc/Battery/Power");
            let at = format!("at {hour:.3} h");

            // AC side: only the Multi's conversion losses remain, 0–8 %.
            let residual = pv + grid + gen_w - load - dc_loads - battery;
            assert!(residual >= -1e-6, "{at}: residual {residual} W");
            assert!(
                residual <= 0.08 * (load + gen_w) + 1e-6,
                "{at}: {residual} W lost"
            );
            // DC bus, from the devices, as systemcalc derives /Dc/System/Power.
            let mppt_w = get(&site, SolarCharger, "/Dc/0/Voltage")
                * get(&site, SolarCharger, "/Dc/0/Current");
            let vebus_w = get(&site, VeBus, "/Dc/0/Voltage") * get(&site, VeBus, "/Dc/0/Current");
            let shunt_w = get(&site, Battery, "/Dc/0/Power");
            assert!((mppt_w + vebus_w - shunt_w - dc_loads).abs() < 1e-6, "{at}");
            assert!((mppt_w - pv).abs() < 1e-6, "{at}");
            assert!(
                get(&site, SolarCharger, "/Yield/Power") >= pv,
                "{at}: MPPT loss"
            );
            assert_eq!(get(&site, VeBus, "/Ac/Out/L1/P"), load, "{at}");
            // One battery, one sign everywhere; V × I = P.
            let current = get(&site, Battery, "/Dc/0/Current");
            let volts = get(&site, Battery, "/Dc/0/Voltage");
            assert!((volts * current - battery).abs() < 1e-6, "{at}");
            assert_eq!(get(&site, System, "/Dc/Battery/Current"), current, "{at}");
            assert_eq!(shunt_w, battery, "{at}");
            assert!(battery * current >= 0.0, "{at}");
            let state = get(&site, System, "/Dc/Battery/State");
            let expected = if current > BATTERY_IDLE_BAND_A {
                1.0
            } else if current < -BATTERY_IDLE_BAND_A {
                2.0
            } else {
                0.0
            };
            assert_eq!(state, expected, "{at}: state for {current} A");
            // Night and day.
            if !(SUNRISE_H..=SUNSET_H).contains(&hour) {
                assert_eq!(pv, 0.0, "{at}: no sun");
            }
            if pv > pv_peak.1 {
                pv_peak = (hour, pv);
            }
            // The generator shows on the system and on the Multi alike.
            let running = get(&site, System, "/Ac/ActiveIn/Source") == 2.0;
            assert_eq!(
                running,
                get(&site, VeBus, "/Ac/ActiveIn/ActiveInput") == 0.0
            );
            assert_eq!(running, gen_w > 0.0, "{at}");
            assert_eq!(get(&site, VeBus, "/Ac/ActiveIn/L1/P"), gen_w, "{at}");

            charging += usize::from(current > BATTERY_IDLE_BAND_A);
            discharging += usize::from(current < -BATTERY_IDLE_BAND_A);
            genset += usize::from(running);
            limited += usize::from(get(&site, SolarCharger, "/MppOperationMode") == 1.0);

            // SOC rises while charging and falls while discharging.
            let soc = get(&site, Battery, "/Soc");
            site.step(MAX_STEP_S);
            let delta = get(&site, Battery, "/Soc") - soc;
            assert!(
                delta * battery >= 0.0,
                "{at}: SOC {delta:+} % at {battery} W"
            );
            if battery.abs() >= 1.0 {
                assert_ne!(delta, 0.0, "{at}: SOC still at {battery} W");
            }
            assert!((0.0..=100.0).contains(&site.soc()));
        }
        assert!(
            charging > 1000 && discharging > 1000,
            "{charging} / {discharging}"
        );
        assert!(genset > 0, "the generator ran");
        assert!(limited > 0, "PV was held back near full");
        assert!(
            (11.0..15.0).contains(&pv_peak.0),
            "PV peaks at {:?}",
            pv_peak
        );
        assert!(
            site.value(SolarCharger, "/History/Daily/1/Yield").unwrap() > 4.0,
            "midnight rolled today's yield into yesterday's"
        );
    }

    #[test]
    fn a_demo_minute_shows_a_morning() {
        // The demo's clock: 360 simulated seconds per second from 05:30.
        let mut site = SiteModel::new(5.5, 87.3);
        assert_eq!(site.flows().pv_dc_w, 0.0);
        assert!(
            site.flows().battery_a < -BATTERY_IDLE_BAND_A,
            "night: discharging"
        );
        let mut lowest = site.soc();
        let mut turned = None;
        for second in 1..=60 {
            site.advance_to(f64::from(second) * 360.0);
            lowest = lowest.min(site.soc());
            if turned.is_none() && site.flows().battery_a > BATTERY_IDLE_BAND_A {
                turned = Some(second);
            }
        }
        assert!((site.time_of_day_h() - 11.5).abs() < 1e-9);
        assert!(site.flows().pv_dc_w > 900.0, "{:?}", site.flows());
        assert!(site.flows().battery_a > 5.0, "late morning: charging");
        let turned = turned.expect("the bank turned to charging");
        assert!((20..50).contains(&turned), "turned at {turned} s");
        assert!(lowest < 87.3 && site.soc() > lowest, "SOC fell, then rose");
    }

    #[test]
    fn the_model_at_the_fixed_point_matches_the_fixed_voltage() {
        // The fixed values' battery point (87.3 %, −8.2 A) on the model's curve.
        let power = -8.2 * (52.41 - 0.02 * 8.2);
        assert!((terminal_voltage(87.3, power) - 52.246).abs() < 1e-9);
    }
}
