//! `registry-access`: `/etc/hosts` names for the registry and the API
//! server, and containerd `hosts.toml` mirrors for every cached domain
//! (docker's mirrors are in its `daemon.json`, written by `runtime`).

use seaport_shared::cluster::Step;

use super::super::runtime::{self as rt, Runtime};
use super::context::{HostStep, StepContext};
use super::error::StepError;

pub(super) struct RegistryAccess;

impl HostStep for RegistryAccess {
    fn step(&self) -> Step {
        Step::RegistryAccess
    }

    fn run(&self, cx: &mut StepContext<'_>) -> Result<String, StepError> {
        // Written by the runtime step already; again here for journals of
        // installs whose runtime step ran before it did.
        cx.name_registry_hosts()?;
        let local = cx.local_registry();
        let mirror = format!("http://{local}");
        let runtime = cx
            .journal
            .state()
            .runtime
            .as_ref()
            .map_or(Runtime::Containerd, |r| r.runtime);
        if runtime == Runtime::Docker {
            // docker's mirrors are in its daemon.json, written before it
            // started (the runtime step).
            return Ok(format!(
                "{} reachable as {local}; docker's mirrors are in /etc/docker/daemon.json",
                cx.registry_ip
            ));
        }
        let domains = rt::mirrored_domains(&local, &cx.rootfs().join("registry"))?;
        for d in &domains {
            let text = if *d == local {
                format!(
                    "server = \"{mirror}\"\n\n[host.\"{mirror}\"]\n  capabilities = [\"pull\", \"resolve\", \"push\"]\n  skip_verify = true\n"
                )
            } else {
                let server = if d == "docker.io" {
                    "https://registry-1.docker.io".to_string()
                } else {
                    format!("https://{d}")
                };
                format!(
                    "server = \"{server}\"\n\n[host.\"{mirror}\"]\n  capabilities = [\"pull\", \"resolve\"]\n  skip_verify = true\n"
                )
            };
            cx.install_file(
                &format!("/etc/containerd/certs.d/{d}/hosts.toml"),
                text.as_bytes(),
                0o644,
            )?;
        }
        Ok(format!(
            "{} reachable as {local}; mirrors for {}",
            cx.registry_ip,
            domains.join(", ")
        ))
    }
}
