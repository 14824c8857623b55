//! `txlab chaos on <file>… | off [name] | status`: chaos on a lab started
//! with `txlab up`, or with `--target k8s --run <id>` on a run's namespace
//! in a cluster (Chaos Mesh enforcing the same files). Files are checked
//! here first, so a mistake is reported with its file, line and field
//! before the lab or the cluster is asked anything.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use reqwest::Method;
use serde_json::{json, Value};

use crate::lab::control;
use crate::lab::state::DEFAULT_DIR;
use crate::lab::LabState;

#[derive(Debug, clap::Args)]
pub struct ChaosArgs {
    #[command(subcommand)]
    pub action: ChaosAction,
    /// Where the running lab keeps its state (as given to `txlab up`).
    #[arg(long, global = true, default_value = DEFAULT_DIR, env = "TXLAB_STATE_DIR")]
    pub state_dir: PathBuf,
    /// The lab started by `txlab up` (local), or a run's namespace on the
    /// cluster of the current kubeconfig (k8s, with --run).
    #[arg(long, global = true, value_enum, default_value_t = crate::platform::Target::Local)]
    pub target: crate::platform::Target,
    /// The run whose namespace (`txlab-<run>`) the chaos goes to (k8s).
    #[arg(long, global = true)]
    pub run: Option<String>,
    /// The namespace of PostgreSQL and the broker, where chaos aimed at
    /// them selects (k8s).
    #[arg(long, global = true, default_value = crate::platform::k8s::INFRA_NAMESPACE)]
    pub infra_namespace: String,
}

#[derive(Debug, clap::Subcommand)]
pub enum ChaosAction {
    /// Switch on Chaos Mesh objects (NetworkChaos, PodChaos) from files.
    On {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Switch off the chaos named (metadata.name), or all of it.
    Off { name: Option<String> },
    /// What is switched on, restarts, and bytes per link so far.
    Status,
}

pub async fn execute(args: ChaosArgs) -> anyhow::Result<ExitCode> {
    if args.target == crate::platform::Target::K8s {
        return on_cluster(args).await;
    }
    match args.action {
        ChaosAction::On { files } => {
            // Every file checked before any is switched on.
            let mut bodies = Vec::new();
            for f in &files {
                crate::chaos::mesh::load(f)?;
                let yaml = std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
                bodies.push(json!({ "path": f.display().to_string(), "yaml": yaml }));
            }
            let lab = LabState::require(&args.state_dir)?;
            for body in bodies {
                let answer = control::call(&lab, Method::POST, "/chaos", Some(body)).await?;
                println!("on: {}", answer["on"].as_str().unwrap_or("?"));
                for note in answer["notes"].as_array().into_iter().flatten() {
                    println!("  note: {}", note.as_str().unwrap_or_default());
                }
            }
        }
        ChaosAction::Off { name } => {
            let lab = LabState::require(&args.state_dir)?;
            let path = match &name {
                Some(n) => format!("/chaos/{n}"),
                None => "/chaos".to_string(),
            };
            let answer = control::call(&lab, Method::DELETE, &path, None).await?;
            let off = names(&answer["off"]);
            if off.is_empty() {
                println!("nothing was on");
            } else {
                println!("off: {}", off.join(", "));
            }
        }
        ChaosAction::Status => {
            let lab = LabState::require(&args.state_dir)?;
            let s = control::call(&lab, Method::GET, "/status", None).await?;
            print!("{}", status_text(&s));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The same actions on a run's namespace in a cluster.
async fn on_cluster(args: ChaosArgs) -> anyhow::Result<ExitCode> {
    let run = args
        .run
        .as_deref()
        .context("--target k8s needs --run <run id>: the run whose namespace the chaos goes to")?;
    let scope = crate::platform::k8s::RunScope {
        infra_namespace: args.infra_namespace.clone(),
        ..crate::platform::k8s::RunScope::of(run)
    };
    let connect = || async {
        let client = crate::platform::k8s::cluster::connect().await?;
        anyhow::Ok(crate::platform::k8s::cluster::Cluster::new(client, scope.clone()))
    };
    match args.action {
        ChaosAction::On { files } => {
            let faults: Vec<crate::chaos::Fault> = files
                .iter()
                .map(|f| crate::chaos::mesh::load(f))
                .collect::<Result<_, _>>()?;
            let cluster = connect().await?;
            for f in &faults {
                cluster.chaos_on(&f.source).await?;
                println!("on: {} in {}", f.name, scope.namespace);
            }
        }
        ChaosAction::Off { name } => {
            let off = connect().await?.chaos_off(name.as_deref()).await?;
            if off.is_empty() {
                println!("nothing was on in {}", scope.namespace);
            } else {
                println!("off: {}", off.join(", "));
            }
        }
        ChaosAction::Status => {
            let on = connect().await?.chaos_status().await?;
            let on = if on.is_empty() {
                "none".to_string()
            } else {
                on.join(", ")
            };
            println!("{}: chaos on: {on}", scope.namespace);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn names(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| n.as_str().map(str::to_string))
        .collect()
}

/// The status as a person reads it.
fn status_text(s: &Value) -> String {
    let chaos = names(&s["chaos"]);
    let mut out = format!(
        "lab pid {} running {}; orders at {}\nchaos on: {}\n",
        s["pid"],
        s["method"].as_str().unwrap_or("?"),
        s["order_url"].as_str().unwrap_or("?"),
        if chaos.is_empty() {
            "none".to_string()
        } else {
            chaos.join(", ")
        }
    );
    let restarts: Vec<String> = s["restarts"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(role, n)| format!("{role} {n}"))
        .collect();
    if !restarts.is_empty() {
        out += &format!("restarts: {}\n", restarts.join(", "));
    }
    if let Some(links) = s["network"].as_object().filter(|l| !l.is_empty()) {
        out += "bytes per link since the lab started:\n";
        for (link, bytes) in links {
            out += &format!("  {link:<28} {bytes:>12}\n");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_reads_as_a_summary() {
        let s = json!({"pid": 7, "method": "tcc", "order_url": "http://127.0.0.1:9", "chaos": ["latency-10ms"],
                       "restarts": {"inventory": 1}, "network": {"order→payment": 1200}});
        let text = status_text(&s);
        assert!(text.contains("lab pid 7 running tcc"), "{text}");
        assert!(text.contains("chaos on: latency-10ms"), "{text}");
        assert!(text.contains("restarts: inventory 1"), "{text}");
        assert!(text.contains("order→payment") && text.contains("1200"), "{text}");
        let quiet = status_text(
            &json!({"pid": 7, "method": "tcc", "order_url": "u", "chaos": [], "restarts": {}, "network": {}}),
        );
        assert!(
            quiet.contains("chaos on: none") && !quiet.contains("restarts"),
            "{quiet}"
        );
    }
}
