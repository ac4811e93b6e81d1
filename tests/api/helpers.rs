//! The harness: a fresh, uniquely named, migrated database per test (dropped
//! when the test ends, pass or fail), and the real server bound to port 0.

use std::{net::SocketAddr, time::Duration};

use commissions::{
    config::{
        BatchConfig, DatabaseConfig, IdentityProviderConfig, ListenMode, PartnerWebhooksConfig,
        RealtimeConfig, Secret, ServeConfig,
    },
    db,
    startup::Application,
};
use sqlx::PgPool;
use tokio_postgres::NoTls;

/// The maintenance URL tests create their databases through.
pub fn admin_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let server = base.rsplit_once('/').map(|(s, _)| s).unwrap_or(base);
    match query {
        Some(q) => format!("{server}/{name}?{q}"),
        None => format!("{server}/{name}"),
    }
}

/// The same server and database, logged in as `user`.
pub fn with_user(url: &str, user: &str, password: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("DATABASE_URL is a URL");
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    format!("{scheme}://{user}:{password}@{host}/{path}")
}

/// A database of its own, migrated by the real `migrate`. Dropped on drop.
///
/// `url` logs in as the superuser of DATABASE_URL (the migrator, and a DBA
/// who may do anything); `service_url` as a member of `commissions_service`,
/// which is what every node the harness starts logs in as; `dba_url` as a
/// member of `commissions_readonly`. The two login roles are the test's own
/// (roles are cluster-wide, tests run in parallel) and are dropped with it.
pub struct TestDatabase {
    pub name: String,
    pub url: String,
    pub service_url: String,
    pub dba_url: String,
    pub pool: PgPool,
}

impl TestDatabase {
    pub async fn new() -> Self {
        let name = format!("commissions_test_{}", uuid::Uuid::new_v4().simple());
        let (client, connection) = tokio_postgres::connect(&admin_url(), NoTls)
            .await
            .expect("cannot reach PostgreSQL at DATABASE_URL (run the tests with scripts/test)");
        tokio::spawn(connection);
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create test database");
        let url = with_database(&admin_url(), &name);
        db::migrate(&url).await.expect("migrate test database");
        // After migrate: it makes the roles these are members of. A password,
        // so the harness works where pg_hba.conf asks for one.
        let password = uuid::Uuid::new_v4().simple().to_string();
        client
            .batch_execute(&format!(
                "CREATE ROLE {name}_svc LOGIN PASSWORD '{password}' IN ROLE commissions_service;
                 CREATE ROLE {name}_dba LOGIN PASSWORD '{password}' IN ROLE commissions_readonly;"
            ))
            .await
            .expect("create the test's login roles");
        let service_url = with_user(&url, &format!("{name}_svc"), &password);
        let dba_url = with_user(&url, &format!("{name}_dba"), &password);
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(10)
            .connect(&url)
            .await
            .expect("connect to test database");
        Self {
            name,
            url,
            service_url,
            dba_url,
            pool,
        }
    }

    /// A plain tokio-postgres connection, as a DBA's psql session would be.
    pub async fn connect(&self) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::connect(&self.url, NoTls)
            .await
            .expect("connect");
        tokio::spawn(connection);
        client
    }

    /// A connection whose notifications are forwarded to the returned channel.
    pub async fn listen(
        &self,
        channels: &[&str],
    ) -> (
        tokio_postgres::Client,
        tokio::sync::mpsc::UnboundedReceiver<tokio_postgres::Notification>,
    ) {
        use futures::{stream, StreamExt};
        let (client, mut connection) = tokio_postgres::connect(&self.url, NoTls)
            .await
            .expect("connect");
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let mut messages = stream::poll_fn(move |cx| connection.poll_message(cx));
        tokio::spawn(async move {
            while let Some(Ok(message)) = messages.next().await {
                if let tokio_postgres::AsyncMessage::Notification(n) = message {
                    let _ = tx.send(n);
                }
            }
        });
        for channel in channels {
            client
                .batch_execute(&format!("LISTEN {channel}"))
                .await
                .expect("listen");
        }
        (client, rx)
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
        // The test's runtime is blocked in this drop, so its connections cannot
        // be closed politely: drop the database from a thread with its own small
        // runtime, and WITH (FORCE) ends the sessions still open.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                if let Ok((client, connection)) = tokio_postgres::connect(&admin_url(), NoTls).await
                {
                    tokio::spawn(connection);
                    // One statement each: DROP DATABASE refuses to run in a transaction.
                    let _ = client
                        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await;
                    let _ = client
                        .batch_execute(&format!("DROP ROLE IF EXISTS {name}_svc"))
                        .await;
                    let _ = client
                        .batch_execute(&format!("DROP ROLE IF EXISTS {name}_dba"))
                        .await;
                }
            });
        })
        .join();
    }
}

pub const JWT_SECRET: &str = "test-secret-that-is-long-enough-for-hs256";
pub const STRIPE_SECRET: &str = "whsec_test_secret";
pub const PAYSTACK_SECRET: &str = "sk_test_paystack_secret";

/// A running node of the real server on 127.0.0.1:0, with its own database.
pub struct TestApp {
    pub address: SocketAddr,
    pub base: String,
    pub http: reqwest::Client,
    pub node: TestNode,
    // Last: the database outlives the server.
    pub db: TestDatabase,
}

pub fn serve_config(database_url: &str) -> ServeConfig {
    ServeConfig {
        database: DatabaseConfig {
            database_url: Secret::new(database_url),
            // Small: two tests run at once, each with up to two nodes, on a stock max_connections = 100.
            db_max_connections: 6,
            db_statement_timeout_ms: 10_000,
            db_lock_timeout_ms: 3_000,
            db_idle_in_transaction_timeout_ms: 30_000,
        },
        bind_addr: "127.0.0.1:0".parse().unwrap(),
        metrics_bind_addr: None,
        jwt_secret: Secret::new(JWT_SECRET),
        stripe_webhook_secret: Some(Secret::new(STRIPE_SECRET)),
        paystack_secret_key: Some(Secret::new(PAYSTACK_SECRET)),
        approval_interval_secs: 60,
        realtime: RealtimeConfig {
            ws_send_queue: 256,
            ws_ping_interval_ms: 20_000,
            ws_heartbeat_timeout_ms: 45_000,
            ws_max_sockets_per_user: 1_000,
            ws_handshakes_per_second_per_ip: 100_000,
            ws_handshakes_per_second_per_user: 100_000,
            trusted_proxies: Default::default(),
            tcp_send_buffer_bytes: 131_072,
            listen_mode: ListenMode::Firehose,
        },
        identity_provider: IdentityProviderConfig {
            jwks_url: None,
            jwt_issuer: None,
            jwt_audience: None,
            jwks_min_refresh_ms: 5_000,
        },
        // Short timers: a test waits for deliveries, never for the defaults.
        partner_webhooks: PartnerWebhooksConfig {
            partner_webhooks_poll_ms: 250,
            partner_webhooks_timeout_ms: 2_000,
            partner_webhooks_retry_base_ms: 50,
            partner_webhooks_retry_cap_ms: 400,
            partner_webhooks_concurrency: 4,
            partner_webhooks_allow_http_loopback: true,
        },
        batches: BatchConfig {
            webhook_batch_max: 64,
            webhook_batches_in_flight: 2,
            verify_batch_max: 64,
            verify_batches_in_flight: 2,
        },
    }
}

pub async fn spawn_app() -> TestApp {
    let db = TestDatabase::new().await;
    spawn_app_on(db).await
}

pub async fn spawn_app_on(db: TestDatabase) -> TestApp {
    spawn_app_with(db, |_| {}).await
}

/// A node whose configuration the test adjusts first (short timers, small limits).
pub async fn spawn_app_with(db: TestDatabase, configure: impl FnOnce(&mut ServeConfig)) -> TestApp {
    let node = spawn_node(&db.service_url, configure).await;
    TestApp {
        address: node.address,
        base: node.base.clone(),
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap(),
        node,
        db,
    }
}

/// Another node of the same service against an existing database, as a
/// second copy behind a load balancer would be.
pub struct TestNode {
    pub address: SocketAddr,
    pub base: String,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

pub async fn spawn_node(database_url: &str, configure: impl FnOnce(&mut ServeConfig)) -> TestNode {
    let mut config = serve_config(database_url);
    configure(&mut config);
    let app = Application::build(config).await.expect("build app");
    let address = app.local_addr();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until(async move {
        let _ = rx.await;
    }));
    TestNode {
        address,
        base: format!("http://{address}"),
        shutdown: Some(tx),
        server: Some(server),
    }
}

impl TestNode {
    /// Stops the node gracefully and waits for it.
    pub async fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), server).await;
        }
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}

impl TestApp {
    /// Stops the server gracefully and waits for it.
    pub async fn stop(&mut self) {
        self.node.stop().await;
    }
}

/// Adds a partner as an operator in psql would, and returns its id.
pub async fn create_partner(pool: &PgPool, name: &str, rate: Option<&str>) -> i64 {
    let rate: Option<rust_decimal::Decimal> = rate.map(|r| r.parse().unwrap());
    let row: (i64,) = sqlx::query_as("SELECT create_partner($1, $2)")
        .bind(name)
        .bind(rate)
        .fetch_one(pool)
        .await
        .expect("insert partner");
    row.0
}

/// Records a pending payment as an operator in psql would, and returns its id.
pub async fn create_payment(
    pool: &PgPool,
    amount: &str,
    currency: &str,
    partner_id: Option<i64>,
) -> i64 {
    let amount: rust_decimal::Decimal = amount.parse().unwrap();
    let row: (i64,) = sqlx::query_as("SELECT record_payment($1, $2, $3)")
        .bind(amount)
        .bind(currency)
        .bind(partner_id)
        .fetch_one(pool)
        .await
        .expect("insert payment");
    row.0
}

/// Polls `check` until it returns `Some`, for at most 30 s.
pub async fn until<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Sequential scans of `tables` this session has made and not yet reported
/// to the statistics system. It reports only between transactions, so two
/// reads inside one transaction differ by exactly what ran between them.
pub async fn sequential_scans(
    session: &tokio_postgres::Client,
    tables: &[&str],
) -> std::collections::HashMap<String, i64> {
    session
        .query(
            "SELECT relname::text, seq_scan FROM pg_stat_xact_user_tables WHERE relname = ANY ($1)",
            &[&tables],
        )
        .await
        .expect("read pg_stat_xact_user_tables")
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect()
}
