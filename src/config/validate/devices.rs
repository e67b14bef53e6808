//! `[[gx]]` (with its `devices`) and `[[vedirect]]`: each entry read into
//! its typed config, the reconnect delays in order, and device names unique
//! across both lists.

use std::collections::HashSet;
use std::time::Duration;

use super::super::keys::{self, KnownKey};
use super::super::reader::{Problems, Table};
use super::super::{GxConfig, ModbusClass, ModbusDeviceConfig, VeDirectConfig, VeDirectPort};
use super::names::{device_name, site_name};

pub(super) fn gx(mut t: Table, default_site: &str, problems: &mut Problems) -> Option<GxConfig> {
    let site = source_site(&mut t, &keys::GX_SITE, default_site, problems);
    let host_key = t.key("host");
    let host = t
        .string(&keys::GX_HOST, problems)
        .map(|h| h.trim().to_string());
    let port = t.integer(&keys::GX_PORT, problems);
    let poll_interval_ms = t.integer(&keys::GX_POLL_INTERVAL_MS, problems);
    let request_timeout_ms = t.integer(&keys::GX_REQUEST_TIMEOUT_MS, problems);
    let (reconnect_min, reconnect_max) = reconnect_delays(
        &mut t,
        &keys::GX_RECONNECT_MIN_MS,
        &keys::GX_RECONNECT_MAX_MS,
        problems,
    );
    let devices_key = t.key("devices");
    let before = problems.list.len();
    let devices: Vec<ModbusDeviceConfig> = t
        .tables("devices", problems)
        .into_iter()
        .filter_map(|d| modbus_device(d, problems))
        .collect();
    if devices.is_empty() && problems.list.len() == before {
        problems.push(&devices_key, "no device configured for this GX");
    }
    t.finish(problems);
    let Some(host) = host.filter(|h| !h.is_empty()) else {
        problems.push(&host_key, "not set (the GX's IP address or host name)");
        return None;
    };
    Some(GxConfig {
        site: site?,
        host,
        port: u16::try_from(port).unwrap_or(u16::MAX),
        poll_interval: Duration::from_millis(poll_interval_ms),
        request_timeout: Duration::from_millis(request_timeout_ms),
        reconnect_min,
        reconnect_max,
        devices,
    })
}

fn modbus_device(mut t: Table, problems: &mut Problems) -> Option<ModbusDeviceConfig> {
    let name_key = t.key("name");
    let class_key = t.key("class");
    let unit_key = t.key("unit_id");
    let name = t.string(&keys::GX_DEVICE_NAME, problems);
    let class_name = t.string(&keys::GX_DEVICE_CLASS, problems);
    let before = problems.list.len();
    let unit_id = t.integer_opt(&keys::GX_DEVICE_UNIT_ID, problems);
    let unit_invalid = problems.list.len() > before;
    t.finish(problems);

    let name = device_name(name, &name_key, problems);
    let class = match class_name.as_deref() {
        Some(text) => {
            let class = ModbusClass::parse(text);
            if class.is_none() {
                let message = format!(
                    "\"{text}\" is not a device class (use system, battery, solarcharger or vebus)"
                );
                problems.push(&class_key, message);
            }
            class
        }
        None => {
            problems.push(
                &class_key,
                "not set (system, battery, solarcharger or vebus)",
            );
            None
        }
    };
    let unit_id = match (unit_id, class) {
        (Some(u), _) => Some(u),
        (None, _) if unit_invalid => None,
        // The system service always answers on unit id 100.
        (None, Some(ModbusClass::System)) => Some(100),
        (None, _) => {
            problems.push(
                &unit_key,
                "not set (the GX lists it under Settings, Services, Modbus TCP, Available services)",
            );
            None
        }
    };
    Some(ModbusDeviceConfig {
        name: name?,
        class: class?,
        unit_id: u8::try_from(unit_id?).ok()?,
    })
}

/// A source's site: its own `site`, else the configured default. `None`
/// when its own is not a valid site name.
fn source_site(
    t: &mut Table,
    known: &keys::KnownKey,
    default_site: &str,
    problems: &mut Problems,
) -> Option<String> {
    let key = t.key("site");
    match t.string(known, problems).filter(|s| !s.is_empty()) {
        Some(own) => site_name(own, &key, problems),
        None => Some(default_site.to_string()),
    }
}

pub(super) fn vedirect(
    mut t: Table,
    default_site: &str,
    problems: &mut Problems,
) -> Option<VeDirectConfig> {
    let site = source_site(&mut t, &keys::VEDIRECT_SITE, default_site, problems);
    let name_key = t.key("name");
    let name = t.string(&keys::VEDIRECT_NAME, problems);
    let path = t
        .string(&keys::VEDIRECT_PATH, problems)
        .filter(|p| !p.trim().is_empty());
    let address = t
        .string(&keys::VEDIRECT_ADDRESS, problems)
        .filter(|a| !a.trim().is_empty());
    let poll_interval_ms = t.integer(&keys::VEDIRECT_POLL_INTERVAL_MS, problems);
    let silence_timeout_ms = t.integer(&keys::VEDIRECT_SILENCE_TIMEOUT_MS, problems);
    let (reconnect_min, reconnect_max) = reconnect_delays(
        &mut t,
        &keys::VEDIRECT_RECONNECT_MIN_MS,
        &keys::VEDIRECT_RECONNECT_MAX_MS,
        problems,
    );
    let port_key = t.key("path");
    t.finish(problems);
    let port = match (path, address) {
        (Some(path), None) => Some(VeDirectPort::Serial(path)),
        (None, Some(address))
            if address
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok()) =>
        {
            Some(VeDirectPort::Tcp(address))
        }
        (None, Some(address)) => {
            problems.push(
                &port_key.replace(".path", ".address"),
                format!("\"{address}\" is not host:port"),
            );
            None
        }
        (Some(_), Some(_)) => {
            problems.push(
                &port_key,
                "set either path (serial) or address (TCP bridge), not both",
            );
            None
        }
        (None, None) => {
            problems.push(
                &port_key,
                "not set (a serial device such as /dev/serial/by-id/…, or address = \"host:port\")",
            );
            None
        }
    };
    let name = device_name(name, &name_key, problems);
    Some(VeDirectConfig {
        site: site?,
        name: name?,
        port: port?,
        poll_interval: Duration::from_millis(poll_interval_ms),
        silence_timeout: Duration::from_millis(silence_timeout_ms),
        reconnect_min,
        reconnect_max,
    })
}

/// A source's reconnect delays (GX and VE.Direct alike): the first and the
/// longest, each in its range, and the longest not below the first.
fn reconnect_delays(
    t: &mut Table,
    min_key: &KnownKey,
    max_key: &KnownKey,
    problems: &mut Problems,
) -> (Duration, Duration) {
    let min_ms = t.integer(min_key, problems);
    let max_ms = t.integer(max_key, problems);
    if max_ms < min_ms {
        problems.push(
            &t.key(max_key.name()),
            format!("{max_ms} is below {} ({min_ms})", min_key.name()),
        );
    }
    (Duration::from_millis(min_ms), Duration::from_millis(max_ms))
}

pub(super) fn check_device_names(
    gx: &[GxConfig],
    vedirect: &[VeDirectConfig],
    problems: &mut Problems,
) {
    let mut seen = HashSet::new();
    let modbus = gx.iter().enumerate().flat_map(|(g, gx)| {
        gx.devices
            .iter()
            .enumerate()
            .map(move |(d, device)| (format!("gx[{g}].devices[{d}].name"), device.name.as_str()))
    });
    let serial = vedirect
        .iter()
        .enumerate()
        .map(|(v, device)| (format!("vedirect[{v}].name"), device.name.as_str()));
    for (key, name) in modbus.chain(serial) {
        if !seen.insert(name) {
            let message = format!("\"{name}\" is used by another device (names identify devices)");
            problems.push(&key, message);
        }
    }
}
