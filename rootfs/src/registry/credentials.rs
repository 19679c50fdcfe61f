//! Registry credentials in a docker-compatible `config.json`.
//!
//! The file is the one `docker login` writes: `auths.<registry>.auth` holds
//! `base64(user:password)`. Its location is `$DOCKER_CONFIG/config.json` when
//! `DOCKER_CONFIG` is set, else `$HOME/.docker/config.json`, so `docker login`,
//! sealer and Seaport share credentials. Other keys in the file (credential
//! helpers, proxies, anything docker writes) are kept untouched on update.
//!
//! Writes are atomic (temporary file, fsync, rename) and the file is mode
//! 0600 in a 0700 directory. Passwords never appear in `Debug` output or logs.

use std::fmt;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde_json::{Map, Value};

/// The key docker uses for Docker Hub in `auths`.
pub const DOCKER_HUB_KEY: &str = "https://index.docker.io/v1/";

/// Errors from reading or writing the credentials file.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    /// Neither `DOCKER_CONFIG` nor `HOME` is set.
    #[error("cannot locate the credentials file: set DOCKER_CONFIG or HOME")]
    NoLocation,
    /// Reading the file failed.
    #[error("reading credentials file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not the JSON object docker writes.
    #[error("credentials file {path} is not valid: {reason}; fix or remove it")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Writing the file failed.
    #[error("writing credentials file {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A user name with a colon cannot be stored in docker's format.
    #[error("user name {0:?} contains ':', which docker's credential format cannot store")]
    BadUser(String),
}

/// A user name and password (or token) for one registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The user name.
    pub username: String,
    /// The password or access token.
    pub password: String,
}

impl Credentials {
    /// Builds credentials from a user and password.
    pub fn new(username: impl Into<String>, password: impl Into<String>) -> Self {
        Self {
            username: username.into(),
            password: password.into(),
        }
    }

    /// The value of an HTTP `Authorization: Basic` header.
    pub fn basic_header(&self) -> String {
        format!("Basic {}", self.encoded())
    }

    fn encoded(&self) -> String {
        base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", self.username, self.password))
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// The normalized key of a registry in `auths`: `host[:port]`, except Docker
/// Hub, which docker stores as [`DOCKER_HUB_KEY`].
pub fn registry_key(registry: &str) -> String {
    let host = normalize_host(registry);
    if is_docker_hub(&host) {
        DOCKER_HUB_KEY.to_string()
    } else {
        host
    }
}

/// `registry` without scheme, path or trailing slash, lowercased.
pub fn normalize_host(registry: &str) -> String {
    let s = registry.trim();
    let s = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"))
        .unwrap_or(s);
    let s = s.split('/').next().unwrap_or_default();
    s.to_ascii_lowercase()
}

/// Whether `host` names Docker Hub.
pub fn is_docker_hub(host: &str) -> bool {
    matches!(
        host,
        "docker.io" | "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com"
    )
}

/// The docker-compatible credentials file.
#[derive(Clone, Debug)]
pub struct CredentialStore {
    path: PathBuf,
}

impl CredentialStore {
    /// The store at `$DOCKER_CONFIG/config.json`, else `$HOME/.docker/config.json`.
    pub fn default_location() -> Result<Self, CredentialsError> {
        if let Some(dir) = std::env::var_os("DOCKER_CONFIG").filter(|d| !d.is_empty()) {
            return Ok(Self::at(PathBuf::from(dir).join("config.json")));
        }
        let home = std::env::var_os("HOME")
            .filter(|h| !h.is_empty())
            .ok_or(CredentialsError::NoLocation)?;
        Ok(Self::at(
            PathBuf::from(home).join(".docker").join("config.json"),
        ))
    }

    /// The store at an explicit file.
    pub fn at(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// The file this store reads and writes.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The credentials stored for `registry`, if any.
    pub fn get(&self, registry: &str) -> Result<Option<Credentials>, CredentialsError> {
        let config = self.load()?;
        let Some(auths) = config.get("auths").and_then(Value::as_object) else {
            return Ok(None);
        };
        let host = normalize_host(registry);
        let key = registry_key(registry);
        // docker has written keys with and without scheme over the years.
        let entry = auths.iter().find_map(|(k, v)| {
            let k_host = normalize_host(k);
            let same =
                *k == key || k_host == host || (is_docker_hub(&host) && is_docker_hub(&k_host));
            same.then_some(v)
        });
        let Some(entry) = entry else {
            return Ok(None);
        };
        self.decode_entry(&key, entry)
            .map(Some)
            .or_else(|e| match e {
                // An entry without `auth` (credential helper users) is no credential.
                CredentialsError::Invalid { ref reason, .. } if reason.contains("no auth") => {
                    Ok(None)
                }
                e => Err(e),
            })
    }

    /// Stores `credentials` for `registry`, replacing older ones.
    pub fn store(&self, registry: &str, credentials: &Credentials) -> Result<(), CredentialsError> {
        let config = self.map_with(registry, credentials)?;
        self.save(&config)
    }

    /// The text the file would hold with `credentials` stored for
    /// `registry` (its other entries kept), without writing it: for callers
    /// that write files their own way (journaled, atomically).
    pub fn text_with(
        &self,
        registry: &str,
        credentials: &Credentials,
    ) -> Result<String, CredentialsError> {
        let config = self.map_with(registry, credentials)?;
        let mut text = serde_json::to_string_pretty(&config).expect("JSON values serialize");
        text.push('\n');
        Ok(text)
    }

    fn map_with(
        &self,
        registry: &str,
        credentials: &Credentials,
    ) -> Result<Map<String, Value>, CredentialsError> {
        if credentials.username.contains(':') {
            return Err(CredentialsError::BadUser(credentials.username.clone()));
        }
        let mut config = self.load()?;
        let key = registry_key(registry);
        remove_matching(&mut config, registry);
        let auths = config
            .entry("auths")
            .or_insert_with(|| Value::Object(Map::new()));
        let Some(auths) = auths.as_object_mut() else {
            return Err(self.invalid("\"auths\" is not an object"));
        };
        let mut entry = Map::new();
        entry.insert("auth".into(), Value::String(credentials.encoded()));
        auths.insert(key, Value::Object(entry));
        Ok(config)
    }

    /// Removes the credentials of `registry`; returns whether there were any.
    pub fn remove(&self, registry: &str) -> Result<bool, CredentialsError> {
        if !self.path.exists() {
            return Ok(false);
        }
        let mut config = self.load()?;
        if !remove_matching(&mut config, registry) {
            return Ok(false);
        }
        self.save(&config)?;
        Ok(true)
    }

    fn decode_entry(&self, key: &str, entry: &Value) -> Result<Credentials, CredentialsError> {
        let auth = entry
            .get("auth")
            .and_then(Value::as_str)
            .filter(|a| !a.is_empty())
            .ok_or_else(|| self.invalid(&format!("auths.{key} has no auth")))?;
        let raw = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .map_err(|_| self.invalid(&format!("auths.{key}.auth is not base64")))?;
        let text = String::from_utf8(raw)
            .map_err(|_| self.invalid(&format!("auths.{key}.auth is not UTF-8")))?;
        let (user, pass) = text
            .split_once(':')
            .ok_or_else(|| self.invalid(&format!("auths.{key}.auth is not user:password")))?;
        Ok(Credentials::new(user, pass))
    }

    fn invalid(&self, reason: &str) -> CredentialsError {
        CredentialsError::Invalid {
            path: self.path.clone(),
            reason: reason.to_string(),
        }
    }

    fn load(&self) -> Result<Map<String, Value>, CredentialsError> {
        let text = match fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Map::new()),
            Err(source) => {
                return Err(CredentialsError::Read {
                    path: self.path.clone(),
                    source,
                })
            }
        };
        if text.trim().is_empty() {
            return Ok(Map::new());
        }
        match serde_json::from_str::<Value>(&text) {
            Ok(Value::Object(map)) => Ok(map),
            Ok(_) => Err(self.invalid("the top level is not a JSON object")),
            Err(e) => Err(self.invalid(&format!("line {}: {e}", e.line()))),
        }
    }

    fn save(&self, config: &Map<String, Value>) -> Result<(), CredentialsError> {
        let werr = |source| CredentialsError::Write {
            path: self.path.clone(),
            source,
        };
        let dir = self
            .path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        if !dir.exists() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(werr)?;
        }
        let mut text = serde_json::to_string_pretty(config).expect("JSON values serialize");
        text.push('\n');
        let tmp = dir.join(format!(
            ".{}.tmp-{}",
            self.path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            std::process::id()
        ));
        let result = (|| {
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            // The mode given to open is masked by the umask and ignored for
            // an existing file: set it explicitly.
            f.set_permissions(fs::Permissions::from_mode(0o600))?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            fs::rename(&tmp, &self.path)?;
            fs::File::open(dir)?.sync_all()
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result.map_err(werr)
    }
}

fn remove_matching(config: &mut Map<String, Value>, registry: &str) -> bool {
    let host = normalize_host(registry);
    let Some(auths) = config.get_mut("auths").and_then(Value::as_object_mut) else {
        return false;
    };
    let before = auths.len();
    auths.retain(|k, _| {
        let k_host = normalize_host(k);
        !(k_host == host || (is_docker_hub(&host) && is_docker_hub(&k_host)))
    });
    auths.len() != before
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_get_remove_round_trip_keeps_other_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("config.json");
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(
            &path,
            r#"{"credsStore":"desktop","auths":{"other.io":{"auth":"eDp5"}}}"#,
        )
        .unwrap();
        let store = CredentialStore::at(&path);
        store
            .store(
                "https://reg.example:5000/",
                &Credentials::new("alice", "p:w"),
            )
            .unwrap();
        let got = store.get("reg.example:5000").unwrap().unwrap();
        assert_eq!(got, Credentials::new("alice", "p:w"));
        let json: Value = serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(json["credsStore"], "desktop");
        assert_eq!(json["auths"]["reg.example:5000"]["auth"], "YWxpY2U6cDp3");
        assert_eq!(
            store.get("other.io").unwrap().unwrap(),
            Credentials::new("x", "y")
        );
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(store.remove("reg.example:5000").unwrap());
        assert!(!store.remove("reg.example:5000").unwrap());
        assert!(store.get("reg.example:5000").unwrap().is_none());
    }

    #[test]
    fn docker_hub_names_share_one_key() {
        let dir = tempfile::tempdir().unwrap();
        let store = CredentialStore::at(dir.path().join("config.json"));
        store
            .store("docker.io", &Credentials::new("u", "p"))
            .unwrap();
        let text = fs::read_to_string(store.path()).unwrap();
        assert!(text.contains(DOCKER_HUB_KEY), "{text}");
        assert!(store.get("registry-1.docker.io").unwrap().is_some());
        assert!(store.get("index.docker.io").unwrap().is_some());
    }

    #[test]
    fn broken_file_is_reported_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        fs::write(&path, "{not json").unwrap();
        let err = CredentialStore::at(&path)
            .get("x.io")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("config.json") && err.contains("not valid"),
            "{err}"
        );
    }

    #[test]
    fn debug_hides_the_password() {
        let c = Credentials::new("bob", "hunter2");
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
