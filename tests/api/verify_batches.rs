//! Admin verifications that arrive together are applied in one transaction
//! (src/http/verifications.rs, `verify_payments` in
//! sql/06_operator_functions.sql): each request gets the answer it would
//! have had alone, a bad one never costs its neighbours theirs, and an
//! Idempotency-Key claim is marked in the batch's transaction.

use futures::future::join_all;
use serde_json::{json, Value};

use crate::{
    callers::{admin_token, json, problem},
    helpers::{create_partner, create_payment, spawn_app, spawn_app_with, until, TestApp},
    realtime::{events, open, partner_token, seqs},
};

#[tokio::test]
async fn verify_payments_verifies_the_pending_ones_in_one_statement_and_skips_the_rest() {
    let app = spawn_app().await;
    let pool = &app.db.pool;
    let acme = create_partner(pool, "Acme", None).await;
    let globex = create_partner(pool, "Globex", Some("0.10")).await;
    let a1 = create_payment(pool, "100.00", "NGN", Some(acme)).await;
    let a2 = create_payment(pool, "50.00", "NGN", Some(acme)).await;
    let g1 = create_payment(pool, "30.00", "NGN", Some(globex)).await;
    let nobody = create_payment(pool, "10.00", "NGN", None).await;
    let done = create_payment(pool, "20.00", "NGN", Some(acme)).await;
    let failed = create_payment(pool, "20.00", "NGN", Some(acme)).await;
    sqlx::query("SELECT verify_payment($1), fail_payment($2)")
        .bind(done)
        .bind(failed)
        .execute(pool)
        .await
        .unwrap();

    let asked = [a2, g1, a1, a2, done, failed, 999_999, nobody];
    let rows: Vec<(i32, i64, bool, Option<i64>)> = sqlx::query_as(
        "SELECT ordinal, payment_id, verified, commission_id FROM verify_payments($1)",
    )
    .bind(&asked[..])
    .fetch_all(pool)
    .await
    .unwrap();
    let verified: Vec<bool> = rows.iter().map(|r| r.2).collect();
    assert_eq!(
        verified,
        [true, true, true, false, false, false, false, true],
        "the pending ones, each once: {rows:?}"
    );
    assert_eq!(
        rows.iter().map(|r| (r.0, r.1)).collect::<Vec<_>>(),
        asked
            .iter()
            .enumerate()
            .map(|(i, id)| (i as i32 + 1, *id))
            .collect::<Vec<_>>(),
        "one row per element, in order"
    );
    assert!(rows[7].3.is_none(), "no partner, no commission");
    let amounts: Vec<String> = sqlx::query_scalar(
        "SELECT round(amount, minor_units)::text FROM commissions WHERE id = ANY($1) ORDER BY payment_id",
    )
    .bind(rows[..3].iter().map(|r| r.3.unwrap()).collect::<Vec<_>>())
    .fetch_all(pool)
    .await
    .unwrap();
    assert_eq!(amounts, ["2.00", "1.00", "3.00"], "a1, a2 at 2%, g1 at 10%");

    assert_eq!(
        app.count(&format!(
            "SELECT count(DISTINCT xact_id::text) FROM commissions WHERE payment_id IN ({a1}, {a2}, {g1})"
        ))
        .await,
        1,
        "one statement, one transaction"
    );
    assert_eq!(
        app.count(&format!(
            "SELECT count(*) FROM payments WHERE id = {failed} AND status = 'failed'"
        ))
        .await,
        1,
        "a failed payment stays failed"
    );
    let acme_seqs: Vec<i64> =
        sqlx::query_scalar("SELECT seq FROM commission_events WHERE partner_id = $1 ORDER BY seq")
            .bind(acme)
            .fetch_all(pool)
            .await
            .unwrap();
    assert_eq!(acme_seqs, [1, 2, 3], "done, then a1 and a2: gapless");
    assert_eq!(app.count("SELECT count(*) FROM commission_audit").await, 0);
}

async fn verify(app: &TestApp, payment: i64, key: Option<&str>) -> reqwest::Response {
    let mut request = app
        .http
        .post(app.url(&format!("/api/payments/{payment}/verify")))
        .bearer_auth(admin_token())
        .json(&json!({}));
    if let Some(key) = key {
        request = request.header("Idempotency-Key", key);
    }
    request.send().await.expect("request")
}

/// Sends the verifications of `requests` while the node's only slot is held
/// by a verification a DBA's row lock blocks, so that they queue and leave as
/// one batch; returns their responses, in order.
async fn as_one_batch(
    app: &TestApp,
    blocked: i64,
    requests: &[(i64, Option<&str>)],
) -> Vec<reqwest::Response> {
    let dba = app.db.connect().await;
    dba.batch_execute(&format!(
        "BEGIN; SELECT id FROM payments WHERE id = {blocked} FOR UPDATE;"
    ))
    .await
    .unwrap();
    let the_rest = async {
        until("the blocked verification waiting for its row", || async {
            let waiting = app
                .count(
                    "SELECT count(*) FROM pg_stat_activity
                      WHERE datname = current_database() AND wait_event_type = 'Lock'",
                )
                .await;
            (waiting == 1).then_some(())
        })
        .await;
        let sends = join_all(requests.iter().map(|(id, key)| verify(app, *id, *key)));
        let queued_then_released = async {
            until("every verification queued for the next batch", || async {
                (app.gauge("verifications_waiting").await == requests.len() as i64).then_some(())
            })
            .await;
            dba.batch_execute("COMMIT").await.unwrap();
        };
        tokio::join!(sends, queued_then_released).0
    };
    let (first, responses) = tokio::join!(verify(app, blocked, None), the_rest);
    assert_eq!(json(first, 200).await["payment"]["status"], "verified");
    responses
}

fn commission_amount(body: &Value) -> &str {
    body["commission"]["amount"].as_str().unwrap()
}

#[tokio::test]
async fn verifications_that_arrive_together_commit_together_and_each_gets_its_own_answer() {
    let app = spawn_app_with(crate::helpers::TestDatabase::new().await, |c| {
        c.batches.verify_batches_in_flight = 1;
    })
    .await;
    let pool = &app.db.pool;
    let acme = create_partner(pool, "Acme", None).await;
    let globex = create_partner(pool, "Globex", None).await;
    let (mut ws, _) = open(app.address, &format!("token={}", partner_token(acme))).await;
    let payment =
        |partner: i64, amount: &'static str| create_payment(pool, amount, "NGN", Some(partner));
    let blocked = payment(acme, "10.00").await;
    let keyed = payment(acme, "100.00").await;
    let twice = payment(acme, "200.00").await;
    let other = payment(globex, "300.00").await;
    let done = payment(globex, "50.00").await;
    app.verify(done).await;

    // Round 1: good verifications and ones that fail alone, in one batch.
    let round1 = [
        (keyed, Some("key-keyed")),
        (twice, None),
        (other, None),
        (twice, None),
        (done, None),
        (987_654, None),
    ];
    let mut responses = as_one_batch(&app, blocked, &round1).await.into_iter();
    let first = json(responses.next().unwrap(), 200).await;
    assert_eq!(commission_amount(&first), "2.00");
    let (a, b) = (responses.next().unwrap(), responses.next().unwrap());
    let third = json(b, 200).await;
    assert_eq!(commission_amount(&third), "6.00");
    let d = responses.next().unwrap();
    // The two verifications of one payment: one verified it, the other is a 409.
    let mut statuses = [a.status().as_u16(), d.status().as_u16()];
    statuses.sort();
    assert_eq!(statuses, [200, 409]);
    problem(responses.next().unwrap(), 409, "conflict").await;
    problem(responses.next().unwrap(), 404, "not-found").await;
    assert_eq!(
        app.count(&format!(
            "SELECT count(DISTINCT xact_id::text) FROM commissions WHERE payment_id IN ({keyed}, {twice}, {other})"
        ))
        .await,
        1,
        "the round's verifications committed in one transaction"
    );

    // The keyed request's claim was marked in that transaction; its retry
    // replays the answer.
    let replay = verify(&app, keyed, Some("key-keyed")).await;
    assert_eq!(replay.headers().get("idempotent-replayed").unwrap(), "true");
    assert_eq!(json(replay, 200).await, first);
    assert_eq!(
        app.count("SELECT count(*) FROM idempotency_keys WHERE key = 'key-keyed' AND applied_at IS NOT NULL AND state = 'completed'").await,
        1
    );

    // Round 2: a DBA's new rule that one verification breaks. The batch
    // fails as a whole; each is applied again alone, so only that one fails.
    sqlx::query(
        "ALTER TABLE payments ADD CONSTRAINT no_verified_1337 CHECK (status <> 'verified' OR amount <> 13.37)",
    )
    .execute(pool)
    .await
    .unwrap();
    let blocked2 = payment(acme, "11.00").await;
    let good1 = payment(acme, "400.00").await;
    let bad = payment(acme, "13.37").await;
    let good2 = payment(globex, "500.00").await;
    let round2 = [(good1, None), (bad, Some("key-bad")), (good2, None)];
    let mut responses = as_one_batch(&app, blocked2, &round2).await.into_iter();
    assert_eq!(
        commission_amount(&json(responses.next().unwrap(), 200).await),
        "8.00"
    );
    problem(responses.next().unwrap(), 422, "invalid-input").await;
    assert_eq!(
        commission_amount(&json(responses.next().unwrap(), 200).await),
        "10.00"
    );
    assert_eq!(
        app.count(&format!(
            "SELECT count(*) FROM payments WHERE id = {bad} AND status = 'pending'"
        ))
        .await,
        1,
        "the bad one changed nothing"
    );
    assert!(
        app.metrics()
            .await
            .contains("verify_batches_failed_total 1"),
        "the failed batch is counted"
    );

    // Every commission of acme's reached its socket once, in seq order.
    let expected = app
        .count(&format!(
            "SELECT last_seq FROM partner_streams WHERE partner_id = {acme}"
        ))
        .await;
    assert_eq!(expected, 5, "blocked, keyed, twice; blocked2, good1");
    let got = events(&mut ws, expected as usize).await;
    assert_eq!(seqs(&got), (1..=expected).collect::<Vec<_>>());
    assert_eq!(app.count("SELECT count(*) FROM commission_audit").await, 0);
}
