//! The PROXY protocol (HAProxy's; version 1, text, and version 2, binary) on
//! TCP listeners behind a layer-4 load balancer (AWS NLB, HAProxy in `mode
//! tcp`, ...): the balancer opens the connection, so its address is the one
//! the socket sees, and it sends the client's address in a header before
//! the client's first byte (before TLS). A listener with `proxy_protocol`
//! requires that header on every connection, as nginx's `listen ...
//! proxy_protocol` and HAProxy's `accept-proxy` do, and takes the client's
//! address from it for everything that names the client: its connection
//! cap, its throttle, `X-Forwarded-For`, the access log.
//!
//! Parsing is the `ppp` crate's; here only the reading: at most
//! [`MAX_HEADER`] bytes, and the bytes read past the header (the start of
//! the TLS handshake, when the balancer sent both in one segment) are given
//! back in front of the stream ([`Prefixed`]).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use ipnet::IpNet;
use ppp::{HeaderResult, PartialResult, v1, v2};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

use crate::NetError;

/// Longest header accepted (bytes): a v1 header takes 107 at most, a v2
/// header 16 and its addresses and TLVs (a balancer's few: an AWS VPC
/// endpoint id takes 25); more is refused.
pub const MAX_HEADER: usize = 4096;

/// Longest v1 header, its CR LF included (the protocol's 107 bytes).
const V1_MAX: usize = 107;

/// A listener's PROXY protocol setting: which peers (load balancers) may
/// connect and send the header; empty: any peer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProxyProtocol {
    pub from: Vec<IpNet>,
}

impl ProxyProtocol {
    /// Whether `peer` may send a header (the socket's own peer address).
    pub fn allows(&self, peer: IpAddr) -> bool {
        let peer = match peer {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(peer, IpAddr::V4),
            v4 => v4,
        };
        self.from.is_empty() || self.from.iter().any(|net| net.contains(&peer))
    }
}

/// What a header said of its connection.
/// The client, and the address it connected to (the balancer's); `None`
/// for a connection of the balancer's own (v2 `LOCAL`, v1 `UNKNOWN`:
/// health checks), which is served as the socket's.
pub type Proxied = Option<(SocketAddr, SocketAddr)>;

/// Reads the header from `stream`: what it says, and the bytes read past it.
/// Fails on a malformed header, one longer than [`MAX_HEADER`], a non-TCP
/// one (UDP, Unix sockets) and a stream that ends first.
pub async fn read_header<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<(Proxied, Bytes), NetError> {
    let mut buf = BytesMut::with_capacity(256);
    loop {
        // At most what completes the largest header allowed: the balancer's
        // first segment may carry the client's bytes too, kept for TLS.
        let room = (MAX_HEADER + 1).saturating_sub(buf.len()).min(1024);
        let mut chunk = (&mut *stream).take(room as u64);
        let read = chunk
            .read_buf(&mut buf)
            .await
            .map_err(|e| NetError::Proxy(format!("reading the header: {e}")))?;
        match parse(&buf)? {
            // A copy: the buffer's whole allocation would otherwise live as
            // long as the connection.
            Some((proxied, len)) => return Ok((proxied, Bytes::copy_from_slice(&buf[len..]))),
            None if read == 0 => {
                return Err(NetError::Proxy(
                    "the connection ended before its PROXY header did".into(),
                ));
            }
            None if buf.len() > MAX_HEADER => return Err(too_long()),
            None => {}
        }
    }
}

/// The header at the start of `buf` and its length; `None` while it may
/// still complete.
fn parse(buf: &[u8]) -> Result<Option<(Proxied, usize)>, NetError> {
    // A v1 header is whole at its LF: `ppp` takes one cut between its CR
    // and LF for a malformed header, and one missing an address or port
    // for an incomplete one, whatever follows.
    let v1 = buf.starts_with(&b"PROXY"[..buf.len().min(5)]);
    let lf = buf.iter().position(|&b| b == b'\n');
    if v1 && lf.is_none() && buf.len() < V1_MAX {
        return Ok(None);
    }
    // A v2 header says its length in its first 16 bytes: one that claims
    // more than we take is refused at once, not waited for.
    if v2_length(buf).is_some_and(|len| len > MAX_HEADER) {
        return Err(too_long());
    }
    let parsed = HeaderResult::parse(buf);
    if parsed.is_incomplete() {
        return match (v1, lf) {
            (true, Some(_)) => Err(NetError::Proxy(
                "bad PROXY header: a v1 header without its addresses and ports".into(),
            )),
            _ => Ok(None),
        };
    }
    let malformed = |e: &dyn std::fmt::Display| NetError::Proxy(format!("bad PROXY header: {e}"));
    match parsed {
        HeaderResult::V1(Ok(h)) => {
            let addresses = match h.addresses {
                v1::Addresses::Unknown => None,
                v1::Addresses::Tcp4(a) => Some(four(&a)),
                v1::Addresses::Tcp6(a) => Some(six(&a)),
            };
            Ok(Some((addresses, h.header.len())))
        }
        HeaderResult::V2(Ok(h)) => {
            let len = h.len();
            if h.command == v2::Command::Local {
                return Ok(Some((None, len)));
            }
            if h.protocol != v2::Protocol::Stream {
                return Err(NetError::Proxy(format!(
                    "PROXY header of a {:?} connection on a TCP listener",
                    h.protocol
                )));
            }
            let addresses = match h.addresses {
                v2::Addresses::IPv4(a) => Some(four(&a)),
                v2::Addresses::IPv6(a) => Some(six(&a)),
                v2::Addresses::Unspecified => None,
                v2::Addresses::Unix(_) => {
                    return Err(NetError::Proxy(
                        "PROXY header of a Unix socket on a TCP listener".into(),
                    ));
                }
            };
            Ok(Some((addresses, len)))
        }
        HeaderResult::V1(Err(e)) => Err(malformed(&e)),
        HeaderResult::V2(Err(e)) => Err(malformed(&e)),
    }
}

/// The whole length a v2 header at the start of `buf` declares, once its
/// first 16 bytes are in.
fn v2_length(buf: &[u8]) -> Option<usize> {
    let fixed = buf.get(..16)?;
    let declared = u16::from_be_bytes([fixed[14], fixed[15]]);
    fixed
        .starts_with(v2::PROTOCOL_PREFIX)
        .then(|| 16 + usize::from(declared))
}

fn too_long() -> NetError {
    NetError::Proxy(format!("PROXY header longer than {MAX_HEADER} bytes"))
}

/// A header's (source, destination) addresses (v1 and v2 share the types).
fn four(a: &v1::IPv4) -> (SocketAddr, SocketAddr) {
    (
        SocketAddr::from((a.source_address, a.source_port)),
        SocketAddr::from((a.destination_address, a.destination_port)),
    )
}

/// [`four`] for IPv6.
fn six(a: &v1::IPv6) -> (SocketAddr, SocketAddr) {
    (
        SocketAddr::from((a.source_address, a.source_port)),
        SocketAddr::from((a.destination_address, a.destination_port)),
    )
}

/// A stream that yields `prefix` before what `inner` reads; writes go to
/// `inner`.
#[derive(Debug)]
pub struct Prefixed<S> {
    prefix: Bytes,
    inner: S,
}

impl<S> Prefixed<S> {
    pub fn new(prefix: Bytes, inner: S) -> Self {
        Prefixed { prefix, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.prefix.has_remaining() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            if !self.prefix.has_remaining() {
                self.prefix = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// A v2 header of `source` to `destination` over `protocol`, with a
    /// no-op TLV of `tlv` bytes.
    fn v2_header(source: &str, destination: &str, protocol: v2::Protocol, tlv: usize) -> Vec<u8> {
        let addresses: (SocketAddr, SocketAddr) =
            (source.parse().unwrap(), destination.parse().unwrap());
        v2::Builder::with_addresses(
            v2::Version::Two as u8 | v2::Command::Proxy as u8,
            protocol,
            addresses,
        )
        .write_tlv(v2::Type::NoOp, &vec![0; tlv])
        .and_then(v2::Builder::build)
        .unwrap()
    }

    /// Reads a header from `bytes` sent in `pieces` pieces, then the rest
    /// of the stream after it (from the header's leftover and the stream).
    async fn read(bytes: &[u8], pieces: usize) -> Result<(Proxied, Vec<u8>), NetError> {
        let (mut tx, mut rx) = tokio::io::duplex(64 * 1024);
        let step = bytes.len().div_ceil(pieces).max(1);
        let owned = bytes.to_vec();
        let writer = tokio::spawn(async move {
            for piece in owned.chunks(step) {
                tx.write_all(piece).await.unwrap();
                tokio::task::yield_now().await;
            }
        });
        let out = read_header(&mut rx).await;
        writer.await.unwrap();
        let (proxied, rest) = out?;
        let mut after = Vec::new();
        Prefixed::new(rest, rx)
            .read_to_end(&mut after)
            .await
            .unwrap();
        Ok((proxied, after))
    }

    #[tokio::test]
    async fn v1_and_v2_headers_name_the_client_and_keep_what_follows() {
        let client: SocketAddr = "203.0.113.7:51000".parse().unwrap();
        let vip: SocketAddr = "198.51.100.1:443".parse().unwrap();
        let six: SocketAddr = "[2001:db8::7]:51000".parse().unwrap();
        let six_vip: SocketAddr = "[2001:db8::1]:443".parse().unwrap();
        let hello = b"\x16\x03\x01\x02\x00";
        let cases = [
            (
                b"PROXY TCP4 203.0.113.7 198.51.100.1 51000 443\r\n".to_vec(),
                (client, vip),
            ),
            (
                b"PROXY TCP6 2001:db8::7 2001:db8::1 51000 443\r\n".to_vec(),
                (six, six_vip),
            ),
            (
                v2_header(
                    "203.0.113.7:51000",
                    "198.51.100.1:443",
                    v2::Protocol::Stream,
                    25,
                ),
                (client, vip),
            ),
            (
                v2_header(
                    "[2001:db8::7]:51000",
                    "[2001:db8::1]:443",
                    v2::Protocol::Stream,
                    25,
                ),
                (six, six_vip),
            ),
        ];
        for (header, addresses) in cases {
            let bytes = [header.as_slice(), hello].concat();
            // In one segment with the client's first bytes, or a byte at a time.
            for pieces in [1, 3, bytes.len()] {
                let (proxied, after) = read(&bytes, pieces).await.unwrap();
                assert_eq!(proxied, Some(addresses), "{pieces} pieces");
                assert_eq!(after, hello, "{pieces} pieces");
            }
        }
    }

    #[tokio::test]
    async fn a_balancers_own_connection_keeps_the_sockets_address() {
        let (proxied, _) = read(b"PROXY UNKNOWN\r\n", 1).await.unwrap();
        assert_eq!(proxied, None);
        let local = v2::Builder::new(
            v2::Version::Two as u8 | v2::Command::Local as u8,
            v2::AddressFamily::Unspecified as u8 | v2::Protocol::Unspecified as u8,
        )
        .build()
        .unwrap();
        let (proxied, after) = read(&local, 1).await.unwrap();
        assert_eq!((proxied, after.len()), (None, 0));
    }

    #[tokio::test]
    async fn bad_headers_are_refused_with_their_reason() {
        let long = [b"PROXY TCP4 ".as_slice(), &[b'1'; 200]].concat();
        let udp = v2_header(
            "203.0.113.7:5",
            "198.51.100.1:443",
            v2::Protocol::Datagram,
            0,
        );
        let huge = v2_header(
            "203.0.113.7:5",
            "198.51.100.1:443",
            v2::Protocol::Stream,
            5000,
        );
        let claims_too_much = {
            let mut h = v2_header("203.0.113.7:5", "198.51.100.1:443", v2::Protocol::Stream, 0);
            h[14..16].copy_from_slice(&u16::MAX.to_be_bytes());
            h
        };
        let cases: [(&[u8], &str); 10] = [
            // Without their addresses or ports: refused at their LF, not
            // waited on until the stream ends.
            (b"PROXY TCP4\r\n\x16\x03\x01", "bad PROXY header"),
            (
                b"PROXY TCP4 203.0.113.7 198.51.100.1\r\n\x16",
                "bad PROXY header",
            ),
            (
                b"PROXY TCP4 203.0.113.7 198.51.100.1 51000\r\n",
                "bad PROXY header",
            ),
            // A v2 header that claims 64 KiB, before any of it came.
            (&claims_too_much[..16], "longer than 4096 bytes"),
            (
                b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
                "bad PROXY header",
            ),
            (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", "bad PROXY header"),
            (&long, "bad PROXY header"),
            (&udp, "of a Datagram connection"),
            (&huge, "longer than 4096 bytes"),
            (b"PROXY TCP4 203.0.113.7", "ended before its PROXY header"),
        ];
        for (bytes, why) in cases {
            let err = read(bytes, 1).await.unwrap_err().to_string();
            assert!(err.contains(why), "{err} (expected: {why})");
        }
    }

    #[test]
    fn only_listed_balancers_may_send_a_header() {
        let any = ProxyProtocol::default();
        assert!(any.allows("192.0.2.1".parse().unwrap()));
        let listed = ProxyProtocol {
            from: vec!["10.0.0.0/8".parse().unwrap(), "fd00::/8".parse().unwrap()],
        };
        assert!(listed.allows("10.1.2.3".parse().unwrap()));
        assert!(listed.allows("::ffff:10.1.2.3".parse().unwrap()));
        assert!(listed.allows("fd12::1".parse().unwrap()));
        assert!(!listed.allows("192.0.2.1".parse().unwrap()));
    }
}
