//! The correctness audit: after a cell has quiesced, are money, stock and
//! courier slots all accounted for, is every order all-or-nothing, did
//! everything terminate, did each effect happen exactly once, do the
//! outcomes and notifications form legal histories, and does the database
//! agree with what the client saw?
//!
//! [`collect`] reads raw rows from each service's database itself (one
//! consistent snapshot per database) and the topics' ends from the broker;
//! [`check`] is a pure function of those rows, the seed the lab sent and
//! the client's view, so every invariant is unit-tested on hand-made data
//! and, in the integration tests, broken on a real run.

pub mod collect;
mod invariants;

pub use collect::{quiesce, Reader, Snapshots};
pub use invariants::{check, AuditReport, ClientView, Violation, INVARIANTS};
