//! Benchmark: one full poll of a GX with four services (system, battery,
//! solar charger, VE.Bus) against the simulator in its own process over
//! loopback, next to a bare client that sends the same requests over a raw
//! blocking socket (the floor no client can beat). Prints requests per cycle,
//! median and p95 cycle time of both, and the poller's CPU time per cycle.
//!
//! Run: `cargo bench --bench modbus_cycle` (set CYCLES to change the count).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use victron_poller::config::{GxConfig, ModbusClass, ModbusDeviceConfig};
use victron_poller::registers::plan::Block;
use victron_poller::sources::modbus::GxPoller;
use victron_poller::status::StatusBoard;

fn main() {
    let cycles: usize = std::env::var("CYCLES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(5000);
    let mut sim = Command::new(env!("CARGO_BIN_EXE_victron-poller"))
        .args(["simulate", "gx", "--listen", "127.0.0.1:0", "--static"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the simulator");
    let mut first = String::new();
    BufReader::new(sim.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let addr = first
        .split_whitespace()
        .nth(4)
        .expect("simulator prints its address")
        .to_string();
    let port: u16 = addr.rsplit_once(':').unwrap().1.parse().unwrap();

    let device = |name: &str, class, unit_id| ModbusDeviceConfig {
        name: name.into(),
        class,
        unit_id,
    };
    let config = GxConfig {
        site: String::new(),
        host: "127.0.0.1".into(),
        port,
        poll_interval: Duration::from_secs(1),
        request_timeout: Duration::from_secs(1),
        reconnect_min: Duration::from_millis(100),
        reconnect_max: Duration::from_secs(1),
        devices: vec![
            device("gx", ModbusClass::System, 100),
            device("bank", ModbusClass::Battery, 226),
            device("mppt", ModbusClass::SolarCharger, 224),
            device("multi", ModbusClass::VeBus, 227),
        ],
    };

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    let mut poller = GxPoller::new(&config, StatusBoard::new(), tx);
    let plan = poller.read_plan();

    // The poller, on one thread: its CPU time is this thread's.
    let (poller_times, cpu) = runtime.block_on(async {
        for _ in 0..200 {
            poller.poll_once().await;
            while rx.try_recv().is_ok() {}
        }
        let cpu_before = thread_cpu();
        let mut times = Vec::with_capacity(cycles);
        for _ in 0..cycles {
            let start = Instant::now();
            let report = poller.poll_once().await;
            times.push(start.elapsed());
            assert_eq!(report.readings, 4, "every device answered");
            while rx.try_recv().is_ok() {}
        }
        (times, thread_cpu() - cpu_before)
    });

    // The floor: the same requests, hand-framed, on a blocking socket.
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_nodelay(true).unwrap();
    let mut transaction: u16 = 0;
    let mut bare_cycle = |stream: &mut TcpStream| {
        for (unit, block) in &plan {
            transaction = transaction.wrapping_add(1);
            bare_read(stream, transaction, *unit, *block);
        }
    };
    for _ in 0..200 {
        bare_cycle(&mut stream);
    }
    let mut bare_times = Vec::with_capacity(cycles);
    for _ in 0..cycles {
        let start = Instant::now();
        bare_cycle(&mut stream);
        bare_times.push(start.elapsed());
    }
    let _ = sim.kill();
    let _ = sim.wait();

    let (p50, p95) = percentiles(&mut poller_times.clone());
    let (b50, b95) = percentiles(&mut bare_times.clone());
    println!("modbus cycle benchmark: {cycles} cycles, 4 devices, simulator in its own process");
    println!(
        "  requests per cycle          {} (planner minimum {})",
        plan.len(),
        poller.planned_requests()
    );
    println!(
        "  bare socket   median {:>8.1} µs   p95 {:>8.1} µs",
        micros(b50),
        micros(b95)
    );
    println!(
        "  poller        median {:>8.1} µs   p95 {:>8.1} µs",
        micros(p50),
        micros(p95)
    );
    println!("  poller / bare median {:.2}×", micros(p50) / micros(b50));
    println!(
        "  poller CPU per cycle        {:.1} µs",
        micros(cpu) / cycles as f64
    );
}

fn bare_read(stream: &mut TcpStream, transaction: u16, unit: u8, block: Block) {
    let mut frame = Vec::with_capacity(12);
    frame.extend_from_slice(&transaction.to_be_bytes());
    frame.extend_from_slice(&[0, 0, 0, 6, unit, 3]);
    frame.extend_from_slice(&block.start.to_be_bytes());
    frame.extend_from_slice(&block.count.to_be_bytes());
    stream.write_all(&frame).unwrap();
    let mut header = [0u8; 7];
    stream.read_exact(&mut header).unwrap();
    assert_eq!(u16::from_be_bytes([header[0], header[1]]), transaction);
    let length = usize::from(u16::from_be_bytes([header[4], header[5]]));
    let mut body = vec![0u8; length - 1];
    stream.read_exact(&mut body).unwrap();
    assert_eq!(body[0], 3, "no exception");
    assert_eq!(usize::from(body[1]), 2 * usize::from(block.count));
}

fn percentiles(times: &mut [Duration]) -> (Duration, Duration) {
    times.sort();
    (times[times.len() / 2], times[times.len() * 95 / 100])
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// CPU time of the calling thread (Linux: first field of schedstat, in ns).
fn thread_cpu() -> Duration {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default();
    let ns: u64 = text
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    Duration::from_nanos(ns)
}
