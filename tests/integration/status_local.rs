//! `status` without a database, on a real local store written by the
//! library: a device's last success is one figure, the later of the
//! daemon's saved status document and its newest stored reading, not two
//! times that disagree.

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use victron_poller::reading::{Reading, ReadingTable, SourceKind, Value};
use victron_poller::report::Snapshot;
use victron_poller::status::StatusBoard;
use victron_poller::store::{LocalStore, STATUS_NAME};

use crate::helpers::process::{run_cli, texts};

/// The status document of a daemon polling `bank` and `mppt`, both last
/// successful at `at`.
fn snapshot(at: DateTime<Utc>) -> Snapshot {
    let board = StatusBoard::new();
    for (device, unit) in [("bank", 226), ("mppt", 224)] {
        board.register(device, SourceKind::Modbus, format!("127.0.0.1:502/{unit}"));
        board.success(device, at);
    }
    Snapshot {
        rows_stored: 1,
        spool_depth: 1,
        status_every_ms: 7000,
        devices: board.snapshot(),
        ..Snapshot::starting("gateway", at - Duration::minutes(1))
    }
}

/// The seconds of "last success N s ago" on `device`'s line.
fn last_success_age(stdout: &str, device: &str) -> f64 {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("device ") && l.split_whitespace().nth(2) == Some(device))
        .unwrap_or_else(|| panic!("no line for {device}: {stdout}"));
    line.split("last success ")
        .nth(1)
        .and_then(|rest| rest.split(" s ago").next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no age on {line}"))
}

/// The status document was saved 7 s after the devices' last success; the
/// battery monitor's reading stored since is 2 s old: its line says 2 s,
/// the solar charger's (no newer reading) 7 s, and no other time is shown
/// for them.
#[tokio::test]
async fn a_devices_last_success_is_one_figure() {
    let dir = tempfile::tempdir().unwrap();
    let now = Utc::now();
    let store = LocalStore::open(dir.path()).await.unwrap();
    let reading_at = now - Duration::seconds(2);
    store
        .append(&[Reading {
            site: Arc::from(""),
            device: "bank".into(),
            table: ReadingTable::Battery,
            source: SourceKind::Modbus,
            measured_at: reading_at,
            unconfirmed: None,
            values: vec![("soc", Value::Float(87.0))],
        }])
        .await
        .unwrap();
    let polled_at = now - Duration::seconds(7);
    store.stage_status(
        STATUS_NAME,
        &serde_json::to_value(snapshot(polled_at)).unwrap(),
    );
    assert!(store.flush_status().await.unwrap());
    store.close().await;

    let state = dir.path().to_str().unwrap();
    let output = run_cli(&["status", "--state-dir", state], &[]);
    let (stdout, stderr) = texts(&output);
    let elapsed = (Utc::now() - now).num_milliseconds() as f64 / 1000.0;
    let bank = last_success_age(&stdout, "bank");
    assert!(
        (1.5..=2.5 + elapsed).contains(&bank),
        "bank's last success is its stored reading's, 2 s ago: {bank} s\n{stdout}{stderr}"
    );
    let mppt = last_success_age(&stdout, "mppt");
    assert!(
        (6.5..=7.5 + elapsed).contains(&mppt),
        "mppt's is the status document's, 7 s ago: {mppt} s\n{stdout}"
    );
    assert!(!stdout.contains("latest"), "one time per device: {stdout}");
    assert!(
        stdout.contains("bank") && stdout.contains("1 in the last hour"),
        "{stdout}"
    );

    let output = run_cli(&["status", "--json", "--state-dir", state], &[]);
    let doc: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let last = |device: &str| -> DateTime<Utc> {
        let found = doc["devices"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["device"] == device)
            .unwrap_or_else(|| panic!("{device}: {doc}"));
        found["last_success"].as_str().unwrap().parse().unwrap()
    };
    let micros = |t: DateTime<Utc>| t.timestamp_micros();
    assert_eq!(micros(last("bank")), micros(reading_at));
    assert_eq!(micros(last("mppt")), micros(polled_at));
}
