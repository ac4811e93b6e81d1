//! One test binary (fast to link), one module per area. Every test gets its
//! own freshly migrated database, so they all run in parallel.

mod callers;
mod helpers;

mod dashboard;
mod auth;
mod engine;
mod migrate;
mod partners;
mod payments;
mod service;
mod webhooks;
mod realtime;
