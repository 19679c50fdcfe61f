//! Only the coordinator keeps its state open: CLI commands run in a tight
//! loop while the coordinator is stopped and started again, and every
//! start succeeds (a command that opened the state a moment before the
//! start is waited for), every command gets its answer (from the state
//! while no coordinator runs, from the coordinator once it holds its
//! lock), and a coordinator that cannot have the state names who holds it.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod common;

use common::{listening, seaport, text};

/// `coordinator serve` on a free loopback port.
fn serve(root: &Path) -> Child {
    seaport(root)
        .args(["coordinator", "serve", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// SIGTERM, then the exit status.
fn stop(child: &mut Child) -> std::process::ExitStatus {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    child.wait().unwrap()
}

#[test]
fn twenty_restarts_under_a_tight_loop_of_cli_calls_all_start_and_every_call_is_answered() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let init = seaport(&root)
        .args(["coordinator", "init"])
        .output()
        .unwrap();
    assert!(init.status.success(), "{}", text(&init));

    let done = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicUsize::new(0));
    let failures: Arc<Mutex<Vec<String>>> = Arc::default();
    let loops: Vec<_> = (0..4)
        .map(|_| {
            let (root, done, calls, failures) =
                (root.clone(), done.clone(), calls.clone(), failures.clone());
            std::thread::spawn(move || {
                while !done.load(Ordering::Relaxed) {
                    let out = seaport(&root).args(["nodes", "--json"]).output().unwrap();
                    calls.fetch_add(1, Ordering::Relaxed);
                    let listed = serde_json::from_slice::<serde_json::Value>(&out.stdout)
                        .is_ok_and(|v| v.is_array());
                    if !out.status.success() || !listed {
                        failures.lock().unwrap().push(text(&out));
                    }
                }
            })
        })
        .collect();

    // At least 20 restarts, and on until the loops made 20 calls between
    // them (a loaded machine answers each call more slowly), at most 60.
    let mut starts = Vec::new();
    for i in 0..60 {
        if i >= 20 && calls.load(Ordering::Relaxed) >= 20 {
            break;
        }
        let mut child = serve(&root);
        let up = listening(&root, &mut child, Duration::from_secs(30));
        // Up long enough for some of the calls to be its.
        std::thread::sleep(Duration::from_millis(300));
        let status = stop(&mut child);
        let mut stderr = String::new();
        if let Some(mut e) = child.stderr.take() {
            use std::io::Read;
            let _ = e.read_to_string(&mut stderr);
        }
        starts.push((i, up, status.success(), stderr));
    }
    done.store(true, Ordering::Relaxed);
    for l in loops {
        l.join().unwrap();
    }

    let failed_starts: Vec<_> = starts.iter().filter(|s| !s.1 || !s.2).collect();
    assert!(
        failed_starts.is_empty(),
        "coordinator starts that failed: {failed_starts:#?}"
    );
    let failures = failures.lock().unwrap();
    assert!(
        failures.is_empty(),
        "{} of {} CLI calls failed, e.g.: {:#?}",
        failures.len(),
        calls.load(Ordering::Relaxed),
        &failures[..failures.len().min(3)]
    );
    assert!(
        calls.load(Ordering::Relaxed) >= 20,
        "the CLI loop ran only {} calls",
        calls.load(Ordering::Relaxed)
    );
}

#[test]
fn a_coordinator_that_cannot_have_the_state_waits_then_names_the_holder() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let init = seaport(root)
        .args(["coordinator", "init"])
        .output()
        .unwrap();
    assert!(init.status.success(), "{}", text(&init));
    // Another process holds the database (as an old tool or a stuck
    // command would), for longer than a coordinator waits.
    let db = root.join("coordinator/state.redb");
    let mut holder = Command::new("flock")
        .arg("--close")
        .arg(&db)
        .args(["sleep", "60"])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    let out = seaport(root)
        .args(["coordinator", "serve", "--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    let waited = started.elapsed();
    let _ = holder.kill();
    let _ = holder.wait();
    let msg = text(&out);
    assert!(!out.status.success(), "{msg}");
    assert!(
        waited >= Duration::from_secs(5),
        "it gave up after {waited:?} instead of waiting"
    );
    assert!(
        msg.contains(&format!("pid {}", holder.id())) && msg.contains("flock"),
        "the error does not name the holder: {msg}"
    );
    // Once it is free, the coordinator starts.
    let mut child = serve(root);
    let up = listening(root, &mut child, Duration::from_secs(30));
    stop(&mut child);
    assert!(up, "the coordinator did not start once the state was free");
}
