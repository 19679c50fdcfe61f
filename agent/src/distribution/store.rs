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

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use seaport_shared::confined::{self, ConfinedError};
use seaport_shared::digest::Digest;
use seaport_shared::distribution::{Bitmap, ImageAssignment, PieceTable};

/// Errors of the blob store.
#[derive(Debug, thiserror::Error)]
pub enum BlobStoreError {
    #[error("blob store: {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("blob {0} is not complete: pieces are missing")]
    Incomplete(Digest),
    #[error("blob store: {0}")]
    Write(#[from] ConfinedError),
}

fn io_err<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> BlobStoreError + 'a {
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

/// Writes one piece of a partial blob at its offset while hashing it: the
/// bytes are checked against the piece table as they go to disk, and no
/// piece is ever held in memory.
#[derive(Debug)]
pub struct PieceWriter<'a> {
    file: &'a File,
    index: u32,
    offset: u64,
    len: u32,
    done: u32,
    expected: Digest,
    hasher: sha2::Sha256,
}

impl<'a> PieceWriter<'a> {
    /// A writer for piece `index` of the blob `table` describes, into `file`
    /// (the partial's file).
    pub fn new(table: &PieceTable, file: &'a File, index: u32) -> PieceWriter<'a> {
        use sha2::Digest as _;
        let (offset, len) = table.range(index);
        PieceWriter {
            file,
            index,
            offset,
            len,
            done: 0,
            expected: table.pieces[index as usize],
            hasher: sha2::Sha256::new(),
        }
    }

    /// Bytes of the piece still to come.
    pub fn remaining(&self) -> usize {
        (self.len - self.done) as usize
    }

    /// Hashes `buf` and writes it after what came before; `buf` must not go
    /// past the end of the piece.
    pub fn write(&mut self, buf: &[u8]) -> std::io::Result<()> {
        use sha2::Digest as _;
        if buf.len() > self.remaining() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "more bytes than the piece holds",
            ));
        }
        self.hasher.update(buf);
        self.file
            .write_all_at(buf, self.offset + u64::from(self.done))?;
        self.done += buf.len() as u32;
        Ok(())
    }

    /// The piece, if every byte came and it hashes to its digest in the
    /// table.
    pub fn verify(self) -> Option<VerifiedPiece> {
        use sha2::Digest as _;
        (self.done == self.len
            && Digest::from_bytes(self.hasher.finalize().into()) == self.expected)
            .then_some(VerifiedPiece(self.index))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(data: &[u8]) -> Arc<PieceTable> {
        Arc::new(PieceTable::compute(Digest::of(data), data, 4).unwrap())
    }

    fn write(p: &Partial, i: u32, bytes: &[u8]) -> Option<VerifiedPiece> {
        let mut w = PieceWriter::new(&p.table, &p.file, i);
        w.write(bytes).unwrap();
        w.verify()
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
        let mut w = PieceWriter::new(&p.table, &p.file, 2);
        assert!(w.write(b"890").is_err());
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
