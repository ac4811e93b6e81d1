//! The check every money scenario ends with: the audit view is empty, and
//! the partner's socket and an admin socket saw each event of the log once,
//! in order, with nothing missing and nothing extra (a sentinel event after
//! them proves that nothing else arrived first).

use serde_json::Value;

use crate::{
    callers::json,
    helpers::{create_payment, TestApp},
    realtime::{events, partner_token, seqs, Ws},
};

/// Returns the partner's events, without the sentinel.
pub async fn check_streams(
    app: &TestApp,
    partner: i64,
    partner_ws: &mut Ws,
    admin_ws: &mut Ws,
) -> Vec<Value> {
    let problems: Vec<String> = sqlx::query_scalar("SELECT problem FROM commission_audit")
        .fetch_all(&app.db.pool)
        .await
        .unwrap();
    assert!(problems.is_empty(), "the audit view is empty: {problems:?}");
    let logged = app
        .count(&format!(
            "SELECT count(*) FROM commission_events WHERE partner_id = {partner}"
        ))
        .await as usize;
    let everyone = app.count("SELECT count(*) FROM commission_events").await as usize;
    let sentinel = create_payment(&app.db.pool, "1.00", "NGN", Some(partner)).await;
    app.verify(sentinel).await;

    let mut got = events(partner_ws, logged + 1).await;
    assert_eq!(seqs(&got), (1..=logged as i64 + 1).collect::<Vec<_>>());
    assert_eq!(got.last().unwrap()["data"]["payment_id"], sentinel);
    // The admin room: every partner's events, gapless by position.
    let admin = events(admin_ws, everyone + 1).await;
    let positions: Vec<i64> = admin
        .iter()
        .map(|e| e["position"].as_i64().unwrap())
        .collect();
    assert_eq!(positions, (1..=everyone as i64 + 1).collect::<Vec<_>>());
    let admin: Vec<Value> = admin
        .into_iter()
        .filter(|e| e["partner_id"] == partner)
        .collect();
    assert_eq!(admin, got, "the admin room saw the same events");

    // What a resuming client replays is what the live socket got. (With a
    // hold of 0 days the sentinel's approval may already follow it.)
    let replay = json(
        app.get_as(
            &partner_token(partner),
            &format!("/api/partners/{partner}/events?since=0"),
        )
        .await,
        200,
    )
    .await;
    let replayed = replay["events"].as_array().expect("events");
    assert_eq!(&replayed[..got.len()], &got[..]);
    got.pop();
    got
}
