//! The tansu Kafka-API broker, in memory, on a free loopback port.

use std::path::Path;
use std::time::Duration;

use anyhow::bail;

use super::process::{contain, free_port, log_sink, log_tail, Supervised};
use super::reaper::Reaper;

pub struct Tansu {
    pub proc: Supervised,
    pub brokers: String,
}

impl Tansu {
    /// Starts a broker that tells clients to reach it at `advertised`
    /// (a proxy's port) when given, else where it listens.
    pub async fn start(
        bin: &Path,
        log: &Path,
        reaper: &Reaper,
        advertised: Option<u16>,
    ) -> anyhow::Result<Tansu> {
        let port = free_port()?;
        let url = format!("tcp://127.0.0.1:{port}");
        let advertised = format!("tcp://127.0.0.1:{}", advertised.unwrap_or(port));
        let mut cmd = tokio::process::Command::new(bin);
        cmd.args([
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &advertised,
        ])
        .args(["--storage-engine", "memory://tansu/"]);
        let (out, err) = log_sink(log)?;
        cmd.stdout(out).stderr(err);
        contain(&mut cmd, None);
        let mut proc = Supervised::spawn("tansu", &mut cmd, reaper)?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = proc.exited() {
                bail!(
                    "tansu exited during start-up ({status}); its log says:\n{}",
                    log_tail(log, 15)
                );
            }
            if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "tansu did not listen on port {port} within 30 s; log:\n{}",
                    log_tail(log, 15)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(Tansu {
            proc,
            brokers: format!("127.0.0.1:{port}"),
        })
    }
}
