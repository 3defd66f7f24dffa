// Copyright 2022 Parity Technologies (UK) Ltd.
// Copyright 2023 Protocol Labs.
//
// Permission is hereby granted, free of charge, to any person obtaining a
// copy of this software and associated documentation files (the "Software"),
// to deal in the Software without restriction, including without limitation
// the rights to use, copy, modify, merge, publish, distribute, sublicense,
// and/or sell copies of the Software, and to permit persons to whom the
// Software is furnished to do so, subject to the following conditions:
//
// The above copyright notice and this permission notice shall be included in
// all copies or substantial portions of the Software.
//
// THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS
// OR IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
// FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
// AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
// LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING
// FROM, OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER
// DEALINGS IN THE SOFTWARE.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use futures::{channel::oneshot, prelude::*, ready};
use futures_timer::Delay;

use crate::{
    proto::{Flag, Message},
    stream::{
        drop_listener::{Dropped, FinAck},
        framed_dc::FramedDc,
        state::{Closing, State},
    },
};

mod drop_listener;
mod framed_dc;
mod state;

/// Maximum length of a message.
///
/// "As long as message interleaving is not supported, the sender SHOULD limit the maximum message
/// size to 16 KB to avoid monopolization."
/// Source: <https://www.rfc-editor.org/rfc/rfc8831#name-transferring-user-data-on-a>
pub const MAX_MSG_LEN: usize = 16 * 1024;
/// Length of varint, in bytes.
const VARINT_LEN: usize = 2;
/// Overhead of the protobuf encoding, in bytes.
const PROTO_OVERHEAD: usize = 5;
/// Maximum length of data, in bytes.
const MAX_DATA_LEN: usize = MAX_MSG_LEN - VARINT_LEN - PROTO_OVERHEAD;
/// How long closing the write half waits for the remote's `FIN_ACK`, and how long a stream that
/// was closed and dropped keeps waiting for the remote's `FIN` to acknowledge it.
/// Same as js-libp2p's `DEFAULT_FIN_ACK_TIMEOUT`.
const FIN_ACK_TIMEOUT: Duration = Duration::from_secs(10);

pub use drop_listener::DropListener;
/// A stream backed by a WebRTC data channel.
///
/// To be a proper libp2p stream, we need to implement [`AsyncRead`] and [`AsyncWrite`] as well
/// as support a half-closed state which we do by framing messages in a protobuf envelope.
pub struct Stream<T> {
    io: FramedDc<T>,
    state: State,
    read_buffer: Bytes,
    /// The `FIN_ACK` we owe the remote for its `FIN`: `Requested`, then `MessageSent` until
    /// flushed.
    fin_ack: Option<Closing>,
    /// Whether the remote closed its write half (`FIN`, or the data channel ended).
    remote_fin_received: bool,
    /// Whether [`AsyncWrite::poll_close`] completed.
    write_closed_gracefully: bool,
    fin_ack_timeout: Duration,
    /// Bounds the wait for the remote's `FIN_ACK` in [`AsyncWrite::poll_close`].
    fin_ack_timer: Option<Delay>,
    /// Tells the [`DropListener`], when this stream is dropped, what is left to send.
    drop_notifier: Option<oneshot::Sender<Dropped>>,
}

impl<T> Stream<T>
where
    T: AsyncRead + AsyncWrite + Unpin + Clone,
{
    /// Returns a new [`Stream`] and a [`DropListener`],
    /// which will notify the receiver when/if the stream is dropped.
    pub fn new(data_channel: T) -> (Self, DropListener<T>) {
        let (sender, receiver) = oneshot::channel();

        let stream = Self {
            io: framed_dc::new(data_channel.clone()),
            state: State::Open,
            read_buffer: Bytes::default(),
            fin_ack: None,
            remote_fin_received: false,
            write_closed_gracefully: false,
            fin_ack_timeout: FIN_ACK_TIMEOUT,
            fin_ack_timer: None,
            drop_notifier: Some(sender),
        };
        let listener = DropListener::new(framed_dc::new(data_channel), receiver);

        (stream, listener)
    }

    /// Gracefully closes the "read-half" of the stream.
    pub fn poll_close_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_fin_ack_sent(cx));
        loop {
            match self.state.close_read_barrier()? {
                Some(Closing::Requested) => {
                    ready!(self.io.poll_ready_unpin(cx))?;

                    self.io.start_send_unpin(Message {
                        flag: Some(Flag::STOP_SENDING),
                        message: None,
                    })?;
                    self.state.close_read_message_sent();

                    continue;
                }
                Some(Closing::MessageSent) => {
                    ready!(self.io.poll_flush_unpin(cx))?;

                    self.state.read_closed();

                    return Poll::Ready(Ok(()));
                }
                Some(Closing::AwaitingFinAck | Closing::FinAcked) => {
                    unreachable!("only used when closing the write half")
                }
                None => return Poll::Ready(Ok(())),
            }
        }
    }
}

impl<T> Stream<T>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    /// Applies a flag received from the remote; a `FIN` is to be answered with a `FIN_ACK`.
    fn on_inbound_flag(&mut self, flag: Flag) {
        if self.state.handle_inbound_flag(flag, &mut self.read_buffer) {
            self.remote_fin_received = true;
            self.fin_ack = Some(Closing::Requested);
        }
    }

    /// Sends and flushes the `FIN_ACK` we owe, if any. Best effort: a failure means the data
    /// channel is gone, so it is only logged.
    fn poll_fin_ack_sent(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            match self.fin_ack {
                None => return Poll::Ready(()),
                Some(Closing::Requested) => {
                    let sent = ready!(self.io.poll_ready_unpin(cx)).and_then(|()| {
                        self.io.start_send_unpin(Message {
                            flag: Some(Flag::FIN_ACK),
                            message: None,
                        })
                    });
                    match sent {
                        Ok(()) => self.fin_ack = Some(Closing::MessageSent),
                        Err(e) => {
                            tracing::debug!("Failed to send FIN_ACK: {e}");
                            self.fin_ack = None;
                        }
                    }
                }
                Some(_) => {
                    if let Err(e) = ready!(self.io.poll_flush_unpin(cx)) {
                        tracing::debug!("Failed to flush FIN_ACK: {e}");
                    }
                    self.fin_ack = None;
                }
            }
        }
    }

    /// Waits, at most `fin_ack_timeout`, for the remote to acknowledge our `FIN`.
    ///
    /// Only used once our read half is closed: nobody else reads the channel, incoming data is
    /// discarded (as in `poll_write`), flags are handled.
    fn poll_fin_ack_received(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let timeout = self.fin_ack_timeout;

        loop {
            if !self.state.awaiting_fin_ack() {
                return Poll::Ready(());
            }
            ready!(self.poll_fin_ack_sent(cx));
            let timer = self
                .fin_ack_timer
                .get_or_insert_with(|| Delay::new(timeout));
            if timer.poll_unpin(cx).is_ready() {
                tracing::debug!("No FIN_ACK within {timeout:?}, considering write half closed");
                self.state.stop_awaiting_fin_ack();
                return Poll::Ready(());
            }

            match ready!(io_poll_next(&mut self.io, cx)) {
                Ok(Some((Some(flag), _))) => self.on_inbound_flag(flag),
                Ok(Some((None, _))) => {}
                Ok(None) | Err(_) => {
                    // The channel is closed, no `FIN_ACK` will come.
                    self.state.stop_awaiting_fin_ack();
                    return Poll::Ready(());
                }
            }
        }
    }
}

impl<T> AsyncRead for Stream<T>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            if self.fin_ack.is_some() {
                // We received a `FIN`: acknowledge it before reporting the end of the stream.
                ready!(self.poll_fin_ack_sent(cx));
                if self.read_buffer.is_empty() {
                    return Poll::Ready(Ok(0));
                }
            }

            self.state.read_barrier()?;

            if !self.read_buffer.is_empty() {
                let n = std::cmp::min(self.read_buffer.len(), buf.len());
                let data = self.read_buffer.split_to(n);
                buf[0..n].copy_from_slice(&data[..]);

                return Poll::Ready(Ok(n));
            }

            match ready!(io_poll_next(&mut self.io, cx))? {
                Some((flag, message)) => {
                    if let Some(flag) = flag {
                        self.on_inbound_flag(flag);
                    }

                    debug_assert!(self.read_buffer.is_empty());
                    match message {
                        Some(msg) if !msg.is_empty() => {
                            self.read_buffer = msg.into();
                        }
                        // A `FIN`: answered at the top of the loop, then end of stream.
                        _ if self.fin_ack.is_some() => {}
                        // A flag that leaves the read half open (`FIN_ACK`, `STOP_SENDING`).
                        _ if self.state.read_barrier().is_ok() => {}
                        _ => {
                            tracing::debug!("poll_read buffer is empty, received None");
                            return Poll::Ready(Ok(0));
                        }
                    }
                }
                None => {
                    // The data channel ended: there is nobody left to acknowledge.
                    let this = &mut *self;
                    let _ = this.state.handle_inbound_flag(Flag::FIN, &mut this.read_buffer);
                    this.remote_fin_received = true;
                    return Poll::Ready(Ok(0));
                }
            }
        }
    }
}

impl<T> AsyncWrite for Stream<T>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        while self.state.read_flags_in_async_write() {
            // TODO: In case AsyncRead::poll_read encountered an error or returned None earlier, we
            // will poll the underlying I/O resource once more. Is that allowed? How
            // about introducing a state IoReadClosed?

            match io_poll_next(&mut self.io, cx)? {
                Poll::Ready(Some((Some(flag), message))) => {
                    // Read side is closed. Discard any incoming messages.
                    drop(message);
                    // But still handle flags, e.g. a `Flag::StopSending`.
                    self.on_inbound_flag(flag)
                }
                Poll::Ready(Some((None, message))) => drop(message),
                Poll::Ready(None) | Poll::Pending => break,
            }
        }

        ready!(self.poll_fin_ack_sent(cx));

        self.state.write_barrier()?;

        ready!(self.io.poll_ready_unpin(cx))?;

        let n = usize::min(buf.len(), MAX_DATA_LEN);

        Pin::new(&mut self.io).start_send(Message {
            flag: None,
            message: Some(buf[0..n].into()),
        })?;

        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_fin_ack_sent(cx));
        self.io.poll_flush_unpin(cx).map_err(Into::into)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_fin_ack_sent(cx));
        loop {
            match self.state.close_write_barrier()? {
                Some(Closing::Requested) => {
                    ready!(self.io.poll_ready_unpin(cx))?;

                    self.io.start_send_unpin(Message {
                        flag: Some(Flag::FIN),
                        message: None,
                    })?;
                    self.state.close_write_message_sent();

                    continue;
                }
                Some(Closing::MessageSent) => {
                    ready!(self.io.poll_flush_unpin(cx))?;

                    self.state.close_write_message_flushed();

                    continue;
                }
                Some(Closing::AwaitingFinAck) => {
                    // "A node SHOULD only consider its write-half closed once it received a
                    // `FIN_ACK`." (See `State::close_write_message_flushed` for when we wait.)
                    ready!(self.poll_fin_ack_received(cx));

                    continue;
                }
                Some(Closing::FinAcked) => {
                    self.fin_ack_timer = None;
                    self.state.write_closed();
                    self.write_closed_gracefully = true;

                    return Poll::Ready(Ok(()));
                }
                None => return Poll::Ready(Ok(())),
            }
        }
    }
}

impl<T> Drop for Stream<T> {
    fn drop(&mut self) {
        let Some(notifier) = self.drop_notifier.take() else {
            return;
        };
        let fin_ack = if self.fin_ack.is_some() {
            FinAck::Now
        } else if self.write_closed_gracefully
            && !self.remote_fin_received
            && !matches!(self.state, State::BothClosed { reset: true })
        {
            FinAck::OnRemoteFin {
                timeout: self.fin_ack_timeout,
            }
        } else {
            FinAck::None
        };

        let _ = notifier.send(Dropped {
            graceful: self.write_closed_gracefully,
            fin_ack,
        });
    }
}

fn io_poll_next<T>(
    io: &mut FramedDc<T>,
    cx: &mut Context<'_>,
) -> Poll<io::Result<Option<(Option<Flag>, Option<Vec<u8>>)>>>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    match ready!(io.poll_next_unpin(cx))
        .transpose()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?
    {
        Some(Message { flag, message }) => Poll::Ready(Ok(Some((flag, message)))),
        None => Poll::Ready(Ok(None)),
    }
}

#[cfg(test)]
mod tests {
    use std::{
        collections::VecDeque,
        sync::{Arc, Mutex},
        task::Waker,
        time::Instant,
    };

    use asynchronous_codec::{Decoder, Encoder};
    use bytes::BytesMut;
    use futures::executor::block_on;

    use super::*;
    use crate::stream::framed_dc::{self, codec};

    #[test]
    fn max_data_len() {
        // Largest possible message.
        let message = [0; MAX_DATA_LEN];

        let protobuf = Message {
            flag: Some(Flag::FIN),
            message: Some(message.to_vec()),
        };

        let mut codec = codec();

        let mut dst = BytesMut::new();
        codec.encode(protobuf, &mut dst).unwrap();

        // Ensure the varint prefixed and protobuf encoded largest message is no longer than the
        // maximum limit specified in the libp2p WebRTC specification.
        assert_eq!(dst.len(), MAX_MSG_LEN);
    }

    #[test]
    fn fin_ack_flag_is_decoded() {
        let mut dst = BytesMut::new();
        codec()
            .encode(
                Message {
                    flag: Some(Flag::FIN_ACK),
                    message: None,
                },
                &mut dst,
            )
            .unwrap();

        let decoded = codec().decode(&mut dst).unwrap().unwrap();

        // Unknown enum values decode as the default, `FIN`: a `FIN_ACK` must not.
        assert_eq!(decoded.flag, Some(Flag::FIN_ACK));
    }

    /// One end of an in-memory, message-oriented data channel.
    #[derive(Clone)]
    struct Channel {
        shared: Arc<Mutex<Shared>>,
        side: usize,
    }

    #[derive(Default)]
    struct Shared {
        /// Messages to be read by side 0 and side 1.
        inbox: [VecDeque<Vec<u8>>; 2],
        reader: [Option<Waker>; 2],
    }

    fn channel() -> (Channel, Channel) {
        let shared = Arc::new(Mutex::new(Shared::default()));
        (
            Channel {
                shared: shared.clone(),
                side: 0,
            },
            Channel { shared, side: 1 },
        )
    }

    impl AsyncRead for Channel {
        fn poll_read(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut [u8],
        ) -> Poll<io::Result<usize>> {
            let mut shared = self.shared.lock().unwrap();
            let Some(message) = shared.inbox[self.side].front_mut() else {
                shared.reader[self.side] = Some(cx.waker().clone());
                return Poll::Pending;
            };
            let n = message.len().min(buf.len());
            buf[..n].copy_from_slice(&message[..n]);
            message.drain(..n);
            if message.is_empty() {
                shared.inbox[self.side].pop_front();
            }
            Poll::Ready(Ok(n))
        }
    }

    impl AsyncWrite for Channel {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let mut shared = self.shared.lock().unwrap();
            let other = 1 - self.side;
            shared.inbox[other].push_back(buf.to_vec());
            if let Some(waker) = shared.reader[other].take() {
                waker.wake();
            }
            Poll::Ready(Ok(buf.len()))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn flag(flag: Flag) -> Message {
        Message {
            flag: Some(flag),
            message: None,
        }
    }

    fn data(data: &[u8]) -> Message {
        Message {
            flag: None,
            message: Some(data.to_vec()),
        }
    }

    async fn next(remote: &mut FramedDc<Channel>) -> Message {
        remote.next().await.unwrap().unwrap()
    }

    #[test]
    fn received_fin_is_acknowledged_before_end_of_stream() {
        let (local, remote) = channel();
        let (mut stream, _listener) = Stream::new(local);
        let mut remote = framed_dc::new(remote);

        block_on(async {
            remote.send(data(b"ping")).await.unwrap();
            remote.send(flag(Flag::FIN)).await.unwrap();

            let mut received = Vec::new();
            stream.read_to_end(&mut received).await.unwrap();
            assert_eq!(received, b"ping");

            assert_eq!(next(&mut remote).await, flag(Flag::FIN_ACK));
        });
    }

    #[test]
    fn close_after_remote_fin_completes_on_fin_ack() {
        let (local, remote) = channel();
        let (mut stream, _listener) = Stream::new(local);
        let mut remote = framed_dc::new(remote);

        block_on(async {
            remote.send(flag(Flag::FIN)).await.unwrap();
            assert_eq!(stream.read(&mut [0; 8]).await.unwrap(), 0);
            assert_eq!(next(&mut remote).await, flag(Flag::FIN_ACK));

            let start = Instant::now();
            let peer = async {
                assert_eq!(next(&mut remote).await, flag(Flag::FIN));
                remote.send(data(b"discarded")).await.unwrap();
                remote.send(flag(Flag::FIN_ACK)).await.unwrap();
            };
            let (closed, ()) = futures::join!(stream.close(), peer);
            closed.unwrap();
            assert!(start.elapsed() < FIN_ACK_TIMEOUT / 2);
        });
    }

    #[test]
    fn close_does_not_wait_for_fin_ack_while_reading() {
        let (local, remote) = channel();
        let (mut stream, _listener) = Stream::new(local);
        let mut remote = framed_dc::new(remote);

        block_on(async {
            let start = Instant::now();
            stream.close().await.unwrap();
            assert!(start.elapsed() < FIN_ACK_TIMEOUT / 2);
            assert_eq!(next(&mut remote).await, flag(Flag::FIN));
        });
    }

    #[test]
    fn close_between_two_streams() {
        let (a, b) = channel();
        let (mut a, _a_listener) = Stream::new(a);
        let (mut b, _b_listener) = Stream::new(b);

        block_on(async {
            let start = Instant::now();
            let a_side = async {
                a.write_all(b"request").await.unwrap();
                a.close().await.unwrap();
                let mut response = Vec::new();
                a.read_to_end(&mut response).await.unwrap();
                response
            };
            let b_side = async {
                let mut request = Vec::new();
                b.read_to_end(&mut request).await.unwrap();
                b.write_all(b"response").await.unwrap();
                b.close().await.unwrap();
                request
            };
            let (response, request) = futures::join!(a_side, b_side);
            assert_eq!(request, b"request");
            assert_eq!(response, b"response");
            assert!(start.elapsed() < FIN_ACK_TIMEOUT / 2);
        });
    }

    #[test]
    fn fin_ack_is_not_taken_for_the_end_of_the_response() {
        let (local, remote) = channel();
        let (mut stream, _listener) = Stream::new(local);
        let mut remote = framed_dc::new(remote);

        block_on(async {
            stream.write_all(b"request").await.unwrap();
            stream.close().await.unwrap();
            assert_eq!(next(&mut remote).await, data(b"request"));
            assert_eq!(next(&mut remote).await, flag(Flag::FIN));
            remote.send(flag(Flag::FIN_ACK)).await.unwrap();
            remote.send(data(b"response")).await.unwrap();
            remote.send(flag(Flag::FIN)).await.unwrap();

            let mut response = Vec::new();
            stream.read_to_end(&mut response).await.unwrap();

            assert_eq!(response, b"response");
            assert_eq!(next(&mut remote).await, flag(Flag::FIN_ACK));
        });
    }

    #[test]
    fn close_times_out_without_fin_ack() {
        let (local, remote) = channel();
        let (mut stream, _listener) = Stream::new(local);
        stream.fin_ack_timeout = Duration::from_millis(100);
        let mut remote = framed_dc::new(remote);

        block_on(async {
            remote.send(flag(Flag::FIN)).await.unwrap();
            assert_eq!(stream.read(&mut [0; 8]).await.unwrap(), 0);

            let start = Instant::now();
            stream.close().await.unwrap();
            assert!(start.elapsed() >= Duration::from_millis(100));
            assert_eq!(next(&mut remote).await, flag(Flag::FIN_ACK));
            assert_eq!(next(&mut remote).await, flag(Flag::FIN));
            stream.write(b"x").await.unwrap_err();
        });
    }

    #[test]
    fn flag_only_messages_do_not_end_the_stream() {
        let (local, remote) = channel();
        let (mut stream, _listener) = Stream::new(local);
        let mut remote = framed_dc::new(remote);

        block_on(async {
            remote.send(flag(Flag::FIN_ACK)).await.unwrap();
            remote.send(flag(Flag::STOP_SENDING)).await.unwrap();
            remote.send(data(b"data")).await.unwrap();
            remote.send(flag(Flag::FIN)).await.unwrap();

            let mut received = Vec::new();
            stream.read_to_end(&mut received).await.unwrap();

            assert_eq!(received, b"data");
        });
    }

    #[test]
    fn dropped_stream_acknowledges_a_late_fin() {
        let (local, remote) = channel();
        let (mut stream, listener) = Stream::new(local);
        let mut remote = framed_dc::new(remote);

        block_on(async {
            stream.close().await.unwrap();
            drop(stream);

            assert_eq!(next(&mut remote).await, flag(Flag::FIN));
            remote.send(flag(Flag::FIN)).await.unwrap();
            listener.await.unwrap();

            assert_eq!(next(&mut remote).await, flag(Flag::FIN_ACK));
        });
    }

    #[test]
    fn dropped_stream_stops_waiting_for_a_late_fin() {
        let (local, remote) = channel();
        let (mut stream, listener) = Stream::new(local);
        stream.fin_ack_timeout = Duration::from_millis(50);
        let mut remote = framed_dc::new(remote);

        block_on(async {
            stream.close().await.unwrap();
            drop(stream);

            listener.await.unwrap();

            assert_eq!(next(&mut remote).await, flag(Flag::FIN));
        });
    }

    #[test]
    fn stream_dropped_without_close_is_reset() {
        let (local, remote) = channel();
        let (stream, listener) = Stream::new(local);
        let mut remote = framed_dc::new(remote);

        block_on(async {
            drop(stream);
            listener.await.unwrap();

            assert_eq!(next(&mut remote).await, flag(Flag::RESET));
        });
    }
}
