//! The commission ledger as the API shows it: one entry per change to a
//! commission (earned, reversed, held, approved, ...), amounts as strings
//! with the currency's minor units.
//! Read only: entries are written by the engine in SQL, never here.

use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

/// One ledger entry.
#[derive(Debug, Serialize, ToSchema)]
pub struct Commission {
    pub id: i64,
    pub payment_id: i64,
    pub partner_id: i64,
    /// `earned`, `reversed`, `reinstated`, `held`, `released` or `approved`.
    pub kind: String,
    /// The commission's stage when the entry was written: `pending` (in its
    /// hold period), `approved` (payable) or `paid` (in a payout: a reversal
    /// now is clawback, netted from the next payout).
    pub stage: String,
    #[schema(example = "2.00")]
    pub amount: String,
    #[schema(example = "NGN")]
    pub currency: String,
    #[schema(example = "0.02")]
    pub rate: String,
    #[schema(example = "100.00")]
    pub payment_amount: String,
    pub created_at: DateTime<Utc>,
}

/// Which entries to read, newest first. Every filter is optional.
#[derive(Debug, Default)]
pub struct Filter<'a> {
    pub partner_id: Option<i64>,
    pub payment_id: Option<i64>,
    pub kind: Option<&'a str>,
    /// Keyset cursor: only entries with a smaller id.
    pub before: Option<i64>,
    /// Only these entries.
    pub ids: Option<&'a [i64]>,
}

pub async fn list(
    db: impl sqlx::PgExecutor<'_>,
    filter: Filter<'_>,
    limit: i64,
) -> Result<Vec<Commission>, sqlx::Error> {
    sqlx::query_as!(
        Commission,
        r#"SELECT c.id, c.payment_id, c.partner_id,
                  c.kind::text AS "kind!", c.stage,
                  round(c.amount, c.minor_units)::text AS "amount!",
                  c.currency::text AS "currency!",
                  trim_scale(c.rate)::text AS "rate!",
                  round(c.payment_amount, c.minor_units)::text AS "payment_amount!",
                  c.created_at
             FROM commissions c
            WHERE ($1::bigint IS NULL OR c.partner_id = $1)
              AND ($2::bigint IS NULL OR c.payment_id = $2)
              AND ($3::text IS NULL OR c.kind::text = $3)
              AND ($4::bigint IS NULL OR c.id < $4)
              AND ($6::bigint[] IS NULL OR c.id = ANY($6))
            ORDER BY c.id DESC
            LIMIT $5"#,
        filter.partner_id,
        filter.payment_id,
        filter.kind,
        filter.before,
        limit,
        filter.ids
    )
    .fetch_all(db)
    .await
}

/// The newest entry of one kind for one payment with an id above `after`,
/// if the engine wrote one.
pub async fn for_payment(
    db: impl sqlx::PgExecutor<'_>,
    payment_id: i64,
    kind: &str,
    after: i64,
) -> Result<Option<Commission>, sqlx::Error> {
    let filter = Filter {
        payment_id: Some(payment_id),
        kind: Some(kind),
        ..Filter::default()
    };
    Ok(list(db, filter, 1).await?.pop().filter(|c| c.id > after))
}
