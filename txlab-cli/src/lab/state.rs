//! `lab.json`: written by a lab once it is up, removed when it stops.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::platform::Endpoints;

pub const STATE_FILE: &str = "lab.json";
/// Where `txlab up` keeps its state unless told otherwise.
pub const DEFAULT_DIR: &str = ".txlab/lab";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabState {
    /// The background process holding the lab.
    pub pid: u32,
    /// Its control API, e.g. `http://127.0.0.1:41000`.
    pub control: String,
    pub method: String,
    /// Where clients send orders (through the proxy).
    pub order_url: String,
    /// Each service directly, for admin calls.
    pub services: std::collections::BTreeMap<String, String>,
    /// Its log (the services' logs are beside it in `logs/`).
    pub log: PathBuf,
}

impl LabState {
    pub fn new(
        control: String,
        method: &str,
        endpoints: &Endpoints,
        log: PathBuf,
    ) -> anyhow::Result<LabState> {
        Ok(LabState {
            pid: std::process::id(),
            control,
            method: method.to_string(),
            order_url: endpoints.order_entry()?.to_string(),
            services: endpoints
                .urls
                .iter()
                .map(|(role, url)| (role.to_string(), url.clone()))
                .collect(),
            log,
        })
    }

    /// Writes the state file whole or not at all (a reader never sees half).
    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        let tmp = dir.join(format!("{STATE_FILE}.tmp"));
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, dir.join(STATE_FILE))
            .with_context(|| format!("writing the state in {}", dir.display()))
    }

    /// The lab whose state is in `dir`, if one is up there.
    pub fn find(dir: &Path) -> anyhow::Result<Option<LabState>> {
        let path = dir.join(STATE_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let state: LabState = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a lab's state file", path.display()))?;
        // A lab killed outright leaves its file behind: it is not up.
        Ok(alive(state.pid).then_some(state))
    }

    /// The lab in `dir`, or an error saying how to start one.
    pub fn require(dir: &Path) -> anyhow::Result<LabState> {
        LabState::find(dir)?.with_context(|| {
            format!(
                "no lab is up with its state in {} (start one with `txlab up`, or pass --state-dir)",
                dir.display()
            )
        })
    }

    pub fn remove(dir: &Path) {
        let _ = std::fs::remove_file(dir.join(STATE_FILE));
    }
}

/// Whether process `pid` exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().chars().next())
        })
        .flatten()
        .is_some_and(|state| state != 'Z' && state != 'X')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_file_is_found_only_while_its_process_lives() {
        let dir = std::env::temp_dir().join(format!("txlab-state-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(LabState::find(&dir).unwrap().is_none());
        let err = LabState::require(&dir).unwrap_err().to_string();
        assert!(err.contains("txlab up"), "{err}");

        let mut state = LabState {
            pid: std::process::id(),
            control: "http://127.0.0.1:1".into(),
            method: "saga_orch".into(),
            order_url: "http://127.0.0.1:2".into(),
            services: Default::default(),
            log: dir.join("lab.log"),
        };
        state.write(&dir).unwrap();
        assert_eq!(LabState::find(&dir).unwrap().unwrap().pid, state.pid);

        // A pid that cannot exist (above the kernel's limit) is not up.
        state.pid = u32::MAX - 1;
        state.write(&dir).unwrap();
        assert!(LabState::find(&dir).unwrap().is_none());

        std::fs::write(dir.join(STATE_FILE), "{").unwrap();
        assert!(LabState::find(&dir)
            .unwrap_err()
            .to_string()
            .contains("not a lab's state file"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
