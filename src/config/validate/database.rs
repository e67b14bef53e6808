//! `[database]` and `failover.database_url`: PostgreSQL URLs checked and
//! their passwords taken out into a [`Secret`](super::super::Secret), the
//! TLS settings of their query strings, the lock session's own connection.

use std::time::Duration;

use url::Url;

use super::super::keys;
use super::super::reader::{Problems, Table};
use super::super::redact;
use super::super::{DatabaseConfig, Secret};

pub(super) fn database(t: &mut Table, problems: &mut Problems) -> Option<DatabaseConfig> {
    let connect_timeout_ms = t.integer(&keys::DATABASE_CONNECT_TIMEOUT_MS, problems);
    let write_timeout_ms = t.integer(&keys::DATABASE_WRITE_TIMEOUT_MS, problems);
    let max_connections = t.integer(&keys::DATABASE_MAX_CONNECTIONS, problems);
    let password = t
        .string(&keys::DATABASE_PASSWORD, problems)
        .filter(|p| !p.is_empty());
    let transaction_pooling = t.boolean(&keys::DATABASE_TRANSACTION_POOLING, problems);
    let url_key = t.key("url");
    let Some(url) = t
        .string(&keys::DATABASE_URL, problems)
        .filter(|u| !u.trim().is_empty())
    else {
        if password.is_some() {
            problems.push(&t.key("password"), "is set but database.url is not");
        }
        return None;
    };
    let (url, url_password) = postgres_url(&url, &url_key, problems)?;
    Some(DatabaseConfig {
        url,
        password: password.or(url_password).map(Secret),
        connect_timeout: Duration::from_millis(connect_timeout_ms),
        write_timeout: Duration::from_millis(write_timeout_ms),
        max_connections: u32::try_from(max_connections).unwrap_or(u32::MAX),
        transaction_pooling,
        lock_session: None,
    })
}

/// `failover.database_url`: the device locks' own connection. Session locks
/// cannot live behind a pooler in transaction mode, so failover through one
/// needs it.
pub(super) fn lock_session(
    t: &mut Table,
    database: Option<&mut DatabaseConfig>,
    failover_enabled: bool,
    problems: &mut Problems,
) {
    let key = t.key("database_url");
    let raw = t
        .string(&keys::FAILOVER_DATABASE_URL, problems)
        .filter(|u| !u.trim().is_empty());
    let Some(database) = database else {
        if raw.is_some() {
            problems.push(&key, "is set but database.url is not");
        }
        return;
    };
    let Some(raw) = raw else {
        if failover_enabled && database.transaction_pooling {
            problems.push(
                &key,
                "is required with failover.enabled when database.transaction_pooling is on: \
                 the device locks are session locks, which a pooler in transaction mode hands to \
                 other clients; set it to a direct connection to PostgreSQL, not through the pooler",
            );
        }
        return;
    };
    let Some((url, url_password)) = postgres_url(&raw, &key, problems) else {
        return;
    };
    database.lock_session = Some(Box::new(DatabaseConfig {
        url,
        // The same user's password, unless this URL carries its own.
        password: url_password
            .map(Secret)
            .or_else(|| database.password.clone()),
        connect_timeout: database.connect_timeout,
        write_timeout: database.write_timeout,
        max_connections: 1,
        transaction_pooling: false,
        lock_session: None,
    }));
}

/// A `postgres://` URL with a host and valid TLS settings, and the password
/// it held (removed from the URL): in its user part, or in its `password`
/// parameter, which wins as it does for libpq and the driver. Any other
/// parameter that holds a secret ([`redact::is_secret_parameter`]) is a
/// problem, named without its value: the driver would ignore it and log it,
/// value and all (`sslpassword`: it reads no encrypted client key).
fn postgres_url(
    url: &str,
    url_key: &str,
    problems: &mut Problems,
) -> Option<(Url, Option<String>)> {
    let mut url = match Url::parse(url.trim()) {
        Ok(url) => url,
        // The parser's message never quotes the input, so no secret leaks.
        Err(e) => {
            problems.push(url_key, format!("not a valid URL ({e})"));
            return None;
        }
    };
    if !matches!(url.scheme(), "postgres" | "postgresql") {
        let scheme = url.scheme();
        problems.push(
            url_key,
            format!("scheme `{scheme}` is not supported (use postgres://)"),
        );
        return None;
    }
    if url.host_str().is_none_or(str::is_empty) {
        problems.push(url_key, "has no host");
        return None;
    }
    tls_settings(&url, url_key, problems);
    let mut url_password = url.password().map(|p| {
        percent_encoding::percent_decode_str(p)
            .decode_utf8_lossy()
            .into_owned()
    });
    let _ = url.set_password(None);
    let mut kept = Vec::new();
    for (raw, (name, value)) in url
        .query()
        .unwrap_or_default()
        .split('&')
        .filter(|pair| !pair.is_empty())
        .zip(url.query_pairs())
    {
        if name == "password" {
            url_password = Some(value.into_owned());
        } else if name == "sslpassword" {
            problems.push(
                url_key,
                "sslpassword is not supported (value not shown): the driver reads only an \
                 unencrypted client key (sslkey); decrypt it (openssl pkey -in KEY -out KEY.plain) \
                 and keep it readable by the service alone",
            );
        } else if redact::is_secret_parameter(&name) {
            problems.push(
                url_key,
                format!(
                    "parameter `{name}` is unknown (value not shown): the password goes in the \
                     URL's user part, its `password` parameter, or database.password"
                ),
            );
        } else {
            kept.push(raw.to_string());
        }
    }
    if url.query().is_some() {
        url.set_query((!kept.is_empty()).then(|| kept.join("&")).as_deref());
    }
    Some((url, url_password))
}

/// The URL's TLS settings: a known `sslmode`, and a readable `sslrootcert`
/// when one is named (checked now rather than at the first connection).
fn tls_settings(url: &Url, key: &str, problems: &mut Problems) {
    for (name, value) in url.query_pairs() {
        match name.as_ref() {
            "sslmode" => {
                const MODES: [&str; 6] = [
                    "disable",
                    "allow",
                    "prefer",
                    "require",
                    "verify-ca",
                    "verify-full",
                ];
                if !MODES.contains(&value.as_ref()) {
                    problems.push(
                        key,
                        format!("sslmode \"{value}\" is not one of {}", MODES.join(", ")),
                    );
                }
            }
            "sslrootcert" | "sslcert" | "sslkey" => {
                if let Err(e) = std::fs::File::open(value.as_ref()) {
                    problems.push(key, format!("{name} {value}: cannot be read ({e})"));
                }
            }
            _ => {}
        }
    }
}
