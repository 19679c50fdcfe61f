//! Reading kubeadm configuration files: YAML documents separated by `---`,
//! each a mapping with `apiVersion` and `kind`.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_norway::Value;

/// Errors reading a configuration file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading {}: {source}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A document is not YAML.
    #[error("{}: document {doc}: invalid YAML: {reason}", .path.display())]
    Yaml {
        /// The file.
        path: PathBuf,
        /// The document's number, from 1.
        doc: usize,
        /// The parser's message (with line and column).
        reason: String,
    },
    /// A field is missing or of the wrong type.
    #[error("{}: {kind}: {field}: {reason}", .path.display())]
    Field {
        /// The file.
        path: PathBuf,
        /// The document's kind.
        kind: String,
        /// The field's path.
        field: String,
        /// What is wrong.
        reason: String,
    },
}

/// One document of a file.
#[derive(Debug, Clone)]
pub struct Document {
    /// Its number in the file, from 1.
    pub number: usize,
    /// Its value.
    pub value: Value,
}

impl Document {
    /// Its `kind`, or "".
    pub fn kind(&self) -> &str {
        self.value.get("kind").and_then(Value::as_str).unwrap_or("")
    }
    /// Its `apiVersion`, or "".
    pub fn api_version(&self) -> &str {
        self.value
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or("")
    }
}

/// The non-empty documents of `text` (from the file `path`).
pub fn documents(path: &Path, text: &str) -> Result<Vec<Document>, ConfigError> {
    let mut out = Vec::new();
    for (i, de) in serde_norway::Deserializer::from_str(text).enumerate() {
        let value = Value::deserialize(de).map_err(|e| ConfigError::Yaml {
            path: path.to_path_buf(),
            doc: i + 1,
            reason: e.to_string(),
        })?;
        if !value.is_null() {
            out.push(Document {
                number: i + 1,
                value,
            });
        }
    }
    Ok(out)
}

/// Reads and splits a file.
pub fn read(path: &Path) -> Result<Vec<Document>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    documents(path, &text)
}

/// The first document of `kind`.
pub fn find<'a>(docs: &'a [Document], kind: &str) -> Option<&'a Document> {
    docs.iter().find(|d| d.kind() == kind)
}

/// The string at `keys` under `v`.
pub fn str_at<'a>(v: &'a Value, keys: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for k in keys {
        cur = cur.get(*k)?;
    }
    cur.as_str()
}

/// The strings of the list at `keys` under `v` (none when absent).
pub fn strs_at(v: &Value, keys: &[&str]) -> Vec<String> {
    let mut cur = v;
    for k in keys {
        match cur.get(*k) {
            Some(x) => cur = x,
            None => return Vec::new(),
        }
    }
    cur.as_sequence()
        .map(|s| {
            s.iter()
                .filter_map(|x| match x {
                    Value::String(s) => Some(s.clone()),
                    Value::Number(n) => Some(n.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A required string field of a document.
pub fn required(path: &Path, doc: &Document, keys: &[&str]) -> Result<String, ConfigError> {
    str_at(&doc.value, keys)
        .map(String::from)
        .ok_or_else(|| ConfigError::Field {
            path: path.to_path_buf(),
            kind: doc.kind().to_string(),
            field: keys.join("."),
            reason: "required, missing or not a string".into(),
        })
}
