//! Builds the application from its configuration and binds the listener
//! before serving, so callers (tests included) can bind port 0 and learn the
//! real address first. The one module that wires `http` to the layers below
//! it: the state it builds lives in [`crate::state`].

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context;
use axum::serve::ListenerExt;
use tokio::net::TcpListener;

use crate::{
    auth::Verifier,
    config::ServeConfig,
    db::{self, batch::Batcher, webhook_batch::Webhooks},
    http::{self, verifications::Verifications},
    realtime::Relay,
    state::AppState,
};

/// How long shutdown waits for the sockets to close.
const SOCKET_CLOSE_GRACE: Duration = Duration::from_secs(5);

pub struct Application {
    listener: TcpListener,
    /// `/metrics` on an address of its own, when `METRICS_BIND_ADDR` says so.
    metrics_listener: Option<TcpListener>,
    state: AppState,
}

impl Application {
    pub async fn build(config: ServeConfig) -> anyhow::Result<Self> {
        let config = config.validated()?;
        let metrics_listener = match config.metrics_bind_addr {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot listen on {addr} (METRICS_BIND_ADDR)"))?,
            ),
            None => None,
        };
        let listener = TcpListener::bind(config.bind_addr)
            .await
            .with_context(|| format!("cannot listen on {}", config.bind_addr))?;
        let db = db::connect_pool(
            config.database.database_url.expose(),
            config.database.db_max_connections,
            config.database.session_limits(),
        )
        .await
        .context("cannot connect to PostgreSQL")?;
        let relay = Relay::start(
            config.database.database_url.expose(),
            db.clone(),
            config.realtime.clone(),
        )
        .await
        .context("cannot read the head of the event log")?;
        let verifier = Verifier::new(config.jwt_secret.expose(), &config.identity_provider)?;
        let batches = &config.batches;
        let webhooks = Batcher::start(
            Webhooks { db: db.clone() },
            batches.webhook_batch_max,
            batches.webhook_batches_in_flight,
        );
        let verifications = Batcher::start(
            Verifications { db: db.clone() },
            batches.verify_batch_max,
            batches.verify_batches_in_flight,
        );
        let state = AppState {
            webhooks,
            verifications,
            db,
            config: Arc::new(config),
            relay,
            verifier: Arc::new(verifier),
        };
        Ok(Self {
            listener,
            metrics_listener,
            state,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Where `/metrics` is served alone, if it has an address of its own.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let relay = self.state.relay.clone();
        let partner_webhooks = crate::partner_webhooks::spawn(
            self.state.db.clone(),
            &self.state.config.partner_webhooks,
        )
        .context("cannot start the partner webhook sender")?;
        let approvals = crate::approvals::spawn(
            self.state.db.clone(),
            Duration::from_secs(self.state.config.approval_interval_secs),
        );
        let send_buffer = self.state.config.realtime.tcp_send_buffer_bytes;
        let router = http::router(self.state);
        let metrics = self.metrics_listener.map(|listener| {
            tokio::spawn(async move {
                if let Err(e) = axum::serve(listener, http::metrics_router::<()>()).await {
                    tracing::error!(error = %e, "the metrics server failed");
                }
            })
        });
        // Upgraded sockets outlive their HTTP connection, so the relay closes
        // them itself (1001) before the server waits for connections to end.
        let shutdown = async move {
            shutdown.await;
            relay.shutdown(SOCKET_CLOSE_GRACE).await;
        };
        let listener = self.listener.tap_io(move |tcp| {
            // Small frames must not wait for Nagle; failures only cost performance.
            let _ = tcp.set_nodelay(true);
            if send_buffer > 0 {
                let _ = socket2::SockRef::from(&*tcp).set_send_buffer_size(send_buffer);
            }
        });
        let served = axum::serve(
            listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(shutdown)
        .await
        .context("server error");
        if let Some(metrics) = metrics {
            metrics.abort();
        }
        if let Some(approvals) = approvals {
            approvals.abort();
        }
        if let Some(partner_webhooks) = partner_webhooks {
            partner_webhooks.abort();
        }
        served
    }
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        if let Ok(mut signal) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            signal.recv().await;
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
    tracing::info!("shutting down");
}
