//! Keeping the simulated links off the simulated hosts' CPUs while the probe
//! measures.
//!
//! A topology on one machine runs its links as relays (in the `up` process,
//! or `portico relay` processes in front of a peer) beside the processes that
//! play its hosts. A relay releases each packet on time by waking shortly
//! before the deadline and yielding until it passes (`portico_netsim`'s
//! precise timing), so at the very moment a packet arrives the relay holds a
//! CPU that the receiving host may then wait for. Real links take no CPU from
//! the hosts at either end. On a 2-CPU machine, relays confined to one CPU and
//! hosts and probe to the other made Frankfurt's path of `world.toml` faster
//! by a median 0.29 ms for a cold TCP + TLS request (16 of 20 interleaved
//! pairs), 0.16 ms for cold QUIC (14 of 20) and 0.16 ms for a warm miss (17
//! of 20).
//!
//! So, by default, while the probe measures, every thread of the link
//! processes runs on the first CPU the probe may use, and every thread of the
//! host processes (the manifest's `processes`) and the probe's own client
//! thread on the others; each thread's previous CPU set is restored when the
//! value is dropped. The probe sends one request at a time, so hosts sharing
//! their CPUs is no loss. With one CPU, or no link processes named, nothing
//! moves.

use std::path::Path;

use nix::sched::{CpuSet, sched_getaffinity, sched_setaffinity};
use nix::unistd::Pid;

use super::manifest::Manifest;
use crate::cpus::{cpus_of, list, set_of};

/// How the probe placed links and hosts; printed with the results. Dropping
/// it puts every thread it moved back.
#[derive(Debug)]
pub enum CpuPlacement {
    /// Links on CPU `link`, hosts on `hosts`, until dropped.
    Separated {
        link: usize,
        hosts: Vec<usize>,
        /// Each thread moved, with the CPU set it had, in order.
        moved: Vec<(Pid, CpuSet)>,
    },
    /// Left where the scheduler puts them: why.
    Shared(String),
}

impl CpuPlacement {
    /// Moves every thread of the manifest's link processes to the first CPU
    /// this process may use, and every thread of its host processes and
    /// `client` (the probe's client thread) to the others; `shared` skips it.
    pub fn separate(manifest: &Manifest, client: Pid, shared: bool) -> CpuPlacement {
        if shared {
            return CpuPlacement::Shared("--shared-cpus".into());
        }
        if manifest.links.is_empty() {
            return CpuPlacement::Shared("the manifest names no link processes".into());
        }
        let cpus = match sched_getaffinity(Pid::from_raw(0)) {
            Ok(set) => cpus_of(&set),
            Err(err) => return CpuPlacement::Shared(format!("reading the CPU set: {err}")),
        };
        let Some((&first, rest)) = cpus.split_first().filter(|(_, rest)| !rest.is_empty()) else {
            return CpuPlacement::Shared("one CPU".into());
        };
        let (link_set, host_set) = (set_of(&[first]), set_of(rest));
        let mut moved = Vec::new();
        for &pid in &manifest.links {
            for tid in threads(pid) {
                place(tid, &link_set, &mut moved);
            }
        }
        for p in &manifest.processes {
            for tid in threads(p.pid) {
                place(tid, &host_set, &mut moved);
            }
        }
        // After the links: when the probe runs the topology itself, its own
        // process is the link process, all but this thread.
        place(client, &host_set, &mut moved);
        CpuPlacement::Separated {
            link: first,
            hosts: rest.to_vec(),
            moved,
        }
    }

    /// One line for the report: where links and hosts ran during the probe.
    pub fn describe(&self) -> String {
        match self {
            CpuPlacement::Separated { link, hosts, .. } => format!(
                "CPU placement: link relays on CPU {link}, hosts and the probe's client on CPU {} during the probe",
                list(hosts)
            ),
            CpuPlacement::Shared(why) => {
                format!("CPU placement: links and hosts on shared CPUs ({why})")
            }
        }
    }
}

impl Drop for CpuPlacement {
    fn drop(&mut self) {
        if let CpuPlacement::Separated { moved, .. } = self {
            // In reverse, so that a thread moved twice gets its first set
            // back; threads that have exited since are skipped.
            for (tid, set) in moved.drain(..).rev() {
                let _ = sched_setaffinity(tid, &set);
            }
        }
    }
}

/// Moves `tid` to `set`, remembering where it was; a thread that has exited,
/// or may not be moved, is left alone.
fn place(tid: Pid, set: &CpuSet, moved: &mut Vec<(Pid, CpuSet)>) {
    let Ok(before) = sched_getaffinity(tid) else {
        return;
    };
    if sched_setaffinity(tid, set).is_ok() {
        moved.push((tid, before));
    }
}

/// The threads of process `pid` (none if it has exited).
fn threads(pid: u32) -> Vec<Pid> {
    let Ok(dir) = std::fs::read_dir(Path::new("/proc").join(pid.to_string()).join("task")) else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .map(Pid::from_raw)
        .collect()
}

#[cfg(test)]
mod tests {
    use std::process::{Child, Command};

    use super::*;
    use crate::topology::manifest::ProcessInfo;

    fn manifest(links: Vec<u32>, hosts: &[&Child]) -> Manifest {
        Manifest {
            topology: "t".into(),
            entries: Vec::new(),
            admin: Vec::new(),
            ca: "/nonexistent/ca.pem".into(),
            demo_key: None,
            processes: hosts
                .iter()
                .map(|c| ProcessInfo {
                    node: "host".into(),
                    kind: "pop".into(),
                    pid: c.id(),
                })
                .collect(),
            links,
            run_dir: "/nonexistent".into(),
        }
    }

    fn allowed(pid: u32) -> Vec<usize> {
        cpus_of(&sched_getaffinity(Pid::from_raw(pid as i32)).expect("affinity"))
    }

    struct Reaped(Child);
    impl Drop for Reaped {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn sleeper() -> Reaped {
        Reaped(Command::new("sleep").arg("30").spawn().expect("sleep"))
    }

    #[test]
    fn shared_when_asked_or_when_no_link_process_is_named() {
        let host = sleeper();
        let m = manifest(vec![host.0.id()], &[]);
        let asked = CpuPlacement::separate(&m, Pid::this(), true);
        assert_eq!(
            asked.describe(),
            "CPU placement: links and hosts on shared CPUs (--shared-cpus)"
        );
        let none = CpuPlacement::separate(&manifest(Vec::new(), &[&host.0]), Pid::this(), false);
        assert_eq!(
            none.describe(),
            "CPU placement: links and hosts on shared CPUs (the manifest names no link processes)"
        );
    }

    #[test]
    fn links_get_the_first_cpu_hosts_the_rest_and_all_is_put_back() {
        let (link, host) = (sleeper(), sleeper());
        let before = (allowed(link.0.id()), allowed(host.0.id()));
        let cpus = allowed(std::process::id());
        let m = manifest(vec![link.0.id()], &[&host.0]);
        // A thread of this test process plays the probe's client.
        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let client = std::thread::spawn(move || {
            tx.send(nix::unistd::gettid()).expect("tid");
            let _ = done_rx.recv();
        });
        let tid = rx.recv().expect("tid");
        let placement = CpuPlacement::separate(&m, tid, false);
        if cpus.len() < 2 {
            assert_eq!(
                placement.describe(),
                "CPU placement: links and hosts on shared CPUs (one CPU)"
            );
        } else {
            assert_eq!(allowed(link.0.id()), vec![cpus[0]]);
            assert_eq!(allowed(host.0.id()), cpus[1..].to_vec());
            assert_eq!(allowed(tid.as_raw() as u32), cpus[1..].to_vec());
            assert!(placement.describe().starts_with(&format!(
                "CPU placement: link relays on CPU {}, hosts and the probe's client on CPU ",
                cpus[0]
            )));
        }
        drop(placement);
        assert_eq!((allowed(link.0.id()), allowed(host.0.id())), before);
        assert_eq!(allowed(tid.as_raw() as u32), cpus);
        let _ = done_tx.send(());
        client.join().expect("client thread");
    }
}
