//! The Modbus-TCP source: one task per GX, one TCP connection, a timeout on
//! every request. Polls run on fixed-rate monotonic ticks. Each device is
//! read in the fewest blocks its [`FieldMap`] plans, and a poll sends the
//! blocks of all its devices at once ([`transport`]: Modbus-TCP matches
//! replies by transaction id), or one at a time to a GX that answers only the
//! first of several. Exception 0x02 makes that device fall back to finer
//! blocks (remembered), 0x0A marks it unavailable without touching the
//! others, and a transport error or timeout drops the connection, which is
//! re-opened with capped exponential backoff plus jitter; devices fully
//! answered before it keep their readings.
//!
//! A GX that cannot be reached takes all its devices with it: that is one
//! warning for the GX (naming how many devices it carries), not one per
//! device, and one line when it answers again ("back after N s"). Until the
//! GX has answered once since start, a refused connection comes with the
//! advice to enable Modbus TCP on it; after, it is a GX that went away (a
//! reboot, the network).
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
use tokio_modbus::ExceptionCode;
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
use transport::{Answer, Exchange, ReadRequest, describe_connect_error, describe_io_error};

/// Why one request (or the connection) failed.
#[derive(Debug, thiserror::Error)]
pub enum PollError {
    /// No TCP connection could be opened.
    #[error("cannot connect to {address}: {}", describe_connect_error(.source, *.answered_before))]
    Connect {
        /// host:port.
        address: String,
        /// The socket error.
        source: io::Error,
        /// The GX answered since start: it went away, rather than never
        /// having been reached (which the advice differs for).
        answered_before: bool,
    },
    /// No reply within the request timeout.
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    /// The GX closed the connection (a read saw the end of the stream).
    #[error("{}", transport::CLOSED_BY_GX)]
    Closed,
    /// Sending or receiving failed.
    #[error("{}", describe_io_error(.0))]
    Io(io::Error),
    /// A reply was malformed or did not match its request; the text names
    /// what differed, never the reply's payload.
    #[error("{0}")]
    Reply(String),
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
            Self::Closed | Self::Io(_) | Self::Reply(_) => ErrorClass::Transport,
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
    /// Requests sent before their replies are awaited: the transport's
    /// window, or 1 for a GX that answered only some of several.
    window: usize,
    devices: Vec<DevicePlan>,
    list: &'static RegisterList,
    status: StatusBoard,
    readings: mpsc::Sender<Reading>,
    leases: Leases,
    /// Told the GX's clock every poll of its system overview.
    clock: Option<Arc<TimeKeeper>>,
    /// A connection to the GX was opened since start.
    answered: bool,
    /// Since when the GX cannot be reached, while it cannot (logged once).
    outage: Option<Instant>,
    /// Per device: marked failed with the GX's outage, so its recovery is
    /// the GX's (logged once for the GX, not per device).
    down_with_gx: Vec<bool>,
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
            window: transport::WINDOW,
            devices,
            list,
            status,
            readings,
            leases: Leases::always(),
            clock: None,
            answered: false,
            outage: None,
            down_with_gx: vec![false; config.devices.len()],
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
        let mut ticker = crate::schedule::common_ticker(self.poll_interval);
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
        let mut pending: Vec<usize> = (0..self.devices.len())
            .filter(|&d| self.leases.may_poll(&self.devices[d].config.name))
            .collect();
        if pending.is_empty() {
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
                self.gx_down(&pending, &error, &mut report);
                self.schedule_reconnect();
                return report;
            }
        }
        // Rounds: a device whose block was refused (0x02) is read again in
        // finer blocks in the next round of the same poll.
        while !pending.is_empty() {
            let requests: Vec<ReadRequest> = pending
                .iter()
                .flat_map(|&d| {
                    let unit = self.devices[d].config.unit_id;
                    self.devices[d]
                        .blocks
                        .iter()
                        .map(move |&block| ReadRequest { unit, block })
                })
                .collect();
            report.requests += u32::try_from(requests.len()).unwrap_or(u32::MAX);
            let mut exchange = self.exchange(&requests).await;
            if exchange.answers.iter().any(Option::is_some) {
                self.gx_answered();
            }
            let mut again = Vec::new();
            let mut unanswered = Vec::new();
            let mut first = 0;
            for &d in &pending {
                let answers = &mut exchange.answers[first..first + self.devices[d].blocks.len()];
                first += answers.len();
                match self.settle(d, answers) {
                    Settled::Words { words, exchanged } => {
                        self.emit(d, words, &exchanged, &mut report).await;
                    }
                    Settled::ReadAgain => again.push(d),
                    Settled::Failed(error) => self.fail(&[d], &error, &mut report),
                    Settled::Unanswered => unanswered.push(d),
                }
            }
            if let Some(error) = exchange.failure {
                if exchange.stalled_mid_window && self.window > 1 {
                    tracing::info!(
                        gx = %self.address,
                        "The GX answered only some of several requests sent at once; \
                         asking it one request at a time from now on."
                    );
                    self.window = 1;
                }
                self.connection = None;
                unanswered.extend(again);
                self.gx_down(&unanswered, &error, &mut report);
                self.schedule_reconnect();
                break;
            }
            pending = again;
        }
        report
    }

    /// Sends `requests` on the connection, as many at once as the GX takes.
    async fn exchange(&mut self, requests: &[ReadRequest]) -> Exchange {
        match self.connection.as_mut() {
            Some(connection) => {
                connection
                    .exchange(requests, self.request_timeout, self.window)
                    .await
            }
            None => Exchange {
                answers: vec![None; requests.len()],
                failure: Some(PollError::Io(io::Error::from(io::ErrorKind::NotConnected))),
                stalled_mid_window: false,
            },
        }
    }

    /// What device `index`'s answers make: its registers, a finer plan to
    /// read again with (after 0x02), or a failure.
    fn settle(&mut self, index: usize, answers: &mut [Option<Answer>]) -> Settled {
        let Some(answers) = answers
            .iter_mut()
            .map(Option::take)
            .collect::<Option<Vec<Answer>>>()
        else {
            return Settled::Unanswered;
        };
        let refused = |a: &Answer| a.result == Err(ExceptionCode::IllegalDataAddress);
        if let Some(code) = answers
            .iter()
            .filter(|a| !refused(a))
            .find_map(|a| a.result.as_ref().err())
        {
            return Settled::Failed(PollError::Exception(*code));
        }
        let device = &mut self.devices[index];
        if let Some(block) = answers.iter().position(refused).map(|at| device.blocks[at]) {
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
                return Settled::ReadAgain;
            }
        }
        let mut words = Vec::with_capacity(answers.len());
        let mut exchanged = Vec::with_capacity(answers.len());
        let mut kept = Vec::with_capacity(answers.len());
        for (block, answer) in device.blocks.iter().zip(answers) {
            match answer.result {
                Ok(w) => {
                    words.push((*block, w));
                    exchanged.push((answer.sent, answer.received));
                    kept.push(*block);
                }
                Err(_) => {
                    tracing::warn!(
                        device = %device.config.name,
                        register = block.start,
                        "This GX does not map a register; its column stays empty."
                    );
                    device.unsupported.push(*block);
                }
            }
        }
        device.blocks = kept;
        if words.is_empty() {
            return Settled::Failed(PollError::Exception(ExceptionCode::IllegalDataAddress));
        }
        Settled::Words { words, exchanged }
    }

    /// Makes device `index`'s reading of `words` and sends it on.
    async fn emit(
        &mut self,
        index: usize,
        words: Vec<(Block, Vec<u16>)>,
        exchanged: &[(Mono, Mono)],
        report: &mut CycleReport,
    ) {
        let device = &self.devices[index];
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
        if std::mem::take(&mut self.down_with_gx[index]) {
            self.status
                .success_unlogged(&device.config.name, taken.wall);
        } else {
            self.status.success(&device.config.name, taken.wall);
        }
        report.readings += 1;
        // A closed channel means shutdown: the reading has nowhere to go.
        let _ = self.readings.send(reading).await;
    }

    /// Marks the devices at `indices` failed with `error`, an error of
    /// theirs (the GX answered for them); each is logged as it goes down.
    fn fail(&mut self, indices: &[usize], error: &PollError, report: &mut CycleReport) {
        let now = Utc::now();
        let text = error.to_string();
        for &index in indices {
            report.failed += 1;
            self.down_with_gx[index] = false;
            self.status
                .failure(&self.devices[index].config.name, now, error.class(), &text);
        }
    }

    /// The GX cannot be reached (`error`): the devices at `indices` fail
    /// with it. The GX's outage is logged once, when it starts.
    fn gx_down(&mut self, indices: &[usize], error: &PollError, report: &mut CycleReport) {
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
    fn gx_answered(&mut self) {
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

/// What one device's answers in a round make.
#[derive(Debug)]
enum Settled {
    /// Every block read.
    Words {
        /// (block, registers), in plan order.
        words: Vec<(Block, Vec<u16>)>,
        /// When each block's request went out and its reply arrived.
        exchanged: Vec<(Mono, Mono)>,
    },
    /// A block was refused (0x02): the device is planned finer, to read again.
    ReadAgain,
    /// The GX raised an exception for the device.
    Failed(PollError),
    /// The connection failed before all its answers came.
    Unanswered,
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
            answered_before: false,
        };
        assert_eq!(
            refused.to_string(),
            "cannot connect to 10.0.0.5:502: connection refused: \
             enable Modbus TCP on the GX: Settings → Services → Modbus TCP"
        );
    }
}
