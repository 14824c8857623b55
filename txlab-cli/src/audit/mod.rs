//! The correctness audit: after a cell has quiesced, are money, stock and
//! courier slots all accounted for, is every order all-or-nothing, did
//! everything terminate, and did each effect happen exactly once?
//!
//! [`check`] is a pure function of the seed and the services' snapshots,
//! so every invariant is unit-tested on hand-made data; [`collect`] fetches
//! the snapshots from a running system.

mod collect;
mod invariants;

pub use collect::{collect, quiesce, Snapshots};
pub use invariants::{check, AuditReport, Violation};
