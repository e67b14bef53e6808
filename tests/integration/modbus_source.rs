//! The Modbus-TCP source against the built-in GX simulator over real
//! loopback sockets, and against a hand-written server that misbehaves.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use victron_poller::config::{GxConfig, ModbusClass};
use victron_poller::reading::{Reading, ReadingTable, SourceKind};
use victron_poller::simulator::gx::{self, GxSimOptions, SimHandle};
use victron_poller::sources::modbus::{CycleReport, GxPoller};
use victron_poller::status::{ErrorClass, StatusBoard};

use crate::helpers::process::wait_for_status;
use crate::helpers::simulator::{BANK, site_device_configs};

fn gx_config(port: u16, poll_ms: u64) -> GxConfig {
    GxConfig {
        site: String::new(),
        host: "127.0.0.1".into(),
        port,
        poll_interval: Duration::from_millis(poll_ms),
        request_timeout: Duration::from_millis(300),
        reconnect_min: Duration::from_millis(50),
        reconnect_max: Duration::from_millis(200),
        devices: site_device_configs(),
    }
}

async fn simulator(animate: bool) -> SimHandle {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    gx::start(
        listener,
        GxSimOptions {
            animate,
            ..GxSimOptions::default()
        },
    )
    .unwrap()
}

fn drain(rx: &mut mpsc::Receiver<Reading>) -> Vec<Reading> {
    let mut out = Vec::new();
    while let Ok(r) = rx.try_recv() {
        out.push(r);
    }
    out
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

/// Polls as soon as the reconnect delay after a failure has passed (a poll
/// before it is skipped, and does nothing).
async fn poll_after_the_reconnect_delay(poller: &mut GxPoller) -> CycleReport {
    let start = std::time::Instant::now();
    loop {
        let report = poller.poll_once().await;
        if !report.skipped {
            return report;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "still waiting to reconnect after 5 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn values_read_equal_the_values_served() {
    let sim = simulator(false).await;
    let (tx, mut rx) = mpsc::channel(64);
    let status = StatusBoard::new();
    let mut poller = GxPoller::new(&gx_config(sim.addr().port(), 1000), status.clone(), tx);
    assert_eq!(poller.planned_requests(), 5);

    let before = sim.requests();
    let report = poller.poll_once().await;
    assert_eq!((report.readings, report.failed, report.requests), (4, 0, 5));
    // 5 reads plus the one-off firmware read on connecting.
    assert_eq!(sim.requests() - before, 6);

    let readings = drain(&mut rx);
    let by = |device: &str| readings.iter().find(|r| r.device == device).unwrap();
    for (device, class, table, pairs) in [
        (
            "bank",
            ModbusClass::Battery,
            ReadingTable::Battery,
            &[
                ("voltage", "/Dc/0/Voltage"),
                ("current", "/Dc/0/Current"),
                ("power", "/Dc/0/Power"),
                ("soc", "/Soc"),
                ("consumed_ah", "/ConsumedAmphours"),
                ("time_to_go_s", "/TimeToGo"),
            ][..],
        ),
        (
            "mppt",
            ModbusClass::SolarCharger,
            ReadingTable::Solar,
            &[
                ("battery_voltage", "/Dc/0/Voltage"),
                ("pv_voltage", "/Pv/V"),
                ("pv_current", "/Pv/I"),
                ("pv_power", "/Yield/Power"),
                ("yield_today_kwh", "/History/Daily/0/Yield"),
                ("yield_total_kwh", "/Yield/User"),
            ][..],
        ),
        (
            "multi",
            ModbusClass::VeBus,
            ReadingTable::Inverter,
            &[
                ("ac_out_l1_voltage", "/Ac/Out/L1/V"),
                ("ac_out_l1_power", "/Ac/Out/L1/P"),
                ("ac_out_l1_frequency", "/Ac/Out/L1/F"),
                ("dc_voltage", "/Dc/0/Voltage"),
                ("soc", "/Soc"),
            ][..],
        ),
        (
            "gx",
            ModbusClass::System,
            ReadingTable::System,
            &[
                ("battery_soc", "/Dc/Battery/Soc"),
                ("battery_voltage", "/Dc/Battery/Voltage"),
                ("ac_consumption_l1_power", "/Ac/Consumption/L1/Power"),
                ("dc_pv_power", "/Dc/Pv/Power"),
                ("battery_consumed_ah", "/Dc/Battery/ConsumedAmphours"),
            ][..],
        ),
    ] {
        let reading = by(device);
        assert_eq!((reading.table, reading.source), (table, SourceKind::Modbus));
        for (column, path) in pairs {
            let served = sim
                .served(class, path)
                .unwrap_or_else(|| panic!("{path} not served"));
            let read = reading
                .float(column)
                .unwrap_or_else(|| panic!("{device}.{column} missing"));
            assert!(
                close(read, served),
                "{device}.{column}: read {read}, served {served}"
            );
        }
    }
    assert_eq!(by("mppt").text("charge_state"), Some("Bulk"));
    assert_eq!(by("multi").text("state"), Some("Inverting"));
    assert_eq!(
        by("multi").float("ac_out_l2_voltage"),
        None,
        "single phase: L2 is NULL"
    );
    assert_eq!(by("bank").text("state"), Some("discharging"));
    assert_eq!(
        by("bank").float("starter_voltage"),
        None,
        "the GX serves 0 for it: NULL"
    );
    assert_eq!(by("gx").text("battery_state"), Some("discharging"));
    let age = chrono::Utc::now() - by("bank").measured_at;
    assert!(age.num_seconds() < 5, "stamped with the measurement time");
    assert_eq!(
        status.get("bank").unwrap().firmware.as_deref(),
        Some("v3.42")
    );
}

#[tokio::test]
async fn an_offline_unit_is_reported_and_the_others_keep_their_schedule() {
    let sim = simulator(true).await;
    sim.set_offline(BANK.unit_id, true);
    let (tx, mut rx) = mpsc::channel(256);
    let status = StatusBoard::new();
    let poller = GxPoller::new(&gx_config(sim.addr().port(), 200), status.clone(), tx);
    let cancel = CancellationToken::new();
    let task = tokio::spawn(poller.run(cancel.clone()));
    wait_for_status(&status, "gx", "three poll cycles", |s| s.polls >= 3).await;
    cancel.cancel();
    let mut poller = task.await.unwrap();

    let bank = status.get("bank").unwrap();
    assert_eq!(bank.last_error_class, Some(ErrorClass::Unavailable));
    assert!(
        bank.last_error.as_deref().unwrap().contains("0x0a"),
        "{bank:?}"
    );
    assert_eq!(bank.consecutive_failures as u64, bank.polls, "{bank:?}");
    let readings = drain(&mut rx);
    assert!(readings.iter().all(|r| r.device != "bank"));
    // Every cycle polled every device; the others answered every time.
    let polls = status.get("gx").unwrap().polls;
    assert!(polls >= 3, "{polls} cycles");
    assert_eq!(bank.polls, polls);
    for device in ["gx", "mppt", "multi"] {
        let s = status.get(device).unwrap();
        assert_eq!(s.failures, 0, "{s:?}");
        let n = readings.iter().filter(|r| r.device == device).count() as u64;
        assert_eq!(n, s.polls, "{device}: one reading per poll");
    }

    sim.set_offline(BANK.unit_id, false);
    assert_eq!(poller.poll_once().await.readings, 4);
    assert!(status.get("bank").unwrap().is_healthy());
    assert!(drain(&mut rx).iter().any(|r| r.device == "bank"));
}

#[tokio::test]
async fn the_poller_reconnects_after_the_simulator_restarts() {
    let sim = simulator(true).await;
    let addr = sim.addr();
    let (tx, mut rx) = mpsc::channel(256);
    let status = StatusBoard::new();
    let poller = GxPoller::new(&gx_config(addr.port(), 100), status.clone(), tx);
    let cancel = CancellationToken::new();
    let task = tokio::spawn(poller.run(cancel.clone()));
    let first = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await;
    assert!(matches!(first, Ok(Some(_))), "no reading within 5 s");

    sim.stop();
    let down = wait_for_status(&status, "gx", "the GX down, with a reconnect delay", |s| {
        s.consecutive_failures >= 1 && s.backoff > Duration::ZERO
    })
    .await;
    assert!(down.consecutive_failures >= 1, "{down:?}");
    assert!(matches!(
        down.last_error_class,
        Some(ErrorClass::Transport | ErrorClass::Connect | ErrorClass::Timeout)
    ));
    assert!(
        down.backoff > Duration::ZERO,
        "a reconnect delay is reported"
    );
    drain(&mut rx);

    let listener = TcpListener::bind(addr).await.expect("rebind the same port");
    let _sim = gx::start(listener, GxSimOptions::default()).unwrap();
    let up = wait_for_status(&status, "gx", "the GX answering again", |s| s.is_healthy()).await;
    assert!(up.is_healthy(), "{up:?}");
    assert_eq!(up.backoff, Duration::ZERO);
    // Its reading is sent right after its status is updated.
    let gx_reading = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(reading) = rx.recv().await {
            if reading.device == "gx" {
                return true;
            }
        }
        false
    })
    .await;
    assert!(
        matches!(gx_reading, Ok(true)),
        "no gx reading after the restart"
    );
    cancel.cancel();
    task.await.unwrap();
}

#[tokio::test]
async fn dropped_connections_and_slow_replies_are_survived() {
    let sim = simulator(false).await;
    let (tx, mut rx) = mpsc::channel(64);
    let status = StatusBoard::new();
    let mut poller = GxPoller::new(&gx_config(sim.addr().port(), 1000), status.clone(), tx);
    assert_eq!(poller.poll_once().await.readings, 4);

    sim.drop_connections();
    let report = poller.poll_once().await;
    assert_eq!(report.failed, 4, "the cut connection fails this cycle");
    let cut = status.get("gx").unwrap();
    assert_eq!(cut.last_error_class, Some(ErrorClass::Transport));
    assert_eq!(
        cut.last_error.as_deref(),
        Some("connection closed by the GX"),
        "not tokio-modbus's stale errno (\"Operation now in progress\")"
    );
    assert_eq!(
        poll_after_the_reconnect_delay(&mut poller).await.readings,
        4,
        "reconnected"
    );

    sim.set_delay(Duration::from_millis(500));
    let report = poller.poll_once().await;
    assert_eq!(report.failed, 4);
    assert_eq!(
        status.get("gx").unwrap().last_error_class,
        Some(ErrorClass::Timeout)
    );
    sim.set_delay(Duration::ZERO);
    assert_eq!(
        poll_after_the_reconnect_delay(&mut poller).await.readings,
        4
    );
    drain(&mut rx);
}

#[tokio::test]
async fn a_refused_block_falls_back_to_smaller_blocks_and_remembers() {
    let sim = simulator(false).await;
    // Older firmware: 782-783 were not mapped, inside the solar charger's block.
    sim.add_hole(782, 783);
    let (tx, mut rx) = mpsc::channel(64);
    let status = StatusBoard::new();
    let mut poller = GxPoller::new(&gx_config(sim.addr().port(), 1000), status.clone(), tx);
    let first = poller.poll_once().await;
    assert_eq!((first.readings, first.failed), (4, 0));
    // Solar charger: 1 refused block, then 4 adjacent blocks around the hole.
    assert_eq!(first.requests, 5 + 4);
    assert_eq!(poller.planned_requests(), 8);
    let mppt = drain(&mut rx)
        .into_iter()
        .find(|r| r.device == "mppt")
        .unwrap();
    assert_eq!(
        mppt.float("pv_power"),
        sim.served(ModbusClass::SolarCharger, "/Yield/Power")
    );
    assert_eq!(mppt.text("mppt_mode"), Some("MPPT active"));

    let second = poller.poll_once().await;
    assert_eq!(
        (second.requests, second.readings),
        (8, 4),
        "the finer plan is remembered"
    );
}

/// Builds a reply to a 12-byte read request.
type Reply = fn(&[u8]) -> Vec<u8>;

/// What the misbehaving server does after each reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Then {
    /// Waits for the next request.
    Listen,
    /// Closes the connection.
    HangUp,
}

/// A server that answers every request with `reply(request)`, then does `then`.
async fn misbehaving_server(reply: Reply, then: Then) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = [0u8; 12];
                while stream.read_exact(&mut request).await.is_ok() {
                    if stream.write_all(&reply(&request)).await.is_err() || then == Then::HangUp {
                        break;
                    }
                }
            });
        }
    });
    port
}

/// Each malformation gets the class an operator should see: a reply that
/// cannot be a Modbus-TCP reply to the request is a transport error, a
/// frame that stops coming is a timeout. On connecting, the poller reads
/// the GX firmware first; a broken reply there fails the connection, and
/// with it every device, with the same error.
#[tokio::test]
async fn malformed_short_and_mismatched_replies_are_errors_not_panics() {
    let replies: [(&str, Reply, Then, ErrorClass); 7] = [
        // A protocol id that is not Modbus's (0xbeef): refused as soon as
        // the header arrives.
        (
            "garbage",
            |_| b"\xde\xad\xbe\xef\x00\x05garbage that is no MBAP frame at all".to_vec(),
            Then::Listen,
            ErrorClass::Transport,
        ),
        // Its length field (0x2067) promises 8 KiB, more than any Modbus-TCP
        // frame holds, on a connection the server keeps open: refused at the
        // header, not waited for until the request timeout.
        (
            "garbage whose length field promises more than comes",
            |_| b"\x00\x01\x00\x00\x20\x67 garbage that is no MBAP frame at all".to_vec(),
            Then::Listen,
            ErrorClass::Transport,
        ),
        // A well-formed reply to another request: a header mismatch.
        (
            "wrong transaction id",
            |req| {
                let count = u16::from_be_bytes([req[10], req[11]]);
                let mut r = vec![req[0], req[1].wrapping_add(1), 0, 0];
                r.extend_from_slice(&(3 + 2 * count).to_be_bytes());
                r.extend_from_slice(&[req[6], 3, (2 * count) as u8]);
                r.extend(std::iter::repeat_n(0, usize::from(2 * count)));
                r
            },
            Then::Listen,
            ErrorClass::Transport,
        ),
        // One register where more were asked: the count is checked.
        (
            "fewer registers than asked",
            |req| {
                let mut r = vec![req[0], req[1], 0, 0, 0, 5, req[6], 3, 2, 0, 1];
                r.truncate(11);
                r
            },
            Then::Listen,
            ErrorClass::Transport,
        ),
        // 8 of the 15 bytes the header announces, then the connection closes:
        // the stream ends inside a frame.
        (
            "a frame cut short by the connection closing",
            |req| vec![req[0], req[1], 0, 0, 0, 9, req[6], 3],
            Then::HangUp,
            ErrorClass::Transport,
        ),
        // The same cut frame on a connection the server keeps open: nothing
        // more comes, and the client can only wait for the rest of the frame
        // until its request timeout.
        (
            "a frame cut short, the connection kept open",
            |req| vec![req[0], req[1], 0, 0, 0, 9, req[6], 3],
            Then::Listen,
            ErrorClass::Timeout,
        ),
        // An exception for function 0x10 to a 0x03 request: a function code
        // mismatch, not an exception the GX raised for this read.
        (
            "an exception for a function never asked",
            |req| vec![req[0], req[1], 0, 0, 0, 3, req[6], 0x90, 0x04],
            Then::Listen,
            ErrorClass::Transport,
        ),
    ];
    for (what, reply, then, class) in replies {
        let port = misbehaving_server(reply, then).await;
        let (tx, mut rx) = mpsc::channel(64);
        let status = StatusBoard::new();
        let mut config = gx_config(port, 1000);
        config.devices.truncate(2);
        let mut poller = GxPoller::new(&config, status.clone(), tx);
        let report = poller.poll_once().await;
        assert_eq!(report.readings, 0, "{what}");
        assert_eq!(report.failed, 2, "{what}");
        assert!(drain(&mut rx).is_empty());
        let gx = status.get("gx").unwrap();
        assert!(gx.last_error.is_some(), "{what}: {gx:?}");
        assert_eq!(gx.last_error_class, Some(class), "{what}: {gx:?}");
        let bank = status.get("bank").unwrap();
        assert_eq!(bank.last_error_class, Some(class), "{what}: {bank:?}");
    }
}

/// How [`zero_server`] answers the read requests after the first (the
/// poller's firmware read on connecting, answered at once).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answering {
    /// Holds its replies until this many requests have arrived, then
    /// answers them last first.
    AllAtOnceReversed(usize),
    /// Answers the first request of each read from the socket and drops the
    /// rest, as a server that takes one frame per read does.
    FirstOfEachRead,
}

/// A server that answers every read with zeros, in the way `answering` says.
async fn zero_server(answering: Answering) -> u16 {
    fn reply(request: &[u8]) -> Vec<u8> {
        let count = u16::from_be_bytes([request[10], request[11]]);
        let mut r = vec![request[0], request[1], 0, 0];
        r.extend_from_slice(&(3 + 2 * count).to_be_bytes());
        r.extend_from_slice(&[request[6], 3, (2 * count) as u8]);
        r.extend(std::iter::repeat_n(0, usize::from(2 * count)));
        r
    }
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buffer = vec![0u8; 4096];
                let mut received = Vec::new();
                let mut held: Vec<Vec<u8>> = Vec::new();
                let mut answered_first = false;
                loop {
                    let n = match stream.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    received.extend_from_slice(&buffer[..n]);
                    let mut replies = Vec::new();
                    let requests: Vec<Vec<u8>> =
                        received.chunks_exact(12).map(<[u8]>::to_vec).collect();
                    received.drain(..requests.len() * 12);
                    for (i, request) in requests.iter().enumerate() {
                        if !answered_first {
                            answered_first = true;
                            replies.push(reply(request));
                            continue;
                        }
                        match answering {
                            Answering::AllAtOnceReversed(n) => {
                                held.push(reply(request));
                                if held.len() == n {
                                    replies.extend(held.drain(..).rev());
                                }
                            }
                            Answering::FirstOfEachRead if i == 0 => replies.push(reply(request)),
                            Answering::FirstOfEachRead => {}
                        }
                    }
                    if stream.write_all(&replies.concat()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

/// A poll sends its devices' requests before their replies come, and takes
/// the replies in whatever order they come (matched by transaction id): a
/// server that answers only once all five of a poll's requests have arrived,
/// last first, is read completely on every poll.
#[tokio::test]
async fn a_poll_sends_its_requests_at_once_and_matches_replies_in_any_order() {
    let port = zero_server(Answering::AllAtOnceReversed(5)).await;
    let (tx, mut rx) = mpsc::channel(64);
    let status = StatusBoard::new();
    let mut poller = GxPoller::new(&gx_config(port, 1000), status.clone(), tx);
    assert_eq!(poller.planned_requests(), 5);
    for _ in 0..3 {
        let report = poller.poll_once().await;
        assert_eq!((report.requests, report.readings, report.failed), (5, 4, 0));
    }
    let readings = drain(&mut rx);
    assert_eq!(readings.len(), 12);
    let bank = readings.iter().find(|r| r.device == "bank").unwrap();
    assert_eq!(bank.float("soc"), Some(0.0), "the zeros served, decoded");
}

/// A server that answers only the first of several requests sent at once
/// costs one poll: that poll times out, and the poller asks it one request
/// at a time from then on.
#[tokio::test]
async fn a_gx_that_answers_one_request_per_read_is_asked_one_at_a_time() {
    let port = zero_server(Answering::FirstOfEachRead).await;
    let (tx, mut rx) = mpsc::channel(64);
    let status = StatusBoard::new();
    let mut poller = GxPoller::new(&gx_config(port, 1000), status.clone(), tx);
    let first = poller.poll_once().await;
    assert!(first.failed > 0, "{first:?}");
    assert_eq!(
        status.get("bank").unwrap().last_error_class,
        Some(ErrorClass::Timeout)
    );
    for _ in 0..3 {
        let report = poll_after_the_reconnect_delay(&mut poller).await;
        assert_eq!((report.requests, report.readings, report.failed), (5, 4, 0));
    }
    drain(&mut rx);
}
