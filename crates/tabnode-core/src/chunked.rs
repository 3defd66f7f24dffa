//! [`ChunkedWrites`]: caps the size of each write reaching a stream.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::{AsyncRead, AsyncWrite};

/// Wraps a byte stream so that at most `max` bytes reach it between two
/// flushes: each write passes at most `max` bytes and is flushed before the
/// next write is accepted.
///
/// The browser wraps its relay-circuit connections in this. On a circuit,
/// Noise and yamux sit on top and write frames of up to 64 KiB; the WebRTC
/// stream below buffers whatever it is given until a flush and then sends it
/// in data-channel messages of up to 16 KiB, and the native relay silently
/// truncates messages over 8 KiB (rust-libp2p #6557), which corrupts the
/// stream. Reads pass through untouched.
#[derive(Debug)]
pub struct ChunkedWrites<T> {
    inner: T,
    max: usize,
    unflushed: bool,
}

impl<T> ChunkedWrites<T> {
    /// Wraps `inner`; `max` must be at least 1.
    pub fn new(inner: T, max: usize) -> Self {
        Self {
            inner,
            max: max.max(1),
            unflushed: false,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ChunkedWrites<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ChunkedWrites<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.unflushed {
            futures::ready!(Pin::new(&mut self.inner).poll_flush(cx))?;
            self.unflushed = false;
        }
        let n = buf.len().min(self.max);
        let written = futures::ready!(Pin::new(&mut self.inner).poll_write(cx, &buf[..n]))?;
        self.unflushed = written > 0;
        Poll::Ready(Ok(written))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        futures::ready!(Pin::new(&mut self.inner).poll_flush(cx))?;
        self.unflushed = false;
        Poll::Ready(Ok(()))
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

#[cfg(test)]
mod tests {
    use futures::executor::block_on;
    use futures::io::{AsyncReadExt, AsyncWriteExt, Cursor};

    use super::*;

    /// Records the bytes written between flushes.
    struct Sizes(Vec<usize>, Vec<u8>, usize);

    impl AsyncWrite for Sizes {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.2 += buf.len();
            self.1.extend_from_slice(buf);
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            let pending = std::mem::take(&mut self.2);
            if pending > 0 {
                self.0.push(pending);
            }
            Poll::Ready(Ok(()))
        }
        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[test]
    fn a_64_kib_write_reaches_the_stream_in_flushed_pieces_of_at_most_max() {
        let data: Vec<u8> = (0..65_535u32).map(|i| (i % 251) as u8).collect();
        let mut w = ChunkedWrites::new(Sizes(Vec::new(), Vec::new(), 0), 8000);
        block_on(w.write_all(&data)).expect("write");
        block_on(w.flush()).expect("flush");
        assert_eq!(w.inner.0.len(), 9, "bytes between flushes: {:?}", w.inner.0);
        assert!(w.inner.0.iter().all(|&n| n <= 8000));
        assert_eq!(w.inner.1, data);
    }

    #[test]
    fn reads_pass_through() {
        let mut r = ChunkedWrites::new(Cursor::new(vec![7u8; 20_000]), 10);
        let mut out = Vec::new();
        block_on(r.read_to_end(&mut out)).expect("read");
        assert_eq!(out, vec![7u8; 20_000]);
    }
}
