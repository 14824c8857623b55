//! One file per command.

pub mod report;
pub mod run;
