//! The boot clock: nanoseconds since the machine booted (`CLOCK_BOOTTIME`),
//! which only moves forward (suspend included) whatever is done to the wall
//! clock, and the boot's id, without which a boot-clock reading from an
//! earlier boot means nothing. Read straight from the kernel's vDSO
//! (rustix), not through the C library, so that a clock faked for a test
//! (libfaketime) fakes the wall clock only.

use std::sync::OnceLock;

/// A moment on the boot clock, in nanoseconds since boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mono(i64);

impl Mono {
    /// Now.
    pub(crate) fn now() -> Self {
        let t = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
        Self(
            t.tv_sec
                .saturating_mul(1_000_000_000)
                .saturating_add(t.tv_nsec),
        )
    }

    /// The moment `nanos` nanoseconds after boot.
    pub(crate) fn from_nanos(nanos: i64) -> Self {
        Self(nanos)
    }

    /// Nanoseconds since boot.
    pub(crate) fn nanos(self) -> i64 {
        self.0
    }

    /// Microseconds since boot.
    pub(crate) fn micros(self) -> i64 {
        self.0 / 1_000
    }

    /// Seconds from `earlier` to this moment (negative when it is later).
    pub(crate) fn seconds_since(self, earlier: Mono) -> f64 {
        (self.0 - earlier.0) as f64 / 1e9
    }
}

/// This boot's id (`/proc/sys/kernel/random/boot_id`), `""` where the
/// kernel does not say.
pub(crate) fn boot_id() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .map(|id| id.trim().to_string())
            .unwrap_or_default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_boot_clock_moves_forward_and_the_boot_has_an_id() {
        let a = Mono::now();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let b = Mono::now();
        let elapsed = b.seconds_since(a);
        assert!((0.015..5.0).contains(&elapsed), "{elapsed}");
        assert_eq!(boot_id().len(), 36, "{:?}", boot_id());
    }
}
