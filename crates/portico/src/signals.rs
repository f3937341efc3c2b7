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

/// Completes on the first SIGINT or SIGTERM (or stdin EOF, see [`STOP_ON_STDIN_EOF`]).
pub async fn shutdown() {
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(err) => {
            tracing::warn!(%err, "cannot listen for SIGTERM; only Ctrl-C stops this process");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                () = stdin_closed() => {}
            }
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
        () = stdin_closed() => {}
    }
    tracing::info!("shutting down");
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
