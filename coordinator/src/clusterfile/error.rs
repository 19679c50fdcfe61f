//! Errors and warnings that name the document and the field they are about.

use std::fmt;

/// Which document of the file an error or warning is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DocRef {
    /// 1-based position among the file's documents (`---` separated).
    pub index: usize,
    /// Its `kind`, when it has one.
    pub kind: Option<String>,
    /// Its `metadata.name`, when it has one.
    pub name: Option<String>,
}

impl fmt::Display for DocRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "document {}", self.index)?;
        match (&self.kind, &self.name) {
            (Some(kind), Some(name)) => write!(f, " ({kind} {name})"),
            (Some(kind), None) => write!(f, " ({kind})"),
            (None, Some(name)) => write!(f, " ({name})"),
            (None, None) => Ok(()),
        }
    }
}

/// What kind of mistake an error reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The bytes are not UTF-8.
    NotUtf8,
    /// The text is not YAML.
    Syntax,
    /// A document is not a mapping, or has no `kind` or `apiVersion`.
    NotAnObject,
    /// A `kind` Seaport does not know.
    UnknownKind,
    /// An `apiVersion` that is not one of the kind's.
    UnsupportedApiVersion,
    /// A field the schema does not have.
    UnknownField,
    /// A required field is absent or empty.
    MissingField,
    /// A field has the wrong type or an invalid value.
    InvalidValue,
    /// Something that must be unique is given twice.
    Duplicate,
    /// The file lacks something a cluster needs (a Cluster, hosts, a master).
    Incomplete,
}

/// An error in a Clusterfile: what is wrong, in which document, at which
/// field, and where in the text when the parser knows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterfileError {
    /// What kind of mistake.
    pub kind: ErrorKind,
    /// The document, unless the error is about the whole file.
    pub document: Option<DocRef>,
    /// The field, as `spec.hosts[1].roles`.
    pub path: Option<String>,
    /// What is wrong.
    pub message: String,
    /// 1-based line and column in the file.
    pub location: Option<(u32, u32)>,
}

impl std::error::Error for ClusterfileError {}

impl fmt::Display for ClusterfileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(doc) = &self.document {
            write!(f, "{doc}: ")?;
        }
        if let Some(path) = &self.path {
            write!(f, "{path}: ")?;
        }
        f.write_str(&self.message)?;
        if let Some((line, column)) = self.location {
            write!(f, " (line {line}, column {column})")?;
        }
        Ok(())
    }
}

impl ClusterfileError {
    pub(crate) fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            document: None,
            path: None,
            message: message.into(),
            location: None,
        }
    }

    pub(crate) fn in_doc(mut self, doc: &DocRef) -> Self {
        self.document = Some(doc.clone());
        self
    }

    pub(crate) fn at(mut self, path: impl Into<String>) -> Self {
        self.path = Some(path.into());
        self
    }

    /// A typed deserialization error, with serde_norway's field path split
    /// off its message so the unknown or missing field ends the path.
    pub(crate) fn from_yaml(err: &serde_norway::Error, doc: &DocRef) -> Self {
        let location = yaml_location(err);
        let mut text = err.to_string();
        if let Some((line, column)) = location {
            let suffix = format!(" at line {line} column {column}");
            if text.ends_with(&suffix) {
                text.truncate(text.len() - suffix.len());
            }
        }
        let (mut path, mut message) = split_path(&text);
        let mut kind = ErrorKind::InvalidValue;
        for (prefix, k) in [
            ("unknown field `", ErrorKind::UnknownField),
            ("missing field `", ErrorKind::MissingField),
            ("duplicate field `", ErrorKind::Duplicate),
        ] {
            if let Some(rest) = message.strip_prefix(prefix) {
                if let Some((field, tail)) = rest.split_once('`') {
                    path = Some(match path {
                        Some(p) => format!("{p}.{field}"),
                        None => field.to_string(),
                    });
                    message = format!("{}{tail}", &prefix[..prefix.len() - 2]);
                    kind = k;
                }
                break;
            }
        }
        if message.starts_with("unknown variant `") {
            kind = ErrorKind::InvalidValue;
        }
        Self {
            kind,
            document: Some(doc.clone()),
            path,
            message,
            location,
        }
    }
}

/// A serde_norway error's 1-based line and column.
pub(crate) fn yaml_location(err: &serde_norway::Error) -> Option<(u32, u32)> {
    let l = err.location()?;
    Some((
        u32::try_from(l.line()).unwrap_or(u32::MAX),
        u32::try_from(l.column()).unwrap_or(u32::MAX),
    ))
}

/// serde's own messages, which begin without a path when the error is at the
/// document's root.
const SERDE_MESSAGES: &[&str] = &[
    "unknown field `",
    "missing field `",
    "duplicate field `",
    "invalid type: ",
    "invalid value: ",
    "invalid length ",
    "unknown variant `",
];

fn split_path(text: &str) -> (Option<String>, String) {
    if SERDE_MESSAGES.iter().any(|m| text.starts_with(m)) {
        return (None, text.to_string());
    }
    match text.split_once(": ") {
        Some((path, message)) if !path.is_empty() => (Some(path.to_string()), message.to_string()),
        _ => (None, text.to_string()),
    }
}

/// Something accepted but not acted on, or acted on differently than sealer
/// would; shown to the user, never fatal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Warning {
    /// The document.
    pub document: Option<DocRef>,
    /// The field.
    pub path: Option<String>,
    /// What the user should know.
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(doc) = &self.document {
            write!(f, "{doc}: ")?;
        }
        if let Some(path) = &self.path {
            write!(f, "{path}: ")?;
        }
        f.write_str(&self.message)
    }
}
