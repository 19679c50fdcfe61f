//! The HTTPS bootstrap endpoint: a deliberately small HTTP/1.1 server over
//! rustls, one request per connection.
//!
//! | request | answer |
//! | --- | --- |
//! | `GET /v1/agent` | the agent binary (`X-Seaport-Agent-Sha256` names its digest) |
//! | `GET /v1/bootstrap.sh` | the bootstrap script for this endpoint, without a token (the host passes `SEAPORT_JOIN_TOKEN`) |
//!
//! Both need `Authorization: Bearer TOKEN` with a join token that could
//! still enroll (known, not expired, uses left); checking does not spend a
//! use. Refusals say why in the body. Requests are logged with the peer,
//! path and status, never the token. Everything is bounded: request head
//! size, time to send it (5 s for the handshake and head together),
//! connections at once, and connections per source (a few at once, a few
//! more queued briefly, the rest closed without any TLS work), so idle or
//! slow connections from one address do not keep others out.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tracing::{info, info_span, warn, Instrument};

use seaport_shared::pki::JoinToken;
use seaport_shared::tls;

use super::error::BootstrapError;
use super::script::{render_script, ScriptParams};
use crate::daemon::limits::SourceLimiter;
use crate::state::StateError;

/// Largest request head accepted.
const MAX_HEAD: usize = 16 * 1024;
/// Time a client has to complete the handshake and send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Time to send a response (the agent is a few MiB).
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(300);
/// Connections served at once, from all sources together.
const MAX_CONNECTIONS: usize = 256;
/// Connections one source may have served at once, how many more may wait
/// for one of those, and how long.
const PER_SOURCE: usize = 4;
const WAITING_PER_SOURCE: usize = 8;
const SOURCE_WAIT: Duration = Duration::from_secs(10);
/// Sources tracked at once.
const MAX_SOURCES: usize = 4096;

/// Decides whether a join token may fetch the agent.
pub trait TokenValidator: Send + Sync + 'static {
    fn check(&self, token: &JoinToken) -> Result<(), StateError>;
}

impl<F> TokenValidator for F
where
    F: Fn(&JoinToken) -> Result<(), StateError> + Send + Sync + 'static,
{
    fn check(&self, token: &JoinToken) -> Result<(), StateError> {
        self(token)
    }
}

impl TokenValidator for crate::daemon::TokenCheck {
    fn check(&self, token: &JoinToken) -> Result<(), StateError> {
        crate::daemon::TokenCheck::check(self, token)
    }
}

struct Served {
    tokens: Box<dyn TokenValidator>,
    agent: Vec<u8>,
    agent_sha256: String,
    ca_pem: String,
    quic_port: u16,
    slots: Arc<Semaphore>,
    sources: Arc<SourceLimiter>,
}

/// A bound, not yet running bootstrap endpoint.
pub struct BootstrapServer {
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    served: Arc<Served>,
}

impl std::fmt::Debug for BootstrapServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BootstrapServer")
            .field("listen", &self.listener.local_addr().ok())
            .finish()
    }
}

/// Settings of the endpoint.
pub struct EndpointConfig {
    pub listen: SocketAddr,
    /// The coordinator's certificate chain and key (its name is
    /// `coordinator.seaport`; clients reach it with curl's `--connect-to`).
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub ca_pem: String,
    /// The agent binary served, and its sha256.
    pub agent: Vec<u8>,
    pub agent_sha256: String,
    /// The coordinator's QUIC port (for the script it serves).
    pub quic_port: u16,
}

impl BootstrapServer {
    /// Binds the TCP listener.
    pub async fn bind(
        cfg: EndpointConfig,
        tokens: impl TokenValidator,
    ) -> Result<BootstrapServer, BootstrapError> {
        let server = rustls::ServerConfig::builder_with_provider(tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| BootstrapError::Tls(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(cfg.chain, cfg.key)
            .map_err(|e| BootstrapError::Tls(e.to_string()))?;
        let listener =
            TcpListener::bind(cfg.listen)
                .await
                .map_err(|source| BootstrapError::Bind {
                    addr: cfg.listen,
                    source,
                })?;
        Ok(BootstrapServer {
            listener,
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(server)),
            served: Arc::new(Served {
                tokens: Box::new(tokens),
                agent: cfg.agent,
                agent_sha256: cfg.agent_sha256,
                ca_pem: cfg.ca_pem,
                quic_port: cfg.quic_port,
                slots: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
                sources: SourceLimiter::new(PER_SOURCE, WAITING_PER_SOURCE, MAX_SOURCES),
            }),
        })
    }

    /// The address actually bound.
    /// The sha256 of the agent it serves.
    pub fn agent_sha256(&self) -> &str {
        &self.served.agent_sha256
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Serves until `shutdown` resolves.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        info!(addr = %self.local_addr(), "bootstrap endpoint listening (https)");
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                accepted = self.listener.accept() => {
                    let (stream, remote) = match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            warn!(error = %e, "bootstrap endpoint: accept failed");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    };
                    let served = self.served.clone();
                    let acceptor = self.acceptor.clone();
                    tokio::spawn(
                        async move {
                            let Some(_source) =
                                served.sources.acquire(remote.ip(), SOURCE_WAIT).await
                            else {
                                info!("too many connections from this source: closed");
                                return;
                            };
                            let Ok(_slot) = served.slots.clone().try_acquire_owned() else {
                                warn!("bootstrap endpoint busy: connection dropped");
                                return;
                            };
                            handle(&served, acceptor, stream).await;
                        }
                        .instrument(info_span!("bootstrap", %remote)),
                    );
                }
                () = &mut shutdown => break,
            }
        }
        info!("bootstrap endpoint stopped");
    }
}

/// One parsed request head.
#[derive(Debug, PartialEq, Eq)]
struct Request {
    method: String,
    path: String,
    bearer: Option<String>,
}

fn parse_head(head: &[u8]) -> Option<Request> {
    let text = std::str::from_utf8(head).ok()?;
    let mut lines = text.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let method = first.next()?.to_string();
    let path = first.next()?.to_string();
    if !first.next()?.starts_with("HTTP/1.") {
        return None;
    }
    let mut bearer = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        if name.trim().eq_ignore_ascii_case("authorization") {
            let value = value.trim();
            if let Some(t) = value
                .strip_prefix("Bearer ")
                .or_else(|| value.strip_prefix("bearer "))
            {
                bearer = Some(t.trim().to_string());
            }
        }
    }
    Some(Request {
        method,
        path,
        bearer,
    })
}

struct Response {
    status: u16,
    reason: &'static str,
    content_type: &'static str,
    extra: Vec<(&'static str, String)>,
    body: Vec<u8>,
}

fn text(status: u16, reason: &'static str, msg: String) -> Response {
    Response {
        status,
        reason,
        content_type: "text/plain; charset=utf-8",
        extra: Vec::new(),
        body: format!("{msg}\n").into_bytes(),
    }
}

fn respond(served: &Served, req: &Request, local: SocketAddr) -> Response {
    if req.method != "GET" {
        return text(405, "Method Not Allowed", "only GET is served".into());
    }
    if req.path != "/v1/agent" && req.path != "/v1/bootstrap.sh" {
        return text(404, "Not Found", format!("no such path {}", req.path));
    }
    let Some(raw) = &req.bearer else {
        return text(
            401,
            "Unauthorized",
            "a join token is required: send Authorization: Bearer TOKEN (create one with `seaport token create`)".into(),
        );
    };
    let token = match JoinToken::parse(raw) {
        Ok(t) => t,
        Err(e) => return text(401, "Unauthorized", e.to_string()),
    };
    if let Err(e) = served.tokens.check(&token) {
        return text(403, "Forbidden", e.to_string());
    }
    if req.path == "/v1/agent" {
        return Response {
            status: 200,
            reason: "OK",
            content_type: "application/octet-stream",
            extra: vec![("X-Seaport-Agent-Sha256", served.agent_sha256.clone())],
            body: served.agent.clone(),
        };
    }
    // The script names this endpoint and the coordinator by the address the
    // host just reached us on.
    let ip = match local.ip() {
        std::net::IpAddr::V6(v6) => format!("[{v6}]"),
        v4 => v4.to_string(),
    };
    let params = ScriptParams {
        coordinator: format!("{ip}:{}", served.quic_port),
        bootstrap: format!("{ip}:{}", local.port()),
        ca_pem: served.ca_pem.clone(),
        agent_sha256: Some(served.agent_sha256.clone()),
        token: None,
    };
    match render_script(&params) {
        Ok(s) => Response {
            status: 200,
            reason: "OK",
            content_type: "text/x-shellscript; charset=utf-8",
            extra: Vec::new(),
            body: s.into_bytes(),
        },
        Err(e) => text(500, "Internal Server Error", e.to_string()),
    }
}

/// Reads an HTTP/1.1 request head (up to the blank line, at most 16 KiB).
pub async fn read_head<S: AsyncReadExt + Unpin>(s: &mut S) -> Option<Vec<u8>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            buf.truncate(end);
            return Some(buf);
        }
        if buf.len() > MAX_HEAD {
            return None;
        }
    }
}

async fn handle(served: &Served, acceptor: tokio_rustls::TlsAcceptor, stream: TcpStream) {
    let Ok(local) = stream.local_addr() else {
        return;
    };
    let got = tokio::time::timeout(REQUEST_TIMEOUT, async {
        let mut tls = acceptor.accept(stream).await.ok()?;
        let head = read_head(&mut tls).await?;
        Some((tls, head))
    })
    .await;
    let Ok(Some((mut tls, head))) = got else {
        info!("bootstrap: no complete request (handshake failed, timed out or too large)");
        return;
    };
    let resp = match parse_head(&head) {
        Some(req) => {
            let resp = respond(served, &req, local);
            info!(path = %req.path, status = resp.status, bytes = resp.body.len(), "bootstrap request");
            resp
        }
        None => text(400, "Bad Request", "malformed request".into()),
    };
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\nCache-Control: no-store\r\n",
        resp.status,
        resp.reason,
        resp.content_type,
        resp.body.len()
    );
    for (k, v) in &resp.extra {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("\r\n");
    let sent = tokio::time::timeout(RESPONSE_TIMEOUT, async {
        tls.write_all(out.as_bytes()).await?;
        tls.write_all(&resp.body).await?;
        tls.shutdown().await
    })
    .await;
    if !matches!(sent, Ok(Ok(()))) {
        info!("bootstrap: the client went away before the response was sent");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_parse_and_bearer_tokens_are_found() {
        let r = parse_head(
            b"GET /v1/agent HTTP/1.1\r\nHost: x\r\nauthorization: Bearer abcdef.0123456789abcdef",
        )
        .unwrap();
        assert_eq!(r.method, "GET");
        assert_eq!(r.path, "/v1/agent");
        assert_eq!(r.bearer.as_deref(), Some("abcdef.0123456789abcdef"));
        assert!(parse_head(b"GET /v1/agent\r\n").is_none());
        assert!(parse_head(b"GET / HTTP/1.1\r\nHost: x")
            .unwrap()
            .bearer
            .is_none());
    }
}
