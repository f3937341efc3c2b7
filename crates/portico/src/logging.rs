//! Log setup: human-readable text or one JSON object per line. `RUST_LOG`
//! filters as usual (default `info`). Text is coloured only on a terminal.
//!
//! Lines are formatted on the thread that logs and written to stderr in
//! batches by a thread of their own, as nginx's `access_log ... buffer=
//! flush=` does:
//!
//! * A write to stderr is a blocking call (to a pipe that a supervisor may
//!   drain slowly, or a terminal), and it was on every request's path: hyper
//!   polls a short response body to its end, which writes the access line,
//!   before it flushes the response (`perf trace` of a PoP: a 385-byte
//!   `write(2)` ahead of the response's `writev`).
//! * A writer thread woken for every line (a channel per line, as
//!   `tracing-appender` does) still cost each request a futex wake-up and
//!   15 µs of the writer's CPU with two or three context switches, on
//!   whichever CPU the request needed next.
//!
//! So a logging thread only appends its line to a shared buffer. The writer
//! wakes every [`FLUSH_INTERVAL`], or as soon as [`BATCH`] bytes wait, and
//! writes what is queued in one call. Nothing is dropped: past [`LIMIT`]
//! queued bytes the logging thread writes the queue itself, as a direct write
//! would, and whatever is queued is written when the node stops.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

use crate::cli::LogFormat;

/// How long a line may wait before it is written.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(100);
/// Queued bytes that wake the writer before its interval.
pub const BATCH: usize = 64 * 1024;
/// Queued bytes past which a logging thread writes the queue itself.
pub const LIMIT: usize = 4 * 1024 * 1024;

/// Lines waiting for the writer, and the order in which batches go out.
struct Queue<W> {
    pending: Mutex<Vec<u8>>,
    /// Signalled when [`BATCH`] bytes wait or the queue closes.
    ready: Condvar,
    /// Held while a batch is taken and written, so batches keep their order.
    out: Mutex<W>,
    closed: AtomicBool,
    /// How long a line may wait ([`FLUSH_INTERVAL`] but in tests).
    interval: Duration,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A thread that panicked while logging left whole lines behind: go on.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<W: Write> Queue<W> {
    fn new(out: W, interval: Duration) -> Self {
        Queue {
            interval,
            pending: Mutex::new(Vec::with_capacity(BATCH)),
            ready: Condvar::new(),
            out: Mutex::new(out),
            closed: AtomicBool::new(false),
        }
    }

    /// Queues one formatted line (or writes it at once once closed).
    fn push(&self, line: &[u8]) {
        let queued = {
            let mut pending = lock(&self.pending);
            pending.extend_from_slice(line);
            pending.len()
        };
        if self.closed.load(Ordering::Acquire) || queued >= LIMIT {
            self.flush();
        } else if queued >= BATCH {
            self.ready.notify_one();
        }
    }

    /// Writes everything queued so far, in order.
    fn flush(&self) {
        let mut out = lock(&self.out);
        let batch = std::mem::take(&mut *lock(&self.pending));
        if batch.is_empty() {
            return;
        }
        // Nowhere to report a failed write to stderr: the lines are lost, as
        // a direct write's would be.
        let _ = out.write_all(&batch);
        let _ = out.flush();
    }

    /// The writer thread: a batch every interval, or sooner when full.
    fn run(&self) {
        while !self.closed.load(Ordering::Acquire) {
            let pending = lock(&self.pending);
            let waited = self.ready.wait_timeout_while(pending, self.interval, |p| {
                p.len() < BATCH && !self.closed.load(Ordering::Acquire)
            });
            drop(waited.unwrap_or_else(PoisonError::into_inner));
            self.flush();
        }
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        // Under the lock, so the writer cannot miss it between its check and
        // its wait.
        let _pending = lock(&self.pending);
        self.ready.notify_one();
    }
}

/// What the subscriber writes each line through.
struct Lines<W>(Arc<Queue<W>>);

impl<W: Write> Write for &Lines<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.push(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a, W: Write + 'a> MakeWriter<'a> for Lines<W> {
    type Writer = &'a Lines<W>;

    fn make_writer(&'a self) -> Self::Writer {
        self
    }
}

/// The log writer's thread; dropping this writes out what is still queued.
#[must_use = "dropping the guard stops the log writer"]
pub struct Flush<W: Write> {
    queue: Arc<Queue<W>>,
    /// None when the thread could not start (lines are then written at once).
    thread: Option<std::thread::JoinHandle<()>>,
}

impl<W: Write> Drop for Flush<W> {
    fn drop(&mut self) {
        self.queue.close();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        self.queue.flush();
    }
}

/// Starts the writer thread for `out`: the writer for the subscriber, and
/// the guard that stops it. Without a thread, lines are written at once.
fn batched<W: Write + Send + 'static>(out: W, interval: Duration) -> (Lines<W>, Flush<W>) {
    let queue = Arc::new(Queue::new(out, interval));
    let writer = Arc::clone(&queue);
    let thread = std::thread::Builder::new()
        .name("portico-log".into())
        .spawn(move || writer.run())
        .map_err(|err| {
            // Closed from the start: every line is written by its own thread.
            queue.closed.store(true, Ordering::Release);
            eprintln!("portico: no log writer thread ({err}); writing lines directly");
        })
        .ok();
    let flush = Flush {
        queue: Arc::clone(&queue),
        thread,
    };
    (Lines(queue), flush)
}

pub fn init(format: LogFormat) -> Flush<std::io::Stderr> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let (writer, flush) = batched(std::io::stderr(), FLUSH_INTERVAL);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        // Colours for a person at a terminal; none in files and pipes.
        .with_ansi(std::io::stderr().is_terminal());
    let result = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    if let Err(err) = result {
        eprintln!("portico: logging already initialised: {err}");
    }
    flush
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that records each `write_all` batch.
    #[derive(Clone, Default)]
    struct Batches(Arc<Mutex<Vec<Vec<u8>>>>);

    impl Write for Batches {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            lock(&self.0).push(buf.to_vec());
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Batches {
        fn all(&self) -> Vec<Vec<u8>> {
            lock(&self.0).clone()
        }
    }

    #[test]
    fn lines_are_written_within_the_interval_without_a_stop() {
        let out = Batches::default();
        let (lines, flush) = batched(out.clone(), Duration::from_millis(20));
        (&lines).write_all(b"one\n").unwrap();
        (&lines).write_all(b"two\n").unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while out.all().concat() != b"one\ntwo\n" {
            assert!(std::time::Instant::now() < deadline, "never written");
            std::thread::sleep(Duration::from_millis(5));
        }
        drop(flush);
    }

    #[test]
    fn queued_lines_go_out_together_and_lines_after_the_stop_at_once() {
        let out = Batches::default();
        // An interval no test outlives: only the stop writes the queue.
        let (lines, flush) = batched(out.clone(), Duration::from_secs(3600));
        for i in 0..3 {
            (&lines)
                .write_all(format!("line {i}\n").as_bytes())
                .unwrap();
        }
        assert!(out.all().is_empty(), "no write per line");
        drop(flush);
        assert_eq!(out.all(), [b"line 0\nline 1\nline 2\n".to_vec()]);
        (&lines).write_all(b"late\n").unwrap();
        assert_eq!(out.all()[1], b"late\n");
    }

    #[test]
    fn a_full_batch_wakes_the_writer_before_its_interval() {
        let out = Batches::default();
        let (lines, flush) = batched(out.clone(), Duration::from_secs(3600));
        (&lines).write_all(&vec![b'x'; BATCH]).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while out.all().is_empty() {
            assert!(std::time::Instant::now() < deadline, "never written");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(out.all().concat().len(), BATCH);
        drop(flush);
    }

    #[test]
    fn past_the_limit_the_logging_thread_writes_in_order() {
        let queue = Queue::new(Batches::default(), Duration::from_secs(3600));
        let big = vec![b'x'; LIMIT - 1];
        queue.push(&big);
        assert!(lock(&queue.out).all().is_empty(), "below the limit: queued");
        queue.push(b"!\n");
        let written = lock(&queue.out).all();
        assert_eq!(written.len(), 1);
        assert_eq!(written[0].len(), LIMIT + 1);
        assert!(written[0].ends_with(b"x!\n"));
    }
}
