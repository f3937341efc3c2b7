//! Feeds arbitrary bytes to the preface decoder, the frame decoder and the
//! stream-order checkers. Any panic is a bug: decoding must only ever return
//! `Ok(Some)`, `Ok(None)` or a `ProtoError`.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use portico_proto::stream::{Direction, HalfStream};
use portico_proto::{Codec, MIN_MAX_FRAME, decode_preface};

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else {
        return;
    };

    let mut buf = BytesMut::from(rest);
    let _ = decode_preface(&mut buf);

    // Deliver the input in two pieces, split where the first byte says, so
    // the "need more" path is exercised at arbitrary points.
    for codec in [
        Codec::new(),
        Codec::with_max_frame(MIN_MAX_FRAME).unwrap_or_default(),
    ] {
        let cut = usize::from(split).min(rest.len());
        let mut buf = BytesMut::from(&rest[..cut]);
        let mut half = HalfStream::request(Direction::Response);
        if drain(&codec, &mut buf, &mut half) {
            buf.extend_from_slice(&rest[cut..]);
            drain(&codec, &mut buf, &mut half);
        }
        let _ = half.on_finish();
    }
});

/// Decodes until the buffer runs dry (true) or an error (false).
fn drain(codec: &Codec, buf: &mut BytesMut, half: &mut HalfStream) -> bool {
    loop {
        match codec.decode(buf) {
            Ok(Some(frame)) => {
                let _ = half.on_frame(frame.kind());
            }
            Ok(None) => return true,
            Err(_) => return false,
        }
    }
}
