//! Adoption of a database built by the legacy Python runner
//! (`tests/fixtures/legacy_python_schema.sql`): migrations succeed, every row
//! is kept, the legacy flaws are repaired, and a failing migration is loud and
//! leaves nothing half-applied.

use crate::helpers::database::{Flavour, TestDb};
use crate::helpers::process::{run_cli, texts};

const LEGACY: &str = include_str!("../fixtures/legacy_python_schema.sql");

const TABLES: [&str; 9] = [
    "public.kb_documents",
    "public.kb_chunks",
    "public.kb_sync_log",
    "agent_metrics.agent_health_checks",
    "agent_metrics.agent_events",
    "agent_metrics.tool_execution_log",
    "agent_metrics.agent_performance_metrics",
    "victron.battery_readings",
    "victron.polling_status",
];

async fn row_counts(db: &TestDb) -> Vec<(String, i64)> {
    let mut counts = Vec::new();
    for table in TABLES {
        let exists = db
            .scalar_i64(&format!(
                "SELECT (to_regclass('{table}') IS NOT NULL)::int::bigint"
            ))
            .await;
        if exists == 1 {
            counts.push((
                table.to_string(),
                db.scalar_i64(&format!("SELECT count(*) FROM {table}"))
                    .await,
            ));
        }
    }
    counts
}

async fn adopt(flavour: Flavour) {
    let db = TestDb::create(flavour).await;
    db.execute(LEGACY).await;
    let before = row_counts(&db).await;
    assert!(
        before.iter().all(|(_, n)| *n > 0),
        "the fixture fills every table: {before:?}"
    );
    if flavour.has_vector() {
        assert!(before.iter().any(|(t, _)| t == "public.kb_chunks"));
    }
    let newest_legacy: String = db
        .strings("SELECT max(\"timestamp\")::text FROM victron.battery_readings")
        .await
        .remove(0);

    db.migrate().await;

    let after = row_counts(&db).await;
    // kb_chunks is created on servers where the legacy runner could not.
    let after_legacy: Vec<_> = after
        .iter()
        .filter(|(t, _)| before.iter().any(|(b, _)| b == t))
        .cloned()
        .collect();
    assert_eq!(before, after_legacy, "{flavour:?}: rows were lost or added");

    // The legacy key is gone; the new one includes the time column.
    let primary = db
        .scalar_i64(
            "SELECT count(*) FROM pg_constraint
             WHERE conrelid = 'victron.battery_readings'::regclass AND contype = 'p'",
        )
        .await;
    assert_eq!(primary, 0, "the id-only primary key must be dropped");
    assert_eq!(
        db.strings("SELECT DISTINCT device || '/' || source FROM victron.battery_readings")
            .await,
        vec!["vrm/vrm".to_string()]
    );
    assert_eq!(
        db.strings(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute
                    WHERE attrelid = 'public.kb_documents'::regclass AND attname = 'mime_type'"
        )
        .await,
        vec!["character varying(200)".to_string()]
    );
    assert_eq!(
        db.scalar_i64(
            "SELECT count(*) FROM pg_indexes WHERE indexname = 'idx_kb_documents_folder_path'"
        )
        .await,
        1
    );
    // The singleton keeps its row and values, and is now enforced.
    assert_eq!(
        db.scalar_i64("SELECT requests_this_hour::bigint FROM victron.polling_status WHERE id = 1")
            .await,
        20
    );
    assert_eq!(
        db.strings("SELECT column_default FROM information_schema.columns
                    WHERE table_schema = 'victron' AND table_name = 'polling_status' AND column_name = 'id'")
            .await,
        vec!["1".to_string()]
    );
    // Legacy views still answer, with the legacy rows.
    assert_eq!(
        db.strings("SELECT \"timestamp\"::text FROM victron.latest_battery_reading")
            .await,
        vec![newest_legacy]
    );
    assert_eq!(
        db.scalar_i64("SELECT reading_count FROM victron.battery_stats_24h")
            .await,
        120
    );
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM agent_metrics.agent_health_summary")
            .await,
        2
    );

    if flavour == Flavour::Timescale {
        assert_eq!(
            db.scalar_i64("SELECT count(*) FROM timescaledb_information.hypertables
                           WHERE hypertable_schema = 'victron' AND hypertable_name = 'battery_readings'")
                .await,
            1
        );
        assert_eq!(
            db.scalar_i64("SELECT count(*) FROM ONLY victron.battery_readings")
                .await,
            0,
            "rows moved into chunks"
        );
        assert!(
            db.scalar_i64("SELECT count(*) FROM show_chunks('victron.battery_readings')")
                .await
                >= 6
        );
    }
    if flavour.has_vector() {
        assert_eq!(
            db.scalar_i64("SELECT count(*) FROM kb_chunks WHERE vector_dims(embedding) = 1536")
                .await,
            12,
            "embeddings kept"
        );
        assert_eq!(
            db.strings(
                "SELECT am.amname::text FROM pg_class c JOIN pg_am am ON am.oid = c.relam
                        WHERE c.relname = 'idx_kb_chunks_embedding'"
            )
            .await,
            vec!["hnsw".to_string()],
            "the legacy IVFFlat index is replaced"
        );
    }

    let snapshot = db.catalog_snapshot().await;
    let again = db.migrate().await;
    assert!(again.applied_now.is_empty() && again.reconcile.actions.is_empty());
    assert_eq!(snapshot, db.catalog_snapshot().await);
}

#[tokio::test]
async fn adopts_legacy_database_on_timescaledb() {
    adopt(Flavour::Timescale).await;
}

#[tokio::test]
async fn adopts_legacy_database_without_preloaded_timescaledb() {
    adopt(Flavour::NoPreload).await;
}

#[tokio::test]
async fn adopts_legacy_database_on_plain_postgres() {
    adopt(Flavour::Plain).await;
}

/// A legacy chunk without a document cannot take the new NOT NULL: the run
/// fails naming the file and the fix, and nothing of the run is applied.
#[tokio::test]
async fn a_failing_migration_is_loud_and_rolled_back() {
    let db = TestDb::create(Flavour::NoPreload).await;
    db.execute(LEGACY).await;
    db.execute(
        "INSERT INTO kb_chunks (document_id, chunk_text, chunk_index) VALUES (NULL, 'orphan', 0)",
    )
    .await;
    let output = run_cli(&["migrate"], &[("DATABASE_URL", &db.url)]);
    let (stdout, stderr) = texts(&output);
    assert_eq!(
        output.status.code(),
        Some(4),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    assert!(
        stderr.contains("migration 0001_knowledge_base.sql failed"),
        "{stderr}"
    );
    assert!(
        stderr.contains("1 row(s) with a NULL document_id"),
        "{stderr}"
    );
    assert!(stderr.contains("hint: Delete them"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    assert!(
        !stdout.contains("applied"),
        "nothing reports success: {stdout}"
    );

    // The run is one transaction: not even its tracking table is left.
    assert_eq!(
        db.scalar_i64("SELECT (to_regclass('public._sqlx_migrations') IS NOT NULL)::int::bigint")
            .await,
        0
    );
    assert_eq!(
        db.strings(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute
                    WHERE attrelid = 'public.kb_documents'::regclass AND attname = 'mime_type'"
        )
        .await,
        vec!["character varying(100)".to_string()],
        "the failed file's earlier statements were rolled back"
    );
}
