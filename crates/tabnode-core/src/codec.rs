//! The framed codec of the tabnode protocol.
//!
//! A message is `len: u32 (big endian)` followed by `len` bytes of
//! [postcard](https://docs.rs/postcard)-encoded [`Request`] or [`Response`].
//! `len` is checked against [`MAX_MESSAGE`] before anything is allocated.
//!
//! The writer hands the stream at most [`MAX_FRAME`] bytes per write and
//! flushes after each one. On WebRTC every write becomes one data-channel
//! message, and the native `webrtc-direct` stack fails on data-channel
//! messages over 8 KiB ("Short buffer (size: 8192)", rust-libp2p #6557), so no
//! write may come near that.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::{request_response, StreamProtocol};
use serde::{de::DeserializeOwned, Serialize};

use crate::protocol::{Request, Response};

/// Largest single write handed to the transport, header included.
///
/// The limit that matters is 8192 bytes per WebRTC data-channel message,
/// *after* libp2p's WebRTC framing (varint length + protobuf, about 6 bytes)
/// and, through a relay circuit, Noise (16-byte tag, 2-byte length) and yamux
/// (12-byte header per frame). 8000 leaves room for all of them.
pub const MAX_FRAME: usize = 8000;

const _: () = assert!(
    MAX_FRAME + 64 <= 8192,
    "MAX_FRAME leaves no room for transport framing"
);

/// Largest encoded message accepted or sent (4 MiB).
pub const MAX_MESSAGE: usize = 4 * 1024 * 1024;

/// Why a message could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The length prefix announces more than the limit.
    #[error("message of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Announced or encoded size.
        len: usize,
        /// The limit in force.
        max: usize,
    },
    /// The bytes are not a valid message.
    #[error("malformed message: {0}")]
    Malformed(#[from] postcard::Error),
}

impl From<CodecError> for io::Error {
    fn from(e: CodecError) -> Self {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }
}

/// Encodes `msg` into a length-prefixed buffer.
///
/// # Errors
/// [`CodecError::TooLarge`] if the encoding exceeds `max`.
pub fn encode<M: Serialize>(msg: &M, max: usize) -> Result<Vec<u8>, CodecError> {
    let mut out = vec![0u8; 4];
    out = postcard::to_extend(msg, out)?;
    let len = out.len() - 4;
    if len > max {
        return Err(CodecError::TooLarge { len, max });
    }
    let prefix = u32::try_from(len).map_err(|_| CodecError::TooLarge { len, max })?;
    out[..4].copy_from_slice(&prefix.to_be_bytes());
    Ok(out)
}

/// Decodes a message body (without its length prefix).
///
/// # Errors
/// [`CodecError::Malformed`] if the bytes are not a complete, valid message.
pub fn decode<M: DeserializeOwned>(body: &[u8]) -> Result<M, CodecError> {
    let (msg, rest) = postcard::take_from_bytes(body)?;
    if !rest.is_empty() {
        return Err(CodecError::Malformed(
            postcard::Error::DeserializeBadEncoding,
        ));
    }
    Ok(msg)
}

/// Reads one length-prefixed message of at most `max` bytes.
///
/// # Errors
/// I/O errors, and [`CodecError`]s as `InvalidData`.
pub async fn read_message<M, T>(io: &mut T, max: usize) -> io::Result<M>
where
    M: DeserializeOwned,
    T: AsyncRead + Unpin + Send,
{
    let mut prefix = [0u8; 4];
    io.read_exact(&mut prefix).await?;
    let len = u32::from_be_bytes(prefix) as usize;
    if len > max {
        return Err(CodecError::TooLarge { len, max }.into());
    }
    let mut body = vec![0u8; len];
    io.read_exact(&mut body).await?;
    Ok(decode(&body)?)
}

/// Writes one message in writes of at most [`MAX_FRAME`] bytes, each flushed.
///
/// # Errors
/// I/O errors, and [`CodecError::TooLarge`] as `InvalidData`.
pub async fn write_message<M, T>(io: &mut T, msg: &M, max: usize) -> io::Result<()>
where
    M: Serialize,
    T: AsyncWrite + Unpin + Send,
{
    let bytes = encode(msg, max)?;
    for frame in bytes.chunks(MAX_FRAME) {
        io.write_all(frame).await?;
        io.flush().await?;
    }
    Ok(())
}

/// Counts the inbound messages a codec refused.
///
/// libp2p's request-response reports a failed `read_request` to nobody (it
/// only closes the stream), so the codec logs and counts them itself.
#[derive(Debug, Default)]
pub struct CodecStats {
    rejected: AtomicU64,
}

impl CodecStats {
    /// Inbound messages refused as malformed, oversized or truncated.
    pub fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }
}

/// The request-response codec for [`crate::PROTOCOL`].
#[derive(Debug, Clone)]
pub struct TabnodeCodec {
    max_message: usize,
    stats: Arc<CodecStats>,
}

impl Default for TabnodeCodec {
    fn default() -> Self {
        Self::new(MAX_MESSAGE, Arc::default())
    }
}

impl TabnodeCodec {
    /// A codec with a message size limit that counts refusals in `stats`.
    pub fn new(max_message: usize, stats: Arc<CodecStats>) -> Self {
        Self { max_message, stats }
    }

    /// The refusal counters shared by every clone of this codec.
    pub fn stats(&self) -> Arc<CodecStats> {
        self.stats.clone()
    }

    async fn read_inbound<M, T>(&self, io: &mut T) -> io::Result<M>
    where
        M: DeserializeOwned,
        T: AsyncRead + Unpin + Send,
    {
        let result = read_message(io, self.max_message).await;
        if let Err(e) = &result {
            self.stats.rejected.fetch_add(1, Ordering::Relaxed);
            tracing::warn!("closing an inbound stream: {e}");
        }
        result
    }
}

#[async_trait]
impl request_response::Codec for TabnodeCodec {
    type Protocol = StreamProtocol;
    type Request = Request;
    type Response = Response;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Request>
    where
        T: AsyncRead + Unpin + Send,
    {
        self.read_inbound(io).await
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Response>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_message(io, self.max_message).await
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Request,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_message(io, &req, self.max_message).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Response,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_message(io, &res, self.max_message).await
    }
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use futures::executor::block_on;
    use futures::io::Cursor;

    use super::*;
    use crate::caps::{Capabilities, NodeKind};

    /// A sink that records the size of every write.
    #[derive(Default)]
    struct Recorder {
        writes: Vec<usize>,
        bytes: Vec<u8>,
        flushes: usize,
    }

    impl AsyncWrite for Recorder {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.writes.push(buf.len());
            self.bytes.extend_from_slice(buf);
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.flushes += 1;
            Poll::Ready(Ok(()))
        }
        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn payload(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    #[test]
    fn one_mib_round_trips_in_frames_below_8_kib() {
        let req = Request::Echo(payload(1 << 20));
        let mut sink = Recorder::default();
        block_on(write_message(&mut sink, &req, MAX_MESSAGE)).expect("write");
        assert!(
            sink.writes.len() > 128,
            "expected many frames, got {}",
            sink.writes.len()
        );
        assert!(
            sink.writes.iter().all(|&w| w <= MAX_FRAME),
            "a write exceeded MAX_FRAME"
        );
        assert_eq!(sink.flushes, sink.writes.len(), "every frame is flushed");
        let back: Request =
            block_on(read_message(&mut Cursor::new(sink.bytes), MAX_MESSAGE)).expect("read");
        assert_eq!(back, req);
    }

    #[test]
    fn structured_messages_round_trip() {
        let mut caps = Capabilities::new(NodeKind::Browser, "test");
        caps.models.push("smollm2-135m".into());
        for msg in [
            Request::Register(Box::new(caps)),
            Request::ListPeers,
            Request::Echo(vec![]),
        ] {
            let bytes = encode(&msg, MAX_MESSAGE).expect("encode");
            let back: Request = decode(&bytes[4..]).expect("decode");
            assert_eq!(back, msg);
        }
    }

    #[test]
    fn oversized_prefix_is_rejected_before_reading_the_body() {
        let mut wire = ((MAX_MESSAGE + 1) as u32).to_be_bytes().to_vec();
        wire.extend_from_slice(&[0; 16]);
        let err = block_on(read_message::<Request, _>(
            &mut Cursor::new(wire),
            MAX_MESSAGE,
        ))
        .expect_err("must reject");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("exceeds the limit"), "{err}");
    }

    #[test]
    fn oversized_message_is_not_written() {
        let mut sink = Recorder::default();
        let err = block_on(write_message(
            &mut sink,
            &Request::Echo(payload(2000)),
            1000,
        ))
        .expect_err("must refuse");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(sink.writes.is_empty(), "nothing may reach the wire");
    }

    #[test]
    fn garbage_and_truncation_are_errors() {
        // Unknown enum discriminant.
        let mut wire = 3u32.to_be_bytes().to_vec();
        wire.extend_from_slice(&[0xff, 0xff, 0x01]);
        let err = block_on(read_message::<Request, _>(
            &mut Cursor::new(wire),
            MAX_MESSAGE,
        ))
        .expect_err("garbage");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);

        // Body shorter than announced.
        let mut wire = 100u32.to_be_bytes().to_vec();
        wire.extend_from_slice(&[2, 5]);
        let err = block_on(read_message::<Request, _>(
            &mut Cursor::new(wire),
            MAX_MESSAGE,
        ))
        .expect_err("truncated");
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);

        // Trailing bytes after a valid message.
        let mut bytes = encode(&Request::ListPeers, MAX_MESSAGE).expect("encode");
        bytes.push(0);
        let len = (bytes.len() - 4) as u32;
        bytes[..4].copy_from_slice(&len.to_be_bytes());
        let err = block_on(read_message::<Request, _>(
            &mut Cursor::new(bytes),
            MAX_MESSAGE,
        ))
        .expect_err("trailing");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }
}
