//! Nothing outlives the lab: after Ctrl-C, or after `kill -9` of txlab
//! itself, no service, PostgreSQL or tansu process and no scratch directory
//! is left behind.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Starts `txlab run` on the quick profile and waits until every service is up.
/// The caller signals and waits for the returned child.
#[allow(clippy::zombie_processes)]
fn start_run(name: &str) -> (std::process::Child, PathBuf, Vec<(u32, String)>, PathBuf) {
    let results = common::temp_dir(name);
    let mut child = Command::new(env!("CARGO_BIN_EXE_txlab"))
        .args(["run", "--profile"])
        .arg(common::repo().join("profiles/quick.yaml"))
        .arg("--results")
        .arg(&results)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let tree = common::tree(child.id());
        let services = tree.iter().filter(|(_, c)| c.contains("txlab-svc")).count();
        let infra = tree.iter().any(|(_, c)| c.contains("postgres -D"))
            // The binary is `tansu` or txlab's patched `tansu-0.6.0-txlab6`.
            && tree.iter().any(|(_, c)| c.contains("tansu") && c.contains(" broker "));
        if services == 5 && infra {
            // Let the load begin, so work is in flight when the signal lands.
            std::thread::sleep(Duration::from_secs(2));
            let tree = common::tree(child.id());
            let scratch = tree
                .iter()
                .find_map(|(_, c)| {
                    c.split_whitespace()
                        .skip_while(|w| *w != "-D")
                        .nth(1)
                        .map(PathBuf::from)
                })
                .and_then(|pgdata| pgdata.parent().map(PathBuf::from))
                .expect("postgres runs from the scratch directory");
            return (child, results, tree, scratch);
        }
        if Instant::now() >= deadline {
            let _ = child.kill(); // the lab's reaper then cleans up after it
            let _ = child.wait();
            panic!("the lab did not come up in 90 s: {tree:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits until none of `procs` runs and `scratch` is gone.
fn assert_all_gone(procs: &[(u32, String)], scratch: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left: Vec<_> = procs.iter().filter(|(p, c)| common::alive(*p, c)).collect();
        if left.is_empty() && !scratch.exists() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "left behind: {left:?}, scratch {} exists: {}",
            scratch.display(),
            scratch.exists()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn ctrl_c_tears_everything_down() {
    let (mut child, results, procs, scratch) = start_run("ctrl-c");
    assert!(
        procs.len() >= 8,
        "txlab, reaper, postgres (+backends), tansu, 5 services: {procs:?}"
    );
    assert!(Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "exit code after Ctrl-C");
    assert_all_gone(&procs, &scratch);
    let run = std::fs::read_dir(&results)
        .unwrap()
        .flatten()
        .next()
        .unwrap()
        .path();
    let meta = std::fs::read_to_string(run.join("run.json")).unwrap();
    assert!(
        meta.contains("\"status\": \"interrupted\""),
        "run.json records the interruption"
    );
    std::fs::remove_dir_all(&results).unwrap();
}

#[test]
fn kill_9_of_txlab_leaves_no_orphans() {
    let (mut child, results, procs, scratch) = start_run("kill-9");
    child.kill().unwrap(); // SIGKILL: txlab runs no code at all
    let _ = child.wait();
    assert_all_gone(&procs, &scratch);
    std::fs::remove_dir_all(&results).unwrap();
}
