//! A listener's `[listeners.quic]` table: the UDP side of an HTTP/3 listener
//! (port, congestion controller, QUIC transport limits).

use std::ops::RangeInclusive;
use std::time::Duration;

use serde::Deserialize;

use crate::error::Diag;
use crate::file::S;

/// quinn's congestion controllers, as written in a node file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Congestion {
    #[default]
    Cubic,
    Bbr,
    #[serde(alias = "new-reno", alias = "newreno")]
    NewReno,
}

impl Congestion {
    pub fn as_str(self) -> &'static str {
        match self {
            Congestion::Cubic => "cubic",
            Congestion::Bbr => "bbr",
            Congestion::NewReno => "new_reno",
        }
    }
}

/// The file form of `[listeners.quic]`: only the keys written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct QuicFile {
    pub port: Option<S<u16>>,
    pub congestion: Option<S<Congestion>>,
    pub max_concurrent_streams: Option<S<u64>>,
    pub idle_timeout_ms: Option<S<u64>>,
    pub stream_receive_window: Option<S<u64>>,
    pub receive_window: Option<S<u64>>,
    pub send_window: Option<S<u64>>,
    pub grease: Option<S<bool>>,
}

/// The QUIC settings of an HTTP/3 listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuicConfig {
    /// UDP port. `None`: the TCP listener's port (the bound one when that is 0).
    pub port: Option<u16>,
    pub congestion: Congestion,
    /// Concurrent request streams per connection (QUIC `MAX_STREAMS`).
    pub max_concurrent_streams: u32,
    /// Connections idle this long are closed.
    pub idle_timeout: Duration,
    /// Per-stream receive window (bytes a client may send ahead of our reads).
    pub stream_receive_window: u32,
    /// Per-connection receive window.
    pub receive_window: u32,
    /// Bytes buffered for sending per connection.
    pub send_window: u64,
    /// Whether HTTP/3 sends reserved ("grease") stream, frame and setting
    /// types (RFC 9114 §§6.2.3, 7.2.8, 7.2.4.1).
    pub grease: bool,
}

impl Default for QuicConfig {
    fn default() -> Self {
        Self {
            port: None,
            congestion: Congestion::Cubic,
            max_concurrent_streams: 256,
            idle_timeout: Duration::from_secs(30),
            stream_receive_window: 1024 * 1024,
            receive_window: 8 * 1024 * 1024,
            send_window: 8 * 1024 * 1024,
            grease: false,
        }
    }
}

const STREAMS: RangeInclusive<u64> = 1..=100_000;
const IDLE_MS: RangeInclusive<u64> = 1_000..=3_600_000;
const WINDOW: RangeInclusive<u64> = 16 * 1024..=1 << 30;

/// Compiles `[listeners.quic]`; every problem is reported to `diag`. The
/// table is an error on a listener without `http3 = true` (it would be
/// silently ignored otherwise).
pub(crate) fn compile_quic(
    f: Option<&S<QuicFile>>,
    http3: bool,
    diag: &mut Diag<'_>,
) -> QuicConfig {
    let mut config = QuicConfig::default();
    let Some(f) = f else { return config };
    if !http3 {
        diag.expect(
            f.span(),
            "QUIC settings for a listener without HTTP/3",
            "http3 = true on this listener, or no [listeners.quic]",
        );
    }
    let f = f.get_ref();
    config.port = f.port.as_ref().map(|p| *p.get_ref());
    if let Some(c) = &f.congestion {
        config.congestion = *c.get_ref();
    }
    let to_u32 = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
    if let Some(v) = checked(
        &f.max_concurrent_streams,
        STREAMS,
        "max_concurrent_streams",
        diag,
    ) {
        config.max_concurrent_streams = to_u32(v);
    }
    if let Some(v) = checked(&f.idle_timeout_ms, IDLE_MS, "idle_timeout_ms", diag) {
        config.idle_timeout = Duration::from_millis(v);
    }
    if let Some(v) = checked(
        &f.stream_receive_window,
        WINDOW,
        "stream_receive_window",
        diag,
    ) {
        config.stream_receive_window = to_u32(v);
    }
    if let Some(v) = checked(&f.receive_window, WINDOW, "receive_window", diag) {
        config.receive_window = to_u32(v);
    }
    if let Some(v) = checked(&f.send_window, WINDOW, "send_window", diag) {
        config.send_window = v;
    }
    if let Some(g) = &f.grease {
        config.grease = *g.get_ref();
    }
    check_windows(f, &config, diag);
    config
}

/// A connection window smaller than a stream's would make the stream window a lie.
fn check_windows(f: &QuicFile, config: &QuicConfig, diag: &mut Diag<'_>) {
    if config.receive_window >= config.stream_receive_window {
        return;
    }
    let at = f
        .receive_window
        .as_ref()
        .or(f.stream_receive_window.as_ref())
        .map_or(0..0, |v| v.span());
    let message = format!(
        "receive_window {} is smaller than stream_receive_window {}",
        config.receive_window, config.stream_receive_window
    );
    diag.expect(at, message, "receive_window >= stream_receive_window");
}

fn checked(
    v: &Option<S<u64>>,
    range: RangeInclusive<u64>,
    what: &str,
    diag: &mut Diag<'_>,
) -> Option<u64> {
    let v = v.as_ref()?;
    let value = *v.get_ref();
    if range.contains(&value) {
        return Some(value);
    }
    let message = format!("{what} {value} is out of range");
    diag.expect(
        v.span(),
        message,
        format!("{}..={}", range.start(), range.end()),
    );
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdata::*;

    fn listener(quic: &str) -> String {
        format!(
            "{NODE}[[listeners]]\naddress = \"127.0.0.1:0\"\nhttp3 = true\n[listeners.quic]\n{quic}"
        )
    }

    #[test]
    fn defaults_without_a_quic_table() {
        let text = format!("{NODE}[[listeners]]\naddress = \"127.0.0.1:0\"\nhttp3 = true\n");
        let config = parse(&text).unwrap();
        assert_eq!(config.listeners[0].quic, QuicConfig::default());
    }

    #[test]
    fn every_key_is_read() {
        let text = listener(
            "port = 9443\ncongestion = \"bbr\"\nmax_concurrent_streams = 64\n\
             idle_timeout_ms = 5000\nstream_receive_window = 65536\nreceive_window = 131072\n\
             send_window = 262144\ngrease = true\n",
        );
        let quic = &parse(&text).unwrap().listeners[0].quic;
        let expected = QuicConfig {
            port: Some(9443),
            congestion: Congestion::Bbr,
            max_concurrent_streams: 64,
            idle_timeout: Duration::from_secs(5),
            stream_receive_window: 65536,
            receive_window: 131072,
            send_window: 262144,
            grease: true,
        };
        assert_eq!(*quic, expected);
        let reno = parse(&listener("congestion = \"new_reno\"\n")).unwrap();
        assert_eq!(reno.listeners[0].quic.congestion, Congestion::NewReno);
    }

    #[test]
    fn errors_point_at_the_value() {
        let e = errors(&listener(
            "max_concurrent_streams = 0\nidle_timeout_ms = 10\nreceive_window = 20000\n",
        ));
        assert_eq!(
            e,
            [
                "8:26: max_concurrent_streams 0 is out of range",
                "9:19: idle_timeout_ms 10 is out of range",
                "10:18: receive_window 20000 is smaller than stream_receive_window 1048576",
            ]
        );
        let e = errors(&listener("congestion = \"vegas\"\n"));
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].starts_with("8:14: unknown variant `vegas`"),
            "{}",
            e[0]
        );
        let e = errors(&listener("port = 70000\n"));
        assert_eq!(e, ["8:8: invalid value: integer `70000`"]);
    }

    #[test]
    fn a_quic_table_needs_http3() {
        let text =
            format!("{NODE}[[listeners]]\naddress = \"127.0.0.1:0\"\n[listeners.quic]\nport = 1\n");
        assert_eq!(
            errors(&text),
            ["6:1: QUIC settings for a listener without HTTP/3"]
        );
    }
}
