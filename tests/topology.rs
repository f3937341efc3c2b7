//! `portico up`, `portico probe` and `portico check` on topology files: real
//! processes, real relays, port 0 only.

mod common;
#[path = "../crates/portico-net/tests/support/h3_client.rs"]
mod h3_client;

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Proc, get, https_client, portico_bin};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

/// The repository's `topology/` directory.
fn topology_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("topology")
}

/// Polls until `path` exists (the manifest appears only when everything serves).
fn wait_for_file(path: &Path, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} did not appear within {secs} s",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn manifest(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn pids(m: &serde_json::Value) -> Vec<u32> {
    m["processes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["pid"].as_u64().unwrap() as u32)
        .collect()
}

/// Whether a process is alive (a zombie has exited: it only awaits its reaper).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| !rest.starts_with('Z')))
        .unwrap_or(false)
}

/// Pids whose parent is `ppid`.
fn children_of(ppid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        let parent = stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
        if parent == Some(ppid) {
            out.push(pid);
        }
    }
    out.sort();
    out
}

fn wait_gone(pids: &[u32], secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while pids.iter().any(|&p| alive(p)) {
        assert!(
            Instant::now() < deadline,
            "processes left behind: {:?}",
            pids.iter().filter(|&&p| alive(p)).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn ca_der(m: &serde_json::Value) -> CertificateDer<'static> {
    CertificateDer::from_pem_file(m["ca"].as_str().unwrap()).unwrap()
}

fn url(m: &serde_json::Value, api: &str) -> String {
    m["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["api"] == api)
        .and_then(|e| e["url"].as_str())
        .unwrap_or_else(|| panic!("no entry for {api}: {m}"))
        .to_owned()
}

/// Waits for the `up` process to exit and returns its status code.
fn wait_exit(proc: &mut Proc, secs: u64) -> Option<i32> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(status) = proc.child.try_wait().unwrap() {
            return status.code();
        }
        assert!(
            Instant::now() < deadline,
            "portico up did not exit within {secs} s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_local_serves_through_its_pop_and_origin_and_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("up.json");
    let topology = topology_dir().join("local.toml");
    let mut up = start_up(&topology, &json, &[], None);
    let m = manifest(&json);
    assert_eq!(m["entries"].as_array().unwrap().len(), 2, "{m}");
    let client = https_client(&ca_der(&m), false);
    for (api, mode) in [("echo-edge", "edge"), ("echo-regional", "regional")] {
        let entry = m["entries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["api"] == api)
            .unwrap();
        assert_eq!(entry["mode"], mode);
        assert_eq!(entry["h3"], true);
        let reply = get(&client, &format!("{}/hello?via={api}", url(&m, api))).await;
        assert_eq!(reply.status, 200, "{api}: {}", reply.text());
        assert_eq!(reply.json()["path"], "/hello", "{api}: {}", reply.text());
        // The same entry over HTTP/3: QUIC through the UDP relay on the same port.
        let addr = url(&m, api)[8..]
            .split('/')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let h3 = h3_client::H3Client::new(&[ca_der(&m)], "localhost");
        let conn = h3.connect(addr).await;
        let uri = format!("https://localhost:{}/prod/h3", addr.port());
        let reply = conn.get(&uri).await;
        assert_eq!(reply.status, 200, "{api} over h3: {}", reply.text());
        assert_eq!(reply.json()["path"], "/h3", "{api} over h3");
        // `/limited`: 5 requests/s, burst 5; ten at once trip it.
        let limited = format!("{}/limited/x", url(&m, api));
        let replies = futures_util::future::join_all((0..10).map(|_| get(&client, &limited))).await;
        let statuses: Vec<_> = replies.iter().map(|r| r.status).collect();
        assert!(statuses.contains(&429), "{api}: {statuses:?}");
        assert!(
            statuses.iter().all(|&s| s == 200 || s == 429),
            "{api}: {statuses:?}"
        );
        // `/keyed`: the demo key of this run, 403 without it.
        let keyed = format!("{}/keyed/x", url(&m, api));
        let reply = get(&client, &keyed).await;
        assert_eq!(
            (reply.status, reply.text()),
            (403, r#"{"message":"Forbidden"}"#.to_owned())
        );
        let key = m["demo_key"].as_str().expect("demo_key in the manifest");
        let req = http::Request::get(&keyed)
            .header("x-api-key", key)
            .body(common::full(bytes::Bytes::new()))
            .unwrap();
        let reply = common::send(&client, req).await;
        assert_eq!(
            reply.status,
            200,
            "{api} with the demo key: {}",
            reply.text()
        );
    }
    // The key's usage at the origin: one request on each API's plan.
    let admin = &m["admin"][0];
    let token = std::fs::read_to_string(admin["token_file"].as_str().unwrap()).unwrap();
    for plan in ["demo-echo-edge", "demo-echo-regional"] {
        let usage = format!(
            "{}/usage?plan={plan}&key=demo",
            admin["url"].as_str().unwrap()
        );
        let req = http::Request::get(&usage)
            .header("authorization", format!("Bearer {token}"))
            .body(common::full(bytes::Bytes::new()))
            .unwrap();
        let reply = common::send(&client, req).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        let used = reply.json()["keys"][0]["used"].as_u64().unwrap();
        assert!((1..=100).contains(&used), "{plan}: {}", reply.text());
        assert_eq!(reply.json()["limit"], 100);
    }
    // The origin's admin API, with the token `up` made for it.
    assert_eq!(admin["node"], "origin-local", "{m}");
    let stats = format!("{}/cache/stats", admin["url"].as_str().unwrap());
    let req = http::Request::get(&stats)
        .header("authorization", format!("Bearer {token}"))
        .body(common::full(bytes::Bytes::new()))
        .unwrap();
    let reply = common::send(&client, req).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert!(reply.json()["entries"].is_u64(), "{}", reply.text());
    let unauthenticated = get(&client, &stats).await;
    common::assert_error(&unauthenticated, 401, "Unauthorized");
    assert_eq!(unauthenticated.headers["www-authenticate"], "Bearer");
    // Every client comes through a loopback relay (one address): the nodes
    // `up` writes do not cap connections per client.
    let nodes = Path::new(m["run_dir"].as_str().unwrap()).join("nodes");
    for node in ["origin-local", "pop-local"] {
        let file = nodes.join(format!("{node}.toml"));
        let config = portico_config::load_node_file(&file).unwrap();
        assert_eq!(config.limits.max_connections_per_client, 0, "{node}");
    }
    let started = pids(&m);
    assert_eq!(started.len(), 3, "backend, origin, PoP: {m}");
    assert_eq!(
        children_of(up.pid()),
        started,
        "every process is a child of up"
    );
    up.signal("TERM");
    assert_eq!(wait_exit(&mut up, 30), Some(0));
    wait_gone(&started, 5);
    assert!(
        !json.exists(),
        "the manifest of a stopped topology is removed"
    );
    let run_dir = m["run_dir"].as_str().unwrap();
    assert!(
        !Path::new(run_dir).exists(),
        "run directory {run_dir} removed"
    );
}

/// The manifest (it holds the run's demo API key) and the admin token are
/// their owner's alone, also where a reused run directory held a token
/// readable by others.
#[test]
fn up_writes_its_secrets_for_its_owner_alone() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("up.json");
    let run = dir.path().join("run");
    let token = run.join("admin").join("origin-local.token");
    std::fs::create_dir_all(token.parent().unwrap()).unwrap();
    std::fs::write(&token, "old").unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
    let topology = topology_dir().join("local.toml");
    let more = ["--run-dir", run.to_str().unwrap()];
    let mut up = start_up(&topology, &json, &more, None);
    let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&json), 0o600, "the manifest");
    assert_eq!(mode(&token), 0o600, "the admin token");
    assert_ne!(std::fs::read_to_string(&token).unwrap(), "old");
    up.signal("TERM");
    assert_eq!(wait_exit(&mut up, 30), Some(0));
}

/// `portico up TOPOLOGY --json JSON MORE...`, its log in `log` if given,
/// once it is ready and its manifest written.
fn start_up(topology: &Path, json: &Path, more: &[&str], log: Option<&Path>) -> Proc {
    let mut args = vec![
        "up",
        topology.to_str().unwrap(),
        "--json",
        json.to_str().unwrap(),
    ];
    args.extend_from_slice(more);
    let up = Proc::start_logging(&args, "ready:", log);
    wait_for_file(json, 5);
    up
}

/// Regional only: no PoP, two processes.
const REGIONAL: &str = r#"
[[regions]]
name = "r"
origin = "origin-r"
backends = ["backend-r"]
[[sites]]
name = "here"
[[links]]
between = ["here", "origin-r"]
[[apis]]
name = "echo"
endpoint = "regional"
"#;

/// `portico up` on [`REGIONAL`] in `dir`, its log in `log` if given: the
/// runner, its manifest and the pids of its two nodes.
fn up_regional(dir: &Path, log: Option<&Path>) -> (Proc, serde_json::Value, Vec<u32>) {
    let topology = dir.join("regional.toml");
    std::fs::write(&topology, REGIONAL).unwrap();
    let json = dir.join("up.json");
    let up = start_up(&topology, &json, &[], log);
    let m = manifest(&json);
    let started = pids(&m);
    assert_eq!(started.len(), 2);
    (up, m, started)
}

#[test]
fn nodes_stop_when_up_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let (mut up, m, started) = up_regional(dir.path(), None);
    up.signal("KILL");
    let _ = wait_exit(&mut up, 10);
    // Their stdin pipe closed with the runner: they stop by themselves.
    wait_gone(&started, 10);
    // What a killed runner cannot clean up (documented): its run directory.
    let _ = std::fs::remove_dir_all(m["run_dir"].as_str().unwrap());
}

#[test]
fn a_second_signal_while_stopping_kills_every_node_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("up.log");
    let (mut up, m, started) = up_regional(dir.path(), Some(&log));
    // A frozen node cannot stop by itself: the first signal waits on it for
    // the grace period (5 s) before killing it.
    for pid in &started {
        let frozen = Command::new("kill")
            .args(["-STOP", &pid.to_string()])
            .status();
        assert!(frozen.unwrap().success());
    }
    up.signal("TERM");
    let said = |text: &str| {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains(text)
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !said("stopping the topology") {
        assert!(Instant::now() < deadline, "up never said it was stopping");
        std::thread::sleep(Duration::from_millis(20));
    }
    up.signal("INT");
    assert_eq!(
        wait_exit(&mut up, 30),
        Some(1),
        "a forced stop is a failure"
    );
    assert!(said("second signal: killing every node"));
    wait_gone(&started, 10);
    let _ = std::fs::remove_dir_all(m["run_dir"].as_str().unwrap());
}

/// Runs `portico up FILE` expecting a refusal; returns stderr.
fn refused(text: &str) -> (String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(portico_bin())
        .args(["up", path.to_str().unwrap()])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        out.stdout.is_empty(),
        "nothing started: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let file = path.display().to_string();
    (String::from_utf8_lossy(&out.stderr).into_owned(), file)
}

#[test]
fn bad_topologies_are_refused_before_anything_starts() {
    let base = REGIONAL.to_owned()
        + "[[pops]]\nid = \"pop-a\"\nregions = [\"r\"]\n[[links]]\nbetween = [\"pop-a\", \"origin-r\"]\n";
    let cases = [
        (
            base.replace("regions = [\"r\"]", "regions = [\"mars\"]"),
            "15:12: PoP `pop-a` is homed in unknown region `mars` (expected one of `r`)",
        ),
        (
            base.replace(
                "between = [\"here\", \"origin-r\"]",
                "between = [\"there\", \"origin-r\"]",
            ),
            "9:12: link between unknown place `there` (expected the name of a client site, PoP, \
             origin or backend in this file)",
        ),
        (
            format!("{base}delay_ms = -3\n"),
            "18:12: delay_ms must be a non-negative number of milliseconds, got -3",
        ),
        (
            format!("{base}loss = 1.01\n"),
            "18:8: loss must be a probability within 0.0..=1.0, got 1.01",
        ),
    ];
    for (text, message) in cases {
        let (stderr, file) = refused(&text);
        assert_eq!(stderr.trim_end(), format!("portico: {file}:{message}"));
    }
}

#[test]
fn a_port_in_use_is_refused_before_anything_starts() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let text = format!("[topology]\nbase_port = {port}\n{REGIONAL}");
    let (stderr, file) = refused(&text);
    let expected = format!(
        "portico: {file}:2:13: port {port} (entry of site `here` for API `echo`) is already in use: "
    );
    assert!(stderr.starts_with(&expected), "{stderr}");
}

#[test]
fn check_validates_topology_files() {
    for name in ["local.toml", "world.toml"] {
        let out = Command::new(portico_bin())
            .arg("check")
            .arg(topology_dir().join(name))
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{stdout}");
        assert!(stdout.contains("valid topology"), "{stdout}");
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        REGIONAL.replace(
            "endpoint = \"regional\"",
            "endpoint = \"regional\"\nstage = \"a b\"",
        ),
    )
    .unwrap();
    let out = Command::new(portico_bin())
        .arg("check")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = format!(
        "{}:13:9: invalid stage name `a b` (expected [A-Za-z0-9_-]+)",
        path.display()
    );
    assert!(stdout.contains(&line), "{stdout}");
}

/// A near and a far client; the far one is 40 ms (one way) from the origin, 2 ms
/// from its PoP.
const FAR: &str = r#"
[topology]
http3 = true
[[regions]]
name = "r"
origin = "origin-r"
backends = ["backend-r"]
[[pops]]
id = "pop-far"
regions = ["r"]
[[sites]]
name = "near"
[[sites]]
name = "far"
[[links]]
between = ["near", "origin-r"]
[[links]]
between = ["near", "pop-far"]
[[links]]
between = ["far", "pop-far"]
delay_ms = 2
[[links]]
between = ["pop-far", "origin-r"]
delay_ms = 40
[[links]]
between = ["far", "origin-r"]
delay_ms = 42
[[apis]]
name = "echo-edge"
endpoint = "edge"
[[apis]]
name = "echo-regional"
endpoint = "regional"
"#;

#[test]
fn probe_shows_edge_entry_beats_regional_entry_for_a_far_client() {
    let dir = tempfile::tempdir().unwrap();
    let topology = dir.path().join("far.toml");
    std::fs::write(&topology, FAR).unwrap();
    let out_dir = dir.path().join("out");
    let out = Command::new(portico_bin())
        .args([
            "probe",
            topology.to_str().unwrap(),
            // Medians of five: one run that a loaded machine stalls for
            // longer than a round trip of the far path cannot turn them.
            "--runs",
            "5",
            "--out",
            out_dir.to_str().unwrap(),
            // The comparison holds either way; these keep the machine's idle
            // states and the nodes' CPUs alone while other tests run, and
            // check that the report says so.
            "--allow-idle",
            "--shared-cpus",
        ])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let csv = std::fs::read_to_string(out_dir.join("probe.csv")).unwrap();
    let median = |api: &str, measure: &str| -> f64 {
        csv.lines()
            .map(|l| l.split(',').collect::<Vec<_>>())
            .find(|f| f[0] == "far" && f[1] == api && f[4] == measure)
            .unwrap_or_else(|| panic!("no far/{api}/{measure} in {csv}"))[6]
            .parse()
            .unwrap()
    };
    let (edge, regional) = (median("echo-edge", "cold"), median("echo-regional", "cold"));
    assert!(
        edge < regional,
        "cold: edge {edge} ms, regional {regional} ms\n{stdout}"
    );
    // QUIC saves one round trip of the long path (84 ms) on a new connection.
    let regional_h3 = median("echo-regional", "cold_h3");
    assert!(
        regional_h3 < regional,
        "regional cold: h3 {regional_h3} ms, TCP+TLS {regional} ms\n{stdout}"
    );
    let svg = std::fs::read_to_string(out_dir.join("probe.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("echo-edge"));
    assert!(stdout.contains("far: echo-edge via pop-far"), "{stdout}");
    let idle = "CPU idle states: allowed (--allow-idle)";
    assert!(stdout.contains(idle), "{stdout}");
    assert!(svg.contains(idle), "the chart says how it was measured");
    let placement = "CPU placement: links and hosts on shared CPUs (--shared-cpus)";
    assert!(stdout.contains(placement), "{stdout}");
    assert!(
        svg.contains(placement),
        "the chart says how it was measured"
    );
}

#[test]
fn a_node_that_fails_to_start_stops_the_whole_topology_with_its_error() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    // The origin's state directory is taken by a file: the origin cannot open
    // its quota book and exits with that error, after the backend started.
    for base in [run.join("state"), run.join("nodes").join("state")] {
        std::fs::create_dir_all(&base).unwrap();
        std::fs::write(base.join("origin-local"), "not a directory").unwrap();
    }
    let topology = topology_dir().join("local.toml");
    let mut child = Command::new(portico_bin())
        .args(["up", topology.to_str().unwrap(), "--run-dir"])
        .arg(&run)
        // `up` logs each node it started with its pid ("ready ... pid=N").
        .env("RUST_LOG", "warn,portico::topology=info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    let status = loop {
        seen.extend(children_of(pid));
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "up did not stop");
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("origin-local"), "names the node: {stderr}");
    assert!(stderr.contains("state"), "gives its error: {stderr}");
    // The poll above may miss a backend that lived less than its interval;
    // the log names it either way.
    let ready = stderr
        .lines()
        .filter(|l| l.contains("ready") && l.contains("backend-local"));
    let logged: Vec<u32> = ready.filter_map(logged_pid).collect();
    assert_eq!(logged.len(), 1, "the backend had started: {stderr}");
    seen.extend(logged);
    seen.sort_unstable();
    seen.dedup();
    wait_gone(&seen, 10);
}

/// The pid in a log line of `up` ("ready node=N pid=1234").
fn logged_pid(line: &str) -> Option<u32> {
    let pid = line.split("pid=").nth(1)?;
    pid.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

#[test]
fn a_node_that_exits_after_ready_during_start_up_is_reported_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let topology = dir.path().join("regional.toml");
    // A long client link: the entry's first request (TCP and TLS handshakes
    // first) reaches the origin 2.5 s after it starts, well after the kill
    // below, however late `up` flushes the log line that triggers it.
    let link = r#"between = ["here", "origin-r"]"#;
    let slow = REGIONAL.replace(link, &format!("{link}\ndelay_ms = 500"));
    assert_ne!(slow, REGIONAL);
    std::fs::write(&topology, slow).unwrap();
    let mut child = Command::new(portico_bin())
        .args(["up", topology.to_str().unwrap()])
        // `up` logs each node it started with its pid ("ready ... pid=N").
        .env("RUST_LOG", "warn,portico::topology=info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The backend dies once it is ready: the origin still starts, but the
    // entry can only answer 502 (until `up` gave up on it after 60 s).
    let stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let (mut log, mut pids) = (String::new(), Vec::new());
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let ready = line.contains("ready");
            if let (true, Some(pid)) = (ready, logged_pid(&line)) {
                if line.contains("backend-r") {
                    let pid = pid.to_string();
                    let killed = Command::new("kill").args(["-KILL", &pid]).status();
                    assert!(killed.unwrap().success());
                }
                pids.push(pid);
            }
            log.push_str(&line);
            log.push('\n');
        }
        (log, pids)
    });
    // Well past the 60 s an entry may take to serve, for a loaded machine.
    let deadline = Instant::now() + Duration::from_secs(90);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!("up did not stop");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let (log, pids) = reader.join().unwrap();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(
        log.contains("node `backend-r` exited unexpectedly (signal: 9"),
        "the node's exit, not the entry's silence: {log}"
    );
    assert_eq!(pids.len(), 2, "backend and origin were ready: {log}");
    wait_gone(&pids, 10);
}
