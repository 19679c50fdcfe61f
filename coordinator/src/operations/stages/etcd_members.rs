//! `etcd-members`: the etcd member of a leaving master whose reset was left
//! out (its agent offline, `delete -m --force`), removed from master0.
//!
//! A master that is reached leaves etcd in its reset (`kubeadm reset`
//! removes the host's own member). A dead one cannot: as kubeadm users do,
//! master0 asks etcd itself, through its etcd static pod (`kubectl exec
//! etcd-<master0> -- etcdctl ...` with kubeadm's etcd client certificate),
//! for the member whose peer URL is the host's `https://IP:2380`, and
//! removes it. No such member (already removed, or a rerun): nothing to do.

use seaport_shared::shell::quote;

use super::super::drive::Driver;
use super::super::error::StageError;
use super::super::record::LEFT_OUT;

pub(super) async fn run(driver: &Driver, stage: &str, hosts: &[String]) -> Result<(), StageError> {
    let script = driver.record.read(|c| {
        let left_out: Vec<String> = hosts
            .iter()
            .filter_map(|ip| c.host(ip))
            .filter(|h| h.error.as_deref() == Some(LEFT_OUT))
            .map(|h| h.ip.clone())
            .collect();
        let master0 = c.master0();
        let name = c
            .host(&master0)
            .map(|h| h.hostname.clone())
            .unwrap_or_default();
        (!left_out.is_empty()).then(|| script(&name, &left_out))
    });
    match script {
        Some(s) => driver.master0_shell(stage, s).await,
        None => Ok(()),
    }
}

/// The peer URL kubeadm gives a master's etcd member.
fn peer_url(ip: &str) -> String {
    if ip.contains(':') {
        format!("https://[{ip}]:2380")
    } else {
        format!("https://{ip}:2380")
    }
}

/// The shell master0 runs: for each of `ips`, its member found by peer URL
/// in `etcdctl member list` and removed.
fn script(master0_name: &str, ips: &[String]) -> String {
    let pod = format!("etcd-{}", master0_name.to_lowercase());
    let mut s = format!(
        "set -eu\netcd() {{ kubectl -n kube-system exec {} -- etcdctl --endpoints=https://127.0.0.1:2379 --cacert=/etc/kubernetes/pki/etcd/ca.crt --cert=/etc/kubernetes/pki/etcd/healthcheck-client.crt --key=/etc/kubernetes/pki/etcd/healthcheck-client.key \"$@\"; }}\n",
        quote(&pod)
    );
    // Hosts' IPs are addresses (checked when planned); anything else is
    // never put into the script.
    for ip in ips
        .iter()
        .filter(|ip| ip.parse::<std::net::IpAddr>().is_ok())
    {
        let url = quote(&peer_url(ip));
        s.push_str(&format!(
            "id=$(etcd member list | awk -F', ' -v u={url} 'index(\",\" $4 \",\", \",\" u \",\") {{ print $1 }}')\n\
             if [ -n \"$id\" ]; then etcd member remove \"$id\"; echo \"etcd member $id ({ip}) removed\"; \
             else echo \"no etcd member with peer URL \"{url}\": nothing to remove\"; fi\n",
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_finds_each_member_by_its_peer_url_through_master0s_etcd_pod() {
        let s = script("M0", &["10.0.0.2".into(), "fd00::3".into()]);
        assert!(
            s.contains(
                "kubectl -n kube-system exec 'etcd-m0' -- etcdctl --endpoints=https://127.0.0.1:2379"
            ),
            "{s}"
        );
        assert!(s.contains("-v u='https://10.0.0.2:2380' "), "{s}");
        assert!(s.contains("-v u='https://[fd00::3]:2380' "), "{s}");
        assert_eq!(s.matches("etcd member remove").count(), 2, "{s}");
        // Not an address: never in the script.
        assert!(!script("m0", &["$(reboot)".into()]).contains("reboot"));
    }

    #[test]
    fn the_member_of_the_peer_url_is_removed_and_no_other() {
        // The script run by sh against an etcdctl that prints a member list.
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("calls");
        let kubectl = dir.path().join("kubectl");
        std::fs::write(
            &kubectl,
            format!(
                "#!/bin/sh\necho \"$*\" >> {log}\ncase \"$*\" in *'member list'*) printf '%s\\n' \
                 '8e9e05c52164694d, started, m0, https://10.0.0.1:2380, https://10.0.0.1:2379, false' \
                 '91bc3c398fb3c146, started, m2, https://10.0.0.2:2380, https://10.0.0.2:2379, false' \
                 'fd422379fda50e48, started, m3, https://10.0.0.20:2380, https://10.0.0.20:2379, false' ;; esac\n",
                log = log.display()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&kubectl, std::fs::Permissions::from_mode(0o755)).unwrap();
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(script("m0", &["10.0.0.2".into(), "10.0.0.9".into()]))
            .env(
                "PATH",
                format!(
                    "{}:{}",
                    dir.path().display(),
                    std::env::var("PATH").unwrap()
                ),
            )
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let calls = std::fs::read_to_string(&log).unwrap();
        let removes: Vec<&str> = calls
            .lines()
            .filter(|l| l.contains("member remove"))
            .collect();
        assert_eq!(removes.len(), 1, "{calls}");
        assert!(
            removes[0].ends_with("member remove 91bc3c398fb3c146"),
            "{calls}"
        );
        assert!(
            stdout.contains("etcd member 91bc3c398fb3c146 (10.0.0.2) removed"),
            "{stdout}"
        );
        assert!(
            stdout
                .contains("no etcd member with peer URL https://10.0.0.9:2380: nothing to remove"),
            "{stdout}"
        );
    }
}
