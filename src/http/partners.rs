//! Partners: created, re-rated and given a hold period by admins, read by admins and by the
//! partner itself, with its totals per currency, its ledger (keyset pages,
//! newest first) and its event log (the same JSON the WebSocket sends).

use std::collections::BTreeMap;

use axum::{
    extract::State,
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    Extension,
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use utoipa::{IntoParams, ToSchema};

use super::{
    commissions::{self, Commission},
    error::{on_constraint, Error, Result},
    export,
    extractor::{Caller, Json, Path, Query},
    idempotency::{self, Claim},
    money::Rate,
    pagination,
};
use crate::{
    events::{Event, EventLog},
    state::AppState,
};

/// A partner's totals in one currency, each a sum of the ledger that the
/// audit view checks (docs/engine.md, "The lifecycle").
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Totals {
    /// Earned, ever.
    #[schema(example = "2.00")]
    pub earned: String,
    /// In the hold period, not yet approved (held included).
    pub pending: String,
    /// Approved and in no payout yet.
    pub approved: String,
    /// What the next payout would pay: approved minus clawback; negative
    /// while a reversal after payout is owed back.
    pub balance: String,
    /// In payouts created or sent, not yet paid.
    pub in_payout: String,
    /// Paid out.
    pub paid: String,
    /// Net reversed by refunds and lost disputes (reinstatements subtracted).
    pub reversed: String,
    /// Held by open disputes.
    pub held: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Partner {
    pub id: i64,
    pub name: String,
    /// Share of each verified payment, a decimal string from "0" to "1".
    #[schema(example = "0.02")]
    pub commission_rate: String,
    /// The partner's latest event seq (0 before the first); resume the socket from here.
    pub last_seq: i64,
    /// The partner's own hold period in days; null: the program's default.
    pub hold_days: Option<i32>,
    /// The hold period that applies: `hold_days`, or the program's default (30).
    pub effective_hold_days: i32,
    /// How long a customer it brought keeps earning it commissions on later
    /// payments (a subscription's invoices), in months from the customer's
    /// first payment: null for the customer's lifetime, 0 for the first payment only.
    pub recurring_months: Option<i32>,
    /// Per currency: `{"NGN": {"earned": "2.00", ...}}`.
    pub totals: BTreeMap<String, Totals>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewPartner {
    #[schema(example = "Acme Ltd")]
    pub name: String,
    /// Defaults to "0.02".
    #[schema(value_type = Option<String>, example = "0.025")]
    pub commission_rate: Option<Rate>,
    /// Days a commission stays pending before it is approved, 0 to 3650
    /// (0: approved when its payment is verified). Absent or null: the
    /// program's default (30).
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<i32>, example = 14)]
    pub hold_days: Option<Option<i32>>,
    /// Months a customer it brings keeps earning (null: lifetime, 0: first
    /// payment only). Absent: the program's default_recurring_months.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<i32>, example = 12)]
    pub recurring_months: Option<Option<i32>>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PartnerChange {
    pub name: Option<String>,
    /// Applies to payments verified from now on.
    #[schema(value_type = Option<String>, example = "0.03")]
    pub commission_rate: Option<Rate>,
    /// The hold period in days, 0 to 3650; null returns the partner to the
    /// program's default; absent: unchanged. Applies to its pending commissions too.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<i32>, example = 7)]
    pub hold_days: Option<Option<i32>>,
    /// null: lifetime; 0: first payment only; absent: unchanged. Applies to
    /// payments recorded from now on.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<i32>, example = 12)]
    pub recurring_months: Option<Option<i32>>,
}

/// Tells a field sent as null (`Some(None)`) from one not sent (`None`).
fn present<'de, D, T>(deserializer: D) -> std::result::Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(deserializer).map(Some)
}

/// Sets recurring_months when the request says so (null included).
async fn set_recurring_months(
    db: impl sqlx::PgExecutor<'_>,
    id: i64,
    months: Option<Option<i32>>,
) -> Result<()> {
    if let Some(months) = months {
        sqlx::query_scalar!(
            "SELECT set_partner_recurring_months($1, $2) AS id",
            id,
            months
        )
        .fetch_one(db)
        .await
        .map_err(partner_rule_violation)?;
    }
    Ok(())
}

fn check_name(name: &str) -> Result<()> {
    if name.contains('\0') {
        return Err(Error::Unprocessable(
            "name must not contain a NUL character (\\u0000)".into(),
        ));
    }
    if (1..=200).contains(&name.trim().chars().count()) {
        Ok(())
    } else {
        Err(Error::Unprocessable(
            "name must have 1 to 200 characters, not only spaces".into(),
        ))
    }
}

/// A partner's CHECK constraints (sql: the rules) as a 422 naming the field.
fn partner_rule_violation(error: sqlx::Error) -> Error {
    match error.as_database_error().and_then(|d| d.constraint()) {
        Some("partners_hold_days_range") => {
            Error::Unprocessable("hold_days must be from 0 to 3650".into())
        }
        Some("partners_recurring_months_range") => Error::Unprocessable(
            "recurring_months must be from 0 to 1200, or null for the customer's lifetime".into(),
        ),
        _ => on_constraint(error, "partners_commission_rate_range", |_| {
            Error::Unprocessable("commission_rate must be from 0 to 1".into())
        }),
    }
}

/// A partner's row as both reads select it.
struct PartnerRow {
    id: i64,
    name: String,
    commission_rate: String,
    last_seq: i64,
    created_at: DateTime<Utc>,
    hold_days: Option<i32>,
    effective_hold_days: i32,
    recurring_months: Option<i32>,
    totals: serde_json::Value,
}

impl TryFrom<PartnerRow> for Partner {
    type Error = Error;

    fn try_from(row: PartnerRow) -> Result<Partner> {
        Ok(Partner {
            id: row.id,
            name: row.name,
            commission_rate: row.commission_rate,
            last_seq: row.last_seq,
            hold_days: row.hold_days,
            effective_hold_days: row.effective_hold_days,
            recurring_months: row.recurring_months,
            totals: serde_json::from_value(row.totals).map_err(|e| Error::Internal(e.into()))?,
            created_at: row.created_at,
        })
    }
}

async fn fetch_partner(db: impl sqlx::PgExecutor<'_>, id: i64) -> Result<Partner> {
    sqlx::query_as!(
        PartnerRow,
        r#"SELECT p.id, p.name, trim_scale(p.commission_rate)::text AS "commission_rate!", partner_last_seq(p.id) AS "last_seq!", p.created_at,
                  p.hold_days, partner_hold_days(p.id) AS "effective_hold_days!", p.recurring_months,
                  partner_totals(p.id) AS "totals!"
             FROM partners p WHERE p.id = $1"#,
        id
    )
    .fetch_optional(db)
    .await?
    .ok_or_else(|| Error::NotFound(format!("partner {id} does not exist")))?
    .try_into()
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct PartnerSearch {
    /// Part of the name (any case), or the exact id.
    pub q: Option<String>,
    /// Partners per page, 1 to 100 (default 20).
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PartnerPage {
    pub items: Vec<Partner>,
    pub next_cursor: Option<i64>,
}

/// `q` as a LIKE pattern that matches it literally anywhere in the name.
fn contains_pattern(q: &str) -> String {
    let escaped = q
        .replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_");
    format!("%{escaped}%")
}

/// Partners whose name contains `q` (or whose id is `q`), newest first, with their totals (admins).
#[utoipa::path(get, path = "/api/partners", tag = "partners", params(PartnerSearch),
    responses((status = 200, body = PartnerPage), (status = 401, body = super::error::Problem), (status = 403, body = super::error::Problem),
              (status = 422, body = super::error::Problem)),
    security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(caller = %caller.claims().sub))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(search): Query<PartnerSearch>,
) -> Result<Json<PartnerPage>> {
    caller.require_admin()?;
    let limit = pagination::limit(search.limit, 20, 100)?;
    let before = pagination::cursor(search.cursor)?;
    let q = search.q.as_deref().map(str::trim).filter(|q| !q.is_empty());
    let id = q.and_then(|q| q.trim_start_matches('#').parse::<i64>().ok());
    let rows = sqlx::query_as!(
        PartnerRow,
        r#"SELECT p.id, p.name, trim_scale(p.commission_rate)::text AS "commission_rate!", partner_last_seq(p.id) AS "last_seq!", p.created_at,
                  p.hold_days, partner_hold_days(p.id) AS "effective_hold_days!", p.recurring_months,
                  partner_totals(p.id) AS "totals!"
             FROM partners p
            WHERE ($1::text IS NULL OR p.name ILIKE $1 OR p.id = $2)
              AND ($3::bigint IS NULL OR p.id < $3)
            ORDER BY p.id DESC
            LIMIT $4"#,
        q.map(contains_pattern),
        id,
        before,
        limit + 1
    )
    .fetch_all(&state.db)
    .await?
    .into_iter()
    .map(Partner::try_from)
    .collect::<Result<Vec<_>>>()?;
    let (items, next_cursor) = pagination::split(rows, limit, |p| p.id);
    Ok(Json(PartnerPage { items, next_cursor }))
}

/// Create a partner.
#[utoipa::path(post, path = "/api/partners", tag = "partners", request_body = NewPartner,
    params(("Idempotency-Key" = Option<String>, Header, description = "Replays the stored response for the same body")),
    responses((status = 201, body = Partner), (status = 401, body = super::error::Problem), (status = 403, body = super::error::Problem),
              (status = 422, body = super::error::Problem)),
    security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(caller = %caller.claims().sub))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    claim: Option<Extension<Claim>>,
    Json(new): Json<NewPartner>,
) -> Result<(StatusCode, Json<Partner>)> {
    caller.require_admin()?;
    check_name(&new.name)?;
    // The partner and the response in one transaction: a failure answers 5xx
    // with nothing written, so an Idempotency-Key retry is safe.
    let mut tx = state.db.begin().await?;
    let id = sqlx::query_scalar!(
        r#"SELECT create_partner($1, $2) AS "id!""#,
        new.name.trim(),
        new.commission_rate.map(|r| r.0)
    )
    .fetch_one(&mut *tx)
    .await
    .map_err(partner_rule_violation)?;
    set_hold_days(&mut *tx, id, new.hold_days).await?;
    set_recurring_months(&mut *tx, id, new.recurring_months).await?;
    let partner = fetch_partner(&mut *tx, id).await?;
    idempotency::mark_applied(&mut tx, claim.as_deref()).await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(partner)))
}

/// A partner with its totals per currency and its latest event seq.
#[utoipa::path(get, path = "/api/partners/{id}", tag = "partners", params(("id" = i64, Path)),
    responses((status = 200, body = Partner), (status = 401, body = super::error::Problem), (status = 403, body = super::error::Problem),
              (status = 404, body = super::error::Problem)),
    security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(caller = %caller.claims().sub, partner_id = id))]
pub async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
) -> Result<Json<Partner>> {
    caller.require_partner_access(id)?;
    Ok(Json(fetch_partner(&state.db, id).await?))
}

/// Rename a partner, change its rate (applies to payments verified
/// afterwards) or its hold period (applies to its pending commissions too).
#[utoipa::path(patch, path = "/api/partners/{id}", tag = "partners", params(("id" = i64, Path)), request_body = PartnerChange,
    responses((status = 200, body = Partner), (status = 401, body = super::error::Problem), (status = 403, body = super::error::Problem),
              (status = 404, body = super::error::Problem), (status = 422, body = super::error::Problem)),
    security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(caller = %caller.claims().sub, partner_id = id))]
pub async fn update(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
    Json(change): Json<PartnerChange>,
) -> Result<Json<Partner>> {
    caller.require_admin()?;
    if let Some(name) = &change.name {
        check_name(name)?;
    }
    // The name, rate, hold period and recurring months change together or not at all.
    let mut tx = state.db.begin().await?;
    let updated = sqlx::query_scalar!(
        "SELECT update_partner($1, $2, $3) AS id",
        id,
        change.name.as_deref().map(str::trim),
        change.commission_rate.map(|r| r.0)
    )
    .fetch_one(&mut *tx)
    .await
    .map_err(partner_rule_violation)?;
    if updated.is_none() {
        return Err(Error::NotFound(format!("partner {id} does not exist")));
    }
    set_hold_days(&mut *tx, id, change.hold_days).await?;
    set_recurring_months(&mut *tx, id, change.recurring_months).await?;
    let partner = fetch_partner(&mut *tx, id).await?;
    tx.commit().await?;
    Ok(Json(partner))
}

/// Sets hold_days when the request says so (null: the program's default).
async fn set_hold_days(
    db: impl sqlx::PgExecutor<'_>,
    id: i64,
    hold_days: Option<Option<i32>>,
) -> Result<()> {
    if let Some(hold_days) = hold_days {
        sqlx::query_scalar!("SELECT set_partner_hold_days($1, $2) AS id", id, hold_days)
            .fetch_one(db)
            .await
            .map_err(partner_rule_violation)?;
    }
    Ok(())
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    /// Entries per page, 1 to 100 (default 50).
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<i64>,
    /// `json` (default) or `csv`: every matching entry from `cursor` on,
    /// streamed, for accounting (also with `Accept: text/csv`).
    pub format: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CommissionPage {
    pub items: Vec<Commission>,
    /// Pass as `cursor` for the next (older) page; null on the last page.
    pub next_cursor: Option<i64>,
}

/// The partner's ledger, newest first, in keyset pages; or all of it as CSV.
#[utoipa::path(get, path = "/api/partners/{id}/commissions", tag = "partners", params(("id" = i64, Path), PageQuery),
    responses((status = 200, body = CommissionPage, description = "A page, or with format=csv (Accept: text/csv) every entry as text/csv"),
              (status = 401, body = super::error::Problem), (status = 403, body = super::error::Problem),
              (status = 404, body = super::error::Problem), (status = 422, body = super::error::Problem)),
    security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(caller = %caller.claims().sub, partner_id = id))]
pub async fn commissions(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
    Query(page): Query<PageQuery>,
    headers: HeaderMap,
) -> Result<Response> {
    caller.require_partner_access(id)?;
    let format = export::Format::of(page.format.as_deref(), &headers)?;
    let limit = pagination::limit(page.limit, 50, 100)?;
    let before = pagination::cursor(page.cursor)?;
    require_partner(&state, id).await?;
    if format == export::Format::Csv {
        let db = state.db.clone();
        let chunk = move |before, limit| {
            let db = db.clone();
            async move {
                let filter = commissions::Filter {
                    partner_id: Some(id),
                    before,
                    ..Default::default()
                };
                Ok(commissions::list(&db, filter, limit).await?)
            }
        };
        let name = format!("commissions-partner-{id}.csv");
        return Ok(export::stream_csv(
            &name,
            before,
            chunk,
            |c: &Commission| c.id,
        ));
    }
    let filter = commissions::Filter {
        partner_id: Some(id),
        before,
        ..Default::default()
    };
    let rows = commissions::list(&state.db, filter, limit + 1).await?;
    let (items, next_cursor) = pagination::split(rows, limit, |c| c.id);
    Ok(Json(CommissionPage { items, next_cursor }).into_response())
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// The last seq already seen (default 0: from the start).
    pub since: Option<i64>,
    /// Events per page, 1 to 1000 (default 100).
    pub limit: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EventPage {
    pub partner_id: i64,
    /// The partner's latest seq now; more events follow if it exceeds the last returned.
    pub last_seq: i64,
    /// Each exactly the JSON the WebSocket sends.
    #[schema(value_type = Vec<Object>)]
    pub events: Vec<Box<RawValue>>,
}

/// The partner's event log after `since`, oldest first.
#[utoipa::path(get, path = "/api/partners/{id}/events", tag = "partners", params(("id" = i64, Path), EventsQuery),
    responses((status = 200, body = EventPage), (status = 401, body = super::error::Problem), (status = 403, body = super::error::Problem),
              (status = 404, body = super::error::Problem), (status = 422, body = super::error::Problem)),
    security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(caller = %caller.claims().sub, partner_id = id))]
pub async fn events(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
    Query(query): Query<EventsQuery>,
) -> Result<Json<EventPage>> {
    caller.require_partner_access(id)?;
    let limit = pagination::limit(query.limit, 100, 1000)?;
    let since = query.since.unwrap_or(0);
    if since < 0 {
        return Err(Error::Unprocessable(
            "since must be a seq, 0 or more".into(),
        ));
    }
    let log = EventLog::new(state.db.clone());
    // Read the head first: every event up to it is committed, so a client
    // that pages until last_seq misses nothing.
    let last_seq = log
        .partner_last_seq(id)
        .await?
        .ok_or_else(|| Error::NotFound(format!("partner {id} does not exist")))?;
    let events = log
        .partner_since(id, since, limit)
        .await?
        .into_iter()
        .map(Event::into_raw)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Internal(e.into()))?;
    Ok(Json(EventPage {
        partner_id: id,
        last_seq,
        events,
    }))
}

async fn require_partner(state: &AppState, id: i64) -> Result<()> {
    let exists = sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM partners WHERE id = $1) AS "exists!""#,
        id
    )
    .fetch_one(&state.db)
    .await?;
    if exists {
        Ok(())
    } else {
        Err(Error::NotFound(format!("partner {id} does not exist")))
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct EarningsQuery {
    /// Days back from today (UTC), 1 to 366 (default 30).
    pub days: Option<i64>,
}

/// One UTC day of a partner's commissions in one currency.
#[derive(Debug, Serialize, ToSchema)]
pub struct EarningsDay {
    #[schema(value_type = String, example = "2026-12-01")]
    pub day: chrono::NaiveDate,
    #[schema(example = "2.00")]
    pub earned: String,
    /// Reversed that day, net of reinstatements.
    pub reversed: String,
    /// earned - reversed.
    pub net: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Earnings {
    pub partner_id: i64,
    pub days: i64,
    /// Per currency, every day of the window oldest first (zeros included).
    pub currencies: BTreeMap<String, Vec<EarningsDay>>,
}

/// The partner's commissions per day, for a chart (the rule is
/// `partner_daily_earnings` in SQL).
#[utoipa::path(get, path = "/api/partners/{id}/earnings", tag = "partners", params(("id" = i64, Path), EarningsQuery),
    responses((status = 200, body = Earnings), (status = 401, body = super::error::Problem), (status = 403, body = super::error::Problem),
              (status = 404, body = super::error::Problem), (status = 422, body = super::error::Problem)),
    security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(caller = %caller.claims().sub, partner_id = id))]
pub async fn earnings(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
    Query(query): Query<EarningsQuery>,
) -> Result<Json<Earnings>> {
    caller.require_partner_access(id)?;
    let days = query.days.unwrap_or(30);
    if !(1..=366).contains(&days) {
        return Err(Error::Unprocessable("days must be from 1 to 366".into()));
    }
    require_partner(&state, id).await?;
    let rows = sqlx::query!(
        r#"SELECT day AS "day!", currency::text AS "currency!", earned AS "earned!", reversed AS "reversed!", net AS "net!"
             FROM partner_daily_earnings($1, $2::int)"#,
        id,
        days as i32
    )
    .fetch_all(&state.db)
    .await?;
    let mut currencies: BTreeMap<String, Vec<EarningsDay>> = BTreeMap::new();
    for row in rows {
        currencies
            .entry(row.currency)
            .or_default()
            .push(EarningsDay {
                day: row.day,
                earned: row.earned,
                reversed: row.reversed,
                net: row.net,
            });
    }
    Ok(Json(Earnings {
        partner_id: id,
        days,
        currencies,
    }))
}
