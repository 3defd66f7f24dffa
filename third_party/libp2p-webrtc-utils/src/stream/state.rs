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

use std::io;

use bytes::Bytes;

use crate::proto::Flag;

#[derive(Debug, Copy, Clone)]
pub(crate) enum State {
    Open,
    ReadClosed,
    WriteClosed,
    ClosingRead {
        /// Whether the write side of our channel was already closed.
        write_closed: bool,
        inner: Closing,
    },
    ClosingWrite {
        /// Whether the write side of our channel was already closed.
        read_closed: bool,
        inner: Closing,
    },
    BothClosed {
        reset: bool,
    },
}

/// Represents the state of closing one half (either read or write) of the connection.
///
/// Gracefully closing the read or write requires sending the `STOP_SENDING` or `FIN` flag
/// respectively and flushing the underlying connection. If the read half is closed already,
/// closing the write half also waits (bounded) for the remote's `FIN_ACK`.
#[derive(Debug, Copy, Clone)]
pub(crate) enum Closing {
    Requested,
    MessageSent,
    /// Write half only: our `FIN` is flushed, we wait for the remote's `FIN_ACK`.
    AwaitingFinAck,
    /// Write half only: the remote acknowledged our `FIN`, or we do not (or no longer) wait.
    FinAcked,
}

impl State {
    /// Performs a state transition for a flag contained in an inbound message.
    ///
    /// Returns whether the remote must be sent a `FIN_ACK` in reply (it sent a `FIN`).
    #[must_use = "a received FIN must be answered with a FIN_ACK"]
    pub(crate) fn handle_inbound_flag(&mut self, flag: Flag, buffer: &mut Bytes) -> bool {
        let current = *self;

        match (current, flag) {
            (Self::Open, Flag::FIN) => {
                *self = Self::ReadClosed;
            }
            (Self::WriteClosed, Flag::FIN) => {
                *self = Self::BothClosed { reset: false };
            }
            (
                Self::ClosingWrite {
                    read_closed: false,
                    inner,
                },
                Flag::FIN,
            ) => {
                *self = Self::ClosingWrite {
                    read_closed: true,
                    inner,
                };
            }
            (
                Self::ClosingWrite {
                    read_closed,
                    inner: Closing::MessageSent | Closing::AwaitingFinAck,
                },
                Flag::FIN_ACK,
            ) => {
                *self = Self::ClosingWrite {
                    read_closed,
                    inner: Closing::FinAcked,
                };
            }
            (Self::Open, Flag::STOP_SENDING) => {
                *self = Self::WriteClosed;
            }
            (Self::ReadClosed, Flag::STOP_SENDING) => {
                *self = Self::BothClosed { reset: false };
            }
            (_, Flag::RESET) => {
                buffer.clear();
                *self = Self::BothClosed { reset: true };
            }
            _ => {}
        }

        // "If a `FIN` flag is received the node SHOULD respond with a `FIN_ACK`."
        flag == Flag::FIN && !matches!(current, Self::BothClosed { reset: true })
    }

    pub(crate) fn write_closed(&mut self) {
        match self {
            State::ClosingWrite {
                read_closed: true,
                inner,
            } => {
                debug_assert!(!matches!(inner, Closing::Requested));

                *self = State::BothClosed { reset: false };
            }
            State::ClosingWrite {
                read_closed: false,
                inner,
            } => {
                debug_assert!(!matches!(inner, Closing::Requested));

                *self = State::WriteClosed;
            }
            State::Open
            | State::ReadClosed
            | State::WriteClosed
            | State::ClosingRead { .. }
            | State::BothClosed { .. } => {
                unreachable!("bad state machine impl")
            }
        }
    }

    pub(crate) fn close_write_message_sent(&mut self) {
        match self {
            State::ClosingWrite { inner, read_closed } => {
                debug_assert!(matches!(inner, Closing::Requested));

                *self = State::ClosingWrite {
                    read_closed: *read_closed,
                    inner: Closing::MessageSent,
                };
            }
            State::Open
            | State::ReadClosed
            | State::WriteClosed
            | State::ClosingRead { .. }
            | State::BothClosed { .. } => {
                unreachable!("bad state machine impl")
            }
        }
    }

    /// Our `FIN` is flushed. Wait for the remote's `FIN_ACK` only if our read half is closed:
    /// otherwise the application still reads and will see the `FIN_ACK` (a reader blocked on
    /// the same channel must not be starved), and `libp2p-webrtc` accepts the remote's new
    /// data channels only after the Noise handshake stream is closed.
    pub(crate) fn close_write_message_flushed(&mut self) {
        if let State::ClosingWrite {
            read_closed,
            inner: Closing::MessageSent,
        } = *self
        {
            *self = State::ClosingWrite {
                read_closed,
                inner: if read_closed {
                    Closing::AwaitingFinAck
                } else {
                    Closing::FinAcked
                },
            };
        }
    }

    /// Whether we sent and flushed a `FIN` and still wait for the remote's `FIN_ACK`.
    pub(crate) fn awaiting_fin_ack(&self) -> bool {
        matches!(
            self,
            State::ClosingWrite {
                inner: Closing::AwaitingFinAck,
                ..
            }
        )
    }

    /// Stop waiting for the `FIN_ACK` (timeout, channel closed, or unread data to hand over).
    pub(crate) fn stop_awaiting_fin_ack(&mut self) {
        if let State::ClosingWrite {
            read_closed,
            inner: Closing::AwaitingFinAck,
        } = *self
        {
            *self = State::ClosingWrite {
                read_closed,
                inner: Closing::FinAcked,
            };
        }
    }

    pub(crate) fn read_closed(&mut self) {
        match self {
            State::ClosingRead {
                write_closed: true,
                inner,
            } => {
                debug_assert!(matches!(inner, Closing::MessageSent));

                *self = State::BothClosed { reset: false };
            }
            State::ClosingRead {
                write_closed: false,
                inner,
            } => {
                debug_assert!(matches!(inner, Closing::MessageSent));

                *self = State::ReadClosed;
            }
            State::Open
            | State::ReadClosed
            | State::WriteClosed
            | State::ClosingWrite { .. }
            | State::BothClosed { .. } => {
                unreachable!("bad state machine impl")
            }
        }
    }

    pub(crate) fn close_read_message_sent(&mut self) {
        match self {
            State::ClosingRead {
                inner,
                write_closed,
            } => {
                debug_assert!(matches!(inner, Closing::Requested));

                *self = State::ClosingRead {
                    write_closed: *write_closed,
                    inner: Closing::MessageSent,
                };
            }
            State::Open
            | State::ReadClosed
            | State::WriteClosed
            | State::ClosingWrite { .. }
            | State::BothClosed { .. } => {
                unreachable!("bad state machine impl")
            }
        }
    }

    /// Whether we should read from the stream in the [`futures::AsyncWrite`] implementation.
    ///
    /// This is necessary for read-closed streams because we would otherwise
    /// not read any more flags from the socket.
    pub(crate) fn read_flags_in_async_write(&self) -> bool {
        matches!(self, Self::ReadClosed)
    }

    /// Acts as a "barrier" for [`futures::AsyncRead::poll_read`].
    pub(crate) fn read_barrier(&self) -> io::Result<()> {
        use State::*;

        let kind = match self {
            Open
            | WriteClosed
            | ClosingWrite {
                read_closed: false, ..
            } => return Ok(()),
            ClosingWrite {
                read_closed: true, ..
            }
            | ReadClosed
            | ClosingRead { .. }
            | BothClosed { reset: false } => io::ErrorKind::BrokenPipe,
            BothClosed { reset: true } => io::ErrorKind::ConnectionReset,
        };

        Err(kind.into())
    }

    /// Acts as a "barrier" for [`futures::AsyncWrite::poll_write`].
    pub(crate) fn write_barrier(&self) -> io::Result<()> {
        use State::*;

        let kind = match self {
            Open
            | ReadClosed
            | ClosingRead {
                write_closed: false,
                ..
            } => return Ok(()),
            ClosingRead {
                write_closed: true, ..
            }
            | WriteClosed
            | ClosingWrite { .. }
            | BothClosed { reset: false } => io::ErrorKind::BrokenPipe,
            BothClosed { reset: true } => io::ErrorKind::ConnectionReset,
        };

        Err(kind.into())
    }

    /// Acts as a "barrier" for [`futures::AsyncWrite::poll_close`].
    pub(crate) fn close_write_barrier(&mut self) -> io::Result<Option<Closing>> {
        loop {
            match &self {
                State::WriteClosed => return Ok(None),

                State::ClosingWrite { inner, .. } => return Ok(Some(*inner)),

                State::Open => {
                    *self = Self::ClosingWrite {
                        read_closed: false,
                        inner: Closing::Requested,
                    };
                }
                State::ReadClosed => {
                    *self = Self::ClosingWrite {
                        read_closed: true,
                        inner: Closing::Requested,
                    };
                }

                State::ClosingRead {
                    write_closed: true, ..
                }
                | State::BothClosed { reset: false } => {
                    return Err(io::ErrorKind::BrokenPipe.into())
                }

                State::ClosingRead {
                    write_closed: false,
                    ..
                } => {
                    return Err(io::Error::new(
                        io::ErrorKind::Other,
                        "cannot close read half while closing write half",
                    ))
                }

                State::BothClosed { reset: true } => {
                    return Err(io::ErrorKind::ConnectionReset.into())
                }
            }
        }
    }

    /// Acts as a "barrier" for [`Stream::poll_close_read`](super::Stream::poll_close_read).
    pub(crate) fn close_read_barrier(&mut self) -> io::Result<Option<Closing>> {
        loop {
            match self {
                State::ReadClosed => return Ok(None),

                State::ClosingRead { inner, .. } => return Ok(Some(*inner)),

                State::Open => {
                    *self = Self::ClosingRead {
                        write_closed: false,
                        inner: Closing::Requested,
                    };
                }
                State::WriteClosed => {
                    *self = Self::ClosingRead {
                        write_closed: true,
                        inner: Closing::Requested,
                    };
                }

                State::ClosingWrite {
                    read_closed: true, ..
                }
                | State::BothClosed { reset: false } => {
                    return Err(io::ErrorKind::BrokenPipe.into())
                }

                State::ClosingWrite {
                    read_closed: false, ..
                } => {
                    return Err(io::Error::new(
                        io::ErrorKind::Other,
                        "cannot close write half while closing read half",
                    ))
                }

                State::BothClosed { reset: true } => {
                    return Err(io::ErrorKind::ConnectionReset.into())
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(unused_must_use)]

    use std::io::ErrorKind;

    use super::*;

    #[test]
    fn cannot_read_after_receiving_fin() {
        let mut open = State::Open;

        open.handle_inbound_flag(Flag::FIN, &mut Bytes::default());
        let error = open.read_barrier().unwrap_err();

        assert_eq!(error.kind(), ErrorKind::BrokenPipe)
    }

    #[test]
    fn cannot_read_after_closing_read() {
        let mut open = State::Open;

        open.close_read_barrier().unwrap();
        open.close_read_message_sent();
        open.read_closed();
        let error = open.read_barrier().unwrap_err();

        assert_eq!(error.kind(), ErrorKind::BrokenPipe)
    }

    #[test]
    fn cannot_write_after_receiving_stop_sending() {
        let mut open = State::Open;

        open.handle_inbound_flag(Flag::STOP_SENDING, &mut Bytes::default());
        let error = open.write_barrier().unwrap_err();

        assert_eq!(error.kind(), ErrorKind::BrokenPipe)
    }

    #[test]
    fn cannot_write_after_closing_write() {
        let mut open = State::Open;

        open.close_write_barrier().unwrap();
        open.close_write_message_sent();
        open.write_closed();
        let error = open.write_barrier().unwrap_err();

        assert_eq!(error.kind(), ErrorKind::BrokenPipe)
    }

    #[test]
    fn everything_broken_after_receiving_reset() {
        let mut open = State::Open;

        open.handle_inbound_flag(Flag::RESET, &mut Bytes::default());
        let error1 = open.read_barrier().unwrap_err();
        let error2 = open.write_barrier().unwrap_err();
        let error3 = open.close_write_barrier().unwrap_err();
        let error4 = open.close_read_barrier().unwrap_err();

        assert_eq!(error1.kind(), ErrorKind::ConnectionReset);
        assert_eq!(error2.kind(), ErrorKind::ConnectionReset);
        assert_eq!(error3.kind(), ErrorKind::ConnectionReset);
        assert_eq!(error4.kind(), ErrorKind::ConnectionReset);
    }

    #[test]
    fn should_read_flags_in_async_write_after_read_closed() {
        let mut open = State::Open;

        open.handle_inbound_flag(Flag::FIN, &mut Bytes::default());

        assert!(open.read_flags_in_async_write())
    }

    #[test]
    fn cannot_read_or_write_after_receiving_fin_and_stop_sending() {
        let mut open = State::Open;

        open.handle_inbound_flag(Flag::FIN, &mut Bytes::default());
        open.handle_inbound_flag(Flag::STOP_SENDING, &mut Bytes::default());

        let error1 = open.read_barrier().unwrap_err();
        let error2 = open.write_barrier().unwrap_err();

        assert_eq!(error1.kind(), ErrorKind::BrokenPipe);
        assert_eq!(error2.kind(), ErrorKind::BrokenPipe);
    }

    #[test]
    fn can_read_after_closing_write() {
        let mut open = State::Open;

        open.close_write_barrier().unwrap();
        open.close_write_message_sent();
        open.write_closed();

        open.read_barrier().unwrap();
    }

    #[test]
    fn can_write_after_closing_read() {
        let mut open = State::Open;

        open.close_read_barrier().unwrap();
        open.close_read_message_sent();
        open.read_closed();

        open.write_barrier().unwrap();
    }

    #[test]
    fn cannot_write_after_starting_close() {
        let mut open = State::Open;

        open.close_write_barrier().expect("to close in open");
        let error = open.write_barrier().unwrap_err();

        assert_eq!(error.kind(), ErrorKind::BrokenPipe);
    }

    #[test]
    fn cannot_read_after_starting_close() {
        let mut open = State::Open;

        open.close_read_barrier().expect("to close in open");
        let error = open.read_barrier().unwrap_err();

        assert_eq!(error.kind(), ErrorKind::BrokenPipe);
    }

    #[test]
    fn can_read_in_open() {
        let open = State::Open;

        let result = open.read_barrier();

        result.unwrap();
    }

    #[test]
    fn can_write_in_open() {
        let open = State::Open;

        let result = open.write_barrier();

        result.unwrap();
    }

    #[test]
    fn write_close_barrier_returns_ok_when_closed() {
        let mut open = State::Open;

        open.close_write_barrier().unwrap();
        open.close_write_message_sent();
        open.write_closed();

        let maybe = open.close_write_barrier().unwrap();

        assert!(maybe.is_none())
    }

    #[test]
    fn read_close_barrier_returns_ok_when_closed() {
        let mut open = State::Open;

        open.close_read_barrier().unwrap();
        open.close_read_message_sent();
        open.read_closed();

        let maybe = open.close_read_barrier().unwrap();

        assert!(maybe.is_none())
    }

    #[test]
    fn reset_flag_clears_buffer() {
        let mut open = State::Open;
        let mut buffer = Bytes::copy_from_slice(b"foobar");

        open.handle_inbound_flag(Flag::RESET, &mut buffer);

        assert!(buffer.is_empty());
    }

    fn closing_write_awaiting_fin_ack() -> State {
        let mut state = State::ReadClosed;
        state.close_write_barrier().unwrap();
        state.close_write_message_sent();
        state.close_write_message_flushed();
        state
    }

    #[test]
    fn fin_must_be_acknowledged_unless_reset() {
        let mut closing_read = State::Open;
        closing_read.close_read_barrier().unwrap();

        for mut state in [
            State::Open,
            State::ReadClosed,
            State::WriteClosed,
            closing_read,
            closing_write_awaiting_fin_ack(),
            State::BothClosed { reset: false },
        ] {
            assert!(
                state.handle_inbound_flag(Flag::FIN, &mut Bytes::default()),
                "no FIN_ACK for a FIN received in {state:?}"
            );
        }

        let mut reset = State::BothClosed { reset: true };
        assert!(!reset.handle_inbound_flag(Flag::FIN, &mut Bytes::default()));
    }

    #[test]
    fn only_fin_must_be_acknowledged() {
        for flag in [Flag::STOP_SENDING, Flag::RESET, Flag::FIN_ACK] {
            let mut open = State::Open;
            assert!(!open.handle_inbound_flag(flag, &mut Bytes::default()));
        }
    }

    #[test]
    fn unsolicited_fin_ack_changes_nothing() {
        let mut open = State::Open;

        open.handle_inbound_flag(Flag::FIN_ACK, &mut Bytes::default());

        open.read_barrier().unwrap();
        open.write_barrier().unwrap();
        assert!(open.close_write_barrier().unwrap().is_some());
    }

    #[test]
    fn closing_write_waits_for_fin_ack_once_read_half_closed() {
        let mut state = closing_write_awaiting_fin_ack();

        assert!(state.awaiting_fin_ack());
        assert!(matches!(
            state.close_write_barrier().unwrap(),
            Some(Closing::AwaitingFinAck)
        ));
        state.write_barrier().unwrap_err();

        state.handle_inbound_flag(Flag::FIN_ACK, &mut Bytes::default());

        assert!(!state.awaiting_fin_ack());
        assert!(matches!(
            state.close_write_barrier().unwrap(),
            Some(Closing::FinAcked)
        ));
        state.write_closed();
        assert!(matches!(state, State::BothClosed { reset: false }));
    }

    #[test]
    fn closing_write_does_not_wait_for_fin_ack_while_reading() {
        let mut state = State::Open;
        state.close_write_barrier().unwrap();
        state.close_write_message_sent();
        state.close_write_message_flushed();

        assert!(!state.awaiting_fin_ack());
        assert!(matches!(
            state.close_write_barrier().unwrap(),
            Some(Closing::FinAcked)
        ));
        state.write_closed();
        assert!(matches!(state, State::WriteClosed));
        assert!(state.close_write_barrier().unwrap().is_none());

        // The `FIN_ACK` arriving later changes nothing.
        state.handle_inbound_flag(Flag::FIN_ACK, &mut Bytes::default());
        assert!(matches!(state, State::WriteClosed));
        state.read_barrier().unwrap();
    }

    #[test]
    fn fin_ack_before_flush_completes_is_kept() {
        let mut state = State::Open;
        state.close_write_barrier().unwrap();
        state.close_write_message_sent();

        state.handle_inbound_flag(Flag::FIN_ACK, &mut Bytes::default());
        state.close_write_message_flushed();

        assert!(matches!(
            state.close_write_barrier().unwrap(),
            Some(Closing::FinAcked)
        ));
    }

    #[test]
    fn write_half_closes_without_fin_ack_after_timeout() {
        let mut state = closing_write_awaiting_fin_ack();

        state.stop_awaiting_fin_ack();

        assert!(!state.awaiting_fin_ack());
        state.write_closed();
        let error = state.write_barrier().unwrap_err();
        assert_eq!(error.kind(), ErrorKind::BrokenPipe);
    }

    #[test]
    fn fin_while_closing_write_closes_read_half() {
        let mut state = State::Open;
        state.close_write_barrier().unwrap();
        state.close_write_message_sent();

        assert!(state.handle_inbound_flag(Flag::FIN, &mut Bytes::default()));

        let error = state.read_barrier().unwrap_err();
        assert_eq!(error.kind(), ErrorKind::BrokenPipe);
        // The read half is closed now: wait for the `FIN_ACK`.
        state.close_write_message_flushed();
        assert!(state.awaiting_fin_ack());

        state.handle_inbound_flag(Flag::FIN_ACK, &mut Bytes::default());
        state.write_closed();

        assert!(matches!(state, State::BothClosed { reset: false }));
    }

    #[test]
    fn reset_while_awaiting_fin_ack() {
        let mut state = closing_write_awaiting_fin_ack();

        state.handle_inbound_flag(Flag::RESET, &mut Bytes::default());

        assert!(!state.awaiting_fin_ack());
        let error = state.close_write_barrier().unwrap_err();
        assert_eq!(error.kind(), ErrorKind::ConnectionReset);
    }
}
