//! One file per kind of stage ([`crate::converge::Work`]). Adding a kind:
//! a variant of `Work` (where [`crate::converge`] plans it), a file here,
//! and its line in [`run_stage`].

mod apply;
mod balancers;
mod configs;
pub(crate) mod control_plane;
mod delete_nodes;
mod etcd_members;
mod fetch;
mod forget;
mod image_plugins;
mod labels_taints;
mod plugins;
pub(crate) mod preflight;
mod reset;

use super::drive::Driver;
use super::error::StageError;
use crate::converge::{StageSpec, Work};

/// Runs one stage of the record `driver` drives.
pub(crate) async fn run_stage(driver: &Driver, stage: &StageSpec) -> Result<(), StageError> {
    let name = stage.name.as_str();
    match &stage.work {
        Work::Preflight { hosts, ignore } => preflight::run(driver, hosts, ignore).await,
        Work::Fetch { hosts } => fetch::run(driver, hosts).await,
        Work::Apply { tasks, upgrade } => apply::run(driver, name, tasks, *upgrade).await,
        Work::Plugins { op, point, targets } => {
            plugins::run(driver, name, *op, *point, targets).await
        }
        Work::ImagePlugins => image_plugins::run(driver).await,
        Work::Configs { hosts } => configs::run(driver, name, hosts).await,
        Work::LabelsTaints { hosts } => labels_taints::run(driver, name, hosts).await,
        Work::DeleteNodes { hosts } => delete_nodes::run(driver, name, hosts).await,
        Work::EtcdMembers { hosts } => etcd_members::run(driver, name, hosts).await,
        Work::Reset { hosts, prune } => reset::run(driver, name, hosts, *prune).await,
        Work::Balancers {
            hosts,
            masters,
            registries,
        } => balancers::run(driver, name, hosts, masters, registries).await,
        Work::ControlPlaneUpgrade { version, hosts } => {
            control_plane::run(driver, name, version, hosts).await
        }
        Work::Forget { hosts } => {
            forget::run(driver, hosts);
            Ok(())
        }
    }
}
