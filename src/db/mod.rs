//! PostgreSQL access for the API: the pool, and the migrator that installs
//! the schema (`migrations/`) and the engine (`sql/`).

/// Requests that arrive together, applied in one transaction.
pub mod batch;
mod migrate;
/// TLS for the tokio-postgres connections, from the same `sslmode` and `sslrootcert` as the pool.
pub mod tls;
/// Provider webhooks that arrive together, applied in one transaction.
pub mod webhook_batch;

use std::{str::FromStr, time::Duration};

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgSslMode};

pub use migrate::{migrate, migrate_with, set_service_role_password, MigrateOptions, ENGINE_SQL};

/// Limits every session of the API pool sets, so that no request waits on
/// a lock or runs for ever, and no transaction left open by a bug holds
/// its locks: a stuck request fails (503, retry) instead of queueing.
#[derive(Debug, Clone, Copy)]
pub struct SessionLimits {
    pub statement_timeout: Duration,
    pub lock_timeout: Duration,
    pub idle_in_transaction_timeout: Duration,
}

impl Default for SessionLimits {
    fn default() -> Self {
        Self {
            statement_timeout: Duration::from_secs(10),
            lock_timeout: Duration::from_secs(3),
            idle_in_transaction_timeout: Duration::from_secs(30),
        }
    }
}

/// `application_name` of the API pool, so a DBA can tell our sessions apart
/// in `pg_stat_activity`.
pub const API_APPLICATION_NAME: &str = "commissions:api";

pub async fn connect_pool(
    database_url: &str,
    max_connections: u32,
    limits: SessionLimits,
) -> Result<PgPool, sqlx::Error> {
    let ms = |d: Duration| format!("{}ms", d.as_millis());
    let mut options = PgConnectOptions::from_str(database_url)?
        .application_name(API_APPLICATION_NAME)
        .options([
            ("statement_timeout", ms(limits.statement_timeout)),
            ("lock_timeout", ms(limits.lock_timeout)),
            (
                "idle_in_transaction_session_timeout",
                ms(limits.idle_in_transaction_timeout),
            ),
        ]);
    // sqlx reads sslmode and sslrootcert itself; only libpq's rule that
    // `require` with a root certificate checks the chain is ours (see tls.rs).
    let (settings, _) =
        tls::PgTls::split_url(database_url).map_err(|e| sqlx::Error::Configuration(e.into()))?;
    if settings.effective_mode() == tls::SslMode::VerifyCa {
        options = options.ssl_mode(PgSslMode::VerifyCa);
    }
    PgPoolOptions::new()
        .max_connections(max_connections)
        .min_connections(1)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(options)
        .await
}
