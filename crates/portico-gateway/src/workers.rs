//! Worker threads that each run a current-thread tokio runtime.
//!
//! A listener or link that spawns a connection's tasks on one of these keeps
//! that connection on one thread for its whole life: its QUIC driver, its
//! request tasks and the backend connections they open wake each other
//! without crossing threads (nginx's worker model; pingora's "no steal"
//! runtime). The HTTP/3 listeners and the origin's backbone links use it.

use tokio::runtime::Handle;
use tokio::sync::watch;

/// Threads that run whatever is spawned on their runtimes until
/// [`WorkerPool::stop`].
pub struct WorkerPool {
    done: watch::Sender<bool>,
    threads: Vec<std::thread::JoinHandle<()>>,
    handles: Vec<Handle>,
}

impl WorkerPool {
    /// Starts up to `count` threads named `{name}-{first}`, `{name}-{first + 1}`...
    /// A thread that fails to start is logged and left out (its share goes
    /// to the others), so the pool may be smaller than asked, even empty.
    pub fn start(name: &str, first: usize, count: usize) -> WorkerPool {
        let (done, done_rx) = watch::channel(false);
        let mut threads = Vec::with_capacity(count);
        let mut handles = Vec::with_capacity(count);
        for index in first..first + count {
            let runtime = match current_thread_runtime() {
                Ok(rt) => rt,
                Err(err) => {
                    tracing::error!(%err, name, index, "worker runtime failed to start");
                    continue;
                }
            };
            let handle = runtime.handle().clone();
            let mut done = done_rx.clone();
            let run = move || {
                runtime.block_on(async move {
                    let _ = done.wait_for(|d| *d).await;
                });
            };
            match std::thread::Builder::new()
                .name(format!("{name}-{index}"))
                .spawn(run)
            {
                Ok(thread) => {
                    threads.push(thread);
                    handles.push(handle);
                }
                Err(err) => tracing::error!(%err, name, index, "starting a worker thread failed"),
            }
        }
        WorkerPool {
            done,
            threads,
            handles,
        }
    }

    /// The workers' runtimes, to spawn on.
    pub fn handles(&self) -> &[Handle] {
        &self.handles
    }

    /// Stops the workers and waits for their threads (blocking: call it from
    /// `spawn_blocking` or a plain thread). Tasks still on a worker are
    /// dropped with its runtime.
    pub fn stop(self) {
        let _ = self.done.send(true);
        for thread in self.threads {
            let _ = thread.join();
        }
    }
}

/// A current-thread runtime with I/O and timers.
pub fn current_thread_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tasks_run_on_the_workers_until_stop() {
        let pool = WorkerPool::start("test-worker", 1, 2);
        assert_eq!(pool.handles().len(), 2);
        let (tx, rx) = std::sync::mpsc::channel();
        for handle in pool.handles() {
            let tx = tx.clone();
            handle.spawn(async move {
                let name = std::thread::current().name().map(str::to_owned);
                let _ = tx.send(name);
            });
        }
        let mut names: Vec<_> = (0..2).filter_map(|_| rx.recv().ok().flatten()).collect();
        names.sort();
        assert_eq!(names, ["test-worker-1", "test-worker-2"]);
        pool.stop();
    }
}
