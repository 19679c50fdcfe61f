//! What the coordinator's integration tests share: the `seaport` binary
//! with a root of its own, its output as text, and waiting for a
//! coordinator to listen.

#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

/// The `seaport` binary under test with `--root root` (and no root from
/// the environment).
pub(crate) fn seaport(root: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_seaport"));
    c.arg("--root").arg(root).env_remove("SEAPORT_ROOT");
    c
}

/// stdout then stderr, as text.
pub(crate) fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs `cmd`, which must succeed; its stdout.
pub(crate) fn ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{:?}: {}", cmd, text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Waits until the coordinator `child` says (in its serve info) that it
/// listens; false when it exited first or did not within `limit`.
pub(crate) fn listening(root: &Path, child: &mut Child, limit: Duration) -> bool {
    let info = root.join("coordinator/serve.json");
    let started = Instant::now();
    while started.elapsed() < limit {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        let ours = std::fs::read_to_string(&info)
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .is_some_and(|v| v["pid"].as_u64() == Some(u64::from(child.id())));
        if ours {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}
