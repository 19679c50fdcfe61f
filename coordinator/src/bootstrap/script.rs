//! What a host runs to get its agent: the bootstrap shell script, the
//! `#cloud-config` user-data that carries it, and the one-liner for hosts
//! that already run. Pure text generation, no I/O.
//!
//! Everything the host must trust is inside the text the operator hands
//! over: the CA certificate (the download is verified against it, never the
//! system's trust store), the CA pin (for `seaport-agent join`) and the
//! agent binary's sha256 (checked before the binary is installed). A man in
//! the middle can substitute neither the server nor the binary.

use seaport_shared::pki::{self, CaPin, JoinToken};
use seaport_shared::shell::quote;

use super::error::BootstrapError;

/// The script template; `@NAME@` placeholders are filled by [`render_script`].
const TEMPLATE: &str = include_str!("bootstrap.sh");
/// The agent's systemd unit, installed by the script.
pub const AGENT_UNIT: &str = include_str!("../../../packaging/systemd/seaport-agent.service");
/// Where the cloud-init user-data writes the script on the host (0700, root).
pub const HOST_SCRIPT_PATH: &str = "/var/lib/seaport-bootstrap/bootstrap.sh";

/// What a bootstrap script is made of.
#[derive(Debug, Clone)]
pub struct ScriptParams {
    /// The coordinator's QUIC address as hosts reach it, `HOST:PORT`.
    pub coordinator: String,
    /// The bootstrap endpoint as hosts reach it, `HOST:PORT` (unused when
    /// `agent_sha256` is `None`).
    pub bootstrap: String,
    /// The CA certificate, PEM.
    pub ca_pem: String,
    /// sha256 (hex) of the agent binary the endpoint serves; `None`: use the
    /// agent already in the machine image (`--preinstalled`).
    pub agent_sha256: Option<String>,
    /// The join token to embed; `None`: the host passes it in
    /// `SEAPORT_JOIN_TOKEN`.
    pub token: Option<JoinToken>,
}

fn check_addr(what: &'static str, addr: &str) -> Result<(), BootstrapError> {
    let bad = || BootstrapError::BadAddress {
        what,
        addr: addr.to_string(),
    };
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    let host_ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '[' | ']' | ':'));
    if !host_ok || port.parse::<u16>().map_or(true, |p| p == 0) {
        return Err(bad());
    }
    Ok(())
}

/// The CA certificate as PEM checked to be exactly certificates (so it can
/// sit in a here-document), and its pin.
fn check_ca(ca_pem: &str) -> Result<CaPin, BootstrapError> {
    let certs = pki::certs_from_pem(ca_pem, "the CA certificate")?;
    let clean = ca_pem.lines().all(|l| {
        l.is_empty()
            || l.starts_with("-----BEGIN CERTIFICATE-----")
            || l.starts_with("-----END CERTIFICATE-----")
            || l.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '='))
    });
    if !clean {
        return Err(BootstrapError::BadCa);
    }
    Ok(CaPin::of_cert(&certs[0])?)
}

/// The bootstrap script.
pub fn render_script(p: &ScriptParams) -> Result<String, BootstrapError> {
    check_addr("coordinator", &p.coordinator)?;
    if p.agent_sha256.is_some() {
        check_addr("bootstrap endpoint", &p.bootstrap)?;
    }
    let pin = check_ca(&p.ca_pem)?;
    if let Some(sha) = &p.agent_sha256 {
        if sha.len() != 64 || !sha.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(BootstrapError::BadSha256(sha.clone()));
        }
    }
    let token = p
        .token
        .as_ref()
        .map(ToString::to_string)
        .unwrap_or_default();
    let out = TEMPLATE
        .replace("@COORDINATOR@", &quote(&p.coordinator))
        .replace("@BOOTSTRAP@", &quote(&p.bootstrap))
        .replace("@CA_PIN@", &quote(&pin.to_string()))
        .replace(
            "@AGENT_SHA256@",
            &quote(&p.agent_sha256.clone().unwrap_or_default().to_lowercase()),
        )
        .replace(
            "@PREINSTALLED@",
            if p.agent_sha256.is_none() {
                "yes"
            } else {
                "no"
            },
        )
        .replace("@TOKEN@", &quote(&token))
        .replace("@CA_PEM@", p.ca_pem.trim_end())
        .replace("@UNIT@", AGENT_UNIT.trim_end());
    Ok(out)
}

/// `#cloud-config` user-data: writes the script (mode 0700, it holds the
/// token), runs it once at first boot, and deletes it when it succeeded.
pub fn render_cloud_init(p: &ScriptParams) -> Result<String, BootstrapError> {
    let script = render_script(p)?;
    let mut out = String::from(
        "#cloud-config\n\
         # Seaport agent bootstrap: writes the CA, gets and verifies the agent,\n\
         # installs its unit, joins and starts it. Holds a join token: keep it secret.\n\
         write_files:\n",
    );
    out.push_str(&format!(
        "  - path: {HOST_SCRIPT_PATH}\n    owner: root:root\n    permissions: '0700'\n    content: |\n"
    ));
    for line in script.lines() {
        if line.is_empty() {
            out.push('\n');
        } else {
            out.push_str("      ");
            out.push_str(line);
            out.push('\n');
        }
    }
    out.push_str(&format!(
        "runcmd:\n  - [ /bin/sh, -c, '/bin/sh {HOST_SCRIPT_PATH} && rm -f {HOST_SCRIPT_PATH}' ]\n"
    ));
    Ok(out)
}

/// One line for a root shell on an existing host: the whole script,
/// base64-encoded (so nothing is fetched before the CA is pinned), decoded
/// and run by `sh`.
pub fn render_one_liner(p: &ScriptParams) -> Result<String, BootstrapError> {
    use base64::Engine;
    let script = render_script(p)?;
    let b64 = base64::engine::general_purpose::STANDARD.encode(script.as_bytes());
    Ok(format!("printf '%s' '{b64}' | base64 -d | sh"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca_pem() -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.self_signed(&key).unwrap().pem()
    }

    fn params() -> ScriptParams {
        ScriptParams {
            coordinator: "198.18.0.1:7443".into(),
            bootstrap: "198.18.0.1:7444".into(),
            ca_pem: ca_pem(),
            agent_sha256: Some("ab".repeat(32)),
            token: Some(JoinToken::parse("abcdef.0123456789abcdef").unwrap()),
        }
    }

    #[test]
    fn script_pins_ca_and_sha256_and_carries_the_token() {
        let p = params();
        let s = render_script(&p).unwrap();
        for name in [
            "COORDINATOR",
            "BOOTSTRAP",
            "CA_PIN",
            "AGENT_SHA256",
            "TOKEN",
            "CA_PEM",
            "UNIT",
        ] {
            assert!(
                !s.contains(&format!("@{name}@")),
                "placeholder {name} left: {s}"
            );
        }
        assert!(s.contains(p.ca_pem.trim_end()));
        assert!(s.contains(&format!("AGENT_SHA256='{}'", "ab".repeat(32))));
        assert!(s.contains("TOKEN='abcdef.0123456789abcdef'"));
        assert!(s.contains("PREINSTALLED=no"));
        assert!(s.contains("--cacert"));
        let pin = check_ca(&p.ca_pem).unwrap().to_string();
        assert!(s.contains(&format!("CA_PIN='{pin}'")));
        assert!(s.contains("ExecStart=/usr/local/bin/seaport-agent run"));
    }

    #[test]
    fn script_is_valid_posix_shell() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.sh");
        std::fs::write(&path, render_script(&params()).unwrap()).unwrap();
        let out = std::process::Command::new("sh")
            .arg("-n")
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn cloud_init_is_yaml_holding_the_script_with_a_private_mode() {
        let p = params();
        let text = render_cloud_init(&p).unwrap();
        assert!(text.starts_with("#cloud-config\n"));
        let doc: serde_norway::Value = serde_norway::from_str(&text).unwrap();
        let file = &doc["write_files"][0];
        assert_eq!(file["path"].as_str(), Some(HOST_SCRIPT_PATH));
        assert_eq!(file["permissions"].as_str(), Some("0700"));
        assert_eq!(
            file["content"].as_str().unwrap(),
            render_script(&p).unwrap()
        );
        assert!(doc["runcmd"][0][2]
            .as_str()
            .unwrap()
            .contains(HOST_SCRIPT_PATH));
    }

    #[test]
    fn one_liner_decodes_to_the_script() {
        use base64::Engine;
        let p = params();
        let line = render_one_liner(&p).unwrap();
        assert!(!line.contains('\n'));
        let b64 = line.split('\'').nth(3).unwrap();
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        assert_eq!(
            String::from_utf8(decoded).unwrap(),
            render_script(&p).unwrap()
        );
    }

    #[test]
    fn preinstalled_needs_no_endpoint_and_no_sha() {
        let mut p = params();
        p.agent_sha256 = None;
        p.bootstrap = String::new();
        let s = render_script(&p).unwrap();
        assert!(s.contains("PREINSTALLED=yes"));
    }

    #[test]
    fn bad_inputs_are_refused() {
        let mut p = params();
        p.coordinator = "host; rm -rf /".into();
        assert!(matches!(
            render_script(&p),
            Err(BootstrapError::BadAddress { .. })
        ));
        let mut p = params();
        p.agent_sha256 = Some("zz".into());
        assert!(matches!(
            render_script(&p),
            Err(BootstrapError::BadSha256(_))
        ));
        let mut p = params();
        p.ca_pem = "not a certificate".into();
        assert!(render_script(&p).is_err());
    }

    #[test]
    fn quoting_survives_single_quotes() {
        assert_eq!(quote("a'b"), r"'a'\''b'");
    }
}
