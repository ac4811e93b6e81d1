//! No lock that one open transaction holds against everyone: the engine
//! publishes at COMMIT (sql/03_commission_engine.sql), so a DBA's open
//! `BEGIN; SELECT verify_payment(..)` holds only its own payment's row, and
//! transactions over several partners cannot deadlock with single ones.
//! The admin cursor needs no sequence, so no CACHE setting can reorder it.

use futures::future::join_all;
use std::collections::HashSet;

use crate::{
    helpers::{create_partner, create_payment, spawn_app, TestDatabase},
    realtime::{admin_token, events, open, partner_token, seqs},
};

/// A session like a DBA's psql, with a short lock_timeout: anything that
/// waits on a lock for a second fails instead of queueing.
async fn impatient(db: &TestDatabase) -> tokio_postgres::Client {
    let client = db.connect().await;
    client
        .batch_execute("SET lock_timeout = '1s'")
        .await
        .unwrap();
    client
}

#[tokio::test]
async fn an_open_verification_holds_up_no_other_verification_or_refund() {
    let app = spawn_app().await;
    let acme = create_partner(&app.db.pool, "Acme", None).await;
    let globex = create_partner(&app.db.pool, "Globex", None).await;
    let held = create_payment(&app.db.pool, "100.00", "NGN", Some(acme)).await;
    let refundable = create_payment(&app.db.pool, "50.00", "NGN", Some(acme)).await;
    app.verify(refundable).await;
    let (mut acme_ws, _) = open(app.address, &format!("token={}", partner_token(acme))).await;

    // The DBA's transaction: verified, not committed.
    let mut dba = app.db.connect().await;
    let open_tx = dba.transaction().await.unwrap();
    open_tx
        .execute("SELECT verify_payment($1)", &[&held])
        .await
        .unwrap();

    // Everyone else: other partners, the same partner's other payments, a
    // refund, a webhook and the REST API, all under lock_timeout = 1s.
    let mut others = Vec::new();
    for partner in [acme, globex, acme, globex] {
        others.push(create_payment(&app.db.pool, "10.00", "NGN", Some(partner)).await);
    }
    let sessions = join_all(others.iter().map(|&payment| {
        let db = &app.db;
        async move {
            let client = impatient(db).await;
            client
                .execute("SELECT verify_payment($1)", &[&payment])
                .await
                .map(|_| ())
        }
    }))
    .await;
    for result in sessions {
        result.expect("commits while the DBA's transaction is open");
    }
    impatient(&app.db)
        .await
        .execute("SELECT refund_payment($1, 5.00)", &[&refundable])
        .await
        .expect("a refund commits too");
    let rest = create_payment(&app.db.pool, "20.00", "NGN", Some(acme)).await;
    app.verify(rest).await;
    let ready = app.http.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200, "the pool is not drained");

    // The open transaction's event is not out yet, and the others' are.
    let before = events(&mut acme_ws, 4).await;
    assert_eq!(seqs(&before), [2, 3, 4, 5]);
    open_tx.commit().await.unwrap();
    let after = events(&mut acme_ws, 1).await;
    assert_eq!(seqs(&after), [6]);
    assert_eq!(after[0]["data"]["payment_id"], held);
    assert_eq!(app.count("SELECT count(*) FROM commission_audit").await, 0);
}

#[tokio::test]
async fn transactions_over_several_partners_never_deadlock_with_single_ones() {
    let app = spawn_app().await;
    let mut partners = Vec::new();
    for name in ["A", "B", "C"] {
        partners.push(create_partner(&app.db.pool, name, None).await);
    }
    const ROUNDS: usize = 40;
    let mut payments = Vec::new();
    for _ in 0..ROUNDS * 4 {
        let mut round = Vec::new();
        for &p in &partners {
            round.push(create_payment(&app.db.pool, "10.00", "NGN", Some(p)).await);
        }
        payments.push(round);
    }
    let mut batches = payments.into_iter();
    let workers = (0..4).map(|worker| {
        let rounds: Vec<Vec<i64>> = batches.by_ref().take(ROUNDS).collect();
        let db = &app.db;
        async move {
            let mut client = db.connect().await;
            for (i, round) in rounds.iter().enumerate() {
                let tx = client.transaction().await.unwrap();
                // Workers 0 and 1 verify all three partners in one transaction,
                // in opposite orders; workers 2 and 3 one partner each time.
                let picked: Vec<i64> = match worker {
                    0 => round.clone(),
                    1 => round.iter().rev().copied().collect(),
                    _ => vec![round[i % round.len()]],
                };
                for payment in &picked {
                    tx.execute("SELECT verify_payment($1)", &[payment])
                        .await
                        .expect("verify");
                }
                tx.commit().await.expect("commits without a deadlock");
            }
        }
    });
    join_all(workers).await;
    let expected = (ROUNDS * 3 * 2 + ROUNDS * 2) as i64;
    assert_eq!(
        app.count("SELECT count(*) FROM commission_events").await,
        expected
    );
    assert_eq!(app.count("SELECT count(*) FROM commission_audit").await, 0);
}

#[tokio::test]
async fn admin_resume_is_gapless_with_concurrent_writers_and_cache_20_on_every_sequence() {
    let app = spawn_app().await;
    let client = app.db.connect().await;
    let sequences = client
        .query(
            "SELECT format('%I.%I', schemaname, sequencename) FROM pg_sequences",
            &[],
        )
        .await
        .unwrap();
    assert!(!sequences.is_empty());
    for row in sequences {
        let name: String = row.get(0);
        client
            .batch_execute(&format!("ALTER SEQUENCE {name} CACHE 20"))
            .await
            .unwrap();
    }
    let mut partners = Vec::new();
    for name in ["A", "B", "C", "D"] {
        partners.push(create_partner(&app.db.pool, name, None).await);
    }
    let query = format!("token={}", admin_token());
    let (mut live, _) = open(app.address, &query).await;

    const PER_WRITER: usize = 30;
    let writers = partners.iter().map(|&partner| {
        let db = &app.db;
        async move {
            // Each writer its own session, so each caches its own block of ids.
            let client = db.connect().await;
            for _ in 0..PER_WRITER {
                client
                    .execute(
                        "INSERT INTO payments (amount, currency, partner_id, status) VALUES (10, 'NGN', $1, 'verified')",
                        &[&partner],
                    )
                    .await
                    .unwrap();
            }
        }
    });
    // A second admin resumes from the middle while the writers run.
    let resumer = async {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let at: i64 = sqlx::query_scalar("SELECT position FROM event_log_head")
            .fetch_one(&app.db.pool)
            .await
            .unwrap();
        (
            at,
            open(app.address, &format!("{query}&since={at}")).await.0,
        )
    };
    let (_, (since, mut resumed)) = tokio::join!(join_all(writers), resumer);
    let total = partners.len() * PER_WRITER;

    let got = events(&mut live, total).await;
    let positions: Vec<i64> = got
        .iter()
        .map(|e| e["position"].as_i64().unwrap())
        .collect();
    assert_eq!(
        positions,
        (1..=total as i64).collect::<Vec<_>>(),
        "live: gapless, in order"
    );
    let rest = events(&mut resumed, total - since as usize).await;
    let positions: Vec<i64> = rest
        .iter()
        .map(|e| e["position"].as_i64().unwrap())
        .collect();
    assert_eq!(
        positions,
        (since + 1..=total as i64).collect::<Vec<_>>(),
        "resumed: gapless, no duplicate"
    );
    // Per partner too: each partner's seqs 1..=30 once.
    for &partner in &partners {
        let mine: HashSet<i64> = got
            .iter()
            .filter(|e| e["partner_id"] == partner)
            .map(|e| e["seq"].as_i64().unwrap())
            .collect();
        assert_eq!(mine, (1..=PER_WRITER as i64).collect());
    }
    assert_eq!(app.count("SELECT count(*) FROM commission_audit").await, 0);
}

/// `apply_webhook_event` as the service calls it, from a plain session.
const REFUND: &str = "SELECT outcome FROM apply_webhook_event('stripe', $1, 'charge.refunded', '{}', 'refund_cumulative', $2, $3, NULL, NULL, NULL, NULL, now())";
const VERIFY: &str = "SELECT outcome FROM apply_webhook_event('stripe', $1, 'payment_intent.succeeded', '{}', 'verify', $2, 10000, 'usd', $3, NULL, NULL, now())";

#[tokio::test]
async fn an_operator_verification_and_a_webhook_on_the_same_payment_take_turns() {
    let app = spawn_app().await;
    let partner = create_partner(&app.db.pool, "Acme", None).await;
    let payment: i64 = sqlx::query_scalar(
        "INSERT INTO payments (amount, currency, partner_id, provider, provider_reference) VALUES (100, 'USD', $1, 'stripe', 'pi_X') RETURNING id",
    )
    .bind(partner)
    .fetch_one(&app.db.pool)
    .await
    .unwrap();
    // A refund parked until the payment is verified.
    let parked: String = app
        .db
        .connect()
        .await
        .query_one(REFUND, &[&"evt_r0", &"pi_X", &1000i64])
        .await
        .unwrap()
        .get(0);
    assert_eq!(parked, "parked");

    // The operator holds the payment's row, then verifies; meanwhile a new
    // refund webhook for the same payment arrives and waits for it.
    let mut operator = app.db.connect().await;
    let tx = operator.transaction().await.unwrap();
    tx.execute(
        "SELECT id FROM payments WHERE id = $1 FOR UPDATE",
        &[&payment],
    )
    .await
    .unwrap();
    let webhook = {
        let db = app.db.connect().await;
        tokio::spawn(async move {
            db.query_one(REFUND, &[&"evt_r1", &"pi_X", &3000i64])
                .await
                .map(|row| row.get::<_, String>(0))
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    tx.execute("SELECT verify_payment($1)", &[&payment])
        .await
        .expect("no deadlock with the waiting webhook");
    tx.commit().await.unwrap();
    assert_eq!(
        webhook
            .await
            .unwrap()
            .expect("the webhook applies after it"),
        "refunded"
    );
    assert_eq!(
        app.count("SELECT count(*) FROM payments WHERE refunded_amount = 30")
            .await,
        1
    );
    assert_eq!(app.count("SELECT count(*) FROM commission_audit").await, 0);
}

#[tokio::test]
async fn reapplying_parked_events_while_their_payment_arrives_does_not_deadlock() {
    let app = spawn_app().await;
    let partner = create_partner(&app.db.pool, "Acme", None).await;
    let client = app.db.connect().await;
    for (i, reference) in ["pi_A", "pi_B"].iter().enumerate() {
        let id = format!("evt_r{i}");
        client
            .query_one(REFUND, &[&id, reference, &3000i64])
            .await
            .unwrap();
    }
    // The payment's first webhook holds the reference (as apply_webhook_event
    // does) while an operator re-applies everything parked.
    let mut webhook = app.db.connect().await;
    let tx = webhook.transaction().await.unwrap();
    tx.execute("SELECT provider_reference_lock('stripe', 'pi_A')", &[])
        .await
        .unwrap();
    let reapply = {
        let db = app.db.connect().await;
        tokio::spawn(async move {
            db.query("SELECT outcome FROM reapply_parked_events()", &[])
                .await
                .map(|rows| {
                    rows.iter()
                        .map(|r| r.get::<_, String>(0))
                        .collect::<Vec<_>>()
                })
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let verified: String = tx
        .query_one(VERIFY, &[&"evt_v", &"pi_A", &partner])
        .await
        .expect("no deadlock with the re-apply")
        .get(0);
    assert_eq!(verified, "verified");
    tx.commit().await.unwrap();
    let outcomes = reapply.await.unwrap().expect("the re-apply finishes");
    // pi_A's refund went with its payment; pi_B's has no payment yet.
    assert_eq!(outcomes.len(), 2, "{outcomes:?}");
    assert!(outcomes.contains(&"parked".to_owned()), "{outcomes:?}");
    assert_eq!(
        app.count("SELECT count(*) FROM payments WHERE refunded_amount = 30")
            .await,
        1
    );
    assert_eq!(app.count("SELECT count(*) FROM commission_audit").await, 0);
}

#[tokio::test]
async fn a_request_behind_a_locked_row_gets_a_503_to_retry_instead_of_queueing() {
    let db = TestDatabase::new().await;
    let app = crate::helpers::spawn_app_with(db, |config| {
        config.database.db_lock_timeout_ms = 300;
    })
    .await;
    // The API pool's sessions carry the limits (the same call the node makes).
    let mut config = crate::helpers::serve_config(&app.db.service_url);
    config.database.db_lock_timeout_ms = 300;
    let pool =
        commissions::db::connect_pool(&app.db.service_url, 1, config.database.session_limits())
            .await
            .unwrap();
    let limits: (String, String, String) = sqlx::query_as(
        "SELECT current_setting('lock_timeout'), current_setting('statement_timeout'), current_setting('idle_in_transaction_session_timeout')",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(limits, ("300ms".into(), "10s".into(), "30s".into()));

    let partner = create_partner(&app.db.pool, "Acme", None).await;
    let payment = create_payment(&app.db.pool, "100.00", "NGN", Some(partner)).await;
    let mut dba = app.db.connect().await;
    let open = dba.transaction().await.unwrap();
    open.execute(
        "SELECT 1 FROM payments WHERE id = $1 FOR UPDATE",
        &[&payment],
    )
    .await
    .unwrap();
    let response = app
        .post_as(
            &admin_token(),
            &format!("/api/payments/{payment}/verify"),
            &serde_json::json!({}),
        )
        .await;
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "1");
    open.commit().await.unwrap();
    app.verify(payment).await;
    assert_eq!(app.count("SELECT count(*) FROM commission_audit").await, 0);
}
