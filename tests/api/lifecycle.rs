//! The commission lifecycle end to end: hold periods with the time passed as
//! an argument, approval runs (two at once, and the nodes' own timers),
//! payouts above and below the minimum, a failed payout paid by the next
//! run, clawback after a paid payout netted from the next one. Every
//! scenario ends as the refund tests do: the audit view is empty, and the
//! partner's socket and an admin socket saw every event once, in order.

use std::time::Duration;

use serde_json::{json, Value};

use crate::{
    callers::{json, problem},
    helpers::{create_payment, spawn_app, spawn_app_with, spawn_node, TestApp},
    realtime::{admin_token, open, partner_token, Ws},
    streams::check_streams,
};

struct Program {
    app: TestApp,
    partner: i64,
    partner_ws: Ws,
    admin_ws: Ws,
}

/// A partner created through the API (rate 0.1, this hold period), with a
/// partner socket and an admin socket open.
async fn program(hold_days: Value) -> Program {
    program_on(spawn_app().await, hold_days).await
}

async fn program_on(app: TestApp, hold_days: Value) -> Program {
    let created = json(
        app.post_as(
            &admin_token(),
            "/api/partners",
            &json!({"name": "Acme", "commission_rate": "0.1", "hold_days": hold_days}),
        )
        .await,
        201,
    )
    .await;
    let partner = created["id"].as_i64().unwrap();
    let (partner_ws, _) = open(app.address, &format!("token={}", partner_token(partner))).await;
    let (admin_ws, _) = open(app.address, &format!("token={}", admin_token())).await;
    Program {
        app,
        partner,
        partner_ws,
        admin_ws,
    }
}

impl Program {
    /// A payment of `amount` NGN for the partner, verified through the API.
    async fn paid(&self, amount: &str) -> i64 {
        let payment = create_payment(&self.app.db.pool, amount, "NGN", Some(self.partner)).await;
        self.app.verify(payment).await;
        payment
    }

    /// `POST /api/payments/{id}/refund` as an admin, expecting 200.
    async fn refund(&self, payment: i64, body: Value) -> Value {
        let path = format!("/api/payments/{payment}/refund");
        json(self.app.post_as(&admin_token(), &path, &body).await, 200).await
    }

    /// `PATCH /api/partners/{id}` with `hold_days`; returns the partner.
    async fn set_hold_days(&self, hold_days: Value) -> Value {
        let response = self
            .app
            .http
            .patch(self.app.url(&format!("/api/partners/{}", self.partner)))
            .bearer_auth(admin_token())
            .json(&json!({ "hold_days": hold_days }))
            .send()
            .await
            .unwrap();
        json(response, 200).await
    }

    async fn totals(&self) -> Value {
        let partner = json(
            self.app
                .get_as(&admin_token(), &format!("/api/partners/{}", self.partner))
                .await,
            200,
        )
        .await;
        partner["totals"]["NGN"].clone()
    }

    /// `approve_due_commissions(now() + days)`, as a DBA or pg_cron calls it:
    /// (commissions approved, batches).
    async fn approve_in(&self, days: f64) -> (i64, i64) {
        sqlx::query_as(
            "SELECT coalesce(sum(commissions), 0)::bigint, count(*) FROM approve_due_commissions(now() + make_interval(secs => $1))",
        )
        .bind(days * 86_400.0)
        .fetch_one(&self.app.db.pool)
        .await
        .unwrap()
    }

    async fn run_payouts(&self) -> Vec<Value> {
        let r = json(
            self.app
                .post_as(&admin_token(), "/api/payouts/run", &json!({}))
                .await,
            200,
        )
        .await;
        r["payouts"].as_array().unwrap().clone()
    }

    async fn mark(&self, payout: &Value, state: &str, body: Value) -> reqwest::Response {
        self.app
            .post_as(
                &admin_token(),
                &format!("/api/payouts/{}/{state}", payout["id"]),
                &body,
            )
            .await
    }

    async fn check_streams(mut self) -> Vec<Value> {
        check_streams(
            &self.app,
            self.partner,
            &mut self.partner_ws,
            &mut self.admin_ws,
        )
        .await
    }
}

fn types(events: &[Value]) -> Vec<&str> {
    events.iter().map(|e| e["type"].as_str().unwrap()).collect()
}

#[tokio::test]
async fn a_hold_of_zero_days_approves_each_commission_at_verification() {
    let p = program(json!(0)).await;
    p.paid("250.00").await;
    assert_eq!(
        p.totals().await,
        json!({"earned": "25.00", "pending": "0.00", "approved": "25.00", "balance": "25.00",
               "in_payout": "0.00", "paid": "0.00", "reversed": "0.00", "held": "0.00"})
    );
    // Nothing is left for an approval run.
    assert_eq!(p.approve_in(365.0).await, (0, 0));
    let got = p.check_streams().await;
    assert_eq!(types(&got), ["commission.created", "commission.approved"]);
    assert_eq!(got[1]["data"]["amount"], "25.00");
    assert_eq!(got[1]["data"]["commissions"], 1);
    assert_eq!(got[1]["data"]["totals"]["NGN"]["approved"], "25.00");
}

#[tokio::test]
async fn a_hold_of_n_days_approves_once_the_time_given_passes_it() {
    let p = program(json!(null)).await;
    // Seven days for this partner (the program default is 30).
    let changed = p.set_hold_days(json!(7)).await;
    assert_eq!(
        (
            changed["hold_days"].as_i64(),
            changed["effective_hold_days"].as_i64()
        ),
        (Some(7), Some(7))
    );
    let first = p.paid("100.00").await;
    p.paid("300.00").await;
    // A partial refund in the hold period lowers what becomes payable.
    p.refund(first, json!({"amount": "50.00"})).await;
    assert_eq!(p.approve_in(6.9).await, (0, 0), "still in the hold period");
    assert_eq!(
        p.app
            .count("SELECT count(*) FROM commissions_due_for_approval")
            .await,
        0
    );
    assert_eq!(p.totals().await["pending"], "35.00");
    assert_eq!(p.approve_in(7.01).await, (2, 1), "both in one batch");
    assert_eq!(p.approve_in(7.01).await, (0, 0), "approved once");
    let totals = p.totals().await;
    assert_eq!(
        (
            totals["pending"].as_str(),
            totals["approved"].as_str(),
            totals["balance"].as_str()
        ),
        (Some("0.00"), Some("35.00"), Some("35.00"))
    );
    // Back to the default: 30 days.
    let reset = p.set_hold_days(json!(null)).await;
    assert_eq!(
        (
            reset["hold_days"].as_i64(),
            reset["effective_hold_days"].as_i64()
        ),
        (None, Some(30))
    );
    p.paid("100.00").await;
    assert_eq!(p.approve_in(29.9).await, (0, 0));
    assert_eq!(p.approve_in(30.01).await, (1, 1));
    // The ledger: the approved entries carry what was left of each commission.
    let approved: Vec<String> = sqlx::query_scalar(
        "SELECT round(amount, 2)::text FROM commissions WHERE kind = 'approved' ORDER BY payment_id",
    )
    .fetch_all(&p.app.db.pool)
    .await
    .unwrap();
    assert_eq!(approved, ["5.00", "30.00", "10.00"]);
    let got = p.check_streams().await;
    assert_eq!(
        types(&got),
        [
            "commission.created",
            "commission.created",
            "commission.reversed",
            "commission.approved",
            "commission.created",
            "commission.approved"
        ]
    );
    assert_eq!(got[3]["data"]["commissions"], 2);
    assert_eq!(got[3]["data"]["amount"], "35.00");
}

#[tokio::test]
async fn approval_runs_called_at_once_approve_each_commission_once() {
    let p = program(json!(null)).await;
    let other = json(
        p.app
            .post_as(&admin_token(), "/api/partners", &json!({"name": "Other"}))
            .await,
        201,
    )
    .await["id"]
        .as_i64()
        .unwrap();
    for i in 0..60 {
        let partner = if i % 3 == 0 { other } else { p.partner };
        let payment = create_payment(&p.app.db.pool, "100.00", "NGN", Some(partner)).await;
        sqlx::query("SELECT verify_payment($1)")
            .bind(payment)
            .execute(&p.app.db.pool)
            .await
            .unwrap();
    }
    // Four callers at once, as four nodes' timers or a DBA might.
    let runs = futures::future::join_all((0..4).map(|_| p.approve_in(31.0))).await;
    let approved: i64 = runs.iter().map(|(n, _)| n).sum();
    assert_eq!(approved, 60, "{runs:?}");
    assert_eq!(
        p.app
            .count("SELECT count(*) FROM commissions WHERE kind = 'approved'")
            .await,
        60
    );
    assert_eq!(
        p.app
            .count("SELECT count(DISTINCT payment_id) FROM commissions WHERE kind = 'approved'")
            .await,
        60
    );
    // One event per partner per run, not one per commission.
    assert_eq!(
        p.app
            .count("SELECT count(*) FROM commission_events WHERE type = 'commission.approved'")
            .await,
        runs.iter().map(|(_, batches)| batches).sum::<i64>()
    );
    let got = p.check_streams().await;
    let approvals: Vec<&Value> = got
        .iter()
        .filter(|e| e["type"] == "commission.approved")
        .collect();
    let counted: i64 = approvals
        .iter()
        .map(|e| e["data"]["commissions"].as_i64().unwrap())
        .sum();
    assert_eq!(counted, 40);
    assert_eq!(
        approvals.last().unwrap()["data"]["totals"]["NGN"]["approved"],
        "400.00"
    );
}

#[tokio::test]
async fn two_nodes_timers_approve_each_commission_once() {
    let db = crate::helpers::TestDatabase::new().await;
    let fast = |c: &mut commissions::config::ServeConfig| c.approval_interval_secs = 1;
    let app = spawn_app_with(db, fast).await;
    let _second = spawn_node(&app.db.service_url, fast).await;
    let p = program_on(app, json!(30)).await;
    for _ in 0..20 {
        p.paid("100.00").await;
    }
    // Both nodes' timers run every second; a hold of 0 makes all 20 due now.
    p.set_hold_days(json!(0)).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while p.totals().await["approved"] != "200.00" {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the timers approved everything"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        p.app
            .count("SELECT count(*) FROM commissions WHERE kind = 'approved'")
            .await,
        20
    );
    let got = p.check_streams().await;
    let counted: i64 = got
        .iter()
        .filter(|e| e["type"] == "commission.approved")
        .map(|e| e["data"]["commissions"].as_i64().unwrap())
        .sum();
    assert_eq!(counted, 20);
}

#[tokio::test]
async fn a_payout_waits_below_the_minimum_then_is_sent_and_paid_once() {
    let p = program(json!(0)).await;
    p.paid("400.00").await; // 40.00: below NGN's minimum of 50
    assert!(p.run_payouts().await.is_empty());
    p.paid("200.00").await; // 60.00 in all
    problem(
        p.app
            .post_as(&partner_token(p.partner), "/api/payouts/run", &json!({}))
            .await,
        403,
        "forbidden",
    )
    .await;
    let payouts = p.run_payouts().await;
    assert_eq!(payouts.len(), 1);
    let payout = &payouts[0];
    assert_eq!(
        (
            payout["amount"].as_str(),
            payout["state"].as_str(),
            payout["items"].as_i64()
        ),
        (Some("60.00"), Some("pending"), Some(2))
    );
    assert!(p.run_payouts().await.is_empty(), "nothing is paid twice");
    let totals = p.totals().await;
    assert_eq!(
        (totals["balance"].as_str(), totals["in_payout"].as_str()),
        (Some("0.00"), Some("60.00"))
    );
    // Paid before it was sent, then without a reference: refused, nothing changes.
    problem(
        p.mark(payout, "paid", json!({"provider_reference": "TRF_1"}))
            .await,
        409,
        "conflict",
    )
    .await;
    let sent = json(p.mark(payout, "sent", json!({})).await, 200).await;
    assert_eq!(sent["state"], "sent");
    problem(
        p.mark(payout, "paid", json!({})).await,
        422,
        "invalid-input",
    )
    .await;
    let paid = json(
        p.mark(payout, "paid", json!({"provider_reference": "TRF_1"}))
            .await,
        200,
    )
    .await;
    assert_eq!(
        (paid["state"].as_str(), paid["provider_reference"].as_str()),
        (Some("paid"), Some("TRF_1"))
    );
    problem(
        p.mark(payout, "paid", json!({"provider_reference": "TRF_1"}))
            .await,
        409,
        "conflict",
    )
    .await;
    problem(
        p.mark(payout, "failed", json!({"reason": "late"})).await,
        409,
        "conflict",
    )
    .await;
    problem(
        p.app
            .post_as(&admin_token(), "/api/payouts/999/sent", &json!({}))
            .await,
        404,
        "not-found",
    )
    .await;
    // The partner lists its own payouts; another partner may not.
    let own = json(
        p.app
            .get_as(
                &partner_token(p.partner),
                &format!("/api/partners/{}/payouts?state=paid", p.partner),
            )
            .await,
        200,
    )
    .await;
    assert_eq!(own["items"].as_array().unwrap().len(), 1);
    problem(
        p.app
            .get_as(
                &partner_token(p.partner + 1),
                &format!("/api/partners/{}/payouts", p.partner),
            )
            .await,
        403,
        "forbidden",
    )
    .await;
    problem(
        p.app
            .get_as(&partner_token(p.partner), "/api/payouts")
            .await,
        403,
        "forbidden",
    )
    .await;
    let listed = json(
        p.app
            .get_as(
                &admin_token(),
                &format!(
                    "/api/payouts?partner_id={}&currency=NGN&state=pending",
                    p.partner
                ),
            )
            .await,
        200,
    )
    .await;
    assert!(listed["items"].as_array().unwrap().is_empty());
    problem(
        p.app
            .get_as(&admin_token(), "/api/payouts?state=lost")
            .await,
        422,
        "invalid-input",
    )
    .await;
    assert_eq!(
        p.totals().await,
        json!({"earned": "60.00", "pending": "0.00", "approved": "0.00", "balance": "0.00",
               "in_payout": "0.00", "paid": "60.00", "reversed": "0.00", "held": "0.00"})
    );
    let got = p.check_streams().await;
    assert_eq!(
        types(&got),
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
    assert_eq!(got[6]["data"]["provider_reference"], "TRF_1");
    assert_eq!(got[6]["data"]["totals"]["NGN"]["paid"], "60.00");
}

#[tokio::test]
async fn a_failed_payout_is_payable_again_and_the_next_run_pays_it() {
    let p = program(json!(0)).await;
    p.paid("700.00").await;
    let first = p.run_payouts().await.remove(0);
    json(
        p.mark(&first, "sent", json!({"provider_reference": "TRF_A"}))
            .await,
        200,
    )
    .await;
    problem(
        p.mark(&first, "failed", json!({"reason": ""})).await,
        422,
        "invalid-input",
    )
    .await;
    let failed = json(
        p.mark(&first, "failed", json!({"reason": "account_closed"}))
            .await,
        200,
    )
    .await;
    assert_eq!(
        (failed["state"].as_str(), failed["failure_reason"].as_str()),
        (Some("failed"), Some("account_closed"))
    );
    assert_eq!(p.totals().await["balance"], "70.00");
    problem(p.mark(&first, "sent", json!({})).await, 409, "conflict").await;
    let second = p.run_payouts().await.remove(0);
    assert_ne!(second["id"], first["id"]);
    assert_eq!(
        (second["amount"].as_str(), second["items"].as_i64()),
        (Some("70.00"), Some(1))
    );
    json(p.mark(&second, "sent", json!({})).await, 200).await;
    json(
        p.mark(&second, "paid", json!({"provider_reference": "TRF_B"}))
            .await,
        200,
    )
    .await;
    let totals = p.totals().await;
    assert_eq!(
        (
            totals["paid"].as_str(),
            totals["balance"].as_str(),
            totals["in_payout"].as_str()
        ),
        (Some("70.00"), Some("0.00"), Some("0.00"))
    );
    let got = p.check_streams().await;
    assert_eq!(
        types(&got),
        [
            "commission.created",
            "commission.approved",
            "payout.created",
            "payout.sent",
            "payout.failed",
            "payout.created",
            "payout.sent",
            "payout.paid"
        ]
    );
    assert_eq!(got[4]["data"]["totals"]["NGN"]["balance"], "70.00");
}

#[tokio::test]
async fn a_refund_after_a_paid_payout_is_clawed_back_from_the_next_payout() {
    let p = program(json!(0)).await;
    let first = p.paid("600.00").await; // 60.00
    let payout = p.run_payouts().await.remove(0);
    json(p.mark(&payout, "sent", json!({})).await, 200).await;
    json(
        p.mark(&payout, "paid", json!({"provider_reference": "TRF_1"}))
            .await,
        200,
    )
    .await;
    // The whole payment is refunded after its commission was paid out.
    p.refund(first, json!({})).await;
    let totals = p.totals().await;
    assert_eq!(
        (
            totals["approved"].as_str(),
            totals["balance"].as_str(),
            totals["paid"].as_str(),
            totals["reversed"].as_str()
        ),
        (Some("0.00"), Some("-60.00"), Some("60.00"), Some("60.00"))
    );
    assert!(
        p.run_payouts().await.is_empty(),
        "nothing is payable while it is owed back"
    );
    p.paid("600.00").await; // 60.00: the net is 0
    assert!(p.run_payouts().await.is_empty());
    p.paid("1000.00").await; // 100.00: the net is 100.00
    let next = p.run_payouts().await;
    assert_eq!(next.len(), 1);
    assert_eq!(
        (
            next[0]["amount"].as_str(),
            next[0]["approved_amount"].as_str(),
            next[0]["clawback_amount"].as_str(),
            next[0]["items"].as_i64()
        ),
        (Some("100.00"), Some("160.00"), Some("60.00"), Some(3))
    );
    assert_eq!(
        p.totals().await,
        json!({"earned": "220.00", "pending": "0.00", "approved": "0.00", "balance": "0.00",
               "in_payout": "100.00", "paid": "60.00", "reversed": "60.00", "held": "0.00"})
    );
    // The ledger only grew: the reversal is a new entry at stage paid.
    let stages: Vec<(String, String)> = sqlx::query_as(
        "SELECT kind::text, stage FROM commissions WHERE payment_id = $1 ORDER BY id",
    )
    .bind(first)
    .fetch_all(&p.app.db.pool)
    .await
    .unwrap();
    assert_eq!(
        stages,
        [
            ("earned".into(), "pending".into()),
            ("approved".into(), "approved".into()),
            ("reversed".into(), "paid".into())
        ]
    );
    let got = p.check_streams().await;
    assert_eq!(
        types(&got),
        [
            "commission.created",
            "commission.approved",
            "payout.created",
            "payout.sent",
            "payout.paid",
            "commission.reversed",
            "commission.created",
            "commission.approved",
            "commission.created",
            "commission.approved",
            "payout.created"
        ]
    );
    assert_eq!(got[5]["data"]["stage"], "paid");
    assert_eq!(got[5]["data"]["totals"]["NGN"]["balance"], "-60.00");
}

#[tokio::test]
async fn a_reversal_before_payout_lowers_the_approved_balance() {
    let p = program(json!(0)).await;
    let payment = p.paid("1000.00").await; // 100.00
    p.refund(payment, json!({"amount": "400.00"})).await;
    let totals = p.totals().await;
    assert_eq!(
        (
            totals["approved"].as_str(),
            totals["balance"].as_str(),
            totals["reversed"].as_str()
        ),
        (Some("60.00"), Some("60.00"), Some("40.00"))
    );
    let payout = p.run_payouts().await.remove(0);
    assert_eq!(
        (
            payout["amount"].as_str(),
            payout["clawback_amount"].as_str()
        ),
        (Some("60.00"), Some("0.00"))
    );
    let got = p.check_streams().await;
    assert_eq!(got[2]["data"]["stage"], "approved");
}

#[tokio::test]
async fn the_state_machines_hold_for_a_dba_in_psql() {
    let p = program(json!(0)).await;
    p.paid("600.00").await;
    let payout = p.run_payouts().await.remove(0);
    let id = payout["id"].as_i64().unwrap();
    let client = p.app.db.connect().await;
    for (sql, code) in [
        (format!("UPDATE payouts SET state = 'paid', provider_reference = 'x' WHERE id = {id}"), "CM006"),
        (format!("UPDATE payouts SET amount = 1, approved_amount = 1 WHERE id = {id}"), "CM003"),
        (format!("DELETE FROM payouts WHERE id = {id}"), "CM003"),
        (format!("DELETE FROM payout_items WHERE payout_id = {id}"), "CM003"),
        ("TRUNCATE payouts, payout_items".into(), "CM003"),
        (
            format!("INSERT INTO payouts (partner_id, currency, amount, approved_amount, clawback_amount, minor_units, as_of) VALUES ({}, 'NGN', 1, 1, 0, 2, now())", p.partner),
            "CM003",
        ),
        ("UPDATE commissions SET stage = 'pending' WHERE kind = 'approved'".into(), "CM003"),
        ("DELETE FROM commission_program".into(), "CM003"),
        ("SELECT approve_due_commissions(NULL)".into(), "CM002"),
        ("SELECT create_payouts(NULL)".into(), "CM002"),
        (format!("SELECT mark_payout_paid({id})"), "CM006"),
        // Review: its times are the engine's, and a missing state is an illegal change.
        (format!("UPDATE payouts SET sent_at = '2000-01-01', paid_at = '2001-01-01' WHERE id = {id}"), "CM003"),
        (format!("SELECT change_payout_state({id}, NULL, NULL, NULL)"), "CM006"),
        // Review: blank text is refused in words, not by a constraint's name.
        (format!("SELECT mark_payout_failed({id}, '   ')"), "CM002"),
        (format!("SELECT mark_payout_sent({id}, '')"), "CM002"),
    ] {
        let error = client.batch_execute(&sql).await.expect_err(&sql);
        assert_eq!(error.as_db_error().unwrap().code().code(), code, "{sql}: {error}");
    }
    // The DBA's own path works, and the operator sets the minimum.
    client
        .batch_execute(&format!(
            "SELECT mark_payout_sent({id}, 'TRF_9'); SELECT mark_payout_paid({id}); UPDATE currencies SET payout_minimum = 5 WHERE code = 'NGN'"
        ))
        .await
        .unwrap();
    p.paid("60.00").await; // 6.00, above the new minimum
    assert_eq!(p.run_payouts().await.len(), 1);
    let rows = client
        .query(
            "SELECT payout_id, item_amount::text FROM payouts_with_items ORDER BY payout_id",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 2);
    let payable = client
        .query_one(
            "SELECT in_payout::text, paid::text, payable_now FROM payable_balances WHERE partner_id = $1",
            &[&p.partner],
        )
        .await
        .unwrap();
    assert_eq!(payable.get::<_, String>(0), "6.0000");
    assert_eq!(payable.get::<_, String>(1), "60.0000");
    assert!(!payable.get::<_, bool>(2));
    p.check_streams().await;
}

#[tokio::test]
async fn the_openapi_document_describes_payouts_and_the_lifecycle_totals() {
    let app = spawn_app().await;
    let doc = json(
        app.http.get(app.url("/openapi.json")).send().await.unwrap(),
        200,
    )
    .await;
    for path in [
        "/api/payouts/run",
        "/api/payouts",
        "/api/partners/{id}/payouts",
        "/api/payouts/{id}/sent",
        "/api/payouts/{id}/paid",
        "/api/payouts/{id}/failed",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} is documented");
    }
    let totals = &doc["components"]["schemas"]["Totals"]["properties"];
    for field in [
        "pending",
        "approved",
        "balance",
        "in_payout",
        "paid",
        "reversed",
        "earned",
    ] {
        assert!(totals[field].is_object(), "Totals.{field} is documented");
    }
    assert!(doc["components"]["schemas"]["Payout"].is_object());
}

/// Review: a payout run whose time came before a refund committed paid the
/// refunded commission out (its reversal was written after `p_now`). A
/// payout now covers all of each locked payment's payable entries.
#[tokio::test]
async fn a_refund_written_after_the_payout_time_is_netted_not_left_out() {
    let db = crate::helpers::TestDatabase::new().await;
    let partner = crate::helpers::create_partner(&db.pool, "Acme", Some("0.1")).await;
    let client = db.connect().await;
    client
        .batch_execute(&format!(
            "SELECT set_partner_hold_days({partner}, 0);
             UPDATE currencies SET payout_minimum = 1 WHERE code = 'NGN';
             SELECT verify_payment(record_payment(1000, 'NGN', {partner}));
             SELECT verify_payment(record_payment(1000, 'NGN', {partner}));"
        ))
        .await
        .unwrap();
    let first: i64 = client
        .query_one("SELECT min(id) FROM payments", &[])
        .await
        .unwrap()
        .get(0);
    // The refund is written after the time the payout run is given.
    client
        .batch_execute(&format!(
            "SELECT pg_sleep(1.2); SELECT refund_payment({first});"
        ))
        .await
        .unwrap();
    let amount: String = client
        .query_one(
            "SELECT money_text(amount, currency) FROM create_payouts(now() - interval '0.5 second')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        amount, "100.00",
        "only the commission that was not refunded"
    );
    let audit: i64 = client
        .query_one("SELECT count(*) FROM commission_audit", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(audit, 0);
    let totals: String = client
        .query_one(&format!("SELECT partner_totals({partner})::text"), &[])
        .await
        .unwrap()
        .get(0);
    assert!(totals.contains(r#""approved": "0.00""#), "{totals}");
}
