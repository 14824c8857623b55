//! Reading YAML into typed structs with errors a person can act on.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

/// A spec file that could not be used. The message names the file, the
/// line and column when known, and the field path.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// The I/O error is in the message, not a source, so it is said once.
    #[error("cannot read {path}: {error}")]
    Read { path: PathBuf, error: std::io::Error },
    #[error("{path}{location}: {field}{message}")]
    Parse {
        path: PathBuf,
        /// `:line:column`, or empty when the parser did not say.
        location: String,
        /// `field.path: `, or empty at the top level.
        field: String,
        message: String,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// Parses `text` (read from `path`) as `T`, rejecting unknown fields (the
/// types use `deny_unknown_fields`) and naming where a problem is.
pub fn parse_yaml<T: DeserializeOwned>(path: &Path, text: &str) -> Result<T, SpecError> {
    let de = serde_yaml::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let field = e.path().to_string();
        let inner = e.into_inner();
        let location = inner
            .location()
            .map(|l| format!(":{}:{}", l.line(), l.column()))
            .unwrap_or_default();
        // serde_yaml appends " at line L column C"; we already said where.
        let mut message = inner.to_string();
        if let Some(cut) = message.find(" at line ") {
            message.truncate(cut);
        }
        // It may also start with its own (less precise) path: keep ours.
        if let Some((head, rest)) = message.split_once(": ") {
            if !head.is_empty()
                && head
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_.[]-".contains(c))
            {
                message = rest.to_string();
            }
        }
        SpecError::Parse {
            path: path.to_path_buf(),
            location,
            field: if field == "." || field.is_empty() {
                String::new()
            } else {
                format!("{field}: ")
            },
            message,
        }
    })
}

/// A spec file's text, or an error naming the file.
pub fn read_spec(path: &Path) -> Result<String, SpecError> {
    std::fs::read_to_string(path).map_err(|error| SpecError::Read {
        path: path.to_path_buf(),
        error,
    })
}

pub fn load_yaml<T: DeserializeOwned>(path: &Path) -> Result<T, SpecError> {
    parse_yaml(path, &read_spec(path)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Outer {
        name: String,
        load: Inner,
    }
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        rate: f64,
    }

    #[test]
    fn a_typo_names_file_line_and_field() {
        let err = parse_yaml::<Outer>(Path::new("p.yaml"), "name: x\nload:\n  rat: 3\n").unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("p.yaml:3:3: load.rat: unknown field `rat`, expected `rate`"),
            "{text}"
        );
    }

    #[test]
    fn a_wrong_type_names_the_field() {
        let err = parse_yaml::<Outer>(Path::new("p.yaml"), "name: x\nload:\n  rate: fast\n").unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("p.yaml:3:9: load.rate: invalid type: string \"fast\""),
            "{text}"
        );
    }

    #[test]
    fn broken_yaml_names_the_line() {
        let err = parse_yaml::<Outer>(Path::new("p.yaml"), "name: x\nload:\n  rate: \"3\n").unwrap_err();
        assert!(
            err.to_string().starts_with("p.yaml:4:1: ") && err.to_string().contains("end of stream"),
            "{err}"
        );
    }

    #[test]
    fn a_missing_file_says_which() {
        let err = load_yaml::<Outer>(Path::new("/nonexistent/p.yaml")).unwrap_err();
        assert!(
            err.to_string().starts_with("cannot read /nonexistent/p.yaml"),
            "{err}"
        );
    }
}
