//! Verify a blob while writing it (BENCH.md), side by side with
//! `openssl dgst -sha256` of the same file.
//!
//! Seaport's side is the agent blob store's path for a fetched blob:
//! every piece goes through [`PieceWriter`] (hashed while it is written at
//! its offset in the partial file, checked against the piece table), its bit
//! is set, and the finished partial is moved into `sha256/` by
//! [`Partial::finish`]. The bytes come from the same file openssl reads, in
//! the 256 KiB chunks the fetcher receives them in, so both sides read the
//! file from the page cache (one untimed warm-up read first). The partial
//! file's `fdatasync` (which the fetcher spreads over the transfer, once a
//! second) measures the disk rather than verification: it is timed
//! separately, printed as `fsync_s`, and not part of the ratio.
//!
//! Each repetition runs both in alternating order. Prints every
//! repetition, min / median / max of wall time and throughput per case, one
//! JSON line per case, and the ratio of median throughputs (target: Seaport
//! / openssl >= 0.9).
//!
//! `cargo bench -p seaport-agent --bench verify`; `SEAPORT_BENCH_MIB`
//! changes the blob size (default 1024), `SEAPORT_BENCH_REPS` the
//! repetitions (default 3).

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use seaport_agent::distribution::store::{BlobStore, PieceWriter};
use seaport_shared::digest::Digest;
use seaport_shared::distribution::{PieceTable, PIECE_SIZE};

const MIB: u64 = 1024 * 1024;
const CHUNK: usize = 256 * 1024;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// xorshift64*: fast, deterministic, incompressible filler.
fn fill(seed: &mut u64, buf: &mut [u8]) {
    for chunk in buf.chunks_mut(8) {
        *seed ^= *seed >> 12;
        *seed ^= *seed << 25;
        *seed ^= *seed >> 27;
        let v = seed.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
        chunk.copy_from_slice(&v[..chunk.len()]);
    }
}

fn make_blob(path: &Path, bytes: u64) {
    let mut f = std::io::BufWriter::new(File::create(path).unwrap());
    let mut buf = vec![0u8; MIB as usize];
    let mut seed = 0x5ea_90f7_u64;
    let mut left = bytes;
    while left > 0 {
        let n = left.min(MIB) as usize;
        fill(&mut seed, &mut buf[..n]);
        f.write_all(&buf[..n]).unwrap();
        left -= n as u64;
    }
    f.flush().unwrap();
}

fn openssl(path: &Path, digest: &Digest) -> Duration {
    let start = Instant::now();
    let out = Command::new("openssl")
        .args(["dgst", "-sha256"])
        .arg(path)
        .output()
        .expect("run openssl");
    let took = start.elapsed();
    assert!(out.status.success(), "openssl failed");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.trim_end().ends_with(&digest.hex()),
        "openssl printed {text}"
    );
    took
}

struct SeaportRun {
    /// Pieces hashed while written, bits set, blob moved into place.
    total: Duration,
    /// Of which: `Partial::finish` (after the data was synced).
    finish: Duration,
    /// The partial file's fdatasync, not part of `total`.
    fsync: Duration,
}

fn seaport(source: &Path, table: &Arc<PieceTable>, state: &Path) -> SeaportRun {
    let _ = fs::remove_dir_all(state);
    let store = BlobStore::open(state).unwrap();
    let src = File::open(source).unwrap();
    let mut buf = vec![0u8; CHUNK];
    let start = Instant::now();
    let mut partial = store.partial(table.clone()).unwrap();
    for i in 0..table.count() {
        let (offset, _) = table.range(i);
        let mut w = PieceWriter::new(table, &partial.file, i);
        let mut at = offset;
        while w.remaining() > 0 {
            let n = w.remaining().min(CHUNK);
            src.read_exact_at(&mut buf[..n], at).unwrap();
            w.write(&buf[..n]).unwrap();
            at += n as u64;
        }
        let verified = w.verify().expect("piece verifies");
        partial.mark(verified);
    }
    let written = start.elapsed();
    let t = Instant::now();
    partial.persist().unwrap();
    let fsync = t.elapsed();
    let t = Instant::now();
    partial.finish(&store).unwrap();
    let finish = t.elapsed();
    assert!(store.has(&table.digest));
    SeaportRun {
        total: written + finish,
        finish,
        fsync,
    }
}

fn stats(v: &[f64]) -> (f64, f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (s[0], s[s.len() / 2], s[s.len() - 1])
}

fn main() {
    // cargo bench passes --bench; `cargo test --benches` passes nothing to
    // run here.
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return;
    }
    let mib = env_usize("SEAPORT_BENCH_MIB", 1024).max(1) as u64;
    let reps = env_usize("SEAPORT_BENCH_REPS", 3).max(1);
    let work = tempfile::Builder::new()
        .prefix("seaport-bench-")
        .tempdir()
        .unwrap();
    let source = work.path().join("blob");
    let bytes = mib * MIB;
    make_blob(&source, bytes);
    // The untimed warm-up read: the digest and the piece table.
    let (digest, _) = Digest::of_reader(File::open(&source).unwrap()).unwrap();
    let table =
        Arc::new(PieceTable::compute(digest, File::open(&source).unwrap(), PIECE_SIZE).unwrap());
    let state = work.path().join("state");
    eprintln!(
        "blob {mib} MiB, {} pieces, {reps} repetitions",
        table.count()
    );

    let mut peer = Vec::new();
    let mut ours = Vec::new();
    for rep in 0..reps {
        let (p, s) = if rep % 2 == 0 {
            let p = openssl(&source, &digest);
            (p, seaport(&source, &table, &state))
        } else {
            let s = seaport(&source, &table, &state);
            (openssl(&source, &digest), s)
        };
        eprintln!(
            "rep {rep}: openssl {:.3} s; seaport {:.3} s (finish {:.3} s), fsync {:.3} s",
            p.as_secs_f64(),
            s.total.as_secs_f64(),
            s.finish.as_secs_f64(),
            s.fsync.as_secs_f64()
        );
        peer.push(p);
        ours.push(s);
        let _ = fs::remove_dir_all(&state);
    }
    let mb = bytes as f64 / 1e6;
    let p_secs: Vec<f64> = peer.iter().map(Duration::as_secs_f64).collect();
    let s_secs: Vec<f64> = ours.iter().map(|r| r.total.as_secs_f64()).collect();
    let f_secs: Vec<f64> = ours.iter().map(|r| r.finish.as_secs_f64()).collect();
    let y_secs: Vec<f64> = ours.iter().map(|r| r.fsync.as_secs_f64()).collect();
    let (pmin, pmed, pmax) = stats(&p_secs);
    let (smin, smed, smax) = stats(&s_secs);
    let ratio = (mb / smed) / (mb / pmed);
    for (case, (min, med, max)) in [
        ("openssl", (pmin, pmed, pmax)),
        ("seaport", (smin, smed, smax)),
    ] {
        println!(
            "{case}: min/median/max {min:.3}/{med:.3}/{max:.3} s, median {:.0} MB/s",
            mb / med
        );
        let mut line = serde_json::json!({
            "bench": "verify",
            "case": case,
            "bytes": bytes,
            "reps": reps,
            "secs": {"min": min, "median": med, "max": max},
            "mb_per_s_median": mb / med,
        });
        if case == "seaport" {
            line["finish_secs_median"] = stats(&f_secs).1.into();
            line["fsync_secs_median"] = stats(&y_secs).1.into();
            line["throughput_over_openssl"] = ratio.into();
        }
        println!("{line}");
    }
    println!("target: seaport / openssl throughput = {ratio:.2} (>= 0.9)");
}
