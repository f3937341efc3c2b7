//! Portico's built-in demo backend (`portico backend`).
//!
//! Tests, benchmarks and topologies need a backend whose behaviour is known
//! exactly, so every answer here is deterministic:
//!
//! * `/status/{code}` answers with that status and a small JSON body.
//! * `/delay/{ms}` waits `ms` milliseconds (at most 60 s), then echoes.
//! * `/bytes/{n}` streams `n` bytes (at most 1 GiB) of a fixed pattern in 64 KiB chunks.
//! * `/cache/{seconds}` answers with `Cache-Control: public, max-age=seconds`, a
//!   strong `ETag` derived from the path, `Last-Modified`, and 304 to a matching
//!   `If-None-Match`.
//! * anything else echoes the request as JSON: method, path, query, headers and
//!   the body's length and SHA-256 (the body itself when it is short UTF-8).
//!
//! Request bodies are consumed as a stream, so a 50 MB upload costs no more
//! memory than one chunk. The server speaks HTTP/1.1 and HTTP/2 (h2c with prior
//! knowledge on plain TCP, ALPN over TLS).
#![forbid(unsafe_code)]

mod handler;
mod server;

pub use handler::{handle, pattern_byte};
pub use server::{DemoError, TlsFiles, serve, serve_tls};
