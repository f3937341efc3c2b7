//! The node processes of a topology: children of the runner, started from the
//! same binary, each with its log in a file of the run directory.
//!
//! No process may outlive the topology, however the runner ends:
//!
//! * each child runs in its own process group, so a Ctrl-C in the terminal reaches
//!   only the runner, which stops PoPs, then origins, then backends, in order;
//! * each child's stdin is a pipe from the runner, and [`STOP_ON_STDIN_EOF`] tells
//!   it to shut down when that pipe closes. Closing it is how the runner asks for
//!   a graceful stop, and the kernel closes it if the runner dies, even of SIGKILL;
//! * a child still running after [`STOP_GRACE`] is killed, and every child is
//!   killed when its handle is dropped.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{ChildStdin, ChildStdout, Command};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::UpError;
pub use crate::signals::STOP_ON_STDIN_EOF;

/// How long a child may take to stop after its stdin closes.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// How long a child may take from spawn to ready (generous: a loaded 2-core
/// machine starting a dozen processes).
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// What to start and how to tell it is ready.
pub struct Spec<'a> {
    pub node: String,
    pub args: Vec<String>,
    /// The stdout line prefix that says the node serves (`ready`, `listening on`).
    pub ready: &'a str,
    pub log: PathBuf,
}

/// A child that ended by itself, as the supervisor reports it.
#[derive(Debug)]
pub struct Exit {
    pub node: String,
    pub status: String,
    pub log: PathBuf,
}

/// A running node process.
pub struct Node {
    pub node: String,
    pub pid: u32,
    /// Its stdout lines up to and including the ready line.
    pub lines: Vec<String>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Node {
    /// Addresses from `listening KIND ADDR` lines, in the order printed.
    pub fn addrs(&self, kind: &str) -> Vec<std::net::SocketAddr> {
        self.lines
            .iter()
            .filter_map(|l| l.strip_prefix("listening "))
            .filter_map(|l| l.split_once(' '))
            .filter(|(k, _)| *k == kind)
            .filter_map(|(_, a)| a.split_whitespace().next()?.parse().ok())
            .collect()
    }

    /// Asks the node to stop (closes its stdin), kills it after [`STOP_GRACE`],
    /// and waits until it is gone.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}

/// A node dropped without [`Node::stop`] (a start-up interrupted, a forced
/// stop) is killed at once: its supervisor task is aborted, which drops the
/// child (`kill_on_drop`), whatever becomes of the runtime afterwards.
impl Drop for Node {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts a node and waits for its ready line. Unexpected exits after that are
/// sent to `exits`.
pub async fn start(spec: Spec<'_>, exits: mpsc::Sender<Exit>) -> Result<Node, UpError> {
    let exe = std::env::current_exe().map_err(|source| UpError::Spawn {
        node: spec.node.clone(),
        source,
    })?;
    start_program(&exe, spec, exits).await
}

/// [`start`] with `exe` for the program.
async fn start_program(
    exe: &Path,
    spec: Spec<'_>,
    exits: mpsc::Sender<Exit>,
) -> Result<Node, UpError> {
    let log = std::fs::File::create(&spec.log).map_err(super::file_error("creating", &spec.log))?;
    let spawn_err = |source| UpError::Spawn {
        node: spec.node.clone(),
        source,
    };
    let mut child = Command::new(exe)
        .args(&spec.args)
        .env(STOP_ON_STDIN_EOF, "1")
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(spawn_err)?;
    let pid = child.id().unwrap_or_default();
    let (stdin, stdout) = (child.stdin.take(), child.stdout.take());
    let mut lines = stdout.map(|s| BufReader::new(s).lines());
    let read = tokio::time::timeout(READY_TIMEOUT, read_until_ready(&mut lines, spec.ready)).await;
    let printed = match read {
        Ok(Some(printed)) => printed,
        Ok(None) => {
            // Its stdout ended (or was no text) before `ready`: it is
            // exiting, or alive and of no use; a second at most to find
            // out which, then it is killed.
            let status = match tokio::time::timeout(Duration::from_secs(1), child.wait()).await {
                Ok(waited) => waited.map_or_else(|e| e.to_string(), |s| s.to_string()),
                Err(_) => {
                    let _ = child.kill().await;
                    "running, its stdout ended or not text; killed".into()
                }
            };
            let log = log_tail(&spec.log);
            return Err(UpError::NotReady {
                node: spec.node,
                status,
                log,
            });
        }
        Err(_) => {
            let _ = child.kill().await;
            let log = log_tail(&spec.log);
            let secs = READY_TIMEOUT.as_secs();
            return Err(UpError::ReadyTimeout {
                node: spec.node,
                secs,
                log,
            });
        }
    };
    tracing::info!(node = %spec.node, pid, "ready");
    let (stop, stopped) = oneshot::channel();
    let watch = Watch {
        node: spec.node.clone(),
        log: spec.log.clone(),
        exits,
    };
    let task = tokio::spawn(supervise(child, stdin, lines, stopped, watch));
    Ok(Node {
        node: spec.node,
        pid,
        lines: printed,
        stop: Some(stop),
        task,
    })
}

type StdoutLines = Option<Lines<BufReader<ChildStdout>>>;

/// Stdout lines up to the first starting with `ready`; `None` if stdout ends first.
async fn read_until_ready(lines: &mut StdoutLines, ready: &str) -> Option<Vec<String>> {
    let lines = lines.as_mut()?;
    let mut printed = Vec::new();
    while let Ok(Some(line)) = lines.next_line().await {
        let done = line.starts_with(ready);
        printed.push(line);
        if done {
            return Some(printed);
        }
    }
    None
}

struct Watch {
    node: String,
    log: PathBuf,
    exits: mpsc::Sender<Exit>,
}

/// Owns the child: drains its stdout, reports an exit nobody asked for, and
/// stops it (stdin closed, then killed after the grace period) when asked;
/// aborted (the child killed) when its [`Node`] is dropped.
async fn supervise(
    mut child: tokio::process::Child,
    stdin: Option<ChildStdin>,
    mut lines: StdoutLines,
    stopped: oneshot::Receiver<()>,
    watch: Watch,
) {
    let drain = async {
        if let Some(lines) = lines.as_mut() {
            while let Ok(Some(_)) = lines.next_line().await {}
        }
        std::future::pending::<()>().await
    };
    tokio::select! {
        status = child.wait() => {
            let status = status.map_or_else(|e| e.to_string(), |s| s.to_string());
            let exit = Exit { node: watch.node, status, log: watch.log };
            let _ = watch.exits.send(exit).await;
            return;
        }
        _ = stopped => {}
        () = drain => {}
    }
    drop(stdin);
    if tokio::time::timeout(STOP_GRACE, child.wait())
        .await
        .is_err()
    {
        tracing::warn!(node = %watch.node, "did not stop in time; killing it");
        let _ = child.kill().await;
    }
}

/// The last lines of a node's log, for error messages (`""` when empty).
pub fn log_tail(path: &Path) -> String {
    const LINES: usize = 12;
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    if lines.is_empty() {
        return String::new();
    }
    let tail = lines[lines.len().saturating_sub(LINES)..].join("\n  ");
    format!("; last lines of {}:\n  {tail}", path.display())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A child that closes its stdout before `ready` and stays up is
    /// reported and killed at once, not waited for.
    #[tokio::test]
    async fn a_child_that_closes_its_stdout_and_lives_on_is_killed() {
        let dir = tempfile::tempdir().unwrap();
        let spec = Spec {
            node: "mute".into(),
            args: vec!["-c".into(), "exec >&-; sleep 60".into()],
            ready: "ready",
            log: dir.path().join("mute.log"),
        };
        let (exits, _) = mpsc::channel(1);
        let started = std::time::Instant::now();
        let result = start_program(Path::new("/bin/sh"), spec, exits).await;
        let Err(UpError::NotReady { node, status, .. }) = result else {
            panic!("not refused as not ready");
        };
        assert_eq!(node, "mute");
        assert_eq!(status, "running, its stdout ended or not text; killed");
        assert!(started.elapsed() < READY_TIMEOUT, "{:?}", started.elapsed());
    }
}
