//! Where the configuration is when nothing names it: the installed layout
//! that the Debian package and the systemd unit use — the file
//! `/etc/victron-poller/victron-poller.toml`, the environment file next to it
//! (secrets, as the unit's `EnvironmentFile=` reads it) and the service's
//! state directory `/var/lib/victron-poller`. `--config` or
//! `VICTRON_POLLER_CONFIG` always win; without them, the file is used when it
//! exists, and a command that finds none says which paths it looked at.
//!
//! The environment file is parsed the way systemd's `EnvironmentFile=` reads
//! it (`KEY=value` lines, `#` and `;` comments, quotes), never executed, and
//! a variable it sets counts only when the process does not already have it.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};

/// The installed configuration file: what the package ships, what the unit's
/// `Environment=VICTRON_POLLER_CONFIG=` names.
pub const INSTALLED_CONFIG_FILE: &str = "/etc/victron-poller/victron-poller.toml";
/// The installed environment file: what the unit's `EnvironmentFile=` loads.
pub const INSTALLED_ENV_FILE: &str = "/etc/victron-poller/victron-poller.env";
/// The service's state directory (`StateDirectory=victron-poller`; with
/// `DynamicUser=yes` a link to `/var/lib/private/victron-poller`, which only
/// root can enter).
pub const SERVICE_STATE_DIR: &str = "/var/lib/victron-poller";

/// The paths of an installation: [`Layout::installed`] in the product; a
/// test points them elsewhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// The configuration file used when none is given.
    pub(crate) config_file: PathBuf,
    /// The service's environment file, read with that configuration file.
    pub(crate) env_file: PathBuf,
    /// The service's state directory, where `status` reads the local store
    /// of the daemon that runs with that configuration file.
    pub(crate) state_dir: PathBuf,
}

impl Layout {
    /// The layout the package and the unit install.
    pub(crate) fn installed() -> Self {
        Self {
            config_file: PathBuf::from(INSTALLED_CONFIG_FILE),
            env_file: PathBuf::from(INSTALLED_ENV_FILE),
            state_dir: PathBuf::from(SERVICE_STATE_DIR),
        }
    }

    /// Where the configuration comes from, given what `--config` (or
    /// `VICTRON_POLLER_CONFIG`) named.
    pub(crate) fn locate(&self, given: Option<&Path>) -> ConfigSource {
        match given {
            Some(path) => ConfigSource::Given(path.to_path_buf()),
            None if self.config_file.is_file() => ConfigSource::Installed(self.config_file.clone()),
            None => ConfigSource::NotFound {
                looked_at: vec![self.config_file.clone()],
            },
        }
    }

    /// Whether `path` is this layout's configuration file (the same file,
    /// however it is spelt): the daemon that runs with it is the service.
    pub(crate) fn is_installed_config(&self, path: &Path) -> bool {
        match (path.canonicalize(), self.config_file.canonicalize()) {
            (Ok(a), Ok(b)) => a == b,
            _ => path == self.config_file,
        }
    }
}

/// Where a command's configuration file came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigSource {
    /// Named by `--config` or `VICTRON_POLLER_CONFIG`.
    Given(PathBuf),
    /// Nothing was named; the installed file exists.
    Installed(PathBuf),
    /// Nothing was named, and none of these exists: defaults and the
    /// environment only.
    NotFound {
        /// The paths looked at, in order.
        looked_at: Vec<PathBuf>,
    },
}

impl ConfigSource {
    /// The file to load, if any.
    pub(crate) fn path(&self) -> Option<&Path> {
        match self {
            Self::Given(path) | Self::Installed(path) => Some(path),
            Self::NotFound { .. } => None,
        }
    }

    /// For a user: which file, or that none was found and where it was
    /// looked for.
    pub(crate) fn describe(&self) -> String {
        match self {
            Self::Given(path) | Self::Installed(path) => path.display().to_string(),
            Self::NotFound { looked_at } => format!(
                "no configuration file: none given (--config FILE or VICTRON_POLLER_CONFIG), \
                 and {} does not exist",
                looked_at
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
}

/// What reading an environment file gave.
#[derive(Debug)]
pub enum EnvFile {
    /// There is none.
    Absent,
    /// Its variables, in file order.
    Read(Vec<(String, String)>),
    /// It exists but could not be read (not root: the installed one is
    /// mode 600).
    Unreadable(io::Error),
}

/// Reads an environment file as systemd's `EnvironmentFile=` does.
pub fn read_env_file(path: &Path) -> EnvFile {
    match std::fs::read_to_string(path) {
        Ok(text) => EnvFile::Read(parse_env_file(&text)),
        Err(error) if error.kind() == io::ErrorKind::NotFound => EnvFile::Absent,
        Err(error) => EnvFile::Unreadable(error),
    }
}

/// Adds `variables` to `env` where `env` does not set them already (the
/// process's own environment wins, as a variable set on the command line
/// would for the service).
pub fn merge_missing(env: &mut HashMap<String, String>, variables: Vec<(String, String)>) {
    // Within the file the last assignment of a name wins, as in systemd.
    let mut from_file: HashMap<String, String> = HashMap::new();
    for (name, value) in variables {
        from_file.insert(name, value);
    }
    for (name, value) in from_file {
        env.entry(name).or_insert(value);
    }
}

/// The `KEY=value` assignments of an environment file, as systemd reads
/// them: blank lines and lines starting with `#` or `;` are skipped; space
/// around the key and the value is dropped; a value in single quotes is
/// taken as it is, one in double quotes with `\"`, `\\`, `` \` `` and `\$`
/// unescaped; a backslash at the end of a line continues the value on the
/// next; a line without `=` or with a key that is not a variable name is
/// ignored. Nothing is expanded or executed.
pub fn parse_env_file(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with(';') {
            continue;
        }
        let Some((key, value)) = trimmed.split_once('=') else {
            continue;
        };
        let key = key.trim();
        let mut value = value.to_string();
        // Continuations, outside quotes.
        while value.ends_with('\\') && !value.trim_start().starts_with(['"', '\'']) {
            value.pop();
            match lines.next() {
                Some(next) => value.push_str(next),
                None => break,
            }
        }
        if is_variable_name(key) {
            out.push((key.to_string(), unquote(value.trim())));
        }
    }
    out
}

fn is_variable_name(key: &str) -> bool {
    let mut chars = key.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn unquote(value: &str) -> String {
    let quoted = |q: char| value.len() >= 2 && value.starts_with(q) && value.ends_with(q);
    if quoted('\'') {
        return value[1..value.len() - 1].to_string();
    }
    if quoted('"') {
        let inner = &value[1..value.len() - 1];
        let mut out = String::with_capacity(inner.len());
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            match (c, chars.clone().next()) {
                ('\\', Some(next @ ('"' | '\\' | '`' | '$'))) => {
                    out.push(next);
                    chars.next();
                }
                _ => out.push(c),
            }
        }
        return out;
    }
    value.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(root: &Path) -> Layout {
        Layout {
            config_file: root.join("etc/victron-poller.toml"),
            env_file: root.join("etc/victron-poller.env"),
            state_dir: root.join("var/lib/victron-poller"),
        }
    }

    #[test]
    fn the_installed_layout_is_the_units() {
        let installed = Layout::installed();
        assert_eq!(
            installed.config_file,
            Path::new("/etc/victron-poller/victron-poller.toml")
        );
        assert_eq!(
            installed.env_file,
            Path::new("/etc/victron-poller/victron-poller.env")
        );
        assert_eq!(installed.state_dir, Path::new("/var/lib/victron-poller"));
    }

    /// `--config` wins; else the installed file when it exists; else none,
    /// naming where it was looked for.
    #[test]
    fn a_given_file_wins_then_the_installed_one_then_none_named() {
        let root = tempfile::tempdir().unwrap();
        let layout = layout(root.path());
        let given = root.path().join("mine.toml");
        assert_eq!(
            layout.locate(Some(&given)),
            ConfigSource::Given(given.clone())
        );
        let none = layout.locate(None);
        assert_eq!(
            none,
            ConfigSource::NotFound {
                looked_at: vec![layout.config_file.clone()]
            }
        );
        assert_eq!(none.path(), None);
        let text = none.describe();
        assert!(
            text.contains(&format!("{} does not exist", layout.config_file.display())),
            "{text}"
        );
        assert!(text.contains("--config"), "{text}");

        std::fs::create_dir_all(layout.config_file.parent().unwrap()).unwrap();
        std::fs::write(&layout.config_file, "").unwrap();
        let found = layout.locate(None);
        assert_eq!(found, ConfigSource::Installed(layout.config_file.clone()));
        assert_eq!(found.path(), Some(layout.config_file.as_path()));
        // Still, a file named on the command line is the one read.
        assert_eq!(layout.locate(Some(&given)).path(), Some(given.as_path()));
        // The same file by another spelling is the installed one.
        let other = root.path().join("etc/../etc/victron-poller.toml");
        assert!(layout.is_installed_config(&other));
        assert!(!layout.is_installed_config(&given));
    }

    #[test]
    fn env_files_parse_as_systemd_reads_them() {
        let text = "\
# a comment
; another
DATABASE_URL=postgres://victron:s3cret@db:5432/ranch?sslmode=require

  VICTRON_POLLER_DATABASE__PASSWORD = \"pa ss\\\"word\\\\\"  
SINGLE='$HOME stays'
SPACED=  value with spaces  
LONG=first\\
second
not a line
1BAD=x
export SHELLY=no
EMPTY=
";
        assert_eq!(
            parse_env_file(text),
            [
                (
                    "DATABASE_URL",
                    "postgres://victron:s3cret@db:5432/ranch?sslmode=require"
                ),
                ("VICTRON_POLLER_DATABASE__PASSWORD", "pa ss\"word\\"),
                ("SINGLE", "$HOME stays"),
                ("SPACED", "value with spaces"),
                ("LONG", "firstsecond"),
                ("EMPTY", ""),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string()))
        );
    }

    #[test]
    fn the_processes_own_variables_win() {
        let mut env = HashMap::from([("DATABASE_URL".to_string(), "mine".to_string())]);
        merge_missing(
            &mut env,
            vec![
                ("DATABASE_URL".into(), "file".into()),
                ("VICTRON_POLLER_DATABASE__PASSWORD".into(), "pw".into()),
            ],
        );
        assert_eq!(env["DATABASE_URL"], "mine");
        assert_eq!(env["VICTRON_POLLER_DATABASE__PASSWORD"], "pw");
    }

    #[test]
    fn an_env_file_is_absent_read_or_unreadable() {
        let root = tempfile::tempdir().unwrap();
        let path = root.path().join("x.env");
        assert!(matches!(read_env_file(&path), EnvFile::Absent));
        std::fs::write(&path, "A=1\n").unwrap();
        assert!(
            matches!(read_env_file(&path), EnvFile::Read(v) if v == [("A".into(), "1".into())])
        );
        // A directory in its place cannot be read as a file.
        let dir = root.path().join("d.env");
        std::fs::create_dir(&dir).unwrap();
        assert!(matches!(read_env_file(&dir), EnvFile::Unreadable(_)));
    }
}
