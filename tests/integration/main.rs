//! The integration test binary: real PostgreSQL servers (started by
//! `scripts/test`), real processes.

// Test code: `pub` items are shared between the test modules only.
#![allow(unreachable_pub)]

mod helpers;

/// Bad config, unreachable or refusing databases: exit codes and messages.
mod cli;
/// The daemon end to end: simulator → run → store → PostgreSQL; outages, kill -9.
mod daemon;
/// Adopting a database built by the legacy Python runner.
mod legacy_adoption;
/// The Modbus-TCP source against the GX simulator and misbehaving servers.
mod modbus_source;
/// systemd notify and watchdog, /healthz and /metrics, two-daemon failover.
mod operations;
/// Migrations on the three server flavours: catalog, degraded features, idempotence.
mod schema;
/// The systemd unit: verify, security rating.
mod systemd_unit;
/// TLS to PostgreSQL: verify-full with a CA file, refusals.
mod tls;
/// The VE.Direct decoder on real captures; the source over a pty and TCP.
mod vedirect_source;
/// A second signal, and a stop that cannot finish.
mod shutdown;
