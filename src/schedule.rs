//! The fixed-rate schedule every periodic task uses: polls, status writes,
//! retention runs.

use std::time::Duration;

use tokio::time::{Instant, sleep_until};

/// A fixed-rate schedule on the monotonic clock: ticks fall on
/// start + k × period and nowhere else. A slow poll does not shift later
/// ticks, and grid points that passed while a poll ran late (by more than a
/// tenth of a period) are skipped, not fired late or in a burst. The first
/// tick is immediate.
#[derive(Debug)]
pub struct Ticker {
    start: Instant,
    period: Duration,
    next: u64,
    skipped: u64,
}

impl Ticker {
    /// A schedule starting now.
    pub fn new(period: Duration) -> Self {
        Self {
            start: Instant::now(),
            period: period.max(Duration::from_millis(1)),
            next: 0,
            skipped: 0,
        }
    }

    /// Waits for the next grid point that is not in the past; returns it.
    /// Cancellation-safe: dropped before it fires (in a `select!`), it
    /// changes nothing, and the next call waits for the same grid point.
    pub async fn tick(&mut self) -> Instant {
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
        sleep_until(at).await;
        self.skipped += k - self.next;
        self.next = k.saturating_add(1);
        at
    }

    /// Grid points skipped so far because a poll overran them.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }
}

/// A fixed-rate schedule of `period` (sources' polls, status writes,
/// retention runs).
pub fn ticker(period: Duration) -> Ticker {
    Ticker::new(period)
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
}
