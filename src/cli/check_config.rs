//! `victron-poller check-config`: load and validate the configuration, print
//! the effective settings without secrets: every key of the table of keys
//! ([`crate::config::KNOWN_KEYS`]) with its value and unit, then each
//! device. It refuses exactly what `run` refuses, so a configuration it
//! passes is one the daemon runs with; a database server the connection
//! does not verify is a warning, as at `run`'s start.

use super::Exit;
use crate::config::{Config, ConfigSource, KNOWN_KEYS};

/// Runs `check-config`.
pub(crate) fn exec(config: &Config, source: &ConfigSource) -> anyhow::Result<Exit> {
    config.check_runnable()?;
    let source = match source {
        ConfigSource::NotFound { .. } => {
            format!("{} (defaults and environment)", source.describe())
        }
        _ => source.describe(),
    };
    outln!("configuration OK: {source}");
    // Every key of the table outside the device lists, in the table's
    // order, as loaded; the devices follow, one line each.
    for known in KNOWN_KEYS {
        if let Some(value) = config.shown_value(known) {
            outln!("  {:<28} {value}", known.key);
        }
    }
    for (i, gx) in config.gx.iter().enumerate() {
        outln!(
            "  gx[{i}]                        {}:{} every {} ms, timeout {} ms, site {}",
            gx.host,
            gx.port,
            gx.poll_interval.as_millis(),
            gx.request_timeout.as_millis(),
            site_name(&gx.site)
        );
        for device in &gx.devices {
            outln!(
                "    {:<26} {} on unit id {}",
                device.name,
                device.class.as_str(),
                device.unit_id
            );
        }
    }
    for (i, device) in config.vedirect.iter().enumerate() {
        let every = if device.poll_interval.is_zero() {
            "every snapshot".to_string()
        } else {
            format!("every {} ms", device.poll_interval.as_millis())
        };
        outln!(
            "  vedirect[{i}]                  {} on {} ({every}), site {}",
            device.name,
            device.port,
            site_name(&device.site)
        );
    }
    // Accepted, but worth knowing: on standard error, after the settings.
    for server in config.unverified_servers() {
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), "warning: {server}");
    }
    Ok(Exit::Ok)
}

/// A site as check-config shows it: the empty site in words.
fn site_name(site: &str) -> &str {
    if site.is_empty() { "none (\"\")" } else { site }
}
