//! HTTP/3 written by hand over a raw quinn connection, for what no
//! well-behaved client sends (frames declaring more than a server should
//! buffer) and for what the h3 client does not show (the GOAWAY id).
#![allow(dead_code)]

use bytes::Bytes;

/// HTTP/3 frame types (RFC 9114 §7.2) and a reserved one (§7.2.8).
pub const DATA: u64 = 0x00;
pub const HEADERS: u64 = 0x01;
pub const SETTINGS: u64 = 0x04;
pub const GOAWAY: u64 = 0x07;
pub const RESERVED: u64 = 0x21;

/// HTTP/3 error codes (RFC 9114 §8.1).
pub const H3_FRAME_ERROR: u32 = 0x106;
pub const H3_EXCESSIVE_LOAD: u32 = 0x107;
pub const H3_REQUEST_REJECTED: u32 = 0x10b;
pub const H3_REQUEST_CANCELLED: u32 = 0x10c;

/// A QUIC varint in its shortest form (RFC 9000 §16).
pub fn varint(v: u64) -> Vec<u8> {
    match v {
        0..64 => vec![v as u8],
        64..16_384 => ((v as u16) | 0x4000).to_be_bytes().to_vec(),
        16_384..1_073_741_824 => ((v as u32) | 0x8000_0000).to_be_bytes().to_vec(),
        _ => (v | 0xc000_0000_0000_0000).to_be_bytes().to_vec(),
    }
}

/// A frame header: type and declared payload length.
pub fn frame_header(ty: u64, len: u64) -> Vec<u8> {
    let mut out = varint(ty);
    out.extend(varint(len));
    out
}

/// A whole frame.
pub fn frame(ty: u64, payload: &[u8]) -> Vec<u8> {
    let mut out = frame_header(ty, payload.len() as u64);
    out.extend_from_slice(payload);
    out
}

/// The start of a client's control stream: its type, an empty SETTINGS.
pub fn control_stream_start() -> Vec<u8> {
    let mut out = varint(0x00);
    out.extend(frame(SETTINGS, &[]));
    out
}

/// An HPACK/QPACK prefixed integer (RFC 7541 §5.1) after `first`'s flag bits.
fn prefixed(out: &mut Vec<u8>, first: u8, bits: u8, v: usize) {
    let max = (1usize << bits) - 1;
    if v < max {
        out.push(first | v as u8);
        return;
    }
    out.push(first | max as u8);
    let mut rest = v - max;
    while rest >= 128 {
        out.push((rest % 128) as u8 | 0x80);
        rest /= 128;
    }
    out.push(rest as u8);
}

/// A HEADERS frame of `fields`, QPACK-encoded without tables: every field a
/// literal with a literal name (RFC 9204 §4.5.6).
pub fn headers(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut block = vec![0x00, 0x00];
    for (name, value) in fields {
        prefixed(&mut block, 0x20, 3, name.len());
        block.extend_from_slice(name.as_bytes());
        prefixed(&mut block, 0x00, 7, value.len());
        block.extend_from_slice(value.as_bytes());
    }
    frame(HEADERS, &block)
}

/// The HEADERS frame of a request for `path` on `port`.
pub fn request(method: &str, path: &str, port: u16) -> Vec<u8> {
    let authority = format!("localhost:{port}");
    headers(&[
        (":method", method),
        (":scheme", "https"),
        (":authority", &authority),
        (":path", path),
    ])
}

/// Writes `chunk` again and again until the stream fails or `cap` bytes are
/// written: the bytes written (all within the credit the server granted,
/// which grows only as it reads) and the error if one ended it.
pub async fn flood(
    send: &mut quinn::SendStream,
    chunk: &[u8],
    cap: usize,
) -> (usize, Option<quinn::WriteError>) {
    let chunk = Bytes::copy_from_slice(chunk);
    let mut written = 0;
    while written < cap {
        match send.write_all(&chunk).await {
            Ok(()) => written += chunk.len(),
            Err(err) => return (written, Some(err)),
        }
    }
    (written, None)
}

/// Reads one varint from a stream.
pub async fn read_varint(recv: &mut quinn::RecvStream) -> Option<u64> {
    let mut first = [0u8; 1];
    recv.read_exact(&mut first).await.ok()?;
    let len = 1usize << (first[0] >> 6);
    let mut rest = [0u8; 7];
    recv.read_exact(&mut rest[..len - 1]).await.ok()?;
    let value = rest[..len - 1]
        .iter()
        .fold(u64::from(first[0] & 0x3f), |v, b| (v << 8) | u64::from(*b));
    Some(value)
}

/// Reads one frame from a stream: its type and payload.
pub async fn read_frame(recv: &mut quinn::RecvStream) -> Option<(u64, Vec<u8>)> {
    let ty = read_varint(recv).await?;
    let len = usize::try_from(read_varint(recv).await?).ok()?;
    let mut payload = vec![0u8; len];
    recv.read_exact(&mut payload).await.ok()?;
    Some((ty, payload))
}

/// The server's control stream, found among its unidirectional streams,
/// read past its type.
pub async fn server_control_stream(quic: &quinn::Connection) -> quinn::RecvStream {
    loop {
        let mut recv = quic.accept_uni().await.expect("a server stream");
        if read_varint(&mut recv).await == Some(0x00) {
            return recv;
        }
    }
}

/// Reads the server's control stream up to its first GOAWAY: the stream id in it.
pub async fn goaway_id(control: &mut quinn::RecvStream) -> Option<u64> {
    loop {
        let (ty, payload) = read_frame(control).await?;
        if ty == GOAWAY {
            let mut id = &payload[..];
            let first = *id.first()?;
            let len = 1usize << (first >> 6);
            id = id.get(..len)?;
            let value = id[1..]
                .iter()
                .fold(u64::from(first & 0x3f), |v, b| (v << 8) | u64::from(*b));
            return Some(value);
        }
    }
}
