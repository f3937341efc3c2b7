//! Request coalescing and streaming fills.
//!
//! * A [`Flight`] is one upstream fetch for one cache key. The first request to miss
//!   leads it; requests that miss the same key meanwhile follow it and wait only for
//!   the response *head*: then they are told what to do ([`Outcome`]).
//! * A [`Fill`] is a response body being read from upstream by its own task, into a
//!   shared, growing list of chunks. Every client of the flight (the leader too)
//!   streams from that list as chunks arrive ([`reader`]), and the complete list
//!   becomes the stored body. Clients that leave do not stop the fill while it can
//!   still be stored; a body that breaks leaves no entry.
//! * What a fill holds is counted as its bytes plus [`PIECE_COST`] per piece, so a
//!   body sent in tiny chunks costs what it takes in memory, not its few bytes.
//! * A body that outgrows the object limit, or whose count outgrows the room its
//!   fill reserved, stops being a candidate for storage. From then on the list keeps
//!   only what its slowest reader has not read, and the task reads ahead at most
//!   [`OVERFLOW_WINDOW`] counted bytes, so memory stays bounded.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::stream;
use http::{HeaderMap, HeaderName, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use tokio::sync::Notify;

use super::entry::{PIECE_COST, Stored, join};
use super::key::{KeyInput, KeyText};
use super::store::Stamp;
use crate::body::{Body, BoxError};
use crate::error::{ErrorKind, ErrorSource};

/// How far past its slowest reader an oversized fill may read (counted as
/// [`Fill`] counts: bytes plus [`PIECE_COST`] per chunk).
pub(crate) const OVERFLOW_WINDOW: u64 = 256 * 1024;

/// The size of the buffers a body of unknown length is copied into as it
/// arrives: its pieces share them instead of taking an allocation each.
const FILL_BUFFER: usize = 64 * 1024;

/// How long a fill that nobody reads waits for more of its body before it
/// gives up. It fills on for the cache while the body comes (as a CDN
/// does), but one stalled with no client left would otherwise hold its
/// task, its reservation and a backend connection for the whole read timeout.
pub(crate) const UNREAD_STALL: Duration = Duration::from_secs(5);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Waits on `notify` until `check` returns `Some`, without missing a notification
/// sent between the check and the wait.
async fn wait_for<T>(notify: &Notify, mut check: impl FnMut() -> Option<T>) -> T {
    loop {
        let notified = notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if let Some(v) = check() {
            return v;
        }
        notified.await;
    }
}

/// What followers of a flight do once its leader knows.
#[derive(Clone)]
pub(crate) enum Outcome {
    /// Stream the body from this fill (if it still starts at byte 0 and the
    /// response fits the follower's own `Vary` values).
    Stream(Arc<Fill>),
    /// The entry is fresh again (a 304 refreshed it): answer from it.
    Entry(Arc<Stored>),
    /// The response cannot be shared: fetch on your own.
    Pass,
    /// The upstream failed: serve stale if allowed, else this error.
    Failed(ErrorKind, ErrorSource),
    /// The upstream answered this 5xx, which the route does not cache: serve
    /// stale if allowed, else fetch on your own.
    ServerError(StatusCode),
    /// The leader went away before the head arrived: try again.
    Abandoned,
}

/// One upstream fetch that concurrent requests for a key share.
pub(crate) struct Flight {
    outcome: Mutex<Option<Outcome>>,
    notify: Notify,
    /// The purges and invalidations of its path begun when it started.
    stamp: Stamp,
}

impl Flight {
    /// Waits for the leader's decision.
    pub(crate) async fn wait(&self) -> Outcome {
        wait_for(&self.notify, || lock(&self.outcome).clone()).await
    }

    fn publish(&self, outcome: Outcome) {
        *lock(&self.outcome) = Some(outcome);
        self.notify.notify_waiters();
    }
}

/// The flights in progress, by cache key.
#[derive(Default)]
pub(crate) struct Flights {
    map: Mutex<HashMap<u64, Arc<Flight>>>,
}

/// Whether a request leads a new flight or follows one.
pub(crate) enum Role {
    Lead(LeaderGuard),
    Follow(Arc<Flight>),
}

impl Flights {
    /// Follows the key's flight, or leads a new one. `stamp` is the request's
    /// view of its path's purges and invalidations: a flight that started
    /// before one of them may bring back what it removed, so a request that
    /// came after never follows it but leads a flight of its own (the old
    /// one finishes for its own clients, and stores nothing).
    pub(crate) fn join(self: &Arc<Self>, key: u64, stamp: Stamp) -> Role {
        let mut map = lock(&self.map);
        if let Some(f) = map.get(&key).filter(|f| f.stamp == stamp) {
            return Role::Follow(Arc::clone(f));
        }
        let flight = Arc::new(Flight {
            outcome: Mutex::new(None),
            notify: Notify::new(),
            stamp,
        });
        map.insert(key, Arc::clone(&flight));
        Role::Lead(LeaderGuard {
            flights: Arc::clone(self),
            key,
            flight,
            open: true,
        })
    }

    fn finish(&self, key: u64, flight: &Arc<Flight>) {
        let mut map = lock(&self.map);
        if map.get(&key).is_some_and(|f| Arc::ptr_eq(f, flight)) {
            map.remove(&key);
        }
    }
}

/// The leader's duty to tell its followers; dropping it unfinished tells them
/// [`Outcome::Abandoned`].
pub(crate) struct LeaderGuard {
    flights: Arc<Flights>,
    key: u64,
    flight: Arc<Flight>,
    open: bool,
}

impl LeaderGuard {
    /// Publishes a final outcome and ends the flight.
    pub(crate) fn finish(mut self, outcome: Outcome) {
        self.flight.publish(outcome);
        self.flights.finish(self.key, &self.flight);
        self.open = false;
    }

    /// Publishes a streaming fill; the flight stays open (new requests join the
    /// fill) until `done` is called by the fill's task.
    pub(crate) fn stream(mut self, fill: &Arc<Fill>) -> FlightEnd {
        self.flight.publish(Outcome::Stream(Arc::clone(fill)));
        self.open = false;
        FlightEnd {
            flights: Arc::clone(&self.flights),
            key: self.key,
            flight: Arc::clone(&self.flight),
        }
    }
}

impl Drop for LeaderGuard {
    fn drop(&mut self) {
        if self.open {
            self.flight.publish(Outcome::Abandoned);
            self.flights.finish(self.key, &self.flight);
        }
    }
}

/// Ends a streaming flight (after its entry is stored, or when it cannot be).
pub(crate) struct FlightEnd {
    flights: Arc<Flights>,
    key: u64,
    flight: Arc<Flight>,
}

impl Drop for FlightEnd {
    fn drop(&mut self) {
        self.flights.finish(self.key, &self.flight);
    }
}

/// How a fill ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Complete,
    Failed,
}

struct FillState {
    chunks: VecDeque<Bytes>,
    /// Index (in the whole body) of `chunks[0]`.
    base: usize,
    /// The body's bytes so far.
    bytes: u64,
    /// What the chunks held so far cost: their bytes plus [`PIECE_COST`] each.
    charged: u64,
    end: Option<End>,
    /// Each reader's next chunk index; `None` for a slot freed by a dropped reader.
    readers: Vec<Option<usize>>,
    /// Still a candidate for storage (within its [`Budget`]).
    storable: bool,
    /// Where a storable body is copied as it arrives: one buffer of the
    /// announced length, else buffers of [`FILL_BUFFER`] bytes, each replaced
    /// when full. The pieces readers get share these allocations, and the
    /// upstream's receive buffers are released at once.
    buf: BytesMut,
    /// Index (in the whole body) of the first piece in `buf`.
    buf_first: usize,
}

/// What a fill may hold and still store its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Budget {
    /// The largest body it may store.
    pub limit: u64,
    /// The most it may count (bytes plus [`PIECE_COST`] per piece): what it
    /// reserved of the store's fill budget.
    pub room: u64,
}

/// A response whose body is being read from upstream into memory.
pub(crate) struct Fill {
    pub status: StatusCode,
    /// The head as received.
    pub headers: HeaderMap,
    /// The key the response will be stored under (with its `Vary` values).
    key: KeyText,
    /// The response's `Vary` names (empty: none).
    vary: Box<[HeaderName]>,
    budget: Budget,
    state: Mutex<FillState>,
    /// Signalled when a chunk arrives or the fill ends.
    progress: Notify,
    /// Signalled when a reader advances or leaves (for the overflow window).
    consumed: Notify,
}

/// The error a reader yields when the upstream body broke.
#[derive(Debug, thiserror::Error)]
#[error("upstream response body failed while it was being cached")]
pub(crate) struct FillFailed;

impl Fill {
    /// `length`: the announced body length, when it fits the object limit.
    pub(crate) fn new(
        status: StatusCode,
        headers: HeaderMap,
        key: KeyText,
        vary: Box<[HeaderName]>,
        length: Option<usize>,
        budget: Budget,
    ) -> Arc<Fill> {
        // Without a length, the first chunk allocates the first buffer.
        let buf = length.map_or_else(BytesMut::new, BytesMut::with_capacity);
        Arc::new(Fill {
            status,
            headers,
            key,
            vary,
            budget,
            state: Mutex::new(FillState {
                chunks: VecDeque::new(),
                base: 0,
                bytes: 0,
                charged: 0,
                end: None,
                readers: Vec::new(),
                storable: true,
                buf,
                buf_first: 0,
            }),
            progress: Notify::new(),
            consumed: Notify::new(),
        })
    }

    /// A body streaming this fill from its first byte; `None` once the fill
    /// is larger than it may store.
    pub(crate) fn reader(self: &Arc<Self>) -> Option<Body> {
        let slot = {
            let mut st = lock(&self.state);
            // An oversized fill takes no more readers: each would pace it
            // (it streams at its slowest reader's speed), and a client that
            // never reads would hold every later one still. Nor does a
            // failed one (its flight is about to end): they fetch on their own.
            if st.base != 0 || !st.storable || st.end == Some(End::Failed) {
                return None;
            }
            match st.readers.iter().position(Option::is_none) {
                Some(free) => {
                    st.readers[free] = Some(0);
                    free
                }
                None => {
                    st.readers.push(Some(0));
                    st.readers.len() - 1
                }
            }
        };
        let reader = Reader {
            fill: Arc::clone(self),
            slot,
            next: 0,
        };
        let chunks = stream::unfold(reader, |mut r| async move {
            let item = r.next().await?;
            Some((item.map(http_body::Frame::data), r))
        });
        Some(StreamBody::new(chunks).boxed_unsync())
    }

    /// Whether the response may answer a request with this key (a follower whose
    /// `Vary` header values differ from the leader's may not use it).
    pub(crate) fn fits(&self, input: &KeyInput<'_>) -> bool {
        if self.vary.is_empty() {
            self.key.matches(|c| input.write(c))
        } else {
            self.key.matches(|c| input.write_variant(&self.vary, c))
        }
    }

    fn live_readers(st: &FillState) -> usize {
        st.readers.iter().flatten().count()
    }
}

struct Reader {
    fill: Arc<Fill>,
    slot: usize,
    next: usize,
}

impl Reader {
    async fn next(&mut self) -> Option<Result<Bytes, BoxError>> {
        let fill = Arc::clone(&self.fill);
        let next = self.next;
        let item = wait_for(&fill.progress, || {
            let st = lock(&fill.state);
            if let Some(chunk) = next.checked_sub(st.base).and_then(|i| st.chunks.get(i)) {
                return Some(Some(Ok(chunk.clone())));
            }
            match st.end {
                Some(End::Complete) => Some(None),
                Some(End::Failed) => Some(Some(Err(Box::new(FillFailed) as BoxError))),
                None => None,
            }
        })
        .await;
        if matches!(item, Some(Ok(_))) {
            self.next += 1;
            let mut st = lock(&self.fill.state);
            if let Some(pos) = st.readers.get_mut(self.slot) {
                *pos = Some(self.next);
            }
            drop(st);
            self.fill.consumed.notify_waiters();
        }
        item
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        let mut st = lock(&self.fill.state);
        if let Some(pos) = st.readers.get_mut(self.slot) {
            *pos = None;
        }
        drop(st);
        self.fill.consumed.notify_waiters();
    }
}

/// What the fill task read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FillResult {
    /// The whole body, ready to store. Readers see the end only when the task calls
    /// [`Fill::close`], so a client that has read the whole body finds the entry.
    Complete(Box<[Bytes]>),
    /// The body was complete but larger than the object limit (readers have seen its end).
    Oversized,
    /// The upstream body failed or stalled, or nobody was left to read an oversized one.
    Failed,
}

/// Reads `body` into `fill` until it ends.
/// A source that stalls fails the body itself (`forward_timed` bounds each
/// wait with the read timeout), and sooner ([`UNREAD_STALL`]) when nobody
/// reads the fill.
/// `oversized` runs once, when the body outgrows the fill's [`Budget`]: the
/// fill then holds only its window of the body, not a stored object's worth.
pub(crate) async fn run_fill(fill: &Fill, mut body: Body, oversized: impl FnOnce()) -> FillResult {
    let mut oversized = Some(oversized);
    loop {
        // Dropping `frame()` loses nothing: it only polls the body. A chunk
        // that is already there is taken without arming a timer.
        let next = match futures_util::FutureExt::now_or_never(body.frame()) {
            Some(next) => next,
            None => loop {
                match tokio::time::timeout(UNREAD_STALL, body.frame()).await {
                    Ok(next) => break next,
                    Err(_) if Fill::live_readers(&lock(&fill.state)) > 0 => {}
                    Err(_) => return fill.fail(),
                }
            },
        };
        let frame = match next {
            Some(Ok(frame)) => frame,
            None => break,
            Some(Err(_)) => return fill.fail(),
        };
        let Ok(data) = frame.into_data() else {
            continue; // trailers are not stored
        };
        let Pushed { alive, storable } = fill.push(&data);
        if !storable && let Some(release) = oversized.take() {
            release();
        }
        if !alive || !fill.wait_for_readers().await {
            return fill.fail();
        }
    }
    let mut st = lock(&fill.state);
    if st.storable {
        let mut body: Vec<Bytes> = st.chunks.iter().cloned().collect();
        // The pieces in a buffer not filled to its end keep all of it alive:
        // the entry gets a copy of just their bytes (64 KiB at most).
        let first = st.buf_first;
        if st.buf.capacity() > 0 && first < body.len() {
            let tail = join(&body[first..]);
            body.truncate(first);
            body.push(tail);
        }
        st.buf = BytesMut::new();
        return FillResult::Complete(body.into_boxed_slice());
    }
    drop(st);
    fill.close();
    FillResult::Oversized
}

/// What [`Fill::push`] left.
struct Pushed {
    /// `false`: an oversized fill with no reader left.
    alive: bool,
    /// Still within what may be stored.
    storable: bool,
}

impl Budget {
    /// The size of the buffers a body of unknown length is copied into (never
    /// 0: `push` fills buffers until the chunk is in).
    fn buffer_size(self) -> usize {
        usize::try_from(self.limit).map_or(FILL_BUFFER, |l| l.clamp(1, FILL_BUFFER))
    }
}

impl Fill {
    /// Appends a chunk: copied into the fill's buffers while the body may be
    /// stored (a stored piece must not pin the upstream's larger receive
    /// buffer), kept as it came once it may not.
    fn push(&self, data: &Bytes) -> Pushed {
        let mut guard = lock(&self.state);
        let st = &mut *guard;
        st.bytes += data.len() as u64;
        if st.bytes > self.budget.limit {
            st.storable = false;
        }
        let before = st.chunks.len();
        if st.storable {
            let mut rest = &data[..];
            while !rest.is_empty() {
                let spare = st.buf.capacity() - st.buf.len();
                if spare == 0 {
                    st.buf = BytesMut::with_capacity(self.budget.buffer_size());
                    st.buf_first = st.base + st.chunks.len();
                    continue;
                }
                let (now, later) = rest.split_at(spare.min(rest.len()));
                st.buf.extend_from_slice(now);
                st.chunks.push_back(st.buf.split().freeze());
                rest = later;
            }
        } else {
            st.chunks.push_back(data.clone());
        }
        let pieces = (st.chunks.len() - before) as u64;
        st.charged += data.len() as u64 + pieces * PIECE_COST;
        if st.charged > self.budget.room {
            st.storable = false;
        }
        if !st.storable {
            st.buf = BytesMut::new();
        }
        let pushed = Pushed {
            alive: st.storable || Self::live_readers(st) > 0,
            storable: st.storable,
        };
        drop(guard);
        self.progress.notify_waiters();
        pushed
    }

    /// Once oversized: drops chunks every reader has read, and waits while the
    /// slowest reader is more than the window behind. `false` when no reader is left.
    async fn wait_for_readers(&self) -> bool {
        wait_for(&self.consumed, || {
            let mut st = lock(&self.state);
            if st.storable {
                return Some(true);
            }
            let Some(slowest) = st.readers.iter().flatten().min().copied() else {
                return Some(false);
            };
            while st.base < slowest
                && let Some(chunk) = st.chunks.pop_front()
            {
                st.base += 1;
                st.charged = st.charged.saturating_sub(chunk.len() as u64 + PIECE_COST);
            }
            (st.charged <= OVERFLOW_WINDOW).then_some(true)
        })
        .await
    }

    /// Readers see the body end (after the entry, if any, is stored).
    pub(crate) fn close(&self) {
        self.set_end(End::Complete);
    }

    /// Readers see the body fail after what they read: it was whole by its
    /// stream and not by its length.
    pub(crate) fn cut_short(&self) {
        self.set_end(End::Failed);
    }

    fn fail(&self) -> FillResult {
        self.set_end(End::Failed);
        FillResult::Failed
    }

    fn set_end(&self, end: End) {
        lock(&self.state).end = Some(end);
        self.progress.notify_waiters();
    }
}
