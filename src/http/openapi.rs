//! The OpenAPI document served at `/openapi.json`, generated from the
//! handlers' `#[utoipa::path]` annotations so it cannot drift from the code.

use axum::Json;
use utoipa::{
    openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
    Modify, OpenApi,
};

use super::{
    approvals, commissions, error, events, health, metrics, notifications, parked,
    partner_webhooks, partners, payments, payouts, webhooks,
};

#[derive(OpenApi)]
#[openapi(
    info(title = "commissions", description = "Payments verified in PostgreSQL earn partner commissions, relayed live over WebSocket at /notifications."),
    paths(
        partners::create, partners::list, partners::show, partners::update, partners::commissions, partners::events, partners::earnings,
        payments::create, payments::verify, payments::refund,
        approvals::run, events::list,
        payouts::run, payouts::list, payouts::for_partner, payouts::sent, payouts::paid, payouts::failed,
        partner_webhooks::register, partner_webhooks::list, partner_webhooks::disable, partner_webhooks::attempts,
        notifications::list, notifications::mark_read,
        webhooks::stripe::receive, webhooks::paystack::receive, parked::list, parked::reapply,
        health::healthz, health::readyz, metrics::render, document,
    ),
    components(schemas(error::Problem, commissions::Commission, partners::Totals, payouts::Payout)),
    modifiers(&BearerAuth),
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations", responses((status = 200, body = Object)))]
pub async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
