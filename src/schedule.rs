//! The fixed-rate schedule every periodic task uses (polls, status writes,
//! retention runs), the common grid the frequent ones share (woken by a
//! kernel timer each), the cadence of a saved status (at once when what
//! matters in it changed, otherwise every few seconds), and the delays
//! between attempts to reach something that failed ([`retry_delays`]).

use std::io;
use std::os::fd::OwnedFd;
use std::sync::OnceLock;
use std::time::Duration;

use backon::ExponentialBuilder;
use rustix::time::{
    ClockId, Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags, Timespec,
};
use tokio::io::unix::AsyncFd;
use tokio::time::{Instant, sleep_until};

/// A fixed-rate schedule on the monotonic clock: ticks fall on
/// start + k × period and nowhere else. A slow poll does not shift later
/// ticks, and grid points that passed while a poll ran late (by more than a
/// tenth of a period) are skipped, not fired late or in a burst. The first
/// tick is immediate.
#[derive(Debug)]
pub(crate) struct Ticker {
    start: Instant,
    period: Duration,
    next: u64,
    skipped: u64,
    alarm: Alarm,
}

impl Ticker {
    /// A schedule starting now.
    pub(crate) fn new(period: Duration) -> Self {
        Self {
            start: Instant::now(),
            period: period.max(Duration::from_millis(1)),
            next: 0,
            skipped: 0,
            alarm: Alarm::runtime(),
        }
    }

    /// Sleeps on a kernel timer of its own ([`Alarm::kernel`]): one
    /// wake-up per tick instead of two.
    pub(crate) fn with_kernel_timer(mut self) -> Self {
        self.alarm = Alarm::kernel();
        self
    }

    /// Waits for the next grid point that is not in the past; returns it.
    /// Cancellation-safe: dropped before it fires (in a `select!`), it
    /// changes nothing, and the next call waits for the same grid point.
    pub(crate) async fn tick(&mut self) -> Instant {
        let elapsed = Instant::now()
            .saturating_duration_since(self.start)
            .as_nanos();
        let period = self.period.as_nanos();
        // The grid point just passed still fires if we are only a little late
        // (the first tick, a poll that took about a period); otherwise the
        // next one at or after now.
        let passed = elapsed / period;
        let late = elapsed - passed * period;
        let due = if late <= period / 10 {
            passed
        } else {
            passed + 1
        };
        let due = u64::try_from(due).unwrap_or(u64::MAX);
        let k = self.next.max(due);
        let offset = u64::try_from(period.saturating_mul(u128::from(k))).unwrap_or(u64::MAX);
        let at = self.start + Duration::from_nanos(offset);
        self.alarm.sleep_until(at).await;
        self.skipped += k - self.next;
        self.next = k.saturating_add(1);
        at
    }

    #[cfg(test)]
    /// Grid points skipped so far because a poll overran them.
    pub(crate) fn skipped(&self) -> u64 {
        self.skipped
    }
}

/// A fixed-rate schedule of `period` starting now (retention runs: the
/// first is due at once, however late the task started).
pub(crate) fn ticker(period: Duration) -> Ticker {
    Ticker::new(period)
}

/// The origin of the process's common grid: set by the first
/// [`Grid::common`].
static COMMON_ORIGIN: OnceLock<Instant> = OnceLock::new();

/// Points in time at origin + k × period, for any period: schedules on one
/// grid fall together wherever their periods have common multiples.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Grid {
    origin: Instant,
}

impl Grid {
    /// The process's common grid (its origin is the first call's time): the
    /// tasks that run every poll or every second (the sources' polls, the
    /// status writers, the forwarder's recheck, the batches' closing) wake
    /// together, one wake-up of the process where each would take its own,
    /// and a wake-up is most of an idle gateway's CPU.
    pub(crate) fn common() -> Self {
        Self {
            origin: *COMMON_ORIGIN.get_or_init(Instant::now),
        }
    }

    #[cfg(test)]
    /// A grid with its origin at `origin`.
    pub(crate) fn starting_at(origin: Instant) -> Self {
        Self { origin }
    }

    /// A fixed-rate schedule of `period` on this grid. A task started at the
    /// origin ticks at once; one started later, at the next grid point
    /// (within a period).
    pub(crate) fn ticker(self, period: Duration) -> Ticker {
        let mut ticker = Ticker::new(period);
        ticker.start = self.origin;
        ticker
    }

    /// The latest point of the grid of `period` at or before `t`; `None`
    /// before the origin.
    pub(crate) fn point_at_or_before(self, t: Instant, period: Duration) -> Option<Instant> {
        let since = t.checked_duration_since(self.origin)?.as_nanos();
        let period = period.as_nanos().max(1);
        let offset = u64::try_from(since - since % period).ok()?;
        Some(self.origin + Duration::from_nanos(offset))
    }
}

/// A fixed-rate schedule of `period` on the process's common grid
/// ([`Grid::common`]), on a kernel timer ([`Ticker::with_kernel_timer`]).
pub(crate) fn common_ticker(period: Duration) -> Ticker {
    Grid::common().ticker(period).with_kernel_timer()
}

/// Sleeps until given instants: on a kernel timer of its own when one can
/// be made, otherwise on the runtime's timer wheel, which wakes the process
/// once more before each deadline over about 64 ms away (to move it to a
/// finer level of the wheel) and rounds deadlines up to the next
/// millisecond (so that two timers due at one instant, one on each, may
/// take two wake-ups).
#[derive(Debug)]
pub(crate) struct Alarm {
    timer: Option<KernelTimer>,
}

impl Alarm {
    /// On a kernel timer (a `timerfd`; the runtime's timer if none can be
    /// made): one wake-up, exactly at the instant.
    pub(crate) fn kernel() -> Self {
        match KernelTimer::new() {
            Ok(timer) => Self { timer: Some(timer) },
            Err(error) => {
                tracing::debug!(%error, "No kernel timer: the runtime's timer it is.");
                Self::runtime()
            }
        }
    }

    /// On the runtime's timer (which a paused test clock drives).
    pub(crate) fn runtime() -> Self {
        Self { timer: None }
    }

    /// Sleeps until `at`. Cancellation-safe: a dropped sleep changes
    /// nothing for the next one.
    pub(crate) async fn sleep_until(&mut self, at: Instant) {
        if let Some(timer) = &self.timer {
            match timer.sleep_until(at).await {
                Ok(()) => return,
                Err(error) => {
                    tracing::debug!(%error, "The kernel timer failed: the runtime's timer it is.");
                    self.timer = None;
                }
            }
        }
        sleep_until(at).await;
    }
}

/// A one-shot `CLOCK_MONOTONIC` timerfd (the clock `Instant` reads),
/// watched by the runtime's I/O driver: it wakes the process exactly once,
/// at its deadline.
#[derive(Debug)]
struct KernelTimer {
    fd: AsyncFd<OwnedFd>,
}

impl KernelTimer {
    /// Needs the runtime's I/O driver (an error without one).
    #[allow(unsafe_code)]
    fn new() -> io::Result<Self> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(io::Error::other("no runtime"));
        }
        let fd = rustix::time::timerfd_create(
            TimerfdClockId::Monotonic,
            TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC,
        )?;
        // SAFETY: the `OwnedFd` is moved into the `AsyncFd` and owned by it
        // alone: the descriptor stays open, and the same one, until the
        // `AsyncFd` is dropped (which deregisters it before closing it).
        let fd = unsafe { AsyncFd::register(fd) }.map_err(io::Error::other)?;
        Ok(Self { fd })
    }

    /// Arms the timer for `at` and waits for it. Cancellation-safe: a
    /// dropped wait leaves it armed, and the next call arms it anew (which
    /// also clears an expiry nobody read).
    async fn sleep_until(&self, at: Instant) -> io::Result<()> {
        // The delay first, then the clock: the deadline in the kernel's
        // terms is never before `at`.
        let delay = at.saturating_duration_since(Instant::now());
        let delay = Timespec::try_from(delay).map_err(|_| io::Error::other("delay too long"))?;
        let mut deadline = rustix::time::clock_gettime(ClockId::Monotonic) + delay;
        // A zero value disarms a timerfd.
        if deadline.tv_sec == 0 && deadline.tv_nsec == 0 {
            deadline.tv_nsec = 1;
        }
        rustix::time::timerfd_settime(
            self.fd.get_ref(),
            TimerfdTimerFlags::ABSTIME,
            &Itimerspec {
                it_interval: Timespec {
                    tv_sec: 0,
                    tv_nsec: 0,
                },
                it_value: deadline,
            },
        )?;
        loop {
            let mut ready = self.fd.readable().await?;
            let mut expirations = [0u8; 8];
            match rustix::io::read(self.fd.get_ref(), &mut expirations) {
                Ok(_) => {
                    // Read, it is not readable until it expires again: the
                    // next wait need not try a read to learn that.
                    ready.clear_ready();
                    return Ok(());
                }
                Err(rustix::io::Errno::AGAIN) => ready.clear_ready(),
                Err(error) => return Err(error.into()),
            }
        }
    }
}

/// What a status calls for ([`Cadence::judge`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Save {
    /// What matters in it changed (or nothing was saved yet): save it now.
    Changed,
    /// Only its times and counts moved, and the period is over: save it.
    Due,
    /// Only its times and counts moved, within the period: leave it.
    Not,
}

/// When a status is saved: at once when its `S` (what matters in it, such
/// as each device's health) differs from the last saved one, otherwise
/// once a period. The status document and the status rows keep this rule.
#[derive(Debug)]
pub(crate) struct Cadence<S> {
    every: Duration,
    last: Option<(Instant, S)>,
}

impl<S: PartialEq> Cadence<S> {
    /// Nothing saved yet: the first status is [`Save::Changed`].
    pub(crate) fn new(every: Duration) -> Self {
        Self { every, last: None }
    }

    /// What a status of shape `shape` calls for at `now`.
    pub(crate) fn judge(&self, shape: &S, now: Instant) -> Save {
        match &self.last {
            Some((_, was)) if was != shape => Save::Changed,
            Some((at, _)) if now.saturating_duration_since(*at) < self.every => Save::Not,
            Some(_) => Save::Due,
            None => Save::Changed,
        }
    }

    /// A status of shape `shape` was saved at `at`.
    pub(crate) fn saved(&mut self, shape: S, at: Instant) {
        self.last = Some((at, shape));
    }

    /// Saving failed: the next status is saved whatever it is.
    pub(crate) fn forget(&mut self) {
        self.last = None;
    }

    /// How long ago the last status was saved; `None` before the first.
    pub(crate) fn since_saved(&self, now: Instant) -> Option<Duration> {
        self.last
            .as_ref()
            .map(|(at, _)| now.saturating_duration_since(*at))
    }
}

/// The period of a status rewritten on a `tick` schedule at least `every`:
/// `every` rounded up to whole ticks, at least one.
pub(crate) fn whole_ticks(every: Duration, tick: Duration) -> Duration {
    let tick_ns = tick.as_nanos().max(1);
    let ticks = every.as_nanos().div_ceil(tick_ns).max(1);
    Duration::from_nanos(u64::try_from(ticks * tick_ns).unwrap_or(u64::MAX))
}

/// The delays between attempts to reach a device or a server that failed:
/// from `first`, doubling, to `longest`, each jittered (so that devices
/// that failed together do not retry together), and never giving up.
pub(crate) fn retry_delays(first: Duration, longest: Duration) -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(first)
        .with_max_delay(longest)
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::sleep;

    /// Under a paused clock: a poll that overruns by 2.5 periods is followed
    /// by one tick on the original grid, not by a burst of three.
    #[tokio::test(start_paused = true)]
    async fn ticks_stay_on_the_grid_and_skip_missed_ones() {
        let period = Duration::from_millis(1000);
        let start = Instant::now();
        let mut ticker = ticker(period);
        let mut ticks = Vec::new();
        for n in 0..8 {
            ticker.tick().await;
            ticks.push(start.elapsed().as_millis());
            // Normal polls take 100 ms; the third one stalls for 2.5 s.
            let work = if n == 2 { 2600 } else { 100 };
            sleep(Duration::from_millis(work)).await;
        }
        assert_eq!(ticks, vec![0, 1000, 2000, 5000, 6000, 7000, 8000, 9000]);
        assert_eq!(
            ticker.skipped(),
            2,
            "the grid points at 3 s and 4 s were skipped"
        );
        // No drift: after many periods the tick is still exactly on the grid.
        for _ in 0..1000 {
            ticker.tick().await;
            sleep(Duration::from_millis(333)).await;
        }
        ticker.tick().await;
        assert_eq!(start.elapsed().as_millis() % 1000, 0);
    }

    /// The first tick fires at once, in real time too (not a period later).
    #[tokio::test]
    async fn the_first_tick_is_immediate() {
        let start = std::time::Instant::now();
        let mut ticker = ticker(Duration::from_secs(5));
        ticker.tick().await;
        assert!(start.elapsed() < Duration::from_secs(1));
    }

    /// Dropped ticks (another `select!` branch won) do not move the grid.
    #[tokio::test(start_paused = true)]
    async fn a_dropped_tick_changes_nothing() {
        let start = Instant::now();
        let mut ticker = ticker(Duration::from_millis(1000));
        ticker.tick().await;
        for _ in 0..50 {
            tokio::select! {
                _ = ticker.tick() => panic!("no grid point within 10 ms"),
                () = sleep(Duration::from_millis(10)) => {}
            }
        }
        ticker.tick().await;
        assert_eq!(start.elapsed().as_millis(), 1000);
        assert_eq!(ticker.skipped(), 0);
    }

    /// A change is saved at once; the same shape once a period (5 s of
    /// 1-s ticks: the 5th tick after a save), counted from the last save;
    /// a failed save makes the next one due at once.
    #[test]
    fn a_status_is_saved_when_it_changes_and_once_a_period() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut cadence = Cadence::new(Duration::from_secs(5));
        assert_eq!(cadence.judge(&"healthy", at(0)), Save::Changed);
        cadence.saved("healthy", at(0));
        let verdicts: Vec<Save> = (1..=5).map(|s| cadence.judge(&"healthy", at(s))).collect();
        assert_eq!(
            verdicts,
            [Save::Not, Save::Not, Save::Not, Save::Not, Save::Due]
        );
        assert_eq!(cadence.judge(&"failing", at(1)), Save::Changed);
        cadence.saved("failing", at(1));
        assert_eq!(cadence.judge(&"failing", at(5)), Save::Not);
        assert_eq!(cadence.since_saved(at(5)), Some(Duration::from_secs(4)));
        cadence.forget();
        assert_eq!(cadence.judge(&"failing", at(6)), Save::Changed);
        assert_eq!(cadence.since_saved(at(6)), None);
    }

    /// 5 s on 1-s ticks is 5 s; on 3-s ticks 6 s; on 10-s ticks one tick;
    /// at 10 Hz 5 s.
    #[test]
    fn a_period_is_rounded_up_to_whole_ticks() {
        let five = Duration::from_secs(5);
        let ms = Duration::from_millis;
        assert_eq!(whole_ticks(five, ms(1000)), ms(5000));
        assert_eq!(whole_ticks(five, ms(3000)), ms(6000));
        assert_eq!(whole_ticks(five, ms(10_000)), ms(10_000));
        assert_eq!(whole_ticks(five, ms(100)), ms(5000));
        assert_eq!(whole_ticks(five, ms(0)), five);
    }

    /// Common tickers of different periods, started at different times,
    /// share one grid: a 250-ms ticker started 300 ms after a 1-s one's
    /// tick first ticks at the next quarter (500 ms after it), and then on
    /// the 1-s ticker's next second too.
    #[tokio::test(start_paused = true)]
    async fn tickers_on_one_grid_tick_together() {
        let grid = Grid::starting_at(Instant::now());
        let mut seconds = grid.ticker(Duration::from_secs(1));
        let origin = seconds.start;
        let s1 = seconds.tick().await;
        assert_eq!((s1 - origin).as_nanos() % 1_000_000_000, 0, "on the grid");
        sleep(Duration::from_millis(300)).await;
        let mut quarters = grid.ticker(Duration::from_millis(250));
        let q1 = quarters.tick().await;
        assert_eq!(q1 - s1, Duration::from_millis(500));
        let s2 = seconds.tick().await;
        assert_eq!(s2 - s1, Duration::from_secs(1));
        let mut at = q1;
        while at < s2 {
            at = quarters.tick().await;
        }
        assert_eq!(at, s2, "the quarter-second ticker ticks on the second too");
    }

    /// The latest grid point at or before a time, for any period; none
    /// before the origin.
    #[tokio::test(start_paused = true)]
    async fn the_latest_grid_point_before_a_time() {
        let origin = Instant::now() + Duration::from_secs(10);
        let grid = Grid::starting_at(origin);
        let ms = Duration::from_millis;
        assert_eq!(
            grid.point_at_or_before(origin + ms(2700), ms(1000)),
            Some(origin + ms(2000))
        );
        assert_eq!(
            grid.point_at_or_before(origin + ms(2000), ms(1000)),
            Some(origin + ms(2000))
        );
        assert_eq!(
            grid.point_at_or_before(origin + ms(2700), ms(500)),
            Some(origin + ms(2500))
        );
        assert_eq!(grid.point_at_or_before(origin - ms(1), ms(1000)), None);
    }

    /// On a kernel timer, in real time: ticks are on the grid, none fires
    /// before its grid point, and a dropped wait changes nothing.
    #[tokio::test]
    async fn a_kernel_timer_ticks_on_the_grid_never_early() {
        let period = Duration::from_millis(30);
        let grid = Grid::starting_at(Instant::now());
        let mut ticker = grid.ticker(period).with_kernel_timer();
        assert!(ticker.alarm.timer.is_some(), "a timerfd can be made here");
        let first = ticker.tick().await;
        // A wait dropped before its grid point. (On a busy machine this
        // thread may run again only after the next point: then the tick
        // is due, and must not be early either.)
        tokio::select! {
            at = ticker.tick() => {
                assert!(Instant::now() >= at, "a tick fired before its grid point");
                assert!(at > first && (at - first).as_nanos() % period.as_nanos() == 0);
            }
            () = tokio::time::sleep(Duration::from_millis(1)) => {}
        }
        for n in 1..=5u32 {
            let at = ticker.tick().await;
            assert!(Instant::now() >= at, "tick {n} fired early");
            assert_eq!(
                (at - first).as_nanos() % period.as_nanos(),
                0,
                "tick {n} off the grid"
            );
            assert!(at > first);
        }
    }
}
