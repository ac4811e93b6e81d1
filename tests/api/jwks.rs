//! Tokens from an identity provider: RS256 and ES256 tokens signed with keys
//! this test generates, checked against a JWKS this test serves, as Auth0,
//! Clerk, Supabase or Keycloak would; and `partner_id` as a numeric string.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
};

use axum::{extract::State, routing::get, Json, Router};
use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use commissions::config::ServeConfig;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use rsa::{pkcs1::EncodeRsaPrivateKey, traits::PublicKeyParts, RsaPrivateKey};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite;

use crate::{
    callers::{now, problem},
    helpers::{create_partner, spawn_app, spawn_app_with, TestApp, TestDatabase, JWT_SECRET},
    realtime::open,
};

const ISSUER: &str = "https://tenant.example.com/";
const AUDIENCE: &str = "https://commissions.example.com";

/// A signing key of the identity provider and its public JWK.
struct ProviderKey {
    algorithm: Algorithm,
    kid: String,
    encoding: EncodingKey,
    jwk: Value,
}

impl ProviderKey {
    fn rsa(kid: &str) -> Self {
        let private = RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).expect("an RSA key");
        let der = private.to_pkcs1_der().expect("PKCS#1 DER");
        Self {
            algorithm: Algorithm::RS256,
            kid: kid.into(),
            encoding: EncodingKey::from_rsa_der(der.as_bytes()),
            jwk: json!({
                "kty": "RSA", "use": "sig", "alg": "RS256", "kid": kid,
                "n": URL_SAFE_NO_PAD.encode(private.n().to_bytes_be()),
                "e": URL_SAFE_NO_PAD.encode(private.e().to_bytes_be()),
            }),
        }
    }

    fn p256(kid: &str) -> Self {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        // Uncompressed point: 0x04 || x || y.
        let point = pair.public_key().as_ref();
        Self {
            algorithm: Algorithm::ES256,
            kid: kid.into(),
            encoding: EncodingKey::from_ec_der(pkcs8.as_ref()),
            jwk: json!({
                "kty": "EC", "use": "sig", "crv": "P-256", "kid": kid,
                "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
                "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
            }),
        }
    }

    /// A token signed by this key, under its `kid`.
    fn sign(&self, claims: &Value) -> String {
        self.sign_as(self.algorithm, Some(&self.kid), claims)
    }

    fn sign_as(&self, algorithm: Algorithm, kid: Option<&str>, claims: &Value) -> String {
        let mut header = Header::new(algorithm);
        header.kid = kid.map(str::to_owned);
        encode(&header, claims, &self.encoding).expect("signing")
    }
}

/// Claims as an identity provider issues them: `partner_id` as a string.
fn partner_claims(partner_id: i64) -> Value {
    json!({
        "sub": format!("idp|{partner_id}"),
        "role": "partner",
        "partner_id": partner_id.to_string(),
        "iss": ISSUER,
        "aud": [AUDIENCE, "https://tenant.example.com/userinfo"],
        "iat": now(),
        "exp": now() + 600,
    })
}

/// The identity provider's JWKS endpoint, on 127.0.0.1:0, counting its fetches.
struct JwksServer {
    url: String,
    keys: Arc<Mutex<Vec<Value>>>,
    fetches: Arc<AtomicUsize>,
}

#[derive(Clone)]
struct Served {
    keys: Arc<Mutex<Vec<Value>>>,
    fetches: Arc<AtomicUsize>,
}

impl JwksServer {
    async fn start(keys: &[&ProviderKey]) -> Self {
        let served = Served {
            keys: Arc::new(Mutex::new(Vec::new())),
            fetches: Arc::new(AtomicUsize::new(0)),
        };
        let router = Router::new()
            .route(
                "/.well-known/jwks.json",
                get(|State(served): State<Served>| async move {
                    served.fetches.fetch_add(1, Ordering::SeqCst);
                    Json(json!({ "keys": *served.keys.lock().unwrap() }))
                }),
            )
            .with_state(served.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address: SocketAddr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await });
        let server = Self {
            url: format!("http://{address}/.well-known/jwks.json"),
            keys: served.keys,
            fetches: served.fetches,
        };
        server.serve(keys);
        server
    }

    /// From now on the JWKS holds exactly these keys.
    fn serve(&self, keys: &[&ProviderKey]) {
        *self.keys.lock().unwrap() = keys.iter().map(|k| k.jwk.clone()).collect();
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

/// A node that trusts `jwks` and checks our issuer and audience.
async fn spawn_app_trusting(
    jwks: &JwksServer,
    configure: impl FnOnce(&mut ServeConfig),
) -> TestApp {
    let url = jwks.url.clone();
    spawn_app_with(TestDatabase::new().await, move |config| {
        config.identity_provider.jwks_url = Some(url);
        config.identity_provider.jwt_issuer = Some(ISSUER.into());
        config.identity_provider.jwt_audience = Some(AUDIENCE.into());
        configure(config);
    })
    .await
}

/// The handshake's refusal status, for a token the socket must not accept.
async fn refused_socket(app: &TestApp, token: &str) -> u16 {
    let url = format!("ws://{}/notifications?token={token}", app.address);
    match tokio_tungstenite::connect_async(url).await {
        Err(tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(other) => panic!("expected an HTTP refusal, got {other}"),
        Ok(_) => panic!("the socket opened"),
    }
}

#[tokio::test]
async fn rs256_and_es256_tokens_from_the_jwks_are_accepted_on_rest_and_the_socket() {
    let rsa = ProviderKey::rsa("rsa-2026-01");
    let ec = ProviderKey::p256("ec-2026-01");
    let jwks = JwksServer::start(&[&rsa, &ec]).await;
    let app = spawn_app_trusting(&jwks, |_| {}).await;
    let partner = create_partner(&app.db.pool, "Acme", None).await;
    let path = format!("/api/partners/{partner}");

    for key in [&rsa, &ec] {
        let token = key.sign(&partner_claims(partner));
        let response = app.get_as(&token, &path).await;
        assert_eq!(response.status(), 200, "{:?}", key.algorithm);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["id"], partner);

        let (_ws, ready) = open(app.address, &format!("token={token}")).await;
        assert_eq!(ready["type"], "ready");
    }

    // An admin from the provider may do what an admin does.
    let mut admin = partner_claims(partner);
    admin["role"] = json!("admin");
    admin.as_object_mut().unwrap().remove("partner_id");
    let admin = rsa.sign(&admin);
    let response = app
        .post_as(&admin, "/api/partners", &json!({"name": "Beta"}))
        .await;
    assert_eq!(response.status(), 201);
    // Idempotency keys work for it too (that layer reads the token itself).
    let mut replayed = Vec::new();
    for _ in 0..2 {
        let response = app
            .http
            .post(app.url("/api/partners"))
            .bearer_auth(&admin)
            .header("Idempotency-Key", "create-gamma")
            .json(&json!({"name": "Gamma"}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
        replayed.push(response.headers().contains_key("idempotent-replayed"));
    }
    assert_eq!(replayed, [false, true]);

    // HS256 tokens signed with JWT_SECRET still work beside the provider's.
    let local = app
        .get_as(&crate::callers::partner_token(partner), &path)
        .await;
    assert_eq!(local.status(), 200);
    // Cached: one fetch served every token.
    assert_eq!(jwks.fetches(), 1);
}

#[tokio::test]
async fn a_wrong_or_missing_issuer_or_audience_is_401() {
    let rsa = ProviderKey::rsa("rsa-1");
    let jwks = JwksServer::start(&[&rsa]).await;
    let app = spawn_app_trusting(&jwks, |_| {}).await;
    let partner = create_partner(&app.db.pool, "Acme", None).await;
    let path = format!("/api/partners/{partner}");

    let good = partner_claims(partner);
    assert_eq!(app.get_as(&rsa.sign(&good), &path).await.status(), 200);

    let cases: [(&str, &str, Option<Value>); 4] = [
        ("iss", "issuer", Some(json!("https://evil.example.com/"))),
        ("iss", "issuer", None),
        (
            "aud",
            "audience",
            Some(json!("https://another-api.example.com")),
        ),
        ("aud", "audience", None),
    ];
    for (claim, word, value) in cases {
        let mut claims = good.clone();
        match value {
            Some(value) => claims[claim] = value,
            None => {
                claims.as_object_mut().unwrap().remove(claim);
            }
        }
        let token = rsa.sign(&claims);
        let body = problem(app.get_as(&token, &path).await, 401, "unauthorized").await;
        assert!(
            body["detail"].as_str().unwrap().contains(word),
            "{claim}: {body}"
        );
        assert_eq!(refused_socket(&app, &token).await, 401, "{claim}");
    }
}

#[tokio::test]
async fn a_token_signed_by_a_key_not_in_the_jwks_is_401() {
    let served = ProviderKey::rsa("served");
    let jwks = JwksServer::start(&[&served]).await;
    let app = spawn_app_trusting(&jwks, |_| {}).await;
    let partner = create_partner(&app.db.pool, "Acme", None).await;
    let path = format!("/api/partners/{partner}");
    let claims = partner_claims(partner);
    assert_eq!(app.get_as(&served.sign(&claims), &path).await.status(), 200);

    let stranger = ProviderKey::rsa("stranger");
    // An unknown kid, a known kid over someone else's signature, no kid at all.
    for token in [
        stranger.sign(&claims),
        stranger.sign_as(Algorithm::RS256, Some("served"), &claims),
        served.sign_as(Algorithm::RS256, None, &claims),
    ] {
        problem(app.get_as(&token, &path).await, 401, "unauthorized").await;
        assert_eq!(refused_socket(&app, &token).await, 401);
    }
}

#[tokio::test]
async fn a_rotated_key_is_fetched_on_its_first_token_without_a_restart() {
    let old = ProviderKey::rsa("2026-01");
    let jwks = JwksServer::start(&[&old]).await;
    let app = spawn_app_trusting(&jwks, |config| {
        config.identity_provider.jwks_min_refresh_ms = 0;
    })
    .await;
    let partner = create_partner(&app.db.pool, "Acme", None).await;
    let path = format!("/api/partners/{partner}");
    let claims = partner_claims(partner);
    assert_eq!(app.get_as(&old.sign(&claims), &path).await.status(), 200);
    assert_eq!(jwks.fetches(), 1);

    // The provider rotates: a new key under a new kid, the old one withdrawn.
    let new = ProviderKey::p256("2026-02");
    jwks.serve(&[&new]);
    let token = new.sign(&claims);
    assert_eq!(app.get_as(&token, &path).await.status(), 200);
    assert_eq!(jwks.fetches(), 2, "the unknown kid caused one fetch");
    let (_ws, ready) = open(app.address, &format!("token={token}")).await;
    assert_eq!(ready["type"], "ready");

    // The withdrawn key is gone with the refreshed set.
    problem(
        app.get_as(&old.sign(&claims), &path).await,
        401,
        "unauthorized",
    )
    .await;
}

#[tokio::test]
async fn tokens_with_unknown_kids_cause_at_most_one_fetch_per_interval() {
    let rsa = ProviderKey::rsa("real");
    let jwks = JwksServer::start(&[&rsa]).await;
    // The default interval, 5 s.
    let app = spawn_app_trusting(&jwks, |_| {}).await;
    let partner = create_partner(&app.db.pool, "Acme", None).await;
    let path = format!("/api/partners/{partner}");
    let claims = partner_claims(partner);
    assert_eq!(app.get_as(&rsa.sign(&claims), &path).await.status(), 200);

    let responses = futures::future::join_all((0..20).map(|i| {
        let token = rsa.sign_as(Algorithm::RS256, Some(&format!("made-up-{i}")), &claims);
        let app = &app;
        let path = &path;
        async move { app.get_as(&token, path).await.status() }
    }))
    .await;
    assert!(responses.iter().all(|s| *s == 401), "{responses:?}");
    assert_eq!(
        jwks.fetches(),
        1,
        "unknown kids did not amplify into fetches"
    );
}

#[tokio::test]
async fn alg_none_confused_and_unsupported_algorithms_are_401() {
    let rsa = ProviderKey::rsa("rsa-1");
    let ec = ProviderKey::p256("ec-1");
    let jwks = JwksServer::start(&[&rsa, &ec]).await;
    let app = spawn_app_trusting(&jwks, |_| {}).await;
    let partner = create_partner(&app.db.pool, "Acme", None).await;
    let path = format!("/api/partners/{partner}");
    let claims = partner_claims(partner);
    assert_eq!(app.get_as(&rsa.sign(&claims), &path).await.status(), 200);

    let b64 = |v: &Value| URL_SAFE_NO_PAD.encode(v.to_string());
    let none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT", "kid": "rsa-1"})),
        b64(&claims)
    );
    // HS256 "signed" with the public key: must never be checked against it.
    let public_as_secret = EncodingKey::from_secret(rsa.jwk.to_string().as_bytes());
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("rsa-1".into());
    let confused = encode(&header, &claims, &public_as_secret).unwrap();
    for token in [
        none,
        confused,
        // An RSA key used with another algorithm than its JWKS entry's.
        rsa.sign_as(Algorithm::RS384, Some("rsa-1"), &claims),
        rsa.sign_as(Algorithm::PS256, Some("rsa-1"), &claims),
        // An EC signature presented under the RSA key's kid.
        ec.sign_as(Algorithm::ES256, Some("rsa-1"), &claims),
    ] {
        problem(app.get_as(&token, &path).await, 401, "unauthorized").await;
        assert_eq!(refused_socket(&app, &token).await, 401);
    }

    // A node without JWKS_URL refuses the provider's tokens.
    let local = spawn_app().await;
    let partner = create_partner(&local.db.pool, "Acme", None).await;
    let token = rsa.sign(&partner_claims(partner));
    problem(
        local
            .get_as(&token, &format!("/api/partners/{partner}"))
            .await,
        401,
        "unauthorized",
    )
    .await;
}

#[tokio::test]
async fn partner_id_as_a_numeric_string_is_accepted_and_anything_else_is_401() {
    let app = spawn_app().await;
    let partner = create_partner(&app.db.pool, "Acme", None).await;
    let path = format!("/api/partners/{partner}");
    let hs256 = |partner_id: Value| {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &json!({
                "sub": "partner-user",
                "role": "partner",
                "partner_id": partner_id,
                "exp": now() + 600,
            }),
            &EncodingKey::from_secret(JWT_SECRET.as_bytes()),
        )
        .unwrap()
    };

    for accepted in [json!(partner), json!(partner.to_string())] {
        let token = hs256(accepted.clone());
        assert_eq!(app.get_as(&token, &path).await.status(), 200, "{accepted}");
        let (_ws, ready) = open(app.address, &format!("token={token}")).await;
        assert_eq!(ready["type"], "ready");
    }
    for refused in [
        json!(format!("0{partner}")),
        json!(format!("+{partner}")),
        json!(format!(" {partner}")),
        json!(""),
        json!("seven"),
        json!("99999999999999999999"),
        json!(partner as f64 + 0.5),
        json!(true),
        json!([partner]),
    ] {
        problem(
            app.get_as(&hs256(refused.clone()), &path).await,
            401,
            "unauthorized",
        )
        .await;
    }
}

#[tokio::test]
async fn a_node_refuses_a_jwks_url_that_is_not_http_and_treats_empty_settings_as_unset() {
    use commissions::startup::Application;

    let db = TestDatabase::new().await;
    let mut config = crate::helpers::serve_config(&db.service_url);
    config.identity_provider.jwks_url = Some("file:///etc/jwks.json".into());
    let error = Application::build(config)
        .await
        .err()
        .expect("the node refuses to start")
        .to_string();
    assert!(error.contains("JWKS_URL"), "{error}");

    let mut config = crate::helpers::serve_config(&db.service_url);
    config.identity_provider.jwks_url = Some(" ".into());
    config.identity_provider.jwt_issuer = Some(String::new());
    assert!(Application::build(config).await.is_ok());
}
