//! Many payments per commit (docs/engine.md, "Many payments per commit"): a
//! DBA's multi-row UPDATE runs the engine once, over the whole set; the
//! transaction publishes its entries together at COMMIT, each partner's seq
//! gapless in payment order, with one NOTIFY per partner and one on the
//! admin channel; concurrent batches over the same partners never deadlock.

use std::{collections::HashMap, time::Duration};

use futures::future::join_all;
use tokio::time::timeout;

use crate::{
    helpers::{create_partner, create_payment, spawn_app, TestDatabase},
    realtime::{events, open, partner_token, seqs},
};

/// `partners` new partners, and `per_partner` pending payments for each,
/// recorded in one statement with the partners interleaved (payment i is
/// for partner i mod n), so payment order is not partner order.
async fn partners_with_payments(
    db: &TestDatabase,
    partners: usize,
    per_partner: usize,
) -> Vec<i64> {
    let mut ids = Vec::new();
    for i in 0..partners {
        ids.push(create_partner(&db.pool, &format!("Partner {i}"), None).await);
    }
    sqlx::query(
        "INSERT INTO payments (amount, currency, partner_id)
         SELECT 10 + (g % 89) + 0.37, 'NGN', ($1::bigint[])[1 + g % cardinality($1::bigint[])]
           FROM generate_series(0, $2 - 1) g ORDER BY g",
    )
    .bind(&ids)
    .bind((partners * per_partner) as i64)
    .execute(&db.pool)
    .await
    .unwrap();
    ids
}

/// Each partner's events in seq order: (seq, payment_id) from the log.
async fn streams(db: &TestDatabase) -> HashMap<i64, Vec<(i64, i64)>> {
    let rows: Vec<(i64, i64, i64)> = sqlx::query_as(
        "SELECT partner_id, seq, (data ->> 'payment_id')::bigint FROM commission_events
          WHERE type = 'commission.created' ORDER BY partner_id, seq",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let mut out: HashMap<i64, Vec<(i64, i64)>> = HashMap::new();
    for (partner, seq, payment) in rows {
        out.entry(partner).or_default().push((seq, payment));
    }
    out
}

async fn audit_is_empty(db: &TestDatabase) {
    let problems: Vec<String> = sqlx::query_scalar("SELECT problem FROM commission_audit")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert!(problems.is_empty(), "the audit view is empty: {problems:?}");
}

#[tokio::test]
async fn a_dba_update_verifying_1000_payments_of_100_partners_publishes_each_stream_gapless_with_one_notify_per_partner(
) {
    let app = spawn_app().await;
    let db = &app.db;
    let partners = partners_with_payments(db, 100, 10).await;
    // A socket for a few partners, opened before the batch.
    let watched = [partners[0], partners[41], partners[99]];
    let mut sockets = Vec::new();
    for partner in watched {
        let (ws, _) = open(app.address, &format!("token={}", partner_token(partner))).await;
        sockets.push((partner, ws));
    }
    let mut channels: Vec<String> = partners
        .iter()
        .map(|p| format!("commissions_partner_{p}"))
        .collect();
    channels.push("commissions_admin".into());
    let channel_refs: Vec<&str> = channels.iter().map(String::as_str).collect();
    let (_listener, mut rx) = db.listen(&channel_refs).await;

    // What a DBA would type in psql: one statement, 1,000 payments.
    let verified = sqlx::query("UPDATE payments SET status = 'verified' WHERE status = 'pending'")
        .execute(&db.pool)
        .await
        .unwrap()
        .rows_affected();
    assert_eq!(verified, 1000);

    // Each partner: seq 1..10, in payment order.
    let by_partner = streams(db).await;
    assert_eq!(by_partner.len(), 100);
    for partner in &partners {
        let stream = &by_partner[partner];
        let seqs: Vec<i64> = stream.iter().map(|(s, _)| *s).collect();
        assert_eq!(seqs, (1..=10).collect::<Vec<_>>(), "partner {partner}");
        assert!(
            stream.windows(2).all(|w| w[0].1 < w[1].1),
            "partner {partner}'s seqs follow payment order: {stream:?}"
        );
    }
    let positions: Vec<i64> =
        sqlx::query_scalar("SELECT position FROM commission_events ORDER BY position")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(
        positions,
        (1..=1000).collect::<Vec<_>>(),
        "the admin position is gapless"
    );
    audit_is_empty(db).await;

    // One NOTIFY per partner and one on the admin channel, each a short
    // wake-up (the relay reads the log, never the payload).
    let mut per_channel: HashMap<String, usize> = HashMap::new();
    while let Ok(Some(n)) = timeout(Duration::from_secs(2), rx.recv()).await {
        assert!(
            n.payload().len() <= 32,
            "a wake-up, not an event: {}",
            n.payload()
        );
        *per_channel.entry(n.channel().to_owned()).or_default() += 1;
    }
    assert_eq!(
        per_channel.len(),
        101,
        "every partner's channel and the admin channel"
    );
    assert!(
        per_channel.values().all(|&n| n == 1),
        "one NOTIFY per channel: {per_channel:?}"
    );

    // Each watched socket sees its ten events once, in seq order, and then
    // the next event (nothing else came first).
    for (partner, ws) in &mut sockets {
        let got = events(ws, 10).await;
        assert_eq!(seqs(&got), (1..=10).collect::<Vec<_>>());
        let payments: Vec<i64> = by_partner[partner].iter().map(|(_, p)| *p).collect();
        let sent: Vec<i64> = got
            .iter()
            .map(|e| e["data"]["payment_id"].as_i64().unwrap())
            .collect();
        assert_eq!(sent, payments);
        let sentinel = create_payment(&db.pool, "1.00", "NGN", Some(*partner)).await;
        app.verify(sentinel).await;
        let next = events(ws, 1).await;
        assert_eq!(next[0]["seq"], 11);
        assert_eq!(next[0]["data"]["payment_id"], sentinel);
    }
}

#[tokio::test]
async fn concurrent_batches_over_overlapping_partners_in_opposite_orders_commit_without_deadlock() {
    let db = TestDatabase::new().await;
    let partners = partners_with_payments(&db, 40, 0).await;
    const ROUNDS: usize = 10;
    for round in 0..ROUNDS {
        // Batch A: partners 0..30 in ascending payment order; batch B:
        // partners 10..40 descending. Both verify in an open transaction,
        // then commit at once.
        let mut batches = Vec::new();
        for (range, reverse) in [(0..30, false), (10..40, true)] {
            let mut chosen: Vec<i64> = partners[range].to_vec();
            if reverse {
                chosen.reverse();
            }
            let ids: Vec<i64> = sqlx::query_scalar(
                "INSERT INTO payments (amount, currency, partner_id)
                 SELECT 12.34 + g, 'NGN', p FROM unnest($1::bigint[]) WITH ORDINALITY AS u (p, g) ORDER BY g
                 RETURNING id",
            )
            .bind(&chosen)
            .fetch_all(&db.pool)
            .await
            .unwrap();
            batches.push(ids);
        }
        let mut clients = Vec::new();
        for ids in &batches {
            let client = db.connect().await;
            client.batch_execute("BEGIN").await.unwrap();
            let n = client
                .execute(
                    "UPDATE payments SET status = 'verified' WHERE id = ANY ($1)",
                    &[ids],
                )
                .await
                .unwrap();
            assert_eq!(n as usize, ids.len());
            clients.push(client);
        }
        let commits = join_all(clients.iter().map(|c| c.batch_execute("COMMIT"))).await;
        for result in commits {
            result.unwrap_or_else(|e| panic!("round {round}: both batches commit: {e}"));
        }
    }

    // Every partner's seq is gapless, and so is the admin position.
    let by_partner = streams(&db).await;
    for (i, partner) in partners.iter().enumerate() {
        let want = if (10..30).contains(&i) {
            2 * ROUNDS
        } else {
            ROUNDS
        } as i64;
        let seqs: Vec<i64> = by_partner[partner].iter().map(|(s, _)| *s).collect();
        assert_eq!(seqs, (1..=want).collect::<Vec<_>>(), "partner {partner}");
    }
    let (count, max): (i64, Option<i64>) =
        sqlx::query_as("SELECT count(*), max(position) FROM commission_events")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(count, (60 * ROUNDS) as i64);
    assert_eq!(max, Some(count));
    audit_is_empty(&db).await;
}

#[tokio::test]
async fn a_multi_row_verification_applies_every_rule_of_a_single_one() {
    let db = TestDatabase::new().await;
    let instant = create_partner(&db.pool, "No hold", Some("0.1")).await;
    sqlx::query("SELECT set_partner_hold_days($1, 0)")
        .bind(instant)
        .execute(&db.pool)
        .await
        .unwrap();
    let held = create_partner(&db.pool, "Thirty days", Some("0.02")).await;
    let tiny = create_partner(&db.pool, "Rounds to zero", Some("0.001")).await;
    // JPY has no minor units: 1,234 JPY at 10% earns 123, not 123.4.
    let yen = sqlx::query_scalar::<_, i64>("SELECT record_payment(1234, 'JPY', $1)")
        .bind(instant)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let naira = create_payment(&db.pool, "100.00", "NGN", Some(held)).await;
    let nothing = create_payment(&db.pool, "1.00", "NGN", Some(tiny)).await;
    let nobody = create_payment(&db.pool, "50.00", "NGN", None).await;
    // A dispute a DBA recorded before verification is held at once.
    sqlx::query(
        "INSERT INTO disputes (provider, dispute_id, payment_id, amount, state) VALUES ('stripe', 'dp_1', $1, 50, 'open')",
    )
    .bind(naira)
    .execute(&db.pool)
    .await
    .unwrap();

    sqlx::query("UPDATE payments SET status = 'verified' WHERE id = ANY ($1)")
        .bind(vec![yen, naira, nothing, nobody])
        .execute(&db.pool)
        .await
        .unwrap();

    let entries: Vec<(i64, String, String)> =
        sqlx::query_as("SELECT payment_id, kind::text, amount::text FROM commissions ORDER BY id")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(
        entries,
        vec![
            (yen, "earned".into(), "123.0000".into()),
            (naira, "earned".into(), "2.0000".into()),
            (naira, "held".into(), "1.0000".into()),
            (yen, "approved".into(), "123.0000".into()),
        ]
    );
    let types: Vec<(i64, i64, String)> =
        sqlx::query_as("SELECT partner_id, seq, type FROM commission_events ORDER BY position")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(
        types,
        vec![
            (instant, 1, "commission.created".into()),
            (held, 1, "commission.created".into()),
            (held, 2, "commission.held".into()),
            (instant, 2, "commission.approved".into()),
        ]
    );
    audit_is_empty(&db).await;

    // An illegal change among legal ones fails the whole statement, as before.
    let again = create_payment(&db.pool, "10.00", "NGN", Some(held)).await;
    let failed = create_payment(&db.pool, "10.00", "NGN", Some(held)).await;
    sqlx::query("UPDATE payments SET status = 'failed' WHERE id = $1")
        .bind(failed)
        .execute(&db.pool)
        .await
        .unwrap();
    let error = sqlx::query("UPDATE payments SET status = 'verified' WHERE id = ANY ($1)")
        .bind(vec![again, failed])
        .execute(&db.pool)
        .await
        .unwrap_err();
    let code = error.as_database_error().and_then(|e| e.code()).unwrap();
    assert_eq!(code, "CM001", "{error}");
    assert_eq!(
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM commissions WHERE payment_id = $1")
            .bind(again)
            .fetch_one(&db.pool)
            .await
            .unwrap(),
        0
    );
}
