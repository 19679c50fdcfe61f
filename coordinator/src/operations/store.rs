//! [`ClusterStore`]: where operations keep their records and the audit
//! log. The coordinator's state store implements it (every save is one
//! committed transaction, so a crash leaves the previous record or the new
//! one, never half of one).

use seaport_shared::cluster::ClusterName;

use super::record::{AuditEntry, Cluster};

/// A failure of the store behind [`ClusterStore`].
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct StoreError(Box<dyn std::error::Error + Send + Sync>);

impl StoreError {
    /// Wraps the backend's error.
    pub fn new(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        StoreError(Box::new(e))
    }
}

/// Cluster records and the audit log.
pub trait ClusterStore: Send + Sync {
    /// The record of `name`, if any.
    fn cluster(&self, name: &ClusterName) -> Result<Option<Cluster>, StoreError>;

    /// Every record.
    fn clusters(&self) -> Result<Vec<Cluster>, StoreError>;

    /// Stores (replaces) a record in one transaction.
    fn save_cluster(&self, cluster: &Cluster) -> Result<(), StoreError>;

    /// Removes a record; whether there was one.
    fn remove_cluster(&self, name: &ClusterName) -> Result<bool, StoreError>;

    /// Appends to the audit log; returns the entry's sequence number.
    fn audit(&self, entry: &AuditEntry) -> Result<u64, StoreError>;

    /// The last `limit` audit entries, oldest first.
    fn audit_log(&self, limit: usize) -> Result<Vec<(u64, AuditEntry)>, StoreError>;
}

/// A [`ClusterStore`] in memory, for tests.
#[cfg(test)]
#[derive(Default)]
pub(crate) struct MemoryStore {
    clusters: std::sync::Mutex<std::collections::BTreeMap<ClusterName, Cluster>>,
    audit: std::sync::Mutex<Vec<AuditEntry>>,
}

#[cfg(test)]
impl ClusterStore for MemoryStore {
    fn cluster(&self, name: &ClusterName) -> Result<Option<Cluster>, StoreError> {
        Ok(self.clusters.lock().unwrap().get(name).cloned())
    }

    fn clusters(&self) -> Result<Vec<Cluster>, StoreError> {
        Ok(self.clusters.lock().unwrap().values().cloned().collect())
    }

    fn save_cluster(&self, cluster: &Cluster) -> Result<(), StoreError> {
        self.clusters
            .lock()
            .unwrap()
            .insert(cluster.name.clone(), cluster.clone());
        Ok(())
    }

    fn remove_cluster(&self, name: &ClusterName) -> Result<bool, StoreError> {
        Ok(self.clusters.lock().unwrap().remove(name).is_some())
    }

    fn audit(&self, entry: &AuditEntry) -> Result<u64, StoreError> {
        let mut a = self.audit.lock().unwrap();
        a.push(entry.clone());
        Ok(a.len() as u64)
    }

    fn audit_log(&self, limit: usize) -> Result<Vec<(u64, AuditEntry)>, StoreError> {
        let a = self.audit.lock().unwrap();
        let skip = a.len().saturating_sub(limit);
        Ok(a.iter()
            .enumerate()
            .skip(skip)
            .map(|(i, e)| (i as u64 + 1, e.clone()))
            .collect())
    }
}
