//! How a CLI command reaches the coordinator's state: through the running
//! coordinator's admin API, or (when none runs) by opening the store
//! itself for one request. It never holds the store while a coordinator
//! starts: a coordinator holding its lock (running, or starting) is asked,
//! and a command that finds one starting waits for it to listen.

use std::path::Path;
use std::time::{Duration, Instant};

use seaport_shared::wire::{AdminRequest, AdminResponse};

use crate::admin::{self, AdminClient, AdminError};
use crate::ca::CoordinatorPaths;
use crate::state::{self, StateError, StateStore};

/// How long a command waits for a coordinator that is starting or
/// stopping (its lock held, its address not answering yet).
const WAIT_FOR_COORDINATOR: Duration = Duration::from_secs(30);
/// How long a coordinator that cut a request off may take to go away.
const STOPPING_FOR: Duration = Duration::from_secs(10);

/// A runtime for one command's requests.
pub(super) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

async fn ask(root: &Path, addr: &str, req: AdminRequest) -> Result<AdminResponse, AdminError> {
    let client = AdminClient::connect(root, addr).await?;
    let resp = client.request(&req).await;
    client.close().await;
    resp
}

/// What a command does to the state when no coordinator runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Offline {
    /// Reads it (opened read-only).
    Read,
    /// Changes it (opened for writing, for this one request).
    Write,
}

/// Runs `req` against the running coordinator (`--coordinator`, or the
/// one whose lock is held under `root`), or `offline` on the store when no
/// coordinator runs.
pub(super) fn with_coordinator<T>(
    root: &Path,
    explicit: Option<&str>,
    req: AdminRequest,
    access: Offline,
    online: impl FnOnce(AdminResponse) -> anyhow::Result<T>,
    offline: impl FnOnce(&dyn StateStore) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let rt = runtime()?;
    if let Some(addr) = explicit {
        return online(rt.block_on(ask(root, addr, req))?);
    }
    let dir = CoordinatorPaths::new(root).dir;
    let started = Instant::now();
    let mut unreachable: Option<AdminError> = None;
    loop {
        if state::coordinator_running(&dir) {
            // Its address appears once it listens.
            if let Some(addr) = admin::coordinator_addr(root, None)? {
                // A coordinator stopping (or replaced) while it is asked is
                // not waited for: the request goes to what comes next.
                let answer = rt.block_on(async {
                    tokio::select! {
                        r = ask(root, &addr, req.clone()) => Some(r),
                        () = gone(root, &dir, &addr) => None,
                    }
                });
                match answer {
                    Some(Ok(resp)) => return online(resp),
                    Some(Err(e @ AdminError::Unreachable { .. })) => unreachable = Some(e),
                    // Cut off: a coordinator stopping goes away within
                    // seconds, and the request goes to what comes next.
                    Some(Err(
                        e @ (AdminError::ShuttingDown
                        | AdminError::Wire(_)
                        | AdminError::Codec(_)
                        | AdminError::NoAnswer),
                    )) => {
                        let went = rt.block_on(async {
                            tokio::time::timeout(STOPPING_FOR, gone(root, &dir, &addr)).await
                        });
                        if went.is_err() {
                            return Err(e.into());
                        }
                        unreachable = Some(e);
                    }
                    Some(Err(e)) => return Err(e.into()),
                    None => {}
                }
            }
        } else {
            match state::offline(&dir, access == Offline::Write) {
                Ok(store) => return offline(&*store),
                // A coordinator took it just now: ask that one.
                Err(StateError::Busy { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        if started.elapsed() > WAIT_FOR_COORDINATOR {
            return Err(match unreachable {
                Some(e) => e.into(),
                None => anyhow::anyhow!(
                    "the coordinator is running but its address is unknown; pass --coordinator HOST:PORT"
                ),
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether the coordinator that listened at `addr` still runs there.
fn still_there(root: &Path, dir: &Path, addr: &str) -> bool {
    state::coordinator_running(dir)
        && admin::coordinator_addr(root, None)
            .ok()
            .flatten()
            .is_some_and(|a| a == addr)
}

/// Resolves once the coordinator at `addr` stopped or was replaced.
async fn gone(root: &Path, dir: &Path, addr: &str) {
    while still_there(root, dir, addr) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
