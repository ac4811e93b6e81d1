//! What the API's callers send: tokens for each role, webhook signatures
//! built exactly as the providers build them, and checks on problem bodies.

use commissions::auth::{self, Claims, Role};
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::{Sha256, Sha512};

use crate::helpers::{TestApp, JWT_SECRET, PAYSTACK_SECRET, STRIPE_SECRET};

pub fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

pub fn admin_token() -> String {
    auth::mint(
        &Claims {
            sub: "ops@example.com".into(),
            role: Role::Admin,
            partner_id: None,
            exp: now() + 600,
        },
        JWT_SECRET,
    )
}

pub fn partner_token(partner_id: i64) -> String {
    let claims = Claims {
        sub: format!("partner:{partner_id}"),
        role: Role::Partner,
        partner_id: Some(partner_id),
        exp: now() + 600,
    };
    auth::mint(&claims, JWT_SECRET)
}

/// `Stripe-Signature` as Stripe sends it: `t=<ts>,v1=<hex HMAC-SHA256(secret, "<ts>.<body>")>`.
pub fn stripe_signature(secret: &str, timestamp: i64, body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{timestamp}.{body}").as_bytes());
    format!(
        "t={timestamp},v1={}",
        hex::encode(mac.finalize().into_bytes())
    )
}

/// `x-paystack-signature` as Paystack sends it: hex HMAC-SHA512 of the raw body.
pub fn paystack_signature(secret: &str, body: &str) -> String {
    let mut mac = Hmac::<Sha512>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn get_as(&self, token: &str, path: &str) -> reqwest::Response {
        self.http
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .expect("request")
    }

    pub async fn post_as(&self, token: &str, path: &str, body: &Value) -> reqwest::Response {
        self.http
            .post(self.url(path))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .expect("request")
    }

    /// Verifies a payment through the API as an admin, expecting 200.
    pub async fn verify(&self, payment: i64) -> Value {
        let response = self
            .post_as(
                &admin_token(),
                &format!("/api/payments/{payment}/verify"),
                &serde_json::json!({}),
            )
            .await;
        json(response, 200).await
    }

    pub async fn stripe(&self, body: &str) -> reqwest::Response {
        self.http
            .post(self.url("/webhooks/stripe"))
            .header(
                "Stripe-Signature",
                stripe_signature(STRIPE_SECRET, now(), body),
            )
            .header("Content-Type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .expect("request")
    }

    pub async fn paystack(&self, body: &str) -> reqwest::Response {
        self.http
            .post(self.url("/webhooks/paystack"))
            .header(
                "x-paystack-signature",
                paystack_signature(PAYSTACK_SECRET, body),
            )
            .header("Content-Type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .expect("request")
    }

    /// The node's `/metrics`, as Prometheus scrapes it.
    pub async fn metrics(&self) -> String {
        self.http
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("request")
            .text()
            .await
            .expect("a text body")
    }

    /// A gauge of the node's `/metrics` (each test runs in a process of its
    /// own under nextest, so the gauge is this node's); 0 before it is set.
    pub async fn gauge(&self, name: &str) -> i64 {
        self.metrics()
            .await
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .map_or(0, |v| v.trim().parse::<f64>().unwrap() as i64)
    }

    pub async fn count(&self, sql: &str) -> i64 {
        sqlx::query_scalar::<_, i64>(sql)
            .fetch_one(&self.db.pool)
            .await
            .unwrap()
    }
}

/// Asserts the response is a problem+json with this status and type, and returns it.
pub async fn problem(response: reqwest::Response, status: u16, kind: &str) -> Value {
    assert_eq!(response.status().as_u16(), status, "status");
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(content_type.as_deref(), Some("application/problem+json"));
    let body: Value = response.json().await.expect("problem body is JSON");
    assert_eq!(body["type"], format!("/problems/{kind}"), "{body}");
    assert_eq!(body["status"], status);
    assert!(
        body["detail"].as_str().is_some_and(|d| !d.is_empty()),
        "a detail says what went wrong: {body}"
    );
    body
}

pub async fn json(response: reqwest::Response, status: u16) -> Value {
    let actual = response.status().as_u16();
    let body: Value = response.json().await.expect("JSON body");
    assert_eq!(actual, status, "{body}");
    body
}
