//! The command line: argument parsing (clap), one file per subcommand, and the
//! exit-code policy. Subcommands are thin: they load the configuration, call
//! the library and print; the work lives in the library modules.

/// `println!` for command output that does not panic when standard output
/// is closed (`victron-poller status | head -3`): what cannot be written is
/// dropped, as a reader that went away wants.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

pub(crate) mod check_config;
pub(crate) mod demo;
pub(crate) mod energy;
pub(crate) mod export;
pub(crate) mod history;
pub(crate) mod migrate;
mod now;
pub(crate) mod probe;
pub(crate) mod run;
pub(crate) mod simulate;
pub(crate) mod status;
pub(crate) mod watch;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::parser::ValueSource;
use clap::{CommandFactory as _, FromArgMatches as _, Parser, Subcommand};

use crate::config::{
    CONFIG_PATH_ENV, Config, ConfigError, ConfigSource, EnvFile, Layout, merge_missing,
    read_env_file,
};
use crate::db::DbError;
use crate::db::migrate::MigrationError;
use crate::sources::modbus::probe::ProbeError;

/// Exit codes, the same for every subcommand (`--help` and the README list
/// them). 64, 70 and 78 are the `sysexits.h` codes for a usage error, an
/// internal failure and a configuration error, so that a script — and
/// systemd's `RestartPreventExitStatus=78` — can tell them apart from a
/// verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// 0: success; for `status`, healthy.
    Ok,
    /// 1: `status`: degraded; `migrate --check`: a migration is pending;
    /// `probe`: the GX answered, but on none of the unit ids tried.
    Attention,
    /// 2: `status`: down (no device answers, the daemon stopped or is not
    /// running); `probe`: the GX cannot be reached or stopped answering.
    Down,
    /// 3: the database cannot be reached or refused the credentials.
    Database,
    /// 4: a migration or the reconcile step failed.
    Migration,
    /// 64: the command line is invalid.
    Usage,
    /// 70: an unexpected failure (a bug, or the daemon's stop took too long).
    Internal,
    /// 73: the state directory cannot be used (not writable, not a
    /// directory, or another daemon runs on it); a restart would only fail
    /// again.
    StateDir,
    /// 78: the configuration is invalid.
    Config,
    /// 130: a second signal stopped the daemon at once.
    Interrupted,
}

impl Exit {
    /// The process exit code.
    pub(crate) fn code(self) -> u8 {
        match self {
            Self::Ok => 0,
            Self::Attention => 1,
            Self::Down => 2,
            Self::Database => 3,
            Self::Migration => 4,
            Self::Usage => 64,
            Self::Internal => 70,
            Self::StateDir => 73,
            Self::Config => 78,
            Self::Interrupted => 130,
        }
    }
}

/// The exit codes, as `--help` lists them.
const EXIT_CODES: &str = "Exit status: 0 success (status: healthy); 1 status: degraded, \
    migrate --check: a migration pending, probe: no unit id answered; 2 status: down or \
    stopped, probe: the GX cannot be reached; 3 the database cannot be reached or refused \
    the credentials; 4 a migration failed; 64 usage error; 70 internal failure; \
    73 the state directory cannot be used; 78 configuration error; 130 stopped at once by a second signal.";

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> Self {
        ExitCode::from(exit.code())
    }
}

/// Polls Victron Energy equipment and keeps its telemetry in PostgreSQL/TimescaleDB.
#[derive(Debug, Parser)]
#[command(name = "victron-poller", version, about, long_about = None, after_help = EXIT_CODES)]
pub struct Cli {
    /// The TOML configuration file (every key can also be set by environment);
    /// default /etc/victron-poller/victron-poller.toml when it exists. For
    /// `run`, `migrate`, `check-config`, `status`, `history`, `energy` and
    /// `export`; `demo`, `simulate` and `probe` read none and refuse it.
    #[arg(long, short, global = true, env = CONFIG_PATH_ENV, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,

    /// What to do.
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run the daemon: poll the configured devices, keep every reading in the
    /// local store, forward to PostgreSQL when one is configured.
    Run(run::RunArgs),
    /// The GX simulator and the daemon on a throwaway local store, in one
    /// command: see it work in seconds. Ctrl-C stops.
    Demo,
    /// Apply pending database migrations, then upgrade what the server allows
    /// (hypertables, retention policies, vector index).
    Migrate(migrate::MigrateArgs),
    /// Validate the configuration and print it, without secrets.
    CheckConfig,
    /// The health check: is it working, since when, what is wrong (the
    /// daemon, every device, the backlog, the schema). Exit 0 healthy,
    /// 1 degraded, 2 down or stopped, 3 database unreachable.
    #[command(
        long_about = "The health check, for people and scripts: is the daemon polling, since when, \
            what is wrong — the daemon's status, every device, readings waiting in the local \
            store, and with a database the schema state (migrations, storage mode, degraded \
            features). Reads victron.polling_status_view and victron.device_status when a \
            database is configured, else the local store.\n\n\
            Exit status: 0 healthy, 1 degraded (a device failing, a backlog, a migration \
            pending, the local store refusing writes or replaced after damage, a task restarted \
            after a panic), 2 down (no device answers; stale: nothing for 2 poll intervals plus \
            the longer of a poll interval and the period between status saves; or the daemon \
            stopped or not running), 3 the database cannot be reached (the daemon's own status \
            from its local store is shown when --state-dir finds it)."
    )]
    Status(status::StatusArgs),
    /// Rollups and daily energy: `history rebuild` recomputes whole local
    /// days from the raw readings in PostgreSQL.
    History(history::HistoryArgs),
    /// Daily energy (kWh) and the battery's SOC range, per site and local day.
    Energy(energy::EnergyArgs),
    /// The running daemon's readings as they come: one line per device per
    /// poll, from its API (`health.listen`).
    Watch(watch::WatchArgs),
    /// Readings, rollups or daily energy of a time range as CSV or JSON
    /// lines on standard output (for a spreadsheet or another tool).
    Export(export::ExportArgs),
    /// Run a built-in device simulator (for demos and tests).
    Simulate(simulate::SimulateArgs),
    /// Discover which unit ids of a GX answer, and print a configuration snippet.
    #[command(
        after_help = "Exit status: 0 devices found; 1 the GX answered, but no unit id did; \
        2 the GX cannot be reached (for a refused connection: enable Modbus TCP on the GX: \
        Settings → Services → Modbus TCP); 64 the command line is invalid."
    )]
    Probe(probe::ProbeArgs),
}

impl Command {
    /// The name of this subcommand if it reads no configuration file.
    fn without_configuration(&self) -> Option<&'static str> {
        match self {
            Self::Demo => Some("demo"),
            Self::Simulate(_) => Some("simulate"),
            Self::Probe(_) => Some("probe"),
            Self::Run(_)
            | Self::Migrate(_)
            | Self::CheckConfig
            | Self::Status(_)
            | Self::History(_)
            | Self::Energy(_)
            | Self::Watch(_)
            | Self::Export(_) => None,
        }
    }
}

impl Cli {
    /// Parses the process's arguments, refusing `--config` given on the
    /// command line to a subcommand that reads no configuration. `--help`
    /// and `--version` come back as an error too (clap's, to print).
    pub fn parse_args() -> Result<Self, clap::Error> {
        Self::try_parse_args_from(std::env::args_os())
    }

    /// [`Cli::parse_args`] on `args`, the first being the program name.
    pub(crate) fn try_parse_args_from<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let mut command = Self::command();
        let matches = command.try_get_matches_from_mut(args)?;
        let cli = Self::from_arg_matches(&matches).map_err(|e| e.format(&mut command))?;
        // Only the command line: `VICTRON_POLLER_CONFIG` in the environment
        // (the systemd unit sets it) must not break `probe` in that shell.
        if matches.value_source("config") == Some(ValueSource::CommandLine) {
            if let Some(name) = cli.command.without_configuration() {
                return Err(command.error(
                    ErrorKind::ArgumentConflict,
                    format!("`{name}` reads no configuration file; drop `--config`"),
                ));
            }
        }
        Ok(cli)
    }
}

/// A command-line value clap accepted but the subcommand cannot use
/// (exit 64, like clap's own usage errors).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct UsageError(pub String);

/// Runs the parsed command line; errors carry their context for the user.
pub async fn run(cli: Cli) -> anyhow::Result<Exit> {
    run_in(cli, &Layout::installed()).await
}

/// Where a subcommand that reads the configuration runs: where its file
/// came from, and the installation's paths.
#[derive(Debug, Clone)]
pub(crate) struct Context {
    /// The configuration file used, or where none was found.
    pub(crate) source: ConfigSource,
    /// The installed layout's paths.
    pub(crate) layout: Layout,
}

impl Context {
    /// Whether the configuration is the installed one: the daemon that runs
    /// with it is the systemd service.
    pub(crate) fn is_installed(&self) -> bool {
        self.source
            .path()
            .is_some_and(|path| self.layout.is_installed_config(path))
    }

    /// The environment the configuration is loaded from: `base` (the
    /// process's), plus, when `with_env_file`, what the installed
    /// environment file sets that `base` does not. A file that exists but
    /// cannot be read is said on standard error, with what to do.
    pub(crate) fn environment(
        &self,
        mut base: HashMap<String, String>,
        with_env_file: bool,
    ) -> HashMap<String, String> {
        if !with_env_file {
            return base;
        }
        let file = &self.layout.env_file;
        match read_env_file(file) {
            EnvFile::Read(variables) => merge_missing(&mut base, variables),
            EnvFile::Absent => {}
            EnvFile::Unreadable(error) => eprintln!(
                "victron-poller: note: cannot read {} ({error}), the service's environment \
                 file: what it sets (the database password) is missing here; run as root, \
                 or set its variables in this shell first",
                file.display()
            ),
        }
        base
    }

    /// The state directory a command that reads the daemon's local store
    /// looks in: `--state-dir`, else `$STATE_DIRECTORY`, else the service's
    /// (`/var/lib/victron-poller`) when the configuration is the installed
    /// one, else `./victron-poller-state` as for `run`.
    pub(crate) fn store_dir(&self, flag: Option<PathBuf>) -> PathBuf {
        let fallback = if self.is_installed() {
            self.layout.state_dir.clone()
        } else {
            PathBuf::from(run::DEFAULT_STATE_DIR)
        };
        run::state_dir_or(flag, fallback)
    }
}

/// [`run()`] with the installation's paths in `layout` (tests point them
/// elsewhere).
pub(crate) async fn run_in(cli: Cli, layout: &Layout) -> anyhow::Result<Exit> {
    let context = Context {
        source: layout.locate(cli.config.as_deref()),
        layout: layout.clone(),
    };
    let path = context.source.path();
    // The service's environment file holds its secrets: a command run by
    // hand with the installed configuration reads it as systemd would
    // (`run` is given it by systemd's `EnvironmentFile=`).
    let with_env_file = context.is_installed() && !matches!(cli.command, Command::Run(_));
    let configured = || -> Result<Config, ConfigError> {
        let env = context.environment(std::env::vars().collect(), with_env_file);
        let config = Config::load_with_env(path, env)?;
        crate::logging::init(&config.log);
        Ok(config)
    };
    let outcome = async {
        match cli.command {
            Command::Run(args) => run::exec(configured()?, args).await,
            Command::Demo => {
                crate::logging::init(&crate::config::LogConfig {
                    level: "warn".into(),
                    ..crate::config::LogConfig::default()
                });
                demo::exec().await
            }
            Command::Migrate(args) => migrate::exec(&configured()?, args).await,
            Command::CheckConfig => check_config::exec(&configured()?, &context.source),
            Command::Status(args) => status::exec(&configured()?, args, &context).await,
            Command::History(args) => history::exec(&configured()?, args).await,
            Command::Energy(args) => energy::exec(&configured()?, args, &context).await,
            Command::Watch(args) => watch::exec(&configured()?, args).await,
            Command::Export(args) => export::exec(&configured()?, args, &context).await,
            // Simulators and the probe need no configuration.
            Command::Simulate(args) => {
                crate::logging::init(&crate::config::LogConfig::default());
                simulate::exec(args).await
            }
            Command::Probe(args) => {
                crate::logging::init(&crate::config::LogConfig::default());
                probe::exec(args).await
            }
        }
    }
    .await;
    // A configuration refused with no file found: say where it was looked for.
    match (&context.source, outcome) {
        (ConfigSource::NotFound { .. }, Err(error))
            if error.chain().any(|cause| cause.is::<ConfigError>()) =>
        {
            Err(error.context(context.source.describe()))
        }
        (_, outcome) => outcome,
    }
}

/// The exit code for an error that ended a command.
pub fn exit_for(error: &anyhow::Error) -> Exit {
    for cause in error.chain() {
        if cause.is::<ConfigError>() {
            return Exit::Config;
        }
        if let Some(db) = cause.downcast_ref::<DbError>() {
            return match db {
                DbError::Query(_) => Exit::Internal,
                _ => Exit::Database,
            };
        }
        if cause.is::<MigrationError>() {
            return Exit::Migration;
        }
        if cause.is::<ProbeError>() {
            return Exit::Down;
        }
        if cause.is::<UsageError>() {
            return Exit::Usage;
        }
        if let Some(
            crate::store::StoreError::StateDir { .. } | crate::store::StoreError::InUse { .. },
        ) = cause.downcast_ref()
        {
            return Exit::StateDir;
        }
    }
    Exit::Internal
}

/// The database settings, or a configuration error naming the key to set.
fn require_database(config: &Config) -> Result<&crate::config::DatabaseConfig, ConfigError> {
    config.database.as_ref().ok_or_else(|| {
        ConfigError::Invalid(vec![crate::config::ConfigProblem {
            key: "database.url".into(),
            message: "not set (set it in the config file, or DATABASE_URL)".into(),
        }])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_is_refused_only_where_it_would_be_ignored() {
        for args in [
            &["victron-poller", "--config", "x.toml", "probe", "10.0.0.5"][..],
            &["victron-poller", "probe", "-c", "x.toml", "10.0.0.5"],
            &["victron-poller", "demo", "--config=x.toml"],
            &["victron-poller", "--config", "x.toml", "simulate", "gx"],
        ] {
            let error = Cli::try_parse_args_from(args.iter().copied()).unwrap_err();
            assert_eq!(error.kind(), ErrorKind::ArgumentConflict, "{args:?}");
            assert!(error.use_stderr(), "an error, not help");
            let text = error.to_string();
            assert!(text.contains("reads no configuration file"), "{text}");
        }
        for args in [
            &["victron-poller", "--config", "x.toml", "check-config"][..],
            &["victron-poller", "run", "--config", "x.toml"],
            &["victron-poller", "probe", "10.0.0.5"],
        ] {
            assert!(
                Cli::try_parse_args_from(args.iter().copied()).is_ok(),
                "{args:?}"
            );
        }
    }

    #[test]
    fn probe_failures_exit_down() {
        let refused = anyhow::Error::from(ProbeError::Connect(
            "10.0.0.5:502".into(),
            std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        ));
        assert_eq!(exit_for(&refused), Exit::Down);
        assert_eq!(exit_for(&refused).code(), 2);
        assert_eq!(Exit::Config.code(), 78);
        assert_eq!(Exit::Usage.code(), 64);
        assert!(
            refused
                .to_string()
                .ends_with("Settings → Services → Modbus TCP")
        );
        let bad_port = anyhow::Error::from(UsageError("`x` is not a port number".into()));
        assert_eq!(exit_for(&bad_port), Exit::Usage);
    }

    /// An installation under a temporary directory: the configuration file
    /// (present or not) and the environment file next to it.
    fn installation(root: &std::path::Path, config: Option<&str>, env_file: &str) -> Layout {
        let layout = Layout {
            config_file: root.join("etc/victron-poller.toml"),
            env_file: root.join("etc/victron-poller.env"),
            state_dir: root.join("var/lib/victron-poller"),
        };
        std::fs::create_dir_all(root.join("etc")).unwrap();
        if let Some(text) = config {
            std::fs::write(&layout.config_file, text).unwrap();
        }
        std::fs::write(&layout.env_file, env_file).unwrap();
        layout
    }

    /// With the installed configuration, the environment file's secrets
    /// complete the database settings, under what the process sets itself;
    /// with another file, or for `run` (systemd gives it the file), it is
    /// not read.
    #[test]
    fn the_installed_configuration_reads_its_environment_file() {
        let root = tempfile::tempdir().unwrap();
        let layout = installation(
            root.path(),
            Some("[database]\nurl = \"postgres://victron@db.example:5432/ranch\"\n"),
            "# secrets\nVICTRON_POLLER_DATABASE__PASSWORD='from the file'\n\
             VICTRON_POLLER_DATABASE__CONNECT_TIMEOUT_MS=1234\n",
        );
        let context = Context {
            source: layout.locate(None),
            layout: layout.clone(),
        };
        assert!(context.is_installed());
        let base = HashMap::from([(
            "VICTRON_POLLER_DATABASE__CONNECT_TIMEOUT_MS".to_string(),
            "777".to_string(),
        )]);
        let env = context.environment(base.clone(), true);
        let config = Config::load_with_env(context.source.path(), env).unwrap();
        let db = config.database.unwrap();
        assert_eq!(
            db.password().map(crate::config::Secret::expose),
            Some("from the file")
        );
        assert_eq!(
            db.connect_timeout,
            std::time::Duration::from_millis(777),
            "the process's own variable wins"
        );
        // Not asked to (the daemon): the file is not read.
        assert_eq!(context.environment(base.clone(), false), base);

        let other = root.path().join("other.toml");
        std::fs::copy(&layout.config_file, &other).unwrap();
        let elsewhere = Context {
            source: layout.locate(Some(&other)),
            layout,
        };
        assert!(!elsewhere.is_installed());
    }

    /// `status` and `energy` look for the store where the daemon of that
    /// configuration keeps it: the service's state directory for the
    /// installed configuration, else as `run` does.
    #[test]
    fn readers_find_the_services_store_with_the_installed_configuration() {
        assert!(
            std::env::var_os("STATE_DIRECTORY").is_none(),
            "this test needs STATE_DIRECTORY unset"
        );
        let root = tempfile::tempdir().unwrap();
        let layout = installation(root.path(), Some(""), "");
        let installed = Context {
            source: layout.locate(None),
            layout: layout.clone(),
        };
        assert_eq!(installed.store_dir(None), layout.state_dir);
        let flag = root.path().join("mine");
        assert_eq!(installed.store_dir(Some(flag.clone())), flag);
        // The installed file named on the command line is the installed one.
        let named = Context {
            source: layout.locate(Some(&layout.config_file)),
            layout: layout.clone(),
        };
        assert_eq!(named.store_dir(None), layout.state_dir);
        let none = Context {
            source: ConfigSource::NotFound {
                looked_at: vec![layout.config_file.clone()],
            },
            layout,
        };
        assert_eq!(none.store_dir(None), PathBuf::from("victron-poller-state"));
    }
}
