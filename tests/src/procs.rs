//! Processes the lab started: found again by their recorded process ids and
//! checked by their command lines before anything is signalled, so a reused
//! pid never makes us kill a process that is not ours.

use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// The command line of `pid`, arguments joined by spaces; `None` if gone.
pub fn cmdline(pid: u32) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    if raw.is_empty() {
        return None;
    }
    let parts: Vec<String> = raw
        .split(|b| *b == 0)
        .filter(|p| !p.is_empty())
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect();
    Some(parts.join(" "))
}

/// True when `pid` exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat_state(&stat) != Some('Z'),
        Err(_) => false,
    }
}

fn stat_state(stat: &str) -> Option<char> {
    // The comm field may hold spaces and parentheses: parse after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().next()?.chars().next()
}

fn stat_ppid(stat: &str) -> Option<u32> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Direct children of `parent`.
pub fn children(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| stat_ppid(&s))
                == Some(parent)
        })
        .collect()
}

fn pid_namespace(pid: u32) -> Option<std::path::PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/ns/pid")).ok()
}

/// The init process of the container run by the systemd-nspawn process
/// `nspawn_pid`: its child in a pid namespace of its own.
pub fn container_leader(nspawn_pid: u32) -> Option<u32> {
    let own = pid_namespace(nspawn_pid)?;
    children(nspawn_pid)
        .into_iter()
        .find(|c| pid_namespace(*c).is_some_and(|ns| ns != own) && alive(*c))
}

/// True when `pid` is alive and its command line contains every one of
/// `needles` (e.g. the program and a directory of ours).
pub fn is_ours(pid: u32, needles: &[&str]) -> bool {
    match cmdline(pid) {
        Some(line) => alive(pid) && needles.iter().all(|n| line.contains(n)),
        None => false,
    }
}

/// Sends `signal` to `pid`; a process already gone is fine.
pub fn signal(pid: u32, signal: Signal) {
    let _ = kill(Pid::from_raw(pid as i32), signal);
}

/// Waits until `pid` is gone or `timeout` passes; true when gone.
pub fn wait_gone(pid: u32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if !alive(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    !alive(pid)
}

/// Stops a process of ours: SIGTERM, then SIGKILL after `grace`.
pub fn terminate(pid: u32, grace: Duration) {
    signal(pid, Signal::SIGTERM);
    if !wait_gone(pid, grace) {
        signal(pid, Signal::SIGKILL);
        wait_gone(pid, Duration::from_secs(5));
    }
}

/// The path as text, for matching command lines.
pub fn path_text(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_survive_odd_process_names() {
        let stat = "1234 (a) b (c) S 77 1234 1234 0 -1";
        assert_eq!(stat_state(stat), Some('S'));
        assert_eq!(stat_ppid(stat), Some(77));
    }

    #[test]
    fn our_own_children_are_found_and_recognised() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let me = std::process::id();
        assert!(children(me).contains(&child.id()));
        // Until the child has exec'd, its command line is this test's.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !is_ours(child.id(), &["sleep", "30"]) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(is_ours(child.id(), &["sleep", "30"]));
        assert!(!is_ours(child.id(), &["sleep", "/var/lib/seaport-lab"]));
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!alive(child.id()));
    }
}
