//! `delete-nodes`: `kubectl delete node` of hosts leaving the cluster, from
//! the first master.

use seaport_shared::shell::quote;

use super::super::drive::Driver;
use super::super::error::StageError;

pub(super) async fn run(driver: &Driver, stage: &str, hosts: &[String]) -> Result<(), StageError> {
    let script = driver.record.read(|c| {
        hosts
            .iter()
            .filter_map(|ip| c.host(ip))
            .map(|h| {
                format!(
                    "kubectl delete node {} --ignore-not-found",
                    quote(&h.hostname)
                )
            })
            .collect::<Vec<_>>()
    });
    driver.master0_shell(stage, script.join("\n")).await
}
