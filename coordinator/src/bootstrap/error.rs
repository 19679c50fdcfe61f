//! [`BootstrapError`].

use std::net::SocketAddr;

use seaport_shared::pki::PkiError;

/// Errors of the bootstrap endpoint and of generating bootstrap text.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("bad {what} address {addr:?}: expected HOST:PORT")]
    BadAddress { what: &'static str, addr: String },
    #[error("the CA certificate holds something other than PEM certificates")]
    BadCa,
    #[error("bad agent sha256 {0:?}: expected 64 hex digits")]
    BadSha256(String),
    #[error("{0}")]
    Pki(#[from] PkiError),
    #[error(transparent)]
    Write(#[from] seaport_shared::confined::ConfinedError),
    #[error("could not read the agent binary {path}: {source}; build it (packaging/build-static.sh) or pass --agent-binary")]
    AgentBinary {
        path: String,
        source: std::io::Error,
    },
    #[error("could not listen on {addr} (tcp) for the bootstrap endpoint: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("bootstrap endpoint tls configuration: {0}")]
    Tls(String),
}
