//! `migrate`: refinery applies the versioned schema in `migrations/`, then
//! every file of `sql/` (the engine: functions, triggers, views, each
//! `CREATE OR REPLACE`) is applied in one transaction. Both are embedded in
//! the binary, so a deployed node needs no source tree.
//!
//! Nodes may start together: a session advisory lock makes concurrent
//! migrations take turns instead of racing on the same DDL.

use std::time::Duration;

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
    (
        "08_lifecycle.sql",
        include_str!("../../sql/08_lifecycle.sql"),
    ),
    (
        "09_partner_webhooks.sql",
        include_str!("../../sql/09_partner_webhooks.sql"),
    ),
    // Last: it sets the owner and the privileges of everything above.
    (
        "99_privileges.sql",
        include_str!("../../sql/99_privileges.sql"),
    ),
];

const MIGRATION_LOCK_KEY: i64 = 7_164_946_332_151_808_000;

/// How a migration waits for the locks its DDL needs. Replacing a trigger
/// locks its table against writes; a migration that queues behind a long
/// transaction (a DBA's, left open) would hold every verification behind it
/// in the same queue. So each attempt gives up after `lock_timeout`, rolls
/// back (freeing the queue) and tries again after a pause.
#[derive(Debug, Clone, Copy)]
pub struct MigrateOptions {
    pub lock_timeout: Duration,
    pub attempts: u32,
}

impl Default for MigrateOptions {
    fn default() -> Self {
        Self {
            lock_timeout: Duration::from_secs(2),
            attempts: 60,
        }
    }
}

pub async fn migrate(database_url: &str) -> anyhow::Result<()> {
    migrate_with(database_url, MigrateOptions::default()).await
}

pub async fn migrate_with(database_url: &str, options: MigrateOptions) -> anyhow::Result<()> {
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
    // After the migrators' own lock: waiting for another node's migration is fine.
    client
        .batch_execute(&format!(
            "SET lock_timeout = '{}ms'",
            options.lock_timeout.as_millis()
        ))
        .await?;
    let mut attempt = 1;
    let result = loop {
        match apply(&mut client).await {
            Err(e) if is_lock_timeout(&e) && attempt < options.attempts => {
                let pause = Duration::from_millis(200 * u64::from(attempt.min(10)));
                tracing::warn!(
                    attempt,
                    ?pause,
                    "migrate: a table is locked by another transaction; retrying"
                );
                tokio::time::sleep(pause).await;
                attempt += 1;
            }
            result => break result,
        }
    };
    // The lock is session-scoped; dropping the connection releases it even if this fails.
    let _ = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK_KEY])
        .await;
    drop(client);
    let _ = connection.await;
    result
}

/// Gives the service's login role a password, as a SCRAM-SHA-256 verifier
/// computed here: a server that logs DDL logs the verifier, never the password.
pub async fn set_service_role_password(database_url: &str, password: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        password.len() >= 16,
        "SERVICE_ROLE_PASSWORD must be at least 16 characters"
    );
    let (mut config, tls) = super::tls::tokio_postgres(database_url)?;
    config.application_name("commissions:migrate");
    let (client, connection) = config
        .connect(tls)
        .await
        .context("cannot connect to PostgreSQL")?;
    let connection = tokio::spawn(connection);
    let verifier = postgres_protocol::password::scram_sha_256(password.as_bytes());
    // ALTER ROLE takes no bind parameters; the verifier is quoted by format(%L).
    let statement: String = client
        .query_one(
            "SELECT format('ALTER ROLE commissions_service PASSWORD %L', $1::text)",
            &[&verifier],
        )
        .await?
        .get(0);
    let result = client
        .batch_execute(&statement)
        .await
        .context("cannot set the password of commissions_service");
    drop(client);
    let _ = connection.await;
    result
}

/// `lock_timeout` fired (SQLSTATE 55P03), wherever in the chain it is.
fn is_lock_timeout(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<tokio_postgres::Error>()
            .and_then(|e| e.code())
            .is_some_and(|code| *code == tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE)
            || cause.to_string().contains("lock timeout")
    })
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
