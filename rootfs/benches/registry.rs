//! Push and pull of a 1 GiB cluster image to a local docker-registry,
//! Seaport beside `skopeo copy` of the same image in the same run.
//!
//! Run: `cargo bench -p seaport-rootfs --bench registry`
//! (`SEAPORT_BENCH_MIB` changes the image size, `SEAPORT_BENCH_RUNS` the
//! repetitions; defaults 1024 and 3). Needs docker-registry and skopeo.
//!
//! Each repetition pushes to a fresh registry (so every blob is uploaded)
//! and pulls into an empty destination (so every blob is downloaded and
//! verified). skopeo reads and writes the same OCI layout Seaport's store
//! is, with `--preserve-digests` (it fails rather than change a digest).
//! Both sides do the same work: skopeo verifies every blob it reads from
//! the layout and every blob it downloads; Seaport hashes every blob it
//! pushes from its store (the upload is not completed unless the bytes
//! match) and every blob it pulls. After each side, untimed, the image is
//! compared: after a push, the manifest the registry serves must hash to
//! the local image's digest and every blob must be there with its size;
//! after a pull, the destination must hold the same manifest digest and
//! every blob must hash to its digest.
//!
//! Prints the machine, the load average during the run, every sample,
//! min / median / max per case, the ratios of medians (target: Seaport /
//! skopeo <= 0.8) and one JSON line per case.

#[path = "../tests/registry_support/server.rs"]
mod server;

use std::io::Read;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use seaport_rootfs::oci::{
    Descriptor, ImageConfig, Manifest, MEDIA_TYPE_CONFIG, MEDIA_TYPE_LAYER_ZSTD,
    MEDIA_TYPE_MANIFEST,
};
use seaport_rootfs::reference::ImageRef;
use seaport_rootfs::registry::platform::host_platform;
use seaport_rootfs::registry::{pull_image, push_image, ClientOptions, RegistryClient};
use seaport_rootfs::store::Store;
use seaport_shared::bench::{machine, stats, LoadWatch};
use seaport_shared::digest::{Digest, HashingWriter};

const LOCAL_NAME: &str = "bench/cluster:v1";

/// Incompressible pseudo-random bytes (xorshift), streamed.
struct Noise {
    state: u64,
    left: u64,
}

impl Read for Noise {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = (buf.len().min(self.left as usize)) & !7;
        let n = if n == 0 {
            buf.len().min(self.left as usize)
        } else {
            n
        };
        for chunk in buf[..n].chunks_mut(8) {
            let mut x = self.state;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.state = x;
            chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
        }
        self.left -= n as u64;
        Ok(n)
    }
}

fn make_image(store: &Store, total_mib: u64) {
    // Four layers, as a cluster image has several (bin/, cri/, images/...).
    let layer_count = 4;
    let mut layers = Vec::new();
    for i in 0..layer_count {
        // A real zstd stream of incompressible data, as a cluster image's
        // layers are: skopeo passes it through instead of recompressing.
        let raw = total_mib * 1024 * 1024 / layer_count;
        let tmp = store.temp_file().unwrap();
        let file = tmp.reopen().unwrap();
        let mut enc = zstd::Encoder::new(HashingWriter::new(file), 1).unwrap();
        std::io::copy(
            &mut Noise {
                state: 0x9E37_79B9 + i,
                left: raw,
            },
            &mut enc,
        )
        .unwrap();
        let (_, digest, size) = enc.finish().unwrap().finish();
        store.commit_temp_blob(tmp, &digest).unwrap();
        layers.push(Descriptor {
            media_type: MEDIA_TYPE_LAYER_ZSTD.into(),
            digest,
            size,
            annotations: Default::default(),
            platform: None,
        });
    }
    let mut config = ImageConfig {
        architecture: host_platform().architecture,
        os: "linux".into(),
        ..Default::default()
    };
    config.rootfs.diff_ids = layers.iter().map(|l| l.digest).collect();
    let config_bytes = serde_json::to_vec(&config).unwrap();
    let config_digest = store.put_blob(&config_bytes).unwrap();
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(MEDIA_TYPE_MANIFEST.into()),
        config: Descriptor {
            media_type: MEDIA_TYPE_CONFIG.into(),
            digest: config_digest,
            size: config_bytes.len() as u64,
            annotations: Default::default(),
            platform: None,
        },
        layers,
        annotations: Default::default(),
    };
    let digest = store
        .put_blob(&serde_json::to_vec(&manifest).unwrap())
        .unwrap();
    store
        .set_name(&ImageRef::parse(LOCAL_NAME).unwrap(), &digest)
        .unwrap();
}

fn timed(f: impl FnOnce()) -> f64 {
    let start = Instant::now();
    f();
    start.elapsed().as_secs_f64()
}

fn skopeo(args: &[&str]) -> Vec<u8> {
    let out = Command::new("skopeo").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "skopeo {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Checks, untimed, that the registry serves `reference` as the image
/// whose manifest is `manifest`, and that its storage (`storage`) holds
/// every blob the manifest names, each hashing to its digest.
fn check_registry(reference: &str, storage: &Path, manifest: &Digest) {
    let raw = skopeo(&["inspect", "--raw", "--tls-verify=false", reference]);
    assert_eq!(Digest::of(&raw), *manifest, "{reference}: another manifest");
    let served: Manifest = serde_json::from_slice(&raw).unwrap();
    for d in std::iter::once(&served.config).chain(&served.layers) {
        let hex = d.digest.hex();
        let data = storage
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(&hex)
            .join("data");
        let (actual, size) = Digest::of_reader(std::fs::File::open(&data).unwrap()).unwrap();
        assert_eq!((actual, size), (d.digest, d.size), "{reference}");
    }
}

/// Checks, untimed, that the OCI layout `dir` holds the manifest `manifest`
/// and every blob it names, each hashing to its digest.
fn check_layout(dir: &Path, manifest: &Digest) {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    let found = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["digest"] == manifest.to_string());
    assert!(found, "{}: manifest {manifest} missing", dir.display());
    let blob = |d: &Digest| dir.join("blobs/sha256").join(d.hex());
    let raw = std::fs::read(blob(manifest)).unwrap();
    assert_eq!(Digest::of(&raw), *manifest);
    let m: Manifest = serde_json::from_slice(&raw).unwrap();
    for d in std::iter::once(&m.config).chain(&m.layers) {
        let (actual, size) =
            Digest::of_reader(std::fs::File::open(blob(&d.digest)).unwrap()).unwrap();
        assert_eq!((actual, size), (d.digest, d.size), "{}", dir.display());
    }
}

fn main() {
    // `cargo bench` passes --bench; nothing to parse.
    let mib: u64 = std::env::var("SEAPORT_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let runs: usize = std::env::var("SEAPORT_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
        .max(1);
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("root");
    let store = Store::open(&root).unwrap();
    eprintln!("making a {mib} MiB image ...");
    make_image(&store, mib);
    let layout = store.dir().to_path_buf();
    let canonical = ImageRef::parse(LOCAL_NAME).unwrap().canonical();

    let opts = ClientOptions {
        insecure: true,
        progress: false,
        ..ClientOptions::default()
    };
    let image_digest = store.resolve(LOCAL_NAME).unwrap().manifest_digest;
    println!("machine: {}", machine());
    let load = LoadWatch::start();
    let mut samples: [Vec<f64>; 4] = Default::default();
    for run in 0..runs {
        // Push: each tool to a registry of its own with empty storage, so
        // every blob is uploaded (skopeo remembers where blobs are and
        // would mount them from an earlier run's repository otherwise).
        // The order alternates between runs.
        let ours = server::TestRegistry::plain(&work.path().join(format!("reg-seaport{run}")));
        let dest = ImageRef::parse(&format!("{}/seaport/cluster:v1", ours.addr)).unwrap();
        let client = RegistryClient::new(&ours.addr, &opts, None).unwrap();
        let push_seaport = |samples: &mut [Vec<f64>; 4]| {
            samples[0].push(timed(|| {
                let r = push_image(&store, LOCAL_NAME, &dest, &client).unwrap();
                assert_eq!(r.transferred, 5);
            }));
            check_registry(&format!("docker://{dest}"), &ours.storage, &image_digest);
        };
        let push_skopeo = |samples: &mut [Vec<f64>; 4]| {
            let theirs = server::TestRegistry::plain(&work.path().join(format!("reg-skopeo{run}")));
            let skopeo_dest = format!("docker://{}/skopeo/cluster:v1", theirs.addr);
            samples[1].push(timed(|| {
                skopeo(&[
                    "copy",
                    "--quiet",
                    "--preserve-digests",
                    "--dest-tls-verify=false",
                    &format!("oci:{}:{canonical}", layout.display()),
                    &skopeo_dest,
                ]);
            }));
            check_registry(&skopeo_dest, &theirs.storage, &image_digest);
            let storage = theirs.storage.clone();
            drop(theirs);
            remove(&storage);
        };
        if run % 2 == 0 {
            push_seaport(&mut samples);
            push_skopeo(&mut samples);
        } else {
            push_skopeo(&mut samples);
            push_seaport(&mut samples);
        }
        // Pull the image Seaport pushed, into empty destinations.
        let pull_seaport = |samples: &mut [Vec<f64>; 4]| {
            let pull_root = work.path().join(format!("pull{run}"));
            let dst = Store::open(&pull_root).unwrap();
            samples[2].push(timed(|| {
                let r = pull_image(&dst, &dest, &client, None).unwrap();
                assert_eq!(r.transferred, 5);
            }));
            check_layout(dst.dir(), &image_digest);
            remove(&pull_root);
        };
        let pull_skopeo = |samples: &mut [Vec<f64>; 4]| {
            let skopeo_dir = work.path().join(format!("skopeo{run}"));
            samples[3].push(timed(|| {
                skopeo(&[
                    "copy",
                    "--quiet",
                    "--preserve-digests",
                    "--src-tls-verify=false",
                    &format!("docker://{dest}"),
                    &format!("oci:{}:v1", skopeo_dir.display()),
                ]);
            }));
            check_layout(&skopeo_dir, &image_digest);
            remove(&skopeo_dir);
        };
        if run % 2 == 0 {
            pull_seaport(&mut samples);
            pull_skopeo(&mut samples);
        } else {
            pull_skopeo(&mut samples);
            pull_seaport(&mut samples);
        }
        println!(
            "run {}: seaport push {:.3} s, skopeo push {:.3} s, seaport pull {:.3} s, skopeo pull {:.3} s",
            run + 1,
            samples[0][run],
            samples[1][run],
            samples[2][run],
            samples[3][run]
        );
        let storage = ours.storage.clone();
        drop(ours);
        remove(&storage);
    }
    let load = load.stop();

    let bytes = (mib * 1024 * 1024) as f64;
    let names = ["seaport_push", "skopeo_push", "seaport_pull", "skopeo_pull"];
    println!(
        "registry benchmark: {mib} MiB image, {runs} runs, local docker-registry over loopback; {load}"
    );
    for (name, s) in names.iter().zip(&samples) {
        let st = stats(s);
        println!(
            "{name:14} min {:7.3}s  median {:7.3}s  max {:7.3}s  ({:.0} MiB/s at median)",
            st.min,
            st.median,
            st.max,
            bytes / st.median / 1048576.0
        );
        println!(
            "{}",
            serde_json::json!({
                "bench": "registry",
                "case": name,
                "mib": mib,
                "runs": runs,
                "secs": s,
                "min": st.min,
                "median": st.median,
                "max": st.max,
                "machine": machine(),
                "load": load.json(),
            })
        );
    }
    for (op, a, b) in [("push", 0, 1), ("pull", 2, 3)] {
        let ratio = stats(&samples[a]).median / stats(&samples[b]).median;
        let verdict = if ratio <= 0.8 { "met" } else { "missed" };
        println!("{op}: seaport / skopeo = {ratio:.3} (median; target <= 0.8: {verdict})");
        println!(
            "{}",
            serde_json::json!({
                "bench": "registry",
                "case": format!("{op}_ratio"),
                "seaport_over_skopeo": ratio,
                "target": 0.8,
            })
        );
    }
}

fn remove(path: &Path) {
    if path.exists() {
        std::fs::remove_dir_all(path).unwrap();
    }
}
