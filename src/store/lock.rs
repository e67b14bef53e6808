//! The state directory's lock file: one daemon per store, and whether one
//! runs on a directory now.

use std::path::Path;

use super::StoreError;

/// The lock file a running daemon holds in its state directory.
pub(crate) const LOCK_NAME: &str = "victron-poller.lock";

/// A state directory held by this process for as long as it lives: one
/// daemon per local store (its writer keeps the readings' order).
#[derive(Debug)]
pub(crate) struct StateLock {
    _file: std::fs::File,
}

impl StateLock {
    /// Takes the state directory `dir` (creating it), or says which daemon
    /// has it. The kernel releases it when the process ends, however.
    pub(crate) fn take(dir: &Path) -> Result<Self, StoreError> {
        let path = dir.join(LOCK_NAME);
        let open_error = |e: std::io::Error| StoreError::StateDir {
            path: dir.display().to_string(),
            problem: e.to_string(),
        };
        std::fs::create_dir_all(dir).map_err(open_error)?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(open_error)?;
        match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(Self { _file: file }),
            Err(rustix::io::Errno::WOULDBLOCK) => Err(StoreError::InUse {
                path: dir.display().to_string(),
            }),
            Err(e) => Err(open_error(e.into())),
        }
    }
}

/// Whether a daemon runs on the state directory `dir` now: it holds the
/// lock there. Read-only (for `status`, which may run as another user): a
/// lock file that cannot be opened counts as no daemon.
pub(crate) fn daemon_runs_on(dir: &Path) -> bool {
    let Ok(file) = std::fs::File::open(dir.join(LOCK_NAME)) else {
        return false;
    };
    matches!(
        rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockShared),
        Err(rustix::io::Errno::WOULDBLOCK)
    )
}
