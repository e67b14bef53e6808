//! Migrations on the three server flavours of `schema.md`: the catalog they
//! build, the storage mode and degraded features they report, and that a
//! second run changes nothing.

use std::collections::BTreeMap;

use victron_poller::db::server::StorageMode;

use crate::helpers::database::{Flavour, TestDb};

const TS: &str = "timestamp without time zone";
const TSTZ: &str = "timestamp with time zone";
const F8: &str = "double precision";

/// Columns that `schema.md` (and the legacy tables it keeps) define, with types.
#[rustfmt::skip]
fn expected_columns(flavour: Flavour) -> Vec<(&'static str, Vec<(&'static str, &'static str)>)> {
    let embedding = if flavour.has_vector() { "vector(1536)" } else { "real[]" };
    let common = |extra: Vec<(&'static str, &'static str)>| {
        let mut cols = vec![
            ("timestamp", TSTZ),
            ("device", "text"),
            ("installation_id", "character varying(100)"),
            ("source", "text"),
            ("created_at", TSTZ),
        ];
        cols.extend(extra);
        cols
    };
    vec![
        ("public.kb_documents", vec![
            ("id", "integer"), ("google_doc_id", "character varying(255)"),
            ("title", "character varying(500)"), ("folder", "character varying(255)"),
            ("folder_path", "character varying(1000)"), ("mime_type", "character varying(200)"),
            ("full_content", "text"), ("is_context_file", "boolean"), ("token_count", "integer"),
            ("last_synced", TS), ("sync_error", "text"), ("created_at", TS), ("updated_at", TS),
        ]),
        ("public.kb_chunks", vec![
            ("id", "integer"), ("document_id", "integer"), ("chunk_text", "text"),
            ("chunk_index", "integer"), ("token_count", "integer"), ("embedding", embedding),
            ("created_at", TS),
        ]),
        ("public.kb_sync_log", vec![
            ("id", "integer"), ("sync_type", "character varying(50)"), ("started_at", TS),
            ("completed_at", TS), ("status", "character varying(50)"),
            ("documents_processed", "integer"), ("documents_updated", "integer"),
            ("documents_failed", "integer"), ("error_message", "text"),
            ("triggered_by", "character varying(100)"),
        ]),
        ("agent_metrics.agent_health_checks", vec![
            ("id", "integer"), ("agent_name", "character varying(100)"),
            ("status", "character varying(50)"), ("response_time_ms", "integer"),
            ("error_message", "text"), ("checked_at", TSTZ), ("metadata", "jsonb"),
        ]),
        ("agent_metrics.agent_events", vec![
            ("id", "integer"), ("agent_name", "character varying(100)"),
            ("event_type", "character varying(50)"), ("event_status", "character varying(50)"),
            ("query", "text"), ("tool_name", "character varying(100)"), ("duration_ms", "integer"),
            ("error_message", "text"), ("conversation_id", "character varying(100)"),
            ("metadata", "jsonb"), ("created_at", TSTZ),
        ]),
        ("agent_metrics.tool_execution_log", vec![
            ("id", "integer"), ("agent_name", "character varying(100)"),
            ("tool_name", "character varying(100)"), ("input_params", "jsonb"),
            ("output_data", "text"), ("success", "boolean"), ("duration_ms", "integer"),
            ("error_message", "text"), ("conversation_id", "character varying(100)"),
            ("executed_at", TSTZ),
        ]),
        ("agent_metrics.agent_performance_metrics", vec![
            ("id", "integer"), ("agent_name", "character varying(100)"), ("metric_hour", TSTZ),
            ("total_queries", "integer"), ("successful_queries", "integer"),
            ("failed_queries", "integer"), ("avg_response_time_ms", "integer"),
            ("total_tool_calls", "integer"), ("created_at", TSTZ),
        ]),
        ("victron.battery_readings", {
            let mut cols = common(vec![
                ("soc", F8), ("voltage", F8), ("current", F8), ("power", F8),
                ("state", "character varying(20)"), ("temperature", F8), ("consumed_ah", F8),
                ("time_to_go_s", F8), ("starter_voltage", F8), ("midpoint_voltage", F8),
                ("midpoint_deviation_pct", F8), ("min_cell_voltage", F8), ("max_cell_voltage", F8),
                ("state_of_health_pct", F8), ("alarm", "text"), ("product_id", "integer"),
            ]);
            cols.push(("id", "integer"));
            cols
        }),
        ("victron.solar_readings", common(vec![
            ("battery_voltage", F8), ("battery_current", F8), ("pv_voltage", F8),
            ("pv_current", F8), ("pv_power", F8), ("load_current", F8),
            ("yield_today_kwh", F8), ("yield_yesterday_kwh", F8), ("yield_total_kwh", F8),
            ("max_power_today_w", F8), ("charge_state", "text"), ("mppt_mode", "text"),
            ("error_code", "integer"), ("product_id", "integer"),
        ])),
        ("victron.inverter_readings", {
            let mut extra = vec![];
            for side in ["in", "out"] {
                for phase in 1..=3 {
                    for q in ["voltage", "current", "frequency", "power"] {
                        extra.push((
                            &*Box::leak(format!("ac_{side}_l{phase}_{q}").into_boxed_str()),
                            F8,
                        ));
                    }
                }
            }
            extra.extend([
                ("dc_voltage", F8), ("dc_current", F8), ("state", "text"), ("mode", "text"),
                ("active_input", "text"), ("alarms", "text"),
            ]);
            common(extra)
        }),
        ("victron.system_readings", common(vec![
            ("ac_consumption_l1_power", F8), ("ac_consumption_l2_power", F8),
            ("ac_consumption_l3_power", F8), ("grid_l1_power", F8), ("grid_l2_power", F8),
            ("grid_l3_power", F8), ("genset_l1_power", F8), ("pv_on_output_l1_power", F8),
            ("pv_on_input_l1_power", F8), ("dc_pv_power", F8), ("dc_system_power", F8),
            ("battery_state", "text"),
        ])),
        ("victron.polling_status", vec![
            ("id", "integer"), ("last_poll_attempt", TSTZ), ("last_successful_poll", TSTZ),
            ("last_error", "text"), ("requests_this_hour", "integer"),
            ("hour_window_start", TSTZ), ("consecutive_failures", "integer"),
            ("is_healthy", "boolean"), ("updated_at", TSTZ), ("poller_host", "text"),
            ("poller_version", "text"), ("poller_started_at", TSTZ),
            ("poll_interval_ms", "integer"), ("devices_configured", "integer"),
            ("devices_healthy", "integer"), ("rows_written_last_batch", "integer"),
            ("rows_written_total", "bigint"), ("spool_depth", "bigint"),
            ("spool_oldest_age_s", F8), ("last_retention_run", TSTZ),
            ("last_retention_rows_dropped", "bigint"), ("storage_mode", "text"),
        ]),
        ("victron.device_status", vec![
            ("device", "text"), ("source", "text"), ("address", "text"),
            ("product_id", "integer"), ("serial", "text"), ("firmware", "text"),
            ("last_attempt", TSTZ), ("last_success", TSTZ), ("last_error", "text"),
            ("consecutive_failures", "integer"), ("backoff_ms", "bigint"),
        ]),
    ]
}

/// Tables whose column set must be exactly the legacy one (readers select *).
const EXACT: [&str; 7] = [
    "public.kb_documents",
    "public.kb_chunks",
    "public.kb_sync_log",
    "agent_metrics.agent_health_checks",
    "agent_metrics.agent_events",
    "agent_metrics.tool_execution_log",
    "agent_metrics.agent_performance_metrics",
];

/// View name → the columns its readers rely on, in order.
#[rustfmt::skip]
const VIEWS: [(&str, &[&str]); 5] = [
    ("agent_metrics.agent_health_summary", &[
        "agent_name", "status", "response_time_ms", "error_message", "checked_at", "metadata",
    ]),
    ("agent_metrics.recent_agent_activity", &[
        "id", "agent_name", "event_type", "event_status", "query", "tool_name", "duration_ms",
        "error_message", "conversation_id", "created_at",
    ]),
    ("victron.latest_battery_reading", &[
        "id", "timestamp", "installation_id", "soc", "voltage", "current", "power", "state",
        "temperature", "created_at",
    ]),
    ("victron.battery_stats_24h", &[
        "reading_count", "first_reading", "last_reading", "avg_soc", "min_soc", "max_soc",
        "avg_voltage", "min_voltage", "max_voltage", "avg_current", "avg_power",
        "avg_temperature", "min_temperature", "max_temperature",
    ]),
    ("victron.polling_status_view", &[
        "id", "is_healthy", "last_poll_attempt", "last_successful_poll",
        "seconds_since_last_success", "is_stale", "last_error", "consecutive_failures",
    ]),
];

async fn columns(db: &TestDb) -> BTreeMap<String, Vec<(String, String)>> {
    let rows: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT c.relnamespace::regnamespace::text || '.' || c.relname, a.attname::text,
                format_type(a.atttypid, a.atttypmod)
         FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
         WHERE c.relnamespace::regnamespace::text IN ('public', 'agent_metrics', 'victron')
           AND c.relkind IN ('r', 'v', 'p') AND a.attnum > 0 AND NOT a.attisdropped
         ORDER BY 1, a.attnum",
    )
    .fetch_all(&mut db.connect().await)
    .await
    .unwrap();
    let mut map: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    for (table, column, ty) in rows {
        map.entry(table).or_default().push((column, ty));
    }
    map
}

async fn check_catalog(db: &TestDb) {
    let actual = columns(db).await;
    for (table, expected) in expected_columns(db.flavour) {
        let have = actual
            .get(table)
            .unwrap_or_else(|| panic!("{:?}: table {table} is missing", db.flavour));
        for (column, ty) in &expected {
            let found = have.iter().find(|(c, _)| c == column);
            assert_eq!(
                found.map(|(_, t)| t.as_str()),
                Some(*ty),
                "{:?}: {table}.{column}",
                db.flavour
            );
        }
        if EXACT.contains(&table) {
            assert_eq!(
                have.len(),
                expected.len(),
                "{:?}: {table} has extra columns: {have:?}",
                db.flavour
            );
        }
    }
    for (view, prefix) in VIEWS {
        let have: Vec<&str> = actual[view].iter().map(|(c, _)| c.as_str()).collect();
        assert_eq!(
            &have[..prefix.len()],
            prefix,
            "{:?}: columns of {view}",
            db.flavour
        );
        // The view runs and, for the status view, returns exactly one row.
        let n = db.scalar_i64(&format!("SELECT count(*) FROM {view}")).await;
        if view == "victron.polling_status_view" {
            assert_eq!(n, 1, "{view} returns the singleton");
        }
    }
    let view_columns: Vec<&str> = actual["victron.polling_status_view"]
        .iter()
        .map(|(c, _)| c.as_str())
        .collect();
    for derived in [
        "readings_last_hour",
        "readings_last_24h",
        "collection_health_pct",
        "oldest_reading_age_s",
        "devices_unhealthy",
        "reading_hypertables",
        "retention_policies",
        "storage_mode",
        "spool_depth",
    ] {
        assert!(
            view_columns.contains(&derived),
            "polling_status_view lacks {derived}"
        );
    }

    // Unique (site, device, timestamp) on every reading table, and nothing
    // unique without the time.
    for table in [
        "battery_readings",
        "solar_readings",
        "inverter_readings",
        "system_readings",
    ] {
        let unique = db
            .strings(&format!(
                "SELECT pg_get_indexdef(indexrelid) FROM pg_index
                 WHERE indrelid = 'victron.{table}'::regclass AND indisunique"
            ))
            .await;
        assert_eq!(unique.len(), 1, "{table}: {unique:?}");
        assert!(
            unique[0].contains("(installation_id, device, \"timestamp\")"),
            "{table}: {unique:?}"
        );
    }
    // CHECK (id = 1) on the singleton.
    let checks = db
        .strings(
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint
             WHERE conrelid = 'victron.polling_status'::regclass AND contype = 'c'",
        )
        .await;
    assert_eq!(checks, vec!["CHECK ((id = 1))".to_string()]);
    let mut conn = db.connect().await;
    let second = sqlx::query("INSERT INTO victron.polling_status (id) VALUES (2)")
        .execute(&mut conn)
        .await;
    assert!(second.is_err(), "a second status row must be refused");
    let unique_chunks = db
        .strings(
            "SELECT conname::text FROM pg_constraint
             WHERE conrelid = 'public.kb_chunks'::regclass AND contype = 'u'",
        )
        .await;
    assert_eq!(
        unique_chunks,
        vec!["kb_chunks_document_id_chunk_index_key".to_string()]
    );
    let indexes = db
        .strings(
            "SELECT indexname::text FROM pg_indexes
             WHERE schemaname IN ('public', 'agent_metrics') ORDER BY 1",
        )
        .await;
    for name in [
        "idx_kb_documents_folder_path",
        "idx_agent_events_conversation_id",
        "idx_perf_metrics_hour",
    ] {
        assert!(
            indexes.iter().any(|i| i == name),
            "{name} missing: {indexes:?}"
        );
    }
}

async fn fresh_migration(flavour: Flavour) -> TestDb {
    let db = TestDb::create(flavour).await;
    let report = db.migrate().await;
    assert_eq!(
        report.applied_now.len(),
        victron_poller::db::migrate::embedded().len()
    );
    check_catalog(&db).await;

    let features: Vec<&str> = report.degraded.iter().map(|d| d.feature).collect();
    match flavour {
        Flavour::Timescale => {
            assert_eq!(report.storage_mode, StorageMode::TimescaleDbApache);
            assert_eq!(features, vec!["retention policy"], "{:?}", report.degraded);
            assert!(report.degraded[0].reason.contains("Apache"));
            let chunks = db
                .strings(
                    "SELECT hypertable_name::text || ' ' || time_interval::text
                     FROM timescaledb_information.dimensions
                     WHERE hypertable_schema = 'victron' ORDER BY 1",
                )
                .await;
            assert_eq!(
                chunks,
                vec![
                    "battery_readings 01:00:00",
                    "history_1d 3650 days",
                    "history_1h 90 days",
                    "history_5m 7 days",
                    "inverter_readings 01:00:00",
                    "solar_readings 01:00:00",
                    "system_readings 01:00:00"
                ]
            );
            assert_eq!(
                db.scalar_i64(
                    "SELECT reading_hypertables::bigint FROM victron.polling_status_view"
                )
                .await,
                4
            );
        }
        Flavour::NoPreload => {
            assert_eq!(report.storage_mode, StorageMode::Postgres);
            assert_eq!(
                features,
                vec!["hypertables", "retention policy"],
                "{:?}",
                report.degraded
            );
            assert!(
                report.degraded[0].reason.contains("not preloaded"),
                "{:?}",
                report.degraded
            );
            assert_eq!(
                db.scalar_i64("SELECT count(*) FROM pg_extension WHERE extname = 'timescaledb'")
                    .await,
                0,
                "TimescaleDB must not be created when it is not preloaded"
            );
        }
        Flavour::Plain => {
            assert_eq!(report.storage_mode, StorageMode::Postgres);
            assert_eq!(
                features,
                vec!["hypertables", "retention policy", "vector search"],
                "{:?}",
                report.degraded
            );
            assert!(report.degraded[0].reason.contains("not installed"));
        }
    }
    if flavour.has_vector() {
        let method = db
            .strings(
                "SELECT am.amname::text FROM pg_class c JOIN pg_am am ON am.oid = c.relam
                 WHERE c.relname = 'idx_kb_chunks_embedding'",
            )
            .await;
        assert_eq!(method, vec!["hnsw".to_string()]);
    }
    db
}

/// The advisory lock `migrate` takes ("VICTRN"; part of the schema's
/// contract with older and newer daemons).
const SCHEMA_LOCK_KEY: i64 = 0x5649_4354_524e;

/// Another session holding the schema lock, as a migrating daemon would.
async fn hold_schema_lock(db: &TestDb) -> sqlx::PgConnection {
    let mut holder = db.connect().await;
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(SCHEMA_LOCK_KEY)
        .execute(&mut holder)
        .await
        .unwrap();
    holder
}

async fn second_run_changes_nothing(flavour: Flavour) {
    let db = fresh_migration(flavour).await;
    let before = db.catalog_snapshot().await;
    // A current schema takes no lock: this run does not wait for the holder.
    let _holder = hold_schema_lock(&db).await;
    let report = tokio::time::timeout(std::time::Duration::from_secs(20), db.migrate())
        .await
        .unwrap_or_else(|_| panic!("{flavour:?}: migrate of a current schema waited for the lock"));
    assert!(report.applied_now.is_empty(), "{:?}", report.applied_now);
    assert!(
        report.reconcile.actions.is_empty(),
        "{:?}",
        report.reconcile.actions
    );
    let after = db.catalog_snapshot().await;
    assert_eq!(
        before, after,
        "{flavour:?}: a second migrate changed the catalog"
    );
}

/// A run with something to do takes the lock: it waits for the holder,
/// then applies everything.
#[tokio::test]
async fn a_migration_waits_for_the_schema_lock() {
    let db = TestDb::create(Flavour::Timescale).await;
    let mut holder = hold_schema_lock(&db).await;
    let url = db.url.clone();
    let run = tokio::spawn(async move {
        let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&url)
            .await
            .unwrap();
        victron_poller::db::migrate::migrate(&mut conn, std::time::Duration::from_secs(72 * 3600))
            .await
            .map(|report| report.applied_now.len())
    });
    let start = std::time::Instant::now();
    while db
        .scalar_i64("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")
        .await
        == 0
    {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(20),
            "migrate never waited for the lock"
        );
        assert!(
            !run.is_finished(),
            "migrate finished while the lock was held"
        );
    }
    sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(SCHEMA_LOCK_KEY)
        .execute(&mut holder)
        .await
        .unwrap();
    let applied = run.await.unwrap().unwrap();
    let files = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations"))
        .unwrap()
        .count();
    assert_eq!(applied, files);
}

#[tokio::test]
async fn migrates_timescaledb_with_pgvector() {
    second_run_changes_nothing(Flavour::Timescale).await;
}

#[tokio::test]
async fn migrates_when_timescaledb_is_installed_but_not_preloaded() {
    second_run_changes_nothing(Flavour::NoPreload).await;
}

#[tokio::test]
async fn migrates_plain_postgres_15() {
    second_run_changes_nothing(Flavour::Plain).await;
}

/// A reading table that stayed plain (migrations applied, reconcile not yet
/// run, e.g. TimescaleDB added to the server later) becomes a hypertable with
/// its rows.
#[tokio::test]
async fn reconcile_turns_a_plain_reading_table_with_rows_into_a_hypertable() {
    let db = TestDb::create(Flavour::Timescale).await;
    let mut conn = db.connect().await;
    victron_poller::db::migrate::MIGRATOR
        .run(&mut conn)
        .await
        .unwrap();
    db.execute(
        "INSERT INTO victron.solar_readings (\"timestamp\", device, pv_power)
         SELECT now() - g * interval '10 minutes', 'mppt-1', g FROM generate_series(0, 29) g",
    )
    .await;
    let report = victron_poller::db::SchemaReport::collect(&mut conn, &db.database_config())
        .await
        .unwrap();
    assert_eq!(report.schema.hypertables.len(), 0);

    let reconciled =
        victron_poller::db::reconcile::run(&mut conn, std::time::Duration::from_secs(72 * 3600))
            .await
            .unwrap();
    assert!(
        reconciled
            .actions
            .iter()
            .any(|a| a.contains("solar_readings is now a hypertable")
                && a.contains("30 existing rows")),
        "{:?}",
        reconciled.actions
    );
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM victron.solar_readings")
            .await,
        30
    );
    let chunks = db
        .scalar_i64("SELECT count(*) FROM show_chunks('victron.solar_readings')")
        .await;
    assert!(
        chunks >= 5,
        "30 rows over 5 hours land in at least 5 one-hour chunks, got {chunks}"
    );
    // The rows now live in chunks, not in the parent table.
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM ONLY victron.solar_readings")
            .await,
        0
    );

    let again =
        victron_poller::db::reconcile::run(&mut conn, std::time::Duration::from_secs(72 * 3600))
            .await
            .unwrap();
    assert!(again.actions.is_empty(), "{:?}", again.actions);
}

/// A row written without a site (a writer older than sites) is the empty
/// site, not NULL, so that it takes part in the (site, device, timestamp)
/// key; `forwarder` holds the daemon's own writes to that key.
#[tokio::test]
async fn a_reading_without_a_site_is_the_empty_site() {
    for flavour in Flavour::ALL {
        let db = TestDb::create(flavour).await;
        db.migrate().await;
        db.execute("INSERT INTO victron.battery_readings (\"timestamp\", device, soc) VALUES ('2026-01-01T00:00:00Z', 'house', 49)")
            .await;
        assert_eq!(
            db.scalar_i64(
                "SELECT count(*) FROM victron.battery_readings WHERE installation_id = ''"
            )
            .await,
            1,
            "{flavour:?}"
        );
    }
}

/// The reading model and the migrations agree on every value column.
#[tokio::test]
async fn every_reading_column_exists_with_its_type() {
    use victron_poller::reading::{ColumnKind, ReadingTable};
    for flavour in [Flavour::Timescale, Flavour::Plain] {
        let db = TestDb::create(flavour).await;
        db.migrate().await;
        let actual = columns(&db).await;
        for table in ReadingTable::ALL {
            let have = &actual[&format!("victron.{}", table.name())];
            for (column, kind) in table.columns() {
                let ty = have
                    .iter()
                    .find(|(c, _)| c == column)
                    .map(|(_, t)| t.as_str())
                    .unwrap_or_else(|| panic!("{table}.{column} missing"));
                let ok = match kind {
                    ColumnKind::Float => ty == "double precision",
                    ColumnKind::Int => ty == "integer",
                    ColumnKind::Text => ty == "text" || ty.starts_with("character varying"),
                };
                assert!(ok, "{table}.{column} is {ty}, the model says {kind:?}");
            }
        }
    }
}

/// The views' `is_stale`: no successful poll for 2 poll intervals plus the
/// longer of a poll interval and the rows' rewrite period. A 1-s poller
/// rewriting every 5 s is stale after 7 s; one from before the period (NULL,
/// it wrote every poll) after 3 s, as it always was.
#[tokio::test]
async fn staleness_allows_for_the_status_rows_rewrite_period() {
    let db = TestDb::create(Flavour::Plain).await;
    db.migrate().await;
    // (site, seconds since the last success, status_every_ms)
    let cases = [
        ("every-5s-6s-ago", 6.5, Some(5000)),
        ("every-5s-8s-ago", 7.5, Some(5000)),
        ("every-poll-2s-ago", 2.5, None),
        ("every-poll-4s-ago", 3.5, None),
        ("every-1s-4s-ago", 3.5, Some(1000)),
    ];
    for (site, ago, every) in cases {
        let every = every.map_or("NULL".to_string(), |ms: i32| ms.to_string());
        db.execute(&format!(
            "INSERT INTO victron.site_status (installation_id, last_successful_poll,
                 poll_interval_ms, status_every_ms, is_healthy)
             VALUES ('{site}', now() - interval '{ago} seconds', 1000, {every}, true)"
        ))
        .await;
    }
    assert_eq!(
        db.strings(
            "SELECT installation_id FROM victron.site_status_view WHERE is_stale ORDER BY 1"
        )
        .await,
        vec!["every-1s-4s-ago", "every-5s-8s-ago", "every-poll-4s-ago"]
    );
    // The singleton's own row follows the same rule.
    db.execute(
        "INSERT INTO victron.polling_status (id, last_successful_poll, poll_interval_ms, status_every_ms)
         VALUES (1, now() - interval '6.5 seconds', 1000, 5000)
         ON CONFLICT (id) DO UPDATE SET last_successful_poll = excluded.last_successful_poll,
             poll_interval_ms = excluded.poll_interval_ms, status_every_ms = excluded.status_every_ms",
    )
    .await;
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM victron.polling_status_view WHERE NOT is_stale")
            .await,
        1
    );
}

/// A database written by the schema before sites (migrations 0001–0006,
/// rows without a site, device rows keyed by name) moves on every flavour:
/// its rows are kept with the empty site and the keys include the site.
#[tokio::test]
async fn a_database_from_before_sites_keeps_its_rows_and_moves_its_keys() {
    for flavour in Flavour::ALL {
        let db = TestDb::create(flavour).await;
        // The migrations as an earlier version shipped them: 0001–0006.
        let earlier = tempfile::tempdir().unwrap();
        for entry in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations")).unwrap()
        {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_str().unwrap().to_string();
            if name.as_str() < "0007" {
                std::fs::copy(&path, earlier.path().join(&name)).unwrap();
            }
        }
        let migrator = sqlx::migrate::Migrator::new(earlier.path()).await.unwrap();
        migrator.run(&mut db.connect().await).await.unwrap();
        db.execute(
            "INSERT INTO victron.battery_readings (\"timestamp\", device, soc)
             VALUES ('2026-01-01T00:00:00Z', 'house', 50), ('2026-01-01T00:00:01Z', 'house', 51);
             INSERT INTO victron.device_status (device, source) VALUES ('house', 'modbus')",
        )
        .await;

        let report = db.migrate().await;
        let applied: Vec<&str> = report.applied_now.iter().map(|m| m.file.as_str()).collect();
        assert_eq!(
            applied.first().copied(),
            Some("0007_victron_site_identity.sql"),
            "{flavour:?}: {applied:?}"
        );
        assert!(
            applied.iter().all(|f| *f >= "0007"),
            "{flavour:?}: {applied:?}"
        );
        assert_eq!(
            db.scalar_i64(
                "SELECT count(*) FROM victron.battery_readings WHERE installation_id = ''"
            )
            .await,
            2,
            "{flavour:?}: rows kept, with the empty site"
        );
        assert_eq!(
            db.strings(
                "SELECT pg_get_constraintdef(oid) FROM pg_constraint
                 WHERE conrelid = 'victron.device_status'::regclass AND contype = 'p'"
            )
            .await,
            vec!["PRIMARY KEY (installation_id, device)".to_string()],
            "{flavour:?}"
        );
        // The same device at another site is another row now.
        db.execute(
            "INSERT INTO victron.device_status (installation_id, device, source) VALUES ('ranch-b', 'house', 'modbus');
             INSERT INTO victron.battery_readings (\"timestamp\", installation_id, device, soc)
             VALUES ('2026-01-01T00:00:00Z', 'ranch-b', 'house', 60)",
        )
        .await;
        assert_eq!(
            db.scalar_i64("SELECT count(*) FROM victron.device_status WHERE device = 'house'")
                .await,
            2
        );
    }
}
