//! Stand-ins for the Kubernetes parts the lab cannot run, shipped in the
//! test cluster image as `bin/seaport-kube-double` and driven by the
//! kubeadm double (`tests/fixtures/kubeadm-double`).
//!
//! Modules:
//! - [`pki`]: the cluster CA (`ca.crt`, `ca.key` 0600) and the API server's
//!   serving certificate, under `/etc/kubernetes/pki` as kubeadm writes them.
//! - [`certs`]: kubeadm's certificate hand-over between masters
//!   (`--upload-certs`, `--certificate-key`): AES-256-GCM under the
//!   certificate key, the bootstrap tokens a master accepts.
//! - [`apiserver`]: the API server stand-in (TLS on :6443, `/healthz`,
//!   kubeadm's discovery ConfigMap and certificate Secret) and the client
//!   side of kubeadm join's discovery.
//! - [`upgrade`]: the cluster's version, `kubeadm upgrade apply|node` checks.
//! - [`config`]: reading kubeadm configuration files (YAML documents).
//! - [`kubeadm_api`]: kubeadm configuration checked against the kubeadm API
//!   version (v1beta2, v1beta3, v1beta4) a kubeadm release reads.
//! - [`kubectl`]: the kubectl double (arguments, kubeconfig, manifests, records).

pub mod apiserver;
pub mod certs;
pub mod config;
pub mod kubeadm_api;
pub mod kubectl;
pub mod pki;
pub mod upgrade;
