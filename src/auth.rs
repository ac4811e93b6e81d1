//! Who is calling. A JWT (HS256, `JWT_SECRET`) carries `sub`, `role`
//! (`partner` or `admin`), `partner_id` (required for partners) and `exp`
//! (required). A partner may see only its own partner's data; an admin sees all.

use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

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
    #[serde(default, skip_serializing_if = "Option::is_none")]
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

/// Checks signature, algorithm (HS256 only) and expiry (no leeway).
pub fn verify(token: &str, secret: &str) -> Result<Claims, AuthError> {
    let mut validation = Validation::new(Algorithm::HS256);
    validation.leeway = 0;
    validation.set_required_spec_claims(&["exp", "sub"]);
    let claims = decode::<Claims>(
        token,
        &DecodingKey::from_secret(secret.as_bytes()),
        &validation,
    )
    .map_err(|e| match e.kind() {
        jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
        _ => AuthError::Invalid,
    })?
    .claims;
    if claims.role == Role::Partner && claims.partner_id.is_none() {
        return Err(AuthError::MissingPartner);
    }
    Ok(claims)
}

pub fn mint(claims: &Claims, secret: &str) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("HS256 signing with an in-memory key cannot fail")
}
