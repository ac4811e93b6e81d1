//! `migrate` itself: idempotent, complete, and documented for DBAs.

use std::collections::BTreeSet;

use commissions::db;

use crate::helpers::{create_partner, create_payment, TestDatabase};

#[tokio::test]
async fn migrate_runs_again_without_change_and_concurrently() {
    let db = TestDatabase::new().await;
    let (a, b) = tokio::join!(db::migrate(&db.url), db::migrate(&db.url));
    a.unwrap();
    b.unwrap();
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM refinery_schema_history")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let files = std::fs::read_dir("migrations").unwrap().count() as i64;
    assert_eq!(applied, files);
}

#[test]
fn every_engine_file_is_applied() {
    let on_disk: BTreeSet<String> = std::fs::read_dir("sql")
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".sql"))
        .collect();
    let applied: BTreeSet<String> = db::ENGINE_SQL
        .iter()
        .map(|(name, _)| name.to_string())
        .collect();
    assert_eq!(on_disk, applied);
    let order: Vec<&str> = db::ENGINE_SQL.iter().map(|(name, _)| *name).collect();
    let mut sorted = order.clone();
    sorted.sort();
    assert_eq!(order, sorted, "applied in file-name order");
}

#[tokio::test]
async fn every_table_column_view_and_function_has_a_comment() {
    let db = TestDatabase::new().await;
    let missing: Vec<String> = sqlx::query_scalar(
        r#"
        SELECT c.relname || coalesce('.' || a.attname, '')
          FROM pg_class c
          JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = 'public'
          LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND c.relkind = 'r'
         WHERE c.relkind IN ('r', 'v')
           AND c.relname <> 'refinery_schema_history'
           AND col_description(c.oid, coalesce(a.attnum, 0)) IS NULL
           AND (a.attnum IS NOT NULL OR obj_description(c.oid, 'pg_class') IS NULL)
        UNION ALL
        SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace AND n.nspname = 'public'
         WHERE obj_description(p.oid, 'pg_proc') IS NULL
        UNION ALL
        SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = 'public'
         WHERE c.relkind IN ('r', 'v') AND c.relname <> 'refinery_schema_history' AND obj_description(c.oid, 'pg_class') IS NULL
        "#,
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert!(
        missing.is_empty(),
        "objects without COMMENT ON: {missing:?}"
    );
}

#[tokio::test]
async fn a_migration_behind_an_open_transaction_lets_the_engine_run_meanwhile() {
    use commissions::db::{migrate_with, MigrateOptions};

    let db = TestDatabase::new().await;
    let partner = create_partner(&db.pool, "Acme", None).await;
    let payment = create_payment(&db.pool, "100.00", "NGN", Some(partner)).await;
    // A DBA's transaction that wrote to payments and stays open: replacing a
    // trigger on payments must wait for it.
    let mut dba = db.connect().await;
    let open = dba.transaction().await.unwrap();
    open.execute(
        "INSERT INTO payments (amount, currency, partner_id) VALUES (1, 'NGN', $1)",
        &[&partner],
    )
    .await
    .unwrap();
    let url = db.url.clone();
    let migration = tokio::spawn(async move {
        migrate_with(
            &url,
            MigrateOptions {
                lock_timeout: std::time::Duration::from_millis(100),
                attempts: 1_000,
            },
        )
        .await
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    // Meanwhile a verification does not queue behind the waiting migration.
    let verifier = db.connect().await;
    verifier
        .batch_execute("SET lock_timeout = '2s'")
        .await
        .unwrap();
    verifier
        .execute("SELECT verify_payment($1)", &[&payment])
        .await
        .expect("the engine runs while the migration waits its turn");
    assert!(!migration.is_finished(), "the migration is still waiting");
    open.commit().await.unwrap();
    migration
        .await
        .unwrap()
        .expect("the migration completes once the transaction ends");
}
