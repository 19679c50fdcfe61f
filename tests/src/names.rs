//! Names and addresses: every resource the lab creates carries the `spl-`
//! prefix and a per-run id, so cleanup can tell ours from everything else.

use std::io::Read;
use std::net::Ipv4Addr;
use std::path::PathBuf;

/// Prefix of every bridge, host, directory and mount the lab creates.
pub const PREFIX: &str = "spl-";
/// How many labs can run at once: 198.18.0.0/24 is cut into this many
/// blocks, one per lab.
pub const SLOTS: u8 = 4;
/// Prefix length of one lab's block (a quarter of 198.18.0.0/24).
pub const PREFIX_LEN: u8 = 26;
/// Addresses in one block.
const SLOT_SIZE: u8 = 64;
/// Offset in its block of the first host's address.
pub const FIRST_HOST_OFFSET: u8 = 11;
/// Most hosts one lab can have (offsets .11 to .60 of its block).
pub const MAX_HOSTS: usize = 50;
/// Linux interface names are at most 15 bytes.
pub const IFNAMSIZ_MAX: usize = 15;

/// Length of the random part of a run id, in hex digits.
const ID_HEX_LEN: usize = 6;

/// Identity of one lab run: `spl-<6 hex digits>`. It names the bridge and
/// prefixes every host name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct RunId(String);

/// Errors of names.
#[derive(Debug, thiserror::Error)]
pub enum NameError {
    #[error("invalid lab run id {0:?}: expected `spl-` followed by 6 lowercase hex digits")]
    InvalidRunId(String),
    #[error("cannot read random bytes from /dev/urandom: {0}")]
    Random(std::io::Error),
}

impl RunId {
    /// A fresh random run id.
    pub fn generate() -> Result<Self, NameError> {
        let bytes = random_bytes::<3>()?;
        Ok(RunId(format!("{PREFIX}{}", hex::encode(bytes))))
    }

    /// Parses `spl-xxxxxx`.
    pub fn parse(s: &str) -> Result<Self, NameError> {
        let ok = s
            .strip_prefix(PREFIX)
            .map(|rest| {
                rest.len() == ID_HEX_LEN
                    && rest
                        .chars()
                        .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
            })
            .unwrap_or(false);
        if ok {
            Ok(RunId(s.to_string()))
        } else {
            Err(NameError::InvalidRunId(s.to_string()))
        }
    }

    /// The run id as text, e.g. `spl-1a2b3c`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Name of the machine-side bridge (same as the run id; fits IFNAMSIZ).
    pub fn bridge(&self) -> String {
        self.0.clone()
    }

    /// Name of host number `index` (0-based): `spl-1a2b3c-h1`, `-h2`, ...
    pub fn host_name(&self, index: usize) -> String {
        format!("{}-h{}", self.0, index + 1)
    }
}

impl std::fmt::Display for RunId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// One lab's block of 198.18.0.0/24: slot `k` is 198.18.0.(64k)/26, its
/// machine side (the gateway, where a coordinator listens) is .64k+1 and its
/// hosts are .64k+11, .64k+12, ... Labs in different slots coexist: their
/// bridges, addresses and names never meet.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct Slot(u8);

impl Slot {
    /// Slot `index`, if there is one.
    pub fn new(index: u8) -> Option<Slot> {
        (index < SLOTS).then_some(Slot(index))
    }

    /// Every slot, in the order labs take them.
    pub fn all() -> impl Iterator<Item = Slot> {
        (0..SLOTS).map(Slot)
    }

    /// The slot's number.
    pub fn index(self) -> u8 {
        self.0
    }

    fn at(self, offset: u8) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, 0, self.0 * SLOT_SIZE + offset)
    }

    /// The machine side of the slot's bridge, where a coordinator listens.
    pub fn gateway(self) -> Ipv4Addr {
        self.at(1)
    }

    /// Address of host number `index` (0-based).
    pub fn host_ip(self, index: usize) -> Ipv4Addr {
        assert!(index < MAX_HOSTS, "host index {index} out of range");
        self.at(FIRST_HOST_OFFSET + index as u8)
    }

    /// An address of the slot that no host is ever given (for tests of
    /// what happens with a host that does not exist).
    pub fn unused_ip(self) -> Ipv4Addr {
        self.at(FIRST_HOST_OFFSET + MAX_HOSTS as u8)
    }

    /// The slot's block, `198.18.0.X/26`.
    pub fn network(self) -> String {
        format!("{}/{PREFIX_LEN}", self.at(0))
    }
}

impl std::fmt::Display for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.0, self.network())
    }
}

/// `n` random bytes from the kernel.
pub fn random_bytes<const N: usize>() -> Result<[u8; N], NameError> {
    let mut buf = [0u8; N];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .map_err(NameError::Random)?;
    Ok(buf)
}

/// Where the lab keeps its files on the machine.
#[derive(Debug, Clone)]
pub struct LabPaths {
    /// Cached debootstrap bases and the machine-wide lock.
    pub cache: PathBuf,
    /// One directory per run: state, host roots, logs.
    pub runs: PathBuf,
}

impl LabPaths {
    /// The defaults, `/var/cache/seaport-lab` and `/var/lib/seaport-lab/runs`,
    /// overridable with `SEAPORT_LAB_CACHE` and `SEAPORT_LAB_RUNS`.
    pub fn from_env() -> Self {
        let cache = std::env::var_os("SEAPORT_LAB_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/var/cache/seaport-lab"));
        let runs = std::env::var_os("SEAPORT_LAB_RUNS")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/var/lib/seaport-lab/runs"));
        LabPaths { cache, runs }
    }

    /// The directory of one run.
    pub fn run_dir(&self, id: &RunId) -> PathBuf {
        self.runs.join(id.as_str())
    }

    /// The log of the process keeping run `id` (`seaport-lab up`), beside
    /// the run's directory.
    pub fn keeper_log(&self, id: &RunId) -> PathBuf {
        self.runs.join(format!("{id}.log"))
    }

    /// The file every live lab holds a shared flock on, for its lifetime.
    /// Labs of older versions of this code held it exclusively (one lab per
    /// machine): holding it shared keeps new and old labs apart.
    pub fn network_lock(&self) -> PathBuf {
        self.cache.join("network.lock")
    }

    /// The file whose flock gives one lab at a time a slot of
    /// 198.18.0.0/24.
    pub fn slot_lock(&self, slot: Slot) -> PathBuf {
        self.cache
            .join(format!("network-slot-{}.lock", slot.index()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_parse_and_names_fit_interface_limits() {
        let id = RunId::generate().unwrap();
        assert_eq!(RunId::parse(id.as_str()).unwrap(), id);
        assert!(id.bridge().len() <= IFNAMSIZ_MAX);
        assert!(id.host_name(MAX_HOSTS - 1).starts_with(PREFIX));
    }

    #[test]
    fn foreign_names_are_not_run_ids() {
        for bad in [
            "spl-",
            "spl-12345",
            "spl-1234567",
            "spl-ABCDEF",
            "xyz-123456",
            "docker0",
        ] {
            assert!(RunId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn hosts_start_at_eleven_in_their_slots_block() {
        let first = Slot::new(0).unwrap();
        assert_eq!(first.gateway(), Ipv4Addr::new(198, 18, 0, 1));
        assert_eq!(first.host_ip(0), Ipv4Addr::new(198, 18, 0, 11));
        assert_eq!(first.host_ip(2), Ipv4Addr::new(198, 18, 0, 13));
        let last = Slot::new(SLOTS - 1).unwrap();
        assert_eq!(last.gateway(), Ipv4Addr::new(198, 18, 0, 193));
        assert_eq!(last.host_ip(MAX_HOSTS - 1), Ipv4Addr::new(198, 18, 0, 252));
        assert_eq!(last.unused_ip(), Ipv4Addr::new(198, 18, 0, 253));
        assert_eq!(last.network(), "198.18.0.192/26");
        assert!(Slot::new(SLOTS).is_none());
        // No two slots share an address.
        let mut seen = std::collections::HashSet::new();
        for s in Slot::all() {
            assert!(seen.insert(s.gateway()));
            assert!(seen.insert(s.unused_ip()));
            for i in 0..MAX_HOSTS {
                assert!(seen.insert(s.host_ip(i)));
            }
        }
        assert_eq!(
            RunId::parse("spl-00ff00").unwrap().host_name(1),
            "spl-00ff00-h2"
        );
    }
}
