//! `Idempotency-Key` under load and failure: no burst starves the pool, an
//! effect is never applied twice (not under concurrency, not after the
//! response failed to be stored), keys are scoped to (caller, method, route),
//! and every spelling of the bearer scheme reaches the layer.

use serde_json::{json, Value};

use crate::{
    callers::{admin_token, json, problem},
    helpers::{create_payment, spawn_app, spawn_app_with, TestApp, TestDatabase},
};

fn keyed(
    app: &TestApp,
    authorization: &str,
    key: &str,
    path: &str,
    body: &Value,
) -> reqwest::RequestBuilder {
    app.http
        .post(app.url(path))
        .header("Authorization", authorization)
        .header("Idempotency-Key", key)
        .json(body)
}

/// Before the fix the layer held a transaction's connection while the
/// handler waited for another: on a small pool most of a burst got 500.
#[tokio::test]
async fn a_burst_of_keyed_posts_on_a_small_pool_all_succeed() {
    let app = spawn_app_with(TestDatabase::new().await, |c| {
        c.database.db_max_connections = 2
    })
    .await;
    let bearer = format!("Bearer {}", admin_token());
    let body = json!({"amount": "10.00", "currency": "NGN"});
    let sends = (0..12).map(|i| {
        let request = keyed(&app, &bearer, &format!("burst-{i}"), "/api/payments", &body);
        async move { request.send().await.unwrap() }
    });
    let statuses: Vec<u16> = futures::future::join_all(sends)
        .await
        .iter()
        .map(|r| r.status().as_u16())
        .collect();
    assert!(statuses.iter().all(|s| *s == 201), "{statuses:?}");
    assert_eq!(app.count("SELECT count(*) FROM payments").await, 12);
    assert_eq!(
        app.count("SELECT count(*) FROM idempotency_keys WHERE state = 'completed'")
            .await,
        12
    );
}

#[tokio::test]
async fn one_key_sent_ten_times_at_once_on_a_small_pool_applies_once() {
    let app = spawn_app_with(TestDatabase::new().await, |c| {
        c.database.db_max_connections = 3
    })
    .await;
    let bearer = format!("Bearer {}", admin_token());
    let body = json!({"amount": "75.00", "currency": "NGN"});
    let sends = (0..10).map(|_| {
        let request = keyed(&app, &bearer, "same", "/api/payments", &body);
        async move { request.send().await.unwrap() }
    });
    let mut ids = Vec::new();
    for response in futures::future::join_all(sends).await {
        match response.status().as_u16() {
            201 => ids.push(response.json::<Value>().await.unwrap()["id"].clone()),
            409 => {
                problem(response, 409, "conflict").await;
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert!(
        !ids.is_empty() && ids.iter().all(|id| *id == ids[0]),
        "{ids:?}"
    );
    assert_eq!(app.count("SELECT count(*) FROM payments").await, 1);
}

/// The effect commits, then storing the response fails (a trigger stands in
/// for a full disk or a lost connection). Before the fix a retry ran the
/// handler again: a second payment.
#[tokio::test]
async fn a_retry_after_the_response_failed_to_be_stored_never_repeats_the_effect() {
    let app = spawn_app().await;
    let bearer = format!("Bearer {}", admin_token());
    let body = json!({"amount": "20.00", "currency": "NGN"});
    let dba = app.db.connect().await;
    dba.batch_execute(
        "CREATE FUNCTION fail_storing() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             IF NEW.response_status IS NOT NULL THEN RAISE EXCEPTION 'disk full'; END IF;
             RETURN NEW;
         END $$;
         CREATE TRIGGER fail_storing BEFORE INSERT OR UPDATE ON idempotency_keys
             FOR EACH ROW EXECUTE FUNCTION fail_storing();",
    )
    .await
    .unwrap();
    let _first = keyed(&app, &bearer, "k", "/api/payments", &body)
        .send()
        .await
        .unwrap();
    dba.batch_execute(
        "DROP TRIGGER fail_storing ON idempotency_keys; DROP FUNCTION fail_storing();",
    )
    .await
    .unwrap();
    assert_eq!(app.count("SELECT count(*) FROM payments").await, 1);

    let retry = keyed(&app, &bearer, "k", "/api/payments", &body)
        .send()
        .await
        .unwrap();
    assert_eq!(retry.headers().get("retry-after").unwrap(), "1");
    problem(retry, 409, "conflict").await;
    assert_eq!(
        app.count("SELECT count(*) FROM payments").await,
        1,
        "the effect is not repeated"
    );

    // Once it is older than any request could run, DBAs see it as stuck and
    // the client is told the outcome is unknown.
    dba.batch_execute("UPDATE idempotency_keys SET created_at = now() - interval '10 minutes'")
        .await
        .unwrap();
    let stuck = dba
        .query("SELECT route, path, key FROM idempotency_stuck_claims", &[])
        .await
        .unwrap();
    assert_eq!(stuck.len(), 1);
    assert_eq!(stuck[0].get::<_, String>(0), "/api/payments");
    let retry = keyed(&app, &bearer, "k", "/api/payments", &body)
        .send()
        .await
        .unwrap();
    let detail = problem(retry, 409, "conflict").await;
    assert!(
        detail["detail"]
            .as_str()
            .unwrap()
            .contains("never recorded"),
        "{detail}"
    );

    // An operator who has checked the effect releases the claim; the key runs again.
    let sub = "ops@example.com";
    let released: bool = dba
        .query_one(
            "SELECT release_idempotency_claim($1, 'POST', '/api/payments', 'k')",
            &[&sub],
        )
        .await
        .unwrap()
        .get(0);
    assert!(released);
    let again = keyed(&app, &bearer, "k", "/api/payments", &body)
        .send()
        .await
        .unwrap();
    assert!(again.headers().get("idempotent-replayed").is_none());
    json(again, 201).await;
}

/// A handler that fails (5xx) wrote nothing: its claim is released and the
/// client may retry under the same key.
#[tokio::test]
async fn a_5xx_releases_the_key_for_a_retry() {
    let app = spawn_app().await;
    let bearer = format!("Bearer {}", admin_token());
    let body = json!({"amount": "30.00", "currency": "NGN"});
    let dba = app.db.connect().await;
    dba.batch_execute(
        "CREATE FUNCTION fail_payment() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN RAISE EXCEPTION 'broken' USING ERRCODE = 'XX000'; END $$;
         CREATE TRIGGER fail_payment BEFORE INSERT ON payments
             FOR EACH ROW EXECUTE FUNCTION fail_payment();",
    )
    .await
    .unwrap();
    let failed = keyed(&app, &bearer, "k", "/api/payments", &body)
        .send()
        .await
        .unwrap();
    assert_eq!(failed.status().as_u16(), 500);
    assert_eq!(app.count("SELECT count(*) FROM idempotency_keys").await, 0);
    dba.batch_execute("DROP TRIGGER fail_payment ON payments; DROP FUNCTION fail_payment();")
        .await
        .unwrap();
    let retry = keyed(&app, &bearer, "k", "/api/payments", &body)
        .send()
        .await
        .unwrap();
    json(retry, 201).await;
    assert_eq!(app.count("SELECT count(*) FROM payments").await, 1);
}

/// Before the fix the layer matched only `Bearer `: a lowercase scheme
/// skipped it and a retry created a second payment.
#[tokio::test]
async fn any_spelling_of_the_bearer_scheme_replays() {
    let app = spawn_app().await;
    let token = admin_token();
    let body = json!({"amount": "40.00", "currency": "NGN"});
    let first = keyed(
        &app,
        &format!("bearer {token}"),
        "k",
        "/api/payments",
        &body,
    )
    .send()
    .await
    .unwrap();
    let first = json(first, 201).await;
    for scheme in ["bearer", "BEARER", "Bearer"] {
        let retry = keyed(
            &app,
            &format!("{scheme} {token}"),
            "k",
            "/api/payments",
            &body,
        )
        .send()
        .await
        .unwrap();
        assert_eq!(
            retry.headers().get("idempotent-replayed").unwrap(),
            "true",
            "{scheme}"
        );
        assert_eq!(json(retry, 201).await, first);
    }
    assert_eq!(app.count("SELECT count(*) FROM payments").await, 1);
}

/// Scope: (caller, method, route template). The same key on two payments is
/// one route with two requests: 422, never the other payment's response. On
/// another route it is another key.
#[tokio::test]
async fn a_key_is_scoped_to_its_route_and_its_concrete_path_is_part_of_the_request() {
    let app = spawn_app().await;
    let bearer = format!("Bearer {}", admin_token());
    let five = create_payment(&app.db.pool, "10.00", "NGN", None).await;
    let six = create_payment(&app.db.pool, "10.00", "NGN", None).await;
    let verify = |id: i64| format!("/api/payments/{id}/verify");
    let first = keyed(&app, &bearer, "k", &verify(five), &json!({}))
        .send()
        .await
        .unwrap();
    json(first, 200).await;
    let other = keyed(&app, &bearer, "k", &verify(six), &json!({}))
        .send()
        .await
        .unwrap();
    problem(other, 422, "invalid-input").await;
    let status: String = sqlx::query_scalar("SELECT status::text FROM payments WHERE id = $1")
        .bind(six)
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(status, "pending", "the other payment is untouched");

    // The same key on another route is a request of its own.
    let partner = keyed(
        &app,
        &bearer,
        "k",
        "/api/partners",
        &json!({"name": "Acme"}),
    )
    .send()
    .await
    .unwrap();
    assert!(partner.headers().get("idempotent-replayed").is_none());
    json(partner, 201).await;
}

#[test]
fn admin_tokens_from_the_cli_get_subjects_of_their_own() {
    use commissions::{
        cli::mint_token,
        config::{Secret, TokenConfig, TokenRole},
    };
    let config = TokenConfig {
        jwt_secret: Secret::new(crate::helpers::JWT_SECRET),
        role: TokenRole::Admin,
        partner_id: None,
        ttl: 600,
        sub: None,
    };
    let now = crate::callers::now();
    let sub = |token: String| {
        commissions::auth::verify(&token, crate::helpers::JWT_SECRET)
            .unwrap()
            .sub
    };
    let (one, two) = (
        sub(mint_token(&config, now).unwrap()),
        sub(mint_token(&config, now).unwrap()),
    );
    assert_ne!(one, two);
    assert!(
        one.starts_with("admin:") && two.starts_with("admin:"),
        "{one} {two}"
    );
    let named = TokenConfig {
        sub: Some("ops@example.com".into()),
        ..config
    };
    assert_eq!(sub(mint_token(&named, now).unwrap()), "ops@example.com");
}
