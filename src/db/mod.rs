//! PostgreSQL access for the API: the pool, and the migrator that installs
//! the schema (`migrations/`) and the engine (`sql/`).

mod migrate;
/// TLS for the tokio-postgres connections, from the same `sslmode` and `sslrootcert` as the pool.
pub mod tls;

use std::{str::FromStr, time::Duration};

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgSslMode};

pub use migrate::{migrate, ENGINE_SQL};

/// `application_name` of the API pool, so a DBA can tell our sessions apart
/// in `pg_stat_activity`.
pub const API_APPLICATION_NAME: &str = "commissions:api";

pub async fn connect_pool(database_url: &str, max_connections: u32) -> Result<PgPool, sqlx::Error> {
    let mut options =
        PgConnectOptions::from_str(database_url)?.application_name(API_APPLICATION_NAME);
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
