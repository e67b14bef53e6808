//! Shared test plumbing: the real PostgreSQL servers started by
//! `scripts/test` (and the PgBouncer in front of each), a fresh database per
//! test, the built binary, and a catalog snapshot to compare schemas.
//!
//! A test that cannot reach its server fails with a message saying how to
//! start the servers; it never passes silently. Those tests, and what only
//! they use here, are built with the `servers` feature (`scripts/test`
//! enables it); every database a test creates is dropped when it ends.

#[cfg(feature = "servers")]
use std::process::Stdio;
use std::process::{Command, Output};
#[cfg(feature = "servers")]
use std::sync::atomic::{AtomicU32, Ordering};
#[cfg(feature = "servers")]
use std::time::{Duration, Instant};

#[cfg(feature = "servers")]
use sqlx::{Connection, PgConnection};
#[cfg(feature = "servers")]
use victron_poller::config::{Config, DatabaseConfig};

/// The server flavours of `schema.md`.
#[cfg(feature = "servers")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavour {
    /// PostgreSQL 17 + TimescaleDB (preloaded, Apache edition) + pgvector.
    Timescale,
    /// The same server binaries, TimescaleDB installed but not preloaded.
    NoPreload,
    /// Debian 12's PostgreSQL 15 without extensions.
    Plain,
}

#[cfg(feature = "servers")]
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
#[cfg(feature = "servers")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Straight to the server.
    Direct,
    /// Through PgBouncer in transaction pooling mode.
    PgBouncer,
}

#[cfg(feature = "servers")]
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
#[cfg(feature = "servers")]
#[derive(Debug)]
pub struct TestDb {
    pub flavour: Flavour,
    pub name: String,
    pub url: String,
    /// The admin URL of its server, to drop it from.
    server: String,
}

#[cfg(feature = "servers")]
static COUNTER: AtomicU32 = AtomicU32::new(0);

#[cfg(feature = "servers")]
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

#[cfg(feature = "servers")]
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
#[cfg(feature = "servers")]
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
#[cfg(feature = "servers")]
#[derive(Debug)]
pub struct DropDatabaseOnExit {
    pub server_url: String,
    pub name: String,
}

#[cfg(feature = "servers")]
impl Drop for DropDatabaseOnExit {
    fn drop(&mut self) {
        drop_database(&self.server_url, &self.name);
    }
}

/// Runs the built binary with a clean environment plus `env`.
pub fn run_cli(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_victron-poller"));
    command
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    for (k, v) in env {
        command.env(k, v);
    }
    command.output().expect("run victron-poller")
}

/// Standard output and error of a finished command, as text.
pub fn texts(output: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A TCP proxy in front of a server, to break the network between a daemon
/// and its database the ways a flaky link does: cut (connections closed,
/// both ends notice at once) or frozen (nothing passes, nobody is told).
#[cfg(feature = "servers")]
#[derive(Debug)]
pub struct TcpProxy {
    addr: std::net::SocketAddr,
    state: std::sync::Arc<std::sync::Mutex<ProxyState>>,
}

#[cfg(feature = "servers")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ProxyMode {
    Open,
    Cut,
    Frozen,
}

#[cfg(feature = "servers")]
#[derive(Debug)]
struct ProxyState {
    mode: ProxyMode,
    /// Cancels every connection of the current generation.
    generation: tokio_util::sync::CancellationToken,
    /// Connections held open without forwarding while frozen.
    held: Vec<tokio::net::TcpStream>,
}

#[cfg(feature = "servers")]
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

    /// Lets connections through again (held ones are closed: their peers
    /// time out or see them end, as after a real outage).
    pub fn restore(&self) {
        self.set(ProxyMode::Open);
    }
}

/// The host:port of a test server's URL.
#[cfg(feature = "servers")]
pub fn server_address(url: &str) -> std::net::SocketAddr {
    let after_user = url.split_once('@').unwrap().1;
    after_user.split_once('/').unwrap().0.parse().unwrap()
}

/// `url` with its host and port replaced by `addr`.
#[cfg(feature = "servers")]
pub fn url_via(url: &str, addr: std::net::SocketAddr) -> String {
    let (scheme, rest) = url.split_once("://").unwrap();
    let (userinfo, rest) = rest.split_once('@').unwrap();
    let path = rest.split_once('/').map(|(_, p)| p).unwrap_or_default();
    format!("{scheme}://{userinfo}@{addr}/{path}")
}

/// A blocking HTTP/1.1 GET: (status code, body).
pub fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    try_http_get(addr, path).unwrap_or_else(|e| panic!("GET {path} from {addr}: {e}"))
}

/// [`http_get`], with an error instead of a panic when nothing answers (yet)
/// or the answer is no HTTP response.
pub fn try_http_get(addr: std::net::SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    use std::io::{Read as _, Write as _};
    let invalid = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| invalid(format!("no HTTP header end: {response:?}")))?;
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| invalid(format!("no status: {head}")))?;
    Ok((code, body.to_string()))
}

/// Waits until `device`'s status on `board` satisfies `done` (at most 10 s),
/// and returns that status.
pub async fn wait_for_status(
    board: &victron_poller::status::StatusBoard,
    device: &str,
    what: &str,
    done: impl Fn(&victron_poller::status::DeviceStatus) -> bool,
) -> victron_poller::status::DeviceStatus {
    let start = std::time::Instant::now();
    loop {
        if let Some(status) = board.get(device).filter(&done) {
            return status;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(10),
            "timed out waiting for {what}: {:?}",
            board.get(device)
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// `scripts/systemd-ns.sh`: boots systemd in a namespace of its own.
#[cfg(feature = "servers")]
const SYSTEMD_NS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/systemd-ns.sh");

/// One systemd namespace at a time: they would share this machine's cgroup
/// tree, and two systemds managing the same unit's cgroup break each other.
#[cfg(feature = "servers")]
static ONE_SYSTEMD: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A systemd in its own namespace, stopped when dropped.
#[cfg(feature = "servers")]
pub struct Systemd {
    pid: String,
    _turn: std::sync::MutexGuard<'static, ()>,
}

#[cfg(feature = "servers")]
impl Systemd {
    pub fn boot() -> Systemd {
        // A test that failed while holding it has stopped its systemd.
        let turn = ONE_SYSTEMD.lock().unwrap_or_else(|e| e.into_inner());
        let output = Command::new("bash")
            .args([SYSTEMD_NS, "start", "600"])
            .output()
            .expect("run scripts/systemd-ns.sh");
        assert!(
            output.status.success(),
            "systemd did not boot in its namespace (root and systemd needed: scripts/test): {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Systemd {
            pid: String::from_utf8(output.stdout).unwrap().trim().to_string(),
            _turn: turn,
        }
    }

    /// Runs `args` inside, with `stdin` as its input.
    pub fn run_with(&self, args: &[&str], stdin: Stdio) -> Output {
        Command::new("bash")
            .args([SYSTEMD_NS, "run", &self.pid])
            .args(args)
            .stdin(stdin)
            .output()
            .unwrap()
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.run_with(args, Stdio::null())
    }

    pub fn sh(&self, script: &str) -> String {
        let output = self.run(&["sh", "-c", script]);
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Writes `contents` to `path` inside.
    pub fn write(&self, path: &str, contents: &[u8], mode: &str) {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), contents).unwrap();
        let output = self.run_with(
            &[
                "sh",
                "-c",
                &format!("mkdir -p \"$(dirname {path})\" && cat > {path} && chmod {mode} {path}"),
            ],
            Stdio::from(std::fs::File::open(file.path()).unwrap()),
        );
        assert!(output.status.success(), "write {path}: {output:?}");
    }

    pub fn systemctl(&self, args: &[&str]) -> Output {
        let mut all = vec!["systemctl"];
        all.extend_from_slice(args);
        self.run(&all)
    }

    /// One property of the unit (`systemctl show -p NAME --value`).
    pub fn property(&self, name: &str) -> String {
        let output = self.systemctl(&["show", "-p", name, "--value", "victron-poller"]);
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    }

    pub fn journal(&self, extra: &[&str]) -> String {
        let mut args = vec![
            "journalctl",
            "-u",
            "victron-poller",
            "--no-pager",
            "-o",
            "cat",
        ];
        args.extend_from_slice(extra);
        String::from_utf8_lossy(&self.run(&args).stdout).into_owned()
    }

    /// Waits until `check` holds, showing the unit's state and journal if not.
    pub fn wait(&self, what: &str, limit: Duration, check: impl Fn(&Systemd) -> bool) {
        let start = Instant::now();
        while !check(self) {
            assert!(
                start.elapsed() < limit,
                "timed out waiting for {what}: {} {} NRestarts={}\n{}",
                self.property("ActiveState"),
                self.property("SubState"),
                self.property("NRestarts"),
                self.journal(&[])
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Readings in the service's local store, by `status --json` (-1 when
    /// it cannot tell).
    pub fn readings_stored(&self) -> i64 {
        let out = self.sh("victron-poller status --json --state-dir /var/lib/victron-poller");
        serde_json::from_str::<serde_json::Value>(&out)
            .ok()
            .and_then(|v| v["readings_stored"].as_i64())
            .unwrap_or(-1)
    }
}

#[cfg(feature = "servers")]
impl Drop for Systemd {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .args([SYSTEMD_NS, "stop", &self.pid])
            .status();
    }
}
