//! Test support: a `redis-server` of a test's own (feature `test-support`).

use std::time::Duration;

/// A `redis-server` of the test's own, on a Unix socket in a temporary
/// directory (or, [`Redis::start_tls`], TLS on a loopback port), stopped
/// when dropped.
pub struct Redis {
    child: std::process::Child,
    pub url: String,
    dir: tempfile::TempDir,
    /// Started by [`Redis::start_tls`].
    tls: bool,
}

/// The PEM files of a TLS server ([`Redis::start_tls`]).
pub struct TlsFiles<'a> {
    pub cert: &'a std::path::Path,
    pub key: &'a std::path::Path,
    /// What clients' certificates must chain to.
    pub ca: &'a std::path::Path,
    /// Whether a client must present a certificate.
    pub auth_clients: bool,
}

impl Redis {
    pub fn start() -> Self {
        let dir = tempfile::TempDir::new().unwrap();
        let child = Self::spawn(dir.path());
        let url = format!("redis+unix://{}", dir.path().join("redis.sock").display());
        Self {
            child,
            url,
            dir,
            tls: false,
        }
    }

    /// A server that speaks TLS only, on a port of 127.0.0.1 (`url` is
    /// `rediss://127.0.0.1:PORT`), ready once its log says so. The port is
    /// one the kernel just gave out and took back: if another process takes
    /// it first, the server exits saying so, and another port is tried.
    /// (Not for [`Redis::restart_empty`] or [`Redis::command`], which speak
    /// to a Unix socket.)
    pub fn start_tls(files: TlsFiles<'_>) -> Self {
        for _ in 0..10 {
            let dir = tempfile::TempDir::new().unwrap();
            let log = dir.path().join("redis.log");
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .unwrap()
                .port();
            let child = std::process::Command::new("redis-server")
                .args([
                    "--port",
                    "0",
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ])
                .args(["--tls-port", &port.to_string()])
                .arg("--tls-cert-file")
                .arg(files.cert)
                .arg("--tls-key-file")
                .arg(files.key)
                .arg("--tls-ca-cert-file")
                .arg(files.ca)
                .args([
                    "--tls-auth-clients",
                    if files.auth_clients { "yes" } else { "no" },
                ])
                .arg("--dir")
                .arg(dir.path())
                .arg("--logfile")
                .arg(&log)
                .stdout(std::process::Stdio::null())
                .spawn()
                .expect("redis-server (the Debian package redis-server; .ci/run installs it)");
            // Dropped (killed) on every way out but success.
            let mut server = Self {
                child,
                url: format!("rediss://127.0.0.1:{port}"),
                dir,
                tls: true,
            };
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            loop {
                let said = std::fs::read_to_string(&log).unwrap_or_default();
                if said.contains("Ready to accept connections") {
                    return server;
                }
                if server.child.try_wait().ok().flatten().is_some() {
                    assert!(
                        said.contains("Address already in use"),
                        "redis-server did not start: {said}"
                    );
                    break; // the port was taken: try another
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "redis-server did not start: {said}"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("redis-server did not start with TLS on any of 10 ports");
    }

    /// Stops the server and starts another, empty, on the same socket.
    pub fn restart_empty(&mut self) {
        assert!(!self.tls, "restart_empty is for a server on a Unix socket");
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(self.dir.path().join("redis.sock"));
        self.child = Self::spawn(self.dir.path());
    }

    /// Stops the server answering (SIGSTOP), as a host gone without a reset.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Lets a paused server answer again.
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, which: &str) {
        let status = std::process::Command::new("kill")
            .args([which, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill {which}");
    }

    /// Runs one command on a connection of its own.
    pub fn command<T: redis::FromRedisValue>(&self, args: &[&str]) -> T {
        assert!(!self.tls, "command is for a server on a Unix socket");
        let client = redis::Client::open(self.url.as_str()).unwrap();
        let mut conn = client.get_connection().unwrap();
        let (name, rest) = args.split_first().unwrap();
        redis::cmd(name).arg(rest).query(&mut conn).unwrap()
    }

    fn spawn(dir: &std::path::Path) -> std::process::Child {
        let socket = dir.join("redis.sock");
        let child = std::process::Command::new("redis-server")
            .args(["--port", "0", "--save", "", "--appendonly", "no"])
            .arg("--unixsocket")
            .arg(&socket)
            .arg("--dir")
            .arg(dir)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server (the Debian package redis-server; .ci/run installs it)");
        // Ready once it accepts: the socket's file appears when it is bound,
        // a moment before the server listens (a connection then is refused).
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        child
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
