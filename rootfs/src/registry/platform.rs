//! Target platforms and picking one manifest out of an index.

use crate::oci::{Descriptor, Index, Platform};

/// The platform of this machine, `linux/<arch>` in OCI's names.
pub fn host_platform() -> Platform {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    };
    Platform {
        architecture: arch.to_string(),
        os: "linux".to_string(),
        variant: None,
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

/// The manifest of `index` for `wanted`: same OS and architecture, and the
/// wanted variant when one is given (else the entry without a variant, or
/// `v8` for arm64, or the first match).
pub fn select_manifest<'a>(index: &'a Index, wanted: &Platform) -> Option<&'a Descriptor> {
    let candidates: Vec<&Descriptor> = index
        .manifests
        .iter()
        .filter(|d| {
            d.platform
                .as_ref()
                .is_some_and(|p| p.os == wanted.os && p.architecture == wanted.architecture)
        })
        .collect();
    let variant = |d: &Descriptor| d.platform.as_ref().and_then(|p| p.variant.clone());
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
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
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
