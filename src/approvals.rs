//! The approval timer. Every node calls the engine's
//! `approve_due_commissions(now())` every `APPROVAL_INTERVAL_SECS`, so
//! commissions whose hold period is over become payable without a service
//! of their own. The engine lets one caller at a time do the work (the
//! others return at once) and approves each commission once, so any number
//! of nodes may run this timer together; a DBA can call the same function
//! by hand or from pg_cron.

use std::time::Duration;

use sqlx::PgPool;
use tokio::task::JoinHandle;

/// Starts the timer; `None` when `interval` is zero (approvals then wait
/// for a DBA or another node). The first run is one interval after start.
pub fn spawn(db: PgPool, interval: Duration) -> Option<JoinHandle<()>> {
    if interval.is_zero() {
        return None;
    }
    Some(tokio::spawn(async move {
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        // A run that outlasts the interval is not followed by a burst of catch-up runs.
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            run_once(&db).await;
        }
    }))
}

/// One approval run. Failures are logged and the next tick tries again:
/// nothing is lost, the due commissions stay due.
async fn run_once(db: &PgPool) {
    let result = sqlx::query!(
        r#"SELECT count(*) AS "batches!", coalesce(sum(commissions), 0)::bigint AS "commissions!"
             FROM approve_due_commissions(now())"#
    )
    .fetch_one(db)
    .await;
    match result {
        Ok(run) if run.commissions > 0 => tracing::info!(
            commissions = run.commissions,
            batches = run.batches,
            "approved the commissions whose hold period is over"
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "the approval run failed; the next one retries"),
    }
}
