//! victron-poller: reads Victron Energy equipment (a GX device over
//! Modbus-TCP, battery monitors, solar chargers and inverters over VE.Direct)
//! and keeps its telemetry in PostgreSQL/TimescaleDB.
//!
//! # Layout
//!
//! - [`cli`]: the command line; one file per subcommand, exit codes.
//! - [`config`]: the TOML file and environment overrides, validated.
//! - [`db`]: connecting, the embedded migrations (`migrations/`), the
//!   reconcile step that upgrades the schema to what the server allows, and
//!   the schema state (storage mode, degraded features).
//! - [`logging`]: the `tracing` subscriber.
//!
//! # Data flow
//!
//! Sources poll devices and produce typed readings stamped with their
//! measurement time; a batcher groups them; every batch is committed to a
//! local store first, and a forwarder ships stored batches to PostgreSQL with
//! idempotent multi-row inserts. The database schema (knowledge base, agent
//! metrics, Victron telemetry) ships with the binary as migrations.

pub mod cli;
pub mod config;
pub mod daemon;
pub mod db;
pub mod failover;
pub mod forward;
pub mod health;
pub mod http;
pub mod logging;
pub mod metrics;
pub mod reading;
pub mod registers;
pub mod retention;
pub mod simulator;
pub mod sources;
pub mod status;
pub mod store;
pub mod systemd;
