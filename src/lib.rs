//! victron-poller: reads Victron Energy equipment (a GX device over
//! Modbus-TCP, battery monitors, solar chargers and inverters over VE.Direct)
//! and keeps its telemetry in PostgreSQL/TimescaleDB.
//!
//! # Layout
//!
//! The modules follow the data, from the top down; each imports only
//! modules below it (a test reads the imports and checks it):
//!
//! - [`cli`]: one file per subcommand, the exit codes.
//! - [`daemon`]: the wiring of `run`: a handle per task, every task on one
//!   tracker under a supervisor, the ordered stop.
//! - [`web`]: the site for people on the daemon's listener: the page at `/`
//!   and the JSON API under `/api/v1/`.
//! - [`report`]: what the daemon says about itself, as one typed snapshot:
//!   the health verdict, `/healthz` and `/metrics`.
//! - [`simulator`]: the built-in GX and VE.Direct simulators and the
//!   simulated off-grid site.
//! - [`sources`]: the Modbus-TCP poller for a GX and the VE.Direct reader,
//!   producing [`reading`]s on the fixed-rate [`schedule`].
//! - [`forward`]: ships the local store's readings to PostgreSQL, and the
//!   forward-first path while nothing waits in the store.
//! - [`history`]: rollups (5 minutes, hours, days) and kWh per day, with
//!   their persistence in PostgreSQL and in the local store.
//! - [`db`]: PostgreSQL: connecting (TLS included), the embedded migrations
//!   (`migrations/`) and the reconcile step, the server's flavour, the
//!   status rows, the device locks, the raw readings' retention, and the
//!   link every database path shares (reachability, retries).
//! - [`store`]: the local SQLite store, the durability boundary.
//! - [`systemd`]: notifications and the watchdog.
//! - [`pipeline`]: the batcher, in front of a sink it defines;
//!   [`failover`]: which devices this daemon may poll when another one
//!   shares them; [`status`]: live device status and hang detection;
//!   [`logging`]: text, journald or JSON; [`latest`]: each device's newest
//!   reading, in memory; [`quantity`]: what each value column measures
//!   (its unit, its Prometheus name).
//! - [`reading`]: the reading model; [`registers`]: Victron's register list
//!   and the read planner; [`config`]: the TOML file and environment
//!   overrides, validated against one table of keys.
//! - [`clock`]: which wall time a reading was measured at (a gateway
//!   without a real-time clock may not know yet); [`schedule`]: the common
//!   grid of periodic tasks; [`signals`]: SIGTERM/SIGINT to the ordered
//!   stop.
//!
//! # Data flow
//!
//! Sources poll devices and produce typed readings stamped with their
//! measurement time; a batcher groups them; a batch goes straight to
//! PostgreSQL while the database answers and nothing waits in the local
//! store (forward-first), and is otherwise committed to the local store,
//! from which a forwarder ships it in order (binary COPY, or idempotent
//! multi-row inserts for a replay); without a database the local store is
//! the database. The database schema (knowledge base, agent metrics,
//! Victron telemetry) ships with the binary as migrations.

pub mod cli;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod db;
pub mod failover;
pub mod forward;
pub mod history;
pub mod latest;
pub mod logging;
pub mod pipeline;
pub mod quantity;
pub mod reading;
pub mod registers;
pub mod report;
pub mod schedule;
pub mod signals;
pub mod simulator;
pub mod sources;
pub mod status;
pub mod store;
pub mod systemd;
pub mod web;
