//! sealer compatibility of `seaport build`: one case per rule of
//! docs/images.md ("sealer compatibility"), each a build through
//! `seaport_rootfs::build::build` (what `seaport build` runs) checked file
//! by file in the merged rootfs. The inputs are written here after sealer's
//! documentation (the CloudRootfs and "build with specific directory"
//! pages), its build test fixtures, and Kubefiles published in
//! sealerio/applications and sealerio/basefs; none of their files is copied.

mod build_support;

use std::collections::BTreeMap;

use build_support::{files, setup, Ctx};
use seaport_rootfs::build::{BuildReport, CopySemantics};
use seaport_rootfs::inspect::{inspect, ImageInfo};
use seaport_rootfs::oci::ANNOTATION_SEALER_EXTENSION;
use seaport_rootfs::reference::ImageRef;

/// The files of a sealer 0.8 CloudRootfs base (`kubernetes:v1.19.8`):
/// it carries `Metadata`, and has no images/, plugins/ or charts/.
const BASE: &[(&str, &str)] = &[
    ("Metadata", r#"{"version":"v1.19.8","arch":"amd64"}"#),
    ("bin/kubectl", "kubectl binary"),
    ("etc/daemon.json", "{\"default\": true}"),
    ("etc/kubeadm.yml", "kind: ClusterConfiguration # the base's"),
    ("etc/registry_config.yml", "version: 0.1"),
    ("manifests/imageList", "k8s.gcr.io/pause:3.2\n"),
    ("scripts/init.sh", "echo init"),
    ("statics/audit-policy.yml", "rules: []"),
];

const SHELL_PLUGIN: &str = "apiVersion: sealer.aliyun.com/v1alpha1\nkind: Plugin\nmetadata:\n  name: taint\nspec:\n  type: SHELL\n  action: PostInstall\n  on: node-role.kubernetes.io/master=\n  data: |\n     kubectl taint nodes --all node-role.kubernetes.io/master-\n";

/// The files a test adds to its context.
fn context(c: &Ctx, list: &[(&str, &str)]) {
    for (p, v) in list {
        c.file(p, v);
    }
}

/// Builds `name` from BASE, its files under `base/` in the context,
/// copied with sealer 0.9's rules so they land at the root.
fn build_base(c: &Ctx, name: &str) {
    for (p, v) in BASE {
        c.file(&format!("base/{p}"), v);
    }
    c.build_with("FROM scratch\nCOPY base .\n", name, |o| {
        o.copy_semantics = Some(CopySemantics::Sealer09)
    })
    .unwrap();
}

fn build(c: &Ctx, kubefile: &str, tag: &str) -> BuildReport {
    c.build(kubefile, tag)
        .unwrap_or_else(|e| panic!("{kubefile}: {e}"))
}

fn info(c: &Ctx, tag: &str) -> ImageInfo {
    inspect(&c.store, tag).unwrap()
}

/// The merged rootfs of `tag` is exactly `want` (plus BASE when `with_base`).
fn expect(c: &Ctx, tag: &str, with_base: bool, want: &[(&str, &str)]) {
    let mut expected: BTreeMap<String, String> = BTreeMap::new();
    if with_base {
        for (p, v) in BASE {
            expected.insert(p.to_string(), v.to_string());
        }
    }
    for (p, v) in want {
        expected.insert(p.to_string(), v.to_string());
    }
    let got = files(c.rootfs(tag).path());
    assert_eq!(got, expected, "the layout of {tag}");
}

fn only_warning(report: &BuildReport, needle: &str) {
    assert_eq!(report.warnings.len(), 1, "{:?}", report.warnings);
    assert!(
        report.warnings[0].contains(needle),
        "{needle:?} not in {:?}",
        report.warnings
    );
}

fn nginx_chart(c: &Ctx, dir: &str) -> Vec<(String, String)> {
    let files = [
        ("Chart.yaml", "name: nginx"),
        ("values.yaml", "replicaCount: 1"),
        ("templates/deployment.yaml", "kind: Deployment"),
    ];
    for (p, v) in files {
        c.file(&format!("{dir}/{p}"), v);
    }
    files
        .iter()
        .map(|(p, v)| (p.to_string(), v.to_string()))
        .collect()
}

fn under(prefix: &str, files: &[(String, String)]) -> Vec<(String, String)> {
    files
        .iter()
        .map(|(p, v)| (format!("{prefix}{p}"), v.clone()))
        .collect()
}

fn refs(v: &[(String, String)]) -> Vec<(&str, &str)> {
    v.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect()
}

// ---- the seed examples: "Build with specific directory" -----------------

#[test]
fn build_with_specific_directory_from_scratch_and_from_a_base() {
    let c = setup();
    build_base(&c, "kubernetes:v1.19.8");
    context(
        &c,
        &[
            ("mysql.tar", "mysql image tar"),
            ("shell.yaml", SHELL_PLUGIN),
            ("imageList", "busybox\n"),
            ("recommend.yaml", "kind: Deployment # dashboard"),
        ],
    );
    let chart = nginx_chart(&c, "nginx");
    let nginx = under("charts/nginx/", &chart);
    let examples: Vec<(&str, Vec<(&str, &str)>)> = vec![
        (
            "COPY mysql.tar images",
            vec![("images/mysql.tar", "mysql image tar")],
        ),
        (
            "COPY shell.yaml plugins",
            vec![("plugins/shell.yaml", SHELL_PLUGIN)],
        ),
        ("COPY nginx charts", refs(&nginx)),
        (
            "COPY imageList manifests",
            vec![("manifests/imageList", "busybox\n")],
        ),
        (
            "COPY recommend.yaml manifests",
            vec![("manifests/recommend.yaml", "kind: Deployment # dashboard")],
        ),
    ];
    for (i, (line, want)) in examples.iter().enumerate() {
        // FROM scratch: nothing tells the generation; only the chart
        // directory, which the generations place differently, warns.
        let tag = format!("scratch{i}:v1");
        let report = build(&c, &format!("FROM scratch\n{line}\n"), &tag);
        expect(&c, &tag, false, want);
        if line.contains("nginx") {
            only_warning(
                &report,
                ":2: COPY nginx charts: nothing in the Kubefile or its base shows which sealer generation",
            );
            assert!(
                report.warnings[0].contains("the contents of directory nginx go to charts/nginx/ (sealer 0.9+ rules: to charts/)")
                    && report.warnings[0].contains("--copy-semantics 0.8 or 0.9"),
                "{:?}",
                report.warnings
            );
        } else {
            assert!(report.warnings.is_empty(), "{line}: {:?}", report.warnings);
        }
        // FROM the base: its Metadata says sealer 0.8; the base's own
        // manifests/imageList is replaced by the user's.
        let tag = format!("based{i}:v1");
        let report = build(&c, &format!("FROM kubernetes:v1.19.8\n{line}\n"), &tag);
        expect(&c, &tag, true, want);
        assert!(report.warnings.is_empty(), "{line}: {:?}", report.warnings);
        assert_eq!(report.generation.semantics, CopySemantics::Sealer08);
        if line.contains("nginx") {
            assert_eq!(report.notes.len(), 1, "{:?}", report.notes);
            assert!(
                report.notes[0].contains(
                    "COPY nginx charts: the contents of directory nginx go to charts/nginx/"
                ) && report.notes[0].contains(
                    "sealer 0.8 rules, the base kubernetes:v1.19.8 carries a Metadata file"
                ),
                "{:?}",
                report.notes
            );
        }
    }
}

#[test]
fn private_registry_config_and_kubeadm_override_from_scratch_and_from_a_base() {
    let c = setup();
    build_base(&c, "kubernetes:v1.19.8");
    c.store
        .set_name(
            &ImageRef::parse("kubernetes-clusterv2:v1.19.8").unwrap(),
            &c.store
                .resolve("kubernetes:v1.19.8")
                .unwrap()
                .manifest_digest,
        )
        .unwrap();
    let registry = "proxy:\n  remoteurl: https://registry.com\n  username: u\n";
    let kubeadm = "apiVersion: kubeadm.k8s.io/v1beta2\nkind: InitConfiguration\nnodeRegistration:\n  criSocket: /var/run/dockershim.sock\n";
    context(
        &c,
        &[("registry_config.yaml", registry), ("kubeadm.yml", kubeadm)],
    );
    for (from, with_base) in [("kubernetes:v1.19.8", true), ("scratch", false)] {
        let r = build(
            &c,
            &format!("FROM {from}\nCOPY registry_config.yaml etc/\n"),
            "registry:v1",
        );
        assert!(r.warnings.is_empty(), "{:?}", r.warnings);
        expect(
            &c,
            "registry:v1",
            with_base,
            &[("etc/registry_config.yaml", registry)],
        );
    }
    for (from, with_base) in [("kubernetes-clusterv2:v1.19.8", true), ("scratch", false)] {
        let r = build(
            &c,
            &format!("FROM {from}\nCOPY kubeadm.yml etc\n"),
            "kubeadm:v1",
        );
        assert!(r.warnings.is_empty(), "{:?}", r.warnings);
        // The user's file replaces the base's etc/kubeadm.yml.
        expect(&c, "kubeadm:v1", with_base, &[("etc/kubeadm.yml", kubeadm)]);
    }
}

#[test]
fn own_cloudrootfs_and_overwriting_its_files() {
    let c = setup();
    for (p, v) in BASE {
        c.file(p, v);
    }
    // "Build your own CloudRootfs": FROM scratch, COPY . . spreads the
    // context at the root in both generations.
    let r = build(
        &c,
        "FROM scratch\nCOPY . .\n",
        "user-defined-kubernetes:v1.19.8",
    );
    assert!(r.warnings.is_empty() && r.notes.is_empty(), "{r:?}");
    expect(&c, "user-defined-kubernetes:v1.19.8", true, &[]);
    // "OverWrite CloudRootfs files".
    c.file("daemon.json", "{\"mine\": true}");
    build(
        &c,
        "FROM user-defined-kubernetes:v1.19.8\nCOPY daemon.json etc/\n",
        "over:v1",
    );
    let mut want: BTreeMap<&str, &str> = BASE.iter().copied().collect();
    want.insert("etc/daemon.json", "{\"mine\": true}");
    let got = files(c.rootfs("over:v1").path());
    let want: BTreeMap<String, String> = want
        .into_iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    assert_eq!(got, want);
}

// ---- the two generations ------------------------------------------------

#[test]
fn sealer_08_app_images_keep_their_directories_and_cmds_find_their_files() {
    let c = setup();
    build_base(&c, "kubernetes:v1.19.8");
    context(
        &c,
        &[
            ("etc/tigera-operator.yaml", "kind: Deployment"),
            ("etc/custom-resources.yaml", "kind: Installation"),
            ("imageList", "calico/node:v3.19.1\n"),
            ("rookceph/crd.yaml", "kind: CustomResourceDefinition"),
            ("rookceph/operator.yaml", "kind: Deployment"),
            ("manifest.yaml", "kind: StatefulSet"),
        ],
    );
    // sealerio/applications' calico: COPY etc . and CMD kubectl apply -f etc/...
    let r = build(
        &c,
        "FROM kubernetes:v1.19.8\nCOPY etc .\nCOPY imageList manifests\n\
         #RUN wget https://docs.projectcalico.org/manifests/tigera-operator.yaml\n\
         CMD kubectl apply -f etc/tigera-operator.yaml\nCMD kubectl apply -f etc/custom-resources.yaml\n",
        "calico:v1",
    );
    assert_eq!(r.generation.semantics, CopySemantics::Sealer08);
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
    expect(
        &c,
        "calico:v1",
        true,
        &[
            ("etc/tigera-operator.yaml", "kind: Deployment"),
            ("etc/custom-resources.yaml", "kind: Installation"),
            ("manifests/imageList", "calico/node:v3.19.1\n"),
        ],
    );
    assert_eq!(
        info(&c, "calico:v1").cmds,
        [
            "kubectl apply -f etc/tigera-operator.yaml",
            "kubectl apply -f etc/custom-resources.yaml"
        ]
    );
    // rookceph: a directory copied to the root stays a directory; from
    // scratch, the CMD (deprecated in 0.9) decides, with a note.
    let r = build(
        &c,
        "FROM scratch\nCOPY rookceph .\nCMD kubectl apply -f rookceph/crd.yaml\nCMD kubectl apply -f rookceph/operator.yaml\n",
        "rook:v1",
    );
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
    assert!(
        r.notes.len() == 1
            && r.notes[0].contains("COPY rookceph .: the contents of directory rookceph go to rookceph/ (sealer 0.9+ rules: to /): sealer 0.8 rules, line 3 has CMD"),
        "{:?}",
        r.notes
    );
    expect(
        &c,
        "rook:v1",
        false,
        &[
            ("rookceph/crd.yaml", "kind: CustomResourceDefinition"),
            ("rookceph/operator.yaml", "kind: Deployment"),
        ],
    );
    // zookeeper: RUN mkdir, then a file into the new directory.
    build(
        &c,
        "FROM scratch\nRUN mkdir zookeeper\nCOPY manifest.yaml zookeeper\nCMD kubectl apply -f zookeeper/manifest.yaml\n",
        "zk:v1",
    );
    expect(
        &c,
        "zk:v1",
        false,
        &[("zookeeper/manifest.yaml", "kind: StatefulSet")],
    );
    // A file to a new path: sealer 0.8 makes the path a directory.
    let r = build(
        &c,
        "FROM scratch\nCOPY manifest.yaml zookeeper\nCMD kubectl apply -f zookeeper/manifest.yaml\n",
        "zk:v2",
    );
    expect(
        &c,
        "zk:v2",
        false,
        &[("zookeeper/manifest.yaml", "kind: StatefulSet")],
    );
    assert!(
        r.notes[0].contains(
            "manifest.yaml is written to zookeeper/manifest.yaml (sealer 0.9+ rules: to zookeeper)"
        ),
        "{:?}",
        r.notes
    );
}

#[test]
fn sealer_09_basefs_images_spread_directories_per_platform() {
    let c = setup();
    context(
        &c,
        &[
            ("rootfs/etc/kubeadm.yml", "kind: ClusterConfiguration"),
            ("rootfs/scripts/init-kube.sh", "echo init"),
            ("rootfs/statics/audit-policy.yml", "rules: []"),
            ("rootfs/manifests/.keep", ""),
            ("amd64/bin/kubeadm", "kubeadm amd64"),
            ("amd64/cri/docker.tar.gz", "docker amd64"),
            ("arm64/bin/kubeadm", "kubeadm arm64"),
            ("arm64/cri/docker.tar.gz", "docker arm64"),
            ("imageList", "k8s.gcr.io/pause:3.5\n"),
            ("tigera-operator.yaml", "kind: Deployment"),
            ("custom-resources.yaml", "kind: Installation"),
            (
                "calico.sh",
                "kubectl apply -f applications/tigera-operator.yaml\n",
            ),
        ],
    );
    let kubefile = "FROM scratch\nCOPY rootfs .\nCOPY ${ARCH} .\nCOPY imageList manifests\n\
        LABEL \"cluster.alpha.sealer.io/cluster-runtime-version\"=\"v1.22.15\"\n\
        LABEL \"cluster.alpha.sealer.io/container-runtime-type\"=\"docker\"\n\
        COPY tigera-operator.yaml applications/tigera-operator.yaml\n\
        COPY custom-resources.yaml applications/custom-resources.yaml\n\
        CNI calico local://calico.sh\nLAUNCH [\"calico\"]\n";
    for arch in ["amd64", "arm64"] {
        let tag = format!("basefs:{arch}");
        let r = c
            .build_with(kubefile, &tag, |o| o.platform = format!("linux/{arch}"))
            .unwrap();
        assert_eq!(r.generation.semantics, CopySemantics::Sealer09);
        assert!(r.warnings.is_empty(), "{:?}", r.warnings);
        assert!(
            r.notes.iter().any(|n| n.contains(
                "COPY rootfs .: the contents of directory rootfs go to / (sealer 0.8 rules: to rootfs/): sealer 0.9+ rules, line 5 has LABEL"
            )),
            "{:?}",
            r.notes
        );
        let kubeadm = format!("kubeadm {arch}");
        let docker = format!("docker {arch}");
        expect(
            &c,
            &tag,
            false,
            &[
                ("etc/kubeadm.yml", "kind: ClusterConfiguration"),
                ("scripts/init-kube.sh", "echo init"),
                ("statics/audit-policy.yml", "rules: []"),
                ("manifests/.keep", ""),
                ("manifests/imageList", "k8s.gcr.io/pause:3.5\n"),
                ("bin/kubeadm", &kubeadm),
                ("cri/docker.tar.gz", &docker),
                ("applications/tigera-operator.yaml", "kind: Deployment"),
                ("applications/custom-resources.yaml", "kind: Installation"),
                (
                    "application/apps/calico/calico.sh",
                    "kubectl apply -f applications/tigera-operator.yaml\n",
                ),
            ],
        );
        let i = info(&c, &tag);
        assert_eq!(i.platform, format!("linux/{arch}"));
        assert_eq!(i.launch.app_names, ["calico"]);
        let calico = &i.apps[0];
        assert_eq!(
            (
                calico.kind.as_str(),
                calico.role.as_str(),
                calico.launch_files.clone()
            ),
            ("shell", "cni", vec!["calico.sh".to_string()])
        );
        assert_eq!(i.labels["cluster.alpha.sealer.io/kube-cni-calico"], "true");
    }
}

#[test]
fn the_generation_can_be_forced_and_a_forced_one_is_named() {
    let c = setup();
    let chart = nginx_chart(&c, "nginx");
    for (semantics, want) in [
        (CopySemantics::Sealer09, under("charts/", &chart)),
        (CopySemantics::Sealer08, under("charts/nginx/", &chart)),
    ] {
        // Even against the Kubefile's LABEL, the flag wins.
        let r = c
            .build_with(
                "FROM scratch\nCOPY nginx charts\nLABEL a=b\n",
                "forced:v1",
                |o| o.copy_semantics = Some(semantics),
            )
            .unwrap();
        assert!(r.warnings.is_empty(), "{:?}", r.warnings);
        assert_eq!(r.notes.len(), 1, "{:?}", r.notes);
        assert!(
            r.notes[0].contains(&format!("{semantics} rules, chosen with --copy-semantics")),
            "{:?}",
            r.notes
        );
        expect(&c, "forced:v1", false, &refs(&want));
    }
}

/// Rewrites the base's extension as sealer 0.9.3+ (buildah) writes it,
/// with an app in sealer's own field names (`files`, `cmds`).
fn as_built_by_sealer(c: &Ctx, name: &str) {
    let image = c.store.resolve(name).unwrap();
    let mut manifest = image.manifest.clone();
    let mut ext: serde_json::Value =
        serde_json::from_str(&manifest.annotations[ANNOTATION_SEALER_EXTENSION]).unwrap();
    ext["buildClient"] = serde_json::json!({"sealerVersion": "v0.9.3", "buildahVersion": "1.27.1"});
    ext["applications"] = serde_json::json!([
        {"name": "calico", "type": "shell", "files": ["calico.sh"], "version": "v1"},
        {"name": "tools", "files": ["a.txt"], "version": "v1", "cmds": ["bash", "install.sh"]}
    ]);
    manifest.annotations.insert(
        ANNOTATION_SEALER_EXTENSION.into(),
        serde_json::to_string(&ext).unwrap(),
    );
    let digest = c
        .store
        .put_blob(&serde_json::to_vec(&manifest).unwrap())
        .unwrap();
    c.store
        .set_name(&ImageRef::parse(name).unwrap(), &digest)
        .unwrap();
}

#[test]
fn the_base_decides_the_generation_when_the_kubefile_does_not() {
    let c = setup();
    c.file("plain/x.yaml", "kind: A");
    c.file("mychart/Chart.yaml", "name: mychart");
    // A base sealer 0.9+ built (no Metadata).
    c.build_with("FROM scratch\nCOPY plain manifests\n", "sealer09:v1", |o| {
        o.copy_semantics = Some(CopySemantics::Sealer09)
    })
    .unwrap();
    as_built_by_sealer(&c, "sealer09:v1");
    let r = build(&c, "FROM sealer09:v1\nCOPY mychart charts\n", "on09:v1");
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
    assert!(
        r.notes[0].contains("sealer 0.9+ rules, the base sealer09:v1 was built by sealer v0.9.3"),
        "{:?}",
        r.notes
    );
    expect(
        &c,
        "on09:v1",
        false,
        &[
            ("manifests/x.yaml", "kind: A"),
            ("charts/Chart.yaml", "name: mychart"),
        ],
    );
    // The base's apps, as sealer recorded them, are inherited.
    let apps = info(&c, "on09:v1").apps;
    assert_eq!(
        (
            apps[0].name.as_str(),
            apps[0].kind.as_str(),
            apps[0].launch_files.clone()
        ),
        ("calico", "shell", vec!["calico.sh".to_string()])
    );
    assert_eq!(apps[1].launch_cmds, ["bash", "install.sh"]);
    // A base with sealer 0.9+ labels and no Metadata.
    c.build(
        "FROM scratch\nCOPY plain manifests/\nLABEL \"cluster.alpha.sealer.io/cluster-runtime-type\"=\"kubernetes\"\n",
        "labelled:v1",
    )
    .unwrap();
    let r = build(&c, "FROM labelled:v1\nCOPY mychart charts\n", "onlabel:v1");
    assert!(
        r.notes[0].contains("the base labelled:v1 has the sealer 0.9+ label cluster.alpha.sealer.io/cluster-runtime-type"),
        "{:?}",
        r.notes
    );
    expect(
        &c,
        "onlabel:v1",
        false,
        &[
            ("manifests/x.yaml", "kind: A"),
            ("charts/Chart.yaml", "name: mychart"),
        ],
    );
    // An instruction only sealer 0.9+ reads beats a base with Metadata.
    build_base(&c, "kubernetes:v1.19.8");
    let r = build(
        &c,
        "FROM kubernetes:v1.19.8\nCOPY mychart charts\nAPP mychart local://plain\nLAUNCH [\"mychart\"]\n",
        "mixed:v1",
    );
    assert!(r.notes[0].contains("line 3 has APP"), "{:?}", r.notes);
    expect(
        &c,
        "mixed:v1",
        true,
        &[
            ("charts/Chart.yaml", "name: mychart"),
            ("application/apps/mychart/x.yaml", "kind: A"),
        ],
    );
}

#[test]
fn files_land_inside_directories_and_keep_a_new_name_only_in_09() {
    let c = setup();
    build_base(&c, "kubernetes:v1.19.8");
    c.file("a.conf", "a");
    c.file("my-kubeadm.yml", "kind: InitConfiguration # mine");
    // sealer 0.9+ rules (LABEL): inside a CloudRootfs directory the image
    // lacks, inside `DEST/`, inside a directory of the layers below; a
    // file with a new name elsewhere.
    let r = build(
        &c,
        "FROM scratch\nLABEL gen=9\nCOPY a.conf plugins\nCOPY a.conf newdir/\nRUN mkdir -p opt/conf\n\
         COPY a.conf opt/conf\nCOPY a.conf opt/renamed.conf\n",
        "nine:v1",
    );
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
    expect(
        &c,
        "nine:v1",
        false,
        &[
            ("plugins/a.conf", "a"),
            ("newdir/a.conf", "a"),
            ("opt/conf/a.conf", "a"),
            ("opt/renamed.conf", "a"),
        ],
    );
    // sealer 0.8 rules (CMD): the new name is a directory.
    build(
        &c,
        "FROM scratch\nCOPY a.conf opt/renamed.conf\nCMD cat opt/renamed.conf/a.conf\n",
        "eight:v1",
    );
    expect(&c, "eight:v1", false, &[("opt/renamed.conf/a.conf", "a")]);
    // Over a file of the base, both replace it; sealer 0.8 would have made
    // it a directory, which the note says.
    let r = build(
        &c,
        "FROM kubernetes:v1.19.8\nCOPY my-kubeadm.yml etc/kubeadm.yml\n",
        "over:v1",
    );
    assert!(
        r.notes.iter().any(|n| n.contains(
            "my-kubeadm.yml replaces the file etc/kubeadm.yml (sealer 0.8 would have turned it into a directory"
        )),
        "{:?}",
        r.notes
    );
    let mut want: BTreeMap<String, String> = BASE
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    want.insert(
        "etc/kubeadm.yml".into(),
        "kind: InitConfiguration # mine".into(),
    );
    assert_eq!(files(c.rootfs("over:v1").path()), want);
    // A directory over a file is refused in both, naming the line.
    c.file("dir/x", "x");
    for kubefile in [
        "FROM kubernetes:v1.19.8\nLABEL a=b\nCOPY dir etc/kubeadm.yml\n",
        "FROM kubernetes:v1.19.8\nCMD x\nCOPY dir etc/kubeadm.yml\n",
    ] {
        let err = c.build(kubefile, "bad:v1").unwrap_err().to_string();
        assert!(
            err.contains(
                ":3: COPY: destination etc/kubeadm.yml is a file in the image, not a directory"
            ),
            "{err}"
        );
    }
}

#[test]
fn copy_dot_and_absolute_destinations_in_both_generations() {
    let c = setup();
    context(
        &c,
        &[
            ("bundle.yaml", "kind: CustomResourceDefinition"),
            ("cr.yaml", "kind: MysqlCluster"),
            ("init-kube.sh", "echo mine"),
            ("helm", "helm binary"),
        ],
    );
    let want_dot = [
        ("bundle.yaml", "kind: CustomResourceDefinition"),
        ("cr.yaml", "kind: MysqlCluster"),
        ("init-kube.sh", "echo mine"),
        ("helm", "helm binary"),
    ];
    for semantics in [CopySemantics::Sealer08, CopySemantics::Sealer09] {
        let opts =
            |o: &mut seaport_rootfs::build::BuildOptions<'_>| o.copy_semantics = Some(semantics);
        c.build_with("FROM scratch\nCOPY . .\n", "dot:v1", opts)
            .unwrap();
        expect(&c, "dot:v1", false, &want_dot);
        // sealerio/applications' mysql-operator: COPY . manifests.
        c.build_with("FROM scratch\nCOPY . manifests\n", "dotm:v1", opts)
            .unwrap();
        let want: Vec<(String, String)> = want_dot
            .iter()
            .map(|(p, v)| (format!("manifests/{p}"), v.to_string()))
            .collect();
        expect(&c, "dotm:v1", false, &refs(&want));
        // Absolute destinations are rooted at the rootfs.
        let r = c
            .build_with(
                "FROM scratch\nCOPY init-kube.sh /scripts/\nCOPY helm /bin\nCOPY cr.yaml ./manifests/\n",
                "abs:v1",
                opts,
            )
            .unwrap();
        assert!(r.notes.is_empty(), "{:?}", r.notes);
        expect(
            &c,
            "abs:v1",
            false,
            &[
                ("scripts/init-kube.sh", "echo mine"),
                ("bin/helm", "helm binary"),
                ("manifests/cr.yaml", "kind: MysqlCluster"),
            ],
        );
    }
}

#[test]
fn copy_reads_two_words_a_comment_is_silent_extra_words_warn() {
    let c = setup();
    nginx_chart(&c, "wordpress-chart");
    c.file("a.yaml", "kind: A");
    c.file("b.yaml", "kind: B");
    // sealer's Kubefile reference page, comments and all (the FROM line's
    // comment moved to its own line: sealer refuses it there too).
    let r = build(
        &c,
        "# Base Image\nFROM scratch\nCOPY wordpress-chart . # copy files to ClusterImage\n\
         CMD helm install wordpress wordpress-chart  # run command on creating a cluster\n\
         CMD helm list # multi CMD is valid\n",
        "wp:v1",
    );
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
    let chart = nginx_chart(&c, "wordpress-chart");
    expect(
        &c,
        "wp:v1",
        false,
        &refs(&under("wordpress-chart/", &chart)),
    );
    assert_eq!(
        info(&c, "wp:v1").cmds,
        [
            "helm install wordpress wordpress-chart  # run command on creating a cluster",
            "helm list # multi CMD is valid"
        ]
    );
    // COPY a.yaml b.yaml manifests: sealer copies a.yaml to b.yaml and
    // ignores the rest; so does Seaport, saying so.
    let r = c
        .build_with(
            "FROM scratch\nCOPY a.yaml b.yaml manifests\n",
            "extra:v1",
            |o| o.copy_semantics = Some(CopySemantics::Sealer09),
        )
        .unwrap();
    only_warning(
        &r,
        ":2: COPY: ignoring [\"manifests\"]: sealer reads a source and a destination only",
    );
    expect(&c, "extra:v1", false, &[("b.yaml", "kind: A")]);
    // ADD keeps Docker's several sources.
    build(&c, "FROM scratch\nADD a.yaml b.yaml manifests/\n", "add:v1");
    expect(
        &c,
        "add:v1",
        false,
        &[
            ("manifests/a.yaml", "kind: A"),
            ("manifests/b.yaml", "kind: B"),
        ],
    );
}

#[test]
fn cmd_forms_of_sealer_docs_and_applications_and_lenient_syntax() {
    let c = setup();
    c.file("bundle.yaml", "kind: A");
    // sealer 0.8's "Overwrite CMD" example, lower-case instructions and a
    // continued COPY.
    build(
        &c,
        "from scratch\ncopy bundle.yaml \\\n   manifests\nCMD [kubectl apply -f mysql, kubectl apply -f redis, kubectl apply -f saas]\n",
        "cmd:v1",
    );
    expect(&c, "cmd:v1", false, &[("manifests/bundle.yaml", "kind: A")]);
    assert_eq!(
        info(&c, "cmd:v1").cmds,
        [
            "kubectl apply -f mysql",
            "kubectl apply -f redis",
            "kubectl apply -f saas"
        ]
    );
    // sealerio/applications' redis-operator: a JSON list of commands.
    build(
        &c,
        "FROM scratch\nCOPY . manifests\nCMD [\"kubectl apply -f manifests/bundle.yaml\", \"kubectl apply -f manifests/cr.yaml\"]\n",
        "cmd:v2",
    );
    assert_eq!(
        info(&c, "cmd:v2").cmds,
        [
            "kubectl apply -f manifests/bundle.yaml",
            "kubectl apply -f manifests/cr.yaml"
        ]
    );
    // sealer's build_with_cmds fixture.
    c.file("app.yaml", "kind: Deployment");
    c.file("imageList", "nginx:alpine\n");
    build(
        &c,
        "FROM scratch\nCOPY app.yaml manifests/\nCOPY imageList manifests/\nCMDS [\"kubectl apply -f manifests/app.yaml\"]\n",
        "cmds:v1",
    );
    expect(
        &c,
        "cmds:v1",
        false,
        &[
            ("manifests/app.yaml", "kind: Deployment"),
            ("manifests/imageList", "nginx:alpine\n"),
        ],
    );
    assert_eq!(
        info(&c, "cmds:v1").cmds,
        ["kubectl apply -f manifests/app.yaml"]
    );
}

// ---- APP ---------------------------------------------------------------

#[test]
fn app_types_from_directories_and_files_as_sealer_tells_them() {
    let c = setup();
    // sealer's build_with_appcmds fixture, written anew.
    context(
        &c,
        &[
            ("yamlcontext/a.yaml", "kind: A"),
            ("yamlcontext/b.yaml", "kind: B"),
            ("yamlcontext/sub/c.YML", "kind: C"),
            ("shellcontext/a.sh", "echo a"),
            ("shellcontext/b.sh", "echo b"),
            ("install.sh", "echo top"),
            ("mixedcontext/app.yaml", "kind: App"),
            ("mixedcontext/install.sh", "echo mixed"),
            ("first.sh", "bash helper.sh"),
            ("helper.sh", "echo helper"),
        ],
    );
    let chart = nginx_chart(&c, "nginx");
    let r = build(
        &c,
        "FROM scratch\nAPP yamlapp local://yamlcontext\nAPP shellapp local://shellcontext\n\
         APP mixedapp local://install.sh local://mixedcontext\n\
         APPCMDS mixedapp [\"kubectl\", \"apply\", \"-f\", \"app.yaml\"]\n\
         APP nginx local://nginx\nAPP setup local://first.sh local://helper.sh\n\
         LAUNCH [\"mixedapp\",\"shellapp\",\"yamlapp\",\"nginx\",\"setup\"]\n",
        "apps:v1",
    );
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
    let mut want = vec![
        (
            "application/apps/yamlapp/a.yaml".to_string(),
            "kind: A".to_string(),
        ),
        ("application/apps/yamlapp/b.yaml".into(), "kind: B".into()),
        (
            "application/apps/yamlapp/sub/c.YML".into(),
            "kind: C".into(),
        ),
        ("application/apps/shellapp/a.sh".into(), "echo a".into()),
        ("application/apps/shellapp/b.sh".into(), "echo b".into()),
        // The directory's install.sh overwrites the file given before it.
        (
            "application/apps/mixedapp/install.sh".into(),
            "echo mixed".into(),
        ),
        (
            "application/apps/mixedapp/app.yaml".into(),
            "kind: App".into(),
        ),
        (
            "application/apps/setup/first.sh".into(),
            "bash helper.sh".into(),
        ),
        (
            "application/apps/setup/helper.sh".into(),
            "echo helper".into(),
        ),
    ];
    want.extend(under("application/apps/nginx/", &chart));
    expect(&c, "apps:v1", false, &refs(&want));
    let i = info(&c, "apps:v1");
    let app = |n: &str| {
        let a = i.apps.iter().find(|a| a.name == n).unwrap();
        (
            a.kind.clone(),
            a.launch_files.clone(),
            a.launch_cmds.clone(),
        )
    };
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    assert_eq!(
        app("yamlapp"),
        ("kube".into(), s(&["a.yaml", "b.yaml", "sub/c.YML"]), vec![])
    );
    assert_eq!(
        app("shellapp"),
        ("shell".into(), s(&["a.sh", "b.sh"]), vec![])
    );
    assert_eq!(
        app("mixedapp"),
        (
            "".into(),
            vec![],
            s(&["kubectl", "apply", "-f", "app.yaml"])
        )
    );
    assert_eq!(app("nginx"), ("helm".into(), s(&["nginx"]), vec![]));
    // A shell app launches its first source; the others are for it.
    assert_eq!(app("setup"), ("shell".into(), s(&["first.sh"]), vec![]));
    assert_eq!(
        i.launch.app_names,
        ["mixedapp", "shellapp", "yamlapp", "nginx", "setup"]
    );
}

#[test]
fn an_app_without_a_type_needs_appcmds_and_the_error_names_the_line() {
    let c = setup();
    context(
        &c,
        &[
            ("mixed/app.yaml", "kind: App"),
            ("mixed/install.sh", "echo"),
            ("half-chart/Chart.yaml", "name: x"),
            ("half-chart/templates/d.yaml", "kind: D"),
            ("half-chart/templates/_helpers.tpl", "{{ define }}"),
            ("notes/README.md", "read me"),
        ],
    );
    for (kubefile, line, why) in [
        (
            "FROM scratch\nAPP m local://mixed\n",
            2,
            "app m: its files mix YAML and shell scripts",
        ),
        (
            "FROM scratch\nLABEL a=b\nAPP h local://half-chart\n",
            3,
            "app h: templates/_helpers.tpl is neither YAML",
        ),
        (
            "FROM scratch\nAPP n local://notes\nLAUNCH [\"n\"]\n",
            2,
            "app n: README.md is neither YAML (.yaml, .yml) nor a shell script (.sh)",
        ),
    ] {
        let err = c.build(kubefile, "untyped:v1").unwrap_err().to_string();
        assert!(
            err.contains(&format!(":{line}: APP: {why}")) && err.contains("give APPCMDS"),
            "{kubefile}: {err}"
        );
    }
    assert!(c.store.list().unwrap().is_empty());
    // sealer's Clusterfile documentation: a template rendered at install
    // time, launched by APPCMDS.
    c.file(
        "nginx/nginx.yaml.tmpl",
        "kind: Deployment\nimage: {{ .ImageName }}\n",
    );
    build(
        &c,
        "FROM scratch\nAPP app1 local://nginx\nAPPCMDS app1 [\"kubectl apply -f nginx.yaml\"]\nLAUNCH [\"app1\"]\n",
        "tmpl:v1",
    );
    expect(
        &c,
        "tmpl:v1",
        false,
        &[(
            "application/apps/app1/nginx.yaml.tmpl",
            "kind: Deployment\nimage: {{ .ImageName }}\n",
        )],
    );
    // With APPCMDS it builds, untyped, launched by its commands.
    build(
        &c,
        "FROM scratch\nAPP n local://notes\nAPPCMDS n [\"cat README.md\"]\nLAUNCH [\"n\"]\n",
        "typed:v1",
    );
    let i = info(&c, "typed:v1");
    assert_eq!(i.apps[0].kind, "");
    assert_eq!(i.apps[0].launch_cmds, ["cat README.md"]);
}

#[test]
fn sealer_build_fixtures_launch_and_multi_arch() {
    let c = setup();
    context(
        &c,
        &[
            ("app.yaml", "kind: Deployment"),
            ("imageList", "nginx:alpine\n"),
            ("amd64/bin/i_am_amd64", "amd64"),
            ("arm64/bin/i_am_arm64", "arm64"),
        ],
    );
    build(
        &c,
        "FROM scratch\nCOPY imageList manifests/\nAPP myapp local://app.yaml\nLAUNCH myapp\n",
        "launch:v1",
    );
    expect(
        &c,
        "launch:v1",
        false,
        &[
            ("manifests/imageList", "nginx:alpine\n"),
            ("application/apps/myapp/app.yaml", "kind: Deployment"),
        ],
    );
    let i = info(&c, "launch:v1");
    assert_eq!(i.launch.app_names, ["myapp"]);
    assert_eq!(i.apps[0].launch_files, ["app.yaml"]);
    for arch in ["amd64", "arm64"] {
        let tag = format!("multi:{arch}");
        c.build_with(
            "FROM scratch\nCOPY ${ARCH}/bin bin\nAPP myapp local://app.yaml\nLAUNCH myapp\n",
            &tag,
            |o| o.platform = format!("linux/{arch}"),
        )
        .unwrap();
        expect(
            &c,
            &tag,
            false,
            &[
                (&format!("bin/i_am_{arch}"), arch),
                ("application/apps/myapp/app.yaml", "kind: Deployment"),
            ],
        );
    }
}
