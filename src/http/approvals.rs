//! Approval on demand: the same `approve_due_commissions(now())` the timer of
//! every node runs (src/approvals.rs), for an operator who will not wait for
//! the next tick. The engine lets one run at a time do the work and approves
//! each commission once, so this is safe beside the timers.

use axum::{extract::State, Extension};
use serde::Serialize;
use utoipa::ToSchema;

use super::{
    error::Result,
    extractor::{Caller, Json},
    idempotency::{self, Claim},
};
use crate::state::AppState;

#[derive(Debug, Serialize, ToSchema)]
pub struct ApprovalRun {
    /// Commissions approved by this run (0 when none was due, or another run held the lock).
    pub commissions: i64,
    /// Approval batches: one per partner and currency, each one `commission.approved` event.
    pub batches: i64,
}

/// Approve every commission whose hold period is over now (admins).
#[utoipa::path(post, path = "/api/approvals/run", tag = "payouts",
    params(("Idempotency-Key" = Option<String>, Header, description = "Replays the stored response")),
    responses((status = 200, body = ApprovalRun), (status = 401, body = super::error::Problem), (status = 403, body = super::error::Problem)),
    security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(caller = %caller.claims().sub))]
pub async fn run(
    State(state): State<AppState>,
    caller: Caller,
    claim: Option<Extension<Claim>>,
) -> Result<Json<ApprovalRun>> {
    caller.require_admin()?;
    let mut tx = state.db.begin().await?;
    let run = sqlx::query_as!(
        ApprovalRun,
        r#"SELECT coalesce(sum(commissions), 0)::bigint AS "commissions!", count(*) AS "batches!"
             FROM approve_due_commissions(now())"#
    )
    .fetch_one(&mut *tx)
    .await?;
    idempotency::mark_applied(&mut tx, claim.as_deref()).await?;
    tx.commit().await?;
    Ok(Json(run))
}
