//! The binary as a user runs it: exit codes, one-line errors, and no password
//! in any output.

use crate::helpers::{Flavour, TestDb, run_cli, texts};

const SECRET: &str = "hunter2-secret";

fn assert_one_line_without_secret(stderr: &str) {
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "one line expected: {stderr}"
    );
    assert!(!stderr.contains(SECRET), "the password leaked: {stderr}");
}

#[test]
fn bad_config_names_every_key_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        format!(
            "[database]\nurl = \"postgres://u:{SECRET}@localhost/db\"\nmax_connections = -3\n\
             [retention]\nwindow_hours = \"three days\"\n[poller]\ninterval = 5\n"
        ),
    )
    .unwrap();
    let output = run_cli(&["--config", path.to_str().unwrap(), "check-config"], &[]);
    let (_, stderr) = texts(&output);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert_one_line_without_secret(&stderr);
    for key in [
        "database.max_connections",
        "retention.window_hours",
        "poller.interval",
    ] {
        assert!(stderr.contains(key), "{key} not named: {stderr}");
    }

    let missing = run_cli(
        &[
            "--config",
            "/nonexistent/victron-poller.toml",
            "check-config",
        ],
        &[],
    );
    assert_eq!(missing.status.code(), Some(2));
    assert!(
        texts(&missing)
            .1
            .contains("/nonexistent/victron-poller.toml")
    );

    let bad_env = run_cli(&["check-config"], &[("VICTRON_POLLER_LOG__FORMAT", "xml")]);
    assert_eq!(bad_env.status.code(), Some(2));
    assert!(texts(&bad_env).1.contains("log.format"));
}

#[test]
fn check_config_shows_settings_without_the_password() {
    let output = run_cli(
        &["check-config"],
        &[(
            "DATABASE_URL",
            &format!("postgres://ranch:{SECRET}@db.example.net:5432/ranch"),
        )],
    );
    let (stdout, stderr) = texts(&output);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(
        stdout.contains("postgres://ranch@db.example.net:5432/ranch"),
        "{stdout}"
    );
    assert!(stdout.contains("set (hidden)"), "{stdout}");
    assert!(!stdout.contains(SECRET) && !stderr.contains(SECRET));
}

#[test]
fn no_database_configured_is_a_config_error() {
    let output = run_cli(&["migrate"], &[]);
    let (_, stderr) = texts(&output);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("database.url"), "{stderr}");
}

#[test]
fn unreachable_database_exits_3_without_the_password() {
    // Port 1 on loopback: nothing listens there.
    let url = format!("postgres://postgres:{SECRET}@127.0.0.1:1/postgres");
    for command in [&["migrate"][..], &["migrate", "--check"], &["status"]] {
        let output = run_cli(command, &[("DATABASE_URL", &url)]);
        let (_, stderr) = texts(&output);
        assert_eq!(output.status.code(), Some(3), "{command:?}: {stderr}");
        assert_one_line_without_secret(&stderr);
        assert!(
            stderr
                .contains("cannot reach the database at postgres://postgres@127.0.0.1:1/postgres"),
            "{stderr}"
        );
    }
}

#[tokio::test]
async fn wrong_password_exits_3_without_the_password() {
    let db = TestDb::create(Flavour::Plain).await;
    let role = format!("{}_user", db.name);
    db.execute(&format!(
        "CREATE ROLE {role} LOGIN PASSWORD 'right-password' IN ROLE vp_password_auth;
         GRANT ALL ON DATABASE {} TO {role}",
        db.name
    ))
    .await;
    let base = db.url.replace("postgres@", &format!("{role}:{{}}@"));

    let wrong = run_cli(
        &["status"],
        &[("DATABASE_URL", &base.replace("{}", SECRET))],
    );
    let (_, stderr) = texts(&wrong);
    assert_eq!(wrong.status.code(), Some(3), "{stderr}");
    assert_one_line_without_secret(&stderr);
    assert!(stderr.contains("refused the credentials"), "{stderr}");
    assert!(
        stderr.contains("password authentication failed"),
        "{stderr}"
    );

    // The password given separately from the URL is used, and also never shown.
    let separate = run_cli(
        &["status"],
        &[
            ("DATABASE_URL", &base.replace(":{}", "")),
            ("VICTRON_POLLER_DATABASE__PASSWORD", SECRET),
        ],
    );
    assert_eq!(separate.status.code(), Some(3));
    assert_one_line_without_secret(&texts(&separate).1);

    // The right password gets through: the failure above was the password.
    let right = run_cli(
        &["status"],
        &[("DATABASE_URL", &base.replace("{}", "right-password"))],
    );
    let (stdout, stderr) = texts(&right);
    assert_eq!(
        right.status.code(),
        Some(1),
        "pending migrations: {stdout}{stderr}"
    );
}

#[tokio::test]
async fn migrate_check_and_status_report_pending_then_current() {
    let db = TestDb::create(Flavour::Timescale).await;
    let env = [("DATABASE_URL", db.url.as_str())];

    let check = run_cli(&["migrate", "--check"], &env);
    let (stdout, _) = texts(&check);
    assert_eq!(check.status.code(), Some(1), "{stdout}");
    assert_eq!(
        stdout.matches("pending").count(),
        victron_poller::db::migrate::embedded().len()
    );

    let status = run_cli(&["status"], &env);
    assert_eq!(status.status.code(), Some(2), "down: no poller has run");
    assert!(
        texts(&status).0.contains("migrations   0 of"),
        "{}",
        texts(&status).0
    );

    let migrate = run_cli(&["migrate"], &env);
    let (stdout, stderr) = texts(&migrate);
    assert_eq!(migrate.status.code(), Some(0), "{stdout}{stderr}");
    assert!(
        stdout.contains("applied   0005_victron_views.sql"),
        "{stdout}"
    );
    assert!(stdout.contains("storage   timescaledb-apache"), "{stdout}");
    assert_eq!(
        stdout.matches("degraded  ").count(),
        1,
        "one line per degraded feature: {stdout}"
    );

    let check = run_cli(&["migrate", "--check"], &env);
    assert_eq!(check.status.code(), Some(0), "{}", texts(&check).0);

    let json = run_cli(&["status", "--json"], &env);
    assert_eq!(
        json.status.code(),
        Some(2),
        "migrated, but no poller has run yet"
    );
    let value: serde_json::Value =
        serde_json::from_slice(&json.stdout).expect("status --json is JSON");
    assert_eq!(value["health"], "down");
    let schema = &value["schema"];
    assert_eq!(schema["storage_mode"], "timescaledb-apache");
    assert_eq!(schema["migrations"]["pending"].as_array().unwrap().len(), 0);
    assert_eq!(schema["degraded"][0]["feature"], "retention policy");
    assert_eq!(schema["schema"]["hypertables"].as_array().unwrap().len(), 4);
}

#[tokio::test]
async fn status_reports_each_flavour_s_degraded_features() {
    for (flavour, storage, degraded) in [
        (
            Flavour::NoPreload,
            "postgres",
            &["hypertables", "retention policy"][..],
        ),
        (
            Flavour::Plain,
            "postgres",
            &["hypertables", "retention policy", "vector search"][..],
        ),
    ] {
        let db = TestDb::create(flavour).await;
        db.migrate().await;
        let output = run_cli(&["status", "--json"], &[("DATABASE_URL", &db.url)]);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{flavour:?}: no poller has run"
        );
        let value: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        let value = &value["schema"];
        assert_eq!(value["storage_mode"], storage, "{flavour:?}");
        let features: Vec<&str> = value["degraded"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["feature"].as_str().unwrap())
            .collect();
        assert_eq!(features, degraded, "{flavour:?}");
    }
}

#[test]
fn log_format_json_prints_one_json_object_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.toml");
    // A GX nobody answers for: the daemon logs the device going down.
    std::fs::write(&config, "[[gx]]\nhost = \"127.0.0.1\"\nport = 1\n[[gx.devices]]\nname = \"s\"\nclass = \"system\"\n").unwrap();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_victron-poller"))
        .args([
            "--config",
            config.to_str().unwrap(),
            "run",
            "--state-dir",
            dir.path().join("s").to_str().unwrap(),
        ])
        .env_clear()
        .env("VICTRON_POLLER_LOG__FORMAT", "json")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(800));
    std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(lines.len() >= 3, "{stderr}");
    for line in &lines {
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(
            value["level"].is_string() && value["message"].is_string(),
            "{line}"
        );
    }
    assert!(
        lines.iter().any(|l| l.contains("Device is down.")),
        "{stderr}"
    );
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.contains("Device is down."))
            .count(),
        1,
        "logged once: {stderr}"
    );
}
