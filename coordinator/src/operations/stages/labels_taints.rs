//! `labels-taints`: the hosts' labels and taints from the spec, applied from
//! the first master (idempotent, at the end of every operation).

use seaport_shared::shell::quote;

use super::super::drive::Driver;
use super::super::error::StageError;

pub(super) async fn run(driver: &Driver, stage: &str, hosts: &[String]) -> Result<(), StageError> {
    let script = driver.record.read(|c| {
        let mut lines = Vec::new();
        for ip in hosts {
            let (Some(want), Some(h)) = (c.spec.hosts.iter().find(|h| &h.ip == ip), c.host(ip))
            else {
                continue;
            };
            let node = quote(&h.hostname);
            if !want.labels.is_empty() {
                let labels: Vec<String> = want
                    .labels
                    .iter()
                    .map(|(k, v)| quote(&format!("{k}={v}")))
                    .collect();
                lines.push(format!(
                    "kubectl label node {node} {} --overwrite",
                    labels.join(" ")
                ));
            }
            for t in &want.taints {
                lines.push(format!(
                    "kubectl taint node {node} {} --overwrite",
                    quote(t)
                ));
            }
        }
        lines
    });
    if script.is_empty() {
        return Ok(());
    }
    driver.master0_shell(stage, script.join("\n")).await
}
