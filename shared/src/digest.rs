//! sha256 content digests in the OCI form `sha256:<64 lowercase hex>`.
//!
//! [`Digest`] is the one way Seaport names a blob. [`HashingWriter`] and
//! [`HashingReader`] compute a digest while data streams through them, so a
//! blob is hashed exactly once, as it is written. [`copy_verified`] is the
//! helper every receiver uses: copy, hash, and fail when the result differs
//! from what was expected. `sha2` selects SHA-NI at run time where the CPU has
//! it.

use std::fmt;
use std::io::{self, Read, Write};
use std::str::FromStr;

use sha2::{Digest as _, Sha256};

/// The algorithm prefix of every digest Seaport accepts.
pub const SHA256_PREFIX: &str = "sha256:";

/// Errors from parsing or verifying digests.
#[derive(Debug, thiserror::Error)]
pub enum DigestError {
    /// The text is not `sha256:` followed by 64 lowercase hex characters.
    #[error("invalid digest {text:?}: expected sha256:<64 lowercase hex characters>")]
    Invalid {
        /// The offending text (cut to 100 characters).
        text: String,
    },
    /// The data hashed to something else than expected.
    #[error("digest mismatch: expected {expected}, got {actual} ({size} bytes read)")]
    Mismatch {
        /// The digest the data was supposed to have.
        expected: Digest,
        /// The digest it actually has.
        actual: Digest,
        /// How many bytes were hashed.
        size: u64,
    },
    /// Reading or writing the data failed.
    #[error("reading or writing data to verify: {0}")]
    Io(#[from] io::Error),
}

/// A sha256 digest.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Digest([u8; 32]);

impl Digest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self(Sha256::digest(bytes).into())
    }

    /// The digest of everything `reader` yields, and its length.
    pub fn of_reader(reader: impl Read) -> io::Result<(Self, u64)> {
        let mut hashing = HashingReader::new(reader);
        io::copy(&mut hashing, &mut io::sink())?;
        Ok(hashing.finish())
    }

    /// Builds a digest from its raw 32 bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The 64 lowercase hex characters, without the `sha256:` prefix (the
    /// file name of a blob under `blobs/sha256/`).
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses 64 lowercase hex characters without prefix.
    pub fn from_hex(text: &str) -> Result<Self, DigestError> {
        let invalid = || DigestError::Invalid {
            text: text.chars().take(100).collect(),
        };
        if text.len() != 64
            || !text
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(invalid());
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(text, &mut out).map_err(|_| invalid())?;
        Ok(Self(out))
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SHA256_PREFIX}{}", self.hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({self})")
    }
}

impl FromStr for Digest {
    type Err = DigestError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.strip_prefix(SHA256_PREFIX) {
            Some(hex) => Self::from_hex(hex).map_err(|_| DigestError::Invalid {
                text: text.chars().take(100).collect(),
            }),
            None => Err(DigestError::Invalid {
                text: text.chars().take(100).collect(),
            }),
        }
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A writer that hashes everything written through it.
pub struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    size: u64,
}

impl<W: Write> HashingWriter<W> {
    /// Wraps `inner`.
    pub fn new(inner: W) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            size: 0,
        }
    }

    /// Bytes written so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The inner writer.
    pub fn get_ref(&self) -> &W {
        &self.inner
    }

    /// The inner writer, the digest and the size of what was written.
    pub fn finish(self) -> (W, Digest, u64) {
        (self.inner, Digest(self.hasher.finalize().into()), self.size)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A reader that hashes everything read through it.
pub struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    size: u64,
}

impl<R: Read> HashingReader<R> {
    /// Wraps `inner`.
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            size: 0,
        }
    }

    /// Bytes read so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The digest and size of what was read.
    pub fn finish(self) -> (Digest, u64) {
        (Digest(self.hasher.finalize().into()), self.size)
    }

    /// Fails unless what was read hashes to `expected`.
    pub fn verify(self, expected: &Digest) -> Result<u64, DigestError> {
        let (actual, size) = self.finish();
        if actual == *expected {
            Ok(size)
        } else {
            Err(DigestError::Mismatch {
                expected: *expected,
                actual,
                size,
            })
        }
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }
}

/// Copies `reader` to `writer` while hashing, and fails with
/// [`DigestError::Mismatch`] unless the data hashes to `expected`. The caller
/// must discard what was written on error. Returns the number of bytes.
pub fn copy_verified(
    reader: impl Read,
    writer: &mut impl Write,
    expected: &Digest,
) -> Result<u64, DigestError> {
    let mut hashing = HashingReader::new(reader);
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = match hashing.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        writer.write_all(&buf[..n])?;
    }
    hashing.verify(expected)
}

/// Reads `reader` to its end and fails unless it hashes to `expected`.
pub fn verify_reader(reader: impl Read, expected: &Digest) -> Result<u64, DigestError> {
    copy_verified(reader, &mut io::sink(), expected)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn empty_input_has_the_well_known_digest() {
        assert_eq!(Digest::of(b"").to_string(), EMPTY);
        assert_eq!(EMPTY.parse::<Digest>().unwrap(), Digest::of(b""));
    }

    #[test]
    fn rejects_malformed_text() {
        for bad in [
            "",
            "sha256:",
            "sha512:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b85",
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855a",
            "sha256:../../etc/passwd",
        ] {
            let err = bad.parse::<Digest>().unwrap_err();
            assert!(err.to_string().contains("expected sha256:"), "{bad}: {err}");
        }
    }

    #[test]
    fn serde_uses_the_string_form() {
        let d = Digest::of(b"abc");
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(json, format!("\"{d}\""));
        assert_eq!(serde_json::from_str::<Digest>(&json).unwrap(), d);
        assert!(serde_json::from_str::<Digest>("\"sha256:zz\"").is_err());
    }

    #[test]
    fn streaming_hash_equals_one_shot_hash() {
        let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        let mut w = HashingWriter::new(Vec::new());
        for chunk in data.chunks(7919) {
            w.write_all(chunk).unwrap();
        }
        let (out, digest, size) = w.finish();
        assert_eq!(out, data);
        assert_eq!(size, data.len() as u64);
        assert_eq!(digest, Digest::of(&data));
        assert_eq!(Digest::of_reader(&data[..]).unwrap(), (digest, size));
    }

    #[test]
    fn copy_verified_detects_a_flipped_byte() {
        let data = b"hello world".to_vec();
        let expected = Digest::of(&data);
        let mut out = Vec::new();
        assert_eq!(copy_verified(&data[..], &mut out, &expected).unwrap(), 11);
        let mut bad = data.clone();
        bad[0] ^= 1;
        let err = verify_reader(&bad[..], &expected).unwrap_err();
        assert!(
            matches!(err, DigestError::Mismatch { size: 11, .. }),
            "{err}"
        );
    }
}
