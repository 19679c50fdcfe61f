//! Build a cluster image from a 1 GiB context, side by side with
//! `tar -c CONTEXT | zstd -T0 -3` of the same context (BENCH.md).
//!
//! The context is generated into a temporary directory: half incompressible
//! bytes, half compressible text, in a few large files and many small ones,
//! the mix of binaries, tarballs and configs a CloudRootfs holds. Both sides
//! read the same context after one untimed warm-up read (so both find it in
//! the page cache) and write their output into the same directory. Each
//! repetition runs the peer and Seaport in alternating order. Prints the raw
//! figures of every repetition, min/median/max of wall time per case, the
//! CPU time (user + system, all threads and child processes) beside it, one
//! JSON line per case, and the ratio of medians (target: Seaport / peer <=
//! 1.2).
//!
//! Seaport fsyncs the layer before renaming it into the store; the peer
//! command does not sync. The time a `sync` of the peer's output takes
//! afterwards is measured separately and printed as `fsync_s`; it is not
//! part of the peer's time or of the ratio.
//!
//! `SEAPORT_BENCH_MIB` changes the context size (default 1024),
//! `SEAPORT_BENCH_REPS` the repetitions (default 3).

use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use seaport_rootfs::build::{build, BuildOptions};
use seaport_rootfs::store::Store;

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

fn make_context(dir: &Path, total_mib: usize) {
    let mut rng = Rng(0x5ea_90f7);
    let mib = 1 << 20;
    let half = total_mib * mib / 2;
    fs::create_dir_all(dir.join("bin")).unwrap();
    fs::create_dir_all(dir.join("cri")).unwrap();
    fs::create_dir_all(dir.join("images")).unwrap();
    fs::create_dir_all(dir.join("manifests")).unwrap();
    // Incompressible: three quarters in large files, the rest in 1 MiB ones.
    let big = half * 3 / 4 / 4;
    for i in 0..4 {
        write_file(
            &dir.join(format!("images/image-{i}.tar")),
            big,
            false,
            &mut rng,
        );
    }
    let mut left = half - 4 * big;
    let mut i = 0;
    while left > 0 {
        let n = left.min(mib);
        write_file(&dir.join(format!("bin/tool-{i}")), n, false, &mut rng);
        left -= n;
        i += 1;
    }
    // Compressible: one large file and many 64 KiB configs.
    write_file(&dir.join("cri/runtime.log"), half / 2, true, &mut rng);
    let mut left = half - half / 2;
    let mut i = 0;
    while left > 0 {
        let n = left.min(64 * 1024);
        let sub = dir.join(format!("manifests/m{:03}", i / 256));
        fs::create_dir_all(&sub).unwrap();
        write_file(&sub.join(format!("doc-{i}.yaml")), n, true, &mut rng);
        left -= n;
        i += 1;
    }
    fs::write(dir.join("Kubefile"), "FROM scratch\nCOPY . .\n").unwrap();
}

/// CPU time (user + system) used so far by this process's threads and by
/// the child processes it waited for, from `/proc/self/stat`.
fn cpu_time() -> Duration {
    let stat = fs::read_to_string("/proc/self/stat").unwrap();
    // utime, stime, cutime, cstime are fields 14 to 17 of the line, the
    // 12th to 15th after the command name (which is in parentheses).
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let ticks: u64 = rest
        .split_whitespace()
        .skip(11)
        .take(4)
        .map(|v| v.parse::<u64>().unwrap())
        .sum();
    Duration::from_secs_f64(ticks as f64 / clock_ticks())
}

fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// One timed run: wall time and CPU time.
#[derive(Clone, Copy)]
struct Run {
    wall: Duration,
    cpu: Duration,
}

fn timed(f: impl FnOnce()) -> Run {
    let (cpu0, start) = (cpu_time(), Instant::now());
    f();
    let wall = start.elapsed();
    Run {
        wall,
        cpu: cpu_time().saturating_sub(cpu0),
    }
}

fn stats(v: &[Duration]) -> (f64, f64, f64) {
    let mut s: Vec<f64> = v.iter().map(Duration::as_secs_f64).collect();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (s[0], s[s.len() / 2], s[s.len() - 1])
}

fn main() {
    // cargo bench passes --bench; a filter argument is ignored.
    let total_mib: usize = std::env::var("SEAPORT_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let reps: usize = std::env::var("SEAPORT_BENCH_REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
        .max(1);
    let work = tempfile::Builder::new()
        .prefix("seaport-bench-")
        .tempdir()
        .unwrap();
    let ctx = work.path().join("context");
    eprintln!("generating a {total_mib} MiB context in {}", ctx.display());
    make_context(&ctx, total_mib);
    // Warm the page cache so neither side pays for the first read.
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!("tar -C '{}' -cf - . > /dev/null", ctx.display()))
        .status()
        .unwrap();
    assert!(status.success());

    let mut peer: Vec<Run> = Vec::new();
    let mut seaport: Vec<Run> = Vec::new();
    let mut peer_fsync = Vec::new();
    let mut peer_size = 0;
    let mut seaport_size = 0;
    for rep in 0..reps {
        let mut run_peer = || {
            let out = work.path().join("peer.tar.zst");
            let run = timed(|| {
                let status = Command::new("sh")
                    .arg("-c")
                    .arg(format!(
                        "tar -C '{}' -cf - . | zstd -T0 -3 -q -f -o '{}'",
                        ctx.display(),
                        out.display()
                    ))
                    .status()
                    .expect("tar and zstd must be installed");
                assert!(status.success(), "tar | zstd failed");
            });
            let start = Instant::now();
            fs::File::open(&out).unwrap().sync_all().unwrap();
            peer_fsync.push(start.elapsed());
            peer_size = fs::metadata(&out).unwrap().len();
            fs::remove_file(&out).unwrap();
            peer.push(run);
        };
        let mut run_seaport = || {
            let root = work.path().join(format!("root-{rep}"));
            let store = Store::open(&root).unwrap();
            let opts = BuildOptions::new(ctx.join("Kubefile"), &ctx, "bench:v1");
            let run = timed(|| {
                build(&store, &opts).unwrap();
            });
            let image = store.resolve("bench:v1").unwrap();
            seaport_size = image.manifest.layers.iter().map(|l| l.size).sum();
            fs::remove_dir_all(&root).unwrap();
            seaport.push(run);
        };
        if rep % 2 == 0 {
            run_peer();
            run_seaport();
        } else {
            run_seaport();
            run_peer();
        }
        eprintln!(
            "rep {}: peer {:.3}s (cpu {:.2}s, then fsync {:.3}s), seaport {:.3}s (cpu {:.2}s), ratio {:.3}",
            rep + 1,
            peer[rep].wall.as_secs_f64(),
            peer[rep].cpu.as_secs_f64(),
            peer_fsync[rep].as_secs_f64(),
            seaport[rep].wall.as_secs_f64(),
            seaport[rep].cpu.as_secs_f64(),
            seaport[rep].wall.as_secs_f64() / peer[rep].wall.as_secs_f64()
        );
    }
    let walls = |v: &[Run]| v.iter().map(|r| r.wall).collect::<Vec<_>>();
    let cpus = |v: &[Run]| v.iter().map(|r| r.cpu).collect::<Vec<_>>();
    let (pmin, pmed, pmax) = stats(&walls(&peer));
    let (smin, smed, smax) = stats(&walls(&seaport));
    let (_, pcpu, _) = stats(&cpus(&peer));
    let (_, scpu, _) = stats(&cpus(&seaport));
    let (_, pfsync, _) = stats(&peer_fsync);
    println!("case                       min      median   max      cpu(median) output");
    println!(
        "tar -c | zstd -T0 -3     {pmin:7.3}s {pmed:7.3}s {pmax:7.3}s {pcpu:7.2}s     {peer_size} bytes (then fsync {pfsync:.3}s)"
    );
    println!(
        "seaport build (COPY . .) {smin:7.3}s {smed:7.3}s {smax:7.3}s {scpu:7.2}s     {seaport_size} bytes"
    );
    let ratio = smed / pmed;
    println!("ratio seaport/peer (median wall time): {ratio:.3} (target <= 1.2)");
    // For information only: Seaport's time includes an fsync of the layer,
    // the peer's does not. The peer's time plus its fsync afterwards:
    let synced: Vec<Duration> = peer
        .iter()
        .zip(&peer_fsync)
        .map(|(r, f)| r.wall + *f)
        .collect();
    let (_, psynced, _) = stats(&synced);
    println!(
        "ratio seaport/(peer + fsync of its output) (median): {:.3} (information, not the target)",
        smed / psynced
    );
    let list = |v: &[Duration]| {
        v.iter()
            .map(|d| format!("{:.4}", d.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(",")
    };
    println!(
        "{{\"bench\":\"build\",\"case\":\"peer-tar-zstd\",\"context_mib\":{total_mib},\"reps\":{reps},\"min_s\":{pmin:.4},\"median_s\":{pmed:.4},\"max_s\":{pmax:.4},\"cpu_median_s\":{pcpu:.4},\"wall_s\":[{}],\"cpu_s\":[{}],\"fsync_s\":[{}],\"bytes\":{peer_size}}}",
        list(&walls(&peer)),
        list(&cpus(&peer)),
        list(&peer_fsync)
    );
    println!(
        "{{\"bench\":\"build\",\"case\":\"seaport-build\",\"context_mib\":{total_mib},\"reps\":{reps},\"min_s\":{smin:.4},\"median_s\":{smed:.4},\"max_s\":{smax:.4},\"cpu_median_s\":{scpu:.4},\"wall_s\":[{}],\"cpu_s\":[{}],\"bytes\":{seaport_size},\"ratio\":{ratio:.4},\"ratio_to_synced_peer\":{:.4}}}",
        list(&walls(&seaport)),
        list(&cpus(&seaport)),
        smed / psynced
    );
}
