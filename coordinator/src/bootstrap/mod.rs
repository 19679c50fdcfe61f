//! Agent bootstrap: how a host with no agent gets one, with no SSH and no
//! human (docs/bootstrap.md).
//!
//! - `server.rs`: the HTTPS bootstrap endpoint (rustls, its own TCP port,
//!   the coordinator's server certificate). It serves the agent binary and a
//!   bootstrap script only to holders of a join token that could still
//!   enroll, and never logs the token.
//! - `script.rs`: the bootstrap script, the `#cloud-config` user-data that
//!   carries it, and the one-liner for existing hosts; each pins the CA and
//!   the agent's sha256.
//!
//! While it runs, the endpoint describes itself in
//! `ROOT/coordinator/bootstrap.json` ([`BootstrapInfo`]), which
//! `seaport bootstrap` reads for the port and the sha256 to pin.

mod error;
mod script;
mod server;

pub use error::BootstrapError;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::ca::CoordinatorPaths;

pub use script::{
    render_cloud_init, render_one_liner, render_script, ScriptParams, AGENT_UNIT, HOST_SCRIPT_PATH,
};
pub use server::{read_head, BootstrapServer, TokenValidator};

/// Default TCP port of the bootstrap endpoint.
pub const DEFAULT_PORT: u16 = 7444;

/// What a running bootstrap endpoint writes under the root.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BootstrapInfo {
    /// The TCP address it listens on.
    pub listen: SocketAddr,
    /// The agent binary it serves.
    pub agent_path: PathBuf,
    /// That binary's sha256, hex.
    pub agent_sha256: String,
    pub pid: u32,
}

/// `ROOT/coordinator/bootstrap.json`.
pub fn info_path(root: &Path) -> PathBuf {
    CoordinatorPaths::new(root).dir.join("bootstrap.json")
}

/// Reads the info a running endpoint left under `root`.
pub fn read_info(root: &Path) -> Option<BootstrapInfo> {
    let text = std::fs::read_to_string(info_path(root)).ok()?;
    serde_json::from_str(&text).ok()
}

/// sha256 (hex) of bytes.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Reads an agent binary and its sha256.
pub fn read_agent(path: &Path) -> Result<(Vec<u8>, String), BootstrapError> {
    let bytes = std::fs::read(path).map_err(|source| BootstrapError::AgentBinary {
        path: path.display().to_string(),
        source,
    })?;
    let sha = sha256_hex(&bytes);
    Ok((bytes, sha))
}

/// The agent binary the endpoint serves when none is named: `seaport-agent`
/// beside the running `seaport` executable (`/usr/local/bin` once installed).
pub fn default_agent_path() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join("seaport-agent")))
        .unwrap_or_else(|| PathBuf::from("/usr/local/bin/seaport-agent"))
}

/// Binds the endpoint of the coordinator under `root`: its server
/// certificate, its CA, the agent binary at `agent_path`.
pub async fn bind(
    root: &Path,
    listen: SocketAddr,
    agent_path: &Path,
    quic_port: u16,
    tokens: impl TokenValidator,
) -> Result<BootstrapServer, BootstrapError> {
    let id = crate::ca::server_identity(root).map_err(|e| BootstrapError::Tls(e.to_string()))?;
    let ca_pem = seaport_shared::pki::read_text(&CoordinatorPaths::new(root).ca_cert())?;
    let (agent, agent_sha256) = read_agent(agent_path)?;
    let mut chain = id.chain;
    chain.push(id.ca);
    BootstrapServer::bind(
        server::EndpointConfig {
            listen,
            chain,
            key: id.key,
            ca_pem,
            agent,
            agent_sha256,
            quic_port,
        },
        tokens,
    )
    .await
}

/// Writes `bootstrap.json` for a bound endpoint.
pub fn write_info(root: &Path, info: &BootstrapInfo) -> Result<(), BootstrapError> {
    seaport_shared::confined::write_atomic(
        &info_path(root),
        serde_json::to_string_pretty(info)
            .expect("bootstrap info serializes")
            .as_bytes(),
        0o644,
    )?;
    Ok(())
}

/// Removes `bootstrap.json` when the endpoint stops.
pub fn remove_info(root: &Path) {
    let _ = std::fs::remove_file(info_path(root));
}
