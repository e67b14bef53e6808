//! Reaching the GX: connecting (and reading its firmware), the reconnect
//! delays after a failure, and its outages, logged once for the GX rather
//! than once per device.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use backon::BackoffBuilder;
use chrono::Utc;
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};

use super::{Connection, CycleReport, GxPoller, PollError};
use crate::registers::plan::Block;

impl GxPoller {
    /// The GX cannot be reached (`error`): the devices at `indices` fail
    /// with it. The GX's outage is logged once, when it starts.
    pub(super) fn gx_down(
        &mut self,
        indices: &[usize],
        error: &PollError,
        report: &mut CycleReport,
    ) {
        let now = Utc::now();
        let text = error.to_string();
        for &index in indices {
            report.failed += 1;
            self.down_with_gx[index] = true;
            self.status.failure_unlogged(
                &self.devices[index].config.name,
                now,
                error.class(),
                &text,
            );
        }
        if self.outage.is_some() {
            return;
        }
        self.outage = Some(Instant::now());
        let devices = self.polled_devices();
        let carried = match devices {
            1 => "its device is".to_string(),
            n => format!("its {n} devices are"),
        };
        if self.answered {
            tracing::warn!(
                gx = %self.address,
                devices,
                error = %text,
                "The GX went away (rebooting, or the network): {carried} down until it answers again."
            );
        } else {
            tracing::warn!(
                gx = %self.address,
                devices,
                error = %text,
                "The GX does not answer: {carried} down until it does."
            );
        }
    }

    /// The GX answered (a reply came): an outage is over.
    pub(super) fn gx_answered(&mut self) {
        if let Some(since) = self.outage.take() {
            let devices = self.polled_devices();
            tracing::info!(
                gx = %self.address,
                devices,
                "The GX is back after {:.1} s.",
                since.elapsed().as_secs_f64()
            );
        }
    }

    /// The devices this daemon polls on this GX (not on standby).
    fn polled_devices(&self) -> usize {
        self.devices
            .iter()
            .filter(|d| self.leases.may_poll(&d.config.name))
            .count()
    }

    pub(super) fn schedule_reconnect(&mut self) {
        let builder = self.backoff_builder;
        let delay = self
            .backoff
            .get_or_insert_with(|| builder.build())
            .next()
            .unwrap_or(Duration::from_secs(30));
        self.next_connect = Some(Instant::now() + delay);
        for device in &self.devices {
            self.status
                .update(&device.config.name, |s| s.backoff = delay);
        }
    }

    pub(super) async fn connect(&mut self) -> Result<(), PollError> {
        let address = self.address.clone();
        let answered_before = self.answered;
        let connect_error = |source| PollError::Connect {
            address: address.clone(),
            source,
            answered_before,
        };
        let stream = timeout(self.request_timeout, async {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((self.host.as_str(), self.port))
                .await?
                .collect();
            let mut last = io::Error::new(io::ErrorKind::NotFound, "no address for host");
            for addr in addrs {
                match TcpStream::connect(addr).await {
                    Ok(stream) => return Ok(stream),
                    Err(e) => last = e,
                }
            }
            Err(last)
        })
        .await
        .map_err(|_| connect_error(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")))?
        .map_err(connect_error)?;
        stream.set_nodelay(true).map_err(connect_error)?;
        let mut connection = Connection::attach(stream);
        // The GX firmware (registers 834–835 of the system service); an
        // exception leaves it unknown, a broken reply fails the connection.
        let firmware = Block {
            start: 834,
            count: 2,
        };
        match connection.read(100, firmware, self.request_timeout).await {
            Ok(words) => {
                let version = firmware_text(&words);
                for device in &self.devices {
                    self.status
                        .update(&device.config.name, |s| s.firmware = Some(version.clone()));
                }
            }
            Err(error) if error.drops_connection() => return Err(error),
            Err(_) => {}
        }
        self.connection = Some(connection);
        self.answered = true;
        self.backoff = None;
        self.next_connect = None;
        if self.outage.is_some() {
            // Its first answer says it is back.
            tracing::debug!(gx = %address, "Connected to the GX again.");
        } else {
            tracing::info!(gx = %address, "Connected to the GX.");
        }
        Ok(())
    }
}

/// Register 834 (major/minor as hex digits) and 835 (beta number, 0 for a
/// release) as a version text, e.g. `v3.42` or `v3.50~12`.
pub(crate) fn firmware_text(words: &[u16]) -> String {
    let major_minor = words.first().copied().unwrap_or_default();
    let beta = words.get(1).copied().unwrap_or_default();
    let [major, minor] = major_minor.to_be_bytes();
    let mut text = format!("v{major:x}.{minor:02x}");
    if beta != 0 {
        text.push_str(&format!("~{beta}"));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// Any two words render as a version: `v`, hex digits, a dot, two
        /// hex digits, and a beta number after a tilde when there is one.
        #[test]
        fn any_firmware_words_render_as_a_version(major_minor: u16, beta: u16) {
            let text = firmware_text(&[major_minor, beta]);
            let [major, minor] = major_minor.to_be_bytes();
            let mut expected = format!("v{}.{}", hex(major, 1), hex(minor, 2));
            if beta != 0 {
                expected.push('~');
                expected.push_str(&beta.to_string());
            }
            proptest::prop_assert_eq!(text, expected);
        }
    }

    /// `n` in lower-case hex digits, at least `width` of them.
    fn hex(n: u8, width: usize) -> String {
        let digits = b"0123456789abcdef";
        let mut out: Vec<u8> = vec![digits[usize::from(n >> 4)], digits[usize::from(n & 0xF)]];
        while out.len() > width && out[0] == b'0' {
            out.remove(0);
        }
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn firmware_renders_as_hex_digits() {
        assert_eq!(firmware_text(&[0x0342, 0]), "v3.42");
        assert_eq!(firmware_text(&[0x0350, 12]), "v3.50~12");
    }
}
