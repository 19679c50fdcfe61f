//! What end-to-end tests check on lab hosts and how they time themselves.

use std::time::Instant;

use crate::Host;

/// Prints how long each phase of a test took.
pub struct Phases(Instant);

impl Phases {
    /// Starts timing.
    pub fn start() -> Self {
        Phases(Instant::now())
    }

    /// Prints the phase that just ended and starts the next.
    pub fn done(&mut self, what: &str) {
        eprintln!("phase {what}: {:.1} s", self.0.elapsed().as_secs_f64());
        self.0 = Instant::now();
    }
}

/// What a delete or reset must put back: every path under /etc and /usr
/// with its type, mode and link target, every file's sha256, and systemd's
/// unit files and loaded units.
const SNAPSHOT: &str = r#"set -e
find /etc /usr -xdev -printf '%p %y %m %u:%g %l\n' | LC_ALL=C sort
find /etc /usr -xdev -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum
systemctl list-unit-files --no-legend --no-pager | LC_ALL=C sort
systemctl list-units --all --no-legend --no-pager --plain | grep -v -e '\.scope ' -e '\.mount ' | awk '{print $1, $2, $3}' | LC_ALL=C sort
"#;

/// The host's /etc, /usr and systemd state (see [`diff`]).
pub fn snapshot(h: &Host) -> String {
    h.exec_ok(&["bash", "-c", SNAPSHOT])
        .expect("snapshot of /etc, /usr and units")
        .stdout
}

/// The lines only in `before` (`- `) and only in `after` (`+ `).
pub fn diff(before: &str, after: &str) -> String {
    let b: std::collections::BTreeSet<&str> = before.lines().collect();
    let a: std::collections::BTreeSet<&str> = after.lines().collect();
    let mut out = String::new();
    for l in b.difference(&a) {
        out.push_str(&format!("- {l}\n"));
    }
    for l in a.difference(&b) {
        out.push_str(&format!("+ {l}\n"));
    }
    out
}
