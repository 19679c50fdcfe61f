//! `kubeadm`: the merged configuration, then `kubeadm init` on the first
//! master (which writes the join data the others need) or `kubeadm join`.
//! A host joins once: a done kubeadm step does not run again when its
//! inputs change (an upgrade).

use std::fs;

use rand::Rng;
use seaport_rootfs::kubeadm::{Computed, JoinData, KubeadmApi, APISERVER_PORT};
use seaport_shared::cluster::{Role, Step};
use seaport_shared::confined::write_atomic;

use super::super::effects::CommandSpec;
use super::super::join_data::{ca_cert_hash, read_join_data};
use super::super::options::ApplyOptions;
use super::super::runtime::{parse_version, SOCKET_PATH_FILE};
use super::context::{HostStep, StepContext};
use super::error::StepError;
use super::paths::{ADMIN_CONF, BIN_DIR, ROOT_KUBECONFIG};

pub(super) struct Kubeadm;

impl HostStep for Kubeadm {
    fn step(&self) -> Step {
        Step::Kubeadm
    }

    fn reruns_on_change(&self) -> bool {
        false
    }

    fn run(&self, cx: &mut StepContext<'_>) -> Result<String, StepError> {
        let kubeadm = kubeadm_bin(cx);
        if cx.interrupted {
            // An interrupted init/join leaves partial state kubeadm's
            // preflight refuses: start clean.
            let spec = CommandSpec::new(&kubeadm, &["reset", "-f"], cx.opts.timeouts.kubeadm);
            let fx = cx.fx;
            let _ = cx
                .files
                .tracked(&mut cx.journal, "kubeadm-reset", || fx.run(&spec));
        }
        let cfg = cx.kubeadm_config()?;
        let mut masters = cx.opts.master_ips.clone();
        for ip in [&cx.master0_ip, &cx.host_ip] {
            if cx.opts.role != Role::Node && !masters.contains(ip) {
                masters.push(ip.clone());
            }
        }
        let computed = Computed {
            host_ip: cx.host_ip.clone(),
            master_ips: masters,
            image_repository: cx.local_registry(),
            env: cx.env.clone(),
            cri_socket: cri_socket(cx),
            cgroup_driver: cx
                .journal
                .state()
                .runtime
                .as_ref()
                .and_then(|r| r.cgroup_driver.clone()),
            kubeadm_api: cx
                .kube_version()?
                .as_deref()
                .and_then(parse_version)
                .map(|(major, minor)| KubeadmApi::for_kubernetes(major, minor)),
        };
        let config_path = cx.opts.cluster_dir().join("kubeadm.yaml");
        let (args, token, key, text) = match (&cx.opts.join_data, cx.opts.role) {
            (_, Role::Master0) => {
                let token = bootstrap_token();
                let key = hex_key();
                let text = cfg.for_init(&computed, &token, &key);
                let args = vec![
                    "init".to_string(),
                    "--config".into(),
                    config_path.to_string_lossy().into_owned(),
                    "--upload-certs".into(),
                ];
                (args, token, key, text)
            }
            (Some(join), role) => {
                let text = cfg.for_join(&computed, join, role == Role::Master);
                let args = vec![
                    "join".to_string(),
                    "--config".into(),
                    config_path.to_string_lossy().into_owned(),
                ];
                (args, join.token.clone(), join.certificate_key.clone(), text)
            }
            (None, _) => return Err(StepError::NoJoinData),
        };
        write_atomic(&config_path, text.as_bytes(), 0o600)?;
        let mut spec = CommandSpec::new(&kubeadm, &args, cx.opts.timeouts.kubeadm);
        spec.env = cx.hook_env();
        cx.run_tracked("kubeadm", &format!("kubeadm {}", args[0]), &spec)?;
        if cx.opts.role == Role::Master {
            // Joined: this master's components and kubectl use its own API
            // server from now on, as sealer has it.
            let me = cx.host_ip.clone();
            cx.name_api_server(&me)?;
        }
        if cx.opts.role != Role::Node {
            install_admin_kubeconfig(cx)?;
        }
        if cx.opts.role != Role::Master0 {
            return Ok(format!("kubeadm join against {}", cx.master0_ip));
        }
        let ca = cx.files.host("/etc/kubernetes/pki/ca.crt");
        let pem = fs::read(&ca).map_err(|source| StepError::NoCaCertificate {
            path: ca.clone(),
            source,
        })?;
        let hash = ca_cert_hash(&pem)?;
        let join = JoinData {
            api_server_endpoint: format!("{}:{APISERVER_PORT}", cx.host_ip),
            master0_ip: cx.host_ip.clone(),
            token,
            ca_cert_hashes: vec![hash],
            certificate_key: key,
        };
        let bytes = serde_json::to_vec_pretty(&join).expect("serializes");
        write_atomic(&cx.opts.cluster_dir().join("join.json"), &bytes, 0o600)?;
        if let Some(out) = &cx.opts.join_data_out {
            write_atomic(out, &bytes, 0o600)?;
        }
        Ok(format!(
            "kubeadm init; join data in {}",
            cx.opts.cluster_dir().join("join.json").display()
        ))
    }
}

/// Copies kubeadm's `/etc/kubernetes/admin.conf` to `/root/.kube/config`
/// (0600, atomically, journaled: reset removes it, or puts back the file
/// that was there), as sealer does on every master after `kubeadm init` and
/// a control-plane join, so kubectl run by the agent (and by root on the
/// host) finds the cluster.
fn install_admin_kubeconfig(cx: &mut StepContext<'_>) -> Result<(), StepError> {
    let src = cx.files.host(ADMIN_CONF);
    let bytes = fs::read(&src).map_err(|source| StepError::NoAdminKubeconfig {
        path: src.clone(),
        source,
    })?;
    cx.install_file(ROOT_KUBECONFIG, &bytes, 0o600)?;
    Ok(())
}

/// The join data the first master's kubeadm step wrote (none elsewhere).
pub(crate) fn written_join_data(opts: &ApplyOptions) -> Option<JoinData> {
    if opts.role != Role::Master0 {
        return None;
    }
    read_join_data(&opts.cluster_dir().join("join.json")).ok()
}

fn kubeadm_bin(cx: &StepContext<'_>) -> String {
    let installed = cx.files.host(&format!("{BIN_DIR}/kubeadm"));
    if installed.is_file() {
        format!("{BIN_DIR}/kubeadm")
    } else {
        cx.rootfs()
            .join("bin/kubeadm")
            .to_string_lossy()
            .into_owned()
    }
}

/// The CRI socket kubeadm is given: what an image's CRI script wrote into
/// `/etc/sealerio/cri/socket-path` (sealer 0.9+'s contract), else the
/// socket of the runtime the `runtime` step set up.
fn cri_socket(cx: &StepContext<'_>) -> Option<String> {
    let written = fs::read_to_string(cx.files.host(SOCKET_PATH_FILE))
        .ok()
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty());
    written.or_else(|| {
        cx.journal
            .state()
            .runtime
            .as_ref()
            .map(|r| r.cri_socket.clone())
    })
}

fn bootstrap_token() -> String {
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    let mut pick = |n: usize| -> String {
        (0..n)
            .map(|_| CHARS[rng.random_range(0..CHARS.len())] as char)
            .collect()
    };
    format!("{}.{}", pick(6), pick(16))
}

fn hex_key() -> String {
    let bytes: [u8; 32] = rand::rng().random();
    bytes.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_have_kubeadm_shape() {
        let t = bootstrap_token();
        let (a, b) = t.split_once('.').unwrap();
        assert_eq!((a.len(), b.len()), (6, 16));
        assert!(t
            .chars()
            .all(|c| c == '.' || c.is_ascii_lowercase() || c.is_ascii_digit()));
        assert_eq!(hex_key().len(), 64);
    }
}
