//! `POST /webhooks/paystack`. `x-paystack-signature` is the hex HMAC-SHA512
//! of the raw body, keyed with the Paystack secret key; compared in constant
//! time. Paystack events carry no id, so ours is `<event>:<reference>`: the
//! same charge or refund delivered again maps to the same id.
//!
//! Events acted on: `charge.success` verifies (`data.reference`, amount in
//! kobo or the currency's minor unit, partner from `data.metadata.partner_id`);
//! `refund.processed` refunds the payment of `data.transaction_reference`
//! (or `data.reference`).

use axum::{extract::State, http::HeaderMap};
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha512;

use super::{Action, Delivery, PartnerRef, Receipt};
use crate::{
    http::{
        error::{Error, Result},
        extractor::{Json, RawBody},
    },
    startup::AppState,
};

/// Receive a Paystack event.
#[utoipa::path(post, path = "/webhooks/paystack", tag = "webhooks",
    params(("x-paystack-signature" = String, Header, description = "hex HMAC-SHA512 of the raw body")),
    request_body(content = Object, description = "A Paystack event, exactly as Paystack sent it"),
    responses((status = 200, body = super::Receipt, description = "Accepted (also for redeliveries and events we do not act on)"),
              (status = 400, body = crate::http::error::Problem, description = "Missing or wrong signature"),
              (status = 413, body = crate::http::error::Problem), (status = 503, body = crate::http::error::Problem, description = "Not configured")))]
#[tracing::instrument(skip_all)]
pub async fn receive(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<Json<Receipt>> {
    let secret = super::secret(&state.config.paystack_secret_key, "paystack")?;
    let signature = super::signature_header(&headers, "x-paystack-signature")?;
    check_signature(signature, &body, secret.expose().as_bytes())?;

    let event = super::parse_body(&body)?;
    let event_type = event["event"].as_str().unwrap_or_default().to_owned();
    let data = &event["data"];
    let reference = match event_type.as_str() {
        "refund.processed" => data["transaction_reference"]
            .as_str()
            .or_else(|| data["reference"].as_str()),
        _ => data["reference"].as_str(),
    }
    .filter(|r| !r.is_empty())
    .ok_or_else(|| Error::BadRequest("the event has no data.reference".into()))?;
    let action = action(&event_type, reference, data);
    let delivery = Delivery {
        provider: "paystack",
        event_id: format!("{event_type}:{reference}"),
        event_type,
        payload: &event,
        action,
    };
    Ok(Json(super::apply(&state, delivery).await?))
}

fn action(event_type: &str, reference: &str, data: &Value) -> Action {
    match event_type {
        "charge.success" => {
            let (Some(amount_minor), Some(currency)) =
                (data["amount"].as_i64(), data["currency"].as_str())
            else {
                return Action::Unsupported;
            };
            Action::Verify {
                reference: reference.to_owned(),
                amount_minor,
                currency: currency.to_owned(),
                partner_id: PartnerRef::from_metadata(data["metadata"].get("partner_id")),
            }
        }
        "refund.processed" => Action::Refund {
            reference: reference.to_owned(),
            amount_minor: data["amount"].as_i64(),
        },
        _ => Action::Unsupported,
    }
}

/// Checks `x-paystack-signature` against the raw body.
pub fn check_signature(signature: &str, body: &[u8], secret: &[u8]) -> Result<()> {
    let expected = hex::decode(signature.trim())
        .map_err(|_| Error::InvalidSignature("x-paystack-signature is not hex".into()))?;
    let mut mac = Hmac::<Sha512>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(body);
    mac.verify_slice(&expected)
        .map_err(|_| Error::InvalidSignature("x-paystack-signature does not match the body".into()))
}
