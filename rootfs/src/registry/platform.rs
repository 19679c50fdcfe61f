//! Target platforms and picking one manifest out of an index.

use crate::oci::{Descriptor, Index, Platform};

/// The platform of this machine, `linux/<arch>` in OCI's names, from the
/// architecture this program was built for.
pub fn host_platform() -> Platform {
    let mut p = machine_platform(std::env::consts::ARCH);
    if std::env::consts::ARCH == "powerpc64" {
        // Kubernetes ships little-endian ppc64 only.
        p.architecture = "ppc64le".into();
    }
    p
}

/// The OCI platform of a machine as `uname -m` names it (what agents report
/// as their architecture): `x86_64` is `linux/amd64`, `aarch64` is
/// `linux/arm64`, `armv7l` is `linux/arm/v7`, `i686` is `linux/386`;
/// anything else keeps its name.
pub fn machine_platform(machine: &str) -> Platform {
    let m = machine.trim();
    let (arch, variant) = match m {
        "x86_64" | "amd64" | "x64" => ("amd64", None),
        "aarch64" | "arm64" => ("arm64", None),
        "x86" | "i386" | "i486" | "i586" | "i686" | "386" => ("386", None),
        "ppc64le" | "powerpc64le" => ("ppc64le", None),
        "loongarch64" => ("loong64", None),
        "arm" => ("arm", None),
        m if m.starts_with("armv") => {
            let digits: String = m[4..].chars().take_while(char::is_ascii_digit).collect();
            ("arm", (!digits.is_empty()).then(|| format!("v{digits}")))
        }
        other => (other, None),
    };
    Platform {
        architecture: arch.to_string(),
        os: "linux".to_string(),
        variant,
    }
}

/// Parses `os/arch[/variant]` (e.g. `linux/arm64/v8`); a bare `arch` means
/// linux. Returns `None` for anything else.
pub fn parse_platform(text: &str) -> Option<Platform> {
    let parts: Vec<&str> = text.trim().split('/').collect();
    let ok = |s: &&str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !parts.iter().all(ok) {
        return None;
    }
    let (os, arch, variant) = match parts.as_slice() {
        [arch] => ("linux", *arch, None),
        [os, arch] => (*os, *arch, None),
        [os, arch, variant] => (*os, *arch, Some(variant.to_string())),
        _ => return None,
    };
    let arch = match arch {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        a => a,
    };
    Some(Platform {
        architecture: arch.to_string(),
        os: os.to_string(),
        variant,
    })
}

/// `os/arch[/variant]`.
pub fn platform_string(p: &Platform) -> String {
    match &p.variant {
        Some(v) => format!("{}/{}/{v}", p.os, p.architecture),
        None => format!("{}/{}", p.os, p.architecture),
    }
}

/// The manifest of `index` for `wanted` (see [`select`]).
pub fn select_manifest<'a>(index: &'a Index, wanted: &Platform) -> Option<&'a Descriptor> {
    select(&index.manifests, |d| d.platform.as_ref(), wanted)
}

/// The item of `items` (each with the platform `platform_of` gives, if any)
/// for `wanted`: same OS and architecture, and the wanted variant when one
/// is given (else an entry without a variant, which serves every variant);
/// without a wanted variant, the entry without one, or `v8` for arm64, or
/// the first match.
pub fn select<'a, T>(
    items: &'a [T],
    platform_of: impl Fn(&T) -> Option<&Platform>,
    wanted: &Platform,
) -> Option<&'a T> {
    let candidates: Vec<&T> = items
        .iter()
        .filter(|d| {
            platform_of(d)
                .is_some_and(|p| p.os == wanted.os && p.architecture == wanted.architecture)
        })
        .collect();
    let variant = |d: &T| platform_of(d).and_then(|p| p.variant.clone());
    match &wanted.variant {
        Some(v) => candidates
            .iter()
            .find(|d| variant(d).as_deref() == Some(v.as_str()))
            .or_else(|| {
                // An entry without a variant serves every variant.
                candidates.iter().find(|d| variant(d).is_none())
            })
            .copied(),
        None => candidates
            .iter()
            .find(|d| variant(d).is_none())
            .or_else(|| {
                candidates
                    .iter()
                    .find(|d| wanted.architecture == "arm64" && variant(d).as_deref() == Some("v8"))
            })
            .or_else(|| candidates.first())
            .copied(),
    }
}

/// The platforms an index offers, for error messages.
pub fn available_platforms(index: &Index) -> Vec<String> {
    index
        .manifests
        .iter()
        .filter_map(|d| d.platform.as_ref().map(platform_string))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use seaport_shared::digest::Digest;

    fn entry(n: &[u8], os: &str, arch: &str, variant: Option<&str>) -> Descriptor {
        Descriptor {
            media_type: crate::oci::MEDIA_TYPE_MANIFEST.into(),
            digest: Digest::of(n),
            size: 1,
            annotations: Default::default(),
            platform: Some(Platform {
                architecture: arch.into(),
                os: os.into(),
                variant: variant.map(Into::into),
            }),
        }
    }

    #[test]
    fn picks_os_arch_and_variant() {
        let mut index = Index::new();
        index.manifests = vec![
            entry(b"a", "linux", "amd64", None),
            entry(b"b", "linux", "arm", Some("v6")),
            entry(b"c", "linux", "arm", Some("v7")),
            entry(b"d", "linux", "arm64", Some("v8")),
            entry(b"e", "unknown", "unknown", None),
        ];
        let pick = |p: &str| select_manifest(&index, &parse_platform(p).unwrap()).map(|d| d.digest);
        assert_eq!(pick("linux/amd64"), Some(Digest::of(b"a")));
        assert_eq!(pick("linux/arm/v7"), Some(Digest::of(b"c")));
        assert_eq!(pick("linux/arm64"), Some(Digest::of(b"d")));
        assert_eq!(pick("arm64"), Some(Digest::of(b"d")));
        assert_eq!(pick("linux/s390x"), None);
        assert_eq!(available_platforms(&index).len(), 5);
    }

    #[test]
    fn machine_names_map_to_oci_platforms() {
        let p = |m: &str| platform_string(&machine_platform(m));
        assert_eq!(p("x86_64"), "linux/amd64");
        assert_eq!(p("aarch64"), "linux/arm64");
        assert_eq!(p("armv7l"), "linux/arm/v7");
        assert_eq!(p("armv6l"), "linux/arm/v6");
        assert_eq!(p("i686"), "linux/386");
        assert_eq!(p("s390x"), "linux/s390x");
        assert_eq!(p("riscv64"), "linux/riscv64");
        // An arm64 host takes an arm64/v8 entry; an arm/v7 host an arm entry
        // without variant, but never arm/v6.
        let mut index = Index::new();
        index.manifests = vec![
            entry(b"a", "linux", "arm64", Some("v8")),
            entry(b"b", "linux", "arm", Some("v6")),
        ];
        assert_eq!(
            select_manifest(&index, &machine_platform("aarch64")).map(|d| d.digest),
            Some(Digest::of(b"a"))
        );
        assert_eq!(select_manifest(&index, &machine_platform("armv7l")), None);
        index.manifests.push(entry(b"c", "linux", "arm", None));
        assert_eq!(
            select_manifest(&index, &machine_platform("armv7l")).map(|d| d.digest),
            Some(Digest::of(b"c"))
        );
    }

    #[test]
    fn parses_platform_strings() {
        assert_eq!(
            platform_string(&parse_platform("linux/x86_64").unwrap()),
            "linux/amd64"
        );
        assert_eq!(
            platform_string(&parse_platform("linux/arm64/v8").unwrap()),
            "linux/arm64/v8"
        );
        assert!(parse_platform("linux//x").is_none());
        assert!(parse_platform("a/b/c/d").is_none());
    }
}
