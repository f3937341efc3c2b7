//! Frame-order checks for one stream, sans-IO.
//!
//! A bidirectional QUIC stream carries two independent halves; each side
//! keeps one [`HalfStream`] per half it *receives* (and may keep one for the
//! half it sends, to catch its own bugs). The control stream is checked by
//! [`ControlStream`].
//!
//! ```text
//! request stream, request half:    RequestHead  BodyChunk*  (End | Reset)
//! request stream, response half:   ResponseHead BodyChunk*  (End | Reset)
//! websocket stream, opener half:   WsOpen       WsMessage*  (WsClose | Reset)
//! websocket stream, acceptor half: ResponseHead WsMessage*  (WsClose | Reset)
//! either half may be aborted by Reset before its head.
//! ```

use crate::error::ProtoError;
use crate::frame::FrameKind;
use crate::preface::StreamKind;

/// Which half of a bidirectional stream: the one the opener (PoP) sends or
/// the one the acceptor (origin) sends back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    Request,
    Response,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Head,
    Body,
    Closed,
}

/// Order checker for one half of a request or WebSocket stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HalfStream {
    websocket: bool,
    direction: Direction,
    phase: Phase,
}

impl HalfStream {
    /// Checker for one half of a forwarded-request stream.
    pub fn request(direction: Direction) -> Self {
        HalfStream {
            websocket: false,
            direction,
            phase: Phase::Head,
        }
    }

    /// Checker for one half of a WebSocket stream.
    pub fn websocket(direction: Direction) -> Self {
        HalfStream {
            websocket: true,
            ..Self::request(direction)
        }
    }

    /// The stream kind this checker is for.
    pub fn stream_kind(&self) -> StreamKind {
        if self.websocket {
            StreamKind::WebSocket
        } else {
            StreamKind::Request
        }
    }

    /// Accepts the next frame of this half, or says what was expected.
    pub fn on_frame(&mut self, got: FrameKind) -> Result<(), ProtoError> {
        let next = match (self.phase, got) {
            (Phase::Head, k) if k == self.head_kind() => Phase::Body,
            (Phase::Head | Phase::Body, FrameKind::Reset) => Phase::Closed,
            (Phase::Body, k) if k == self.data_kind() => Phase::Body,
            (Phase::Body, k) if k == self.end_kind() => Phase::Closed,
            _ => {
                return Err(ProtoError::UnexpectedFrame {
                    expected: self.expected(),
                    got,
                });
            }
        };
        self.phase = next;
        Ok(())
    }

    /// The half ended (QUIC FIN). An error means the peer stopped before its
    /// terminating frame: for a response, the body is truncated.
    pub fn on_finish(&self) -> Result<(), ProtoError> {
        if self.is_closed() {
            Ok(())
        } else {
            Err(ProtoError::UnexpectedEndOfStream {
                expected: self.expected(),
            })
        }
    }

    /// Whether the terminating frame (End, WsClose or Reset) was seen.
    pub fn is_closed(&self) -> bool {
        self.phase == Phase::Closed
    }

    /// Whether the head was seen (body frames may follow).
    pub fn has_head(&self) -> bool {
        self.phase != Phase::Head
    }

    fn head_kind(&self) -> FrameKind {
        match (self.websocket, self.direction) {
            (false, Direction::Request) => FrameKind::RequestHead,
            (true, Direction::Request) => FrameKind::WsOpen,
            (_, Direction::Response) => FrameKind::ResponseHead,
        }
    }

    fn data_kind(&self) -> FrameKind {
        if self.websocket {
            FrameKind::WsMessage
        } else {
            FrameKind::BodyChunk
        }
    }

    fn end_kind(&self) -> FrameKind {
        if self.websocket {
            FrameKind::WsClose
        } else {
            FrameKind::End
        }
    }

    /// What may come next, as a phrase for the error message.
    pub fn expected(&self) -> &'static str {
        match (self.phase, self.websocket, self.direction) {
            (Phase::Head, false, Direction::Request) => "RequestHead or Reset",
            (Phase::Head, true, Direction::Request) => "WsOpen or Reset",
            (Phase::Head, _, Direction::Response) => "ResponseHead or Reset",
            (Phase::Body, false, _) => "BodyChunk, End or Reset",
            (Phase::Body, true, _) => "WsMessage, WsClose or Reset",
            (Phase::Closed, _, _) => "nothing (half already closed)",
        }
    }
}

/// Which end of the link a [`ControlStream`] checker runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ControlSide {
    /// Dialed the link and sends `Hello`; receives `HelloAck` first.
    Opener,
    /// Accepted the link; receives `Hello` first.
    Acceptor,
}

/// Order checker for the frames *received* on the control stream: the
/// handshake frame first, then any control frame except another handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ControlStream {
    side: ControlSide,
    handshaken: bool,
}

impl ControlStream {
    pub fn new(side: ControlSide) -> Self {
        ControlStream {
            side,
            handshaken: false,
        }
    }

    /// Accepts the next received frame, or says what was expected.
    pub fn on_frame(&mut self, got: FrameKind) -> Result<(), ProtoError> {
        let handshake = match self.side {
            ControlSide::Opener => FrameKind::HelloAck,
            ControlSide::Acceptor => FrameKind::Hello,
        };
        let ok = if self.handshaken {
            got.allowed_on(StreamKind::Control)
                && !matches!(got, FrameKind::Hello | FrameKind::HelloAck)
        } else {
            got == handshake
        };
        if !ok {
            return Err(ProtoError::UnexpectedFrame {
                expected: self.expected(),
                got,
            });
        }
        self.handshaken = true;
        Ok(())
    }

    /// Whether the handshake frame has been received.
    pub fn is_handshaken(&self) -> bool {
        self.handshaken
    }

    fn expected(&self) -> &'static str {
        match (self.handshaken, self.side) {
            (false, ControlSide::Opener) => "HelloAck",
            (false, ControlSide::Acceptor) => "Hello",
            (true, _) => "a control frame other than Hello/HelloAck",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use FrameKind as K;

    fn run(mut half: HalfStream, kinds: &[FrameKind]) -> Result<HalfStream, ProtoError> {
        for k in kinds {
            half.on_frame(*k)?;
        }
        Ok(half)
    }

    #[test]
    fn request_half_accepts_valid_orders() {
        let req = HalfStream::request(Direction::Request);
        for seq in [
            &[K::RequestHead, K::End][..],
            &[K::RequestHead, K::BodyChunk, K::BodyChunk, K::End],
            &[K::RequestHead, K::BodyChunk, K::Reset],
            &[K::Reset],
        ] {
            let half = run(req, seq).unwrap();
            assert!(half.is_closed());
            half.on_finish().unwrap();
        }
    }

    #[test]
    fn response_half_accepts_valid_orders() {
        let resp = HalfStream::request(Direction::Response);
        let half = run(resp, &[K::ResponseHead, K::BodyChunk, K::End]).unwrap();
        assert!(half.is_closed());
        assert!(run(resp, &[K::Reset]).unwrap().is_closed());
    }

    #[test]
    fn violations_name_what_was_expected() {
        let req = HalfStream::request(Direction::Request);
        let err = run(req, &[K::BodyChunk]).unwrap_err();
        assert_eq!(
            err,
            ProtoError::UnexpectedFrame {
                expected: "RequestHead or Reset",
                got: K::BodyChunk
            }
        );
        let err = run(req, &[K::RequestHead, K::RequestHead]).unwrap_err();
        assert!(matches!(
            err,
            ProtoError::UnexpectedFrame {
                got: K::RequestHead,
                ..
            }
        ));
        let err = run(req, &[K::ResponseHead]).unwrap_err();
        assert!(matches!(
            err,
            ProtoError::UnexpectedFrame {
                got: K::ResponseHead,
                ..
            }
        ));
        let err = run(req, &[K::RequestHead, K::End, K::BodyChunk]).unwrap_err();
        assert_eq!(
            err,
            ProtoError::UnexpectedFrame {
                expected: "nothing (half already closed)",
                got: K::BodyChunk
            }
        );
        let resp = HalfStream::request(Direction::Response);
        assert!(run(resp, &[K::End]).is_err());
        assert!(run(resp, &[K::ResponseHead, K::Ping]).is_err());
    }

    #[test]
    fn fin_before_end_is_truncation() {
        let half = run(
            HalfStream::request(Direction::Response),
            &[K::ResponseHead, K::BodyChunk],
        )
        .unwrap();
        assert!(half.has_head());
        assert_eq!(
            half.on_finish(),
            Err(ProtoError::UnexpectedEndOfStream {
                expected: "BodyChunk, End or Reset"
            })
        );
        let fresh = HalfStream::request(Direction::Request);
        assert!(!fresh.has_head());
        assert!(fresh.on_finish().is_err());
    }

    #[test]
    fn websocket_halves() {
        let open = HalfStream::websocket(Direction::Request);
        assert_eq!(open.stream_kind(), StreamKind::WebSocket);
        run(open, &[K::WsOpen, K::WsMessage, K::WsMessage, K::WsClose]).unwrap();
        let back = HalfStream::websocket(Direction::Response);
        run(back, &[K::ResponseHead, K::WsMessage, K::Reset]).unwrap();
        assert!(run(open, &[K::WsOpen, K::BodyChunk]).is_err());
        assert!(run(open, &[K::RequestHead]).is_err());
        assert!(run(back, &[K::ResponseHead, K::End]).is_err());
    }

    #[test]
    fn every_kind_is_checked_in_every_phase() {
        // Each phase accepts exactly its kinds: every other kind is refused.
        let phases: [(&[K], &[K]); 3] = [
            (&[], &[K::RequestHead, K::Reset]),
            (&[K::RequestHead], &[K::BodyChunk, K::End, K::Reset]),
            (&[K::RequestHead, K::End], &[]),
        ];
        for (start, expected) in phases {
            let half = run(HalfStream::request(Direction::Request), start).unwrap();
            let accepted: Vec<K> = FrameKind::ALL
                .into_iter()
                .filter(|kind| {
                    let mut h = half;
                    h.on_frame(*kind).is_ok()
                })
                .collect();
            assert_eq!(accepted, expected, "after {start:?}");
        }
    }

    #[test]
    fn control_stream_handshake_first() {
        let mut acc = ControlStream::new(ControlSide::Acceptor);
        assert!(acc.on_frame(K::Ping).is_err());
        acc.on_frame(K::Hello).unwrap();
        assert!(acc.is_handshaken());
        acc.on_frame(K::Ping).unwrap();
        acc.on_frame(K::UsageReport).unwrap();
        assert!(acc.on_frame(K::Hello).is_err());
        assert!(acc.on_frame(K::BodyChunk).is_err());

        let mut open = ControlStream::new(ControlSide::Opener);
        assert_eq!(
            open.on_frame(K::Hello),
            Err(ProtoError::UnexpectedFrame {
                expected: "HelloAck",
                got: K::Hello
            })
        );
        open.on_frame(K::HelloAck).unwrap();
        open.on_frame(K::ConfigSnapshot).unwrap();
        open.on_frame(K::ConfigDelta).unwrap();
        assert!(open.on_frame(K::HelloAck).is_err());
        acc.on_frame(K::ConfigRequest).unwrap();
    }
}
