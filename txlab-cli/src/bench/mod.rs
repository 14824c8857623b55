//! Benchmarks: how fast each method can go on this machine, and why not faster.
//!
//! - [`ceiling`]: the commit rate PostgreSQL itself sustains (pgbench).
//! - [`commits`]: the durable commits (and all transactions) a checkout costs.
//! - [`hops`]: where an event-driven checkout's time goes, hop by hop.
//! - [`knee`]: the search for the highest rate a method sustains.
//! - [`overload`]: what happens beyond it, and how fast latency recovers.
//! - [`driver`]: how much load the driver itself can offer, next to wrk.
//!
//! `txlab bench` (commands/bench.rs) runs them on the local platform and
//! writes `bench.json`, `knee.csv` and every cell it ran into a results
//! directory, like `txlab run`.

pub mod ceiling;
pub mod commits;
pub mod driver;
pub mod hops;
pub mod knee;
pub mod overload;
