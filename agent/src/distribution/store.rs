//! The agent's blob store under `STATE_DIR/content/`:
//!
//! | path | what |
//! | --- | --- |
//! | `sha256/<hex>` | verified blobs, shared by every image |
//! | `tmp/<hex>.part` | a blob being fetched, pieces written at their offsets |
//! | `tmp/<hex>.bits` | the pieces of the `.part` verified and synced to disk |
//! | `images.json` | the images assigned to this node and their blobs |
//!
//! A piece's bit is set only when the piece hashed to its digest in the
//! piece table while it was written ([`PieceWriter`]), and persisted only
//! after the `.part` file's data is synced, so after a crash or restart the
//! bitmap never claims bytes that are not on disk. The pieces a persisted
//! bitmap claims are hashed again when the partial is reopened, so bytes
//! that changed while the agent was not running are fetched again, never
//! used.
//!
//! A blob is renamed into `sha256/` when every piece is verified. It is not
//! hashed again as a whole: the coordinator built the piece table from the
//! blob while checking the blob's digest, so pieces that match the table are
//! the blob. Every byte is hashed once, as it is written.
//!
//! Hashing and writing overlap: [`PieceWriter`] hashes a chunk on the
//! caller's thread (for the fetcher, one of the async runtime's blocking
//! threads: [`PieceWriter::write_off_thread`]) and hands it to the
//! partial's writer thread, which writes it at its offset while the caller
//! receives and hashes the next one. A piece verifies only once every chunk of it is written (its write
//! errors are reported then, apart from a digest mismatch), so a set bit
//! always means verified bytes in the `.part` file. When a piece's last
//! chunk is written, the writer thread starts the disk writeback of the
//! piece, so the `fdatasync` before the bitmap is persisted waits only for
//! the last pieces.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Duration;

use seaport_shared::aligned::{AlignedBuf, ALIGN};
use seaport_shared::confined::{self, ConfinedError};
use seaport_shared::digest::Digest;
use seaport_shared::distribution::{Bitmap, ImageAssignment, PieceTable};

/// How often a fetch persists the bitmaps of its partial blobs (each time
/// after syncing their data).
pub const PERSIST_EVERY: Duration = Duration::from_secs(1);

/// Chunks waiting for a partial's writer thread at most; a writer that
/// falls behind holds up the caller (no unbounded memory).
const QUEUED: usize = 8;

/// Errors of the blob store.
#[derive(Debug, thiserror::Error)]
pub enum BlobStoreError {
    #[error("blob store: {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: String,
        source: io::Error,
    },
    #[error("blob {0} is not complete: pieces are missing")]
    Incomplete(Digest),
    #[error("blob store: {0}")]
    Write(#[from] ConfinedError),
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> BlobStoreError + 'a {
    move |source| BlobStoreError::Io {
        what,
        path: path.display().to_string(),
        source,
    }
}

/// `STATE_DIR/content`.
#[derive(Debug, Clone)]
pub struct BlobStore {
    dir: PathBuf,
}

impl BlobStore {
    /// Opens (creating) the store under an agent state directory.
    pub fn open(state_dir: &Path) -> Result<BlobStore, BlobStoreError> {
        let dir = state_dir.join("content");
        for sub in ["sha256", "tmp"] {
            let p = dir.join(sub);
            fs::create_dir_all(&p).map_err(io_err("creating", &p))?;
        }
        Ok(BlobStore { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where a verified blob lives.
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.dir.join("sha256").join(digest.hex())
    }

    fn part_path(&self, digest: &Digest) -> PathBuf {
        self.dir.join("tmp").join(format!("{}.part", digest.hex()))
    }

    fn bits_path(&self, digest: &Digest) -> PathBuf {
        self.dir.join("tmp").join(format!("{}.bits", digest.hex()))
    }

    /// Whether a verified blob is present.
    pub fn has(&self, digest: &Digest) -> bool {
        self.blob_path(digest).is_file()
    }

    /// Opens or creates the partial file of a blob, with the pieces already
    /// verified (from its persisted bitmap).
    pub fn partial(&self, table: Arc<PieceTable>) -> Result<Partial, BlobStoreError> {
        let part = self.part_path(&table.digest);
        let bits = self.bits_path(&table.digest);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&part)
            .map_err(io_err("opening", &part))?;
        let len = file.metadata().map_err(io_err("reading", &part))?.len();
        let mut have = fs::read(&bits)
            .ok()
            .and_then(|b| Bitmap::from_bytes(table.count(), &b))
            .unwrap_or_else(|| Bitmap::new(table.count()));
        if len != table.size {
            // A part file of another size cannot hold verified pieces.
            have = Bitmap::new(table.count());
            file.set_len(table.size).map_err(io_err("sizing", &part))?;
        }
        // What the bitmap claims was verified when it was written; check
        // that it is still what is on disk.
        let claimed: Vec<u32> = (0..table.count()).filter(|&i| have.get(i)).collect();
        let mut buf = vec![0u8; if claimed.is_empty() { 0 } else { 256 * 1024 }];
        for i in claimed {
            if !piece_on_disk(&table, &file, i, &mut buf) {
                have.clear(i);
            }
        }
        Ok(Partial {
            table,
            file: Arc::new(file),
            have,
            part,
            bits,
            dirty: false,
            writer: OnceLock::new(),
        })
    }

    /// The images last assigned to this node.
    pub fn images(&self) -> Vec<ImageAssignment> {
        fs::read(self.dir.join("images.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// Records the images assigned to this node.
    pub fn set_images(&self, images: &[ImageAssignment]) -> Result<(), BlobStoreError> {
        confined::write_atomic(
            &self.dir.join("images.json"),
            &serde_json::to_vec_pretty(images).expect("images serialize"),
            0o644,
        )?;
        Ok(())
    }

    /// Removes verified and partial blobs not in `keep`; returns the removed digests.
    pub fn gc(&self, keep: &HashSet<Digest>) -> Vec<Digest> {
        let mut removed = Vec::new();
        for sub in ["sha256", "tmp"] {
            let Ok(entries) = fs::read_dir(self.dir.join(sub)) else {
                continue;
            };
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let hex = name.split('.').next().unwrap_or_default();
                let Ok(d) = Digest::from_hex(hex) else {
                    continue;
                };
                if !keep.contains(&d) && fs::remove_file(e.path()).is_ok() && sub == "sha256" {
                    removed.push(d);
                }
            }
        }
        removed
    }
}

/// A blob being fetched.
#[derive(Debug)]
pub struct Partial {
    pub table: Arc<PieceTable>,
    pub file: Arc<File>,
    pub have: Bitmap,
    part: PathBuf,
    bits: PathBuf,
    dirty: bool,
    /// The writer thread, started with the first piece written.
    writer: OnceLock<PartialWriter>,
}

/// Whether piece `i` of the file hashes to its digest in the table.
fn piece_on_disk(table: &PieceTable, file: &File, i: u32, buf: &mut [u8]) -> bool {
    use sha2::Digest as _;
    let (offset, len) = table.range(i);
    let mut hasher = sha2::Sha256::new();
    let mut done = 0u64;
    while done < u64::from(len) {
        let n = (u64::from(len) - done).min(buf.len() as u64) as usize;
        if file.read_exact_at(&mut buf[..n], offset + done).is_err() {
            return false;
        }
        hasher.update(&buf[..n]);
        done += n as u64;
    }
    Digest::from_bytes(hasher.finalize().into()) == table.pieces[i as usize]
}

/// Proof that a piece hashed to its digest in the table while it was
/// written: the only way to set a piece's bit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifiedPiece(u32);

impl VerifiedPiece {
    pub fn index(&self) -> u32 {
        self.0
    }
}

impl Partial {
    /// Records a verified piece (persisted on the next [`Partial::persist`]).
    pub fn mark(&mut self, piece: VerifiedPiece) {
        self.have.set(piece.0);
        self.dirty = true;
    }

    pub fn part_path(&self) -> &Path {
        &self.part
    }

    /// The handle pieces of this blob are written through (its writer
    /// thread starts on the first call). Clones share the thread, which
    /// ends when the partial and every clone are gone.
    pub fn writer(&self) -> Result<PartialWriter, BlobStoreError> {
        if let Some(w) = self.writer.get() {
            return Ok(w.clone());
        }
        let w = PartialWriter::start(self.table.clone(), self.file.clone(), &self.part)
            .map_err(io_err("starting the writer thread of", &self.part))?;
        Ok(self.writer.get_or_init(|| w).clone())
    }

    /// Syncs the data, then writes the bitmap atomically.
    pub fn persist(&mut self) -> Result<(), BlobStoreError> {
        if !self.dirty {
            return Ok(());
        }
        self.file
            .sync_data()
            .map_err(io_err("syncing", &self.part))?;
        confined::write_atomic(&self.bits, self.have.as_bytes(), 0o644)?;
        self.dirty = false;
        Ok(())
    }

    /// Moves the blob into `sha256/` once every piece is verified (its data
    /// synced first).
    pub fn finish(mut self, store: &BlobStore) -> Result<(), BlobStoreError> {
        let digest = self.table.digest;
        if !self.have.is_full() {
            return Err(BlobStoreError::Incomplete(digest));
        }
        self.persist()?;
        let dest = store.blob_path(&digest);
        fs::rename(&self.part, &dest).map_err(io_err("renaming into place", &dest))?;
        let _ = fs::remove_file(&self.bits);
        Ok(())
    }
}

/// Bytes one direct write takes at most: consecutive chunks waiting for
/// the writer thread go to the disk together (disks take 1 MiB writes much
/// faster than 256 KiB ones).
const GATHER: usize = 1 << 20;

/// Direct writes in flight at once.
const DIRECT_WRITERS: usize = 2;

/// A buffer for one chunk of a piece, its bytes aligned for direct I/O, so
/// the writer thread writes it to the disk as it is, without a copy.
pub type ChunkBuf = AlignedBuf;

/// One chunk for the writer thread.
struct Job {
    offset: u64,
    buf: ChunkBuf,
    piece: Arc<Pending>,
    /// Set on a piece's last chunk: the piece's range, whose writeback
    /// starts once it is written (when it went through the page cache).
    writeback: Option<(u64, u32)>,
}

/// The chunks of one piece not written yet, and the first write error.
#[derive(Debug, Default)]
struct Pending {
    state: Mutex<(usize, Option<io::Error>)>,
    written: Condvar,
}

impl Pending {
    fn lock(&self) -> std::sync::MutexGuard<'_, (usize, Option<io::Error>)> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn add(&self) {
        self.lock().0 += 1;
    }

    fn done(&self, result: &io::Result<()>) {
        let mut st = self.lock();
        st.0 -= 1;
        if let Err(e) = result {
            st.1.get_or_insert_with(|| io::Error::new(e.kind(), e.to_string()));
        }
        if st.0 == 0 {
            self.written.notify_all();
        }
    }

    /// Waits until every chunk handed over is written; the first error.
    fn wait(&self) -> io::Result<()> {
        let mut st = self.lock();
        while st.0 > 0 {
            st = self.written.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        st.1.take().map_or(Ok(()), Err)
    }
}

/// Buffers the writer threads are done with, for the next chunks.
type Pool = Arc<Mutex<Vec<ChunkBuf>>>;

fn recycle(pool: &Pool, buf: ChunkBuf) {
    let mut free = pool.lock().unwrap_or_else(|p| p.into_inner());
    if free.len() < QUEUED + 2 {
        free.push(buf);
    }
}

/// The writing side of a [`Partial`]: a thread that puts chunks into the
/// `.part` file at their offsets, in the order they were handed over (see
/// [`DiskWriter`]), and the buffers it is done with, for reuse.
#[derive(Clone)]
pub struct PartialWriter {
    table: Arc<PieceTable>,
    jobs: SyncSender<Job>,
    free: Pool,
}

impl std::fmt::Debug for PartialWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartialWriter")
            .field("digest", &self.table.digest)
            .finish_non_exhaustive()
    }
}

impl PartialWriter {
    fn start(table: Arc<PieceTable>, file: Arc<File>, part: &Path) -> io::Result<PartialWriter> {
        let (jobs, queue) = sync_channel::<Job>(QUEUED);
        let free = Pool::default();
        let mut disk = DiskWriter::start(file, part, free.clone())?;
        std::thread::Builder::new()
            .name("seaport-part-writer".into())
            .spawn(move || disk.run(&queue))?;
        Ok(PartialWriter { table, jobs, free })
    }

    /// A writer for piece `index`.
    pub fn piece(&self, index: u32) -> PieceWriter {
        use sha2::Digest as _;
        let (offset, len) = self.table.range(index);
        PieceWriter {
            sink: self.clone(),
            index,
            offset,
            len,
            done: 0,
            expected: self.table.pieces[index as usize],
            hasher: PieceHasher::new(),
            pending: Arc::new(Pending::default()),
        }
    }

    /// A buffer of `len` bytes: one the writer threads are done with, or a
    /// new one.
    pub fn buffer(&self, len: usize) -> ChunkBuf {
        let reused = self.free.lock().unwrap_or_else(|p| p.into_inner()).pop();
        match reused {
            Some(mut b) if b.capacity() >= len => {
                b.resize(len);
                b
            }
            _ => ChunkBuf::new(len),
        }
    }
}

/// How the writer thread puts chunks into the `.part` file.
///
/// Where the file system allows it, chunks go to the disk with direct I/O
/// (`O_DIRECT`), straight from their buffers: consecutive chunks waiting
/// together are written with one vectored write of up to [`GATHER`] bytes,
/// and [`DIRECT_WRITERS`] threads keep writes in flight. A direct write is
/// on the disk when it returns, so the `fdatasync` before the bitmap is
/// persisted has no dirty page cache to wait for, and the kernel's
/// throttling of buffered writeback (which on some disks writes a burst of
/// dirty pages at a fraction of the disk's speed) does not apply. Chunks
/// that are not aligned (the blob's end), and every chunk on a file system
/// without direct I/O, go through the page cache, and the writeback of each
/// finished piece is started at once.
///
/// Two writes of the same bytes are never in flight at once: a piece is
/// fetched again only after its [`PieceWriter`] is gone, which waits for
/// its chunks to be written.
struct DiskWriter {
    buffered: Arc<File>,
    free: Pool,
    /// Whether direct writes are still tried (one refused turns them off).
    direct: Arc<AtomicBool>,
    /// Consecutive chunks gathered for one direct write.
    gathered: Vec<Job>,
    /// Gathered chunks to the direct writer threads.
    to_write: Option<SyncSender<Vec<Job>>>,
}

impl DiskWriter {
    fn start(buffered: Arc<File>, part: &Path, free: Pool) -> io::Result<DiskWriter> {
        use std::os::unix::fs::OpenOptionsExt;
        let mut disk = DiskWriter {
            buffered: buffered.clone(),
            free: free.clone(),
            direct: Arc::new(AtomicBool::new(false)),
            gathered: Vec::new(),
            to_write: None,
        };
        let Ok(direct) = OpenOptions::new()
            .write(true)
            .custom_flags(nix::libc::O_DIRECT)
            .open(part)
        else {
            return Ok(disk);
        };
        let direct = Arc::new(direct);
        let (to_write, queue) = sync_channel::<Vec<Job>>(0);
        let queue = Arc::new(Mutex::new(queue));
        for _ in 0..DIRECT_WRITERS {
            let (direct, buffered) = (direct.clone(), buffered.clone());
            let (queue, free, enabled) = (queue.clone(), free.clone(), disk.direct.clone());
            std::thread::Builder::new()
                .name("seaport-part-io".into())
                .spawn(move || loop {
                    let next = queue.lock().unwrap_or_else(|p| p.into_inner()).recv();
                    let Ok(jobs) = next else { break };
                    let result = write_direct(&direct, &buffered, &jobs, &enabled);
                    for job in jobs {
                        job.piece.done(&result);
                        recycle(&free, job.buf);
                    }
                })?;
        }
        disk.direct.store(true, Ordering::Relaxed);
        disk.to_write = Some(to_write);
        Ok(disk)
    }

    /// Takes chunks until every [`PartialWriter`] is gone.
    fn run(&mut self, queue: &Receiver<Job>) {
        loop {
            let job = match queue.try_recv() {
                Ok(job) => job,
                Err(TryRecvError::Empty) => {
                    // Nothing more waiting: what is gathered goes out now,
                    // so that no piece waits for chunks that may not come.
                    self.flush();
                    match queue.recv() {
                        Ok(job) => job,
                        Err(_) => break,
                    }
                }
                Err(TryRecvError::Disconnected) => break,
            };
            self.take(job);
        }
        self.flush();
    }

    /// Writes a chunk, or gathers it for a direct write.
    fn take(&mut self, job: Job) {
        let len = job.buf.len();
        let aligned = job.offset % ALIGN as u64 == 0 && len % ALIGN == 0 && len <= GATHER;
        if !aligned || !self.direct.load(Ordering::Relaxed) {
            self.flush();
            let result = self.buffered.write_all_at(&job.buf, job.offset);
            if let (Ok(()), Some((offset, len))) = (&result, job.writeback) {
                start_writeback(&self.buffered, offset, len);
            }
            job.piece.done(&result);
            recycle(&self.free, job.buf);
            return;
        }
        let (at, gathered) = match (self.gathered.first(), self.gathered.last()) {
            (Some(first), Some(last)) => (
                last.offset + last.buf.len() as u64,
                (last.offset - first.offset) as usize + last.buf.len(),
            ),
            _ => (job.offset, 0),
        };
        if job.offset != at || gathered + len > GATHER {
            self.flush();
        }
        self.gathered.push(job);
        if gathered + len == GATHER {
            self.flush();
        }
    }

    /// Hands what is gathered to the direct writers.
    fn flush(&mut self) {
        if self.gathered.is_empty() {
            return;
        }
        let jobs = std::mem::take(&mut self.gathered);
        let unsent = match &self.to_write {
            Some(to_write) => match to_write.send(jobs) {
                Ok(()) => return,
                Err(unsent) => unsent.0,
            },
            None => jobs,
        };
        // No direct writers (they only stop when this thread does).
        for job in unsent {
            let result = self.buffered.write_all_at(&job.buf, job.offset);
            job.piece.done(&result);
            recycle(&self.free, job.buf);
        }
    }
}

/// Writes consecutive chunks with one vectored direct write. A direct write
/// the file system refuses (or cuts short) is done through the page cache
/// instead, and direct writes are not tried again.
fn write_direct(
    direct: &File,
    buffered: &File,
    jobs: &[Job],
    enabled: &AtomicBool,
) -> io::Result<()> {
    let Some(first) = jobs.first() else {
        return Ok(());
    };
    let slices: Vec<io::IoSlice<'_>> = jobs.iter().map(|j| io::IoSlice::new(&j.buf)).collect();
    let total: usize = jobs.iter().map(|j| j.buf.len()).sum();
    let offset = i64::try_from(first.offset).map_err(io::Error::other)?;
    match nix::sys::uio::pwritev(direct, &slices, offset) {
        Ok(n) if n == total => return Ok(()),
        _ => enabled.store(false, Ordering::Relaxed),
    }
    for job in jobs {
        buffered.write_all_at(&job.buf, job.offset)?;
    }
    let len = u32::try_from(total).unwrap_or(u32::MAX);
    start_writeback(buffered, first.offset, len);
    Ok(())
}

/// Starts writing a just-written range to disk without waiting for it, so
/// that the `fdatasync` before the bitmap is persisted finds little left to
/// do. `POSIX_FADV_DONTNEED` makes Linux start the writeback of the range's
/// dirty pages (as `sync_file_range(SYNC_FILE_RANGE_WRITE)` does); it drops
/// only pages that are already clean, and the range's pages are all dirty
/// or under writeback at this point, so they stay cached for peers. Only a
/// hint: an error is not one the data would suffer from (the `fdatasync`
/// reports real write errors).
fn start_writeback(file: &File, offset: u64, len: u32) {
    let Ok(offset) = i64::try_from(offset) else {
        return;
    };
    let len = i64::from(len);
    let _ = nix::fcntl::posix_fadvise(
        file,
        offset,
        len,
        nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
    );
}

/// The sha256 every piece is checked with.
type PieceHasher = sha2::Sha256;

/// Writes one piece of a partial blob at its offset while hashing it: each
/// chunk is hashed here and written by the partial's writer thread while
/// the next one comes in; the piece is checked against the piece table once
/// every chunk is written. No piece is ever held in memory.
#[derive(Debug)]
pub struct PieceWriter {
    sink: PartialWriter,
    index: u32,
    offset: u64,
    len: u32,
    done: u32,
    expected: Digest,
    hasher: PieceHasher,
    pending: Arc<Pending>,
}

impl PieceWriter {
    /// Bytes of the piece still to come.
    pub fn remaining(&self) -> usize {
        (self.len - self.done) as usize
    }

    /// Hashes `chunk` and hands it to the writer thread to be written after
    /// what came before; `chunk` must not go past the end of the piece.
    /// Returns a buffer for the next chunk (of any length: resize it).
    pub fn write(&mut self, chunk: ChunkBuf) -> io::Result<ChunkBuf> {
        use sha2::Digest as _;
        if chunk.len() > self.remaining() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "more bytes than the piece holds",
            ));
        }
        let len = chunk.len();
        self.hasher.update(&chunk[..]);
        let offset = self.offset + u64::from(self.done);
        self.done += len as u32;
        let writeback = (self.done == self.len).then_some((self.offset, self.len));
        self.pending.add();
        let job = Job {
            offset,
            buf: chunk,
            piece: self.pending.clone(),
            writeback,
        };
        if let Err(unsent) = self.sink.jobs.send(job) {
            let err = Err(io::Error::other("the partial blob's writer thread stopped"));
            unsent.0.piece.done(&err);
            return err.map(|()| unsent.0.buf);
        }
        Ok(self.sink.buffer(len))
    }

    /// Waits until every chunk is written, then: the piece if every byte
    /// came and it hashes to its digest in the table, `None` if not. An
    /// error is a failed write (the disk's fault, not the source's).
    pub fn verify(mut self) -> io::Result<Option<VerifiedPiece>> {
        use sha2::Digest as _;
        self.pending.wait()?;
        let hasher = std::mem::take(&mut self.hasher);
        Ok(
            (self.done == self.len
                && Digest::from_bytes(hasher.finalize().into()) == self.expected)
                .then_some(VerifiedPiece(self.index)),
        )
    }
}

impl PieceWriter {
    /// [`PieceWriter::write`] on the async runtime's blocking threads: the
    /// runtime's own thread (the agent runs one) goes on receiving while the
    /// chunk is hashed, and pieces in flight from several sources are hashed
    /// on several cores at once.
    pub async fn write_off_thread(self, chunk: ChunkBuf) -> (PieceWriter, io::Result<ChunkBuf>) {
        let job = tokio::task::spawn_blocking(move || {
            let mut w = self;
            let result = w.write(chunk);
            (w, result)
        });
        match job.await {
            Ok(done) => done,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }

    /// [`PieceWriter::verify`] on the async runtime's blocking threads (it
    /// waits for the piece's chunks to be written).
    pub async fn verify_off_thread(self) -> io::Result<Option<VerifiedPiece>> {
        match tokio::task::spawn_blocking(move || self.verify()).await {
            Ok(done) => done,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
}

impl Drop for PieceWriter {
    /// A piece given up on (its source failed) is fetched again only after
    /// the chunks it handed over are written, so that they cannot land
    /// over the new ones.
    fn drop(&mut self) {
        let _ = self.pending.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(data: &[u8]) -> Arc<PieceTable> {
        Arc::new(PieceTable::compute(Digest::of(data), data, 4).unwrap())
    }

    fn write(p: &Partial, i: u32, bytes: &[u8]) -> Option<VerifiedPiece> {
        let mut w = p.writer().unwrap().piece(i);
        w.write(bytes.into()).unwrap();
        w.verify().unwrap()
    }

    #[test]
    fn verified_pieces_survive_a_reopen_and_the_blob_lands_verified() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let data = b"0123456789";
        let t = table(data);
        let mut p = store.partial(t.clone()).unwrap();
        let v = write(&p, 0, &data[0..4]).unwrap();
        p.mark(v);
        p.persist().unwrap();
        drop(p);
        let mut p = store.partial(t.clone()).unwrap();
        assert!(p.have.get(0) && !p.have.get(1));
        assert!(matches!(
            store.partial(t.clone()).unwrap().finish(&store),
            Err(BlobStoreError::Incomplete(_))
        ));
        let v = write(&p, 1, &data[4..8]).unwrap();
        p.mark(v);
        let v = write(&p, 2, &data[8..]).unwrap();
        p.mark(v);
        p.finish(&store).unwrap();
        assert_eq!(fs::read(store.blob_path(&t.digest)).unwrap(), data);
        assert!(fs::read_dir(store.dir().join("tmp"))
            .unwrap()
            .next()
            .is_none());
    }

    #[test]
    fn wrong_bytes_do_not_verify_and_cannot_be_marked() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let t = table(b"0123456789");
        let p = store.partial(t.clone()).unwrap();
        assert!(write(&p, 0, b"XXXX").is_none());
        // Too few bytes do not verify either, too many are refused.
        assert!(write(&p, 0, b"012").is_none());
        let mut w = p.writer().unwrap().piece(2);
        assert!(w.write(b"890"[..].into()).is_err());
        assert_eq!(p.have.count(), 0);
    }

    #[test]
    fn pieces_changed_on_disk_while_stopped_are_fetched_again() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let data = b"0123456789";
        let t = table(data);
        let mut p = store.partial(t.clone()).unwrap();
        for (i, bytes) in [(0, &data[0..4]), (1, &data[4..8])] {
            let v = write(&p, i, bytes).unwrap();
            p.mark(v);
        }
        p.persist().unwrap();
        let part = p.part_path().to_path_buf();
        drop(p);
        // Piece 1 is damaged on disk while the agent is not running.
        let f = OpenOptions::new().write(true).open(&part).unwrap();
        f.write_at(b"X", 5).unwrap();
        let p = store.partial(t).unwrap();
        assert!(p.have.get(0));
        assert!(!p.have.get(1), "a damaged piece is not trusted");
        assert_eq!(p.have.count(), 1);
    }

    #[test]
    fn gc_keeps_only_referenced_blobs() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let a = Digest::of(b"a");
        let b = Digest::of(b"b");
        fs::write(store.blob_path(&a), b"a").unwrap();
        fs::write(store.blob_path(&b), b"b").unwrap();
        let removed = store.gc(&[a].into_iter().collect());
        assert_eq!(removed, vec![b]);
        assert!(store.has(&a) && !store.has(&b));
    }
}
