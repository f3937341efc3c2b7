//! The `portico` command's behaviour on bad configuration.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::portico_bin;

#[test]
fn check_reports_every_error_with_its_location_and_exits_1() {
    let dir = tempfile::TempDir::new().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[node]\nid = \"o\"\nregion = \"r\"\n\n[[apis]]\nname = \"a\"\nendpoint = \"sideways\"\n\n[[apis]]\nname = \"b\"\nendpoint = \"edge\"\ncolour = \"blue\"\n",
    )
    .unwrap();
    let out = Command::new(portico_bin())
        .arg("check")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let file = path.display().to_string();
    assert!(stdout.contains(&format!("{file}:7:12:")), "{stdout}");
    assert!(stdout.contains(&format!("{file}:12:1:")), "{stdout}");
    assert!(stdout.contains("sideways"), "{stdout}");
    assert!(stdout.contains("colour"), "{stdout}");
}

#[test]
fn check_accepts_a_valid_file() {
    let dir = tempfile::TempDir::new().unwrap();
    let path = dir.path().join("ok.toml");
    std::fs::write(
        &path,
        "[node]\nid = \"o\"\nregion = \"r\"\n\n[[apis]]\nname = \"a\"\nendpoint = \"regional\"\n[[apis.routes]]\npath = \"/x\"\nintegration = { type = \"mock\", status = 200 }\n[[apis.stages]]\nname = \"prod\"\n",
    )
    .unwrap();
    let out = Command::new(portico_bin())
        .arg("check")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// Writes `config` to a file and runs `portico origin` on it to its exit
/// (a file it refuses); returns the output and the file's path.
fn origin_refusing(dir: &tempfile::TempDir, config: &str) -> (std::process::Output, PathBuf) {
    let path = dir.path().join("origin.toml");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(portico_bin())
        .args(["origin", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    (out, path)
}

#[test]
fn origin_with_invalid_config_exits_1_with_the_errors() {
    let dir = tempfile::TempDir::new().unwrap();
    let (out, path) = origin_refusing(
        &dir,
        "[node]\nid = \"o\"\nregion = \"r\"\n[[listeners]]\naddress = \"not an address\"\n",
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("{}:5:11:", path.display())),
        "{stderr}"
    );
}

#[test]
fn keys_create_prints_the_key_once_and_only_its_hash_for_config() {
    let out = Command::new(portico_bin())
        .args(["keys", "create", "--id", "demo", "--plan", "basic"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let key = stdout
        .lines()
        .nth(1)
        .and_then(|l| l.strip_prefix("# "))
        .unwrap()
        .to_owned();
    assert_eq!(key.len(), 40);
    let hash_line = stdout.lines().find(|l| l.starts_with("hash = ")).unwrap();
    // The stored form is the SHA-256 of the key, as `portico keys hash` computes it.
    let hashed = keys_hash(&key);
    assert_eq!(
        hash_line,
        format!(
            "hash = \"{}\"",
            String::from_utf8_lossy(&hashed.stdout).trim()
        )
    );
    assert_eq!(
        stdout.matches(&key).count(),
        1,
        "the clear key appears once"
    );
}

#[test]
fn keys_create_refuses_a_bad_id() {
    // Over 128 characters, a PoP could not name the caller to its origin.
    for id in ["bad id", &"k".repeat(129)] {
        let out = Command::new(portico_bin())
            .args(["keys", "create", "--id", id])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{id}");
        assert_eq!(
            String::from_utf8_lossy(&out.stderr).trim(),
            "portico: a key id is 1 to 128 letters, digits, `_` and `-`"
        );
    }
}

#[test]
fn keys_create_refuses_a_plan_name_the_configuration_would() {
    for (plan, shown) in [("gold plan", "\"gold plan\""), ("a\u{1}", "\"a\\u{1}\"")] {
        let out = Command::new(portico_bin())
            .args([
                "keys", "create", "--id", "k1", "--plan", "basic", "--plan", plan,
            ])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{plan:?}");
        assert!(out.stdout.is_empty(), "no entry, no key: {plan:?}");
        assert_eq!(
            String::from_utf8_lossy(&out.stderr).trim(),
            format!(
                "portico: usage plan {shown}: a plan name is 1 to 128 letters, digits, `_` and `-`"
            )
        );
    }
}

/// `portico keys hash` with `key` on its standard input.
fn keys_hash(key: &str) -> std::process::Output {
    use std::io::Write;
    let mut child = Command::new(portico_bin())
        .args(["keys", "hash"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(key.as_bytes()).unwrap();
    drop(stdin);
    child.wait_with_output().unwrap()
}

#[test]
fn keys_hash_refuses_a_key_no_request_could_present() {
    let hash = keys_hash;
    for key in ["shortkey", "a key with spaces in it ok", &"k".repeat(129)] {
        let out = hash(key);
        assert_eq!(out.status.code(), Some(1), "{key}");
        assert!(out.stdout.is_empty());
        assert_eq!(
            String::from_utf8_lossy(&out.stderr).trim(),
            "portico: a key is 20 to 128 characters of A-Z a-z 0-9 . _ ~ -"
        );
    }
    let out = hash("abcdefghij0123456789\n");
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("sha256:"));
}

#[test]
fn relay_refuses_bad_link_values_with_their_name_and_exits_1() {
    for (flag, message) in [
        (
            "--delay-ms=-1",
            "delay must be a finite, non-negative number of milliseconds, got -1",
        ),
        (
            "--loss=1.5",
            "up direction: loss must be a probability within 0.0..=1.0, got 1.5",
        ),
        (
            "--bandwidth-mbps=0",
            "--bandwidth-mbps must be a positive number of megabits per second (at most 1000000), got 0",
        ),
    ] {
        let out = Command::new(portico_bin())
            .args([
                "relay",
                "--listen",
                "127.0.0.1:0",
                "--to",
                "127.0.0.1:9",
                flag,
            ])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{flag}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(message), "{flag}: {stderr}");
        assert!(out.stdout.is_empty(), "{flag}: nothing listened");
    }
}

/// A request through `portico relay` pays the link's handshake round trip and
/// the request's round trip (a lower bound: releases are never early).
#[test]
fn relay_puts_its_delay_in_front_of_a_service() {
    use std::io::{Read, Write};

    let (_backend, backend) = common::backend();
    let relay = common::Proc::start(
        &[
            "relay",
            "--listen",
            "127.0.0.1:0",
            "--to",
            &backend.to_string(),
            "--delay-ms",
            "25",
            "--udp",
        ],
        "ready",
    );
    let tcp = relay.addrs("tcp");
    assert_eq!(relay.addrs("udp"), tcp, "UDP on the TCP port");
    let started = std::time::Instant::now();
    let mut conn = std::net::TcpStream::connect(tcp[0]).unwrap();
    conn.write_all(b"GET /bytes/16 HTTP/1.1\r\nhost: relay\r\nconnection: close\r\n\r\n")
        .unwrap();
    let mut reply = String::new();
    conn.read_to_string(&mut reply).unwrap();
    let took = started.elapsed();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(
        took >= std::time::Duration::from_millis(100),
        "two round trips of 50 ms took {took:?}"
    );
}

/// The CPUs a process may run on, from `/proc/<pid>/task/<tid>/status`
/// (`Cpus_allowed_list`, such as `0-1,3`), expanded.
fn allowed_cpus(status: &str) -> Vec<usize> {
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .expect("Cpus_allowed_list")
        .trim();
    let mut cpus = Vec::new();
    for part in list.split(',') {
        let (lo, hi) = part.split_once('-').unwrap_or((part, part));
        cpus.extend(lo.parse::<usize>().unwrap()..=hi.parse::<usize>().unwrap());
    }
    cpus
}

fn own_cpus() -> Vec<usize> {
    allowed_cpus(&std::fs::read_to_string("/proc/self/status").unwrap())
}

const MOCK_ORIGIN: &str = "[node]\nid = \"o\"\nregion = \"r\"\ncpus = CPUS\n\
    [[listeners]]\naddress = \"127.0.0.1:0\"\ntls = false\ndefault_api = \"a\"\n\
    [[apis]]\nname = \"a\"\nendpoint = \"regional\"\n[[apis.routes]]\npath = \"/x\"\n\
    integration = { type = \"mock\", status = 200 }\n[[apis.stages]]\nname = \"prod\"\n";

/// A node that fails after it logged (here its admin address is taken once
/// its listener is up) says why last, after every line it logged before.
#[test]
fn a_nodes_fatal_error_is_its_last_line() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let dir = tempfile::TempDir::new().unwrap();
    let path = dir.path().join("origin.toml");
    let text = MOCK_ORIGIN.replace("cpus = CPUS\n", "")
        + &format!("[admin]\naddress = \"{addr}\"\ntoken = \"t0ken-t0ken-t0ken\"\n");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(portico_bin())
        .args(["origin", "--config", path.to_str().unwrap()])
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("");
    assert!(
        last.starts_with(&format!("portico: binding {addr}")),
        "{stderr}"
    );
    assert!(
        stderr.contains("listening"),
        "lines logged before: {stderr}"
    );
}

#[test]
fn a_node_confined_to_one_cpu_runs_every_thread_there_with_one_worker() {
    let cpu = *own_cpus().last().unwrap();
    let dir = tempfile::TempDir::new().unwrap();
    let (origin, log) = common::origin_logging(
        dir.path(),
        &MOCK_ORIGIN.replace("CPUS", &format!("[{cpu}]")),
    );
    let tasks = PathBuf::from(format!("/proc/{}/task", origin.pid()));
    let mut threads = 0;
    for task in std::fs::read_dir(&tasks).unwrap() {
        let task = task.unwrap().path();
        let Ok(status) = std::fs::read_to_string(task.join("status")) else {
            continue; // exited since
        };
        assert_eq!(allowed_cpus(&status), [cpu], "{}", task.display());
        threads += 1;
    }
    assert!(
        threads > 2,
        "the runtime's threads too, not only main: {threads}"
    );
    // The runtime's own count: thread names cannot tell its workers from
    // the blocking pool's threads, which come and go.
    let ready = ready_line(&log);
    assert_eq!(
        ready["workers"], 1,
        "the runtime is sized to the node's CPUs: {ready}"
    );
}

/// The `origin ready` line of a node's JSON log, once written (lines are
/// written in batches).
fn ready_line(log: &std::path::Path) -> serde_json::Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.contains("origin ready")) {
            return serde_json::from_str(line).expect("a JSON log line");
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no `origin ready` in the log: {text}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn a_node_given_a_cpu_it_may_not_use_exits_1_before_starting() {
    let dir = tempfile::TempDir::new().unwrap();
    let (out, _) = origin_refusing(&dir, &MOCK_ORIGIN.replace("CPUS", "[1023]"));
    assert_eq!(out.status.code(), Some(1));
    let may_use = own_cpus()
        .iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(",");
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!(
            "portico: [node] cpus: CPU 1023 not available to this process (it may use {may_use})\n"
        )
    );
    assert!(out.stdout.is_empty(), "nothing started");
}

/// A node whose backbone certificate was issued for the other role (or
/// for none) stops at start and says which to issue, rather than starting
/// and having every link refused by its peers.
#[test]
fn a_node_with_a_backbone_certificate_of_another_role_exits_1() {
    let dir = tempfile::TempDir::new().unwrap();
    common::make_certs(dir.path(), "origin-a,pop-a");
    common::test_cert(dir.path(), "public", &["localhost"]);
    let certs = dir.path().join("certs");
    let origin_with = |cert: &str| {
        let backbone = format!(
            "[backbone]\nlisten = \"127.0.0.1:0\"\nca = \"{ca}\"\ncert = \"{c}.pem\"\nkey = \"{c}.key\"\n",
            ca = certs.join("ca.pem").display(),
            c = certs.join(cert).display(),
        );
        MOCK_ORIGIN.replace("cpus = CPUS\n", "") + &backbone
    };
    let not_an_origin = "portico: backbone TLS configuration: this node's certificate is not an \
                         origin's: it does not name `origin.role.portico.invalid` (issue one with \
                         `portico certs --origins NODE`)";
    for cert in ["pop-a", "x"] {
        let (out, _) = origin_refusing(&dir, &origin_with(cert));
        assert_eq!(out.status.code(), Some(1), "{cert}");
        // The error is a line of its own (log lines may follow it).
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.lines().any(|l| l == not_an_origin), "{stderr}");
        assert!(!String::from_utf8_lossy(&out.stdout).contains("ready"));
    }
    // A PoP run with the origin's certificate.
    let path = dir.path().join("pop.toml");
    let addr = "127.0.0.1:9".parse().unwrap();
    std::fs::write(&path, common::pop_config(dir.path(), "origin-a", addr, "a")).unwrap();
    let out = Command::new(portico_bin())
        .args(["pop", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let not_a_pop = "portico: backbone TLS configuration: this node's certificate is not a PoP's: \
                     it does not name `pop.role.portico.invalid` (issue one with `portico certs \
                     --pops NODE`)";
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.lines().any(|l| l == not_a_pop), "{stderr}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("ready"));
}

/// A SIGTERM that arrives while a node starts (here as soon as its first
/// listener is bound, before it says `ready`) stops it cleanly once it has
/// started, exit status 0, instead of killing it mid-start.
#[test]
fn a_sigterm_while_a_node_starts_stops_it_cleanly() {
    use std::io::BufRead;
    let dir = tempfile::TempDir::new().unwrap();
    let path = dir.path().join("origin.toml");
    std::fs::write(&path, MOCK_ORIGIN.replace("cpus = CPUS\n", "")).unwrap();
    let mut child = Command::new(portico_bin())
        .args(["origin", "--config"])
        .arg(&path)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    assert!(first.starts_with("listening "), "{first}");
    let term = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{status:?}, then printed {rest:?}");
    assert!(rest.iter().any(|l| l == "ready"), "{rest:?}");
}
