//! Provider webhooks that arrive together are applied in one transaction
//! (src/db/webhook_batch.rs, `apply_webhook_events` in sql/07_webhooks.sql):
//! each event gets the outcome it would have had alone, one bad event never
//! costs its neighbours their answer, and what a failed event would have
//! written is not there.

use std::time::Duration;

use futures::future::join_all;
use serde_json::{json, Value};

use crate::{
    callers::{json, problem},
    helpers::{create_partner, sequential_scans, spawn_app_with, until, TestApp, TestDatabase},
    realtime::{events, open, partner_token, seqs},
};

/// One event as the service hands it to the engine (the arguments of
/// `apply_webhook_event`, by name).
fn event(
    id: &str,
    action: &str,
    reference: Option<&str>,
    amount: Option<i64>,
    partner: Option<i64>,
) -> Value {
    json!({
        "provider": "stripe", "event_id": id, "event_type": "test", "payload": {"id": id},
        "action": action, "reference": reference, "amount_minor": amount, "currency": "NGN",
        "partner_id": partner, "object_id": null, "object_state": null,
        "occurred_at": null, "customer_id": null,
    })
}

fn dispute(id: &str, reference: &str, dispute_id: &str, state: &str, amount: i64) -> Value {
    let mut e = event(id, "dispute", Some(reference), Some(amount), None);
    e["object_id"] = json!(dispute_id);
    e["object_state"] = json!(state);
    e
}

/// The events of the equivalence test, in arrival order: good ones, ones the
/// engine answers without moving money, and ones that only apply because an
/// earlier event of the same batch recorded their payment.
fn mixed_events(partner: i64) -> Vec<Value> {
    let charge_a = event(
        "evt_a1",
        "verify",
        Some("pi_a"),
        Some(1_000_000),
        Some(partner),
    );
    vec![
        charge_a.clone(),
        event(
            "evt_a2",
            "refund_cumulative",
            Some("pi_a"),
            Some(250_000),
            None,
        ),
        event(
            "evt_a3",
            "verify",
            Some("pi_a"),
            Some(1_000_000),
            Some(partner),
        ),
        // The provider delivers the first event again.
        charge_a,
        event(
            "evt_l1",
            "refund_cumulative",
            Some("pi_later"),
            Some(100_000),
            None,
        ),
        event(
            "evt_l2",
            "verify",
            Some("pi_later"),
            Some(400_000),
            Some(partner),
        ),
        event(
            "evt_x",
            "verify",
            Some("pi_x"),
            Some(500_000),
            Some(partner + 1000),
        ),
        event(
            "evt_zero",
            "verify",
            Some("pi_zero"),
            Some(0),
            Some(partner),
        ),
        {
            let mut e = event(
                "evt_cur",
                "verify",
                Some("pi_cur"),
                Some(500_000),
                Some(partner),
            );
            e["currency"] = json!("QQQ");
            e
        },
        dispute("evt_b1", "pi_b", "dp_b", "funds_withdrawn", 300_000),
        event(
            "evt_b2",
            "verify",
            Some("pi_b"),
            Some(600_000),
            Some(partner),
        ),
        event("evt_ign", "ignored", None, None, None),
        // The set-based common case: a payment no other event names.
        event(
            "evt_c",
            "verify",
            Some("pi_c"),
            Some(123_456),
            Some(partner),
        ),
        event("evt_d", "verify", Some("pi_d"), Some(50_000), None),
        // Also set-based: its refund was parked by an earlier transaction.
        event(
            "evt_early",
            "verify",
            Some("pi_early"),
            Some(100_000),
            Some(partner),
        ),
        // A customer to attribute: one by one, as alone.
        {
            let mut e = event("evt_e", "verify", Some("pi_e"), Some(70_000), Some(partner));
            e["customer_id"] = json!("cus_e");
            e
        },
        // Review: attribution spans references, so arrival order decides.
        // An invoice attributes its customer, then the payment comes, naming
        // no partner; then a customer's payment naming its partner before
        // one (with a smaller reference) that does not.
        {
            let mut e = event("evt_inv", "attribute", None, None, Some(partner));
            e["customer_id"] = json!("cus_sub");
            e
        },
        {
            let mut e = event("evt_sub", "verify", Some("pi_sub"), Some(80_000), None);
            e["customer_id"] = json!("cus_sub");
            e
        },
        {
            let mut e = event(
                "evt_zb",
                "verify",
                Some("pi_zb"),
                Some(90_000),
                Some(partner),
            );
            e["customer_id"] = json!("cus_z");
            e
        },
        {
            let mut e = event("evt_za", "verify", Some("pi_za"), Some(60_000), None);
            e["customer_id"] = json!("cus_z");
            e
        },
    ]
}

/// One event in its own transaction, as the service applied it before batching.
async fn apply_alone(db: &TestDatabase, e: &Value) -> (String, Option<String>) {
    sqlx::query_as(
        "SELECT outcome, parked_reason FROM apply_webhook_event($1->>'provider', $1->>'event_id',
                $1->>'event_type', $1->'payload', $1->>'action', $1->>'reference',
                ($1->>'amount_minor')::bigint, $1->>'currency', ($1->>'partner_id')::bigint,
                $1->>'object_id', $1->>'object_state', ($1->>'occurred_at')::timestamptz,
                $1->>'customer_id')",
    )
    .bind(e)
    .fetch_one(&db.pool)
    .await
    .unwrap()
}

/// What the engine left behind, in a form two databases can be compared by.
async fn state(db: &TestDatabase) -> Vec<String> {
    let queries = [
        "SELECT format('payment %s %s %s %s %s verified_at:%s minor_units:%s', provider_reference, status, amount,
                refunded_amount, partner_id, verified_at IS NOT NULL, minor_units)
           FROM payments ORDER BY provider_reference",
        "SELECT format('entry %s %s %s %s', p.provider_reference, c.kind, c.amount, c.reason)
           FROM commissions c JOIN payments p ON p.id = c.payment_id ORDER BY p.provider_reference, c.id",
        "SELECT format('event %s %s %s', event_id, outcome, parked_reason) FROM webhook_events ORDER BY event_id",
        "SELECT format('balance %s %s %s %s', partner_id, currency, earned, reversed) FROM partner_balances ORDER BY 1",
        "SELECT format('stream %s %s', partner_id, last_seq) FROM partner_streams ORDER BY 1",
        "SELECT format('audit %s', problem) FROM commission_audit",
    ];
    let mut out = Vec::new();
    for sql in queries {
        let rows: Vec<String> = sqlx::query_scalar(sql).fetch_all(&db.pool).await.unwrap();
        out.extend(rows);
    }
    out
}

#[tokio::test]
async fn a_batch_gives_every_event_the_outcome_it_has_alone_and_commits_once() {
    let alone = TestDatabase::new().await;
    let batched = TestDatabase::new().await;
    let partner = create_partner(&alone.pool, "Acme", None).await;
    assert_eq!(create_partner(&batched.pool, "Acme", None).await, partner);
    let events = mixed_events(partner);

    // Before either: a refund that came ahead of its charge, parked. The
    // charge is in the batch, alone on its reference (the set-based case), so
    // the engine must apply the parked refund as it records the payment.
    let early_refund = event(
        "evt_early_refund",
        "refund_cumulative",
        Some("pi_early"),
        Some(20_000),
        None,
    );
    for db in [&alone, &batched] {
        let (outcome, reason) = apply_alone(db, &early_refund).await;
        assert_eq!(
            (outcome.as_str(), reason.as_deref()),
            ("parked", Some("unknown_payment"))
        );
    }

    // One transaction per event, in arrival order: what the service did before batching.
    let mut outcomes_alone = Vec::new();
    for e in &events {
        outcomes_alone.push(apply_alone(&alone, e).await);
    }

    // All of them in one call, while a DBA's session listens on the partner's channel.
    let channel: String = sqlx::query_scalar("SELECT partner_channel($1)")
        .bind(partner)
        .fetch_one(&batched.pool)
        .await
        .unwrap();
    let (_listener, mut notifications) = batched.listen(&[&channel]).await;
    let rows: Vec<(i32, String, Option<String>)> =
        sqlx::query_as("SELECT ordinal, outcome, parked_reason FROM apply_webhook_events($1)")
            .bind(Value::Array(events.clone()))
            .fetch_all(&batched.pool)
            .await
            .unwrap();
    let mut outcomes_batched = vec![None; events.len()];
    for (ordinal, outcome, parked) in rows {
        let slot = &mut outcomes_batched[ordinal as usize - 1];
        assert!(slot.is_none(), "one answer per event");
        *slot = Some((outcome, parked));
    }
    let outcomes_batched: Vec<_> = outcomes_batched
        .into_iter()
        .map(|o| o.expect("every event has an answer"))
        .collect();

    assert_eq!(outcomes_batched, outcomes_alone);
    // The outcomes themselves, so that the comparison cannot pass on two wrong engines.
    let names: Vec<&str> = outcomes_batched.iter().map(|(o, _)| o.as_str()).collect();
    assert_eq!(
        names,
        [
            "verified",
            "refunded",
            "already_verified",
            "duplicate",
            "parked",
            "verified",
            "parked",
            "invalid_amount",
            "parked",
            "parked",
            "verified",
            "ignored",
            "verified",
            "verified",
            "verified",
            "verified",
            "attributed",
            "verified",
            "verified",
            "verified"
        ]
    );
    let attributed: Vec<(String, Option<i64>)> = sqlx::query_as(
        "SELECT provider_reference, partner_id FROM payments
          WHERE provider_reference IN ('pi_sub', 'pi_za') ORDER BY provider_reference",
    )
    .fetch_all(&batched.pool)
    .await
    .unwrap();
    assert_eq!(
        attributed,
        [
            ("pi_sub".into(), Some(partner)),
            ("pi_za".into(), Some(partner))
        ],
        "each earns for the partner its customer was attributed to by an earlier event"
    );
    let early: (String, i64, String) = sqlx::query_as(
        "SELECT p.refunded_amount::text, count(c.*) FILTER (WHERE c.kind = 'reversed'),
                (SELECT w.outcome FROM webhook_events w WHERE w.event_id = 'evt_early_refund')
           FROM payments p LEFT JOIN commissions c ON c.payment_id = p.id
          WHERE p.provider_reference = 'pi_early' GROUP BY p.id",
    )
    .fetch_one(&batched.pool)
    .await
    .unwrap();
    assert_eq!(
        early,
        ("200.0000".into(), 1, "refunded".into()),
        "the refund parked before its charge applied when the batch recorded the payment"
    );
    assert_eq!(outcomes_batched[6].1.as_deref(), Some("unknown_partner"));
    assert_eq!(
        outcomes_batched[8].1.as_deref(),
        Some("unsupported_currency")
    );
    assert_eq!(state(&batched).await, state(&alone).await);
    assert!(
        !state(&batched).await.iter().any(|l| l.starts_with("audit")),
        "the audit view is empty"
    );

    // One transaction wrote every entry, and the partner heard one NOTIFY for it.
    let transactions: i64 =
        sqlx::query_scalar("SELECT count(DISTINCT xact_id::text) FROM commissions")
            .fetch_one(&batched.pool)
            .await
            .unwrap();
    assert_eq!(transactions, 1, "one commit for the whole batch");
    let first = tokio::time::timeout(Duration::from_secs(10), notifications.recv())
        .await
        .expect("a NOTIFY on the partner's channel")
        .unwrap();
    assert_eq!(first.channel(), channel);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        notifications.try_recv().is_err(),
        "one NOTIFY per partner per transaction"
    );
    // The partner's stream is gapless and in the order the engine wrote it.
    let seqs: Vec<i64> =
        sqlx::query_scalar("SELECT seq FROM commission_events WHERE partner_id = $1 ORDER BY seq")
            .bind(partner)
            .fetch_all(&batched.pool)
            .await
            .unwrap();
    assert_eq!(seqs, (1..=seqs.len() as i64).collect::<Vec<_>>());
    assert!(
        seqs.len() >= 5,
        "earned a, b, c, later; reversed a, later, b: {seqs:?}"
    );
}

#[tokio::test]
async fn apply_webhook_events_refuses_what_is_not_an_array_and_changes_nothing() {
    let db = TestDatabase::new().await;
    for bad in [json!({"provider": "stripe"}), json!("[]"), Value::Null] {
        let error = sqlx::query("SELECT * FROM apply_webhook_events($1)")
            .bind(&bad)
            .execute(&db.pool)
            .await
            .expect_err("not an array");
        let error = error.as_database_error().expect("a database error");
        assert_eq!(
            error.code().as_deref(),
            Some("CM002"),
            "{}",
            error.message()
        );
        assert!(
            error.message().contains("JSON array"),
            "{}",
            error.message()
        );
    }
    let empty: Vec<(i32,)> = sqlx::query_as("SELECT ordinal FROM apply_webhook_events('[]')")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert!(empty.is_empty());
    let written: i64 = sqlx::query_scalar("SELECT count(*) FROM webhook_events")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(written, 0);
}

/// PL/pgSQL plans each statement of a function once per session and may keep
/// that plan: one made while `payments` was small read the whole table on
/// every batch after it had grown (a hash join over a sequential scan, seen
/// under scripts/bench). A batch must find its payments through the indexes
/// whatever the tables' size when its session first planned it.
#[tokio::test]
async fn a_batch_reads_no_grown_table_whole_on_a_session_that_planned_it_small() {
    let db = TestDatabase::new().await;
    let partner = create_partner(&db.pool, "Acme", None).await;
    let session = db.connect().await;
    let apply =
        "SELECT ordinal, outcome FROM apply_webhook_events($1::text::jsonb) ORDER BY ordinal";
    // Small tables: more batches than PL/pgSQL tries custom plans for (five).
    for round in 0..8 {
        let batch: Vec<Value> = (0..3)
            .map(|i| {
                let id = format!("small-{round}-{i}");
                event(&id, "verify", Some(&id), Some(1_000), Some(partner))
            })
            .collect();
        session
            .query(apply, &[&Value::Array(batch).to_string()])
            .await
            .unwrap();
    }
    // Grown, by a DBA: twenty thousand pending payments with references.
    session
        .batch_execute(&format!(
            "INSERT INTO payments (amount, currency, partner_id, provider, provider_reference, status)
             SELECT 10, 'NGN', {partner}, 'stripe', 'grown-' || g, 'pending' FROM generate_series(1, 20000) g"
        ))
        .await
        .unwrap();
    // Two of them and two new ones, on the same session, in one transaction
    // whose own scans PostgreSQL counts.
    let batch = json!([
        event(
            "late-1",
            "verify",
            Some("grown-5"),
            Some(1_000),
            Some(partner)
        ),
        event(
            "late-2",
            "verify",
            Some("late-2"),
            Some(1_000),
            Some(partner)
        ),
        event(
            "late-3",
            "verify",
            Some("grown-17000"),
            Some(1_000),
            Some(partner)
        ),
        event(
            "late-4",
            "verify",
            Some("late-4"),
            Some(1_000),
            Some(partner)
        ),
    ]);
    session.batch_execute("BEGIN").await.unwrap();
    let before = sequential_scans(&session, &["payments"]).await["payments"];
    let outcomes: Vec<String> = session
        .query(apply, &[&batch.to_string()])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(1))
        .collect();
    let after = sequential_scans(&session, &["payments"]).await["payments"];
    session.batch_execute("COMMIT").await.unwrap();
    assert_eq!(outcomes, ["verified"; 4]);
    assert_eq!(
        after - before,
        0,
        "sequential scans of payments in the batch"
    );
    let audit: i64 = sqlx::query_scalar("SELECT count(*) FROM commission_audit")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(audit, 0);
}

fn stripe_charge(event_id: &str, intent: &str, amount_minor: i64, partner: i64) -> String {
    json!({
        "id": event_id, "object": "event", "type": "payment_intent.succeeded",
        "data": {"object": {
            "id": intent, "object": "payment_intent", "amount": amount_minor,
            "amount_received": amount_minor, "currency": "ngn",
            "metadata": {"partner_id": partner}
        }}
    })
    .to_string()
}

/// Holds one payment's reference in a DBA's open transaction, so that the
/// node's only batch slot is busy with the event about it, and the events
/// sent meanwhile queue and leave together once it is released.
struct Blocker {
    client: tokio_postgres::Client,
}

impl Blocker {
    async fn hold(app: &TestApp, reference: &str) -> Blocker {
        let client = app.db.connect().await;
        client
            .batch_execute(&format!(
                "BEGIN; SELECT provider_reference_lock('stripe', '{reference}');"
            ))
            .await
            .unwrap();
        Blocker { client }
    }

    async fn release(self) {
        self.client.batch_execute("COMMIT").await.unwrap();
    }
}

/// Sessions waiting for a reference's lock (`Blocker`).
async fn advisory_waiters(app: &TestApp) -> i64 {
    app.count(
        "SELECT count(*) FROM pg_stat_activity
          WHERE datname = current_database() AND wait_event_type = 'Lock' AND wait_event = 'advisory'",
    )
    .await
}

/// Until one event is in the database, waiting for a `Blocker`'s reference.
async fn until_blocked(app: &TestApp) {
    until("the blocked event waiting for its reference", || async {
        (advisory_waiters(app).await == 1).then_some(())
    })
    .await;
}

/// Sends `bodies` while the node's only slot is held by a blocked event, so
/// they are applied as one batch; returns their responses, in order.
async fn as_one_batch(
    app: &TestApp,
    partner: i64,
    tag: &str,
    bodies: &[String],
) -> Vec<reqwest::Response> {
    let blocked_ref = format!("pi_block_{tag}");
    let blocker = Blocker::hold(app, &blocked_ref).await;
    let blocked_body = stripe_charge(&format!("evt_block_{tag}"), &blocked_ref, 100_000, partner);
    let the_rest = async {
        // The blocked event is in the database, waiting for the reference.
        until_blocked(app).await;
        let sends = join_all(bodies.iter().map(|b| app.stripe(b)));
        let queued_then_released = async {
            until("every event queued for the next batch", || async {
                (app.gauge("webhook_events_waiting").await == bodies.len() as i64).then_some(())
            })
            .await;
            blocker.release().await;
        };
        tokio::join!(sends, queued_then_released).0
    };
    let (blocked, responses) = tokio::join!(app.stripe(&blocked_body), the_rest);
    assert_eq!(json(blocked, 200).await["outcome"], "verified");
    responses
}

#[tokio::test]
async fn webhooks_that_arrive_together_commit_together_and_a_bad_one_fails_alone() {
    let db = TestDatabase::new().await;
    let app = spawn_app_with(db, |c| {
        c.batches.webhook_batches_in_flight = 1;
        c.batches.webhook_batch_max = 64;
    })
    .await;
    let partner = create_partner(&app.db.pool, "Acme", None).await;
    let other = create_partner(&app.db.pool, "Globex", None).await;
    let (mut ws, _) = open(app.address, &format!("token={}", partner_token(partner))).await;

    // Round 1: good events and events the engine answers without money,
    // all in one transaction, each with its own answer.
    let round1 = [
        stripe_charge("evt_r1_1", "pi_r1_1", 1_000_000, partner),
        stripe_charge("evt_r1_2", "pi_r1_2", 2_000_000, other),
        stripe_charge("evt_r1_3", "pi_r1_3", 500_000, partner),
        stripe_charge(
            "evt_r1_unknown",
            "pi_r1_unknown",
            500_000,
            partner + other + 1000,
        ),
        stripe_charge("evt_r1_zero", "pi_r1_zero", 0, partner),
        stripe_charge("evt_r1_1", "pi_r1_1", 1_000_000, partner),
        stripe_charge("evt_r1_4", "pi_r1_4", 700_000, partner),
    ];
    let responses = as_one_batch(&app, partner, "r1", &round1).await;
    let mut outcomes = Vec::new();
    for r in responses {
        outcomes.push(json(r, 200).await["outcome"].as_str().unwrap().to_owned());
    }
    // The two deliveries of evt_r1_1: one verified it, the other is a duplicate.
    let mut firsts = [outcomes[0].clone(), outcomes[5].clone()];
    firsts.sort();
    assert_eq!(firsts, ["duplicate", "verified"]);
    assert_eq!(
        [
            &outcomes[1],
            &outcomes[2],
            &outcomes[3],
            &outcomes[4],
            &outcomes[6]
        ],
        [
            "verified",
            "verified",
            "parked",
            "invalid_amount",
            "verified"
        ]
    );
    assert_eq!(
        app.count(
            "SELECT count(DISTINCT xmin::text) FROM webhook_events WHERE event_id LIKE 'evt_r1_%'"
        )
        .await,
        1,
        "the round's events were applied in one transaction"
    );
    assert_eq!(
        app.count("SELECT count(DISTINCT xact_id::text) FROM commissions c JOIN payments p ON p.id = c.payment_id WHERE p.provider_reference LIKE 'pi_r1_%'").await,
        1
    );

    // Round 2: a DBA's new rule that one event breaks. The batch fails as a
    // whole; each event is applied again alone, so only that one fails.
    sqlx::query("ALTER TABLE payments ADD CONSTRAINT no_1337 CHECK (amount <> 13.37)")
        .execute(&app.db.pool)
        .await
        .unwrap();
    let round2 = [
        stripe_charge("evt_r2_1", "pi_r2_1", 300_000, partner),
        stripe_charge("evt_r2_bad", "pi_r2_bad", 1_337, partner),
        stripe_charge("evt_r2_2", "pi_r2_2", 400_000, other),
    ];
    let mut responses = as_one_batch(&app, partner, "r2", &round2).await.into_iter();
    assert_eq!(
        json(responses.next().unwrap(), 200).await["outcome"],
        "verified"
    );
    problem(responses.next().unwrap(), 422, "invalid-input").await;
    assert_eq!(
        json(responses.next().unwrap(), 200).await["outcome"],
        "verified"
    );
    assert_eq!(
        app.count("SELECT count(*) FROM webhook_events WHERE event_id = 'evt_r2_bad'")
            .await,
        0,
        "the failed event is not recorded, so the provider's retry applies it"
    );
    assert_eq!(
        app.count("SELECT count(*) FROM payments WHERE provider_reference = 'pi_r2_bad'")
            .await,
        0
    );
    assert_eq!(
        app.count("SELECT count(*) FROM payments WHERE provider_reference IN ('pi_r2_1', 'pi_r2_2') AND status = 'verified'").await,
        2
    );

    // Every commission reached the partner's socket once, in seq order.
    let expected = app
        .count(&format!(
            "SELECT last_seq FROM partner_streams WHERE partner_id = {partner}"
        ))
        .await;
    assert_eq!(
        expected, 6,
        "round 1: its blocked event, 1, 3 and 4; round 2: its blocked event and 1"
    );
    let got = events(&mut ws, expected as usize).await;
    assert_eq!(seqs(&got), (1..=expected).collect::<Vec<_>>());
    assert_eq!(
        app.count("SELECT count(*) FROM commission_audit").await,
        0,
        "the audit view is empty"
    );
}

/// Under load, with a batch in the database, a second one leaves only once
/// it holds a quarter of `WEBHOOK_BATCH_MAX` (here 2 of 8), or when the
/// first one finishes: a straggler waits to share a commit instead of paying
/// for one alone. At a light load it leaves at once (src/db/batch.rs).
#[tokio::test]
async fn a_straggler_waits_for_company_or_for_the_batch_in_flight() {
    let db = TestDatabase::new().await;
    let app = spawn_app_with(db, |c| {
        c.batches.webhook_batches_in_flight = 2;
        c.batches.webhook_batch_max = 8;
    })
    .await;
    let partner = create_partner(&app.db.pool, "Acme", None).await;
    // One event waits in the batcher, beside the blocked batch, and stays
    // there: its payment is not recorded.
    let straggler_waits = |reference: &'static str| {
        let app = &app;
        async move {
            until("the straggler waiting in the batcher", || async {
                (app.gauge("webhook_events_waiting").await == 1).then_some(())
            })
            .await;
            tokio::time::sleep(Duration::from_millis(300)).await;
            let paid = app
                .count(&format!(
                    "SELECT count(*) FROM payments WHERE provider_reference = '{reference}'"
                ))
                .await;
            assert_eq!(paid, 0, "the straggler did not commit alone");
        }
    };

    // Round 0, a light load (every batch so far alone): a straggler beside a
    // blocked batch leaves at once on the free slot.
    let blocker = Blocker::hold(&app, "pi_hold_0").await;
    let blocked_body = stripe_charge("evt_hold_0", "pi_hold_0", 100_000, partner);
    let blocked = app.stripe(&blocked_body);
    let rest = async {
        until_blocked(&app).await;
        let alone = stripe_charge("evt_s0", "pi_s0", 200_000, partner);
        assert_eq!(
            json(app.stripe(&alone).await, 200).await["outcome"],
            "verified"
        );
        // Then both slots blocked, and two events queued behind them leave
        // together: a batch with company, so the node is now under load.
        let second_body = stripe_charge("evt_hold_0b", "pi_hold_0", 100_000, partner);
        let second = app.stripe(&second_body);
        let company = async {
            until("both slots blocked", || async {
                (advisory_waiters(&app).await == 2).then_some(())
            })
            .await;
            let bodies = [
                stripe_charge("evt_c1", "pi_c1", 200_000, partner),
                stripe_charge("evt_c2", "pi_c2", 200_000, partner),
            ];
            let sends = join_all(bodies.iter().map(|b| app.stripe(b)));
            let release = async {
                until("two events queued", || async {
                    (app.gauge("webhook_events_waiting").await == 2).then_some(())
                })
                .await;
                blocker.release().await;
            };
            tokio::join!(sends, release).0
        };
        let (second, company) = tokio::join!(second, company);
        assert_eq!(json(second, 200).await["outcome"], "already_verified");
        for r in company {
            assert_eq!(json(r, 200).await["outcome"], "verified");
        }
    };
    let (blocked, ()) = tokio::join!(blocked, rest);
    assert_eq!(json(blocked, 200).await["outcome"], "verified");
    assert_eq!(
        app.count("SELECT count(DISTINCT xmin::text) FROM webhook_events WHERE event_id IN ('evt_c1', 'evt_c2')")
            .await,
        1
    );

    // Round 1: one batch blocked in the database by a DBA's lock.
    let blocker = Blocker::hold(&app, "pi_hold_1").await;
    let blocked_body = stripe_charge("evt_hold_1", "pi_hold_1", 100_000, partner);
    let blocked = app.stripe(&blocked_body);
    let rest = async {
        until_blocked(&app).await;
        // A lone straggler: a slot is free, but it waits for company.
        let first_body = stripe_charge("evt_s1", "pi_s1", 200_000, partner);
        let first = app.stripe(&first_body);
        let second = async {
            straggler_waits("pi_s1").await;
            // Company: the two leave together, beside the blocked batch.
            app.stripe(&stripe_charge("evt_s2", "pi_s2", 300_000, partner))
                .await
        };
        let (first, second) = tokio::join!(first, second);
        assert_eq!(json(first, 200).await["outcome"], "verified");
        assert_eq!(json(second, 200).await["outcome"], "verified");
        assert_eq!(
            advisory_waiters(&app).await,
            1,
            "the first batch is still blocked"
        );
        assert_eq!(
            app.count("SELECT count(DISTINCT xmin::text) FROM webhook_events WHERE event_id IN ('evt_s1', 'evt_s2')")
                .await,
            1,
            "one transaction for the two"
        );
        blocker.release().await;
    };
    let (blocked, ()) = tokio::join!(blocked, rest);
    assert_eq!(json(blocked, 200).await["outcome"], "verified");

    // Round 2: no company comes; the straggler leaves when the batch in
    // flight finishes.
    let blocker = Blocker::hold(&app, "pi_hold_2").await;
    let blocked_body = stripe_charge("evt_hold_2", "pi_hold_2", 100_000, partner);
    let blocked = app.stripe(&blocked_body);
    let rest = async {
        until_blocked(&app).await;
        let straggler_body = stripe_charge("evt_s3", "pi_s3", 400_000, partner);
        let straggler = app.stripe(&straggler_body);
        let release = async {
            straggler_waits("pi_s3").await;
            blocker.release().await;
        };
        tokio::join!(straggler, release).0
    };
    let (blocked, straggler) = tokio::join!(blocked, rest);
    assert_eq!(json(blocked, 200).await["outcome"], "verified");
    assert_eq!(json(straggler, 200).await["outcome"], "verified");
    assert_eq!(app.count("SELECT count(*) FROM commission_audit").await, 0);
}
