//! The Modbus-TCP source: one task per GX, one TCP connection, one request at
//! a time, a timeout on every request. Polls run on fixed-rate monotonic
//! ticks. Each device is read in the fewest blocks its [`FieldMap`] plans;
//! exception 0x02 makes that device fall back to finer blocks (remembered),
//! 0x0A marks it unavailable without touching the others, and a transport
//! error or timeout drops the connection, which is re-opened with capped
//! exponential backoff plus jitter.
//!
//! Readings go to a channel; status goes to the [`StatusBoard`].

pub mod fields;
pub mod probe;
pub mod transport;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use chrono::Utc;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout};
use tokio_modbus::client::Client;
use tokio_modbus::slave::SlaveContext;
use tokio_modbus::{ExceptionCode, Request, Response, Slave};
use tokio_util::sync::CancellationToken;

use crate::clock::{Mono, Taken, TimeKeeper};
use crate::config::{GxConfig, ModbusDeviceConfig};
use crate::failover::Leases;
use crate::reading::{Reading, SourceKind};
use crate::registers::RegisterList;
use crate::registers::plan::{Block, Coalescing, plan};
use crate::status::{ErrorClass, StatusBoard};
pub use fields::FieldMap;
pub use transport::Connection;
use transport::{describe_io_error, describe_modbus_error};

/// Why one request (or the connection) failed.
#[derive(Debug, thiserror::Error)]
pub enum PollError {
    /// No TCP connection could be opened.
    #[error("cannot connect to {address}: {}", describe_io_error(.source))]
    Connect {
        /// host:port.
        address: String,
        /// The socket error.
        source: io::Error,
    },
    /// No reply within the request timeout.
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    /// The GX closed the connection (a read saw the end of the stream).
    #[error("{}", transport::CLOSED_BY_GX)]
    Closed,
    /// The connection broke, or the reply was malformed or mismatched; the
    /// text names what differed, never the reply's payload.
    #[error("{}", describe_modbus_error(.0))]
    Transport(#[from] tokio_modbus::Error),
    /// The GX answered with an exception.
    #[error("exception {:#04x} ({})", u8::from(*.0), exception_name(*.0))]
    Exception(ExceptionCode),
}

/// The GX's meaning of an exception code.
pub fn exception_name(code: ExceptionCode) -> &'static str {
    match code {
        ExceptionCode::IllegalFunction => "illegal function",
        ExceptionCode::IllegalDataAddress => "illegal data address: a register is not mapped",
        ExceptionCode::IllegalDataValue => "illegal data value: bad quantity",
        ExceptionCode::GatewayPathUnavailable => {
            "gateway path unavailable: no such device on this unit id, or it is offline"
        }
        ExceptionCode::GatewayTargetDevice => "gateway target device failed to respond",
        _ => "unexpected exception",
    }
}

impl PollError {
    /// The status class of this error.
    pub fn class(&self) -> ErrorClass {
        match self {
            Self::Connect { .. } => ErrorClass::Connect,
            Self::Timeout(_) => ErrorClass::Timeout,
            Self::Closed | Self::Transport(_) => ErrorClass::Transport,
            Self::Exception(
                ExceptionCode::GatewayPathUnavailable | ExceptionCode::GatewayTargetDevice,
            ) => ErrorClass::Unavailable,
            Self::Exception(_) => ErrorClass::Exception,
        }
    }

    /// Whether the connection can no longer be trusted (a late reply would
    /// be taken for the next request's).
    pub fn drops_connection(&self) -> bool {
        !matches!(self, Self::Exception(_))
    }
}

/// One device's read plan.
#[derive(Debug)]
struct DevicePlan {
    config: ModbusDeviceConfig,
    map: FieldMap,
    level: Coalescing,
    blocks: Vec<Block>,
    /// Blocks the GX refused even alone (0x02 at the finest level): skipped.
    unsupported: Vec<Block>,
}

impl DevicePlan {
    fn replan(&mut self, list: &RegisterList) {
        self.blocks = plan(
            &self.map.needs(),
            self.config.class.service(),
            list,
            self.level,
        )
        .into_iter()
        .filter(|b| !self.unsupported.contains(b))
        .collect();
    }
}

/// What one poll cycle did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CycleReport {
    /// Read requests sent (including failed ones).
    pub requests: u32,
    /// Readings produced.
    pub readings: u32,
    /// Devices that failed.
    pub failed: u32,
    /// Whether the cycle was skipped while waiting to reconnect.
    pub skipped: bool,
}

/// Polls one GX.
pub struct GxPoller {
    /// The site of every device behind this GX.
    site: Arc<str>,
    host: String,
    port: u16,
    /// `host:port`, as logs and the clock's references name the GX.
    address: String,
    poll_interval: Duration,
    request_timeout: Duration,
    backoff_builder: ExponentialBuilder,
    /// The reconnect delays; `None` while connected or before the first failure.
    backoff: Option<ExponentialBackoff>,
    /// No connection attempt before this instant.
    next_connect: Option<Instant>,
    connection: Option<Connection>,
    devices: Vec<DevicePlan>,
    list: &'static RegisterList,
    status: StatusBoard,
    readings: mpsc::Sender<Reading>,
    leases: Leases,
    /// Told the GX's clock every poll of its system overview.
    clock: Option<Arc<TimeKeeper>>,
}

impl std::fmt::Debug for GxPoller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GxPoller")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("connected", &self.connection.is_some())
            .field("devices", &self.devices)
            .finish_non_exhaustive()
    }
}

impl GxPoller {
    /// Prepares the poller; nothing is connected yet.
    pub fn new(config: &GxConfig, status: StatusBoard, readings: mpsc::Sender<Reading>) -> Self {
        let list = RegisterList::victron();
        let devices = config
            .devices
            .iter()
            .map(|device| {
                let map = FieldMap::resolve(device.class, list)
                    .expect("every built-in field resolves (checked by a unit test)");
                let address = format!("{}:{}/{}", config.host, config.port, device.unit_id);
                status.register(&device.name, SourceKind::Modbus, address);
                let mut plan = DevicePlan {
                    config: device.clone(),
                    map,
                    level: Coalescing::AcrossMapped,
                    blocks: Vec::new(),
                    unsupported: Vec::new(),
                };
                plan.replan(list);
                plan
            })
            .collect();
        Self {
            site: Arc::from(config.site.as_str()),
            host: config.host.clone(),
            port: config.port,
            address: format!("{}:{}", config.host, config.port),
            poll_interval: config.poll_interval,
            request_timeout: config.request_timeout,
            backoff_builder: ExponentialBuilder::default()
                .with_min_delay(config.reconnect_min)
                .with_max_delay(config.reconnect_max)
                .with_factor(2.0)
                .with_jitter()
                .without_max_times(),
            backoff: None,
            next_connect: None,
            connection: None,
            devices,
            list,
            status,
            readings,
            leases: Leases::always(),
            clock: None,
        }
    }

    /// Polls only the devices `leases` allows (failover between daemons).
    pub fn with_leases(mut self, leases: Leases) -> Self {
        self.leases = leases;
        self
    }

    /// Tells `clock` the GX's time (`/DateAndTime`) at every poll of the
    /// system overview: a clock reference.
    pub fn with_clock(mut self, clock: Arc<TimeKeeper>) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Requests one full cycle takes with the current plans.
    pub fn planned_requests(&self) -> usize {
        self.devices.iter().map(|d| d.blocks.len()).sum()
    }

    /// The current read plan: (unit id, block) in the order a cycle sends them.
    pub fn read_plan(&self) -> Vec<(u8, Block)> {
        self.devices
            .iter()
            .flat_map(|d| d.blocks.iter().map(|b| (d.config.unit_id, *b)))
            .collect()
    }

    /// Polls on fixed-rate ticks until `cancel` fires; a poll in progress
    /// finishes first (the safe point). Gives the poller back.
    pub async fn run(mut self, cancel: CancellationToken) -> Self {
        let mut ticker = crate::schedule::ticker(self.poll_interval);
        loop {
            tokio::select! {
                biased;
                () = cancel.cancelled() => break,
                _ = ticker.tick() => {}
            }
            self.poll_once().await;
            for device in &self.devices {
                self.status.heartbeat(&device.config.name);
            }
        }
        tracing::debug!(gx = %self.host, "Modbus poller stopped.");
        self
    }

    /// One poll of every device.
    pub async fn poll_once(&mut self) -> CycleReport {
        let mut report = CycleReport::default();
        let active: Vec<bool> = self
            .devices
            .iter()
            .map(|d| self.leases.may_poll(&d.config.name))
            .collect();
        if !active.contains(&true) {
            // Another daemon polls them all: keep no connection to the GX.
            self.connection = None;
            report.skipped = true;
            return report;
        }
        if self.connection.is_none() {
            if self.next_connect.is_some_and(|at| Instant::now() < at) {
                report.skipped = true;
                return report;
            }
            if let Err(error) = self.connect().await {
                self.fail_all(0, &error, &mut report);
                self.schedule_reconnect();
                return report;
            }
        }
        for (index, active) in active.into_iter().enumerate() {
            if !active {
                continue;
            }
            match self.poll_device(index, &mut report).await {
                Ok(()) => {}
                Err(error) if error.drops_connection() => {
                    self.connection = None;
                    self.fail_all(index, &error, &mut report);
                    self.schedule_reconnect();
                    break;
                }
                Err(error) => {
                    report.failed += 1;
                    let name = &self.devices[index].config.name;
                    self.status
                        .failure(name, Utc::now(), error.class(), &error.to_string());
                }
            }
        }
        report
    }

    /// Marks devices `from..` failed with `error`.
    fn fail_all(&mut self, from: usize, error: &PollError, report: &mut CycleReport) {
        let now = Utc::now();
        for device in &self.devices[from..] {
            if !self.leases.may_poll(&device.config.name) {
                continue;
            }
            report.failed += 1;
            self.status
                .failure(&device.config.name, now, error.class(), &error.to_string());
        }
    }

    fn schedule_reconnect(&mut self) {
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

    async fn connect(&mut self) -> Result<(), PollError> {
        let address = self.address.clone();
        let connect_error = |source| PollError::Connect {
            address: address.clone(),
            source,
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
        self.connection = Some(Connection::attach(stream));
        self.backoff = None;
        self.next_connect = None;
        tracing::info!(gx = %address, "Connected to the GX.");
        self.read_firmware().await;
        Ok(())
    }

    /// Reads the GX firmware (registers 834–835 of the system service).
    async fn read_firmware(&mut self) {
        let Ok(words) = self
            .read(
                100,
                Block {
                    start: 834,
                    count: 2,
                },
            )
            .await
        else {
            return;
        };
        let version = firmware_text(&words);
        for device in &self.devices {
            self.status
                .update(&device.config.name, |s| s.firmware = Some(version.clone()));
        }
    }

    async fn read(&mut self, unit: u8, block: Block) -> Result<Vec<u16>, PollError> {
        let Some(connection) = self.connection.as_mut() else {
            return Err(PollError::Transport(tokio_modbus::Error::Transport(
                io::Error::new(io::ErrorKind::NotConnected, "not connected"),
            )));
        };
        connection.context.set_slave(Slave(unit));
        timeout(self.request_timeout, read_registers(connection, block))
            .await
            .map_err(|_| PollError::Timeout(self.request_timeout))?
    }

    async fn poll_device(
        &mut self,
        index: usize,
        report: &mut CycleReport,
    ) -> Result<(), PollError> {
        let unit = self.devices[index].config.unit_id;
        let mut words: Vec<(Block, Vec<u16>)> = Vec::new();
        // When each block's request went out and its answer came.
        let mut exchanged: Vec<(Mono, Mono)> = Vec::new();
        let mut next = 0;
        while next < self.devices[index].blocks.len() {
            let block = self.devices[index].blocks[next];
            report.requests += 1;
            let sent = Mono::now();
            match self.read(unit, block).await {
                Ok(w) => {
                    words.push((block, w));
                    exchanged.push((sent, Mono::now()));
                    next += 1;
                }
                Err(PollError::Exception(ExceptionCode::IllegalDataAddress)) => {
                    let device = &mut self.devices[index];
                    if let Some(finer) = device.level.finer() {
                        tracing::info!(
                            device = %device.config.name,
                            block_start = block.start,
                            block_count = block.count,
                            level = ?finer,
                            "The GX refused a block read (0x02); reading this device in smaller blocks."
                        );
                        device.level = finer;
                        device.replan(self.list);
                        words.clear();
                        exchanged.clear();
                        next = 0;
                    } else {
                        tracing::warn!(
                            device = %device.config.name,
                            register = block.start,
                            "This GX does not map a register; its column stays empty."
                        );
                        device.unsupported.push(block);
                        device.blocks.remove(next);
                    }
                }
                Err(error) => return Err(error),
            }
        }
        let device = &self.devices[index];
        if words.is_empty() {
            return Err(PollError::Exception(ExceptionCode::IllegalDataAddress));
        }
        let taken = Taken::now();
        if let (Some(clock), Some((seconds, block))) = (&self.clock, device.map.gx_clock(&words)) {
            let (sent, received) = exchanged[block];
            clock.gx_sample(&self.address, sent, received, seconds);
        }
        let reading = Reading {
            site: Arc::clone(&self.site),
            device: device.config.name.clone(),
            table: fields::table(device.config.class),
            source: SourceKind::Modbus,
            measured_at: taken.wall,
            unconfirmed: Some(taken.mono),
            values: device.map.decode(&words),
        };
        self.status.success(&device.config.name, taken.wall);
        report.readings += 1;
        // A closed channel means shutdown: the reading has nowhere to go.
        let _ = self.readings.send(reading).await;
        Ok(())
    }
}

/// Reads `block` with function 0x03 through the lower-level `Client::call`,
/// checking the reply's length itself: tokio-modbus's `read_holding_registers`
/// only `debug_assert`s it, which would panic on a short reply from the network.
/// A failure after the GX closed the connection is [`PollError::Closed`].
pub async fn read_registers(
    connection: &mut Connection,
    block: Block,
) -> Result<Vec<u16>, PollError> {
    let request = Request::ReadHoldingRegisters(block.start, block.count);
    match Client::call(&mut connection.context, request).await {
        Ok(Ok(Response::ReadHoldingRegisters(words)))
            if words.len() == usize::from(block.count) =>
        {
            Ok(words)
        }
        Ok(Ok(other)) => Err(PollError::Transport(tokio_modbus::Error::Transport(
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "asked for {} registers at {}, got {}",
                    block.count,
                    block.start,
                    match other {
                        Response::ReadHoldingRegisters(words) =>
                            format!("{} registers", words.len()),
                        other =>
                            format!("a reply to function {:#04x}", other.function_code().value()),
                    }
                ),
            ),
        ))),
        Ok(Err(code)) => Err(PollError::Exception(code)),
        Err(_) if connection.closed_by_peer() => Err(PollError::Closed),
        Err(e) => Err(PollError::Transport(e)),
    }
}

/// Register 834 (major/minor as hex digits) and 835 (beta number, 0 for a
/// release) as a version text, e.g. `v3.42` or `v3.50~12`.
pub fn firmware_text(words: &[u16]) -> String {
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

    #[test]
    fn firmware_renders_as_hex_digits() {
        assert_eq!(firmware_text(&[0x0342, 0]), "v3.42");
        assert_eq!(firmware_text(&[0x0350, 12]), "v3.50~12");
    }

    #[test]
    fn error_classes() {
        assert_eq!(
            PollError::Exception(ExceptionCode::GatewayPathUnavailable).class(),
            ErrorClass::Unavailable
        );
        assert!(!PollError::Exception(ExceptionCode::IllegalDataAddress).drops_connection());
        assert!(PollError::Timeout(Duration::from_secs(1)).drops_connection());
        let text = PollError::Exception(ExceptionCode::GatewayPathUnavailable).to_string();
        assert!(
            text.starts_with("exception 0x0a (gateway path unavailable"),
            "{text}"
        );
        assert_eq!(PollError::Closed.class(), ErrorClass::Transport);
        assert!(PollError::Closed.drops_connection());
        let refused = PollError::Connect {
            address: "10.0.0.5:502".into(),
            source: io::Error::from(io::ErrorKind::ConnectionRefused),
        };
        assert_eq!(
            refused.to_string(),
            "cannot connect to 10.0.0.5:502: connection refused: \
             enable Modbus TCP on the GX: Settings → Services → Modbus TCP"
        );
    }
}
