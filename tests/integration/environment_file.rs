//! The service's environment file as the Debian package reads it before
//! it starts the service (debian/environment-file.sh, sourced by
//! debian/postinst): parsed as systemd's EnvironmentFile= parses it, never
//! run by a shell, so a password with `;`, `$` or quotes in it is a value
//! and nothing else. (`systemd_sandbox` compares it with systemd's own
//! reading, and runs the post-install script.)

use std::process::Command;

use crate::helpers::env_file::{ENV_FILE, t_variables};

const LIBRARY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/debian/environment-file.sh");

/// Runs `envfile_exec FILE COMMAND...` from the library under `sh`.
fn envfile_exec(file: &std::path::Path, command: &[&str]) -> std::process::Output {
    Command::new("sh")
        .args(["-c", ". \"$0\" && envfile_exec \"$@\"", LIBRARY])
        .arg(file)
        .args(command)
        .env("T_FROM_OUTSIDE", "must not pass")
        .output()
        .expect("run sh")
}

#[test]
fn a_password_a_shell_would_run_arrives_intact_and_runs_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let pwned = dir.path().join("pwned");
    let password = format!("a;touch {};b", pwned.display());
    let file = dir.path().join("victron-poller.env");
    std::fs::write(
        &file,
        format!(
            "VICTRON_POLLER_DATABASE__PASSWORD={password}\nT_QUOTED=\"$(touch {0})`touch {0}`\"\n",
            pwned.display()
        ),
    )
    .unwrap();

    let output = envfile_exec(&file, &["/usr/bin/env", "-0"]);
    assert!(output.status.success(), "{output:?}");
    let vars: Vec<&[u8]> = output.stdout.split(|b| *b == 0).collect();
    for wanted in [
        format!("VICTRON_POLLER_DATABASE__PASSWORD={password}"),
        format!("T_QUOTED=$(touch {0})`touch {0}`", pwned.display()),
    ] {
        assert!(vars.contains(&wanted.as_bytes()), "{wanted}: {output:?}");
    }
    assert!(!pwned.exists(), "the environment file was run");

    // The way the script read it before: the same file runs the command.
    Command::new("sh")
        .args(["-c", "set -a; . \"$0\"", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        pwned.exists(),
        "the test's file would not have run anything"
    );
}

#[test]
fn every_form_systemd_reads_is_read_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("test.env");
    std::fs::write(&file, ENV_FILE).unwrap();
    let output = envfile_exec(&file, &["/usr/bin/env", "-0"]);
    assert!(output.status.success(), "{output:?}");
    // As systemd 252's EnvironmentFile= gives them to a service (the
    // systemd_sandbox test checks this list against a real systemd).
    let expected: Vec<(String, String)> = [
        ("T_CRLF", "win"),
        ("T_DOUBLE", "a \"b\" \\ $x `y` \\n tail"),
        ("T_EMPTY", ""),
        ("T_ESCAPED", "$HOME x"),
        ("T_JOINED", "onetwo"),
        ("T_LAST", "no newline"),
        ("T_MIXED", "quotedthen"),
        ("T_MULTI", "line1\nline2"),
        ("T_PASSWORD", "a;touch /tmp/pwned;b"),
        ("T_SINGLE", "its $HOME `id` \"x\""),
        ("T_SPACED", "inner  spaces"),
        ("T_TWICE", "second"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(t_variables(&output.stdout), expected);
    // Only the file's variables and PATH: none of the caller's.
    let names: Vec<String> = output
        .stdout
        .split(|b| *b == 0)
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            String::from_utf8_lossy(kv)
                .split('=')
                .next()
                .unwrap()
                .to_string()
        })
        .filter(|k| !k.starts_with("T_"))
        .collect();
    assert_eq!(names, ["PATH"]);
    // The names that are none are reported, without their values.
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 2, "{stderr}");
}

#[test]
fn a_missing_file_sets_nothing_and_the_command_still_runs() {
    let dir = tempfile::tempdir().unwrap();
    let output = envfile_exec(&dir.path().join("none.env"), &["/usr/bin/env", "-0"]);
    assert!(output.status.success(), "{output:?}");
    assert_eq!(t_variables(&output.stdout), []);
    // The command's own exit status comes back.
    let failed = envfile_exec(&dir.path().join("none.env"), &["/bin/sh", "-c", "exit 7"]);
    assert_eq!(failed.status.code(), Some(7));
}

#[test]
fn the_post_install_script_uses_the_packaged_reader_only() {
    let root = env!("CARGO_MANIFEST_DIR");
    let postinst = std::fs::read_to_string(format!("{root}/debian/postinst")).unwrap();
    let installed = "/usr/share/victron-poller/environment-file.sh";
    assert!(
        postinst
            .lines()
            .any(|l| l.trim() == format!(". {installed}")),
        "{postinst}"
    );
    assert!(
        postinst.contains("envfile_exec \"$ENV_FILE\""),
        "{postinst}"
    );
    assert!(!postinst.contains(". \"$ENV_FILE\""), "{postinst}");
    // ... and the package installs the reader where the script looks.
    let manifest = std::fs::read_to_string(format!("{root}/Cargo.toml")).unwrap();
    assert!(
        manifest.contains(&format!(
            "[\"debian/environment-file.sh\", \"{}\", \"644\"]",
            installed.trim_start_matches('/')
        )),
        "{manifest}"
    );
}
