//! Test support: a `redis-server` of a test's own (feature `test-support`).

use std::time::Duration;

/// A `redis-server` of the test's own, on a Unix socket in a temporary
/// directory, stopped when dropped.
pub struct Redis {
    child: std::process::Child,
    pub url: String,
    dir: tempfile::TempDir,
}

impl Redis {
    pub fn start() -> Self {
        let dir = tempfile::TempDir::new().unwrap();
        let child = Self::spawn(dir.path());
        let url = format!("redis+unix://{}", dir.path().join("redis.sock").display());
        Self { child, url, dir }
    }

    /// Stops the server and starts another, empty, on the same socket.
    pub fn restart_empty(&mut self) {
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
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !socket.exists() {
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
