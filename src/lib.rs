//! victron-poller: reads Victron Energy equipment (a GX device over
//! Modbus-TCP, battery monitors, solar chargers and inverters over VE.Direct)
//! and keeps its telemetry in PostgreSQL/TimescaleDB.
//!
//! # Layout
//!
//! - [`cli`]: the command line; one file per subcommand, exit codes.
//! - [`config`]: the TOML file and environment overrides, validated.
//! - [`db`]: connecting (TLS included), the embedded migrations
//!   (`migrations/`), the reconcile step that upgrades the schema to what the
//!   server allows, the schema state (storage mode, degraded features), and
//!   the database link every database path shares (reachability, retries).
//! - [`registers`], [`sources`], [`reading`]: Victron's register list, the
//!   Modbus-TCP and VE.Direct sources, and the readings they produce.
//! - [`store`], [`forward`], [`retention`]: the local store, the forwarder to
//!   PostgreSQL, retention per server flavour.
//! - [`daemon`]: the wiring of `run`, and what the daemon reports about itself.
//! - [`status`]: live device status and hang detection.
//! - [`report`]: what the daemon says about itself, as one typed snapshot:
//!   the health verdict, the `/healthz` and `/metrics` endpoint.
//! - [`systemd`]: the systemd notifications and watchdog.
//! - [`failover`]: the per-device advisory locks between two daemons.
//! - [`simulator`]: the built-in GX and VE.Direct simulators, and the
//!   simulated off-grid site whose energy balance the GX values follow.
//! - [`logging`]: the `tracing` subscriber (text, journald, JSON).
//!
//! # Data flow
//!
//! Sources poll devices and produce typed readings stamped with their
//! measurement time; a batcher groups them; every batch is committed to a
//! local store first, and a forwarder ships stored batches to PostgreSQL
//! (binary COPY, or idempotent multi-row inserts for a replay). The database schema (knowledge base, agent
//! metrics, Victron telemetry) ships with the binary as migrations.

pub mod cli;
pub mod config;
pub mod daemon;
pub mod db;
pub mod failover;
pub mod forward;
pub mod logging;
pub mod pipeline;
pub mod reading;
pub mod registers;
pub mod report;
pub mod retention;
pub mod signals;
pub mod simulator;
pub mod sources;
pub mod status;
pub mod store;
pub mod systemd;
