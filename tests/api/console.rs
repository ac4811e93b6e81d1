//! What the operator console reads and runs beyond the rest of the API:
//! every partner's event log newest first (`GET /api/events`), whose head is
//! the admin stream's `since`, and approval on demand (`POST /api/approvals/run`).

use serde_json::{json, Value};

use crate::{
    callers::{admin_token, json, partner_token, problem},
    helpers::{create_partner, create_payment, spawn_app, TestApp},
};

async fn verified(app: &TestApp, partner: i64, amount: &str) -> i64 {
    let payment = create_payment(&app.db.pool, amount, "NGN", Some(partner)).await;
    app.verify(payment).await;
    payment
}

fn positions(page: &Value) -> Vec<i64> {
    page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["position"].as_i64().unwrap())
        .collect()
}

#[tokio::test]
async fn the_admin_event_log_pages_newest_first_below_one_head() {
    let app = spawn_app().await;
    let a = create_partner(&app.db.pool, "A", Some("0.1")).await;
    let b = create_partner(&app.db.pool, "B", Some("0.1")).await;
    verified(&app, a, "100.00").await;
    verified(&app, b, "200.00").await;
    let admin = admin_token();

    let all = json(app.get_as(&admin, "/api/events").await, 200).await;
    let head = all["last_position"].as_i64().unwrap();
    let every = positions(&all);
    assert!(every.len() >= 2, "{all}");
    assert_eq!(every[0], head, "the newest event is the head");
    assert!(
        every.windows(2).all(|w| w[0] > w[1]),
        "newest first: {every:?}"
    );
    assert_eq!(all["next_cursor"], Value::Null);

    // An event committed after the first page stays out of the later pages
    // read below the same head: the stream brings it.
    let first = json(app.get_as(&admin, "/api/events?limit=1").await, 200).await;
    assert_eq!(positions(&first), vec![head]);
    verified(&app, a, "50.00").await;
    let mut seen = positions(&first);
    let mut cursor = first["next_cursor"].as_i64();
    while let Some(c) = cursor {
        let page = json(
            app.get_as(
                &admin,
                &format!("/api/events?limit=1&cursor={c}&head={head}"),
            )
            .await,
            200,
        )
        .await;
        seen.extend(positions(&page));
        cursor = page["next_cursor"].as_i64();
    }
    assert_eq!(seen, every, "the pages are the first read, once each");
    let now = json(app.get_as(&admin, "/api/events?limit=1").await, 200).await;
    assert!(now["last_position"].as_i64().unwrap() > head);

    problem(
        app.get_as(&partner_token(a), "/api/events").await,
        403,
        "forbidden",
    )
    .await;
    problem(
        app.get_as(&admin, "/api/events?limit=0").await,
        422,
        "invalid-input",
    )
    .await;
}

#[tokio::test]
async fn an_approval_run_approves_what_is_due_once() {
    let app = spawn_app().await;
    let admin = admin_token();
    let partner = json(
        app.post_as(
            &admin,
            "/api/partners",
            &json!({"name": "Held", "hold_days": 30}),
        )
        .await,
        201,
    )
    .await["id"]
        .as_i64()
        .unwrap();
    verified(&app, partner, "100.00").await;
    let run = json(
        app.post_as(&admin, "/api/approvals/run", &json!({})).await,
        200,
    )
    .await;
    assert_eq!(
        run,
        json!({"commissions": 0, "batches": 0}),
        "still in the hold period"
    );

    let patched = app
        .http
        .patch(app.url(&format!("/api/partners/{partner}")))
        .bearer_auth(&admin)
        .json(&json!({"hold_days": 0}))
        .send()
        .await
        .unwrap();
    assert_eq!(patched.status().as_u16(), 200);
    let run = json(
        app.post_as(&admin, "/api/approvals/run", &json!({})).await,
        200,
    )
    .await;
    assert_eq!(run, json!({"commissions": 1, "batches": 1}));
    let again = json(
        app.post_as(&admin, "/api/approvals/run", &json!({})).await,
        200,
    )
    .await;
    assert_eq!(again, json!({"commissions": 0, "batches": 0}));

    problem(
        app.post_as(&partner_token(partner), "/api/approvals/run", &json!({}))
            .await,
        403,
        "forbidden",
    )
    .await;
}

#[tokio::test]
async fn partners_are_found_by_part_of_their_name_or_their_id() {
    let app = spawn_app().await;
    let ada = create_partner(&app.db.pool, "Ada Lovelace Media", Some("0.1")).await;
    let grace = create_partner(&app.db.pool, "Grace Hopper 100%", None).await;
    create_partner(&app.db.pool, "Other_Co", None).await;
    verified(&app, ada, "100.00").await;
    let admin = admin_token();
    let ids = |page: &Value| -> Vec<i64> {
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["id"].as_i64().unwrap())
            .collect()
    };

    let found = json(app.get_as(&admin, "/api/partners?q=lovelace").await, 200).await;
    assert_eq!(ids(&found), vec![ada]);
    assert_eq!(found["items"][0]["totals"]["NGN"]["earned"], "10.00");
    let by_id = json(
        app.get_as(&admin, &format!("/api/partners?q={grace}"))
            .await,
        200,
    )
    .await;
    assert_eq!(ids(&by_id), vec![grace]);
    // LIKE's wildcards are matched literally.
    let percent = json(app.get_as(&admin, "/api/partners?q=100%25").await, 200).await;
    assert_eq!(ids(&percent), vec![grace]);
    let underscore = json(app.get_as(&admin, "/api/partners?q=r_c").await, 200).await;
    assert_eq!(ids(&underscore).len(), 1, "only Other_Co: {underscore}");

    // Every partner, newest first, in pages.
    let first = json(app.get_as(&admin, "/api/partners?limit=2").await, 200).await;
    assert_eq!(ids(&first).len(), 2);
    let cursor = first["next_cursor"].as_i64().unwrap();
    let rest = json(
        app.get_as(&admin, &format!("/api/partners?limit=2&cursor={cursor}"))
            .await,
        200,
    )
    .await;
    assert_eq!(ids(&rest), vec![ada]);
    assert_eq!(rest["next_cursor"], Value::Null);

    problem(
        app.get_as(&partner_token(ada), "/api/partners?q=a").await,
        403,
        "forbidden",
    )
    .await;
}
