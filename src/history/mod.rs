//! The site's energy record beyond the raw readings' retention: rollups of
//! every numeric column of every reading table at 5 minutes, 1 hour and 1
//! local day (`victron.history_5m`, `_1h`, `_1d`: samples, min, max, mean,
//! last), and the energy of each local day (`victron.energy_daily`: solar,
//! consumption, battery charge and discharge, grid import and export,
//! genset, the SOC range, and how much of the day the readings cover).
//!
//! One aggregator ([`aggregate::Aggregator`]) computes both from raw
//! readings in time order per device. [`live`] feeds it, while the daemon
//! runs, five minutes at a time from the raw rows (PostgreSQL's, or the
//! local store's on a gateway without a database); [`rebuild`] feeds it the
//! raw rows of whole local days from PostgreSQL and replaces those days'
//! rollups (idempotent upserts: a recomputed bucket replaces the old one),
//! for completed days and `victron-poller history rebuild`; [`local`] gives
//! `energy` its days without a database. [`buckets`] owns the boundaries
//! (local days of `site.timezone`, 23 or 25 hours on DST days), [`energy`]
//! which powers feed which energy, and [`flow`] the site's power flow at
//! one moment by the same rule. [`read`] reads the record back for people
//! (the page, its API, `status`), from the local store or PostgreSQL.

pub(crate) mod aggregate;
pub(crate) mod buckets;
pub(crate) mod energy;
pub mod flow;
pub mod live;
pub(crate) mod local;
pub mod postgres;
pub mod read;
pub mod rebuild;
pub mod sqlite;

pub(crate) use aggregate::DayEnergy;
pub use buckets::Resolution;
