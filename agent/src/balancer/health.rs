//! The active check of one backend: a TCP connect, a TLS handshake that
//! verifies the API server's certificate against the cluster's CA for the
//! backend's IP, and `GET /healthz`, all within one timeout. Any HTTP
//! answer below 500 counts as up (401 and 403 mean the server answers but
//! does not serve anonymous requests); 5xx, no answer, a refused
//! connection or a certificate that does not verify count as down. The
//! local registry's backends are asked `GET /v2/` the same way (401: it
//! wants the registry's credentials, and answers), over plain HTTP, or
//! over TLS verified against the registry's CA for its domain.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// The answer's head is read up to this many bytes.
const HEAD_LIMIT: usize = 4096;

/// How a backend is asked.
pub(super) struct How {
    /// TLS for the check; none: a TCP connect only (or plain HTTP).
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Ask over plain HTTP.
    pub plain_http: bool,
    /// The name the certificate must carry; none: the backend's IP.
    pub server_name: Option<String>,
}

/// Checks `addr` once; `Err` says why it is down.
pub(super) async fn check(
    addr: SocketAddr,
    how: How,
    path: &str,
    timeout: Duration,
) -> Result<(), String> {
    match tokio::time::timeout(timeout, check_inner(addr, how, path)).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer to GET {path} within {timeout:?}")),
    }
}

async fn check_inner(addr: SocketAddr, how: How, path: &str) -> Result<(), String> {
    let mut tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    if how.plain_http {
        return ask(&mut tcp, addr, path).await;
    }
    // Without the cluster's CA yet (a worker before it joined), an answered
    // connect is all a check can tell.
    let Some(tls) = how.tls else {
        return Ok(());
    };
    let name = match how.server_name {
        Some(n) => ServerName::try_from(n).map_err(|e| format!("TLS: {e}"))?,
        None => ServerName::IpAddress(addr.ip().into()),
    };
    let mut s = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS: {e}"))?;
    ask(&mut s, addr, path).await
}

/// `GET path` on `s`; up when it answers below 500.
async fn ask<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    addr: SocketAddr,
    path: &str,
) -> Result<(), String> {
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nUser-Agent: seaport-agent\r\n\r\n",
        addr.ip()
    );
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| format!("sending GET {path}: {e}"))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 512];
    while !head.windows(2).any(|w| w == b"\r\n") && head.len() < HEAD_LIMIT {
        let n = s
            .read(&mut buf)
            .await
            .map_err(|e| format!("reading the answer to GET {path}: {e}"))?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let status = status_code(&head).ok_or_else(|| format!("no HTTP answer to GET {path}"))?;
    if status < 500 {
        Ok(())
    } else {
        Err(format!("GET {path} answered {status}"))
    }
}

/// The status code of an HTTP/1.x status line.
fn status_code(head: &[u8]) -> Option<u16> {
    let line = head.split(|b| *b == b'\r').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split(' ');
    let version = parts.next()?;
    if !version.starts_with("HTTP/1.") {
        return None;
    }
    let code = parts.next()?;
    if code.len() != 3 {
        return None;
    }
    code.parse().ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_status_line_gives_the_code_and_nothing_else_does() {
        use super::status_code;
        assert_eq!(status_code(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(status_code(b"HTTP/1.0 503 x\r\n"), Some(503));
        assert_eq!(status_code(b"HTTP/1.1 401 Unauthorized\r\nx"), Some(401));
        assert_eq!(status_code(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(status_code(b"HTTP/1.1 2000 OK\r\n"), None);
        assert_eq!(status_code(b""), None);
    }
}
