//! CPU sets: `[node] cpus`, which confines a node to some CPUs as `taskset`
//! or nginx's `worker_cpu_affinity` would, and the helpers the probe's
//! placement shares.
//!
//! A node's set is applied before its runtime is built, on the main thread:
//! every thread started after that (runtime workers, backbone link workers,
//! the log writer) inherits it, and the runtimes, sized by
//! `available_parallelism`, get one worker per CPU of the set. Two nodes on
//! one machine, each on CPUs of its own, then stop trading places with each
//! other and with their neighbours: the 1 KB chain of
//! `scripts/bench-chain.sh` (PoP, origin, backend and wrk on two CPUs) left
//! 15–16 % of the machine idle with both nodes free to move, 11–12 % with
//! the PoP on CPU 0 and the origin on CPU 1, and served 6–9 % more requests
//! (three runs of five rounds).

use nix::sched::{CpuSet, sched_getaffinity, sched_setaffinity};
use nix::unistd::Pid;

/// Why a node could not be confined to its CPUs.
#[derive(Debug, thiserror::Error)]
pub enum CpusError {
    #[error("[node] cpus: CPU {missing} not available to this process (it may use {allowed})")]
    Unavailable { missing: String, allowed: String },
    #[error("[node] cpus: {0}")]
    System(nix::Error),
}

/// Confines the calling thread, and every thread it starts from now on, to
/// `cpus`; nothing when `cpus` is empty. Every CPU must be one this process
/// may use now.
pub fn confine(cpus: &[usize]) -> Result<(), CpusError> {
    if cpus.is_empty() {
        return Ok(());
    }
    let allowed = cpus_of(&sched_getaffinity(Pid::from_raw(0)).map_err(CpusError::System)?);
    let missing: Vec<usize> = cpus
        .iter()
        .copied()
        .filter(|cpu| !allowed.contains(cpu))
        .collect();
    if !missing.is_empty() {
        return Err(CpusError::Unavailable {
            missing: list(&missing),
            allowed: list(&allowed),
        });
    }
    sched_setaffinity(Pid::from_raw(0), &set_of(cpus)).map_err(CpusError::System)
}

/// The CPUs of `set`, ascending.
pub fn cpus_of(set: &CpuSet) -> Vec<usize> {
    (0..CpuSet::count())
        .filter(|&cpu| set.is_set(cpu).unwrap_or(false))
        .collect()
}

/// A set of `cpus`; numbers past the set's capacity are left out (config
/// checking refuses them first).
pub fn set_of(cpus: &[usize]) -> CpuSet {
    let mut set = CpuSet::new();
    for &cpu in cpus {
        let _ = set.set(cpu);
    }
    set
}

/// `0,1,3` for messages.
pub fn list(cpus: &[usize]) -> String {
    cpus.iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `f` on a thread of its own, so that confining it leaves the
    /// test harness's threads alone.
    fn on_thread<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::spawn(f).join().expect("thread")
    }

    fn mine() -> Vec<usize> {
        cpus_of(&sched_getaffinity(Pid::from_raw(0)).expect("affinity"))
    }

    #[test]
    fn a_confined_thread_and_the_threads_it_starts_keep_to_the_set() {
        let first = mine()[0];
        let (own, child, parallelism) = on_thread(move || {
            confine(&[first]).expect("confine");
            let child = std::thread::spawn(mine).join().expect("child");
            let parallelism = std::thread::available_parallelism().map_or(0, usize::from);
            (mine(), child, parallelism)
        });
        assert_eq!(own, [first]);
        assert_eq!(child, [first], "a thread started later inherits the set");
        assert_eq!(parallelism, 1, "runtimes sized after it get one worker");
        assert!(on_thread(|| confine(&[])).is_ok(), "empty: left as it is");
    }

    #[test]
    fn a_cpu_the_process_may_not_use_is_refused_and_nothing_moves() {
        let before = mine();
        let first = before[0];
        let err = on_thread(move || {
            let result = confine(&[first, 1023]).map_err(|e| e.to_string());
            (result, mine())
        });
        assert_eq!(
            err.0,
            Err(format!(
                "[node] cpus: CPU 1023 not available to this process (it may use {})",
                list(&before)
            ))
        );
        assert_eq!(err.1, before, "the thread's set is unchanged");
    }
}
