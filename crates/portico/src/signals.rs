//! Process signals: Ctrl-C/SIGTERM stop, SIGHUP reloads.

use tokio::signal::unix::{Signal, SignalKind, signal};

/// Environment variable set by `portico up` on its children: with it, a node also
/// stops when its stdin reaches end of file, i.e. when the parent closes the pipe
/// or dies (the kernel closes it even on SIGKILL), so a topology never leaves
/// processes behind.
pub const STOP_ON_STDIN_EOF: &str = "PORTICO_STOP_ON_STDIN_EOF";

/// SIGHUP, caught from now on (by default it ends the process); `None`
/// where it cannot be.
pub fn hangup() -> Option<Signal> {
    match signal(SignalKind::hangup()) {
        Ok(hup) => Some(hup),
        Err(err) => {
            tracing::warn!(%err, "cannot listen for SIGHUP");
            None
        }
    }
}

/// Completes on the first SIGINT or SIGTERM (or stdin EOF, see
/// [`STOP_ON_STDIN_EOF`]), caught from the call on, not from the first
/// poll: a node awaits it once ready, and one sent while it starts (by a
/// supervisor that gave up waiting, or right after `ready`) stops it
/// cleanly then instead of killing it.
pub fn shutdown() -> impl Future<Output = ()> + Send + 'static {
    let mut stops = Stops::new();
    async move {
        tokio::select! {
            () = stops.next() => {}
            () = stdin_closed() => {}
        }
        tracing::info!("shutting down");
    }
}

/// SIGINT (Ctrl-C) and SIGTERM as they come, caught from creation on: each
/// [`Stops::next`] completes on the next one, and one that arrives between
/// two calls is not lost (so a runner can ask for a second one to force).
pub struct Stops {
    interrupt: Option<Signal>,
    terminate: Option<Signal>,
}

impl Stops {
    pub fn new() -> Stops {
        let catch = |kind: SignalKind, name: &str| match signal(kind) {
            Ok(s) => Some(s),
            Err(err) => {
                tracing::warn!(%err, "cannot listen for {name}; it will not stop this process");
                None
            }
        };
        Stops {
            interrupt: catch(SignalKind::interrupt(), "SIGINT"),
            terminate: catch(SignalKind::terminate(), "SIGTERM"),
        }
    }

    /// Completes on the next SIGINT or SIGTERM.
    pub async fn next(&mut self) {
        tokio::select! {
            () = recv(&mut self.interrupt) => {}
            () = recv(&mut self.terminate) => {}
        }
    }
}

/// The next delivery of `signal`; never, if it could not be caught.
async fn recv(signal: &mut Option<Signal>) {
    match signal {
        Some(s) => {
            // `None`: the signal driver is gone (runtime shutting down).
            if s.recv().await.is_none() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending().await,
    }
}

/// Completes when stdin reaches end of file, if [`STOP_ON_STDIN_EOF`] is set;
/// never otherwise. The read blocks, so it runs on its own thread (not tokio's
/// blocking pool, whose threads would hold up the runtime's shutdown).
async fn stdin_closed() {
    if std::env::var_os(STOP_ON_STDIN_EOF).is_none() {
        return std::future::pending().await;
    }
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let spawned = std::thread::Builder::new()
        .name("stdin-watch".into())
        .spawn(move || {
            use std::io::Read;
            let mut buf = [0u8; 64];
            let mut stdin = std::io::stdin();
            loop {
                match stdin.read(&mut buf) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
            drop(tx);
        });
    match spawned {
        // Resolves (with Err) when the thread drops the sender at EOF.
        Ok(_) => {
            let _ = rx.await;
            tracing::info!("stdin closed by the parent");
        }
        Err(err) => {
            tracing::warn!(%err, "cannot watch stdin; only signals stop this process");
            std::future::pending().await
        }
    }
}
