//! Deterministic layers: a sorted list of entries becomes a tar stream,
//! compressed with zstd and hashed twice while written (the uncompressed
//! `diff_id` for the config, the compressed digest for the manifest).
//!
//! Every header is normalized: mtime from `SOURCE_DATE_EPOCH` (or 0), owner
//! root (uid/gid 0, no user or group names), permission bits kept. The same
//! entries therefore always give the same bytes, so the same digest.
//!
//! [`Snapshot`] records a materialized tree's metadata before a RUN, and
//! [`Snapshot::diff`] turns what RUN changed into entries, with OCI
//! whiteouts (`.wh.NAME`) for what it deleted.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use seaport_shared::aligned::AlignedBuf;
use seaport_shared::digest::{Digest, HashingWriter};
use seaport_shared::safetar::WHITEOUT_PREFIX;

/// zstd compression level of layers (the level `zstd -3` uses).
pub const ZSTD_LEVEL: i32 = 3;

/// Errors from writing a layer.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    /// Reading a source file or writing the layer failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// On what.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> LayerError + 'a {
    move |source| LayerError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// Where an entry's content comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntrySource {
    /// A regular file on disk, read when the layer is written.
    File(PathBuf),
    /// A directory.
    Dir,
    /// A symlink with this target.
    Symlink(PathBuf),
    /// A whiteout: the layer deletes this path.
    Whiteout,
}

/// One entry of a layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerEntry {
    /// What the entry is.
    pub source: EntrySource,
    /// Permission bits (`0o7777` mask).
    pub mode: u32,
}

/// Layer entries keyed by their path relative to the rootfs (no leading
/// `/`, `/`-separated). The map's order is the tar's order.
pub type Entries = BTreeMap<String, LayerEntry>;

/// A written layer.
#[derive(Clone, Debug)]
pub struct WrittenLayer {
    /// sha256 of the compressed bytes.
    pub digest: Digest,
    /// Size of the compressed bytes.
    pub size: u64,
    /// sha256 of the uncompressed tar.
    pub diff_id: Digest,
}

/// Settings for writing layers.
#[derive(Clone, Debug)]
pub struct LayerOptions {
    /// mtime of every entry (seconds since the epoch).
    pub mtime: u64,
    /// Compressing threads; 0 compresses on the calling thread. The layer's
    /// bytes are the same for any number.
    pub threads: u32,
}

impl Default for LayerOptions {
    fn default() -> Self {
        Self {
            mtime: source_date_epoch().unwrap_or(0),
            threads: default_threads(),
        }
    }
}

/// `SOURCE_DATE_EPOCH` from the environment, if set and valid.
pub fn source_date_epoch() -> Option<u64> {
    std::env::var("SOURCE_DATE_EPOCH").ok()?.trim().parse().ok()
}

/// One compressing thread per available core.
pub fn default_threads() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
}

/// Size of the buffers the tar stream is cut into between the reading
/// thread and the compressing one. Large reads keep syscalls few.
const CHUNK: usize = 4 << 20;

/// Full buffers that may wait for the compressor: enough to keep reading
/// while zstd's workers catch up, little enough to bound memory
/// (`CHUNK * (IN_FLIGHT + 2)`).
const IN_FLIGHT: usize = 4;

/// Writes `entries` as a zstd-compressed tar to `out`.
///
/// The stages run at once, like `tar -c | zstd -T0`: a reading thread walks
/// the entries, reads each file straight into large buffers that hold the
/// tar stream, and hashes that stream (the `diff_id`); compressing threads
/// turn each buffer into a zstd frame (see [`compress`]); the calling
/// thread hashes and writes the compressed bytes (the digest). The two
/// digests are computed on separate threads. The bytes depend only on the
/// entries, never on the number of threads.
pub fn write_layer(
    entries: &Entries,
    out: &mut File,
    options: &LayerOptions,
) -> Result<WrittenLayer, LayerError> {
    let (full_tx, full_rx) = std::sync::mpsc::sync_channel::<Chunk>(IN_FLIGHT);
    let (free_tx, free_rx) = std::sync::mpsc::channel::<Vec<u8>>();
    std::thread::scope(|scope| {
        let reader = std::thread::Builder::new()
            .name("layer-tar".into())
            .spawn_scoped(scope, move || {
                let mut stream = TarStream::new(full_tx, free_rx);
                write_tar(entries, options.mtime, &mut stream)?;
                stream.finish()
            })
            .map_err(io_err("starting a thread for", Path::new("<layer>")))?;
        let compressed = compress(full_rx, free_tx, out, options);
        let (diff_id, _) = match reader.join() {
            Ok(r) => r?,
            Err(panic) => std::panic::resume_unwind(panic),
        };
        let (digest, size) = compressed?;
        Ok(WrittenLayer {
            digest,
            size,
            diff_id,
        })
    })
}

/// One filled buffer of the tar stream.
struct Chunk {
    buf: Vec<u8>,
    len: usize,
}

/// The tar stream as the reading thread builds it: bytes go into a
/// [`CHUNK`]-sized buffer, which is hashed and handed to the compressor
/// when full. Buffers come back through `free` for reuse.
struct TarStream {
    buf: Vec<u8>,
    len: usize,
    full: std::sync::mpsc::SyncSender<Chunk>,
    free: std::sync::mpsc::Receiver<Vec<u8>>,
    hash: HashingWriter<io::Sink>,
}

impl TarStream {
    fn new(
        full: std::sync::mpsc::SyncSender<Chunk>,
        free: std::sync::mpsc::Receiver<Vec<u8>>,
    ) -> Self {
        Self {
            buf: vec![0; CHUNK],
            len: 0,
            full,
            free,
            hash: HashingWriter::new(io::sink()),
        }
    }

    /// Hands the current buffer to the compressor and takes a fresh one.
    fn send(&mut self) -> io::Result<()> {
        if self.len == 0 {
            return Ok(());
        }
        self.hash.write_all(&self.buf[..self.len])?;
        let next = self.free.try_recv().unwrap_or_else(|_| vec![0; CHUNK]);
        let buf = std::mem::replace(&mut self.buf, next);
        let len = std::mem::take(&mut self.len);
        self.full
            .send(Chunk { buf, len })
            .map_err(|_| io::Error::other("the layer compressor stopped"))
    }

    /// Appends exactly `len` bytes of `file`, read directly into the
    /// stream's buffers. A file that shrinks while read is an error (the
    /// tar header already promised `len` bytes).
    fn copy_file(&mut self, file: &mut File, len: u64) -> io::Result<()> {
        let mut left = len;
        while left > 0 {
            if self.len == CHUNK {
                self.send()?;
            }
            let room = (CHUNK - self.len).min(usize::try_from(left).unwrap_or(usize::MAX));
            let n = match io::Read::read(file, &mut self.buf[self.len..self.len + room]) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!(
                            "the file shrank while it was read ({} of {len} bytes); \
                             do not change the build context during a build",
                            len - left
                        ),
                    ))
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            self.len += n;
            left -= n as u64;
        }
        Ok(())
    }

    /// Sends what is left; returns the digest and size of the whole stream.
    fn finish(mut self) -> Result<(Digest, u64), LayerError> {
        self.send()
            .map_err(io_err("writing the layer", Path::new("<layer>")))?;
        let (_, digest, size) = self.hash.finish();
        Ok((digest, size))
    }
}

impl Write for TarStream {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.len == CHUNK {
            self.send()?;
        }
        let n = data.len().min(CHUNK - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&data[..n]);
        self.len += n;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Writes the tar stream of `entries` into `stream`.
fn write_tar(entries: &Entries, mtime: u64, stream: &mut TarStream) -> Result<(), LayerError> {
    let mut builder = tar::Builder::new(stream);
    builder.mode(tar::HeaderMode::Deterministic);
    for (path, entry) in entries {
        append_entry(&mut builder, path, entry, mtime)?;
    }
    builder
        .into_inner()
        .map_err(io_err("finishing tar for", Path::new("<layer>")))?;
    Ok(())
}

/// Compresses the chunks arriving on `full` into `out`, hashing the
/// compressed bytes; returns their digest and size.
///
/// Each chunk of the tar stream becomes one zstd frame of its own
/// ([`frame`]), so the bytes depend on the chunk alone, never on how many
/// threads compress: `options.threads` workers compress chunks at once
/// while this thread hashes and writes the finished frames in order. The
/// frames of a layer are one zstd stream: decoders read concatenated
/// frames as one content.
fn compress(
    full: std::sync::mpsc::Receiver<Chunk>,
    free: std::sync::mpsc::Sender<Vec<u8>>,
    out: &mut File,
    options: &LayerOptions,
) -> Result<(Digest, u64), LayerError> {
    let out_path = PathBuf::from("<layer>");
    let layer_file = LayerFile::new(out).map_err(io_err("preparing", &out_path))?;
    let mut sink = HashingWriter::new(layer_file);
    let workers = options.threads as usize;
    if workers == 0 {
        let mut compressor =
            FrameCompressor::new().map_err(io_err("starting zstd for", &out_path))?;
        for chunk in full {
            let data = &chunk.buf[..chunk.len];
            let frame = compressor
                .frame(data)
                .map_err(io_err("compressing", &out_path))?;
            frame
                .write_to(data, &mut sink)
                .map_err(io_err("writing", &out_path))?;
            let _ = free.send(chunk.buf);
        }
    } else {
        compress_parallel(full, &free, &mut sink, workers)
            .map_err(io_err("compressing", &out_path))?;
    }
    let (layer_file, digest, size) = sink.finish();
    layer_file
        .finish()
        .map_err(io_err("writing and syncing", &out_path))?;
    Ok((digest, size))
}

/// A compressed chunk on its way back to the writing thread.
type Compressed = io::Result<(Chunk, Frame)>;

/// `workers` threads compress chunks; a feeding thread hands them out in
/// order and queues, in the same order, where each one's frame will come
/// back; this thread writes the frames in that order. At most
/// `2 * workers` chunks are being compressed or waiting to be written.
fn compress_parallel(
    full: std::sync::mpsc::Receiver<Chunk>,
    free: &std::sync::mpsc::Sender<Vec<u8>>,
    sink: &mut impl Write,
    workers: usize,
) -> io::Result<()> {
    use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
    type Job = (Chunk, SyncSender<Compressed>);
    let (jobs_tx, jobs_rx) = sync_channel::<Job>(workers);
    let jobs_rx = std::sync::Arc::new(std::sync::Mutex::new(jobs_rx));
    let (order_tx, order_rx) = sync_channel::<Receiver<Compressed>>(2 * workers);
    std::thread::scope(|scope| {
        // The feeder first: if a worker cannot start, the feeder's end of
        // the queues goes with it and nothing waits forever.
        std::thread::Builder::new()
            .name("layer-feed".into())
            .spawn_scoped(scope, move || {
                for chunk in full {
                    let (done, back) = sync_channel(1);
                    // Either side gone means the writer stopped: stop too.
                    if order_tx.send(back).is_err() || jobs_tx.send((chunk, done)).is_err() {
                        break;
                    }
                }
            })?;
        for _ in 0..workers {
            let jobs = jobs_rx.clone();
            std::thread::Builder::new()
                .name("layer-zstd".into())
                .spawn_scoped(scope, move || {
                    let mut compressor = FrameCompressor::new();
                    loop {
                        let next = jobs.lock().unwrap_or_else(|p| p.into_inner()).recv();
                        let Ok((chunk, done)) = next else { break };
                        let result = match &mut compressor {
                            Ok(c) => c.frame(&chunk.buf[..chunk.len]).map(|f| (chunk, f)),
                            Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
                        };
                        let _ = done.send(result);
                    }
                })?;
        }
        for back in order_rx {
            let (chunk, frame) = back
                .recv()
                .map_err(|_| io::Error::other("a compressing thread stopped"))??;
            frame.write_to(&chunk.buf[..chunk.len], sink)?;
            // The reader may have finished already: then nobody needs it.
            let _ = free.send(chunk.buf);
        }
        Ok(())
    })
}

/// zstd's magic number, which starts every frame.
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// The largest block of a frame (zstd's `Block_Maximum_Size`).
const ZSTD_BLOCK: usize = 128 * 1024;

/// What a chunk's frame holds.
enum Frame {
    /// The chunk stored as it is, in raw blocks: it does not compress.
    Raw,
    /// A zstd frame of the chunk compressed at [`ZSTD_LEVEL`].
    Compressed(Vec<u8>),
}

impl Frame {
    /// Writes the frame of `data`.
    fn write_to(&self, data: &[u8], out: &mut impl Write) -> io::Result<()> {
        match self {
            Frame::Compressed(bytes) => out.write_all(bytes),
            Frame::Raw => write_raw_frame(data, out),
        }
    }
}

/// Writes `data` as one zstd frame of raw (stored) blocks: the frame
/// header (single segment, its content size in 4 bytes, no checksum), then
/// blocks of up to [`ZSTD_BLOCK`] bytes, each after its 3-byte header
/// (last-block bit, type 0 = raw, size). Any zstd decoder reads it back as
/// `data`.
fn write_raw_frame(data: &[u8], out: &mut impl Write) -> io::Result<()> {
    let size =
        u32::try_from(data.len()).map_err(|_| io::Error::other("a chunk larger than 4 GiB"))?;
    let mut header = [0u8; 9];
    header[..4].copy_from_slice(&ZSTD_MAGIC);
    // Frame_Content_Size_flag 2 (4 bytes), Single_Segment_flag.
    header[4] = 0b1010_0000;
    header[5..].copy_from_slice(&size.to_le_bytes());
    out.write_all(&header)?;
    let mut blocks = data.chunks(ZSTD_BLOCK).peekable();
    if blocks.peek().is_none() {
        // An empty frame still has its one (last, empty) block.
        return out.write_all(&[1, 0, 0]);
    }
    while let Some(block) = blocks.next() {
        let last = u32::from(blocks.peek().is_none());
        let head = ((block.len() as u32) << 3) | last;
        out.write_all(&head.to_le_bytes()[..3])?;
        out.write_all(block)?;
    }
    Ok(())
}

/// The size of [`write_raw_frame`]'s frame of `len` bytes.
fn raw_frame_len(len: usize) -> usize {
    9 + 3 * len.div_ceil(ZSTD_BLOCK).max(1) + len
}

/// Bytes of a chunk compressed to tell whether it compresses: this many
/// from each of [`SAMPLES`] places spread over it.
const SAMPLE: usize = 16 * 1024;
const SAMPLES: usize = 4;

/// Samples that shrink to no less than this share of their size mark a
/// chunk that does not compress (already compressed files, image layers).
const INCOMPRESSIBLE: f64 = 0.97;

/// Compresses chunks into frames, one thread's zstd context.
struct FrameCompressor {
    zstd: zstd::bulk::Compressor<'static>,
}

impl FrameCompressor {
    fn new() -> io::Result<FrameCompressor> {
        Ok(FrameCompressor {
            zstd: zstd::bulk::Compressor::new(ZSTD_LEVEL)?,
        })
    }

    /// The frame of `data`: stored as it is when a sample of it does not
    /// compress (compressing it would cost time and save nothing) or when
    /// compressing it did not make it smaller; compressed otherwise. Which
    /// it is depends on the bytes alone.
    fn frame(&mut self, data: &[u8]) -> io::Result<Frame> {
        if !self.compresses(data)? {
            return Ok(Frame::Raw);
        }
        let mut out = Vec::with_capacity(zstd::zstd_safe::compress_bound(data.len()));
        self.zstd.compress_to_buffer(data, &mut out)?;
        Ok(if out.len() < raw_frame_len(data.len()) {
            Frame::Compressed(out)
        } else {
            Frame::Raw
        })
    }

    /// Whether [`SAMPLES`] pieces of [`SAMPLE`] bytes spread over `data`
    /// (all of it when it is that small) compress.
    fn compresses(&mut self, data: &[u8]) -> io::Result<bool> {
        let mut out = Vec::with_capacity(zstd::zstd_safe::compress_bound(SAMPLE));
        let (mut taken, mut compressed) = (0usize, 0usize);
        let pieces: Vec<&[u8]> = if data.len() <= SAMPLE * SAMPLES {
            data.chunks(SAMPLE).collect()
        } else {
            let step = (data.len() - SAMPLE) / (SAMPLES - 1);
            (0..SAMPLES)
                .map(|i| &data[i * step..i * step + SAMPLE])
                .collect()
        };
        for piece in pieces {
            out.clear();
            self.zstd.compress_to_buffer(piece, &mut out)?;
            taken += piece.len();
            compressed += out.len();
        }
        Ok((compressed as f64) < taken as f64 * INCOMPRESSIBLE)
    }
}

/// Bytes of one write of the layer file: large writes keep the disk busy
/// with few requests.
const WRITE_BLOCK: usize = 1 << 20;

/// Blocks filled or being written at once.
const WRITE_BLOCKS: usize = 4;

/// Bytes written through the page cache between two background
/// `fdatasync` calls, where direct writes are not available.
const WRITEBACK_CHUNK: u64 = 64 * 1024 * 1024;

/// Writes the layer file while the layer is still being compressed, so
/// that the fsync before the blob is renamed into the store finds little
/// left to do.
///
/// Bytes are gathered into aligned [`WRITE_BLOCK`]s, which a writing thread
/// puts on the disk: with direct I/O (`O_DIRECT`) where the file system
/// allows it, so the final `fdatasync` has no page cache to flush and the
/// kernel's throttling of buffered writeback (which on some disks writes
/// dirty pages at a fraction of the disk's speed) does not apply; through
/// the page cache otherwise, with an `fdatasync` every [`WRITEBACK_CHUNK`].
/// The last, partial block goes through the page cache.
struct LayerFile<'f> {
    file: &'f mut File,
    fill: AlignedBuf,
    len: usize,
    /// Bytes handed to the writing thread.
    offset: u64,
    full: Option<std::sync::mpsc::SyncSender<(u64, AlignedBuf)>>,
    free: std::sync::mpsc::Receiver<AlignedBuf>,
    writer: Option<std::thread::JoinHandle<io::Result<()>>>,
}

impl<'f> LayerFile<'f> {
    fn new(file: &'f mut File) -> io::Result<Self> {
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::{FileExt, OpenOptionsExt};
        let buffered = file.try_clone()?;
        let mut direct = fs::OpenOptions::new()
            .write(true)
            .custom_flags(nix::libc::O_DIRECT)
            .open(format!("/proc/self/fd/{}", file.as_raw_fd()))
            .ok();
        let (full_tx, full_rx) = std::sync::mpsc::sync_channel::<(u64, AlignedBuf)>(WRITE_BLOCKS);
        let (free_tx, free_rx) = std::sync::mpsc::channel::<AlignedBuf>();
        for _ in 1..WRITE_BLOCKS {
            let _ = free_tx.send(AlignedBuf::new(WRITE_BLOCK));
        }
        let writer = std::thread::Builder::new()
            .name("layer-write".into())
            .spawn(move || {
                let mut synced = 0u64;
                for (offset, block) in full_rx {
                    let bytes = &block[..];
                    let done = direct
                        .as_ref()
                        .is_some_and(|d| d.write_at(bytes, offset).ok() == Some(bytes.len()));
                    if !done {
                        // Refused or cut short: the page cache from now on.
                        direct = None;
                        buffered.write_all_at(bytes, offset)?;
                        let end = offset + bytes.len() as u64;
                        if end - synced >= WRITEBACK_CHUNK {
                            buffered.sync_data()?;
                            synced = end;
                        }
                    }
                    // The compressing side may be gone already (an error).
                    let _ = free_tx.send(block);
                }
                Ok(())
            })?;
        Ok(Self {
            file,
            fill: AlignedBuf::new(WRITE_BLOCK),
            len: 0,
            offset: 0,
            full: Some(full_tx),
            free: free_rx,
            writer: Some(writer),
        })
    }

    /// Waits for the writing thread; its first error.
    fn stop(&mut self) -> io::Result<()> {
        self.full.take();
        match self.writer.take() {
            Some(h) => h
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("the layer's writing thread panicked"))),
            None => Ok(()),
        }
    }

    /// Writes what is left and syncs the file.
    fn finish(mut self) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        self.stop()?;
        self.file
            .write_all_at(&self.fill[..self.len], self.offset)?;
        self.file.sync_data()
    }
}

impl Drop for LayerFile<'_> {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

impl Write for LayerFile<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(WRITE_BLOCK - self.len);
        self.fill[self.len..self.len + n].copy_from_slice(&buf[..n]);
        self.len += n;
        if self.len == WRITE_BLOCK {
            let stopped = |this: &mut Self| {
                // It stopped on an error: report that one.
                this.stop()
                    .err()
                    .unwrap_or_else(|| io::Error::other("the layer's writing thread stopped"))
            };
            let Ok(next) = self.free.recv() else {
                return Err(stopped(self));
            };
            let block = std::mem::replace(&mut self.fill, next);
            let sent = self
                .full
                .as_ref()
                .is_some_and(|full| full.send((self.offset, block)).is_ok());
            if !sent {
                return Err(stopped(self));
            }
            self.offset += WRITE_BLOCK as u64;
            self.len = 0;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn header(kind: tar::EntryType, mode: u32, mtime: u64, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode & 0o7777);
    h.set_mtime(mtime);
    h.set_uid(0);
    h.set_gid(0);
    h.set_size(size);
    h
}

fn append_entry(
    builder: &mut tar::Builder<&mut TarStream>,
    path: &str,
    entry: &LayerEntry,
    mtime: u64,
) -> Result<(), LayerError> {
    let name = Path::new(path);
    match &entry.source {
        EntrySource::File(src) => {
            let mut file = File::open(src).map_err(io_err("reading", src))?;
            let len = file.metadata().map_err(io_err("reading", src))?.len();
            let mut h = header(tar::EntryType::Regular, entry.mode, mtime, len);
            // The builder writes the header (and a long-name entry when the
            // path needs one); with no data it adds no padding. The data
            // then goes straight into the stream's buffers, padded to the
            // next 512-byte block as tar does. A file that changes size
            // while read would corrupt the tar: exactly `len` bytes are
            // read, and fewer is an error.
            builder
                .append_data(&mut h, name, io::empty())
                .map_err(io_err("adding to layer", src))?;
            let stream = builder.get_mut();
            stream
                .copy_file(&mut file, len)
                .map_err(io_err("adding to layer", src))?;
            let pad = (512 - len % 512) % 512;
            stream
                .write_all(&[0; 512][..pad as usize])
                .map_err(io_err("adding to layer", src))?;
        }
        EntrySource::Dir => {
            let mut h = header(tar::EntryType::Directory, entry.mode, mtime, 0);
            builder
                .append_data(&mut h, format!("{path}/"), io::empty())
                .map_err(io_err("adding to layer", name))?;
        }
        EntrySource::Symlink(target) => {
            let mut h = header(tar::EntryType::Symlink, entry.mode, mtime, 0);
            builder
                .append_link(&mut h, name, target)
                .map_err(io_err("adding to layer", name))?;
        }
        EntrySource::Whiteout => {
            let (dir, base) = match path.rsplit_once('/') {
                Some((d, b)) => (format!("{d}/"), b),
                None => (String::new(), path),
            };
            let mut h = header(tar::EntryType::Regular, 0o644, mtime, 0);
            builder
                .append_data(&mut h, format!("{dir}{WHITEOUT_PREFIX}{base}"), io::empty())
                .map_err(io_err("adding to layer", name))?;
        }
    }
    Ok(())
}

/// Adds the tree at `src` to `entries` under `dest` (`""` for the root):
/// `src` itself becomes `dest` (unless `dest` is the root), its contents go
/// below. Symlinks are recorded as symlinks, never followed.
pub fn add_tree(entries: &mut Entries, src: &Path, dest: &str) -> Result<(), LayerError> {
    for item in walkdir::WalkDir::new(src)
        .follow_links(false)
        .sort_by_file_name()
    {
        let item = item.map_err(|e| {
            let path = e.path().unwrap_or(src).to_path_buf();
            LayerError::Io {
                action: "walking",
                path,
                source: e.into(),
            }
        })?;
        let rel = item
            .path()
            .strip_prefix(src)
            .expect("walkdir stays under its root");
        let rel = rel.to_string_lossy();
        let key = match (dest.is_empty(), rel.is_empty()) {
            (true, true) => continue,
            (true, false) => rel.to_string(),
            (false, true) => dest.to_string(),
            (false, false) => format!("{dest}/{rel}"),
        };
        entries.insert(key, entry_for(item.path())?);
    }
    Ok(())
}

/// The entry for the file at `path` (not following a final symlink).
pub fn entry_for(path: &Path) -> Result<LayerEntry, LayerError> {
    let meta = fs::symlink_metadata(path).map_err(io_err("reading", path))?;
    let mode = meta.permissions().mode() & 0o7777;
    let ft = meta.file_type();
    let source = if ft.is_symlink() {
        EntrySource::Symlink(fs::read_link(path).map_err(io_err("reading link", path))?)
    } else if ft.is_dir() {
        EntrySource::Dir
    } else if ft.is_file() {
        EntrySource::File(path.to_path_buf())
    } else {
        return Err(LayerError::Io {
            action: "adding",
            path: path.to_path_buf(),
            source: io::Error::other("only files, directories and symlinks can go into a layer"),
        });
    };
    Ok(LayerEntry { source, mode })
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Stat {
    kind: u32,
    mode: u32,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
    ino: u64,
    link: Option<PathBuf>,
}

/// The metadata of every path in a tree, to find what a command changed.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    files: BTreeMap<String, Stat>,
}

impl Snapshot {
    /// Records the tree at `root`.
    pub fn take(root: &Path) -> Result<Self, LayerError> {
        let mut files = BTreeMap::new();
        for item in walkdir::WalkDir::new(root).follow_links(false).min_depth(1) {
            let item = item.map_err(|e| LayerError::Io {
                action: "walking",
                path: e.path().unwrap_or(root).to_path_buf(),
                source: e.into(),
            })?;
            let m = item.metadata().map_err(|e| LayerError::Io {
                action: "reading",
                path: item.path().to_path_buf(),
                source: e.into(),
            })?;
            let link = if m.file_type().is_symlink() {
                fs::read_link(item.path()).ok()
            } else {
                None
            };
            let rel = item
                .path()
                .strip_prefix(root)
                .expect("under root")
                .to_string_lossy()
                .into_owned();
            files.insert(
                rel,
                Stat {
                    kind: m.mode() & 0o170000,
                    mode: m.mode() & 0o7777,
                    size: m.size(),
                    mtime: (m.mtime(), m.mtime_nsec()),
                    ctime: (m.ctime(), m.ctime_nsec()),
                    ino: m.ino(),
                    link,
                },
            );
        }
        Ok(Self { files })
    }

    /// The entries that turn the tree as it was into the tree at `root` now:
    /// changed and new paths, and whiteouts for deleted ones (one for a
    /// deleted directory, not one per child).
    pub fn diff(&self, root: &Path) -> Result<Entries, LayerError> {
        let after = Self::take(root)?;
        let mut entries = Entries::new();
        for (path, stat) in &after.files {
            if self.files.get(path) != Some(stat) {
                entries.insert(path.clone(), entry_for(&root.join(path))?);
            }
        }
        let deleted: BTreeSet<&String> = self
            .files
            .keys()
            .filter(|p| !after.files.contains_key(*p))
            .collect();
        for path in &deleted {
            let parent_deleted = path
                .rsplit_once('/')
                .is_some_and(|(parent, _)| deleted.contains(&parent.to_string()));
            if !parent_deleted {
                entries.insert(
                    (*path).clone(),
                    LayerEntry {
                        source: EntrySource::Whiteout,
                        mode: 0,
                    },
                );
            }
        }
        Ok(entries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_entries_give_the_same_digest_and_a_readable_tar() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("etc")).unwrap();
        fs::write(dir.path().join("etc/a"), b"hello").unwrap();
        std::os::unix::fs::symlink("a", dir.path().join("etc/l")).unwrap();
        let mut entries = Entries::new();
        add_tree(&mut entries, dir.path(), "").unwrap();
        entries.insert(
            "gone".into(),
            LayerEntry {
                source: EntrySource::Whiteout,
                mode: 0,
            },
        );
        let opts = LayerOptions {
            mtime: 0,
            threads: 2,
        };
        let write = || {
            let mut f = tempfile::tempfile().unwrap();
            let w = write_layer(&entries, &mut f, &opts).unwrap();
            (w, f)
        };
        let (a, _) = write();
        let (b, mut f) = write();
        assert_eq!(a.digest, b.digest);
        assert_eq!(a.diff_id, b.diff_id);
        use std::io::Seek;
        f.rewind().unwrap();
        let tar = zstd::decode_all(&f).unwrap();
        assert_eq!(Digest::of(&tar), a.diff_id);
        let names: Vec<String> = tar::Archive::new(&tar[..])
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        assert_eq!(names, ["etc/", "etc/a", "etc/l", ".wh.gone"]);
    }

    /// Pseudo-random bytes that do not compress.
    fn noise(len: usize, mut x: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            out.extend_from_slice(&x.to_le_bytes());
        }
        out.truncate(len);
        out
    }

    #[test]
    fn incompressible_chunks_are_stored_and_the_bytes_do_not_depend_on_threads() {
        let dir = tempfile::tempdir().unwrap();
        // 9 MiB of noise (three tar chunks), text that compresses, an
        // empty file and a small one.
        let random = noise(9 << 20, 7);
        fs::write(dir.path().join("image.tar"), &random).unwrap();
        let text = "kind: Pod\nmetadata:\n  name: a\n".repeat(100_000);
        fs::write(dir.path().join("pods.yaml"), &text).unwrap();
        fs::write(dir.path().join("empty"), b"").unwrap();
        fs::write(dir.path().join("small"), b"x").unwrap();
        let mut entries = Entries::new();
        add_tree(&mut entries, dir.path(), "").unwrap();
        let write = |threads| {
            let mut f = tempfile::tempfile().unwrap();
            let opts = LayerOptions { mtime: 0, threads };
            let w = write_layer(&entries, &mut f, &opts).unwrap();
            use std::io::{Read, Seek};
            f.rewind().unwrap();
            let mut bytes = Vec::new();
            f.read_to_end(&mut bytes).unwrap();
            (w, bytes)
        };
        let (one, bytes) = write(0);
        for threads in [1, 2, 3] {
            let (w, b) = write(threads);
            assert_eq!(
                (w.digest, w.diff_id, w.size),
                (one.digest, one.diff_id, one.size)
            );
            assert_eq!(b, bytes, "{threads} threads");
        }
        assert_eq!(Digest::of(&bytes), one.digest);
        // The noise is stored (a few bytes of headers per 128 KiB), the
        // text compressed: the layer is barely larger than the noise.
        let stored = raw_frame_len(random.len()) as u64;
        assert!(one.size > random.len() as u64, "{}", one.size);
        assert!(one.size < stored + text.len() as u64 / 10, "{}", one.size);
        // zstd (the program) reads the frames back as the tar.
        let mut zstd = std::process::Command::new("zstd")
            .args(["-d", "-c", "-q"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = zstd.stdin.take().unwrap();
        let input = bytes.clone();
        let feeder = std::thread::spawn(move || stdin.write_all(&input).unwrap());
        let out = zstd.wait_with_output().unwrap();
        feeder.join().unwrap();
        assert!(out.status.success());
        assert_eq!(Digest::of(&out.stdout), one.diff_id);
        // And so does the zstd library, as every reader of layers here.
        let tar = zstd::decode_all(&bytes[..]).unwrap();
        assert_eq!(tar, out.stdout);
        let mut archive = tar::Archive::new(&tar[..]);
        for e in archive.entries().unwrap() {
            let mut e = e.unwrap();
            let name = e.path().unwrap().display().to_string();
            let mut content = Vec::new();
            io::Read::read_to_end(&mut e, &mut content).unwrap();
            let expected = fs::read(dir.path().join(&name)).unwrap();
            assert!(content == expected, "{name}");
        }
    }

    #[test]
    fn raw_frames_of_any_size_decode() {
        for len in [
            0,
            1,
            ZSTD_BLOCK - 1,
            ZSTD_BLOCK,
            ZSTD_BLOCK + 1,
            3 * ZSTD_BLOCK,
        ] {
            let data = noise(len, 3);
            let mut frame = Vec::new();
            write_raw_frame(&data, &mut frame).unwrap();
            assert_eq!(frame.len(), raw_frame_len(len));
            assert_eq!(zstd::decode_all(&frame[..]).unwrap(), data, "{len}");
        }
    }

    #[test]
    fn diff_finds_changes_and_deletions() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        fs::create_dir_all(p.join("d/sub")).unwrap();
        fs::write(p.join("d/sub/x"), b"x").unwrap();
        fs::write(p.join("keep"), b"k").unwrap();
        fs::write(p.join("change"), b"1").unwrap();
        let snap = Snapshot::take(p).unwrap();
        fs::remove_dir_all(p.join("d")).unwrap();
        fs::write(p.join("change"), b"22").unwrap();
        fs::write(p.join("new"), b"n").unwrap();
        let d = snap.diff(p).unwrap();
        let keys: Vec<&str> = d.keys().map(String::as_str).collect();
        assert_eq!(keys, ["change", "d", "new"]);
        assert_eq!(d["d"].source, EntrySource::Whiteout);
    }
}
