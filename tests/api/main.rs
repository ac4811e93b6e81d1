//! One test binary (fast to link), one module per area. Every test gets its
//! own freshly migrated database, so they all run in parallel.

mod helpers;

mod engine;
mod migrate;
mod realtime;
