//! Open-loop load: a seeded arrival schedule, generated orders, and a driver
//! that sends each order at its intended time whatever the latency of the
//! ones before (no coordinated omission), then follows it to a decision.
//!
//! - [`schedule`]: arrival offsets (constant or Poisson).
//! - [`orders`]: the order each arrival sends, from the scenario's template.
//! - [`driver`]: sends, follows and records; HDR histograms and a per-second series.
//! - [`client`]: the driver's lean keep-alive HTTP/1.1 client.

pub mod client;
pub mod driver;
pub mod orders;
pub mod schedule;

pub use driver::{drive, LoadReport, SecondStats};

/// A seed for one cell's randomness that is the same for every method, so
/// methods are compared on identical orders at identical offsets.
pub fn cell_seed(profile_seed: u64, scenario: &str, repetition: u32) -> u64 {
    // FNV-1a: stable across platforms and releases, unlike std's hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ profile_seed;
    for b in scenario.bytes().chain(repetition.to_le_bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}
