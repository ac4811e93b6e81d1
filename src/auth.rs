//! Who is calling. A JWT carries `sub`, `role` (`partner` or `admin`),
//! `partner_id` (required for partners; a number or a numeric string, as
//! identity providers emit strings) and `exp` (required). A partner may see
//! only its own partner's data; an admin sees all.
//!
//! Two kinds of signature, chosen by the header's `alg`: HS256 with
//! `JWT_SECRET` (local use, the `token` subcommand), and RS256 or ES256 with a
//! key of the identity provider's JWKS (`JWKS_URL`), found by the header's
//! `kid`, with `iss` and `aud` checked when configured. Any other `alg`
//! (`none` included) is refused, and a key is only ever used with the one
//! algorithm its JWKS entry is for, so an HS256 token can never be checked
//! against a public key. [`Verifier`] is the one place tokens are checked.
//! Tokens are never logged.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use jsonwebtoken::{
    decode, decode_header, encode,
    errors::ErrorKind,
    jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse},
    Algorithm, DecodingKey, EncodingKey, Header, Validation,
};
use serde::{Deserialize, Deserializer, Serialize};

use crate::config::IdentityProviderConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Partner,
    Admin,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub role: Role,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "number_or_numeric_string"
    )]
    pub partner_id: Option<i64>,
    /// Expiry, seconds since the epoch.
    pub exp: i64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("the token has expired")]
    Expired,
    #[error("the token is invalid")]
    Invalid,
    #[error("a partner token must carry partner_id")]
    MissingPartner,
    #[error("the token's issuer (iss) is not the one this service trusts")]
    WrongIssuer,
    #[error("the token's audience (aud) is not this service")]
    WrongAudience,
    #[error("the token's signing key (kid) is not in the identity provider's key set")]
    UnknownKey,
}

impl Claims {
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }

    /// Admins may see every partner; a partner only itself.
    pub fn may_see_partner(&self, partner_id: i64) -> bool {
        self.is_admin() || self.partner_id == Some(partner_id)
    }
}

/// Checks an HS256 token: signature, algorithm (HS256 only) and expiry (no leeway).
pub fn verify(token: &str, secret: &str) -> Result<Claims, AuthError> {
    decode_claims(
        token,
        &DecodingKey::from_secret(secret.as_bytes()),
        &validation(Algorithm::HS256),
    )
}

/// One algorithm, `exp` and `sub` required, expiry without leeway.
fn validation(algorithm: Algorithm) -> Validation {
    let mut validation = Validation::new(algorithm);
    validation.leeway = 0;
    validation.set_required_spec_claims(&["exp", "sub"]);
    validation
}

fn decode_claims(
    token: &str,
    key: &DecodingKey,
    validation: &Validation,
) -> Result<Claims, AuthError> {
    let claims = decode::<Claims>(token, key, validation)
        .map_err(|e| match e.kind() {
            ErrorKind::ExpiredSignature => AuthError::Expired,
            ErrorKind::InvalidIssuer => AuthError::WrongIssuer,
            ErrorKind::InvalidAudience => AuthError::WrongAudience,
            ErrorKind::MissingRequiredClaim(claim) if claim == "iss" => AuthError::WrongIssuer,
            ErrorKind::MissingRequiredClaim(claim) if claim == "aud" => AuthError::WrongAudience,
            _ => AuthError::Invalid,
        })?
        .claims;
    if claims.role == Role::Partner && claims.partner_id.is_none() {
        return Err(AuthError::MissingPartner);
    }
    Ok(claims)
}

/// `partner_id` as a JSON number (`7`) or a string holding exactly one
/// (`"7"`; not `"07"`, `"+7"` or `" 7"`); anything else fails the token.
fn number_or_numeric_string<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<i64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Id {
        Number(i64),
        Text(String),
    }
    match Option::<Id>::deserialize(deserializer)? {
        None => Ok(None),
        Some(Id::Number(n)) => Ok(Some(n)),
        Some(Id::Text(text)) => text
            .parse::<i64>()
            .ok()
            .filter(|n| n.to_string() == text)
            .map(Some)
            .ok_or_else(|| serde::de::Error::custom("partner_id must be an integer")),
    }
}

/// The one place tokens are checked: HS256 against `JWT_SECRET`, RS256 and
/// ES256 against the identity provider's keys. Cheap to share (`Arc`).
pub struct Verifier {
    secret: DecodingKey,
    provider: Option<IdentityProvider>,
}

impl Verifier {
    pub fn new(secret: &str, config: &IdentityProviderConfig) -> anyhow::Result<Self> {
        let provider = match &config.jwks_url {
            Some(url) => Some(IdentityProvider::new(url, config)?),
            None => None,
        };
        Ok(Self {
            secret: DecodingKey::from_secret(secret.as_bytes()),
            provider,
        })
    }

    pub async fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        let header = decode_header(token).map_err(|_| AuthError::Invalid)?;
        match header.alg {
            Algorithm::HS256 => decode_claims(token, &self.secret, &validation(Algorithm::HS256)),
            Algorithm::RS256 | Algorithm::ES256 => match &self.provider {
                Some(provider) => provider.verify(token, &header).await,
                None => Err(AuthError::Invalid),
            },
            _ => Err(AuthError::Invalid),
        }
    }
}

/// A fetch of the JWKS gives up after this long.
const JWKS_FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Keys older than this are refetched on the next token, so a key the
/// provider withdrew stops being accepted.
const JWKS_MAX_AGE: Duration = Duration::from_secs(600);

/// The identity provider's keys by `kid`, fetched when a token needs a key
/// not yet seen (key rotation) or the set is older than [`JWKS_MAX_AGE`],
/// at most once per `JWKS_MIN_REFRESH_MS`.
struct IdentityProvider {
    url: String,
    issuer: Option<String>,
    audience: Option<String>,
    http: reqwest::Client,
    min_refresh: Duration,
    keys: RwLock<KeySet>,
    /// When the last fetch started; held while fetching, so concurrent
    /// tokens with an unknown `kid` cause one fetch, not one each.
    last_fetch: tokio::sync::Mutex<Option<Instant>>,
}

#[derive(Default)]
struct KeySet {
    by_kid: HashMap<String, Arc<ProviderKey>>,
    fetched_at: Option<Instant>,
}

/// A public key and the one algorithm it verifies.
struct ProviderKey {
    algorithm: Algorithm,
    key: DecodingKey,
}

impl IdentityProvider {
    fn new(url: &str, config: &IdentityProviderConfig) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(JWKS_FETCH_TIMEOUT)
            .connect_timeout(JWKS_FETCH_TIMEOUT)
            .build()?;
        Ok(Self {
            url: url.to_owned(),
            issuer: config.jwt_issuer.clone(),
            audience: config.jwt_audience.clone(),
            http,
            min_refresh: Duration::from_millis(config.jwks_min_refresh_ms),
            keys: RwLock::default(),
            last_fetch: tokio::sync::Mutex::new(None),
        })
    }

    async fn verify(&self, token: &str, header: &Header) -> Result<Claims, AuthError> {
        let kid = header.kid.as_deref().ok_or(AuthError::UnknownKey)?;
        let key = match self.cached(kid) {
            (Some(key), false) => key,
            (known, _) => {
                // An unknown kid waits for the fetch. A known key in a set
                // due for a refetch does not: one caller refetches, the
                // others go on with the set they have.
                self.refresh(known.is_none()).await;
                self.cached(kid).0.ok_or(AuthError::UnknownKey)?
            }
        };
        if key.algorithm != header.alg {
            return Err(AuthError::Invalid);
        }
        // A configured issuer or audience is also required: jsonwebtoken
        // checks only the claims that are present.
        let mut validation = validation(key.algorithm);
        if let Some(issuer) = &self.issuer {
            validation.set_issuer(&[issuer]);
            validation.required_spec_claims.insert("iss".into());
        }
        match &self.audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                validation.required_spec_claims.insert("aud".into());
            }
            // Providers put an `aud` in every token; unconfigured, it is not checked.
            None => validation.validate_aud = false,
        }
        decode_claims(token, &key.key, &validation)
    }

    /// The key for `kid`, if known, and whether the set is due for a refetch.
    fn cached(&self, kid: &str) -> (Option<Arc<ProviderKey>>, bool) {
        let keys = self
            .keys
            .read()
            .expect("the key set lock is never poisoned");
        let stale = keys
            .fetched_at
            .is_none_or(|at| at.elapsed() >= JWKS_MAX_AGE);
        (keys.by_kid.get(kid).cloned(), stale)
    }

    /// Refetches the set unless a fetch started less than `min_refresh` ago
    /// (or, unless `wait`, one is under way). A failed fetch keeps the keys
    /// already known.
    async fn refresh(&self, wait: bool) {
        let mut last_fetch = match self.last_fetch.try_lock() {
            Ok(guard) => guard,
            Err(_) if wait => self.last_fetch.lock().await,
            Err(_) => return,
        };
        if last_fetch.is_some_and(|at| at.elapsed() < self.min_refresh) {
            return;
        }
        *last_fetch = Some(Instant::now());
        match self.fetch().await {
            Ok(by_kid) => {
                tracing::info!(url = %self.url, keys = by_kid.len(), "fetched the identity provider's keys");
                *self
                    .keys
                    .write()
                    .expect("the key set lock is never poisoned") = KeySet {
                    by_kid,
                    fetched_at: Some(Instant::now()),
                };
            }
            Err(error) => {
                tracing::warn!(url = %self.url, error = %error, "cannot fetch the identity provider's keys");
            }
        }
    }

    async fn fetch(&self) -> anyhow::Result<HashMap<String, Arc<ProviderKey>>> {
        #[derive(Deserialize)]
        struct JwkSet {
            keys: Vec<serde_json::Value>,
        }
        let set: JwkSet = self
            .http
            .get(&self.url)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        // One key this service cannot use (an encryption key, another
        // curve) must not make the others unusable, so each is read alone.
        Ok(set
            .keys
            .into_iter()
            .filter_map(|value| serde_json::from_value::<Jwk>(value).ok())
            .filter_map(|jwk| {
                let key = provider_key(&jwk)?;
                Some((jwk.common.key_id?, Arc::new(key)))
            })
            .collect())
    }
}

/// The algorithm a JWKS entry is for (its `alg`, else the one its key type
/// implies) and its key; `None` for anything but an RS256 or ES256
/// signature key.
fn provider_key(jwk: &Jwk) -> Option<ProviderKey> {
    if matches!(
        jwk.common.public_key_use,
        Some(PublicKeyUse::Encryption | PublicKeyUse::Other(_))
    ) {
        return None;
    }
    let algorithm = match (&jwk.algorithm, &jwk.common.key_algorithm) {
        (AlgorithmParameters::RSA(_), None | Some(KeyAlgorithm::RS256)) => Algorithm::RS256,
        (AlgorithmParameters::EllipticCurve(ec), None | Some(KeyAlgorithm::ES256))
            if ec.curve == EllipticCurve::P256 =>
        {
            Algorithm::ES256
        }
        _ => return None,
    };
    let key = DecodingKey::from_jwk(jwk).ok()?;
    Some(ProviderKey { algorithm, key })
}

/// The token of an `Authorization` header value `Bearer <token>`: the one
/// parser for the REST extractor, the idempotency layer and the WebSocket
/// handshake, so that they never disagree about who is calling. The scheme
/// is case-insensitive (RFC 7235 §2.1: `bearer`, `BEARER`); spaces around
/// the token are allowed; anything else (another scheme, no token, a token
/// with a space in it) is `None`.
pub fn bearer_token(authorization: &str) -> Option<&str> {
    let (scheme, token) = authorization.trim().split_once([' ', '\t'])?;
    let token = token.trim_start_matches([' ', '\t']);
    (scheme.eq_ignore_ascii_case("bearer")
        && !token.is_empty()
        && !token.contains(|c: char| c.is_ascii_whitespace()))
    .then_some(token)
}

pub fn mint(claims: &Claims, secret: &str) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("HS256 signing with an in-memory key cannot fail")
}

#[cfg(test)]
mod tests {
    use super::bearer_token;

    #[test]
    fn the_bearer_scheme_is_case_insensitive_and_nothing_else_passes() {
        for value in [
            "Bearer t.k.n",
            "bearer t.k.n",
            "BEARER t.k.n",
            " Bearer   t.k.n  ",
            "Bearer\tt.k.n",
        ] {
            assert_eq!(bearer_token(value), Some("t.k.n"), "{value:?}");
        }
        for value in [
            "Basic dXNlcg==",
            "Bearer",
            "Bearer ",
            "Bearert.k.n",
            "Bearer a b",
            "",
            "t.k.n",
        ] {
            assert_eq!(bearer_token(value), None, "{value:?}");
        }
    }
}
