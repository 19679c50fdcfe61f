//! Layer distribution on the wire: the piece scheme and the messages of
//! `Blob` streams (see docs/distribution.md).
//!
//! A blob of `size` bytes is cut into pieces of [`PIECE_SIZE`] bytes (the last
//! one shorter). Its [`PieceTable`] lists the sha256 of every piece; agents
//! receive it from the coordinator over their mTLS session, so a piece can be
//! verified on its own, whoever sent it, before the whole blob exists.
//!
//! One request per `Blob` stream, as on `Admin` streams:
//!
//! | request | sent to | answer |
//! | --- | --- | --- |
//! | [`BlobRequest::Sync`] | coordinator | [`BlobResponse::Sync`]: assignments, piece tables, seeding grants, peers |
//! | [`BlobRequest::Pieces`] | coordinator or a peer agent | [`BlobResponse::Sending`], then the raw bytes of the pieces in order |
//!
//! After `Sending` the bytes are not framed: the receiver knows every piece's
//! length from the table and hashes while it writes.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::digest::Digest;

/// Bytes of every piece but the last of a blob.
pub const PIECE_SIZE: u32 = 4 * 1024 * 1024;
/// UDP port agents serve pieces to each other on, unless configured.
pub const DEFAULT_PEER_PORT: u16 = 7444;
/// Frame limit of `Blob` stream messages (piece tables of large blobs, peer lists).
pub const BLOB_FRAME_LIMIT: u32 = 8 * 1024 * 1024;
/// Most pieces one `Pieces` request may ask for.
pub const MAX_PIECES_PER_REQUEST: usize = 16;

/// Number of pieces of a blob of `size` bytes.
pub fn piece_count(size: u64, piece_size: u32) -> u32 {
    size.div_ceil(u64::from(piece_size)) as u32
}

/// The sha256 of every piece of one blob.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PieceTable {
    pub digest: Digest,
    pub size: u64,
    pub piece_size: u32,
    pub pieces: Vec<Digest>,
}

/// Errors building or checking piece tables.
#[derive(Debug, thiserror::Error)]
pub enum DistributionError {
    #[error("piece table of {digest}: {reason}")]
    BadTable { digest: Digest, reason: String },
    #[error("reading blob {digest} to build its piece table: {source}")]
    Read {
        digest: Digest,
        source: std::io::Error,
    },
    #[error("blob {expected} hashes to {actual}: the stored blob is corrupt")]
    Corrupt { expected: Digest, actual: Digest },
}

impl PieceTable {
    /// Hashes `reader` (the whole blob) piece by piece and as a whole; fails
    /// if the whole does not hash to `digest`.
    pub fn compute(
        digest: Digest,
        mut reader: impl std::io::Read,
        piece_size: u32,
    ) -> Result<PieceTable, DistributionError> {
        use sha2::Digest as _;
        let read_err = |source| DistributionError::Read { digest, source };
        let mut whole = sha2::Sha256::new();
        let mut pieces = Vec::new();
        let mut buf = vec![0u8; 256 * 1024];
        let mut size = 0u64;
        loop {
            let mut piece = sha2::Sha256::new();
            let mut got = 0usize;
            while got < piece_size as usize {
                let want = (piece_size as usize - got).min(buf.len());
                let n = match reader.read(&mut buf[..want]) {
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(read_err(e)),
                };
                if n == 0 {
                    break;
                }
                piece.update(&buf[..n]);
                whole.update(&buf[..n]);
                got += n;
            }
            if got == 0 {
                break;
            }
            size += got as u64;
            pieces.push(Digest::from_bytes(piece.finalize().into()));
            if got < piece_size as usize {
                break;
            }
        }
        let actual = Digest::from_bytes(whole.finalize().into());
        if actual != digest {
            return Err(DistributionError::Corrupt {
                expected: digest,
                actual,
            });
        }
        Ok(PieceTable {
            digest,
            size,
            piece_size,
            pieces,
        })
    }

    /// Checks that the table is consistent with its size.
    pub fn check(&self) -> Result<(), DistributionError> {
        let bad = |reason: String| DistributionError::BadTable {
            digest: self.digest,
            reason,
        };
        if self.piece_size == 0 {
            return Err(bad("piece size 0".into()));
        }
        let want = piece_count(self.size, self.piece_size);
        if self.pieces.len() as u64 != u64::from(want) {
            return Err(bad(format!(
                "{} piece digests for {} bytes (expected {want})",
                self.pieces.len(),
                self.size
            )));
        }
        Ok(())
    }

    pub fn count(&self) -> u32 {
        self.pieces.len() as u32
    }

    /// Offset and length of piece `index`.
    pub fn range(&self, index: u32) -> (u64, u32) {
        let offset = u64::from(index) * u64::from(self.piece_size);
        let len = (self.size - offset).min(u64::from(self.piece_size)) as u32;
        (offset, len)
    }
}

/// Which pieces of a blob are held: one bit per piece.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Bitmap {
    len: u32,
    bits: Vec<u8>,
}

impl Bitmap {
    pub fn new(len: u32) -> Bitmap {
        Bitmap {
            len,
            bits: vec![0; len.div_ceil(8) as usize],
        }
    }

    /// A bitmap with every piece set.
    pub fn full(len: u32) -> Bitmap {
        let mut b = Bitmap::new(len);
        for i in 0..len {
            b.set(i);
        }
        b
    }

    pub fn len(&self) -> u32 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the bitmap is well formed (bytes match the length).
    pub fn is_valid(&self) -> bool {
        self.bits.len() == self.len.div_ceil(8) as usize
    }

    pub fn get(&self, i: u32) -> bool {
        i < self.len
            && self
                .bits
                .get((i / 8) as usize)
                .is_some_and(|b| b & (1 << (i % 8)) != 0)
    }

    pub fn set(&mut self, i: u32) {
        if i < self.len {
            if let Some(b) = self.bits.get_mut((i / 8) as usize) {
                *b |= 1 << (i % 8);
            }
        }
    }

    pub fn clear(&mut self, i: u32) {
        if let Some(b) = self.bits.get_mut((i / 8) as usize) {
            *b &= !(1 << (i % 8));
        }
    }

    pub fn count(&self) -> u32 {
        (0..self.len).filter(|&i| self.get(i)).count() as u32
    }

    pub fn is_full(&self) -> bool {
        self.count() == self.len
    }

    /// Indexes of the pieces not set.
    pub fn missing(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.len).filter(|&i| !self.get(i))
    }

    /// Raw bytes (for persisting).
    pub fn as_bytes(&self) -> &[u8] {
        &self.bits
    }

    /// From raw bytes; `None` if they do not fit `len`.
    pub fn from_bytes(len: u32, bytes: &[u8]) -> Option<Bitmap> {
        let b = Bitmap {
            len,
            bits: bytes.to_vec(),
        };
        b.is_valid().then_some(b)
    }
}

/// One request per `Blob` stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BlobRequest {
    /// Agent to coordinator: what I hold; what should I fetch, from whom?
    Sync(SyncRequest),
    /// Send these pieces of this blob, in this order.
    Pieces { digest: Digest, pieces: Vec<u32> },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BlobResponse {
    Sync(SyncResponse),
    /// The raw bytes of these pieces follow, in this order.
    Sending {
        pieces: Vec<u32>,
    },
    Refused {
        reason: String,
    },
}

/// An agent's report: its peer port, what it holds and fetches, bad peers.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SyncRequest {
    pub peer_port: u16,
    pub blobs: Vec<BlobReport>,
    pub bad_peers: Vec<BadPeer>,
    /// Pieces received from each source since the agent started, as
    /// (source, bytes); the source is a node id or `coordinator`.
    pub received: Vec<(String, u64)>,
    /// Bytes this agent has served to peers since it started.
    pub served: u64,
}

/// One blob an agent holds or fetches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobReport {
    pub digest: Digest,
    /// Verified pieces (all set once the blob is complete and renamed).
    pub have: Bitmap,
    /// The whole blob verified and in `content/sha256/`.
    pub complete: bool,
}

/// A peer that sent a piece failing verification, or could not be reached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BadPeer {
    pub node_id: String,
    pub digest: Digest,
    pub reason: BadPeerReason,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BadPeerReason {
    /// A piece from it failed verification: never used again for this blob.
    Corrupt,
    /// Could not connect or the transfer broke: avoided for a while.
    Unreachable,
}

/// The coordinator's answer to a sync.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SyncResponse {
    /// Every image assigned to this node (the agent keeps their blobs, and
    /// only theirs).
    pub images: Vec<ImageAssignment>,
    /// What to fetch now, for blobs not complete on the agent.
    pub blobs: Vec<BlobPlan>,
    /// Node ids whose certificates peers must refuse.
    pub revoked: Vec<String>,
    /// Images assigned to other nodes that share blobs with this node's
    /// (`blobs` holds only the shared ones): their nodes may fetch those
    /// blobs from this one too.
    pub sharing: Vec<ImageAssignment>,
}

/// An image assigned to a node and the blobs it is made of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageAssignment {
    pub image: String,
    pub manifest_digest: Digest,
    /// Manifest, config and layers.
    pub blobs: Vec<Digest>,
    /// Every node the image is assigned to: the only peers its blobs are
    /// served to.
    #[serde(default)]
    pub nodes: Vec<NamedNode>,
}

/// A node the coordinator named, and the lowest certificate serial it may
/// present (certificates issued before its latest enrollment are stale).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamedNode {
    pub node_id: String,
    pub min_serial: u64,
}

/// How one blob is fetched now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobPlan {
    pub table: PieceTable,
    /// Pieces the coordinator grants to this agent (it sends them).
    pub seed: Vec<u32>,
    /// Peers holding pieces this agent lacks.
    pub peers: Vec<PeerHolding>,
}

/// A peer and the pieces of one blob it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerHolding {
    pub node_id: String,
    /// `IP:PORT` of its peer server.
    pub addr: String,
    pub have: Bitmap,
}

/// What `seaport distribute status` shows.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DistributionStatus {
    /// Piece bytes the coordinator has sent since it started.
    pub served_bytes: u64,
    pub images: Vec<ImageProgress>,
}

/// One assigned image and its nodes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageProgress {
    pub image: String,
    pub manifest_digest: Digest,
    pub total_bytes: u64,
    pub nodes: Vec<NodeProgress>,
}

/// How far one node is with one image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeProgress {
    pub node_id: String,
    pub hostname: String,
    /// Reported to the coordinator in the last few seconds.
    pub active: bool,
    pub done_bytes: u64,
    pub total_bytes: u64,
    pub complete: bool,
    pub blobs: Vec<BlobProgress>,
    /// Peers this node reported as sending corrupt pieces.
    pub bad_peers: Vec<String>,
    /// Bytes received per source (node id or `coordinator`), as reported.
    pub received: Vec<(String, u64)>,
    /// Bytes this node served to peers, as reported.
    pub served_to_peers: u64,
    /// Bytes the coordinator sent to this node since it started.
    pub from_coordinator: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobProgress {
    pub digest: Digest,
    pub size: u64,
    pub done_bytes: u64,
    pub complete: bool,
}

/// Where the bytes of one piece are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PieceSource {
    /// The file (a whole blob, or one still downloading).
    pub path: PathBuf,
    /// The piece's offset in it.
    pub offset: u64,
    /// The piece's length.
    pub len: u32,
}

/// Why pieces could not be sent.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The request asks for no pieces or too many.
    #[error("ask for 1 to {MAX_PIECES_PER_REQUEST} pieces per request")]
    Count,
    /// A piece's file could not be opened or read.
    #[error("{action} {}: {source}", .path.display())]
    File {
        /// `opening`, `reading`.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The stream broke.
    #[error(transparent)]
    Stream(#[from] crate::codec::CodecError),
    /// The stream broke while piece bytes were written.
    #[error("sending piece bytes: {0}")]
    Write(std::io::Error),
}

/// Whether a piece request asks for a number of pieces one answer may
/// carry.
pub fn check_piece_count(pieces: &[u32]) -> Result<(), SendError> {
    if pieces.is_empty() || pieces.len() > MAX_PIECES_PER_REQUEST {
        Err(SendError::Count)
    } else {
        Ok(())
    }
}

/// Bytes read and written at a time.
const SEND_CHUNK: usize = 256 * 1024;

/// The answer to a `Pieces` request: [`BlobResponse::Sending`], then the
/// bytes of `sources` (one per piece of `pieces`, in order), a chunk at a
/// time; `pace` is awaited before each chunk with its length (rate limits,
/// counters). Returns the bytes sent.
pub async fn send_pieces<W, P, F>(
    send: &mut W,
    pieces: &[u32],
    sources: &[PieceSource],
    mut pace: P,
) -> Result<u64, SendError>
where
    W: tokio::io::AsyncWrite + Unpin,
    P: FnMut(usize) -> F,
    F: std::future::Future<Output = ()>,
{
    use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
    check_piece_count(pieces)?;
    // The first file is opened before the answer starts, so a blob that is
    // not there is refused rather than cut short.
    let mut open: Option<(&Path, tokio::fs::File)> = match sources.first() {
        Some(src) => Some((
            src.path.as_path(),
            tokio::fs::File::open(&src.path)
                .await
                .map_err(|source| SendError::File {
                    action: "opening",
                    path: src.path.clone(),
                    source,
                })?,
        )),
        None => None,
    };
    crate::codec::write_msg(
        send,
        &BlobResponse::Sending {
            pieces: pieces.to_vec(),
        },
    )
    .await?;
    let mut buf = vec![0u8; SEND_CHUNK];
    let mut total = 0u64;
    for src in sources {
        let file_err = |action, source| SendError::File {
            action,
            path: src.path.clone(),
            source,
        };
        let file = match &mut open {
            Some((path, file)) if *path == src.path.as_path() => file,
            _ => {
                let f = tokio::fs::File::open(&src.path)
                    .await
                    .map_err(|e| file_err("opening", e))?;
                &mut open.insert((src.path.as_path(), f)).1
            }
        };
        file.seek(std::io::SeekFrom::Start(src.offset))
            .await
            .map_err(|e| file_err("reading", e))?;
        let mut left = src.len as usize;
        while left > 0 {
            let n = left.min(SEND_CHUNK);
            file.read_exact(&mut buf[..n])
                .await
                .map_err(|e| file_err("reading", e))?;
            pace(n).await;
            send.write_all(&buf[..n]).await.map_err(SendError::Write)?;
            total += n as u64;
            left -= n;
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_covers_the_blob_and_verifies_the_whole() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let digest = Digest::of(&data);
        let table = PieceTable::compute(digest, &data[..], 4096).unwrap();
        table.check().unwrap();
        assert_eq!(table.count(), 3);
        assert_eq!(table.range(2), (8192, 10_000 - 8192));
        assert_eq!(table.pieces[1], Digest::of(&data[4096..8192]));
        let wrong = Digest::of(b"other");
        assert!(matches!(
            PieceTable::compute(wrong, &data[..], 4096),
            Err(DistributionError::Corrupt { .. })
        ));
        let mut bad = table.clone();
        bad.pieces.pop();
        assert!(bad.check().is_err());
    }

    #[test]
    fn bitmap_sets_counts_and_round_trips() {
        let mut b = Bitmap::new(11);
        b.set(0);
        b.set(10);
        b.set(11); // out of range: ignored
        assert_eq!(b.count(), 2);
        assert!(b.get(10) && !b.get(5));
        assert_eq!(b.missing().count(), 9);
        let back = Bitmap::from_bytes(11, b.as_bytes()).unwrap();
        assert_eq!(back, b);
        assert!(Bitmap::from_bytes(11, &[0]).is_none());
        assert!(Bitmap::full(11).is_full());
    }

    #[test]
    fn requests_round_trip_through_the_codec() {
        let req = BlobRequest::Pieces {
            digest: Digest::of(b"x"),
            pieces: vec![1, 2],
        };
        let body = crate::codec::encode(&req).unwrap();
        assert_eq!(crate::codec::decode::<BlobRequest>(&body).unwrap(), req);
    }

    #[tokio::test]
    async fn pieces_are_sent_after_their_header_in_order_and_paced() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        std::fs::write(&a, (0..=255u8).cycle().take(700_000).collect::<Vec<u8>>()).unwrap();
        let sources = [
            PieceSource {
                path: a.clone(),
                offset: 600_000,
                len: 100_000,
            },
            PieceSource {
                path: a.clone(),
                offset: 0,
                len: 300_000,
            },
        ];
        let mut out = Vec::new();
        let mut paced = Vec::new();
        let sent = send_pieces(&mut out, &[6, 0], &sources, |n| {
            paced.push(n);
            std::future::ready(())
        })
        .await
        .unwrap();
        assert_eq!(sent, 400_000);
        assert_eq!(paced.iter().sum::<usize>(), 400_000);
        let mut dec = crate::codec::FrameDecoder::new(BLOB_FRAME_LIMIT);
        dec.push(&out);
        let head: BlobResponse = crate::codec::decode(&dec.next_frame().unwrap().unwrap()).unwrap();
        assert_eq!(head, BlobResponse::Sending { pieces: vec![6, 0] });
        let body = &out[out.len() - 400_000..];
        let file = std::fs::read(&a).unwrap();
        assert_eq!(&body[..100_000], &file[600_000..]);
        assert_eq!(&body[100_000..], &file[..300_000]);
        assert!(matches!(
            send_pieces(&mut Vec::new(), &[], &[], |_| std::future::ready(())).await,
            Err(SendError::Count)
        ));
    }
}
