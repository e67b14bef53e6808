//! What a newcomer runs first, as the built binary: `check-config` with no
//! file named (the installed one is looked for, and named when missing), the
//! shipped example copied unchanged (it names no device), and the paths the
//! binary, the unit and the package agree on.

use std::path::Path;

use victron_poller::config::{INSTALLED_CONFIG_FILE, INSTALLED_ENV_FILE, SERVICE_STATE_DIR};

use crate::helpers::process::{run_cli, texts};

fn repository_file(path: &str) -> String {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
}

/// Without `--config` or `VICTRON_POLLER_CONFIG`, and without the installed
/// file, `check-config` refuses (no device) and says which file it looked
/// for; with devices from the environment it passes, saying it read no file.
#[test]
fn without_a_file_check_config_names_where_it_looked() {
    assert!(
        !Path::new(INSTALLED_CONFIG_FILE).exists(),
        "this test needs a machine without {INSTALLED_CONFIG_FILE} (is the package installed here?)"
    );
    let output = run_cli(&["check-config"], &[]);
    let (stdout, stderr) = texts(&output);
    assert_eq!(output.status.code(), Some(78), "{stdout}{stderr}");
    assert!(
        stderr.contains(&format!(
            "no configuration file: none given (--config FILE or VICTRON_POLLER_CONFIG), \
             and {INSTALLED_CONFIG_FILE} does not exist"
        )),
        "{stderr}"
    );
    assert!(stderr.contains("no device configured"), "{stderr}");

    let devices = r#"[{ host = "127.0.0.1", devices = [{ name = "gx", class = "system" }] }]"#;
    let output = run_cli(&["check-config"], &[("VICTRON_POLLER_GX", devices)]);
    let (stdout, stderr) = texts(&output);
    assert_eq!(output.status.code(), Some(0), "{stdout}{stderr}");
    assert!(
        stdout
            .lines()
            .next()
            .is_some_and(|first| first.contains(&format!(
                "{INSTALLED_CONFIG_FILE} does not exist (defaults and environment)"
            ))),
        "{stdout}"
    );
}

/// The shipped example, copied unchanged, configures no device:
/// `check-config` refuses it with exit 78 and says what to add.
#[test]
fn the_example_copied_unchanged_names_no_device() {
    let dir = tempfile::tempdir().unwrap();
    for shipped in [
        "config/victron-poller.example.toml",
        "debian/victron-poller.toml",
    ] {
        let copy = dir.path().join("victron-poller.toml");
        std::fs::write(&copy, repository_file(shipped)).unwrap();
        let output = run_cli(&["--config", copy.to_str().unwrap(), "check-config"], &[]);
        let (stdout, stderr) = texts(&output);
        assert_eq!(
            output.status.code(),
            Some(78),
            "{shipped}: {stdout}{stderr}"
        );
        assert!(
            stderr.contains("gx: no device configured: add a [[gx]] or [[vedirect]] section"),
            "{shipped}: {stderr}"
        );
    }
}

/// One set of installed paths: the binary's, the unit's and the package's.
#[test]
fn the_unit_and_the_package_use_the_installed_paths() {
    let unit = repository_file("systemd/victron-poller.service");
    assert!(
        unit.lines()
            .any(|l| l == format!("Environment=VICTRON_POLLER_CONFIG={INSTALLED_CONFIG_FILE}")),
        "{unit}"
    );
    assert!(
        unit.lines()
            .any(|l| l == format!("EnvironmentFile=-{INSTALLED_ENV_FILE}")),
        "{unit}"
    );
    let state = SERVICE_STATE_DIR
        .strip_prefix("/var/lib/")
        .expect("a StateDirectory= is under /var/lib");
    assert!(
        unit.lines().any(|l| l == format!("StateDirectory={state}")),
        "{unit}"
    );
    let manifest = repository_file("Cargo.toml");
    for installed in [INSTALLED_CONFIG_FILE, INSTALLED_ENV_FILE] {
        assert!(
            manifest.contains(&format!("\"{}\"", installed.trim_start_matches('/'))),
            "the package installs {installed}"
        );
        assert!(
            manifest.contains(&format!("\"{installed}\"")),
            "{installed} is a conffile"
        );
    }
    let postinst = repository_file("debian/postinst");
    assert!(
        postinst
            .lines()
            .any(|l| l == format!("CONFIG={INSTALLED_CONFIG_FILE}")),
        "{postinst}"
    );
}
