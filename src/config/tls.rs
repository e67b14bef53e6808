//! Whether a database connection checks who answers: without `sslmode`
//! `verify-full` (or `verify-ca`), a machine between the gateway and a
//! remote server can pose as the server and take the password and the
//! readings. `run` warns at start and `check-config` says so; a server on
//! the loopback or a Unix socket, which no other machine sits in front of,
//! is no concern.

use std::fmt;
use std::net::IpAddr;

use url::Host;

use super::{Config, DatabaseConfig};

/// A connection to a remote server that does not verify the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct UnverifiedServer {
    /// The key of the URL: `database.url` or `failover.database_url`.
    pub(crate) key: &'static str,
    /// The host the URL connects to.
    pub(crate) host: String,
    /// Its `sslmode`, `None` when it names none.
    pub(crate) sslmode: Option<String>,
}

impl fmt::Display for UnverifiedServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let why = match self.sslmode.as_deref() {
            None => "no sslmode: TLS only when the server offers it, and any certificate is taken"
                .to_string(),
            Some("disable") => "sslmode=disable: no TLS".to_string(),
            Some("allow") => "sslmode=allow: TLS only when the server asks for it".to_string(),
            Some("prefer") => "sslmode=prefer: TLS only when the server offers it, and any \
                               certificate is taken"
                .to_string(),
            Some(mode) => format!("sslmode={mode}: any certificate is taken"),
        };
        write!(
            f,
            "{}: the database server {} is not verified ({why}): anyone on the way can pose as \
             it and take the password and the readings; use sslmode=verify-full, with \
             sslrootcert= for a private CA (see \"TLS to PostgreSQL\" in the README)",
            self.key, self.host
        )
    }
}

impl Config {
    /// The connections to a remote server that do not verify it: the
    /// database's, and the device locks' own (`failover.database_url`).
    pub(crate) fn unverified_servers(&self) -> Vec<UnverifiedServer> {
        let Some(database) = &self.database else {
            return Vec::new();
        };
        let locks = database
            .lock_session
            .as_deref()
            .map(|locks| ("failover.database_url", locks));
        [("database.url", database)]
            .into_iter()
            .chain(locks)
            .filter_map(|(key, db)| db.unverified_server(key))
            .collect()
    }
}

impl DatabaseConfig {
    /// `Some` when this connection goes to a host other than the loopback
    /// or a Unix socket, with an `sslmode` short of `verify-ca`.
    fn unverified_server(&self, key: &'static str) -> Option<UnverifiedServer> {
        let url = self.url_without_password();
        // The driver reads the query after the URL's host: the last `host`
        // or `hostaddr`, the last `sslmode`, win (as with libpq).
        let mut host = url.host().map(|h| match h {
            Host::Domain(name) => percent_encoding::percent_decode_str(name)
                .decode_utf8_lossy()
                .into_owned(),
            Host::Ipv4(ip) => ip.to_string(),
            Host::Ipv6(ip) => ip.to_string(),
        })?;
        let mut sslmode = None;
        for (name, value) in url.query_pairs() {
            match name.as_ref() {
                "host" | "hostaddr" => host = value.into_owned(),
                "sslmode" | "ssl-mode" => sslmode = Some(value.into_owned()),
                _ => {}
            }
        }
        let verified = matches!(sslmode.as_deref(), Some("verify-ca" | "verify-full"));
        (!verified && !is_local(&host)).then_some(UnverifiedServer { key, host, sslmode })
    }
}

/// The loopback (`localhost`, 127.0.0.0/8, `::1`) or a Unix socket's
/// directory: no network between the daemon and the server.
fn is_local(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.starts_with('/')
        || host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unverified(url: &str) -> Vec<UnverifiedServer> {
        let env = [("DATABASE_URL".to_string(), url.to_string())].into();
        Config::load_with_env(None, env)
            .unwrap()
            .unverified_servers()
    }

    #[test]
    fn a_remote_server_without_verify_is_named_with_its_mode() {
        for (url, host, mode) in [
            ("postgres://u@db.example.net/x", "db.example.net", None),
            (
                "postgres://u@10.0.0.5:5432/x?sslmode=require",
                "10.0.0.5",
                Some("require"),
            ),
            (
                "postgres://u@[2001:db8::1]/x?sslmode=prefer",
                "2001:db8::1",
                Some("prefer"),
            ),
            // The query's host is the one connected to.
            (
                "postgres://u@localhost/x?host=db.example.net",
                "db.example.net",
                None,
            ),
        ] {
            assert_eq!(
                unverified(url),
                vec![UnverifiedServer {
                    key: "database.url",
                    host: host.into(),
                    sslmode: mode.map(String::from),
                }],
                "{url}"
            );
        }
    }

    #[test]
    fn verified_or_local_servers_are_no_concern() {
        for url in [
            "postgres://u@db.example.net/x?sslmode=verify-full",
            "postgres://u@db.example.net/x?sslmode=verify-ca",
            "postgres://u@localhost/x",
            "postgres://u@LOCALHOST:5432/x?sslmode=disable",
            "postgres://u@127.0.0.1/x",
            "postgres://u@127.8.9.10/x",
            "postgres://u@[::1]:5432/x",
            "postgres://u@%2Frun%2Fpostgresql/x",
            "postgres://u@db.example.net/x?host=/run/postgresql",
        ] {
            assert_eq!(unverified(url), vec![], "{url}");
        }
    }

    #[test]
    fn the_message_names_key_host_mode_and_the_remedy() {
        let text = unverified("postgres://u@db.example.net/x?sslmode=require")[0].to_string();
        assert!(
            text.starts_with(
                "database.url: the database server db.example.net is not verified (sslmode=require: \
                 any certificate is taken)"
            ),
            "{text}"
        );
        assert!(text.contains("sslmode=verify-full"), "{text}");
        assert!(
            text.contains("\"TLS to PostgreSQL\" in the README"),
            "{text}"
        );
        let text = unverified("postgres://u@db.example.net/x")[0].to_string();
        assert!(text.contains("(no sslmode: TLS only when"), "{text}");
    }

    #[test]
    fn the_locks_own_connection_is_checked_too() {
        let env = [
            (
                "DATABASE_URL".to_string(),
                "postgres://u@localhost/x".to_string(),
            ),
            (
                "VICTRON_POLLER_FAILOVER__DATABASE_URL".to_string(),
                "postgres://u@db.example.net/x".to_string(),
            ),
        ]
        .into();
        let found = Config::load_with_env(None, env)
            .unwrap()
            .unverified_servers();
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].key, "failover.database_url");
    }
}
