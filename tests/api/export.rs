//! CSV exports for accounting: every matching row, streamed in keyset
//! chunks, with the list's own filters and access rules.

use reqwest::header;
use serde_json::json;

use crate::{
    callers::{admin_token, partner_token, problem},
    helpers::{create_partner, spawn_app, TestApp},
};

async fn csv_rows(app: &TestApp, token: &str, path: &str) -> (String, Vec<csv::StringRecord>) {
    let response = app.get_as(token, path).await;
    assert_eq!(response.status(), 200, "{path}");
    let content_type = response.headers()[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(content_type, "text/csv; charset=utf-8");
    let body = response.text().await.unwrap();
    let mut reader = csv::Reader::from_reader(body.as_bytes());
    let headers = reader
        .headers()
        .unwrap()
        .iter()
        .collect::<Vec<_>>()
        .join(",");
    let rows = reader.records().map(|r| r.unwrap()).collect();
    (headers, rows)
}

#[tokio::test]
async fn a_partners_whole_ledger_comes_as_csv_past_one_chunk_each_entry_once() {
    let app = spawn_app().await;
    let partner = create_partner(&app.db.pool, "Acme", None).await;
    let other = create_partner(&app.db.pool, "Other", None).await;
    // More entries than one chunk (1,000) of the stream.
    sqlx::query(
        "SELECT verify_payment(record_payment(10 + n, 'NGN', $1)) FROM generate_series(1, 1234) n",
    )
    .bind(partner)
    .execute(&app.db.pool)
    .await
    .unwrap();
    let path = format!("/api/partners/{partner}/commissions?format=csv");
    let (headers, rows) = csv_rows(&app, &partner_token(partner), &path).await;
    assert_eq!(
        headers,
        "id,payment_id,partner_id,kind,stage,amount,currency,rate,payment_amount,created_at"
    );
    assert_eq!(rows.len(), 1234);
    let ids: Vec<i64> = rows.iter().map(|r| r[0].parse().unwrap()).collect();
    assert!(
        ids.windows(2).all(|w| w[0] > w[1]),
        "newest first, no repeat"
    );
    // The amounts are the ledger's, to the minor unit.
    let total: rust_decimal::Decimal = rows
        .iter()
        .map(|r| r[5].parse::<rust_decimal::Decimal>().unwrap())
        .sum();
    let ledger: rust_decimal::Decimal =
        sqlx::query_scalar("SELECT sum(round(amount, 2)) FROM commissions WHERE partner_id = $1")
            .bind(partner)
            .fetch_one(&app.db.pool)
            .await
            .unwrap();
    assert_eq!(total, ledger);

    // Accept: text/csv asks the same; a cursor starts below it.
    let response = app
        .http
        .get(app.url(&format!(
            "/api/partners/{partner}/commissions?cursor={}",
            ids[9]
        )))
        .bearer_auth(admin_token())
        .header(header::ACCEPT, "text/csv")
        .send()
        .await
        .unwrap();
    let body = response.text().await.unwrap();
    assert_eq!(body.lines().count(), 1 + 1234 - 10);

    // Another partner's ledger, and a format nobody knows, are refused.
    problem(
        app.get_as(&partner_token(other), &path).await,
        403,
        "forbidden",
    )
    .await;
    problem(
        app.get_as(
            &partner_token(partner),
            &format!("/api/partners/{partner}/commissions?format=xlsx"),
        )
        .await,
        422,
        "invalid-input",
    )
    .await;
}

#[tokio::test]
async fn payouts_as_csv_keep_the_filters_and_quote_a_reference_that_looks_like_a_formula() {
    let app = spawn_app().await;
    let partner = create_partner(&app.db.pool, "Acme", None).await;
    sqlx::query("SELECT set_partner_hold_days($1, 0)")
        .bind(partner)
        .execute(&app.db.pool)
        .await
        .unwrap();
    sqlx::query("SELECT verify_payment(record_payment(5000, 'NGN', $1))")
        .bind(partner)
        .execute(&app.db.pool)
        .await
        .unwrap();
    let run = app
        .post_as(&admin_token(), "/api/payouts/run", &json!({}))
        .await;
    assert_eq!(run.status(), 200);
    let payout: i64 = sqlx::query_scalar("SELECT id FROM payouts")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    let sent = app
        .post_as(
            &admin_token(),
            &format!("/api/payouts/{payout}/sent"),
            &json!({"provider_reference": "=HYPERLINK(\"http://evil\")"}),
        )
        .await;
    assert_eq!(sent.status(), 200);

    let (headers, rows) =
        csv_rows(&app, &admin_token(), "/api/payouts?format=csv&state=sent").await;
    assert!(
        headers.starts_with("id,partner_id,currency,state,amount"),
        "{headers}"
    );
    assert_eq!(rows.len(), 1);
    assert_eq!(&rows[0][3], "sent");
    assert_eq!(&rows[0][4], "100.00");
    assert_eq!(
        &rows[0][8], "'=HYPERLINK(\"http://evil\")",
        "data, not a formula"
    );
    let (_, none) = csv_rows(&app, &admin_token(), "/api/payouts?format=csv&state=paid").await;
    assert!(none.is_empty(), "the state filter holds");
    let (_, own) = csv_rows(
        &app,
        &partner_token(partner),
        &format!("/api/partners/{partner}/payouts?format=csv"),
    )
    .await;
    assert_eq!(own.len(), 1);
    problem(
        app.get_as(&partner_token(partner), "/api/payouts?format=csv")
            .await,
        403,
        "forbidden",
    )
    .await;
}
