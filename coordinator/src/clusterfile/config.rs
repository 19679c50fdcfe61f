//! The `Config` kind: a file in the cluster's rootfs to write, overwrite or
//! merge before the install runs, its data optionally processed first.
//!
//! sealer's rules, kept here: the processors in `spec.process` (`|`
//! separated) run in order over `spec.data`. `value` switches the later ones
//! to act on each top-level value of a YAML mapping instead of the whole
//! text (so does the label `preprocess.value: "true"`); `toJson` turns YAML
//! into compact JSON; `toBase64` encodes. When the target file exists,
//! `toSecret` writes the (processed) values, base64-encoded, into the
//! `data` of the Secret manifest the file holds, and the `merge` strategy
//! deep-merges the data's mapping into every YAML document of the file;
//! otherwise the data replaces the file.

use std::path::{Component, Path, PathBuf};

use base64::Engine as _;
use serde::Deserialize;
use serde_norway::{Mapping, Value};

use super::error::{ClusterfileError, DocRef, ErrorKind, Warning};
use super::fields::Doc;

/// Where apps' files live in the rootfs (`appName` configs go under it).
pub const APP_ROOT: &str = "application/apps";

/// How the data meets an existing file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Strategy {
    /// Replace the file (the default).
    #[default]
    Overwrite,
    /// Deep-merge the data's mapping into each YAML document of the file.
    Merge,
}

/// A `spec.process` step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Processor {
    /// `value`: later steps act on each top-level value.
    Value,
    /// `toJson`: YAML to compact JSON.
    ToJson,
    /// `toBase64`: standard base64.
    ToBase64,
    /// `toSecret`: into an existing Secret manifest's `data`.
    ToSecret,
}

impl Processor {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "value" => Some(Processor::Value),
            "toJson" => Some(Processor::ToJson),
            "toBase64" => Some(Processor::ToBase64),
            "toSecret" => Some(Processor::ToSecret),
            _ => None,
        }
    }
}

/// A `Config` document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Where it was read from.
    pub document: Option<DocRef>,
    /// `metadata.name`.
    pub name: String,
    /// `spec.path`, relative to the rootfs (or to the app's directory).
    pub path: String,
    /// `spec.appName`: the path is inside this app's directory.
    pub app_name: Option<String>,
    /// `spec.data`.
    pub data: String,
    /// `spec.strategy`.
    pub strategy: Strategy,
    /// `spec.process`, known steps in order.
    pub process: Vec<Processor>,
    /// The label `preprocess.value: "true"`: per-value processing from the
    /// start.
    pub value_label: bool,
}

/// Why a Config's file content cannot be computed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The data is not the YAML a step needs.
    #[error("config {name}: {step}: the data is not {expected}: {reason}")]
    Data {
        /// The Config.
        name: String,
        /// The step (`toJson`, `merge` ...).
        step: &'static str,
        /// What it should be.
        expected: &'static str,
        /// What the parser said.
        reason: String,
    },
    /// The existing file is not what the step needs.
    #[error("config {name}: {step}: the existing file {path} is not {expected}: {reason}")]
    Existing {
        /// The Config.
        name: String,
        /// The step.
        step: &'static str,
        /// The file.
        path: String,
        /// What it should be.
        expected: &'static str,
        /// Why not.
        reason: String,
    },
}

impl Config {
    /// The file to write, relative to the rootfs: `path`, or
    /// `application/apps/APP/path` with an app name. Checked at parse time
    /// to stay inside the rootfs.
    pub fn target_path(&self) -> PathBuf {
        let rel = relative(&self.path);
        match &self.app_name {
            Some(app) => Path::new(APP_ROOT).join(app).join(rel),
            None => rel,
        }
    }

    /// The data after `spec.process` (without `toSecret`, which needs the
    /// existing file).
    pub fn processed_data(&self) -> Result<String, ConfigError> {
        let mut per_value = self.value_label;
        let mut data = self.data.clone();
        for step in &self.process {
            data = match step {
                Processor::Value => {
                    per_value = true;
                    continue;
                }
                Processor::ToSecret => continue,
                Processor::ToJson if per_value => self.each_value(&data, "toJson", |v| {
                    yaml_to_json(v).map_err(|e| ("YAML convertible to JSON", e.to_string()))
                })?,
                Processor::ToJson => {
                    let value: Value = serde_norway::from_str(&data)
                        .map_err(|e| self.data_err("toJson", "YAML", e.to_string()))?;
                    yaml_to_json(&value).map_err(|e| {
                        self.data_err("toJson", "YAML convertible to JSON", e.to_string())
                    })?
                }
                Processor::ToBase64 if per_value => self.each_value(&data, "toBase64", |v| {
                    scalar_text(v)
                        .map(|s| base64::engine::general_purpose::STANDARD.encode(s))
                        .ok_or(("a mapping of strings", "a value is not a string".into()))
                })?,
                Processor::ToBase64 => {
                    base64::engine::general_purpose::STANDARD.encode(data.as_bytes())
                }
            };
        }
        Ok(data)
    }

    /// The file's new content, given its current bytes (`None` when it does
    /// not exist).
    pub fn render(&self, existing: Option<&[u8]>) -> Result<Vec<u8>, ConfigError> {
        let mut data = self.processed_data()?;
        let Some(existing) = existing else {
            return Ok(data.into_bytes());
        };
        let existing = std::str::from_utf8(existing)
            .map_err(|e| self.existing_err("read", "UTF-8 text", e.to_string()))?;
        if self.process.contains(&Processor::ToSecret) {
            data = self.to_secret(existing, &data)?;
        }
        if self.strategy == Strategy::Merge {
            data = self.merge(existing, &data)?;
        }
        Ok(data.into_bytes())
    }

    fn data_err(&self, step: &'static str, expected: &'static str, reason: String) -> ConfigError {
        ConfigError::Data {
            name: self.name.clone(),
            step,
            expected,
            reason,
        }
    }

    fn existing_err(
        &self,
        step: &'static str,
        expected: &'static str,
        reason: String,
    ) -> ConfigError {
        ConfigError::Existing {
            name: self.name.clone(),
            step,
            path: self.target_path().display().to_string(),
            expected,
            reason,
        }
    }

    fn data_mapping(&self, data: &str, step: &'static str) -> Result<Mapping, ConfigError> {
        match serde_norway::from_str::<Value>(data) {
            Ok(Value::Mapping(m)) => Ok(m),
            Ok(Value::Null) => Ok(Mapping::new()),
            Ok(_) => Err(self.data_err(step, "a YAML mapping", "it is not a mapping".into())),
            Err(e) => Err(self.data_err(step, "a YAML mapping", e.to_string())),
        }
    }

    /// Applies `f` to each top-level value; the result is a YAML mapping of
    /// strings with sorted keys (as sealer writes it).
    fn each_value(
        &self,
        data: &str,
        step: &'static str,
        f: impl Fn(&Value) -> Result<String, (&'static str, String)>,
    ) -> Result<String, ConfigError> {
        let mut entries: Vec<(String, String)> = Vec::new();
        for (k, v) in self.data_mapping(data, step)? {
            let key = scalar_text(&k).ok_or_else(|| {
                self.data_err(
                    step,
                    "a mapping with plain keys",
                    "a key is not a scalar".into(),
                )
            })?;
            let value =
                f(&v).map_err(|(expected, reason)| self.data_err(step, expected, reason))?;
            entries.push((key, value));
        }
        entries.sort();
        let out: Mapping = entries
            .into_iter()
            .map(|(k, v)| (Value::String(k), Value::String(v)))
            .collect();
        Ok(serde_norway::to_string(&out).unwrap_or_default())
    }

    fn to_secret(&self, existing: &str, data: &str) -> Result<String, ConfigError> {
        let mut secret = match serde_norway::from_str::<Value>(existing) {
            Ok(Value::Mapping(m)) => m,
            Ok(Value::Null) => Mapping::new(),
            Ok(_) => {
                return Err(self.existing_err(
                    "toSecret",
                    "a Secret manifest",
                    "it is not a mapping".into(),
                ))
            }
            Err(e) => {
                return Err(self.existing_err("toSecret", "a Secret manifest", e.to_string()))
            }
        };
        let values = self.data_mapping(data, "toSecret")?;
        let key = Value::String("data".into());
        let mut secret_data = match secret.remove(&key) {
            Some(Value::Mapping(m)) => m,
            None | Some(Value::Null) => Mapping::new(),
            Some(_) => {
                return Err(self.existing_err(
                    "toSecret",
                    "a Secret manifest",
                    "its data is not a mapping".into(),
                ))
            }
        };
        for (k, v) in values {
            let text = scalar_text(&v).ok_or_else(|| {
                self.data_err(
                    "toSecret",
                    "a mapping of strings",
                    "a value is not a string".into(),
                )
            })?;
            secret_data.insert(
                k,
                Value::String(base64::engine::general_purpose::STANDARD.encode(text)),
            );
        }
        secret.insert(key, Value::Mapping(secret_data));
        Ok(serde_norway::to_string(&secret).unwrap_or_default())
    }

    fn merge(&self, existing: &str, data: &str) -> Result<String, ConfigError> {
        let overlay = self.data_mapping(data, "merge")?;
        let mut docs = Vec::new();
        for doc in serde_norway::Deserializer::from_str(existing) {
            // The iterator repeats a syntax error forever: stop at the first.
            let value = Value::deserialize(doc)
                .map_err(|e| self.existing_err("merge", "YAML", e.to_string()))?;
            let mut base = match value {
                Value::Mapping(m) => m,
                Value::Null => Mapping::new(),
                _ => {
                    return Err(self.existing_err(
                        "merge",
                        "YAML mappings",
                        "a document is not a mapping".into(),
                    ))
                }
            };
            merge_into(&mut base, &overlay);
            docs.push(serde_norway::to_string(&base).unwrap_or_default());
        }
        if docs.is_empty() {
            docs.push(serde_norway::to_string(&overlay).unwrap_or_default());
        }
        Ok(docs.join("---\n"))
    }
}

/// Mappings merge key by key, recursively; anything else in `overlay`
/// replaces what `base` has.
pub(crate) fn merge_into(base: &mut Mapping, overlay: &Mapping) {
    for (k, v) in overlay {
        match (base.get_mut(k), v) {
            (Some(Value::Mapping(b)), Value::Mapping(o)) => merge_into(b, o),
            _ => {
                base.insert(k.clone(), v.clone());
            }
        }
    }
}

/// A plain scalar's text (strings, numbers, booleans; null as empty).
fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Null => Some(String::new()),
        Value::Tagged(t) => scalar_text(&t.value),
        _ => None,
    }
}

/// YAML that has no JSON form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum NoJson {
    #[error("{0} has no JSON form")]
    Number(String),
    #[error("a mapping key is not a scalar")]
    Key,
}

/// YAML to compact JSON with sorted keys, as sealer's YAMLToJSON writes it.
fn yaml_to_json(v: &Value) -> Result<String, NoJson> {
    fn convert(v: &Value) -> Result<serde_json::Value, NoJson> {
        Ok(match v {
            Value::Null => serde_json::Value::Null,
            Value::Bool(b) => serde_json::Value::Bool(*b),
            Value::Number(n) => {
                if let Some(i) = n.as_i64() {
                    i.into()
                } else if let Some(u) = n.as_u64() {
                    u.into()
                } else {
                    let f = n.as_f64().unwrap_or(f64::NAN);
                    serde_json::Number::from_f64(f)
                        .map(serde_json::Value::Number)
                        .ok_or_else(|| NoJson::Number(n.to_string()))?
                }
            }
            Value::String(s) => serde_json::Value::String(s.clone()),
            Value::Sequence(items) => {
                serde_json::Value::Array(items.iter().map(convert).collect::<Result<_, _>>()?)
            }
            Value::Mapping(m) => {
                let mut entries = Vec::new();
                for (k, v) in m {
                    let key = scalar_text(k).ok_or(NoJson::Key)?;
                    entries.push((key, convert(v)?));
                }
                entries.sort_by(|a, b| a.0.cmp(&b.0));
                serde_json::Value::Object(entries.into_iter().collect())
            }
            Value::Tagged(t) => convert(&t.value)?,
        })
    }
    Ok(convert(v)?.to_string())
}

/// The path as a relative path: leading `/` dropped (sealer joins it under
/// the rootfs), `.` components removed.
fn relative(path: &str) -> PathBuf {
    Path::new(path)
        .components()
        .filter(|c| matches!(c, Component::Normal(_)))
        .collect()
}

/// A Config path that names no file of the rootfs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum BadPath {
    #[error("{0:?} leaves the rootfs: '..' is not allowed")]
    Leaves(String),
    #[error("{0:?} names no file")]
    NoFile(String),
}

fn check_path(path: &str) -> Result<(), BadPath> {
    if Path::new(path)
        .components()
        .any(|c| matches!(c, Component::ParentDir))
    {
        return Err(BadPath::Leaves(path.to_string()));
    }
    if relative(path).as_os_str().is_empty() {
        return Err(BadPath::NoFile(path.to_string()));
    }
    Ok(())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct RawSpec {
    #[serde(default)]
    strategy: Option<String>,
    #[serde(default)]
    process: Option<String>,
    #[serde(default)]
    data: Option<String>,
    #[serde(default)]
    app_name: Option<String>,
    #[serde(default)]
    path: Option<String>,
}

/// Reads a Config document.
pub(crate) fn from_doc(
    doc: Doc<RawSpec>,
    at: &DocRef,
    warnings: &mut Vec<Warning>,
) -> Result<Config, ClusterfileError> {
    let spec = doc.spec.unwrap_or_default();
    let err = |kind: ErrorKind, path: &str, message: String| {
        ClusterfileError::new(kind, message).in_doc(at).at(path)
    };
    let path = spec.path.unwrap_or_default();
    if path.trim().is_empty() {
        return Err(err(
            ErrorKind::MissingField,
            "spec.path",
            "a config needs the path of the file it writes".into(),
        ));
    }
    check_path(&path).map_err(|e| err(ErrorKind::InvalidValue, "spec.path", e.to_string()))?;
    let data = spec.data.unwrap_or_default();
    if data.is_empty() {
        return Err(err(
            ErrorKind::MissingField,
            "spec.data",
            "a config needs data".into(),
        ));
    }
    let app_name = spec.app_name.filter(|a| !a.is_empty());
    if let Some(app) = &app_name {
        if app.contains('/') || app == "." || app == ".." {
            return Err(err(
                ErrorKind::InvalidValue,
                "spec.appName",
                format!("{app:?} is not an app name"),
            ));
        }
    }
    let strategy = match spec.strategy.as_deref().unwrap_or("") {
        "" | "overwrite" => Strategy::Overwrite,
        "merge" => Strategy::Merge,
        other => {
            return Err(err(
                ErrorKind::InvalidValue,
                "spec.strategy",
                format!("{other:?} is not a strategy: use overwrite or merge"),
            ))
        }
    };
    let mut process = Vec::new();
    for step in spec.process.unwrap_or_default().split('|').map(str::trim) {
        if step.is_empty() {
            continue;
        }
        match Processor::parse(step) {
            Some(p) => process.push(p),
            None => warnings.push(Warning {
                document: Some(at.clone()),
                path: Some("spec.process".into()),
                message: format!("unknown processor {step:?} is skipped (known: value, toJson, toBase64, toSecret)"),
            }),
        }
    }
    Ok(Config {
        document: Some(at.clone()),
        value_label: doc
            .metadata
            .labels
            .get("preprocess.value")
            .map(String::as_str)
            == Some("true"),
        name: doc.metadata.name,
        path,
        app_name,
        data,
        strategy,
        process,
    })
}
