//! `forget`: hosts that left the cluster are dropped from its record.

use super::super::drive::Driver;

pub(super) fn run(driver: &Driver, hosts: &[String]) {
    driver
        .record
        .write(|c| c.hosts.retain(|h| !hosts.contains(&h.ip)));
}
