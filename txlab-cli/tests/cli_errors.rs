//! A missing tool is reported in one paragraph that says what to do, and
//! nothing is started or left behind; a tool that is there but second
//! best is used with a warning.

mod common;

use std::process::Command;

fn txlab(name: &str, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let results = common::temp_dir(name);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_txlab"));
    cmd.args(["run", "--profile"])
        .arg(common::repo().join("profiles/smoke.yaml"))
        .arg("--results")
        .arg(&results);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    std::fs::remove_dir_all(&results).unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn a_missing_broker_says_how_to_install_it() {
    // No tansu on PATH, in cargo's bin directory, or by variable.
    let (code, stderr) = txlab(
        "no-broker",
        &[
            ("PATH", "/usr/bin:/bin"),
            ("HOME", "/nonexistent"),
            ("CARGO_HOME", "/nonexistent"),
        ],
    );
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("tansu, the Kafka-API broker the local lab starts, was not found"),
        "{stderr}"
    );
    assert!(stderr.contains("scripts/install-tansu.sh"), "{stderr}");
    assert!(stderr.contains("--kafka-brokers"), "{stderr}");
}

#[test]
fn a_wrong_postgres_directory_is_named() {
    let (code, stderr) = txlab("bad-pg-bin", &[("TXLAB_PG_BIN", "/tmp")]);
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("TXLAB_PG_BIN=/tmp holds no initdb and postgres"),
        "{stderr}"
    );
}

#[test]
fn a_typo_in_the_profile_names_file_line_and_field() {
    let dir = common::temp_dir("cli-typo");
    let profile = dir.join("typo.yaml");
    std::fs::write(
        &profile,
        "name: t\nmethods: [saga_orch]\nscenarios: [happy-path]\nload:\n  arrival: poisson\n  rat: 5\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_txlab"))
        .args(["run", "--dry-run", "--scenarios"])
        .arg(common::repo().join("scenarios"))
        .arg("--profile")
        .arg(&profile)
        .output()
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("typo.yaml:6:3: load.rat: unknown field `rat`"),
        "{stderr}"
    );
}

/// The lab runs txlab's patched tansu when it is there, and otherwise a
/// plain `tansu` with a warning that says what that costs. (Both stand-ins
/// here fail at once, which the lab reports as a broker that would not
/// start.)
#[test]
fn a_plain_tansu_is_run_with_a_warning_and_the_patched_one_without() {
    let warning = "a tansu without txlab's patch";
    for (file, warned) in [("tansu", true), ("tansu-0.6.0-txlab6", false)] {
        let bin = common::temp_dir(&format!("fake-{file}"));
        let fake = bin.join(file);
        std::fs::write(&fake, "#!/bin/sh\necho 'tansu 0.0.0'\nexit 3\n").unwrap();
        std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let path = format!("{}:/usr/bin:/bin", bin.display());
        let (code, stderr) = txlab(
            &format!("which-{file}"),
            &[
                ("PATH", &path),
                ("HOME", "/nonexistent"),
                ("CARGO_HOME", "/nonexistent"),
            ],
        );
        std::fs::remove_dir_all(&bin).unwrap();
        assert_eq!(code, Some(1), "{stderr}");
        assert_eq!(stderr.contains(warning), warned, "{file}: {stderr}");
        assert!(
            stderr.contains("tansu exited during start-up"),
            "{file}: {stderr}"
        );
    }
}
