//! The devices a daemon reads: GX devices over Modbus-TCP with the devices
//! behind each ([`GxConfig`], [`ModbusDeviceConfig`], [`ModbusClass`]), and
//! VE.Direct devices on a serial port or a TCP bridge ([`VeDirectConfig`],
//! [`VeDirectPort`]).

use std::fmt;
use std::time::Duration;

/// One GX device (Cerbo GX, Venus GX ...) reached over Modbus-TCP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GxConfig {
    /// The site the GX and its devices belong to (`gx[].site`, default
    /// `site.installation_id`, else `""`).
    pub site: String,
    /// IP address or host name (`gx[].host`).
    pub host: String,
    /// TCP port (`gx[].port`, default 502).
    pub port: u16,
    /// Time between the starts of two polls (`gx[].poll_interval_ms`, default 5000).
    pub poll_interval: Duration,
    /// Longest wait for one reply (`gx[].request_timeout_ms`, default 1000).
    pub request_timeout: Duration,
    /// First reconnect delay after a transport failure (`gx[].reconnect_min_ms`, default 500).
    pub reconnect_min: Duration,
    /// Longest reconnect delay (`gx[].reconnect_max_ms`, default 30000).
    pub reconnect_max: Duration,
    /// The devices read through this GX, polled in this order.
    pub devices: Vec<ModbusDeviceConfig>,
}

/// One device behind a GX.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModbusDeviceConfig {
    /// The stable identity stored with every reading (`name`).
    pub name: String,
    /// Which GX service it is read through (`class`).
    pub class: ModbusClass,
    /// The Modbus unit id the GX lists for it (`unit_id`; 100 for the system).
    pub unit_id: u8,
}

/// The GX service a device is read through; it decides the registers and the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ModbusClass {
    /// `com.victronenergy.system`: the GX's overview (unit id 100).
    System,
    /// `com.victronenergy.battery`: BMV, SmartShunt, Lynx, BMS.
    Battery,
    /// `com.victronenergy.solarcharger`: MPPT solar chargers.
    SolarCharger,
    /// `com.victronenergy.vebus`: Multi, Quattro, MultiPlus inverter/chargers.
    VeBus,
}

impl ModbusClass {
    /// Every class, in a fixed order.
    pub(crate) const ALL: [ModbusClass; 4] =
        [Self::System, Self::Battery, Self::SolarCharger, Self::VeBus];

    /// Parses the configuration name.
    pub(crate) fn parse(name: &str) -> Option<Self> {
        match name {
            "system" => Some(Self::System),
            "battery" => Some(Self::Battery),
            "solarcharger" => Some(Self::SolarCharger),
            "vebus" => Some(Self::VeBus),
            _ => None,
        }
    }

    /// The configuration name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::System => "system",
            Self::Battery => "battery",
            Self::SolarCharger => "solarcharger",
            Self::VeBus => "vebus",
        }
    }

    /// The D-Bus service type whose registers are read.
    pub(crate) fn service(self) -> &'static str {
        match self {
            Self::System => "com.victronenergy.system",
            Self::Battery => "com.victronenergy.battery",
            Self::SolarCharger => "com.victronenergy.solarcharger",
            Self::VeBus => "com.victronenergy.vebus",
        }
    }
}

/// One VE.Direct device: a battery monitor, MPPT or Phoenix inverter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VeDirectConfig {
    /// The site the device belongs to (`vedirect[].site`, default
    /// `site.installation_id`, else `""`).
    pub site: String,
    /// The stable identity stored with every reading (`vedirect[].name`).
    pub name: String,
    /// Where its stream comes from (`path` or `address`).
    pub port: VeDirectPort,
    /// How often a reading is emitted (`poll_interval_ms`, default 5000);
    /// 0 emits every complete snapshot (about once a second).
    pub poll_interval: Duration,
    /// Reopen the port when no valid block arrives for this long
    /// (`silence_timeout_ms`, default 10000).
    pub silence_timeout: Duration,
    /// First reopen delay (`reconnect_min_ms`, default 500).
    pub reconnect_min: Duration,
    /// Longest reopen delay (`reconnect_max_ms`, default 30000).
    pub reconnect_max: Duration,
}

/// Where a VE.Direct stream comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VeDirectPort {
    /// A serial device, e.g. `/dev/serial/by-id/usb-VictronEnergy_…` (19200 8N1).
    Serial(String),
    /// A serial-to-network bridge (ser2net, ESP32 firmware): `host:port`.
    Tcp(String),
}

impl fmt::Display for VeDirectPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Serial(path) => f.write_str(path),
            Self::Tcp(address) => write!(f, "tcp://{address}"),
        }
    }
}
