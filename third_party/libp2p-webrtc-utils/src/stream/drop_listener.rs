// Copyright 2022 Parity Technologies (UK) Ltd.
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
    future::Future,
    io,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use futures::{
    channel::{oneshot, oneshot::Canceled},
    AsyncRead, AsyncWrite, FutureExt, SinkExt, StreamExt,
};
use futures_timer::Delay;

use crate::{
    proto::{Flag, Message},
    stream::framed_dc::FramedDc,
};

#[must_use]
pub struct DropListener<T> {
    state: State<T>,
}

impl<T> DropListener<T> {
    pub fn new(stream: FramedDc<T>, receiver: oneshot::Receiver<Dropped>) -> Self {
        Self {
            state: State::Idle { stream, receiver },
        }
    }
}

enum State<T> {
    /// The [`DropListener`] is idle and waiting to be activated.
    Idle {
        stream: FramedDc<T>,
        receiver: oneshot::Receiver<Dropped>,
    },
    /// The stream got dropped owing the remote a `FIN_ACK`; a reset flag may follow.
    SendingFinAck {
        stream: FramedDc<T>,
        reset: bool,
    },
    /// The stream got dropped after closing gracefully, before the remote closed its write half:
    /// wait (bounded) for the remote's `FIN` to acknowledge it.
    AwaitingFin {
        stream: FramedDc<T>,
        timeout: Delay,
    },
    /// The stream got dropped and we are sending a reset flag.
    SendingReset {
        stream: FramedDc<T>,
    },
    Flushing {
        stream: FramedDc<T>,
    },
    /// Bad state transition.
    Poisoned,
}

impl<T> Future for DropListener<T>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    type Output = io::Result<()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let state = &mut self.get_mut().state;

        loop {
            match std::mem::replace(state, State::Poisoned) {
                State::Idle {
                    stream,
                    mut receiver,
                } => match receiver.poll_unpin(cx) {
                    Poll::Ready(Ok(Dropped { graceful, fin_ack })) => {
                        if !graceful {
                            tracing::info!("Stream dropped without graceful close, sending Reset");
                        }
                        *state = match fin_ack {
                            FinAck::Now => State::SendingFinAck {
                                stream,
                                reset: !graceful,
                            },
                            FinAck::OnRemoteFin { timeout } => State::AwaitingFin {
                                stream,
                                timeout: Delay::new(timeout),
                            },
                            FinAck::None if graceful => return Poll::Ready(Ok(())),
                            FinAck::None => State::SendingReset { stream },
                        };
                        continue;
                    }
                    Poll::Ready(Err(Canceled)) => {
                        tracing::info!("Stream dropped without graceful close, sending Reset");
                        *state = State::SendingReset { stream };
                        continue;
                    }
                    Poll::Pending => {
                        *state = State::Idle { stream, receiver };
                        return Poll::Pending;
                    }
                },
                State::SendingFinAck { mut stream, reset } => match stream.poll_ready_unpin(cx)? {
                    Poll::Ready(()) => {
                        stream.start_send_unpin(Message {
                            flag: Some(Flag::FIN_ACK),
                            message: None,
                        })?;
                        *state = if reset {
                            State::SendingReset { stream }
                        } else {
                            State::Flushing { stream }
                        };
                        continue;
                    }
                    Poll::Pending => {
                        *state = State::SendingFinAck { stream, reset };
                        return Poll::Pending;
                    }
                },
                State::AwaitingFin {
                    mut stream,
                    mut timeout,
                } => {
                    if timeout.poll_unpin(cx).is_ready() {
                        return Poll::Ready(Ok(()));
                    }
                    match stream.poll_next_unpin(cx) {
                        Poll::Ready(Some(Ok(Message {
                            flag: Some(Flag::FIN),
                            ..
                        }))) => {
                            *state = State::SendingFinAck {
                                stream,
                                reset: false,
                            };
                        }
                        Poll::Ready(Some(Ok(Message {
                            flag: Some(Flag::RESET),
                            ..
                        })))
                        | Poll::Ready(None) => return Poll::Ready(Ok(())),
                        // Nobody reads anymore: discard data and other flags.
                        Poll::Ready(Some(Ok(_))) => {
                            *state = State::AwaitingFin { stream, timeout };
                        }
                        Poll::Ready(Some(Err(e))) => {
                            return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e)))
                        }
                        Poll::Pending => {
                            *state = State::AwaitingFin { stream, timeout };
                            return Poll::Pending;
                        }
                    }
                }
                State::SendingReset { mut stream } => match stream.poll_ready_unpin(cx)? {
                    Poll::Ready(()) => {
                        stream.start_send_unpin(Message {
                            flag: Some(Flag::RESET),
                            message: None,
                        })?;
                        *state = State::Flushing { stream };
                        continue;
                    }
                    Poll::Pending => {
                        *state = State::SendingReset { stream };
                        return Poll::Pending;
                    }
                },
                State::Flushing { mut stream } => match stream.poll_flush_unpin(cx)? {
                    Poll::Ready(()) => return Poll::Ready(Ok(())),
                    Poll::Pending => {
                        *state = State::Flushing { stream };
                        return Poll::Pending;
                    }
                },
                State::Poisoned => {
                    unreachable!()
                }
            }
        }
    }
}

/// Sent by a [`Stream`](super::Stream) when it is dropped.
pub struct Dropped {
    /// Whether its write half was closed gracefully; if not, the stream gets reset.
    pub(crate) graceful: bool,
    pub(crate) fin_ack: FinAck,
}

/// What a dropped stream still owes the remote for its `FIN`.
pub(crate) enum FinAck {
    /// Nothing.
    None,
    /// A `FIN_ACK`, for a `FIN` received but not acknowledged yet.
    Now,
    /// The remote has not sent its `FIN` yet: acknowledge it if it comes within `timeout`.
    OnRemoteFin { timeout: Duration },
}
