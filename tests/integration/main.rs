//! The integration test binary: real PostgreSQL servers (started by
//! `scripts/test`), real processes.
//!
//! What needs the servers is built with the `servers` feature, what needs a
//! system tool beyond a Rust toolchain (libfaketime, `systemd-analyze`) with
//! the `system-tools` feature; `scripts/test` enables both: whole modules
//! below, single tests (and what only they use) in the others. Plain
//! `cargo test` runs everything else. With a feature but without what it
//! stands for, a test fails naming what is missing (the variable
//! `scripts/test` would have set, the tool to install).
//!
//! Shared plumbing is in `helpers`; test modules import from there, never
//! from one another.

// Test code: `pub` items are shared between the test modules only.
#![allow(unreachable_pub)]

mod helpers;

/// The crate's imports: no module imports one above it, no cycle at any level.
mod layers;

/// Bad config, unreachable or refusing databases: exit codes and messages.
mod cli;
/// A wrong or stepped wall clock (libfaketime): true measurement times anyway.
#[cfg(feature = "system-tools")]
mod clock;
/// The Grafana dashboard's queries, macros expanded, on every flavour.
mod dashboard;
/// Without a database: the local store is the database; one daemon per
/// state directory; SIGTERM mid-batch.
mod embedded;
/// The daemon end to end: simulator → run → PostgreSQL on every flavour,
/// directly and through PgBouncer.
#[cfg(feature = "servers")]
mod end_to_end;
/// The service's environment file as the package reads it: never run.
mod environment_file;
/// `export`: the store's and the database's readings row for row, as CSV
/// and JSON lines; the range's edges.
mod export;
/// Faults a gateway meets: a full disk, a damaged or deleted store, an
/// unusable state directory.
mod faults;
/// Figures an operator reads: rounded averages, collection at most 100 %,
/// today's energy before its row is written.
#[cfg(feature = "servers")]
mod figures;
/// The forwarder: parked rows, replays stored once, forward-first.
#[cfg(feature = "servers")]
mod forwarder;
/// A GX that answered and went away: the advice, one warning, "back after".
mod gx_outage;
/// One health model: the SQL stale rule is the Rust one; one verdict on
/// every surface.
#[cfg(feature = "servers")]
mod health_model;
/// Rollups and daily energy: `history rebuild` on the three flavours;
/// `energy` from the local store.
mod history;
/// The health endpoint under abuse: every connection held, huge headers,
/// slow clients, a low open-file limit; the GX reconnects regardless.
mod http_limits;
/// The installed layout: no file named, the example copied unchanged, the
/// paths the unit and the package share.
mod installed_layout;
/// `kill -9` mid-run and a restart: nothing stored is lost or doubled.
#[cfg(feature = "servers")]
mod kill9;
/// Adopting a database built by the legacy Python runner.
#[cfg(feature = "servers")]
mod legacy_adoption;
/// Live rollups: the daemon across a five-minute boundary, an outage and a
/// kill -9 in the bucket, with and without a database (libfaketime).
#[cfg(feature = "system-tools")]
mod live_history;
/// The Modbus-TCP source against the GX simulator and misbehaving servers.
mod modbus_source;
/// systemd notify and watchdog, /healthz and /metrics, two-daemon failover.
mod operations;
/// The database stopped or its link cut: nothing lost, quick resumption.
#[cfg(feature = "servers")]
mod outages;
/// The Debian package under a real systemd: install, upgrade, purge (needs root).
#[cfg(feature = "servers")]
mod package;
/// Retention on every flavour, directly and through PgBouncer.
#[cfg(feature = "servers")]
mod retention;
/// Migrations on the three server flavours: catalog, degraded features, idempotence.
#[cfg(feature = "servers")]
mod schema;
/// The database password on every surface; unverified database servers.
mod secrets;
/// A second signal, and a stop that cannot finish.
mod shutdown;
/// The site's page, its API and values in /metrics.
mod site_page;
/// Several sites on one database.
#[cfg(feature = "servers")]
mod sites;
/// `status` on a local store: one last success per device.
mod status_local;
/// The unit's sandbox under a real systemd: the clock's state, a UART, open
/// files; the environment file as the package reads it (needs root).
#[cfg(feature = "servers")]
mod systemd_sandbox;
/// The unit under a real systemd in its own namespace (needs root).
#[cfg(feature = "servers")]
mod systemd_service;
/// The systemd unit: verify, security rating (`systemd-analyze`), what
/// it allows.
mod systemd_unit;
/// TLS to PostgreSQL: verify-full with a CA file, refusals.
mod tls;
/// Odd bytes in a VE.Direct value: the source lives on, the block's numbers kept.
mod vedirect_odd_values;
/// The VE.Direct decoder on real captures; the source over a pty and TCP.
mod vedirect_source;
