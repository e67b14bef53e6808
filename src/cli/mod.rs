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

pub mod check_config;
pub mod demo;
pub mod migrate;
pub mod probe;
pub mod run;
pub mod simulate;
pub mod status;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{CONFIG_PATH_ENV, Config, ConfigError};
use crate::db::DbError;
use crate::db::migrate::MigrationError;

/// Exit codes, the same for every subcommand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Success; for `status`, everything is current.
    Ok = 0,
    /// `migrate --check`: a migration is pending; `status`: degraded; or an
    /// unexpected failure.
    Attention,
    /// `status`: down (no device answers, or the daemon is not running).
    Down,
    /// The configuration (or the command line) is invalid.
    Config,
    /// The database cannot be reached or refused the credentials.
    Database,
    /// A migration or the reconcile step failed.
    Migration,
}

impl Exit {
    /// The process exit code.
    pub fn code(self) -> u8 {
        match self {
            Self::Ok => 0,
            Self::Attention => 1,
            Self::Down | Self::Config => 2,
            Self::Database => 3,
            Self::Migration => 4,
        }
    }
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> Self {
        ExitCode::from(exit.code())
    }
}

/// Polls Victron Energy equipment and keeps its telemetry in PostgreSQL/TimescaleDB.
#[derive(Debug, Parser)]
#[command(name = "victron-poller", version, about, long_about = None)]
pub struct Cli {
    /// The TOML configuration file (every key can also be set by environment).
    #[arg(long, short, global = true, env = CONFIG_PATH_ENV, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
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
    /// Show the database schema state: migrations, storage mode, degraded features.
    Status(status::StatusArgs),
    /// Run a built-in device simulator (for demos and tests).
    Simulate(simulate::SimulateArgs),
    /// Discover which unit ids of a GX answer, and print a configuration snippet.
    Probe(probe::ProbeArgs),
}

/// Runs the parsed command line; errors carry their context for the user.
pub async fn run(cli: Cli) -> anyhow::Result<Exit> {
    let path = cli.config.as_deref();
    let configured = || -> Result<Config, ConfigError> {
        let config = Config::load(path)?;
        crate::logging::init(&config.log);
        Ok(config)
    };
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
        Command::CheckConfig => check_config::exec(&configured()?, path),
        Command::Status(args) => status::exec(&configured()?, args).await,
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

/// The exit code for an error that ended a command.
pub fn exit_for(error: &anyhow::Error) -> Exit {
    for cause in error.chain() {
        if cause.is::<ConfigError>() {
            return Exit::Config;
        }
        if let Some(db) = cause.downcast_ref::<DbError>() {
            return match db {
                DbError::Query(_) => Exit::Attention,
                _ => Exit::Database,
            };
        }
        if cause.is::<MigrationError>() {
            return Exit::Migration;
        }
    }
    Exit::Attention
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
