//! Key shares made before the handshakes that use them.
//!
//! A TLS 1.3 server answers a ClientHello with a fresh key share of the
//! client's group: it generates an ephemeral key pair, then combines its
//! private key with the client's share. With ring, making an X25519 key pair
//! (45 µs on the project's 2-core VM) takes longer than combining it (31 µs)
//! or signing the handshake with the certificate's P-256 key (31 µs), and it
//! needs nothing from the client. Listeners therefore take X25519 key pairs
//! from a [`Pool`] that one background thread keeps filled, so a new
//! connection's first flight waits only for the work that depends on its
//! ClientHello.
//!
//! Each key pair is still used once and dropped with its handshake, so
//! forward secrecy is what it was. The thread runs at the lowest priority
//! (nice 19), so it fills the pool with time no request wants: a CPU busy
//! with requests starves it, and a pool that runs dry (a burst of new
//! connections faster than the idle time refills it) falls back to
//! generating inline, as without a pool.

use std::fmt;
use std::sync::{Condvar, Mutex, OnceLock, PoisonError};

use rustls::crypto::{ActiveKeyExchange, SupportedKxGroup};
use rustls::{Error, NamedGroup, ProtocolVersion};

/// Key pairs a pool holds when full: enough for a burst of new connections,
/// and a few kilobytes.
const CAPACITY: usize = 64;
/// The thread refills once fewer than this remain, in one batch, so that
/// single handshakes do not each wake it.
const REFILL_BELOW: usize = CAPACITY / 2;

/// A key exchange group whose key pairs come from a [`Pool`].
pub(crate) struct Pooled {
    pool: &'static Pool,
}

impl Pooled {
    /// X25519 from a process-wide pool, whose thread starts (and fills it)
    /// on the first call.
    pub(crate) fn x25519() -> &'static dyn SupportedKxGroup {
        static X25519: OnceLock<Pooled> = OnceLock::new();
        X25519.get_or_init(|| Pooled {
            pool: Pool::start(rustls::crypto::ring::kx_group::X25519),
        })
    }
}

impl fmt::Debug for Pooled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pooled")
            .field("group", &self.pool.group.name())
            .finish()
    }
}

impl SupportedKxGroup for Pooled {
    fn start(&self) -> Result<Box<dyn ActiveKeyExchange>, Error> {
        match self.pool.take() {
            Some(key) => Ok(key),
            None => self.pool.group.start(),
        }
    }

    fn name(&self) -> NamedGroup {
        self.pool.group.name()
    }

    fn fips(&self) -> bool {
        self.pool.group.fips()
    }

    fn usable_for_version(&self, version: ProtocolVersion) -> bool {
        self.pool.group.usable_for_version(version)
    }
}

/// Key pairs of one group, made ahead by one thread.
pub(crate) struct Pool {
    group: &'static dyn SupportedKxGroup,
    keys: Mutex<Vec<Box<dyn ActiveKeyExchange>>>,
    /// Signalled when the pool falls below [`REFILL_BELOW`].
    low: Condvar,
}

impl Pool {
    /// A pool of `group`'s key pairs and the thread that fills it. Leaked:
    /// it lives as long as the process, like its thread. If the OS refuses
    /// a thread, the pool stays empty and every handshake generates inline.
    fn start(group: &'static dyn SupportedKxGroup) -> &'static Pool {
        let pool: &'static Pool = Box::leak(Box::new(Pool {
            group,
            keys: Mutex::new(Vec::with_capacity(CAPACITY)),
            low: Condvar::new(),
        }));
        let spawned = std::thread::Builder::new()
            .name("tls-key-shares".into())
            .spawn(move || pool.fill());
        if let Err(error) = spawned {
            tracing::warn!(%error, "no thread for TLS key shares: generating them in each handshake");
        }
        pool
    }

    /// A ready key pair, if any; wakes the thread when the pool runs low.
    fn take(&self) -> Option<Box<dyn ActiveKeyExchange>> {
        let mut keys = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
        let key = keys.pop();
        let left = keys.len();
        drop(keys);
        // Only on crossing the mark or running dry: the thread refills to
        // capacity once woken, and checks the level again before it waits.
        if left + 1 == REFILL_BELOW || key.is_none() {
            self.low.notify_one();
        }
        key
    }

    /// The thread's loop: fill to capacity, wait until the pool runs low.
    fn fill(&self) {
        // On Linux a priority applies to the calling thread only.
        if let Err(error) = rustix::process::setpriority_process(None, 19) {
            tracing::debug!(%error, "TLS key share thread keeps its priority");
        }
        loop {
            loop {
                let key = match self.group.start() {
                    Ok(key) => key,
                    Err(error) => {
                        // ring's random source failed: handshakes generate
                        // inline and report the error themselves.
                        tracing::warn!(%error, "TLS key share generation failed: stopping the pool");
                        return;
                    }
                };
                let mut keys = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
                keys.push(key);
                if keys.len() >= CAPACITY {
                    break;
                }
            }
            let keys = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
            let keys = self
                .low
                .wait_while(keys, |keys| keys.len() >= REFILL_BELOW)
                .unwrap_or_else(PoisonError::into_inner);
            drop(keys);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.keys
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    /// Waits (up to 30 s, for a loaded machine) until `pool` holds at least `n`.
    fn wait_for(pool: &Pool, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while pool.len() < n {
            assert!(
                Instant::now() < deadline,
                "pool holds {} of {n}",
                pool.len()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn pooled_key_shares_agree_and_are_never_reused() {
        let group = Pooled::x25519();
        assert_eq!(group.name(), NamedGroup::X25519);
        let pool = Pool::start(rustls::crypto::ring::kx_group::X25519);
        wait_for(pool, CAPACITY);
        let pooled = Pooled { pool };
        let a = pooled.start().unwrap();
        let b = pooled.start().unwrap();
        assert_eq!(pool.len(), CAPACITY - 2, "both came from the pool");
        assert_ne!(a.pub_key(), b.pub_key());
        let (a_pub, b_pub) = (a.pub_key().to_vec(), b.pub_key().to_vec());
        let ab = a.complete(&b_pub).unwrap();
        let ba = b.complete(&a_pub).unwrap();
        assert_eq!(ab.secret_bytes(), ba.secret_bytes());
        assert_eq!(ab.secret_bytes().len(), 32);
    }

    #[test]
    fn a_dry_pool_generates_inline_and_is_refilled() {
        let pool = Pool::start(rustls::crypto::ring::kx_group::X25519);
        wait_for(pool, CAPACITY);
        let pooled = Pooled { pool };
        // Drain it faster than the thread refills: every start still works,
        // and no public key repeats.
        let mut seen = std::collections::HashSet::new();
        for _ in 0..3 * CAPACITY {
            let key = pooled.start().unwrap();
            assert!(seen.insert(key.pub_key().to_vec()), "a key share repeated");
        }
        // The loop may end with the pool between the refill mark and full
        // (the thread refilled it meanwhile), where it is left as it is by
        // design: take it dry, which wakes the thread, and see it refilled.
        while pool.take().is_some() {}
        wait_for(pool, CAPACITY);
    }

    #[test]
    fn the_pool_thread_runs_at_the_lowest_priority() {
        let pool = Pool::start(rustls::crypto::ring::kx_group::X25519);
        wait_for(pool, CAPACITY);
        // Every pool thread of this process. Other tests start pools too, and
        // a thread just spawned may not have lowered its priority yet: wait
        // (bounded) until all have.
        let deadline = Instant::now() + Duration::from_secs(30);
        let nices = loop {
            let nices = pool_thread_nices();
            if nices.iter().all(|&n| n == 19) || Instant::now() >= deadline {
                break nices;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        assert!(!nices.is_empty(), "no tls-key-shares thread");
        assert!(nices.iter().all(|&n| n == 19), "nice values {nices:?}");
    }

    /// The nice value of each `tls-key-shares` thread of this process.
    fn pool_thread_nices() -> Vec<i32> {
        let mut nices = Vec::new();
        for task in std::fs::read_dir("/proc/self/task").unwrap() {
            let dir = task.unwrap().path();
            let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
            if comm.trim() != "tls-key-shares" {
                continue;
            }
            let stat = std::fs::read_to_string(dir.join("stat")).unwrap();
            // Fields after the parenthesised name; nice is field 19 of the line.
            let after = &stat[stat.rfind(')').unwrap() + 2..];
            nices.push(after.split(' ').nth(16).unwrap().parse().unwrap());
        }
        nices
    }

    #[test]
    fn a_bad_peer_share_is_an_error() {
        let key = Pooled::x25519().start().unwrap();
        assert!(key.complete(&[1, 2, 3]).is_err());
    }
}
