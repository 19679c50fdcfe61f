//! The `seaport-lab` CLI as a person uses it: `up` returns with hosts left
//! running, `status` and `exec` find them, `down` removes them; and after a
//! run whose owner was killed, `down --leftovers` removes every leftover.
//! Needs root, systemd-nspawn and debootstrap (see docs/lab.md).

use std::process::{Command, Output};

use seaport_lab::names::LabPaths;
use seaport_lab::state::{self, RunRecord};
use seaport_lab::{lab, procs};

fn seaport_lab(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_seaport-lab"))
        .args(args)
        .output()
        .expect("run seaport-lab")
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn links() -> String {
    String::from_utf8(
        Command::new("ip")
            .args(["-o", "link"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
}

/// The record of the run whose id `up` printed.
fn record_of(up: &Output) -> RunRecord {
    let out = String::from_utf8_lossy(&up.stdout);
    let id = out
        .split_whitespace()
        .find(|w| w.starts_with("spl-") && w.len() == 10)
        .unwrap_or_else(|| panic!("no run id in `up` output: {}", text(up)));
    let (_, dir) = state::run_dirs(&LabPaths::from_env())
        .into_iter()
        .find(|(r, _)| r.as_str() == id)
        .expect("the run is recorded");
    RunRecord::load(&dir).unwrap()
}

fn assert_gone(rec: &RunRecord) {
    assert!(
        !links().contains(&format!(" {}:", rec.bridge)),
        "bridge {} remains",
        rec.bridge
    );
    let paths = LabPaths::from_env();
    assert!(!paths.run_dir(&rec.id).exists(), "run dir remains");
    assert!(
        !paths.keeper_log(&rec.id).exists(),
        "the keeper's log remains"
    );
    for h in &rec.hosts {
        if let Some(pid) = h.nspawn_pid {
            assert!(!procs::alive(pid), "{} still runs", h.name);
        }
    }
    assert!(!procs::alive(rec.owner_pid) || !procs::is_ours(rec.owner_pid, &["keep"]));
}

// One test, so the two labs do not queue behind each other's lock in turns.
/// The tests of this file take turns: a lab brought up by one would clean
/// up the other's deliberately killed run before `down --leftovers` could show it.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn up_status_exec_down_and_down_leftovers_after_a_killed_run() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    if let Err(e) = lab::preflight() {
        panic!("the lab tests cannot run here: {e}");
    }
    let up = seaport_lab(&["up", "--hosts", "2"]);
    assert!(up.status.success(), "{}", text(&up));
    let rec = record_of(&up);
    assert_eq!(rec.hosts.len(), 2);
    assert!(
        procs::alive(rec.owner_pid),
        "the lab is kept running after `up` returns"
    );

    let status = seaport_lab(&["status"]);
    let s = text(&status);
    assert!(status.status.success(), "{s}");
    for h in &rec.hosts {
        assert!(s.contains(&h.name) && s.contains(&h.ip.to_string()), "{s}");
    }
    assert!(s.contains("running"), "{s}");

    let exec = seaport_lab(&[
        "exec",
        &rec.hosts[1].name,
        "--",
        "sh",
        "-c",
        "hostname; echo oops >&2; exit 4",
    ]);
    assert_eq!(exec.status.code(), Some(4), "{}", text(&exec));
    assert_eq!(
        String::from_utf8_lossy(&exec.stdout).trim(),
        rec.hosts[1].name
    );
    assert_eq!(String::from_utf8_lossy(&exec.stderr).trim(), "oops");

    let unknown = seaport_lab(&["exec", "no-such-host", "--", "true"]);
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no host no-such-host"));

    let down = seaport_lab(&["down", rec.id.as_str()]);
    assert!(down.status.success(), "{}", text(&down));
    assert_gone(&rec);

    // A run whose owner is killed leaves hosts behind; `down --leftovers`
    // removes them (and no live lab: `--all` would also end labs `up` keeps,
    // like the quick start's).
    let up = seaport_lab(&["up", "--hosts", "1"]);
    assert!(up.status.success(), "{}", text(&up));
    let rec = record_of(&up);
    procs::signal(rec.owner_pid, nix::sys::signal::Signal::SIGKILL);
    assert!(procs::wait_gone(
        rec.owner_pid,
        std::time::Duration::from_secs(10)
    ));
    let nspawn = rec.hosts[0].nspawn_pid.unwrap();
    assert!(procs::alive(nspawn), "the host outlives its killed owner");
    let all = seaport_lab(&["down", "--leftovers"]);
    assert!(all.status.success(), "{}", text(&all));
    assert!(
        String::from_utf8_lossy(&all.stdout).contains(&format!("removed run {}", rec.id)),
        "{}",
        text(&all)
    );
    assert_gone(&rec);
}

// The README's quick start: a lab of 3 hosts with agents enrolled.
#[test]
fn up_with_agents_prints_the_coordinator_and_online_nodes() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    if let Err(e) = lab::preflight() {
        panic!("the lab tests cannot run here: {e}");
    }
    let bins =
        seaport_lab::seaport::Binaries::build_for_tests().expect("build seaport and seaport-agent");
    let up = Command::new(env!("CARGO_BIN_EXE_seaport-lab"))
        .args(["up", "--hosts", "3", "--agents"])
        .env("SEAPORT_BIN_DIR", bins.seaport.parent().unwrap())
        .output()
        .unwrap();
    let rec = record_of(&up);
    let out = text(&up);
    assert!(up.status.success(), "{out}");
    let coordinator = rec.coordinator.clone().expect("a coordinator is recorded");
    assert!(
        out.contains(&format!("coordinator {}:7443", rec.gateway)),
        "{out}"
    );
    for h in &rec.hosts {
        assert!(
            out.lines()
                .any(|l| l.contains(&h.name) && l.contains("online")),
            "{} not shown online: {out}",
            h.name
        );
    }
    let nodes = seaport_lab::seaport::nodes(&bins, &coordinator.root).unwrap();
    assert_eq!(
        nodes.iter().filter(|n| n.status == "online").count(),
        3,
        "{nodes:?}"
    );

    let down = seaport_lab(&["down", rec.id.as_str()]);
    assert!(down.status.success(), "{}", text(&down));
    assert!(
        !procs::is_ours(coordinator.pid, &["coordinator", "serve"]),
        "the coordinator still runs"
    );
    assert_gone(&rec);
}
