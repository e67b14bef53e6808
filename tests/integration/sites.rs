//! Several sites on one database: two daemons of two sites with the same
//! device names, and one daemon polling two sites.

use std::time::Duration;

use crate::helpers::database::{Flavour, TestDb};
use crate::helpers::process::{
    run_cli, sigterm, spawn_daemon, store_status, successful_polls, texts, wait_exit, wait_for,
};
use crate::helpers::simulator::{
    BANK, simulator, site_device_names, site_device_tables, write_site_config,
};

/// Two daemons of two sites with the same device names, one simulator, one
/// database, failover on at both: neither stands by for the other's devices
/// (the locks are per site), each site's series is complete (a row per
/// successful poll), each device name has one status row per site, each site
/// a site_status row; the singleton is their sum and names a stopped site.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sites_with_the_same_device_names_are_two_series() {
    let db = TestDb::create(Flavour::Timescale).await;
    db.migrate().await;
    let sim = simulator().await;
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let sites = ["ranch-a", "ranch-b"];
    let mut daemons = Vec::new();
    for (dir, site) in dirs.iter().zip(sites) {
        let config = write_site_config(dir.path(), site, sim.addr().port(), 200);
        let mut text = std::fs::read_to_string(&config).unwrap();
        text.insert_str(0, "[failover]\nenabled = true\n");
        std::fs::write(&config, text).unwrap();
        let state = dir.path().join("state");
        daemons.push(spawn_daemon(&config, &state, Some(&db.url)));
    }
    wait_for("both sites' rows", Duration::from_secs(30), async || {
        let mut enough = true;
        for site in sites {
            enough &= db
                .scalar_i64(&format!(
                    "SELECT count(*) FROM victron.battery_readings WHERE installation_id = '{site}'"
                ))
                .await
                >= 10;
        }
        enough
    })
    .await;
    // A row per site, and the singleton as their sum.
    wait_for(
        "both sites healthy in the singleton",
        Duration::from_secs(20),
        async || {
            db.scalar_i64(
                "SELECT count(*) FROM victron.polling_status_view
             WHERE is_healthy AND sites = 2 AND sites_unhealthy = 0 AND devices_configured = 8",
            )
            .await
                == 1
        },
    )
    .await;
    assert_eq!(
        db.strings(
            "SELECT installation_id FROM victron.site_status_view WHERE is_healthy ORDER BY 1"
        )
        .await,
        vec!["ranch-a".to_string(), "ranch-b".to_string()]
    );
    let status = run_cli(&["status"], &[("DATABASE_URL", &db.url)]);
    let (stdout, stderr) = texts(&status);
    assert_eq!(status.status.code(), Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("site         ranch-b"), "{stdout}");
    // One site's daemon stops: the singleton says so, naming the site.
    sigterm(&daemons[1]);
    assert_eq!(wait_exit(&mut daemons[1], Duration::from_secs(20)), 0);
    assert_eq!(
        db.strings("SELECT last_error FROM victron.polling_status WHERE NOT is_healthy")
            .await,
        vec!["ranch-b: the daemon stopped".to_string()]
    );
    let status = run_cli(&["status"], &[("DATABASE_URL", &db.url)]);
    let (stdout, stderr) = texts(&status);
    assert_eq!(status.status.code(), Some(1), "degraded: {stdout}{stderr}");
    assert!(
        stdout.contains("1 of 2 site(s) not healthy: ranch-b: the daemon stopped"),
        "{stdout}"
    );
    let narrowed = run_cli(
        &["status", "--site", "ranch-a"],
        &[("DATABASE_URL", &db.url)],
    );
    let (stdout, stderr) = texts(&narrowed);
    assert_eq!(narrowed.status.code(), Some(0), "{stdout}{stderr}");
    assert!(!stdout.contains("ranch-b"), "{stdout}");
    sigterm(&daemons[0]);
    assert_eq!(wait_exit(&mut daemons[0], Duration::from_secs(20)), 0);
    for (dir, site) in dirs.iter().zip(sites) {
        let doc = store_status(&dir.path().join("state")).await;
        for (device, table) in site_device_tables() {
            let in_db = db
                .scalar_i64(&format!(
                    "SELECT count(*) FROM victron.{table} WHERE installation_id = '{site}' AND device = '{device}'"
                ))
                .await;
            assert_eq!(in_db, successful_polls(&doc, device), "{site} {device}");
        }
    }
    for device in site_device_names() {
        assert_eq!(
            db.strings(&format!(
                "SELECT installation_id FROM victron.device_status WHERE device = '{device}' ORDER BY 1"
            ))
            .await,
            vec!["ranch-a".to_string(), "ranch-b".to_string()],
            "{device}"
        );
    }
}

/// One daemon polling two sites (two GX sections with their own `site`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_daemon_polls_two_sites() {
    let db = TestDb::create(Flavour::Plain).await;
    db.migrate().await;
    let sim = simulator().await;
    let dir = tempfile::tempdir().unwrap();
    let port = sim.addr().port();
    let unit = BANK.unit_id;
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[site]\ninstallation_id = \"home\"\n\
             [[gx]]\nhost = \"127.0.0.1\"\nport = {port}\npoll_interval_ms = 200\n\
             [[gx.devices]]\nname = \"home-bank\"\nclass = \"battery\"\nunit_id = {unit}\n\
             [[gx]]\nhost = \"127.0.0.1\"\nport = {port}\npoll_interval_ms = 200\nsite = \"cabin\"\n\
             [[gx.devices]]\nname = \"cabin-bank\"\nclass = \"battery\"\nunit_id = {unit}\n"
        ),
    )
    .unwrap();
    let state = dir.path().join("state");
    let mut daemon = spawn_daemon(&config, &state, Some(&db.url));
    wait_for("rows of both sites", Duration::from_secs(30), async || {
        db.scalar_i64(
            "SELECT count(DISTINCT installation_id || '/' || device) FROM victron.battery_readings
             WHERE \"timestamp\" > now() - interval '1 hour'",
        )
        .await
            == 2
    })
    .await;
    sigterm(&daemon);
    assert_eq!(wait_exit(&mut daemon, Duration::from_secs(20)), 0);
    assert_eq!(
        db.strings("SELECT DISTINCT installation_id || '/' || device FROM victron.battery_readings ORDER BY 1")
            .await,
        vec!["cabin/cabin-bank".to_string(), "home/home-bank".to_string()]
    );
    assert_eq!(
        db.strings("SELECT installation_id || '/' || device FROM victron.device_status ORDER BY 1")
            .await,
        vec!["cabin/cabin-bank".to_string(), "home/home-bank".to_string()]
    );
}
