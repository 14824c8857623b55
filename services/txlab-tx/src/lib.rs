//! The transaction protocols of txlab as pure rules: no database, no broker,
//! no network, so they are tested exhaustively in memory (`cargo test -p
//! txlab-tx` builds no Kafka or PostgreSQL client). The services' adapters
//! (outbox relay, inbox, Kafka clients) live in `txlab-svc`'s messaging.
//!
//! - [`saga`]: the orchestrated saga as a pure state machine: given what has
//!   been persisted, it names the next action (run a step, compensate one,
//!   finish). Resuming after a crash is just loading the records again.
//! - [`two_phase`]: the 2PC / TCC coordinator as a pure state machine: votes,
//!   one durable decision, then that decision driven everywhere.
//! - [`choreography`]: the event-driven methods (`saga_chor`, `outbox`) as
//!   pure rules: who reacts to which event, and the order's verdict.
//! - [`retry`]: exponential backoff with jitter and a cap.
//! - [`offsets`]: which offsets a concurrent consumer may commit.

pub mod choreography;
pub mod offsets;
pub mod retry;
pub mod saga;
pub mod two_phase;

/// Milliseconds since the Unix epoch, the one clock format the lab stores.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
