//! The balancer's backends and their health: which master a new
//! connection goes to, and what active checks and failed dials say about
//! each.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use serde::Serialize;

/// One backend as `seaport status` and the metrics show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BackendStatus {
    /// The master's API server address.
    pub addr: SocketAddr,
    /// Whether new connections go to it.
    pub healthy: bool,
    /// Why it is down (the failed check or dial), when it is.
    pub reason: Option<String>,
    /// Connections forwarded to it since the balancer started.
    pub forwarded: u64,
    /// Dials to it that failed.
    pub failed_dials: u64,
}

#[derive(Debug)]
struct Backend {
    addr: SocketAddr,
    healthy: bool,
    reason: Option<String>,
    forwarded: u64,
    failed_dials: u64,
}

/// The backends, in the order they were given.
#[derive(Debug, Default)]
pub(super) struct Pool {
    backends: Mutex<Vec<Backend>>,
    next: AtomicUsize,
}

impl Pool {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Backend>> {
        self.backends.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Replaces the backend list. Backends already known keep their state;
    /// new ones start healthy (their first check follows at once), so a
    /// master added to the pool serves at once.
    pub(super) fn set(&self, addrs: &[SocketAddr]) {
        let mut b = self.lock();
        let mut out = Vec::with_capacity(addrs.len());
        for a in addrs {
            if out.iter().any(|x: &Backend| x.addr == *a) {
                continue;
            }
            match b.iter().position(|x| x.addr == *a) {
                Some(i) => out.push(b.remove(i)),
                None => out.push(Backend {
                    addr: *a,
                    healthy: true,
                    reason: None,
                    forwarded: 0,
                    failed_dials: 0,
                }),
            }
        }
        *b = out;
    }

    /// The addresses, in order.
    pub(super) fn addrs(&self) -> Vec<SocketAddr> {
        self.lock().iter().map(|b| b.addr).collect()
    }

    /// The order to try backends for a new connection: the healthy ones
    /// round-robin, then the others (when every backend is down, every one
    /// is still tried rather than refusing the connection).
    pub(super) fn order(&self) -> Vec<SocketAddr> {
        let b = self.lock();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let healthy: Vec<SocketAddr> = b.iter().filter(|x| x.healthy).map(|x| x.addr).collect();
        let mut out = Vec::with_capacity(b.len());
        if !healthy.is_empty() {
            let n = healthy.len();
            out.extend((0..n).map(|i| healthy[(start + i) % n]));
        }
        out.extend(b.iter().filter(|x| !x.healthy).map(|x| x.addr));
        out
    }

    /// What a check or a dial found. Returns whether the state changed.
    pub(super) fn mark(&self, addr: SocketAddr, up: Result<(), String>) -> bool {
        let mut b = self.lock();
        let Some(x) = b.iter_mut().find(|x| x.addr == addr) else {
            return false;
        };
        let healthy = up.is_ok();
        let changed = x.healthy != healthy;
        x.healthy = healthy;
        x.reason = up.err();
        changed
    }

    /// A dial to `addr` failed: it is down at once (passive detection).
    pub(super) fn dial_failed(&self, addr: SocketAddr, why: String) {
        if let Some(x) = self.lock().iter_mut().find(|x| x.addr == addr) {
            x.failed_dials += 1;
        }
        self.mark(addr, Err(why));
    }

    /// A connection went to `addr`.
    pub(super) fn forwarded(&self, addr: SocketAddr) {
        if let Some(x) = self.lock().iter_mut().find(|x| x.addr == addr) {
            x.forwarded += 1;
        }
    }

    /// Every backend's state.
    pub(super) fn status(&self) -> Vec<BackendStatus> {
        self.lock()
            .iter()
            .map(|x| BackendStatus {
                addr: x.addr,
                healthy: x.healthy,
                reason: x.reason.clone(),
                forwarded: x.forwarded,
                failed_dials: x.failed_dials,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn healthy_backends_take_turns_and_down_ones_come_last() {
        let p = Pool::default();
        p.set(&[a(1), a(2), a(3)]);
        let firsts: Vec<SocketAddr> = (0..3).map(|_| p.order()[0]).collect();
        assert_eq!(firsts, [a(1), a(2), a(3)]);
        assert!(p.mark(a(2), Err("connection refused".into())));
        for _ in 0..4 {
            let o = p.order();
            assert_eq!(o.len(), 3);
            assert_ne!(o[0], a(2));
            assert_eq!(o[2], a(2), "{o:?}");
        }
        // Every one down: all are still tried, in the given order.
        p.mark(a(1), Err("x".into()));
        p.mark(a(3), Err("x".into()));
        assert_eq!(p.order(), [a(1), a(2), a(3)]);
        // Back up.
        assert!(p.mark(a(3), Ok(())));
        assert!(!p.mark(a(3), Ok(())), "no change");
        assert_eq!(p.order()[0], a(3));
    }

    #[test]
    fn a_new_list_keeps_known_backends_state_and_starts_new_ones_healthy() {
        let p = Pool::default();
        p.set(&[a(1), a(2)]);
        p.dial_failed(a(1), "refused".into());
        p.forwarded(a(2));
        p.set(&[a(2), a(1), a(4), a(4)]);
        let s = p.status();
        assert_eq!(
            s.iter().map(|b| b.addr).collect::<Vec<_>>(),
            [a(2), a(1), a(4)]
        );
        assert_eq!((s[0].healthy, s[0].forwarded), (true, 1));
        assert_eq!(
            (s[1].healthy, s[1].failed_dials, s[1].reason.as_deref()),
            (false, 1, Some("refused"))
        );
        assert!(s[2].healthy);
        // A removed backend is gone, and marking it changes nothing.
        p.set(&[a(4)]);
        assert_eq!(p.addrs(), [a(4)]);
        assert!(!p.mark(a(1), Ok(())));
    }
}
