//! Image names: parsing and normalization.
//!
//! A name is `[REGISTRY/]REPOSITORY[:TAG][@sha256:HEX]`, as Docker, sealer and
//! skopeo read it. The first path component is a registry host when it
//! contains `.` or `:` or is `localhost`; otherwise the registry is
//! `docker.io`, and a single-component repository gets `library/` in front.
//! The tag defaults to `latest` unless only a digest is given.
//!
//! [`ImageRef`]'s `Display` gives the short form (`kubernetes:v1.19.8`), and
//! [`ImageRef::canonical`] the full one (`docker.io/library/kubernetes:v1.19.8`).
//! Both parse back to the same value.

use std::fmt;
use std::str::FromStr;

use seaport_shared::digest::Digest;

/// The registry assumed when a name has none.
pub const DEFAULT_REGISTRY: &str = "docker.io";
/// The tag assumed when a name has neither tag nor digest.
pub const DEFAULT_TAG: &str = "latest";

/// Errors from parsing an image name.
#[derive(Debug, thiserror::Error)]
pub enum ReferenceError {
    /// The name as a whole is malformed.
    #[error("invalid image name {name:?}: {reason}")]
    Invalid {
        /// The name as given.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// A parsed, normalized image name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ImageRef {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

impl ImageRef {
    /// Parses and normalizes `name`.
    pub fn parse(name: &str) -> Result<Self, ReferenceError> {
        let invalid = |reason: &str| ReferenceError::Invalid {
            name: name.chars().take(200).collect(),
            reason: reason.to_string(),
        };
        if name.is_empty() {
            return Err(invalid("the name is empty"));
        }
        if name.len() > 512 {
            return Err(invalid("the name is longer than 512 characters"));
        }
        let (rest, digest) = match name.split_once('@') {
            Some((rest, d)) => (
                rest,
                Some(d.parse::<Digest>().map_err(|e| invalid(&e.to_string()))?),
            ),
            None => (name, None),
        };
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (path, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
            None => (rest, None),
        };
        if let Some(tag) = tag {
            validate_tag(tag).map_err(|r| invalid(&r.to_string()))?;
        }
        let (registry, repository) = match path.split_once('/') {
            Some((first, remainder))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                validate_registry(first).map_err(|r| invalid(&r.to_string()))?;
                (first.to_string(), remainder.to_string())
            }
            _ => {
                let repo = if path.contains('/') {
                    path.to_string()
                } else {
                    format!("library/{path}")
                };
                (DEFAULT_REGISTRY.to_string(), repo)
            }
        };
        validate_repository(&repository).map_err(|r| invalid(&r.to_string()))?;
        let tag = match (tag, digest) {
            (Some(t), _) => Some(t.to_string()),
            (None, Some(_)) => None,
            (None, None) => Some(DEFAULT_TAG.to_string()),
        };
        Ok(Self {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// The registry host (and port), e.g. `docker.io` or `localhost:5000`.
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The repository path inside the registry, e.g. `library/kubernetes`.
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// The tag, if the name has one (always, unless only a digest was given).
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The manifest digest, if the name pins one.
    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// The same name with another tag and no digest.
    pub fn with_tag(&self, tag: &str) -> Result<Self, ReferenceError> {
        validate_tag(tag).map_err(|reason| ReferenceError::Invalid {
            name: format!("{}:{tag}", self.short_repository()),
            reason: reason.to_string(),
        })?;
        Ok(Self {
            tag: Some(tag.to_string()),
            digest: None,
            ..self.clone()
        })
    }

    /// The fully qualified name, e.g. `docker.io/library/kubernetes:v1.19.8`.
    pub fn canonical(&self) -> String {
        let mut out = format!("{}/{}", self.registry, self.repository);
        self.push_suffix(&mut out);
        out
    }

    /// `registry/repository` without tag or digest.
    pub fn canonical_repository(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    fn short_repository(&self) -> String {
        if self.registry == DEFAULT_REGISTRY {
            match self.repository.strip_prefix("library/") {
                Some(rest) if !rest.contains('/') => rest.to_string(),
                _ => self.repository.clone(),
            }
        } else {
            format!("{}/{}", self.registry, self.repository)
        }
    }

    fn push_suffix(&self, out: &mut String) {
        if let Some(tag) = &self.tag {
            out.push(':');
            out.push_str(tag);
        }
        if let Some(d) = &self.digest {
            out.push('@');
            out.push_str(&d.to_string());
        }
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = self.short_repository();
        self.push_suffix(&mut out);
        f.write_str(&out)
    }
}

impl FromStr for ImageRef {
    type Err = ReferenceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// What is wrong with a part of an image name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NamePartError {
    /// A tag outside the allowed characters or length.
    #[error("tag {0:?} must be 1 to 128 of [A-Za-z0-9_.-], not starting with . or -")]
    Tag(String),
    /// Not `HOST[:PORT]`.
    #[error("registry host {0:?} is not HOST[:PORT]")]
    Registry(String),
    /// No repository.
    #[error("the repository is empty")]
    EmptyRepository,
    /// A repository component outside the allowed characters.
    #[error("repository component {0:?} must be lowercase letters and digits, separated by single '.', '-' or '_'")]
    RepositoryComponent(String),
}

fn validate_tag(tag: &str) -> Result<(), NamePartError> {
    let ok = !tag.is_empty()
        && tag.len() <= 128
        && tag
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(NamePartError::Tag(tag.to_string()))
    }
}

/// Checks that `host` is a registry host: `HOST[:PORT]`, the host made of
/// dot-separated labels of letters, digits and `-`, the port a number. A
/// registry domain names directories (containerd's `certs.d/DOMAIN/`), so
/// nothing else (no `/`, no `..`, no empty label) may pass.
pub fn validate_registry(host: &str) -> Result<(), NamePartError> {
    let (name, port) = match host.rsplit_once(':') {
        Some((n, p)) => (n, Some(p)),
        None => (host, None),
    };
    let name_ok = !name.is_empty()
        && name
            .split('.')
            .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
    let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok());
    if name_ok && port_ok {
        Ok(())
    } else {
        Err(NamePartError::Registry(host.to_string()))
    }
}

fn validate_repository(repo: &str) -> Result<(), NamePartError> {
    if repo.is_empty() {
        return Err(NamePartError::EmptyRepository);
    }
    for component in repo.split('/') {
        let bytes = component.as_bytes();
        let ok = !bytes.is_empty()
            && bytes[0].is_ascii_lowercase() | bytes[0].is_ascii_digit()
            && bytes[bytes.len() - 1].is_ascii_lowercase()
                | bytes[bytes.len() - 1].is_ascii_digit()
            && bytes.iter().all(|&b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
            })
            && !component.contains("..")
            && !component.contains("___");
        if !ok {
            return Err(NamePartError::RepositoryComponent(component.to_string()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(name: &str) -> (String, String, Option<String>, Option<String>) {
        let r = ImageRef::parse(name).unwrap();
        (
            r.registry().into(),
            r.repository().into(),
            r.tag().map(Into::into),
            r.digest().map(|d| d.to_string()),
        )
    }

    #[test]
    fn normalizes_the_usual_forms() {
        let some = |s: &str| Some(s.to_string());
        assert_eq!(
            parts("kubernetes:v1.19.8"),
            (
                "docker.io".into(),
                "library/kubernetes".into(),
                some("v1.19.8"),
                None
            )
        );
        assert_eq!(
            parts("kubernetes"),
            (
                "docker.io".into(),
                "library/kubernetes".into(),
                some("latest"),
                None
            )
        );
        assert_eq!(
            parts("sealerio/kubernetes:v1"),
            (
                "docker.io".into(),
                "sealerio/kubernetes".into(),
                some("v1"),
                None
            )
        );
        assert_eq!(
            parts("registry.example.com:5000/sealer-io/kubernetes:v1.19.8"),
            (
                "registry.example.com:5000".into(),
                "sealer-io/kubernetes".into(),
                some("v1.19.8"),
                None
            )
        );
        assert_eq!(
            parts("localhost/x"),
            ("localhost".into(), "x".into(), some("latest"), None)
        );
        assert_eq!(
            parts("localhost:5000/a/b:c"),
            ("localhost:5000".into(), "a/b".into(), some("c"), None)
        );
        let d = Digest::of(b"m");
        assert_eq!(
            parts(&format!("name@{d}")),
            (
                "docker.io".into(),
                "library/name".into(),
                None,
                Some(d.to_string())
            )
        );
    }

    #[test]
    fn display_is_short_and_round_trips() {
        for name in [
            "kubernetes:v1.19.8",
            "sealerio/kubernetes:v1",
            "registry.example.com:5000/sealer-io/kubernetes:v1.19.8",
            "localhost/x:latest",
        ] {
            let r = ImageRef::parse(name).unwrap();
            assert_eq!(r.to_string(), name);
            assert_eq!(ImageRef::parse(&r.canonical()).unwrap(), r);
        }
        assert_eq!(
            ImageRef::parse("kubernetes").unwrap().canonical(),
            "docker.io/library/kubernetes:latest"
        );
        assert_eq!(
            ImageRef::parse("docker.io/library/k:1")
                .unwrap()
                .to_string(),
            "k:1"
        );
    }

    #[test]
    fn rejects_bad_names_with_a_reason() {
        for bad in [
            "",
            "Kubernetes:v1",
            "kube:",
            "kube:-x",
            "a//b",
            "/a",
            "a/",
            "x@sha256:1234",
            "reg:99999/a",
            "a..b",
        ] {
            let err = ImageRef::parse(bad).unwrap_err().to_string();
            assert!(err.starts_with("invalid image name"), "{bad}: {err}");
        }
    }
}
