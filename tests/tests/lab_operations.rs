//! The lab on its own: hosts boot with real systemd on the bridge, and every
//! operation a test relies on does what it says; nothing is left behind.
//! Needs root, systemd-nspawn and debootstrap (see docs/lab.md).

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use seaport_lab::{lab, procs, wait, Lab, Shape};

fn require_lab() {
    if let Err(e) = lab::preflight() {
        panic!("the lab tests cannot run here: {e}");
    }
}

/// A tiny HTTP server on the bridge address, answering `body`.
fn serve_on_gateway(gateway: std::net::Ipv4Addr, body: &'static str) -> (u16, Arc<AtomicBool>) {
    let listener = TcpListener::bind((gateway, 0)).expect("bind on the lab bridge");
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    std::thread::spawn(move || {
        while !stop2.load(Ordering::SeqCst) {
            match listener.accept() {
                Ok((mut s, _)) => {
                    s.set_nonblocking(false).unwrap();
                    let mut buf = [0u8; 1024];
                    let _ = s.read(&mut buf);
                    let _ = write!(
                        s,
                        "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    });
    (port, stop)
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

fn mounts() -> String {
    std::fs::read_to_string("/proc/self/mountinfo").unwrap()
}

struct Traces {
    bridge: String,
    run_dir: PathBuf,
    nspawn: Vec<u32>,
}

fn traces(lab: &Lab) -> Traces {
    Traces {
        bridge: lab.bridge(),
        run_dir: lab.run_dir().to_path_buf(),
        nspawn: lab
            .record()
            .hosts
            .iter()
            .filter_map(|h| h.nspawn_pid)
            .collect(),
    }
}

fn assert_gone(t: &Traces) {
    assert!(
        !links().contains(&format!(" {}:", t.bridge)),
        "bridge {} still exists",
        t.bridge
    );
    assert!(!t.run_dir.exists(), "{} still exists", t.run_dir.display());
    let dir = t.run_dir.to_string_lossy().into_owned();
    assert!(!mounts().contains(&dir), "mounts under {dir} remain");
    for pid in &t.nspawn {
        assert!(!procs::alive(*pid), "systemd-nspawn {pid} still runs");
    }
}

#[test]
fn hosts_boot_and_every_operation_works() {
    require_lab();
    let lab = Lab::up(2).expect("bring up a lab of 2 hosts");
    let (h1, h2) = (lab.host(0), lab.host(1));

    // Real systemd, own names and addresses on the bridge.
    let (ip1, ip2) = (
        lab.slot().host_ip(0).to_string(),
        lab.slot().host_ip(1).to_string(),
    );
    for (h, ip) in [(h1, ip1.as_str()), (h2, ip2.as_str())] {
        let state = h.exec_ok(&["systemctl", "is-system-running"]).unwrap();
        assert_eq!(
            state.stdout.trim(),
            "running",
            "{}: {}",
            h.name(),
            state.stderr
        );
        assert_eq!(h.exec_ok(&["hostname"]).unwrap().stdout.trim(), h.name());
        let addr = h
            .exec_ok(&["ip", "-4", "-o", "addr", "show", "host0"])
            .unwrap();
        let cidr = format!("{ip}/{}", seaport_lab::names::PREFIX_LEN);
        assert!(addr.stdout.contains(&cidr), "{}", addr.stdout);
        assert_eq!(h.ip().to_string(), ip);
        // cloud-init is installed but disabled unless asked for; sshd is not enabled.
        assert!(h
            .exec_ok(&["test", "-f", "/etc/cloud/cloud-init.disabled"])
            .is_ok());
        assert!(h.exec_ok(&["test", "-x", "/usr/bin/cloud-init"]).is_ok());
        assert!(h.exec_ok(&["test", "-x", "/usr/sbin/sshd"]).is_ok());
        assert_ne!(
            h.exec(&["systemctl", "is-enabled", "ssh"])
                .unwrap()
                .stdout
                .trim(),
            "enabled"
        );
    }
    let id1 = h1.exec_ok(&["cat", "/etc/machine-id"]).unwrap().stdout;
    let id2 = h2.exec_ok(&["cat", "/etc/machine-id"]).unwrap().stdout;
    assert_ne!(id1, id2, "hosts share a machine id");

    // Exit code, stdout and stderr come back separately.
    let out = h1.sh("echo out; echo err >&2; exit 7").unwrap();
    assert_eq!(
        (out.code, out.stdout.as_str(), out.stderr.as_str()),
        (7, "out\n", "err\n")
    );

    // Copy a file in, with its mode.
    let local = tempfile::NamedTempFile::new().unwrap();
    let content = format!("payload {}\n", lab.id());
    std::fs::write(local.path(), &content).unwrap();
    h2.copy_in(local.path(), "/opt/lab-test/payload.txt", 0o640)
        .unwrap();
    assert_eq!(
        h2.exec_ok(&["cat", "/opt/lab-test/payload.txt"])
            .unwrap()
            .stdout,
        content
    );
    assert_eq!(
        h2.exec_ok(&["stat", "-c", "%a", "/opt/lab-test/payload.txt"])
            .unwrap()
            .stdout
            .trim(),
        "640"
    );
    assert!(
        h1.exec(&["test", "-e", "/opt/lab-test/payload.txt"])
            .unwrap()
            .code
            != 0
    );

    // The journal shows what a unit in the host logged.
    let mark = format!("lab-mark-{}", lab.id());
    h1.exec_ok(&["systemd-run", "--unit=lab-mark", "--wait", "echo", &mark])
        .unwrap();
    wait::until(
        "the mark in the journal",
        Duration::from_secs(20),
        Duration::from_millis(200),
        || {
            let j = h1.journal(Some("lab-mark")).map_err(|e| e.to_string())?;
            if j.contains(&mark) {
                Ok(())
            } else {
                Err(j)
            }
        },
    )
    .unwrap();

    // Hosts reach the machine side of the bridge, and each other.
    let (port, stop) = serve_on_gateway(lab.gateway(), "hello from the machine");
    let url = format!("http://{}:{port}/", lab.gateway());
    let fetch = |h: &seaport_lab::Host| h.exec(&["curl", "-sS", "--max-time", "3", &url]).unwrap();
    assert_eq!(fetch(h1).stdout, "hello from the machine");
    let neighbour = h1
        .exec(&[
            "bash",
            "-c",
            &format!("exec 3<>/dev/tcp/{ip2}/9; echo reached"),
        ])
        .unwrap();
    // Port 9 is closed on h2: a refused connection proves h2 answered.
    assert!(
        neighbour.stderr.contains("refused"),
        "h1 cannot reach h2: {neighbour:?}"
    );

    // Cut the link: nothing gets through; restore it: traffic flows again.
    h1.cut_link().unwrap();
    assert_ne!(fetch(h1).code, 0, "traffic passed a cut link");
    assert_eq!(
        fetch(h2).stdout,
        "hello from the machine",
        "cutting h1 affected h2"
    );
    h1.restore_link().unwrap();
    wait::until(
        "h1's link back",
        Duration::from_secs(20),
        Duration::from_millis(200),
        || {
            let o = fetch(h1);
            if o.success() {
                Ok(())
            } else {
                Err(o.stderr)
            }
        },
    )
    .unwrap();
    stop.store(true, Ordering::SeqCst);

    // Shape the link: tbf with the rate on both ends; unshape removes it.
    h2.shape_link(&Shape::mbit(20)).unwrap();
    let veth = h2.machine_veth().unwrap();
    let q = seaport_lab::net::qdisc(&veth, None).unwrap();
    assert!(q.contains("tbf") && q.contains("rate 20Mbit"), "{q}");
    let inside = h2
        .exec_ok(&["tc", "qdisc", "show", "dev", "host0"])
        .unwrap()
        .stdout;
    assert!(
        inside.contains("tbf") && inside.contains("rate 20Mbit"),
        "{inside}"
    );
    h2.unshape_link().unwrap();
    assert!(!seaport_lab::net::qdisc(&veth, None)
        .unwrap()
        .contains("tbf"));

    // Reboot: a new boot, the disk survives, name and address come back.
    h2.write_file("/var/lib/lab-test/persist", b"kept\n", 0o644)
        .unwrap();
    let boot_before = h2
        .exec_ok(&["cat", "/proc/sys/kernel/random/boot_id"])
        .unwrap()
        .stdout;
    let state = h2.reboot(Duration::from_secs(120)).unwrap();
    assert_eq!(state, "running");
    assert_eq!(h2.boots(), 2);
    let boot_after = h2
        .exec_ok(&["cat", "/proc/sys/kernel/random/boot_id"])
        .unwrap()
        .stdout;
    assert_ne!(boot_before, boot_after, "the host did not boot again");
    assert_eq!(
        h2.exec_ok(&["cat", "/var/lib/lab-test/persist"])
            .unwrap()
            .stdout,
        "kept\n"
    );
    let addr = h2
        .exec_ok(&["ip", "-4", "-o", "addr", "show", "host0"])
        .unwrap();
    assert!(
        addr.stdout
            .contains(&format!("{ip2}/{}", seaport_lab::names::PREFIX_LEN)),
        "{}",
        addr.stdout
    );

    // What is running, as the record shows it.
    let rec = lab.record();
    assert_eq!(rec.hosts.len(), 2);
    assert!(rec
        .hosts
        .iter()
        .all(|h| h.nspawn_pid.is_some_and(procs::alive)));

    let t = traces(&lab);
    lab.down().expect("tear down");
    assert_gone(&t);
}

#[test]
fn a_panicking_test_still_cleans_up() {
    require_lab();
    let seen: Arc<std::sync::Mutex<Option<Traces>>> = Arc::default();
    let seen2 = seen.clone();
    let result = std::panic::catch_unwind(move || {
        let lab = Lab::up(1).expect("bring up a lab of 1 host");
        *seen2.lock().unwrap() = Some(traces(&lab));
        panic!("a test failing with a lab up");
    });
    assert!(result.is_err());
    let t = seen.lock().unwrap().take().expect("the lab came up");
    assert_gone(&t);
}
