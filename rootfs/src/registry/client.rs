//! An HTTP client for one OCI distribution registry.
//!
//! [`RegistryClient`] speaks the distribution API (`/v2/`): manifests by tag
//! or digest, blob HEAD and GET (resumed with `Range` after a dropped
//! connection), and blob uploads, monolithic for small blobs and chunked
//! (`PATCH` with `Content-Range`) for large ones, so an interrupted upload
//! continues from the offset the registry reports instead of starting over.
//! Authentication (Basic or token auth) is negotiated on the first 401 and
//! cached per repository scope; see [`super::auth`].
//!
//! The client is blocking (reqwest's blocking API over rustls) and `Sync`:
//! transfers of several blobs run on scoped threads sharing one client and
//! its connection pool. Bodies are streamed in both directions, so memory
//! stays bounded whatever the blob size.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::blocking::{Body, Client, RequestBuilder, Response};
use reqwest::header::{
    HeaderMap, ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, LOCATION, RANGE,
    WWW_AUTHENTICATE,
};
use reqwest::{StatusCode, Url};
use seaport_shared::digest::{Digest, DigestError};

use super::auth::{parse_challenge, parse_token_response, token_url, Challenge, Scope};
use super::credentials::{is_docker_hub, normalize_host, Credentials};
use super::progress::Progress;

/// Manifest media types Seaport accepts, most preferred first.
pub const MANIFEST_ACCEPT: &[&str] = &[
    MEDIA_TYPE_MANIFEST,
    MEDIA_TYPE_INDEX,
    MEDIA_TYPE_DOCKER_MANIFEST,
    MEDIA_TYPE_DOCKER_LIST,
];
use crate::oci::{
    MEDIA_TYPE_DOCKER_LIST, MEDIA_TYPE_DOCKER_MANIFEST, MEDIA_TYPE_INDEX, MEDIA_TYPE_MANIFEST,
};

/// The largest manifest accepted (distribution's own limit is 4 MiB).
pub const MAX_MANIFEST_SIZE: u64 = 8 << 20;

/// Errors from talking to a registry.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The HTTP client could not be set up.
    #[error("setting up the HTTP client for {registry}: {reason}")]
    Client {
        /// The registry.
        registry: String,
        /// What failed.
        reason: String,
    },
    /// A CA certificate file could not be used.
    #[error("CA certificate file {path}: {reason}")]
    CaFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The request could not be sent or its answer not read.
    #[error("{what}: {reason}")]
    Http {
        /// Method and URL.
        what: String,
        /// The cause, with its chain.
        reason: String,
        /// Whether trying again may help.
        transient: bool,
    },
    /// The registry refused the credentials (or their absence).
    #[error("authentication to {registry} failed: {detail}; check the user and password (seaport login {registry})")]
    Unauthorized {
        /// The registry.
        registry: String,
        /// What the registry said.
        detail: String,
    },
    /// A manifest or blob does not exist.
    #[error("{what}: not found in the registry ({detail})")]
    NotFound {
        /// What was asked for.
        what: String,
        /// What the registry said.
        detail: String,
    },
    /// The registry answered with an unexpected status.
    #[error("{what}: the registry answered {status}: {detail}")]
    Status {
        /// Method and URL.
        what: String,
        /// The HTTP status.
        status: StatusCode,
        /// The registry's error codes and messages.
        detail: String,
    },
    /// Content from the registry did not hash to its digest.
    #[error("{what} failed verification: expected {expected}, got {actual}; the registry served wrong or corrupted content")]
    DigestMismatch {
        /// Which blob or manifest, in which repository.
        what: String,
        /// The digest it should have.
        expected: Digest,
        /// The digest it had.
        actual: Digest,
    },
    /// A blob in the local store did not hash to its digest while it was
    /// pushed; the upload was not completed.
    #[error("blob {expected} in the store ({path}) hashes to {actual}: the local copy is corrupt, so it was not pushed (pull or build the image again)")]
    CorruptLocalBlob {
        /// The blob's file.
        path: PathBuf,
        /// The digest it is stored under.
        expected: Digest,
        /// The digest its bytes have.
        actual: Digest,
    },
    /// A manifest could not be used.
    #[error("manifest {what}: {reason}")]
    Manifest {
        /// Which manifest.
        what: String,
        /// What is wrong.
        reason: String,
    },
    /// A local file could not be read or written.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        source: io::Error,
    },
}

impl RegistryError {
    /// Whether trying the same operation again may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            RegistryError::Http { transient, .. } => *transient,
            RegistryError::Status { status, .. } => {
                status.is_server_error()
                    || *status == StatusCode::TOO_MANY_REQUESTS
                    || *status == StatusCode::REQUEST_TIMEOUT
            }
            _ => false,
        }
    }
}

type Result<T, E = RegistryError> = std::result::Result<T, E>;

/// How to reach registries: transport security, retries, transfer sizes.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Use plain HTTP for every registry (test registries).
    pub insecure: bool,
    /// Registries (`host[:port]`) reached over plain HTTP.
    pub insecure_registries: Vec<String>,
    /// Extra CA certificates (PEM) trusted for every registry.
    pub ca_files: Vec<PathBuf>,
    /// certs.d-style directories: `DIR/<host[:port]>/*.crt` are trusted for
    /// that registry only.
    pub certs_dirs: Vec<PathBuf>,
    /// How many times a failed transfer is retried (resumed where possible).
    pub retries: u32,
    /// Upload chunk size; blobs up to this size go in one request.
    pub chunk_size: u64,
    /// How many blobs move at once.
    pub parallel: usize,
    /// Show progress bars (only on a terminal).
    pub progress: bool,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            insecure: false,
            insecure_registries: Vec::new(),
            ca_files: Vec::new(),
            certs_dirs: Vec::new(),
            retries: 4,
            chunk_size: 256 << 20,
            parallel: 4,
            progress: true,
        }
    }
}

impl ClientOptions {
    /// The certs.d directories Seaport reads by default:
    /// `<root>/certs.d` and docker's `/etc/docker/certs.d`.
    pub fn default_certs_dirs(root: &Path) -> Vec<PathBuf> {
        vec![root.join("certs.d"), PathBuf::from("/etc/docker/certs.d")]
    }

    fn is_insecure(&self, host: &str) -> bool {
        self.insecure
            || self
                .insecure_registries
                .iter()
                .any(|r| normalize_host(r) == host)
    }
}

#[derive(Default)]
struct AuthState {
    challenge: Option<Challenge>,
    tokens: HashMap<Scope, String>,
}

/// A client for one registry host.
pub struct RegistryClient {
    host: String,
    base: Url,
    http: Client,
    credentials: Option<Credentials>,
    auth: Mutex<AuthState>,
    options: ClientOptions,
    progress: Progress,
}

impl std::fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryClient")
            .field("host", &self.host)
            .field("base", &self.base.as_str())
            .finish_non_exhaustive()
    }
}

impl RegistryClient {
    /// A client for `registry` (`host[:port]`, as in image names).
    pub fn new(
        registry: &str,
        options: &ClientOptions,
        credentials: Option<Credentials>,
    ) -> Result<Self> {
        let host = normalize_host(registry);
        let api_host = if is_docker_hub(&host) {
            "registry-1.docker.io".to_string()
        } else {
            host.clone()
        };
        let scheme = if options.is_insecure(&host) {
            "http"
        } else {
            "https"
        };
        let client_err = |reason: String| RegistryError::Client {
            registry: host.clone(),
            reason,
        };
        let base = Url::parse(&format!("{scheme}://{api_host}/"))
            .map_err(|e| client_err(format!("{api_host:?} is not a host name: {e}")))?;
        let mut certs = Vec::new();
        for path in &options.ca_files {
            certs.extend(load_pem_bundle(path)?);
        }
        for dir in &options.certs_dirs {
            let dir = dir.join(&host);
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            let mut files: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "crt"))
                .collect();
            files.sort();
            for path in files {
                certs.extend(load_pem_bundle(&path)?);
            }
        }
        let http = Client::builder()
            .no_proxy()
            .user_agent(concat!("seaport/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(30))
            // Large blobs take as long as they take; stalls are caught by
            // the read timeout on each read.
            .timeout(None::<Duration>)
            .tcp_keepalive(Duration::from_secs(30))
            .pool_max_idle_per_host(options.parallel.max(1) * 2)
            .tls_certs_merge(certs)
            .build()
            .map_err(|e| client_err(error_chain(&e)))?;
        Ok(Self {
            host,
            base,
            http,
            credentials,
            auth: Mutex::new(AuthState::default()),
            options: options.clone(),
            progress: Progress::new(options.progress),
        })
    }

    /// The registry as named (`host[:port]`).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The options this client was made with.
    pub fn options(&self) -> &ClientOptions {
        &self.options
    }

    /// The progress display shared by this client's transfers.
    pub fn progress(&self) -> &Progress {
        &self.progress
    }

    /// Checks that the registry speaks the distribution API and accepts the
    /// credentials (used by `seaport login`).
    pub fn check_login(&self) -> Result<()> {
        let url = self.url("v2/")?;
        let resp = self.send(&Scope::Registry, &|| Ok(self.http.get(url.clone())))?;
        if resp.status().is_success() {
            // Token auth: a token was issued for the credentials, which is the
            // check. A registry without auth accepts anything, as with docker.
            return Ok(());
        }
        Err(status_error(&format!("GET {url}"), resp))
    }

    /// Fetches a manifest by tag or digest. Returns its bytes, media type and
    /// digest (verified when `reference` is a digest).
    pub fn get_manifest(&self, repo: &str, reference: &str) -> Result<(Vec<u8>, String, Digest)> {
        let url = self.url(&format!("v2/{repo}/manifests/{reference}"))?;
        let what = format!("manifest {}/{repo}:{reference}", self.host);
        self.retrying(&what, || {
            let resp = self.send(&Scope::Pull(repo.to_string()), &|| {
                Ok(self.http.get(url.clone()).header(ACCEPT, MANIFEST_ACCEPT.join(", ")))
            })?;
            if resp.status() == StatusCode::NOT_FOUND {
                return Err(RegistryError::NotFound {
                    what: what.clone(),
                    detail: error_detail(resp),
                });
            }
            if !resp.status().is_success() {
                return Err(status_error(&format!("GET {url}"), resp));
            }
            let header_type = content_type(resp.headers());
            let body = read_limited(resp, MAX_MANIFEST_SIZE, &format!("GET {url}"))?;
            let digest = Digest::of(&body);
            if let Ok(expected) = reference.parse::<Digest>() {
                if expected != digest {
                    return Err(RegistryError::DigestMismatch {
                        what: what.clone(),
                        expected,
                        actual: digest,
                    });
                }
            }
            let media_type = header_type
                .filter(|t| MANIFEST_ACCEPT.contains(&t.as_str()))
                .or_else(|| crate::media::document_media_type(&body))
                .ok_or_else(|| RegistryError::Manifest {
                    what: what.clone(),
                    reason: "it has no known media type (docker schema 1 and other formats are not supported)".into(),
                })?;
            Ok((body, media_type, digest))
        })
    }

    /// Stores a manifest under `reference` (a tag or its digest). Returns the
    /// digest the registry computed, checked against the bytes sent.
    pub fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> Result<Digest> {
        let url = self.url(&format!("v2/{repo}/manifests/{reference}"))?;
        let digest = Digest::of(bytes);
        let what = format!("PUT {url}");
        self.retrying(&what, || {
            let resp = self.send(&Scope::Push(repo.to_string()), &|| {
                Ok(self
                    .http
                    .put(url.clone())
                    .header(CONTENT_TYPE, media_type)
                    .body(bytes.to_vec()))
            })?;
            if !resp.status().is_success() {
                return Err(status_error(&what, resp));
            }
            if let Some(got) = resp
                .headers()
                .get("docker-content-digest")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<Digest>().ok())
            {
                if got != digest {
                    return Err(RegistryError::DigestMismatch {
                        what: format!("manifest {}/{repo}:{reference} as stored", self.host),
                        expected: digest,
                        actual: got,
                    });
                }
            }
            Ok(digest)
        })
    }

    /// The size of a blob if the repository has it.
    pub fn blob_size(&self, repo: &str, digest: &Digest, scope: &Scope) -> Result<Option<u64>> {
        let url = self.url(&format!("v2/{repo}/blobs/{digest}"))?;
        let what = format!("HEAD {url}");
        self.retrying(&what, || {
            let resp = self.send(scope, &|| Ok(self.http.head(url.clone())))?;
            match resp.status() {
                s if s.is_success() => Ok(Some(
                    resp.headers()
                        .get(CONTENT_LENGTH)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0),
                )),
                StatusCode::NOT_FOUND => Ok(None),
                _ => Err(status_error(&what, resp)),
            }
        })
    }

    /// A reader of a blob that resumes with `Range` requests when the
    /// connection drops. It does not verify: the caller hashes what it reads.
    pub fn blob_reader(&self, repo: &str, digest: &Digest, size: Option<u64>) -> BlobReader<'_> {
        BlobReader {
            client: self,
            repo: repo.to_string(),
            digest: *digest,
            size,
            offset: 0,
            response: None,
            resumes_left: self.options.retries,
            last_error: None,
        }
    }

    /// Downloads a blob into `sink`, which must hash what it reads and fail
    /// with [`DigestError::Mismatch`] on a wrong digest (and leave nothing
    /// behind on error). Dropped connections are resumed; a blob that fails
    /// verification is fetched once more, then reported.
    pub fn download_blob(
        &self,
        repo: &str,
        digest: &Digest,
        size: Option<u64>,
        sink: &mut dyn FnMut(&mut dyn Read) -> Result<u64, DigestError>,
    ) -> Result<u64> {
        let what = format!("blob {digest} of {}/{repo}", self.host);
        let mut mismatches = 0;
        let mut failures = 0;
        loop {
            let bar = self.progress.bar(&short(digest), size);
            let mut reader = self.blob_reader(repo, digest, size);
            let result = {
                let mut counted = bar.wrap_read(&mut reader);
                sink(&mut counted)
            };
            bar.finish_and_clear();
            match result {
                Ok(n) => return Ok(n),
                Err(DigestError::Mismatch {
                    expected, actual, ..
                }) => {
                    mismatches += 1;
                    if mismatches > 1 {
                        return Err(RegistryError::DigestMismatch {
                            what,
                            expected,
                            actual,
                        });
                    }
                    tracing::warn!(%digest, repo, "blob failed verification, fetching it again");
                }
                Err(DigestError::Io(e)) => {
                    let err = reader.last_error.take().unwrap_or(RegistryError::Io {
                        what: format!("storing {what}"),
                        source: e,
                    });
                    failures += 1;
                    if !err.is_transient() || failures > self.options.retries {
                        return Err(err);
                    }
                    tracing::warn!(%digest, repo, error = %err, "blob download failed, starting it again");
                    backoff(failures);
                }
                Err(e) => {
                    return Err(RegistryError::Io {
                        what: format!("storing {what}"),
                        source: io::Error::other(e.to_string()),
                    })
                }
            }
        }
    }

    /// Uploads the blob in `path` unless the repository already has it.
    /// Returns whether it was uploaded. A failed upload resumes at the offset
    /// the registry reports, or starts over when the registry lost it.
    pub fn push_blob(&self, repo: &str, digest: &Digest, size: u64, path: &Path) -> Result<bool> {
        let scope = Scope::Push(repo.to_string());
        if self.blob_size(repo, digest, &scope)?.is_some() {
            return Ok(false);
        }
        let what = format!("uploading blob {digest} to {}/{repo}", self.host);
        let bar = self.progress.bar(&short(digest), Some(size));
        let check = Arc::new(UploadCheck::new(path, *digest, size));
        let mut location: Option<Url> = None;
        let mut failures = 0;
        let result = loop {
            let attempt = (|| -> Result<()> {
                // A failure while asking for the offset keeps the upload
                // (`location`) for the next attempt.
                let (loc, offset) = match location.clone() {
                    Some(loc) => match self.upload_status(&scope, &loc)? {
                        Some((loc, offset)) if offset <= size => (loc, offset),
                        _ => (self.start_upload(repo, &scope)?, 0),
                    },
                    None => (self.start_upload(repo, &scope)?, 0),
                };
                bar.set_position(offset);
                location = Some(loc.clone());
                if size <= self.options.chunk_size && offset == 0 {
                    self.put_whole(&scope, loc, digest, size, &check, &bar)?;
                } else {
                    let loc =
                        self.patch_chunks(&scope, loc, offset, size, &check, &bar, &mut location)?;
                    self.finish_upload(&scope, loc, digest)?;
                }
                Ok(())
            })();
            if let Some(actual) = check.mismatch() {
                break Err(RegistryError::CorruptLocalBlob {
                    path: path.to_path_buf(),
                    expected: *digest,
                    actual,
                });
            }
            match attempt {
                Ok(()) => break Ok(true),
                Err(e) if e.is_transient() && failures < self.options.retries => {
                    failures += 1;
                    tracing::warn!(%digest, repo, error = %e, "upload failed, resuming");
                    backoff(failures);
                }
                Err(e) => break Err(e),
            }
        };
        bar.finish_and_clear();
        result.map_err(|e| match e {
            RegistryError::Io { source, .. } => RegistryError::Io { what, source },
            e => e,
        })
    }

    /// Mounts a blob from another repository of the same registry. Returns
    /// whether the registry did the mount (else the caller uploads).
    pub fn mount_blob(&self, repo: &str, digest: &Digest, from: &str) -> Result<bool> {
        let mut url = self.url(&format!("v2/{repo}/blobs/uploads/"))?;
        url.query_pairs_mut()
            .append_pair("mount", &digest.to_string())
            .append_pair("from", from);
        let scope = Scope::Push(repo.to_string());
        let resp = self.send(&scope, &|| {
            Ok(self.http.post(url.clone()).header(CONTENT_LENGTH, "0"))
        })?;
        Ok(resp.status() == StatusCode::CREATED)
    }

    fn start_upload(&self, repo: &str, scope: &Scope) -> Result<Url> {
        let url = self.url(&format!("v2/{repo}/blobs/uploads/"))?;
        let what = format!("POST {url}");
        let resp = self.send(scope, &|| {
            Ok(self.http.post(url.clone()).header(CONTENT_LENGTH, "0"))
        })?;
        if resp.status() != StatusCode::ACCEPTED {
            return Err(status_error(&what, resp));
        }
        self.location(&resp, &what)
    }

    /// Where an upload continues and how many bytes of it the registry
    /// holds, or `None` if it forgot the upload. The location is the one
    /// the status answer gives (registries that keep upload state in the
    /// URL, like distribution, refresh it there), else the one asked.
    fn upload_status(&self, scope: &Scope, location: &Url) -> Result<Option<(Url, u64)>> {
        let what = format!("GET {}", redact_query(location));
        let resp = self.send(scope, &|| Ok(self.http.get(location.clone())))?;
        if resp.status() != StatusCode::NO_CONTENT {
            tracing::debug!(%what, status = %resp.status(), detail = %error_detail(resp), "the registry lost the upload");
            return Ok(None);
        }
        let Some(offset) = resp
            .headers()
            .get(RANGE)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_upload_range)
        else {
            return Ok(None);
        };
        let loc = match resp.headers().get(LOCATION) {
            Some(_) => self.location(&resp, &what)?,
            None => location.clone(),
        };
        Ok(Some((loc, offset)))
    }

    fn put_whole(
        &self,
        scope: &Scope,
        mut loc: Url,
        digest: &Digest,
        size: u64,
        check: &Arc<UploadCheck>,
        bar: &indicatif::ProgressBar,
    ) -> Result<()> {
        loc.query_pairs_mut()
            .append_pair("digest", &digest.to_string());
        let what = format!("PUT {}", redact_query(&loc));
        let resp = self.send(scope, &|| {
            bar.set_position(0);
            let body = check.body(0, size, bar)?;
            Ok(self
                .http
                .put(loc.clone())
                .header(CONTENT_TYPE, "application/octet-stream")
                .header(CONTENT_LENGTH, size)
                .body(body))
        })?;
        if resp.status() != StatusCode::CREATED {
            return Err(status_error(&what, resp));
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn patch_chunks(
        &self,
        scope: &Scope,
        mut loc: Url,
        mut offset: u64,
        size: u64,
        check: &Arc<UploadCheck>,
        bar: &indicatif::ProgressBar,
        latest: &mut Option<Url>,
    ) -> Result<Url> {
        while offset < size {
            let len = self.options.chunk_size.min(size - offset);
            let what = format!("PATCH {}", redact_query(&loc));
            let start = offset;
            let resp = self.send(scope, &|| {
                bar.set_position(start);
                let body = check.body(start, len, bar)?;
                Ok(self
                    .http
                    .patch(loc.clone())
                    .header(CONTENT_TYPE, "application/octet-stream")
                    .header(CONTENT_RANGE, format!("{}-{}", start, start + len - 1))
                    .header(CONTENT_LENGTH, len)
                    .body(body))
            })?;
            if resp.status() != StatusCode::ACCEPTED {
                return Err(status_error(&what, resp));
            }
            loc = self.location(&resp, &what)?;
            *latest = Some(loc.clone());
            offset += len;
        }
        Ok(loc)
    }

    fn finish_upload(&self, scope: &Scope, mut loc: Url, digest: &Digest) -> Result<()> {
        loc.query_pairs_mut()
            .append_pair("digest", &digest.to_string());
        let what = format!("PUT {}", redact_query(&loc));
        let resp = self.send(scope, &|| {
            Ok(self
                .http
                .put(loc.clone())
                .header(CONTENT_TYPE, "application/octet-stream")
                .header(CONTENT_LENGTH, "0"))
        })?;
        if resp.status() != StatusCode::CREATED {
            return Err(status_error(&what, resp));
        }
        Ok(())
    }

    fn location(&self, resp: &Response, what: &str) -> Result<Url> {
        let value = resp
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| RegistryError::Status {
                what: what.to_string(),
                status: resp.status(),
                detail: "the answer has no Location header".into(),
            })?;
        self.base.join(value).map_err(|e| RegistryError::Status {
            what: what.to_string(),
            status: resp.status(),
            detail: format!("the Location {value:?} is not a URL: {e}"),
        })
    }

    fn url(&self, path: &str) -> Result<Url> {
        self.base.join(path).map_err(|e| RegistryError::Client {
            registry: self.host.clone(),
            reason: format!("bad request path {path:?}: {e}"),
        })
    }

    /// Sends a request with the authorization `scope` needs, negotiating it
    /// on a 401. `build` is called again for the repeated request.
    fn send(&self, scope: &Scope, build: &dyn Fn() -> Result<RequestBuilder>) -> Result<Response> {
        for attempt in 0..2 {
            let mut req = build()?;
            if let Some(value) = self.authorization(scope)? {
                req = req.header(AUTHORIZATION, value);
            }
            let req = req
                .build()
                .map_err(|e| http_error("building a request", &e))?;
            let what = format!("{} {}", req.method(), redact_query(req.url()));
            let resp = self.http.execute(req).map_err(|e| http_error(&what, &e))?;
            if resp.status() != StatusCode::UNAUTHORIZED {
                return Ok(resp);
            }
            let challenge = resp
                .headers()
                .get(WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_challenge);
            let mut state = self.auth.lock().expect("auth state lock");
            let known =
                state.tokens.contains_key(scope) || state.challenge == Some(Challenge::Basic);
            match challenge {
                Some(c) if attempt == 0 && (state.challenge.as_ref() != Some(&c) || known) => {
                    // A first challenge, or an expired token: negotiate again.
                    state.challenge = Some(c);
                    state.tokens.remove(scope);
                }
                _ => {
                    drop(state);
                    return Err(self.unauthorized(error_detail(resp)));
                }
            }
        }
        unreachable!("the loop returns on its second pass")
    }

    fn unauthorized(&self, detail: String) -> RegistryError {
        let detail = if self.credentials.is_none() {
            format!("{detail}; no credentials are stored for it")
        } else {
            detail
        };
        RegistryError::Unauthorized {
            registry: self.host.clone(),
            detail,
        }
    }

    fn authorization(&self, scope: &Scope) -> Result<Option<String>> {
        let mut state = self.auth.lock().expect("auth state lock");
        match state.challenge.clone() {
            None => Ok(None),
            Some(Challenge::Basic) => match &self.credentials {
                Some(c) => Ok(Some(c.basic_header())),
                None => Err(self.unauthorized("the registry asks for a user and password".into())),
            },
            Some(Challenge::Bearer { realm, service, .. }) => {
                if let Some(token) = state.tokens.get(scope) {
                    return Ok(Some(token.clone()));
                }
                // Fetch while holding the lock, so parallel transfers ask once.
                let token = self.fetch_token(&realm, service.as_deref(), scope)?;
                let value = format!("Bearer {token}");
                state.tokens.insert(scope.clone(), value.clone());
                Ok(Some(value))
            }
        }
    }

    fn fetch_token(&self, realm: &str, service: Option<&str>, scope: &Scope) -> Result<String> {
        let account = self.credentials.as_ref().map(|c| c.username.as_str());
        let url =
            token_url(realm, service, scope, account).map_err(|reason| RegistryError::Status {
                what: format!("token auth for {}", self.host),
                status: StatusCode::UNAUTHORIZED,
                detail: format!("the token realm {realm:?} is not a URL: {reason}"),
            })?;
        let what = format!("GET {}", redact_query(&url));
        self.retrying(&what, || {
            let mut req = self.http.get(url.clone());
            if let Some(c) = &self.credentials {
                req = req.header(AUTHORIZATION, c.basic_header());
            }
            let resp = req.send().map_err(|e| http_error(&what, &e))?;
            let status = resp.status();
            if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
                return Err(self.unauthorized(format!(
                    "the token service {realm} refused: {}",
                    error_detail(resp)
                )));
            }
            if !status.is_success() {
                return Err(status_error(&what, resp));
            }
            let body = read_limited(resp, 1 << 20, &what)?;
            parse_token_response(&body).ok_or_else(|| RegistryError::Status {
                what: what.clone(),
                status,
                detail: "the answer has no token".into(),
            })
        })
    }

    /// Runs `op`, again after a pause when it fails transiently.
    fn retrying<T>(&self, what: &str, mut op: impl FnMut() -> Result<T>) -> Result<T> {
        let mut failures = 0;
        loop {
            match op() {
                Err(e) if e.is_transient() && failures < self.options.retries => {
                    failures += 1;
                    tracing::warn!(what, error = %e, attempt = failures, "retrying");
                    backoff(failures);
                }
                other => return other,
            }
        }
    }
}

/// A blob download that resumes after a dropped connection.
pub struct BlobReader<'a> {
    client: &'a RegistryClient,
    repo: String,
    digest: Digest,
    size: Option<u64>,
    offset: u64,
    response: Option<Response>,
    resumes_left: u32,
    last_error: Option<RegistryError>,
}

impl BlobReader<'_> {
    fn open(&mut self) -> Result<Response> {
        let url = self
            .client
            .url(&format!("v2/{}/blobs/{}", self.repo, self.digest))?;
        let what = format!("GET {url}");
        let offset = self.offset;
        let resp = self.client.send(&Scope::Pull(self.repo.clone()), &|| {
            let mut req = self.client.http.get(url.clone());
            if offset > 0 {
                req = req.header(RANGE, format!("bytes={offset}-"));
            }
            Ok(req)
        })?;
        match resp.status() {
            StatusCode::OK if offset == 0 => Ok(resp),
            StatusCode::PARTIAL_CONTENT if offset > 0 => {
                let start = resp
                    .headers()
                    .get(CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("bytes "))
                    .and_then(|v| v.split('-').next())
                    .and_then(|v| v.parse::<u64>().ok());
                if start == Some(offset) {
                    Ok(resp)
                } else {
                    Err(RegistryError::Http {
                        what,
                        reason: "the registry resumed at another offset than asked".into(),
                        transient: true,
                    })
                }
            }
            StatusCode::OK => Err(RegistryError::Http {
                what,
                reason: "the registry cannot resume downloads (no Range support)".into(),
                transient: true,
            }),
            StatusCode::NOT_FOUND => Err(RegistryError::NotFound {
                what: format!("blob {} of {}/{}", self.digest, self.client.host, self.repo),
                detail: error_detail(resp),
            }),
            _ => Err(status_error(&what, resp)),
        }
    }

    fn fail(&mut self, err: RegistryError) -> io::Error {
        let io_err = io::Error::other(err.to_string());
        self.last_error = Some(err);
        io_err
    }
}

impl Read for BlobReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            let err = match self.response.as_mut() {
                None => match self.open() {
                    Ok(resp) => {
                        self.response = Some(resp);
                        continue;
                    }
                    Err(e) => e,
                },
                Some(resp) => {
                    let reason = match resp.read(buf) {
                        Ok(0) if self.size.is_some_and(|s| self.offset < s) => {
                            "the connection closed before the end of the blob".to_string()
                        }
                        Ok(n) => {
                            self.offset += n as u64;
                            return Ok(n);
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => error_chain(&e),
                    };
                    self.interrupted(&reason)
                }
            };
            if err.is_transient() && self.resumes_left > 0 {
                self.resumes_left -= 1;
                tracing::warn!(digest = %self.digest, offset = self.offset, error = %err, "blob download interrupted, resuming");
                self.response = None;
                backoff(self.client.options.retries - self.resumes_left);
                continue;
            }
            return Err(self.fail(err));
        }
    }
}

impl BlobReader<'_> {
    fn interrupted(&self, reason: &str) -> RegistryError {
        RegistryError::Http {
            what: format!(
                "downloading blob {} of {}/{} at offset {}",
                self.digest, self.client.host, self.repo, self.offset
            ),
            reason: reason.to_string(),
            transient: true,
        }
    }
}

/// What a push reads of a blob from the store, hashed as it is read (as
/// skopeo verifies every blob it reads from a layout): the bytes sent must
/// hash to the blob's digest, or the upload is not completed. The hash
/// runs over the bytes in order across an upload's requests; a request
/// that starts elsewhere than where the hash stopped (a retried or resumed
/// chunk) first hashes the blob's bytes before it again, from the file.
struct UploadCheck {
    path: PathBuf,
    expected: Digest,
    size: u64,
    state: Mutex<UploadHash>,
}

struct UploadHash {
    hasher: sha2::Sha256,
    /// Bytes hashed so far (the blob's first `at`).
    at: u64,
    /// Set when the whole blob was read and hashed to something else.
    mismatch: Option<Digest>,
}

impl UploadCheck {
    fn new(path: &Path, expected: Digest, size: u64) -> UploadCheck {
        use sha2::Digest as _;
        UploadCheck {
            path: path.to_path_buf(),
            expected,
            size,
            state: Mutex::new(UploadHash {
                hasher: sha2::Sha256::new(),
                at: 0,
                mismatch: None,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, UploadHash> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The digest the blob's bytes had, if not the expected one.
    fn mismatch(&self) -> Option<Digest> {
        self.lock().mismatch
    }

    /// A request body of `len` bytes of the blob from `offset`.
    fn body(self: &Arc<Self>, offset: u64, len: u64, bar: &indicatif::ProgressBar) -> Result<Body> {
        let io_err = |source| RegistryError::Io {
            what: format!("reading {}", self.path.display()),
            source,
        };
        let mut file = fs::File::open(&self.path).map_err(io_err)?;
        file.seek(SeekFrom::Start(offset)).map_err(io_err)?;
        let reader = VerifyingRead {
            file: file.take(len),
            at: offset,
            check: self.clone(),
        };
        Ok(Body::sized(bar.wrap_read(reader), len))
    }

    /// Hashes `data`, the blob's bytes at `offset`. Fails (so that the
    /// request carrying them fails before its last byte) when they end the
    /// blob and the blob does not hash to its digest.
    fn feed(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        use sha2::Digest as _;
        let mut st = self.lock();
        if st.at != offset {
            st.hasher = sha2::Sha256::new();
            let mut prefix = fs::File::open(&self.path)?.take(offset);
            let copied = io::copy(&mut prefix, &mut HashInto(&mut st.hasher))?;
            if copied != offset {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("{} shrank while it was pushed", self.path.display()),
                ));
            }
            st.at = offset;
        }
        st.hasher.update(data);
        st.at += data.len() as u64;
        if st.at == self.size {
            let actual = Digest::from_bytes(st.hasher.clone().finalize().into());
            if actual != self.expected {
                st.mismatch = Some(actual);
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("blob {} in the store hashes to {actual}", self.expected),
                ));
            }
        }
        Ok(())
    }
}

/// Feeds what is written to a hasher.
struct HashInto<'a>(&'a mut sha2::Sha256);

impl io::Write for HashInto<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        sha2::Digest::update(self.0, buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A request body's bytes of a blob, each checked by an [`UploadCheck`].
struct VerifyingRead {
    file: io::Take<fs::File>,
    at: u64,
    check: Arc<UploadCheck>,
}

impl Read for VerifyingRead {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read(buf)?;
        if n > 0 || self.file.limit() == 0 {
            self.check.feed(self.at, &buf[..n])?;
        }
        self.at += n as u64;
        Ok(n)
    }
}

fn load_pem_bundle(path: &Path) -> Result<Vec<reqwest::Certificate>> {
    let ca_err = |reason: String| RegistryError::CaFile {
        path: path.to_path_buf(),
        reason,
    };
    let pem = fs::read(path).map_err(|e| ca_err(e.to_string()))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem)
        .map_err(|e| ca_err(format!("not a PEM certificate bundle: {}", error_chain(&e))))?;
    if certs.is_empty() {
        return Err(ca_err("no PEM certificate in it".into()));
    }
    Ok(certs)
}

/// Parses an upload's `Range: 0-<last>` (some registries write
/// `bytes=0-<last>`) into the number of bytes held. distribution reports
/// `0-0` for an empty upload.
fn parse_upload_range(value: &str) -> Option<u64> {
    let value = value.trim();
    let value = value.strip_prefix("bytes=").unwrap_or(value);
    let (start, end) = value.split_once('-')?;
    let start: u64 = start.trim().parse().ok()?;
    let end: u64 = end.trim().parse().ok()?;
    if start != 0 {
        return None;
    }
    Some(if end == 0 { 0 } else { end + 1 })
}

fn content_type(headers: &HeaderMap) -> Option<String> {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or_default().trim().to_string())
}

fn read_limited(resp: Response, limit: u64, what: &str) -> Result<Vec<u8>> {
    let mut body = Vec::new();
    resp.take(limit + 1)
        .read_to_end(&mut body)
        .map_err(|e| RegistryError::Http {
            what: what.to_string(),
            reason: format!("reading the answer: {e}"),
            transient: true,
        })?;
    if body.len() as u64 > limit {
        return Err(RegistryError::Http {
            what: what.to_string(),
            reason: format!("the answer is larger than {limit} bytes"),
            transient: false,
        });
    }
    Ok(body)
}

/// The registry's error codes and messages from an error answer.
fn error_detail(resp: Response) -> String {
    let status = resp.status();
    let body = read_limited(resp, 64 << 10, "").unwrap_or_default();
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(&body) {
        if let Some(errors) = value.get("errors").and_then(|e| e.as_array()) {
            let parts: Vec<String> = errors
                .iter()
                .map(|e| {
                    let code = e.get("code").and_then(|c| c.as_str()).unwrap_or("ERROR");
                    let message = e.get("message").and_then(|m| m.as_str()).unwrap_or("");
                    format!("{code}: {message}")
                })
                .collect();
            if !parts.is_empty() {
                return parts.join("; ");
            }
        }
        if let Some(d) = value.get("details").and_then(|d| d.as_str()) {
            return d.to_string();
        }
    }
    let text = String::from_utf8_lossy(&body);
    let text = text.trim();
    if text.is_empty() {
        status.to_string()
    } else {
        text.chars().take(300).collect()
    }
}

fn status_error(what: &str, resp: Response) -> RegistryError {
    let status = resp.status();
    RegistryError::Status {
        what: what.to_string(),
        status,
        detail: error_detail(resp),
    }
}

fn http_error(what: &str, err: &reqwest::Error) -> RegistryError {
    let chain = error_chain(err);
    let hint = if chain.contains("InvalidCertificate") || chain.contains("certificate") {
        "; trust the registry's CA with --ca-file or a certs.d directory"
    } else if chain.contains("InvalidContentType") || chain.contains("corrupt message") {
        "; the registry may speak plain HTTP: use --insecure"
    } else {
        ""
    };
    RegistryError::Http {
        what: what.to_string(),
        reason: format!("{chain}{hint}"),
        transient: (err.is_connect() || err.is_timeout() || err.is_body() || err.is_request())
            && hint.is_empty(),
    }
}

/// An error and its sources, joined with `: `.
pub(crate) fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// A URL without its query, which may carry upload state.
fn redact_query(url: &Url) -> String {
    let mut u = url.clone();
    u.set_query(None);
    u.to_string()
}

fn short(digest: &Digest) -> String {
    digest.hex()[..12].to_string()
}

fn backoff(attempt: u32) {
    let ms = 200u64.saturating_mul(1 << attempt.min(5)).min(5_000);
    std::thread::sleep(Duration::from_millis(ms));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upload_range_is_the_count_of_bytes_held() {
        assert_eq!(parse_upload_range("0-0"), Some(0));
        assert_eq!(parse_upload_range("0-1023"), Some(1024));
        assert_eq!(parse_upload_range("bytes=0-1023"), Some(1024));
        assert_eq!(parse_upload_range("5-9"), None);
        assert_eq!(parse_upload_range("junk"), None);
    }

    #[test]
    fn insecure_applies_to_listed_hosts_only() {
        let opts = ClientOptions {
            insecure_registries: vec!["http://127.0.0.1:5000/".into()],
            ..ClientOptions::default()
        };
        assert!(opts.is_insecure("127.0.0.1:5000"));
        assert!(!opts.is_insecure("127.0.0.1:5001"));
        let c = RegistryClient::new("127.0.0.1:5000", &opts, None).unwrap();
        assert_eq!(c.base.as_str(), "http://127.0.0.1:5000/");
        let c = RegistryClient::new("docker.io", &opts, None).unwrap();
        assert_eq!(c.base.as_str(), "https://registry-1.docker.io/");
    }

    #[test]
    fn a_ca_file_that_is_not_pem_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.crt");
        fs::write(&path, "hello").unwrap();
        let opts = ClientOptions {
            ca_files: vec![path],
            ..ClientOptions::default()
        };
        let err = RegistryClient::new("x.example", &opts, None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("ca.crt"), "{err}");
    }
}
