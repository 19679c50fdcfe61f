//! `forget`: hosts that left the cluster are dropped from its record. Those
//! the operation left out (offline, `--force`) are named in the record's
//! `left_out`, with what was not done on them.

use super::super::drive::Driver;
use super::super::record::LEFT_OUT;

pub(super) fn run(driver: &Driver, hosts: &[String]) {
    driver.record.write(|c| {
        let etcd = c.stages.iter().any(|s| s.name == "etcd-members");
        let master0 = c.master0();
        // master0 left out too: nothing was removed through it.
        let through_master0 = c
            .host(&master0)
            .is_some_and(|m| m.error.as_deref() != Some(LEFT_OUT));
        let notes: Vec<String> = c
            .hosts
            .iter()
            .filter(|h| hosts.contains(&h.ip) && h.error.as_deref() == Some(LEFT_OUT))
            .map(|h| {
                let removed = match (through_master0, h.role.is_master() && etcd) {
                    (false, _) => format!(
                        "NOT removed from Kubernetes or etcd (master0 {master0} was offline too)"
                    ),
                    (true, true) => format!(
                        "removed from Kubernetes (kubectl delete node) and its etcd member from {master0}"
                    ),
                    (true, false) => "removed from Kubernetes (kubectl delete node)".to_string(),
                };
                format!(
                    "{} ({}) was offline: not reset, its install is left as it was (run `seaport-agent reset --cluster {}` on it if it comes back); removed from every balancer; {removed}; forgotten",
                    h.ip,
                    if h.hostname.is_empty() { "?" } else { &h.hostname },
                    c.name
                )
            })
            .collect();
        c.left_out = notes;
        c.hosts.retain(|h| !hosts.contains(&h.ip));
    });
}
