//! `migrate`: refinery applies the versioned schema in `migrations/`, then
//! every file of `sql/` (the engine: functions, triggers, views, each
//! `CREATE OR REPLACE`) is applied in one transaction. Both are embedded in
//! the binary, so a deployed node needs no source tree.
//!
//! Nodes may start together: a session advisory lock makes concurrent
//! migrations take turns instead of racing on the same DDL.

use anyhow::Context;

mod embedded {
    refinery::embed_migrations!("migrations");
}

/// The engine's source files, in the order they are applied. A test checks
/// that this list names every file in `sql/`.
pub const ENGINE_SQL: &[(&str, &str)] = &[
    ("01_money.sql", include_str!("../../sql/01_money.sql")),
    (
        "02_payment_lifecycle.sql",
        include_str!("../../sql/02_payment_lifecycle.sql"),
    ),
    (
        "03_commission_engine.sql",
        include_str!("../../sql/03_commission_engine.sql"),
    ),
    (
        "04_ledger_guards.sql",
        include_str!("../../sql/04_ledger_guards.sql"),
    ),
    (
        "05_dba_views.sql",
        include_str!("../../sql/05_dba_views.sql"),
    ),
    (
        "06_operator_functions.sql",
        include_str!("../../sql/06_operator_functions.sql"),
    ),
    ("07_webhooks.sql", include_str!("../../sql/07_webhooks.sql")),
];

const MIGRATION_LOCK_KEY: i64 = 7_164_946_332_151_808_000;

pub async fn migrate(database_url: &str) -> anyhow::Result<()> {
    let (mut config, tls) = super::tls::tokio_postgres(database_url)?;
    config.application_name("commissions:migrate");
    let (mut client, connection) = config
        .connect(tls)
        .await
        .context("cannot connect to PostgreSQL")?;
    let connection = tokio::spawn(connection);

    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK_KEY])
        .await?;
    let result = apply(&mut client).await;
    // The lock is session-scoped; dropping the connection releases it even if this fails.
    let _ = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK_KEY])
        .await;
    drop(client);
    let _ = connection.await;
    result
}

async fn apply(client: &mut tokio_postgres::Client) -> anyhow::Result<()> {
    embedded::migrations::runner()
        .run_async(client)
        .await
        .context("applying migrations/")?;
    let transaction = client.transaction().await?;
    // Quiet the NOTICEs of DROP ... IF EXISTS on a fresh database.
    transaction
        .batch_execute("SET LOCAL client_min_messages = warning")
        .await?;
    for (name, sql) in ENGINE_SQL {
        transaction
            .batch_execute(sql)
            .await
            .with_context(|| format!("applying sql/{name}"))?;
    }
    transaction.commit().await?;
    Ok(())
}
