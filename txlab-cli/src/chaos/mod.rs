//! Chaos: faults between the lab's components, read from Chaos Mesh
//! objects (`chaos/*.yaml`), so one file means the same on both platforms.
//!
//! - [`mesh`]: the YAML, checked field by field.
//! - [`fault`]: what it means, independent of who enforces it.
//!
//! Locally [`crate::proxy`] enforces network faults on every link and the
//! platform enforces pod faults on its processes; on Kubernetes Chaos Mesh
//! does both.

pub mod fault;
pub mod mesh;

use std::path::{Path, PathBuf};

pub use fault::{Component, Fault, FaultKind};

/// Where a chaos name from a profile is read from: `<dir>/<name>.yaml`.
pub fn file_for(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.yaml"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every chaos object shipped in chaos/ reads cleanly.
    #[test]
    fn the_repository_chaos_files_are_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../chaos");
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let fault = mesh::load(&path).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(
                file_for(&dir, &fault.name),
                path,
                "metadata.name matches the file name"
            );
            names.push(fault.name);
        }
        names.sort();
        for wanted in [
            "latency-10ms",
            "latency-50ms-jitter",
            "loss-1pct",
            "bandwidth-1mbps",
            "partition-payment",
            "kill-inventory",
        ] {
            assert!(names.iter().any(|n| n == wanted), "{wanted} in {names:?}");
        }
    }
}
