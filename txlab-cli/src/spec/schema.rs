//! JSON Schemas of profile and scenario files, generated from the same
//! types that read them, so an editor checks a file as txlab would. The
//! repository's copies live in `schemas/`; each YAML file names its schema
//! on its first line (`# yaml-language-server: $schema=...`).

use super::{Profile, Scenario};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SchemaKind {
    Profile,
    Scenario,
}

impl SchemaKind {
    pub const ALL: [SchemaKind; 2] = [SchemaKind::Profile, SchemaKind::Scenario];

    /// The file name in `schemas/`.
    pub fn file_name(self) -> &'static str {
        match self {
            SchemaKind::Profile => "profile.schema.json",
            SchemaKind::Scenario => "scenario.schema.json",
        }
    }

    /// The schema, as pretty JSON with a final newline.
    pub fn render(self) -> String {
        let schema = match self {
            SchemaKind::Profile => schemars::schema_for!(Profile),
            SchemaKind::Scenario => schemars::schema_for!(Scenario),
        };
        let mut text = serde_json::to_string_pretty(&schema).expect("a schema is JSON");
        text.push('\n');
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn repo() -> &'static Path {
        Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
    }

    /// The committed schemas are what the code generates: a changed type
    /// without `txlab schema --out schemas` fails here.
    #[test]
    fn the_committed_schemas_are_current() {
        for kind in SchemaKind::ALL {
            let path = repo().join("schemas").join(kind.file_name());
            let committed = std::fs::read_to_string(&path).unwrap_or_default();
            assert!(
                committed == kind.render(),
                "{} is stale: run `txlab schema --out schemas`",
                path.display()
            );
        }
    }

    #[test]
    fn the_schemas_say_what_the_readers_refuse() {
        let profile: serde_json::Value = serde_json::from_str(&SchemaKind::Profile.render()).unwrap();
        assert_eq!(
            profile["additionalProperties"], false,
            "unknown fields are refused"
        );
        let required: Vec<&str> = profile["required"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|v| v.as_str())
            .collect();
        for field in ["name", "methods", "scenarios", "load"] {
            assert!(required.contains(&field), "{field} in {required:?}");
        }
        let text = SchemaKind::Profile.render();
        for method in txlab_api::TxMode::ALL {
            assert!(
                text.contains(&format!("\"{}\"", method.as_str())),
                "{method} listed"
            );
        }
        let scenario = SchemaKind::Scenario.render();
        assert!(scenario.contains("\"needs_attention\""), "order states listed");
    }

    /// Every profile and scenario in the repository names its schema.
    #[test]
    fn every_repository_file_points_at_its_schema() {
        for (dir, kind) in [
            ("profiles", SchemaKind::Profile),
            ("scenarios", SchemaKind::Scenario),
        ] {
            let wanted = format!("# yaml-language-server: $schema=../schemas/{}", kind.file_name());
            for entry in std::fs::read_dir(repo().join(dir)).unwrap() {
                let path = entry.unwrap().path();
                let text = std::fs::read_to_string(&path).unwrap();
                assert_eq!(text.lines().next(), Some(wanted.as_str()), "{}", path.display());
            }
        }
    }
}
