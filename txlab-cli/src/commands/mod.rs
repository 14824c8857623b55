//! One file per command.

pub mod bench;
pub mod chaos;
pub mod compare;
pub mod lab;
pub mod report;
pub mod run;
pub mod schema;
