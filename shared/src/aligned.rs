//! Buffers whose bytes are aligned for direct I/O (`O_DIRECT`), so a writer
//! hands them to the disk as they are, without a copy.

/// Alignment of direct writes: offset, length and memory (the largest
/// logical block size in common use).
pub const ALIGN: usize = 4096;

/// A byte buffer starting at an [`ALIGN`] boundary. Derefs to its bytes;
/// [`AlignedBuf::resize`] sets how many.
pub struct AlignedBuf {
    buf: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    /// A zeroed buffer of `len` bytes.
    pub fn new(len: usize) -> AlignedBuf {
        let buf = vec![0; len + ALIGN];
        let start = buf.as_ptr().align_offset(ALIGN).min(ALIGN);
        AlignedBuf { buf, start, len }
    }

    /// Makes it `len` bytes long (new bytes are zero, kept bytes kept when
    /// it grows in place).
    pub fn resize(&mut self, len: usize) {
        if self.start + len > self.buf.len() {
            let mut grown = AlignedBuf::new(len);
            grown[..self.len].copy_from_slice(self);
            *self = grown;
        } else {
            self.len = len;
        }
    }

    /// Bytes it can hold without growing.
    pub fn capacity(&self) -> usize {
        self.buf.len() - self.start
    }
}

impl From<&[u8]> for AlignedBuf {
    fn from(bytes: &[u8]) -> AlignedBuf {
        let mut b = AlignedBuf::new(bytes.len());
        b.copy_from_slice(bytes);
        b
    }
}

impl std::ops::Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.buf[self.start..self.start + self.len]
    }
}

impl std::ops::DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.buf[self.start..self.start + self.len]
    }
}

impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AlignedBuf({} bytes)", self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_start_aligned_and_survive_growing() {
        let mut b = AlignedBuf::from(&b"abc"[..]);
        assert_eq!(b.as_ptr() as usize % ALIGN, 0);
        assert_eq!(&b[..], b"abc");
        b.resize(3 * ALIGN);
        assert_eq!(b.as_ptr() as usize % ALIGN, 0);
        assert_eq!(&b[..3], b"abc");
        assert!(b[3..].iter().all(|&x| x == 0));
        b.resize(2);
        assert_eq!(&b[..], b"ab");
    }
}
