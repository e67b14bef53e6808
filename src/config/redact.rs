//! What a secret looks like, in one place: which of a connection URL's
//! parts hold one (the password of its user part; the query parameters
//! libpq reads a password from, `password` and `sslpassword`, and any other
//! parameter named like a password), how a URL is shown with them masked,
//! and how a line of a TOML file is quoted in an error without its secret.

use url::Url;

/// What a secret is replaced with.
pub(super) const MASK: &str = "***";

/// Whether the query parameter `name` of a connection URL carries a secret:
/// libpq's `password` and `sslpassword` (the client key's passphrase), and
/// any other name with "password" in it, in any case (a misspelt parameter
/// still holds the secret meant for the right one).
pub(super) fn is_secret_parameter(name: &str) -> bool {
    name.to_ascii_lowercase().contains("password")
}

/// `url` as it may be shown: the user part's password and the value of
/// every secret query parameter ([`is_secret_parameter`]) replaced by
/// `***`; everything else as written.
pub(super) fn redact_url(url: &Url) -> String {
    let mut shown = url.clone();
    if shown.password().is_some() {
        // `*` needs no escaping in the user part.
        let _ = shown.set_password(Some(MASK));
    }
    if let Some(query) = url.query() {
        let masked: Vec<String> = query
            .split('&')
            .map(|pair| {
                let name = pair.split_once('=').map_or(pair, |(name, _)| name);
                let decoded = percent_encoding::percent_decode_str(name).decode_utf8_lossy();
                if is_secret_parameter(&decoded) {
                    format!("{name}={MASK}")
                } else {
                    pair.to_string()
                }
            })
            .collect();
        shown.set_query(Some(&masked.join("&")));
    }
    shown.to_string()
}

/// A line of a TOML file as an error may quote it: unchanged, unless it may
/// hold a secret, in which case only its key is kept (`url = ***`). A line
/// may hold one when its key names a password or a URL (`password`,
/// `url`, `database_url`, also inside an inline table), or when it holds
/// `://` or the word password anywhere. A raw line is not a URL that can be
/// masked part by part: a password written with a `/`, `@` or `?` in it
/// unescaped moves the parts, so the whole value goes.
pub(super) fn redact_toml_line(line: &str) -> String {
    let lower = line.to_ascii_lowercase();
    let risky = lower.contains("password") || lower.contains("://") || lower.contains("url");
    if !risky {
        return line.to_string();
    }
    match line.split_once('=') {
        Some((key, _)) => format!("{} = {MASK}", key.trim_end()),
        None => MASK.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shown(text: &str) -> String {
        redact_url(&Url::parse(text).unwrap())
    }

    #[test]
    fn the_user_part_password_is_masked() {
        assert_eq!(
            shown("postgres://ranch:hunter2@db.example.net:5432/ranch"),
            "postgres://ranch:***@db.example.net:5432/ranch"
        );
        assert_eq!(
            shown("postgres://ranch@db.example.net/ranch"),
            "postgres://ranch@db.example.net/ranch"
        );
    }

    #[test]
    fn secret_query_parameters_are_masked_and_the_rest_kept_as_written() {
        assert_eq!(
            shown(
                "postgres://u@h/db?sslmode=verify-full&password=hunter2&sslrootcert=/etc/a%20b.pem&sslpassword=k3y"
            ),
            "postgres://u@h/db?sslmode=verify-full&password=***&sslrootcert=/etc/a%20b.pem&sslpassword=***"
        );
        // Any spelling, encoded names, no value, a value with `=` in it.
        assert_eq!(
            shown("postgres://u@h/db?PassWord=a=b&%70assword=c&db_password&x=1"),
            "postgres://u@h/db?PassWord=***&%70assword=***&db_password=***&x=1"
        );
        assert_eq!(
            shown("postgres://u:p@h/db?password=q"),
            "postgres://u:***@h/db?password=***"
        );
    }

    #[test]
    fn secret_parameters_are_those_libpq_reads_a_password_from() {
        for name in ["password", "sslpassword", "PASSWORD", "db_password"] {
            assert!(is_secret_parameter(name), "{name}");
        }
        for name in ["passfile", "sslmode", "sslkey", "user", "options"] {
            assert!(!is_secret_parameter(name), "{name}");
        }
    }

    fn load(url: &str) -> Result<crate::config::Config, crate::config::ConfigError> {
        let env = [("DATABASE_URL".to_string(), url.to_string())].into();
        crate::config::Config::load_with_env(None, env)
    }

    #[test]
    fn a_password_parameter_leaves_the_url_for_the_secret() {
        let config =
            load("postgres://u:userinfo@h/db?sslmode=disable&password=hunter%2F2&x=%20y").unwrap();
        let db = config.database.unwrap();
        // The parameter wins over the user part, as with libpq.
        assert_eq!(db.password().unwrap().expose(), "hunter/2");
        assert_eq!(
            db.url_without_password().as_str(),
            "postgres://u@h/db?sslmode=disable&x=%20y"
        );
        assert_eq!(
            db.redacted_url(),
            "postgres://u@h/db?sslmode=disable&x=%20y"
        );
        let only = load("postgres://u@h/db?password=hunter2")
            .unwrap()
            .database
            .unwrap();
        assert_eq!(only.url_without_password().as_str(), "postgres://u@h/db");
        assert_eq!(only.password().unwrap().expose(), "hunter2");
    }

    #[test]
    fn other_secret_parameters_are_refused_without_their_value() {
        for (url, says) in [
            (
                "postgres://u@h/db?sslpassword=hunter2",
                "sslpassword is not supported",
            ),
            (
                "postgres://u@h/db?Password=hunter2",
                "parameter `Password` is unknown",
            ),
        ] {
            let Err(crate::config::ConfigError::Invalid(problems)) = load(url) else {
                panic!("{url}: accepted");
            };
            assert_eq!(problems.len(), 1, "{problems:?}");
            assert_eq!(problems[0].key, "database.url");
            assert!(problems[0].message.contains(says), "{problems:?}");
            assert!(!problems[0].message.contains("hunter2"), "{problems:?}");
        }
    }

    #[test]
    fn a_toml_line_keeps_only_its_key_when_it_may_hold_a_secret() {
        for (line, expected) in [
            // A `/` in the password: no part of the URL can be trusted.
            (r#"url = "postgres://u:se/cret@h/db"#, "url = ***"),
            (
                r#"database_url = "postgres://u:p@h/db" x"#,
                "database_url = ***",
            ),
            (r#"password = "se/cret"#, "password = ***"),
            ("PASSWORD=hunter2", "PASSWORD = ***"),
            (
                r#"database = { url = "postgres://u:p@h/db", x"#,
                "database = ***",
            ),
            (r#""postgres://u:p@h/db""#, "***"),
            // Nothing secret: unchanged.
            (r#"level = "debug""#, r#"level = "debug""#),
            ("[log", "[log"),
        ] {
            assert_eq!(redact_toml_line(line), expected, "{line}");
        }
    }
}
