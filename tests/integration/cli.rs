//! The binary as a user runs it: exit codes, one-line errors, and no password
//! in any output.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[cfg(feature = "servers")]
use crate::helpers::database::{Flavour, TestDb};
use crate::helpers::process::{run_cli, texts};

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
fn bad_config_names_every_key_and_exits_78() {
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
    assert_eq!(output.status.code(), Some(78), "{stderr}");
    assert!(!stderr.contains(SECRET), "the password leaked: {stderr}");
    // A heading, then one problem a line.
    let lines: Vec<&str> = stderr.trim_end().lines().collect();
    assert_eq!(lines.len(), 4, "{stderr}");
    for (line, key) in lines[1..].iter().zip([
        "database.max_connections",
        "retention.window_hours",
        "poller.interval",
    ]) {
        assert!(
            line.trim_start().starts_with(key),
            "{key} not named: {stderr}"
        );
    }

    let missing = run_cli(
        &[
            "--config",
            "/nonexistent/victron-poller.toml",
            "check-config",
        ],
        &[],
    );
    assert_eq!(missing.status.code(), Some(78));
    assert!(
        texts(&missing)
            .1
            .contains("/nonexistent/victron-poller.toml")
    );

    let bad_env = run_cli(&["check-config"], &[("VICTRON_POLLER_LOG__FORMAT", "xml")]);
    assert_eq!(bad_env.status.code(), Some(78));
    assert!(texts(&bad_env).1.contains("log.format"));
}

/// One GX with one device, as a worker's environment sets it.
const ONE_GX: (&str, &str) = (
    "VICTRON_POLLER_GX",
    r#"[{ host = "127.0.0.1", devices = [{ name = "gx", class = "system" }] }]"#,
);

#[test]
fn check_config_shows_settings_without_the_password() {
    let output = run_cli(
        &["check-config"],
        &[
            (
                "DATABASE_URL",
                &format!("postgres://ranch:{SECRET}@db.example.net:5432/ranch"),
            ),
            ONE_GX,
        ],
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
    assert_eq!(output.status.code(), Some(78), "{stderr}");
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

#[cfg(feature = "servers")]
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
    // An unprivileged role reads the schema state too: nothing migrated,
    // no poller yet (down).
    assert_eq!(right.status.code(), Some(2), "{stdout}{stderr}");
    assert!(stdout.contains("migrations   0 of"), "{stdout}");
}

#[cfg(feature = "servers")]
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
        stdout.contains("applied   0006_victron_status_truth.sql"),
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

    // Migrated, no daemon yet: the table says so, in words.
    let status = run_cli(&["status"], &env);
    let (stdout, _) = texts(&status);
    assert_eq!(status.status.code(), Some(2), "{stdout}");
    assert!(
        stdout.contains("poller       no daemon has written status yet"),
        "{stdout}"
    );
    assert!(
        stdout.contains("devices      none has been polled yet"),
        "{stdout}"
    );
    for raw in ["null", "?"] {
        assert!(!stdout.contains(raw), "a raw {raw} in the table: {stdout}");
    }

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

#[cfg(feature = "servers")]
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

/// Where the daemon's standard error goes while it runs.
enum Stderr<'a> {
    /// A pipe, read as the daemon writes it.
    Piped,
    /// A file (the test needs its identity), read by its path.
    File(std::fs::File, &'a Path),
}

/// Runs the daemon against a GX nobody answers for until it has logged the
/// device going down, then stops it with SIGTERM and returns its output
/// (standard error only when piped).
fn run_until_the_gx_is_down(env: &[(&str, &str)], stderr: Stderr<'_>) -> Output {
    let dir = tempfile::tempdir().unwrap();
    run_until_the_gx_is_down_in(dir.path(), env, stderr)
}

/// Bytes a thread collects while the test reads them.
type Collected = Arc<Mutex<Vec<u8>>>;

/// A pipe's bytes, collected by a thread of its own as they come: the
/// daemon never blocks on a full pipe, and the test sees what it wrote so far.
fn read_in_background<R: std::io::Read + Send + 'static>(
    pipe: Option<R>,
) -> (Collected, Option<std::thread::JoinHandle<()>>) {
    let bytes = Arc::new(Mutex::new(Vec::new()));
    let reader = pipe.map(|mut pipe| {
        let bytes = Arc::clone(&bytes);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                match std::io::Read::read(&mut pipe, &mut buf) {
                    Ok(0) => break,
                    Ok(n) => bytes.lock().unwrap().extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
        })
    });
    (bytes, reader)
}

fn run_until_the_gx_is_down_in(dir: &Path, env: &[(&str, &str)], stderr: Stderr<'_>) -> Output {
    let config = dir.join("c.toml");
    std::fs::write(&config, "[[gx]]\nhost = \"127.0.0.1\"\nport = 1\n[[gx.devices]]\nname = \"s\"\nclass = \"system\"\n").unwrap();
    let (stderr, log_file) = match stderr {
        Stderr::Piped => (Stdio::piped(), None),
        Stderr::File(file, path) => (Stdio::from(file), Some(path)),
    };
    let mut child = Command::new(env!("CARGO_BIN_EXE_victron-poller"))
        .args([
            "--config",
            config.to_str().unwrap(),
            "run",
            "--state-dir",
            dir.join("s").to_str().unwrap(),
        ])
        .env_clear()
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .unwrap();
    let (stdout, stdout_reader) = read_in_background(child.stdout.take());
    let (stderr, stderr_reader) = read_in_background(child.stderr.take());
    // "The GX does not answer" comes from a source, and the sources start after the
    // signal handlers are installed: from then on SIGTERM is an orderly stop.
    let started = Instant::now();
    loop {
        let mut logged = String::from_utf8_lossy(&stdout.lock().unwrap()).into_owned();
        logged.push_str(&String::from_utf8_lossy(&stderr.lock().unwrap()));
        if let Some(path) = log_file {
            logged.push_str(&std::fs::read_to_string(path).unwrap_or_default());
        }
        if logged.contains("The GX does not answer") {
            break;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the daemon ended ({status}) before the GX was down: {logged}");
        }
        if started.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the GX not reported down within 30 s: {logged}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    for reader in [stdout_reader, stderr_reader].into_iter().flatten() {
        reader.join().unwrap();
    }
    let output = Output {
        status,
        stdout: std::mem::take(&mut *stdout.lock().unwrap()),
        stderr: std::mem::take(&mut *stderr.lock().unwrap()),
    };
    assert_eq!(output.status.code(), Some(0));
    output
}

#[test]
fn log_format_json_prints_one_json_object_per_line_on_stdout() {
    let output = run_until_the_gx_is_down(&[("LOG_FORMAT", "json")], Stderr::Piped);
    assert!(
        output.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines.len() >= 3, "{stdout}");
    for line in &lines {
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(
            value["level"].is_string() && value["message"].is_string(),
            "{line}"
        );
    }
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.contains("The GX does not answer"))
            .count(),
        1,
        "logged once: {stdout}"
    );
}

#[test]
fn under_journald_lines_carry_a_priority_and_no_timestamp() {
    use std::os::unix::fs::MetadataExt as _;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("journal");
    let file = std::fs::File::create(&log).unwrap();
    let meta = file.metadata().unwrap();
    // systemd names the stream it connected standard error to.
    let stream = format!("{}:{}", meta.dev(), meta.ino());
    run_until_the_gx_is_down(&[("JOURNAL_STREAM", &stream)], Stderr::File(file, &log));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains('\u{1b}'), "no colours: {text:?}");
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() >= 3, "{text}");
    for line in &lines {
        let (priority, rest) = line.split_at(3);
        assert!(
            matches!(priority, "<3>" | "<4>" | "<6>" | "<7>"),
            "priority prefix: {line}"
        );
        let first = rest.trim_start().split(' ').next().unwrap();
        assert!(
            matches!(first, "ERROR" | "WARN" | "INFO" | "DEBUG"),
            "the level comes first, no timestamp: {line}"
        );
    }
    let down: Vec<&&str> = lines
        .iter()
        .filter(|l| l.contains("The GX does not answer"))
        .collect();
    assert_eq!(down.len(), 1, "logged once: {text}");
    assert!(down[0].starts_with("<4>"), "a warning: {text}");

    // The same variable with another stream (a redirection the service made
    // itself) keeps ordinary lines with timestamps.
    let other = run_until_the_gx_is_down(&[("JOURNAL_STREAM", "1:1")], Stderr::Piped);
    let text = String::from_utf8_lossy(&other.stderr);
    assert!(text.lines().all(|l| l.starts_with("20")), "{text}");
}

#[test]
fn status_shows_the_local_store_when_the_database_is_out_of_reach() {
    let dir = tempfile::tempdir().unwrap();
    let unreachable = "postgres://victron:pw-31@127.0.0.1:1/ranch";
    run_until_the_gx_is_down_in(dir.path(), &[("DATABASE_URL", unreachable)], Stderr::Piped);
    let state = dir.path().join("s");
    let files = || {
        let mut names: Vec<String> = std::fs::read_dir(&state)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    let before = files();
    let output = run_cli(
        &["status", "--state-dir", state.to_str().unwrap()],
        &[("DATABASE_URL", unreachable)],
    );
    // Read only: status leaves no file behind (as root, in a service's
    // state directory, it would be a file the service cannot write).
    assert_eq!(files(), before);
    let (stdout, stderr) = texts(&output);
    assert_eq!(output.status.code(), Some(3), "{stdout}{stderr}");
    assert!(
        stdout.contains("the daemon's own status follows"),
        "{stdout}"
    );
    assert!(stdout.contains("cannot reach the database"), "{stdout}");
    // device, its site (none: "-"), its name.
    assert!(
        stdout.lines().any(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            words.len() > 2 && words[0] == "device" && words[1] == "-" && words[2] == "s"
        }),
        "{stdout}"
    );
    assert!(!format!("{stdout}{stderr}").contains("pw-31"));
    // Without a local store there is nothing to show but the error.
    let output = run_cli(
        &[
            "status",
            "--state-dir",
            dir.path().join("none").to_str().unwrap(),
        ],
        &[("DATABASE_URL", unreachable)],
    );
    assert_eq!(output.status.code(), Some(3));
    assert!(output.stdout.is_empty());
}

#[test]
fn a_closed_standard_output_is_no_panic() {
    // `victron-poller check-config | head -0`: the reader is gone before the
    // first line is written.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_victron-poller"))
        .arg("check-config")
        .env_clear()
        .env("DATABASE_URL", "postgres://u@db.example.net/x")
        .env(ONE_GX.0, ONE_GX.1)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(output.status.code(), Some(0), "{stderr}");
}

/// What `run` refuses, `check-config` refuses: a unit's `ExecStartPre=`
/// check must never pass a configuration the daemon then rejects.
#[test]
fn check_config_refuses_what_run_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let gx = "[[gx]]\nhost = \"127.0.0.1\"\nport = 1\n[[gx.devices]]\nname = \"gx\"\nclass = \"system\"\n";
    let cases = [
        (
            "no device",
            write("empty.toml", "[log]\nlevel = \"info\"\n"),
            "gx: no device configured",
        ),
        (
            "a misspelt level",
            write("infoo.toml", &format!("[log]\nlevel = \"infoo\"\n{gx}")),
            "log.level: \"infoo\" is not a level (off, error, warn, info, debug, trace)",
        ),
        (
            "a made-up level",
            write(
                "verbose.toml",
                &format!("[log]\nlevel = \"warn,victron_poller=verbose\"\n{gx}"),
            ),
            "log.level: \"victron_poller=verbose\" is not a level",
        ),
        (
            "a duplicate key",
            write(
                "dup.toml",
                &format!("[log]\nlevel = \"info\"\nlevel = \"debug\"\n{gx}"),
            ),
            "line 3, column 1: duplicate key `level`, in `level = \"debug\"`",
        ),
        (
            "failover through a pooler without a direct connection",
            write(
                "pooled.toml",
                &format!(
                    "[database]\nurl = \"postgres://u@127.0.0.1:1/db\"\ntransaction_pooling = true\n\
                     [failover]\nenabled = true\n{gx}"
                ),
            ),
            "failover.database_url: is required with failover.enabled when database.transaction_pooling is on",
        ),
    ];
    for (what, path, message) in &cases {
        let path = path.to_str().unwrap();
        for command in [
            &["check-config"][..],
            &["run", "--state-dir", state.to_str().unwrap()][..],
        ] {
            let mut args = vec!["--config", path];
            args.extend_from_slice(command);
            let output = run_cli(&args, &[]);
            let (_, stderr) = texts(&output);
            assert_eq!(
                output.status.code(),
                Some(78),
                "{what}, {command:?}: {stderr}"
            );
            assert!(stderr.contains(message), "{what}, {command:?}: {stderr}");
        }
    }
    // Real levels and target=level directives pass.
    let good = write(
        "good.toml",
        &format!("[log]\nlevel = \"WARN, victron_poller=debug,sqlx=off\"\n{gx}"),
    );
    let output = run_cli(&["--config", good.to_str().unwrap(), "check-config"], &[]);
    assert_eq!(output.status.code(), Some(0), "{:?}", texts(&output));
}

/// A bad value set by an environment variable names the variable.
#[test]
fn a_bad_value_from_the_environment_names_its_variable() {
    let output = run_cli(
        &["check-config"],
        &[
            ONE_GX,
            ("LOG_FORMAT", "xml"),
            ("PORT", "http"),
            ("VICTRON_POLLER_BATCH__MAX_READINGS", "0"),
            ("VICTRON_POLLER_LOG__LEVEL", "infoo"),
        ],
    );
    let (_, stderr) = texts(&output);
    assert_eq!(output.status.code(), Some(78), "{stderr}");
    for (key, variable) in [
        ("log.format", "LOG_FORMAT"),
        ("health.listen", "PORT"),
        ("batch.max_readings", "VICTRON_POLLER_BATCH__MAX_READINGS"),
        ("log.level", "VICTRON_POLLER_LOG__LEVEL"),
    ] {
        let line = stderr
            .lines()
            .find(|l| l.trim_start().starts_with(key))
            .unwrap_or_else(|| panic!("{key} not named: {stderr}"));
        assert!(
            line.contains(&format!("from environment variable {variable}")),
            "{line}"
        );
    }
}

#[test]
fn probe_of_a_closed_port_exits_2_down_with_the_fix() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let target = format!("127.0.0.1:{port}");
    let output = run_cli(&["probe", &target, "--timeout-ms", "500"], &[]);
    let (_, stderr) = texts(&output);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert_eq!(
        stderr.trim_end(),
        format!(
            "victron-poller: error: cannot connect to {target}: connection refused: \
             enable Modbus TCP on the GX: Settings → Services → Modbus TCP"
        )
    );
}

#[test]
fn config_is_refused_by_subcommands_that_read_none() {
    for args in [
        &["--config", "/etc/x.toml", "probe", "127.0.0.1"][..],
        &["demo", "--config", "/etc/x.toml"],
        &["simulate", "-c", "/etc/x.toml", "gx"],
    ] {
        let output = run_cli(args, &[]);
        let (_, stderr) = texts(&output);
        assert_eq!(output.status.code(), Some(64), "{args:?}: {stderr}");
        assert!(stderr.contains("reads no configuration file"), "{stderr}");
    }
    // From the environment (the systemd unit sets it), it is no error.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let output = run_cli(
        &["probe", &format!("127.0.0.1:{port}"), "--timeout-ms", "500"],
        &[("VICTRON_POLLER_CONFIG", "/etc/x.toml")],
    );
    assert!(!texts(&output).1.contains("reads no configuration file"));
}

/// `scripts/demo` runs the binary wherever cargo builds it (here a target
/// directory elsewhere, as `CARGO_TARGET_DIR` sets), and says before the
/// first build that it takes minutes. Cargo is a stand-in that records its
/// arguments, so no release build runs.
#[test]
fn the_demo_script_finds_the_binary_in_any_target_directory() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("elsewhere");
    let bin = dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let executable = |path: &std::path::Path, text: &str| {
        std::fs::write(path, text).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    };
    let log = dir.path().join("cargo.log");
    executable(
        &bin.join("cargo"),
        &format!(
            "#!/bin/sh\necho \"$@\" >> {log}\ncase \"$1\" in\n\
             metadata) echo '{{\"packages\":[],\"target_directory\":\"'\"$CARGO_TARGET_DIR\"'\",\"version\":1}}' ;;\n\
             build) mkdir -p \"$CARGO_TARGET_DIR/release\" && printf '#!/bin/sh\\necho \"demo ran: $*\"\\n' > \"$CARGO_TARGET_DIR/release/victron-poller\" && chmod +x \"$CARGO_TARGET_DIR/release/victron-poller\" ;;\n\
             esac\n",
            log = log.display()
        ),
    );
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/demo");
    let run = || {
        std::process::Command::new("bash")
            .arg(script)
            .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
            .env("CARGO_TARGET_DIR", &target)
            .output()
            .unwrap()
    };
    let first = run();
    let (stdout, stderr) = texts(&first);
    assert_eq!(first.status.code(), Some(0), "{stderr}");
    assert_eq!(stdout.trim(), "demo ran: demo");
    assert!(
        stderr.contains("first build takes several minutes"),
        "{stderr}"
    );
    assert!(
        std::fs::read_to_string(&log)
            .unwrap()
            .contains("build --release --locked"),
        "cargo builds the release binary"
    );
    // Built once, it says nothing about minutes.
    let again = run();
    assert_eq!(texts(&again).0.trim(), "demo ran: demo");
    assert!(!texts(&again).1.contains("minutes"), "{:?}", texts(&again));
}

/// `status --json` prints one JSON document whatever happens: with the
/// database out of reach and no local store, one with an `error` field.
#[test]
fn status_json_is_one_document_even_without_a_database() {
    let dir = tempfile::tempdir().unwrap();
    let output = run_cli(
        &[
            "status",
            "--json",
            "--state-dir",
            dir.path().join("none").to_str().unwrap(),
        ],
        &[("DATABASE_URL", "postgres://u@127.0.0.1:1/x")],
    );
    assert_eq!(output.status.code(), Some(3));
    let doc: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("one JSON document on stdout");
    assert!(
        doc["error"]
            .as_str()
            .unwrap()
            .contains("cannot reach the database"),
        "{doc}"
    );
    let help = run_cli(&["status", "--help"], &[]);
    let (text, _) = texts(&help);
    assert!(text.contains("The health check"), "{text}");
    assert!(
        text.contains("Exit status: 0 healthy, 1 degraded"),
        "{text}"
    );
}

/// A usage error is 64, a configuration error 78 (the sysexits codes), and
/// `--help` lists every exit code.
#[test]
fn usage_errors_exit_64_and_help_lists_the_exit_codes() {
    let bad = run_cli(&["pol"], &[]);
    assert_eq!(bad.status.code(), Some(64), "{:?}", texts(&bad));
    let help = run_cli(&["--help"], &[]);
    let (stdout, _) = texts(&help);
    assert_eq!(help.status.code(), Some(0));
    for code in [
        "0 success",
        "1 status: degraded",
        "2 status: down",
        "3 the database",
        "4 a migration failed",
        "64 usage error",
        "70 internal failure",
        "78 configuration error",
    ] {
        assert!(stdout.contains(code), "{code}: {stdout}");
    }
    let version = run_cli(&["--version"], &[]);
    assert_eq!(version.status.code(), Some(0));
    assert!(texts(&version).0.starts_with("victron-poller "));
}
