//! Frames and message encoding: the only place that knows how bytes on a
//! stream become messages.
//!
//! A frame is a big-endian `u32` length followed by that many bytes. Lengths
//! above [`MAX_FRAME_LEN`] are refused before anything is allocated, and each
//! reader can ask for a tighter limit (an unauthenticated enrollment stream
//! accepts far less than a control stream).
//!
//! Message bodies are serde types encoded with bincode 2.0.1 in one fixed
//! configuration ([`encode`], [`decode`]): big-endian, fixed-width integers,
//! and the same size limit, so a hostile length inside a frame cannot make the
//! decoder allocate more than the frame itself.

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The largest frame any Seaport stream accepts: 16 MiB.
pub const MAX_FRAME_LEN: u32 = 16 * 1024 * 1024;

/// Bytes of the length prefix in front of every frame.
pub const LEN_PREFIX: usize = 4;

/// Errors from framing and message encoding.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("frame of {len} bytes exceeds the limit of {limit} bytes; closing the stream")]
    FrameTooLarge { len: u64, limit: u32 },
    #[error("stream ended inside a frame ({got} of {want} bytes)")]
    Truncated { got: usize, want: usize },
    #[error("could not encode message: {0}")]
    Encode(#[from] bincode::error::EncodeError),
    #[error("could not decode message: {0}")]
    Decode(#[from] bincode::error::DecodeError),
    #[error("message has {0} trailing bytes after its end")]
    TrailingBytes(usize),
    #[error("i/o error on stream: {0}")]
    Io(#[from] std::io::Error),
}

/// The one bincode configuration of the protocol.
fn config() -> impl bincode::config::Config {
    bincode::config::standard()
        .with_big_endian()
        .with_fixed_int_encoding()
        .with_limit::<{ MAX_FRAME_LEN as usize }>()
}

/// Encodes a message body (no length prefix).
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, CodecError> {
    let body = bincode::serde::encode_to_vec(msg, config())?;
    if body.len() as u64 > u64::from(MAX_FRAME_LEN) {
        return Err(CodecError::FrameTooLarge {
            len: body.len() as u64,
            limit: MAX_FRAME_LEN,
        });
    }
    Ok(body)
}

/// Decodes a message body; every byte must belong to the message.
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, CodecError> {
    let (msg, used) = bincode::serde::decode_from_slice(body, config())?;
    if used != body.len() {
        return Err(CodecError::TrailingBytes(body.len() - used));
    }
    Ok(msg)
}

/// Prefixes a body with its length, checking the hard limit.
pub fn frame(body: &[u8]) -> Result<Vec<u8>, CodecError> {
    let len = check_len(body.len() as u64, MAX_FRAME_LEN)?;
    let mut out = Vec::with_capacity(LEN_PREFIX + body.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(body);
    Ok(out)
}

fn check_len(len: u64, limit: u32) -> Result<u32, CodecError> {
    let limit = limit.min(MAX_FRAME_LEN);
    if len > u64::from(limit) {
        return Err(CodecError::FrameTooLarge { len, limit });
    }
    Ok(len as u32)
}

/// Sans-I/O frame splitter: push bytes as they arrive, take whole frames out.
///
/// Used by tests and the fuzz target; the async readers below follow the same
/// rules.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    limit: u32,
}

impl FrameDecoder {
    /// A decoder refusing frames longer than `limit` (itself capped at [`MAX_FRAME_LEN`]).
    pub fn new(limit: u32) -> Self {
        FrameDecoder {
            buf: Vec::new(),
            limit: limit.min(MAX_FRAME_LEN),
        }
    }

    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole frame's body, `Ok(None)` if more bytes are needed.
    ///
    /// An oversized length is an error as soon as its prefix is seen.
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, CodecError> {
        if self.buf.len() < LEN_PREFIX {
            return Ok(None);
        }
        let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]);
        let len = check_len(u64::from(len), self.limit)? as usize;
        if self.buf.len() < LEN_PREFIX + len {
            return Ok(None);
        }
        let body = self.buf[LEN_PREFIX..LEN_PREFIX + len].to_vec();
        self.buf.drain(..LEN_PREFIX + len);
        Ok(Some(body))
    }

    /// Bytes held that do not yet make a whole frame.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }
}

/// Reads one frame body; `Ok(None)` on a clean end of stream between frames.
pub async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    limit: u32,
) -> Result<Option<Vec<u8>>, CodecError> {
    let mut prefix = [0u8; LEN_PREFIX];
    let mut got = 0;
    while got < LEN_PREFIX {
        let n = reader.read(&mut prefix[got..]).await?;
        if n == 0 {
            if got == 0 {
                return Ok(None);
            }
            return Err(CodecError::Truncated {
                got,
                want: LEN_PREFIX,
            });
        }
        got += n;
    }
    let len = check_len(u64::from(u32::from_be_bytes(prefix)), limit)? as usize;
    let mut body = vec![0u8; len];
    let mut got = 0;
    while got < len {
        let n = reader.read(&mut body[got..]).await?;
        if n == 0 {
            return Err(CodecError::Truncated { got, want: len });
        }
        got += n;
    }
    Ok(Some(body))
}

/// Writes one frame (length prefix and body).
pub async fn write_frame<W: AsyncWrite + Unpin>(
    writer: &mut W,
    body: &[u8],
) -> Result<(), CodecError> {
    let framed = frame(body)?;
    writer.write_all(&framed).await?;
    Ok(())
}

/// Reads and decodes one message; `Ok(None)` on a clean end of stream.
pub async fn read_msg<R: AsyncRead + Unpin, T: DeserializeOwned>(
    reader: &mut R,
    limit: u32,
) -> Result<Option<T>, CodecError> {
    match read_frame(reader, limit).await? {
        Some(body) => decode(&body).map(Some),
        None => Ok(None),
    }
}

/// Encodes and writes one message.
pub async fn write_msg<W: AsyncWrite + Unpin, T: Serialize>(
    writer: &mut W,
    msg: &T,
) -> Result<(), CodecError> {
    write_frame(writer, &encode(msg)?).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Sample {
        name: String,
        n: u64,
        list: Vec<u32>,
    }

    #[test]
    fn round_trip_through_frames() {
        let msg = Sample {
            name: "node-a".into(),
            n: 7,
            list: vec![1, 2, 3],
        };
        let framed = frame(&encode(&msg).unwrap()).unwrap();
        let mut dec = FrameDecoder::new(MAX_FRAME_LEN);
        // Byte by byte: no frame until the last byte arrives.
        for (i, b) in framed.iter().enumerate() {
            dec.push(&[*b]);
            let got = dec.next_frame().unwrap();
            if i + 1 < framed.len() {
                assert!(got.is_none());
            } else {
                assert_eq!(decode::<Sample>(&got.unwrap()).unwrap(), msg);
            }
        }
        assert_eq!(dec.pending(), 0);
    }

    #[test]
    fn oversized_length_is_refused_from_the_prefix_alone() {
        let mut dec = FrameDecoder::new(1024);
        dec.push(&1025u32.to_be_bytes());
        let err = dec.next_frame().unwrap_err();
        assert!(
            matches!(err, CodecError::FrameTooLarge { len: 1025, .. }),
            "{err}"
        );
        let mut dec = FrameDecoder::new(u32::MAX);
        dec.push(&(MAX_FRAME_LEN + 1).to_be_bytes());
        assert!(dec.next_frame().is_err());
    }

    #[test]
    fn trailing_bytes_and_garbage_are_errors() {
        let mut body = encode(&Sample {
            name: "x".into(),
            n: 1,
            list: vec![],
        })
        .unwrap();
        body.push(0);
        assert!(matches!(
            decode::<Sample>(&body),
            Err(CodecError::TrailingBytes(1))
        ));
        // A string length claiming 4 GiB must fail without allocating it.
        let garbage = [0xffu8; 16];
        assert!(decode::<Sample>(&garbage).is_err());
    }

    #[tokio::test]
    async fn async_reader_enforces_limit_and_reports_truncation() {
        let mut data: &[u8] = &[0, 0, 0, 9, 1, 2];
        assert!(matches!(
            read_frame(&mut data, 8).await,
            Err(CodecError::FrameTooLarge { len: 9, limit: 8 })
        ));
        let mut data: &[u8] = &[0, 0, 0, 3, 1, 2];
        assert!(matches!(
            read_frame(&mut data, 8).await,
            Err(CodecError::Truncated { got: 2, want: 3 })
        ));
        let mut data: &[u8] = &[];
        assert!(read_frame(&mut data, 8).await.unwrap().is_none());
    }
}
