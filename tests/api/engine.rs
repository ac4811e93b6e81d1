//! The commission engine, exercised through SQL exactly as a DBA or the API
//! would call it: `verify_payment`, `refund_payment`, plain UPDATEs.

use std::{collections::HashSet, time::Duration};

use rust_decimal::Decimal;
use serde_json::Value;
use tokio::time::timeout;

use crate::helpers::{create_partner, create_payment, sequential_scans, TestDatabase};

fn dec(s: &str) -> Decimal {
    s.parse().unwrap()
}

/// The next event after `after` (a position), read from the log as the
/// relay reads it: a NOTIFY is only a wake-up (any login may send one), so
/// wait for one while the log has nothing new.
async fn next_event(
    db: &TestDatabase,
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<tokio_postgres::Notification>,
    after: &mut i64,
) -> Value {
    loop {
        let event: Option<String> = sqlx::query_scalar(
            "SELECT commission_event_json(e)::text FROM commission_events e
              WHERE position > $1 ORDER BY position LIMIT 1",
        )
        .bind(*after)
        .fetch_optional(&db.pool)
        .await
        .unwrap();
        if let Some(event) = event {
            let event: Value = serde_json::from_str(&event).unwrap();
            *after = event["position"].as_i64().unwrap();
            return event;
        }
        timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("a wake-up within 10 s")
            .expect("listener alive");
    }
}

async fn head(db: &TestDatabase) -> i64 {
    count(db, "SELECT position FROM event_log_head").await
}

async fn count(db: &TestDatabase, sql: &str) -> i64 {
    sqlx::query_scalar::<_, i64>(sql)
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn verifying_a_payment_earns_one_commission_and_notifies_on_commit() {
    let db = TestDatabase::new().await;
    let partner = create_partner(&db.pool, "Acme", None).await;
    let payment = create_payment(&db.pool, "100.00", "NGN", Some(partner)).await;
    let (_listener, mut rx) = db
        .listen(&[
            &format!("commissions_partner_{partner}"),
            "commissions_admin",
        ])
        .await;

    // Verify inside an open transaction: nothing may be delivered yet.
    let mut conn = db.connect().await;
    let tx = conn.transaction().await.unwrap();
    tx.execute("SELECT verify_payment($1)", &[&payment])
        .await
        .unwrap();

    // A marker NOTIFY sent from another session after the verification
    // arrives first: the verification's own NOTIFY is held back until COMMIT.
    sqlx::query("SELECT pg_notify('commissions_admin', 'marker')")
        .execute(&db.pool)
        .await
        .unwrap();
    let marker = timeout(Duration::from_secs(10), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        marker.payload(),
        "marker",
        "nothing is delivered before COMMIT"
    );

    tx.commit().await.unwrap();
    let mut seen = Vec::new();
    for _ in 0..2 {
        let n = timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("a wake-up within 10 s")
            .unwrap();
        seen.push((n.channel().to_owned(), n.payload().to_owned()));
    }
    let channels: HashSet<_> = seen.iter().map(|(c, _)| c.clone()).collect();
    assert_eq!(
        channels,
        HashSet::from([
            format!("commissions_partner_{partner}"),
            "commissions_admin".to_owned()
        ])
    );
    assert!(
        seen.iter().all(|(_, payload)| payload.len() <= 32),
        "the NOTIFYs are wake-ups: {seen:?}"
    );
    let event = &next_event(&db, &mut rx, &mut 0).await;
    assert_eq!(event["type"], "commission.created");
    assert_eq!(event["partner_id"], partner);
    assert_eq!(event["seq"], 1);
    assert_eq!(event["data"]["amount"], "2.00");
    assert_eq!(event["data"]["currency"], "NGN");
    assert_eq!(event["data"]["payment_amount"], "100.00");
    assert_eq!(event["data"]["totals"]["NGN"]["earned"], "2.00");
    assert_eq!(event["data"]["totals"]["NGN"]["pending"], "2.00");
    assert_eq!(event["data"]["totals"]["NGN"]["paid"], "0.00");
    assert!(event["occurred_at"].is_string());

    let amounts: Vec<Decimal> =
        sqlx::query_scalar("SELECT amount FROM commissions WHERE partner_id = $1")
            .bind(partner)
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(amounts, vec![dec("2.00")]);
    let (earned, pending): (Decimal, Decimal) = sqlx::query_as(
        "SELECT earned, pending FROM partner_balances WHERE partner_id = $1 AND currency = 'NGN'",
    )
    .bind(partner)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!((earned, pending), (dec("2.00"), dec("2.00")));
    let seqs: Vec<i64> =
        sqlx::query_scalar("SELECT seq FROM commission_events WHERE partner_id = $1")
            .bind(partner)
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(seqs, vec![1]);
    assert_eq!(
        count(
            &db,
            &format!("SELECT count(*) FROM notifications WHERE partner_id = {partner}")
        )
        .await,
        1
    );
}

#[tokio::test]
async fn a_rolled_back_verification_leaves_nothing_and_notifies_nobody() {
    let db = TestDatabase::new().await;
    let partner = create_partner(&db.pool, "Acme", None).await;
    let rolled_back = create_payment(&db.pool, "100.00", "NGN", Some(partner)).await;
    let committed = create_payment(&db.pool, "10.00", "NGN", Some(partner)).await;
    let (_listener, mut rx) = db.listen(&["commissions_admin"]).await;

    let mut conn = db.connect().await;
    let tx = conn.transaction().await.unwrap();
    tx.execute("SELECT verify_payment($1)", &[&rolled_back])
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    sqlx::query("SELECT verify_payment($1)")
        .bind(committed)
        .execute(&db.pool)
        .await
        .unwrap();

    // The first notification to arrive is the committed one, with seq 1: the
    // rolled-back one was never sent and consumed no sequence number.
    let event = next_event(&db, &mut rx, &mut 0).await;
    assert_eq!(event["data"]["payment_id"], committed);
    assert_eq!(event["seq"], 1);
    assert_eq!(count(&db, "SELECT count(*) FROM commissions").await, 1);
    assert_eq!(
        count(&db, "SELECT count(*) FROM commission_events").await,
        1
    );
    assert_eq!(count(&db, "SELECT count(*) FROM notifications").await, 1);
    let status: String = sqlx::query_scalar("SELECT status::text FROM payments WHERE id = $1")
        .bind(rolled_back)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(status, "pending");
}

#[tokio::test]
async fn commissions_round_to_the_currency_half_away_from_zero() {
    let db = TestDatabase::new().await;
    // (payment amount, currency, partner rate, expected commission as on the wire), computed by hand.
    let cases = [
        ("100.00", "NGN", "0.02", Some("2.00")),
        ("0.25", "NGN", "0.02", Some("0.01")), // 0.005 is a tie: away from zero
        ("0.74", "NGN", "0.02", Some("0.01")), // 0.0148
        ("0.75", "NGN", "0.02", Some("0.02")), // 0.015 tie
        ("0.24", "NGN", "0.02", None),         // 0.0048 rounds to zero: nothing earned
        ("33.33", "NGN", "0.015", Some("0.50")), // 0.49995
        ("1234", "JPY", "0.02", Some("25")),   // 24.68
        ("25", "JPY", "0.02", Some("1")),      // 0.5 tie
        ("74", "JPY", "0.02", Some("1")),      // 1.48
        ("24", "JPY", "0.02", None),           // 0.48
        ("10.050", "KWD", "0.02", Some("0.201")),
        ("0.025", "KWD", "0.02", Some("0.001")), // 0.0005 tie
        ("0.024", "KWD", "0.02", None),          // 0.00048
        ("1.00", "USD", "0.125", Some("0.13")),  // 0.125 tie
        ("999999.99", "USD", "1", Some("999999.99")),
        ("500.00", "EUR", "0", None), // a 0% partner earns nothing
    ];
    for (amount, currency, rate, expected) in cases {
        let partner = create_partner(&db.pool, "Rounding", Some(rate)).await;
        let payment = create_payment(&db.pool, amount, currency, Some(partner)).await;
        sqlx::query("SELECT verify_payment($1)")
            .bind(payment)
            .execute(&db.pool)
            .await
            .unwrap();
        let earned: Option<Decimal> = sqlx::query_scalar(
            "SELECT amount FROM commissions WHERE payment_id = $1 AND kind = 'earned'",
        )
        .bind(payment)
        .fetch_optional(&db.pool)
        .await
        .unwrap();
        let wire: Option<String> = sqlx::query_scalar(
            "SELECT data->>'amount' FROM commission_events WHERE partner_id = $1",
        )
        .bind(partner)
        .fetch_optional(&db.pool)
        .await
        .unwrap();
        let case = format!("{rate} of {amount} {currency}");
        assert_eq!(earned, expected.map(dec), "{case}");
        assert_eq!(wire.as_deref(), expected, "{case}");
        let last_seq: i64 = sqlx::query_scalar("SELECT partner_last_seq($1)")
            .bind(partner)
            .fetch_one(&db.pool)
            .await
            .unwrap();
        assert_eq!(
            last_seq,
            i64::from(expected.is_some()),
            "{case}: an event only when something is earned"
        );
    }
    assert_eq!(count(&db, "SELECT count(*) FROM commission_audit").await, 0);
}

#[tokio::test]
async fn provider_minor_units_convert_exactly() {
    let db = TestDatabase::new().await;
    for (minor, units, expected) in [
        (250_000_i64, 2_i16, "2500.00"),
        (25, 0, "25"),
        (201, 3, "0.201"),
    ] {
        let major: String = sqlx::query_scalar("SELECT money_from_minor_units($1, $2)::text")
            .bind(minor)
            .bind(units)
            .fetch_one(&db.pool)
            .await
            .unwrap();
        assert_eq!(major, expected, "{minor} with {units} decimals");
    }
}

#[tokio::test]
async fn a_payment_without_partner_earns_and_notifies_nothing() {
    let db = TestDatabase::new().await;
    let payment = create_payment(&db.pool, "100.00", "NGN", None).await;
    sqlx::query("SELECT verify_payment($1)")
        .bind(payment)
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query("SELECT refund_payment($1)")
        .bind(payment)
        .execute(&db.pool)
        .await
        .unwrap();
    assert_eq!(count(&db, "SELECT count(*) FROM commissions").await, 0);
    assert_eq!(
        count(&db, "SELECT count(*) FROM commission_events").await,
        0
    );
    assert_eq!(count(&db, "SELECT count(*) FROM notifications").await, 0);
}

#[tokio::test]
async fn fifty_connections_verifying_one_payment_count_it_once() {
    let db = TestDatabase::new().await;
    let partner = create_partner(&db.pool, "Acme", None).await;
    let payment = create_payment(&db.pool, "100.00", "NGN", Some(partner)).await;

    let mut tasks = Vec::new();
    for _ in 0..50 {
        let url = db.url.clone();
        tasks.push(tokio::spawn(async move {
            let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(connection);
            client
                .execute("SELECT verify_payment($1)", &[&payment])
                .await
                .map_err(|e| {
                    e.as_db_error()
                        .map(|d| (d.code().code().to_owned(), d.message().to_owned()))
                        .expect("a database error")
                })
        }));
    }
    let mut ok = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => ok += 1,
            Err((code, message)) => {
                assert_eq!(code, "CM001");
                assert_eq!(
                    message,
                    format!("illegal status change for payment {payment}: it is already verified")
                );
            }
        }
    }
    assert_eq!(ok, 1, "exactly one verification succeeds");
    assert_eq!(count(&db, "SELECT count(*) FROM commissions").await, 1);
    assert_eq!(
        count(&db, "SELECT count(*) FROM commission_events").await,
        1
    );
    let earned: Decimal =
        sqlx::query_scalar("SELECT earned FROM partner_balances WHERE partner_id = $1")
            .bind(partner)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(earned, dec("2.00"));
    assert_eq!(count(&db, "SELECT count(*) FROM commission_audit").await, 0);
}

#[tokio::test]
async fn fifty_payments_verified_concurrently_get_seqs_one_to_fifty() {
    let db = TestDatabase::new().await;
    let partner = create_partner(&db.pool, "Acme", None).await;
    let mut payments = Vec::new();
    for i in 1..=50 {
        payments.push(create_payment(&db.pool, &format!("{i}.37"), "NGN", Some(partner)).await);
    }
    let (_listener, mut rx) = db
        .listen(&[&format!("commissions_partner_{partner}")])
        .await;

    let mut tasks = Vec::new();
    for payment in payments {
        let url = db.url.clone();
        tasks.push(tokio::spawn(async move {
            let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(connection);
            client
                .execute("SELECT verify_payment($1)", &[&payment])
                .await
                .unwrap();
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }

    let seqs: Vec<i64> =
        sqlx::query_scalar("SELECT seq FROM commission_events WHERE partner_id = $1 ORDER BY seq")
            .bind(partner)
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(seqs, (1..=50).collect::<Vec<i64>>());

    // The log is in commit order, which is seq order, and totals grow with it.
    let mut expected_total = Decimal::ZERO;
    let mut after = 0;
    for want in 1..=50 {
        let event = next_event(&db, &mut rx, &mut after).await;
        assert_eq!(event["seq"], want);
        expected_total += dec(event["data"]["amount"].as_str().unwrap());
        assert_eq!(
            event["data"]["totals"]["NGN"]["earned"],
            expected_total.to_string()
        );
    }

    let (ledger_sum, earned): (Decimal, Decimal) = sqlx::query_as(
        "SELECT (SELECT sum(amount) FROM commissions WHERE partner_id = $1), \
                (SELECT earned FROM partner_balances WHERE partner_id = $1)",
    )
    .bind(partner)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    // Each i.37 NGN at 2% rounds on its own; the balance is the sum of those, not 2% of the sum.
    let by_hand: Decimal = (1..=50)
        .map(|i| {
            (dec(&format!("{i}.37")) * dec("0.02"))
                .round_dp_with_strategy(2, rust_decimal::RoundingStrategy::MidpointAwayFromZero)
        })
        .sum();
    assert_eq!(ledger_sum, by_hand);
    assert_eq!(earned, by_hand);
    assert_eq!(count(&db, "SELECT count(*) FROM commission_audit").await, 0);
    let positions: Vec<i64> =
        sqlx::query_scalar("SELECT position FROM commission_events ORDER BY seq")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "global positions follow commit order"
    );
}

#[tokio::test]
async fn a_refund_reverses_the_commission() {
    let db = TestDatabase::new().await;
    let partner = create_partner(&db.pool, "Acme", None).await;
    let payment = create_payment(&db.pool, "100.00", "NGN", Some(partner)).await;
    sqlx::query("SELECT verify_payment($1)")
        .bind(payment)
        .execute(&db.pool)
        .await
        .unwrap();
    // A rate change after verification does not change what the refund reverses.
    sqlx::query("UPDATE partners SET commission_rate = 0.5 WHERE id = $1")
        .bind(partner)
        .execute(&db.pool)
        .await
        .unwrap();
    let (_listener, mut rx) = db
        .listen(&[&format!("commissions_partner_{partner}")])
        .await;
    let mut after = head(&db).await;

    // A plain UPDATE, as a DBA might write it, runs the engine too.
    sqlx::query("UPDATE payments SET status = 'refunded' WHERE id = $1")
        .bind(payment)
        .execute(&db.pool)
        .await
        .unwrap();

    let event = next_event(&db, &mut rx, &mut after).await;
    assert_eq!(event["type"], "commission.reversed");
    assert_eq!(event["seq"], 2);
    assert_eq!(event["data"]["amount"], "2.00");
    assert_eq!(event["data"]["totals"]["NGN"]["earned"], "2.00");
    assert_eq!(event["data"]["totals"]["NGN"]["reversed"], "2.00");
    assert_eq!(event["data"]["totals"]["NGN"]["pending"], "0.00");

    let kinds: Vec<(String, Decimal)> = sqlx::query_as(
        "SELECT kind::text, amount FROM commissions WHERE payment_id = $1 ORDER BY id",
    )
    .bind(payment)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        kinds,
        vec![
            ("earned".into(), dec("2.00")),
            ("reversed".into(), dec("2.00"))
        ]
    );
    assert_eq!(count(&db, "SELECT count(*) FROM notifications").await, 2);
    assert_eq!(count(&db, "SELECT count(*) FROM commission_audit").await, 0);
}

async fn sql_error(db: &TestDatabase, sql: &str, id: i64) -> (String, String) {
    let client = db.connect().await;
    let err = client
        .execute(sql, &[&id])
        .await
        .expect_err("must be rejected");
    let db_err = err.as_db_error().expect("a database error");
    (db_err.code().code().to_owned(), db_err.message().to_owned())
}

#[tokio::test]
async fn illegal_transitions_are_rejected_with_a_clear_message_and_change_nothing() {
    let db = TestDatabase::new().await;
    let partner = create_partner(&db.pool, "Acme", None).await;
    let pending = create_payment(&db.pool, "100.00", "NGN", Some(partner)).await;
    let failed = create_payment(&db.pool, "100.00", "NGN", Some(partner)).await;
    sqlx::query("SELECT fail_payment($1)")
        .bind(failed)
        .execute(&db.pool)
        .await
        .unwrap();

    let (code, message) = sql_error(&db, "SELECT refund_payment($1)", pending).await;
    assert_eq!(code, "CM001");
    assert_eq!(message, format!("illegal status change for payment {pending}: pending -> refunded (allowed: pending -> verified, pending -> failed, verified -> refunded)"));

    let (code, message) = sql_error(
        &db,
        "UPDATE payments SET status = 'verified' WHERE id = $1",
        failed,
    )
    .await;
    assert_eq!(code, "CM001");
    assert!(
        message.contains(&format!("payment {failed}: failed -> verified")),
        "{message}"
    );

    let (code, message) = sql_error(&db, "SELECT verify_payment($1)", 987_654).await;
    assert_eq!(code, "CM004");
    assert_eq!(message, "payment 987654 does not exist");

    let statuses: Vec<String> = sqlx::query_scalar("SELECT status::text FROM payments ORDER BY id")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(statuses, vec!["pending", "failed"]);
    assert_eq!(count(&db, "SELECT count(*) FROM commissions").await, 0);
    assert_eq!(
        count(&db, "SELECT count(*) FROM commission_events").await,
        0
    );
}

#[tokio::test]
async fn the_ledger_and_totals_cannot_be_edited_by_hand() {
    let db = TestDatabase::new().await;
    let partner = create_partner(&db.pool, "Acme", None).await;
    let payment = create_payment(&db.pool, "100.00", "NGN", Some(partner)).await;
    sqlx::query("SELECT verify_payment($1)")
        .bind(payment)
        .execute(&db.pool)
        .await
        .unwrap();

    for sql in [
        "UPDATE commissions SET amount = 99 WHERE partner_id = $1",
        "DELETE FROM commissions WHERE partner_id = $1",
        "UPDATE commission_events SET seq = 7 WHERE partner_id = $1",
        "DELETE FROM commission_events WHERE partner_id = $1",
        "UPDATE partner_balances SET earned = 1000 WHERE partner_id = $1",
        "DELETE FROM partner_balances WHERE partner_id = $1",
        "UPDATE partner_streams SET last_seq = 0 WHERE partner_id = $1",
        "UPDATE event_log_head SET position = 0 WHERE $1::bigint > 0",
        "INSERT INTO commissions (payment_id, partner_id, kind, amount, currency, rate, payment_amount, reason, minor_units) \
         SELECT id, partner_id, 'earned', 1, currency, 0.02, amount, 'verified', minor_units FROM payments WHERE partner_id = $1",
    ] {
        let (code, message) = sql_error(&db, sql, partner).await;
        assert!(["CM003", "23505"].contains(&code.as_str()), "{sql}: {code} {message}");
    }
    let client = db.connect().await;
    let err = client
        .batch_execute("TRUNCATE commissions CASCADE")
        .await
        .expect_err("truncate refused");
    assert!(err.as_db_error().unwrap().message().contains("append-only"));
    for table in ["partner_balances", "partner_streams", "event_log_head"] {
        let err = client
            .batch_execute(&format!("TRUNCATE {table}"))
            .await
            .expect_err(table);
        assert_eq!(err.as_db_error().unwrap().code().code(), "CM003", "{table}");
    }

    // A verified payment's amount, partner and reference are settled.
    let (code, message) = sql_error(
        &db,
        "UPDATE payments SET provider_reference = 'edited' WHERE id = $1",
        payment,
    )
    .await;
    assert_eq!(code, "CM001", "{message}");

    let (code, message) =
        sql_error(&db, "UPDATE payments SET amount = 1 WHERE id = $1", payment).await;
    assert_eq!(code, "CM001");
    assert!(message.contains("can no longer change"), "{message}");

    assert_eq!(count(&db, "SELECT count(*) FROM commissions").await, 1);
    assert_eq!(count(&db, "SELECT count(*) FROM commission_audit").await, 0);
    // Renaming a partner or changing its rate is still an ordinary update.
    sqlx::query("UPDATE partners SET name = 'Acme Ltd', commission_rate = 0.03 WHERE id = $1")
        .bind(partner)
        .execute(&db.pool)
        .await
        .unwrap();
}

#[tokio::test]
async fn bad_values_are_refused_in_sql_with_messages_a_dba_understands() {
    let db = TestDatabase::new().await;
    let client = db.connect().await;
    let cases = [
        (
            "INSERT INTO payments (amount, currency) VALUES (1.005, 'NGN')",
            "payment amount 1.005 has more decimals than NGN allows (2)",
        ),
        (
            "INSERT INTO payments (amount, currency) VALUES (1.5, 'JPY')",
            "payment amount 1.5 has more decimals than JPY allows (0)",
        ),
        (
            "INSERT INTO payments (amount, currency) VALUES (10, 'XYZ')",
            "unknown currency \"XYZ\"",
        ),
        (
            "INSERT INTO payments (amount, currency) VALUES (-5, 'NGN')",
            "payments_amount_positive",
        ),
        (
            "INSERT INTO payments (amount, currency) VALUES (0, 'NGN')",
            "payments_amount_positive",
        ),
        (
            "INSERT INTO payments (amount, currency, status) VALUES (5, 'NGN', 'refunded')",
            "cannot be created as refunded",
        ),
        (
            "INSERT INTO partners (name, commission_rate) VALUES ('Greedy', 1.5)",
            "partners_commission_rate_range",
        ),
        (
            "INSERT INTO partners (name, commission_rate) VALUES ('Negative', -0.01)",
            "partners_commission_rate_range",
        ),
        (
            "INSERT INTO partners (name) VALUES ('   ')",
            "partners_name_not_blank",
        ),
    ];
    for (sql, expected) in cases {
        let err = client.batch_execute(sql).await.expect_err(sql);
        let db_err = err.as_db_error().expect("a database error");
        let text = format!("{} {}", db_err.message(), db_err.constraint().unwrap_or(""));
        assert!(text.contains(expected), "{sql}: got {text:?}");
    }
    assert_eq!(count(&db, "SELECT count(*) FROM payments").await, 0);
    assert_eq!(count(&db, "SELECT count(*) FROM partners").await, 0);
}

#[tokio::test]
async fn the_readme_dba_queries_work() {
    let db = TestDatabase::new().await;
    let partner = create_partner(&db.pool, "Acme", None).await;
    for amount in ["100.00", "250.00"] {
        let payment = create_payment(&db.pool, amount, "NGN", Some(partner)).await;
        sqlx::query("SELECT verify_payment($1)")
            .bind(payment)
            .execute(&db.pool)
            .await
            .unwrap();
    }
    let client = db.connect().await;
    // The same statements docs/dba.md shows.
    let rows = client
        .query("SELECT commission_id, kind, amount, currency, payment_id FROM commission_ledger WHERE partner_id = $1 ORDER BY commission_id DESC", &[&partner])
        .await
        .unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].get::<_, Decimal>("amount"), dec("5.00"));
    let summary = client
        .query_one("SELECT earned::text, pending::text, last_seq FROM partner_summary WHERE partner_id = $1", &[&partner])
        .await
        .unwrap();
    assert_eq!(summary.get::<_, String>(0), "7.0000");
    assert_eq!(summary.get::<_, i64>(2), 2);
    assert!(client
        .query("SELECT * FROM commission_audit", &[])
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn a_notify_is_a_short_wake_up_and_the_log_holds_the_event() {
    let db = TestDatabase::new().await;
    let partner = create_partner(&db.pool, "Acme", None).await;
    let (_listener, mut rx) = db.listen(&["commissions_admin"]).await;
    let payment = create_payment(&db.pool, "100.00", "NGN", Some(partner)).await;
    sqlx::query("SELECT verify_payment($1)")
        .bind(payment)
        .execute(&db.pool)
        .await
        .unwrap();
    let live = timeout(Duration::from_secs(10), rx.recv())
        .await
        .unwrap()
        .unwrap();
    // Any login may NOTIFY, so the relay never reads a payload: it is short
    // and carries no event.
    assert!(live.payload().len() <= 32, "{}", live.payload());
    assert!(serde_json::from_str::<Value>(live.payload())
        .map(|v| v.get("data").is_none())
        .unwrap_or(true));
    let live: String =
        sqlx::query_scalar("SELECT commission_event_json(e)::text FROM commission_events e")
            .fetch_one(&db.pool)
            .await
            .unwrap();

    // Another session in another time zone replays the same bytes.
    sqlx::query("SET TimeZone = 'Asia/Tokyo'")
        .execute(&db.pool)
        .await
        .unwrap();
    let log = commissions::events::EventLog::new(db.pool.clone());
    let replayed = log.partner_since(partner, 0, 100).await.unwrap();
    assert_eq!(replayed.len(), 1);
    assert_eq!(replayed[0].json, live);
    assert_eq!(replayed[0].seq, 1);
    assert_eq!(log.all_since(0, 100).await.unwrap(), replayed);
    assert_eq!(log.partner_last_seq(partner).await.unwrap(), Some(1));
    assert_eq!(log.last_position().await.unwrap(), replayed[0].position);
    let event: Value = serde_json::from_str(&live).unwrap();
    assert!(event["occurred_at"].as_str().unwrap().ends_with('Z'));
}

/// Each path of the engine, as its SQL, for payments named by `tag`.
fn engine_paths(tag: &str, partner: i64) -> Vec<(&'static str, String)> {
    let event = |id: &str, action: &str, amount: i64, dispute: &str| {
        format!(
            "SELECT outcome FROM apply_webhook_event('stripe', '{tag}-{id}', 'test', '{{}}', '{action}',
                    '{tag}-charge', {amount}, 'NGN', {partner}, {dispute}, now(), NULL)"
        )
    };
    let by_reference = |reference: &str| {
        format!("SELECT id FROM payments WHERE provider = 'stripe' AND provider_reference = '{tag}-{reference}'")
    };
    vec![
        (
            "a charge's event",
            event("charge", "verify", 100_000, "NULL, NULL"),
        ),
        (
            "a cumulative refund",
            event("refund-1", "refund_cumulative", 20_000, "NULL, NULL"),
        ),
        (
            "a refund",
            event("refund-2", "refund", 10_000, "NULL, NULL"),
        ),
        (
            "a dispute opened",
            event(
                "dispute-1",
                "dispute",
                30_000,
                &format!("'dp-{tag}', 'open'"),
            ),
        ),
        (
            "a dispute won",
            event(
                "dispute-2",
                "dispute",
                30_000,
                &format!("'dp-{tag}', 'won'"),
            ),
        ),
        (
            "verify_payment",
            format!(
                "SELECT verify_payment(id) FROM ({}) p",
                by_reference("manual")
            ),
        ),
        (
            "verify_payments",
            format!(
                "SELECT * FROM verify_payments(ARRAY({} UNION ALL {}))",
                by_reference("batch-1"),
                by_reference("batch-2")
            ),
        ),
        (
            "refund_payment",
            format!(
                "SELECT refund_payment(id, 5) FROM ({}) p",
                by_reference("manual")
            ),
        ),
    ]
}

/// PL/pgSQL plans each statement once per session and may keep that plan
/// for the session's life: a plan made while the ledger was small must not
/// read a grown table whole (two did: a webhook batch's lock, see
/// webhook_batches, and verify_payments' lock and update). Every path of
/// the engine, planned on small tables, then run once more after the tables
/// have grown, on the same session.
#[tokio::test]
async fn no_engine_path_reads_a_grown_table_whole_on_a_session_that_planned_it_small() {
    engine_paths_after_growth(None).await;
}

/// The same with a hold of 0 days: every verification approves at once
/// (approve_commissions, inside the engine).
#[tokio::test]
async fn no_engine_path_reads_a_grown_table_whole_with_approval_at_verification() {
    engine_paths_after_growth(Some(0)).await;
}

async fn engine_paths_after_growth(hold_days: Option<i32>) {
    let db = TestDatabase::new().await;
    let partner = create_partner(&db.pool, "Acme", None).await;
    if let Some(days) = hold_days {
        sqlx::query("SELECT set_partner_hold_days($1, $2)")
            .bind(partner)
            .bind(days)
            .execute(&db.pool)
            .await
            .unwrap();
    }
    let session = db.connect().await;
    let pending = |tag: &str| {
        format!(
            "INSERT INTO payments (amount, currency, partner_id, provider, provider_reference, status)
             SELECT 1000, 'NGN', {partner}, 'stripe', '{tag}-' || r, 'pending'
               FROM unnest(ARRAY['manual', 'batch-1', 'batch-2']) r"
        )
    };
    // More rounds than PL/pgSQL tries custom plans for (five).
    for round in 0..8 {
        let tag = format!("small-{round}");
        session.batch_execute(&pending(&tag)).await.unwrap();
        for (_, sql) in engine_paths(&tag, partner) {
            session.batch_execute(&sql).await.unwrap();
        }
    }
    // Grown, by a DBA: 10,000 verified payments (each earned), 10,000
    // pending, and a lost dispute on every fourth verified one.
    session
        .batch_execute(&format!(
            "INSERT INTO payments (amount, currency, partner_id, provider, provider_reference, status)
             SELECT 100, 'NGN', {partner}, 'stripe', 'grown-' || g, 'verified' FROM generate_series(1, 10000) g;
             INSERT INTO payments (amount, currency, partner_id, provider, provider_reference, status)
             SELECT 100, 'NGN', {partner}, 'stripe', 'waiting-' || g, 'pending' FROM generate_series(1, 10000) g;
             INSERT INTO disputes (provider, dispute_id, payment_id, amount, state)
             SELECT 'stripe', 'grown-' || id, id, 1, 'lost' FROM payments
              WHERE provider = 'stripe' AND provider_reference LIKE 'grown-%' AND id % 4 = 0;
             {}",
            pending("grown")
        ))
        .await
        .unwrap();
    let grown = [
        "payments",
        "commissions",
        "webhook_events",
        "commission_events",
        "notifications",
        "disputes",
    ];
    let mut whole_reads = Vec::new();
    for (path, sql) in engine_paths("grown", partner) {
        session.batch_execute("BEGIN").await.unwrap();
        let before = sequential_scans(&session, &grown).await;
        session.batch_execute(&sql).await.unwrap();
        let after = sequential_scans(&session, &grown).await;
        session.batch_execute("COMMIT").await.unwrap();
        for (table, n) in after {
            if n > before.get(&table).copied().unwrap_or(0) {
                whole_reads.push(format!("{path}: {table}"));
            }
        }
    }
    assert!(
        whole_reads.is_empty(),
        "sequential scans of grown tables: {whole_reads:?}"
    );
    assert_eq!(count(&db, "SELECT count(*) FROM commission_audit").await, 0);
    // And the paths did their work: the four payments earned (and, with a
    // hold of 0 days, were approved at once), the manual one was refunded.
    let entries = |kind: &str| {
        format!(
            "SELECT count(*) FROM commissions c JOIN payments p ON p.id = c.payment_id
              WHERE p.provider_reference IN ('grown-charge', 'grown-manual', 'grown-batch-1', 'grown-batch-2')
                AND c.kind = '{kind}'"
        )
    };
    assert_eq!(count(&db, &entries("earned")).await, 4);
    let approved_at_once = if hold_days == Some(0) { 4 } else { 0 };
    assert_eq!(count(&db, &entries("approved")).await, approved_at_once);
    assert_eq!(
        count(&db, "SELECT count(*) FROM payments WHERE provider_reference = 'grown-manual' AND refunded_amount = 5").await,
        1
    );
}
