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
    key("database.url", "none (DATABASE_URL is honoured)"),
    key("database.password", "none (taken from the URL)"),
    key("database.connect_timeout_ms", "5000"),
    key("database.max_connections", "4"),
    key("database.write_timeout_ms", "30000"),
    key("site.installation_id", "none"),
    key("retention.window_hours", "72"),
    key("retention.run_every_minutes", "60"),
    key("batch.max_readings", "200"),
    key("batch.max_age_ms", "500"),
    key("log.format", "text"),
    key("log.level", "info"),
    key("health.listen", "none (PORT sets 0.0.0.0:$PORT)"),
    key("health.stall_timeout_ms", "120000"),
    key("failover.enabled", "false"),
    key("failover.poll_when_database_unreachable", "true"),
    key("gx[].host", "required"),
    key("gx[].port", "502"),
    key("gx[].poll_interval_ms", "5000"),
    key("gx[].request_timeout_ms", "1000"),
    key("gx[].reconnect_min_ms", "500"),
    key("gx[].reconnect_max_ms", "30000"),
    key("gx[].devices[].name", "required"),
    key("gx[].devices[].class", "required"),
    key(
        "gx[].devices[].unit_id",
        "100 for class system, else required",
    ),
    key("vedirect[].name", "required"),
    key("vedirect[].path", "path or address required"),
    key("vedirect[].address", "path or address required"),
    key("vedirect[].poll_interval_ms", "5000"),
    key("vedirect[].silence_timeout_ms", "10000"),
    key("vedirect[].reconnect_min_ms", "500"),
    key("vedirect[].reconnect_max_ms", "30000"),
];

const fn key(key: &'static str, default: &'static str) -> KnownKey {
    KnownKey { key, default }
}

/// The known key closest to a misspelt one, if any is close enough.
pub(super) fn closest(unknown: &str) -> Option<&'static str> {
    let unknown = without_indexes(unknown);
    KNOWN_KEYS
        .iter()
        .map(|k| (edit_distance(&unknown, k.key), k.key))
        .filter(|(d, _)| *d <= 3)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// `gx[0].devices[12].name` → `gx[].devices[].name`.
pub(super) fn without_indexes(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    let mut in_index = false;
    for c in key.chars() {
        match c {
            '[' => {
                in_index = true;
                out.push('[');
            }
            ']' => {
                in_index = false;
                out.push(']');
            }
            _ if in_index => {}
            _ => out.push(c),
        }
    }
    out
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
        assert_eq!(
            closest("gx[3].devices[0].unitid"),
            Some("gx[].devices[].unit_id")
        );
    }
}
