//! Whether the kernel's clock is disciplined by a time service: `adjtimex`
//! says "unsynchronised" (`STA_UNSYNC`, or the `TIME_ERROR` state) until an
//! NTP client (systemd-timesyncd, chrony, ntpd) has set and steers it.
//! One of the project's two uses of `unsafe` (the other registers a
//! kernel timer with the runtime, in `schedule`): no maintained crate wraps
//! `adjtimex`.
#![allow(unsafe_code)]

/// `Some(true)` when the kernel says its clock is synchronised, `Some(false)`
/// when it says it is not, `None` when it cannot be asked.
pub(super) fn synchronised() -> Option<bool> {
    // SAFETY: `timex` holds integers and a `timeval` only, so all zeroes is
    // a valid value; `modes == 0` makes the call a read-only query that
    // fills the struct the pointer refers to, which lives across the call.
    let mut timex: libc::timex = unsafe { std::mem::zeroed() };
    let state = unsafe { libc::adjtimex(&mut timex) };
    if state < 0 {
        return None;
    }
    Some(state != libc::TIME_ERROR && timex.status & libc::STA_UNSYNC == 0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_kernel_answers() {
        assert!(super::synchronised().is_some());
    }
}
