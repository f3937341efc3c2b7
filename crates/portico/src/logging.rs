//! Log setup: human-readable text or one JSON object per line. `RUST_LOG`
//! filters as usual (default `info`). Text is coloured only on a terminal.
//!
//! Lines are formatted on the thread that logs and written to stderr by a
//! thread of their own. A write to stderr is a blocking call (to a pipe that a
//! supervisor may drain slowly, or a terminal), and it was on every request's
//! path: hyper polls a short response body to its end, which writes the
//! access line, before it flushes the response, so a PoP's cold request waited
//! for its log line (`perf trace`: a 385-byte `write(2)` ahead of the
//! response's `writev`). Nothing is dropped: when the queue is full, logging
//! waits, as a direct write would.

use std::io::IsTerminal;

use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

use crate::cli::LogFormat;

/// The log writer's thread; dropping this writes out what is still queued.
#[must_use = "dropping the guard stops the log writer"]
pub struct Flush {
    _writer: WorkerGuard,
}

pub fn init(format: LogFormat) -> Flush {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(false)
        .thread_name("portico-log")
        .finish(std::io::stderr());
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
    Flush { _writer: guard }
}
