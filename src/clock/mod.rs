//! Measurement time a gateway without a real-time clock can trust.
//!
//! Sources note when they measured on two clocks ([`Taken`]): the boot
//! clock, which only moves forward, and the wall clock, which may be wrong
//! (a Raspberry Pi boots with the time it last saved, or 1970) and may step
//! (NTP's first sync, a person setting the date). The [`TimeKeeper`] decides
//! which wall time such a moment was, from the kernel's synchronisation
//! state and the references the daemon has: each GX's own clock (read with
//! the system overview every poll) and the database server's (measured over
//! the round trip). The rule, one place ([`TimeKeeper::current_offset`]):
//!
//! - the local clock is trusted while it agrees with the best reference
//!   within [`TOLERANCE_US`], or, with no reference, while the kernel says it
//!   is synchronised;
//! - otherwise readings are stamped from the best reference (a GX's clock,
//!   or the database's when the two disagree), or, with none at the moment,
//!   from the last trusted offset carried on the boot clock;
//! - with no reference and no trusted offset yet, nobody knows the time:
//!   readings are *held* (the local store keeps them with their boot-clock
//!   moment, unforwarded) until a reference answers or the clock is set
//!   while the daemon runs, and then re-stamped (`wall = boot + offset`).

mod estimate;
mod kernel;
mod monotonic;

use std::collections::BTreeMap;
use std::sync::Mutex;

use chrono::{DateTime, TimeZone, Utc};
use estimate::Estimate;
pub(crate) use monotonic::{Mono, boot_id};

/// The largest disagreement (µs) with a reference at which the local clock
/// is still trusted.
pub(crate) const TOLERANCE_US: i64 = 2_000_000;

/// A change of the wall clock's offset from the boot clock beyond this (µs)
/// is a step. (NTP slews by at most 0.5 ms a second; a step is a jump.)
const STEP_US: i64 = 1_000_000;

/// A reference sample older than this (s) no longer counts.
const FRESH_S: f64 = 120.0;

/// A hold shorter than this (s) is not logged.
const HELD_QUIET_S: f64 = 5.0;

/// How long the kernel's answer is reused (s).
const KERNEL_EVERY_S: f64 = 5.0;

/// No clock reads earlier than this (2025-01-01 UTC, µs): a wall time before
/// it is wrong (a machine that came up at 1970), and so is a reference
/// that says so.
pub(crate) const EARLIEST_PLAUSIBLE_US: i64 = 1_735_689_600_000_000;

/// Whether the kernel says its clock is synchronised (`None`: it cannot be
/// asked).
pub fn kernel_synchronised() -> Option<bool> {
    kernel::synchronised()
}

/// When a source measured, on both clocks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Taken {
    /// The boot clock.
    pub(crate) mono: Mono,
    /// The wall clock, as the machine has it.
    pub(crate) wall: DateTime<Utc>,
}

impl Taken {
    /// Now.
    pub(crate) fn now() -> Self {
        Self {
            mono: Mono::now(),
            wall: Utc::now(),
        }
    }
}

/// What measurement times are taken from.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Basis {
    /// The local clock: synchronised, or agreeing with the references.
    #[default]
    Local,
    /// A GX's clock: the local clock disagrees with it.
    Gx,
    /// The database server's clock: the local clock disagrees with it.
    Database,
    /// No reference at the moment: the last trusted offset, carried on the
    /// boot clock.
    Carried,
    /// Nobody knows the time yet: readings are held with their boot-clock
    /// moment.
    Held,
}

impl Basis {
    /// The word `status` shows.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::Gx => "gx",
            Self::Database => "database",
            Self::Carried => "carried",
            Self::Held => "held",
        }
    }

    /// How this basis is said in a log line or the status.
    fn describe(self) -> &'static str {
        match self {
            Self::Local => "the local clock",
            Self::Gx => "the GX's clock",
            Self::Database => "the database server's clock",
            Self::Carried => "the last trusted time, carried on the boot clock",
            Self::Held => "nothing yet: readings are held until a clock reference answers",
        }
    }
}

/// One reference as `status` and `/metrics` show it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) struct ReferenceReport {
    /// `gx HOST:PORT` or `database`.
    pub(crate) name: String,
    /// Local clock minus the reference (s): positive when the local clock is
    /// ahead.
    pub(crate) offset_s: f64,
    /// How far the reference's true offset may be from that (s).
    pub(crate) uncertainty_s: f64,
    /// Age of its last sample (s).
    pub(crate) age_s: f64,
}

/// The clock's state, for the status document, `status` and `/metrics`.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct ClockReport {
    /// What measurement times are taken from now.
    pub(crate) basis: Basis,
    /// The kernel's synchronisation state (`None`: it cannot be asked).
    pub(crate) synchronised: Option<bool>,
    /// The local clock minus the best fresh reference (s).
    pub(crate) offset_s: Option<f64>,
    /// Every reference with a sample.
    pub(crate) references: Vec<ReferenceReport>,
    /// Steps of the wall clock seen since start.
    pub(crate) steps: u64,
    /// The last step (s, negative: back).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) last_step_s: Option<f64>,
    /// How long readings have been held (s), while they are.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) held_for_s: Option<f64>,
    /// Whether a database is configured: held readings then hold back
    /// forwarding (without one they wait in the store, as every reading
    /// does, until they can be re-stamped).
    pub(crate) forwarding: bool,
}

impl ClockReport {
    /// Whether readings are held back because of the clock: what makes a
    /// daemon "degraded".
    pub(crate) fn holds_readings(&self) -> bool {
        self.basis == Basis::Held && self.forwarding
    }

    /// One line for `status`: the basis and the offset to each reference.
    pub(crate) fn summary(&self) -> String {
        let mut line = match self.synchronised {
            Some(true) => "synchronised".to_string(),
            Some(false) => "not synchronised".to_string(),
            None => "sync unknown".to_string(),
        };
        line.push_str(&format!(", times from {}", self.basis.as_str()));
        if let Some(held) = self.held_for_s {
            line.push_str(&format!(" (readings held for {held:.0} s)"));
        }
        for reference in &self.references {
            line.push_str(&format!(
                ", {:+.3} s to {}",
                reference.offset_s, reference.name
            ));
        }
        if self.steps > 0 {
            line.push_str(&format!(
                ", {} step(s), last {:+.3} s",
                self.steps,
                self.last_step_s.unwrap_or_default()
            ));
        }
        line
    }
}

/// Decides measurement times; shared by the sources (which feed it GX
/// clock samples), the database side (database clock samples) and the sink
/// (which stamps every reading with it).
#[derive(Debug)]
pub(crate) struct TimeKeeper {
    /// `clock.trust_local`: the machine has a clock that is always right
    /// (a battery-backed RTC, GPS): no checks.
    trust_local: bool,
    /// A database is configured (see [`ClockReport::forwarding`]).
    forwarding: bool,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// The wall clock minus the boot clock at the last look (µs).
    local_offset: Option<i64>,
    steps: u64,
    last_step_us: Option<i64>,
    /// The wall clock was set (stepped) while the daemon ran.
    stepped: bool,
    /// A step seen but not yet logged with what follows from it.
    unlogged_step: Option<i64>,
    gx: BTreeMap<String, Estimate>,
    database: Option<Estimate>,
    /// The offset (wall − boot, µs) of the current basis; for `Held`, the
    /// last trusted one, if any.
    anchor: Option<i64>,
    basis: Basis,
    /// The basis the log last reported (the local clock until told otherwise).
    logged_basis: Basis,
    held_since: Option<Mono>,
    kernel: Option<(Mono, Option<bool>)>,
    warned_gx_disagrees: bool,
}

impl TimeKeeper {
    /// A keeper. `forwarding`: a database is configured.
    pub(crate) fn new(trust_local: bool, forwarding: bool) -> Self {
        Self {
            trust_local,
            forwarding,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A GX answered `seconds` (its `/DateAndTime`, UTC) to a request sent
    /// at `sent` and answered at `received`.
    pub(crate) fn gx_sample(&self, gx: &str, sent: Mono, received: Mono, seconds: u64) {
        let Ok(seconds) = i64::try_from(seconds) else {
            return;
        };
        let reading_us = seconds.saturating_mul(1_000_000);
        if reading_us < EARLIEST_PLAUSIBLE_US {
            return;
        }
        let sample = Estimate::sample(reading_us, 1_000_000, sent, received);
        let mut inner = self.lock();
        match inner.gx.get_mut(gx) {
            Some(estimate) => {
                if let Some(moved) = estimate.narrow(sample) {
                    tracing::warn!(gx, step_s = moved as f64 / 1e6, "The GX's clock stepped.");
                }
            }
            None => {
                inner.gx.insert(gx.to_string(), sample);
            }
        }
    }

    /// The database server said `server` (its `clock_timestamp()`) to a
    /// query sent at `sent` and answered at `received`.
    pub(crate) fn database_sample(&self, sent: Mono, received: Mono, server: DateTime<Utc>) {
        let reading_us = server.timestamp_micros();
        if reading_us < EARLIEST_PLAUSIBLE_US {
            return;
        }
        let sample = Estimate::sample(reading_us, 0, sent, received);
        let mut inner = self.lock();
        match &mut inner.database {
            Some(estimate) => {
                estimate.narrow(sample);
            }
            None => inner.database = Some(sample),
        }
    }

    /// Whether the database side should sample the server's clock now: no
    /// sample for 30 s, or every status write while the local clock is not
    /// trusted and no GX gives the time.
    pub(crate) fn wants_database_sample(&self) -> bool {
        let inner = self.lock();
        let now = Mono::now();
        let stale = inner
            .database
            .is_none_or(|e| now.seconds_since(e.at) >= 30.0);
        stale || matches!(inner.basis, Basis::Held | Basis::Carried | Basis::Database)
    }

    /// The wall time of `taken`, or `None` while nobody knows it (the
    /// reading is held). (The sink stamps a batch with one
    /// [`Self::current_offset`].)
    #[cfg(test)]
    fn stamp(&self, taken: Taken) -> Option<DateTime<Utc>> {
        let (basis, offset) = self.current_offset()?;
        Some(stamp_with(taken, basis, offset))
    }

    /// The basis and offset (wall − boot, µs) measurement times are taken
    /// with now; `None` while readings are held.
    pub(crate) fn current_offset(&self) -> Option<(Basis, i64)> {
        let mut inner = self.lock();
        self.decide(&mut inner);
        match inner.basis {
            Basis::Held => None,
            basis => inner.anchor.map(|offset| (basis, offset)),
        }
    }

    /// What measurement times are taken from now.
    #[cfg(test)]
    fn basis(&self) -> Basis {
        let mut inner = self.lock();
        self.decide(&mut inner);
        inner.basis
    }

    /// The time now on the basis readings are stamped with; `None` while
    /// readings are held.
    pub(crate) fn now(&self) -> Option<DateTime<Utc>> {
        let (basis, offset) = self.current_offset()?;
        Some(stamp_with(Taken::now(), basis, offset))
    }

    /// The state for `status` and `/metrics`.
    pub(crate) fn report(&self) -> ClockReport {
        let mut inner = self.lock();
        self.decide(&mut inner);
        let now = Mono::now();
        let local = inner.local_offset.unwrap_or_default();
        // Milliseconds are what an operator reads (and keep the status
        // document small).
        let ms = |s: f64| (s * 1e3).round() / 1e3;
        let reference = |name: String, e: &Estimate| ReferenceReport {
            name,
            offset_s: ms((local - e.offset()) as f64 / 1e6),
            uncertainty_s: ms(e.uncertainty() as f64 / 1e6),
            age_s: ms(now.seconds_since(e.at)),
        };
        let mut references: Vec<ReferenceReport> = inner
            .gx
            .iter()
            .map(|(name, e)| reference(format!("gx {name}"), e))
            .collect();
        if let Some(e) = &inner.database {
            references.push(reference("database".into(), e));
        }
        ClockReport {
            basis: inner.basis,
            synchronised: inner.kernel.and_then(|(_, s)| s),
            offset_s: inner
                .best_reference(now)
                .map(|(_, offset)| ms((local - offset) as f64 / 1e6)),
            references,
            steps: inner.steps,
            last_step_s: inner.last_step_us.map(|us| us as f64 / 1e6),
            held_for_s: inner.held_since.map(|since| now.seconds_since(since)),
            forwarding: self.forwarding,
        }
    }

    /// Looks at the clocks and applies the rule (see the module doc).
    fn decide(&self, inner: &mut Inner) {
        let now = Mono::now();
        let wall_us = Utc::now().timestamp_micros();
        let local = wall_us - now.micros();
        if let Some(previous) = inner.local_offset {
            let step = local - previous;
            if step.abs() > STEP_US {
                inner.steps += 1;
                inner.last_step_us = Some(step);
                inner.stepped = true;
                inner.unlogged_step = Some(step);
            }
        }
        inner.local_offset = Some(local);
        if inner
            .kernel
            .is_none_or(|(at, _)| now.seconds_since(at) >= KERNEL_EVERY_S)
        {
            inner.kernel = Some((now, kernel::synchronised()));
        }
        let synchronised = inner.kernel.and_then(|(_, s)| s) == Some(true);
        let plausible = wall_us >= EARLIEST_PLAUSIBLE_US;
        // Hysteresis: the local clock is left beyond the tolerance and taken
        // back only within half of it, so that a clock near the edge does
        // not flip (and move stamps back) with every estimate.
        let tolerance = if inner.basis == Basis::Local {
            TOLERANCE_US
        } else {
            TOLERANCE_US / 2
        };
        let agrees = |offset: i64| plausible && (local - offset).abs() <= tolerance;
        let database_fresh = inner
            .database
            .as_ref()
            .is_some_and(|e| now.seconds_since(e.at) <= FRESH_S);

        let (basis, offset) = if self.trust_local {
            (Basis::Local, Some(local))
        } else if let Some((basis, offset)) = inner.best_reference(now) {
            if agrees(offset) {
                (Basis::Local, Some(local))
            } else if basis == Basis::Gx && synchronised && plausible && !database_fresh {
                // A synchronised kernel outranks a GX alone.
                if !inner.warned_gx_disagrees {
                    inner.warned_gx_disagrees = true;
                    tracing::warn!(
                        offset_s = (local - offset) as f64 / 1e6,
                        "The GX's clock disagrees with this machine's synchronised clock; readings keep the local time."
                    );
                }
                (Basis::Local, Some(local))
            } else {
                (basis, Some(offset))
            }
        } else if synchronised && plausible {
            (Basis::Local, Some(local))
        } else if let Some(anchor) = inner.anchor {
            if agrees(anchor) {
                (Basis::Local, Some(local))
            } else {
                (Basis::Carried, Some(anchor))
            }
        } else if inner.stepped && plausible {
            // Set while running (NTP's first step, or by hand): the best
            // there is.
            (Basis::Local, Some(local))
        } else {
            (Basis::Held, None)
        };

        inner.basis = basis;
        if let Some(offset) = offset {
            inner.anchor = Some(offset);
        }
        if basis == Basis::Held {
            inner.held_since.get_or_insert(now);
        } else {
            inner.held_since = None;
        }
        // A hold shorter than HELD_QUIET_S (the first poll of a GX, the first
        // database answer after start) is not worth a line.
        let shown = basis != Basis::Held
            || inner
                .held_since
                .is_some_and(|since| now.seconds_since(since) >= HELD_QUIET_S);
        if let Some(step) = inner.unlogged_step.take() {
            inner.logged_basis = basis;
            tracing::warn!(
                step_s = step as f64 / 1e6,
                "The system clock stepped by {:+.3} s; measurement times are taken from {}.",
                step as f64 / 1e6,
                basis.describe()
            );
        } else if shown && basis != inner.logged_basis {
            inner.logged_basis = basis;
            let offset_s = offset.map(|o| (local - o) as f64 / 1e6).unwrap_or_default();
            match basis {
                Basis::Local => tracing::info!(
                    "The local clock agrees with its references again; measurement times are taken from it."
                ),
                Basis::Held => tracing::warn!(
                    synchronised,
                    "The local clock is not synchronised and no clock reference has answered: readings are held until one does."
                ),
                other => tracing::warn!(
                    offset_s,
                    "The local clock is {:.3} s {} {}; measurement times are taken from it.",
                    offset_s.abs(),
                    if offset_s < 0.0 { "behind" } else { "ahead of" },
                    other.describe()
                ),
            }
        }
    }
}

impl Inner {
    /// The best fresh reference: a GX (the most certain), unless the
    /// database disagrees with it, then the database.
    fn best_reference(&self, now: Mono) -> Option<(Basis, i64)> {
        let fresh = |e: &&Estimate| now.seconds_since(e.at) <= FRESH_S;
        let gx = self
            .gx
            .values()
            .filter(fresh)
            .min_by_key(|e| e.uncertainty());
        let database = self.database.as_ref().filter(fresh);
        match (gx, database) {
            (Some(gx), Some(db)) if (gx.offset() - db.offset()).abs() > TOLERANCE_US => {
                Some((Basis::Database, db.offset()))
            }
            (Some(gx), _) => Some((Basis::Gx, gx.offset())),
            (None, Some(db)) => Some((Basis::Database, db.offset())),
            (None, None) => None,
        }
    }
}

/// The wall time of `taken` on a basis with `offset` (wall − boot, µs):
/// on the local clock, the wall time it noted (unless the clock stepped
/// since), otherwise the boot-clock moment plus the offset.
pub(crate) fn stamp_with(taken: Taken, basis: Basis, offset: i64) -> DateTime<Utc> {
    let from_boot = taken.mono.micros() + offset;
    if basis == Basis::Local && (taken.wall.timestamp_micros() - from_boot).abs() < STEP_US {
        return taken.wall;
    }
    from_micros(from_boot)
}

/// A wall time from microseconds since the epoch.
pub(crate) fn from_micros(us: i64) -> DateTime<Utc> {
    Utc.timestamp_micros(us).single().unwrap_or_default()
}

/// The seconds from `from` to `to` (negative when `to` is earlier), to the
/// millisecond: the ages and durations the daemon reports.
pub(crate) fn seconds_between(from: DateTime<Utc>, to: DateTime<Utc>) -> f64 {
    (to - from).num_milliseconds() as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY_US: i64 = 86_400_000_000;

    /// A GX answering the true time shifted by `shift_us`, now.
    fn gx_says(keeper: &TimeKeeper, shift_us: i64) {
        let sent = Mono::now();
        let seconds = (Utc::now().timestamp_micros() + shift_us).div_euclid(1_000_000);
        keeper.gx_sample("gx:502", sent, Mono::now(), u64::try_from(seconds).unwrap());
    }

    /// The database answering the true time shifted by `shift_us`, now.
    fn database_says(keeper: &TimeKeeper, shift_us: i64) {
        let sent = Mono::now();
        let server = from_micros(Utc::now().timestamp_micros() + shift_us);
        keeper.database_sample(sent, Mono::now(), server);
    }

    fn seconds_off(at: DateTime<Utc>, expected_shift_us: i64) -> f64 {
        let expected = Utc::now().timestamp_micros() + expected_shift_us;
        (at.timestamp_micros() - expected) as f64 / 1e6
    }

    /// The local clock a day behind both references (the machine's clock
    /// is the one "wrong" here): times come from the GX, within its second.
    #[test]
    fn a_local_clock_a_day_off_its_references_is_not_used() {
        let keeper = TimeKeeper::new(false, true);
        gx_says(&keeper, DAY_US);
        database_says(&keeper, DAY_US);
        assert_eq!(keeper.basis(), Basis::Gx);
        let at = keeper.stamp(Taken::now()).unwrap();
        assert!(seconds_off(at, DAY_US).abs() < 1.0, "{at}");
        let report = keeper.report();
        assert!(
            (report.offset_s.unwrap() + 86_400.0).abs() < 1.0,
            "{report:?}"
        );
        assert_eq!(report.references.len(), 2);
    }

    #[test]
    fn a_reference_that_agrees_keeps_the_local_clock_exactly() {
        let keeper = TimeKeeper::new(false, true);
        gx_says(&keeper, 0);
        database_says(&keeper, 0);
        let taken = Taken::now();
        assert_eq!(keeper.stamp(taken), Some(taken.wall));
        assert_eq!(keeper.basis(), Basis::Local);
    }

    /// A GX whose clock disagrees with the database's: the database wins.
    #[test]
    fn the_database_outranks_a_gx_that_disagrees_with_it() {
        let keeper = TimeKeeper::new(false, true);
        gx_says(&keeper, 3_600_000_000);
        database_says(&keeper, 0);
        assert_eq!(keeper.basis(), Basis::Local);
        database_says(&keeper, 7_200_000_000);
        // The database's estimate restarts from the sample that contradicts it.
        assert_eq!(keeper.basis(), Basis::Database);
        let at = keeper.stamp(Taken::now()).unwrap();
        assert!(seconds_off(at, 7_200_000_000).abs() < 0.1, "{at}");
    }

    /// A GX at 1970 (its own clock never set) is no reference.
    #[test]
    fn an_implausible_reference_is_ignored() {
        let keeper = TimeKeeper::new(false, true);
        keeper.gx_sample("gx:502", Mono::now(), Mono::now(), 86_400);
        assert!(keeper.report().references.is_empty());
    }

    #[test]
    fn a_trusted_local_clock_ignores_the_references() {
        let keeper = TimeKeeper::new(true, true);
        gx_says(&keeper, DAY_US);
        database_says(&keeper, DAY_US);
        let taken = Taken::now();
        assert_eq!(keeper.stamp(taken), Some(taken.wall));
    }

    /// On the local clock a reading keeps the wall time it noted; when that
    /// clock stepped since, or on a reference, the boot clock decides.
    #[test]
    fn stamps_from_the_noted_wall_time_or_the_boot_clock() {
        let taken = Taken {
            mono: Mono::from_nanos(5_000_000_000),
            wall: from_micros(1_800_000_000_000_000),
        };
        let offset = 1_800_000_000_000_000 - 5_000_000 + 300;
        assert_eq!(stamp_with(taken, Basis::Local, offset), taken.wall);
        assert_eq!(
            stamp_with(taken, Basis::Gx, offset),
            from_micros(1_800_000_000_000_300)
        );
        let stepped = offset + 3_600_000_000;
        assert_eq!(
            stamp_with(taken, Basis::Local, stepped),
            from_micros(1_800_003_600_000_300)
        );
    }
}
