//! Logs are structured (`tracing`). Filter with `RUST_LOG`; `LOG_FORMAT=json`
//! switches to one JSON object per line for log shippers.

use tracing_subscriber::{fmt, EnvFilter};

pub fn init() {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,tower_http=info"));
    let json = std::env::var("LOG_FORMAT").is_ok_and(|v| v == "json");
    let builder = fmt().with_env_filter(filter).with_target(false);
    // try_init: tests call into the library many times in one process.
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
