//! `victron-poller simulate gx`: run the built-in GX simulator until Ctrl-C,
//! with faults from flags or from a small line-based control port:
//!
//! ```text
//! offline 226 | online 226 | delay 500 | drop | hole 782 783 | clear
//! ```

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

use super::Exit;
use crate::simulator::gx::{self, GxSimOptions, SimHandle};
use crate::simulator::vedirect::{SimDevice, VeDirectSim};

/// What to simulate.
#[derive(Debug, Args)]
pub(crate) struct SimulateArgs {
    /// The simulated device.
    #[command(subcommand)]
    pub(crate) target: SimulateTarget,
}

/// Simulators.
#[derive(Debug, Subcommand)]
pub(crate) enum SimulateTarget {
    /// A GX device's Modbus-TCP server: system (unit 100), battery monitor
    /// (226), solar charger (224), VE.Bus inverter/charger (227).
    Gx(GxArgs),
    /// A VE.Direct device's text stream, on a pseudo-terminal it creates (the
    /// path is printed) or to every client of a TCP listener.
    Vedirect(VeDirectArgs),
}

/// Options of `simulate vedirect`.
#[derive(Debug, Args)]
pub(crate) struct VeDirectArgs {
    /// The device.
    #[arg(long, value_enum, default_value = "bmv")]
    pub(crate) device: SimDevice,
    /// Serve TCP clients on this address instead of a pseudo-terminal.
    #[arg(long, value_name = "ADDR")]
    pub(crate) listen: Option<SocketAddr>,
    /// Time between cycles, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    pub(crate) interval_ms: u64,
    /// Share of blocks (0 to 1) sent with a flipped bit.
    #[arg(long, default_value_t = 0.0)]
    pub(crate) corrupt_rate: f64,
    /// Seed of the value noise and the corruption.
    #[arg(long, default_value_t = 1)]
    pub(crate) seed: u64,
}

/// Options of `simulate gx`.
#[derive(Debug, Args)]
pub(crate) struct GxArgs {
    /// Address to listen on (port 0 picks a free port; the address is printed).
    #[arg(long, default_value = "127.0.0.1:5020")]
    pub(crate) listen: SocketAddr,
    /// Keep values fixed instead of moving over time.
    #[arg(long = "static")]
    pub(crate) fixed: bool,
    /// Simulated seconds per real second (360: a minute shows six hours).
    #[arg(long, value_name = "FACTOR", default_value_t = 1.0, value_parser = parse_speed)]
    pub(crate) speed: f64,
    /// Simulated time of day to start at, in hours (0 to 24).
    #[arg(long, value_name = "HOUR", default_value_t = 12.0, value_parser = parse_hour)]
    pub(crate) start_hour: f64,
    /// Start with this unit id offline (exception 0x0A); repeatable.
    #[arg(long, value_name = "UNIT")]
    pub(crate) offline: Vec<u8>,
    /// Delay every reply by this many milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    pub(crate) delay_ms: u64,
    /// Answer 0x02 for reads touching START-END (older firmware's holes); repeatable.
    #[arg(long, value_name = "START-END", value_parser = parse_range)]
    pub(crate) hole: Vec<(u16, u16)>,
    /// Also listen for fault commands on this address (one command per line).
    #[arg(long, value_name = "ADDR")]
    pub(crate) control: Option<SocketAddr>,
}

fn parse_range(text: &str) -> Result<(u16, u16), String> {
    let (a, b) = text.split_once('-').unwrap_or((text, text));
    let a: u16 = a
        .trim()
        .parse()
        .map_err(|_| format!("`{a}` is not a register address"))?;
    let b: u16 = b
        .trim()
        .parse()
        .map_err(|_| format!("`{b}` is not a register address"))?;
    if b < a {
        return Err(format!("{b} is before {a}"));
    }
    Ok((a, b))
}

fn parse_speed(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(format!("`{text}` is not a speed (a factor of 0 or more)")),
    }
}

fn parse_hour(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(v) if (0.0..24.0).contains(&v) => Ok(v),
        _ => Err(format!("`{text}` is not an hour of the day (0 to 24)")),
    }
}

/// Runs `simulate`.
pub(crate) async fn exec(args: SimulateArgs) -> anyhow::Result<Exit> {
    match args.target {
        SimulateTarget::Gx(args) => exec_gx(args).await,
        SimulateTarget::Vedirect(args) => exec_vedirect(args).await,
    }
}

async fn exec_vedirect(args: VeDirectArgs) -> anyhow::Result<Exit> {
    let mut sim = VeDirectSim::new(args.device, args.corrupt_rate, args.seed);
    let interval = Duration::from_millis(args.interval_ms.max(10));
    let mut ticker = crate::schedule::ticker(interval);
    if let Some(listen) = args.listen {
        let listener = TcpListener::bind(listen)
            .await
            .with_context(|| format!("Failed to listen on {listen}"))?;
        outln!(
            "VE.Direct {} simulator on tcp://{}",
            format!("{:?}", args.device).to_lowercase(),
            listener.local_addr()?
        );
        let (tx, _) = tokio::sync::broadcast::channel::<std::sync::Arc<Vec<u8>>>(64);
        let clients = tx.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut rx = clients.subscribe();
                tokio::spawn(async move {
                    while let Ok(bytes) = rx.recv().await {
                        if stream.write_all(&bytes).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        loop {
            tokio::select! {
                _ = ticker.tick() => { let _ = tx.send(std::sync::Arc::new(sim.next_cycle())); }
                result = tokio::signal::ctrl_c() => { result?; return Ok(Exit::Ok); }
            }
        }
    }
    let (mut master, slave) =
        tokio_serial::SerialStream::pair().context("Failed to create a pseudo-terminal")?;
    let path = tokio_serial::SerialPort::name(&slave).unwrap_or_default();
    outln!(
        "VE.Direct {} simulator on {path}",
        format!("{:?}", args.device).to_lowercase()
    );
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                // With nobody reading, the pty fills up: drop what does not
                // fit in time, as a device keeps talking to an unplugged cable.
                let cycle = sim.next_cycle();
                let _ = tokio::time::timeout(interval, master.write_all(&cycle)).await;
            }
            result = tokio::signal::ctrl_c() => { result?; break; }
        }
    }
    drop(slave);
    Ok(Exit::Ok)
}

async fn exec_gx(args: GxArgs) -> anyhow::Result<Exit> {
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("Failed to listen on {}", args.listen))?;
    let options = GxSimOptions {
        animate: !args.fixed,
        time_scale: args.speed,
        start_hour: args.start_hour,
        ..GxSimOptions::default()
    };
    let units = options
        .units
        .iter()
        .map(|(unit, class)| format!("{unit} {}", class.as_str()))
        .collect::<Vec<_>>()
        .join(", ");
    let handle = gx::start(listener, options)?;
    for unit in &args.offline {
        handle.set_offline(*unit, true);
    }
    handle.set_delay(Duration::from_millis(args.delay_ms));
    for (a, b) in &args.hole {
        handle.add_hole(*a, *b);
    }
    outln!(
        "GX simulator listening on {} (units: {units})",
        handle.addr()
    );
    if let Some(control) = args.control {
        let listener = TcpListener::bind(control)
            .await
            .with_context(|| format!("Failed to listen on {control}"))?;
        outln!("control port on {}", listener.local_addr()?);
        let handle = std::sync::Arc::new(handle);
        tokio::spawn(serve_control(listener, std::sync::Arc::clone(&handle)));
        tokio::signal::ctrl_c().await?;
        return Ok(Exit::Ok);
    }
    tokio::signal::ctrl_c().await?;
    drop(handle);
    Ok(Exit::Ok)
}

async fn serve_control(listener: TcpListener, handle: std::sync::Arc<SimHandle>) {
    while let Ok((stream, _)) = listener.accept().await {
        let handle = std::sync::Arc::clone(&handle);
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut lines = BufReader::new(read).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let answer = match control_command(&handle, &line) {
                    Ok(()) => "ok\n".to_string(),
                    Err(e) => format!("error: {e}\n"),
                };
                if write.write_all(answer.as_bytes()).await.is_err() {
                    break;
                }
            }
        });
    }
}

/// Applies one control command to the simulator.
pub(crate) fn control_command(handle: &SimHandle, line: &str) -> Result<(), String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let number = |i: usize| -> Result<u64, String> {
        words
            .get(i)
            .ok_or_else(|| "missing number".to_string())?
            .parse()
            .map_err(|_| format!("`{}` is not a number", words[i]))
    };
    let unit = |i: usize| -> Result<u8, String> {
        u8::try_from(number(i)?).map_err(|_| "unit ids go up to 247".to_string())
    };
    let address = |i: usize| -> Result<u16, String> {
        u16::try_from(number(i)?).map_err(|_| "addresses go up to 65535".to_string())
    };
    match words.first().copied() {
        Some("offline") => handle.set_offline(unit(1)?, true),
        Some("online") => handle.set_offline(unit(1)?, false),
        Some("delay") => handle.set_delay(Duration::from_millis(number(1)?)),
        Some("drop") => handle.drop_connections(),
        Some("hole") => handle.add_hole(address(1)?, address(2)?),
        Some("clear") => handle.clear_faults(),
        _ => return Err("commands: offline U, online U, delay MS, drop, hole A B, clear".into()),
    }
    Ok(())
}
