//! Whole Clusterfiles as sealer users write them, and broken ones.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde_norway::Value;

use super::*;
use crate::plan::HostRole;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn ips(list: &[&str]) -> Vec<IpAddr> {
    list.iter().map(|s| ip(s)).collect()
}

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A v2 Clusterfile in the shape of sealer's documentation.
const V2_CLUSTER: &str = r#"apiVersion: sealer.io/v2
kind: Cluster
metadata:
  name: my-cluster
spec:
  image: docker.io/sealerio/kubernetes:v1.22.15
  env:
    - key1=value1
    - key2=value2;value3
    - SvcCIDR=10.96.0.0/16,fd00:10:96::/112
    - RegistryDomain=ignored.example
  cmd_args:
    - BindAddress=0.0.0.0
  appNames: [ calico, nginx ]
  ssh:
    passwd: xxx
    user: root
    port: "22"
  hosts:
    - ips: [ 192.168.0.2, 192.168.0.3-192.168.0.4 ]
      roles: [ master ]
      ssh:
        port: "22"
    - ips: [ 192.168.0.5 ]
      roles: [ node, db ]
      env:
        - key1=host-value
        - etcd-dir=/data/etcd
      labels:
        disk: ssd
        gpu: true
      taints:
        - special=true:NoSchedule
        - node-role.kubernetes.io/master:NoSchedule-
  hostAliases:
    - ip: 192.168.0.9
      hostnames: [ foo.local, bar.local ]
  registry:
    localRegistry:
      domain: hub.example
      port: 5001
      insecure: true
      cert:
        subjectAltName:
          dnsNames: [ hub.example.org ]
          ips: [ 192.168.0.2 ]
  containerRuntime:
    type: containerd
  dataRoot: /data/sealer
status: {}
"#;

#[test]
fn v2_cluster_with_hosts_resolves_as_sealer_would() {
    let file = Clusterfile::parse(V2_CLUSTER).unwrap();
    let cluster = file.cluster.as_ref().unwrap();
    assert_eq!(cluster.name, "my-cluster");
    assert_eq!(cluster.cmd_args, vec!["BindAddress=0.0.0.0"]);
    assert_eq!(cluster.app_names, vec!["calico", "nginx"]);
    assert_eq!(
        cluster.hosts[0].ips,
        ips(&["192.168.0.2", "192.168.0.3", "192.168.0.4"])
    );
    assert_eq!(
        cluster.host_aliases[0].hostnames,
        vec!["foo.local", "bar.local"]
    );

    // SSH is accepted and reported as ignored, at every place it appears;
    // a computed env key is dropped with a warning.
    let warnings: Vec<String> = file.warnings.iter().map(|w| w.to_string()).collect();
    assert_eq!(
        warnings,
        vec![
            "document 1 (Cluster my-cluster): spec.ssh: ignored: Seaport reaches hosts through their enrolled agents, not SSH",
            "document 1 (Cluster my-cluster): spec.env[3]: RegistryDomain is ignored: it is computed from spec.registry and spec.containerRuntime, as sealer does",
            "document 1 (Cluster my-cluster): spec.hosts[0].ssh: ignored: Seaport reaches hosts through their enrolled agents, not SSH",
            "document 1 (Cluster my-cluster): spec.registry.localRegistry.cert: ignored with insecure: true: the local registry serves plain HTTP",
        ]
    );

    let r = file.resolve().unwrap();
    assert_eq!(r.master0, ip("192.168.0.2"));
    assert_eq!(
        r.plan_hosts()
            .iter()
            .map(|h| (h.ip.as_str(), h.role))
            .collect::<Vec<_>>(),
        vec![
            ("192.168.0.2", HostRole::Master),
            ("192.168.0.3", HostRole::Master),
            ("192.168.0.4", HostRole::Master),
            ("192.168.0.5", HostRole::Node),
        ]
    );
    assert_eq!(
        r.env,
        env(&[
            ("key1", "value1"),
            ("key2", "value2;value3"),
            ("SvcCIDR", "10.96.0.0/16,fd00:10:96::/112"),
            ("KubeSvcIP", "10.96.0.1"),
            ("DNSSvcIP", "10.96.0.10"),
            ("LocalRegistryDomain", "hub.example"),
            ("LocalRegistryPort", "5001"),
            ("LocalRegistryURL", "hub.example:5001"),
            ("RegistryDomain", "hub.example"),
            ("RegistryPort", "5001"),
            ("RegistryURL", "hub.example:5001"),
            ("ContainerRuntime", "containerd"),
        ])
    );
    let node = r.host(ip("192.168.0.5")).unwrap();
    assert!(!node.master0);
    assert_eq!(node.roles, vec!["node", "db"]);
    assert_eq!(node.env["key1"], "host-value");
    assert_eq!(node.env["key2"], "value2;value3");
    assert_eq!(node.env["HostIP"], "192.168.0.5");
    assert_eq!(
        node.own_env,
        env(&[("key1", "host-value"), ("etcd-dir", "/data/etcd")])
    );
    assert_eq!(node.labels["gpu"], "true");
    assert_eq!(
        node.taints
            .iter()
            .map(|t| t.to_string())
            .collect::<Vec<_>>(),
        vec![
            "special=true:NoSchedule",
            "node-role.kubernetes.io/master:NoSchedule-"
        ]
    );
    assert_eq!(
        r.host(ip("192.168.0.3")).unwrap().env["HostIP"],
        "192.168.0.3"
    );

    // HA local registry: on every master.
    assert_eq!(r.registry.url, "hub.example:5001");
    assert_eq!(
        r.registry.hosts,
        ips(&["192.168.0.2", "192.168.0.3", "192.168.0.4"])
    );
    let local = r.registry.local.as_ref().unwrap();
    assert!(local.ha && local.insecure);
    assert_eq!(local.cert_dns_names, vec!["hub.example.org"]);
    assert_eq!(r.data_root.as_deref(), Some("/data/sealer"));
}

#[test]
fn a_minimal_cluster_takes_sealers_registry_defaults() {
    let text = "apiVersion: sealer.cloud/v2\nkind: Cluster\nmetadata:\n  name: c\nspec:\n  image: kubernetes:v1.19.8\n  hosts:\n  - ips: [10.0.0.2]\n    roles: [master]\n  - ips: [10.0.0.3]\n    roles: [node]\n";
    let r = Clusterfile::parse(text).unwrap().resolve().unwrap();
    assert_eq!(
        r.env,
        env(&[
            ("LocalRegistryDomain", "sea.hub"),
            ("LocalRegistryPort", "5000"),
            ("LocalRegistryURL", "sea.hub:5000"),
            ("RegistryDomain", "sea.hub"),
            ("RegistryPort", "5000"),
            ("RegistryURL", "sea.hub:5000"),
        ])
    );
    assert_eq!(r.registry.hosts, ips(&["10.0.0.2"]));
    assert!(r.registry.local.as_ref().unwrap().ha);
    assert_eq!(r.data_root, None);

    // An external registry only: no local registry, its URL everywhere.
    let text = text.replace(
        "  hosts:",
        "  registry:\n    externalRegistry:\n      domain: reg.example.com\n  hosts:",
    );
    let r = Clusterfile::parse(&text).unwrap().resolve().unwrap();
    assert_eq!(r.registry.url, "reg.example.com");
    assert!(r.registry.local.is_none() && r.registry.hosts.is_empty());
    assert!(r.env.contains(&("RegistryPort".into(), String::new())));
    assert!(r
        .env
        .contains(&("ExternalRegistryURL".into(), "reg.example.com".into())));

    // IPv6 hosts: sealer adds HostIPFamily.
    let text = "apiVersion: sealer.io/v2\nkind: Cluster\nmetadata:\n  name: c\nspec:\n  image: k:v1\n  registry:\n    localRegistry:\n      ha: false\n  hosts:\n  - ips: [fd00::2-fd00::3]\n    roles: [master]\n";
    let r = Clusterfile::parse(text).unwrap().resolve().unwrap();
    assert!(r.env.contains(&("HostIPFamily".into(), "IPv6".into())));
    assert_eq!(r.hosts[1].env["HostIPFamily"], "IPv6");
    assert_eq!(r.registry.hosts, ips(&["fd00::2"]));
}

#[test]
fn config_merge_adds_keys_to_every_document_of_the_file() {
    let text = r#"apiVersion: sealer.io/v2
kind: Cluster
metadata:
  name: my-cluster
spec:
  image: kubernetes:v1.22.15
  hosts:
  - ips: [192.168.0.2]
    roles: [master]
---
apiVersion: sealer.io/v1
kind: Config
metadata:
  name: namespace-everywhere
spec:
  path: /etc/configmaps.yaml
  strategy: merge
  data: |
    data:
      test-key: test-key
    metadata:
      namespace: test-namespace
"#;
    let file = Clusterfile::parse(text).unwrap();
    let config = &file.configs[0];
    assert_eq!(
        config.target_path(),
        std::path::PathBuf::from("etc/configmaps.yaml")
    );
    let existing = "apiVersion: v1\ndata:\n  key1: myConfigMap1\nkind: ConfigMap\nmetadata:\n  name: myConfigMap1\n---\napiVersion: v1\ndata:\n  key2: myConfigMap2\nkind: ConfigMap\nmetadata:\n  name: myConfigMap2\n";
    let out = String::from_utf8(config.render(Some(existing.as_bytes())).unwrap()).unwrap();
    assert_eq!(
        out,
        "apiVersion: v1\ndata:\n  key1: myConfigMap1\n  test-key: test-key\nkind: ConfigMap\nmetadata:\n  name: myConfigMap1\n  namespace: test-namespace\n---\napiVersion: v1\ndata:\n  key2: myConfigMap2\n  test-key: test-key\nkind: ConfigMap\nmetadata:\n  name: myConfigMap2\n  namespace: test-namespace\n"
    );
    // No file yet: the data is the file.
    assert_eq!(config.render(None).unwrap(), config.data.as_bytes());
    // A file that is not YAML mappings cannot be merged into.
    let err = config.render(Some(b"- a\n- b\n")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "config namespace-everywhere: merge: the existing file etc/configmaps.yaml is not YAML mappings: a document is not a mapping"
    );
}

fn config(spec: &str) -> Config {
    let text =
        format!("apiVersion: sealer.io/v2\nkind: Config\nmetadata:\n  name: c\nspec:\n{spec}");
    Clusterfile::parse(&text).unwrap().configs.remove(0)
}

#[test]
fn config_overwrite_and_processors_follow_sealer() {
    // Overwrite (the default) ignores what is there; an app's config lives
    // in the app's directory.
    let c = config("  path: values.yaml\n  appName: mysql\n  data: |\n    user: root\n");
    assert_eq!(
        c.target_path(),
        std::path::PathBuf::from("application/apps/mysql/values.yaml")
    );
    assert_eq!(c.render(Some(b"old: 1\n")).unwrap(), b"user: root\n");

    // toJson on the whole data: compact JSON, keys sorted.
    let c =
        config("  path: a.json\n  process: toJson\n  data: |\n    b: [1, x]\n    a: {c: true}\n");
    assert_eq!(c.render(None).unwrap(), br#"{"a":{"c":true},"b":[1,"x"]}"#);

    // toBase64 on the whole data.
    let c = config("  path: a\n  process: toBase64\n  data: hello\n");
    assert_eq!(c.render(None).unwrap(), b"aGVsbG8=");

    // value|toJson: each value becomes a JSON string.
    let c = config(
        "  path: a\n  process: value|toJson\n  data: |\n    b:\n      x: 1\n    a: [1, 2]\n",
    );
    let out: BTreeMap<String, String> = serde_norway::from_slice(&c.render(None).unwrap()).unwrap();
    assert_eq!(out["a"], "[1,2]");
    assert_eq!(out["b"], r#"{"x":1}"#);

    // value|toBase64|toSecret into an existing Secret: the processed values
    // are encoded once more into its data, existing keys kept (sealer's
    // behaviour, double encoding included).
    let c = config(
        "  path: secret.yaml\n  process: value|toBase64|toSecret\n  data: |\n    password: pw\n",
    );
    let existing = "apiVersion: v1\nkind: Secret\nmetadata:\n  name: s\ndata:\n  keep: a2VlcA==\ntype: Opaque\n";
    let out: Value =
        serde_norway::from_slice(&c.render(Some(existing.as_bytes())).unwrap()).unwrap();
    assert_eq!(out["data"]["keep"], "a2VlcA==");
    // base64(base64("pw")) = base64("cHc=")
    assert_eq!(out["data"]["password"], "Y0hjPQ==");
    assert_eq!(out["kind"], "Secret");

    // The label switches on per-value processing like `value` does.
    let text = "apiVersion: sealer.io/v2\nkind: Config\nmetadata:\n  name: c\n  labels:\n    preprocess.value: \"true\"\nspec:\n  path: a\n  process: toBase64\n  data: \"k: v\\n\"\n";
    let c = Clusterfile::parse(text).unwrap().configs.remove(0);
    assert_eq!(c.render(None).unwrap(), b"k: dg==\n");

    // An unknown processor is skipped with a warning, as sealer does.
    let file = Clusterfile::parse(
        "apiVersion: sealer.io/v2\nkind: Config\nmetadata:\n  name: c\nspec:\n  path: a\n  process: toYaml\n  data: x\n",
    )
    .unwrap();
    assert_eq!(file.configs[0].process, vec![]);
    assert_eq!(
        file.warnings[0].to_string(),
        "document 1 (Config c): spec.process: unknown processor \"toYaml\" is skipped (known: value, toJson, toBase64, toSecret)"
    );

    // Data a processor cannot read is an error naming the config.
    let c = config("  path: a\n  process: value|toJson\n  data: \"[1, 2]\"\n");
    assert_eq!(
        c.render(None).unwrap_err().to_string(),
        "config c: toJson: the data is not a YAML mapping: it is not a mapping"
    );
}

/// Plugins of both generations, as sealer documents them.
const PLUGINS: &str = r#"apiVersion: sealer.io/v2
kind: Cluster
metadata:
  name: my-cluster
spec:
  image: kubernetes:v1.19.8
  hosts:
  - ips: [192.168.0.2, 192.168.0.3]
    roles: [master]
  - ips: [192.168.0.4-192.168.0.6]
    roles: [node]
    labels:
      disk: ssd
  - ips: [192.168.0.7]
    roles: [node, ingress]
---
apiVersion: sealer.aliyun.com/v1alpha1
kind: Plugin
metadata:
  name: MyHostname
spec:
  type: HOSTNAME
  action: PreInit
  data: |
    192.168.0.2 master-0
    192.168.0.5 node-1
---
apiVersion: sealer.aliyun.com/v1alpha1
kind: Plugin
metadata:
  name: MyShell
spec:
  type: SHELL
  action: PostInstall|PreInit
  'on': 192.168.0.3-192.168.0.5
  data: |
    kubectl get nodes
---
apiVersion: sealer.aliyun.com/v1alpha1
kind: Plugin
metadata:
  name: AMastersByLabel
spec:
  type: SHELL
  action: PostInstall
  on: node-role.kubernetes.io/master=
  data: echo master
---
apiVersion: sealer.aliyun.com/v1alpha1
kind: Plugin
metadata:
  name: taint
spec:
  type: TAINT
  action: PreGuest
  data: |
    192.168.0.2 key1=value1:NoSchedule
    # a comment
    192.168.0.4-192.168.0.5,192.168.0.7 key3:NoSchedule-
---
apiVersion: sealer.aliyun.com/v1alpha1
kind: Plugin
metadata:
  name: MyLabel
spec:
  type: LABEL
  action: PreGuest
  data: |
    192.168.0.4 ssd=true,zone=a
---
apiVersion: sealer.io/v1
kind: Plugin
metadata:
  name: b-pre-init-host
spec:
  type: SHELL
  action: pre-init-host
  scope: master|ingress
  data: |
    echo "i am pre-init-host from Clusterfile"
---
apiVersion: sealer.io/v1
kind: Plugin
metadata:
  name: a-post-install
spec:
  type: SHELL
  action: post-install
  scope: node
  data: kubectl get pods -A
---
apiVersion: sealer.io/v1
kind: Plugin
metadata:
  name: ssd-only
spec:
  type: SHELL
  action: pre-clean-host
  on: disk=ssd
  data: echo clean
---
apiVersion: sealer.aliyun.com/v1alpha1
kind: Plugin
metadata:
  name: checkCluster
spec:
  type: CLUSTERCHECK
  action: PreGuest
"#;

#[test]
fn plugins_of_both_generations_select_hosts_and_run_in_order() {
    let file = Clusterfile::parse(PLUGINS).unwrap();
    assert_eq!(file.plugins.len(), 8);
    assert!(file.warnings.iter().any(|w| w.to_string()
        == "document 10 (Plugin checkCluster): spec.type: CLUSTERCHECK plugins are ignored: Seaport launches apps after kubeadm init and every join returned, with no separate cluster check"));
    let r = file.resolve().unwrap();
    let all = r.ips();
    let names = |runs: &[PluginRun<'_>]| -> Vec<(String, Phase, Vec<IpAddr>)> {
        runs.iter()
            .map(|run| (run.plugin.name.clone(), run.phase, run.hosts.clone()))
            .collect()
    };

    // Install, hosts ready: legacy PreInit first, then pre-init-host; within
    // a phase by name (uppercase sorts before lowercase, as in Go).
    assert_eq!(
        names(&r.plugin_runs(&file.plugins, Operation::Install, Stage::HostsReady, &all)),
        vec![
            (
                "MyHostname".into(),
                Phase::PreInit,
                ips(&["192.168.0.2", "192.168.0.5"])
            ),
            (
                "MyShell".into(),
                Phase::PreInit,
                ips(&["192.168.0.3", "192.168.0.4", "192.168.0.5"])
            ),
            (
                "b-pre-init-host".into(),
                Phase::PreInitHost,
                ips(&["192.168.0.2", "192.168.0.3", "192.168.0.7"])
            ),
        ]
    );
    // Cluster ready: LABEL and TAINT act on the hosts their data names.
    assert_eq!(
        names(&r.plugin_runs(&file.plugins, Operation::Install, Stage::ClusterReady, &all)),
        vec![
            ("MyLabel".into(), Phase::PreGuest, ips(&["192.168.0.4"])),
            (
                "taint".into(),
                Phase::PreGuest,
                ips(&["192.168.0.2", "192.168.0.4", "192.168.0.5", "192.168.0.7"])
            ),
        ]
    );
    // Done: the kubeadm master label selects masters; post-install runs on
    // master0 only, whatever its scope says (sealer 0.9's cluster hooks).
    assert_eq!(
        names(&r.plugin_runs(&file.plugins, Operation::Install, Stage::Done, &all)),
        vec![
            (
                "AMastersByLabel".into(),
                Phase::PostInstall,
                ips(&["192.168.0.2", "192.168.0.3"])
            ),
            (
                "MyShell".into(),
                Phase::PostInstall,
                ips(&["192.168.0.3", "192.168.0.4", "192.168.0.5"])
            ),
            (
                "a-post-install".into(),
                Phase::PostInstallCluster,
                ips(&["192.168.0.2"])
            ),
        ]
    );
    // A scale-up joining 192.168.0.5 and .7: only those hosts, and only the
    // plugins of scale-up phases.
    let joining = ips(&["192.168.0.5", "192.168.0.7"]);
    assert_eq!(
        names(&r.plugin_runs(
            &file.plugins,
            Operation::ScaleUp,
            Stage::HostsReady,
            &joining
        )),
        vec![(
            "b-pre-init-host".into(),
            Phase::PreInitHost,
            ips(&["192.168.0.7"])
        )]
    );
    // Scale down 192.168.0.6: label selection on the Clusterfile's labels.
    assert_eq!(
        names(&r.plugin_runs(
            &file.plugins,
            Operation::ScaleDown,
            Stage::Start,
            &ips(&["192.168.0.6"])
        )),
        vec![(
            "ssd-only".into(),
            Phase::PreCleanHost,
            ips(&["192.168.0.6"])
        )]
    );

    // The parsed data.
    let hostname = file
        .plugins
        .iter()
        .find(|p| p.name == "MyHostname")
        .unwrap();
    assert_eq!(
        hostname.data,
        PluginData::Hostnames(vec![
            (ip("192.168.0.2"), "master-0".into()),
            (ip("192.168.0.5"), "node-1".into())
        ])
    );
    let shell = file
        .plugins
        .iter()
        .find(|p| p.name == "b-pre-init-host")
        .unwrap();
    assert_eq!(
        shell.data,
        PluginData::Shell("echo \"i am pre-init-host from Clusterfile\"".into())
    );
    assert_eq!(
        shell.selector,
        HostSelector::Roles(vec!["master".into(), "ingress".into()])
    );
    let label = file.plugins.iter().find(|p| p.name == "MyLabel").unwrap();
    assert_eq!(
        label.data,
        PluginData::Labels(vec![LabelLine {
            ips: ips(&["192.168.0.4"]),
            labels: env(&[("ssd", "true"), ("zone", "a")])
        }])
    );
}

#[test]
fn a_plugin_at_a_phase_its_type_cannot_act_at_is_reported_and_never_selected() {
    let text = "apiVersion: sealer.aliyun.com/v1alpha1\nkind: Plugin\nmetadata:\n  name: early-label\nspec:\n  type: LABEL\n  action: PreInit\n  data: 10.0.0.2 a=b\n";
    let file = Clusterfile::parse(text).unwrap();
    assert_eq!(
        file.warnings[0].to_string(),
        "document 1 (Plugin early-label): spec.action: a LABEL plugin does nothing at PreInit: it never runs there"
    );
    let labels = BTreeMap::new();
    let hosts = [HostFacts {
        ip: ip("10.0.0.2"),
        roles: &[],
        labels: &labels,
        master0: true,
    }];
    assert!(file.plugins[0]
        .select_hosts(Phase::PreInit, &hosts, &[ip("10.0.0.2")])
        .is_empty());
}

#[test]
fn kubeadm_documents_are_kept_as_yaml_for_the_merge() {
    let text = r#"apiVersion: sealer.io/v2
kind: Cluster
metadata:
  name: my-cluster
spec:
  image: kubernetes:v1.22.15
  hosts:
  - ips: [192.168.0.2]
    roles: [master]
---
apiVersion: kubeadm.k8s.io/v1beta2
kind: ClusterConfiguration
kubernetesVersion: v1.22.15
networking:
  podSubnet: 100.64.0.0/10
  serviceSubnet: 10.96.0.0/22
apiServer:
  certSANs:
    - 127.0.0.1
---
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
maxPods: 200
---
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: ipvs
"#;
    let file = Clusterfile::parse(text).unwrap();
    assert_eq!(
        file.kubeadm
            .iter()
            .map(|d| d.kind.as_str())
            .collect::<Vec<_>>(),
        vec![
            "ClusterConfiguration",
            "KubeletConfiguration",
            "KubeProxyConfiguration"
        ]
    );
    // What the kubeadm configuration merge reads.
    let cfg =
        seaport_rootfs::kubeadm::KubeadmConfig::parse(&file.kubeadm_yaml().unwrap(), "Clusterfile")
            .unwrap();
    assert_eq!(cfg.doc("KubeletConfiguration").unwrap()["maxPods"], 200);
    assert_eq!(
        cfg.doc("ClusterConfiguration").unwrap()["networking"]["podSubnet"],
        "100.64.0.0/10"
    );
    assert_eq!(cfg.doc("KubeProxyConfiguration").unwrap()["mode"], "ipvs");

    // A kubeadm kind with another group's apiVersion, or none: read by its
    // kind as sealer reads it, with a warning, and merged with the image's
    // apiVersion (kubeadm itself reads it).
    for bad in [
        text.replace("kubelet.config.k8s.io/v1beta1", "kubeadm.k8s.io/v1beta3"),
        text.replace("apiVersion: kubelet.config.k8s.io/v1beta1\n", ""),
    ] {
        let file = Clusterfile::parse(&bad).unwrap();
        assert_eq!(file.warnings.len(), 1, "{:?}", file.warnings);
        let w = file.warnings[0].to_string();
        assert!(
            w.starts_with("document 3 (KubeletConfiguration): apiVersion: ")
                && w.contains("read by its kind, as sealer reads it (expected one of kubelet.config.k8s.io/v1beta1); it is merged by its kind, with the apiVersion of the image's etc/kubeadm.yml"),
            "{w}"
        );
        let mut cfg = seaport_rootfs::kubeadm::KubeadmConfig::defaults();
        cfg.merge(
            &seaport_rootfs::kubeadm::KubeadmConfig::parse(
                &file.kubeadm_yaml().unwrap(),
                "Clusterfile",
            )
            .unwrap(),
        );
        let kubelet = cfg.doc("KubeletConfiguration").unwrap();
        assert_eq!(kubelet["maxPods"], 200);
        assert_eq!(kubelet["apiVersion"], "kubelet.config.k8s.io/v1beta1");
    }
    // Two of a kind are refused rather than one silently dropped.
    let twice = format!("{text}---\napiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nmode: iptables\n");
    let err = Clusterfile::parse(&twice).unwrap_err();
    assert_eq!(err.kind, ErrorKind::Duplicate);
    assert_eq!(
        err.to_string(),
        "document 5 (KubeProxyConfiguration): kind: a Clusterfile holds one KubeProxyConfiguration (the first is document 4)"
    );
}

#[test]
fn application_documents_are_kept() {
    let text = r#"apiVersion: sealer.io/v2
kind: Application
metadata:
  name: my-apps
spec:
  launchApps: [ nginx, dashboard ]
  configs:
  - name: nginx
    env: [ replicas=3 ]
    launch:
      cmds: [ kubectl apply -f ns.yaml, kubectl apply -f nginx.yaml ]
    files:
    - path: nginx.yaml
      strategy: merge
      data: |
        metadata:
          namespace: web
"#;
    let app = Clusterfile::parse(text).unwrap().application.unwrap();
    assert_eq!(app.launch_apps, vec!["nginx", "dashboard"]);
    let nginx = &app.configs[0];
    assert_eq!(nginx.env, env(&[("replicas", "3")]));
    assert_eq!(nginx.launch_cmds.as_ref().unwrap().len(), 2);
    assert_eq!(nginx.files[0].strategy, Strategy::Merge);

    let err = Clusterfile::parse(&text.replace("    - path: nginx.yaml\n", "    - path: \"\"\n"))
        .unwrap_err();
    assert_eq!(err.path.as_deref(), Some("spec.configs[0].files[0].path"));
    assert_eq!(err.kind, ErrorKind::MissingField);
}

// ---- broken files ------------------------------------------------------

fn err(text: &str) -> ClusterfileError {
    Clusterfile::parse(text).unwrap_err()
}

const HEAD: &str = "apiVersion: sealer.io/v2\nkind: Cluster\nmetadata:\n  name: my-cluster\n";

#[test]
fn an_unknown_field_names_the_document_the_path_and_the_line() {
    let text = format!("apiVersion: sealer.io/v1\nkind: Config\nmetadata:\n  name: c\nspec:\n  path: a\n  data: b\n---\n{HEAD}spec:\n  image: k:v1\n  hosts:\n  - ips: [10.0.0.2]\n    roles: [master]\n  - ips: [10.0.0.3]\n    rolez: [node]\n");
    let e = err(&text);
    assert_eq!(e.kind, ErrorKind::UnknownField);
    assert_eq!(e.path.as_deref(), Some("spec.hosts[1].rolez"));
    assert_eq!(e.location, Some((19, 5)));
    assert!(
        e.to_string().starts_with("document 2 (Cluster my-cluster): spec.hosts[1].rolez: unknown field, expected one of `ips`, `roles`"),
        "{e}"
    );
    assert!(e.to_string().ends_with("(line 19, column 5)"), "{e}");

    // At the top of a document, and in each kind.
    let e = err(&format!("{HEAD}spec:\n  image: k:v1\nextra: 1\n"));
    assert_eq!(
        (e.kind, e.path.as_deref()),
        (ErrorKind::UnknownField, Some("extra"))
    );
    let e = err("apiVersion: sealer.io/v2\nkind: Plugin\nmetadata:\n  name: p\nspec:\n  type: SHELL\n  phase: PreInit\n");
    assert_eq!(e.path.as_deref(), Some("spec.phase"));
    assert!(
        e.to_string()
            .starts_with("document 1 (Plugin p): spec.phase: unknown field"),
        "{e}"
    );
    let e = err("apiVersion: sealer.io/v2\nkind: Application\nmetadata:\n  name: a\nspec:\n  configs:\n  - name: x\n    launch:\n      helm: {}\n");
    assert_eq!(e.path.as_deref(), Some("spec.configs[0].launch.helm"));
    let e = err("apiVersion: sealer.io/v2\nkind: Config\nmetadata:\n  name: c\n  owner: me\nspec:\n  path: a\n  data: b\n");
    assert_eq!(e.path.as_deref(), Some("metadata.owner"));
    // cmdArgs is not sealer's spelling.
    let e = err(&format!("{HEAD}spec:\n  cmdArgs: [a]\n"));
    assert_eq!(e.path.as_deref(), Some("spec.cmdArgs"));
    assert!(e.message.contains("`cmd_args`"), "{e}");
}

#[test]
fn wrong_types_and_values_name_their_field() {
    let e = err(&format!(
        "{HEAD}spec:\n  hosts:\n  - ips: [10.0.0.2]\n    roles: master\n"
    ));
    assert_eq!(e.kind, ErrorKind::InvalidValue);
    assert_eq!(e.path.as_deref(), Some("spec.hosts[0].roles"));
    assert!(
        e.message
            .starts_with("invalid type: string \"master\", expected a sequence"),
        "{e}"
    );
    assert_eq!(e.location, Some((8, 12)));

    let e = err(&format!(
        "{HEAD}spec:\n  hosts:\n  - ips: [10.0.0.1, 10.0.0.9-10.0.0.2]\n"
    ));
    assert_eq!(e.path.as_deref(), Some("spec.hosts[0].ips[1]"));
    assert_eq!(e.location, Some((7, 21)));
    assert!(
        e.message
            .contains("IP range \"10.0.0.9-10.0.0.2\" is empty"),
        "{e}"
    );

    let e = err(&format!("{HEAD}spec:\n  env: [a=b, novalue]\n"));
    assert_eq!(e.path.as_deref(), Some("spec.env[1]"));
    assert!(
        e.message.contains("env entry \"novalue\" is not KEY=VALUE"),
        "{e}"
    );

    let e = err(&format!("{HEAD}spec:\n  hosts:\n  - ips: [10.0.0.2]\n    roles: [master]\n    taints: [\"a=b:Never\"]\n"));
    assert_eq!(e.to_string(), "document 1 (Cluster my-cluster): spec.hosts[0].taints[0]: taint effect \"Never\" is not NoSchedule, PreferNoSchedule or NoExecute (line 9, column 14)");

    let e = err(&format!(
        "{HEAD}spec:\n  registry:\n    localRegistry:\n      port: 70000\n"
    ));
    assert_eq!(e.path.as_deref(), Some("spec.registry.localRegistry.port"));

    let e = err(&format!(
        "{HEAD}spec:\n  registry:\n    externalRegistry:\n      port: 5000\n"
    ));
    assert_eq!(
        (e.kind, e.path.as_deref()),
        (
            ErrorKind::MissingField,
            Some("spec.registry.externalRegistry.domain")
        )
    );

    let e = err("apiVersion: sealer.io/v2\nkind: Config\nmetadata:\n  name: c\nspec:\n  path: ../../etc/passwd\n  data: x\n");
    assert_eq!(e.to_string(), "document 1 (Config c): spec.path: \"../../etc/passwd\" leaves the rootfs: '..' is not allowed");
    let e = err("apiVersion: sealer.io/v2\nkind: Config\nmetadata:\n  name: c\nspec:\n  path: a\n  data: x\n  strategy: Merge\n");
    assert_eq!(e.path.as_deref(), Some("spec.strategy"));
    let e = err("apiVersion: sealer.io/v2\nkind: Config\nmetadata:\n  name: c\nspec:\n  path: a\n");
    assert_eq!(
        (e.kind, e.path.as_deref()),
        (ErrorKind::MissingField, Some("spec.data"))
    );
}

#[test]
fn broken_plugins_are_refused_with_the_reason() {
    let plugin = |spec: &str| {
        err(&format!(
            "apiVersion: sealer.io/v2\nkind: Plugin\nmetadata:\n  name: p\nspec:\n{spec}"
        ))
    };
    let e = plugin("  type: SHELL\n  action: PreInitt\n  data: x\n");
    assert_eq!(e.path.as_deref(), Some("spec.action"));
    assert!(
        e.message
            .starts_with("unknown phase \"PreInitt\": use one of Originally, PreInstall, PreInit"),
        "{e}"
    );
    let e = plugin("  type: ETCDX\n");
    assert_eq!(
        e.message,
        "plugin type \"ETCDX\" is not supported: use SHELL, LABEL, TAINT or HOSTNAME"
    );
    let e = plugin("  type: SHELL\n  action: PreInit\n  on: 10.0.0.1-10.0.0.x\n");
    assert_eq!(
        e.to_string(),
        "document 1 (Plugin p): spec.on: \"10.0.0.x\" is not an IP address"
    );
    let e = plugin("  type: SHELL\n  action: PreInit\n  on: master\n  scope: master\n");
    assert_eq!(e.path.as_deref(), Some("spec.scope"));
    let e = plugin(
        "  type: LABEL\n  action: PreGuest\n  data: |\n    10.0.0.2 ssd=true\n    10.0.0.3\n",
    );
    assert_eq!(e.to_string(), "document 1 (Plugin p): spec.data: line 2: expected `IPS KEY=VALUE,KEY=VALUE`, got \"10.0.0.3\"");
    let e = plugin("  type: HOSTNAME\n  action: PreInit\n  data: |\n    10.0.0.2 Bad_Name\n");
    assert_eq!(e.message, "line 1: \"Bad_Name\" is not a valid host name");
    let e = plugin("  type: TAINT\n  action: PreGuest\n  data: 10.0.0.2 key1\n");
    assert_eq!(e.message, "line 1: taint \"key1\" is not KEY=VALUE:EFFECT");
}

#[test]
fn unknown_kinds_v1_clusters_and_non_documents_are_refused() {
    let e = err("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n");
    assert_eq!(e.kind, ErrorKind::UnknownKind);
    assert!(e.to_string().starts_with("document 1 (ConfigMap x): kind: unknown kind \"ConfigMap\": a Clusterfile holds Cluster, Config, Plugin, Application, InitConfiguration"), "{e}");

    let e = err("apiVersion: sealer.aliyun.com/v1alpha1\nkind: Cluster\nmetadata:\n  name: old\nspec:\n  masters:\n    ipList: [10.0.0.2]\n");
    assert_eq!(e.kind, ErrorKind::UnsupportedApiVersion);
    assert!(e.message.contains("sealer's v1 Cluster"), "{e}");

    let e = err("---\n- a\n- b\n");
    assert_eq!(
        (e.kind, e.to_string().as_str()),
        (
            ErrorKind::NotAnObject,
            "document 1: a document must be a mapping with apiVersion and kind"
        )
    );
    let e = err("apiVersion: sealer.io/v2\nmetadata:\n  name: x\n");
    assert_eq!(e.to_string(), "document 1 (x): the document has no kind");

    let e = err(&format!("{HEAD}spec:\n  image: k:v1\n---\napiVersion: sealer.io/v2\nkind: Plugin\nmetadata: {{name: [\n"));
    assert_eq!(e.kind, ErrorKind::Syntax);
    assert_eq!(e.document.as_ref().unwrap().index, 2);
    assert!(e.location.is_some());

    let e = Clusterfile::parse_bytes(b"kind: \xff\n").unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotUtf8);

    let e = err(&format!(
        "{HEAD}spec:\n  image: k:v1\n---\n{HEAD}spec:\n  image: k:v2\n"
    ));
    assert_eq!(e.to_string(), "document 2 (Cluster my-cluster): kind: a Clusterfile holds one Cluster (the first is document 1)");
}

#[test]
fn clusters_that_cannot_be_installed_fail_to_resolve() {
    let resolve = |spec: &str| {
        Clusterfile::parse(&format!("{HEAD}spec:\n  image: k:v1\n{spec}"))
            .unwrap()
            .resolve()
            .unwrap_err()
    };
    let e = resolve("");
    assert_eq!(
        e.to_string(),
        "document 1 (Cluster my-cluster): spec.hosts: the cluster has no hosts"
    );
    let e = resolve("  hosts:\n  - ips: [10.0.0.2]\n    roles: [node]\n");
    assert_eq!(e.kind, ErrorKind::Incomplete);
    assert!(e.message.contains("no master"));
    let e = resolve("  hosts:\n  - ips: [10.0.0.2]\n    roles: [master]\n  - ips: [10.0.0.2]\n    roles: [node]\n");
    assert_eq!(
        e.to_string(),
        "document 1 (Cluster my-cluster): spec.hosts[1].ips: host 10.0.0.2 is listed twice"
    );
    let e = resolve("  hosts:\n  - ips: [10.0.0.2]\n    roles: [master]\n  - ips: [fd00::2]\n    roles: [node]\n");
    assert!(e.message.contains("same IP family"));
    let e = resolve("  hosts:\n  - ips: [10.0.0.2]\n    roles: [db]\n");
    assert_eq!(e.path.as_deref(), Some("spec.hosts[0].roles"));
    let e = resolve(
        "  env: [SvcCIDR=10.96.0.0/30]\n  hosts:\n  - ips: [10.0.0.2]\n    roles: [master]\n",
    );
    assert!(e.message.contains("SvcCIDR"), "{e}");

    let e = Clusterfile::parse(
        "apiVersion: sealer.io/v2\nkind: Plugin\nmetadata:\n  name: p\nspec:\n  type: SHELL\n",
    )
    .unwrap()
    .resolve()
    .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Incomplete);

    let e = Clusterfile::parse(&format!(
        "{HEAD}spec:\n  hosts:\n  - ips: [10.0.0.2]\n    roles: [master]\n"
    ))
    .unwrap()
    .resolve()
    .unwrap_err();
    assert_eq!(e.path.as_deref(), Some("spec.image"));
    let e = err("apiVersion: sealer.io/v2\nkind: Cluster\nmetadata:\n  name: ../x\n");
    assert_eq!(e.path.as_deref(), Some("metadata.name"));
}

#[test]
fn empty_documents_and_null_fields_are_skipped_as_sealer_does() {
    let text = format!("---\n---\n{HEAD}spec:\n  image: k:v1\n  env:\n  hosts:\n  - ips: [10.0.0.2]\n    roles: [master]\n    labels:\n---\n");
    let file = Clusterfile::parse(&text).unwrap();
    let cluster = file.cluster.as_ref().unwrap();
    assert_eq!(cluster.document.as_ref().unwrap().index, 2);
    assert!(cluster.env.is_empty());
    assert!(file.resolve().is_ok());
    assert_eq!(Clusterfile::parse("").unwrap(), Clusterfile::default());
}

/// sealer's decoder test data (a Config under `sealer.com/v1alpha1`) and
/// its Clusterfile documentation (an Application without apiVersion) read
/// by kind, each with a warning naming the document.
#[test]
fn documents_without_or_with_other_api_versions_are_read_by_kind() {
    let text = r#"apiVersion: sealer.com/v1alpha1
kind: Config
metadata:
  name: mysql-config
spec:
  path: etc/mysql.yaml
  data: |
       mysql-user: root
       mysql-passwd: xxx
---
kind: Application
metadata:
  name: my-apps
spec:
  launchApps:
    - app1
  configs:
    - name: app1
      env:
        - ImageName="docker.io/bitnami/nginx:latest"
---
apiVersion: sealer.io/v3
kind: Plugin
metadata:
  name: MyShell
spec:
  type: SHELL
  action: PostInstall
  data: |
    kubectl get nodes
---
apiVersion: sealer.io/v2
kind: Cluster
metadata:
  name: my-cluster
spec:
  image: my-nginx:v1
  hosts:
    - ips: [ 172.16.26.162 ]
      roles: [ master ]
"#;
    let file = Clusterfile::parse(text).unwrap();
    let warnings: Vec<String> = file.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(
        warnings,
        [
            "document 1 (Config mysql-config): apiVersion: apiVersion \"sealer.com/v1alpha1\" is not one sealer writes for Config; read by its kind, as sealer reads it (expected one of sealer.io/v2, sealer.cloud/v2, sealer.aliyun.com/v2alpha1, sealer.io/v1, sealer.cloud/v1, sealer.aliyun.com/v1alpha1, sealer.aliyun.com/v1)",
            "document 2 (Application my-apps): apiVersion: the document has no apiVersion; read by its kind, as sealer reads it (expected one of sealer.io/v2, sealer.cloud/v2, sealer.aliyun.com/v2alpha1)",
            "document 3 (Plugin MyShell): apiVersion: apiVersion \"sealer.io/v3\" is not one sealer writes for Plugin; read by its kind, as sealer reads it (expected one of sealer.io/v2, sealer.cloud/v2, sealer.aliyun.com/v2alpha1, sealer.io/v1, sealer.cloud/v1, sealer.aliyun.com/v1alpha1, sealer.aliyun.com/v1)",
        ]
    );
    assert_eq!(file.configs[0].path, "etc/mysql.yaml");
    let app = file.application.as_ref().unwrap();
    assert_eq!(app.launch_apps, ["app1"]);
    assert_eq!(file.plugins[0].name, "MyShell");
    assert_eq!(file.cluster.as_ref().unwrap().name, "my-cluster");

    // Unknown fields stay errors, with or without apiVersion.
    let e = err("kind: Application\nmetadata:\n  name: a\nspec:\n  launchApp: [x]\n");
    assert_eq!(e.kind, ErrorKind::UnknownField);
    assert!(
        e.to_string()
            .starts_with("document 1 (Application a): spec.launchApp: unknown field"),
        "{e}"
    );
    // A kind is still needed, and a Cluster in sealer's v1 schema is still
    // refused whatever apiVersion it says.
    let e = err("apiVersion: sealer.io/v2\nmetadata:\n  name: a\n");
    assert_eq!(e.kind, ErrorKind::NotAnObject);
    let e = err("apiVersion: sealer.cloud/v1\nkind: Cluster\nmetadata:\n  name: old\nspec:\n  masters:\n    ipList: [10.0.0.2]\n");
    assert_eq!(e.kind, ErrorKind::UnsupportedApiVersion);
}

#[test]
fn registry_authentication_is_taken_and_insecure_false_asks_for_tls() {
    let text = r#"apiVersion: sealer.io/v2
kind: Cluster
metadata:
  name: c
spec:
  image: k8s:v1
  hosts:
    - ips: [10.0.0.1]
      roles: [master]
  registry:
    localRegistry:
      username: admin
      password: secret
      insecure: false
"#;
    let file = Clusterfile::parse(text).unwrap();
    let warnings: Vec<String> = file.warnings.iter().map(|w| w.to_string()).collect();
    assert!(warnings.is_empty(), "{warnings:?}");
    let local = file.resolve().unwrap().registry.local.unwrap();
    assert!(!local.insecure, "insecure: false serves TLS");
    assert!(local.cert_given.is_none());
    assert_eq!(
        (local.username.as_deref(), local.password.as_deref()),
        (Some("admin"), Some("secret"))
    );

    // One without the other protects nothing: said, naming the field.
    let alone = text.replace("      password: secret\n", "");
    let file = Clusterfile::parse(&alone).unwrap();
    let warnings: Vec<String> = file.warnings.iter().map(|w| w.to_string()).collect();
    assert!(
        warnings.contains(&"document 1 (Cluster c): spec.registry.localRegistry.username: ignored without password: the local registry serves without authentication".to_string()),
        "{warnings:?}"
    );

    // An htpasswd user name cannot hold ':'.
    let colon = text.replace("username: admin", "username: \"ad:min\"");
    let err = Clusterfile::parse(&colon).unwrap_err().to_string();
    assert!(
        err.contains("spec.registry.localRegistry.username"),
        "{err}"
    );
    assert!(err.contains("':'"), "{err}");
}

/// A Cluster document whose local registry has `extra` (YAML lines at the
/// `localRegistry` level, already indented by 6).
fn with_local_registry(extra: &str) -> String {
    format!(
        "apiVersion: sealer.io/v2\nkind: Cluster\nmetadata:\n  name: c\nspec:\n  image: k8s:v1\n  hosts:\n    - ips: [10.0.0.1]\n      roles: [master]\n  registry:\n    localRegistry:\n{extra}"
    )
}

/// `cert:` with `ca`, `certificate` and `key` as block scalars.
fn given_cert(c: &seaport_shared::registry_cert::RegistryCert) -> String {
    let block = |name: &str, pem: &str| {
        let body: String = pem.lines().map(|l| format!("          {l}\n")).collect();
        format!("        {name}: |\n{body}")
    };
    format!(
        "      cert:\n{}{}{}",
        block("ca", &c.ca),
        block("certificate", &c.certificate),
        block("key", &c.key)
    )
}

/// A CA and a certificate for `domain` valid from `from` to `to` (seconds
/// from now).
fn cert_valid(domain: &str, from: i64, to: i64) -> seaport_shared::registry_cert::RegistryCert {
    let now = time::OffsetDateTime::now_utc();
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::default();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.not_before = now - time::Duration::days(3650);
    ca.not_after = now + time::Duration::days(3650);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(vec![domain.to_string()]).unwrap();
    p.not_before = now + time::Duration::seconds(from);
    p.not_after = now + time::Duration::seconds(to);
    let cert = p.signed_by(&key, &issuer).unwrap();
    seaport_shared::registry_cert::RegistryCert {
        ca: ca_cert.pem(),
        certificate: cert.pem(),
        key: key.serialize_pem(),
    }
}

#[test]
fn a_registry_cert_asks_for_tls_and_its_names_are_checked() {
    // `cert.subjectAltName` without `insecure`: TLS, the names kept.
    let text = with_local_registry(
        "      cert:\n        subjectAltName:\n          dnsNames: [reg.example]\n          ips: [10.0.0.9]\n",
    );
    let local = Clusterfile::parse(&text)
        .unwrap()
        .resolve()
        .unwrap()
        .registry
        .local
        .unwrap();
    assert!(!local.insecure);
    assert_eq!(local.cert_dns_names, ["reg.example"]);
    assert_eq!(local.cert_ips, ["10.0.0.9".parse::<IpAddr>().unwrap()]);
    // Nothing said: TLS, sealer's default.
    let local = Clusterfile::parse(&with_local_registry("      ha: true\n"))
        .unwrap()
        .resolve()
        .unwrap()
        .registry
        .local
        .unwrap();
    assert!(!local.insecure);
    // `insecure: true`: plain HTTP.
    let local = Clusterfile::parse(&with_local_registry("      insecure: true\n"))
        .unwrap()
        .resolve()
        .unwrap()
        .registry
        .local
        .unwrap();
    assert!(local.insecure);
    // `insecure: true` wins over a cert, with a warning naming it.
    let file = Clusterfile::parse(&format!("{text}      insecure: true\n")).unwrap();
    assert!(file.resolve().unwrap().registry.local.unwrap().insecure);
    assert!(
        file.warnings.iter().any(|w| w
            .to_string()
            .contains("spec.registry.localRegistry.cert: ignored with insecure: true")),
        "{:?}",
        file.warnings
    );
    // A SAN that is no IP, or no DNS name: refused naming it.
    let bad_ip =
        with_local_registry("      cert:\n        subjectAltName:\n          ips: [10.0.0.300]\n");
    let e = Clusterfile::parse(&bad_ip).unwrap_err();
    assert_eq!(
        e.path.as_deref(),
        Some("spec.registry.localRegistry.cert.subjectAltName.ips[0]")
    );
    let bad_name = with_local_registry(
        "      cert:\n        subjectAltName:\n          dnsNames: [\"a b\"]\n",
    );
    let e = Clusterfile::parse(&bad_name).unwrap_err();
    assert_eq!(
        e.path.as_deref(),
        Some("spec.registry.localRegistry.cert.subjectAltName.dnsNames[0]")
    );
}

#[test]
fn a_given_registry_certificate_is_used_only_when_it_serves_the_domain_now() {
    let day = 24 * 3600;
    let good = cert_valid("sea.hub", -day, 30 * day);
    let file = Clusterfile::parse(&with_local_registry(&given_cert(&good))).unwrap();
    let local = file.resolve().unwrap().registry.local.unwrap();
    assert!(!local.insecure);
    assert_eq!(local.cert_given.as_ref(), Some(&good));

    // Another domain: the certificate is refused, naming the field.
    let other = with_local_registry(&format!("      domain: hub.example\n{}", given_cert(&good)));
    let e = Clusterfile::parse(&other).unwrap_err();
    assert_eq!(
        e.path.as_deref(),
        Some("spec.registry.localRegistry.cert.certificate")
    );
    assert!(e.to_string().contains("not valid for hub.example"), "{e}");

    // Expired, or not valid yet.
    for (c, why) in [
        (cert_valid("sea.hub", -30 * day, -day), "expired"),
        (cert_valid("sea.hub", day, 30 * day), "not valid yet"),
    ] {
        let e = Clusterfile::parse(&with_local_registry(&given_cert(&c))).unwrap_err();
        assert_eq!(
            e.path.as_deref(),
            Some("spec.registry.localRegistry.cert.certificate")
        );
        assert!(e.to_string().contains(why), "{e}");
    }

    // Another certificate's key; another CA.
    let stranger = cert_valid("sea.hub", -day, 30 * day);
    let wrong_key = seaport_shared::registry_cert::RegistryCert {
        key: stranger.key.clone(),
        ..good.clone()
    };
    let e = Clusterfile::parse(&with_local_registry(&given_cert(&wrong_key))).unwrap_err();
    assert_eq!(
        e.path.as_deref(),
        Some("spec.registry.localRegistry.cert.key")
    );
    let wrong_ca = seaport_shared::registry_cert::RegistryCert {
        ca: stranger.ca.clone(),
        ..good.clone()
    };
    let e = Clusterfile::parse(&with_local_registry(&given_cert(&wrong_ca))).unwrap_err();
    assert!(e.to_string().contains("the CA did not sign it"), "{e}");

    // One of the three missing.
    let text = with_local_registry(&given_cert(&good));
    let cut = text.find("        key: |").unwrap();
    let e = Clusterfile::parse(&text[..cut]).unwrap_err();
    assert_eq!(
        e.path.as_deref(),
        Some("spec.registry.localRegistry.cert.key")
    );
    // The key shows in no error or warning.
    assert!(!e.to_string().contains("PRIVATE KEY"), "{e}");
}
