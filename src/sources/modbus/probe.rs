//! Gentle discovery of the unit ids a GX answers on: one single-register read
//! per (unit id, service), rate-limited, one request at a time, the
//! documented unit ids first (Victron's `unitid2di.csv`) and all of 0–247 only
//! when asked. A unit answers a service when the read succeeds (or is refused
//! with 0x02, an older firmware's hole); 0x0A means no such device.

use std::io;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;
use tokio::time::{MissedTickBehavior, interval, timeout};
use tokio_modbus::ExceptionCode;

use super::transport::describe_io_error;
use super::{Connection, PollError};
use crate::config::ModbusClass;
use crate::registers::plan::Block;

/// Victron's default unit id table (unit id, device instance, remark).
const UNIT_ID_TABLE: &str = include_str!("../../../data/victron/unitid2di.csv");

/// A register every device of the class has, read to test for the class.
fn probe_register(class: ModbusClass) -> u16 {
    match class {
        ModbusClass::System => 840,
        ModbusClass::Battery => 259,
        ModbusClass::SolarCharger => 771,
        ModbusClass::VeBus => 3,
    }
}

/// The unit ids to try, documented ones first (100 before all).
pub(crate) fn candidate_units(all: bool) -> Vec<u8> {
    let mut units: Vec<u8> = vec![100];
    for line in UNIT_ID_TABLE.lines().skip(1) {
        if let Some(Ok(unit)) = line.split(',').next().map(|f| f.trim().parse::<u8>()) {
            if !units.contains(&unit) {
                units.push(unit);
            }
        }
    }
    if all {
        for unit in 0..=247u8 {
            if !units.contains(&unit) {
                units.push(unit);
            }
        }
    }
    units
}

/// What the probe found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ProbeReport {
    /// (unit id, class) pairs that answered.
    pub(crate) found: Vec<(u8, ModbusClass)>,
    /// Unit ids tried.
    pub(crate) units_tried: usize,
    /// Requests sent.
    pub(crate) requests: usize,
    /// How long it took.
    pub(crate) elapsed: Duration,
}

/// Why probing stopped; `victron-poller probe` exits with 2 (down) for both.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProbeError {
    /// The GX could not be reached.
    #[error("cannot connect to {0}: {reason}", reason = describe_io_error(.1))]
    Connect(String, io::Error),
    /// The connection failed repeatedly.
    #[error("the GX at {0} stopped answering ({1})")]
    Lost(String, String),
}

/// Probes `host:port` at no more than `rate_per_s` requests per second.
pub(crate) async fn probe(
    host: &str,
    port: u16,
    all: bool,
    rate_per_s: u32,
    request_timeout: Duration,
) -> Result<ProbeReport, ProbeError> {
    let address = format!("{host}:{port}");
    let started = Instant::now();
    let mut connection = connect(host, port, request_timeout)
        .await
        .map_err(|e| ProbeError::Connect(address.clone(), e))?;
    let mut pace = interval(Duration::from_secs_f64(1.0 / f64::from(rate_per_s.max(1))));
    pace.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut report = ProbeReport::default();
    let units = candidate_units(all);
    report.units_tried = units.len();
    let mut failures_in_a_row = 0;
    for unit in units {
        for class in ModbusClass::ALL {
            pace.tick().await;
            report.requests += 1;
            let block = Block {
                start: probe_register(class),
                count: 1,
            };
            match connection.read(unit, block, request_timeout).await {
                Ok(_) | Err(PollError::Exception(ExceptionCode::IllegalDataAddress)) => {
                    failures_in_a_row = 0;
                    report.found.push((unit, class));
                }
                Err(PollError::Exception(_)) => failures_in_a_row = 0,
                Err(error) => {
                    failures_in_a_row += 1;
                    if failures_in_a_row >= 3 {
                        return Err(ProbeError::Lost(address, error.to_string()));
                    }
                    // A late reply would be taken for the next request's: start afresh.
                    connection = reconnect(host, port, request_timeout, &address).await?;
                }
            }
        }
    }
    report.elapsed = started.elapsed();
    Ok(report)
}

async fn connect(host: &str, port: u16, limit: Duration) -> io::Result<Connection> {
    let stream = timeout(limit, TcpStream::connect((host, port)))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    stream.set_nodelay(true)?;
    Ok(Connection::attach(stream))
}

async fn reconnect(
    host: &str,
    port: u16,
    limit: Duration,
    address: &str,
) -> Result<Connection, ProbeError> {
    tokio::time::sleep(Duration::from_millis(500)).await;
    connect(host, port, limit)
        .await
        .map_err(|e| ProbeError::Connect(address.to_string(), e))
}

/// A configuration snippet for what was found.
pub(crate) fn config_snippet(host: &str, port: u16, found: &[(u8, ModbusClass)]) -> String {
    let mut text = format!("[[gx]]\nhost = \"{host}\"\nport = {port}\n");
    for (unit, class) in found {
        let name = match class {
            ModbusClass::System => "gx-system".to_string(),
            other => format!("{}-{unit}", other.as_str()),
        };
        text.push_str(&format!(
            "\n[[gx.devices]]\nname = \"{name}\"\nclass = \"{}\"\nunit_id = {unit}\n",
            class.as_str()
        ));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_units_come_first_and_all_adds_the_rest() {
        let documented = candidate_units(false);
        assert_eq!(documented[0], 100);
        assert!(documented.contains(&226) && documented.contains(&247));
        assert!(documented.len() < 50);
        let all = candidate_units(true);
        assert_eq!(all.len(), 248);
        assert_eq!(&all[..documented.len()], &documented[..]);
    }

    #[test]
    fn snippet_is_a_valid_configuration() {
        let text = config_snippet(
            "10.0.0.5",
            502,
            &[(100, ModbusClass::System), (226, ModbusClass::Battery)],
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("probe.toml");
        std::fs::write(&path, &text).unwrap();
        let config = crate::config::Config::load_with_env(Some(&path), Default::default()).unwrap();
        assert_eq!(config.gx[0].devices.len(), 2);
        assert_eq!(config.gx[0].devices[1].name, "battery-226");
    }
}
