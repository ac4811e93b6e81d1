//! Payouts: an admin runs them (the engine groups each partner's payable
//! balance per currency into one payout once it reaches the currency's
//! minimum), lists them, and records what the payout provider did: sent,
//! paid (with its reference) or failed (with a reason; the amount becomes
//! payable again). A partner lists its own.
//!
//! Every rule is in SQL (sql/08_lifecycle.sql): these handlers call
//! `create_payouts` and `mark_payout_*`, and the state machine refuses an
//! illegal change with CM006, which is a 409 here. The JSON of a payout is
//! built by `payout_json`, in SQL, like every amount on the wire.

use axum::{
    extract::State,
    http::HeaderMap,
    response::{IntoResponse, Response},
    Extension,
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::{
    error::{Error, Result},
    export,
    extractor::{Caller, Json, Path, Query},
    idempotency::{self, Claim},
    money, pagination,
};
use crate::state::AppState;

/// A payout.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Payout {
    pub id: i64,
    pub partner_id: i64,
    #[schema(example = "NGN")]
    pub currency: String,
    /// What is paid: `approved_amount - clawback_amount`.
    #[schema(example = "120.00")]
    pub amount: String,
    /// The approved commissions it covers (net of what was reversed before).
    pub approved_amount: String,
    /// Reversals of commissions paid out earlier, recovered by this payout.
    pub clawback_amount: String,
    /// `pending`, `sent`, `paid` or `failed`.
    pub state: String,
    /// The payout provider's reference (required to mark it paid).
    pub provider_reference: Option<String>,
    /// Why it failed.
    pub failure_reason: Option<String>,
    /// How many ledger entries it covers.
    pub items: i64,
    pub created_at: DateTime<Utc>,
    pub sent_at: Option<DateTime<Utc>>,
    pub paid_at: Option<DateTime<Utc>>,
    pub failed_at: Option<DateTime<Utc>>,
}

/// A payout as a CSV line: the provider's reference and the failure reason
/// are text from outside, quoted against spreadsheet formulas.
#[derive(Debug, Serialize)]
struct PayoutLine {
    id: i64,
    partner_id: i64,
    currency: String,
    state: String,
    amount: String,
    approved_amount: String,
    clawback_amount: String,
    items: i64,
    provider_reference: String,
    failure_reason: String,
    created_at: DateTime<Utc>,
    sent_at: Option<DateTime<Utc>>,
    paid_at: Option<DateTime<Utc>>,
    failed_at: Option<DateTime<Utc>>,
}

impl From<Payout> for PayoutLine {
    fn from(p: Payout) -> Self {
        PayoutLine {
            provider_reference: export::cell(p.provider_reference.as_deref()),
            failure_reason: export::cell(p.failure_reason.as_deref()),
            id: p.id,
            partner_id: p.partner_id,
            currency: p.currency,
            state: p.state,
            amount: p.amount,
            approved_amount: p.approved_amount,
            clawback_amount: p.clawback_amount,
            items: p.items,
            created_at: p.created_at,
            sent_at: p.sent_at,
            paid_at: p.paid_at,
            failed_at: p.failed_at,
        }
    }
}

fn payout(json: Value) -> Result<Payout> {
    serde_json::from_value(json).map_err(|e| Error::Internal(e.into()))
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PayoutRun {
    /// Only this partner (default: every partner).
    pub partner_id: Option<i64>,
    /// Only this currency (default: every currency).
    #[schema(example = "NGN")]
    pub currency: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Payouts {
    /// The payouts this run created (none when no balance reached its minimum).
    pub payouts: Vec<Payout>,
}

/// Create a pending payout for every partner and currency whose payable
/// balance (approved minus clawback) reaches the currency's payout minimum.
#[utoipa::path(post, path = "/api/payouts/run", tag = "payouts", request_body = PayoutRun,
    params(("Idempotency-Key" = Option<String>, Header, description = "Replays the stored response")),
    responses((status = 200, body = Payouts), (status = 401, body = super::error::Problem), (status = 403, body = super::error::Problem),
              (status = 422, body = super::error::Problem)),
    security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(caller = %caller.claims().sub))]
pub async fn run(
    State(state): State<AppState>,
    caller: Caller,
    claim: Option<Extension<Claim>>,
    Json(run): Json<PayoutRun>,
) -> Result<Json<Payouts>> {
    caller.require_admin()?;
    let currency = run
        .currency
        .as_deref()
        .map(money::currency_code)
        .transpose()?;
    let mut tx = state.db.begin().await?;
    let rows = sqlx::query_scalar!(
        r#"SELECT payout_json(o) AS "payout!" FROM create_payouts(now(), $1, $2::text::char(3)) o"#,
        run.partner_id,
        currency
    )
    .fetch_all(&mut *tx)
    .await?;
    idempotency::mark_applied(&mut tx, claim.as_deref()).await?;
    tx.commit().await?;
    let payouts = rows.into_iter().map(payout).collect::<Result<_>>()?;
    Ok(Json(Payouts { payouts }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct PayoutQuery {
    /// Only this partner's payouts (admins; a partner's own list is `/api/partners/{id}/payouts`).
    pub partner_id: Option<i64>,
    /// Only this currency.
    pub currency: Option<String>,
    /// Only payouts in this state: `pending`, `sent`, `paid` or `failed`.
    pub state: Option<String>,
    /// Payouts per page, 1 to 100 (default 50).
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<i64>,
    /// `json` (default) or `csv`: every matching payout from `cursor` on,
    /// streamed, for accounting (also with `Accept: text/csv`).
    pub format: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PayoutPage {
    pub items: Vec<Payout>,
    /// Pass as `cursor` for the next (older) page; null on the last page.
    pub next_cursor: Option<i64>,
}

/// Payouts, newest first, in keyset pages.
#[utoipa::path(get, path = "/api/payouts", tag = "payouts", params(PayoutQuery),
    responses((status = 200, body = PayoutPage, description = "A page, or with format=csv (Accept: text/csv) every payout as text/csv"),
              (status = 401, body = super::error::Problem), (status = 403, body = super::error::Problem),
              (status = 422, body = super::error::Problem)),
    security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(caller = %caller.claims().sub))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<PayoutQuery>,
    headers: HeaderMap,
) -> Result<Response> {
    caller.require_admin()?;
    answer(&state, query, &headers, "payouts.csv".into()).await
}

/// A partner's own payouts, newest first, in keyset pages.
#[utoipa::path(get, path = "/api/partners/{id}/payouts", tag = "payouts", params(("id" = i64, Path), PayoutQuery),
    responses((status = 200, body = PayoutPage, description = "A page, or with format=csv (Accept: text/csv) every payout as text/csv"),
              (status = 401, body = super::error::Problem), (status = 403, body = super::error::Problem),
              (status = 422, body = super::error::Problem)),
    security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(caller = %caller.claims().sub, partner_id = id))]
pub async fn for_partner(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
    Query(query): Query<PayoutQuery>,
    headers: HeaderMap,
) -> Result<Response> {
    caller.require_partner_access(id)?;
    if query.partner_id.is_some_and(|p| p != id) {
        return Err(Error::Unprocessable(
            "partner_id in the query must be the path's partner, or absent".into(),
        ));
    }
    let query = PayoutQuery {
        partner_id: Some(id),
        ..query
    };
    answer(&state, query, &headers, format!("payouts-partner-{id}.csv")).await
}

/// Which payouts a list asks for, checked.
#[derive(Clone)]
struct Filter {
    partner_id: Option<i64>,
    currency: Option<String>,
    state: Option<String>,
}

/// A page of JSON, or every matching payout as CSV.
async fn answer(
    state: &AppState,
    query: PayoutQuery,
    headers: &HeaderMap,
    filename: String,
) -> Result<Response> {
    let format = export::Format::of(query.format.as_deref(), headers)?;
    let limit = pagination::limit(query.limit, 50, 100)?;
    let before = pagination::cursor(query.cursor)?;
    let currency = query
        .currency
        .as_deref()
        .map(money::currency_code)
        .transpose()?;
    if let Some(s) = query.state.as_deref() {
        if !["pending", "sent", "paid", "failed"].contains(&s) {
            return Err(Error::Unprocessable(format!(
                "state must be pending, sent, paid or failed, not {s:?}"
            )));
        }
    }
    let filter = Filter {
        partner_id: query.partner_id,
        currency: currency.map(str::to_owned),
        state: query.state,
    };
    if format == export::Format::Csv {
        let db = state.db.clone();
        let chunk = move |before, limit| {
            let (db, filter) = (db.clone(), filter.clone());
            async move {
                let rows = read(&db, &filter, before, limit).await?;
                Ok(rows.into_iter().map(PayoutLine::from).collect())
            }
        };
        return Ok(export::stream_csv(
            &filename,
            before,
            chunk,
            |p: &PayoutLine| p.id,
        ));
    }
    let rows = read(&state.db, &filter, before, limit + 1).await?;
    let (items, next_cursor) = pagination::split(rows, limit, |p| p.id);
    Ok(Json(PayoutPage { items, next_cursor }).into_response())
}

/// Up to `limit` payouts below the cursor, newest first.
async fn read(
    db: &sqlx::PgPool,
    filter: &Filter,
    before: Option<i64>,
    limit: i64,
) -> Result<Vec<Payout>> {
    let rows = sqlx::query_scalar!(
        r#"SELECT payout_json(o) AS "payout!" FROM payouts o
            WHERE ($1::bigint IS NULL OR o.partner_id = $1)
              AND ($2::text IS NULL OR o.currency = $2)
              AND ($3::text IS NULL OR o.state = $3)
              AND ($4::bigint IS NULL OR o.id < $4)
            ORDER BY o.id DESC
            LIMIT $5"#,
        filter.partner_id,
        filter.currency,
        filter.state,
        before,
        limit
    )
    .fetch_all(db)
    .await?;
    rows.into_iter().map(payout).collect()
}

/// The body of `sent` and `paid`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PayoutReference {
    /// The payout provider's reference for the transfer: optional when
    /// marking it sent; needed to mark it paid, unless given when it was sent.
    #[schema(example = "TRF_1ptvuv321ahaa7q")]
    pub provider_reference: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PayoutFailed {
    /// Why it failed, as the payout provider said.
    #[schema(example = "account_closed")]
    pub reason: String,
}

fn check_text(field: &str, value: Option<&str>, max: usize) -> Result<()> {
    match value {
        Some(v) if !(1..=max).contains(&v.trim().chars().count()) || v.contains('\0') => {
            Err(Error::Unprocessable(format!(
                "{field} must have 1 to {max} characters and no NUL (\\u0000)"
            )))
        }
        _ => Ok(()),
    }
}

/// Mark a pending payout sent (handed to the payout provider).
#[utoipa::path(post, path = "/api/payouts/{id}/sent", tag = "payouts", params(("id" = i64, Path),
        ("Idempotency-Key" = Option<String>, Header, description = "Replays the stored response")),
    request_body = PayoutReference,
    responses((status = 200, body = Payout), (status = 401, body = super::error::Problem), (status = 403, body = super::error::Problem),
              (status = 404, body = super::error::Problem), (status = 409, body = super::error::Problem, description = "Not pending"),
              (status = 422, body = super::error::Problem)),
    security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(caller = %caller.claims().sub, payout_id = id))]
pub async fn sent(
    State(state): State<AppState>,
    caller: Caller,
    claim: Option<Extension<Claim>>,
    Path(id): Path<i64>,
    Json(body): Json<PayoutReference>,
) -> Result<Json<Payout>> {
    with_reference(&state, &caller, claim.as_deref(), id, "sent", body).await
}

/// Mark a sent payout paid, with the payout provider's reference. Final.
#[utoipa::path(post, path = "/api/payouts/{id}/paid", tag = "payouts", params(("id" = i64, Path),
        ("Idempotency-Key" = Option<String>, Header, description = "Replays the stored response")),
    request_body = PayoutReference,
    responses((status = 200, body = Payout), (status = 401, body = super::error::Problem), (status = 403, body = super::error::Problem),
              (status = 404, body = super::error::Problem), (status = 409, body = super::error::Problem, description = "Not sent (a payout is never paid twice)"),
              (status = 422, body = super::error::Problem, description = "No provider reference")),
    security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(caller = %caller.claims().sub, payout_id = id))]
pub async fn paid(
    State(state): State<AppState>,
    caller: Caller,
    claim: Option<Extension<Claim>>,
    Path(id): Path<i64>,
    Json(body): Json<PayoutReference>,
) -> Result<Json<Payout>> {
    with_reference(&state, &caller, claim.as_deref(), id, "paid", body).await
}

/// Mark a pending or sent payout failed, with the reason: its amount is
/// payable again (the next run pays it). Final.
#[utoipa::path(post, path = "/api/payouts/{id}/failed", tag = "payouts", params(("id" = i64, Path),
        ("Idempotency-Key" = Option<String>, Header, description = "Replays the stored response")),
    request_body = PayoutFailed,
    responses((status = 200, body = Payout), (status = 401, body = super::error::Problem), (status = 403, body = super::error::Problem),
              (status = 404, body = super::error::Problem), (status = 409, body = super::error::Problem, description = "Already paid or failed"),
              (status = 422, body = super::error::Problem)),
    security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(caller = %caller.claims().sub, payout_id = id))]
pub async fn failed(
    State(state): State<AppState>,
    caller: Caller,
    claim: Option<Extension<Claim>>,
    Path(id): Path<i64>,
    Json(body): Json<PayoutFailed>,
) -> Result<Json<Payout>> {
    caller.require_admin()?;
    check_text("reason", Some(&body.reason), 500)?;
    Ok(Json(
        change_state(
            &state,
            claim.as_deref(),
            id,
            "failed",
            None,
            Some(body.reason),
        )
        .await?,
    ))
}

async fn with_reference(
    state: &AppState,
    caller: &Caller,
    claim: Option<&Claim>,
    id: i64,
    to: &str,
    body: PayoutReference,
) -> Result<Json<Payout>> {
    caller.require_admin()?;
    check_text(
        "provider_reference",
        body.provider_reference.as_deref(),
        200,
    )?;
    Ok(Json(
        change_state(state, claim, id, to, body.provider_reference, None).await?,
    ))
}

/// The engine's `change_payout_state`, which `mark_payout_sent`, `_paid`
/// and `_failed` wrap for DBAs; the trigger on payouts checks the transition.
async fn change_state(
    state: &AppState,
    claim: Option<&Claim>,
    id: i64,
    to: &str,
    provider_reference: Option<String>,
    reason: Option<String>,
) -> Result<Payout> {
    // The claim is marked in the effect's transaction (see idempotency.rs).
    let mut tx = state.db.begin().await?;
    let json = sqlx::query_scalar!(
        r#"SELECT payout_json(o) AS "payout!" FROM change_payout_state($1, $2, $3, $4) o"#,
        id,
        to,
        provider_reference,
        reason
    )
    .fetch_one(&mut *tx)
    .await?;
    idempotency::mark_applied(&mut tx, claim).await?;
    tx.commit().await?;
    payout(json)
}
