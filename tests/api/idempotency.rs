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

    // The effect marked its claim applied in its own transaction: the retry
    // is told it took effect (no Retry-After: retrying will not help).
    let retry = keyed(&app, &bearer, "k", "/api/payments", &body)
        .send()
        .await
        .unwrap();
    assert!(retry.headers().get("retry-after").is_none());
    let answer = problem(retry, 409, "conflict").await;
    assert!(
        answer["detail"].as_str().unwrap().contains("took effect"),
        "{answer}"
    );
    assert_eq!(
        app.count("SELECT count(*) FROM payments").await,
        1,
        "the effect is not repeated"
    );

    // DBAs see it among the stuck claims, as applied, and cannot release it.
    let sub = "ops@example.com";
    dba.batch_execute("UPDATE idempotency_keys SET created_at = now() - interval '10 minutes'")
        .await
        .unwrap();
    let stuck = dba
        .query(
            "SELECT route, applied_at IS NOT NULL FROM idempotency_stuck_claims",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(stuck.len(), 1);
    assert_eq!(stuck[0].get::<_, String>(0), "/api/payments");
    assert!(stuck[0].get::<_, bool>(1), "listed as applied");
    let release = "SELECT release_idempotency_claim($1, 'POST', '/api/payments', $2)";
    let released: bool = dba.query_one(release, &[&sub, &"k"]).await.unwrap().get(0);
    assert!(!released, "an applied claim is never released");

    // A claim that never got as far as its effect (a node killed before
    // the commit; here written by hand) is unknown to the client once old,
    // and an operator who has checked releases it; the key runs again.
    dba.execute(
        "INSERT INTO idempotency_keys (caller, method, route, path, key, request_hash, state, created_at)
         SELECT caller, method, route, path, 'k2', request_hash, 'in_progress', now() - interval '10 minutes'
           FROM idempotency_keys WHERE key = 'k'",
        &[],
    )
    .await
    .unwrap();
    let retry = keyed(&app, &bearer, "k2", "/api/payments", &body)
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
    let released: bool = dba.query_one(release, &[&sub, &"k2"]).await.unwrap().get(0);
    assert!(released);
    let again = keyed(&app, &bearer, "k2", "/api/payments", &body)
        .send()
        .await
        .unwrap();
    assert!(again.headers().get("idempotent-replayed").is_none());
    json(again, 201).await;
    assert_eq!(app.count("SELECT count(*) FROM payments").await, 2);
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

/// A TCP proxy in front of PostgreSQL that, once armed, swallows the next
/// COMMIT's acknowledgement and closes the connection: the transaction has
/// committed, and the client sees only its connection drop. (Connections
/// through it must use sslmode=disable, so the stream is readable.)
struct CommitAckDropper {
    port: u16,
    armed: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl CommitAckDropper {
    async fn start(upstream: String) -> Self {
        use std::sync::atomic::Ordering::SeqCst;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let armed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = armed.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let flag = flag.clone();
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else {
                        return;
                    };
                    let (mut client_read, mut client_write) = client.into_split();
                    let (mut server_read, mut server_write) = server.into_split();
                    let to_server = tokio::spawn(async move {
                        let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
                    });
                    // Server to client message by message: a type byte, a
                    // length that counts itself, the body.
                    loop {
                        let mut header = [0u8; 5];
                        if server_read.read_exact(&mut header).await.is_err() {
                            break;
                        }
                        let length = u32::from_be_bytes(header[1..].try_into().unwrap()) as usize;
                        let mut body = vec![0u8; length.saturating_sub(4)];
                        if server_read.read_exact(&mut body).await.is_err() {
                            break;
                        }
                        if header[0] == b'C' && body == b"COMMIT\0" && flag.swap(false, SeqCst) {
                            break;
                        }
                        if client_write.write_all(&header).await.is_err()
                            || client_write.write_all(&body).await.is_err()
                        {
                            break;
                        }
                    }
                    to_server.abort();
                });
            }
        });
        Self { port, armed }
    }

    fn arm(&self) {
        self.armed.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    fn fired(&self) -> bool {
        !self.armed.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// `url` with its host and port replaced by the proxy's, TLS off.
fn through(url: &str, port: u16) -> (String, String) {
    let (scheme, rest) = url.split_once("://").unwrap();
    let (authority, path) = rest.split_once('/').unwrap();
    let (user, host) = authority.rsplit_once('@').unwrap();
    let separator = if path.contains('?') { '&' } else { '?' };
    (
        format!("{scheme}://{user}@127.0.0.1:{port}/{path}{separator}sslmode=disable"),
        host.to_owned(),
    )
}

/// Before the fix a 5xx always released the claim, on the belief that the
/// handler's transaction had rolled back. When the COMMIT landed but its
/// acknowledgement was lost, the retry ran again: a second payment, a
/// second refund.
#[tokio::test]
async fn a_lost_commit_acknowledgement_does_not_let_a_retry_repeat_the_effect() {
    let db = TestDatabase::new().await;
    let (_, upstream) = through(&db.service_url, 0);
    let proxy = CommitAckDropper::start(upstream).await;
    let (url, _) = through(&db.service_url, proxy.port);
    let node = crate::helpers::spawn_node(&url, |_| {}).await;
    let app = TestApp {
        address: node.address,
        base: node.base.clone(),
        http: reqwest::Client::new(),
        node,
        db,
    };
    let bearer = format!("Bearer {}", admin_token());
    let partner = crate::helpers::create_partner(&app.db.pool, "Acme", None).await;

    // A payment recorded under a key.
    let body = json!({"amount": "100.00", "currency": "NGN", "partner_id": partner});
    proxy.arm();
    let first = keyed(&app, &bearer, "lost-ack-1", "/api/payments", &body)
        .send()
        .await
        .unwrap();
    assert!(
        proxy.fired(),
        "the proxy swallowed a COMMIT acknowledgement"
    );
    assert!(first.status().is_server_error(), "{}", first.status());
    assert_eq!(
        app.count("SELECT count(*) FROM payments").await,
        1,
        "it committed"
    );
    let retry = keyed(&app, &bearer, "lost-ack-1", "/api/payments", &body)
        .send()
        .await
        .unwrap();
    let answer = problem(retry, 409, "conflict").await;
    assert!(
        answer["detail"].as_str().unwrap().contains("took effect"),
        "{answer}"
    );
    assert_eq!(
        app.count("SELECT count(*) FROM payments").await,
        1,
        "not twice"
    );

    // A partial refund under a key: the money case.
    let payment = app.count("SELECT max(id) FROM payments").await;
    app.verify(payment).await;
    let refund = json!({"amount": "10.00"});
    let path = format!("/api/payments/{payment}/refund");
    proxy.arm();
    let first = keyed(&app, &bearer, "lost-ack-2", &path, &refund)
        .send()
        .await
        .unwrap();
    assert!(proxy.fired());
    assert!(first.status().is_server_error(), "{}", first.status());
    let retry = keyed(&app, &bearer, "lost-ack-2", &path, &refund)
        .send()
        .await
        .unwrap();
    problem(retry, 409, "conflict").await;
    assert_eq!(
        app.count(&format!(
            "SELECT (refunded_amount * 100)::bigint FROM payments WHERE id = {payment}"
        ))
        .await,
        1000,
        "refunded 10.00 once, not 20.00"
    );
    assert_eq!(app.count("SELECT count(*) FROM commission_audit").await, 0);
}
