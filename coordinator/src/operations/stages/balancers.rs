//! `balancers`: every worker's node-local API balancer gets the masters'
//! API servers as its backends, and its registry port the registry hosts'
//! local registries, all at once; the stage fails unless every worker runs
//! the new lists. Planned after the masters joined (a master is
//! added only once it serves) and before a leaving master is reset (it is
//! removed from every balancer first).

use seaport_rootfs::kubeadm::{api_balancer_addr, APISERVER_PORT};
use seaport_shared::wire::{BalancerTask, TaskEvent, TaskRequest};

use super::super::drive::{check, Driver};
use super::super::error::{HostTaskError, StageError};

pub(super) async fn run(
    driver: &Driver,
    stage: &str,
    hosts: &[String],
    masters: &[String],
    registries: &[String],
) -> Result<(), StageError> {
    let (cluster, env, tls) = driver.record.read(|c| {
        (
            c.name.clone(),
            c.spec.env.clone(),
            c.spec.registry_tls.clone(),
        )
    });
    let listen = api_balancer_addr(&env)?;
    let backends: Vec<String> = masters
        .iter()
        .map(|ip| format!("{ip}:{APISERVER_PORT}"))
        .collect();
    let registry_port = super::preflight::registry_port(&env);
    let registry_backends: Vec<String> = registries
        .iter()
        .map(|ip| format!("{ip}:{registry_port}"))
        .collect();
    let reqs = hosts
        .iter()
        .map(|ip| {
            let task = BalancerTask {
                cluster: cluster.clone(),
                listen_ip: listen.ip().to_string(),
                port: listen.port(),
                backends: backends.clone(),
                registry_port: (!registry_backends.is_empty()).then_some(registry_port),
                registry_backends: registry_backends.clone(),
                registry_ca: tls.as_ref().map(|t| t.cert.ca.clone()),
                registry_domain: tls.as_ref().map(|t| t.domain.clone()),
            };
            (ip.clone(), TaskRequest::Balancer(task))
        })
        .collect();
    let results: Vec<(String, Result<TaskEvent, HostTaskError>)> =
        driver.on_hosts(stage, reqs).await;
    check(results)
}
