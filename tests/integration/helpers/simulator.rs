//! The simulated site: the GX simulator over a real loopback socket, the
//! site's device layout (written once here for every test), the daemon's
//! config for it, and a SmartShunt's VE.Direct cycle for the VE.Direct
//! source.

use std::path::{Path, PathBuf};

use tokio::net::TcpListener;
use victron_poller::config::{ModbusClass, ModbusDeviceConfig};
use victron_poller::simulator::gx::{self, GxSimOptions, SimHandle};
use victron_poller::sources::vedirect::codec::{encode_block, encode_hex};

/// One device of the simulated site.
#[derive(Debug, Clone, Copy)]
pub struct SiteDevice {
    /// Its name in the config (the `device` of its rows).
    pub name: &'static str,
    pub class: ModbusClass,
    /// Its Modbus unit id on the GX.
    pub unit_id: u8,
    /// The table of its readings, in schema `victron`.
    pub table: &'static str,
}

/// The simulated site as every test configures it: the GX simulator's
/// units (`GxSimOptions::default`), one named device each.
pub const SITE: [SiteDevice; 4] = [
    SiteDevice {
        name: "gx",
        class: ModbusClass::System,
        unit_id: 100,
        table: "system_readings",
    },
    BANK,
    SiteDevice {
        name: "mppt",
        class: ModbusClass::SolarCharger,
        unit_id: 224,
        table: "solar_readings",
    },
    SiteDevice {
        name: "multi",
        class: ModbusClass::VeBus,
        unit_id: 227,
        table: "inverter_readings",
    },
];

/// The site's battery monitor: the device tests take offline and read the
/// state of charge of.
pub const BANK: SiteDevice = SiteDevice {
    name: "bank",
    class: ModbusClass::Battery,
    unit_id: 226,
    table: "battery_readings",
};

/// The site's device names.
pub fn site_device_names() -> impl Iterator<Item = &'static str> {
    SITE.iter().map(|d| d.name)
}

/// `(device, table)` of every device of the site.
#[cfg(feature = "servers")]
pub fn site_device_tables() -> Vec<(&'static str, &'static str)> {
    SITE.iter().map(|d| (d.name, d.table)).collect()
}

/// The site's devices as the library configures them.
pub fn site_device_configs() -> Vec<ModbusDeviceConfig> {
    SITE.iter()
        .map(|d| ModbusDeviceConfig {
            name: d.name.into(),
            class: d.class,
            unit_id: d.unit_id,
        })
        .collect()
}

/// The site's devices as `[[gx.devices]]` sections of a config file.
pub fn site_devices_toml() -> String {
    SITE.iter()
        .map(|d| {
            format!(
                "[[gx.devices]]\nname = \"{}\"\nclass = \"{}\"\nunit_id = {}\n",
                d.name,
                d.class.as_str(),
                d.unit_id
            )
        })
        .collect()
}

/// The GX simulator on a free loopback port, its values fixed (not
/// animated): what it serves is what a test expects to read.
pub async fn simulator() -> SimHandle {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    gx::start(
        listener,
        GxSimOptions {
            animate: false,
            ..GxSimOptions::default()
        },
    )
    .unwrap()
}

/// [`write_site_config`] for the site `test-site`.
pub fn write_config(dir: &Path, port: u16, poll_ms: u64) -> PathBuf {
    write_site_config(dir, "test-site", port, poll_ms)
}

/// The site's devices on the GX at `port`, for `site`, polled every
/// `poll_ms`, in `dir`/config.toml.
pub fn write_site_config(dir: &Path, site: &str, port: u16, poll_ms: u64) -> PathBuf {
    let path = dir.join("config.toml");
    std::fs::write(
        &path,
        format!(
            "[site]\ninstallation_id = \"{site}\"\n[log]\nlevel = \"info\"\n\
             [[gx]]\nhost = \"127.0.0.1\"\nport = {port}\npoll_interval_ms = {poll_ms}\n\
             request_timeout_ms = 500\nreconnect_min_ms = 50\nreconnect_max_ms = 500\n{}",
            site_devices_toml()
        ),
    )
    .unwrap();
    path
}

/// A SmartShunt's VE.Direct cycle (a text block, a HEX frame, its history
/// block) whose voltage counts `n`: 26.000 V + n mV.
pub fn bmv_cycle(n: u32) -> Vec<u8> {
    let mut bytes = encode_block(&[
        ("PID", "0xA389"),
        ("V", &format!("{}", 26000 + n)),
        ("I", "-1500"),
        ("P", "-39"),
        ("CE", "-12000"),
        ("SOC", "950"),
        ("TTG", "-1"),
        ("Alarm", "OFF"),
        ("AR", "0"),
        ("BMV", "SmartShunt 500A/50mV"),
        ("FW", "0414"),
        ("MON", "0"),
    ]);
    bytes.extend(encode_hex(0xA, &[0x50, 0x10, 0x00, 0x01]));
    bytes.extend(encode_block(&[
        ("H1", "-50000"),
        ("H2", "-10000"),
        ("H4", "12"),
    ]));
    bytes
}

/// The layout above is the simulator's (every unit it serves, no other),
/// and each device's table is its class's.
#[test]
fn the_site_is_the_simulators() {
    let mut ours: Vec<(u8, ModbusClass)> = SITE.iter().map(|d| (d.unit_id, d.class)).collect();
    let mut served = GxSimOptions::default().units;
    ours.sort();
    served.sort();
    assert_eq!(ours, served);
    for device in SITE {
        assert_eq!(
            victron_poller::sources::modbus::fields::table(device.class).name(),
            device.table,
            "{}",
            device.name
        );
    }
}
