//! Payments as an operator handles them by hand: record one as pending,
//! verify it, refund it. These handlers only change the payment's status
//! through the SQL functions `verify_payment` / `refund_payment`; the engine
//! in SQL writes the commission in the same transaction, and the response
//! reads it back from that transaction.

use axum::{extract::State, http::StatusCode};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{
    commissions::{self, Commission},
    error::{on_constraint, Error, Result},
    extractor::{Caller, Json, Path},
    metrics,
    money::{self, Amount},
};
use crate::startup::AppState;

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
}

pub async fn fetch(db: impl sqlx::PgExecutor<'_>, id: i64) -> Result<Payment> {
    sqlx::query_as!(
        Payment,
        r#"SELECT id, money_text(amount, currency) AS "amount!", currency::text AS "currency!", status::text AS "status!",
                  partner_id, provider, provider_reference AS reference, created_at, verified_at, refunded_at
             FROM payments WHERE id = $1"#,
        id
    )
    .fetch_optional(db)
    .await?
    .ok_or_else(|| Error::NotFound(format!("payment {id} does not exist")))
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
    Json(new): Json<NewPayment>,
) -> Result<(StatusCode, Json<Payment>)> {
    caller.require_admin()?;
    let minor_units = money::minor_units(&state.db, &new.currency).await?;
    let amount = new.amount.for_currency(&new.currency, minor_units)?;
    if new
        .reference
        .as_deref()
        .is_some_and(|r| !(1..=200).contains(&r.trim().chars().count()))
    {
        return Err(Error::Unprocessable(
            "reference must have 1 to 200 characters".into(),
        ));
    }
    let id = sqlx::query_scalar!(
        "INSERT INTO payments (amount, currency, partner_id, provider, provider_reference)
         VALUES ($1, $2, $3, 'manual', $4) RETURNING id",
        amount,
        new.currency,
        new.partner_id,
        new.reference
    )
    .fetch_one(&state.db)
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
    Ok((StatusCode::CREATED, Json(fetch(&state.db, id).await?)))
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
    /// The reversal of the earned commission; null when none was earned.
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
    Path(id): Path<i64>,
) -> Result<Json<Verified>> {
    caller.require_admin()?;
    let (payment, commission) = change_status(&state, id, Transition::Verify).await?;
    Ok(Json(Verified {
        payment,
        commission,
    }))
}

/// Refund a verified payment: the engine reverses its commission.
#[utoipa::path(post, path = "/api/payments/{id}/refund", tag = "payments", params(("id" = i64, Path),
        ("Idempotency-Key" = Option<String>, Header, description = "Replays the stored response")),
    responses((status = 200, body = Refunded), (status = 401, body = super::error::Problem), (status = 403, body = super::error::Problem),
              (status = 404, body = super::error::Problem), (status = 409, body = super::error::Problem, description = "Not verified")),
    security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(caller = %caller.claims().sub, payment_id = id))]
pub async fn refund(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
) -> Result<Json<Refunded>> {
    caller.require_admin()?;
    let (payment, reversal) = change_status(&state, id, Transition::Refund).await?;
    Ok(Json(Refunded { payment, reversal }))
}

#[derive(Debug, Clone, Copy)]
enum Transition {
    Verify,
    Refund,
}

/// Moves the payment through the engine's SQL function, committed on its
/// own, then reads back the ledger entry the engine wrote for it (if any).
/// The engine's call is its whole transaction on purpose: from its advisory
/// lock to COMMIT every verification in the system takes turns, so reads
/// done inside it would hold up everyone else. The entry is immutable once
/// committed, so reading it afterwards returns exactly what was written.
async fn change_status(
    state: &AppState,
    id: i64,
    transition: Transition,
) -> Result<(Payment, Option<Commission>)> {
    let kind = match transition {
        Transition::Verify => {
            sqlx::query_scalar!(r#"SELECT id AS "id!" FROM verify_payment($1)"#, id)
                .fetch_one(&state.db)
                .await?;
            "earned"
        }
        Transition::Refund => {
            sqlx::query_scalar!(r#"SELECT id AS "id!" FROM refund_payment($1)"#, id)
                .fetch_one(&state.db)
                .await?;
            "reversed"
        }
    };
    let mut conn = state.db.acquire().await?;
    let entry = commissions::for_payment(&mut *conn, id, kind).await?;
    let payment = fetch(&mut *conn, id).await?;
    if entry.is_some() {
        metrics::commission_written(kind);
    }
    Ok((payment, entry))
}
