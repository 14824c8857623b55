//! Messaging with once-only effects, the IO half of the event-driven
//! methods (their rules are in `txlab_tx::choreography`).
//!
//! - [`outbox`]: write an event in the caller's transaction; one relay per
//!   database (the holder of an advisory lock) publishes it, woken in
//!   memory by its own process's writers, by NOTIFY from other replicas'.
//! - [`inbox`]: deduplicate consumed messages in the same transaction as
//!   their effect.
//! - [`kafka`]: producer, consumer and topic set-up with the settings the lab
//!   records (idempotent producer, `linger.ms=0`).
//! - [`consumer`]: reading a topic with offsets kept in the service's own
//!   database, handlers retried, poison messages dead-lettered.

pub mod consumer;
pub mod inbox;
pub mod kafka;
pub mod outbox;
