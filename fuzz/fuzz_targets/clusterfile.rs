//! Fuzzes the Clusterfile reader: no input may panic; parsing, resolving,
//! plugin selection and Config rendering are deterministic; every selected
//! host is a host of the cluster; Config paths stay inside the rootfs.
#![no_main]

use std::path::Component;

use libfuzzer_sys::fuzz_target;
use seaport::clusterfile::{Clusterfile, Operation, Stage};

const OPERATIONS: [Operation; 6] = [
    Operation::Install,
    Operation::ScaleUp,
    Operation::ScaleDown,
    Operation::Uninstall,
    Operation::Upgrade,
    Operation::Rollback,
];
const STAGES: [Stage; 4] = [
    Stage::Start,
    Stage::HostsReady,
    Stage::ClusterReady,
    Stage::Done,
];

fuzz_target!(|data: &[u8]| {
    let file = match Clusterfile::parse_bytes(data) {
        Ok(file) => file,
        Err(e) => {
            let _ = e.to_string();
            if let Some((line, column)) = e.location {
                assert!(line >= 1 && column >= 1, "{e}");
            }
            return;
        }
    };
    assert_eq!(Clusterfile::parse_bytes(data).as_ref(), Ok(&file));
    for w in &file.warnings {
        let _ = w.to_string();
    }
    let _ = file.kubeadm_yaml();

    let resolved = file.resolve();
    assert_eq!(file.resolve(), resolved);
    if let Ok(cluster) = &resolved {
        assert_eq!(cluster.hosts.iter().filter(|h| h.master0).count(), 1);
        assert_eq!(cluster.host(cluster.master0).map(|h| h.master0), Some(true));
        let targets = cluster.ips();
        for op in OPERATIONS {
            for stage in STAGES {
                let runs = cluster.plugin_runs(&file.plugins, op, stage, &targets);
                assert_eq!(
                    cluster.plugin_runs(&file.plugins, op, stage, &targets),
                    runs
                );
                for run in &runs {
                    assert!(!run.hosts.is_empty());
                    assert!(run.hosts.iter().all(|ip| cluster.host(*ip).is_some()));
                }
            }
        }
        let _ = cluster.plan_hosts();
    }

    for config in &file.configs {
        let path = config.target_path();
        assert!(
            path.components().all(|c| matches!(c, Component::Normal(_))),
            "{path:?}"
        );
        let fresh = config.render(None);
        assert_eq!(config.render(None), fresh);
        // The input itself as the existing file: exercises merge and toSecret.
        let over = config.render(Some(data));
        assert_eq!(config.render(Some(data)), over);
    }
});
