use super::*;

fn argv(s: &str) -> Vec<String> {
    s.split_whitespace().map(String::from).collect()
}

fn checked(s: &str) -> Result<Action, KubectlError> {
    check(&parse(&argv(s))?)
}

#[test]
fn the_commands_the_installs_use_are_accepted() {
    for ok in [
        "apply -f app.yaml",
        "apply -n ns -f a.yaml -f b.yaml",
        "apply --filename=dir -R",
        "apply -fapp.yaml --dry-run=client -o yaml",
        "--kubeconfig /etc/kubernetes/admin.conf apply -f a.yaml",
        "create -f a.yaml",
        "create namespace demo",
        "delete node h4 --ignore-not-found",
        "delete -f a.yaml",
        "get nodes",
        "get pods -A -o wide",
        "label node h2 disk=ssd --overwrite",
        "label node h2 disk-",
        "taint node h2 node-role.kubernetes.io/master:NoSchedule- --overwrite",
        "taint node h2 dedicated=db:NoExecute",
        "taint nodes h2 key1-",
        "cordon h1",
        "uncordon h1",
        "drain h1 --ignore-daemonsets --delete-emptydir-data --force --timeout=120s",
        "drain h1 --ignore-daemonsets --delete-local-data",
        "version --client",
        "rollout status deployment/x --timeout 60s",
    ] {
        assert!(checked(ok).is_ok(), "{ok}: {:?}", checked(ok));
    }
    assert_eq!(
        checked("taint node h2 a=b:NoSchedule --overwrite").unwrap(),
        Action::Nodes(
            vec!["h2".into()],
            vec!["a=b:NoSchedule".into(), "--overwrite".into()]
        )
    );
    assert_eq!(
        checked("apply -f a.yaml -f b.yaml").unwrap(),
        Action::Files(vec!["a.yaml".into(), "b.yaml".into()])
    );
}

#[test]
fn what_kubectl_rejects_is_rejected_with_its_message() {
    for (bad, want) in [
        ("apply", "must specify one of -f and -k"),
        ("apply a.yaml", "must specify one of -f and -k"),
        ("apply -f", "flag needs an argument: -f"),
        ("apply -f a.yaml --frobnicate", "unknown flag: --frobnicate"),
        ("apply -f a.yaml -x", "unknown shorthand flag: -x"),
        ("applyy -f a.yaml", "unknown command \"applyy\""),
        ("get", "You must specify the type of resource to get"),
        ("label node h2", "at least one label update is required"),
        ("label node h2 'bad key'=x", "invalid label format"),
        ("taint node h2 key=value", "invalid taint spec"),
        (
            "taint node h2 key=value:Sometimes",
            "invalid taint effect: Sometimes",
        ),
        (
            "taint pod p a=b:NoSchedule",
            "only node types are supported",
        ),
        ("drain", "USAGE: drain NODE"),
        (
            "drain h1 --ignore-daemonset",
            "unknown flag: --ignore-daemonset",
        ),
        ("cordon h1 h2", "USAGE: cordon NODE"),
        ("delete node", "no name was specified"),
        ("delete", "You must provide one or more resources"),
        ("uncordon h1 --force", "unknown flag: --force"),
        ("version --client=maybe", "invalid argument \"maybe\""),
    ] {
        let e = checked(bad).expect_err(bad).to_string();
        assert!(e.contains(want), "{bad}: {e}");
    }
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn kubeconfigs_are_found_and_checked_as_kubectl_does() {
    let d = tempfile::tempdir().unwrap();
    let good = write(
        d.path(),
        "good",
        "apiVersion: v1\nkind: Config\nclusters:\n- name: k\n  cluster:\n    server: https://apiserver.cluster.local:6443\n    certificate-authority-data: Zm9v\ncontexts:\n- name: admin@k\n  context:\n    cluster: k\n    user: admin\nusers:\n- name: admin\n  user: {}\ncurrent-context: admin@k\n",
    );
    let t = read_kubeconfig(&good, None).unwrap();
    assert_eq!(t.server, "https://apiserver.cluster.local:6443");
    assert_eq!(t.ca.as_deref(), Some("foo"));
    assert_eq!(
        endpoint_of(&t.server).unwrap(),
        "apiserver.cluster.local:6443"
    );
    // Missing context, missing cluster, not YAML, no server.
    let no_ctx = write(
        d.path(),
        "noctx",
        "apiVersion: v1\nkind: Config\nclusters: []\nusers: []\ncurrent-context: a@b\n",
    );
    assert!(read_kubeconfig(&no_ctx, None)
        .unwrap_err()
        .to_string()
        .contains("context was not found"));
    let text = std::fs::read_to_string(&good).unwrap();
    let other = write(
        d.path(),
        "other",
        &text.replace("cluster: k\n", "cluster: gone\n"),
    );
    assert!(read_kubeconfig(&other, None)
        .unwrap_err()
        .to_string()
        .contains("cluster \"gone\""));
    let broken = write(d.path(), "broken", "clusters: [\n");
    assert!(read_kubeconfig(&broken, None)
        .unwrap_err()
        .to_string()
        .contains("loading config file"));
    let plain = write(d.path(), "plain", &text.replace("https://", "http://"));
    let t = read_kubeconfig(&plain, None).unwrap();
    assert!(endpoint_of(&t.server).is_err());

    // Resolution: --kubeconfig must exist; $KUBECONFIG's first existing
    // file; else $HOME/.kube/config; else none.
    assert!(kubeconfig_path(Some("/nonexistent/x"), None, None).is_err());
    let list = format!("/nonexistent/a:{}", good.display());
    assert_eq!(
        kubeconfig_path(None, Some(&list), None).unwrap(),
        Some(good.clone())
    );
    std::fs::create_dir_all(d.path().join(".kube")).unwrap();
    assert_eq!(
        kubeconfig_path(None, None, d.path().to_str()).unwrap(),
        None
    );
    std::fs::copy(&good, d.path().join(".kube/config")).unwrap();
    assert_eq!(
        kubeconfig_path(None, None, d.path().to_str()).unwrap(),
        Some(d.path().join(".kube/config"))
    );
}

#[test]
fn without_a_kubeconfig_the_call_fails_when_required_and_is_marked_otherwise() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "a.yaml", "apiVersion: v1\nkind: ConfigMap\n");
    let strict = Env {
        require_kubeconfig: true,
        ..Env::default()
    };
    let state = d.path().join("state");
    let e = run(&argv("apply -f a.yaml"), d.path(), &state, &strict).unwrap_err();
    assert!(e.to_string().contains("localhost:8080"), "{e}");
    assert!(!state.join("applied.log").exists());
    // Not required: recorded as such, and the call goes on.
    let out = run(&argv("apply -f a.yaml"), d.path(), &state, &Env::default()).unwrap();
    assert_eq!(out[0], "kubectl (test double) apply -f a.yaml", "{out:?}");
    let calls = std::fs::read_to_string(state.join("calls.log")).unwrap();
    assert!(calls.starts_with("NO-KUBECONFIG: "), "{calls}");
    let applied = std::fs::read_to_string(state.join("applied.log")).unwrap();
    assert!(
        applied.starts_with("apply ") && applied.ends_with(" ConfigMap\n"),
        "{applied}"
    );
}

#[test]
fn manifests_must_be_yaml_objects_with_api_version_and_kind() {
    let d = tempfile::tempdir().unwrap();
    let ok = write(
        d.path(),
        "ok.yaml",
        "apiVersion: v1\nkind: ConfigMap\n---\napiVersion: v1\nkind: Service\n",
    );
    assert_eq!(manifest_kinds(&ok).unwrap(), ["ConfigMap", "Service"]);
    for (name, text, want) in [
        (
            "nokind.yaml",
            "apiVersion: v1\nmetadata: {}\n",
            "kind not set",
        ),
        ("noapi.yaml", "kind: ConfigMap\n", "apiVersion not set"),
        (
            "tab.yaml",
            "apiVersion: v1\nkind: ConfigMap\ndata:\n\tx: y\n",
            "error parsing",
        ),
        ("list.yaml", "- a\n- b\n", "not an object"),
        ("empty.yaml", "# nothing\n", "no objects"),
    ] {
        let p = write(d.path(), name, text);
        let e = manifest_kinds(&p).unwrap_err().to_string();
        assert!(e.contains(want), "{name}: {e}");
    }
    std::fs::create_dir_all(d.path().join("dir/sub")).unwrap();
    write(&d.path().join("dir"), "a.yml", "apiVersion: v1\nkind: A\n");
    write(
        &d.path().join("dir/sub"),
        "b.json",
        "{\"apiVersion\":\"v1\",\"kind\":\"B\"}",
    );
    assert_eq!(expand("dir", d.path(), false).unwrap().len(), 1);
    assert_eq!(expand("dir", d.path(), true).unwrap().len(), 2);
    assert!(expand("missing", d.path(), false)
        .unwrap_err()
        .to_string()
        .contains("does not exist"));
}
