//! The executor against a host root in a temporary directory, with recorded
//! effects: what a host would see, without root.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::effects::{CommandOutput, CommandSpec, Effects, EffectsError, RecordingEffects};
use super::image::tests::{layout_with, tar_of};
use super::*;
use seaport_shared::cluster::{steps_for, ClusterName, Role, Step};

fn name(n: &str) -> ClusterName {
    ClusterName::parse(n).unwrap()
}

fn step(s: &str) -> Step {
    s.parse().unwrap()
}

fn steps(s: &[&str]) -> Vec<Step> {
    s.iter().map(|x| step(x)).collect()
}

/// Recorded effects, plus what `bash init.sh`, kubeadm and the container
/// runtimes would write.
struct Host {
    rec: RecordingEffects,
    root: PathBuf,
    /// `ContainerRuntime` as `init.sh` saw it.
    hook_runtime: std::sync::Mutex<Option<String>>,
    /// `HOME` as `init.sh` saw it.
    hook_home: std::sync::Mutex<Option<String>>,
}

impl Effects for Host {
    fn run(&self, cmd: &CommandSpec) -> Result<CommandOutput, EffectsError> {
        let r = |p: &str| self.root.join(p);
        let starts = |unit: &str| {
            cmd.program == "systemctl"
                && matches!(cmd.args[0].as_str(), "start" | "restart")
                && cmd.args.iter().any(|a| a == unit)
        };
        // What the runtimes make when they start: data, state, docker's key
        // and bridge.
        if starts("containerd.service") {
            fs::create_dir_all(r("var/lib/containerd/io.containerd.content.v1.content")).unwrap();
            fs::create_dir_all(r("run/containerd")).unwrap();
        }
        if starts("docker.service") {
            fs::create_dir_all(r("var/lib/docker/image/vfs")).unwrap();
            fs::write(r("var/lib/docker/image/vfs/repositories.json"), "{}").unwrap();
            fs::create_dir_all(r("run/docker/containerd")).unwrap();
            fs::write(r("etc/docker/key.json"), "{\"kid\":\"k\"}").unwrap();
            fs::create_dir_all(r("sys/class/net/docker0")).unwrap();
        }
        if cmd.program == "ip" && cmd.args == ["link", "delete", "docker0"] {
            fs::remove_dir_all(r("sys/class/net/docker0")).unwrap();
        }
        if cmd.program == "bash" && cmd.args == ["init.sh"] {
            assert_eq!(cmd.env.get("HostIP").map(String::as_str), Some("10.0.0.2"));
            *self.hook_runtime.lock().unwrap() = cmd.env.get("ContainerRuntime").cloned();
            *self.hook_home.lock().unwrap() = cmd.env.get("HOME").cloned();
            fs::create_dir_all(r("etc/sysctl.d")).unwrap();
            fs::write(r("etc/sysctl.d/k8s.conf"), "net.ipv4.ip_forward = 1\n").unwrap();
            fs::write(r("etc/existing.conf"), "changed by the hook\n").unwrap();
            // An image's script rewriting a file the engine installed (the
            // base image's containerd.sh writes its own hosts.toml).
            let mirror = r("etc/containerd/certs.d/sea.hub:5000/hosts.toml");
            if mirror.is_file() {
                fs::write(mirror, "server = \"rewritten by the image\"\n").unwrap();
            }
            // Gone already when the hook runs again (an upgrade).
            let _ = fs::remove_file(r("etc/doomed.conf"));
        }
        if cmd.program.ends_with("kubeadm") && cmd.args.first().is_some_and(|a| a == "join") {
            fs::create_dir_all(r("etc/kubernetes/pki")).unwrap();
            fs::write(r("etc/kubernetes/kubelet.conf"), "kubelet\n").unwrap();
            if cmd.env.get("SEAPORT_ROLE").is_some_and(|r| r == "master") {
                fs::write(r("etc/kubernetes/admin.conf"), ADMIN_CONF).unwrap();
            }
        }
        self.rec.run(cmd)
    }
    fn bind_mount(&self, s: &Path, t: &Path) -> Result<(), EffectsError> {
        self.rec.bind_mount(s, t)
    }
    fn unmount(&self, t: &Path) -> Result<(), EffectsError> {
        self.rec.unmount(t)
    }
    fn is_mounted(&self, t: &Path) -> bool {
        self.rec.is_mounted(t)
    }
    fn mounts_under(&self, dir: &Path) -> Vec<PathBuf> {
        self.rec.mounts_under(dir)
    }
}

/// Every path under `root` with its content (files) or target (symlinks).
fn listing(root: &Path) -> BTreeMap<String, String> {
    walkdir::WalkDir::new(root)
        .into_iter()
        .flatten()
        .map(|e| {
            let rel = e
                .path()
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let v = if e.file_type().is_file() {
                fs::read_to_string(e.path()).unwrap_or_default()
            } else if e.file_type().is_symlink() {
                fs::read_link(e.path())
                    .unwrap()
                    .to_string_lossy()
                    .into_owned()
            } else {
                "<dir>".into()
            };
            (rel, v)
        })
        .collect()
}

/// Resets cluster `c1` with `--prune`; it must warn of nothing.
fn reset_c1(opts: &ApplyOptions, host: &Host) {
    let r = reset(
        &ResetOptions {
            cluster: name("c1"),
            prune: true,
            state_dir: opts.state_dir.clone(),
            data_root: opts.data_root.clone(),
            host_root: opts.host_root.clone(),
            timeout: Duration::from_secs(5),
        },
        host,
    )
    .unwrap();
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
}

/// A host on which no unit is enabled yet.
fn fresh_host(opts: &ApplyOptions) -> Host {
    let host = host_for(opts);
    host.rec.answer(
        "systemctl is-enabled",
        CommandOutput {
            code: Some(1),
            ..CommandOutput::default()
        },
    );
    host
}

/// The test image's files, with `changed` ones replacing or added to them.
fn image_layout(dir: &Path, name: &str, changed: &[(&str, &[u8])]) {
    let mut files: Vec<(&str, &[u8], Option<&str>)> = vec![
        ("bin/kubeadm", b"#!/bin/sh\n", None),
        ("cri/runc", b"new runc\n", None),
        ("etc/containerd.toml", b"version = 2\n", None),
        (
            "etc/kubelet.service",
            b"[Service]\nExecStart=/usr/bin/kubelet\n",
            None,
        ),
        ("etc/10-kubeadm.conf", b"[Service]\n", None),
        (
            "etc/motd.tmpl",
            b"cluster {{ .ClusterName }} at {{ .HostIP }}\n",
            None,
        ),
        ("scripts/init.sh", b"echo init\n", None),
    ];
    for (path, bytes) in changed {
        files.retain(|(p, _, _)| p != path);
        files.push((path, bytes, None));
    }
    layout_with(dir, name, &[tar_of(&files)], &["pod_cidr=10.1.0.0/16"]);
}

/// A host whose systemctl answers success to everything.
fn host_for(opts: &ApplyOptions) -> Host {
    Host {
        rec: RecordingEffects::default(),
        root: opts.host_root.clone(),
        hook_runtime: std::sync::Mutex::new(None),
        hook_home: std::sync::Mutex::new(None),
    }
}

fn fixture() -> (tempfile::TempDir, ApplyOptions) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let host = d.join("host");
    for p in ["etc", "usr/bin", "opt", "var/lib", "run", "sys/class/net"] {
        fs::create_dir_all(host.join(p)).unwrap();
    }
    fs::write(host.join("etc/hosts"), "127.0.0.1 localhost\n").unwrap();
    fs::write(host.join("etc/existing.conf"), "original\n").unwrap();
    fs::write(host.join("etc/doomed.conf"), "doomed\n").unwrap();
    fs::write(host.join("usr/bin/runc"), "old runc\n").unwrap();
    image_layout(&d.join("layout"), "docker.io/library/test:1", &[]);
    let opts = ApplyOptions {
        image: ImageSource::Layout {
            dir: d.join("layout"),
            name: "test:1".into(),
        },
        only: None,
        master0_ip: None,
        cluster: name("c1"),
        role: Role::Node,
        host_ip: Some("10.0.0.2".into()),
        registry_ip: None,
        master_ips: vec![],
        env: vec![],
        host_env: vec![],
        kubeadm_config: None,
        join_data: Some(JoinData {
            api_server_endpoint: "10.0.0.1:6443".into(),
            master0_ip: "10.0.0.1".into(),
            token: "abcdef.0123456789abcdef".into(),
            ca_cert_hashes: vec!["sha256:00".into()],
            certificate_key: "k".into(),
        }),
        join_data_out: None,
        registry_auth: None,
        registry_tls: None,
        state_dir: d.join("state"),
        data_root: d.join("data"),
        host_root: host,
        allow_devices: false,
        allow_setuid: false,
        timeouts: Timeouts::default(),
        upgrade: false,
    };
    (dir, opts)
}

#[test]
fn a_node_is_installed_rerun_skips_everything_and_reset_restores_the_host() {
    let (_dir, opts) = fixture();
    let host = fresh_host(&opts);
    let before = listing(&opts.host_root);
    let mut events = Vec::new();
    let report = apply(&opts, &host, &mut |e| events.push(e.clone())).unwrap();
    assert_eq!(report.ran, steps_for(Role::Node, false, true));
    let h = |p: &str| opts.host_root.join(p);
    assert_eq!(fs::read_to_string(h("usr/bin/runc")).unwrap(), "new runc\n");
    assert!(h("usr/bin/kubeadm").is_file());
    let cfg = fs::read_to_string(h("etc/containerd/config.toml")).unwrap();
    assert!(
        cfg.contains("config_path = \"/etc/containerd/certs.d\""),
        "{cfg}"
    );
    let mirror = fs::read_to_string(h("etc/containerd/certs.d/docker.io/hosts.toml")).unwrap();
    assert!(
        mirror.contains("[host.\"http://sea.hub:5000\"]"),
        "{mirror}"
    );
    let hosts = fs::read_to_string(h("etc/hosts")).unwrap();
    // A worker reaches the registry on master0 and the API servers through
    // its node-local balancer on sealer's VIP, never master0 directly.
    assert!(
        hosts.contains("10.0.0.1 sea.hub\n")
            && hosts.contains("10.103.97.2 apiserver.cluster.local\n")
            && !hosts.contains("10.0.0.1 apiserver.cluster.local"),
        "{hosts}"
    );
    assert!(h("etc/systemd/system/kubelet.service.d/10-kubeadm.conf").is_file());
    assert_eq!(
        fs::read_to_string(opts.rootfs().join("etc/motd")).unwrap(),
        "cluster c1 at 10.0.0.2\n"
    );
    let kubeadm_cfg = fs::read_to_string(opts.cluster_dir().join("kubeadm.yaml")).unwrap();
    assert!(
        kubeadm_cfg.contains("token: abcdef.0123456789abcdef"),
        "{kubeadm_cfg}"
    );
    let calls = host.rec.calls();
    for want in [
        "run systemctl enable containerd.service",
        "run systemctl start containerd.service",
        "run ctr version",
        "run systemctl enable kubelet.service",
        "run bash init.sh",
    ] {
        assert!(calls.iter().any(|c| c == want), "{want} not in {calls:#?}");
    }
    assert!(
        calls.iter().any(|c| c.contains("kubeadm join --config")),
        "{calls:#?}"
    );

    // Again: every step skipped, no effect at all.
    host.rec.clear();
    let again = apply(&opts, &host, &mut |_| {}).unwrap();
    assert!(again.ran.is_empty(), "{:?}", again.ran);
    assert!(host.rec.calls().is_empty(), "{:#?}", host.rec.calls());

    reset_c1(&opts, &host);
    assert_eq!(listing(&opts.host_root), before);
    assert!(!opts.cluster_dir().exists());
    assert!(!Journal::exists(&opts.state_dir, "c1"));
    let calls = host.rec.calls();
    assert!(
        calls.iter().any(|c| c.ends_with("kubeadm reset -f")),
        "{calls:#?}"
    );
    assert!(
        calls
            .iter()
            .any(|c| c == "run systemctl disable containerd.service"),
        "{calls:#?}"
    );
}

/// The admin kubeconfig the fake kubeadm writes on a joining master.
const ADMIN_CONF: &str = "apiVersion: v1\nkind: Config\nusers:\n- name: kubernetes-admin\n";

#[test]
fn a_master_gets_root_kubeconfig_0600_and_commands_run_with_root_home() {
    use std::os::unix::fs::PermissionsExt;
    for had_own in [false, true] {
        let (_dir, mut opts) = fixture();
        opts.role = Role::Master;
        opts.master0_ip = Some("10.0.0.1".into());
        let h = |p: &str| opts.host_root.join(p);
        if had_own {
            fs::create_dir_all(h("root/.kube")).unwrap();
            fs::write(h("root/.kube/config"), "the host's own\n").unwrap();
        }
        let host = fresh_host(&opts);
        let before = listing(&opts.host_root);
        apply(&opts, &host, &mut |_| {}).unwrap();
        let kubeconfig = h("root/.kube/config");
        assert_eq!(fs::read_to_string(&kubeconfig).unwrap(), ADMIN_CONF);
        let mode = fs::metadata(&kubeconfig).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{mode:o}");
        assert_eq!(host.hook_home.lock().unwrap().as_deref(), Some("/root"));
        reset_c1(&opts, &host);
        assert_eq!(listing(&opts.host_root), before, "had its own: {had_own}");
        if had_own {
            assert_eq!(fs::read_to_string(&kubeconfig).unwrap(), "the host's own\n");
        } else {
            assert!(!h("root/.kube").exists());
        }
    }
}

#[test]
fn a_worker_gets_no_root_kubeconfig() {
    let (_dir, opts) = fixture();
    let host = fresh_host(&opts);
    apply(&opts, &host, &mut |_| {}).unwrap();
    assert!(!opts.host_root.join("root/.kube/config").exists());
}

#[test]
fn a_joining_master_names_master0_as_the_api_server_until_it_joined_then_itself() {
    let (_dir, mut opts) = fixture();
    opts.role = Role::Master;
    opts.env = vec![("APIServerVIP".into(), "127.0.0.1".into())];
    let host = fresh_host(&opts);
    let before = listing(&opts.host_root);
    let hosts = || fs::read_to_string(opts.host_root.join("etc/hosts")).unwrap();
    let api_lines = |text: &str| -> Vec<String> {
        text.lines()
            .filter(|l| l.ends_with(" apiserver.cluster.local"))
            .map(String::from)
            .collect()
    };
    opts.only = Some(steps(&["rootfs", "render", "runtime", "registry-access"]));
    apply(&opts, &host, &mut |_| {}).unwrap();
    assert_eq!(api_lines(&hosts()), ["10.0.0.1 apiserver.cluster.local"]);
    opts.only = None;
    apply(&opts, &host, &mut |_| {}).unwrap();
    let calls = host.rec.calls();
    assert!(
        calls.iter().any(|c| c.contains("kubeadm join --config")),
        "{calls:#?}"
    );
    // Joined: its own API server, master0's line gone (the balancer's
    // address is for workers only).
    assert_eq!(api_lines(&hosts()), ["10.0.0.2 apiserver.cluster.local"]);
    assert!(drift(&opts.state_dir, &opts.host_root, &name("c1"))
        .unwrap()
        .modified
        .is_empty());
    // A rerun of the steps that name hosts keeps it pointing at itself.
    let journal = opts.state_dir.join("journal/c1/journal.json");
    let text = fs::read_to_string(&journal).unwrap();
    fs::write(
        &journal,
        text.replace("\"registry-access\"", "\"registry-access-old\""),
    )
    .unwrap();
    apply(&opts, &host, &mut |_| {}).unwrap();
    assert_eq!(api_lines(&hosts()), ["10.0.0.2 apiserver.cluster.local"]);
    reset_c1(&opts, &host);
    assert_eq!(listing(&opts.host_root), before);
}

#[test]
fn an_interrupted_kubeadm_step_is_reset_before_it_runs_again() {
    let (_dir, opts) = fixture();
    let host = host_for(&opts);
    apply(&opts, &host, &mut |_| {}).unwrap();
    // As if the agent died while kubeadm ran.
    let mut j = Journal::open(&opts.state_dir, "c1").unwrap();
    j.update(|s| s.steps.get_mut("kubeadm").unwrap().status = StepStatus::Running)
        .unwrap();
    host.rec.clear();
    let mut events = Vec::new();
    let report = apply(&opts, &host, &mut |e| events.push(e.clone())).unwrap();
    assert_eq!(report.ran, steps(&["kubeadm"]));
    assert!(events.contains(&StepEvent::Started {
        step: "kubeadm".into(),
        attempt: 2
    }));
    let calls = host.rec.calls();
    let reset_at = calls
        .iter()
        .position(|c| c.ends_with("kubeadm reset -f"))
        .unwrap();
    let join_at = calls
        .iter()
        .position(|c| c.contains("kubeadm join"))
        .unwrap();
    assert!(reset_at < join_at, "{calls:#?}");
}

#[test]
fn a_failing_hook_fails_its_step_with_the_output_tail_and_a_rerun_retries_it() {
    let (_dir, opts) = fixture();
    let host = host_for(&opts);
    host.rec.answer(
        "bash init.sh",
        CommandOutput {
            code: Some(3),
            timed_out: false,
            tail: "line one\nswap is on\n".into(),
        },
    );
    let err = apply(&opts, &host, &mut |_| {}).unwrap_err().to_string();
    assert!(
        err.contains("hook-init") && err.contains("exited with 3") && err.contains("swap is on"),
        "{err}"
    );
    let j = Journal::open(&opts.state_dir, "c1").unwrap();
    assert_eq!(j.state().steps["hook-init"].status, StepStatus::Failed);
    assert_eq!(j.state().steps["runtime"].status, StepStatus::Done);
}

#[test]
fn joining_without_join_data_says_what_to_give() {
    let (_dir, mut opts) = fixture();
    opts.join_data = None;
    let err = apply(&opts, &RecordingEffects::default(), &mut |_| {}).unwrap_err();
    assert!(err.to_string().contains("--join-data"), "{err}");
}

#[test]
fn phases_run_their_steps_only_and_in_order() {
    let (_dir, mut opts) = fixture();
    let host = fresh_host(&opts);
    // Before master0 has run kubeadm init there is no join data: the early
    // phases of a worker need only master0's address.
    let join = opts.join_data.take();
    opts.master0_ip = Some("10.0.0.1".into());

    // A later phase before an earlier one: refused, nothing run.
    opts.only = Some(vec![step("runtime")]);
    let err = apply(&opts, &host, &mut |_| {}).unwrap_err().to_string();
    assert!(err.contains("step rootfs has not run"), "{err}");
    assert!(host.rec.calls().is_empty(), "{:?}", host.rec.calls());

    opts.only = Some(vec![step("rootfs"), step("render")]);
    let report = apply(&opts, &host, &mut |_| {}).unwrap();
    assert_eq!(report.ran, steps(&["rootfs", "render"]));
    assert!(opts.rootfs().join("etc/motd").is_file());
    assert!(host.rec.calls().is_empty(), "{:?}", host.rec.calls());

    opts.only = Some(vec![step("runtime")]);
    let report = apply(&opts, &host, &mut |_| {}).unwrap();
    assert_eq!(report.ran, steps(&["runtime"]));
    assert!(host
        .rec
        .calls()
        .iter()
        .any(|c| c == "run systemctl start containerd.service"));
    // The registry's name is known before the runtime's first lookup.
    let hosts = || fs::read_to_string(opts.host_root.join("etc/hosts")).unwrap();
    assert!(hosts().contains("10.0.0.1 sea.hub\n"), "{}", hosts());

    // kubeadm without join data: a clear error.
    opts.only = Some(vec![
        step("registry-access"),
        step("kube-binaries"),
        step("hook-init"),
        step("hook-init-kube"),
    ]);
    apply(&opts, &host, &mut |_| {}).unwrap();
    assert_eq!(hosts().matches("sea.hub").count(), 1, "{}", hosts());
    opts.only = Some(vec![step("kubeadm")]);
    let err = apply(&opts, &host, &mut |_| {}).unwrap_err().to_string();
    assert!(err.contains("join data"), "{err}");
    opts.join_data = join;
    let report = apply(&opts, &host, &mut |_| {}).unwrap();
    assert_eq!(report.ran, steps(&["kubeadm"]));

    // Unknown steps are named.
    opts.only = Some(vec![step("registry")]);
    let err = apply(&opts, &host, &mut |_| {}).unwrap_err().to_string();
    assert!(
        err.contains("\"registry\" is not a step of a node"),
        "{err}"
    );

    // Everything again: all skipped.
    opts.only = None;
    let report = apply(&opts, &host, &mut |_| {}).unwrap();
    assert!(report.ran.is_empty(), "{:?}", report.ran);
}

#[test]
fn an_upgrade_updates_what_changed_without_kubeadm_and_reset_still_restores_the_host() {
    let (dir, opts) = fixture();
    let host = fresh_host(&opts);
    let before = listing(&opts.host_root);
    apply(&opts, &host, &mut |_| {}).unwrap();
    let unit = opts.host_root.join("etc/systemd/system/kubelet.service");
    assert_eq!(
        fs::read_to_string(&unit).unwrap(),
        "[Service]\nExecStart=/usr/bin/kubelet\n"
    );

    image_layout(
        &dir.path().join("layout2"),
        "docker.io/library/test:2",
        &[(
            "etc/kubelet.service",
            b"[Service]\nExecStart=/usr/bin/kubelet --v=2\n",
        )],
    );
    let mut up = opts.clone();
    up.image = ImageSource::Layout {
        dir: dir.path().join("layout2"),
        name: "test:2".into(),
    };
    host.rec.clear();
    let err = apply(&up, &host, &mut |_| {}).unwrap_err().to_string();
    assert!(
        err.contains("reset it first") && err.contains("as an upgrade"),
        "{err}"
    );
    assert!(host.rec.calls().is_empty(), "{:?}", host.rec.calls());

    up.upgrade = true;
    let mut events = Vec::new();
    let report = apply(&up, &host, &mut |e| events.push(e.clone())).unwrap();
    let mut expected = steps_for(Role::Node, false, true);
    expected.retain(|s| *s != Step::Kubeadm);
    assert_eq!(report.ran, expected);
    assert_eq!(report.skipped, steps(&["kubeadm"]));
    assert_eq!(
        fs::read_to_string(&unit).unwrap(),
        "[Service]\nExecStart=/usr/bin/kubelet --v=2\n"
    );
    assert!(opts.rootfs().join("etc/motd").is_file());
    let calls = host.rec.calls();
    assert!(!calls.iter().any(|c| c.contains("kubeadm")), "{calls:#?}");
    for want in [
        "run systemctl restart containerd.service",
        "run systemctl try-restart kubelet.service",
    ] {
        assert!(calls.iter().any(|c| c == want), "{want} not in {calls:#?}");
    }
    let j = Journal::open(&opts.state_dir, "c1").unwrap();
    assert_eq!(j.state().image, up.image.open().unwrap().digest.to_string());

    // The same upgrade again: nothing to do.
    host.rec.clear();
    let again = apply(&up, &host, &mut |_| {}).unwrap();
    assert!(again.ran.is_empty(), "{:?}", again.ran);
    assert!(host.rec.calls().is_empty(), "{:#?}", host.rec.calls());

    reset_c1(&opts, &host);
    assert_eq!(listing(&opts.host_root), before);
    assert!(!opts.cluster_dir().exists());
}

/// A registry stand-in answering `GET /v2/` on a free local port.
fn answering_registry() -> u16 {
    use std::io::Write;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let _ = conn.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n");
        }
    });
    port
}

#[test]
fn an_upgrade_of_the_registry_host_remounts_the_new_storage_and_restarts_the_registry() {
    let (dir, mut opts) = fixture();
    let port = answering_registry().to_string();
    opts.role = Role::Master0;
    opts.join_data = None;
    opts.env = vec![("registry_port".into(), port)];
    let files: &[(&str, &[u8])] = &[("bin/registry", b"#!/bin/sh\n")];
    image_layout(
        &dir.path().join("layout"),
        "docker.io/library/test:1",
        files,
    );
    opts.image = ImageSource::Layout {
        dir: dir.path().join("layout"),
        name: "test:1".into(),
    };
    let host = fresh_host(&opts);
    let phase = |only: &[&str]| Some(steps(only));
    opts.only = phase(&["rootfs", "render", "runtime", "registry"]);
    apply(&opts, &host, &mut |_| {}).unwrap();
    let mount = opts.cluster_dir().join("registry");
    let storage = opts.rootfs().join("registry");
    let mount_call = format!("mount {} {}", storage.display(), mount.display());
    assert!(
        host.rec.calls().contains(&mount_call),
        "{:#?}",
        host.rec.calls()
    );

    image_layout(
        &dir.path().join("layout2"),
        "docker.io/library/test:2",
        &[("bin/registry", b"#!/bin/sh\n# v2\n")],
    );
    let mut up = opts.clone();
    up.upgrade = true;
    up.image = ImageSource::Layout {
        dir: dir.path().join("layout2"),
        name: "test:2".into(),
    };
    // The new rootfs is in place; the registry still serves from the old
    // tree, kept aside.
    up.only = phase(&["rootfs", "render"]);
    apply(&up, &host, &mut |_| {}).unwrap();
    let previous = opts.cluster_dir().join("rootfs.previous");
    assert!(previous.join("bin/registry").is_file());
    assert_eq!(
        fs::read_to_string(opts.rootfs().join("bin/registry")).unwrap(),
        "#!/bin/sh\n# v2\n"
    );

    host.rec.clear();
    up.only = phase(&["runtime", "registry"]);
    apply(&up, &host, &mut |_| {}).unwrap();
    let calls = host.rec.calls();
    let at = |want: &str| {
        calls
            .iter()
            .position(|c| c == want)
            .unwrap_or_else(|| panic!("{want} not in {calls:#?}"))
    };
    let umount = at(&format!("umount {}", mount.display()));
    let mount_again = at(&mount_call);
    let restart = at("run systemctl restart seaport-registry.service");
    assert!(umount < mount_again && mount_again < restart, "{calls:#?}");
    assert!(host.rec.is_mounted(&mount));
    assert!(!previous.exists());

    reset_c1(&opts, &host);
    assert!(!host.rec.is_mounted(&mount));
}

#[test]
fn drift_names_installed_files_that_were_modified_or_removed_but_not_hook_files() {
    let (_dir, opts) = fixture();
    let host = fresh_host(&opts);
    apply(&opts, &host, &mut |_| {}).unwrap();
    let clean = drift(&opts.state_dir, &opts.host_root, &name("c1")).unwrap();
    assert!(
        clean.modified.is_empty() && clean.missing.is_empty(),
        "{clean:?}"
    );
    let j = Journal::open(&opts.state_dir, "c1").unwrap();
    for p in [
        "/usr/bin/runc",
        "/usr/bin/kubeadm",
        "/etc/containerd/config.toml",
        "/etc/systemd/system/kubelet.service",
        "/etc/systemd/system/kubelet.service.d/10-kubeadm.conf",
        "/etc/containerd/certs.d/docker.io/hosts.toml",
    ] {
        assert!(j.state().installed.contains_key(p), "{p} not recorded");
    }
    // Files hooks wrote are the user's.
    assert!(!j.state().installed.contains_key("/etc/sysctl.d/k8s.conf"));
    // Every recorded file, and /etc/hosts for its lines.
    assert_eq!(clean.checked, j.state().installed.len() as u64 + 1);

    let h = |p: &str| opts.host_root.join(p);
    fs::write(h("etc/containerd/config.toml"), "version = 3\n").unwrap();
    fs::remove_file(h("usr/bin/kubeadm")).unwrap();
    fs::write(h("etc/sysctl.d/k8s.conf"), "tuned by hand\n").unwrap();
    fs::write(h("etc/hosts"), "127.0.0.1 localhost\n").unwrap();
    let r = drift(&opts.state_dir, &opts.host_root, &name("c1")).unwrap();
    assert_eq!(r.modified, ["/etc/containerd/config.toml", "/etc/hosts"]);
    assert_eq!(r.missing, ["/usr/bin/kubeadm"]);
    assert_eq!(r.checked, clean.checked);

    let err = drift(&opts.state_dir, &opts.host_root, &name("c2"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("cluster c2 is not installed"), "{err}");
}

#[test]
fn a_journal_written_before_drift_checks_existed_still_reads() {
    let (_dir, opts) = fixture();
    let dir = Journal::dir_for(&opts.state_dir, "c1");
    fs::create_dir_all(&dir).unwrap();
    fs::write(
        dir.join("journal.json"),
        r#"{"cluster":"c1","image":"sha256:00","roles":["node"],"steps":{},"changes":[],"next_backup":0}"#,
    )
    .unwrap();
    let j = Journal::open(&opts.state_dir, "c1").unwrap();
    assert!(j.state().installed.is_empty());
    let r = drift(&opts.state_dir, &opts.host_root, &name("c1")).unwrap();
    assert_eq!(r, DriftReport::default());
}

/// The files of an image whose `cri/` ships docker, as sealer's images
/// before 0.9 do; its kubeadm.yml was written for containerd.
const DOCKER_FILES: &[(&str, &[u8])] = &[
    ("cri/dockerd", b"#!/bin/sh\n# dockerd\n"),
    ("cri/docker", b"#!/bin/sh\n# docker\n"),
    ("cri/containerd", b"#!/bin/sh\n# docker's containerd\n"),
    (
        "etc/daemon.json",
        br#"{"log-driver": "json-file", "exec-opts": ["native.cgroupdriver=systemd"],
            "mirror-registries": [{"domain": "*", "mirrors": ["https://sea.hub:5000"]}]}"#,
    ),
    (
        "etc/kubeadm.yml",
        b"kind: ClusterConfiguration\nkubernetesVersion: v1.19.8\n---\nkind: JoinConfiguration\nnodeRegistration:\n  criSocket: /run/containerd/containerd.sock\n",
    ),
    (
        "registry/seaport-images.json",
        br#"{"images": [{"name": "quay.io/coreos/etcd:v3.5.0", "domain": "quay.io",
            "repository": "coreos/etcd", "digest": "sha256:00"}]}"#,
    ),
];

/// The fixture with the docker image, `changed` files replacing or added
/// to [`DOCKER_FILES`].
fn docker_fixture(changed: &[(&str, &[u8])]) -> (tempfile::TempDir, ApplyOptions) {
    let (dir, mut opts) = fixture();
    let mut files: Vec<(&str, &[u8])> = DOCKER_FILES.to_vec();
    for (path, bytes) in changed {
        files.retain(|(p, _)| p != path);
        files.push((path, bytes));
    }
    let layout = dir.path().join("docker-layout");
    image_layout(&layout, "docker.io/library/docker:1", &files);
    opts.image = ImageSource::Layout {
        dir: layout,
        name: "docker:1".into(),
    };
    (dir, opts)
}

fn summary_of(events: &[StepEvent], step: &str) -> String {
    events
        .iter()
        .find_map(|e| match e {
            StepEvent::Done {
                step: s, summary, ..
            } if s == step => Some(summary.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("{step} did not finish: {events:#?}"))
}

#[test]
fn a_docker_image_gets_docker_with_mirrors_and_the_dockershim_socket_and_reset_removes_it() {
    let (_dir, opts) = docker_fixture(&[]);
    let host = fresh_host(&opts);
    let before = listing(&opts.host_root);
    let mut events = Vec::new();
    apply(&opts, &host, &mut |e| events.push(e.clone())).unwrap();
    let h = |p: &str| opts.host_root.join(p);
    assert_eq!(
        fs::read_to_string(h("usr/bin/dockerd")).unwrap(),
        "#!/bin/sh\n# dockerd\n"
    );
    let daemon: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(h("etc/docker/daemon.json")).unwrap()).unwrap();
    assert_eq!(daemon["log-driver"], "json-file", "{daemon}");
    assert_eq!(
        daemon["insecure-registries"],
        serde_json::json!(["sea.hub:5000"])
    );
    assert_eq!(
        daemon["registry-mirrors"],
        serde_json::json!(["http://sea.hub:5000"])
    );
    // This dockerd does not know sealer's key: it would refuse to start.
    assert!(daemon.get("mirror-registries").is_none(), "{daemon}");
    assert!(h("etc/systemd/system/docker.service").is_file());
    assert!(
        !h("etc/containerd").exists(),
        "containerd was configured for a docker image"
    );
    let runtime = summary_of(&events, "runtime");
    for want in [
        "cri/ ships dockerd",
        "/var/run/dockershim.sock",
        "cgroup driver systemd",
        "quay.io",
    ] {
        assert!(runtime.contains(want), "{want} not in {runtime}");
    }
    let calls = host.rec.calls();
    for want in [
        "run systemctl enable docker.service",
        "run systemctl start docker.service",
        "run docker version",
    ] {
        assert!(calls.iter().any(|c| c == want), "{want} not in {calls:#?}");
    }
    assert!(
        !calls.iter().any(|c| c.contains("containerd.service")),
        "{calls:#?}"
    );
    // kubeadm is given docker's socket, whatever the image's kubeadm.yml said.
    let kubeadm_cfg = fs::read_to_string(opts.cluster_dir().join("kubeadm.yaml")).unwrap();
    assert!(
        kubeadm_cfg.contains("criSocket: /var/run/dockershim.sock")
            && !kubeadm_cfg.contains("containerd.sock"),
        "{kubeadm_cfg}"
    );
    assert_eq!(host.hook_runtime.lock().unwrap().as_deref(), Some("docker"));
    assert!(h("var/lib/docker/image").is_dir() && h("sys/class/net/docker0").exists());

    host.rec.clear();
    let again = apply(&opts, &host, &mut |_| {}).unwrap();
    assert!(again.ran.is_empty(), "{:?}", again.ran);
    assert!(host.rec.calls().is_empty(), "{:#?}", host.rec.calls());

    host.rec.clear();
    reset_c1(&opts, &host);
    assert_eq!(listing(&opts.host_root), before);
    let calls = host.rec.calls();
    for want in [
        "run systemctl stop docker.service",
        "run systemctl disable docker.service",
        "run ip link delete docker0",
    ] {
        assert!(calls.iter().any(|c| c == want), "{want} not in {calls:#?}");
    }
}

#[test]
fn kubernetes_1_24_with_docker_gets_cri_dockerd_and_a_socket_path_written_by_a_hook_wins() {
    let (_dir, mut opts) = docker_fixture(&[
        ("cri/cri-dockerd", b"#!/bin/sh\n# cri-dockerd\n"),
        (
            "etc/kubeadm.yml",
            b"kind: ClusterConfiguration\nkubernetesVersion: v1.26.3\n",
        ),
        (
            "registry/seaport-images.json",
            br#"{"images": [{"name": "registry.k8s.io/pause:3.9", "domain": "registry.k8s.io",
                "repository": "pause", "digest": "sha256:00"}]}"#,
        ),
    ]);
    let host = fresh_host(&opts);
    let before = listing(&opts.host_root);
    opts.only = Some(
        [
            "rootfs",
            "render",
            "runtime",
            "registry-access",
            "kube-binaries",
            "hook-init",
            "hook-init-kube",
        ]
        .map(step)
        .to_vec(),
    );
    apply(&opts, &host, &mut |_| {}).unwrap();
    let h = |p: &str| opts.host_root.join(p);
    let service = fs::read_to_string(h("etc/systemd/system/cri-docker.service")).unwrap();
    assert!(
        service.contains("ExecStart=/usr/bin/cri-dockerd")
            && service.contains("--pod-infra-container-image=sea.hub:5000/pause:3.9"),
        "{service}"
    );
    let socket = fs::read_to_string(h("etc/systemd/system/cri-docker.socket")).unwrap();
    assert!(
        socket.contains("ListenStream=/var/run/cri-dockerd.sock"),
        "{socket}"
    );
    let calls = host.rec.calls();
    assert!(
        calls
            .iter()
            .any(|c| c == "run systemctl start docker.service cri-docker.socket cri-docker.service"),
        "{calls:#?}"
    );
    let j = Journal::open(&opts.state_dir, "c1").unwrap();
    assert_eq!(
        j.state().runtime.as_ref().unwrap().cri_socket,
        "unix:///var/run/cri-dockerd.sock"
    );

    // An image's CRI script named another socket, as sealer 0.9+'s
    // contract has it: kubeadm gets that one.
    fs::create_dir_all(h("etc/sealerio/cri")).unwrap();
    fs::write(
        h("etc/sealerio/cri/socket-path"),
        "unix:///run/other.sock\n",
    )
    .unwrap();
    opts.only = Some(vec![step("kubeadm")]);
    apply(&opts, &host, &mut |_| {}).unwrap();
    let kubeadm_cfg = fs::read_to_string(opts.cluster_dir().join("kubeadm.yaml")).unwrap();
    assert!(
        kubeadm_cfg.contains("criSocket: unix:///run/other.sock"),
        "{kubeadm_cfg}"
    );
    fs::remove_dir_all(h("etc/sealerio")).unwrap();
    reset_c1(&opts, &host);
    assert_eq!(listing(&opts.host_root), before);
    let calls = host.rec.calls();
    for unit in ["cri-docker.service", "cri-docker.socket", "docker.service"] {
        let want = format!("run systemctl stop {unit}");
        assert!(calls.contains(&want), "{want} not in {calls:#?}");
    }
}

#[test]
fn kubernetes_1_24_with_docker_and_no_cri_dockerd_is_refused_before_anything_starts() {
    let (_dir, opts) = docker_fixture(&[(
        "etc/kubeadm.yml",
        b"kind: ClusterConfiguration\nkubernetesVersion: v1.25.0\n",
    )]);
    let host = fresh_host(&opts);
    let err = apply(&opts, &host, &mut |_| {}).unwrap_err().to_string();
    assert!(
        err.contains("step runtime failed")
            && err.contains("v1.25.0")
            && err.contains("cri-dockerd"),
        "{err}"
    );
    let calls = host.rec.calls();
    assert!(
        !calls.iter().any(|c| c.starts_with("run systemctl start")),
        "{calls:#?}"
    );
}

#[test]
fn a_host_running_containerd_is_not_switched_to_docker_in_place() {
    let (dir, opts) = fixture();
    let host = fresh_host(&opts);
    apply(&opts, &host, &mut |_| {}).unwrap();
    let layout = dir.path().join("docker-layout");
    image_layout(&layout, "docker.io/library/docker:1", DOCKER_FILES);
    let mut up = opts.clone();
    up.upgrade = true;
    up.image = ImageSource::Layout {
        dir: layout,
        name: "docker:1".into(),
    };
    host.rec.clear();
    let err = apply(&up, &host, &mut |_| {}).unwrap_err().to_string();
    assert!(
        err.contains("runs containerd") && err.contains("reset the cluster first"),
        "{err}"
    );
    assert!(
        !host
            .rec
            .calls()
            .iter()
            .any(|c| c.contains("docker.service")),
        "{:#?}",
        host.rec.calls()
    );
    assert!(!opts.host_root.join("usr/bin/dockerd").exists());
}

#[test]
fn reset_keeps_a_runtime_data_root_with_a_mount_inside_it() {
    let (_dir, opts) = docker_fixture(&[]);
    let host = fresh_host(&opts);
    apply(&opts, &host, &mut |_| {}).unwrap();
    let data = opts.host_root.join("var/lib/docker");
    // Something still mounted inside docker's data root (a volume of a
    // container that was not stopped): removing the tree would delete the
    // mounted file system's files.
    let volume = data.join("volumes/v1/_data");
    fs::create_dir_all(&volume).unwrap();
    fs::write(volume.join("precious"), "data of another file system\n").unwrap();
    host.bind_mount(Path::new("/srv/elsewhere"), &volume)
        .unwrap();
    let r = reset(
        &ResetOptions {
            cluster: name("c1"),
            prune: true,
            state_dir: opts.state_dir.clone(),
            data_root: opts.data_root.clone(),
            host_root: opts.host_root.clone(),
            timeout: Duration::from_secs(5),
        },
        &host,
    )
    .unwrap();
    assert!(
        r.warnings
            .iter()
            .any(|w| w.contains("/var/lib/docker") && w.contains("is mounted inside it")),
        "{:?}",
        r.warnings
    );
    assert!(volume.join("precious").is_file());
    // The rest is undone.
    assert!(!opts.host_root.join("usr/bin/dockerd").exists());
    assert!(!opts.host_root.join("run/docker").exists());
}

// ---- a malicious image against the host ---------------------------------

/// One entry of a crafted layer: path, kind, mode, bytes, link target.
type Crafted<'a> = (&'a str, tar::EntryType, u32, &'a [u8], Option<&'a str>);

/// A layer tar exactly as given, hostile names and modes included.
fn crafted_tar(entries: &[Crafted<'_>]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, kind, mode, data, link) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(*kind);
        h.set_mode(*mode);
        h.set_size(data.len() as u64);
        let name = path.as_bytes();
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        if let Some(l) = link {
            h.set_link_name(l).unwrap();
        }
        h.set_cksum();
        b.append(&h, *data).unwrap();
    }
    b.into_inner().unwrap()
}

/// Every path under `dir` with its mode, owner and content or target.
fn sentinel_snapshot(dir: &Path) -> BTreeMap<String, String> {
    use std::os::unix::fs::MetadataExt;
    walkdir::WalkDir::new(dir)
        .sort_by_file_name()
        .into_iter()
        .flatten()
        .map(|e| {
            let m = fs::symlink_metadata(e.path()).unwrap();
            let what = if m.file_type().is_symlink() {
                format!("-> {}", fs::read_link(e.path()).unwrap().display())
            } else if m.is_file() {
                fs::read_to_string(e.path()).unwrap_or_default()
            } else {
                "<dir>".into()
            };
            (
                e.path().display().to_string(),
                format!("{:o} {}:{} {what}", m.mode(), m.uid(), m.gid()),
            )
        })
        .collect()
}

/// A sentinel tree beside the host root: directories and files of known
/// modes an image must not reach.
fn sentinels(d: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let out = d.join("outside");
    for sub in ["suid", "open", "nested/b"] {
        fs::create_dir_all(out.join(sub)).unwrap();
        fs::set_permissions(out.join(sub), fs::Permissions::from_mode(0o700)).unwrap();
    }
    for f in ["victim", "suid/bash"] {
        fs::write(out.join(f), "untouched\n").unwrap();
        fs::set_permissions(out.join(f), fs::Permissions::from_mode(0o644)).unwrap();
    }
    out
}

#[test]
fn a_layer_cannot_chmod_host_directories_through_a_directory_it_replaced_with_a_symlink() {
    use tar::EntryType::{Directory as D, Regular as F, Symlink as S};
    let (dir, mut opts) = fixture();
    let d = dir.path();
    let out = sentinels(d);
    let before = sentinel_snapshot(&out);
    let suid = out.join("suid").display().to_string();
    let open = out.join("open").display().to_string();
    let nested = out.join("nested").display().to_string();
    // Directories with modes, then the same names as symlinks out of the
    // root, in one layer: the directory modes are applied at the end.
    let evil = crafted_tar(&[
        ("bin/kubeadm", F, 0o755, b"#!/bin/sh\n", None),
        ("x/", D, 0o4755, b"", None),
        ("y/", D, 0o777, b"", None),
        ("a/", D, 0o755, b"", None),
        ("a/b/", D, 0o777, b"", None),
        ("x", S, 0o777, b"", Some(&suid)),
        ("y", S, 0o777, b"", Some(&open)),
        ("a", S, 0o777, b"", Some(&nested)),
    ]);
    layout_with(&d.join("evil"), "evil:1", &[evil], &[]);
    opts.image = ImageSource::Layout {
        dir: d.join("evil"),
        name: "evil:1".into(),
    };
    opts.only = Some(vec![step("rootfs")]);
    let host = fresh_host(&opts);
    apply(&opts, &host, &mut |_| {}).unwrap();
    let rootfs = opts.rootfs();
    assert!(fs::symlink_metadata(rootfs.join("x")).unwrap().is_symlink());
    assert_eq!(
        sentinel_snapshot(&out),
        before,
        "the layer changed files outside the root"
    );
}

#[test]
fn an_image_archive_under_images_cannot_chmod_host_directories_through_a_symlink() {
    use tar::EntryType::{Directory as D, Regular as F, Symlink as S};
    let (dir, mut opts) = fixture();
    let d = dir.path();
    let out = sentinels(d);
    let before = sentinel_snapshot(&out);
    let suid = out.join("suid").display().to_string();
    let open = out.join("open").display().to_string();
    // The same inside an image the registry step loads (images/*.tar).
    let archive = crafted_tar(&[
        ("x/", D, 0o4755, b"", None),
        ("x", S, 0o777, b"", Some(&suid)),
        ("y/", D, 0o777, b"", None),
        ("y", S, 0o777, b"", Some(&open)),
    ]);
    let files = crafted_tar(&[
        ("images/", D, 0o755, b"", None),
        ("images/evil.tar", F, 0o644, &archive, None),
    ]);
    layout_with(&d.join("evil"), "evil:1", &[files], &[]);
    opts.image = ImageSource::Layout {
        dir: d.join("evil"),
        name: "evil:1".into(),
    };
    opts.only = Some(vec![step("rootfs")]);
    apply(&opts, &fresh_host(&opts), &mut |_| {}).unwrap();
    // What the registry step does with images/*.tar, up to the push.
    let scratch = opts.cluster_dir().join("tmp/images");
    let err = images_load::load_images(
        &opts.rootfs().join("images"),
        "127.0.0.1:1",
        None,
        &scratch,
        None,
    )
    .unwrap_err();
    assert!(err.to_string().contains("evil.tar"), "{err}");
    assert_eq!(
        sentinel_snapshot(&out),
        before,
        "images/evil.tar changed files outside"
    );
}

#[test]
fn templates_and_config_files_are_never_written_through_symlinks_the_image_planted() {
    use tar::EntryType::{Directory as D, Regular as F, Symlink as S};
    let (dir, mut opts) = fixture();
    let d = dir.path();
    let out = sentinels(d);
    let before = sentinel_snapshot(&out);
    let victim = out.join("victim").display().to_string();
    let layer = crafted_tar(&[
        ("bin/kubeadm", F, 0o755, b"#!/bin/sh\n", None),
        ("etc/", D, 0o755, b"", None),
        // A template whose output path is a symlink out of the root.
        (
            "etc/motd.tmpl",
            F,
            0o644,
            b"cluster {{ .ClusterName }}\n",
            None,
        ),
        ("etc/motd", S, 0o777, b"", Some(&victim)),
        // Templates whose temporary names are planted symlinks.
        ("etc/kube.tmpl", F, 0o644, b"host {{ .HostIP }}\n", None),
        ("etc/kube.render-tmp", S, 0o777, b"", Some(&victim)),
        ("statics/", D, 0o755, b"", None),
        ("statics/audit.yml", F, 0o644, b"at {{ .HostIP }}\n", None),
        ("statics/audit.render-tmp", S, 0o777, b"", Some(&victim)),
        // The temporary name a Config document written here would use.
        (
            "etc/kubeadm.yml",
            F,
            0o644,
            b"kind: ClusterConfiguration\n",
            None,
        ),
        ("etc/kubeadm.yml.seaport-tmp", S, 0o777, b"", Some(&victim)),
        ("etc/kubeadm.yml.render-tmp", S, 0o777, b"", Some(&victim)),
    ]);
    layout_with(&d.join("evil"), "evil:1", &[layer], &[]);
    opts.image = ImageSource::Layout {
        dir: d.join("evil"),
        name: "evil:1".into(),
    };
    opts.only = Some(vec![step("rootfs"), step("render")]);
    let host = fresh_host(&opts);
    apply(&opts, &host, &mut |_| {}).unwrap();
    let rootfs = opts.rootfs();
    assert_eq!(
        fs::read_to_string(rootfs.join("etc/motd")).unwrap(),
        "cluster c1\n"
    );
    assert_eq!(
        fs::read_to_string(rootfs.join("etc/kube")).unwrap(),
        "host 10.0.0.2\n"
    );
    assert_eq!(
        fs::read_to_string(rootfs.join("statics/audit.yml")).unwrap(),
        "at 10.0.0.2\n"
    );
    // A Config document of the Clusterfile written into the rootfs.
    rootfs_files::write_files(
        &opts.data_root,
        &name("c1"),
        &[(
            "etc/kubeadm.yml".into(),
            b"kind: InitConfiguration\n".to_vec(),
        )],
    )
    .unwrap();
    assert_eq!(
        fs::read_to_string(rootfs.join("etc/kubeadm.yml")).unwrap(),
        "kind: InitConfiguration\n"
    );
    assert_eq!(
        sentinel_snapshot(&out),
        before,
        "a write went through a planted symlink"
    );
}

#[test]
fn registry_domains_named_by_the_image_must_be_host_and_port() {
    let (dir, mut opts) = fixture();
    let d = dir.path();
    let out = sentinels(d);
    let before = sentinel_snapshot(&out);
    let index = serde_json::json!({"images": [{
        "name": "evil.io/x:1",
        "domain": "../../../../outside",
        "repository": "x",
        "digest": "sha256:0000000000000000000000000000000000000000000000000000000000000000",
    }]})
    .to_string();
    image_layout(
        &d.join("layout"),
        "docker.io/library/test:1",
        &[("registry/seaport-images.json", index.as_bytes())],
    );
    opts.image = ImageSource::Layout {
        dir: d.join("layout"),
        name: "test:1".into(),
    };
    let host = fresh_host(&opts);
    let err = apply(&opts, &host, &mut |_| {}).unwrap_err().to_string();
    assert!(
        err.contains("registry-access")
            && err.contains("../../../../outside")
            && err.contains("HOST[:PORT]"),
        "{err}"
    );
    assert_eq!(
        sentinel_snapshot(&out),
        before,
        "a mirror config landed outside the root"
    );
    assert!(!d.join("outside/hosts.toml").exists());
}

#[test]
fn host_files_are_never_written_through_a_symlinked_directory_on_the_host() {
    let (dir, opts) = fixture();
    let d = dir.path();
    let out = sentinels(d);
    // Something (a hook of an earlier install, say) left /etc/containerd
    // as a link to a directory outside the host root.
    std::os::unix::fs::symlink(out.join("open"), opts.host_root.join("etc/containerd")).unwrap();
    let before = sentinel_snapshot(&out);
    let host = fresh_host(&opts);
    let err = apply(&opts, &host, &mut |_| {}).unwrap_err().to_string();
    assert!(
        err.contains("runtime") && err.contains("etc/containerd is a symlink"),
        "{err}"
    );
    assert_eq!(
        sentinel_snapshot(&out),
        before,
        "the install wrote through the link"
    );
}

#[test]
fn image_links_to_host_files_are_not_copied_onto_the_host() {
    use tar::EntryType::{Regular as F, Symlink as S};
    let (dir, mut opts) = fixture();
    let d = dir.path();
    let out = sentinels(d);
    let secret = out.join("victim").display().to_string();
    for (rel, expect) in [
        ("bin/peek", "bin/peek resolves to"),
        ("etc/containerd.toml", "etc/containerd.toml resolves to"),
    ] {
        let layer = crafted_tar(&[
            ("bin/kubeadm", F, 0o755, b"#!/bin/sh\n", None),
            ("cri/runc", F, 0o755, b"runc\n", None),
            (rel, S, 0o777, b"", Some(&secret)),
        ]);
        let layout = d.join(format!("evil-{}", rel.replace('/', "-")));
        layout_with(&layout, "evil:1", &[layer], &[]);
        opts.image = ImageSource::Layout {
            dir: layout,
            name: "evil:1".into(),
        };
        let host = fresh_host(&opts);
        let err = apply(&opts, &host, &mut |_| {}).unwrap_err().to_string();
        assert!(err.contains(expect) && err.contains("outside"), "{err}");
        for f in walkdir::WalkDir::new(&opts.host_root).into_iter().flatten() {
            if f.file_type().is_file() {
                let text = fs::read_to_string(f.path()).unwrap_or_default();
                assert!(
                    !text.contains("untouched"),
                    "{} got the host file",
                    f.path().display()
                );
            }
        }
        reset_c1(&opts, &host);
    }
}
