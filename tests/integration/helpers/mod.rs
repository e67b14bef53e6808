//! Shared test plumbing, by subject. Test modules import from here, never
//! from one another.
//!
//! What only the tests needing the PostgreSQL servers use is built with the
//! `servers` feature; what needs a system tool beyond a Rust toolchain
//! (libfaketime) with the `system-tools` feature. `scripts/test` enables
//! both; plain `cargo test` builds neither.

/// Debian's headless chromium: a page, its console, its requests.
#[cfg(feature = "system-tools")]
pub mod chromium;
/// Test databases on the servers `scripts/test` starts; links to break.
#[cfg(feature = "servers")]
pub mod database;
/// The service environment file every reader of it is held to.
pub mod env_file;
/// A wrong wall clock by libfaketime.
#[cfg(feature = "system-tools")]
pub mod faketime;
/// The health endpoint: its address, a GET.
pub mod http;
/// The binary as a process: commands, the daemon, waiting, stopping.
pub mod process;
/// The simulated site: the GX simulator, its device layout, its config.
pub mod simulator;
/// A systemd in a namespace of its own.
#[cfg(feature = "servers")]
pub mod systemd;
