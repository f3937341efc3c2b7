//! Open-file limits: a node's connections, backend sockets, QUIC sockets and
//! files all count against `RLIMIT_NOFILE`, whose soft limit is often 1 024
//! (login shells, systemd's default), far under the 16 384 connections a
//! listener accepts by default. Past it, accepts and backend connects fail
//! with `EMFILE`, and requests on open connections get 502.

use nix::sys::resource::{Resource, getrlimit, setrlimit};

/// Descriptors a node uses besides client connections: backend and backbone
/// sockets, the quota book, logs.
const HEADROOM: u64 = 1024;

/// Raises the soft open-file limit to the hard one (as nginx's
/// `worker_rlimit_nofile` would), and warns when it is still under what
/// `connections` client connections need. Returns the soft limit in force.
pub fn raise_limit(connections: u64) -> Option<u64> {
    let (soft, hard) = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok(limits) => limits,
        Err(err) => {
            tracing::warn!(%err, "cannot read the open-file limit");
            return None;
        }
    };
    let soft = if soft < hard {
        match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => hard,
            Err(err) => {
                tracing::warn!(%err, soft, hard, "cannot raise the open-file limit");
                soft
            }
        }
    } else {
        soft
    };
    let needed = connections.saturating_add(HEADROOM);
    if soft < needed {
        tracing::warn!(
            limit = soft,
            needed,
            "the open-file limit is under what the listeners' max_connections need: \
             past it connections are refused and backends unreachable (raise `ulimit -n` \
             or LimitNOFILE, or lower [limits] max_connections)"
        );
    }
    Some(soft)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_is_raised_to_the_hard_one() {
        let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        // Lower the soft limit of this test process, then raise it again.
        setrlimit(Resource::RLIMIT_NOFILE, hard.min(512), hard).unwrap();
        assert_eq!(raise_limit(0), Some(hard));
        assert_eq!(getrlimit(Resource::RLIMIT_NOFILE).unwrap(), (hard, hard));
    }
}
