//! Push and pull of a 1 GiB cluster image to a local docker-registry,
//! Seaport beside `skopeo copy` of the same image in the same run.
//!
//! Run: `cargo bench -p seaport-rootfs --bench registry`
//! (`SEAPORT_BENCH_MIB` changes the image size, `SEAPORT_BENCH_RUNS` the
//! repetitions; defaults 1024 and 3). Needs docker-registry and skopeo.
//!
//! Each repetition pushes to a fresh registry (so every blob is uploaded)
//! and pulls into an empty destination (so every blob is downloaded and
//! verified). skopeo reads and writes the same OCI layout Seaport's store is.

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
use seaport_shared::digest::HashingWriter;

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

fn skopeo(args: &[&str]) {
    let out = Command::new("skopeo").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "skopeo {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn stats(samples: &[f64]) -> (f64, f64, f64) {
    let mut s = samples.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (s[0], s[s.len() / 2], s[s.len() - 1])
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
    let mut samples: [Vec<f64>; 4] = Default::default();
    for run in 0..runs {
        eprintln!("run {}/{runs}", run + 1);
        // Push: each tool to a registry of its own with empty storage, so
        // every blob is uploaded (skopeo remembers where blobs are and
        // would mount them from an earlier run's repository otherwise).
        let ours = server::TestRegistry::plain(&work.path().join(format!("reg-seaport{run}")));
        let dest = ImageRef::parse(&format!("{}/seaport/cluster:v1", ours.addr)).unwrap();
        let client = RegistryClient::new(&ours.addr, &opts, None).unwrap();
        samples[0].push(timed(|| {
            let r = push_image(&store, LOCAL_NAME, &dest, &client).unwrap();
            assert_eq!(r.transferred, 5);
        }));
        {
            let theirs = server::TestRegistry::plain(&work.path().join(format!("reg-skopeo{run}")));
            let skopeo_dest = format!("docker://{}/skopeo/cluster:v1", theirs.addr);
            samples[1].push(timed(|| {
                skopeo(&[
                    "copy",
                    "--quiet",
                    "--dest-tls-verify=false",
                    &format!("oci:{}:{canonical}", layout.display()),
                    &skopeo_dest,
                ])
            }));
            let storage = theirs.storage.clone();
            drop(theirs);
            remove(&storage);
        }
        // Pull the image Seaport pushed, into empty destinations.
        let pull_root = work.path().join(format!("pull{run}"));
        let dst = Store::open(&pull_root).unwrap();
        samples[2].push(timed(|| {
            let r = pull_image(&dst, &dest, &client, None).unwrap();
            assert_eq!(r.transferred, 5);
        }));
        remove(&pull_root);
        let skopeo_dir = work.path().join(format!("skopeo{run}"));
        samples[3].push(timed(|| {
            skopeo(&[
                "copy",
                "--quiet",
                "--src-tls-verify=false",
                &format!("docker://{dest}"),
                &format!("oci:{}:v1", skopeo_dir.display()),
            ])
        }));
        remove(&skopeo_dir);
        let storage = ours.storage.clone();
        drop(ours);
        remove(&storage);
    }

    let bytes = (mib * 1024 * 1024) as f64;
    let names = ["seaport_push", "skopeo_push", "seaport_pull", "skopeo_pull"];
    println!(
        "registry benchmark: {mib} MiB image, {runs} runs, local docker-registry over loopback"
    );
    for (name, s) in names.iter().zip(&samples) {
        let (min, median, max) = stats(s);
        println!(
            "{name:14} min {min:7.2}s  median {median:7.2}s  max {max:7.2}s  ({:.0} MiB/s at median)",
            bytes / median / 1048576.0
        );
        println!(
            "{{\"bench\":\"registry\",\"case\":\"{name}\",\"mib\":{mib},\"runs\":{runs},\"min_s\":{min:.3},\"median_s\":{median:.3},\"max_s\":{max:.3}}}"
        );
    }
    for (op, a, b) in [("push", 0, 1), ("pull", 2, 3)] {
        let ratio = stats(&samples[a]).1 / stats(&samples[b]).1;
        let verdict = if ratio <= 1.1 { "meets" } else { "misses" };
        println!("{op}: seaport / skopeo = {ratio:.3} (median; target <= 1.1: {verdict})");
        println!(
            "{{\"bench\":\"registry\",\"case\":\"{op}_ratio\",\"seaport_over_skopeo\":{ratio:.4},\"target\":1.1}}"
        );
    }
}

fn remove(path: &Path) {
    if path.exists() {
        std::fs::remove_dir_all(path).unwrap();
    }
}
