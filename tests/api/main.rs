//! One test binary (fast to link), one module per area. Every test gets its
//! own freshly migrated database, so they all run in parallel.

mod callers;
mod cluster;
mod helpers;

mod auth;
mod batches;
mod console;
mod dashboard;
mod engine;
mod export;
mod faults;
mod idempotency;
mod jwks;
mod lifecycle;
mod locks;
mod migrate;
mod partner_webhooks;
mod partners;
mod payments;
mod poison;
mod realtime;
mod recurring;
mod refunds_and_disputes;
mod roles;
mod service;
mod streams;
mod tls;
mod verify_batches;
mod webhook_batches;
mod webhooks;
