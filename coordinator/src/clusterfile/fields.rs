//! Field shapes shared by the kinds: object metadata, `K=V` env lists, string
//! maps, IP lists. Deserialization errors from here carry the field's path
//! and position like any other.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use serde::de::{self, IgnoredAny};
use serde::{Deserialize, Deserializer};
use serde_norway::Value;

use super::ip;
use super::taint::{parse_taint, TaintOp};

/// A document's `metadata` (Kubernetes ObjectMeta). Seaport keeps the name,
/// labels and annotations; the other standard fields, which sealer writes
/// when it saves a Clusterfile, are accepted and ignored.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct Meta {
    #[serde(default)]
    pub(crate) name: String,
    #[serde(default, deserialize_with = "string_map")]
    pub(crate) labels: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "string_map")]
    pub(crate) annotations: BTreeMap<String, String>,
    #[serde(default)]
    #[allow(dead_code)]
    namespace: Option<IgnoredAny>,
    #[serde(default)]
    #[allow(dead_code)]
    creation_timestamp: Option<IgnoredAny>,
    #[serde(default)]
    #[allow(dead_code)]
    generate_name: Option<IgnoredAny>,
    #[serde(default)]
    #[allow(dead_code)]
    uid: Option<IgnoredAny>,
    #[serde(default)]
    #[allow(dead_code)]
    resource_version: Option<IgnoredAny>,
    #[serde(default)]
    #[allow(dead_code)]
    generation: Option<IgnoredAny>,
}

/// A whole document of one kind: the type fields, metadata, spec, and an
/// ignored `status` (sealer writes `status: {}` into saved Clusterfiles).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct Doc<S> {
    /// Checked (or warned about) by the first pass; sealer never reads it.
    #[serde(default)]
    #[allow(dead_code)]
    api_version: Option<IgnoredAny>,
    #[allow(dead_code)]
    kind: IgnoredAny,
    #[serde(default)]
    pub(crate) metadata: Meta,
    pub(crate) spec: Option<S>,
    #[serde(default)]
    #[allow(dead_code)]
    status: Option<IgnoredAny>,
}

fn scalar_to_string(v: Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        Value::Null => Some(String::new()),
        _ => None,
    }
}

/// A mapping of strings to strings; plain scalars (`ssd: true`) count as
/// their text.
pub(crate) fn string_map<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, String>, D::Error> {
    let raw = Option::<BTreeMap<String, Value>>::deserialize(d)?.unwrap_or_default();
    raw.into_iter()
        .map(|(k, v)| {
            scalar_to_string(v)
                .map(|v| (k.clone(), v))
                .ok_or_else(|| de::Error::custom(format!("the value of {k:?} must be a string")))
        })
        .collect()
}

/// A list of strings, `null` as empty.
pub(crate) fn string_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(Option::<Vec<String>>::deserialize(d)?.unwrap_or_default())
}

/// An env entry that is not `KEY=VALUE`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("env entry {0:?} is not KEY=VALUE")]
pub(crate) struct EnvEntryError(String);

/// Splits one `KEY=VALUE` env entry (the value may contain `=`).
pub(crate) fn parse_env(entry: &str) -> Result<(String, String), EnvEntryError> {
    match entry.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(EnvEntryError(entry.to_string())),
    }
}

/// Deserializes a string through `parse`. The error is raised while the
/// parser is on the string itself, so it carries that entry's path
/// (`spec.hosts[0].ips[1]`) and position.
struct StrWith<T, P>(fn(&str) -> Result<T, P>);

impl<'de, T, P: fmt::Display> de::Visitor<'de> for StrWith<T, P> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        (self.0)(v).map_err(E::custom)
    }
}

struct EnvEntry((String, String));

impl<'de> Deserialize<'de> for EnvEntry {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(StrWith(|s| parse_env(s).map(EnvEntry)))
    }
}

struct IpEntry(Vec<IpAddr>);

impl<'de> Deserialize<'de> for IpEntry {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(StrWith(|s| ip::expand_entry(s).map(IpEntry)))
    }
}

struct TaintEntry(TaintOp);

impl<'de> Deserialize<'de> for TaintEntry {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(StrWith(|s| parse_taint(s).map(TaintEntry)))
    }
}

/// sealer's env: a list of `KEY=VALUE` strings, order and repeats kept.
pub(crate) fn env_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(String, String)>, D::Error> {
    let entries = Option::<Vec<EnvEntry>>::deserialize(d)?.unwrap_or_default();
    Ok(entries.into_iter().map(|e| e.0).collect())
}

/// Taints in `kubectl taint` syntax.
pub(crate) fn taint_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<TaintOp>, D::Error> {
    let entries = Option::<Vec<TaintEntry>>::deserialize(d)?.unwrap_or_default();
    Ok(entries.into_iter().map(|e| e.0).collect())
}

/// A list of IPs, each entry an IP or a `FIRST-LAST` range.
pub(crate) fn ip_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<IpAddr>, D::Error> {
    let mut out = Vec::new();
    for entry in Option::<Vec<IpEntry>>::deserialize(d)?.unwrap_or_default() {
        if (out.len() + entry.0.len()) as u128 > ip::MAX_HOSTS {
            return Err(de::Error::custom(format!(
                "more than {} addresses",
                ip::MAX_HOSTS
            )));
        }
        out.extend(entry.0);
    }
    Ok(out)
}
