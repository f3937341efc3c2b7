//! Shared helpers of the end-to-end tests: real `portico` processes on port 0,
//! real TLS, real HTTP clients.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls_pki_types::CertificateDer;

/// The `portico` command (the test package's `portico-e2e` binary, which
/// cargo builds before the tests).
pub fn portico_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_portico-e2e"))
}

/// A child process killed when dropped.
pub struct Proc {
    pub child: Child,
    pub lines: Vec<String>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    /// Starts `portico ARGS` and reads its stdout until a line starting with `ready_prefix`.
    pub fn start(args: &[&str], ready_prefix: &str) -> Proc {
        Self::start_logging(args, ready_prefix, None)
    }

    /// As [`Proc::start`], with stderr (the log) written to `log` when given.
    pub fn start_logging(args: &[&str], ready_prefix: &str, log: Option<&Path>) -> Proc {
        let stderr = match log {
            Some(path) => Stdio::from(std::fs::File::create(path).expect("log file")),
            None => Stdio::inherit(),
        };
        // A test that reads the log wants the access lines (info).
        let level = match log {
            Some(_) => "info".to_owned(),
            None => std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        };
        let mut child = Command::new(portico_bin())
            .args(args)
            .env("RUST_LOG", level)
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn portico");
        let stdout = child.stdout.take().expect("stdout");
        let mut reader = BufReader::new(stdout);
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            let n = reader.read_line(&mut line).expect("read stdout");
            assert!(
                n > 0,
                "portico {args:?} exited before `{ready_prefix}`; output: {lines:?}"
            );
            let line = line.trim_end().to_owned();
            let ready = line.starts_with(ready_prefix);
            lines.push(line);
            if ready {
                break;
            }
        }
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in reader.lines() {});
        Proc { child, lines }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal (e.g. "HUP") to the process.
    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Peak resident memory (VmHWM) in bytes.
    pub fn peak_rss(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("proc status");
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM");
        kb * 1024
    }

    /// Addresses from `listening <kind> <addr>` lines, in order.
    pub fn addrs(&self, kind: &str) -> Vec<SocketAddr> {
        self.lines
            .iter()
            .filter_map(|l| l.strip_prefix("listening "))
            .filter_map(|l| l.split_once(' '))
            .filter(|(k, _)| *k == kind)
            .filter_map(|(_, a)| a.split_whitespace().next()?.parse().ok())
            .collect()
    }
}

/// Starts the demo backend on port 0.
pub fn backend() -> (Proc, SocketAddr) {
    let proc = Proc::start(&["backend", "--listen", "127.0.0.1:0"], "listening on");
    let addr = proc
        .lines
        .last()
        .and_then(|l| l.strip_prefix("listening on "))
        .and_then(|a| a.parse().ok())
        .expect("backend addr");
    (proc, addr)
}

/// Starts the demo backend serving HTTPS with `cert`, on port 0.
pub fn tls_backend(cert: &TestCert) -> (Proc, SocketAddr) {
    let (cert_path, key_path) = (
        cert.cert.to_str().expect("utf-8"),
        cert.key.to_str().expect("utf-8"),
    );
    let args = [
        "backend",
        "--listen",
        "127.0.0.1:0",
        "--tls-cert",
        cert_path,
        "--tls-key",
        key_path,
    ];
    let proc = Proc::start(&args, "listening on");
    let addr = proc
        .lines
        .last()
        .and_then(|l| l.strip_prefix("listening on "))
        .and_then(|a| a.parse().ok())
        .expect("backend addr");
    (proc, addr)
}

/// A self-signed certificate for `localhost`/127.0.0.1 written to `dir`.
pub struct TestCert {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub der: CertificateDer<'static>,
}

pub fn test_cert(dir: &Path, name: &str, sans: &[&str]) -> TestCert {
    let generated =
        rcgen::generate_simple_self_signed(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .expect("rcgen");
    let cert = dir.join(format!("{name}.pem"));
    let key = dir.join(format!("{name}.key"));
    std::fs::write(&cert, generated.cert.pem()).expect("write cert");
    std::fs::write(&key, generated.signing_key.serialize_pem()).expect("write key");
    TestCert {
        cert,
        key,
        der: generated.cert.der().clone(),
    }
}

/// Starts `portico origin` with `config` (written to `dir/origin.toml`).
pub fn origin(dir: &Path, config: &str) -> Proc {
    let path = dir.join("origin.toml");
    std::fs::write(&path, config).expect("write config");
    Proc::start(
        &["origin", "--config", path.to_str().expect("utf-8 path")],
        "ready",
    )
}

/// Request bodies of the test clients: in memory or streamed.
pub type ReqBody = http_body_util::combinators::UnsyncBoxBody<Bytes, std::io::Error>;

pub fn full(bytes: impl Into<Bytes>) -> ReqBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A request body that arrives a chunk at a time, `gap` apart; with
/// `stall`, the client then keeps its request open and sends nothing more.
pub fn trickled(chunks: usize, gap: Duration, stall: bool) -> ReqBody {
    let frames = futures_util::stream::unfold(0, move |n| async move {
        if n == chunks {
            if !stall {
                return None;
            }
            std::future::pending::<()>().await;
        }
        tokio::time::sleep(gap).await;
        let chunk = http_body::Frame::data(Bytes::from(vec![b'u'; 1024]));
        Some((Ok::<_, std::io::Error>(chunk), n + 1))
    });
    http_body_util::BodyExt::boxed_unsync(http_body_util::StreamBody::new(frames))
}

/// Starts `portico --log-format json origin` with its log written to `dir/origin.log`.
pub fn origin_logging(dir: &Path, config: &str) -> (Proc, PathBuf) {
    let path = dir.join("origin.toml");
    let log = dir.join("origin.log");
    std::fs::write(&path, config).expect("write config");
    let args = [
        "--log-format",
        "json",
        "origin",
        "--config",
        path.to_str().expect("utf-8 path"),
    ];
    (Proc::start_logging(&args, "ready", Some(&log)), log)
}

/// Polls `check` every 50 ms until it returns `Some`, for at most `secs` seconds.
pub async fn eventually<T, F, Fut>(secs: u64, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met within {secs} s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until a node's log mentions `text`. Log lines are written by a
/// thread of their own: soon, not necessarily before the node answers.
pub async fn logged(log: &Path, text: &str) {
    eventually(10, || async {
        let log = std::fs::read_to_string(log).ok()?;
        log.contains(text).then_some(())
    })
    .await
}

/// The access line of `request_id` in a node's JSON log, once written.
pub async fn access_line(log: &Path, request_id: &str) -> serde_json::Value {
    eventually(10, || async {
        let text = std::fs::read_to_string(log).ok()?;
        text.lines()
            .find(|l| l.contains(request_id) && l.contains("\"target\":\"access\""))
            .map(|l| serde_json::from_str(l).unwrap())
    })
    .await
}

pub type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, ReqBody>;

pub fn client_tls(roots: &[CertificateDer<'static>]) -> rustls::ClientConfig {
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store.add(r.clone()).expect("root");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(store)
        .with_no_client_auth()
}

/// An HTTPS client trusting `roots`, speaking HTTP/1.1 only or HTTP/2 only.
pub fn https_client(root: &CertificateDer<'static>, h2: bool) -> HttpsClient {
    let roots = std::slice::from_ref(root);
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(client_tls(roots))
        .https_or_http();
    let connector = if h2 {
        builder.enable_http2().build()
    } else {
        builder.enable_http1().build()
    };
    Client::builder(TokioExecutor::new())
        .http2_only(h2)
        .build(connector)
}

/// A response with its body collected.
pub struct Reply {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
    pub version: http::Version,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

pub async fn send(client: &HttpsClient, req: http::Request<ReqBody>) -> Reply {
    let resp = tokio::time::timeout(Duration::from_secs(60), client.request(req))
        .await
        .expect("request timed out")
        .expect("request failed");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    Reply {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body,
        version: parts.version,
    }
}

/// A client-facing error: `status` with exactly `{"message": message}` as JSON.
pub fn assert_error(reply: &Reply, status: u16, message: &str) {
    assert_eq!(reply.status, status, "body: {}", reply.text());
    assert_eq!(reply.text(), format!("{{\"message\":\"{message}\"}}"));
    assert_eq!(reply.headers["content-type"], "application/json");
}

pub async fn get(client: &HttpsClient, url: &str) -> Reply {
    send(
        client,
        http::Request::get(url)
            .body(full(Bytes::new()))
            .expect("request"),
    )
    .await
}

/// A PoP of region `local` dialing `backbone` (an origin named `origin-a`),
/// certificates from [`make_certs`] and `dir/public.{pem,key}`.
pub fn pop_config(dir: &Path, id: &str, backbone: SocketAddr, default_api: &str) -> String {
    format!(
        r#"
[node]
id = "{id}"
location = "test bench"

[[listeners]]
address = "127.0.0.1:0"
default_api = "{default_api}"
certificates = [{{ cert = "{public}.pem", key = "{public}.key" }}]

[limits]
max_body_bytes = 104857600

[backbone]
ca = "{certs}/ca.pem"
cert = "{certs}/{id}.pem"
key = "{certs}/{id}.key"

[[origins]]
region = "local"
address = "{backbone}"
server_name = "origin-a"
"#,
        public = dir.join("public").display(),
        certs = dir.join("certs").display(),
    )
}

/// Runs `portico certs` for `nodes` (comma-separated) into `dir/certs`:
/// `origin-…` ids as origins, `pop-…` as PoPs, others with no backbone role.
pub fn make_certs(dir: &Path, nodes: &str) {
    let out = dir.join("certs");
    let mut args = vec!["certs", "--out", out.to_str().unwrap()];
    for node in nodes.split(',') {
        let flag = match node {
            n if n.starts_with("origin-") => "--origins",
            n if n.starts_with("pop-") => "--pops",
            _ => "--names",
        };
        args.extend([flag, node]);
    }
    let status = Command::new(portico_bin())
        .args(&args)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("run portico certs");
    assert!(status.success());
    // A second run adds a node under the same CA.
    let ca = std::fs::read(out.join("ca.pem")).unwrap();
    let again = Command::new(portico_bin())
        .args(["certs", "--out", out.to_str().unwrap(), "--names", "x"])
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(again.success(), "adding a node failed");
    assert_eq!(
        std::fs::read(out.join("ca.pem")).unwrap(),
        ca,
        "the CA was replaced"
    );
}

/// Starts a node with its JSON log in `dir/NAME.log`.
pub fn node(dir: &Path, kind: &str, name: &str, config: &str) -> (Proc, PathBuf) {
    let path = dir.join(format!("{name}.toml"));
    let log = dir.join(format!("{name}.log"));
    std::fs::write(&path, config).unwrap();
    let args = [
        "--log-format",
        "json",
        kind,
        "--config",
        path.to_str().unwrap(),
    ];
    (Proc::start_logging(&args, "ready", Some(&log)), log)
}
