//! The lab network on the machine side: the bridge with its slot's gateway, the
//! veths systemd-nspawn attaches to it, cutting and restoring a host's link,
//! and shaping a link's rate with tc tbf (netem is not available here, so
//! there is no added delay or loss: cut the link to simulate loss).

use std::net::Ipv4Addr;

use crate::cmd::{self, CmdError};
use crate::names::{PREFIX, PREFIX_LEN};

/// Errors of the lab network.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error(transparent)]
    Command(#[from] CmdError),
    #[error("cannot parse `ip -j` output: {0}")]
    Json(#[from] serde_json::Error),
    #[error(
        "address {gateway} is already on interface {iface}, which is not this lab's bridge; \
         remove it (or run `seaport-lab down --all` if it is a leftover lab bridge)"
    )]
    GatewayTaken { gateway: Ipv4Addr, iface: String },
    #[error("no interface with index {0} on the machine (is the host running?)")]
    NoSuchIndex(u32),
    #[error("invalid shaping {0}: rate must be positive")]
    BadShape(String),
}

#[derive(Debug, serde::Deserialize)]
struct IpLink {
    ifindex: u32,
    ifname: String,
    #[serde(default)]
    master: Option<String>,
}

#[derive(Debug, serde::Deserialize)]
struct IpAddrEntry {
    ifname: String,
    #[serde(default)]
    addr_info: Vec<AddrInfo>,
}

#[derive(Debug, serde::Deserialize)]
struct AddrInfo {
    #[serde(default)]
    local: Option<String>,
}

fn links() -> Result<Vec<IpLink>, NetError> {
    let out = cmd::run(&mut cmd::command("ip", ["-j", "link", "show"]))?;
    Ok(serde_json::from_str(&out.stdout)?)
}

/// Names of all interfaces carrying the lab prefix.
pub fn lab_bridges() -> Result<Vec<String>, NetError> {
    Ok(links()?
        .into_iter()
        .map(|l| l.ifname)
        .filter(|n| n.starts_with(PREFIX))
        .collect())
}

/// Interfaces enslaved to `bridge`.
pub fn ports_of(bridge: &str) -> Result<Vec<String>, NetError> {
    Ok(links()?
        .into_iter()
        .filter(|l| l.master.as_deref() == Some(bridge))
        .map(|l| l.ifname)
        .collect())
}

/// The machine interface with index `ifindex` (a host's veth peer).
pub fn name_of_index(ifindex: u32) -> Result<String, NetError> {
    links()?
        .into_iter()
        .find(|l| l.ifindex == ifindex)
        .map(|l| l.ifname)
        .ok_or(NetError::NoSuchIndex(ifindex))
}

/// The interface holding `addr`, if any.
pub fn interface_with_address(addr: Ipv4Addr) -> Result<Option<String>, NetError> {
    let out = cmd::run(&mut cmd::command("ip", ["-j", "-4", "addr", "show"]))?;
    let entries: Vec<IpAddrEntry> = serde_json::from_str(&out.stdout)?;
    let want = addr.to_string();
    Ok(entries
        .into_iter()
        .find(|e| {
            e.addr_info
                .iter()
                .any(|a| a.local.as_deref() == Some(&want))
        })
        .map(|e| e.ifname))
}

/// Creates `bridge` with the `gateway` address and brings it up.
pub fn create_bridge(bridge: &str, gateway: Ipv4Addr) -> Result<(), NetError> {
    if let Some(iface) = interface_with_address(gateway)? {
        return Err(NetError::GatewayTaken { gateway, iface });
    }
    cmd::run(&mut cmd::command(
        "ip",
        ["link", "add", "name", bridge, "type", "bridge"],
    ))?;
    let cidr = format!("{gateway}/{PREFIX_LEN}");
    let setup = cmd::run(&mut cmd::command(
        "ip",
        ["addr", "add", &cidr, "dev", bridge],
    ))
    .and_then(|_| cmd::run(&mut cmd::command("ip", ["link", "set", bridge, "up"])));
    if let Err(e) = setup {
        let _ = delete_link(bridge);
        return Err(e.into());
    }
    Ok(())
}

/// Deletes a lab interface (bridge or veth); missing is fine. Refuses names
/// without the lab prefix unless they are ports of a lab bridge.
pub fn delete_link(name: &str) -> Result<(), NetError> {
    let out = cmd::output(&mut cmd::command("ip", ["link", "del", name]), None)?;
    if out.success() || out.stderr.contains("Cannot find device") {
        Ok(())
    } else {
        Err(CmdError::Failed {
            command: format!("ip link del {name}"),
            code: out.code,
            stderr: out.stderr.trim().to_string(),
        }
        .into())
    }
}

/// Takes a machine-side veth down: the host loses its link (carrier).
pub fn set_link(veth: &str, up: bool) -> Result<(), NetError> {
    cmd::run(&mut cmd::command(
        "ip",
        ["link", "set", veth, if up { "up" } else { "down" }],
    ))?;
    Ok(())
}

/// Rate shaping for one direction of a link (tc tbf).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// Rate in kbit/s.
    pub rate_kbit: u64,
    /// Bucket size in bytes; at least one MTU-sized burst.
    pub burst_bytes: u64,
    /// Longest a packet may wait in the queue, in milliseconds.
    pub queue_latency_ms: u64,
}

impl Shape {
    /// A rate in Mbit/s with a burst and queue bound that suit it.
    pub fn mbit(rate: u64) -> Self {
        let rate_kbit = rate * 1000;
        Shape {
            rate_kbit,
            // ~10 ms worth of data, at least 32 KiB.
            burst_bytes: (rate_kbit * 1000 / 8 / 100).max(32 * 1024),
            queue_latency_ms: 50,
        }
    }

    /// The tc arguments after `dev X root`.
    pub fn tc_args(&self) -> Result<Vec<String>, NetError> {
        if self.rate_kbit == 0 || self.burst_bytes == 0 {
            return Err(NetError::BadShape(format!("{self:?}")));
        }
        Ok(vec![
            "tbf".into(),
            "rate".into(),
            format!("{}kbit", self.rate_kbit),
            "burst".into(),
            format!("{}", self.burst_bytes),
            "latency".into(),
            format!("{}ms", self.queue_latency_ms),
        ])
    }
}

/// Replaces the root qdisc of `dev` with `shape`; `netns_pid` runs tc in the
/// network namespace of that process (a host's side of the link).
pub fn shape(dev: &str, shape: &Shape, netns_pid: Option<u32>) -> Result<(), NetError> {
    let mut args: Vec<String> = ["qdisc", "replace", "dev", dev, "root"]
        .map(String::from)
        .to_vec();
    args.extend(shape.tc_args()?);
    cmd::run(&mut tc(netns_pid, &args))?;
    Ok(())
}

/// Removes shaping from `dev`; none is fine.
pub fn unshape(dev: &str, netns_pid: Option<u32>) -> Result<(), NetError> {
    let args = ["qdisc", "del", "dev", dev, "root"].map(String::from);
    let out = cmd::output(&mut tc(netns_pid, &args), None)?;
    if out.success()
        || out.stderr.contains("No such file")
        || out
            .stderr
            .contains("Cannot delete qdisc with handle of zero")
    {
        Ok(())
    } else {
        Err(CmdError::Failed {
            command: format!("tc {}", args.join(" ")),
            code: out.code,
            stderr: out.stderr.trim().to_string(),
        }
        .into())
    }
}

/// The root qdisc line of `dev` as tc shows it.
pub fn qdisc(dev: &str, netns_pid: Option<u32>) -> Result<String, NetError> {
    let args = ["qdisc", "show", "dev", dev].map(String::from);
    Ok(cmd::run(&mut tc(netns_pid, &args))?.stdout)
}

fn tc(netns_pid: Option<u32>, args: &[String]) -> std::process::Command {
    match netns_pid {
        None => cmd::command("tc", args),
        Some(pid) => {
            let mut c = cmd::command(
                "nsenter",
                ["-t".to_string(), pid.to_string(), "-n".into(), "tc".into()],
            );
            c.args(args);
            c
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_becomes_tbf_arguments() {
        let args = Shape::mbit(100).tc_args().unwrap();
        assert_eq!(args[0], "tbf");
        assert_eq!(args[2], "100000kbit");
        assert_eq!(args[4], "125000");
        assert_eq!(args[6], "50ms");
        assert_eq!(
            Shape::mbit(1).tc_args().unwrap()[4],
            (32 * 1024).to_string()
        );
    }

    #[test]
    fn zero_rate_is_refused() {
        let bad = Shape {
            rate_kbit: 0,
            burst_bytes: 1,
            queue_latency_ms: 1,
        };
        assert!(bad.tc_args().is_err());
    }
}
