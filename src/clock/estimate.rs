//! What a reference clock says about the wall time, as the offset from the
//! boot clock (`wall = boot + offset`, microseconds) bounded from both
//! sides. A GX answers whole seconds, a database server microseconds, and
//! each answer was true at some moment between the request and the reply:
//! every sample is an interval the offset lies in, and the intersection of
//! recent samples narrows it (a GX polled every second pins its offset far
//! below its one-second resolution once the polls drift across its second
//! boundaries). A sample outside the interval means the reference's clock
//! moved: the estimate starts again from that sample.

use super::Mono;

/// How fast two unsynchronised quartz clocks may drift apart (parts per
/// million): the interval widens by this much per second of age, so that
/// drift alone never looks like a step.
const DRIFT_PPM: i64 = 100;

/// A disagreement beyond which a new sample is a step of the reference's
/// clock, not drift or latency.
pub(super) const REFERENCE_STEP_US: i64 = 1_000_000;

/// The bounded offset of one reference.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Estimate {
    /// The offset is at least this (µs).
    lo: i64,
    /// The offset is at most this (µs).
    hi: i64,
    /// When the last sample was taken.
    pub(super) at: Mono,
}

impl Estimate {
    /// A sample: the reference read `reading_us` (wall time, µs) at some
    /// moment between `sent` and `received`, with `resolution_us` (1 s for
    /// a GX's whole seconds: the true time is in `reading .. reading + 1 s`).
    pub(super) fn sample(reading_us: i64, resolution_us: i64, sent: Mono, received: Mono) -> Self {
        let (sent, received) = (sent.micros(), received.micros().max(sent.micros()));
        Self {
            lo: reading_us - received,
            hi: reading_us + resolution_us - sent,
            at: Mono::from_nanos(received * 1_000),
        }
    }

    /// Narrows the estimate with a newer sample. Returns the size of the
    /// reference's step (µs) when the sample contradicts the estimate by more
    /// than [`REFERENCE_STEP_US`]; the estimate is then the sample alone.
    pub(super) fn narrow(&mut self, sample: Estimate) -> Option<i64> {
        let age_s = sample.at.seconds_since(self.at).max(0.0);
        let slack = (age_s * DRIFT_PPM as f64) as i64;
        let (lo, hi) = (self.lo - slack, self.hi + slack);
        let merged = (lo.max(sample.lo), hi.min(sample.hi));
        if merged.0 <= merged.1 {
            *self = Self {
                lo: merged.0,
                hi: merged.1,
                at: sample.at,
            };
            return None;
        }
        let moved = sample.offset() - self.offset();
        *self = sample;
        (moved.abs() > REFERENCE_STEP_US).then_some(moved)
    }

    /// The best guess of the offset (µs): the middle of the interval.
    pub(super) fn offset(&self) -> i64 {
        self.lo + (self.hi - self.lo) / 2
    }

    /// How far the true offset may be from [`Self::offset`] (µs).
    pub(super) fn uncertainty(&self) -> i64 {
        (self.hi - self.lo) / 2
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: i64) -> Mono {
        Mono::from_nanos(ms * 1_000_000)
    }

    /// A GX whose clock is `true_offset_us` ahead of the boot clock, read at
    /// boot-clock millisecond `ms` with a 2 ms round trip.
    fn gx_sample(true_offset_us: i64, ms: i64) -> Estimate {
        let moment = ms * 1_000 + 1_000;
        let seconds = (moment + true_offset_us).div_euclid(1_000_000);
        Estimate::sample(seconds * 1_000_000, 1_000_000, at(ms), at(ms + 2))
    }

    #[test]
    fn whole_seconds_polled_across_their_boundaries_pin_the_offset() {
        let true_offset = 86_400_000_000 + 437_000;
        let mut estimate = gx_sample(true_offset, 0);
        assert!(estimate.uncertainty() <= 501_000);
        // Polls 1.013 s apart drift across the GX's second boundary.
        for n in 1..120 {
            assert_eq!(estimate.narrow(gx_sample(true_offset, n * 1_013)), None);
        }
        assert!(estimate.uncertainty() <= 20_000, "{estimate:?}");
        assert!(
            (estimate.offset() - true_offset).abs() <= 20_000,
            "{estimate:?}"
        );
    }

    #[test]
    fn a_reference_that_steps_starts_again_and_says_by_how_much() {
        let mut estimate = gx_sample(5_000_000, 0);
        estimate.narrow(gx_sample(5_000_000, 1_000));
        let moved = estimate.narrow(gx_sample(3_605_000_000, 2_000)).unwrap();
        assert!((moved - 3_600_000_000).abs() <= 1_000_000, "{moved}");
        assert!((estimate.offset() - 3_605_000_000).abs() <= 501_000);
    }

    #[test]
    fn drift_alone_is_not_a_step() {
        // 50 ppm apart: 5 ms more after 100 s, well inside the slack.
        let mut estimate = gx_sample(0, 0);
        for n in 1..=100 {
            let drifted = n * 1_013 * 50 / 1_000;
            assert_eq!(estimate.narrow(gx_sample(drifted, n * 1_013)), None);
        }
    }

    #[test]
    fn a_database_sample_is_bounded_by_its_round_trip() {
        let estimate = Estimate::sample(10_000_500, 0, at(0), at(1));
        assert_eq!((estimate.lo, estimate.hi), (10_000_500 - 1_000, 10_000_500));
        assert_eq!(estimate.uncertainty(), 500);
    }
}
