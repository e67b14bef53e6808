//! Two daemons, one device: which devices this daemon may poll. Sources ask
//! [`Leases::may_poll`] before each poll; the lock keeper
//! ([`crate::db::locks::LeaseKeeper`]) sets each device's [`LeaseState`]
//! from the PostgreSQL advisory lock it holds or fails to get.
//!
//! While the database cannot be reached no lock can be taken or checked
//! (every device is [`LeaseState::Unknown`]): then every device is polled
//! when `failover.poll_when_database_unreachable` is set (a gateway: its
//! readings wait in its local store), and none otherwise (a cloud worker).
//! Should both daemons have polled meanwhile, the unique `(device,
//! timestamp)` key still refuses any row twice.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

/// What this daemon knows of one device's lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LeaseState {
    /// Not asked yet: the daemon has just started.
    Pending,
    /// This daemon holds the lock: it polls the device.
    Held,
    /// Another daemon held the lock when last asked: this one stands by.
    Standby,
    /// The database cannot be reached; the lock is unknown.
    Unknown,
}

/// The per-device permission to poll, shared by the sources and the keeper.
#[derive(Debug, Clone)]
pub(crate) struct Leases {
    inner: Option<Arc<Shared>>,
}

#[derive(Debug)]
struct Shared {
    states: RwLock<HashMap<String, LeaseState>>,
    poll_when_unreachable: bool,
}

impl Leases {
    /// No failover: every device is always polled.
    pub(crate) fn always() -> Self {
        Self { inner: None }
    }

    /// Failover for `devices`; none is polled until the keeper has asked.
    pub(crate) fn new<'a>(
        devices: impl IntoIterator<Item = &'a str>,
        poll_when_unreachable: bool,
    ) -> Self {
        let states = devices
            .into_iter()
            .map(|d| (d.to_string(), LeaseState::Pending))
            .collect();
        Self {
            inner: Some(Arc::new(Shared {
                states: RwLock::new(states),
                poll_when_unreachable,
            })),
        }
    }

    /// Whether this daemon may poll `device` now.
    pub(crate) fn may_poll(&self, device: &str) -> bool {
        let Some(inner) = &self.inner else {
            return true;
        };
        match self.state(device) {
            Some(LeaseState::Held) => true,
            Some(LeaseState::Unknown) => inner.poll_when_unreachable,
            Some(LeaseState::Pending | LeaseState::Standby) | None => false,
        }
    }

    /// What is known of `device`'s lock (`None` without failover).
    pub(crate) fn state(&self, device: &str) -> Option<LeaseState> {
        let inner = self.inner.as_ref()?;
        let states = inner.states.read().unwrap_or_else(|p| p.into_inner());
        states.get(device).copied()
    }

    /// Records what the keeper learnt of `device`'s lock.
    pub(crate) fn set(&self, device: &str, state: LeaseState) {
        if let Some(inner) = &self.inner {
            let mut states = inner.states.write().unwrap_or_else(|p| p.into_inner());
            states.insert(device.to_string(), state);
        }
    }

    /// Every device and its state, by name.
    pub(crate) fn devices(&self) -> Vec<(String, LeaseState)> {
        let Some(inner) = &self.inner else {
            return Vec::new();
        };
        let states = inner.states.read().unwrap_or_else(|p| p.into_inner());
        let mut all: Vec<_> = states.iter().map(|(d, s)| (d.clone(), *s)).collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn who_may_poll_in_each_state() {
        let leases = Leases::new(["a", "b"], true);
        assert!(
            !leases.may_poll("a"),
            "pending: not before the first answer"
        );
        leases.set("a", LeaseState::Held);
        leases.set("b", LeaseState::Standby);
        assert!(leases.may_poll("a"));
        assert!(!leases.may_poll("b"));
        leases.set("b", LeaseState::Unknown);
        assert!(
            leases.may_poll("b"),
            "unreachable database: the gateway polls"
        );
        let worker = Leases::new(["a"], false);
        worker.set("a", LeaseState::Unknown);
        assert!(
            !worker.may_poll("a"),
            "unreachable database: the worker waits"
        );
        assert!(Leases::always().may_poll("anything"));
    }
}
