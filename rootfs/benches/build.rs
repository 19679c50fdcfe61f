//! Build a cluster image from a 1 GiB context, side by side with the
//! tools a sealer user would build with instead:
//!
//! - `buildah` (what sealer builds with), from the same context as
//!   `FROM scratch` + `COPY . .`: `buildah build` with `--storage-driver
//!   vfs --isolation chroot` into a storage of its own, then `buildah push
//!   --compression-format zstd` of the image into an OCI layout (`oci:DIR`);
//! - `tar -c CONTEXT | zstd -T0 -3` of the same context.
//!
//! Two contexts, generated into a temporary directory one after the other:
//! - `random`: incompressible bytes only, four large files and the rest in
//!   1 MiB ones;
//! - `cloudrootfs`: what a CloudRootfs holds: a third binaries (this
//!   machine's own files from /usr/bin, /usr/sbin and /usr/lib, which
//!   compress about 2 to 3 times), three fifths image tars that do not
//!   compress (pseudo-random, as the compressed layers they hold), the
//!   rest manifests and scripts (text) in 64 KiB files.
//!
//! Every case reads the same context after one untimed warm-up read (so all
//! find it in the page cache) and writes into the same directory. Before
//! each case the output of the previous one is removed and the file system
//! synced, untimed. Each repetition runs the cases in rotating order.
//! Seaport fsyncs the layer before renaming it into the store; the peers do
//! not sync: the `sync` of their output afterwards is timed separately and
//! printed, not part of their time or of the ratios. Prints the machine,
//! the load average during the run, every sample (wall and CPU time, the
//! user and system time of all threads and child processes), min / median
//! / max per case, the ratios of medians (targets: Seaport / buildah <= 1.0,
//! Seaport / tar|zstd <= 1.2) and one JSON line per case.
//!
//! `cargo bench -p seaport-rootfs --bench build`; `SEAPORT_BENCH_MIB`
//! changes the context size (default 1024), `SEAPORT_BENCH_REPS` the
//! repetitions (default 3), `SEAPORT_BENCH_CONTEXTS` which contexts
//! (default `random,cloudrootfs`), `SEAPORT_BENCH_DIR` where everything is
//! written (default the system's temporary directory).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use seaport_rootfs::build::{build, BuildOptions};
use seaport_rootfs::store::Store;
use seaport_shared::bench::{cpu_time, machine, stats, LoadWatch};

const MIB: usize = 1 << 20;
const KUBEFILE: &str = "FROM scratch\nCOPY . .\n";

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*: fast, deterministic filler.
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

fn write_file(path: &Path, size: usize, compressible: bool, rng: &mut Rng) {
    let mut f = std::io::BufWriter::new(fs::File::create(path).unwrap());
    let mut buf = vec![0u8; 1 << 20];
    let words = [
        "apiVersion",
        "kind",
        "metadata",
        "name",
        "namespace",
        "spec",
        "containers",
        "image",
        "registry",
        "kubelet",
        "kubeadm",
        "etcd",
        "v1.19.8",
        "sealer",
        "cluster",
        "node",
    ];
    let mut left = size;
    while left > 0 {
        let n = left.min(buf.len());
        if compressible {
            let mut i = 0;
            while i < n {
                let w = words[(rng.next() % words.len() as u64) as usize].as_bytes();
                let sep: &[u8] = if rng.next() % 8 == 0 { b"\n  " } else { b": " };
                for &b in w.iter().chain(sep) {
                    if i < n {
                        buf[i] = b;
                        i += 1;
                    }
                }
            }
        } else {
            rng.fill(&mut buf[..n]);
        }
        f.write_all(&buf[..n]).unwrap();
        left -= n;
    }
    f.flush().unwrap();
}

/// Incompressible bytes only.
fn make_random(dir: &Path, total_mib: usize) {
    let mut rng = Rng(0x5ea_90f7);
    fs::create_dir_all(dir.join("images")).unwrap();
    fs::create_dir_all(dir.join("bin")).unwrap();
    let total = total_mib * MIB;
    let big = total * 3 / 4 / 4;
    for i in 0..4 {
        write_file(
            &dir.join(format!("images/image-{i}.tar")),
            big,
            false,
            &mut rng,
        );
    }
    let mut left = total - 4 * big;
    let mut i = 0;
    while left > 0 {
        let n = left.min(MIB);
        write_file(&dir.join(format!("bin/blob-{i}")), n, false, &mut rng);
        left -= n;
        i += 1;
    }
    fs::write(dir.join("Kubefile"), KUBEFILE).unwrap();
}

/// This machine's regular files of at least 64 KiB under `/usr/bin`,
/// `/usr/sbin` and `/usr/lib`, sorted by path.
fn machine_binaries() -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut dirs: Vec<PathBuf> = ["/usr/bin", "/usr/sbin", "/usr/lib"]
        .iter()
        .map(PathBuf::from)
        .collect();
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(meta) = fs::symlink_metadata(e.path()) else {
                continue;
            };
            if meta.is_dir() {
                dirs.push(e.path());
            } else if meta.is_file() && meta.len() >= 64 * 1024 {
                found.push(e.path());
            }
        }
    }
    found.sort();
    found
}

/// Binaries that compress, image tars that do not, and text.
fn make_cloudrootfs(dir: &Path, total_mib: usize) {
    let mut rng = Rng(0x00c1_0df5);
    let total = total_mib * MIB;
    for sub in ["bin", "images", "manifests"] {
        fs::create_dir_all(dir.join(sub)).unwrap();
    }
    // A third binaries: the machine's own, copied (again under other
    // names once all were taken) until the share is reached.
    let binaries = machine_binaries();
    assert!(!binaries.is_empty(), "no binaries found under /usr");
    let mut left = total / 3;
    let mut i = 0;
    while left > 0 {
        let src = &binaries[i % binaries.len()];
        let bytes = fs::read(src).unwrap();
        let n = bytes.len().min(left);
        let name = src.file_name().unwrap().to_string_lossy();
        fs::write(dir.join(format!("bin/{i:05}-{name}")), &bytes[..n]).unwrap();
        left -= n;
        i += 1;
    }
    // Three fifths image tars: incompressible, a few large files.
    let images = total * 3 / 5;
    for i in 0..6 {
        write_file(
            &dir.join(format!("images/layer-{i}.tar")),
            images / 6,
            false,
            &mut rng,
        );
    }
    // The rest text, in 64 KiB files.
    let mut left = total - total / 3 - images / 6 * 6;
    let mut i = 0;
    while left > 0 {
        let n = left.min(64 * 1024);
        let sub = dir.join(format!("manifests/m{:03}", i / 256));
        fs::create_dir_all(&sub).unwrap();
        write_file(&sub.join(format!("doc-{i}.yaml")), n, true, &mut rng);
        left -= n;
        i += 1;
    }
    fs::write(dir.join("Kubefile"), KUBEFILE).unwrap();
}

fn sh(script: &str) {
    let status = Command::new("sh").arg("-c").arg(script).status().unwrap();
    assert!(status.success(), "failed: {script}");
}

/// Syncs the file system `dir` is on; how long it took.
fn sync_fs(dir: &Path) -> Duration {
    let start = Instant::now();
    sh(&format!("sync -f '{}'", dir.display()));
    start.elapsed()
}

/// One timed run: wall time, CPU time, output bytes.
#[derive(Clone, Copy, Default)]
struct Run {
    wall: f64,
    cpu: f64,
    bytes: u64,
    /// For the peers: the `sync` of their output afterwards (untimed).
    then_sync: f64,
}

fn timed(f: impl FnOnce() -> u64) -> Run {
    let (cpu0, start) = (cpu_time(), Instant::now());
    let bytes = f();
    let wall = start.elapsed().as_secs_f64();
    Run {
        wall,
        cpu: cpu_time().saturating_sub(cpu0).as_secs_f64(),
        bytes,
        then_sync: 0.0,
    }
}

fn file_size(p: &Path) -> u64 {
    fs::metadata(p).unwrap().len()
}

fn run_seaport(ctx: &Path, out: &Path) -> Run {
    let root = out.join("store");
    let store = Store::open(&root).unwrap();
    let opts = BuildOptions::new(ctx.join("Kubefile"), ctx, "bench:v1");
    timed(|| {
        build(&store, &opts).unwrap();
        let image = store.resolve("bench:v1").unwrap();
        image.manifest.layers.iter().map(|l| l.size).sum()
    })
}

fn run_tar_zstd(ctx: &Path, out: &Path) -> Run {
    let file = out.join("context.tar.zst");
    let mut run = timed(|| {
        sh(&format!(
            "tar -C '{}' -cf - . | zstd -T0 -3 -q -f -o '{}'",
            ctx.display(),
            file.display()
        ));
        file_size(&file)
    });
    run.then_sync = sync_fs(out).as_secs_f64();
    run
}

fn run_buildah(ctx: &Path, out: &Path) -> Run {
    let storage = format!(
        "buildah --storage-driver vfs --root '{}' --runroot '{}'",
        out.join("buildah-root").display(),
        out.join("buildah-runroot").display()
    );
    let layout = out.join("oci");
    let mut run = timed(|| {
        sh(&format!(
            "{storage} build --quiet --isolation chroot -f '{kubefile}' -t bench:v1 '{ctx}' > /dev/null \
             && {storage} push --quiet --compression-format zstd bench:v1 'oci:{layout}:v1'",
            kubefile = ctx.join("Kubefile").display(),
            ctx = ctx.display(),
            layout = layout.display(),
        ));
        // The layer is the largest blob of the layout.
        fs::read_dir(layout.join("blobs/sha256"))
            .unwrap()
            .map(|e| file_size(&e.unwrap().path()))
            .max()
            .unwrap_or(0)
    });
    run.then_sync = sync_fs(out).as_secs_f64();
    run
}

/// Removes the output of a case (buildah's storage included) and syncs.
fn settle(out: &Path) {
    if out.exists() {
        // buildah's storage may hold read-only directories: rm copes.
        sh(&format!("rm -rf '{}'", out.display()));
    }
    fs::create_dir_all(out).unwrap();
    sync_fs(out);
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

const CASES: [&str; 3] = ["seaport", "buildah", "tar-zstd"];

fn main() {
    // cargo bench passes --bench; a filter argument is ignored.
    let total_mib = env_usize("SEAPORT_BENCH_MIB", 1024).max(1);
    let reps = env_usize("SEAPORT_BENCH_REPS", 3).max(1);
    let contexts =
        std::env::var("SEAPORT_BENCH_CONTEXTS").unwrap_or_else(|_| "random,cloudrootfs".into());
    let mut work = tempfile::Builder::new();
    work.prefix("seaport-bench-");
    let work = match std::env::var_os("SEAPORT_BENCH_DIR") {
        Some(dir) => work.tempdir_in(dir),
        None => work.tempdir(),
    }
    .unwrap();
    println!("machine: {}", machine());
    for context in contexts.split(',').map(str::trim).filter(|c| !c.is_empty()) {
        let ctx = work.path().join("context");
        let _ = fs::remove_dir_all(&ctx);
        eprintln!(
            "generating the {context} context ({total_mib} MiB) in {}",
            ctx.display()
        );
        match context {
            "random" => make_random(&ctx, total_mib),
            "cloudrootfs" => make_cloudrootfs(&ctx, total_mib),
            other => panic!("unknown context {other} (random, cloudrootfs)"),
        }
        // Warm the page cache so no case pays for the first read.
        sh(&format!("tar -C '{}' -cf - . > /dev/null", ctx.display()));
        let out = work.path().join("out");
        let mut runs: [Vec<Run>; 3] = Default::default();
        let load = LoadWatch::start();
        for rep in 0..reps {
            let mut line = format!("{context} rep {}:", rep + 1);
            for k in 0..CASES.len() {
                let case = (rep + k) % CASES.len();
                settle(&out);
                let run = match case {
                    0 => run_seaport(&ctx, &out),
                    1 => run_buildah(&ctx, &out),
                    _ => run_tar_zstd(&ctx, &out),
                };
                line.push_str(&format!(
                    " {} {:.3} s (cpu {:.2} s{});",
                    CASES[case],
                    run.wall,
                    run.cpu,
                    if case == 0 {
                        String::new()
                    } else {
                        format!(", then sync {:.3} s", run.then_sync)
                    }
                ));
                runs[case].push(run);
            }
            println!("{line}");
        }
        let load = load.stop();
        settle(&out);
        let _ = fs::remove_dir_all(&ctx);
        println!("{context}: {load}");
        let medians: Vec<f64> = runs
            .iter()
            .map(|r| stats(&r.iter().map(|x| x.wall).collect::<Vec<_>>()).median)
            .collect();
        for (case, r) in CASES.iter().zip(&runs) {
            let walls: Vec<f64> = r.iter().map(|x| x.wall).collect();
            let cpus: Vec<f64> = r.iter().map(|x| x.cpu).collect();
            let syncs: Vec<f64> = r.iter().map(|x| x.then_sync).collect();
            let st = stats(&walls);
            let bytes = r.last().map_or(0, |x| x.bytes);
            println!(
                "{context} {case:9} min/median/max {:.3}/{:.3}/{:.3} s, cpu median {:.2} s, output {bytes} bytes",
                st.min,
                st.median,
                st.max,
                stats(&cpus).median
            );
            let mut json = serde_json::json!({
                "bench": "build",
                "context": context,
                "case": case,
                "context_mib": total_mib,
                "reps": reps,
                "wall_s": walls,
                "cpu_s": cpus,
                "min": st.min,
                "median": st.median,
                "max": st.max,
                "bytes": bytes,
                "machine": machine(),
                "load": load.json(),
            });
            if *case != "seaport" {
                json["then_sync_s"] = syncs.into();
            }
            println!("{json}");
        }
        for (peer, target) in [(1, 1.0), (2, 1.2)] {
            let ratio = medians[0] / medians[peer];
            let verdict = if ratio <= target { "met" } else { "missed" };
            println!(
                "{context}: seaport / {} = {ratio:.3} (median wall time; target <= {target}: {verdict})",
                CASES[peer]
            );
            println!(
                "{}",
                serde_json::json!({
                    "bench": "build",
                    "context": context,
                    "case": format!("ratio-seaport-over-{}", CASES[peer]),
                    "ratio": ratio,
                    "target": target,
                })
            );
        }
    }
}
