//! `configs`: the Clusterfile's Config documents written (or merged) into
//! each host's rootfs before the install uses it.

use std::collections::BTreeMap;

use seaport_shared::wire::{ReadFilesTask, TaskEvent, TaskRequest, WriteFilesTask};

use super::super::drive::{check, clusterfile, Driver};
use super::super::error::StageError;

pub(super) async fn run(driver: &Driver, stage: &str, hosts: &[String]) -> Result<(), StageError> {
    let (configs, cluster) = driver.record.read(|c| -> Result<_, StageError> {
        let configs = clusterfile(c)?.map(|f| f.configs).unwrap_or_default();
        Ok((configs, c.name.clone()))
    })?;
    if configs.is_empty() {
        return Ok(());
    }
    let paths: Vec<String> = configs
        .iter()
        .map(|c| c.target_path().to_string_lossy().into_owned())
        .collect();
    for ip in hosts {
        let read = TaskRequest::ReadFiles(ReadFilesTask {
            cluster: cluster.clone(),
            paths: paths.clone(),
            dirs: vec![],
        });
        let mut r = driver.on_hosts(stage, vec![(ip.clone(), read)]).await;
        let files = match r.pop() {
            Some((_, Ok(TaskEvent::Files { files, error: None }))) => files,
            Some((ip, other)) => return check(vec![(ip, other)]),
            None => continue,
        };
        let mut current: BTreeMap<String, Option<Vec<u8>>> = files.into_iter().collect();
        let mut out = Vec::new();
        for (cfg, path) in configs.iter().zip(&paths) {
            let existing = current.get(path).cloned().flatten();
            let bytes = cfg
                .render(existing.as_deref())
                .map_err(StageError::Config)?;
            current.insert(path.clone(), Some(bytes.clone()));
            out.push((path.clone(), bytes));
        }
        let write = TaskRequest::WriteFiles(WriteFilesTask {
            cluster: cluster.clone(),
            files: out,
        });
        check(driver.on_hosts(stage, vec![(ip.clone(), write)]).await)?;
    }
    Ok(())
}
