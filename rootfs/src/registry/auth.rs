//! Registry authentication: `WWW-Authenticate` challenges and token scopes.
//!
//! A registry answers an unauthenticated request with 401 and a challenge,
//! either `Basic realm="..."` or Docker Registry v2 token auth,
//! `Bearer realm="https://auth/token",service="registry",scope="repository:r:pull"`.
//! For a bearer challenge the client asks the realm for a token (with Basic
//! credentials when it has them) and repeats the request with it. This
//! module is the pure part: parsing challenges and building token URLs.

use std::collections::BTreeMap;

/// How a registry wants to be authenticated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Challenge {
    /// `Basic`: send the credentials with every request.
    Basic,
    /// `Bearer`: get a token from `realm`.
    Bearer {
        /// The token endpoint.
        realm: String,
        /// The `service` parameter to pass on.
        service: Option<String>,
        /// The scope the registry asked for, if any.
        scope: Option<String>,
    },
}

/// Parses a `WWW-Authenticate` header value. Returns `None` for schemes
/// other than Basic and Bearer, or a Bearer challenge without realm.
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, rest) = match header.find(char::is_whitespace) {
        Some(i) => (&header[..i], &header[i..]),
        None => (header, ""),
    };
    let params = parse_params(rest);
    if scheme.eq_ignore_ascii_case("basic") {
        Some(Challenge::Basic)
    } else if scheme.eq_ignore_ascii_case("bearer") {
        Some(Challenge::Bearer {
            realm: params.get("realm")?.clone(),
            service: params.get("service").cloned(),
            scope: params.get("scope").cloned(),
        })
    } else {
        None
    }
}

/// Parses `k="v", k2=v2` auth parameters; keys are lowercased.
fn parse_params(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace() || *c == ',') {
            chars.next();
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c == ',' {
                break;
            }
            key.push(c);
            chars.next();
        }
        if key.is_empty() && chars.peek().is_none() {
            break;
        }
        if chars.next() != Some('=') {
            // A bare token (no value): skip it.
            if chars.peek().is_none() {
                break;
            }
            continue;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => {
                        if let Some(n) = chars.next() {
                            value.push(n);
                        }
                    }
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' {
                    break;
                }
                value.push(c);
                chars.next();
            }
            value = value.trim().to_string();
        }
        out.insert(key.trim().to_ascii_lowercase(), value);
    }
    out
}

/// What access a request needs: a repository scope or none (`/v2/`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// The API root, used to check credentials.
    Registry,
    /// Pull from a repository.
    Pull(String),
    /// Pull from and push to a repository.
    Push(String),
}

impl Scope {
    /// The token-auth scope string, e.g. `repository:library/x:pull,push`.
    pub fn as_token_scope(&self) -> Option<String> {
        match self {
            Scope::Registry => None,
            Scope::Pull(repo) => Some(format!("repository:{repo}:pull")),
            Scope::Push(repo) => Some(format!("repository:{repo}:pull,push")),
        }
    }
}

/// The URL to ask `realm` for a token covering `scope`; the error is the
/// URL parser's complaint.
pub fn token_url(
    realm: &str,
    service: Option<&str>,
    scope: &Scope,
    account: Option<&str>,
) -> Result<reqwest::Url, url::ParseError> {
    let mut url = reqwest::Url::parse(realm)?;
    {
        let mut q = url.query_pairs_mut();
        if let Some(service) = service {
            q.append_pair("service", service);
        }
        if let Some(scope) = scope.as_token_scope() {
            q.append_pair("scope", &scope);
        }
        if let Some(account) = account {
            q.append_pair("account", account);
        }
    }
    Ok(url)
}

/// The token from a token endpoint's JSON answer (`token` or `access_token`).
pub fn parse_token_response(body: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    ["token", "access_token"]
        .iter()
        .find_map(|k| value.get(k).and_then(|v| v.as_str()))
        .filter(|t| !t.is_empty())
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bearer_with_quotes_and_commas_in_scope() {
        let c = parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/nginx:pull,push""#,
        )
        .unwrap();
        assert_eq!(
            c,
            Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/nginx:pull,push".into()),
            }
        );
    }

    #[test]
    fn parses_basic_and_rejects_unknown() {
        assert_eq!(
            parse_challenge(r#"Basic realm="Registry Realm""#),
            Some(Challenge::Basic)
        );
        assert_eq!(parse_challenge("basic"), Some(Challenge::Basic));
        assert_eq!(parse_challenge(r#"Negotiate abc"#), None);
        assert_eq!(parse_challenge(r#"Bearer service="x""#), None);
    }

    #[test]
    fn token_url_carries_service_scope_and_account() {
        let url = token_url(
            "https://auth.example/token?x=1",
            Some("reg"),
            &Scope::Push("a/b".into()),
            Some("alice"),
        )
        .unwrap();
        assert_eq!(
            url.as_str(),
            "https://auth.example/token?x=1&service=reg&scope=repository%3Aa%2Fb%3Apull%2Cpush&account=alice"
        );
        assert!(token_url("not a url", None, &Scope::Registry, None).is_err());
    }

    #[test]
    fn token_response_accepts_both_field_names() {
        assert_eq!(
            parse_token_response(br#"{"token":"t1"}"#).as_deref(),
            Some("t1")
        );
        assert_eq!(
            parse_token_response(br#"{"access_token":"t2","expires_in":300}"#).as_deref(),
            Some("t2")
        );
        assert_eq!(parse_token_response(br#"{"token":""}"#), None);
        assert_eq!(parse_token_response(b"nope"), None);
    }
}
