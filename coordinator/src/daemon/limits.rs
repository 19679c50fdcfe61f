//! Per-source limits for what anyone may open without credentials
//! (enrollment connections, bootstrap downloads): one source can hold only a
//! few slots at once and queue a few more, so a flood from one address
//! costs its sender more than it costs honest hosts elsewhere.
//!
//! A source is an IPv4 address or an IPv6 /64 (what one host or one
//! customer of a provider typically gets). The table is bounded: past
//! `max_sources` distinct sources at once, new ones are turned away.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The unit a limit counts by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SourceKey(IpAddr);

impl SourceKey {
    pub fn of(ip: IpAddr) -> SourceKey {
        match ip.to_canonical() {
            IpAddr::V6(v6) => {
                let s = v6.segments();
                SourceKey(IpAddr::V6(std::net::Ipv6Addr::new(
                    s[0], s[1], s[2], s[3], 0, 0, 0, 0,
                )))
            }
            v4 => SourceKey(v4),
        }
    }
}

struct Entry {
    slots: Arc<Semaphore>,
    /// Holders and waiters.
    users: usize,
}

/// Slots per source, with a bounded queue of waiters per source.
pub struct SourceLimiter {
    per_source: usize,
    waiting: usize,
    max_sources: usize,
    table: Mutex<HashMap<SourceKey, Entry>>,
}

/// A slot held by one source; released when dropped.
pub struct SourceSlot {
    limiter: Arc<SourceLimiter>,
    key: SourceKey,
    _permit: OwnedSemaphorePermit,
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        self.limiter.leave(self.key);
    }
}

impl SourceLimiter {
    /// `per_source` slots and `waiting` waiters per source, at most
    /// `max_sources` sources at once.
    pub fn new(per_source: usize, waiting: usize, max_sources: usize) -> Arc<SourceLimiter> {
        Arc::new(SourceLimiter {
            per_source,
            waiting,
            max_sources,
            table: Mutex::new(HashMap::new()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SourceKey, Entry>> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn leave(&self, key: SourceKey) {
        let mut table = self.lock();
        if let Some(e) = table.get_mut(&key) {
            e.users -= 1;
            if e.users == 0 {
                table.remove(&key);
            }
        }
    }

    /// A slot for `ip` if one is free now.
    pub fn try_acquire(self: &Arc<Self>, ip: IpAddr) -> Option<SourceSlot> {
        let key = SourceKey::of(ip);
        let mut table = self.lock();
        if !table.contains_key(&key) && table.len() >= self.max_sources {
            return None;
        }
        let e = table.entry(key).or_insert_with(|| Entry {
            slots: Arc::new(Semaphore::new(self.per_source)),
            users: 0,
        });
        let permit = e.slots.clone().try_acquire_owned().ok();
        match permit {
            Some(permit) => {
                e.users += 1;
                Some(SourceSlot {
                    limiter: self.clone(),
                    key,
                    _permit: permit,
                })
            }
            None => {
                if e.users == 0 {
                    table.remove(&key);
                }
                None
            }
        }
    }

    /// A slot for `ip`, waiting up to `wait` for one when the source's
    /// slots are taken; `None` when its queue is full too, the table is
    /// full, or the wait ran out.
    pub async fn acquire(self: &Arc<Self>, ip: IpAddr, wait: Duration) -> Option<SourceSlot> {
        let key = SourceKey::of(ip);
        let slots = {
            let mut table = self.lock();
            if !table.contains_key(&key) && table.len() >= self.max_sources {
                return None;
            }
            let e = table.entry(key).or_insert_with(|| Entry {
                slots: Arc::new(Semaphore::new(self.per_source)),
                users: 0,
            });
            if e.users >= self.per_source + self.waiting {
                return None;
            }
            e.users += 1;
            e.slots.clone()
        };
        match tokio::time::timeout(wait, slots.acquire_owned()).await {
            Ok(Ok(permit)) => Some(SourceSlot {
                limiter: self.clone(),
                key,
                _permit: permit,
            }),
            _ => {
                self.leave(key);
                None
            }
        }
    }

    /// Sources with a slot or a place in the queue now.
    pub fn sources(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_source_is_bounded_and_others_are_not_affected() {
        let l = SourceLimiter::new(2, 1, 16);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let short = Duration::from_millis(50);
        let s1 = l.acquire(a, short).await.unwrap();
        let _s2 = l.acquire(a, short).await.unwrap();
        // Third: waits its turn, and gets the slot once one is released.
        let waiter = {
            let l = l.clone();
            tokio::spawn(async move { l.acquire(a, Duration::from_secs(5)).await.is_some() })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        // Fourth: the queue is full, turned away at once.
        assert!(l.acquire(a, Duration::from_secs(5)).await.is_none());
        // Another source is served.
        assert!(l.acquire(b, short).await.is_some());
        drop(s1);
        assert!(waiter.await.unwrap());
        // Without waiting: once both slots of `a` are held again, none.
        let _s3 = l.try_acquire(a).unwrap();
        assert!(l.try_acquire(a).is_none());
        assert!(l.try_acquire(b).is_some());
    }

    #[tokio::test]
    async fn ipv6_counts_by_64_and_the_table_is_bounded() {
        let l = SourceLimiter::new(1, 0, 2);
        let short = Duration::from_millis(20);
        let x = l.acquire("2001:db8::1".parse().unwrap(), short).await;
        assert!(x.is_some());
        assert!(l
            .acquire("2001:db8::2".parse().unwrap(), short)
            .await
            .is_none());
        let _y = l
            .acquire("192.0.2.9".parse().unwrap(), short)
            .await
            .unwrap();
        assert!(l
            .acquire("192.0.2.10".parse().unwrap(), short)
            .await
            .is_none());
        assert_eq!(l.sources(), 2);
        drop(x);
        assert_eq!(l.sources(), 1);
    }
}
