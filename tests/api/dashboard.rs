//! The dashboard's assets as a browser fetches them, and the demo's
//! `simulate-payment` against a real database. The page's behaviour in a
//! browser is proved by tests/e2e (headless Chromium).

use commissions::{
    config::{DatabaseConfig, Secret, SimulatePaymentConfig},
    demo,
};
use reqwest::{header, StatusCode};

use crate::helpers::{create_partner, spawn_app, TestApp, TestDatabase};

async fn get(app: &TestApp, path: &str) -> reqwest::Response {
    app.http
        .get(format!("{}{path}", app.base))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn the_page_and_its_modules_are_served_with_types_and_a_strict_policy() {
    let app = spawn_app().await;
    for path in ["/", "/dashboard"] {
        let res = get(&app, path).await;
        assert_eq!(res.status(), StatusCode::OK, "{path}");
        assert_eq!(
            res.headers()[header::CONTENT_TYPE],
            "text/html; charset=utf-8"
        );
        let policy = res.headers()[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(
            policy.contains("script-src 'self'") && policy.contains("frame-ancestors 'none'"),
            "{policy}"
        );
        assert_eq!(res.headers()[header::REFERRER_POLICY], "no-referrer");
        assert!(res
            .text()
            .await
            .unwrap()
            .contains("/dashboard/dashboard.js"));
    }
    for (path, content_type, marker) in [
        (
            "/client/commissions-client.js",
            "text/javascript; charset=utf-8",
            "export class CommissionsClient",
        ),
        (
            "/dashboard/dashboard.js",
            "text/javascript; charset=utf-8",
            "from '/client/commissions-client.js'",
        ),
        (
            "/dashboard/console.js",
            "text/javascript; charset=utf-8",
            "export function setUpConsole",
        ),
        (
            "/dashboard/dashboard.css",
            "text/css; charset=utf-8",
            ".status",
        ),
    ] {
        let res = get(&app, path).await;
        assert_eq!(res.status(), StatusCode::OK, "{path}");
        assert_eq!(res.headers()[header::CONTENT_TYPE], content_type, "{path}");
        assert_eq!(res.headers()[header::CACHE_CONTROL], "no-cache", "{path}");
        assert_eq!(
            res.headers()[header::X_CONTENT_TYPE_OPTIONS],
            "nosniff",
            "{path}"
        );
        assert!(res.text().await.unwrap().contains(marker), "{path}");
    }
}

#[tokio::test]
async fn an_unchanged_asset_is_revalidated_with_a_304() {
    let app = spawn_app().await;
    let url = format!("{}/client/commissions-client.js", app.base);
    let first = app.http.get(&url).send().await.unwrap();
    let etag = first.headers()[header::ETAG].clone();
    let again = app
        .http
        .get(&url)
        .header(header::IF_NONE_MATCH, etag.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(again.headers()[header::ETAG], etag);
    assert!(again.bytes().await.unwrap().is_empty());
    let stale = app
        .http
        .get(&url)
        .header(header::IF_NONE_MATCH, "\"other\"")
        .send()
        .await
        .unwrap();
    assert_eq!(stale.status(), StatusCode::OK);
}

fn simulate(
    db: &TestDatabase,
    partner_id: i64,
    amount: &str,
    currency: &str,
) -> SimulatePaymentConfig {
    SimulatePaymentConfig {
        database: DatabaseConfig {
            database_url: Secret::new(&db.url),
            db_max_connections: 2,
            db_statement_timeout_ms: 10_000,
            db_lock_timeout_ms: 3_000,
            db_idle_in_transaction_timeout_ms: 30_000,
        },
        partner_id,
        amount: amount.into(),
        currency: currency.into(),
    }
}

#[tokio::test]
async fn simulate_payment_verifies_through_the_engine_and_earns_one_commission() {
    let db = TestDatabase::new().await;
    let partner = create_partner(&db.pool, "Demo Partner", Some("0.025")).await;
    demo::simulate_payment(simulate(&db, partner, "100.00", "ngn"))
        .await
        .unwrap();
    let (status, amount, seq): (String, String, i64) = sqlx::query_as(
        "SELECT p.status::text, money_text(c.amount, c.currency), partner_last_seq(pa.id)
           FROM payments p JOIN commissions c ON c.payment_id = p.id JOIN partners pa ON pa.id = p.partner_id
          WHERE p.partner_id = $1",
    )
    .bind(partner)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        (status.as_str(), amount.as_str(), seq),
        ("verified", "2.50", 1)
    );
}

#[tokio::test]
async fn simulate_payment_refuses_bad_input_and_writes_nothing() {
    let db = TestDatabase::new().await;
    let partner = create_partner(&db.pool, "Demo Partner", None).await;
    for (partner_id, amount, currency) in [
        (partner + 1, "100.00", "NGN"),
        (partner, "1e3", "NGN"),
        (partner, "-5", "NGN"),
        (partner, "0", "NGN"),
        (partner, "1.001", "NGN"),
        (partner, "100.00", "XXX"),
    ] {
        let result = demo::simulate_payment(simulate(&db, partner_id, amount, currency)).await;
        assert!(
            result.is_err(),
            "{partner_id} {amount} {currency} was accepted"
        );
    }
    let payments: i64 = sqlx::query_scalar("SELECT count(*) FROM payments")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(payments, 0);
}

/// The demo's payout, as a socket on the partner's room sees it: below the
/// minimum it refuses and writes nothing; above it, a payout created, sent
/// and paid, each step its own event, and the ledger still audits clean.
#[tokio::test]
async fn simulate_payout_creates_sends_and_pays_the_partners_balance() {
    use commissions::config::SimulatePayoutConfig;

    let app = crate::helpers::spawn_app().await;
    let partner = create_partner(&app.db.pool, "Demo Partner", None).await;
    sqlx::query("SELECT set_partner_hold_days($1, 0)")
        .bind(partner)
        .execute(&app.db.pool)
        .await
        .unwrap();
    let (mut ws, _) = crate::realtime::open(
        app.address,
        &format!("token={}", crate::realtime::partner_token(partner)),
    )
    .await;
    let payout = || SimulatePayoutConfig {
        database: simulate(&app.db, partner, "0", "NGN").database,
        partner_id: partner,
        currency: "ngn".into(),
        pause_secs: 0,
    };
    // 2.00 NGN earned: below the 50.00 minimum.
    demo::simulate_payment(simulate(&app.db, partner, "100.00", "NGN"))
        .await
        .unwrap();
    let refused = demo::simulate_payout(payout())
        .await
        .unwrap_err()
        .to_string();
    assert!(refused.contains("below the minimum"), "{refused}");
    demo::simulate_payment(simulate(&app.db, partner, "5000.00", "NGN"))
        .await
        .unwrap();
    demo::simulate_payout(payout()).await.unwrap();

    let (state, amount, reference): (String, String, String) = sqlx::query_as(
        "SELECT state, money_text(amount, currency), provider_reference FROM payouts WHERE partner_id = $1",
    )
    .bind(partner)
    .fetch_one(&app.db.pool)
    .await
    .unwrap();
    assert_eq!((state.as_str(), amount.as_str()), ("paid", "102.00"));
    assert!(reference.starts_with("DEMO-"));
    let events = crate::realtime::events(&mut ws, 7).await;
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        [
            "commission.created",
            "commission.approved",
            "commission.created",
            "commission.approved",
            "payout.created",
            "payout.sent",
            "payout.paid"
        ]
    );
    assert_eq!(events[6]["data"]["totals"]["NGN"]["paid"], "102.00");
    let audit: i64 = sqlx::query_scalar("SELECT count(*) FROM commission_audit")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(audit, 0);
}
