//! The list of configuration keys: the single place that says which keys
//! exist. Loading rejects any other key, and a test checks that the example
//! file in `config/` documents every one of them.

/// One configuration key.
#[derive(Debug, Clone, Copy)]
pub struct KnownKey {
    /// Dotted key, as written in TOML sections (`[database]` + `url`).
    pub key: &'static str,
    /// The default, as text, or `none`.
    pub default: &'static str,
}

/// Every key the configuration accepts.
pub const KNOWN_KEYS: &[KnownKey] = &[
    KnownKey {
        key: "database.url",
        default: "none (DATABASE_URL is honoured)",
    },
    KnownKey {
        key: "database.password",
        default: "none (taken from the URL)",
    },
    KnownKey {
        key: "database.connect_timeout_ms",
        default: "5000",
    },
    KnownKey {
        key: "database.max_connections",
        default: "4",
    },
    KnownKey {
        key: "retention.window_hours",
        default: "72",
    },
    KnownKey {
        key: "log.format",
        default: "text",
    },
    KnownKey {
        key: "log.level",
        default: "info",
    },
];

/// The known key closest to a misspelt one, if any is close enough.
pub(super) fn closest(unknown: &str) -> Option<&'static str> {
    KNOWN_KEYS
        .iter()
        .map(|k| (edit_distance(unknown, k.key), k.key))
        .filter(|(d, _)| *d <= 3)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// Levenshtein distance between two short strings.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != *cb);
            current[j + 1] = substitution.min(previous[j + 1] + 1).min(current[j] + 1);
        }
        previous = current;
    }
    previous[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closest_suggests_a_near_miss_only() {
        assert_eq!(
            closest("database.max_conections"),
            Some("database.max_connections")
        );
        assert_eq!(closest("log.levle"), Some("log.level"));
        assert_eq!(closest("completely.different"), None);
    }
}
