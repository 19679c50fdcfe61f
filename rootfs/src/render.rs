//! Rendering a CloudRootfs with the cluster env: `*.tmpl` files and the
//! files under `statics/`.
//!
//! The syntax is the subset of Go templates sealer's images use:
//! `{{ .Name }}` is replaced by the env value `Name`, and
//! `{{ .Name | default "value" }}` falls back to a literal when `Name` is not
//! set. Anything else between `{{` and `}}` is an error naming the file and
//! line, as is an unknown name, so a typo never reaches a host silently.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use seaport_shared::confined::{ConfinedError, Dir, Entry};

/// Errors from rendering.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// A template refers to a value the env lacks, or is malformed.
    #[error("{origin}:{line}: {reason}")]
    Template {
        /// The file (or other origin) of the template.
        origin: String,
        /// 1-based line.
        line: usize,
        /// What is wrong and what to do.
        reason: String,
    },
    /// Reading or writing a file failed.
    #[error("rendering {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Writing a rendered file was refused (a symlink in the way) or failed.
    #[error("rendering {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: ConfinedError,
    },
}

/// Renders `text` with `env`; `origin` names the template in errors.
pub fn render(
    text: &str,
    env: &BTreeMap<String, String>,
    origin: &str,
) -> Result<String, RenderError> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    let mut consumed = 0usize;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let line = text[..consumed + start].matches('\n').count() + 1;
        let err = |reason: String| RenderError::Template {
            origin: origin.to_string(),
            line,
            reason,
        };
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .ok_or_else(|| err("'{{' is never closed by '}}'".into()))?;
        let expr = after[..end]
            .trim()
            .trim_start_matches('-')
            .trim_end_matches('-')
            .trim();
        out.push_str(&eval(expr, env).map_err(|e| err(e.to_string()))?);
        let used = start + 2 + end + 2;
        consumed += used;
        rest = &rest[used..];
    }
    out.push_str(rest);
    Ok(out)
}

/// What is wrong with one `{{ }}` expression.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExpressionError {
    /// A filter other than `default`.
    #[error("unsupported filter {0:?} (only `default \"value\"` is known)")]
    Filter(String),
    /// Not `.Name`.
    #[error("unsupported template expression {{{{ {0} }}}} (use {{{{ .Name }}}})")]
    Expression(String),
    /// A name the env does not set.
    #[error("{0} is not set; give it with -e {0}=VALUE or in the Clusterfile env")]
    Unset(String),
}

fn eval(expr: &str, env: &BTreeMap<String, String>) -> Result<String, ExpressionError> {
    let (name, default) = match expr.split_once('|') {
        Some((name, filter)) => {
            let filter = filter.trim();
            let lit = filter
                .strip_prefix("default")
                .map(str::trim)
                .and_then(|l| l.strip_prefix('"'))
                .and_then(|l| l.strip_suffix('"'))
                .ok_or_else(|| ExpressionError::Filter(filter.to_string()))?;
            (name.trim(), Some(lit))
        }
        None => (expr, None),
    };
    let key = name
        .strip_prefix('.')
        .filter(|k| !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
        .ok_or_else(|| ExpressionError::Expression(expr.to_string()))?;
    match (env.get(key), default) {
        (Some(v), _) => Ok(v.clone()),
        (None, Some(d)) => Ok(d.to_string()),
        (None, None) => Err(ExpressionError::Unset(key.to_string())),
    }
}

/// What [`render_rootfs`] wrote.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RenderReport {
    /// Files written, relative to the rootfs.
    pub rendered: Vec<PathBuf>,
}

/// Renders every `*.tmpl` file of `rootfs` (outside `registry/` and
/// `images/`) to the same path without `.tmpl`, and every file under
/// `statics/` in place. Idempotent: a rendered file has no template left.
///
/// Rendered files are written beneath the rootfs without following any
/// symlink ([`seaport_shared::confined`]): a symlink the image planted at
/// an output path is replaced, not written through, and the temporary file
/// is created with `O_EXCL | O_NOFOLLOW` under a random name.
pub fn render_rootfs(
    rootfs: &Path,
    env: &BTreeMap<String, String>,
) -> Result<RenderReport, RenderError> {
    let mut report = RenderReport::default();
    let root = Dir::open(rootfs).map_err(|e| RenderError::Write {
        path: rootfs.to_path_buf(),
        source: e,
    })?;
    let walker = walkdir::WalkDir::new(rootfs)
        .sort_by_file_name()
        .into_iter()
        .filter_entry(|e| {
            let rel = e.path().strip_prefix(rootfs).unwrap_or(e.path());
            !(rel.starts_with("registry") || rel.starts_with("images"))
        });
    for entry in walker {
        let entry = entry.map_err(|e| RenderError::Io {
            path: e.path().map(Path::to_path_buf).unwrap_or_default(),
            source: e.into(),
        })?;
        if !entry.file_type().is_file() {
            continue;
        }
        let path = entry.path();
        let rel = path.strip_prefix(rootfs).unwrap_or(path).to_path_buf();
        let is_tmpl = path.extension().is_some_and(|e| e == "tmpl");
        if !is_tmpl && !rel.starts_with("statics") {
            continue;
        }
        let io = |source| RenderError::Io {
            path: path.to_path_buf(),
            source,
        };
        let text = fs::read_to_string(path).map_err(io)?;
        let out = render(&text, env, &rel.display().to_string())?;
        let dest = if is_tmpl {
            path.with_extension("")
        } else {
            path.to_path_buf()
        };
        let dest_rel = dest.strip_prefix(rootfs).unwrap_or(&dest);
        let current = match root.read_entry(dest_rel) {
            Ok(Some(Entry::File { bytes, .. })) => Some(bytes),
            _ => None,
        };
        if current.as_deref() != Some(out.as_bytes()) {
            let mode = fs::metadata(path).map_err(io)?.permissions().mode() & 0o7777;
            root.write_atomic(dest_rel, out.as_bytes(), mode)
                .map_err(|e| RenderError::Write {
                    path: dest.clone(),
                    source: e,
                })?;
        }
        report
            .rendered
            .push(dest.strip_prefix(rootfs).unwrap_or(&dest).to_path_buf());
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn substitutes_values_and_defaults() {
        let e = env(&[("RegistryDomain", "sea.hub"), ("RegistryPort", "5000")]);
        let out = render(
            "server = {{ .RegistryDomain }}:{{.RegistryPort}}\nip={{ .HostIP | default \"127.0.0.1\" }}\n",
            &e,
            "t",
        )
        .unwrap();
        assert_eq!(out, "server = sea.hub:5000\nip=127.0.0.1\n");
    }

    #[test]
    fn unknown_names_and_bad_syntax_say_where() {
        let err = render("a\nb {{ .Missing }}\n", &env(&[]), "etc/x.tmpl").unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with("etc/x.tmpl:2:") && msg.contains("Missing is not set"),
            "{msg}"
        );
        let err = render("{{ range .X }}", &env(&[]), "f").unwrap_err();
        assert!(err.to_string().contains("unsupported"), "{err}");
        assert!(render("{{ .A ", &env(&[]), "f").is_err());
    }

    #[test]
    fn renders_tmpl_files_and_statics_but_not_registry() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        fs::create_dir_all(r.join("etc")).unwrap();
        fs::create_dir_all(r.join("statics")).unwrap();
        fs::create_dir_all(r.join("registry")).unwrap();
        fs::write(r.join("etc/hosts.toml.tmpl"), "server = {{ .D }}\n").unwrap();
        fs::write(r.join("statics/audit.yml"), "x: {{ .D }}\n").unwrap();
        fs::write(r.join("registry/blob.tmpl"), "{{ not rendered").unwrap();
        fs::write(r.join("etc/plain.yml"), "{{ .Untouched }}").unwrap();
        let e = env(&[("D", "sea.hub")]);
        let rep = render_rootfs(r, &e).unwrap();
        assert_eq!(
            fs::read_to_string(r.join("etc/hosts.toml")).unwrap(),
            "server = sea.hub\n"
        );
        assert_eq!(
            fs::read_to_string(r.join("statics/audit.yml")).unwrap(),
            "x: sea.hub\n"
        );
        assert_eq!(
            fs::read_to_string(r.join("etc/plain.yml")).unwrap(),
            "{{ .Untouched }}"
        );
        assert_eq!(rep.rendered.len(), 2);
        // Again: nothing changes.
        assert_eq!(render_rootfs(r, &e).unwrap().rendered.len(), 2);
    }
}
