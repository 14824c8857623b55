//! The on-disk layout of results. Every run directory describes itself:
//!
//! ```text
//! results/<run-id>/run.json          git revision, profile, seed, versions, machine, platform
//! results/<run-id>/services/*.log    whole logs of the services and infrastructure
//! results/<run-id>/cells/<cell>/     cell.json, summary.json, audit.json,
//!                                    accepted.hdr, decided.hdr (HDR V2, deflated),
//!                                    percentiles.csv, timeseries.csv, logs/<role>.log
//! ```

mod summary;
mod time;
pub mod workflows;

use std::path::{Path, PathBuf};

use anyhow::Context;
use hdrhistogram::serialization::{Serializer, V2DeflateSerializer};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

pub use summary::{CellSummary, ChaosWindow, Percentiles};
pub use time::rfc3339;

/// Bytes per link between two readings of the platform's traffic, keyed
/// `sender→receiver` (`?` for an end the proxy could not tell).
pub fn traffic_between(
    before: &[crate::proxy::LinkTraffic],
    after: &[crate::proxy::LinkTraffic],
) -> std::collections::BTreeMap<String, u64> {
    let name = |c: Option<crate::chaos::Component>| c.map_or("?", |c| c.label());
    after
        .iter()
        .map(|a| {
            let earlier = before
                .iter()
                .find(|b| b.sender == a.sender && b.receiver == a.receiver)
                .map_or(0, |b| b.bytes);
            (
                format!("{}→{}", name(a.sender), name(a.receiver)),
                a.bytes - earlier,
            )
        })
        .filter(|(_, bytes)| *bytes > 0)
        .collect()
}

use crate::audit::AuditReport;
use crate::load::LoadReport;
use crate::spec::Cell;

pub struct RunDir {
    pub id: String,
    pub root: PathBuf,
}

impl RunDir {
    /// Creates `results/<timestamp>-<profile>` (with a suffix if taken).
    pub fn create(results: &Path, profile: &str) -> anyhow::Result<RunDir> {
        let base = RunDir::id_now(profile);
        for n in 0..100 {
            let id = if n == 0 {
                base.clone()
            } else {
                format!("{base}-{n}")
            };
            let root = results.join(&id);
            if !root.exists() {
                std::fs::create_dir_all(root.join("cells"))
                    .with_context(|| format!("creating {}", root.display()))?;
                return Ok(RunDir { id, root });
            }
        }
        anyhow::bail!(
            "could not find a free run directory name under {}",
            results.display()
        )
    }

    /// The id a run of `profile` started now gets: `<timestamp>-<profile>`.
    pub fn id_now(profile: &str) -> String {
        let stamp = time::compact(std::time::SystemTime::now());
        let safe: String = profile
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        format!("{stamp}-{safe}")
    }

    pub fn services_log_dir(&self) -> PathBuf {
        self.root.join("services")
    }

    pub fn cell_dir(&self, cell_id: &str) -> PathBuf {
        self.root.join("cells").join(cell_id)
    }

    pub fn write_json(&self, name: &str, value: &impl Serialize) -> anyhow::Result<()> {
        write_json(&self.root.join(name), value)
    }
}

pub fn write_json(path: &Path, value: &impl Serialize) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
}

pub(crate) fn write_histogram(path: &Path, h: &Histogram<u64>) -> anyhow::Result<()> {
    let mut buf = Vec::new();
    V2DeflateSerializer::new()
        .serialize(h, &mut buf)
        .map_err(|e| anyhow::anyhow!("encoding histogram: {e:?}"))?;
    std::fs::write(path, buf).with_context(|| format!("writing {}", path.display()))
}

/// Quantiles written to percentiles.csv.
const QUANTILES: [f64; 9] = [0.0, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999, 0.9999, 1.0];

/// One line of a cell's percentiles.csv.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PercentileRow {
    /// `accepted` or `decided`.
    pub latency: String,
    pub quantile: f64,
    pub value_ms: f64,
    /// Arrivals in the histogram.
    pub count: u64,
}

fn percentiles_csv(load: &LoadReport) -> anyhow::Result<Vec<u8>> {
    let mut w = csv::Writer::from_writer(Vec::new());
    for (name, h) in [("accepted", &load.accepted_us), ("decided", &load.decided_us)] {
        for q in QUANTILES {
            let value_ms = if h.is_empty() {
                0.0
            } else {
                h.value_at_quantile(q) as f64 / 1000.0
            };
            w.serialize(PercentileRow {
                latency: name.to_string(),
                quantile: q,
                value_ms: (value_ms * 1000.0).round() / 1000.0,
                count: h.len(),
            })?;
        }
    }
    Ok(w.into_inner()?)
}

fn timeseries_csv(load: &LoadReport) -> anyhow::Result<Vec<u8>> {
    let mut w = csv::Writer::from_writer(Vec::new());
    for s in &load.seconds {
        w.serialize(s)?;
    }
    Ok(w.into_inner()?)
}

/// Writes everything a cell produced into its directory.
pub fn write_cell(
    dir: &Path,
    cell: &Cell,
    summary: &CellSummary,
    load: &LoadReport,
    audit: &AuditReport,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    write_json(&dir.join("cell.json"), cell)?;
    write_json(&dir.join("summary.json"), summary)?;
    write_json(&dir.join("audit.json"), audit)?;
    write_json(&dir.join("client.json"), &load.client)?;
    write_histogram(&dir.join("accepted.hdr"), &load.accepted_us)?;
    write_histogram(&dir.join("decided.hdr"), &load.decided_us)?;
    std::fs::write(dir.join("percentiles.csv"), percentiles_csv(load)?)?;
    std::fs::write(dir.join("timeseries.csv"), timeseries_csv(load)?)?;
    Ok(())
}

/// Sizes of the log files now, so a cell can keep just its own share.
pub fn log_marks(files: &[(String, PathBuf)]) -> Vec<u64> {
    files
        .iter()
        .map(|(_, p)| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .collect()
}

/// Copies what each log gained since `marks` into `<cell>/logs/`.
pub fn copy_log_slices(dir: &Path, files: &[(String, PathBuf)], marks: &[u64]) -> anyhow::Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs)?;
    for ((name, path), &from) in files.iter().zip(marks) {
        let Ok(mut f) = std::fs::File::open(path) else {
            continue;
        };
        f.seek(SeekFrom::Start(from))?;
        let mut slice = Vec::new();
        f.read_to_end(&mut slice)?;
        std::fs::write(logs.join(format!("{name}.log")), slice)?;
    }
    Ok(())
}

/// A latency histogram a cell wrote (`accepted.hdr` or `decided.hdr`).
pub fn read_histogram(path: &Path) -> anyhow::Result<Histogram<u64>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    hdrhistogram::serialization::Deserializer::new()
        .deserialize(&mut bytes.as_slice())
        .map_err(|e| anyhow::anyhow!("decoding {}: {e:?}", path.display()))
}

/// The percentile spectra of a cell (its percentiles.csv).
pub fn read_percentiles(cell_dir: &Path) -> anyhow::Result<Vec<PercentileRow>> {
    let path = cell_dir.join("percentiles.csv");
    let mut reader = csv::Reader::from_path(&path).with_context(|| format!("reading {}", path.display()))?;
    reader
        .deserialize()
        .collect::<Result<_, _>>()
        .with_context(|| format!("reading {}", path.display()))
}

/// The per-second series of a cell (its timeseries.csv).
pub fn read_timeseries(cell_dir: &Path) -> anyhow::Result<Vec<crate::load::SecondStats>> {
    let path = cell_dir.join("timeseries.csv");
    let mut reader = csv::Reader::from_path(&path).with_context(|| format!("reading {}", path.display()))?;
    reader
        .deserialize()
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("decoding {}", path.display()))
}

/// Reads every cell summary of a run, in cell order.
pub fn read_summaries(run: &Path) -> anyhow::Result<Vec<CellSummary>> {
    let cells = run.join("cells");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&cells)
        .with_context(|| format!("{} is not a run directory (no cells/ inside)", run.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("summary.json").is_file())
        .collect();
    dirs.sort();
    let mut out: Vec<CellSummary> = dirs
        .iter()
        .map(|d| {
            let path = d.join("summary.json");
            let text =
                std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
            serde_json::from_str(&text).with_context(|| format!("decoding {}", path.display()))
        })
        .collect::<anyhow::Result<_>>()?;
    out.sort_by_key(|s| s.index);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_directories_never_collide() {
        let base = std::env::temp_dir().join(format!("txlab-results-test-{}", std::process::id()));
        let a = RunDir::create(&base, "quick run").unwrap();
        let b = RunDir::create(&base, "quick run").unwrap();
        assert_ne!(a.root, b.root);
        assert!(a.id.ends_with("-quick_run"), "{}", a.id);
        assert!(a.root.join("cells").is_dir());
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn histograms_round_trip_through_their_file() {
        let mut h = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).unwrap();
        for v in [150u64, 2_000, 2_100, 90_000] {
            h.record(v).unwrap();
        }
        let path = std::env::temp_dir().join(format!("txlab-hdr-test-{}.hdr", std::process::id()));
        write_histogram(&path, &h).unwrap();
        let back = read_histogram(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(back.len(), 4);
        assert_eq!(back.value_at_quantile(0.5), h.value_at_quantile(0.5));
    }
}
