//! A wrong wall clock for a daemon, by libfaketime (`LD_PRELOAD`). Built
//! with the `system-tools` feature only (`scripts/test` enables it;
//! `scripts/setup-machine.sh` installs libfaketime): with the feature but
//! without the library, a test fails naming it.

use std::path::{Path, PathBuf};

/// Names libfaketime's shared object instead of the places Debian's
/// `libfaketime` package installs it.
const LIBFAKETIME_VAR: &str = "TEST_LIBFAKETIME";

/// libfaketime: `TEST_LIBFAKETIME` if set, else where Debian's
/// `libfaketime` package installs it.
pub fn libfaketime() -> PathBuf {
    let candidates: Vec<PathBuf> = match std::env::var_os(LIBFAKETIME_VAR) {
        Some(path) => vec![path.into()],
        None => [
            "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
            "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
        ]
        .iter()
        .map(PathBuf::from)
        .collect(),
    };
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "libfaketime is not installed (looked for {candidates:?}): \
                 scripts/setup-machine.sh installs it (apt-get install libfaketime), \
                 or set {LIBFAKETIME_VAR}; without it, leave out the system-tools feature"
            )
        })
}

/// A wrong wall clock for a daemon: the offset in a file libfaketime reads
/// at every clock call, so the test can step it while the daemon runs. The
/// monotonic clocks stay true (`FAKETIME_DONT_FAKE_MONOTONIC`), as on a
/// real machine whose wall clock is stepped.
#[derive(Debug)]
pub struct FakeClock {
    file: PathBuf,
}

impl FakeClock {
    pub fn new(dir: &Path, offset: &str) -> Self {
        let clock = Self {
            file: dir.join("faketime"),
        };
        clock.set(offset);
        clock
    }

    /// `-1d`, `+0`, `-1h`: libfaketime's relative offsets.
    pub fn set(&self, offset: &str) {
        let staged = self.file.with_extension("new");
        std::fs::write(&staged, format!("{offset}\n")).unwrap();
        std::fs::rename(&staged, &self.file).unwrap();
    }

    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("LD_PRELOAD", libfaketime().display().to_string()),
            ("FAKETIME_TIMESTAMP_FILE", self.file.display().to_string()),
            ("FAKETIME_NO_CACHE", "1".into()),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1".into()),
        ]
    }
}

/// The daemon's environment: the fake clock's plus `extra`.
pub fn env_with<'a>(
    clock: &'a [(&'static str, String)],
    extra: &[(&'a str, &'a str)],
) -> Vec<(&'a str, &'a str)> {
    clock
        .iter()
        .map(|(k, v)| (*k, v.as_str()))
        .chain(extra.iter().copied())
        .collect()
}
