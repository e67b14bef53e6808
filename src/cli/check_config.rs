//! `victron-poller check-config`: load and validate the configuration, print
//! the effective settings without secrets. Backs systemd's `ExecStartPre=`:
//! it refuses exactly what `run` refuses.

use std::path::Path;

use super::Exit;
use crate::config::{Config, LogFormat};

/// Runs `check-config`.
pub fn exec(config: &Config, path: Option<&Path>) -> anyhow::Result<Exit> {
    config.check_runnable()?;
    let source = path.map_or_else(
        || "no file (defaults and environment)".to_string(),
        |p| p.display().to_string(),
    );
    outln!("configuration OK: {source}");
    match &config.database {
        Some(db) => {
            outln!("  database.url                 {}", db.redacted_url());
            outln!(
                "  database.password            {}",
                if db.password().is_some() {
                    "set (hidden)"
                } else {
                    "not set"
                }
            );
            outln!(
                "  database.connect_timeout_ms  {}",
                db.connect_timeout.as_millis()
            );
            outln!(
                "  database.write_timeout_ms    {}",
                db.write_timeout.as_millis()
            );
            outln!("  database.max_connections     {}", db.max_connections);
        }
        None => outln!("  database.url                 not set"),
    }
    outln!(
        "  retention.window_hours       {}",
        config.retention.window.as_secs() / 3600
    );
    outln!(
        "  retention.run_every_minutes  {}",
        config.retention.run_every.as_secs() / 60
    );
    outln!(
        "  batch                        {} readings or {} ms",
        config.batch.max_readings,
        config.batch.max_age.as_millis()
    );
    let format = match config.log.format {
        LogFormat::Text => "text",
        LogFormat::Json => "json",
    };
    outln!("  log.format                   {format}");
    outln!("  log.level                    {}", config.log.level);
    outln!(
        "  health.listen                {}",
        config
            .health
            .listen
            .map_or_else(|| "not set".to_string(), |a| a.to_string())
    );
    outln!(
        "  health.stall_timeout_ms      {}",
        config.health.stall_timeout.as_millis()
    );
    outln!("  failover.enabled             {}", config.failover.enabled);
    if config.failover.enabled {
        outln!(
            "  failover.poll_when_database_unreachable {}",
            config.failover.poll_when_database_unreachable
        );
    }
    outln!(
        "  site.installation_id         {}",
        config.site.installation_id.as_deref().unwrap_or("not set")
    );
    for (i, gx) in config.gx.iter().enumerate() {
        outln!(
            "  gx[{i}]                        {}:{} every {} ms, timeout {} ms",
            gx.host,
            gx.port,
            gx.poll_interval.as_millis(),
            gx.request_timeout.as_millis()
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
            "  vedirect[{i}]                  {} on {} ({every})",
            device.name,
            device.port
        );
    }
    Ok(Exit::Ok)
}
