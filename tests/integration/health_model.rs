//! One health model: the SQL definition of stale is the Rust one (a table
//! of cases on a real server), and one situation gives one verdict on every
//! surface — `/healthz`, `status --json`, the systemd `STATUS=` line and the
//! status rows.

use std::time::Duration;

use victron_poller::report::health::stale_after;

use crate::helpers::database::{Flavour, TestDb};
use crate::helpers::http::health_address;
use crate::helpers::http::try_http_get;
use crate::helpers::process::{run_cli, texts};
use crate::helpers::process::{sigterm, spawn_daemon_with, wait_exit, wait_for};
use crate::helpers::simulator::simulator;

/// Ages around the rule's boundary, for polls and status periods of every
/// kind (a NULL period: a row of an older daemon).
#[tokio::test]
async fn the_stale_rule_in_sql_is_the_rust_rule() {
    let db = TestDb::create(Flavour::Timescale).await;
    db.migrate().await;
    let cases: [(i64, Option<i64>); 6] = [
        (1000, Some(5000)),
        (200, Some(5000)),
        (10_000, Some(10_000)),
        (60_000, Some(60_000)),
        (1000, None),
        (5000, Some(1000)),
    ];
    for (interval_ms, every_ms) in cases {
        let rule = stale_after(
            Duration::from_millis(interval_ms.unsigned_abs()),
            Duration::from_millis(every_ms.unwrap_or(0).unsigned_abs()),
        );
        // Half a second either side of the boundary, and well inside.
        let boundary = rule.as_secs_f64();
        for age_s in [0.0, boundary - 0.5, boundary + 0.5, boundary * 3.0] {
            let in_sql = db
                .scalar_i64(&format!(
                    "SELECT victron.status_is_stale(now() - make_interval(secs => {age_s}), {interval_ms}, {})::int::int8",
                    every_ms.map_or("NULL".into(), |e| e.to_string())
                ))
                .await;
            let in_rust = i64::from(age_s > boundary);
            assert_eq!(
                in_sql, in_rust,
                "poll {interval_ms} ms, status every {every_ms:?} ms, age {age_s} s"
            );
        }
    }
}

/// A daemon with a database and one device that never answers: `/healthz`,
/// `status --json`, the `STATUS=` line and the site's status row all say
/// degraded, with that device's reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_situation_one_verdict_on_every_surface() {
    let db = TestDb::create(Flavour::Timescale).await;
    db.migrate().await;
    let sim = simulator().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    // Unit 239: no device there on the simulated GX.
    std::fs::write(
        &config,
        format!(
            "[site]\ninstallation_id = \"ranch\"\n[health]\nlisten = \"127.0.0.1:0\"\n\
             [[gx]]\nhost = \"127.0.0.1\"\nport = {}\npoll_interval_ms = 200\n\
             request_timeout_ms = 500\n\
             [[gx.devices]]\nname = \"bank\"\nclass = \"battery\"\nunit_id = 226\n\
             [[gx.devices]]\nname = \"ghost\"\nclass = \"battery\"\nunit_id = 239\n",
            sim.addr().port()
        ),
    )
    .unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = tokio::net::UnixDatagram::bind(&socket_path).unwrap();
    let state = dir.path().join("state");
    let mut daemon = spawn_daemon_with(
        &config,
        &state,
        &[
            ("DATABASE_URL", &db.url),
            ("NOTIFY_SOCKET", socket_path.to_str().unwrap()),
        ],
    );
    let health = health_address(&state).await;
    let ghost = |text: &str| text.contains("ghost:");
    // /healthz.
    let mut healthz = serde_json::Value::Null;
    wait_for(
        "/healthz names the ghost",
        Duration::from_secs(30),
        async || {
            healthz = try_http_get(health, "/healthz")
                .ok()
                .and_then(|(_, body)| serde_json::from_str(&body).ok())
                .unwrap_or_default();
            healthz["reasons"]
                .as_array()
                .is_some_and(|r| r.iter().any(|r| ghost(r.as_str().unwrap_or_default())))
        },
    )
    .await;
    assert_eq!(healthz["health"], "degraded", "{healthz}");
    // The STATUS= line.
    let mut line = String::new();
    let mut buf = vec![0u8; 4096];
    wait_for(
        "a STATUS= line naming the ghost",
        Duration::from_secs(10),
        async || {
            if let Ok(Ok(n)) =
                tokio::time::timeout(Duration::from_millis(500), socket.recv(&mut buf)).await
            {
                let message = String::from_utf8_lossy(&buf[..n]).into_owned();
                if let Some(status) = message.lines().find_map(|l| l.strip_prefix("STATUS=")) {
                    line = status.to_string();
                }
            }
            ghost(&line)
        },
    )
    .await;
    assert!(line.starts_with("degraded: "), "{line}");
    // The site's status row.
    wait_for("the site's row", Duration::from_secs(20), async || {
        db.scalar_i64(
            "SELECT count(*) FROM victron.site_status WHERE installation_id = 'ranch' AND last_error LIKE 'ghost:%'",
        )
        .await
            == 1
    })
    .await;
    assert_eq!(
        db.scalar_i64(
            "SELECT is_healthy::int::int8 FROM victron.site_status WHERE installation_id = 'ranch'"
        )
        .await,
        0
    );
    // `status --json`, from the rows.
    let output = run_cli(
        &["--config", config.to_str().unwrap(), "status", "--json"],
        &[("DATABASE_URL", &db.url)],
    );
    let (out, err) = texts(&output);
    assert_eq!(output.status.code(), Some(1), "{out}{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["health"], "degraded", "{out}");
    assert!(
        report["reasons"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| ghost(r.as_str().unwrap_or_default())),
        "{out}"
    );
    // The table: what the server lacks (here the Apache edition's retention
    // policy) is a note, never a second "degraded".
    let output = run_cli(
        &["--config", config.to_str().unwrap(), "status"],
        &[("DATABASE_URL", &db.url)],
    );
    let (out, _) = texts(&output);
    assert!(out.contains("note         retention policy:"), "{out}");
    assert_eq!(
        out.lines().filter(|l| l.contains("degraded")).count(),
        1,
        "the verdict's line only: {out}"
    );
    sigterm(&daemon);
    assert_eq!(wait_exit(&mut daemon, Duration::from_secs(20)), 0);
}
