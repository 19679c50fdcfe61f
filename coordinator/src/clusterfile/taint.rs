//! Taints in `kubectl taint` syntax, as a Clusterfile host's `taints` and
//! TAINT plugins write them, and the keys of labels and taints.

use std::fmt;

/// A taint's effect.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TaintEffect {
    /// `NoSchedule`.
    NoSchedule,
    /// `PreferNoSchedule`.
    PreferNoSchedule,
    /// `NoExecute`.
    NoExecute,
}

impl TaintEffect {
    fn parse(s: &str) -> Result<Self, TaintError> {
        match s {
            "NoSchedule" => Ok(TaintEffect::NoSchedule),
            "PreferNoSchedule" => Ok(TaintEffect::PreferNoSchedule),
            "NoExecute" => Ok(TaintEffect::NoExecute),
            _ => Err(TaintError::Effect(s.to_string())),
        }
    }

    /// The name Kubernetes uses.
    pub fn name(self) -> &'static str {
        match self {
            TaintEffect::NoSchedule => "NoSchedule",
            TaintEffect::PreferNoSchedule => "PreferNoSchedule",
            TaintEffect::NoExecute => "NoExecute",
        }
    }
}

/// A taint to add or remove, in `kubectl taint` syntax.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TaintOp {
    /// `key=value:Effect` or `key:Effect`.
    Add {
        /// Key.
        key: String,
        /// Value (may be empty).
        value: String,
        /// Effect.
        effect: TaintEffect,
    },
    /// `key:Effect-` (that effect only) or `key-` (every effect).
    Remove {
        /// Key.
        key: String,
        /// The effect, or every one.
        effect: Option<TaintEffect>,
    },
}

impl fmt::Display for TaintOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TaintOp::Add { key, value, effect } if value.is_empty() => {
                write!(f, "{key}:{}", effect.name())
            }
            TaintOp::Add { key, value, effect } => write!(f, "{key}={value}:{}", effect.name()),
            TaintOp::Remove {
                key,
                effect: Some(e),
            } => write!(f, "{key}:{}-", e.name()),
            TaintOp::Remove { key, effect: None } => write!(f, "{key}-"),
        }
    }
}

/// A label or taint key that is empty or holds a separator.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} key {key:?} is empty or contains whitespace, '=', ':' or ','")]
pub struct BadKey {
    /// `label` or `taint`.
    pub what: &'static str,
    /// The key.
    pub key: String,
}

/// Why a taint does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TaintError {
    /// An unknown effect.
    #[error("taint effect {0:?} is not NoSchedule, PreferNoSchedule or NoExecute")]
    Effect(String),
    /// A bad key.
    #[error(transparent)]
    Key(#[from] BadKey),
    /// A removal with a value.
    #[error("taint {0:?}: to remove a taint write KEY- or KEY:EFFECT-")]
    RemoveWithValue(String),
    /// No effect.
    #[error("taint {0:?} is not KEY=VALUE:EFFECT")]
    NotATaint(String),
    /// A value holding a separator.
    #[error("taint {taint:?} has an invalid value {value:?}")]
    Value {
        /// The taint.
        taint: String,
        /// Its value.
        value: String,
    },
}

/// Checks a label or taint key (`what` names which, for the error).
pub(crate) fn check_key(key: &str, what: &'static str) -> Result<(), BadKey> {
    if key.is_empty() || key.contains(|c: char| c.is_whitespace() || matches!(c, '=' | ':' | ',')) {
        Err(BadKey {
            what,
            key: key.to_string(),
        })
    } else {
        Ok(())
    }
}

/// Parses one taint as sealer and `kubectl taint` write it:
/// `key=value:Effect`, `key:Effect`, `key=:Effect`, `key:Effect-`, `key-`.
pub fn parse_taint(s: &str) -> Result<TaintOp, TaintError> {
    let s = s.trim();
    if let Some(rest) = s.strip_suffix('-') {
        return match rest.split_once(':') {
            Some((kv, effect)) => {
                let key = kv.split_once('=').map_or(kv, |(k, _)| k);
                check_key(key, "taint")?;
                Ok(TaintOp::Remove {
                    key: key.to_string(),
                    effect: Some(TaintEffect::parse(effect)?),
                })
            }
            None if rest.contains('=') => Err(TaintError::RemoveWithValue(s.to_string())),
            None => {
                check_key(rest, "taint")?;
                Ok(TaintOp::Remove {
                    key: rest.to_string(),
                    effect: None,
                })
            }
        };
    }
    let (kv, effect) = s
        .split_once(':')
        .ok_or_else(|| TaintError::NotATaint(s.to_string()))?;
    let (key, value) = kv.split_once('=').unwrap_or((kv, ""));
    check_key(key, "taint")?;
    if value.contains(|c: char| c.is_whitespace() || matches!(c, '=' | ':')) {
        return Err(TaintError::Value {
            taint: s.to_string(),
            value: value.to_string(),
        });
    }
    Ok(TaintOp::Add {
        key: key.to_string(),
        value: value.to_string(),
        effect: TaintEffect::parse(effect)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn taints_in_every_form_sealer_accepts() {
        let add = |k: &str, v: &str, e| TaintOp::Add {
            key: k.into(),
            value: v.into(),
            effect: e,
        };
        assert_eq!(
            parse_taint("key1=value1:NoSchedule").unwrap(),
            add("key1", "value1", TaintEffect::NoSchedule)
        );
        assert_eq!(
            parse_taint("key3:NoExecute").unwrap(),
            add("key3", "", TaintEffect::NoExecute)
        );
        assert_eq!(
            parse_taint("key5=:PreferNoSchedule").unwrap(),
            add("key5", "", TaintEffect::PreferNoSchedule)
        );
        assert_eq!(
            parse_taint("node-role.kubernetes.io/master:NoSchedule-").unwrap(),
            TaintOp::Remove {
                key: "node-role.kubernetes.io/master".into(),
                effect: Some(TaintEffect::NoSchedule)
            }
        );
        assert_eq!(
            parse_taint("key2=value2:NoSchedule-").unwrap(),
            TaintOp::Remove {
                key: "key2".into(),
                effect: Some(TaintEffect::NoSchedule)
            }
        );
        assert_eq!(
            parse_taint("key7-").unwrap(),
            TaintOp::Remove {
                key: "key7".into(),
                effect: None
            }
        );
        for (text, shown) in [
            ("k=v:NoSchedule", "k=v:NoSchedule"),
            ("k:NoExecute-", "k:NoExecute-"),
            ("k-", "k-"),
            ("k=:NoSchedule", "k:NoSchedule"),
        ] {
            assert_eq!(parse_taint(text).unwrap().to_string(), shown);
        }
        assert!(parse_taint("key1=value1:Sometimes")
            .unwrap_err()
            .to_string()
            .contains("NoSchedule, PreferNoSchedule or NoExecute"));
        assert!(parse_taint("key1=value1")
            .unwrap_err()
            .to_string()
            .contains("KEY=VALUE:EFFECT"));
        assert!(parse_taint(":NoSchedule").is_err());
        assert!(parse_taint("a=b=c:NoSchedule").is_err());
        assert!(parse_taint("a=b-").is_err());
    }
}
