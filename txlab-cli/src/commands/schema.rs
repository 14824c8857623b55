//! `txlab schema`: the JSON Schema of profile or scenario files.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use crate::spec::schema::SchemaKind;

#[derive(Debug, clap::Args)]
pub struct SchemaArgs {
    /// Which file's schema to print.
    #[arg(value_enum, default_value = "profile")]
    pub kind: SchemaKind,
    /// Write every schema into this directory instead (the repository keeps
    /// them in schemas/).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

pub fn execute(args: SchemaArgs) -> anyhow::Result<ExitCode> {
    match args.out {
        None => print!("{}", args.kind.render()),
        Some(dir) => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            for kind in SchemaKind::ALL {
                let path = dir.join(kind.file_name());
                std::fs::write(&path, kind.render())
                    .with_context(|| format!("writing {}", path.display()))?;
                println!("wrote {}", path.display());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
