//! Connections per client address on one public listener (nginx's
//! `limit_conn` keyed by the client address, HAProxy's `src_conn_cur`):
//! without a cap, one host could hold every one of a listener's
//! `max_connections` slots.
//!
//! A client is its address as the throttles key it
//! ([`portico_gateway::limits::client_bucket`]): an IPv4 address, an IPv6
//! /64. The count is kept from accept to close, one map lookup each, never
//! on a request's path.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use portico_gateway::limits::client_bucket;

/// Shortest time between two log lines about one listener's refused
/// connections: a flood of them is one line per 10 s, not one each.
const REPORT_EVERY: Duration = Duration::from_secs(10);

/// The connections each client holds open on one listener (shared by its
/// worker threads), and the cap on them.
#[derive(Clone)]
pub(crate) struct ClientConns(Option<Arc<Shared>>);

struct Shared {
    max: u32,
    /// Which listener, for the log line.
    listener: &'static str,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Open connections per client. A client is removed when its last
    /// closes, so there are never more entries than open connections (at
    /// most the listener's `max_connections`), however many addresses come.
    open: HashMap<IpAddr, u32>,
    /// Refusals since the last log line.
    unreported: u64,
    /// Until when refusals are counted, not logged.
    quiet_until: Option<Instant>,
}

/// A connection's place under its client's cap, given back when dropped:
/// it lives in the connection's task, so a connection that ends in any way
/// (closed, failed, panicked, aborted at shutdown) frees its place.
pub(crate) struct ClientSlot {
    shared: Arc<Shared>,
    client: IpAddr,
    /// The client's open connections, this one included, when it was taken.
    held: u32,
}

/// The client already holds its cap of connections.
#[derive(Debug)]
pub(crate) struct AtCap;

impl ClientConns {
    /// At most `max` connections per client on the listener named
    /// `listener` (for logs); 0: no cap, nothing counted.
    pub(crate) fn new(max: usize, listener: &'static str) -> Self {
        if max == 0 {
            return ClientConns(None);
        }
        ClientConns(Some(Arc::new(Shared {
            max: u32::try_from(max).unwrap_or(u32::MAX),
            listener,
            state: Mutex::default(),
        })))
    }

    /// A place for one more connection from `ip` (`None`: no cap, nothing
    /// to give back), or [`AtCap`]. Refusals are logged at most once per
    /// [`REPORT_EVERY`], with how many there were since the last line.
    pub(crate) fn admit(&self, ip: IpAddr) -> Result<Option<ClientSlot>, AtCap> {
        let Some(shared) = &self.0 else {
            return Ok(None);
        };
        let client = client_bucket(ip);
        let report = {
            let mut state = shared.lock();
            let open = state.open.entry(client).or_default();
            if *open < shared.max {
                *open += 1;
                let held = *open;
                return Ok(Some(ClientSlot {
                    shared: Arc::clone(shared),
                    client,
                    held,
                }));
            }
            state.refused(Instant::now())
        };
        if let Some(refused) = report {
            tracing::warn!(
                %ip,
                refused,
                listener = shared.listener,
                max = shared.max,
                "connections refused: their client address already holds \
                 [limits] max_connections_per_client (`refused` counts them \
                 since the last such line, at most one per 10 s)"
            );
        }
        Err(AtCap)
    }

    /// The cap (0: none).
    pub(crate) fn max(&self) -> u32 {
        self.0.as_ref().map_or(0, |s| s.max)
    }

    #[cfg(test)]
    fn clients(&self) -> usize {
        self.0.as_ref().map_or(0, |s| s.lock().open.len())
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl State {
    /// Counts a refusal at `now`: how many to log now, or `None` while the
    /// last line is recent.
    fn refused(&mut self, now: Instant) -> Option<u64> {
        self.unreported += 1;
        if self.quiet_until.is_some_and(|until| now < until) {
            return None;
        }
        self.quiet_until = Some(now + REPORT_EVERY);
        Some(std::mem::take(&mut self.unreported))
    }
}

impl ClientSlot {
    /// The client's open connections, this one included, when it was taken.
    pub(crate) fn held(&self) -> u32 {
        self.held
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        let clients = &mut state.open;
        if let Entry::Occupied(mut open) = clients.entry(self.client) {
            *open.get_mut() = open.get().saturating_sub(1);
            if *open.get() == 0 {
                open.remove();
            }
        }
        // A crowd gone leaves its table behind: give it back as it shrinks
        // (halving, so each entry is moved a bounded number of times).
        if clients.capacity() > 1024 && clients.len() < clients.capacity() / 4 {
            clients.shrink_to(clients.len() * 2);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_client_at_its_cap_is_refused_until_one_of_its_connections_closes() {
        let conns = ClientConns::new(2, "test");
        let first = conns.admit(ip("203.0.113.7")).unwrap().unwrap();
        let second = conns.admit(ip("203.0.113.7")).unwrap().unwrap();
        assert_eq!((first.held(), second.held()), (1, 2));
        assert!(conns.admit(ip("203.0.113.7")).is_err());
        // IPv4-mapped IPv6 is the same client.
        assert!(conns.admit(ip("::ffff:203.0.113.7")).is_err());
        // Another client is not held back by it.
        let other = conns.admit(ip("203.0.113.8")).unwrap().unwrap();
        assert_eq!(conns.clients(), 2);
        // A closed connection frees its place.
        drop(first);
        let again = conns.admit(ip("203.0.113.7")).unwrap().unwrap();
        assert_eq!(again.held(), 2);
        // A client whose connections all closed takes no memory.
        drop((second, again, other));
        assert_eq!(conns.clients(), 0);
    }

    #[test]
    fn an_ipv6_client_is_counted_by_its_64() {
        let conns = ClientConns::new(1, "test");
        let _held = conns.admit(ip("2001:db8:1:2::1")).unwrap().unwrap();
        assert!(conns.admit(ip("2001:db8:1:2:ffff::9")).is_err());
        assert!(conns.admit(ip("2001:db8:1:3::1")).unwrap().is_some());
    }

    #[test]
    fn no_cap_counts_nothing() {
        let conns = ClientConns::new(0, "test");
        let held: Vec<_> = (0..100)
            .map(|_| conns.admit(ip("203.0.113.7")).unwrap())
            .collect();
        assert!(held.iter().all(Option::is_none));
        assert_eq!((conns.max(), conns.clients()), (0, 0));
    }

    #[test]
    fn many_clients_leave_no_table_behind() {
        let conns = ClientConns::new(4, "test");
        let held: Vec<_> = (0..20_000u32)
            .map(|n| conns.admit(IpAddr::from(n.to_be_bytes())).unwrap().unwrap())
            .collect();
        assert_eq!(conns.clients(), 20_000);
        drop(held);
        let shared = conns.0.as_ref().unwrap();
        let state = shared.lock();
        assert!(state.open.is_empty());
        assert!(state.open.capacity() <= 2048, "{}", state.open.capacity());
    }

    #[test]
    fn refusals_are_logged_at_most_once_per_interval_with_their_count() {
        let mut state = State::default();
        let start = Instant::now();
        assert_eq!(state.refused(start), Some(1));
        for n in 1..=500 {
            assert_eq!(state.refused(start + Duration::from_millis(n)), None);
        }
        assert_eq!(state.refused(start + REPORT_EVERY), Some(501));
        assert_eq!(state.refused(start + REPORT_EVERY), None);
    }
}
