//! The test PostgreSQL servers `scripts/test` starts (and the PgBouncer in
//! front of each): a fresh database per test, dropped when it ends; queries
//! a test asks of it; a TCP proxy to break the link to it; the outage
//! server a test stops and starts; the library's pool as the daemon opens it.
//!
//! Built with the `servers` feature only. A test that cannot reach its
//! server fails with a message saying how to start the servers; it never
//! passes silently.

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use sqlx::{Connection, PgConnection};
use victron_poller::config::{Config, DatabaseConfig};

use super::process::successful_polls;

/// The server flavours of `schema.md`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavour {
    /// PostgreSQL 17 + TimescaleDB (preloaded, Apache edition) + pgvector.
    Timescale,
    /// The same server binaries, TimescaleDB installed but not preloaded.
    NoPreload,
    /// Debian 12's PostgreSQL 15 without extensions.
    Plain,
}

impl Flavour {
    pub const ALL: [Flavour; 3] = [Flavour::Timescale, Flavour::NoPreload, Flavour::Plain];

    fn env_var(self) -> &'static str {
        match self {
            Flavour::Timescale => "TEST_DATABASE_URL_TSDB",
            Flavour::NoPreload => "TEST_DATABASE_URL_NOPRELOAD",
            Flavour::Plain => "TEST_DATABASE_URL_PG15",
        }
    }

    /// The admin URL of this flavour's server.
    pub fn server_url(self) -> String {
        std::env::var(self.env_var()).unwrap_or_else(|_| {
            panic!(
                "{} is not set: run the suite with scripts/test, which starts the test servers",
                self.env_var()
            )
        })
    }

    /// The admin URL of the PgBouncer (transaction pooling) in front of
    /// this flavour's server: any database name passes through to it.
    pub fn pooler_url(self) -> String {
        let var = self
            .env_var()
            .replace("TEST_DATABASE_URL_", "TEST_PGBOUNCER_URL_");
        std::env::var(&var).unwrap_or_else(|_| {
            panic!(
                "{var} is not set: run the suite with scripts/test, which starts the test servers"
            )
        })
    }

    pub fn has_vector(self) -> bool {
        self != Flavour::Plain
    }
}

/// How a daemon reaches its database in a test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Straight to the server.
    Direct,
    /// Through PgBouncer in transaction pooling mode.
    PgBouncer,
}

impl Route {
    /// The URL of `db` by this route.
    pub fn url(self, db: &TestDb) -> String {
        match self {
            Route::Direct => db.url.clone(),
            Route::PgBouncer => db.pooled_url(),
        }
    }

    /// The daemon's environment to reach `url` (a URL by this route).
    pub fn daemon_env(self, url: &str) -> Vec<(&'static str, String)> {
        let mut env = vec![("DATABASE_URL", url.to_string())];
        if self == Route::PgBouncer {
            env.push((
                "VICTRON_POLLER_DATABASE__TRANSACTION_POOLING",
                "true".into(),
            ));
        }
        env
    }
}

/// A database created for one test on one server, dropped when it goes out
/// of scope (at the end of the test, passed or failed).
#[derive(Debug)]
pub struct TestDb {
    pub flavour: Flavour,
    pub name: String,
    pub url: String,
    /// The admin URL of its server, to drop it from.
    server: String,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

impl TestDb {
    /// Creates an empty database with a unique name.
    pub async fn create(flavour: Flavour) -> TestDb {
        let server = flavour.server_url();
        let name = format!(
            "vp_{}_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst),
            chrono::Utc::now().timestamp_micros() % 1_000_000
        );
        let mut admin = PgConnection::connect(&server).await.unwrap_or_else(|e| {
            panic!("cannot reach the {flavour:?} test server at {server}: {e}")
        });
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .expect("CREATE DATABASE");
        let url = format!("{}/{name}", server.rsplit_once('/').unwrap().0);
        TestDb {
            flavour,
            name,
            url,
            server,
        }
    }

    /// This database through its server's PgBouncer (transaction pooling).
    pub fn pooled_url(&self) -> String {
        format!(
            "{}/{}",
            self.flavour.pooler_url().rsplit_once('/').unwrap().0,
            self.name
        )
    }

    /// A new connection to this database.
    pub async fn connect(&self) -> PgConnection {
        PgConnection::connect(&self.url)
            .await
            .expect("connect to test database")
    }

    /// The library's database settings for this database.
    pub fn database_config(&self) -> DatabaseConfig {
        let env = [("DATABASE_URL".to_string(), self.url.clone())].into();
        Config::load_with_env(None, env).unwrap().database.unwrap()
    }

    /// Runs one or more SQL statements (simple protocol).
    pub async fn execute(&self, sql: &str) {
        let mut conn = self.connect().await;
        sqlx::raw_sql(sql)
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("{e}: {sql}"));
    }

    pub async fn scalar_i64(&self, sql: &str) -> i64 {
        let mut conn = self.connect().await;
        sqlx::query_scalar(sql)
            .fetch_one(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("{e}: {sql}"))
    }

    pub async fn scalar_f64(&self, sql: &str) -> f64 {
        let mut conn = self.connect().await;
        sqlx::query_scalar(sql)
            .fetch_one(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("{e}: {sql}"))
    }

    pub async fn strings(&self, sql: &str) -> Vec<String> {
        let mut conn = self.connect().await;
        sqlx::query_scalar(sql)
            .fetch_all(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("{e}: {sql}"))
    }

    /// `migrate` through the library, as the CLI does it.
    pub async fn migrate(&self) -> victron_poller::db::migrate::MigrateReport {
        let mut conn = self.connect().await;
        victron_poller::db::migrate::migrate(&mut conn, std::time::Duration::from_secs(72 * 3600))
            .await
            .unwrap_or_else(|e| panic!("migrate on {:?} failed: {e}", self.flavour))
    }

    /// Every schema object that migrate or reconcile could change, as text.
    pub async fn catalog_snapshot(&self) -> Vec<String> {
        let mut rows = self
            .strings(
                "SELECT 'column ' || table_schema || '.' || table_name || '.' || column_name || ' '
                        || format_type(a.atttypid, a.atttypmod) || ' null=' || is_nullable
                        || ' default=' || coalesce(column_default, '')
                 FROM information_schema.columns c
                 JOIN pg_attribute a ON a.attrelid = (quote_ident(table_schema) || '.' || quote_ident(table_name))::regclass
                                    AND a.attname = c.column_name
                 WHERE table_schema IN ('public', 'agent_metrics', 'victron')
                 UNION ALL
                 SELECT 'index ' || schemaname || '.' || indexname || ' ' || indexdef FROM pg_indexes
                 WHERE schemaname IN ('public', 'agent_metrics', 'victron')
                 UNION ALL
                 SELECT 'constraint ' || conrelid::regclass::text || '.' || conname || ' ' || pg_get_constraintdef(oid)
                 FROM pg_constraint WHERE connamespace IN (SELECT oid FROM pg_namespace WHERE nspname IN ('public', 'agent_metrics', 'victron'))
                 UNION ALL
                 SELECT 'view ' || schemaname || '.' || viewname || ' ' || definition FROM pg_views
                 WHERE schemaname IN ('public', 'agent_metrics', 'victron')
                 UNION ALL
                 SELECT 'trigger ' || tgrelid::regclass::text || '.' || tgname FROM pg_trigger WHERE NOT tgisinternal
                 UNION ALL
                 SELECT 'extension ' || extname || ' ' || extversion FROM pg_extension
                 UNION ALL
                 SELECT 'migration ' || version || ' ' || success FROM public._sqlx_migrations",
            )
            .await;
        if self.flavour == Flavour::Timescale {
            rows.extend(
                self.strings(
                    "SELECT 'hypertable ' || hypertable_schema || '.' || hypertable_name || ' ' || d.time_interval::text
                     FROM timescaledb_information.hypertables h JOIN timescaledb_information.dimensions d
                     USING (hypertable_schema, hypertable_name)
                     UNION ALL
                     SELECT 'job ' || proc_name || ' ' || coalesce(hypertable_name::text, '')
                     FROM timescaledb_information.jobs",
                )
                .await,
            );
        }
        rows.sort();
        rows
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        drop_database(&self.server, &self.name);
    }
}

/// Drops database `name` on the server at `server_url` (its admin URL),
/// closing whatever sessions it still has; errors are ignored (a server
/// already gone has nothing to drop). Runs on a thread of its own with its
/// own runtime: it is called from `Drop`, which is synchronous and may run
/// inside a test's runtime. After a failed test with `VP_PG_KEEP_DATA=1`
/// (as `scripts/test` documents it), the database is kept to look at.
pub fn drop_database(server_url: &str, name: &str) {
    if std::thread::panicking() && std::env::var_os("VP_PG_KEEP_DATA").is_some_and(|v| v == "1") {
        return;
    }
    let server_url = server_url.to_string();
    let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
    let dropper = std::thread::spawn(move || {
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        runtime.block_on(async move {
            if let Ok(mut admin) = PgConnection::connect(&server_url).await {
                let _ = sqlx::raw_sql(&sql).execute(&mut admin).await;
                let _ = admin.close().await;
            }
        });
    });
    let _ = dropper.join();
}

/// Drops a database a test created by hand, when it goes out of scope.
#[derive(Debug)]
pub struct DropDatabaseOnExit {
    pub server_url: String,
    pub name: String,
}

impl Drop for DropDatabaseOnExit {
    fn drop(&mut self) {
        drop_database(&self.server_url, &self.name);
    }
}

/// A TCP proxy in front of a server, to break the network between a daemon
/// and its database the ways a flaky link does: cut (connections closed,
/// both ends notice at once) or frozen (nothing passes, nobody is told).
#[derive(Debug)]
pub struct TcpProxy {
    addr: std::net::SocketAddr,
    state: std::sync::Arc<std::sync::Mutex<ProxyState>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ProxyMode {
    Open,
    Cut,
    Frozen,
}

#[derive(Debug)]
struct ProxyState {
    mode: ProxyMode,
    /// Cancels every connection of the current generation.
    generation: tokio_util::sync::CancellationToken,
    /// Connections held open without forwarding while frozen.
    held: Vec<tokio::net::TcpStream>,
}

impl TcpProxy {
    /// Listens on a free loopback port and forwards to `upstream`.
    pub async fn start(upstream: std::net::SocketAddr) -> TcpProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = std::sync::Arc::new(std::sync::Mutex::new(ProxyState {
            mode: ProxyMode::Open,
            generation: tokio_util::sync::CancellationToken::new(),
            held: Vec::new(),
        }));
        let shared = std::sync::Arc::clone(&state);
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                let generation = {
                    let mut s = shared.lock().unwrap();
                    match s.mode {
                        ProxyMode::Open => s.generation.clone(),
                        // The peer sees its connection closed at once.
                        ProxyMode::Cut => continue,
                        ProxyMode::Frozen => {
                            s.held.push(inbound);
                            continue;
                        }
                    }
                };
                let shared = std::sync::Arc::clone(&shared);
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    tokio::select! {
                        () = generation.cancelled() => {
                            let mut s = shared.lock().unwrap();
                            if s.mode == ProxyMode::Frozen {
                                s.held.push(inbound);
                                s.held.push(outbound);
                            }
                        }
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                    }
                });
            }
        });
        TcpProxy { addr, state }
    }

    /// Where clients connect.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.addr
    }

    fn set(&self, mode: ProxyMode) {
        let mut s = self.state.lock().unwrap();
        s.mode = mode;
        s.generation.cancel();
        s.generation = tokio_util::sync::CancellationToken::new();
        if mode != ProxyMode::Frozen {
            s.held.clear();
        }
    }

    /// Closes every open connection and refuses new ones until [`Self::restore`].
    pub fn cut(&self) {
        self.set(ProxyMode::Cut);
    }

    /// Stops forwarding without closing anything: both ends wait in silence,
    /// as behind a link that went down.
    pub fn freeze(&self) {
        self.set(ProxyMode::Frozen);
    }

    /// A link down for `length`: [`Self::cut`], then [`Self::restore`].
    #[cfg(feature = "system-tools")]
    pub async fn outage(&self, length: Duration) {
        self.cut();
        tokio::time::sleep(length).await;
        self.restore();
    }

    /// Lets connections through again (held ones are closed: their peers
    /// time out or see them end, as after a real outage).
    pub fn restore(&self) {
        self.set(ProxyMode::Open);
    }
}

/// The host:port of a test server's URL.
pub fn server_address(url: &str) -> std::net::SocketAddr {
    let after_user = url.split_once('@').unwrap().1;
    after_user.split_once('/').unwrap().0.parse().unwrap()
}

/// `url` with its host and port replaced by `addr`.
pub fn url_via(url: &str, addr: std::net::SocketAddr) -> String {
    let (scheme, rest) = url.split_once("://").unwrap();
    let (userinfo, rest) = rest.split_once('@').unwrap();
    let path = rest.split_once('/').map(|(_, p)| p).unwrap_or_default();
    format!("{scheme}://{userinfo}@{addr}/{path}")
}

/// Rows in `victron.{table}` of `db`.
pub async fn rows(db: &TestDb, table: &str) -> i64 {
    db.scalar_i64(&format!("SELECT count(*) FROM victron.{table}"))
        .await
}

/// Every successful poll the status document `doc` counts for each
/// `(device, table)` is one row in PostgreSQL: none lost, none twice.
pub async fn assert_every_poll_stored_once(
    db: &TestDb,
    doc: &serde_json::Value,
    devices: &[(&str, &str)],
    context: &str,
) {
    for (device, table) in devices {
        let in_db = db
            .scalar_i64(&format!(
                "SELECT count(*) FROM victron.{table} WHERE device = '{device}'"
            ))
            .await;
        assert_eq!(in_db, successful_polls(doc, device), "{context} {device}");
    }
}

/// The library's pool for `db` by `route`, as the daemon opens it.
pub async fn daemon_pool(db: &TestDb, route: Route) -> sqlx::PgPool {
    let env = route.daemon_env(&route.url(db));
    let env = env.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    let config = Config::load_with_env(None, env).unwrap();
    victron_poller::db::connect(config.database.as_ref().unwrap())
        .await
        .unwrap()
}

/// The server the outage tests stop and start (`outage` in
/// `scripts/test-databases.sh`; `TEST_OUTAGE_SERVER` is
/// `user:pg_ctl:data directory`).
#[derive(Debug)]
pub struct OutageServer {
    user: String,
    pg_ctl: String,
    data: String,
    /// Its admin URL (`TEST_DATABASE_URL_OUTAGE`).
    pub url: String,
    /// The admin URL of the PgBouncer in front of it.
    pub pooler_url: String,
}

impl OutageServer {
    pub fn from_env() -> OutageServer {
        let var = |name: &str| {
            std::env::var(name).unwrap_or_else(|_| {
                panic!("{name} is not set: run the suite with scripts/test, which starts the test servers")
            })
        };
        let server = var("TEST_OUTAGE_SERVER");
        let mut parts = server.splitn(3, ':');
        let mut part = || {
            parts
                .next()
                .expect("TEST_OUTAGE_SERVER is user:pg_ctl:data")
        };
        OutageServer {
            user: part().to_string(),
            pg_ctl: part().to_string(),
            data: part().to_string(),
            url: var("TEST_DATABASE_URL_OUTAGE"),
            pooler_url: var("TEST_PGBOUNCER_URL_OUTAGE"),
        }
    }

    fn pg_ctl(&self, action: &str) {
        let status = Command::new("runuser")
            .args(["-u", &self.user, "--", &self.pg_ctl, "-D", &self.data])
            .args(["-m", "fast", "-w", "-l"])
            .arg(format!("{}/server.log", self.data))
            .arg(action)
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "pg_ctl {action}");
    }

    /// Stops the server for `length` (a fast shutdown: sessions are ended),
    /// then starts it again and waits until it accepts connections.
    pub async fn outage(&self, length: Duration) {
        self.pg_ctl("stop");
        tokio::time::sleep(length).await;
        self.pg_ctl("start");
    }
}
