//! What the server offers and what the schema currently is: extensions
//! available and installed, whether TimescaleDB is preloaded and under which
//! licence, which reading tables are hypertables, the embedding column, the
//! retention policies. From these it derives the storage mode and the list of
//! degraded features that `migrate` and `status` show.
//!
//! Read-only: nothing here changes the database.

use std::fmt;

use serde::Serialize;
use sqlx::PgConnection;

use crate::reading::ReadingTable;

/// The four reading tables' names, in schema `victron`.
pub(crate) fn reading_table_names() -> [&'static str; 4] {
    ReadingTable::ALL.map(ReadingTable::name)
}

/// The rollup tables, in schema `victron`, with the chunk interval each
/// gets as a hypertable (about a hundred thousand rows per chunk for a
/// five-device site).
pub(crate) const HISTORY_TABLES: [(&str, &str); 3] = [
    ("history_5m", "7 days"),
    ("history_1h", "90 days"),
    ("history_1d", "3650 days"),
];

/// Chunk interval of the reading hypertables, in microseconds (1 hour).
pub(crate) const CHUNK_INTERVAL_US: i64 = 3_600_000_000;

/// Whether an extension can be used.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub(crate) struct Extension {
    /// The version the server could install, if any.
    pub(crate) available: Option<String>,
    /// The version installed in this database, if any.
    pub(crate) installed: Option<String>,
}

/// The server's capabilities, as seen from this database.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ServerInfo {
    /// `server_version`, e.g. `17.12 (Debian 17.12-0+deb13u1)`.
    pub(crate) version: String,
    /// TimescaleDB.
    pub(crate) timescaledb: Extension,
    /// pgvector.
    pub(crate) vector: Extension,
    /// Whether `shared_preload_libraries` names timescaledb (it must, or
    /// `CREATE EXTENSION timescaledb` kills the session).
    pub(crate) timescaledb_preloaded: bool,
    /// `timescaledb.license`: `apache` or `timescale` once the extension is
    /// installed in this database.
    pub(crate) timescaledb_license: Option<String>,
}

impl ServerInfo {
    /// Reads the server's capabilities.
    pub(crate) async fn probe(conn: &mut PgConnection) -> Result<Self, sqlx::Error> {
        #[allow(clippy::type_complexity)]
        let row: (
            String,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
        ) = sqlx::query_as(
            "SELECT current_setting('server_version'),
                (SELECT default_version FROM pg_available_extensions WHERE name = 'timescaledb'),
                (SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'),
                (SELECT default_version FROM pg_available_extensions WHERE name = 'vector'),
                (SELECT extversion FROM pg_extension WHERE extname = 'vector'),
                (SELECT setting FROM pg_settings WHERE name = 'shared_preload_libraries'),
                nullif(current_setting('timescaledb.license', true), '')",
        )
        .fetch_one(conn)
        .await?;
        let timescaledb_installed = row.2.is_some();
        Ok(Self {
            version: row.0,
            timescaledb: Extension {
                available: row.1,
                installed: row.2,
            },
            vector: Extension {
                available: row.3,
                installed: row.4,
            },
            // A role without pg_read_all_settings does not see the setting
            // (pg_settings hides it rather than failing, as current_setting
            // would); an extension that is installed and answers is loaded.
            timescaledb_preloaded: match &row.5 {
                Some(libraries) => libraries
                    .split(',')
                    .any(|lib| lib.trim().trim_matches('"').ends_with("timescaledb")),
                None => timescaledb_installed,
            },
            timescaledb_license: row.6,
        })
    }

    /// TimescaleDB is installed in this database and loaded by the server.
    pub(crate) fn timescaledb_usable(&self) -> bool {
        self.timescaledb.installed.is_some() && self.timescaledb_preloaded
    }

    /// How readings are stored and expired on this server.
    pub(crate) fn storage_mode(&self) -> StorageMode {
        if !self.timescaledb_usable() {
            StorageMode::Postgres
        } else if self.timescaledb_license.as_deref() == Some("timescale") {
            StorageMode::TimescaleDb
        } else {
            StorageMode::TimescaleDbApache
        }
    }
}

/// How readings are stored and expired.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum StorageMode {
    /// Hypertables with TimescaleDB's own retention policy (TSL licence).
    #[serde(rename = "timescaledb")]
    TimescaleDb,
    /// Hypertables; the Apache edition refuses policies, so the daemon drops chunks.
    #[serde(rename = "timescaledb-apache")]
    TimescaleDbApache,
    /// Plain tables; the daemon deletes expired rows.
    Postgres,
}

impl StorageMode {
    /// The name stored in `polling_status.storage_mode`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TimescaleDb => "timescaledb",
            Self::TimescaleDbApache => "timescaledb-apache",
            Self::Postgres => "postgres",
        }
    }
}

impl fmt::Display for StorageMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A feature this database runs without, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Degraded {
    /// Short name: `hypertables`, `retention policy`, `vector search`.
    pub feature: &'static str,
    /// Why, and what happens instead.
    pub reason: String,
}

impl fmt::Display for Degraded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.feature, self.reason)
    }
}

/// The schema objects whose shape depends on the server.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SchemaState {
    /// Reading tables that exist.
    pub(crate) reading_tables: Vec<String>,
    /// Reading tables that are hypertables, with their chunk interval (µs).
    pub hypertables: Vec<(String, i64)>,
    /// Rollup tables that are hypertables.
    pub(crate) history_hypertables: Vec<String>,
    /// Reading tables with a TimescaleDB retention policy, with its `drop_after`.
    pub(crate) retention_policies: Vec<(String, String)>,
    /// `kb_chunks.embedding`'s type (`vector(1536)`, `real[]`), if the column exists.
    pub(crate) embedding_type: Option<String>,
    /// The access method of `idx_kb_chunks_embedding` (`hnsw`, `ivfflat`), if it exists.
    pub(crate) embedding_index: Option<String>,
}

impl SchemaState {
    /// Reads the current shape of the server-dependent objects.
    pub(crate) async fn inspect(
        conn: &mut PgConnection,
        server: &ServerInfo,
    ) -> Result<Self, sqlx::Error> {
        let reading_tables: Vec<String> = sqlx::query_scalar(
            "SELECT c.relname::text FROM pg_class c
             WHERE c.relnamespace = to_regnamespace('victron')
               AND c.relname = ANY($1) AND c.relkind IN ('r', 'p')
             ORDER BY 1",
        )
        .bind(&reading_table_names()[..])
        .fetch_all(&mut *conn)
        .await?;

        let (hypertables, retention_policies) = if server.timescaledb_usable() {
            let hypertables = sqlx::query_as(
                "SELECT h.hypertable_name::text,
                        coalesce((extract(epoch FROM d.time_interval) * 1000000)::bigint, 0)
                 FROM timescaledb_information.hypertables h
                 LEFT JOIN timescaledb_information.dimensions d
                   ON d.hypertable_schema = h.hypertable_schema
                  AND d.hypertable_name = h.hypertable_name AND d.dimension_number = 1
                 WHERE h.hypertable_schema = 'victron' AND h.hypertable_name = ANY($1)
                 ORDER BY 1",
            )
            .bind(&reading_table_names()[..])
            .fetch_all(&mut *conn)
            .await?;
            let policies = sqlx::query_as(
                "SELECT hypertable_name::text, coalesce(config->>'drop_after', '')
                 FROM timescaledb_information.jobs
                 WHERE proc_name = 'policy_retention' AND hypertable_schema = 'victron'
                   AND hypertable_name = ANY($1)
                 ORDER BY 1",
            )
            .bind(&reading_table_names()[..])
            .fetch_all(&mut *conn)
            .await?;
            (hypertables, policies)
        } else {
            (Vec::new(), Vec::new())
        };
        let history_hypertables = if server.timescaledb_usable() {
            sqlx::query_scalar(
                "SELECT hypertable_name::text FROM timescaledb_information.hypertables
                 WHERE hypertable_schema = 'victron' AND hypertable_name = ANY($1) ORDER BY 1",
            )
            .bind(HISTORY_TABLES.map(|(t, _)| t).to_vec())
            .fetch_all(&mut *conn)
            .await?
        } else {
            Vec::new()
        };

        let embedding_type = sqlx::query_scalar(
            "SELECT format_type(a.atttypid, a.atttypmod) FROM pg_attribute a
             WHERE a.attrelid = to_regclass('public.kb_chunks') AND a.attname = 'embedding'
               AND NOT a.attisdropped",
        )
        .fetch_optional(&mut *conn)
        .await?;
        let embedding_index = sqlx::query_scalar(
            "SELECT am.amname::text FROM pg_class c JOIN pg_am am ON am.oid = c.relam
             WHERE c.oid = to_regclass('public.idx_kb_chunks_embedding')",
        )
        .fetch_optional(&mut *conn)
        .await?;

        Ok(Self {
            reading_tables,
            hypertables,
            history_hypertables,
            retention_policies,
            embedding_type,
            embedding_index,
        })
    }

    /// Whether `table` is a hypertable.
    pub(crate) fn is_hypertable(&self, table: &str) -> bool {
        self.hypertables.iter().any(|(t, _)| t == table)
    }

    /// Every feature this database runs without, with the reason.
    pub(crate) fn degraded(&self, server: &ServerInfo) -> Vec<Degraded> {
        let mut degraded = Vec::new();
        let ts = &server.timescaledb;
        if server.timescaledb_usable() {
            let plain: Vec<&str> = self
                .reading_tables
                .iter()
                .map(String::as_str)
                .filter(|t| !self.is_hypertable(t))
                .collect();
            if !plain.is_empty() {
                degraded.push(Degraded {
                    feature: "hypertables",
                    reason: format!(
                        "{} still plain table(s); run `victron-poller migrate` to convert them",
                        plain.join(", ")
                    ),
                });
            }
            if server.storage_mode() == StorageMode::TimescaleDbApache {
                degraded.push(Degraded {
                    feature: "retention policy",
                    reason: "the TimescaleDB Apache edition refuses add_retention_policy; \
                             the daemon drops expired chunks itself"
                        .into(),
                });
            } else if self.retention_policies.len() < self.hypertables.len() {
                degraded.push(Degraded {
                    feature: "retention policy",
                    reason: "some reading hypertables have no TimescaleDB retention policy; \
                             the daemon drops expired chunks itself"
                        .into(),
                });
            }
        } else {
            let why = if ts.installed.is_some() {
                "TimescaleDB is installed in this database but the server does not preload it \
                 (shared_preload_libraries)"
                    .to_string()
            } else if ts.available.is_some() && !server.timescaledb_preloaded {
                "TimescaleDB is installed on the server but not preloaded \
                 (add it to shared_preload_libraries and restart)"
                    .to_string()
            } else if ts.available.is_some() {
                "TimescaleDB could not be enabled in this database (see the migrate output)"
                    .to_string()
            } else {
                "TimescaleDB is not installed on the server".to_string()
            };
            degraded.push(Degraded {
                feature: "hypertables",
                reason: format!("{why}; readings go to plain tables"),
            });
            degraded.push(Degraded {
                feature: "retention policy",
                reason: "no TimescaleDB; the daemon deletes expired rows in batches".into(),
            });
        }

        let has_vector_column = self
            .embedding_type
            .as_deref()
            .is_some_and(|t| t.starts_with("vector"));
        if server.vector.installed.is_none() || !has_vector_column {
            let why = if server.vector.installed.is_some() {
                "kb_chunks.embedding is not a vector column yet; run `victron-poller migrate`"
            } else if server.vector.available.is_some() {
                "pgvector is on the server but could not be enabled in this database"
            } else {
                "pgvector is not installed on the server"
            };
            degraded.push(Degraded {
                feature: "vector search",
                reason: format!("{why}; kb_chunks.embedding is a plain real[] without an index"),
            });
        } else if self.embedding_index.as_deref() != Some("hnsw") {
            degraded.push(Degraded {
                feature: "vector search",
                reason: "kb_chunks.embedding has no HNSW index; run `victron-poller migrate`"
                    .into(),
            });
        }
        degraded
    }
}
