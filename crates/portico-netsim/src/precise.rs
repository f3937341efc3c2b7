//! Sub-millisecond waits for [`crate::Timing::Precise`].
//!
//! tokio's timer fires on a 1 ms tick at or after a deadline, so every packet of a
//! relay is released up to 1 ms late. A path of ten relay hops (a cold HTTPS
//! request through a PoP: six on the client's link, two on the backbone, two to
//! the backend) then drifts by several milliseconds, which matters on short links.
//! Precise timing lets tokio's timer wait until shortly before the deadline, and
//! hands the last stretch to one thread that sleeps with the OS's high-resolution
//! timers (`park_timeout`, tens of microseconds late) and wakes the waiting task
//! [`LEAD`] early; the task then yields until the deadline, so the runtime thread
//! that sends the packet is already awake when it passes. Waking a parked thread
//! from the timer thread at the deadline made every release 120 µs late on a
//! 2-core VM; now 16 µs (`cargo bench --bench netsim`: a 1 ms link adds 33 µs to
//! a round trip beyond its 2 ms, where it added 271 µs), at the cost of a thread
//! yielding for up to [`LEAD`] before each release. Waits longer than
//! [`COARSE_MARGIN`] start on tokio's timer, which must hand over before the
//! deadline whatever the phase of its tick.
//!
//! The thread serves every relay of the process. It holds one entry per pending
//! poll (a re-polled wait registers again; a stale entry only causes a spurious
//! wake-up), and only for the last [`COARSE_MARGIN`] of a wait, so it stays small.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Mutex, OnceLock};
use std::task::{Context, Poll, Waker};
use std::thread::Thread;
use std::time::{Duration, Instant};

/// How early tokio's timer is aimed, so it never overshoots: it fires on its
/// 1 ms tick at or after the deadline, and a parked runtime thread's epoll
/// timeout is rounded up to whole milliseconds too, so it can be up to 2 ms
/// late, plus scheduling. A 1.5 ms margin let one wait in several overshoot:
/// a 5 ms link then added 77 µs (p90 170 µs) to a round trip instead of 13
/// (p90 39) (`cargo bench --bench netsim`).
pub(crate) const COARSE_MARGIN: Duration = Duration::from_millis(3);

/// How early the timer thread wakes a waiting task, which then yields until
/// its deadline: more than the timer's slack (50 µs) plus a thread's wake-up.
const LEAD: Duration = Duration::from_micros(200);

/// Sleeps until `at` on the precise thread (or tokio's timer if the thread could
/// not be started).
pub(crate) async fn sleep_until(at: Instant) {
    match service() {
        Some(service) => {
            let early = at.checked_sub(LEAD).unwrap_or(at);
            PreciseSleep { at: early, service }.await;
            // Waking a parked runtime thread from the timer thread takes tens
            // of microseconds more (a cross-CPU wake-up, slower still in a
            // VM), so the timer wakes the task LEAD early and the task
            // yields until the deadline: its thread is awake when it passes.
            while Instant::now() < at {
                tokio::task::yield_now().await;
            }
        }
        None => tokio::time::sleep_until(at.into()).await,
    }
}

struct Entry {
    at: Instant,
    waker: Waker,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.at == other.at
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Entry {
    fn cmp(&self, other: &Self) -> Ordering {
        self.at.cmp(&other.at)
    }
}

struct Service {
    queue: Mutex<BinaryHeap<Reverse<Entry>>>,
    thread: Thread,
}

fn service() -> Option<&'static Service> {
    static SERVICE: OnceLock<Option<&'static Service>> = OnceLock::new();
    *SERVICE.get_or_init(start)
}

/// Starts the timer thread; `None` if the OS refuses a thread.
fn start() -> Option<&'static Service> {
    let (tx, rx) = std::sync::mpsc::channel::<&'static Service>();
    let spawned = std::thread::Builder::new()
        .name("netsim-timer".into())
        .spawn(move || {
            if let Ok(service) = rx.recv() {
                run(service);
            }
        });
    let handle = spawned.ok()?;
    // Leaked on purpose: the service lives as long as the process, like its thread.
    let service: &'static Service = Box::leak(Box::new(Service {
        queue: Mutex::new(BinaryHeap::new()),
        thread: handle.thread().clone(),
    }));
    tx.send(service).ok()?;
    Some(service)
}

impl Service {
    fn register(&self, at: Instant, waker: Waker) {
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        queue.push(Reverse(Entry { at, waker }));
        drop(queue);
        self.thread.unpark();
    }

    /// Removes and returns the wakers that are due, and the next deadline.
    fn due(&self, now: Instant) -> (Vec<Waker>, Option<Instant>) {
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        let mut due = Vec::new();
        while queue.peek().is_some_and(|Reverse(e)| e.at <= now) {
            if let Some(Reverse(e)) = queue.pop() {
                due.push(e.waker);
            }
        }
        (due, queue.peek().map(|Reverse(e)| e.at))
    }
}

fn run(service: &'static Service) {
    loop {
        let now = Instant::now();
        let (due, next) = service.due(now);
        due.into_iter().for_each(Waker::wake);
        match next {
            Some(at) => std::thread::park_timeout(at.saturating_duration_since(Instant::now())),
            None => std::thread::park(),
        }
    }
}

struct PreciseSleep {
    at: Instant,
    service: &'static Service,
}

impl Future for PreciseSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if Instant::now() >= self.at {
            return Poll::Ready(());
        }
        self.service.register(self.at, cx.waker().clone());
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
    use std::task::Wake;

    use super::*;

    /// How late the waits are is a timing claim, measured by `cargo bench
    /// --bench netsim` (a loaded machine can delay any thread by
    /// milliseconds); here, what holds whatever the load: a wait never ends
    /// early, and always ends.
    #[tokio::test]
    async fn waits_never_end_early() {
        let waits = async {
            for i in 0..20u64 {
                let at = Instant::now() + Duration::from_micros(300 + 50 * i);
                sleep_until(at).await;
                assert!(Instant::now() >= at, "wait {i} ended early");
            }
            // Longer than the coarse margin: tokio's timer, then the thread.
            let at = Instant::now() + COARSE_MARGIN + Duration::from_millis(1);
            sleep_until(at).await;
            assert!(Instant::now() >= at, "a long wait ended early");
        };
        tokio::time::timeout(Duration::from_secs(30), waits)
            .await
            .expect("every wait ended");
    }

    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, AtomicOrdering::Relaxed);
        }
    }

    /// The timer thread's queue hands out what is due, earliest first, and
    /// names the next deadline to park until.
    #[test]
    fn due_waiters_leave_the_queue_in_deadline_order() {
        let service = Service {
            queue: Mutex::new(BinaryHeap::new()),
            thread: std::thread::current(),
        };
        let start = Instant::now();
        let ms = |n: u64| start + Duration::from_millis(n);
        let counts: Vec<Arc<Count>> = (0..3)
            .map(|_| Arc::new(Count(AtomicUsize::new(0))))
            .collect();
        for (deadline, count) in [ms(30), ms(10), ms(20)].into_iter().zip(&counts) {
            service.register(deadline, Waker::from(Arc::clone(count)));
        }
        let (due, next) = service.due(ms(5));
        assert!(due.is_empty());
        assert_eq!(next, Some(ms(10)));
        let (due, next) = service.due(ms(20));
        assert_eq!(due.len(), 2, "the 10 and 20 ms waiters");
        assert_eq!(next, Some(ms(30)));
        let woken = || -> Vec<usize> {
            counts
                .iter()
                .map(|c| c.0.load(AtomicOrdering::Relaxed))
                .collect()
        };
        let mut due = due.into_iter();
        due.next().expect("two due").wake();
        assert_eq!(woken(), [0, 1, 0], "the 10 ms waiter comes first");
        due.for_each(Waker::wake);
        assert_eq!(woken(), [0, 1, 1], "the 30 ms waiter still waits");
        let (due, next) = service.due(ms(30));
        assert_eq!((due.len(), next), (1, None));
    }
}
