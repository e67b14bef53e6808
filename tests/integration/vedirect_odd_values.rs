//! A VE.Direct source behind a TCP bridge, fed checksum-valid blocks whose
//! firmware text is not ASCII: the device task lives on, every block's
//! numbers become readings, and only the firmware is unknown while the
//! device sends no valid one.

use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use victron_poller::config::{VeDirectConfig, VeDirectPort};
use victron_poller::reading::{Reading, ReadingTable};
use victron_poller::sources::vedirect::VeDirectSource;
use victron_poller::status::StatusBoard;

/// A SmartShunt's one-block cycle whose voltage counts `n` (26.000 V + n
/// mV), with `fw` as its firmware field, its checksum computed here: the
/// 8-bit sum of all its bytes is 0.
fn cycle(n: u32, fw: &[u8]) -> Vec<u8> {
    let voltage = (26_000 + n).to_string();
    let fields: [(&str, &[u8]); 8] = [
        ("PID", b"0xA389"),
        ("V", voltage.as_bytes()),
        ("I", b"-1500"),
        ("SOC", b"950"),
        ("Alarm", b"OFF"),
        ("BMV", b"SmartShunt 500A/50mV"),
        ("FW", fw),
        ("SER#", b"HQ2109ABCDE"),
    ];
    let mut out = Vec::new();
    for (label, value) in fields {
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(label.as_bytes());
        out.push(b'\t');
        out.extend_from_slice(value);
    }
    out.extend_from_slice(b"\r\nChecksum\t");
    let sum = out.iter().fold(0u8, |s, b| s.wrapping_add(*b));
    out.push(0u8.wrapping_sub(sum));
    out
}

async fn next_reading(rx: &mut mpsc::Receiver<Reading>, what: &str) -> Reading {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .unwrap_or_else(|_| panic!("no reading for {what} in 10 s"))
        .unwrap_or_else(|| panic!("the source ended before {what}"))
}

#[tokio::test]
async fn an_odd_firmware_byte_costs_the_firmware_only() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let config = VeDirectConfig {
        site: String::new(),
        name: "shunt".into(),
        port: VeDirectPort::Tcp(listener.local_addr().unwrap().to_string()),
        poll_interval: Duration::ZERO,
        silence_timeout: Duration::from_secs(30),
        reconnect_min: Duration::from_millis(50),
        reconnect_max: Duration::from_millis(200),
    };
    let (tx, mut rx) = mpsc::channel(64);
    let status = StatusBoard::new();
    let cancel = CancellationToken::new();
    let task = tokio::spawn(VeDirectSource::new(&config, status.clone(), tx).run(cancel.clone()));
    let (mut socket, _) = listener.accept().await.unwrap();

    // A normal cycle, then cycles whose FW is a Latin-1 byte and a digit
    // (with and without a space), a UTF-8 letter, then normal ones again.
    // Each row is sent as its cycle is known complete: the second cycle
    // completes the first and (one block a cycle, learned) itself.
    let cycles: [(&[u8], Option<&str>); 6] = [
        (b"0414", Some("4.14")),
        (b"\xE9 1", None),
        (b"\xE91", None),
        (b"\xC3\xA9", None),
        (b"0414", Some("4.14")),
        (b"0415", Some("4.15")),
    ];
    for (n, (fw, firmware)) in (0u32..).zip(cycles) {
        socket.write_all(&cycle(n, fw)).await.unwrap();
        if n == 0 {
            continue;
        }
        if n == 1 {
            let first = next_reading(&mut rx, "cycle 0").await;
            assert_eq!(first.float("voltage"), Some(26.0));
        }
        let reading = next_reading(&mut rx, &format!("cycle {n}")).await;
        assert_eq!(reading.table, ReadingTable::Battery);
        let volts = 26.0 + f64::from(n) / 1000.0;
        assert_eq!(reading.float("voltage"), Some(volts), "cycle {n}");
        assert_eq!(reading.float("current"), Some(-1.5), "cycle {n}");
        assert_eq!(reading.float("soc"), Some(95.0), "cycle {n}");
        // The status is updated before the row is sent, and nothing more
        // has been written: it is this cycle's.
        let device = status.get("shunt").unwrap();
        assert_eq!(device.firmware.as_deref(), firmware, "cycle {n}");
        assert_eq!(device.serial.as_deref(), Some("HQ2109ABCDE"), "cycle {n}");
        assert!(device.is_healthy(), "cycle {n}: {device:?}");
        assert_eq!(device.corrupt_blocks, 0, "the odd blocks are valid blocks");
    }
    assert!(!task.is_finished(), "the source task ended");
    cancel.cancel();
    // A panic in the source would surface here as a join error.
    task.await.expect("the source task ran to its end");
}

/// The stricter reading changes nothing for real devices: every block of
/// the raw captures reads without a bad value, and the firmware is the one
/// the captures were recorded with (their sources name it).
#[test]
fn every_capture_block_reads_without_a_bad_value() {
    use victron_poller::sources::vedirect::codec::{Frame, VeDirectCodec, decode_all};
    use victron_poller::sources::vedirect::fields::Snapshot;
    for (name, firmware) in [
        ("bvm702.dump", "3.08"),
        ("bluesolar_1.23.dump", "1.23"),
        ("smartsolar_1.39.dump", "1.39"),
    ] {
        let bytes = std::fs::read(format!(
            "{}/tests/fixtures/vedirect/{name}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap();
        let mut blocks = 0;
        let mut with_firmware = 0;
        for frame in decode_all(&mut VeDirectCodec::new(), &bytes) {
            let Frame::Block(block) = frame else {
                continue;
            };
            let snapshot = Snapshot::from_block(&block, chrono::Utc::now());
            assert_eq!(
                (snapshot.bad_values, snapshot.unknown_labels),
                (0, 0),
                "{name}: {:?}",
                String::from_utf8_lossy(block.bytes())
            );
            if block.get("FW").is_some() {
                assert_eq!(snapshot.firmware().as_deref(), Some(firmware), "{name}");
                with_firmware += 1;
            }
            blocks += 1;
        }
        assert!(
            blocks > 200 && with_firmware > 200,
            "{name}: {blocks}, {with_firmware}"
        );
    }
}
