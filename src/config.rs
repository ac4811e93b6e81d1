//! Configuration. Every setting is a flag that also reads the environment
//! (`#[arg(long, env)]`), so there is one source for both. Secrets are held
//! in [`Secret`], whose `Debug` never prints the value.

use std::{fmt, net::SocketAddr, str::FromStr};

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "commissions",
    version,
    about = "Real-time partner commissions on PostgreSQL"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Apply the migrations, then (re)install the engine from sql/.
    Migrate(MigrateConfig),
    /// Run the HTTP and WebSocket service.
    Serve(ServeConfig),
    /// Migrate, create "Demo Partner", print dashboard links with tokens, then serve.
    Demo(ServeConfig),
    /// Record a pending payment for a partner and verify it, printing the commission.
    SimulatePayment(SimulatePaymentConfig),
    /// Pay out a partner's approved balance: create the payout, mark it sent,
    /// then paid, a moment apart, so an open dashboard shows each step.
    SimulatePayout(SimulatePayoutConfig),
    /// Mint a JWT for local use (curl, the dashboard) and print it.
    Token(TokenConfig),
}

#[derive(Debug, Clone, Args)]
pub struct TokenConfig {
    /// HS256 key, the same the server checks tokens with.
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Secret,
    /// `admin` or `partner`.
    #[arg(long, value_enum)]
    pub role: TokenRole,
    /// The partner a partner token belongs to (required with --role partner).
    #[arg(long, required_if_eq("role", "partner"))]
    pub partner_id: Option<i64>,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 3600, value_parser = clap::value_parser!(i64).range(1..=31_536_000))]
    pub ttl: i64,
    /// The token's subject (who it identifies); defaults to `partner:<id>`,
    /// or `admin:<random uuid>` so that no two admin tokens share a subject.
    #[arg(long)]
    pub sub: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TokenRole {
    Admin,
    Partner,
}

#[derive(Debug, Clone, Args)]
pub struct DatabaseConfig {
    /// PostgreSQL URL, e.g. postgres://postgres@127.0.0.1:5432/commissions
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Secret,
    /// Largest number of pooled connections this node opens for the API. More
    /// connections than PostgreSQL has cores to run them only queue inside
    /// PostgreSQL instead: on the 2-core bench VM 4 to 8 gave 1,130 to 1,160
    /// webhooks/s and 32 gave 890/s (BENCHMARKS.md).
    #[arg(long, env = "DB_MAX_CONNECTIONS", default_value_t = 8)]
    pub db_max_connections: u32,
    /// statement_timeout of the API's sessions, in milliseconds: a statement running longer fails (503).
    #[arg(long, env = "DB_STATEMENT_TIMEOUT_MS", default_value_t = 10_000)]
    pub db_statement_timeout_ms: u64,
    /// lock_timeout of the API's sessions, in milliseconds: a request waiting longer for a row
    /// another transaction holds fails with 503 and Retry-After instead of queueing.
    #[arg(long, env = "DB_LOCK_TIMEOUT_MS", default_value_t = 3_000)]
    pub db_lock_timeout_ms: u64,
    /// idle_in_transaction_session_timeout of the API's sessions, in milliseconds.
    #[arg(
        long,
        env = "DB_IDLE_IN_TRANSACTION_TIMEOUT_MS",
        default_value_t = 30_000
    )]
    pub db_idle_in_transaction_timeout_ms: u64,
}

impl DatabaseConfig {
    pub fn session_limits(&self) -> crate::db::SessionLimits {
        use std::time::Duration;
        crate::db::SessionLimits {
            statement_timeout: Duration::from_millis(self.db_statement_timeout_ms),
            lock_timeout: Duration::from_millis(self.db_lock_timeout_ms),
            idle_in_transaction_timeout: Duration::from_millis(
                self.db_idle_in_transaction_timeout_ms,
            ),
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct MigrateConfig {
    /// As the migrator: a superuser, or a member of commissions_owner.
    #[command(flatten)]
    pub database: DatabaseConfig,
    /// Set this password on the service's login role, commissions_service
    /// (where the nodes log in with a password, as under docker compose).
    /// Sent as a SCRAM verifier, so the password is in no server log.
    #[arg(long, env = "SERVICE_ROLE_PASSWORD", hide_env_values = true)]
    pub service_role_password: Option<Secret>,
}

#[derive(Debug, Clone, Args)]
pub struct ServeConfig {
    #[command(flatten)]
    pub database: DatabaseConfig,
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "BIND_ADDR", default_value = "0.0.0.0:5000")]
    pub bind_addr: SocketAddr,
    /// Serve `/metrics` on this address only (e.g. 127.0.0.1:9100, reachable by the
    /// scraper, not the public). Unset: `/metrics` is on BIND_ADDR with everything else.
    #[arg(long, env = "METRICS_BIND_ADDR")]
    pub metrics_bind_addr: Option<SocketAddr>,
    /// HS256 key that signs and checks the JWTs.
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Secret,
    /// Stripe's webhook signing secret (whsec_...). Unset: Stripe webhooks are refused.
    #[arg(long, env = "STRIPE_WEBHOOK_SECRET", hide_env_values = true)]
    pub stripe_webhook_secret: Option<Secret>,
    /// Paystack secret key, which signs its webhooks. Unset: Paystack webhooks are refused.
    #[arg(long, env = "PAYSTACK_SECRET_KEY", hide_env_values = true)]
    pub paystack_secret_key: Option<Secret>,
    /// How often this node runs the engine's approve_due_commissions(now()), in seconds:
    /// commissions whose hold period is over become payable. Every node may run it (one
    /// at a time does the work); 0 turns this node's timer off.
    #[arg(long, env = "APPROVAL_INTERVAL_SECS", default_value_t = 60)]
    pub approval_interval_secs: u64,
    #[command(flatten)]
    pub realtime: RealtimeConfig,
    #[command(flatten)]
    pub identity_provider: IdentityProviderConfig,
    #[command(flatten)]
    pub partner_webhooks: PartnerWebhooksConfig,
    #[command(flatten)]
    pub batches: BatchConfig,
}

/// Provider webhooks, and admin verifications, that arrive together are
/// applied in one transaction (`src/db/batch.rs`). No timer: a lone request
/// is applied at once.
#[derive(Debug, Clone, Args)]
pub struct BatchConfig {
    /// The most provider events applied in one transaction. 1: each in its own, as
    /// before batching.
    #[arg(long, env = "WEBHOOK_BATCH_MAX", default_value_t = 64)]
    pub webhook_batch_max: usize,
    /// Batches this node has in the database at once. While they are all in flight,
    /// webhooks that arrive wait and go together in the next one; fewer in flight
    /// means bigger batches (less PostgreSQL CPU per payment) sooner.
    #[arg(long, env = "WEBHOOK_BATCHES_IN_FLIGHT", default_value_t = 2)]
    pub webhook_batches_in_flight: usize,
    /// The most admin verifications (`POST /api/payments/{id}/verify`) applied in one
    /// transaction. 1: each in its own.
    #[arg(long, env = "VERIFY_BATCH_MAX", default_value_t = 64)]
    pub verify_batch_max: usize,
    /// Verification batches this node has in the database at once.
    #[arg(long, env = "VERIFY_BATCHES_IN_FLIGHT", default_value_t = 2)]
    pub verify_batches_in_flight: usize,
}

impl BatchConfig {
    fn check(&self) -> Result<(), ConfigError> {
        for (name, value) in [
            ("WEBHOOK_BATCH_MAX", self.webhook_batch_max),
            ("WEBHOOK_BATCHES_IN_FLIGHT", self.webhook_batches_in_flight),
            ("VERIFY_BATCH_MAX", self.verify_batch_max),
            ("VERIFY_BATCHES_IN_FLIGHT", self.verify_batches_in_flight),
        ] {
            if value == 0 {
                return Err(ConfigError::Zero(name));
            }
        }
        Ok(())
    }
}

/// Outbound partner webhooks: how this node sends (see `src/partner_webhooks/`).
#[derive(Debug, Clone, Args)]
pub struct PartnerWebhooksConfig {
    /// How often the node looks for endpoints with events to send, in milliseconds
    /// (also the longest an event waits for its first POST). 0: this node sends none.
    #[arg(long, env = "PARTNER_WEBHOOKS_POLL_MS", default_value_t = 1_000)]
    pub partner_webhooks_poll_ms: u64,
    /// How long one POST may take before it counts as failed, in milliseconds. An
    /// endpoint's lease is three times this, so a POST always ends within its lease.
    #[arg(long, env = "PARTNER_WEBHOOKS_TIMEOUT_MS", default_value_t = 10_000)]
    pub partner_webhooks_timeout_ms: u64,
    /// The first retry's delay after a failed POST, in milliseconds; it doubles
    /// with each failure of the same event, up to PARTNER_WEBHOOKS_RETRY_CAP_MS.
    #[arg(long, env = "PARTNER_WEBHOOKS_RETRY_BASE_MS", default_value_t = 1_000)]
    pub partner_webhooks_retry_base_ms: u64,
    /// The longest delay between two retries, in milliseconds.
    #[arg(long, env = "PARTNER_WEBHOOKS_RETRY_CAP_MS", default_value_t = 600_000)]
    pub partner_webhooks_retry_cap_ms: u64,
    /// Endpoints this node sends to at once.
    #[arg(long, env = "PARTNER_WEBHOOKS_CONCURRENCY", default_value_t = 16)]
    pub partner_webhooks_concurrency: usize,
    /// Accept `http://` endpoints on loopback addresses (127.0.0.0/8, ::1, localhost),
    /// and send to them: for local development and tests, never in production.
    #[arg(
        long,
        env = "PARTNER_WEBHOOKS_ALLOW_HTTP_LOOPBACK",
        default_value_t = false
    )]
    pub partner_webhooks_allow_http_loopback: bool,
}

/// Tokens from an identity provider (Auth0, Clerk, Supabase, Keycloak):
/// RS256 or ES256, checked against the provider's JWKS (see [`crate::auth::Verifier`]).
/// HS256 tokens are still checked against `JWT_SECRET`.
#[derive(Debug, Clone, Args)]
pub struct IdentityProviderConfig {
    /// The provider's JSON Web Key Set, e.g. https://example.eu.auth0.com/.well-known/jwks.json.
    /// Unset: only HS256 tokens signed with JWT_SECRET are accepted.
    #[arg(long, env = "JWKS_URL")]
    pub jwks_url: Option<String>,
    /// The `iss` an RS256/ES256 token must carry. Unset: not checked.
    #[arg(long, env = "JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// The `aud` an RS256/ES256 token must carry. Unset: not checked, so any token
    /// the provider signs for any of its applications is accepted.
    #[arg(long, env = "JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// Fewest milliseconds between two fetches of the JWKS: a token with an unknown
    /// `kid` triggers a fetch, and a flood of them must not become a flood of fetches.
    #[arg(long, env = "JWKS_MIN_REFRESH_MS", default_value_t = 5_000)]
    pub jwks_min_refresh_ms: u64,
}

/// The WebSocket relay's limits and timers (see `src/realtime/`).
#[derive(Debug, Clone, Args)]
pub struct RealtimeConfig {
    /// Messages queued for one socket before it counts as too slow and is closed with 4008.
    #[arg(long, env = "WS_SEND_QUEUE", default_value_t = 256)]
    pub ws_send_queue: usize,
    /// How often the server pings each socket, in milliseconds.
    #[arg(long, env = "WS_PING_INTERVAL_MS", default_value_t = 20_000)]
    pub ws_ping_interval_ms: u64,
    /// A socket that sends nothing (not even a pong) for this long is closed with 4002, in milliseconds.
    #[arg(long, env = "WS_HEARTBEAT_TIMEOUT_MS", default_value_t = 45_000)]
    pub ws_heartbeat_timeout_ms: u64,
    /// Open sockets one user (the token's `sub`) may hold on this node; one more is refused with 429.
    #[arg(long, env = "WS_MAX_SOCKETS_PER_USER", default_value_t = 32)]
    pub ws_max_sockets_per_user: usize,
    /// WebSocket handshakes one client IP may attempt per second on this node; more are refused with 429.
    #[arg(long, env = "WS_HANDSHAKES_PER_SECOND_PER_IP", default_value_t = 50)]
    pub ws_handshakes_per_second_per_ip: u32,
    /// Authenticated WebSocket handshakes one user (the token's `sub`) may make per second
    /// on this node; more are refused with 429 (counted after the token is checked).
    #[arg(long, env = "WS_HANDSHAKES_PER_SECOND_PER_USER", default_value_t = 20)]
    pub ws_handshakes_per_second_per_user: u32,
    /// Proxies (CIDRs or addresses, comma-separated) whose `X-Forwarded-For` / `Forwarded`
    /// name the client for the per-IP limit. Empty: the headers are ignored.
    #[arg(long, env = "TRUSTED_PROXIES", default_value = "")]
    pub trusted_proxies: crate::client_ip::TrustedProxies,
    /// SO_SNDBUF of every accepted connection, in bytes (the kernel doubles it). It caps
    /// the kernel memory a client that stops reading can pin (autotuning would let it
    /// grow to net.ipv4.tcp_wmem's maximum, 4 MiB by default); 0 keeps autotuning.
    #[arg(long, env = "TCP_SEND_BUFFER_BYTES", default_value_t = 131_072)]
    pub tcp_send_buffer_bytes: usize,
    /// Which channels the node LISTENs on: `firehose` (the admin channel alone, routed in
    /// process) or `partner` (a channel per partner with a socket here). BENCHMARKS.md
    /// measures both; the firehose's cost does not grow with the partners online.
    #[arg(long, env = "LISTEN_MODE", value_enum, default_value_t = ListenMode::Firehose)]
    pub listen_mode: ListenMode,
}

/// How a node subscribes to the engine's NOTIFYs (see `src/realtime/hub.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ListenMode {
    /// LISTEN on `commissions_partner_<id>` while a socket of that partner is
    /// on this node: the node hears only what its sockets need, but before
    /// PostgreSQL 19 the LISTEN backend compares each notification with every
    /// channel it listens on, so its cost grows with the partners online.
    Partner,
    /// LISTEN on `commissions_admin` alone, which carries every event, and
    /// route by the payload's `partner_id`: one channel to check, but the
    /// node hears every partner's events.
    Firehose,
}

#[derive(Debug, Clone, Args)]
pub struct SimulatePaymentConfig {
    #[command(flatten)]
    pub database: DatabaseConfig,
    /// The partner credited with the commission.
    #[arg(long)]
    pub partner_id: i64,
    /// Payment amount in major units, as a decimal string (100.00).
    #[arg(long, default_value = "100.00")]
    pub amount: String,
    /// ISO 4217 currency code.
    #[arg(long, default_value = "NGN")]
    pub currency: String,
}

#[derive(Debug, Clone, Args)]
pub struct SimulatePayoutConfig {
    #[command(flatten)]
    pub database: DatabaseConfig,
    /// The partner paid.
    #[arg(long)]
    pub partner_id: i64,
    /// ISO 4217 currency code.
    #[arg(long, default_value = "NGN")]
    pub currency: String,
    /// Seconds between the payout's steps (created, sent, paid).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(0..=60))]
    pub pause_secs: u64,
}

/// The shortest JWT secret a node accepts: HS256 wants a key at least as long
/// as its 32-byte hash (RFC 7518, 3.2).
pub const MIN_JWT_SECRET_BYTES: usize = 32;

/// Values that appear in examples and compose files: a node refuses them even
/// when they are long enough, since anyone who read the docs can sign tokens.
const PLACEHOLDER_SECRETS: &[&str] = &[
    "local-compose-only-insecure-jwt-secret-change-me",
    "change-me",
    "changeme",
    "replace-me",
    "placeholder",
    "your-secret",
    "insecure",
];

/// Why a configuration cannot serve. The message names the setting, never its value.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("JWT_SECRET is {0} bytes long; it must have at least {MIN_JWT_SECRET_BYTES} (e.g. `openssl rand -hex 32`)")]
    JwtSecretTooShort(usize),
    #[error("JWT_SECRET is a placeholder from an example; set a random one (e.g. `openssl rand -hex 32`)")]
    JwtSecretPlaceholder,
    #[error("JWKS_URL must be an http:// or https:// URL")]
    JwksUrl,
    #[error("{0} must be at least 1")]
    Zero(&'static str),
}

impl ServeConfig {
    /// Refuses a JWT secret that anyone could guess, and treats an empty
    /// provider secret as unset (its webhook answers 503), so that no
    /// signature is ever checked against an empty key.
    pub fn validated(mut self) -> Result<Self, ConfigError> {
        check_jwt_secret(&self.jwt_secret)?;
        self.identity_provider.check()?;
        self.batches.check()?;
        for (name, secret) in [
            ("STRIPE_WEBHOOK_SECRET", &mut self.stripe_webhook_secret),
            ("PAYSTACK_SECRET_KEY", &mut self.paystack_secret_key),
        ] {
            if secret
                .as_ref()
                .is_some_and(|s| s.expose().trim().is_empty())
            {
                *secret = None;
            }
            if secret.is_none() {
                tracing::warn!(
                    "{name} is not set: that provider's webhook answers 503 until it is"
                );
            }
        }
        Ok(self)
    }
}

impl IdentityProviderConfig {
    /// Treats empty settings as unset and refuses a JWKS URL that is not HTTP(S).
    fn check(&mut self) -> Result<(), ConfigError> {
        for setting in [
            &mut self.jwks_url,
            &mut self.jwt_issuer,
            &mut self.jwt_audience,
        ] {
            if setting.as_ref().is_some_and(|s| s.trim().is_empty()) {
                *setting = None;
            }
        }
        let Some(url) = &self.jwks_url else {
            if self.jwt_issuer.is_some() || self.jwt_audience.is_some() {
                tracing::warn!(
                    "JWT_ISSUER and JWT_AUDIENCE apply to JWKS_URL tokens; JWKS_URL is not set"
                );
            }
            return Ok(());
        };
        if !(url.starts_with("https://") || url.starts_with("http://")) {
            return Err(ConfigError::JwksUrl);
        }
        if self.jwt_audience.is_none() {
            tracing::warn!("JWT_AUDIENCE is not set: a token the identity provider signed for any of its applications is accepted");
        }
        Ok(())
    }
}

/// The JWT secret's checks, shared by `serve` and `token`.
pub fn check_jwt_secret(secret: &Secret) -> Result<(), ConfigError> {
    let value = secret.expose();
    let lower = value.trim().to_ascii_lowercase();
    if PLACEHOLDER_SECRETS.iter().any(|p| lower.contains(p)) {
        return Err(ConfigError::JwtSecretPlaceholder);
    }
    if value.len() < MIN_JWT_SECRET_BYTES {
        return Err(ConfigError::JwtSecretTooShort(value.len()));
    }
    Ok(())
}

/// A secret string. Its `Debug` and `Display` print `[redacted]`; read it
/// with [`Secret::expose`] only where it is used.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}
