//! TCP relay: byte pipes through a delay line per direction, plus a simulated handshake.

use std::future::{Future, ready};
use std::io;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinSet;
use tracing::{debug, warn};

use crate::clock::{now, wait_until};
use crate::handle::stop_signal;
use crate::{
    DelayLine, DirectionStats, Link, LinkClock, LinkSpec, NetsimError, RelayHandle, RelayStats,
    Timing,
};

/// Most bytes taken from a socket in one read.
const READ_CHUNK: usize = 64 * 1024;
/// Segment size used for serialization timing on a bandwidth-limited link, so a large read
/// trickles out packet by packet as on a real link instead of arriving in one burst.
const SEGMENT: usize = 1460;
/// Pause after a failed `accept` (e.g. out of file descriptors) before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Relays TCP connections to one target through a simulated [`Link`].
///
/// Every accepted connection gets its own connection to the target and one delay line per
/// direction (so `queue_limit_bytes` bounds each connection direction); all connections
/// share the link's bandwidth. Loss is ignored: see the crate docs.
#[derive(Debug)]
pub struct TcpRelay {
    listener: TcpListener,
    local_addr: SocketAddr,
    target: SocketAddr,
    link: Link,
    seed: u64,
    timing: Timing,
    stats: Arc<RelayStats>,
}

impl TcpRelay {
    /// Binds `listen` (port 0 picks a free port) and relays to `target`.
    pub async fn bind(
        listen: SocketAddr,
        target: SocketAddr,
        link: Link,
    ) -> Result<Self, NetsimError> {
        link.validate()?;
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|source| NetsimError::Bind {
                addr: listen,
                source,
            })?;
        Self::from_listener(listener, target, link)
    }

    /// Relays connections accepted on an already-bound listener to `target`.
    pub fn from_listener(
        listener: TcpListener,
        target: SocketAddr,
        link: Link,
    ) -> Result<Self, NetsimError> {
        link.validate()?;
        let local_addr = listener
            .local_addr()
            .map_err(NetsimError::io("reading the local address"))?;
        let (seed, stats) = (rand::random(), Arc::default());
        Ok(Self {
            listener,
            local_addr,
            target,
            link,
            seed,
            timing: Timing::default(),
            stats,
        })
    }

    /// How releases are timed (default [`Timing::Tokio`]).
    pub fn with_timing(mut self, timing: Timing) -> Self {
        self.timing = timing;
        self
    }

    /// Seeds jitter so a run can be reproduced (default: random).
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// The address clients connect to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The relay's counters, live.
    pub fn stats(&self) -> Arc<RelayStats> {
        Arc::clone(&self.stats)
    }

    /// Runs on a new task until the returned handle is shut down or dropped.
    pub fn spawn(self) -> RelayHandle {
        let (addr, stats) = (self.local_addr, self.stats());
        RelayHandle::spawn(addr, stats, move |stopped| self.run(stop_signal(stopped)))
    }

    /// Accepts and relays until `shutdown` resolves, then closes every relayed connection.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), NetsimError> {
        let ctx = Arc::new(ConnContext {
            target: self.target,
            link: self.link,
            timing: self.timing,
            up_clock: LinkClock::default(),
            down_clock: LinkClock::default(),
            stats: self.stats,
        });
        let mut shutdown = pin!(shutdown);
        let mut conns = JoinSet::new();
        let mut accepted: u64 = 0;
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                res = self.listener.accept() => match res {
                    Ok((stream, peer)) => {
                        accepted += 1;
                        let seed = self.seed ^ accepted.wrapping_mul(0x9E37_79B9_7F4A_7C15);
                        conns.spawn(serve(stream, peer, Arc::clone(&ctx), seed));
                    }
                    Err(e) => {
                        warn!(error = %e, "tcp relay: accept failed");
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                    }
                },
                Some(_) = conns.join_next() => {}
            }
        }
        conns.shutdown().await;
        Ok(())
    }
}

/// What every connection of one relay shares.
#[derive(Debug)]
struct ConnContext {
    target: SocketAddr,
    link: Link,
    timing: Timing,
    up_clock: LinkClock,
    down_clock: LinkClock,
    stats: Arc<RelayStats>,
}

/// When the simulated handshake lets things happen, relative to the relay's `accept`.
///
/// On the simulated link the client's SYN/SYN-ACK round trip ends at
/// `accepted + up.delay + down.delay`: a real client could not send data earlier, so the
/// client's bytes are sent on the link no earlier than that (bytes read before wait outside
/// it). Its final ACK reaches the target `up.delay` later, which is when the relay connects
/// to the target.
#[derive(Debug, Clone, Copy)]
struct Handshake {
    client_data_floor: Instant,
    connect_at: Instant,
}

impl Handshake {
    fn plan(accepted: Instant, link: &Link) -> Self {
        let client_data_floor = accepted + link.handshake_rtt();
        Self {
            client_data_floor,
            connect_at: client_data_floor + link.up.delay,
        }
    }
}

/// One relayed connection, with its lifetime reflected in the session gauge.
async fn serve(mut client: TcpStream, peer: SocketAddr, ctx: Arc<ConnContext>, seed: u64) {
    ctx.stats.on_session_opened();
    if let Err(e) = relay_connection(&mut client, &ctx, seed).await {
        debug!(%peer, error = %e, "tcp relay: connection ended with an error");
        // Tell the client something went wrong (RST) rather than faking a clean end.
        let _ = client.set_zero_linger();
    }
    ctx.stats.on_session_closed();
}

/// Pipes both directions until each has delivered its end-of-stream, or one fails.
async fn relay_connection(
    client: &mut TcpStream,
    ctx: &ConnContext,
    seed: u64,
) -> Result<(), NetsimError> {
    let handshake = Handshake::plan(now(), &ctx.link);
    client
        .set_nodelay(true)
        .map_err(NetsimError::io("setting TCP_NODELAY"))?;
    let (client_read, client_write) = client.split();
    let (target_tx, target_rx) = oneshot::channel();
    let up_line = DelayLine::sharing(ctx.link.up.clone(), seed, ctx.up_clock.clone());
    let up = Pump::new(
        up_line,
        &ctx.link.up,
        handshake.client_data_floor,
        &ctx.stats.up,
    )
    .timed(ctx.timing)
    .run(client_read, async { target_rx.await.ok() });
    let down = async {
        let target = connect_target(ctx.target, handshake.connect_at, ctx.timing).await?;
        let (target_read, target_write) = target.into_split();
        // If the up pump already failed, the error surfaces through `try_join!`.
        let _ = target_tx.send(target_write);
        let down_line = DelayLine::sharing(ctx.link.down.clone(), !seed, ctx.down_clock.clone());
        Pump::new(
            down_line,
            &ctx.link.down,
            handshake.connect_at,
            &ctx.stats.down,
        )
        .timed(ctx.timing)
        .run(target_read, ready(Some(client_write)))
        .await
    };
    tokio::try_join!(up, down).map(|_| ())
}

async fn connect_target(
    target: SocketAddr,
    at: Instant,
    timing: Timing,
) -> Result<TcpStream, NetsimError> {
    wait_until(timing, Some(at)).await;
    let stream = TcpStream::connect(target)
        .await
        .map_err(NetsimError::io("connecting to the target"))?;
    stream
        .set_nodelay(true)
        .map_err(NetsimError::io("setting TCP_NODELAY"))?;
    Ok(stream)
}

/// What travels through a stream delay line. The end markers ride behind the data, so the
/// receiver sees a half-close or a reset after everything sent before it, and no earlier
/// than the link allows.
#[derive(Debug)]
enum Segment {
    Data(Bytes),
    /// The sender half-closed (FIN).
    Fin,
    /// Reading from the sender failed (usually a reset).
    Reset(io::Error),
}

impl Segment {
    /// Bytes it occupies on the link (the end markers none).
    fn len(&self) -> usize {
        match self {
            Self::Data(data) => data.len(),
            Self::Fin | Self::Reset(_) => 0,
        }
    }
}

/// How a pump's delivery round ended.
enum Delivery {
    /// Everything due was written; more may come.
    Pending,
    /// The end of stream was delivered: this direction is done.
    Finished,
    /// The destination refused a write (it is gone): this direction is done, and the other
    /// direction will see the failure on its own source.
    DestinationGone,
}

/// One direction of a connection: reads the source as fast as the queue bound allows,
/// writes each segment to the destination when the delay line releases it.
struct Pump<'a> {
    line: DelayLine<Segment>,
    /// The simulated handshake's end: nothing is sent on the link before it.
    floor: Instant,
    /// What was read before `floor`, kept out of the line until then. The link clock is
    /// shared by every connection and books first come first served, so bytes timestamped
    /// in the future would hold the link for other connections' bytes read meanwhile.
    early: Vec<Segment>,
    early_bytes: usize,
    segment_len: usize,
    stats: &'a DirectionStats,
    timing: Timing,
}

impl<'a> Pump<'a> {
    fn new(
        line: DelayLine<Segment>,
        spec: &LinkSpec,
        floor: Instant,
        stats: &'a DirectionStats,
    ) -> Self {
        let segment_len = if spec.bandwidth_bps.is_some() {
            SEGMENT
        } else {
            READ_CHUNK
        };
        Self {
            line,
            floor,
            early: Vec::new(),
            early_bytes: 0,
            segment_len,
            stats,
            timing: Timing::default(),
        }
    }

    fn timed(mut self, timing: Timing) -> Self {
        self.timing = timing;
        self
    }

    /// Runs until this direction is done: `Ok` once the half-close has been delivered, the
    /// destination has gone, or `dst` yields `None` (the target could not be reached; the
    /// other direction reports why); `Err` once a reset of the source has been delivered,
    /// which ends the whole connection. `dst` may resolve late: reading starts at once.
    async fn run<R, W, D>(mut self, mut src: R, dst: D) -> Result<(), NetsimError>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
        D: Future<Output = Option<W>>,
    {
        let mut dst = pin!(dst);
        let mut writer: Option<W> = None;
        let mut reading = true;
        let mut buf = vec![0u8; READ_CHUNK];
        loop {
            // What waits for the floor counts against the queue bound too.
            let room = self
                .line
                .available()
                .saturating_sub(self.early_bytes)
                .min(READ_CHUNK);
            let due = self.line.next_release();
            let floor = (!self.early.is_empty()).then_some(self.floor);
            tokio::select! {
                res = src.read(&mut buf[..room]), if reading && room > 0 => {
                    reading = self.on_read(res.map(|len| &buf[..len]));
                }
                () = wait_until(self.timing, floor), if floor.is_some() => self.send_early(),
                w = &mut dst, if writer.is_none() => match w {
                    Some(w) => writer = Some(w),
                    None => return Ok(()),
                },
                () = wait_until(self.timing, due), if writer.is_some() => {
                    let Some(w) = writer.as_mut() else { continue };
                    match self.deliver(w).await? {
                        Delivery::Pending => {}
                        Delivery::Finished | Delivery::DestinationGone => return Ok(()),
                    }
                }
                else => return Ok(()),
            }
        }
    }

    /// Enqueues the outcome of a read (empty = end of stream); returns whether to keep
    /// reading.
    fn on_read(&mut self, read: io::Result<&[u8]>) -> bool {
        let (segment, more) = match read {
            Ok([]) => (Segment::Fin, false),
            Ok(data) => {
                self.stats.on_received();
                (Segment::Data(Bytes::copy_from_slice(data)), true)
            }
            Err(e) => (Segment::Reset(e), false),
        };
        let at = now();
        if at < self.floor {
            self.early_bytes += segment.len();
            self.early.push(segment);
        } else {
            self.send_early();
            self.send(at, segment);
        }
        self.stats
            .on_queued(self.line.queued_bytes() + self.early_bytes);
        more
    }

    /// Puts what was read before the floor on the link, as sent at the floor. Called when
    /// the floor passes or, if that wake-up is late, before anything read after it.
    fn send_early(&mut self) {
        for segment in std::mem::take(&mut self.early) {
            self.send(self.floor, segment);
        }
        self.early_bytes = 0;
    }

    /// Enqueues a read as sent at `at`, in link-sized segments.
    fn send(&mut self, at: Instant, segment: Segment) {
        let Segment::Data(mut data) = segment else {
            self.line.push_stream(at, 0, segment);
            return;
        };
        while !data.is_empty() {
            let segment = data.split_to(self.segment_len.min(data.len()));
            self.line
                .push_stream(at, segment.len(), Segment::Data(segment));
        }
    }

    /// Writes every due segment. A delivered reset is returned as the error that ends the
    /// connection.
    async fn deliver<W: AsyncWrite + Unpin>(
        &mut self,
        writer: &mut W,
    ) -> Result<Delivery, NetsimError> {
        let at = now();
        while let Some(segment) = self.line.pop_due(at) {
            let written = match segment {
                Segment::Data(data) => writer.write_all(&data).await.map(|()| data.len()),
                Segment::Fin => return Ok(shutdown(writer).await),
                Segment::Reset(e) => return Err(NetsimError::io("relayed peer failed")(e)),
            };
            match written {
                Ok(len) => self.stats.on_forwarded(len),
                Err(e) => {
                    debug!(error = %e, "tcp relay: destination refused data");
                    return Ok(Delivery::DestinationGone);
                }
            }
        }
        Ok(Delivery::Pending)
    }
}

/// Delivers a half-close.
async fn shutdown<W: AsyncWrite + Unpin>(writer: &mut W) -> Delivery {
    match writer.shutdown().await {
        Ok(()) => Delivery::Finished,
        Err(e) => {
            debug!(error = %e, "tcp relay: destination gone before half-close");
            Delivery::DestinationGone
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::duplex;
    use tokio::time::Instant as TokioInstant;

    const MS: Duration = Duration::from_millis(1);

    fn pump_over<'a>(spec: &'a LinkSpec, floor: Instant, stats: &'a DirectionStats) -> Pump<'a> {
        Pump::new(DelayLine::new(spec.clone(), 3), spec, floor, stats)
    }

    /// Tokio's timer rounds deadlines up to the next millisecond.
    fn assert_about(elapsed: Duration, expected: Duration) {
        assert!(
            elapsed >= expected && elapsed <= expected + 2 * MS,
            "{elapsed:?} vs {expected:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn pump_delays_data_and_half_close() {
        let spec = LinkSpec::with_delay(50 * MS);
        let stats = DirectionStats::default();
        let (mut client, relay_src) = duplex(64 * 1024);
        let (relay_dst, mut server) = duplex(64 * 1024);
        let pump = pump_over(&spec, now(), &stats).run(relay_src, ready(Some(relay_dst)));
        let peer = async {
            let t0 = TokioInstant::now();
            client.write_all(b"hello").await.unwrap();
            let mut buf = [0u8; 5];
            server.read_exact(&mut buf).await.unwrap();
            assert_eq!(&buf, b"hello");
            assert_about(t0.elapsed(), 50 * MS);
            let t1 = TokioInstant::now();
            client.shutdown().await.unwrap();
            assert_eq!(
                server.read(&mut buf).await.unwrap(),
                0,
                "half-close not propagated"
            );
            assert_about(t1.elapsed(), 50 * MS);
        };
        let (res, ()) = tokio::join!(pump, peer);
        res.unwrap();
        assert_eq!(stats.snapshot().bytes, 5);
    }

    #[tokio::test(start_paused = true)]
    async fn pump_respects_the_queue_limit_and_keeps_order() {
        let spec = LinkSpec {
            delay: 10 * MS,
            jitter: 5 * MS,
            queue_limit_bytes: 1000,
            ..LinkSpec::default()
        };
        let stats = DirectionStats::default();
        let (mut client, relay_src) = duplex(64 * 1024);
        let (relay_dst, mut server) = duplex(64 * 1024);
        let pump = pump_over(&spec, now(), &stats).run(relay_src, ready(Some(relay_dst)));
        let sent: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
        let peer = async {
            client.write_all(&sent).await.unwrap();
            client.shutdown().await.unwrap();
            let mut got = Vec::new();
            server.read_to_end(&mut got).await.unwrap();
            got
        };
        let (res, got) = tokio::join!(pump, peer);
        res.unwrap();
        assert!(got == sent, "bytes reordered or lost");
        let snap = stats.snapshot();
        assert!(
            snap.peak_queued_bytes <= 1000,
            "peak {}",
            snap.peak_queued_bytes
        );
        assert_eq!(snap.bytes, 20_000);
    }

    #[tokio::test(start_paused = true)]
    async fn pump_reads_before_its_destination_exists_and_honours_the_floor() {
        let spec = LinkSpec::with_delay(10 * MS);
        let stats = DirectionStats::default();
        let (mut client, relay_src) = duplex(1024);
        let (relay_dst, mut server) = duplex(1024);
        let t0 = TokioInstant::now();
        let floor = t0.into_std() + 30 * MS;
        let late_dst = async {
            tokio::time::sleep(20 * MS).await;
            Some(relay_dst)
        };
        let pump = pump_over(&spec, floor, &stats).run(relay_src, late_dst);
        let peer = async {
            client.write_all(b"x").await.unwrap();
            client.shutdown().await.unwrap();
            let mut got = Vec::new();
            server.read_to_end(&mut got).await.unwrap();
            assert_eq!(got, b"x");
            // Timestamped at the floor (30 ms), then 10 ms of delay.
            assert_about(t0.elapsed(), 40 * MS);
        };
        let (res, ()) = tokio::join!(pump, peer);
        res.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn bytes_waiting_for_the_floor_do_not_hold_a_shared_link() {
        // 1460 bytes at 8 Mbit/s: 1.46 ms on the wire.
        let spec = LinkSpec {
            delay: 50 * MS,
            bandwidth_bps: Some(8_000_000),
            ..LinkSpec::default()
        };
        let clock = LinkClock::default();
        let (a_stats, b_stats) = (DirectionStats::default(), DirectionStats::default());
        let t0 = TokioInstant::now();
        let pump = |seed, floor, stats| {
            let line = DelayLine::sharing(spec.clone(), seed, clock.clone());
            Pump::new(line, &spec, floor, stats)
        };
        // B has just connected: its handshake ends in 100 ms. A's ended long ago.
        let (b_pump, a_pump) = (
            pump(1, t0.into_std() + 100 * MS, &b_stats),
            pump(2, now(), &a_stats),
        );
        let (mut a_client, a_src) = duplex(64 * 1024);
        let (a_dst, mut a_server) = duplex(64 * 1024);
        let (mut b_client, b_src) = duplex(64 * 1024);
        let (b_dst, mut b_server) = duplex(64 * 1024);
        let peers = async {
            b_client.write_all(&[0u8; 1460]).await.unwrap();
            b_client.shutdown().await.unwrap();
            tokio::time::sleep(10 * MS).await;
            let sent = TokioInstant::now();
            a_client.write_all(b"a").await.unwrap();
            a_client.shutdown().await.unwrap();
            a_server.read_exact(&mut [0u8; 1]).await.unwrap();
            // Not behind B's bytes, which are not sent before B's floor.
            assert_about(sent.elapsed(), 50 * MS);
            let mut got = Vec::new();
            b_server.read_to_end(&mut got).await.unwrap();
            assert_eq!(got.len(), 1460);
            // Sent at the floor, then serialization and delay.
            assert_about(t0.elapsed(), Duration::from_micros(151_460));
        };
        let (a, b, ()) = tokio::join!(
            a_pump.run(a_src, ready(Some(a_dst))),
            b_pump.run(b_src, ready(Some(b_dst))),
            peers
        );
        a.unwrap();
        b.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn pump_segments_reads_on_a_bandwidth_limited_link() {
        // 14 600 bytes at 1.168 Mbit/s: ten 1460-byte segments of 10 ms each.
        let spec = LinkSpec {
            bandwidth_bps: Some(1_168_000),
            ..LinkSpec::default()
        };
        let stats = DirectionStats::default();
        let (mut client, relay_src) = duplex(64 * 1024);
        let (relay_dst, mut server) = duplex(64 * 1024);
        let pump = pump_over(&spec, now(), &stats).run(relay_src, ready(Some(relay_dst)));
        let peer = async {
            let t0 = TokioInstant::now();
            client.write_all(&[7u8; 14_600]).await.unwrap();
            let mut first = [0u8; 1460];
            server.read_exact(&mut first).await.unwrap();
            assert_about(t0.elapsed(), 10 * MS);
            client.shutdown().await.unwrap();
            let mut rest = Vec::new();
            server.read_to_end(&mut rest).await.unwrap();
            assert_eq!(rest.len(), 13_140);
            assert_about(t0.elapsed(), 100 * MS);
        };
        let (res, ()) = tokio::join!(pump, peer);
        res.unwrap();
        assert_eq!(stats.snapshot().packets, 10);
    }
}
