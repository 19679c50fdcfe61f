//! `registry-access`: `/etc/hosts` names for the registry and the API
//! server, and containerd `hosts.toml` mirrors for every cached domain
//! (docker's mirrors are in its `daemon.json`, written by `runtime`).
//! With the local registry's username and password, the credentials go
//! where sealer puts them: kubelet's `/var/lib/kubelet/config.json` (it
//! hands them to the runtime with each pull) and, for docker, root's
//! `/root/.docker/config.json`; containerd's own are in its `config.toml`
//! (the `runtime` step). Each file 0600.
//! With the registry's TLS, its CA goes where each runtime trusts it:
//! containerd's `/etc/containerd/certs.d/DOMAIN:PORT/ca.crt` (named by the
//! `hosts.toml` files, which then use `https://`), docker's
//! `/etc/docker/certs.d/DOMAIN:PORT/ca.crt`.

use seaport_rootfs::registry::credentials::{CredentialStore, Credentials};
use seaport_shared::cluster::Step;

use super::super::runtime::{self as rt, Runtime};
use super::context::{HostStep, StepContext};
use super::error::StepError;

pub(super) struct RegistryAccess;

/// Where kubelet reads registry credentials (docker's format).
pub(crate) const KUBELET_CREDENTIALS: &str = "/var/lib/kubelet/config.json";
/// Where docker reads root's registry credentials.
pub(crate) const DOCKER_CREDENTIALS: &str = "/root/.docker/config.json";

impl HostStep for RegistryAccess {
    fn step(&self) -> Step {
        Step::RegistryAccess
    }

    fn run(&self, cx: &mut StepContext<'_>) -> Result<String, StepError> {
        // Written by the runtime step already; again here for journals of
        // installs whose runtime step ran before it did.
        cx.name_registry_hosts()?;
        let local = cx.local_registry();
        let tls = cx.opts.registry_tls.clone();
        let mirror = if tls.is_some() {
            format!("https://{local}")
        } else {
            format!("http://{local}")
        };
        let mut credentials_in = Vec::new();
        if let Some(auth) = cx.opts.registry_auth.clone() {
            let runtime = cx.journal.state().runtime.as_ref().map(|r| r.runtime);
            let mut files = vec![KUBELET_CREDENTIALS];
            if runtime == Some(Runtime::Docker) {
                files.push(DOCKER_CREDENTIALS);
            }
            let creds = Credentials::new(auth.username, auth.password);
            for f in files {
                let text = CredentialStore::at(cx.files.host(f)).text_with(&local, &creds)?;
                cx.install_file(f, text.as_bytes(), 0o600)?;
                credentials_in.push(f);
            }
        }
        let credentials = if credentials_in.is_empty() {
            String::new()
        } else {
            format!("; credentials in {}", credentials_in.join(", "))
        };
        let runtime = cx
            .journal
            .state()
            .runtime
            .as_ref()
            .map_or(Runtime::Containerd, |r| r.runtime);
        let certs_d = match runtime {
            Runtime::Docker => "/etc/docker/certs.d",
            Runtime::Containerd => "/etc/containerd/certs.d",
        };
        let ca_file = format!("{certs_d}/{local}/ca.crt");
        let trust = match &tls {
            Some(t) => {
                cx.install_file(&ca_file, t.ca.as_bytes(), 0o644)?;
                format!("; TLS, its CA in {ca_file}")
            }
            None => String::new(),
        };
        if runtime == Runtime::Docker {
            // docker's mirrors are in its daemon.json, written before it
            // started (the runtime step).
            return Ok(format!(
                "{} reachable as {local}; docker's mirrors are in /etc/docker/daemon.json{trust}{credentials}",
                cx.registry_ip
            ));
        }
        // How containerd checks the local registry: the cluster's registry
        // CA with TLS, nothing over plain HTTP.
        let check = if tls.is_some() {
            format!("  ca = \"{ca_file}\"\n")
        } else {
            "  skip_verify = true\n".to_string()
        };
        let domains = rt::mirrored_domains(&local, &cx.rootfs().join("registry"))?;
        for d in &domains {
            let text = if *d == local {
                format!(
                    "server = \"{mirror}\"\n\n[host.\"{mirror}\"]\n  capabilities = [\"pull\", \"resolve\", \"push\"]\n{check}"
                )
            } else {
                let server = if d == "docker.io" {
                    "https://registry-1.docker.io".to_string()
                } else {
                    format!("https://{d}")
                };
                format!(
                    "server = \"{server}\"\n\n[host.\"{mirror}\"]\n  capabilities = [\"pull\", \"resolve\"]\n{check}"
                )
            };
            cx.install_file(
                &format!("/etc/containerd/certs.d/{d}/hosts.toml"),
                text.as_bytes(),
                0o644,
            )?;
        }
        Ok(format!(
            "{} reachable as {local}; mirrors for {}{trust}{credentials}",
            cx.registry_ip,
            domains.join(", ")
        ))
    }
}
