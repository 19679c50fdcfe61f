//! Layer unpacking into a temporary root: whatever the archive holds, nothing
//! may land outside the root (no `..`, absolute paths, symlink or hard link
//! tricks). The input is either a raw tar stream (first byte 0) or a list of
//! entries built from a small alphabet of hostile path pieces, so the fuzzer
//! reaches deep entry sequences quickly.
#![no_main]

use std::fs;
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use seaport_shared::safetar::{unpack, UnpackOptions};

const PIECES: &[&str] = &[
    "a", "b", "..", ".", "", "/", "l", "d", ".wh.a", ".wh..wh..opq", ".wh.l", "etc", "x/../y",
    "../outside", "/abs", "l/", "a/l",
];
const TARGETS: &[&str] = &["..", "../outside", "/", "/tmp", "a", "l", "a/b", "../../x", "d/.."];

fn entry_path(bytes: &[u8]) -> String {
    let mut p = String::new();
    for (i, b) in bytes.iter().enumerate() {
        if i > 0 {
            p.push('/');
        }
        p.push_str(PIECES[*b as usize % PIECES.len()]);
    }
    p
}

fn structured(data: &[u8]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for chunk in data.chunks(5).take(64) {
        let kind = match chunk[0] % 6 {
            0 => tar::EntryType::Regular,
            1 => tar::EntryType::Directory,
            2 => tar::EntryType::Symlink,
            3 => tar::EntryType::Link,
            4 => tar::EntryType::Char,
            _ => tar::EntryType::Regular,
        };
        let path = entry_path(chunk.get(1..3.min(chunk.len())).unwrap_or(&[]));
        let target = TARGETS[*chunk.get(3).unwrap_or(&0) as usize % TARGETS.len()];
        let mode = if chunk.get(4).is_some_and(|m| m & 1 == 1) { 0o4755 } else { 0o644 };
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(if kind == tar::EntryType::Directory { 0o755 } else { mode });
        let data: &[u8] = if kind == tar::EntryType::Regular { b"data" } else { b"" };
        h.set_size(data.len() as u64);
        let name = path.as_bytes();
        let n = name.len().min(99);
        h.as_old_mut().name[..n].copy_from_slice(&name[..n]);
        if matches!(kind, tar::EntryType::Symlink | tar::EntryType::Link) {
            let _ = h.set_link_name(target);
        }
        h.set_cksum();
        let _ = b.append(&h, data);
    }
    b.into_inner().unwrap_or_default()
}

fn assert_confined(parent: &Path) {
    let names: Vec<String> = fs::read_dir(parent)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.len() == 2 && names.contains(&"root".into()) && names.contains(&"outside".into()),
        "something landed beside the root: {names:?}"
    );
    assert_eq!(
        fs::read_dir(parent.join("outside")).unwrap().count(),
        0,
        "something was written into a directory outside the root"
    );
}

fuzz_target!(|data: &[u8]| {
    let parent = tempfile::tempdir().unwrap();
    let root = parent.path().join("root");
    fs::create_dir(&root).unwrap();
    fs::create_dir(parent.path().join("outside")).unwrap();
    // A symlink inside the root pointing out, as a lower layer could leave.
    std::os::unix::fs::symlink(parent.path().join("outside"), root.join("l")).unwrap();
    let tar = match data.split_first() {
        Some((0, raw)) => raw.to_vec(),
        _ => structured(data),
    };
    for opts in [
        UnpackOptions::default(),
        UnpackOptions {
            refuse_devices: true,
            refuse_setuid: true,
            ..UnpackOptions::default()
        },
    ] {
        let _ = unpack(&tar[..], &root, &opts);
        assert_confined(parent.path());
    }
});
