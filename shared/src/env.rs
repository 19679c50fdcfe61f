//! `KEY=VALUE` pairs as the CLIs take them (`-e K=V`, `--build-arg K=V`,
//! `--label K=V`).

/// A word that is not `KEY=VALUE`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not KEY=VALUE")]
pub struct NotKeyValue(pub String);

/// Splits `KEY=VALUE` at its first `=`; the key must not be empty.
pub fn key_value(s: &str) -> Result<(String, String), NotKeyValue> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(NotKeyValue(s.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_split_at_the_first_equals() {
        assert_eq!(
            key_value("a=b=c").unwrap(),
            ("a".to_string(), "b=c".to_string())
        );
        assert_eq!(key_value("a=").unwrap(), ("a".to_string(), String::new()));
        assert!(key_value("=b").is_err());
        assert_eq!(
            key_value("ab").unwrap_err().to_string(),
            "\"ab\" is not KEY=VALUE"
        );
    }
}
