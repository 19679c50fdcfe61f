use super::*;

/// The default rootfs's kubeadm configuration (v1beta2, Kubernetes 1.19).
const BASE: &str = include_str!("../../../../rootfs/base/etc/kubeadm.yml");

fn v(s: &str) -> Version {
    Version::parse(s).unwrap()
}

fn check(text: &str, release: &str, cmd: Command) -> Result<Vec<String>, Invalid> {
    validate(Path::new("kubeadm.yaml"), text, v(release), cmd)
}

fn err(text: &str, release: &str) -> String {
    check(text, release, Command::Init)
        .expect_err("must be rejected")
        .to_string()
}

const JOIN_B3: &str = "apiVersion: kubeadm.k8s.io/v1beta3
kind: JoinConfiguration
caCertPath: /etc/kubernetes/pki/ca.crt
discovery:
  bootstrapToken:
    token: abcdef.0123456789abcdef
    apiServerEndpoint: 10.0.0.1:6443
    caCertHashes:
    - sha256:455be31d60b377cafb5e23a7efcfdbaae2953a46f4e19fff5bbc18523f97bb39
  timeout: 5m0s
nodeRegistration:
  criSocket: unix:///run/containerd/containerd.sock
  imagePullPolicy: IfNotPresent
  taints: []
controlPlane:
  localAPIEndpoint:
    advertiseAddress: 10.0.0.2
    bindPort: 6443
  certificateKey: 0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
";

#[test]
fn the_release_decides_the_kubeadm_api_version() {
    assert_eq!(support(v("v1.19.8"), "v1beta2"), Support::Read);
    assert_eq!(support(v("v1.19.8"), "v1beta1"), Support::Deprecated);
    assert_eq!(support(v("v1.22.0"), "v1beta1"), Support::Refused);
    assert_eq!(support(v("v1.19.8"), "v1beta3"), Support::Refused);
    assert_eq!(support(v("v1.22.0"), "v1beta2"), Support::Deprecated);
    assert_eq!(support(v("v1.26.9"), "v1beta2"), Support::Deprecated);
    assert_eq!(support(v("v1.27.0"), "v1beta2"), Support::Refused);
    assert_eq!(support(v("v1.22.0"), "v1beta3"), Support::Read);
    assert_eq!(support(v("v1.30.2"), "v1beta3"), Support::Read);
    assert_eq!(support(v("v1.30.2"), "v1beta4"), Support::Refused);
    assert_eq!(support(v("v1.31.0"), "v1beta3"), Support::Deprecated);
    assert_eq!(support(v("v1.31.0"), "v1beta4"), Support::Read);
    assert_eq!(Version::parse("1.19"), Some(v("v1.19.0")));
    assert_eq!(Version::parse("v1.19.8-rc.1"), Some(v("v1.19.8")));
    assert_eq!(Version::parse("latest"), None);
}

#[test]
fn the_default_rootfs_configuration_passes_for_its_release() {
    assert_eq!(
        check(BASE, "v1.19.8", Command::Init).unwrap(),
        Vec::<String>::new()
    );
    // The same documents as v1beta3 (sealer writes v1beta3 from 1.23):
    // v1beta2's dns.type and useHyperKubeImage are absent there, so the
    // base (which sets neither) passes for 1.25 once relabelled.
    let b3 = BASE.replace("kubeadm.k8s.io/v1beta2", "kubeadm.k8s.io/v1beta3");
    assert!(check(&b3, "v1.25.3", Command::Init).is_ok());
    // ...and v1beta3 as the 1.19 kubeadm sees it: refused, naming both.
    let e = check(&b3, "v1.19.8", Command::Init)
        .unwrap_err()
        .to_string();
    assert!(e.contains("v1beta3") && e.contains("v1beta2"), "{e}");
    // The base (v1beta2) as a 1.25 kubeadm sees it: read, with a warning;
    // as a 1.27 kubeadm sees it: refused.
    let w = check(BASE, "v1.25.3", Command::Init).unwrap();
    assert!(
        !w.is_empty() && w.iter().all(|w| w.contains("deprecated")),
        "{w:?}"
    );
    let e = err(BASE, "v1.27.1");
    assert!(e.contains("does not read kubeadm.k8s.io/v1beta2"), "{e}");
}

#[test]
fn v1beta3_and_v1beta4_join_configurations() {
    assert!(check(JOIN_B3, "v1.24.0", Command::Join).is_ok());
    // From 1.31 v1beta3 still reads, with a warning.
    let w = check(JOIN_B3, "v1.31.1", Command::Join).unwrap();
    assert!(w.len() == 1 && w[0].contains("deprecated"), "{w:?}");
    // v1beta4 moved discovery.timeout to timeouts.discovery.
    let b4 = JOIN_B3.replace("v1beta3", "v1beta4");
    let e = check(&b4, "v1.31.1", Command::Join)
        .unwrap_err()
        .to_string();
    assert!(e.contains("unknown field \"discovery.timeout\""), "{e}");
    let b4 = b4.replace("  timeout: 5m0s\n", "") + "timeouts:\n  discovery: 5m0s\n";
    assert!(check(&b4, "v1.31.1", Command::Join).is_ok());
    // v1beta4 extraArgs are name/value lists; a v1beta3 map is refused.
    let c4 = "apiVersion: kubeadm.k8s.io/v1beta4\nkind: ClusterConfiguration\napiServer:\n  extraArgs:\n  - name: audit-log-maxage\n    value: \"7\"\n";
    assert!(check(c4, "v1.31.1", Command::Init).is_ok());
    let c4_map = "apiVersion: kubeadm.k8s.io/v1beta4\nkind: ClusterConfiguration\napiServer:\n  extraArgs:\n    audit-log-maxage: \"7\"\n";
    let e = check(c4_map, "v1.31.1", Command::Init)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("apiServer.extraArgs") && e.contains("list"),
        "{e}"
    );
}

#[test]
fn broken_configurations_are_rejected_naming_the_field() {
    let cases: &[(&str, &str, &str)] = &[
        // Wrong apiVersion of a kubeadm kind.
        ("apiVersion: kubeadm.k8s.io/v1\nkind: InitConfiguration\n", "v1.19.8", "does not read kubeadm.k8s.io/v1"),
        ("apiVersion: v1\nkind: InitConfiguration\n", "v1.19.8", "no kind \"InitConfiguration\" is registered for version \"v1\""),
        // Component configs by their own apiVersions.
        ("apiVersion: kubeadm.k8s.io/v1beta2\nkind: KubeletConfiguration\n", "v1.19.8", "kubelet.config.k8s.io/v1beta1"),
        ("apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeProxyConfiguration\n", "v1.19.8", "kubeproxy.config.k8s.io/v1alpha1"),
        // Unknown kind.
        ("apiVersion: kubeadm.k8s.io/v1beta2\nkind: ResetConfiguration\n", "v1.19.8", "no kind \"ResetConfiguration\""),
        // Unknown field at the top and nested.
        ("apiVersion: kubeadm.k8s.io/v1beta2\nkind: ClusterConfiguration\nkubernetesVersoin: v1.19.8\n", "v1.19.8", "unknown field \"kubernetesVersoin\""),
        ("apiVersion: kubeadm.k8s.io/v1beta2\nkind: ClusterConfiguration\napiServer:\n  extraArg:\n    a: b\n", "v1.19.8", "unknown field \"apiServer.extraArg\""),
        // A key under the wrong parent: certSANs belongs to apiServer.
        ("apiVersion: kubeadm.k8s.io/v1beta2\nkind: ClusterConfiguration\nnetworking:\n  certSANs: [a]\n", "v1.19.8", "unknown field \"networking.certSANs\""),
        ("apiVersion: kubeadm.k8s.io/v1beta2\nkind: InitConfiguration\ncontrolPlaneEndpoint: x:6443\n", "v1.19.8", "unknown field \"controlPlaneEndpoint\""),
        // A v1beta2-only field in v1beta3.
        ("apiVersion: kubeadm.k8s.io/v1beta3\nkind: ClusterConfiguration\ndns:\n  type: CoreDNS\n", "v1.23.0", "unknown field \"dns.type\""),
        // Types.
        ("apiVersion: kubeadm.k8s.io/v1beta2\nkind: InitConfiguration\nlocalAPIEndpoint:\n  bindPort: \"6443\"\n", "v1.19.8", "localAPIEndpoint.bindPort: cannot unmarshal a string"),
        ("apiVersion: kubeadm.k8s.io/v1beta2\nkind: ClusterConfiguration\napiServer:\n  extraArgs:\n    audit-log-maxage: 7\n", "v1.19.8", "apiServer.extraArgs.audit-log-maxage: cannot unmarshal a number"),
        ("apiVersion: kubeadm.k8s.io/v1beta2\nkind: ClusterConfiguration\napiServer:\n  timeoutForControlPlane: 4 minutes\n", "v1.19.8", "invalid duration \"4 minutes\""),
        // Required fields.
        ("apiVersion: kubeadm.k8s.io/v1beta2\nkind: ClusterConfiguration\napiServer:\n  extraVolumes:\n  - name: a\n    hostPath: /a\n", "v1.19.8", "apiServer.extraVolumes[0].mountPath: Required value"),
        ("apiVersion: kubeadm.k8s.io/v1beta2\nkind: InitConfiguration\nbootstrapTokens:\n- ttl: 24h\n", "v1.19.8", "bootstrapTokens[0].token: Required value"),
        ("apiVersion: kubeadm.k8s.io/v1beta2\nkind: InitConfiguration\nbootstrapTokens:\n- token: notatoken\n", "v1.19.8", "bootstrapTokens[0].token: Invalid value"),
        ("apiVersion: kubeadm.k8s.io/v1beta2\nkind: InitConfiguration\nnodeRegistration:\n  taints:\n  - key: a\n    effect: Sometimes\n", "v1.19.8", "nodeRegistration.taints[0].effect: Unsupported value"),
        // Invalid YAML.
        ("apiVersion: kubeadm.k8s.io/v1beta2\nkind: ClusterConfiguration\napiServer:\n\tcertSANs: [a]\n", "v1.19.8", "invalid YAML"),
        ("apiVersion: kubeadm.k8s.io/v1beta2\nkind: ClusterConfiguration\nnetworking: {podSubnet: a\n", "v1.19.8", "invalid YAML"),
        // Missing apiVersion, duplicate kind, no configuration at all.
        ("kind: InitConfiguration\n", "v1.19.8", "'apiVersion' is missing"),
        ("apiVersion: kubeadm.k8s.io/v1beta2\nkind: InitConfiguration\n---\napiVersion: kubeadm.k8s.io/v1beta2\nkind: InitConfiguration\n", "v1.19.8", "duplicate document of kind InitConfiguration"),
        ("apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n", "v1.19.8", "no InitConfiguration"),
    ];
    for (text, release, want) in cases {
        let e = err(text, release);
        assert!(e.contains(want), "{text}\n=> {e}\n(want {want})");
        assert!(e.contains("kubeadm.yaml"), "the file is not named: {e}");
    }
}

#[test]
fn join_needs_a_pinned_discovery() {
    let e = check(&JOIN_B3.replace("    caCertHashes:\n    - sha256:455be31d60b377cafb5e23a7efcfdbaae2953a46f4e19fff5bbc18523f97bb39\n", ""), "v1.24.0", Command::Join)
        .unwrap_err()
        .to_string();
    assert!(e.contains("caCertHashes") && e.contains("unsafe"), "{e}");
    let e = check(
        &JOIN_B3.replace("    apiServerEndpoint: 10.0.0.1:6443\n", ""),
        "v1.24.0",
        Command::Join,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("discovery.bootstrapToken.apiServerEndpoint: Required value"),
        "{e}"
    );
    let no_discovery = "apiVersion: kubeadm.k8s.io/v1beta3\nkind: JoinConfiguration\n";
    let e = check(no_discovery, "v1.24.0", Command::Join)
        .unwrap_err()
        .to_string();
    assert!(e.contains("discovery: Required value"), "{e}");
    let e = check(
        &JOIN_B3.replace(
            "imagePullPolicy: IfNotPresent",
            "imagePullPolicy: Sometimes",
        ),
        "v1.24.0",
        Command::Join,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("imagePullPolicy: Unsupported value"), "{e}");
}

#[test]
fn durations_follow_go_syntax() {
    for ok in ["5m0s", "4m", "876000h", "1h2m3.5s", "0", "100ms", "2m0s"] {
        assert!(is_duration(ok), "{ok}");
    }
    for bad in ["", "5", "m", "4 minutes", "5x", "1h 2m"] {
        assert!(!is_duration(bad), "{bad}");
    }
}
