//! The `Application` kind (sealer 0.9+): which of the image's apps to
//! launch, raw launch commands, and per-app env, files and launch commands.

use serde::Deserialize;

use super::config::Strategy;
use super::error::{ClusterfileError, DocRef, ErrorKind};
use super::fields::{env_list, string_list, Doc};

/// An `Application` document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Application {
    /// Where it was read from.
    pub document: Option<DocRef>,
    /// `metadata.name`.
    pub name: String,
    /// `spec.cmds`: raw launch commands, which take precedence over apps.
    pub cmds: Vec<String>,
    /// `spec.launchApps`: the image's apps to launch.
    pub launch_apps: Vec<String>,
    /// `spec.configs`.
    pub configs: Vec<AppConfig>,
}

/// One `spec.configs` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppConfig {
    /// `name`: the app.
    pub name: String,
    /// `env`: the app's own env, over the cluster's.
    pub env: Vec<(String, String)>,
    /// `files`: changes to the app's files.
    pub files: Vec<AppFile>,
    /// `launch.cmds`: replaces the app's launch command.
    pub launch_cmds: Option<Vec<String>>,
}

/// One `files` entry of an app config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppFile {
    /// `path`, inside the app's directory.
    pub path: String,
    /// `strategy`.
    pub strategy: Strategy,
    /// `data`.
    pub data: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct RawSpec {
    #[serde(default, deserialize_with = "string_list")]
    cmds: Vec<String>,
    #[serde(default, deserialize_with = "string_list")]
    launch_apps: Vec<String>,
    #[serde(default)]
    configs: Option<Vec<RawConfig>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawConfig {
    #[serde(default)]
    name: Option<String>,
    #[serde(default, deserialize_with = "env_list")]
    env: Vec<(String, String)>,
    #[serde(default)]
    files: Option<Vec<RawFile>>,
    #[serde(default)]
    launch: Option<RawLaunch>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawFile {
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    strategy: Option<String>,
    #[serde(default)]
    data: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawLaunch {
    #[serde(default, deserialize_with = "string_list")]
    cmds: Vec<String>,
}

/// Reads an Application document, with sealer's checks: every config names
/// its app, a launch has commands, every file has a path and data.
pub(crate) fn from_doc(doc: Doc<RawSpec>, at: &DocRef) -> Result<Application, ClusterfileError> {
    let spec = doc.spec.unwrap_or_default();
    let err = |kind: ErrorKind, path: String, message: &str| {
        ClusterfileError::new(kind, message).in_doc(at).at(path)
    };
    let mut configs = Vec::new();
    for (i, c) in spec.configs.unwrap_or_default().into_iter().enumerate() {
        let name = c.name.filter(|n| !n.is_empty()).ok_or_else(|| {
            err(
                ErrorKind::MissingField,
                format!("spec.configs[{i}].name"),
                "an app config needs the app's name",
            )
        })?;
        let launch_cmds = match c.launch {
            Some(l) if l.cmds.is_empty() => {
                return Err(err(
                    ErrorKind::MissingField,
                    format!("spec.configs[{i}].launch.cmds"),
                    "a launch needs commands",
                ))
            }
            Some(l) => Some(l.cmds),
            None => None,
        };
        let mut files = Vec::new();
        for (j, f) in c.files.unwrap_or_default().into_iter().enumerate() {
            let at_file = |field: &str| format!("spec.configs[{i}].files[{j}].{field}");
            let path = f.path.filter(|p| !p.is_empty()).ok_or_else(|| {
                err(
                    ErrorKind::MissingField,
                    at_file("path"),
                    "an app file needs a path",
                )
            })?;
            if path.split('/').any(|c| c == "..") {
                return Err(err(
                    ErrorKind::InvalidValue,
                    at_file("path"),
                    "'..' is not allowed in an app file's path",
                ));
            }
            let data = f.data.filter(|d| !d.is_empty()).ok_or_else(|| {
                err(
                    ErrorKind::MissingField,
                    at_file("data"),
                    "an app file needs data",
                )
            })?;
            let strategy = match f.strategy.as_deref().unwrap_or("") {
                "" | "overwrite" => Strategy::Overwrite,
                "merge" => Strategy::Merge,
                _ => {
                    return Err(err(
                        ErrorKind::InvalidValue,
                        at_file("strategy"),
                        "use overwrite or merge",
                    ))
                }
            };
            files.push(AppFile {
                path,
                strategy,
                data,
            });
        }
        configs.push(AppConfig {
            name,
            env: c.env,
            files,
            launch_cmds,
        });
    }
    Ok(Application {
        document: Some(at.clone()),
        name: doc.metadata.name,
        cmds: spec.cmds,
        launch_apps: spec.launch_apps,
        configs,
    })
}
