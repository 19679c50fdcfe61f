//! The API server stand-in of a master, and the client side of kubeadm's
//! discovery that talks to it.
//!
//! The server is a real TLS listener (the serving certificate from
//! [`crate::pki`]) speaking just enough HTTP/1.1:
//! - `GET /healthz` (also `/livez`, `/readyz`): `200 ok`;
//! - `GET /version`: the cluster's version as the double records it
//!   (see [`crate::upgrade`]);
//! - `GET /api/v1/namespaces/kube-public/configmaps/cluster-info`: the
//!   ConfigMap kubeadm's discovery reads, a kubeconfig holding the CA;
//! - `GET /api/v1/namespaces/kube-system/secrets/kubeadm-certs`: the
//!   certificates uploaded by `init --upload-certs` (see [`crate::certs`]),
//!   only with a bootstrap token this master knows;
//! - anything else: `404` (`405` for another method) with a JSON `Status`
//!   as the API server answers.
//!
//! A request with an `Authorization: Bearer` token the master does not know
//! is answered `401`, as the API server does. Every answer carries the
//! header `X-Seaport-Host: NAME`, so a caller (a balancer's test) sees which
//! master answered.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use base64::Engine;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::{ClientConfig, ClientConnection, ServerConfig, ServerConnection, StreamOwned};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::certs::{self, Sealed};
use crate::pki::{self, PkiDir};

/// The header naming the master that answered.
pub const HOST_HEADER: &str = "X-Seaport-Host";
/// kubeadm's discovery ConfigMap.
pub const CLUSTER_INFO_PATH: &str = "/api/v1/namespaces/kube-public/configmaps/cluster-info";
/// kubeadm's Secret of uploaded certificates.
pub const KUBEADM_CERTS_PATH: &str = "/api/v1/namespaces/kube-system/secrets/kubeadm-certs";
/// How long one connection may take to send its request.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest request head read.
const MAX_HEAD: usize = 16 * 1024;

/// Errors of the stand-in and of discovery.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The PKI files.
    #[error(transparent)]
    Pki(#[from] pki::PkiError),
    /// The certificate hand-over.
    #[error(transparent)]
    Certs(#[from] certs::CertsError),
    /// TLS configuration.
    #[error("TLS: {0}")]
    Tls(String),
    /// Listening failed.
    #[error("listening on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// A request failed.
    #[error("GET https://{endpoint}{path}: {reason}")]
    Request {
        /// HOST:PORT.
        endpoint: String,
        /// The path.
        path: String,
        /// What failed.
        reason: String,
    },
    /// The CA the endpoint serves is not pinned.
    #[error("cluster CA found in cluster-info ConfigMap is invalid: none of the public keys \"{found}\" are pinned (pinned: {pinned})")]
    NotPinned {
        /// The CA's hash.
        found: String,
        /// The hashes given.
        pinned: String,
    },
    /// An answer was not what kubeadm expects.
    #[error("{0}")]
    Answer(String),
}

/// What the stand-in serves.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// The PKI directory (`ca.crt`, `apiserver.crt`, `apiserver.key`).
    pub pki: PathBuf,
    /// The double's state directory (uploaded certificates, tokens).
    pub state: PathBuf,
    /// Where to listen.
    pub listen: SocketAddr,
    /// The name given in [`HOST_HEADER`].
    pub host: String,
}

/// A running stand-in: stopped when dropped.
#[derive(Debug)]
pub struct Server {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// Binds and starts serving in a thread.
    pub fn start(opts: ServerOptions) -> Result<Server, ApiError> {
        let config = Arc::new(server_config(&PkiDir::new(&opts.pki))?);
        let listener = TcpListener::bind(opts.listen).map_err(|source| ApiError::Listen {
            addr: opts.listen,
            source,
        })?;
        let addr = listener.local_addr().map_err(|source| ApiError::Listen {
            addr: opts.listen,
            source,
        })?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let opts = Arc::new(opts);
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(tcp) = conn else { continue };
                let config = config.clone();
                let opts = opts.clone();
                std::thread::spawn(move || {
                    let _ = handle(tcp, config, &opts);
                });
            }
        });
        Ok(Server {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until the process ends.
    pub fn wait(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn server_config(pki: &PkiDir) -> Result<ServerConfig, ApiError> {
    let cert_pem = read(&pki.serving_cert())?;
    let key_pem = read(&pki.serving_key())?;
    let chain = seaport_shared::pki::certs_from_pem(&cert_pem, "apiserver.crt")
        .map_err(|e| ApiError::Tls(e.to_string()))?;
    let key = seaport_shared::pki::key_from_pem(&key_pem, "apiserver.key")
        .map_err(|e| ApiError::Tls(e.to_string()))?;
    ServerConfig::builder_with_provider(seaport_shared::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| ApiError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| ApiError::Tls(e.to_string()))
}

fn read(path: &Path) -> Result<String, ApiError> {
    std::fs::read_to_string(path).map_err(|source| {
        ApiError::Pki(pki::PkiError::Read {
            path: path.to_path_buf(),
            source,
        })
    })
}

/// One parsed request head.
#[derive(Debug, PartialEq, Eq)]
struct Request {
    method: String,
    path: String,
    bearer: Option<String>,
}

fn parse_head(head: &str) -> Option<Request> {
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let method = first.next()?.to_string();
    let target = first.next()?;
    let path = target.split('?').next().unwrap_or(target).to_string();
    let mut bearer = None;
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            if k.trim().eq_ignore_ascii_case("authorization") {
                bearer = v
                    .trim()
                    .strip_prefix("Bearer ")
                    .map(|t| t.trim().to_string());
            }
        }
    }
    Some(Request {
        method,
        path,
        bearer,
    })
}

fn handle(tcp: TcpStream, config: Arc<ServerConfig>, opts: &ServerOptions) -> std::io::Result<()> {
    tcp.set_read_timeout(Some(IO_TIMEOUT))?;
    tcp.set_write_timeout(Some(IO_TIMEOUT))?;
    let conn = ServerConnection::new(config).map_err(std::io::Error::other)?;
    let mut s = StreamOwned::new(conn, tcp);
    let mut head = Vec::new();
    let mut buf = [0u8; 2048];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut buf)?;
        if n == 0 || head.len() > MAX_HEAD {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&head);
    let (code, ctype, body) = match parse_head(&text) {
        Some(req) => route(&req, opts),
        None => status(400, "BadRequest", "malformed request"),
    };
    let reason = match code {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Internal Server Error",
    };
    let out = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n{HOST_HEADER}: {}\r\nConnection: close\r\n\r\n{body}",
        body.len(),
        opts.host
    );
    s.write_all(out.as_bytes())?;
    s.conn.send_close_notify();
    s.flush()?;
    Ok(())
}

fn status(code: u16, reason: &str, message: &str) -> (u16, &'static str, String) {
    let body = serde_json::json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    });
    (code, "application/json", body.to_string())
}

fn route(req: &Request, opts: &ServerOptions) -> (u16, &'static str, String) {
    if let Some(t) = &req.bearer {
        if !certs::tokens(&opts.state).iter().any(|k| k == t) {
            return status(401, "Unauthorized", "Unauthorized");
        }
    }
    if req.method != "GET" {
        return status(
            405,
            "MethodNotAllowed",
            &format!("the server does not allow this method on {}", req.path),
        );
    }
    match req.path.as_str() {
        "/healthz" | "/livez" | "/readyz" => (200, "text/plain; charset=utf-8", "ok".into()),
        "/version" => {
            let v = crate::upgrade::read_version(&opts.state, crate::upgrade::CLUSTER_VERSION)
                .or_else(|| {
                    crate::upgrade::read_version(&opts.state, crate::upgrade::NODE_VERSION)
                });
            match v {
                Some(v) => (
                    200,
                    "application/json",
                    serde_json::json!({
                        "major": v.major.to_string(),
                        "minor": v.minor.to_string(),
                        "gitVersion": v.to_string(),
                        "platform": "linux/amd64",
                    })
                    .to_string(),
                ),
                None => status(500, "InternalError", "no version recorded"),
            }
        }
        CLUSTER_INFO_PATH => match cluster_info(opts) {
            Ok(b) => (200, "application/json", b),
            Err(e) => status(500, "InternalError", &e.to_string()),
        },
        KUBEADM_CERTS_PATH => {
            if req.bearer.is_none() {
                return status(
                    401,
                    "Unauthorized",
                    "secrets \"kubeadm-certs\" is forbidden: no bootstrap token",
                );
            }
            match certs::load(&opts.state) {
                Ok(Some(sealed)) => (200, "application/json", secret_json(&sealed)),
                Ok(None) => status(404, "NotFound", "secrets \"kubeadm-certs\" not found"),
                Err(e) => status(500, "InternalError", &e.to_string()),
            }
        }
        p => status(
            404,
            "NotFound",
            &format!("the server could not find the requested resource ({p})"),
        ),
    }
}

fn cluster_info(opts: &ServerOptions) -> Result<String, ApiError> {
    let ca = PkiDir::new(&opts.pki).ca_pem()?;
    let b64 = base64::engine::general_purpose::STANDARD.encode(ca.as_bytes());
    let kubeconfig = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: \"\"\n  cluster:\n    certificate-authority-data: {b64}\n    server: https://apiserver.cluster.local:6443\ncontexts: []\nusers: []\ncurrent-context: \"\"\n"
    );
    Ok(serde_json::json!({
        "kind": "ConfigMap",
        "apiVersion": "v1",
        "metadata": {"name": "cluster-info", "namespace": "kube-public"},
        "data": {"kubeconfig": kubeconfig},
    })
    .to_string())
}

fn secret_json(sealed: &Sealed) -> String {
    // A Secret's data values are base64 of the bytes; the bytes here are
    // already the base64 text of the sealed data, as kubeadm stores them.
    let data: serde_json::Map<String, serde_json::Value> = sealed
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                serde_json::Value::String(
                    base64::engine::general_purpose::STANDARD.encode(v.as_bytes()),
                ),
            )
        })
        .collect();
    serde_json::json!({
        "kind": "Secret",
        "apiVersion": "v1",
        "metadata": {"name": "kubeadm-certs", "namespace": "kube-system"},
        "type": "Opaque",
        "data": data,
    })
    .to_string()
}

/// How a client trusts the server.
#[derive(Debug, Clone)]
pub enum Trust {
    /// Any certificate: only for reading `cluster-info`, whose CA is then
    /// checked against the pinned hashes (as kubeadm's discovery does).
    Unverified,
    /// The server certificate must verify against this CA (PEM) for the
    /// endpoint's host.
    Ca(String),
}

/// An answer.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The status code.
    pub code: u16,
    /// The value of [`HOST_HEADER`].
    pub host: Option<String>,
    /// The body.
    pub body: String,
}

/// `GET https://endpoint/path`, with a bearer token if given.
pub fn get(
    endpoint: &str,
    path: &str,
    trust: &Trust,
    bearer: Option<&str>,
) -> Result<Answer, ApiError> {
    let err = |reason: String| ApiError::Request {
        endpoint: endpoint.to_string(),
        path: path.to_string(),
        reason,
    };
    let host = endpoint
        .rsplit_once(':')
        .map(|(h, _)| h)
        .unwrap_or(endpoint)
        .trim_matches(['[', ']']);
    let builder = ClientConfig::builder_with_provider(seaport_shared::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| err(e.to_string()))?;
    let config = match trust {
        Trust::Unverified => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyServer))
            .with_no_client_auth(),
        Trust::Ca(pem) => {
            let mut roots = rustls::RootCertStore::empty();
            let der = pki::first_cert_der(pem)?;
            roots
                .add(CertificateDer::from(der))
                .map_err(|e| err(e.to_string()))?;
            builder.with_root_certificates(roots).with_no_client_auth()
        }
    };
    let name = ServerName::try_from(host.to_string()).map_err(|e| err(e.to_string()))?;
    let conn = ClientConnection::new(Arc::new(config), name).map_err(|e| err(e.to_string()))?;
    let addr = std::net::ToSocketAddrs::to_socket_addrs(endpoint)
        .map_err(|e| err(e.to_string()))?
        .next()
        .ok_or_else(|| err("no address".into()))?;
    let tcp = TcpStream::connect_timeout(&addr, IO_TIMEOUT).map_err(|e| err(e.to_string()))?;
    tcp.set_read_timeout(Some(IO_TIMEOUT))
        .map_err(|e| err(e.to_string()))?;
    let mut s = StreamOwned::new(conn, tcp);
    let auth = bearer
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {endpoint}\r\nUser-Agent: kubeadm-double\r\nAccept: application/json\r\n{auth}Connection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes())
        .map_err(|e| err(e.to_string()))?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(|e| err(e.to_string()))?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| err("no HTTP answer".into()))?;
    let mut lines = head.split("\r\n");
    let code = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| err(format!("bad status line in {head:?}")))?;
    let host = lines.find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case(HOST_HEADER)
            .then(|| v.trim().to_string())
    });
    Ok(Answer {
        code,
        host,
        body: body.to_string(),
    })
}

#[derive(Debug)]
struct AnyServer;

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &seaport_shared::tls::provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &seaport_shared::tls::provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        seaport_shared::tls::provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// What a joining host knows from its JoinConfiguration.
#[derive(Debug, Clone)]
pub struct Discovery {
    /// `discovery.bootstrapToken.apiServerEndpoint`.
    pub endpoint: String,
    /// `discovery.bootstrapToken.token`.
    pub token: String,
    /// `discovery.bootstrapToken.caCertHashes`.
    pub ca_hashes: Vec<String>,
    /// `controlPlane.certificateKey`, for a joining master.
    pub certificate_key: Option<String>,
}

/// kubeadm join's discovery and certificate download: reads the CA from
/// `cluster-info` (unverified TLS), checks its hash against the pins, checks
/// the token over TLS verified with that CA, writes `ca.crt`; for a master,
/// downloads the uploaded certificates with the token, decrypts them with
/// the certificate key and writes `ca.crt` and `ca.key`, keeping the sealed
/// data and the token in `state` so this master serves them too.
pub fn discover(d: &Discovery, pki_dir: &PkiDir, state: &Path) -> Result<String, ApiError> {
    let info = get(&d.endpoint, CLUSTER_INFO_PATH, &Trust::Unverified, None)?;
    if info.code != 200 {
        return Err(ApiError::Answer(format!(
            "reading cluster-info from {}: HTTP {}: {}",
            d.endpoint, info.code, info.body
        )));
    }
    let ca_pem = ca_of_cluster_info(&info.body)?;
    let found = pki::ca_hash(&ca_pem)?;
    let pinned: Vec<_> = d
        .ca_hashes
        .iter()
        .filter_map(|h| seaport_shared::pki::CaPin::parse(h).ok())
        .collect();
    if !pinned.iter().any(|p| p.matches(&found)) {
        return Err(ApiError::NotPinned {
            found: found.to_string(),
            pinned: d.ca_hashes.join(", "),
        });
    }
    let trust = Trust::Ca(ca_pem.clone());
    let Some(key) = &d.certificate_key else {
        // A worker: the token must be one the cluster knows (the kubelet's
        // TLS bootstrap uses it).
        let a = get(&d.endpoint, CLUSTER_INFO_PATH, &trust, Some(&d.token))?;
        if a.code != 200 {
            return Err(ApiError::Answer(format!(
                "the bootstrap token was refused by {} (HTTP {})",
                d.endpoint, a.code
            )));
        }
        pki_dir.install_ca_cert(ca_pem.as_bytes())?;
        return Ok(format!("CA {found} from {}", d.endpoint));
    };
    let a = get(&d.endpoint, KUBEADM_CERTS_PATH, &trust, Some(&d.token))?;
    if a.code != 200 {
        return Err(ApiError::Answer(format!(
            "downloading the certificates from {} (secret kubeadm-certs): HTTP {}: {}",
            d.endpoint, a.code, a.body
        )));
    }
    let sealed = sealed_of_secret(&a.body)?;
    let open = certs::open_all(key, &sealed)?;
    let (crt, k) = (&open["ca.crt"], &open["ca.key"]);
    if pki::ca_hash(&String::from_utf8_lossy(crt))?.to_string() != found.to_string() {
        return Err(ApiError::Answer(
            "the downloaded ca.crt is not the CA the endpoint serves".into(),
        ));
    }
    pki_dir.install_ca(crt, k)?;
    certs::store(state, &sealed)?;
    certs::add_token(state, &d.token)?;
    Ok(format!("CA {found} and its key from {}", d.endpoint))
}

fn ca_of_cluster_info(body: &str) -> Result<String, ApiError> {
    let bad = |why: &str| ApiError::Answer(format!("the cluster-info ConfigMap: {why}"));
    let v: serde_json::Value = serde_json::from_str(body).map_err(|e| bad(&e.to_string()))?;
    let kc = v["data"]["kubeconfig"]
        .as_str()
        .ok_or_else(|| bad("no data.kubeconfig"))?;
    let kc: serde_norway::Value = serde_norway::from_str(kc).map_err(|e| bad(&e.to_string()))?;
    let b64 = kc["clusters"][0]["cluster"]["certificate-authority-data"]
        .as_str()
        .ok_or_else(|| bad("no certificate-authority-data"))?;
    let pem = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| bad(&e.to_string()))?;
    String::from_utf8(pem).map_err(|e| bad(&e.to_string()))
}

fn sealed_of_secret(body: &str) -> Result<Sealed, ApiError> {
    let bad = |why: String| ApiError::Answer(format!("the kubeadm-certs Secret: {why}"));
    let v: serde_json::Value = serde_json::from_str(body).map_err(|e| bad(e.to_string()))?;
    let data = v["data"].as_object().ok_or_else(|| bad("no data".into()))?;
    let mut out = Sealed::new();
    for (k, val) in data {
        let s = val
            .as_str()
            .ok_or_else(|| bad(format!("{k} is not text")))?;
        let raw = base64::engine::general_purpose::STANDARD
            .decode(s)
            .map_err(|e| bad(format!("{k}: {e}")))?;
        out.insert(
            k.clone(),
            String::from_utf8(raw).map_err(|e| bad(format!("{k}: {e}")))?,
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
