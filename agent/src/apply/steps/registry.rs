//! `registry`: the local registry on a registry host: `registry/` of the
//! rootfs bind-mounted, the image's registry binary run as a unit, the
//! image's `images/*.tar` loaded into it. With `localRegistry.username` and
//! `password` it asks for them (htpasswd, bcrypt), as sealer's does.
//! With the registry's TLS it serves the cluster's registry certificate
//! (`registry.crt`, its key `registry.key` 0600, in the cluster's
//! directory) and is waited for and loaded over TLS against the CA.

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use seaport_rootfs::registry::credentials::Credentials;
use seaport_shared::cluster::Step;
use seaport_shared::wire::{RegistryCredentials, RegistryTls};

use super::super::journal::Change;
use super::context::{is_executable, read_text_inside};
use super::context::{HostStep, StepContext};
use super::error::StepError;
use super::paths::{PREVIOUS_ROOTFS, REGISTRY_BINARIES, REGISTRY_UNIT, UNIT_DIR};

pub(super) struct Registry;

const DEFAULT_REGISTRY_CONFIG: &str = "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: /var/lib/registry\nhttp:\n  addr: :5000\n";

impl HostStep for Registry {
    fn step(&self) -> Step {
        Step::Registry
    }

    fn run(&self, cx: &mut StepContext<'_>) -> Result<String, StepError> {
        let rootfs = cx.rootfs();
        let storage = rootfs.join("registry");
        // Bind-mounted and served: a real directory of the rootfs, never a
        // symlink the image planted.
        seaport_shared::confined::Dir::open(&rootfs)
            .and_then(|r| r.create_dirs(Path::new("registry")))?;
        let mount = cx.opts.cluster_dir().join("registry");
        fs::create_dir_all(&mount).map_err(|source| StepError::Io {
            action: "creating",
            path: mount.clone(),
            source,
        })?;
        // Mounted from a replaced rootfs (an upgrade): mount the new one.
        if cx.fx.is_mounted(&mount) && !same_dir(&mount, &storage) {
            cx.fx.unmount(&mount)?;
        }
        if !cx.fx.is_mounted(&mount) {
            let target = mount.to_string_lossy().into_owned();
            let known = cx
                .journal
                .state()
                .changes
                .iter()
                .any(|c| matches!(c, Change::Mounted { target: t } if *t == target));
            if !known {
                cx.journal.record(Change::Mounted { target })?;
            }
            cx.fx.bind_mount(&storage, &mount)?;
        }
        let bin = REGISTRY_BINARIES
            .iter()
            .map(|r| rootfs.join(r))
            .find(|p| is_executable(p))
            .ok_or(StepError::NoRegistryBinary)?;
        let base = read_text_inside(&rootfs, "etc/registry_config.yml")?
            .unwrap_or_else(|| DEFAULT_REGISTRY_CONFIG.to_string());
        let mut config = registry_config(&base, &mount, &cx.registry_port);
        let credentials = cx.opts.registry_auth.clone();
        if let Some(auth) = &credentials {
            let htpasswd = cx.opts.cluster_dir().join(HTPASSWD);
            write_htpasswd(&htpasswd, auth)?;
            config = with_htpasswd(&config, &htpasswd);
        }
        let tls = match &cx.opts.registry_tls {
            Some(t) => Some(write_tls(&cx.opts.cluster_dir(), t, &cx.registry_domain)?),
            None => None,
        };
        if let Some(t) = &tls {
            config = with_tls(&config, &t.certificate, &t.key);
        }
        let config_path = cx.opts.cluster_dir().join("registry.yml");
        seaport_shared::confined::write_atomic(&config_path, config.as_bytes(), 0o644)?;
        let unit = format!(
            "[Unit]\nDescription=Local registry of cluster {cluster}\nAfter=network.target\n\n[Service]\nExecStart={bin} serve {config}\nRestart=always\nRestartSec=2\n\n[Install]\nWantedBy=multi-user.target\n",
            cluster = cx.opts.cluster,
            bin = bin.display(),
            config = config_path.display(),
        );
        cx.install_file(
            &format!("{UNIT_DIR}/{REGISTRY_UNIT}"),
            unit.as_bytes(),
            0o644,
        )?;
        cx.systemctl_ok(&["daemon-reload"])?;
        cx.enable_unit(REGISTRY_UNIT, true)?;
        if cx.rerun {
            cx.systemctl_ok(&["restart", REGISTRY_UNIT])?;
        }
        let previous = cx.opts.cluster_dir().join(PREVIOUS_ROOTFS);
        if previous.exists() {
            fs::remove_dir_all(&previous).map_err(|source| StepError::Io {
                action: "removing",
                path: previous.clone(),
                source,
            })?;
        }
        let port = cx.registry_port.clone();
        let check = tls
            .as_ref()
            .map(|t| (t.client.clone(), cx.registry_domain.clone()));
        let waited = cx.wait_until("the local registry (GET /v2/)", || {
            registry_answers(&port, check.clone())
        })?;
        let scratch = cx.opts.cluster_dir().join("tmp/images");
        // Over TLS by the registry's name (this host names itself so in
        // /etc/hosts), the certificate checked against the cluster's CA.
        let (target, ca) = match &tls {
            Some(t) => (cx.local_registry(), Some(t.ca.clone())),
            None => (format!("127.0.0.1:{}", cx.registry_port), None),
        };
        let loaded = super::super::images_load::load_images(
            &rootfs.join("images"),
            &target,
            ca.as_deref(),
            &scratch,
            credentials.map(|c| Credentials::new(c.username, c.password)),
        )?;
        let _ = fs::remove_dir_all(cx.opts.cluster_dir().join("tmp"));
        Ok(format!(
            "registry answering after {:.1} s; loaded {}",
            waited.as_secs_f64(),
            if loaded.is_empty() {
                "no images".to_string()
            } else {
                loaded.join(", ")
            }
        ))
    }
}

/// The registry's htpasswd file, in the cluster's directory.
const HTPASSWD: &str = "registry_htpasswd";
/// The registry's certificate chain, in the cluster's directory.
pub(crate) const TLS_CERT: &str = "registry.crt";
/// The registry's key (0600), in the cluster's directory.
pub(crate) const TLS_KEY: &str = "registry.key";
/// The CA the registry's certificate chains to, in the cluster's directory.
const TLS_CA: &str = "registry-ca.crt";

/// The files of the registry's TLS and a client that trusts its CA.
struct ServedTls {
    certificate: std::path::PathBuf,
    key: std::path::PathBuf,
    ca: std::path::PathBuf,
    client: std::sync::Arc<rustls::ClientConfig>,
}

/// Writes the certificate (0644), key (0600) and CA (0644) into `dir`,
/// once they are known to serve `domain` (the name the hosts use: an
/// image's env may name another than the coordinator made it for).
fn write_tls(dir: &Path, t: &RegistryTls, domain: &str) -> Result<ServedTls, StepError> {
    let (Some(certificate), Some(key)) = (&t.certificate, &t.key) else {
        return Err(StepError::RegistryTls(
            "this registry host was sent no certificate and key".into(),
        ));
    };
    let served = seaport_shared::registry_cert::RegistryCert {
        ca: t.ca.clone(),
        certificate: certificate.clone(),
        key: key.clone(),
    };
    seaport_shared::registry_cert::check(&served, domain, std::time::SystemTime::now())
        .map_err(|e| StepError::RegistryTls(e.to_string()))?;
    let ca_der = seaport_shared::pki::certs_from_pem(&t.ca, "the registry CA")
        .map_err(|e| StepError::RegistryTls(e.to_string()))?
        .remove(0);
    let client =
        crate::balancer::check_tls(ca_der).map_err(|e| StepError::RegistryTls(e.to_string()))?;
    let files = ServedTls {
        certificate: dir.join(TLS_CERT),
        key: dir.join(TLS_KEY),
        ca: dir.join(TLS_CA),
        client,
    };
    seaport_shared::confined::write_atomic(&files.key, key.as_bytes(), 0o600)?;
    seaport_shared::confined::write_atomic(&files.certificate, certificate.as_bytes(), 0o644)?;
    seaport_shared::confined::write_atomic(&files.ca, t.ca.as_bytes(), 0o644)?;
    Ok(files)
}

/// `config` serving TLS with `certificate` and `key`: a `tls` section the
/// image's `http` section had is replaced; an `http` section is added when
/// there is none.
fn with_tls(config: &str, certificate: &Path, key: &Path) -> String {
    let mut out = String::new();
    let mut in_http = false;
    let mut skip_indent: Option<usize> = None;
    let mut added = false;
    let section = |indent: &str| {
        format!(
            "{indent}tls:\n{indent}{indent}certificate: {}\n{indent}{indent}key: {}\n",
            certificate.display(),
            key.display()
        )
    };
    for l in config.lines() {
        let indent = l.len() - l.trim_start().len();
        let blank = l.trim().is_empty();
        if let Some(i) = skip_indent {
            if blank || indent > i {
                continue;
            }
            skip_indent = None;
        }
        if !blank && indent == 0 {
            if in_http && !added {
                out.push_str(&section("  "));
                added = true;
            }
            in_http = l.trim_end() == "http:";
            out.push_str(l);
            out.push('\n');
            continue;
        }
        if in_http && !blank && l.trim_start().starts_with("tls:") {
            skip_indent = Some(indent);
            continue;
        }
        if in_http && !blank && !added {
            out.push_str(&section(&l[..indent]));
            added = true;
        }
        out.push_str(l);
        out.push('\n');
    }
    if !added {
        if !in_http {
            out.push_str("http:\n");
        }
        out.push_str(&section("  "));
    }
    out
}

/// Writes `user:bcrypt(password)` to `path` (0600), unless it already holds
/// that user with a hash of that password: a rerun keeps the file (and the
/// registry's configuration) unchanged.
fn write_htpasswd(path: &Path, auth: &RegistryCredentials) -> Result<(), StepError> {
    let current = fs::read_to_string(path).unwrap_or_default();
    let kept = current.lines().count() == 1
        && current
            .lines()
            .next()
            .and_then(|l| l.split_once(':'))
            .is_some_and(|(u, h)| {
                u == auth.username && bcrypt::verify(&auth.password, h).unwrap_or(false)
            });
    if kept {
        return Ok(());
    }
    let hash = bcrypt::hash(&auth.password, bcrypt::DEFAULT_COST)?;
    let line = format!("{}:{hash}\n", auth.username);
    seaport_shared::confined::write_atomic(path, line.as_bytes(), 0o600)?;
    Ok(())
}

/// `config` asking for the users of the htpasswd file at `path`: an `auth`
/// section the image's configuration had is replaced.
fn with_htpasswd(config: &str, path: &Path) -> String {
    let mut out = String::new();
    let mut in_auth = false;
    for l in config.lines() {
        let top = !l.starts_with([' ', '\t']) && !l.trim().is_empty();
        if top {
            in_auth = l.trim_end().starts_with("auth:");
        }
        if !in_auth {
            out.push_str(l);
            out.push('\n');
        }
    }
    out.push_str(&format!(
        "auth:\n  htpasswd:\n    realm: seaport-registry\n    path: {}\n",
        path.display()
    ));
    out
}

/// Whether two paths are the same directory (a bind mount and its source).
fn same_dir(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (fs::metadata(a), fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

/// The image's registry config with the storage and port of this install.
fn registry_config(base: &str, storage: &Path, port: &str) -> String {
    base.lines()
        .map(|l| {
            let indent = &l[..l.len() - l.trim_start().len()];
            let t = l.trim_start();
            if t.starts_with("rootdirectory:") {
                format!("{indent}rootdirectory: {}", storage.display())
            } else if t.starts_with("addr:") {
                format!("{indent}addr: :{port}")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

/// Whether the registry on this host answers `GET /v2/` (200, or 401 when
/// it wants credentials); with `tls`, over TLS verified for the domain.
fn registry_answers(
    port: &str,
    tls: Option<(std::sync::Arc<rustls::ClientConfig>, String)>,
) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(
        &format!("127.0.0.1:{port}")
            .parse()
            .expect("a socket address"),
        Duration::from_secs(1),
    ) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
    let mut buf = [0u8; 32];
    let n = match tls {
        None => {
            if s.write_all(b"GET /v2/ HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
                .is_err()
            {
                return false;
            }
            s.read(&mut buf).unwrap_or(0)
        }
        Some((cfg, domain)) => {
            let Ok(name) = rustls_pki_types::ServerName::try_from(domain.clone()) else {
                return false;
            };
            let Ok(mut conn) = rustls::ClientConnection::new(cfg, name) else {
                return false;
            };
            let mut tls = rustls::Stream::new(&mut conn, &mut s);
            let req = format!("GET /v2/ HTTP/1.0\r\nHost: {domain}\r\n\r\n");
            if tls.write_all(req.as_bytes()).is_err() {
                return false;
            }
            tls.read(&mut buf).unwrap_or(0)
        }
    };
    let head = String::from_utf8_lossy(&buf[..n]);
    head.starts_with("HTTP/1.") && (head.contains(" 200") || head.contains(" 401"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_config_points_at_the_mount_and_port() {
        let base =
            "storage:\n  filesystem:\n    rootdirectory: /var/lib/registry\nhttp:\n  addr: :5000\n";
        let out = registry_config(base, Path::new("/data/c/registry"), "5001");
        assert!(
            out.contains("    rootdirectory: /data/c/registry\n"),
            "{out}"
        );
        assert!(out.contains("  addr: :5001\n"), "{out}");
    }

    #[test]
    fn tls_replaces_the_images_tls_section_under_http_and_keeps_the_rest() {
        let (c, k) = (Path::new("/d/registry.crt"), Path::new("/d/registry.key"));
        let base = "version: 0.1\nhttp:\n  addr: :5000\n  tls:\n    certificate: /old.crt\n    key: /old.key\n  headers:\n    X: [y]\nstorage:\n  delete:\n    enabled: true\n";
        assert_eq!(
            with_tls(base, c, k),
            "version: 0.1\nhttp:\n  tls:\n    certificate: /d/registry.crt\n    key: /d/registry.key\n  addr: :5000\n  headers:\n    X: [y]\nstorage:\n  delete:\n    enabled: true\n"
        );
        // No http section: one is added.
        assert_eq!(
            with_tls("version: 0.1\n", c, k),
            "version: 0.1\nhttp:\n  tls:\n    certificate: /d/registry.crt\n    key: /d/registry.key\n"
        );
        // An http section holding only tls, followed by another.
        assert_eq!(
            with_tls("http:\n  tls:\n    key: /x\nauth: {}\n", c, k),
            "http:\n  tls:\n    certificate: /d/registry.crt\n    key: /d/registry.key\nauth: {}\n"
        );
    }

    #[test]
    fn the_key_is_written_0600_and_a_host_without_it_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let c = seaport_shared::registry_cert::generate("sea.hub", &[], &[]).unwrap();
        let t = RegistryTls {
            ca: c.ca.clone(),
            certificate: Some(c.certificate.clone()),
            key: Some(c.key.clone()),
        };
        let files = write_tls(dir.path(), &t, "sea.hub").unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&files.key), 0o600);
        assert_eq!(fs::read_to_string(&files.key).unwrap(), c.key);
        assert_eq!(mode(&files.certificate), 0o644);
        // Another domain than the hosts use: refused, naming it.
        let e = write_tls(dir.path(), &t, "hub.example").err().unwrap();
        assert!(e.to_string().contains("not valid for hub.example"), "{e}");
        let no_key = RegistryTls { key: None, ..t };
        assert!(write_tls(dir.path(), &no_key, "sea.hub").is_err());
    }

    #[test]
    fn htpasswd_replaces_the_images_auth_section_and_keeps_the_rest() {
        let base = "version: 0.1\nauth:\n  token:\n    realm: x\nhttp:\n  addr: :5000\n";
        let out = with_htpasswd(base, Path::new("/data/c/registry_htpasswd"));
        assert_eq!(
            out,
            "version: 0.1\nhttp:\n  addr: :5000\nauth:\n  htpasswd:\n    realm: seaport-registry\n    path: /data/c/registry_htpasswd\n"
        );
    }

    #[test]
    fn the_htpasswd_file_holds_a_bcrypt_hash_never_the_password_and_is_kept_on_rerun() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(HTPASSWD);
        let auth = RegistryCredentials {
            username: "admin".into(),
            password: "s3cret-pw".into(),
        };
        write_htpasswd(&path, &auth).unwrap();
        let text = fs::read_to_string(&path).unwrap();
        assert!(!text.contains("s3cret-pw"), "{text}");
        let (user, hash) = text.trim_end().split_once(':').unwrap();
        assert_eq!(user, "admin");
        assert!(bcrypt::verify("s3cret-pw", hash).unwrap());
        assert!(!bcrypt::verify("other", hash).unwrap());
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // The same credentials again: the same file (no new salt).
        write_htpasswd(&path, &auth).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), text);
        // A new password: a new hash.
        let changed = RegistryCredentials {
            password: "new-pw".into(),
            ..auth
        };
        write_htpasswd(&path, &changed).unwrap();
        let (_, hash) = fs::read_to_string(&path)
            .unwrap()
            .trim_end()
            .split_once(':')
            .map(|(u, h)| (u.to_string(), h.to_string()))
            .unwrap();
        assert!(bcrypt::verify("new-pw", &hash).unwrap());
    }
}
