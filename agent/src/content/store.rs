//! The agent's content store under `STATE_DIR/content/`:
//!
//! | path | what |
//! | --- | --- |
//! | `sha256/<hex>` | verified blobs, shared by every image |
//! | `tmp/<hex>.part` | a blob being fetched, pieces written at their offsets |
//! | `tmp/<hex>.bits` | the pieces of the `.part` verified and synced to disk |
//! | `images.json` | the images assigned to this node and their blobs |
//!
//! A piece's bit is persisted only after the `.part` file's data is synced,
//! so after a crash or restart the bitmap never claims bytes that are not on
//! disk. A blob is renamed into `sha256/` only after the whole file hashes to
//! its digest; a mismatch deletes the partial, which is then fetched again.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use seaport_shared::digest::Digest;
use seaport_shared::pki;
use seaport_shared::transfer::{Bitmap, ImageAssignment, PieceTable};

/// Errors of the content store.
#[derive(Debug, thiserror::Error)]
pub enum ContentError {
    #[error("content store: {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error(
        "blob {expected} fetched completely but hashes to {actual}; deleted, fetching it again"
    )]
    Mismatch { expected: Digest, actual: Digest },
    #[error("content store: {0}")]
    Pki(#[from] pki::PkiError),
}

fn io_err<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> ContentError + 'a {
    move |source| ContentError::Io {
        what,
        path: path.display().to_string(),
        source,
    }
}

/// `STATE_DIR/content`.
#[derive(Debug, Clone)]
pub struct ContentStore {
    dir: PathBuf,
}

impl ContentStore {
    /// Opens (creating) the store under an agent state directory.
    pub fn open(state_dir: &Path) -> Result<ContentStore, ContentError> {
        let dir = state_dir.join("content");
        for sub in ["sha256", "tmp"] {
            let p = dir.join(sub);
            fs::create_dir_all(&p).map_err(io_err("creating", &p))?;
        }
        Ok(ContentStore { dir })
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
    pub fn partial(&self, table: Arc<PieceTable>) -> Result<Partial, ContentError> {
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
    pub fn set_images(&self, images: &[ImageAssignment]) -> Result<(), ContentError> {
        pki::write_atomic(
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

impl Partial {
    /// Records a verified piece (persisted on the next [`Partial::persist`]).
    pub fn mark(&mut self, i: u32) {
        self.have.set(i);
        self.dirty = true;
    }

    pub fn part_path(&self) -> &Path {
        &self.part
    }

    /// Syncs the data, then writes the bitmap atomically.
    pub fn persist(&mut self) -> Result<(), ContentError> {
        if !self.dirty {
            return Ok(());
        }
        self.file
            .sync_data()
            .map_err(io_err("syncing", &self.part))?;
        pki::write_atomic(&self.bits, self.have.as_bytes(), 0o644)?;
        self.dirty = false;
        Ok(())
    }

    /// Verifies the whole file and moves it into `sha256/`. On a mismatch
    /// the partial is deleted.
    pub fn finish(mut self, store: &ContentStore) -> Result<(), ContentError> {
        self.persist()?;
        let digest = self.table.digest;
        let mut reader = std::io::BufReader::with_capacity(1024 * 1024, FileAt(&self.file, 0));
        let (actual, _) = Digest::of_reader(&mut reader).map_err(io_err("reading", &self.part))?;
        if actual != digest {
            let _ = fs::remove_file(&self.part);
            let _ = fs::remove_file(&self.bits);
            return Err(ContentError::Mismatch {
                expected: digest,
                actual,
            });
        }
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

    /// Whether every byte came and the piece hashes to its digest in the table.
    pub fn verify(self) -> bool {
        use sha2::Digest as _;
        self.done == self.len && Digest::from_bytes(self.hasher.finalize().into()) == self.expected
    }
}

/// Reads a file sequentially through `read_at` (the handle is shared).
struct FileAt<'a>(&'a File, u64);

impl Read for FileAt<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.0.read_at(buf, self.1)?;
        self.1 += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(data: &[u8]) -> Arc<PieceTable> {
        Arc::new(PieceTable::compute(Digest::of(data), data, 4).unwrap())
    }

    #[test]
    fn verified_pieces_survive_a_reopen_and_the_blob_lands_verified() {
        let dir = tempfile::tempdir().unwrap();
        let store = ContentStore::open(dir.path()).unwrap();
        let data = b"0123456789";
        let t = table(data);
        let mut p = store.partial(t.clone()).unwrap();
        p.file.write_at(&data[0..4], 0).unwrap();
        p.mark(0);
        p.persist().unwrap();
        drop(p);
        let mut p = store.partial(t.clone()).unwrap();
        assert!(p.have.get(0) && !p.have.get(1));
        p.file.write_at(&data[4..], 4).unwrap();
        p.mark(1);
        p.mark(2);
        p.finish(&store).unwrap();
        assert_eq!(fs::read(store.blob_path(&t.digest)).unwrap(), data);
        assert!(fs::read_dir(store.dir().join("tmp"))
            .unwrap()
            .next()
            .is_none());
    }

    #[test]
    fn a_mismatching_blob_is_deleted_not_used() {
        let dir = tempfile::tempdir().unwrap();
        let store = ContentStore::open(dir.path()).unwrap();
        let t = table(b"0123456789");
        let mut p = store.partial(t.clone()).unwrap();
        p.file.write_at(b"XXXXXXXXXX", 0).unwrap();
        for i in 0..3 {
            p.mark(i);
        }
        let err = p.finish(&store).unwrap_err();
        assert!(matches!(err, ContentError::Mismatch { .. }), "{err}");
        assert!(!store.has(&t.digest));
        let p = store.partial(t).unwrap();
        assert_eq!(p.have.count(), 0);
    }

    #[test]
    fn gc_keeps_only_referenced_blobs() {
        let dir = tempfile::tempdir().unwrap();
        let store = ContentStore::open(dir.path()).unwrap();
        let a = Digest::of(b"a");
        let b = Digest::of(b"b");
        fs::write(store.blob_path(&a), b"a").unwrap();
        fs::write(store.blob_path(&b), b"b").unwrap();
        let removed = store.gc(&[a].into_iter().collect());
        assert_eq!(removed, vec![b]);
        assert!(store.has(&a) && !store.has(&b));
    }
}
