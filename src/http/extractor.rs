//! What a handler extracts from a request, with every rejection turned into
//! a problem: the authenticated [`Caller`], and JSON bodies, queries and paths
//! whose failures read as `application/problem+json` rather than axum's text.
//!
//! Invariant: a partner token reaches only its own partner's data. A refusal
//! says the same thing whether or not the other partner exists, so it leaks
//! nothing about it.

use axum::{
    extract::{FromRequest, FromRequestParts, OptionalFromRequestParts},
    http::{header, request::Parts},
};

use super::error::{Error, Result};
use crate::{
    auth::{self, AuthError, Claims},
    state::AppState,
};

/// The authenticated caller: the claims of a valid `Authorization: Bearer` JWT.
#[derive(Debug, Clone)]
pub struct Caller(pub Claims);

impl FromRequestParts<AppState> for Caller {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self> {
        let token = bearer_token(parts)?;
        let claims = state.verifier.verify(token).await.map_err(|e| match e {
            AuthError::Expired => {
                Error::Unauthorized("the token has expired: get a new one".into())
            }
            other => Error::Unauthorized(other.to_string()),
        })?;
        Ok(Caller(claims))
    }
}

fn bearer_token(parts: &Parts) -> Result<&str> {
    let value = parts
        .headers
        .get(header::AUTHORIZATION)
        .ok_or_else(|| Error::Unauthorized("send a token: Authorization: Bearer <jwt>".into()))?;
    value
        .to_str()
        .ok()
        .and_then(auth::bearer_token)
        .ok_or_else(|| Error::Unauthorized("the Authorization header must be: Bearer <jwt>".into()))
}

impl Caller {
    pub fn claims(&self) -> &Claims {
        &self.0
    }

    /// Admin-only endpoints call this first.
    pub fn require_admin(&self) -> Result<()> {
        if self.0.is_admin() {
            Ok(())
        } else {
            Err(Error::Forbidden("this endpoint is for admins".into()))
        }
    }

    /// Checked before any lookup, so the answer is the same for a partner
    /// that exists and one that does not.
    pub fn require_partner_access(&self, partner_id: i64) -> Result<()> {
        if self.0.may_see_partner(partner_id) {
            Ok(())
        } else {
            Err(Error::Forbidden(
                "a partner token may only read its own partner".into(),
            ))
        }
    }
}

/// A JSON body; failures become 400 (syntax), 415 (content type), 413 (size)
/// or 422 (wrong fields or types), each as a problem.
#[derive(FromRequest)]
#[from_request(via(axum::Json), rejection(Error))]
pub struct Json<T>(pub T);

impl<T: serde::Serialize> axum::response::IntoResponse for Json<T> {
    fn into_response(self) -> axum::response::Response {
        axum::Json(self.0).into_response()
    }
}

/// A query string; a malformed one is a 422 problem.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(Error))]
pub struct Query<T>(pub T);

/// Path parameters; one of the wrong type (`/api/payments/abc`) is a 400 problem.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(Error))]
pub struct Path<T>(pub T);

/// The `Idempotency-Key` header of an admin POST, if sent.
#[derive(Debug, Clone)]
pub struct IdempotencyKey(pub String);

impl<S: Send + Sync> OptionalFromRequestParts<S> for IdempotencyKey {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Option<Self>> {
        let Some(value) = parts.headers.get("idempotency-key") else {
            return Ok(None);
        };
        let key = value
            .to_str()
            .ok()
            .filter(|k| (1..=255).contains(&k.len()))
            .ok_or_else(|| {
                Error::BadRequest(
                    "Idempotency-Key must be 1 to 255 visible ASCII characters".into(),
                )
            })?;
        Ok(Some(IdempotencyKey(key.to_owned())))
    }
}

/// The raw body, for webhooks whose signature covers the exact bytes; a body
/// over the limit is a 413 problem like everywhere else.
pub struct RawBody(pub axum::body::Bytes);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = Error;

    async fn from_request(request: axum::extract::Request, state: &S) -> Result<Self> {
        Ok(RawBody(
            axum::body::Bytes::from_request(request, state).await?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use axum::http::{HeaderValue, Request};
    use proptest::prelude::*;

    use super::*;

    fn parts(authorization: HeaderValue) -> Parts {
        let mut request = Request::new(());
        request
            .headers_mut()
            .insert(header::AUTHORIZATION, authorization);
        request.into_parts().0
    }

    proptest! {
        /// Any header a client can send: a token or a 401, never a panic, and
        /// a token is never empty nor padded.
        #[test]
        fn any_authorization_header_is_a_token_or_a_401(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            let Ok(value) = HeaderValue::from_bytes(&bytes) else { return Ok(()) };
            let parts = parts(value);
            match bearer_token(&parts) {
                Ok(token) => {
                    prop_assert!(!token.is_empty());
                    prop_assert_eq!(token, token.trim());
                    prop_assert!(bytes.starts_with(b"Bearer ") || bytes.starts_with(b"bearer "));
                }
                Err(e) => prop_assert!(matches!(e, Error::Unauthorized(_))),
            }
        }

        #[test]
        fn a_bearer_token_is_read_back_exactly(
            scheme in prop::sample::select(vec!["Bearer", "bearer"]),
            token in "[A-Za-z0-9._~+/=-]{1,200}",
            padding in " {0,3}",
        ) {
            let value = HeaderValue::from_str(&format!("{scheme} {padding}{token}{padding}")).unwrap();
            let parts = parts(value);
            prop_assert_eq!(bearer_token(&parts).ok(), Some(token.as_str()));
        }
    }
}
