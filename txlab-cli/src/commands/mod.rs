//! One file per command.

pub mod bench;
pub mod report;
pub mod run;
