//! The kubectl double: checks its command line and its kubeconfig as
//! kubectl does before it talks to a server, and records what it did.
//!
//! - Verbs the installs use are checked with their flags: `apply`,
//!   `create`, `replace`, `delete` (`-f`, or `TYPE NAME...`), `get`,
//!   `describe`, `label`, `annotate`, `taint`, `cordon`, `uncordon`,
//!   `drain`, `version`. An unknown flag, a missing argument, a taint
//!   without a valid effect, a label without a change, `apply` without
//!   `-f`/`-k` fail with kubectl's message. Other kubectl commands are
//!   recorded with their arguments unchecked; an unknown command fails.
//! - The kubeconfig is found as kubectl finds it (`--kubeconfig`, else the
//!   first existing file of `$KUBECONFIG`, else `$HOME/.kube/config`); it
//!   must parse, name a current context (or `--context`) whose cluster
//!   and user exist, and the cluster's server must resolve and answer
//!   `GET /healthz` over TLS verified with its CA (kubectl's "Unable to
//!   connect to the server" otherwise). Without any kubeconfig kubectl
//!   talks to `localhost:8080`, which refuses: so does the double with
//!   `KUBECTL_DOUBLE_REQUIRE_KUBECONFIG=1`; without it the call goes on and
//!   `calls.log` gets a `NO-KUBECONFIG:` line (see [`Env`]).
//! - `-f` files (a directory: its `.yaml`, `.yml`, `.json` files, `-R`
//!   recursively) must exist and be manifests: every YAML document a
//!   mapping with `apiVersion` and `kind`.
//!
//! Every call is appended to `calls.log` (`CWD<TAB>ARGS`), failures as
//! `FAILED: ...`; every accepted manifest file to `applied.log` as `VERB
//! ABSOLUTE-PATH KIND,...`; every node operation to `nodes.log` as `VERB
//! NODE [ARGS]`.

use std::path::{Path, PathBuf};

use crate::apiserver::{self, Trust};

/// Errors: the text kubectl would print.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct KubectlError(pub String);

fn err<T>(s: impl Into<String>) -> Result<T, KubectlError> {
    Err(KubectlError(s.into()))
}

/// Global flags taking a value.
const GLOBAL_VALUE: &[&str] = &[
    "kubeconfig",
    "namespace",
    "n",
    "context",
    "cluster",
    "user",
    "server",
    "s",
    "token",
    "request-timeout",
    "v",
    "as",
    "as-group",
    "certificate-authority",
    "client-certificate",
    "client-key",
    "cache-dir",
    "tls-server-name",
    "log-file",
];
/// Global boolean flags.
const GLOBAL_BOOL: &[&str] = &[
    "insecure-skip-tls-verify",
    "match-server-version",
    "warnings-as-errors",
];

/// A verb's own flags: (with a value, boolean).
fn verb_flags(verb: &str) -> Option<(&'static [&'static str], &'static [&'static str])> {
    const MANIFEST_V: &[&str] = &[
        "f",
        "filename",
        "k",
        "kustomize",
        "o",
        "output",
        "field-manager",
        "l",
        "selector",
        "grace-period",
        "timeout",
        "validate",
        "dry-run",
        "prune-allowlist",
        "prune-whitelist",
        "cascade",
        "template",
        "save-config",
        "edit",
        "windows-line-ending",
    ];
    const MANIFEST_B: &[&str] = &[
        "R",
        "recursive",
        "server-side",
        "force-conflicts",
        "prune",
        "all",
        "overwrite",
        "force",
        "wait",
        "record",
        "ignore-not-found",
        "now",
        "A",
        "all-namespaces",
        "show-managed-fields",
        "openapi-patch",
        "allow-missing-template-keys",
        "raw",
    ];
    Some(match verb {
        "apply" | "create" | "replace" | "delete" => (MANIFEST_V, MANIFEST_B),
        "get" | "describe" => (
            &[
                "o",
                "output",
                "l",
                "selector",
                "f",
                "filename",
                "field-selector",
                "sort-by",
                "L",
                "label-columns",
                "template",
                "chunk-size",
                "output-watch-events",
            ],
            &[
                "A",
                "all-namespaces",
                "w",
                "watch",
                "watch-only",
                "show-labels",
                "no-headers",
                "show-kind",
                "R",
                "recursive",
                "ignore-not-found",
                "show-events",
                "show-managed-fields",
            ],
        ),
        "label" | "annotate" => (
            &[
                "l",
                "selector",
                "o",
                "output",
                "dry-run",
                "field-manager",
                "resource-version",
                "f",
                "filename",
                "field-selector",
            ],
            &[
                "overwrite",
                "all",
                "list",
                "local",
                "A",
                "all-namespaces",
                "R",
                "recursive",
            ],
        ),
        "taint" => (
            &["l", "selector", "o", "output", "dry-run", "field-manager"],
            &["overwrite", "all", "validate"],
        ),
        "cordon" | "uncordon" => (&["l", "selector", "dry-run"], &[]),
        "drain" => (
            &[
                "l",
                "selector",
                "pod-selector",
                "grace-period",
                "timeout",
                "skip-wait-for-delete-timeout",
                "chunk-size",
                "dry-run",
            ],
            &[
                "ignore-daemonsets",
                "delete-emptydir-data",
                "delete-local-data",
                "force",
                "disable-eviction",
            ],
        ),
        "version" => (&["o", "output"], &["client", "short"]),
        _ => return None,
    })
}

/// kubectl commands recorded without checking their arguments.
const UNCHECKED: &[&str] = &[
    "patch",
    "scale",
    "rollout",
    "wait",
    "exec",
    "logs",
    "port-forward",
    "edit",
    "explain",
    "top",
    "config",
    "api-resources",
    "api-versions",
    "cluster-info",
    "auth",
    "certificate",
    "set",
    "expose",
    "run",
    "autoscale",
    "cp",
    "proxy",
    "attach",
    "debug",
    "diff",
    "kustomize",
    "events",
    "plugin",
    "completion",
];

/// A parsed command line.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Parsed {
    /// The verb.
    pub verb: String,
    /// Positional arguments after the verb.
    pub args: Vec<String>,
    /// Flags with values, by long or short name as given (`f`, `filename`).
    pub values: Vec<(String, String)>,
    /// Boolean flags given.
    pub bools: Vec<String>,
}

impl Parsed {
    fn value(&self, names: &[&str]) -> Option<&str> {
        self.values
            .iter()
            .rev()
            .find(|(k, _)| names.contains(&k.as_str()))
            .map(|(_, v)| v.as_str())
    }
    fn all(&self, names: &[&str]) -> Vec<&str> {
        self.values
            .iter()
            .filter(|(k, _)| names.contains(&k.as_str()))
            .map(|(_, v)| v.as_str())
            .collect()
    }
    fn has(&self, names: &[&str]) -> bool {
        self.bools.iter().any(|b| names.contains(&b.as_str()))
    }
}

/// Parses `argv` (without the program name) as kubectl's flag parser
/// does for the verbs it knows.
pub fn parse(argv: &[String]) -> Result<Parsed, KubectlError> {
    let mut p = Parsed::default();
    let mut i = 0;
    let mut rest_positional = false;
    // Global flags may come before the verb.
    let mut pending: Vec<String> = Vec::new();
    while i < argv.len() {
        let a = &argv[i];
        i += 1;
        if rest_positional || a == "-" || !a.starts_with('-') {
            if p.verb.is_empty() {
                if verb_flags(a).is_none() && !UNCHECKED.contains(&a.as_str()) {
                    return err(format!(
                        "error: unknown command \"{a}\" for \"kubectl\"\nRun 'kubectl --help' for usage."
                    ));
                }
                p.verb = a.clone();
            } else {
                p.args.push(a.clone());
            }
            continue;
        }
        if a == "--" {
            rest_positional = true;
            continue;
        }
        let (name, inline): (String, Option<String>) = if let Some(long) = a.strip_prefix("--") {
            match long.split_once('=') {
                Some((k, v)) => (k.to_string(), Some(v.to_string())),
                None => (long.to_string(), None),
            }
        } else {
            // -f FILE, -fFILE, -f=FILE (shorthand: one letter).
            let s = &a[1..];
            let (k, v) = s.split_at(s.chars().next().map_or(0, char::len_utf8));
            let v = v.strip_prefix('=').unwrap_or(v);
            (k.to_string(), (!v.is_empty()).then(|| v.to_string()))
        };
        let dashes = if a.starts_with("--") { "--" } else { "-" };
        let (vv, vb) = if p.verb.is_empty() {
            (&[][..], &[][..])
        } else {
            verb_flags(&p.verb).unwrap_or((&[], &[]))
        };
        let unchecked = UNCHECKED.contains(&p.verb.as_str());
        let takes_value = GLOBAL_VALUE.contains(&name.as_str()) || vv.contains(&name.as_str());
        let boolean = GLOBAL_BOOL.contains(&name.as_str()) || vb.contains(&name.as_str());
        // --dry-run and --validate take an optional value.
        let optional = matches!(name.as_str(), "dry-run" | "validate");
        if optional {
            p.values
                .push((name, inline.unwrap_or_else(|| "true".to_string())));
        } else if takes_value {
            let v = match inline {
                Some(v) => v,
                None => {
                    if i >= argv.len() {
                        return err(format!("error: flag needs an argument: {dashes}{name}"));
                    }
                    i += 1;
                    argv[i - 1].clone()
                }
            };
            p.values.push((name, v));
        } else if boolean {
            if let Some(v) = inline {
                if !matches!(v.as_str(), "true" | "false") {
                    return err(format!(
                        "error: invalid argument \"{v}\" for \"{dashes}{name}\" flag: strconv.ParseBool: parsing \"{v}\": invalid syntax"
                    ));
                }
                if v == "true" {
                    p.bools.push(name);
                }
            } else {
                p.bools.push(name);
            }
        } else if unchecked || p.verb.is_empty() {
            pending.push(a.clone());
        } else {
            return err(format!(
                "error: unknown {}flag: {dashes}{name}\nSee 'kubectl {} --help' for usage.",
                if dashes == "-" { "shorthand " } else { "" },
                p.verb
            ));
        }
    }
    if p.verb.is_empty() {
        return err("error: no command given (kubectl alone prints its help)");
    }
    if !pending.is_empty() && !UNCHECKED.contains(&p.verb.as_str()) {
        return err(format!("error: unknown flag: {}", pending[0]));
    }
    Ok(p)
}

/// What a checked call does, for the records.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// Files to read (verb, paths as given).
    Files(Vec<String>),
    /// Node operations: (verb, node names, the rest).
    Nodes(Vec<String>, Vec<String>),
    /// Nothing to record beyond the call.
    Other,
}

/// Checks the arguments of a parsed call.
pub fn check(p: &Parsed) -> Result<Action, KubectlError> {
    let verb = p.verb.as_str();
    if verb_flags(verb).is_none() && !UNCHECKED.contains(&verb) {
        return err(format!(
            "error: unknown command \"{verb}\" for \"kubectl\"\nRun 'kubectl --help' for usage."
        ));
    }
    let files: Vec<String> = p
        .all(&["f", "filename"])
        .into_iter()
        .map(String::from)
        .collect();
    match verb {
        "apply" | "replace" => {
            if files.is_empty() && p.value(&["k", "kustomize"]).is_none() {
                return err("error: must specify one of -f and -k");
            }
            if !p.args.is_empty() {
                return err(format!(
                    "error: Unexpected args: {:?}\nSee 'kubectl {verb} -h' for help and examples",
                    p.args
                ));
            }
            Ok(Action::Files(files))
        }
        "create" => {
            if !files.is_empty() {
                return Ok(Action::Files(files));
            }
            match p.args.first().map(String::as_str) {
                None => err("error: must specify one of -f and -k"),
                Some(
                    "namespace"
                    | "ns"
                    | "secret"
                    | "configmap"
                    | "cm"
                    | "serviceaccount"
                    | "sa"
                    | "deployment"
                    | "deploy"
                    | "job"
                    | "cronjob"
                    | "service"
                    | "svc"
                    | "role"
                    | "rolebinding"
                    | "clusterrole"
                    | "clusterrolebinding"
                    | "token"
                    | "priorityclass"
                    | "quota"
                    | "ingress"
                    | "poddisruptionbudget"
                    | "pdb",
                ) => {
                    if p.args.len() < 2 {
                        return err(format!(
                            "error: exactly one NAME is required, got 0 ({} {})",
                            verb, p.args[0]
                        ));
                    }
                    Ok(Action::Other)
                }
                Some(other) => err(format!(
                    "error: unknown command \"{other}\" for \"kubectl create\""
                )),
            }
        }
        "delete" => {
            if !files.is_empty() {
                if !p.args.is_empty() {
                    return err("error: there is no need to specify a resource type as a separate argument when passing arguments in resource/name form");
                }
                return Ok(Action::Files(files));
            }
            let Some(kind) = p.args.first() else {
                return err(
                    "error: You must provide one or more resources by argument or filename.",
                );
            };
            let names = &p.args[1..];
            if names.is_empty()
                && !kind.contains('/')
                && !p.has(&["all"])
                && p.value(&["l", "selector"]).is_none()
            {
                return err(format!("error: resource(s) were provided, but no name was specified (kubectl delete {kind})"));
            }
            if is_node(kind) {
                return Ok(Action::Nodes(names.to_vec(), flags_text(p)));
            }
            Ok(Action::Other)
        }
        "get" | "describe" => {
            if p.args.is_empty() && files.is_empty() {
                return err(format!(
                    "error: You must specify the type of resource to {verb}."
                ));
            }
            Ok(Action::Other)
        }
        "label" | "annotate" => {
            let (kind, rest) = match p.args.split_first() {
                Some((k, r)) => (k.clone(), r.to_vec()),
                None if !files.is_empty() => (String::new(), Vec::new()),
                None => return err("error: one or more resources must be specified as <resource> <name> or <resource>/<name>"),
            };
            let (names, changes): (Vec<String>, Vec<String>) = rest
                .into_iter()
                .partition(|a| !a.contains('=') && !a.ends_with('-'));
            if changes.is_empty() && !p.has(&["list"]) {
                return err(format!(
                    "error: at least one {} update is required",
                    if verb == "label" {
                        "label"
                    } else {
                        "annotation"
                    }
                ));
            }
            for c in &changes {
                let key = c.split('=').next().unwrap_or(c).trim_end_matches('-');
                if !valid_key(key) {
                    return err(format!("error: invalid {verb} format: {c}"));
                }
            }
            if names.is_empty()
                && !kind.contains('/')
                && !p.has(&["all"])
                && p.value(&["l", "selector"]).is_none()
                && files.is_empty()
            {
                return err("error: resource(s) were provided, but no name was specified");
            }
            if is_node(&kind) {
                let mut rest = changes;
                rest.extend(flags_text(p));
                return Ok(Action::Nodes(names, rest));
            }
            Ok(Action::Other)
        }
        "taint" => {
            let Some((kind, rest)) = p.args.split_first() else {
                return err("error: at least one taint update is required");
            };
            if !is_node(kind.split('/').next().unwrap_or(kind)) {
                return err(format!(
                    "error: invalid resource type {kind}, only node types are supported"
                ));
            }
            let (names, taints): (Vec<String>, Vec<String>) = if kind.contains('/') {
                (
                    vec![kind.split_once('/').map(|x| x.1).unwrap_or("").to_string()],
                    rest.to_vec(),
                )
            } else if p.has(&["all"]) || p.value(&["l", "selector"]).is_some() {
                (Vec::new(), rest.to_vec())
            } else {
                match rest.split_first() {
                    Some((n, t)) => (vec![n.clone()], t.to_vec()),
                    None => return err("error: at least one taint update is required"),
                }
            };
            if taints.is_empty() {
                return err("error: at least one taint update is required");
            }
            for t in &taints {
                check_taint(t)?;
            }
            let mut rest = taints;
            rest.extend(flags_text(p));
            Ok(Action::Nodes(names, rest))
        }
        "cordon" | "uncordon" | "drain" => {
            if p.args.len() != 1 && p.value(&["l", "selector"]).is_none() {
                return err(format!(
                    "error: USAGE: {verb} NODE [flags]\nSee 'kubectl {verb} -h' for help and examples"
                ));
            }
            Ok(Action::Nodes(p.args.clone(), flags_text(p)))
        }
        _ => Ok(Action::Other),
    }
}

fn flags_text(p: &Parsed) -> Vec<String> {
    let mut out: Vec<String> = p.bools.iter().map(|b| format!("--{b}")).collect();
    for (k, v) in &p.values {
        if !matches!(k.as_str(), "kubeconfig" | "f" | "filename") {
            out.push(format!("--{k}={v}"));
        }
    }
    out
}

fn is_node(kind: &str) -> bool {
    matches!(kind, "node" | "nodes" | "no")
        || kind.starts_with("node/")
        || kind.starts_with("nodes/")
}

/// A label or taint key: `[prefix/]name`, name of at most 63 characters of
/// alphanumerics, `-`, `_`, `.`, starting and ending alphanumeric.
fn valid_key(key: &str) -> bool {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    let ok_name = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    let ok_prefix = prefix.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= 253
            && p.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-.".contains(c))
    });
    ok_name && ok_prefix
}

/// `KEY[=VALUE]:EFFECT`, `KEY:EFFECT-`, `KEY-`.
fn check_taint(t: &str) -> Result<(), KubectlError> {
    let bad = || err(format!("error: invalid taint spec: {t}"));
    if let Some(k) = t.strip_suffix('-') {
        let key = k.split(':').next().unwrap_or(k);
        let effect = k.split_once(':').map(|x| x.1);
        if !valid_key(key) || effect.is_some_and(|e| !valid_effect(e)) {
            return bad();
        }
        return Ok(());
    }
    let Some((kv, effect)) = t.rsplit_once(':') else {
        return bad();
    };
    let key = kv.split('=').next().unwrap_or(kv);
    if !valid_key(key) {
        return bad();
    }
    if !valid_effect(effect) {
        return err(format!(
            "error: invalid taint effect: {effect}, unsupported taint effect"
        ));
    }
    Ok(())
}

fn valid_effect(e: &str) -> bool {
    matches!(e, "NoSchedule" | "PreferNoSchedule" | "NoExecute")
}

/// What a kubeconfig points at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The file.
    pub file: PathBuf,
    /// The context used.
    pub context: String,
    /// The cluster's server URL.
    pub server: String,
    /// The CA (PEM), from certificate-authority-data or certificate-authority.
    pub ca: Option<String>,
}

/// Finds the kubeconfig as kubectl does: `--kubeconfig`, else the first
/// existing file of `$KUBECONFIG`, else `$HOME/.kube/config` (relative to
/// the working directory when HOME is unset, as client-go does).
pub fn kubeconfig_path(
    flag: Option<&str>,
    kubeconfig_env: Option<&str>,
    home: Option<&str>,
) -> Result<Option<PathBuf>, KubectlError> {
    if let Some(f) = flag {
        let p = PathBuf::from(f);
        if !p.is_file() {
            return err(format!("error: stat {f}: no such file or directory"));
        }
        return Ok(Some(p));
    }
    if let Some(list) = kubeconfig_env.filter(|s| !s.is_empty()) {
        return Ok(list
            .split(':')
            .filter(|s| !s.is_empty())
            .map(PathBuf::from)
            .find(|p| p.is_file()));
    }
    let p = Path::new(home.unwrap_or("")).join(".kube/config");
    Ok(p.is_file().then_some(p))
}

/// Reads and checks a kubeconfig: the context (given, else current), its
/// cluster and user.
pub fn read_kubeconfig(path: &Path, context: Option<&str>) -> Result<Target, KubectlError> {
    let show = path.display();
    let text = std::fs::read_to_string(path)
        .or_else(|e| err(format!("error: loading config file \"{show}\": {e}")))?;
    let v: serde_norway::Value = serde_norway::from_str(&text)
        .or_else(|e| err(format!("error: loading config file \"{show}\": yaml: {e}")))?;
    if v.get("kind")
        .and_then(|k| k.as_str())
        .is_some_and(|k| k != "Config")
    {
        return err(format!(
            "error: loading config file \"{show}\": kind is not Config"
        ));
    }
    let ctx_name = match context {
        Some(c) => c.to_string(),
        None => match v.get("current-context").and_then(|c| c.as_str()) {
            Some(c) if !c.is_empty() => c.to_string(),
            _ => return err(format!("error: {show}: no current-context is set (The connection to the server localhost:8080 was refused - did you specify the right host or port?)")),
        },
    };
    let named = |list: &str, name: &str| -> Option<serde_norway::Value> {
        v.get(list)?
            .as_sequence()?
            .iter()
            .find(|e| e.get("name").and_then(|n| n.as_str()) == Some(name))
            .cloned()
    };
    let Some(ctx) = named("contexts", &ctx_name) else {
        return err(format!(
            "error: context was not found for specified context: {ctx_name} ({show})"
        ));
    };
    let cluster = ctx
        .get("context")
        .and_then(|c| c.get("cluster"))
        .and_then(|c| c.as_str())
        .unwrap_or("");
    let user = ctx
        .get("context")
        .and_then(|c| c.get("user"))
        .and_then(|c| c.as_str())
        .unwrap_or("");
    let Some(cl) = named("clusters", cluster) else {
        return err(format!(
            "error: cluster \"{cluster}\" of context \"{ctx_name}\" not found in {show}"
        ));
    };
    if named("users", user).is_none() {
        return err(format!(
            "error: user \"{user}\" of context \"{ctx_name}\" not found in {show}"
        ));
    }
    let cl = cl.get("cluster").cloned().unwrap_or_default();
    let server = cl
        .get("server")
        .and_then(|s| s.as_str())
        .unwrap_or("")
        .to_string();
    if server.is_empty() {
        return err(format!(
            "error: cluster \"{cluster}\" has no server in {show} (The connection to the server localhost:8080 was refused)"
        ));
    }
    let ca = match (
        cl.get("certificate-authority-data")
            .and_then(|s| s.as_str()),
        cl.get("certificate-authority").and_then(|s| s.as_str()),
    ) {
        (Some(b64), _) => {
            use base64::Engine;
            let raw = base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .or_else(|e| err(format!("error: {show}: certificate-authority-data: {e}")))?;
            Some(String::from_utf8_lossy(&raw).into_owned())
        }
        (None, Some(file)) => Some(std::fs::read_to_string(file).or_else(|e| {
            err(format!(
                "error: unable to read certificate-authority {file}: {e}"
            ))
        })?),
        (None, None) => None,
    };
    Ok(Target {
        file: path.to_path_buf(),
        context: ctx_name,
        server,
        ca,
    })
}

/// `HOST:PORT` of an `https://` server URL.
pub fn endpoint_of(server: &str) -> Result<String, KubectlError> {
    let rest = server.strip_prefix("https://").ok_or_else(|| {
        KubectlError(format!(
            "error: the server {server} is not an https:// URL (the API server serves TLS only)"
        ))
    })?;
    let hostport = rest.split('/').next().unwrap_or(rest);
    Ok(if hostport.contains(':') {
        hostport.to_string()
    } else {
        format!("{hostport}:443")
    })
}

/// Reaches the server as kubectl would before anything else: resolves its
/// name and asks `/healthz` over TLS verified with the CA.
pub fn reach(target: &Target) -> Result<String, KubectlError> {
    let ep = endpoint_of(&target.server)?;
    use std::net::ToSocketAddrs;
    if ep
        .to_socket_addrs()
        .map(|mut a| a.next().is_none())
        .unwrap_or(true)
    {
        let host = ep.rsplit_once(':').map(|x| x.0).unwrap_or(&ep);
        return err(format!(
            "Unable to connect to the server: dial tcp: lookup {host}: no such host"
        ));
    }
    let Some(ca) = &target.ca else {
        return err(format!(
            "Unable to connect to the server: x509: certificate signed by unknown authority ({} has no certificate-authority)",
            target.file.display()
        ));
    };
    match apiserver::get(&ep, "/healthz", &Trust::Ca(ca.clone()), None) {
        Ok(a) if a.code == 200 => Ok(a.host.unwrap_or_default()),
        Ok(a) => err(format!(
            "error: the server {} answered HTTP {}",
            target.server, a.code
        )),
        Err(e) => err(format!("Unable to connect to the server: {e}")),
    }
}

/// The kinds of a manifest file's documents, or kubectl's complaint.
pub fn manifest_kinds(path: &Path) -> Result<Vec<String>, KubectlError> {
    let text = std::fs::read_to_string(path).or_else(|_| {
        err(format!(
            "error: the path \"{}\" does not exist",
            path.display()
        ))
    })?;
    let docs: Vec<serde_norway::Value> = if path.extension().is_some_and(|e| e == "json") {
        vec![serde_json::from_str::<serde_norway::Value>(&text)
            .or_else(|e| err(format!("error: error parsing {}: {e}", path.display())))?]
    } else {
        let c = crate::config::documents(path, &text)
            .or_else(|e| err(format!("error: error parsing {}: {e}", path.display())))?;
        c.into_iter().map(|d| d.value).collect()
    };
    let mut kinds = Vec::new();
    for (i, d) in docs.iter().enumerate() {
        if !d.is_mapping() {
            return err(format!(
                "error: error parsing {}: document {} is not an object",
                path.display(),
                i + 1
            ));
        }
        let api = d.get("apiVersion").and_then(|v| v.as_str()).unwrap_or("");
        let kind = d.get("kind").and_then(|v| v.as_str()).unwrap_or("");
        if api.is_empty() {
            return err(format!(
                "error: error validating \"{}\": error validating data: apiVersion not set",
                path.display()
            ));
        }
        if kind.is_empty() {
            return err(format!(
                "error: error validating \"{}\": error validating data: kind not set",
                path.display()
            ));
        }
        kinds.push(kind.to_string());
    }
    if kinds.is_empty() {
        return err(format!(
            "error: no objects passed to apply ({})",
            path.display()
        ));
    }
    Ok(kinds)
}

/// The manifest files `-f ARG` names: the file, or a directory's `.yaml`,
/// `.yml` and `.json` files (recursively with `-R`), sorted.
pub fn expand(arg: &str, cwd: &Path, recursive: bool) -> Result<Vec<PathBuf>, KubectlError> {
    let p = cwd.join(arg);
    if p.is_file() {
        return Ok(vec![p]);
    }
    if !p.is_dir() {
        return err(format!("error: the path \"{arg}\" does not exist"));
    }
    let mut out = Vec::new();
    let mut stack = vec![p];
    while let Some(d) = stack.pop() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(&d)
            .or_else(|e| err(format!("error: reading {}: {e}", d.display())))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        for e in entries {
            if e.is_dir() {
                if recursive {
                    stack.push(e);
                }
            } else if e
                .extension()
                .is_some_and(|x| x == "yaml" || x == "yml" || x == "json")
            {
                out.push(e);
            }
        }
    }
    out.sort();
    if out.is_empty() {
        return err(format!(
            "error: no objects passed to apply (no manifests in the directory \"{arg}\")"
        ));
    }
    Ok(out)
}

/// Runs the double: returns the lines to print, or kubectl's error. Appends
/// to the logs in `state`.
pub fn run(
    argv: &[String],
    cwd: &Path,
    state: &Path,
    env: &Env,
) -> Result<Vec<String>, KubectlError> {
    let p = parse(argv)?;
    let action = check(&p)?;
    let client_only = p.verb == "version" && p.has(&["client"]) || p.verb == "completion";
    // The call first, as the double has always printed it (the installs'
    // logs show what was run), then what kubectl would print.
    let mut out = vec![format!("kubectl (test double) {}", argv.join(" "))];
    if !client_only {
        let path = kubeconfig_path(
            p.value(&["kubeconfig"]),
            env.kubeconfig.as_deref(),
            env.home.as_deref(),
        )?;
        const REFUSED: &str = "The connection to the server localhost:8080 was refused - did you specify the right host or port? (no kubeconfig: --kubeconfig, $KUBECONFIG and $HOME/.kube/config name none)";
        match path {
            None if env.require_kubeconfig => return err(REFUSED),
            None => {
                // Recorded, not refused: see Env::require_kubeconfig.
                append(state, "calls.log", &format!("NO-KUBECONFIG: {REFUSED}"));
                out.push(format!("kubectl (test double): warning: {REFUSED}"));
            }
            Some(path) => {
                let target = read_kubeconfig(&path, p.value(&["context"]))?;
                let answered = reach(&target)?;
                out.push(format!(
                    "kubectl (test double): {} via {} ({}), answered by {answered}",
                    p.verb,
                    target.server,
                    path.display()
                ));
            }
        }
    }
    match action {
        Action::Files(files) => {
            let recursive = p.has(&["R", "recursive"]);
            let mut lines = Vec::new();
            for f in &files {
                for m in expand(f, cwd, recursive)? {
                    let kinds = manifest_kinds(&m)?;
                    let abs = std::fs::canonicalize(&m).unwrap_or(m.clone());
                    lines.push(format!("{} {} {}", p.verb, abs.display(), kinds.join(",")));
                }
            }
            for l in &lines {
                append(state, "applied.log", l);
                out.push(l.clone());
            }
        }
        Action::Nodes(names, rest) => {
            let done = match p.verb.as_str() {
                "label" => "labeled",
                "annotate" => "annotated",
                "taint" => "tainted",
                "cordon" => "cordoned",
                "uncordon" => "uncordoned",
                "drain" => "drained",
                _ => "deleted",
            };
            for n in names {
                let l = format!("{} {n} {}", p.verb, rest.join(" "));
                append(state, "nodes.log", l.trim_end());
                out.push(format!("node/{n} {done}"));
            }
        }
        Action::Other => {}
    }
    Ok(out)
}

/// The environment kubectl reads.
#[derive(Debug, Clone, Default)]
pub struct Env {
    /// `$KUBECONFIG`.
    pub kubeconfig: Option<String>,
    /// `$HOME`.
    pub home: Option<String>,
    /// Whether a call without any kubeconfig fails, as kubectl's does
    /// (`KUBECTL_DOUBLE_REQUIRE_KUBECONFIG=1`). Off by default: the agent
    /// runs kubectl from a systemd service without `HOME` and installs no
    /// `/root/.kube/config`, so such a call is recorded as
    /// `NO-KUBECONFIG: ...` in `calls.log` instead of failing the install.
    pub require_kubeconfig: bool,
}

/// Appends a line to a log of the state directory.
pub fn append(state: &Path, file: &str, line: &str) {
    use std::io::Write;
    let _ = std::fs::create_dir_all(state);
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(state.join(file))
    {
        let _ = writeln!(f, "{line}");
    }
}

#[cfg(test)]
mod tests;
