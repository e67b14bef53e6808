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
//!
//! # Files
//!
//! - here: the poller's state ([`GxPoller`], each device's read plan) and
//!   its construction;
//! - `cycle.rs`: one poll cycle and the loop of them;
//! - `connect.rs`: connecting, the reconnect delays, the GX's outages;
//! - `error.rs`: [`PollError`] and the GX's exception codes;
//! - `transport.rs`: Modbus-TCP framing, several requests in flight;
//! - `fields.rs`: registers → reading columns per device class;
//! - `probe.rs`: which devices a GX lists (`victron-poller probe`).

mod connect;
mod cycle;
mod error;
pub mod fields;
pub(crate) mod probe;
pub(crate) mod transport;

use std::sync::Arc;
use std::time::Duration;

use backon::{ExponentialBackoff, ExponentialBuilder};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::clock::TimeKeeper;
use crate::config::{GxConfig, ModbusDeviceConfig};
use crate::failover::Leases;
use crate::reading::{Reading, SourceKind};
use crate::registers::RegisterList;
use crate::registers::plan::{Block, Coalescing, plan};
use crate::status::StatusBoard;
pub(crate) use error::PollError;
pub(crate) use fields::FieldMap;
pub(crate) use transport::Connection;

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
            backoff_builder: crate::schedule::retry_delays(
                config.reconnect_min,
                config.reconnect_max,
            ),
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
    pub(crate) fn with_leases(mut self, leases: Leases) -> Self {
        self.leases = leases;
        self
    }

    /// Tells `clock` the GX's time (`/DateAndTime`) at every poll of the
    /// system overview: a clock reference.
    pub(crate) fn with_clock(mut self, clock: Arc<TimeKeeper>) -> Self {
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
}
