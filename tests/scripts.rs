//! The benchmark scripts' shared helpers (`scripts/lib.sh`), sourced by bash
//! as the scripts do. Stub commands stand in for the package manager, so
//! nothing is installed.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn lib_sh() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/lib.sh")
}

/// Writes an executable `/bin/sh` script named `name` into `dir`.
fn stub(dir: &Path, name: &str, body: &str) {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Runs `script` in `bash -c` with `$1` the path of lib.sh and `PATH` as given.
fn bash(script: &str, path: &str) -> Output {
    Command::new("/bin/bash")
        .args(["-c", script, "lib-test"])
        .arg(lib_sh())
        .env("PATH", path)
        .output()
        .unwrap()
}

#[test]
fn a_signal_cleans_up_and_ends_the_script() {
    // A python3 that is present, so sourcing installs nothing.
    let bin = tempfile::tempdir().unwrap();
    stub(bin.path(), "python3", "exit 0");
    let path = format!(
        "{}:{}",
        bin.path().display(),
        std::env::var("PATH").unwrap()
    );
    for (signal, code) in [("TERM", 143), ("INT", 130)] {
        let script = format!(r#"source "$1"; echo "$WORK"; kill -{signal} $$; echo carried on"#);
        let out = bash(&script, &path);
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert_eq!(
            out.status.code(),
            Some(code),
            "SIG{signal}: {stdout}{stderr}"
        );
        assert!(!stdout.contains("carried on"), "SIG{signal}: {stdout}");
        assert!(
            !stderr.contains("installing"),
            "python3 is present: {stderr}"
        );
        let work = stdout.lines().next().unwrap_or_default();
        assert!(work.starts_with("/tmp/portico-bench."), "{stdout}");
        assert!(!Path::new(work).exists(), "SIG{signal}: {work} left behind");
    }
}

#[test]
fn sourcing_installs_python3_when_it_is_missing() {
    let bin = tempfile::tempdir().unwrap();
    // What lib.sh runs at source time, and no python3.
    for tool in ["dirname", "mktemp", "rm"] {
        let found = ["/usr/bin", "/bin"]
            .iter()
            .map(|dir| Path::new(dir).join(tool))
            .find(|p| p.exists())
            .unwrap_or_else(|| panic!("no {tool}"));
        std::os::unix::fs::symlink(found, bin.path().join(tool)).unwrap();
    }
    let log = bin.path().join("apt-get.log");
    stub(bin.path(), "id", "echo 0");
    stub(
        bin.path(),
        "apt-get",
        &format!(r#"echo "$*" >>"{}""#, log.display()),
    );
    let out = bash(r#"source "$1""#, &bin.path().display().to_string());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("installing python3"), "{stderr}");
    let calls = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        calls.contains("install -y -qq python3"),
        "apt-get calls: {calls}"
    );
}
