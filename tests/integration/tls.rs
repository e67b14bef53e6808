//! TLS to PostgreSQL against the PostgreSQL 15 test server, which presents a
//! certificate for localhost/127.0.0.1 signed by a test CA (made by
//! `scripts/test-databases.sh`): verify-full with that CA works, a wrong CA
//! or no CA is refused with a clear error, and the password never shows.

#[cfg(feature = "servers")]
use crate::helpers::database::{Flavour, TestDb};
use crate::helpers::process::{run_cli, texts};

#[cfg(feature = "servers")]
fn ca(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| {
        panic!("{var} is not set: run the suite with scripts/test, which makes the test CA")
    })
}

/// The test database's URL with a (never needed: trust) password and TLS options.
#[cfg(feature = "servers")]
fn url_with(db: &TestDb, host: &str, query: &str) -> String {
    let rest = db.url.split_once("@").unwrap().1;
    let (_, path) = rest.split_once('/').unwrap();
    let port = rest.split_once(':').unwrap().1.split_once('/').unwrap().0;
    format!("postgres://postgres:tls-secret-42@{host}:{port}/{path}?{query}")
}

#[cfg(feature = "servers")]
async fn ssl_in_use(url: &str) -> (bool, Option<String>) {
    let config = victron_poller::config::Config::load_with_env(
        None,
        [("DATABASE_URL".to_string(), url.to_string())].into(),
    )
    .unwrap();
    let mut conn = victron_poller::db::connect_once(config.database.as_ref().unwrap())
        .await
        .unwrap_or_else(|e| panic!("{url}: {e}"));
    sqlx::query_as("SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(&mut conn)
        .await
        .unwrap()
}

#[cfg(feature = "servers")]
#[tokio::test]
async fn verify_full_with_the_right_ca_connects_over_tls() {
    let db = TestDb::create(Flavour::Plain).await;
    let ca = ca("TEST_TLS_CA");
    for host in ["localhost", "127.0.0.1"] {
        let url = url_with(&db, host, &format!("sslmode=verify-full&sslrootcert={ca}"));
        let (ssl, version) = ssl_in_use(&url).await;
        assert!(ssl, "{host}: the session is encrypted");
        assert!(version.is_some_and(|v| v.starts_with("TLSv1.")));
        // The whole daemon-side path: migrations over the verified connection.
        let output = run_cli(&["migrate"], &[("DATABASE_URL", &url)]);
        let (stdout, stderr) = texts(&output);
        assert_eq!(output.status.code(), Some(0), "{host}: {stdout}{stderr}");
    }
    // require: encrypted without checking the certificate (libpq's meaning).
    let (ssl, _) = ssl_in_use(&url_with(&db, "127.0.0.1", "sslmode=require")).await;
    assert!(ssl);
    // disable: plain TCP, to prove the check above can fail.
    let (ssl, _) = ssl_in_use(&url_with(&db, "127.0.0.1", "sslmode=disable")).await;
    assert!(!ssl);
}

#[cfg(feature = "servers")]
#[tokio::test]
async fn a_wrong_or_missing_ca_is_refused_with_a_clear_error() {
    let db = TestDb::create(Flavour::Plain).await;
    let wrong = ca("TEST_TLS_WRONG_CA");
    let cases = [
        format!("sslmode=verify-full&sslrootcert={wrong}"),
        format!("sslmode=verify-ca&sslrootcert={wrong}"),
        // The public web roots do not know the test CA either.
        "sslmode=verify-full".to_string(),
    ];
    for query in cases {
        let url = url_with(&db, "localhost", &query);
        let output = run_cli(&["migrate"], &[("DATABASE_URL", &url)]);
        let (stdout, stderr) = texts(&output);
        let all = format!("{stdout}{stderr}");
        assert_eq!(output.status.code(), Some(3), "{query}: {all}");
        assert!(all.contains("TLS with the database at"), "{query}: {all}");
        assert!(all.contains("sslrootcert"), "{query}: {all}");
        assert!(
            all.to_lowercase().contains("certificate"),
            "{query}: the reason names the certificate: {all}"
        );
        assert!(
            !all.contains("tls-secret-42"),
            "{query}: password shown: {all}"
        );
    }
    // The host name is checked too: the certificate is not for 127.0.0.2.
    let ca = ca("TEST_TLS_CA");
    let url = url_with(
        &db,
        "127.0.0.2",
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    );
    let output = run_cli(&["migrate"], &[("DATABASE_URL", &url)]);
    let (stdout, stderr) = texts(&output);
    assert_eq!(output.status.code(), Some(3), "{stdout}{stderr}");
    assert!(stderr.contains("TLS with the database at"), "{stderr}");
}

#[test]
fn bad_tls_settings_are_configuration_errors() {
    for (query, expected) in [
        (
            "sslmode=verify-everything",
            "sslmode \"verify-everything\" is not one of",
        ),
        (
            "sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
            "sslrootcert /nonexistent/ca.pem: cannot be read",
        ),
    ] {
        let url = format!("postgres://victron:pw-77@db.example.net/ranch?{query}");
        let output = run_cli(&["check-config"], &[("DATABASE_URL", &url)]);
        let (stdout, stderr) = texts(&output);
        assert_eq!(output.status.code(), Some(78), "{stdout}{stderr}");
        assert!(stderr.contains("database.url"), "{stderr}");
        assert!(stderr.contains(expected), "{stderr}");
        assert!(!stderr.contains("pw-77"), "{stderr}");
    }
}
