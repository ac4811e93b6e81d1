//! PostgreSQL access for the API: the pool, and the migrator that installs
//! the schema (`migrations/`) and the engine (`sql/`).

mod migrate;

use std::{str::FromStr, time::Duration};

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

pub use migrate::{migrate, ENGINE_SQL};

/// `application_name` of the API pool, so a DBA can tell our sessions apart
/// in `pg_stat_activity`.
pub const API_APPLICATION_NAME: &str = "commissions:api";

pub async fn connect_pool(database_url: &str, max_connections: u32) -> Result<PgPool, sqlx::Error> {
    let options = PgConnectOptions::from_str(database_url)?.application_name(API_APPLICATION_NAME);
    PgPoolOptions::new()
        .max_connections(max_connections)
        .min_connections(1)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(options)
        .await
}
