//! Payments as an operator handles them by hand: record one as pending,
//! verify it, refund it. These handlers only change the payment's status
//! through the SQL functions `verify_payment` / `refund_payment`; the engine
//! in SQL writes the commission in the same transaction, and the response
//! reads it back from that transaction.

use axum::{extract::State, http::StatusCode, Extension};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{
    commissions::{self, Commission},
    error::{on_constraint, Error, Result},
    extractor::{Caller, Json, Path, RawBody},
    idempotency::{self, Claim},
    metrics,
    money::{self, Amount},
    verifications::Verification,
};
use crate::state::AppState;

#[derive(Debug, Serialize, ToSchema)]
pub struct Payment {
    pub id: i64,
    #[schema(example = "100.00")]
    pub amount: String,
    #[schema(example = "NGN")]
    pub currency: String,
    /// `pending`, `verified`, `failed` or `refunded`.
    pub status: String,
    pub partner_id: Option<i64>,
    /// `manual`, `stripe` or `paystack`.
    pub provider: String,
    /// The provider's id for the payment (or the operator's reference).
    pub reference: Option<String>,
    pub created_at: DateTime<Utc>,
    pub verified_at: Option<DateTime<Utc>>,
    pub refunded_at: Option<DateTime<Utc>>,
    /// Refunded so far (refunds add up to at most the amount).
    #[schema(example = "0.00")]
    pub refunded_amount: String,
}

pub async fn fetch(db: impl sqlx::PgExecutor<'_>, id: i64) -> Result<Payment> {
    fetch_all(db, &[id])
        .await?
        .pop()
        .ok_or_else(|| Error::NotFound(format!("payment {id} does not exist")))
}

/// The payments of `ids` that exist, in no particular order.
pub async fn fetch_all(db: impl sqlx::PgExecutor<'_>, ids: &[i64]) -> Result<Vec<Payment>> {
    Ok(sqlx::query_as!(
        Payment,
        r#"SELECT id, round(amount, minor_units)::text AS "amount!", currency::text AS "currency!", status::text AS "status!",
                  partner_id, provider, provider_reference AS reference, created_at, verified_at, refunded_at,
                  round(refunded_amount, minor_units)::text AS "refunded_amount!"
             FROM payments WHERE id = ANY($1)"#,
        ids
    )
    .fetch_all(db)
    .await?)
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewPayment {
    /// A decimal string with at most the currency's minor units.
    #[schema(value_type = String, example = "100.00")]
    pub amount: Amount,
    #[schema(example = "NGN")]
    pub currency: String,
    /// The partner credited when the payment is verified.
    pub partner_id: Option<i64>,
    /// Your own reference, unique among manual payments.
    pub reference: Option<String>,
}

/// Record a pending payment.
#[utoipa::path(post, path = "/api/payments", tag = "payments", request_body = NewPayment,
    params(("Idempotency-Key" = Option<String>, Header, description = "Replays the stored response for the same body")),
    responses((status = 201, body = Payment), (status = 400, body = super::error::Problem), (status = 401, body = super::error::Problem),
              (status = 403, body = super::error::Problem), (status = 409, body = super::error::Problem),
              (status = 413, body = super::error::Problem), (status = 422, body = super::error::Problem)),
    security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(caller = %caller.claims().sub))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    claim: Option<Extension<Claim>>,
    Json(new): Json<NewPayment>,
) -> Result<(StatusCode, Json<Payment>)> {
    caller.require_admin()?;
    let minor_units = money::minor_units(&state.db, &new.currency).await?;
    let amount = new.amount.for_currency(&new.currency, minor_units)?;
    if new
        .reference
        .as_deref()
        .is_some_and(|r| !(1..=200).contains(&r.trim().chars().count()) || r.contains('\0'))
    {
        return Err(Error::Unprocessable(
            "reference must have 1 to 200 characters and no NUL (\\u0000)".into(),
        ));
    }
    // The payment and the response in one transaction: a failure answers 5xx
    // with nothing written, so an Idempotency-Key retry is safe.
    let mut tx = state.db.begin().await?;
    let id = sqlx::query_scalar!(
        r#"SELECT record_payment($1, $2, $3, $4) AS "id!""#,
        amount,
        new.currency,
        new.partner_id,
        new.reference
    )
    .fetch_one(&mut *tx)
    .await
    .map_err(
        |e| match e.as_database_error().and_then(|d| d.constraint()) {
            Some("payments_partner_id_fkey") => Error::Unprocessable(format!(
                "partner {} does not exist",
                new.partner_id.unwrap_or_default()
            )),
            _ => on_constraint(e, "payments_provider_reference_unique", |_| {
                Error::Conflict("a manual payment with this reference already exists".into())
            }),
        },
    )?;
    let payment = fetch(&mut *tx, id).await?;
    idempotency::mark_applied(&mut tx, claim.as_deref()).await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(payment)))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Verified {
    pub payment: Payment,
    /// The commission earned; null when the payment has no partner or the commission rounds to zero.
    pub commission: Option<Commission>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Refunded {
    pub payment: Payment,
    /// The reversal this refund appended; null when nothing was earned (or
    /// the refund was too small to move the rounded commission).
    pub reversal: Option<Commission>,
}

/// Verify a pending payment by hand: the engine earns its commission.
#[utoipa::path(post, path = "/api/payments/{id}/verify", tag = "payments", params(("id" = i64, Path),
        ("Idempotency-Key" = Option<String>, Header, description = "Replays the stored response")),
    responses((status = 200, body = Verified), (status = 401, body = super::error::Problem), (status = 403, body = super::error::Problem),
              (status = 404, body = super::error::Problem), (status = 409, body = super::error::Problem, description = "Not pending")),
    security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(caller = %caller.claims().sub, payment_id = id))]
pub async fn verify(
    State(state): State<AppState>,
    caller: Caller,
    claim: Option<Extension<Claim>>,
    Path(id): Path<i64>,
) -> Result<Json<Verified>> {
    caller.require_admin()?;
    // With the verifications that arrive beside it, in one transaction
    // (verifications.rs); alone, it is `verify_alone`.
    let (payment, commission) = state
        .verifications
        .apply(Verification {
            payment_id: id,
            claim: claim.map(|Extension(claim)| claim),
        })
        .await?;
    Ok(Json(Verified {
        payment,
        commission,
    }))
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefundRequest {
    /// How much to refund, a decimal string with at most the currency's minor
    /// units. Omitted (or no body at all): everything not refunded yet.
    #[schema(value_type = Option<String>, example = "25.00")]
    pub amount: Option<Amount>,
}

/// Refund a verified payment, in full or in part: the engine reverses the
/// commission in proportion (refunds add up; the last one reverses the exact remainder).
#[utoipa::path(post, path = "/api/payments/{id}/refund", tag = "payments", params(("id" = i64, Path),
        ("Idempotency-Key" = Option<String>, Header, description = "Replays the stored response")),
    request_body(content = Option<RefundRequest>, description = "Optional: {\"amount\": \"25.00\"}; no body refunds the rest"),
    responses((status = 200, body = Refunded), (status = 401, body = super::error::Problem), (status = 403, body = super::error::Problem),
              (status = 404, body = super::error::Problem), (status = 409, body = super::error::Problem, description = "Not verified, or more than is left to refund"),
              (status = 422, body = super::error::Problem, description = "Not a positive amount, or too many decimals")),
    security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(caller = %caller.claims().sub, payment_id = id))]
pub async fn refund(
    State(state): State<AppState>,
    caller: Caller,
    claim: Option<Extension<Claim>>,
    Path(id): Path<i64>,
    RawBody(body): RawBody,
) -> Result<Json<Refunded>> {
    caller.require_admin()?;
    let request: RefundRequest = if body.iter().all(u8::is_ascii_whitespace) {
        RefundRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| match e.classify() {
            serde_json::error::Category::Data => Error::Unprocessable(e.to_string()),
            _ => Error::BadRequest(format!("the body is not valid JSON: {e}")),
        })?
    };
    let amount = match request.amount {
        None => None,
        Some(amount) => {
            // The payment's own minor units, fixed when it was recorded.
            let payment = sqlx::query!(
                r#"SELECT currency::text AS "currency!", minor_units FROM payments WHERE id = $1"#,
                id
            )
            .fetch_optional(&state.db)
            .await?
            .ok_or_else(|| Error::NotFound(format!("payment {id} does not exist")))?;
            Some(amount.for_currency(&payment.currency, payment.minor_units)?)
        }
    };
    let (payment, reversal) =
        change_status(&state.db, id, Transition::Refund(amount), claim.as_deref()).await?;
    Ok(Json(Refunded { payment, reversal }))
}

/// Verifies one payment in its own transaction: what a verification that
/// arrives alone gets, and the one a batch leaves out (its error is this one's).
pub(super) async fn verify_alone(
    db: &sqlx::PgPool,
    id: i64,
    claim: Option<&Claim>,
) -> Result<(Payment, Option<Commission>)> {
    change_status(db, id, Transition::Verify, claim).await
}

#[derive(Debug, Clone, Copy)]
enum Transition {
    Verify,
    /// `None`: the rest of the amount.
    Refund(Option<rust_decimal::Decimal>),
}

/// Moves the payment through the engine's SQL function and reads back, in
/// the same transaction, the ledger entry that call appended (if any). The
/// transaction holds only the payment's row until it commits: the locks
/// that order the event log are taken by the engine at COMMIT
/// (sql/03_commission_engine.sql), so reading here holds up no one else.
async fn change_status(
    db: &sqlx::PgPool,
    id: i64,
    transition: Transition,
    claim: Option<&Claim>,
) -> Result<(Payment, Option<Commission>)> {
    let mut tx = db.begin().await?;
    // The payment's lock first, then the ledger's last entry: an entry that a
    // concurrent refund of this payment appends is then ours to wait for,
    // never taken for the one this call appends.
    let before = sqlx::query_scalar!(
        r#"SELECT coalesce(max(c.id), 0) AS "id!" FROM commissions c
            WHERE c.payment_id = (SELECT p.id FROM lock_payment($1) p)"#,
        id
    )
    .fetch_one(&mut *tx)
    .await?;
    let kind = match transition {
        Transition::Verify => {
            sqlx::query_scalar!(r#"SELECT id AS "id!" FROM verify_payment($1)"#, id)
                .fetch_one(&mut *tx)
                .await?;
            "earned"
        }
        Transition::Refund(amount) => {
            sqlx::query_scalar!(
                r#"SELECT id AS "id!" FROM refund_payment($1, $2)"#,
                id,
                amount
            )
            .fetch_one(&mut *tx)
            .await?;
            "reversed"
        }
    };
    let entry = commissions::for_payment(&mut *tx, id, kind, before).await?;
    let payment = fetch(&mut *tx, id).await?;
    idempotency::mark_applied(&mut tx, claim).await?;
    tx.commit().await?;
    if entry.is_some() {
        metrics::commission_written(kind);
    }
    Ok((payment, entry))
}
