//! End to end on 2 lab hosts (master0 and a worker) with the docker variant
//! of the test image, installed from a Clusterfile whose
//! `localRegistry` sets `username` and `password`:
//!
//! - the registry asks for them: an anonymous `docker pull` of the bundled
//!   image from `sea.hub:5000` is refused on both hosts (the worker's goes
//!   through its node-local balancer), while docker's own pull, with the
//!   credentials the install wrote to root's `config.json`, works;
//! - the worker's balancer checks its registry backend with `GET /v2/`
//!   and counts the registry's 401 as up;
//! - the password is in no output of `seaport apply` or `seaport status`
//!   (text and JSON), in no line of the coordinator's log or the hosts'
//!   journals, and not in the registry's htpasswd (a bcrypt hash); the
//!   credentials files are 0600;
//! - `seaport delete --all --prune` removes the credentials files.
//!
//! Needs what tests/tests/run.rs's docker case needs.

use seaport_lab::checks::Phases;
use seaport_lab::testimage::{self, TestRuntime, BUNDLED_IMAGE};
use seaport_lab::{runs, Host};

const CLUSTER: &str = "lab";
const USER: &str = "puller";
/// Distinctive, so a search for it finds nothing else.
const PASSWORD: &str = "Reg1stry-pw-7QxK";

fn clusterfile(image: &str, master: &str, worker: &str) -> String {
    testimage::registry_clusterfile(
        CLUSTER,
        image,
        master,
        worker,
        &format!("      username: {USER}\n      password: {PASSWORD}\n"),
    )
}

/// `docker pull` of the bundled image from the local registry by its name,
/// with docker's config directory at `config` (None: root's).
fn docker_pull(h: &Host, config: Option<&str>) -> (bool, String) {
    let image = BUNDLED_IMAGE.replace("docker.io/", "sea.hub:5000/");
    let _ = h.exec(&["docker", "rmi", "-f", &image]);
    let mut argv = vec!["env"];
    let env;
    if let Some(c) = config {
        env = format!("DOCKER_CONFIG={c}");
        argv.push(&env);
    }
    argv.extend(["docker", "pull", &image]);
    let out = h.exec(&argv).unwrap();
    (out.success(), format!("{}{}", out.stdout, out.stderr))
}

#[test]
fn a_local_registry_with_username_and_password_refuses_anonymous_pulls_and_never_shows_the_password(
) {
    let mut phases = Phases::start();
    let testimage::Prepared {
        bins,
        tmp,
        image,
        root,
    } = testimage::prepare_with(TestRuntime::Docker);
    phases.done("build binaries and the docker test image");
    let lab = seaport_lab::Lab::up(2).expect("bring up a lab of 2 hosts");
    let (mut coordinator, _nodes) =
        runs::enroll_all(&lab, &bins, &root).expect("enroll the agents");
    phases.done("lab up, agents enrolled");
    let (m0, n1) = (lab.host(0), lab.host(1));
    let file = tmp.path().join("Clusterfile");
    std::fs::write(
        &file,
        clusterfile(&image.name, &m0.ip().to_string(), &n1.ip().to_string()),
    )
    .unwrap();
    let (ok, out, err) = bins.seaport_out(&root, &["apply", "-f", file.to_str().unwrap()]);
    assert!(
        ok,
        "seaport apply failed:\n{out}\n{err}\ncoordinator log: {}",
        coordinator.log().display()
    );
    assert!(out.contains("cluster lab: succeeded"), "{out}");
    let mut shown = format!("{out}{err}");
    phases.done("seaport apply with localRegistry username/password");

    // The worker's registry port is up by GET /v2/ (401 answered).
    let wip = n1.ip().to_string();
    let want = format!("{}:5000", m0.ip());
    bins.wait_registry_backend_up(&root, &wip, &want).unwrap();

    for h in [m0, n1] {
        // Anonymous: an empty docker config.
        h.exec_ok(&["mkdir", "-p", "/tmp/anonymous-docker"])
            .unwrap();
        let (ok, out) = docker_pull(h, Some("/tmp/anonymous-docker"));
        assert!(!ok, "{}: an anonymous pull worked: {out}", h.name());
        assert!(
            out.contains("no basic auth credentials") || out.contains("unauthorized"),
            "{}: {out}",
            h.name()
        );
        // docker's own, with what the install configured.
        let (ok, out) = docker_pull(h, None);
        assert!(
            ok,
            "{}: docker pull with the configured credentials: {out}",
            h.name()
        );
        for f in ["/root/.docker/config.json", "/var/lib/kubelet/config.json"] {
            let mode = h.exec_ok(&["stat", "-c", "%a", f]).unwrap().stdout;
            assert_eq!(mode.trim(), "600", "{}: {f}", h.name());
        }
    }
    let htpasswd = m0
        .exec_ok(&["cat", "/var/lib/seaport/data/lab/registry_htpasswd"])
        .unwrap()
        .stdout;
    assert!(
        htpasswd.starts_with(&format!("{USER}:$2")) && !htpasswd.contains(PASSWORD),
        "{htpasswd}"
    );
    phases.done("anonymous pulls refused, the runtime's pulls work");

    // The password shows nowhere a user or an operator reads.
    for args in [vec!["status"], vec!["status", "--json"]] {
        let (_, out, err) = bins.seaport_out(&root, &args);
        shown.push_str(&out);
        shown.push_str(&err);
    }
    assert!(shown.contains(USER) || shown.contains("lab"), "{shown}");
    assert!(
        !shown.contains(PASSWORD),
        "the password in seaport's output:\n{shown}"
    );
    let log = std::fs::read_to_string(coordinator.log()).unwrap();
    assert!(
        !log.contains(PASSWORD),
        "the password in the coordinator's log"
    );
    for h in [m0, n1] {
        let journal = h
            .exec_ok(&["journalctl", "--no-pager", "-o", "cat"])
            .unwrap();
        assert!(
            !journal.stdout.contains(PASSWORD),
            "{}: the password in the host's journal",
            h.name()
        );
    }
    phases.done("the password in no output, log or journal");

    let (ok, out, err) = bins.seaport_out(&root, &["delete", "--all", "--prune", "--yes"]);
    assert!(ok, "seaport delete: {out}{err}");
    for h in [m0, n1] {
        for f in ["/root/.docker/config.json", "/var/lib/kubelet/config.json"] {
            let out = h.exec(&["test", "-e", f]).unwrap();
            assert!(!out.success(), "{}: {f} after delete", h.name());
        }
    }
    phases.done("delete --all --prune removes the credentials");
    coordinator.stop().unwrap();
}
