//! Structured logs: one JSON object per line on stdout, so the lab can keep
//! them per cell and a reader can grep by `order_id`.

use tracing_subscriber::EnvFilter;

pub fn init(role: txlab_api::Role) {
    let filter = EnvFilter::try_from_env("TXLAB_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,rdkafka=warn"));
    let _ = tracing_subscriber::fmt()
        .json()
        .with_current_span(true)
        .with_span_list(false)
        .with_env_filter(filter)
        .try_init();
    tracing::info!(role = %role, "starting");
}
