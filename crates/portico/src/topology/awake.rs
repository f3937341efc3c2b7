//! Keeping CPUs out of slow idle states while the probe measures.
//!
//! On a virtual machine an idle CPU halts, and the hypervisor takes tens to
//! hundreds of microseconds to resume it when a packet or timer arrives. A
//! probe request crosses a dozen processes and relays that each sleep between
//! packets, so it pays that wake-up at every hop: latency the topology's links
//! do not contain and a real deployment on busy hosts does not see. Latency
//! tools (cyclictest, for one) therefore hold a PM QoS request while they
//! measure: writing a maximum wake-up latency to `/dev/cpu_dma_latency` keeps
//! the kernel's idle governor on states that resume within it (on this kind of
//! VM, polling instead of halting). The request lasts while the file stays
//! open, and the kernel drops it when the process exits, however it exits.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;

const PM_QOS: &str = "/dev/cpu_dma_latency";

/// How the probe left the CPUs' idle states; printed with the results.
#[derive(Debug)]
pub enum CpuIdle {
    /// Idle states held to those that resume within 0 µs, until dropped
    /// (the open file is the request).
    Held { _request: File },
    /// Idle states allowed (`--allow-idle`).
    Allowed,
    /// The request could not be made (no such device, not permitted): why.
    Unavailable(String),
}

impl CpuIdle {
    /// Asks the kernel to keep every CPU in idle states that resume at once,
    /// for as long as the returned value lives; `allow` skips the request.
    pub fn hold(allow: bool) -> CpuIdle {
        if allow {
            return CpuIdle::Allowed;
        }
        match request(Path::new(PM_QOS)) {
            Ok(file) => CpuIdle::Held { _request: file },
            Err(err) => CpuIdle::Unavailable(format!("{PM_QOS}: {err}")),
        }
    }

    /// One line for the report: how idle CPUs were treated during the probe.
    pub fn describe(&self) -> String {
        match self {
            CpuIdle::Held { .. } => {
                format!("CPU idle states: held to 0 µs wake-up latency ({PM_QOS}) during the probe")
            }
            CpuIdle::Allowed => "CPU idle states: allowed (--allow-idle)".to_string(),
            CpuIdle::Unavailable(why) => {
                format!("CPU idle states: allowed (could not hold them: {why})")
            }
        }
    }
}

/// Opens `path` and writes a 0 µs latency request (a native-endian `i32`, the
/// binary form the PM QoS device takes).
fn request(path: &Path) -> std::io::Result<File> {
    let mut file = OpenOptions::new().write(true).open(path)?;
    file.write_all(&0i32.to_ne_bytes())?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowed_makes_no_request() {
        let idle = CpuIdle::hold(true);
        assert!(matches!(idle, CpuIdle::Allowed));
        assert_eq!(idle.describe(), "CPU idle states: allowed (--allow-idle)");
    }

    #[test]
    fn the_request_is_a_native_endian_zero_held_while_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("qos");
        std::fs::write(&path, b"").expect("create");
        let file = request(&path).expect("request");
        assert_eq!(std::fs::read(&path).expect("read"), 0i32.to_ne_bytes());
        drop(file);
    }

    #[test]
    fn a_missing_device_is_reported_not_fatal() {
        let err = request(Path::new("/nonexistent/cpu_dma_latency")).expect_err("no device");
        assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
    }
}
