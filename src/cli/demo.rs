//! `victron-poller demo`: the GX simulator and the daemon on a local store
//! in a temporary directory, in one command; a line per batch; Ctrl-C stops.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use super::Exit;
use crate::config::{
    BatchConfig, ClockConfig, Config, FailoverConfig, GxConfig, HealthConfig, HistoryConfig,
    LogConfig, ModbusClass, ModbusDeviceConfig, RetentionConfig, SiteConfig, StoreConfig,
};
use crate::daemon::{self, DrainPolicy, RunOptions};
use crate::signals::Signals;
use crate::simulator::gx::{self, GxSimOptions};

/// The demo's simulated clock: 360 simulated seconds per second from 05:30,
/// so a minute of demo shows a morning: sunrise at 06:00, the breakfast
/// peak, the bank turning from discharging to charging around 08:30.
const DEMO_TIME_SCALE: f64 = 360.0;
const DEMO_START_HOUR: f64 = 5.5;

/// Runs `demo`.
pub(crate) async fn exec() -> anyhow::Result<Exit> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .context("Failed to start the GX simulator")?;
    let simulator = Arc::new(gx::start(
        listener,
        GxSimOptions {
            time_scale: DEMO_TIME_SCALE,
            start_hour: DEMO_START_HOUR,
            ..GxSimOptions::default()
        },
    )?);
    let device = |name: &str, class, unit_id| ModbusDeviceConfig {
        name: name.into(),
        class,
        unit_id,
    };
    let config = Config {
        database: None,
        retention: RetentionConfig::default(),
        batch: BatchConfig::default(),
        store: StoreConfig::default(),
        log: LogConfig::default(),
        site: SiteConfig {
            installation_id: Some("demo".into()),
            timezone: chrono_tz::UTC,
        },
        gx: vec![GxConfig {
            site: String::new(),
            host: "127.0.0.1".into(),
            port: simulator.addr().port(),
            poll_interval: Duration::from_secs(1),
            request_timeout: Duration::from_secs(1),
            reconnect_min: Duration::from_millis(200),
            reconnect_max: Duration::from_secs(5),
            devices: vec![
                device("gx-system", ModbusClass::System, 100),
                device("house-bank", ModbusClass::Battery, 226),
                device("roof-mppt", ModbusClass::SolarCharger, 224),
                device("multiplus", ModbusClass::VeBus, 227),
            ],
        }],
        vedirect: Vec::new(),
        health: HealthConfig {
            listen: Some(page_address()),
            ..HealthConfig::default()
        },
        failover: FailoverConfig::default(),
        clock: ClockConfig::default(),
        history: HistoryConfig::default(),
    };
    let dir = tempfile::Builder::new()
        .prefix("victron-poller-demo-")
        .tempdir()?;
    outln!(
        "GX simulator on {}; local store in {}",
        simulator.addr(),
        dir.path().display()
    );
    outln!("Polling 4 devices every second. Ctrl-C stops.");
    if let Some(address) = config.health.listen {
        outln!("The site's page: open http://{address}/");
    }
    outln!("The simulated site's clock starts at 05:30 and runs 360 times fast.");
    let (tx, mut rx) = mpsc::unbounded_channel();
    let drain = DrainPolicy::with_forward_deadline(Duration::from_secs(1));
    let signals = Signals::listen(drain.hard_limit())?;
    let shutdown = signals.shutdown();
    let options = RunOptions {
        state_dir: dir.path().to_path_buf(),
        drain,
        batch_report: Some(tx),
    };
    let clock = Arc::clone(&simulator);
    let printer = tokio::spawn(async move {
        let mut total = 0u64;
        while let Some(batch) = rx.recv().await {
            total += batch.stored;
            for reading in &batch.readings {
                outln!("{}", super::now::line(reading));
            }
            let at = clock.site().map_or_else(String::new, |site| {
                let minutes = (site.time_of_day_h() * 60.0) as u32;
                format!(", site time {:02}:{:02}", minutes / 60, minutes % 60)
            });
            outln!("  stored {} rows ({total} in all){at}", batch.stored);
        }
    });
    let exit = super::run::until_stopped(daemon::run(config, options, shutdown), signals).await?;
    if exit != Exit::Ok {
        return Ok(exit);
    }
    let _ = printer.await;
    drop(simulator);
    outln!("Demo stopped.");
    Ok(Exit::Ok)
}

/// Where the demo serves the page: the daemon's default address, or a free
/// port beside it when something else holds that one (a daemon already
/// running on this machine), so that the address printed is the demo's.
fn page_address() -> std::net::SocketAddr {
    let default = crate::report::http::DEFAULT_LISTEN;
    if std::net::TcpListener::bind(default).is_ok() {
        return default;
    }
    std::net::TcpListener::bind((default.ip(), 0))
        .and_then(|free| free.local_addr())
        .unwrap_or(default)
}
