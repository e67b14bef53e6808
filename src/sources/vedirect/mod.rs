//! The VE.Direct source: one task per serial port or TCP bridge, reading the
//! device's text stream through [`codec::VeDirectCodec`], merging each
//! cycle's blocks into a snapshot ([`fields::Merger`]) and emitting one
//! reading per poll interval: the latest complete snapshot, stamped with the
//! time its last block arrived. EOF, a read error, or a port silent for too
//! long reopens it with capped exponential backoff plus jitter.

pub mod codec;
pub mod fields;
pub(crate) mod frame;

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::BackoffBuilder;
use chrono::{DateTime, Utc};
use futures_util::StreamExt as _;
use tokio::io::AsyncRead;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;

use crate::clock::{Mono, Taken};
use crate::config::{VeDirectConfig, VeDirectPort};
use crate::failover::Leases;
use crate::reading::{Reading, SourceKind};
use crate::status::{ErrorClass, StatusBoard};
use codec::{DecodeStats, Frame, VeDirectCodec};
use fields::{Merger, product_name};

/// VE.Direct's line settings: 19200 baud, 8N1, no flow control.
pub(crate) const BAUD_RATE: u32 = 19_200;

/// How often a standby source asks whether it may read the device.
const STANDBY_RECHECK: Duration = Duration::from_millis(500);

type Port = Pin<Box<dyn AsyncRead + Send>>;

/// How many block stamps [`VeDirectSource`] remembers on both clocks: more
/// than the blocks of one cycle.
const BLOCK_MOMENTS: usize = 8;

/// Reads one VE.Direct device.
#[derive(Debug)]
pub struct VeDirectSource {
    config: VeDirectConfig,
    /// The device's site, shared by its readings.
    site: Arc<str>,
    status: StatusBoard,
    readings: mpsc::Sender<Reading>,
    merger: Merger,
    /// The received-at time of the last emitted snapshot.
    last_emitted: Option<DateTime<Utc>>,
    /// When the last block arrived: blocks are stamped strictly later, at
    /// the database's microsecond resolution, even when a bridge delivers
    /// several in one burst (two rows of a device never share a time).
    last_block_at: Option<DateTime<Utc>>,
    /// The boot-clock moments of the last blocks' stamps, newest last: a
    /// snapshot's measurement time on both clocks.
    block_moments: VecDeque<(DateTime<Utc>, Mono)>,
    /// When the port went down, while it is down.
    down_since: Option<Instant>,
    warned_unknown_product: bool,
    /// Labels already logged for a value that did not parse (one bit each,
    /// [`fields::Snapshot::bad_labels`]).
    warned_bad_labels: u64,
    /// Whether this daemon may read the device (failover between daemons).
    leases: Leases,
}

impl VeDirectSource {
    /// Prepares the source; the port is opened by [`Self::run`].
    pub fn new(
        config: &VeDirectConfig,
        status: StatusBoard,
        readings: mpsc::Sender<Reading>,
    ) -> Self {
        status.register(&config.name, SourceKind::VeDirect, config.port.to_string());
        Self {
            config: config.clone(),
            site: Arc::from(config.site.as_str()),
            status,
            readings,
            merger: Merger::new(),
            last_emitted: None,
            last_block_at: None,
            block_moments: VecDeque::with_capacity(BLOCK_MOMENTS),
            down_since: None,
            warned_unknown_product: false,
            warned_bad_labels: 0,
            leases: Leases::always(),
        }
    }

    /// Reads the device only while `leases` allows (failover between daemons).
    pub(crate) fn with_leases(mut self, leases: Leases) -> Self {
        self.leases = leases;
        self
    }

    async fn open(&self) -> std::io::Result<Port> {
        match &self.config.port {
            VeDirectPort::Serial(path) => {
                use tokio_serial::SerialPortBuilderExt as _;
                let port = tokio_serial::new(path, BAUD_RATE)
                    .data_bits(tokio_serial::DataBits::Eight)
                    .parity(tokio_serial::Parity::None)
                    .stop_bits(tokio_serial::StopBits::One)
                    .flow_control(tokio_serial::FlowControl::None)
                    .open_native_async()
                    .map_err(std::io::Error::from)?;
                Ok(Box::pin(port))
            }
            VeDirectPort::Tcp(address) => {
                let stream = tokio::time::timeout(
                    Duration::from_secs(5),
                    TcpStream::connect(address.as_str()),
                )
                .await
                .map_err(|_| {
                    std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out")
                })??;
                Ok(Box::pin(stream))
            }
        }
    }

    /// Reads until `cancel` fires, reopening the port as needed. Gives the
    /// source back.
    pub async fn run(mut self, cancel: CancellationToken) -> Self {
        let builder =
            crate::schedule::retry_delays(self.config.reconnect_min, self.config.reconnect_max);
        let mut delays = builder.build();
        loop {
            if cancel.is_cancelled() {
                break;
            }
            if !self.leases.may_poll(&self.config.name) {
                // Another daemon reads it: keep the port closed, ask again soon.
                self.status.heartbeat(&self.config.name);
                tokio::select! {
                    () = cancel.cancelled() => break,
                    () = tokio::time::sleep(STANDBY_RECHECK) => {}
                }
                continue;
            }
            let outcome = match self.open().await {
                Ok(port) => {
                    delays = builder.build();
                    self.read_port(port, &cancel).await
                }
                Err(error) => Err((
                    ErrorClass::Port,
                    format!("cannot open {}: {error}", self.config.port),
                )),
            };
            if cancel.is_cancelled() {
                break;
            }
            // Ok: the lock went to another daemon; the port is closed.
            let Err((class, message)) = outcome else {
                continue;
            };
            self.merger.break_cycle();
            self.down_since.get_or_insert_with(Instant::now);
            self.status
                .failure(&self.config.name, Utc::now(), class, &message);
            let delay = delays.next().unwrap_or(self.config.reconnect_max);
            self.status.update(&self.config.name, |s| s.backoff = delay);
            tokio::select! {
                () = cancel.cancelled() => break,
                () = tokio::time::sleep(delay) => {}
            }
        }
        self
    }

    /// Reads an open port until it fails, falls silent, or `cancel` fires.
    async fn read_port(
        &mut self,
        port: Port,
        cancel: &CancellationToken,
    ) -> Result<(), (ErrorClass, String)> {
        let mut frames = FramedRead::new(port, VeDirectCodec::new());
        let mut ticker = crate::schedule::common_ticker(self.config.poll_interval);
        // The port opened, or the last valid block arrived, at `last_data`:
        // silent for too long → reopen.
        let mut last_data = Instant::now();
        let mut last_stats = DecodeStats::default();
        loop {
            if !self.leases.may_poll(&self.config.name) {
                return Ok(());
            }
            let silence_deadline = last_data + self.config.silence_timeout;
            tokio::select! {
                biased;
                () = cancel.cancelled() => return Ok(()),
                frame = frames.next() => {
                    // Blocks the decoder dropped came before this frame.
                    let lost = self.lost_blocks(frames.decoder().stats(), &mut last_stats);
                    let mut completed = 0;
                    for _ in 0..lost {
                        completed += usize::from(self.merger.lost_block());
                    }
                    match frame {
                        Some(Ok(Frame::Block(block))) => {
                            last_data = Instant::now();
                            self.status.heartbeat(&self.config.name);
                            self.emit_completed(completed).await;
                            let at = self.stamp(Utc::now());
                            completed = self.merger.push(&block, at);
                        }
                        Some(Ok(Frame::Hex(_))) => {}
                        Some(Err(error)) => return Err((ErrorClass::Port, format!("read error: {error}"))),
                        None => return Err((ErrorClass::Port, "the port closed (end of stream)".into())),
                    }
                    self.emit_completed(completed).await;
                }
                _ = ticker.tick(), if !self.config.poll_interval.is_zero() => self.emit(0).await,
                () = tokio::time::sleep_until(silence_deadline.into()) => {
                    let silent_for = last_data.elapsed();
                    return Err((
                        ErrorClass::Timeout,
                        format!("no valid block for {:.1} s", silent_for.as_secs_f64()),
                    ));
                }
            }
        }
    }

    /// How many text blocks the decoder lost (failed checksum or abandoned)
    /// since its counts were `last`; the corrupt ones are counted in the
    /// device's status.
    fn lost_blocks(&self, now: DecodeStats, last: &mut DecodeStats) -> u64 {
        let corrupt = now.blocks_invalid - last.blocks_invalid;
        let abandoned = now.resyncs - last.resyncs;
        if corrupt > 0 {
            self.status
                .update(&self.config.name, |s| s.corrupt_blocks += corrupt);
        }
        *last = now;
        corrupt + abandoned
    }

    /// `now`, or one microsecond after the last block's stamp when `now` is
    /// not later but within a second of it (blocks of one burst). A clock
    /// that stepped back further is taken as it is: stamping an hour of
    /// blocks a microsecond apart would be further from the truth.
    fn stamp(&mut self, now: DateTime<Utc>) -> DateTime<Utc> {
        let next = |last: DateTime<Utc>| last + chrono::Duration::microseconds(1);
        let at = match self.last_block_at {
            Some(last) if now < next(last) && last - now < chrono::Duration::seconds(1) => {
                next(last)
            }
            _ => now,
        };
        self.last_block_at = Some(at);
        if self.block_moments.len() == BLOCK_MOMENTS {
            self.block_moments.pop_front();
        }
        self.block_moments.push_back((at, Mono::now()));
        at
    }

    /// The boot-clock moment of the block stamped `at` (estimated from the
    /// clocks now if it is no longer remembered).
    fn moment_of(&self, at: DateTime<Utc>) -> Mono {
        self.block_moments
            .iter()
            .rev()
            .find(|(stamp, _)| *stamp == at)
            .map_or_else(
                || {
                    let now = Taken::now();
                    let back = (now.wall - at).num_microseconds().unwrap_or(0);
                    Mono::from_nanos(now.mono.nanos() - back.saturating_mul(1_000))
                },
                |(_, mono)| *mono,
            )
    }

    /// With a zero poll interval, sends each of the `count` snapshots just
    /// completed, oldest first.
    async fn emit_completed(&mut self, count: usize) {
        if self.config.poll_interval.is_zero() {
            for back in (0..count).rev() {
                self.emit(back).await;
            }
        }
    }

    /// Sends a recently completed snapshot (0: the latest), if it is new.
    async fn emit(&mut self, back: usize) {
        let Some(snapshot) = self.merger.recent(back) else {
            return;
        };
        if self
            .last_emitted
            .is_some_and(|last| snapshot.received_at <= last)
        {
            return;
        }
        let unwarned = snapshot.bad_labels() & !self.warned_bad_labels;
        if unwarned != 0 {
            self.warned_bad_labels |= unwarned;
            let labels: Vec<&str> = fields::Snapshot::label_names(unwarned).collect();
            tracing::warn!(
                device = %self.config.name,
                labels = %labels.join(","),
                "VE.Direct fields whose value does not parse are left empty; \
                 the rest of the block is kept (logged once per field)."
            );
        }
        let Some(table) = snapshot.table() else {
            if !self.warned_unknown_product {
                self.warned_unknown_product = true;
                tracing::warn!(
                    device = %self.config.name,
                    product_id = ?snapshot.product_id(),
                    "Unknown VE.Direct product: no reading table for it; its data is not stored."
                );
            }
            return;
        };
        let reading = Reading {
            site: Arc::clone(&self.site),
            device: self.config.name.clone(),
            table,
            source: SourceKind::VeDirect,
            measured_at: snapshot.received_at,
            unconfirmed: Some(self.moment_of(snapshot.received_at)),
            values: snapshot.columns(table),
        };
        let (pid, serial, firmware) = (
            snapshot.product_id(),
            snapshot.serial().map(str::to_string),
            snapshot.firmware(),
        );
        self.last_emitted = Some(snapshot.received_at);
        if let Some(since) = self.down_since.take() {
            tracing::info!(
                device = %self.config.name,
                gap_s = since.elapsed().as_secs_f64(),
                "VE.Direct data is flowing again."
            );
        }
        self.status.update(&self.config.name, |s| {
            s.product_id = pid;
            s.product_name = pid.and_then(product_name).map(str::to_string);
            s.serial = serial;
            s.firmware = firmware;
        });
        self.status.success(&self.config.name, reading.measured_at);
        // A closed channel means shutdown: the reading has nowhere to go.
        let _ = self.readings.send(reading).await;
    }
}
