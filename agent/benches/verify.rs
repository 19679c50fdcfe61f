//! Verify a blob while writing it, side by side with
//! `openssl dgst -sha256` of the same file.
//!
//! Seaport's side is the agent blob store's path for a fetched blob,
//! fdatasync included: every piece goes through a [`PieceWriter`] (each
//! chunk hashed on the receiving thread and written at its offset in the
//! partial file by the partial's writer thread, the piece checked against
//! the piece table), with 3 pieces in flight at once as the fetcher has
//! (its coordinator slots; more with peers), each a task of a
//! single-threaded async runtime as the agent's, hashing on the runtime's
//! blocking threads as the fetcher does; its bit is set, the bitmap is
//! persisted every
//! [`PERSIST_EVERY`] after the data is synced, as the fetcher does, and the
//! finished partial is synced and moved into `sha256/` by
//! [`Partial::finish`]. The bytes come from the same file openssl reads, in
//! the 256 KiB chunks the fetcher receives them in, so both sides read the
//! file from the page cache (one untimed warm-up read first).
//!
//! Beside them, in the same repetitions, for what limits the ratio:
//! - `seaport-1`: the same path with one piece at a time;
//! - `dd if=BLOB of=OUT bs=4M conv=fdatasync` and `oflag=direct`: how fast
//!   this machine's disk takes the same bytes, synced (the fetch cannot be
//!   much faster than the disk: `conv=fdatasync` writes everything into the
//!   page cache first and then waits for the disk, `oflag=direct` writes
//!   4 MiB at a time straight to the disk);
//! - hashing alone, the same chunks, with the `sha2` crate (which the store
//!   uses) and with aws-lc-rs's SHA-256.
//!
//! Each repetition runs the cases in rotating order; before each case the
//! store's directory is emptied and its file system synced, untimed (on a
//! file system mounted with `discard`, the blocks the previous case freed
//! are discarded at the next journal commit, which would otherwise slow
//! whichever case comes next). Prints the machine,
//! the load average during the run, every repetition, min / median / max of
//! wall time and throughput per case, one JSON line per case, and the ratio
//! of median throughputs (target: Seaport / openssl >= 0.9).
//!
//! `cargo bench -p seaport-agent --bench verify`; `SEAPORT_BENCH_MIB`
//! changes the blob size (default 1024), `SEAPORT_BENCH_REPS` the
//! repetitions (default 3), `SEAPORT_BENCH_IN_FLIGHT` the pieces in
//! flight (default 3), `SEAPORT_BENCH_DIR` where the blob and the
//! store are written (default the system's temporary directory: the disk
//! the fetch would write to should be the one measured).

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use seaport_agent::distribution::store::{BlobStore, Partial, PieceWriter, PERSIST_EVERY};
use seaport_shared::bench::{machine, stats, LoadWatch};
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

/// `dd` of the blob into the store's directory, with `flag`
/// (`conv=fdatasync` or `oflag=direct`).
fn dd(source: &Path, dir: &Path, flag: &str) -> Duration {
    let out = dir.join("dd.out");
    let start = Instant::now();
    let status = Command::new("dd")
        .arg(format!("if={}", source.display()))
        .arg(format!("of={}", out.display()))
        .args(["bs=4M", flag, "status=none"])
        .status()
        .expect("run dd");
    let took = start.elapsed();
    assert!(status.success(), "dd failed");
    fs::remove_file(&out).unwrap();
    took
}

/// Hashing alone: the blob read in the fetcher's chunks and given to `hash`.
fn hash_only(source: &Path, size: u64, hash: &mut dyn FnMut(&[u8])) -> Duration {
    let src = File::open(source).unwrap();
    let mut buf = vec![0u8; CHUNK];
    let start = Instant::now();
    let mut at = 0;
    while at < size {
        let n = (size - at).min(CHUNK as u64) as usize;
        src.read_exact_at(&mut buf[..n], at).unwrap();
        hash(&buf[..n]);
        at += n as u64;
    }
    start.elapsed()
}

fn sha2_only(source: &Path, size: u64) -> Duration {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    let took = hash_only(source, size, &mut |b| h.update(b));
    std::hint::black_box(h.finalize());
    took
}

fn aws_lc_only(source: &Path, size: u64) -> Duration {
    let mut h = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    let took = hash_only(source, size, &mut |b| h.update(b));
    std::hint::black_box(h.finish());
    took
}

struct SeaportRun {
    /// Pieces hashed while written, bits set and persisted, data synced,
    /// blob moved into place.
    total: Duration,
    /// Of which: the last sync and `Partial::finish`.
    finish: Duration,
}

fn seaport(source: &Path, table: &Arc<PieceTable>, state: &Path, in_flight: usize) -> SeaportRun {
    let _ = fs::remove_dir_all(state);
    let store = BlobStore::open(state).unwrap();
    let start = Instant::now();
    let mut partial: Partial = store.partial(table.clone()).unwrap();
    let writer = partial.writer().unwrap();
    // `in_flight` pieces at once, as the fetcher receives them from its
    // sources: each a task of a single-threaded runtime (as the agent's),
    // hashing off the runtime's thread as the fetcher does; the bits are
    // set and persisted by one loop, as the fetcher's.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    runtime.block_on(async {
        let (verified_tx, mut verified_rx) = tokio::sync::mpsc::unbounded_channel();
        for t in 0..in_flight {
            let (writer, verified_tx) = (writer.clone(), verified_tx.clone());
            let (source, table) = (source.to_path_buf(), table.clone());
            tokio::spawn(async move {
                let src = File::open(source).unwrap();
                let mut buf = writer.buffer(CHUNK);
                for i in (t as u32..table.count()).step_by(in_flight) {
                    let (offset, _) = table.range(i);
                    let mut w: PieceWriter = writer.piece(i);
                    let mut at = offset;
                    while w.remaining() > 0 {
                        let n = w.remaining().min(CHUNK);
                        buf.resize(n);
                        // The page cache stands in for the network.
                        src.read_exact_at(&mut buf, at).unwrap();
                        let (next, written) = w.write_off_thread(buf).await;
                        w = next;
                        buf = written.unwrap();
                        at += n as u64;
                    }
                    let verified = w.verify_off_thread().await.unwrap();
                    verified_tx.send(verified.expect("piece verifies")).unwrap();
                }
            });
        }
        drop(verified_tx);
        let mut persisted = Instant::now();
        while let Some(verified) = verified_rx.recv().await {
            partial.mark(verified);
            if persisted.elapsed() >= PERSIST_EVERY {
                partial.persist().unwrap();
                persisted = Instant::now();
            }
        }
    });
    drop(writer);
    let t = Instant::now();
    partial.finish(&store).unwrap();
    let finish = t.elapsed();
    let total = start.elapsed();
    assert!(store.has(&table.digest));
    SeaportRun { total, finish }
}

/// Empties the store's directory and syncs its file system, untimed: on a
/// file system mounted with `discard`, freeing a gigabyte costs the next
/// writer time it would be charged for otherwise.
fn settle(state: &Path) {
    let _ = fs::remove_dir_all(state);
    fs::create_dir_all(state).unwrap();
    let status = Command::new("sync")
        .arg("-f")
        .arg(state)
        .status()
        .expect("run sync");
    assert!(status.success(), "sync -f failed");
}

fn main() {
    // cargo bench passes --bench; `cargo test --benches` passes nothing to
    // run here.
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return;
    }
    let mib = env_usize("SEAPORT_BENCH_MIB", 1024).max(1) as u64;
    let reps = env_usize("SEAPORT_BENCH_REPS", 3).max(1);
    let in_flight = env_usize("SEAPORT_BENCH_IN_FLIGHT", 3).max(1);
    let mut work = tempfile::Builder::new();
    work.prefix("seaport-bench-");
    let work = match std::env::var_os("SEAPORT_BENCH_DIR") {
        Some(dir) => work.tempdir_in(dir),
        None => work.tempdir(),
    }
    .unwrap();
    let source = work.path().join("blob");
    let bytes = mib * MIB;
    make_blob(&source, bytes);
    // The untimed warm-up read: the digest and the piece table.
    let (digest, _) = Digest::of_reader(File::open(&source).unwrap()).unwrap();
    let table =
        Arc::new(PieceTable::compute(digest, File::open(&source).unwrap(), PIECE_SIZE).unwrap());
    let state = work.path().join("state");
    fs::create_dir_all(&state).unwrap();
    println!("machine: {}", machine());
    println!(
        "blob {mib} MiB, {} pieces, {in_flight} in flight, {reps} repetitions, in {}",
        table.count(),
        work.path().display()
    );

    const CASES: [&str; 7] = [
        "openssl",
        "seaport",
        "seaport-1",
        "dd-fdatasync",
        "dd-direct",
        "sha2",
        "aws-lc-rs",
    ];
    let mut samples: [Vec<f64>; 7] = Default::default();
    let mut finish = Vec::new();
    let load = LoadWatch::start();
    for rep in 0..reps {
        let mut line = format!("rep {}:", rep + 1);
        for k in 0..CASES.len() {
            let case = (rep + k) % CASES.len();
            settle(&state);
            let secs = match case {
                0 => openssl(&source, &digest),
                1 => {
                    let run = seaport(&source, &table, &state, in_flight);
                    finish.push(run.finish.as_secs_f64());
                    run.total
                }
                2 => seaport(&source, &table, &state, 1).total,
                3 => dd(&source, &state, "conv=fdatasync"),
                4 => dd(&source, &state, "oflag=direct"),
                5 => sha2_only(&source, bytes),
                _ => aws_lc_only(&source, bytes),
            }
            .as_secs_f64();
            samples[case].push(secs);
            line.push_str(&format!(" {} {secs:.3} s;", CASES[case]));
        }
        println!(
            "{line} (seaport's last sync and rename {:.3} s)",
            finish[rep]
        );
    }
    let load = load.stop();
    println!("{load}");
    let mb = bytes as f64 / 1e6;
    let openssl_median = stats(&samples[0]).median;
    for (case, s) in CASES.iter().zip(&samples) {
        let st = stats(s);
        let of_openssl = openssl_median / st.median;
        println!(
            "{case:13} min/median/max {:.3}/{:.3}/{:.3} s, median {:.0} MB/s, {of_openssl:.2} of openssl's throughput",
            st.min,
            st.median,
            st.max,
            mb / st.median
        );
        let mut json = serde_json::json!({
            "bench": "verify",
            "case": case,
            "bytes": bytes,
            "reps": reps,
            "secs": s,
            "min": st.min,
            "median": st.median,
            "max": st.max,
            "mb_per_s_median": mb / st.median,
            "throughput_over_openssl": of_openssl,
            "machine": machine(),
            "load": load.json(),
        });
        if *case == "seaport" {
            json["pieces_in_flight"] = in_flight.into();
            json["last_sync_and_rename_secs"] = finish.clone().into();
        }
        println!("{json}");
    }
    let ratio = openssl_median / stats(&samples[1]).median;
    let serial = openssl_median / stats(&samples[2]).median;
    let disk = openssl_median / stats(&samples[3]).median;
    let direct = openssl_median / stats(&samples[4]).median;
    println!(
        "target: seaport ({in_flight} pieces in flight) / openssl throughput = {ratio:.2} (>= 0.9: {}); one piece at a time: {serial:.2}; the disk / openssl: {disk:.2} (dd conv=fdatasync), {direct:.2} (dd oflag=direct)",
        if ratio >= 0.9 { "met" } else { "missed" }
    );
}
