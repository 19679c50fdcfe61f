//! Layer unpacking into a temporary root: whatever the archive holds, nothing
//! outside the root may change: no file created, removed or written, and no
//! mode or owner changed (through `..`, absolute paths, symlinks planted by a
//! lower layer or earlier in the same layer, hard links, whiteouts, or
//! directory modes applied at the end to a path that became a symlink).
//!
//! Beside the root sits a sentinel tree (directories, files, a symlink) of
//! known modes and owners, and symlinks into it are planted in the root as
//! a lower layer could leave them. The input is either a raw tar stream
//! (first byte 0) or a sequence of entries built from small alphabets of
//! names, kinds, modes, owners and link targets that keep hitting the same
//! names, so the fuzzer reaches hostile orders quickly (a directory with a
//! mode, then a symlink at its path; a whiteout of a parent; a hard link
//! through a symlink; a file over a directory). After each unpack the tree
//! beside the root is compared with its snapshot.
#![no_main]

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use seaport_shared::safetar::{unpack, UnpackOptions};

/// Names entries use: the same few over and over, nested, planted links,
/// whiteouts, escapes.
const NAMES: &[&str] = &[
    "x",
    "x/",
    "x/y",
    "x/y/z",
    "y",
    "l",
    "l/f",
    "ld",
    "ld/f",
    "lf",
    "x/l",
    "x/.wh.y",
    ".wh.x",
    ".wh.l",
    "x/.wh..wh..opq",
    ".wh..wh..opq",
    "ld/.wh.f",
    "l/.wh.dir",
    "./x",
    "x/../y",
    "../outside/dir/f",
    "/abs",
    "/x/y",
    "",
];
/// Symlink and hard link targets: inside, escaping, at the sentinels.
const TARGETS: &[&str] = &[
    "x",
    "x/y",
    "y",
    "lf",
    "l/file",
    "ld/f",
    "..",
    "../outside",
    "../outside/dir",
    "../outside/file",
    "/",
    "SENTINEL",
    "SENTINEL/dir",
    "SENTINEL/file",
    "SENTINEL/dir/f",
    "../../x",
];
const MODES: &[u32] = &[0o755, 0o4755, 0o2755, 0o777, 0o1777, 0o000, 0o644, 0o6711];
const OWNERS: &[u64] = &[0, 1, 65534, 1000];

fn entry(b: &mut tar::Builder<Vec<u8>>, chunk: &[u8], sentinel: &str) {
    let at = |i: usize| chunk.get(i).copied().unwrap_or(0) as usize;
    let kind = match at(0) % 8 {
        0 | 1 => tar::EntryType::Directory,
        2 | 3 => tar::EntryType::Symlink,
        4 => tar::EntryType::Link,
        5 => tar::EntryType::Char,
        _ => tar::EntryType::Regular,
    };
    let name = NAMES[at(1) % NAMES.len()];
    let target = TARGETS[at(2) % TARGETS.len()].replace("SENTINEL", sentinel);
    let mode = MODES[at(3) % MODES.len()];
    let owner = OWNERS[at(4) % OWNERS.len()];
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(owner);
    h.set_gid(owner);
    let data: &[u8] = if kind == tar::EntryType::Regular {
        b"data"
    } else {
        b""
    };
    h.set_size(data.len() as u64);
    let n = name.len().min(99);
    h.as_old_mut().name[..n].copy_from_slice(&name.as_bytes()[..n]);
    if matches!(kind, tar::EntryType::Symlink | tar::EntryType::Link) {
        let _ = h.set_link_name(&target);
    }
    h.set_cksum();
    let _ = b.append(&h, data);
}

fn structured(data: &[u8], sentinel: &str) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for chunk in data.chunks(5).take(48) {
        entry(&mut b, chunk, sentinel);
    }
    b.into_inner().unwrap_or_default()
}

/// Every path beside the root (the root's own contents excluded), with its
/// kind, mode, owner, size and content or target.
fn snapshot(parent: &Path) -> BTreeMap<String, String> {
    let root = parent.join("root");
    walkdir(parent)
        .into_iter()
        .filter(|p| !p.starts_with(&root) || *p == root)
        .map(|p| {
            let m = fs::symlink_metadata(&p).unwrap();
            let what = if m.file_type().is_symlink() {
                format!("-> {}", fs::read_link(&p).unwrap().display())
            } else if m.is_file() {
                String::from_utf8_lossy(&fs::read(&p).unwrap()).into_owned()
            } else {
                String::new()
            };
            (
                p.display().to_string(),
                format!("{:o} {}:{} {} {what}", m.mode(), m.uid(), m.gid(), m.len()),
            )
        })
        .collect()
}

fn walkdir(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![dir.to_path_buf()];
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) && p.file_name() != Some("root".as_ref())
            {
                out.extend(walkdir(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let parent = tempfile::tempdir().unwrap();
    let p = parent.path();
    let root = p.join("root");
    let outside = p.join("outside");
    fs::create_dir(&root).unwrap();
    fs::create_dir_all(outside.join("dir")).unwrap();
    fs::write(outside.join("dir/f"), "sentinel").unwrap();
    fs::write(outside.join("file"), "sentinel").unwrap();
    std::os::unix::fs::symlink("dir", outside.join("link")).unwrap();
    for (rel, mode) in [("dir", 0o700), ("dir/f", 0o640), ("file", 0o600), ("", 0o750)] {
        fs::set_permissions(outside.join(rel), fs::Permissions::from_mode(mode)).unwrap();
    }
    // Symlinks out of the root, as a lower layer could leave them.
    std::os::unix::fs::symlink(&outside, root.join("l")).unwrap();
    std::os::unix::fs::symlink(outside.join("dir"), root.join("ld")).unwrap();
    std::os::unix::fs::symlink(outside.join("file"), root.join("lf")).unwrap();
    let before = snapshot(p);
    let sentinel = outside.display().to_string();
    let tar = match data.split_first() {
        Some((0, raw)) => raw.to_vec(),
        _ => structured(data, &sentinel),
    };
    for opts in [
        UnpackOptions::default(),
        UnpackOptions {
            preserve_ownership: true,
            ..UnpackOptions::default()
        },
        UnpackOptions {
            refuse_devices: true,
            refuse_setuid: true,
            ..UnpackOptions::default()
        },
    ] {
        let _ = unpack(&tar[..], &root, &opts);
        assert_eq!(snapshot(p), before, "something outside the root changed");
    }
    // Make the tree removable whatever modes the archive left.
    for d in walkdir(&root) {
        if fs::symlink_metadata(&d).is_ok_and(|m| m.is_dir()) {
            let _ = fs::set_permissions(&d, fs::Permissions::from_mode(0o755));
        }
    }
});
