//! The database password on every surface: given in the URL's query string
//! (`?password=`), it is taken out of the URL as the user part's is, so the
//! log, `check-config`, the status document the daemon saves in its local
//! store and `status` show the URL without it; the other secret parameters
//! are refused without their value; a TOML syntax error quotes no secret,
//! even one that does not look like part of a URL. And a remote database
//! server the connection does not verify is warned about, at `run`'s start
//! and by `check-config`.

use std::path::{Path, PathBuf};
use std::time::Duration;

#[cfg(feature = "servers")]
use crate::helpers::database::{Flavour, TestDb};
use crate::helpers::process::{
    log_of, sigterm, spawn_daemon_with, store_status, try_store_status, wait_exit, wait_for,
};
use crate::helpers::process::{run_cli, texts};

const SECRET: &str = "hunter2-in-the-query";

/// A GX on a closed port (its device goes down at once; the daemon runs on).
fn config_with_a_dead_gx(dir: &Path) -> PathBuf {
    let path = dir.join("c.toml");
    std::fs::write(
        &path,
        "[[gx]]\nhost = \"127.0.0.1\"\nport = 1\n[[gx.devices]]\nname = \"s\"\nclass = \"system\"\n",
    )
    .unwrap();
    path
}

fn assert_no_secret(what: &str, text: &str) {
    assert!(!text.contains(SECRET), "{what} shows the password: {text}");
    assert!(
        !text.contains("password="),
        "{what} shows a password parameter: {text}"
    );
}

/// A URL whose password is in the query string, as `DATABASE_URL`; nothing
/// listens on port 1, so the daemon keeps its readings locally.
const URL: &str =
    "postgres://victron@127.0.0.1:1/ranch?sslmode=disable&password=hunter2-in-the-query";
/// How every surface must show it.
const SHOWN: &str = "postgres://victron@127.0.0.1:1/ranch?sslmode=disable";

/// Runs the daemon with [`URL`] until it has reported the database out of
/// reach and saved a status document, then stops it; gives its state
/// directory (its log next to it, see [`log_of`]).
async fn run_the_daemon_once(dir: &Path) -> PathBuf {
    assert!(URL.ends_with(SECRET));
    let config = config_with_a_dead_gx(dir);
    let state = dir.join("state");
    let mut daemon = spawn_daemon_with(&config, &state, &[("DATABASE_URL", URL)]);
    wait_for(
        "the database reported out of reach, and a status document",
        Duration::from_secs(30),
        async || {
            log_of(&state).contains("The database is not ready")
                && try_store_status(&state)
                    .await
                    .is_some_and(|doc| doc["database"].is_string())
        },
    )
    .await;
    sigterm(&daemon);
    assert_eq!(wait_exit(&mut daemon, Duration::from_secs(30)), 0);
    state
}

#[test]
fn check_config_shows_the_url_without_its_query_password() {
    assert!(URL.ends_with(SECRET));
    let dir = tempfile::tempdir().unwrap();
    let config = config_with_a_dead_gx(dir.path());
    let output = run_cli(
        &["--config", config.to_str().unwrap(), "check-config"],
        &[("DATABASE_URL", URL)],
    );
    let (stdout, stderr) = texts(&output);
    assert_eq!(output.status.code(), Some(0), "{stdout}{stderr}");
    let value = |key: &str| {
        stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(key))
            .unwrap_or_else(|| panic!("no {key} line: {stdout}"))
            .split_whitespace()
            .skip(1)
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert_eq!(value("database.url"), SHOWN);
    assert_eq!(value("database.password"), "set (hidden)");
    assert_no_secret("check-config", &format!("{stdout}{stderr}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_shows_the_url_without_its_query_password() {
    let dir = tempfile::tempdir().unwrap();
    let state = run_the_daemon_once(dir.path()).await;
    let log = log_of(&state);
    assert!(
        log.contains(&format!("cannot reach the database at {SHOWN}:")),
        "{log}"
    );
    assert_no_secret("the log", &log);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_document_in_the_store_holds_no_query_password() {
    let dir = tempfile::tempdir().unwrap();
    let state = run_the_daemon_once(dir.path()).await;
    let doc = store_status(&state).await;
    assert_eq!(doc["database"], SHOWN, "{doc}");
    assert_no_secret("the status document", &doc.to_string());
    // Nor any other byte of the store's files.
    let mut files = 0;
    for entry in std::fs::read_dir(&state).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        assert!(
            !bytes.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()),
            "the local store holds the password"
        );
        files += 1;
    }
    assert!(files > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_the_url_without_its_query_password() {
    let dir = tempfile::tempdir().unwrap();
    let state = run_the_daemon_once(dir.path()).await;
    let config = dir.path().join("c.toml");
    // For people, and as JSON (with the daemon's saved document, since the
    // database is out of reach).
    for json in [false, true] {
        let mut args = vec![
            "--config",
            config.to_str().unwrap(),
            "status",
            "--state-dir",
            state.to_str().unwrap(),
        ];
        if json {
            args.push("--json");
        }
        let output = run_cli(&args, &[("DATABASE_URL", URL)]);
        let (stdout, stderr) = texts(&output);
        assert_eq!(output.status.code(), Some(3), "{stdout}{stderr}");
        assert!(
            stdout.contains(&format!("cannot reach the database at {SHOWN}:")),
            "json {json}: {stdout}"
        );
        assert_no_secret("status", &format!("{stdout}{stderr}"));
        if json {
            let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
            assert_eq!(report["daemon"]["status"]["database"], SHOWN, "{report}");
        }
    }
}

#[test]
fn the_other_secret_parameters_are_refused_without_their_value() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_with_a_dead_gx(dir.path());
    for (parameter, says) in [
        ("sslpassword", "sslpassword is not supported"),
        ("Password", "parameter `Password` is unknown"),
    ] {
        let url = format!("postgres://victron@db.example.net/ranch?{parameter}={SECRET}");
        for command in ["check-config", "run"] {
            let output = run_cli(
                &["--config", config.to_str().unwrap(), command],
                &[("DATABASE_URL", &url)],
            );
            let (stdout, stderr) = texts(&output);
            assert_eq!(
                output.status.code(),
                Some(78),
                "{command}: {stdout}{stderr}"
            );
            assert!(
                stderr.contains("database.url") && stderr.contains(says),
                "{stderr}"
            );
            assert!(!format!("{stdout}{stderr}").contains(SECRET), "{stderr}");
        }
    }
}

#[test]
fn a_toml_syntax_error_quotes_no_secret() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    // A password with a `/`, unescaped: the text is no URL whose parts can
    // be told apart, so nothing of the value may show.
    for (line, key) in [
        (
            "url = \"postgres://ranch:se/cret-{s}@db.example.net/ranch\" x",
            "url",
        ),
        ("password = \"se/cret-{s}\" x", "password"),
        (
            "database = { url = \"postgres://ranch@db.example.net/ranch?password=se/cret-{s}\" x",
            "database",
        ),
    ] {
        let line = line.replace("{s}", SECRET);
        std::fs::write(&path, format!("[log]\nlevel = \"info\"\n{line}\n")).unwrap();
        let output = run_cli(&["--config", path.to_str().unwrap(), "check-config"], &[]);
        let (stdout, stderr) = texts(&output);
        assert_eq!(output.status.code(), Some(78), "{stdout}{stderr}");
        assert!(stderr.contains("TOML parse error at line 3"), "{stderr}");
        assert!(stderr.contains(&format!("in `{key} = ***`")), "{stderr}");
        assert!(!stderr.contains(SECRET), "{line}: {stderr}");
    }
}

#[test]
fn check_config_warns_of_a_remote_server_it_does_not_verify() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_with_a_dead_gx(dir.path());
    let check = |url: &str| {
        let output = run_cli(
            &["--config", config.to_str().unwrap(), "check-config"],
            &[("DATABASE_URL", url)],
        );
        let (stdout, stderr) = texts(&output);
        assert_eq!(output.status.code(), Some(0), "{url}: {stdout}{stderr}");
        stderr
    };
    let warned = check("postgres://victron@db.example.net/ranch");
    let lines: Vec<&str> = warned.lines().collect();
    assert_eq!(lines.len(), 1, "{warned}");
    assert!(
        lines[0].starts_with(
            "warning: database.url: the database server db.example.net is not verified (no sslmode"
        ),
        "{warned}"
    );
    // How to verify it, and where the README says more.
    assert!(
        lines[0].contains("sslmode=verify-full") && lines[0].contains("\"TLS to PostgreSQL\""),
        "{warned}"
    );
    let required = check("postgres://victron@10.1.2.3/ranch?sslmode=require");
    assert!(
        required.contains("the database server 10.1.2.3 is not verified (sslmode=require"),
        "{required}"
    );
    for quiet in [
        "postgres://victron@db.example.net/ranch?sslmode=verify-full",
        "postgres://victron@db.example.net/ranch?sslmode=verify-ca",
        "postgres://victron@localhost/ranch",
        "postgres://victron@127.0.0.1:5432/ranch?sslmode=disable",
        "postgres://victron@[::1]/ranch",
        "postgres://victron@%2Frun%2Fpostgresql/ranch",
    ] {
        assert_eq!(check(quiet), "", "{quiet}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_warns_once_at_start_of_a_remote_server_it_does_not_verify() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_with_a_dead_gx(dir.path());
    let state = dir.path().join("state");
    // TEST-NET-1: documentation addresses, never a real server.
    let mut daemon = spawn_daemon_with(
        &config,
        &state,
        &[
            (
                "DATABASE_URL",
                "postgres://victron@192.0.2.1/ranch?sslmode=prefer",
            ),
            ("VICTRON_POLLER_DATABASE__CONNECT_TIMEOUT_MS", "1000"),
        ],
    );
    let warning = "database.url: the database server 192.0.2.1 is not verified (sslmode=prefer";
    wait_for(
        "the database tried, and the device down",
        Duration::from_secs(30),
        async || {
            let log = log_of(&state);
            log.contains("cannot reach the database at")
                && (log.contains("Device is down.") || log.contains("The GX does not answer"))
        },
    )
    .await;
    sigterm(&daemon);
    assert_eq!(wait_exit(&mut daemon, Duration::from_secs(30)), 0);
    let log = log_of(&state);
    let lines: Vec<&str> = log.lines().collect();
    let warnings: Vec<usize> = (0..lines.len())
        .filter(|&i| lines[i].contains(warning))
        .collect();
    assert_eq!(warnings.len(), 1, "{log}");
    assert!(lines[warnings[0]].contains("WARN"), "{log}");
    // At start: before the first attempt at the database.
    let attempt = lines
        .iter()
        .position(|l| l.contains("cannot reach the database at"))
        .unwrap();
    assert!(warnings[0] < attempt, "{log}");
}

/// The password in the query string is the one sent (the test role must
/// give it), and still shown nowhere: `status` against a real server, and
/// the daemon's "Database ready." line.
#[cfg(feature = "servers")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_in_the_query_string_is_used_and_not_shown() {
    let db = TestDb::create(Flavour::Plain).await;
    let role = format!("{}_user", db.name);
    db.execute(&format!(
        "CREATE ROLE {role} LOGIN PASSWORD '{SECRET}' IN ROLE vp_password_auth;
         GRANT ALL ON DATABASE {} TO {role}",
        db.name
    ))
    .await;
    let with = |user: &str, password: &str| {
        let mut url = url::Url::parse(&db.url).unwrap();
        url.set_username(user).unwrap();
        url.set_password(None).unwrap();
        let shown = url.to_string();
        url.set_query(Some(&format!("password={password}")));
        (url.to_string(), shown)
    };

    let (url, shown) = with(&role, SECRET);
    let output = run_cli(&["status"], &[("DATABASE_URL", &url)]);
    let (stdout, stderr) = texts(&output);
    // Connected (an unprivileged role; nothing migrated, no poller: down).
    assert_eq!(output.status.code(), Some(2), "{stdout}{stderr}");
    assert!(
        stdout
            .lines()
            .any(|l| l.split_whitespace().eq(["database", shown.as_str()])),
        "{stdout}"
    );
    assert_no_secret("status", &format!("{stdout}{stderr}"));
    let (wrong, _) = with(&role, "not-the-password");
    let refused = run_cli(&["status"], &[("DATABASE_URL", &wrong)]);
    let (_, stderr) = texts(&refused);
    assert_eq!(refused.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("password authentication failed"),
        "{stderr}"
    );

    // The daemon, as the server's owner (trusted; the password goes along).
    let (url, shown) = with("postgres", SECRET);
    let dir = tempfile::tempdir().unwrap();
    let config = config_with_a_dead_gx(dir.path());
    let state = dir.path().join("state");
    let mut daemon = spawn_daemon_with(&config, &state, &[("DATABASE_URL", &url)]);
    wait_for("Database ready.", Duration::from_secs(60), async || {
        log_of(&state).contains("Database ready.")
    })
    .await;
    sigterm(&daemon);
    assert_eq!(wait_exit(&mut daemon, Duration::from_secs(30)), 0);
    let log = log_of(&state);
    let ready = log.lines().find(|l| l.contains("Database ready.")).unwrap();
    assert!(ready.contains(&format!("database={shown}")), "{ready}");
    assert_no_secret("the log", &log);
}
