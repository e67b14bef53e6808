//! `victron-poller probe HOST[:PORT]`: find which unit ids of a GX answer for
//! which service, gently, and print a ready configuration snippet.

use std::time::Duration;

use clap::Args;

use super::{Exit, UsageError};
use crate::sources::modbus::probe::{config_snippet, probe};

/// Options of `probe`.
#[derive(Debug, Args)]
pub(crate) struct ProbeArgs {
    /// The GX: host or host:port (default port 502).
    pub(crate) target: String,
    /// Try every unit id 0–247, not only the documented ones.
    #[arg(long)]
    pub(crate) all: bool,
    /// At most this many requests per second.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=200))]
    pub(crate) rate: u32,
    /// Longest wait for one reply, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub(crate) timeout_ms: u64,
}

/// Runs `probe`.
pub(crate) async fn exec(args: ProbeArgs) -> anyhow::Result<Exit> {
    let (host, port) = match args.target.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') || host.starts_with('[') => {
            let port: u16 = port
                .parse()
                .map_err(|_| UsageError(format!("`{port}` is not a port number")))?;
            (host.trim_matches(['[', ']']).to_string(), port)
        }
        _ => (args.target.clone(), 502),
    };
    let report = probe(
        &host,
        port,
        args.all,
        args.rate,
        Duration::from_millis(args.timeout_ms),
    )
    .await?;
    outln!(
        "# {} device(s) answered on {host}:{port} ({} unit ids, {} requests, {:.1} s)",
        report.found.len(),
        report.units_tried,
        report.requests,
        report.elapsed.as_secs_f64()
    );
    print!("{}", config_snippet(&host, port, &report.found));
    Ok(if report.found.is_empty() {
        Exit::Attention
    } else {
        Exit::Ok
    })
}
