//! The link: one long-lived stream between a node and its relay that
//! carries both sides' requests and answers as numbered frames.
//!
//! Over request-response, every message pays for a stream of its own: the
//! muxer's open and close, two multistream-select lines each way, a task and
//! a timer in each peer's connection handler. A served token chunk is two
//! such round trips (the relay's `Infer`, the node's `InferChunk`), which
//! made libp2p a quarter of the relay's time per routed request (BENCHMARKS,
//! "A deployed relay"). The relay opens a link (`/tabnode/link/1.0.0`) to
//! each node that registers; while it is up, both sides send their requests
//! to each other over it, and fall back to request-response while it is not
//! (before it opens, after it breaks). Only the relay opens links: a node
//! drops a link opened by any other peer ([`crate::driver`]), so commands
//! still come only from the relay.
//!
//! A request nobody waits for the answer to goes as a notice, which is not
//! answered: a stream's last token chunk (the node needs no
//! acknowledgement once its generation is over) and the relay's
//! cancellations. That is a quarter of the frames of a routed request.
//!
//! Frames use the codec of [`crate::codec`] (length prefix, postcard, the
//! same size limit plus the frame's header, writes of at most
//! [`crate::MAX_FRAME`] bytes). They are encoded when queued ([`Outbox`]),
//! so a message too large is refused alone; a peer that leaves more than
//! [`MAX_BACKLOG`] bytes unread is refused more (the relay then closes its
//! link). A frame that cannot be read ends the link. Requests sent over the
//! link have no timeout of their own: a peer that stops answering stops
//! answering pings too, and its connection, with the link, is closed (the
//! relay also bounds the wait of each of its requests). A node registers
//! over the link while it has one; a registration over request-response
//! tells the relay the node has none, and the relay replaces the link it
//! still holds (which the node's side may have lost).

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use futures::{
    channel::mpsc, future::Either, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, StreamExt,
};
use libp2p::StreamProtocol;
use serde::{Deserialize, Serialize};

use crate::codec::{encode, read_message, CodecError, MAX_FRAME};
use crate::protocol::{ErrorCode, Request, Response};

/// The link's protocol name, with its version.
pub const LINK_PROTOCOL: StreamProtocol = StreamProtocol::new("/tabnode/link/1.0.0");

/// Bytes a frame adds to the message it carries (variant and id).
pub const FRAME_OVERHEAD: usize = 16;

/// Bytes queued on a link and not yet written beyond which [`Outbox`]
/// refuses more: the peer is not reading (over request-response, at most
/// a hundred streams' worth waited on it).
pub const MAX_BACKLOG: usize = 4 * crate::codec::MAX_MESSAGE;

/// One message on a link. The variants' order is the wire format
/// (`Queued` mirrors it): add new ones at the end.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Frame {
    /// A request; answer it with a [`Frame::Response`] of the same `id`.
    Request {
        /// Chosen by the sender, unique among its unanswered requests.
        id: u64,
        /// The request.
        request: Request,
    },
    /// The answer to the peer's request `id`.
    Response {
        /// The request's id.
        id: u64,
        /// The answer.
        response: Response,
    },
    /// A request that wants no answer (a stream's last chunk, a
    /// cancellation): the peer handles it and sends nothing back.
    Notice {
        /// The request.
        request: Request,
    },
}

/// Why a frame was not queued.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// This frame cannot be sent (too large); the link is unaffected.
    #[error(transparent)]
    Encode(#[from] CodecError),
    /// The peer has not read this many bytes queued before: it is stuck or
    /// refusing to read.
    #[error("the peer has not read {0} bytes queued on the link")]
    Backlog(usize),
    /// The link has ended.
    #[error("the link is closed")]
    Closed,
}

/// The sending side of a link: frames are encoded (and refused one by one
/// when too large) as they are queued. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Outbox {
    tx: mpsc::UnboundedSender<Vec<u8>>,
    queued: Arc<AtomicUsize>,
    max: usize,
}

/// What [`run`] writes: the other end of an [`Outbox`].
#[derive(Debug)]
pub struct Outgoing {
    rx: mpsc::UnboundedReceiver<Vec<u8>>,
    queued: Arc<AtomicUsize>,
}

/// An outbox for messages of at most `max_message` bytes, and what [`run`]
/// writes from it.
pub fn outbox(max_message: usize) -> (Outbox, Outgoing) {
    let (tx, rx) = mpsc::unbounded();
    let queued = Arc::new(AtomicUsize::new(0));
    (
        Outbox {
            tx,
            queued: queued.clone(),
            max: max_message.saturating_add(FRAME_OVERHEAD),
        },
        Outgoing { rx, queued },
    )
}

/// A request the link did not take: why, and the request, to send another
/// way.
#[derive(Debug)]
pub struct Refused {
    /// Why.
    pub error: SendError,
    /// The request.
    pub request: Request,
}

/// A frame as it is queued: it borrows its message, so a refused one is
/// still the caller's. Encodes exactly as the [`Frame`] it mirrors (the
/// same variants in the same order).
#[derive(Serialize)]
enum Queued<'a> {
    Request { id: u64, request: &'a Request },
    Response { id: u64, response: &'a Response },
    Notice { request: &'a Request },
}

impl Outbox {
    fn queue(&self, frame: &Queued<'_>) -> Result<(), SendError> {
        let bytes = encode(frame, self.max)?;
        let n = bytes.len();
        let before = self.queued.fetch_add(n, Ordering::Relaxed);
        if before.saturating_add(n) > MAX_BACKLOG {
            self.queued.fetch_sub(n, Ordering::Relaxed);
            return Err(SendError::Backlog(before));
        }
        self.tx.unbounded_send(bytes).map_err(|_| {
            self.queued.fetch_sub(n, Ordering::Relaxed);
            SendError::Closed
        })
    }

    /// Queues request `id`.
    ///
    /// # Errors
    /// The request is too large, the peer is not reading, or the link
    /// ended; the request comes back with why.
    pub fn request(&self, id: u64, request: Request) -> Result<(), Refused> {
        self.queue(&Queued::Request {
            id,
            request: &request,
        })
        .map_err(|error| Refused { error, request })
    }

    /// Queues `request` as a notice: the peer sends no answer.
    ///
    /// # Errors
    /// As [`Outbox::request`].
    pub fn notify(&self, request: Request) -> Result<(), Refused> {
        self.queue(&Queued::Notice { request: &request })
            .map_err(|error| Refused { error, request })
    }

    /// Queues the answer to the peer's request `id`; an answer too large
    /// for the link goes as an [`ErrorCode::TooLarge`] error instead, so the
    /// peer hears why.
    ///
    /// # Errors
    /// The peer is not reading, or the link ended.
    pub fn answer(&self, id: u64, response: &Response) -> Result<(), SendError> {
        match self.queue(&Queued::Response { id, response }) {
            Err(SendError::Encode(e)) => self.queue(&Queued::Response {
                id,
                response: &Response::Error {
                    code: ErrorCode::TooLarge,
                    message: e.to_string(),
                },
            }),
            other => other,
        }
    }
}

/// Runs a link over `stream` until it breaks: writes what is queued on
/// `outgoing`, in order, and hands each frame read to `incoming`; an error
/// from `incoming` ends the link. Frames larger than `max_message` (plus
/// [`FRAME_OVERHEAD`]) are refused.
///
/// Returns `Ok` when the peer closed the link or every [`Outbox`] was
/// dropped (the stream is closed then), the error otherwise.
///
/// # Errors
/// The stream failed, the peer sent a frame that is oversized or not a
/// frame, or `incoming` failed.
pub async fn run<S>(
    stream: S,
    max_message: usize,
    outgoing: Outgoing,
    mut incoming: impl FnMut(Frame) -> io::Result<()>,
) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let max = max_message.saturating_add(FRAME_OVERHEAD);
    let (mut reader, mut writer) = stream.split();
    let read = async {
        loop {
            match read_message::<Frame, _>(&mut reader, max).await {
                Ok(frame) => incoming(frame)?,
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    };
    let write = async {
        let Outgoing { mut rx, queued } = outgoing;
        while let Some(mut batch) = rx.next().await {
            // Frames queued meanwhile go out in the same writes.
            while batch.len() < MAX_FRAME {
                match rx.try_recv() {
                    Ok(more) => batch.extend_from_slice(&more),
                    Err(_) => break,
                }
            }
            for piece in batch.chunks(MAX_FRAME) {
                writer.write_all(piece).await?;
                writer.flush().await?;
            }
            queued.fetch_sub(batch.len(), Ordering::Relaxed);
        }
        writer.close().await
    };
    futures::pin_mut!(read, write);
    match futures::future::select(read, write).await {
        Either::Left((r, _)) | Either::Right((r, _)) => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::MAX_MESSAGE;
    use crate::protocol::ErrorCode;
    use futures::io::Cursor;

    /// A stream whose reads come from `input` and whose writes are kept.
    struct Pipe {
        input: Cursor<Vec<u8>>,
        written: Vec<u8>,
        writes: Vec<usize>,
    }

    impl Pipe {
        /// A stream that reads `input`, then EOF.
        fn reading(input: Vec<u8>) -> Self {
            Self {
                input: Cursor::new(input),
                written: Vec::new(),
                writes: Vec::new(),
            }
        }
    }

    impl AsyncRead for Pipe {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &mut [u8],
        ) -> std::task::Poll<io::Result<usize>> {
            std::pin::Pin::new(&mut self.input).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for Pipe {
        fn poll_write(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<io::Result<usize>> {
            self.written.extend_from_slice(buf);
            self.writes.push(buf.len());
            std::task::Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
        fn poll_close(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    fn frames() -> Vec<Frame> {
        vec![
            Frame::Request {
                id: 7,
                request: Request::Echo(vec![1, 2, 3]),
            },
            Frame::Response {
                id: 3,
                response: Response::Error {
                    code: ErrorCode::Busy,
                    message: "later".into(),
                },
            },
            Frame::Request {
                id: u64::MAX,
                request: Request::InferCancel { request_id: 9 },
            },
            Frame::Notice {
                request: Request::InferCancel { request_id: 10 },
            },
        ]
    }

    fn wire(frames: &[Frame]) -> Vec<u8> {
        frames
            .iter()
            .flat_map(|f| encode(f, MAX_MESSAGE + FRAME_OVERHEAD).expect("encodes"))
            .collect()
    }

    #[test]
    fn frames_are_read_in_order_and_eof_ends_the_link_cleanly() {
        let mut pipe = Pipe::reading(wire(&frames()));
        let (_out, outgoing) = outbox(MAX_MESSAGE);
        let mut got = Vec::new();
        let end = futures::executor::block_on(run(&mut pipe, MAX_MESSAGE, outgoing, |f| {
            got.push(f);
            Ok(())
        }));
        assert!(end.is_ok(), "{end:?}");
        assert_eq!(got, frames());
    }

    #[test]
    fn queued_frames_are_written_together_in_pieces_below_the_frame_limit() {
        // A peer that says nothing until the writer is done.
        let (out, outgoing) = outbox(MAX_MESSAGE);
        let big = Frame::Request {
            id: 1,
            request: Request::Echo(vec![5; 3 * MAX_FRAME]),
        };
        let mut sent = frames();
        sent.push(big);
        for f in &sent {
            queue(&out, f).expect("queued");
        }
        let queued = out.queued.clone();
        drop(out);
        let mut pipe = Pipe::reading(Vec::new());
        // The peer stays silent: the link ends when the writer has drained
        // the closed queue.
        let end =
            futures::executor::block_on(run(WriteFirst(&mut pipe), MAX_MESSAGE, outgoing, |_| {
                Ok(())
            }));
        let (written, writes) = (pipe.written, pipe.writes);
        assert!(end.is_ok(), "{end:?}");
        assert_eq!(written, wire(&sent));
        assert!(writes.iter().all(|&n| n <= MAX_FRAME), "{writes:?}");
        // Four small frames and a big one: four pieces, not one write each
        // plus the big one's.
        assert_eq!(writes.len(), wire(&sent).len().div_ceil(MAX_FRAME));
        assert_eq!(
            queued.load(Ordering::Relaxed),
            0,
            "everything written is counted out"
        );
    }

    /// A stream whose reads never complete (a silent peer).
    struct WriteFirst<'a>(&'a mut Pipe);

    impl AsyncRead for WriteFirst<'_> {
        fn poll_read(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            _: &mut [u8],
        ) -> std::task::Poll<io::Result<usize>> {
            std::task::Poll::Pending
        }
    }

    impl AsyncWrite for WriteFirst<'_> {
        fn poll_write(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<io::Result<usize>> {
            std::pin::Pin::new(&mut *self.0).poll_write(cx, buf)
        }
        fn poll_flush(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            std::pin::Pin::new(&mut *self.0).poll_flush(cx)
        }
        fn poll_close(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            std::pin::Pin::new(&mut *self.0).poll_close(cx)
        }
    }

    #[test]
    fn an_oversized_or_malformed_frame_ends_the_link_with_an_error() {
        let mut oversized = ((MAX_MESSAGE + FRAME_OVERHEAD + 1) as u32)
            .to_be_bytes()
            .to_vec();
        oversized.extend_from_slice(&[0; 8]);
        let mut garbage = 3u32.to_be_bytes().to_vec();
        garbage.extend_from_slice(&[0xff, 0xff, 0xff]);
        for input in [oversized, garbage] {
            let mut pipe = Pipe::reading(input);
            let (_out, outgoing) = outbox(MAX_MESSAGE);
            let mut got = 0;
            let end = futures::executor::block_on(run(&mut pipe, MAX_MESSAGE, outgoing, |_| {
                got += 1;
                Ok(())
            }));
            let e = end.expect_err("refused");
            assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
            assert_eq!(got, 0);
        }
    }

    /// Queues `frame` the way its kind is sent.
    fn queue(out: &Outbox, frame: &Frame) -> Result<(), SendError> {
        match frame {
            Frame::Request { id, request } => {
                out.request(*id, request.clone()).map_err(|r| r.error)
            }
            Frame::Response { id, response } => out.answer(*id, response),
            Frame::Notice { request } => out.notify(request.clone()).map_err(|r| r.error),
        }
    }

    #[test]
    fn a_frame_too_large_is_refused_alone_and_a_peer_that_does_not_read_is_refused_more() {
        let (out, mut outgoing) = outbox(1000);
        let big = Request::Echo(vec![0; 2000]);
        let refused = out.request(1, big.clone()).expect_err("too large");
        assert!(matches!(refused.error, SendError::Encode(_)), "{refused:?}");
        assert_eq!(refused.request, big, "the request comes back");
        // An answer too large goes as an error saying why.
        out.answer(7, &Response::Echo(vec![0; 2000]))
            .expect("the error goes instead");
        let queued = outgoing.rx.try_recv().expect("a frame");
        match crate::codec::decode::<Frame>(&queued[4..]).expect("a frame") {
            Frame::Response {
                id: 7,
                response: Response::Error { code, message },
            } => {
                assert_eq!(code, ErrorCode::TooLarge);
                assert!(message.contains("limit of 1016 bytes"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        let small = Request::Echo(vec![0; 10]);
        out.request(2, small.clone())
            .expect("the link still takes frames");
        drop(outgoing);
        let refused = out.request(2, small.clone()).expect_err("closed");
        assert!(matches!(refused.error, SendError::Closed), "{refused:?}");
        assert_eq!(refused.request, small);
        // Nothing is written (no `run`): the backlog fills up.
        let (out, _outgoing) = outbox(MAX_MESSAGE);
        let chunk = Request::Echo(vec![1; MAX_MESSAGE - 64]);
        for _ in 0..MAX_BACKLOG / MAX_MESSAGE {
            out.request(3, chunk.clone()).expect("within the backlog");
        }
        let refused = out.request(3, chunk).expect_err("backlog");
        assert!(
            matches!(refused.error, SendError::Backlog(_)),
            "{refused:?}"
        );
    }

    #[test]
    fn an_error_from_the_reader_ends_the_link() {
        let mut pipe = Pipe::reading(wire(&frames()));
        let (_out, outgoing) = outbox(MAX_MESSAGE);
        let mut got = 0;
        let end = futures::executor::block_on(run(&mut pipe, MAX_MESSAGE, outgoing, |_| {
            got += 1;
            Err(io::Error::other("enough"))
        }));
        assert_eq!(end.expect_err("ended").to_string(), "enough");
        assert_eq!(got, 1);
    }
}
