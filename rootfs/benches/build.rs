//! Build a cluster image from a 1 GiB context, side by side with
//! `tar -c CONTEXT | zstd -T0 -3` of the same context (BENCH.md).
//!
//! The context is generated into a temporary directory: half incompressible
//! bytes, half compressible text, in a few large files and many small ones,
//! the mix of binaries, tarballs and configs a CloudRootfs holds. Each
//! repetition runs the peer and Seaport on the same warm page cache, in
//! alternating order. Prints min/median/max per case, one JSON line per case,
//! and the ratio of medians (target: Seaport / peer <= 1.2).
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

    let mut peer = Vec::new();
    let mut seaport = Vec::new();
    let mut peer_size = 0;
    let mut seaport_size = 0;
    for rep in 0..reps {
        let run_peer = |peer: &mut Vec<Duration>, size: &mut u64| {
            let out = work.path().join("peer.tar.zst");
            let start = Instant::now();
            let status = Command::new("sh")
                .arg("-c")
                .arg(format!(
                    "tar -C '{}' -cf - . | zstd -T0 -3 -q -f -o '{}'",
                    ctx.display(),
                    out.display()
                ))
                .status()
                .expect("tar and zstd must be installed");
            let took = start.elapsed();
            assert!(status.success(), "tar | zstd failed");
            *size = fs::metadata(&out).unwrap().len();
            fs::remove_file(&out).unwrap();
            peer.push(took);
        };
        let run_seaport = |seaport: &mut Vec<Duration>, size: &mut u64| {
            let root = work.path().join(format!("root-{rep}"));
            let store = Store::open(&root).unwrap();
            let opts = BuildOptions::new(ctx.join("Kubefile"), &ctx, "bench:v1");
            let start = Instant::now();
            build(&store, &opts).unwrap();
            let took = start.elapsed();
            let image = store.resolve("bench:v1").unwrap();
            *size = image.manifest.layers.iter().map(|l| l.size).sum();
            fs::remove_dir_all(&root).unwrap();
            seaport.push(took);
        };
        if rep % 2 == 0 {
            run_peer(&mut peer, &mut peer_size);
            run_seaport(&mut seaport, &mut seaport_size);
        } else {
            run_seaport(&mut seaport, &mut seaport_size);
            run_peer(&mut peer, &mut peer_size);
        }
        eprintln!(
            "rep {}: peer {:.3}s, seaport {:.3}s",
            rep + 1,
            peer[rep].as_secs_f64(),
            seaport[rep].as_secs_f64()
        );
    }
    let (pmin, pmed, pmax) = stats(&peer);
    let (smin, smed, smax) = stats(&seaport);
    println!("case                           min      median   max      output");
    println!("tar -c | zstd -T0 -3         {pmin:7.3}s {pmed:7.3}s {pmax:7.3}s {peer_size} bytes");
    println!(
        "seaport build (COPY . .)     {smin:7.3}s {smed:7.3}s {smax:7.3}s {seaport_size} bytes"
    );
    let ratio = smed / pmed;
    println!("ratio seaport/peer (median): {ratio:.3} (target <= 1.2)");
    println!(
        "{{\"bench\":\"build\",\"case\":\"peer-tar-zstd\",\"context_mib\":{total_mib},\"reps\":{reps},\"min_s\":{pmin:.4},\"median_s\":{pmed:.4},\"max_s\":{pmax:.4},\"bytes\":{peer_size}}}"
    );
    println!(
        "{{\"bench\":\"build\",\"case\":\"seaport-build\",\"context_mib\":{total_mib},\"reps\":{reps},\"min_s\":{smin:.4},\"median_s\":{smed:.4},\"max_s\":{smax:.4},\"bytes\":{seaport_size},\"ratio\":{ratio:.4}}}"
    );
}
