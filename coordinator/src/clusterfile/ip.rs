//! IP lists as sealer writes them: `192.168.0.2`, a range
//! `192.168.0.2-192.168.0.5` (both ends included), and comma-separated lists
//! of either.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The most addresses one range, or one Clusterfile, may name. Kubernetes
/// supports clusters of up to 5000 nodes; a longer range is a typo (a
/// swapped octet, an IPv6 range over a whole prefix) and expanding it would
/// only exhaust memory.
pub const MAX_HOSTS: u128 = 5000;

/// Why an IP, range or list is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpError {
    /// Not an IP address.
    #[error("{0:?} is not an IP address")]
    NotAnIp(String),
    /// Neither a single `-` nor two IPs.
    #[error("{0:?} is not an IP range: write FIRST-LAST, e.g. 192.168.0.2-192.168.0.5")]
    BadRange(String),
    /// One end is IPv4 and the other IPv6.
    #[error("IP range {0:?} mixes IPv4 and IPv6")]
    MixedFamilies(String),
    /// The first address is after the last.
    #[error("IP range {0:?} is empty: its first address is after its last")]
    Reversed(String),
    /// More than [`MAX_HOSTS`] addresses.
    #[error("IP range {0:?} names more than {MAX_HOSTS} addresses")]
    TooLarge(String),
}

/// One entry: an IP or a `FIRST-LAST` range, expanded in order.
pub fn expand_entry(entry: &str) -> Result<Vec<IpAddr>, IpError> {
    let entry = entry.trim();
    let Some((first, last)) = entry.split_once('-') else {
        return entry
            .parse::<IpAddr>()
            .map(|ip| vec![ip])
            .map_err(|_| IpError::NotAnIp(entry.to_string()));
    };
    if last.contains('-') {
        return Err(IpError::BadRange(entry.to_string()));
    }
    let parse = |s: &str| {
        s.trim()
            .parse::<IpAddr>()
            .map_err(|_| IpError::NotAnIp(s.trim().to_string()))
    };
    let (first, last) = (parse(first)?, parse(last)?);
    let (start, end) = match (first, last) {
        (IpAddr::V4(a), IpAddr::V4(b)) => (u128::from(u32::from(a)), u128::from(u32::from(b))),
        (IpAddr::V6(a), IpAddr::V6(b)) => (u128::from(a), u128::from(b)),
        _ => return Err(IpError::MixedFamilies(entry.to_string())),
    };
    if start > end {
        return Err(IpError::Reversed(entry.to_string()));
    }
    if end - start >= MAX_HOSTS {
        return Err(IpError::TooLarge(entry.to_string()));
    }
    Ok((start..=end)
        .map(|n| match first {
            // In range: both ends are IPv4, so n fits in 32 bits.
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::from(u32::try_from(n).unwrap_or(u32::MAX))),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::from(n)),
        })
        .collect())
}

/// A comma-separated list of IPs and ranges, expanded in order. Empty
/// entries (`a,,b`, a trailing comma) are skipped.
pub fn expand_list(list: &str) -> Result<Vec<IpAddr>, IpError> {
    let mut out = Vec::new();
    for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let ips = expand_entry(entry)?;
        if (out.len() + ips.len()) as u128 > MAX_HOSTS {
            return Err(IpError::TooLarge(list.to_string()));
        }
        out.extend(ips);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn ranges_include_both_ends_as_sealer_does() {
        assert_eq!(
            expand_entry("192.168.0.2-192.168.0.5").unwrap(),
            ips(&["192.168.0.2", "192.168.0.3", "192.168.0.4", "192.168.0.5"])
        );
        assert_eq!(
            expand_entry("10.0.0.7-10.0.0.7").unwrap(),
            ips(&["10.0.0.7"])
        );
        // Crossing an octet boundary.
        assert_eq!(
            expand_entry("10.0.0.254-10.0.1.1").unwrap(),
            ips(&["10.0.0.254", "10.0.0.255", "10.0.1.0", "10.0.1.1"])
        );
        assert_eq!(
            expand_entry("fd00::fe-fd00::101").unwrap(),
            ips(&["fd00::fe", "fd00::ff", "fd00::100", "fd00::101"])
        );
    }

    #[test]
    fn lists_mix_ips_and_ranges_in_order() {
        assert_eq!(
            expand_list("10.0.0.9, 10.0.0.1-10.0.0.2,,").unwrap(),
            ips(&["10.0.0.9", "10.0.0.1", "10.0.0.2"])
        );
        assert!(expand_list("").unwrap().is_empty());
    }

    #[test]
    fn bad_ranges_say_what_is_wrong() {
        assert_eq!(
            expand_entry("10.0.0.5-10.0.0.2").unwrap_err(),
            IpError::Reversed("10.0.0.5-10.0.0.2".into())
        );
        assert_eq!(
            expand_entry("10.0.0.1-10.0.0.2-10.0.0.3").unwrap_err(),
            IpError::BadRange("10.0.0.1-10.0.0.2-10.0.0.3".into())
        );
        assert_eq!(
            expand_entry("10.0.0.1-fd00::1").unwrap_err(),
            IpError::MixedFamilies("10.0.0.1-fd00::1".into())
        );
        assert_eq!(
            expand_entry("10.0.0.1-10.0.0.300").unwrap_err(),
            IpError::NotAnIp("10.0.0.300".into())
        );
        assert_eq!(
            expand_entry("10.0.0.0-10.255.255.255").unwrap_err(),
            IpError::TooLarge("10.0.0.0-10.255.255.255".into())
        );
        assert_eq!(
            expand_entry("::-ffff::").unwrap_err(),
            IpError::TooLarge("::-ffff::".into())
        );
        assert!(expand_list("10.0.0.1-10.0.10.0,10.0.20.0-10.0.30.0").is_err());
        assert_eq!(
            expand_entry("master").unwrap_err().to_string(),
            "\"master\" is not an IP address"
        );
    }
}
