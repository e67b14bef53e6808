//! victron-poller: reads Victron Energy equipment (a GX device over
//! Modbus-TCP, battery monitors, solar chargers and inverters over VE.Direct)
//! and keeps its telemetry in PostgreSQL/TimescaleDB.
//!
//! # Layout
//!
//! The data path, in order:
//!
//! - [`sources`]: the Modbus-TCP poller for a GX ([`registers`] is Victron's
//!   register list and the read planner) and the VE.Direct reader; both on
//!   the fixed-rate [`schedule`], producing [`reading`]s noted on the boot
//!   and the wall clock; [`clock`] decides which wall time that was (a
//!   gateway without a real-time clock may not know yet).
//! - [`pipeline`]: the batcher, between the sources and the local store.
//! - [`store`]: the local SQLite store, the durability boundary.
//! - [`forward`]: the forwarder from the store to PostgreSQL.
//! - [`history`]: rollups (5 minutes, hours, days) and kWh per day, live
//!   from the raw readings and rebuilt whole days on demand.
//! - [`db`]: PostgreSQL: connecting (TLS included), the embedded migrations
//!   (`migrations/`) and the reconcile step, the server's flavour, the
//!   status rows, the device locks, and the link every database path shares
//!   (reachability, retries); [`retention`] per server flavour.
//!
//! Around it:
//!
//! - [`daemon`]: the wiring of `run`: every task on one tracker, and the
//!   ordered stop ([`signals`] turns SIGTERM/SIGINT into it).
//! - [`status`]: live device status and hang detection; [`failover`]: which
//!   devices this daemon may poll when another one shares them.
//! - [`report`]: what the daemon says about itself, as one typed snapshot:
//!   the health verdict, `/healthz` and `/metrics`; [`systemd`]: the
//!   notifications and the watchdog; [`logging`]: text, journald or JSON.
//! - [`config`]: the TOML file and environment overrides, validated against
//!   one table of keys; [`cli`]: one file per subcommand, the exit codes.
//! - [`simulator`]: the built-in GX and VE.Direct simulators, and the
//!   simulated off-grid site whose energy balance the GX values follow.
//!
//! # Data flow
//!
//! Sources poll devices and produce typed readings stamped with their
//! measurement time; a batcher groups them; a batch goes straight to
//! PostgreSQL while the database answers and nothing waits in the local
//! store (forward-first), and is otherwise committed to the local store,
//! from which a forwarder ships it in order (binary COPY, or idempotent
//! multi-row inserts for a replay); without a database the local store is
//! the database. The database
//! schema (knowledge base, agent metrics, Victron telemetry) ships with the
//! binary as migrations.

pub mod cli;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod db;
pub mod failover;
pub mod forward;
pub mod history;
pub mod logging;
pub mod pipeline;
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
