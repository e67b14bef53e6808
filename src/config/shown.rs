//! What `check-config` shows for each key: the effective value of a key as
//! its table entry says it ([`Config::shown_value`]).

use std::time::Duration;

use super::{Config, DatabaseConfig, KnownKey};

impl Config {
    /// The effective value of `known` as `check-config` shows it: a number
    /// with its unit (`5000 ms`), `true`/`false`, text, `not set`; the
    /// password only as `set (hidden)` or `not set`. `None` for the keys of
    /// `[[gx]]` and `[[vedirect]]` entries (shown per device), for the
    /// database's other keys when no database is configured, and for a key
    /// this does not know (a test checks there is none).
    pub(crate) fn shown_value(&self, known: &KnownKey) -> Option<String> {
        enum Shown {
            Number(u64),
            Millis(Duration),
            Flag(bool),
            Text(String),
        }
        let not_set = || Shown::Text("not set".into());
        let db = self.database.as_ref();
        let shown = match known.key {
            "database.url" => db.map_or_else(not_set, |db| Shown::Text(db.redacted_url())),
            "database.password" => match db.and_then(DatabaseConfig::password) {
                Some(_) => Shown::Text("set (hidden)".into()),
                None => not_set(),
            },
            "database.connect_timeout_ms" => Shown::Millis(db?.connect_timeout),
            "database.max_connections" => Shown::Number(u64::from(db?.max_connections)),
            "database.write_timeout_ms" => Shown::Millis(db?.write_timeout),
            "database.transaction_pooling" => Shown::Flag(db?.transaction_pooling),
            "failover.database_url" => match db?.lock_session.as_deref() {
                Some(direct) => Shown::Text(direct.redacted_url()),
                None => Shown::Text("database.url".into()),
            },
            "site.installation_id" => self
                .site
                .installation_id
                .clone()
                .map_or_else(not_set, Shown::Text),
            "retention.window_hours" => Shown::Number(self.retention.window.as_secs() / 3600),
            "retention.run_every_minutes" => Shown::Number(self.retention.run_every.as_secs() / 60),
            "batch.max_readings" => {
                Shown::Number(u64::try_from(self.batch.max_readings).unwrap_or(u64::MAX))
            }
            "batch.max_age_ms" => Shown::Millis(self.batch.max_age),
            "store.sync" => Shown::Text(self.store.sync.as_str().into()),
            "store.max_readings_in_memory" => {
                Shown::Number(u64::try_from(self.store.max_readings_in_memory).unwrap_or(u64::MAX))
            }
            "clock.trust_local" => Shown::Flag(self.clock.trust_local),
            "site.timezone" => Shown::Text(self.site.timezone.name().into()),
            "history.keep_5m_days" => Shown::Number(keep_days(self.history.keep[0])),
            "history.keep_1h_days" => Shown::Number(keep_days(self.history.keep[1])),
            "history.keep_1d_days" => Shown::Number(keep_days(self.history.keep[2])),
            "history.max_gap_s" => Shown::Number(self.history.max_gap.as_secs()),
            "log.format" => Shown::Text(self.log.format.as_str().into()),
            "log.level" => Shown::Text(self.log.level.clone()),
            "health.listen" => self
                .health
                .listen
                .map_or_else(|| Shown::Text("off".into()), |a| Shown::Text(a.to_string())),
            "health.password" => match &self.health.password {
                Some(_) => Shown::Text("set (hidden)".into()),
                None => not_set(),
            },
            "health.stall_timeout_ms" => Shown::Millis(self.health.stall_timeout),
            "failover.enabled" => Shown::Flag(self.failover.enabled),
            "failover.poll_when_database_unreachable" => {
                Shown::Flag(self.failover.poll_when_database_unreachable)
            }
            _ => return None,
        };
        Some(match shown {
            Shown::Number(n) => known.with_unit(n),
            Shown::Millis(d) => known.with_unit(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            Shown::Flag(b) => b.to_string(),
            Shown::Text(t) => t,
        })
    }
}

/// A retention in days as its key says it (0: forever).
fn keep_days(keep: Option<Duration>) -> u64 {
    keep.map_or(0, |d| d.as_secs() / 86_400)
}
