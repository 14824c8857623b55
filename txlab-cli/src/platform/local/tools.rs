//! Finding the programs the local platform runs, with advice when missing.

use std::path::{Path, PathBuf};

use anyhow::bail;

pub fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(name))
                .find(|f| f.is_file())
        })
        .unwrap_or(None)
}

fn from_env(var: &str) -> anyhow::Result<Option<PathBuf>> {
    match std::env::var_os(var) {
        None => Ok(None),
        Some(v) => {
            let p = PathBuf::from(v);
            if !p.exists() {
                bail!("{var} points to {}, which does not exist", p.display());
            }
            Ok(Some(p))
        }
    }
}

/// The directory holding `initdb` and `postgres`: `TXLAB_PG_BIN`, then PATH,
/// then Debian's versioned directories (newest first).
pub fn postgres_bin_dir() -> anyhow::Result<PathBuf> {
    if let Some(p) = from_env("TXLAB_PG_BIN")? {
        if !(p.join("initdb").is_file() && p.join("postgres").is_file()) {
            bail!(
                "TXLAB_PG_BIN={} holds no initdb and postgres; point it at PostgreSQL's bin directory",
                p.display()
            );
        }
        return Ok(p);
    }
    if let Some(initdb) = on_path("initdb") {
        // A symlink on PATH (as some images make) stands for the real
        // directory, which also holds pgbench and pg_waldump.
        let initdb = std::fs::canonicalize(&initdb).unwrap_or(initdb);
        if let Some(dir) = initdb.parent() {
            if dir.join("postgres").is_file() {
                return Ok(dir.to_path_buf());
            }
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| Some((e.file_name().to_str()?.parse::<u32>().ok()?, e.path().join("bin"))))
                .filter(|(_, bin)| bin.join("initdb").is_file() && bin.join("postgres").is_file())
                .collect()
        })
        .unwrap_or_default();
    versions.sort();
    match versions.pop() {
        Some((_, bin)) => Ok(bin),
        None => bail!(
            "PostgreSQL was not found: no initdb on PATH and none under /usr/lib/postgresql/*/bin. \
             Install it (Debian: apt-get install postgresql), set TXLAB_PG_BIN to the directory holding \
             initdb and postgres, or pass --database-url to use a server you run"
        ),
    }
}

/// The tansu build the lab runs: 0.6.0 with txlab's patches
/// (scripts/install-tansu.sh), on PATH or in cargo's bin directory.
pub const TANSU_PATCHED: &str = "tansu-0.6.0-txlab6";

/// The tansu binary: `TXLAB_TANSU`, else the patched build, else a plain
/// `tansu` (with a warning).
pub fn tansu() -> anyhow::Result<PathBuf> {
    if let Some(p) = from_env("TXLAB_TANSU")? {
        return Ok(p);
    }
    let cargo_bin = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))
        .map(|c| c.join("bin"));
    let find = |name: &str| {
        on_path(name).or_else(|| cargo_bin.as_ref().map(|d| d.join(name)).filter(|p| p.is_file()))
    };
    if let Some(p) = find(TANSU_PATCHED) {
        return Ok(p);
    }
    if let Some(p) = find("tansu") {
        eprintln!(
            "txlab: using {}, a tansu without txlab's patch: its fetches slow down as the broker fills, \
             and event-driven methods with them (docs/performance.md); scripts/install-tansu.sh builds \
             {TANSU_PATCHED}",
            p.display()
        );
        return Ok(p);
    }
    bail!(
        "tansu, the Kafka-API broker the local lab starts, was not found. Build it once with \
         scripts/install-tansu.sh (tansu 0.6.0 with txlab's patch to its in-memory engine, installed as \
         {TANSU_PATCHED}; about 15 minutes on 2 cores; `make setup` does it), set TXLAB_TANSU to a tansu \
         binary, or pass --kafka-brokers HOST:PORT to use a broker you run"
    )
}

/// The `txlab-svc` binary: `TXLAB_SVC_BIN`, else next to this executable
/// (or one level up, where test binaries live in `target/*/deps`).
pub fn service_binary() -> anyhow::Result<PathBuf> {
    if let Some(p) = from_env("TXLAB_SVC_BIN")? {
        return Ok(p);
    }
    let exe = std::env::current_exe()?;
    for dir in exe.ancestors().skip(1).take(2) {
        let candidate = dir.join("txlab-svc");
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "the service binary txlab-svc was not found next to {}. Build it with `cargo build --release --workspace` \
         (or `cargo build --workspace` for debug), or set TXLAB_SVC_BIN",
        exe.display()
    )
}

/// First line of `program --version`, for run.json.
pub async fn version_of(program: &Path) -> String {
    match tokio::process::Command::new(program)
        .arg("--version")
        .output()
        .await
    {
        Ok(o) => String::from_utf8_lossy(&o.stdout)
            .lines()
            .next()
            .unwrap_or("")
            .trim()
            .to_string(),
        Err(e) => format!("unknown ({e})"),
    }
}
