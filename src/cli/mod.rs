//! The command line: argument parsing (clap), one file per subcommand, and the
//! exit-code policy. Subcommands are thin: they load the configuration, call
//! the library and print; the work lives in the library modules.

pub mod check_config;
pub mod migrate;
pub mod probe;
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
#[repr(u8)]
pub enum Exit {
    /// Success; for `status`, everything is current.
    Ok = 0,
    /// `migrate --check`: a migration is pending; `status`: something needs
    /// attention; or an unexpected failure.
    Attention = 1,
    /// The configuration (or the command line) is invalid.
    Config = 2,
    /// The database cannot be reached or refused the credentials.
    Database = 3,
    /// A migration or the reconcile step failed.
    Migration = 4,
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> Self {
        ExitCode::from(exit as u8)
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
