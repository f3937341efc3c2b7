//! A quota book shared by the origins of a region, kept in Redis.
//!
//! The same book as [`QuotaBook`](crate::QuotaBook), with the same invariant
//! (a lease's requests are counted as used when it is granted, and returns
//! only lower the count), held where every origin of a region reaches it:
//! each grant and each return is one Lua script, which Redis runs atomically,
//! so replicas granting at once never grant the same request twice.
//!
//! Keys, under the configured prefix (`portico:` by default):
//! * `usage:<len>:<plan><key>:<period start>`: the period's count, expiring
//!   [`RETAIN_MS`] after the period began (the plan's length first, so that
//!   no two (plan, key) pairs share a name);
//! * `lease:<id>`: a hash of the lease (`u` its usage key, `g` granted, `h`
//!   holder, `e` expiry), kept [`RETAIN_MS`] past its expiry for a late return;
//!
//! (both expiries set as spans from the grant, on the server's clock: an
//! origin's clock that is off does not delete them early; see [`kept_for`]);
//! * `next_lease`: the last lease id granted;
//! * `grant:<token>`: a grant's lease id, or `x` once cancelled, kept
//!   [`TOKEN_TTL`] (a day): a grant whose answer never came is cancelled by its
//!   token (its lease ends and gives back all it granted, or, not run yet,
//!   it grants nothing when it runs), so that a grant Redis ran after its
//!   caller gave up (a slow server, a lost answer) does not leave its
//!   requests counted as used by no one. A grant that was answered needs no
//!   cancel: its token is deleted as soon as the answer comes (best effort),
//!   so the tokens kept are those of unanswered grants, not one per grant.
//!
//! Lease ids count up from a random point and move on by a random jump
//! whenever an origin finds the server's run id changed (its first grant,
//! a Redis restart, a replica promoted), as [`QuotaBook::open`](crate::QuotaBook::open)
//! moves a file's on at every opening and for the same reason: a store
//! restored from an older copy must not grant an id a PoP still holds. Lua
//! keeps numbers as doubles and writes them with 14 significant digits, so
//! ids and counts stay below 10^14 and the scripts write them with `%d`.
//!
//! Durability is Redis's: run it with `appendonly yes` and `appendfsync
//! always` for counts that survive a Redis restart, and with `maxmemory-policy
//! noeviction` (every key here expires, so a `volatile-*` policy could evict
//! counts). A single Redis (with or without replicas) is
//! supported, not Redis Cluster: a grant touches keys it names only as it
//! runs.

use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::io::tcp::{TcpSettings, socket2};
use redis::{AsyncCommands, IntoConnectionInfo, Script};

use crate::QuotaError;
use crate::book::{EMPTY_LEASE, Lease, LeaseRequest, RETAIN_MS, Usage};
use crate::period::{QuotaSpec, bounds};

/// Where a new store's lease ids start, drawn below this (as widely as
/// [`MAX_COUNT`] allows: a lease of another book is then unlikely to name
/// one of this one's).
const FIRST_ID_BELOW: u64 = 1 << 46;
/// How far each opening moves the ids on, drawn from this range.
const ID_JUMP: std::ops::Range<u64> = 1 << 24..1 << 25;
/// The largest id or count the scripts handle exactly: Lua keeps numbers as
/// doubles and writes them with 14 significant digits.
const MAX_COUNT: u64 = 99_999_999_999_999;

/// How long one operation may take, connecting included, before the book
/// counts as unreachable (a wallet then spends only what it holds).
const OP_TIMEOUT: Duration = Duration::from_secs(3);
/// How long one command may take on a connection.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the kernel may hold unacknowledged data before it drops the
/// connection (a Redis host gone without a reset), and its keepalive probes.
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(5);
/// After the store could not be reached, operations fail at once for this
/// long (and returns wait in the queue): a node handing back many leases at
/// shutdown waits for one time-out, not one per lease.
const BACK_OFF: Duration = Duration::from_secs(1);
/// Returns that could not be sent wait here, at most this many, and go out
/// again every [`BACK_OFF`] while the node runs.
const MAX_QUEUED_RETURNS: usize = 100_000;

/// Grants up to ARGV[1] requests of a limit of ARGV[2] from the count in
/// KEYS[1] (kept ARGV[3] ms from now), as lease `ARGV[4]..id` (granted,
/// holder ARGV[5], expiry ARGV[6]; kept ARGV[7] ms from now); ids stop at
/// ARGV[8] and start above ARGV[9] (the highest this origin has seen). When
/// the server's run id is not the one the ids were last moved for (KEYS[3]:
/// a first grant, a restart, perhaps from an older copy, a replica
/// promoted), the ids start at ARGV[10] if there are none and then move on
/// by ARGV[11], once per server. KEYS[4] is the grant's token: a grant its
/// caller gave up on is cancelled there ([`CANCEL`]), before it runs or
/// after; the lease's id is kept there for ARGV[12] ms, or until the
/// caller, answered, deletes it.
///
/// Both expiries are relative ([`kept_for`]): an absolute time from the
/// origin's clock, on a server whose clock is ahead by more than a month,
/// lies in the past, and Redis would delete the count as it is written (the
/// next grant reads 0 used: the whole quota again, at every grant).
/// Returns {id, granted, used after}; id 0 when nothing was granted.
const GRANT: &str = r"
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
local granted = math.min(tonumber(ARGV[1]), tonumber(ARGV[2]) - used)
if granted <= 0 or redis.call('EXISTS', KEYS[4]) == 1 then
  return {0, 0, used}
end
local run = string.match(redis.call('INFO', 'server'), 'run_id:(%w+)')
if not run then
  return redis.error_reply('INFO server names no run_id')
end
local moved = redis.call('GET', KEYS[3]) ~= run
if moved then
  redis.call('SET', KEYS[2], ARGV[10], 'NX')
end
if tonumber(redis.call('GET', KEYS[2]) or '0') < tonumber(ARGV[9]) then
  redis.call('SET', KEYS[2], ARGV[9])
end
if moved then
  redis.call('INCRBY', KEYS[2], ARGV[11])
  redis.call('SET', KEYS[3], run)
end
local id = redis.call('INCR', KEYS[2])
if id > tonumber(ARGV[8]) then
  return redis.error_reply('lease ids are used up')
end
id = string.format('%d', id)
redis.call('INCRBY', KEYS[1], string.format('%d', granted))
redis.call('PEXPIRE', KEYS[1], ARGV[3])
local lease = ARGV[4] .. id
redis.call('HSET', lease, 'u', KEYS[1], 'g', string.format('%d', granted), 'h', ARGV[5], 'e', ARGV[6])
redis.call('PEXPIRE', lease, ARGV[7])
redis.call('SET', KEYS[4], id, 'PX', ARGV[12])
return {tonumber(id), granted, used + granted}
";

/// Cancels the grant of token KEYS[1] for holder ARGV[2], whose caller had
/// no answer: if it ran, its lease (`ARGV[1]..id`) ends and gives back all
/// it granted, which no one received; if it has not run yet, the token is
/// marked so that it grants nothing when it does (for ARGV[3] ms). The lease
/// goes back before the mark is written (a server out of memory refuses the
/// mark, not the return), and another holder's cancel changes nothing.
/// Returns {id, returned}; {0, 0} when nothing was granted.
const CANCEL: &str = r"
local id = redis.call('GET', KEYS[1])
if id == 'x' then
  return {0, 0}
end
if not id then
  redis.call('SET', KEYS[1], 'x', 'PX', ARGV[3])
  return {0, 0}
end
local lease = ARGV[1] .. id
local l = redis.call('HMGET', lease, 'u', 'g', 'h')
if l[1] and l[3] ~= ARGV[2] then
  return {0, 0}
end
local granted = 0
if l[1] then
  redis.call('DEL', lease)
  granted = tonumber(l[2])
  if granted > 0 and redis.call('EXISTS', l[1]) == 1 then
    local used = tonumber(redis.call('GET', l[1]))
    redis.call('DECRBY', l[1], string.format('%d', math.min(granted, used)))
  end
end
redis.call('SET', KEYS[1], 'x', 'PX', ARGV[3])
return {tonumber(id), granted}
";

/// How long a grant's token is kept (see [`GRANT`], [`CANCEL`]): a cancel
/// waits in the node's queue while the store cannot be reached, and must
/// still find its grant's lease when it can. Only unanswered grants and
/// cancels keep theirs that long: an answered grant's token is deleted at
/// once ([`RedisBook::forget_token`]), else a day of tokens would grow with
/// the grant rate, one key per lease ever granted.
const TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);

/// Ends lease KEYS[1] of holder ARGV[1], giving back ARGV[2] unused
/// requests to its count if that still exists.
/// Returns {0, returned}, or {-1} unknown, {-2, holder} not the holder,
/// {-3, granted} more returned than granted.
const RELEASE: &str = r"
local l = redis.call('HMGET', KEYS[1], 'u', 'g', 'h')
if not l[1] then
  return {-1}
end
if l[3] ~= ARGV[1] then
  return {-2, l[3]}
end
local unused = tonumber(ARGV[2])
if unused > tonumber(l[2]) then
  return {-3, tonumber(l[2])}
end
redis.call('DEL', KEYS[1])
if unused > 0 and redis.call('EXISTS', l[1]) == 1 then
  local used = tonumber(redis.call('GET', l[1]))
  redis.call('DECRBY', l[1], string.format('%d', math.min(unused, used)))
end
return {0, unused}
";

/// Publishes origin ARGV[1]'s demand (ARGV[5..]: scope, requests a second,
/// ...) in hash KEYS[2] for ARGV[2] ms, lists the origin in set KEYS[1], and
/// answers the demand every other listed origin published (the hashes
/// `ARGV[4]..id` still alive; an origin without one leaves the set, and a
/// live one enters it again at its next call): {id, {scope, rate, ...},
/// ...}. ARGV[3] is unused.
const EXCHANGE: &str = r"
redis.call('SADD', KEYS[1], ARGV[1])
redis.call('PEXPIRE', KEYS[1], 86400000)
redis.call('DEL', KEYS[2])
for i = 5, #ARGV, 400 do
  redis.call('HSET', KEYS[2], unpack(ARGV, i, math.min(i + 399, #ARGV)))
end
if #ARGV >= 5 then
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
end
local out = {}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if id ~= ARGV[1] then
    local h = redis.call('HGETALL', ARGV[4] .. id)
    if #h > 0 then
      table.insert(out, id)
      table.insert(out, h)
    else
      redis.call('SREM', KEYS[1], id)
    end
  end
end
return out
";

/// How long, from `now_ms`, a grant keeps the count of the period that
/// began at `period_start_ms` and a lease that expires at `expires_ms`:
/// until [`RETAIN_MS`] after the one began and the other expired, as the
/// local book prunes them, but measured as a span on the origin's clock
/// (the time into the period, the lease's life) and set in Redis relative
/// to its own (`PEXPIRE`). Only the clocks' rates need agree, not their
/// readings: the count lives more than a month past the grant whatever the
/// skew, at least 1 ms.
fn kept_for(period_start_ms: i64, expires_ms: i64, now_ms: i64) -> (i64, i64) {
    let count = period_start_ms
        .saturating_add(RETAIN_MS)
        .saturating_sub(now_ms);
    let lease = expires_ms.saturating_sub(now_ms).saturating_add(RETAIN_MS);
    (count.max(1), lease.max(1))
}

/// Demand by origin id, then by scope (requests a second).
pub type PeerDemand = Vec<(String, Vec<(String, f64)>)>;

/// The book of a region's origins, in Redis. Cheap to clone.
#[derive(Clone)]
pub struct RedisBook(Arc<Inner>);

struct Inner {
    /// The connection, made again after a failover left it on a replica.
    conn: Mutex<ConnectionManager>,
    client: redis::Client,
    config: ConnectionManagerConfig,
    prefix: String,
    grant: Script,
    release: Script,
    cancel: Script,
    exchange: Script,
    /// Where every operation runs (the runtime that made the book, the
    /// node's main one): the connection manager starts a lost connection
    /// again on the runtime of the call that found it lost, and a runtime
    /// that ends (a link's worker at shutdown) would take it along.
    runtime: tokio::runtime::Handle,
    /// Returns to send again (see [`MAX_QUEUED_RETURNS`]).
    returns: Mutex<Vec<Return>>,
    /// Of those, how many are being sent now (out of the queue).
    sending: AtomicUsize,
    /// Operations fail at once until then (see [`BACK_OFF`]).
    down_until: Mutex<Option<Instant>>,
    /// The highest lease id this origin has granted or moved the ids to.
    seen: AtomicU64,
    /// Requests given back by cancels of grants that had run.
    cancelled: AtomicU64,
}

impl std::fmt::Debug for RedisBook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBook")
            .field("prefix", &self.0.prefix)
            .finish()
    }
}

/// Why an operation had no answer from the store.
enum Failure {
    /// A connection lost, or no answer in time: the command may have run.
    Unreachable(String),
    /// Not sent: the book's back-off, or a connection refused.
    NotSent(String),
    /// Redis answered with an error (a script's, say).
    Refused(String),
}

impl Failure {
    /// Whether the store could not take the command (sent or not).
    fn unreachable(&self) -> bool {
        matches!(self, Failure::Unreachable(_) | Failure::NotSent(_))
    }
}

impl From<Failure> for QuotaError {
    fn from(failure: Failure) -> Self {
        match failure {
            Failure::Unreachable(why) | Failure::NotSent(why) | Failure::Refused(why) => {
                QuotaError::Store(format!("redis: {why}"))
            }
        }
    }
}

/// Whether `err` says the store cannot take commands now (rather than that
/// it refused this one): no connection, a lost one, no answer in time, or a
/// server that is loading its data, failing over, read-only, busy with a
/// script or out of memory.
fn unreachable(err: &redis::RedisError) -> bool {
    err.is_io_error()
        || err.is_timeout()
        || err.is_connection_dropped()
        || err.is_connection_refusal()
        || matches!(
            err.code(),
            Some(
                "LOADING" | "TRYAGAIN" | "MASTERDOWN" | "READONLY" | "CLUSTERDOWN" | "BUSY" | "OOM"
            )
        )
}

/// [`EXCHANGE`]'s answer; what is not text or a number is left out.
fn peer_demand(answer: &[redis::Value]) -> PeerDemand {
    let text = |v: &redis::Value| match v {
        redis::Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        redis::Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    };
    answer
        .chunks_exact(2)
        .filter_map(|pair| {
            let id = text(&pair[0])?;
            let redis::Value::Array(fields) = &pair[1] else {
                return None;
            };
            let rates = fields
                .chunks_exact(2)
                .filter_map(|f| {
                    let rate: f64 = text(&f[1])?.parse().ok()?;
                    (rate.is_finite() && rate >= 0.0).then_some((text(&f[0])?, rate))
                })
                .collect();
            Some((id, rates))
        })
        .collect()
}

/// What waits to be sent again: a lease's return, or the cancel of a grant
/// whose caller had no answer.
enum Return {
    Lease {
        id: u64,
        unused: u64,
        holder: String,
    },
    Cancel {
        token: u64,
        holder: String,
    },
}

fn store(err: redis::RedisError) -> QuotaError {
    QuotaError::Store(format!("redis: {err}"))
}

/// `url` with its user, password and query (which may carry a password)
/// left out, for messages and logs.
pub fn redacted(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let (rest, query) = match rest.split_once('?') {
        Some((rest, _)) => (rest, "?…"),
        None => (rest, ""),
    };
    let rest = match rest.split_once('/') {
        Some((authority, path)) => match authority.rsplit_once('@') {
            Some((_, host)) => format!("…@{host}/{path}"),
            None => format!("{authority}/{path}"),
        },
        None => match rest.rsplit_once('@') {
            Some((_, host)) => format!("…@{host}"),
            None => rest.to_owned(),
        },
    };
    format!("{scheme}://{rest}{query}")
}

/// Whether the node's Redis client reads `url` (parsing only, nothing is
/// dialed); why not otherwise.
pub fn check_url(url: &str) -> Result<(), String> {
    url.into_connection_info().map(|_| ()).map_err(|e| {
        let text = e.to_string();
        let kind = format!(" - {:?}", e.kind());
        text.strip_suffix(&kind).unwrap_or(&text).to_owned()
    })
}

impl Inner {
    fn key(&self, parts: std::fmt::Arguments<'_>) -> String {
        format!("{}{parts}", self.prefix)
    }

    fn usage_key(&self, plan: &str, key_id: &str, period_start: i64) -> String {
        self.key(format_args!(
            "usage:{}:{plan}{key_id}:{period_start}",
            plan.len()
        ))
    }

    fn lease_key(&self, id: u64) -> String {
        self.key(format_args!("lease:{id}"))
    }

    fn token_key(&self, token: u64) -> String {
        self.key(format_args!("grant:{token:016x}"))
    }

    fn conn(&self) -> ConnectionManager {
        self.conn
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// A new connection in place of one to a server that no longer takes
    /// writes (`READONLY`: a failover behind one address left it on a
    /// replica; the manager only reconnects connections that drop).
    fn reconnect(&self) {
        let _entered = self.runtime.enter();
        match ConnectionManager::new_lazy_with_config(self.client.clone(), self.config.clone()) {
            Ok(conn) => *self.conn.lock().unwrap_or_else(PoisonError::into_inner) = conn,
            Err(err) => tracing::warn!(%err, "redis: could not make a new connection"),
        }
    }

    fn down(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        self.down_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn returns(&self) -> std::sync::MutexGuard<'_, Vec<Return>> {
        self.returns.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn is_down(&self) -> bool {
        self.down().is_some_and(|until| Instant::now() < until)
    }
}

/// TLS to a `rediss://` store, in PEM: the anchors its certificate must
/// chain to (the webpki roots built in when `None`), and this node's certificate chain
/// and key for a server that asks clients for one.
#[derive(Clone, Default)]
pub struct StoreTls {
    pub ca: Option<Vec<u8>>,
    pub client: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for StoreTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("StoreTls")
            .field("ca", &self.ca.is_some())
            .field("client", &self.client.is_some())
            .finish()
    }
}

impl RedisBook {
    /// A book at `url` (`redis://[user:password@]host:port/db`,
    /// `rediss://…` for TLS with the webpki roots built in, or
    /// `redis+unix:///path/to/socket`) under `prefix`. Connects lazily, and
    /// again after every loss: a Redis that is down makes operations fail
    /// within [`OP_TIMEOUT`] (the wallets spend what they hold), never the
    /// node's start. Must be called on the tokio runtime the book's
    /// operations are to run on.
    pub fn connect(url: &str, prefix: &str) -> Result<Self, QuotaError> {
        Self::connect_tls(url, prefix, &StoreTls::default())
    }

    /// [`RedisBook::connect`] to a `rediss://` URL with `tls`'s anchors and
    /// client certificate (both optional). Bad PEM is an error here, before
    /// anything is dialed.
    pub fn connect_tls(url: &str, prefix: &str, tls: &StoreTls) -> Result<Self, QuotaError> {
        let bad_url =
            |e: redis::RedisError| QuotaError::Store(format!("redis url `{}`: {e}", redacted(url)));
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|e| QuotaError::Store(format!("redis: {e}")))?;
        let keepalive = socket2::TcpKeepalive::new()
            .with_time(TCP_USER_TIMEOUT)
            .with_interval(Duration::from_secs(1));
        let tcp = TcpSettings::default()
            .set_nodelay(true)
            .set_keepalive(keepalive)
            .set_user_timeout(TCP_USER_TIMEOUT);
        let info = url
            .into_connection_info()
            .map_err(bad_url)?
            .set_tcp_settings(tcp);
        let client = match tls {
            StoreTls {
                ca: None,
                client: None,
            } => redis::Client::open(info).map_err(bad_url)?,
            StoreTls { ca, client } => {
                let certificates = redis::TlsCertificates {
                    client_tls: client.clone().map(|(cert, key)| redis::ClientTlsConfig {
                        client_cert: cert,
                        client_key: key,
                    }),
                    root_cert: ca.clone(),
                };
                redis::Client::build_with_tls(info, certificates)
                    .map_err(|e| QuotaError::Store(format!("redis TLS: {e}")))?
            }
        };
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_number_of_retries(0);
        let conn = {
            let _entered = runtime.enter();
            ConnectionManager::new_lazy_with_config(client.clone(), config.clone())
                .map_err(store)?
        };
        let inner = Arc::new(Inner {
            conn: Mutex::new(conn),
            client,
            config,
            prefix: prefix.to_owned(),
            grant: Script::new(GRANT),
            release: Script::new(RELEASE),
            cancel: Script::new(CANCEL),
            exchange: Script::new(EXCHANGE),
            runtime,
            returns: Mutex::new(Vec::new()),
            sending: AtomicUsize::new(0),
            down_until: Mutex::new(None),
            seen: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
        });
        inner.runtime.spawn(Self::resend(Arc::downgrade(&inner)));
        Ok(Self(inner))
    }

    /// Runs `op` on the book's runtime within [`OP_TIMEOUT`]. When the
    /// store cannot be reached (no connection, a connection lost, no answer
    /// in time), the next operations fail at once for [`BACK_OFF`].
    async fn run<T, Fut>(&self, op: impl FnOnce(Arc<Inner>) -> Fut) -> Result<T, Failure>
    where
        T: Send + 'static,
        Fut: Future<Output = redis::RedisResult<T>> + Send + 'static,
    {
        self.run_as(op, true).await
    }

    /// [`RedisBook::run`]; with `book` false (the rates' demand exchange),
    /// the outcome neither follows nor sets the book's back-off: a slow
    /// exchange does not hold up grants and returns.
    async fn run_as<T, Fut>(
        &self,
        op: impl FnOnce(Arc<Inner>) -> Fut,
        book: bool,
    ) -> Result<T, Failure>
    where
        T: Send + 'static,
        Fut: Future<Output = redis::RedisResult<T>> + Send + 'static,
    {
        let inner = &self.0;
        if book && inner.is_down() {
            return Err(Failure::NotSent(
                "unreachable a moment ago; trying again shortly".into(),
            ));
        }
        let task = inner
            .runtime
            .spawn(tokio::time::timeout(OP_TIMEOUT, op(Arc::clone(inner))));
        let out = match task.await {
            Ok(Ok(Ok(out))) => Ok(out),
            Ok(Ok(Err(err))) if err.is_connection_refusal() => {
                Err(Failure::NotSent(err.to_string()))
            }
            Ok(Ok(Err(err))) if unreachable(&err) => {
                if err.code() == Some("READONLY") {
                    inner.reconnect();
                }
                Err(Failure::Unreachable(err.to_string()))
            }
            Ok(Ok(Err(err))) => Err(Failure::Refused(err.to_string())),
            Ok(Err(_)) => Err(Failure::Unreachable(format!(
                "no answer within {} s",
                OP_TIMEOUT.as_secs()
            ))),
            Err(err) => Err(Failure::Refused(format!("task: {err}"))),
        };
        if let (true, Err(failure)) = (book, &out)
            && failure.unreachable()
        {
            *inner.down() = Some(Instant::now() + BACK_OFF);
        }
        out
    }

    /// Publishes `origin`'s own demand for shared rates (scope, requests a
    /// second), kept for `ttl`, and reads what the region's other origins
    /// published: they split those rates with it (see `portico::rates`).
    pub async fn exchange_demand(
        &self,
        origin: &str,
        mine: &[(String, f64)],
        ttl: Duration,
    ) -> Result<PeerDemand, QuotaError> {
        let (set, own) = (
            self.0.key(format_args!("origins")),
            self.0.key(format_args!("demand:{origin}")),
        );
        let prefix = self.0.key(format_args!("demand:"));
        let mut args: Vec<String> = Vec::with_capacity(4 + 2 * mine.len());
        args.push(origin.to_owned());
        args.push(ttl.as_millis().to_string());
        args.push(String::new());
        args.push(prefix);
        for (scope, rate) in mine {
            args.push(scope.clone());
            args.push(format!("{rate:.3}"));
        }
        let exchange = move |inner: Arc<Inner>| async move {
            let mut call = inner.exchange.key(set);
            call.key(own);
            for a in &args {
                call.arg(a);
            }
            call.invoke_async(&mut inner.conn()).await
        };
        let answer: Vec<redis::Value> = self.run_as(exchange, false).await?;
        Ok(peer_demand(&answer))
    }

    /// Whether the store answers (to find a misconfigured one at start).
    pub async fn check(&self) -> Result<(), QuotaError> {
        self.run(|inner| async move {
            redis::cmd("PING")
                .query_async::<()>(&mut inner.conn())
                .await
        })
        .await
        .map_err(QuotaError::from)
    }

    /// Grants up to `req.want` requests, counted as used before returning.
    pub async fn grant(&self, req: &LeaseRequest<'_>, now_ms: i64) -> Result<Lease, QuotaError> {
        // Names this grant, so that it can be cancelled if no answer comes.
        let token = rand::random();
        let lease = self.grant_as(req, now_ms, token).await?;
        // Answered: no cancel will look for the token. (One that granted
        // nothing wrote none.)
        if lease.granted > 0 {
            self.forget_token(token);
        }
        Ok(lease)
    }

    /// [`RedisBook::grant`] under `token`, which is kept in the store as
    /// though no answer had come.
    async fn grant_as(
        &self,
        req: &LeaseRequest<'_>,
        now_ms: i64,
        token: u64,
    ) -> Result<Lease, QuotaError> {
        let (start, end) = bounds(req.spec.period, req.spec.offset, now_ms);
        let expires_ms = (now_ms + req.ttl_ms.max(1)).min(end);
        let (count_kept, lease_kept) = kept_for(start, expires_ms, now_ms);
        let limit = req.spec.limit.min(MAX_COUNT);
        let (want, usage_key) = (
            req.want.min(MAX_COUNT),
            self.0.usage_key(req.plan, req.key_id, start),
        );
        let holder = req.holder.to_owned();
        let floor = self.0.seen.load(Ordering::Relaxed);
        let (first, jump) = (
            rand::random_range(1..FIRST_ID_BELOW),
            rand::random_range(ID_JUMP),
        );
        let granting = self
            .run(move |inner| async move {
                inner
                    .grant
                    .key(usage_key)
                    .key(inner.key(format_args!("next_lease")))
                    .key(inner.key(format_args!("next_lease_run")))
                    .key(inner.token_key(token))
                    .arg(want)
                    .arg(limit)
                    .arg(count_kept)
                    .arg(inner.key(format_args!("lease:")))
                    .arg(holder)
                    .arg(expires_ms)
                    .arg(lease_kept)
                    .arg(MAX_COUNT)
                    .arg(floor)
                    .arg(first)
                    .arg(jump)
                    .arg(TOKEN_TTL.as_millis() as u64)
                    .invoke_async(&mut inner.conn())
                    .await
            })
            .await;
        let (id, granted, used): (u64, u64, u64) = match granting {
            Ok(answer) => answer,
            // Sent, perhaps run, but not answered: whatever it granted, no
            // one holds. Cancelled as soon as the store answers again.
            Err(Failure::Unreachable(why)) => {
                let cancel = Return::Cancel {
                    token,
                    holder: req.holder.to_owned(),
                };
                let full = self.0.returns().len() >= MAX_QUEUED_RETURNS;
                let kept = self.keep(cancel, &why);
                if full {
                    tracing::warn!(%kept, "the cancel of a grant that had no answer is dropped: its lease stays counted");
                }
                return Err(Failure::Unreachable(why).into());
            }
            Err(refused) => return Err(refused.into()),
        };
        self.0.seen.fetch_max(id, Ordering::Relaxed);
        Ok(Lease {
            id: if granted == 0 { EMPTY_LEASE } else { id },
            granted,
            expires_ms,
            period_end_ms: end,
            exhausted: used >= limit,
        })
    }

    /// Deletes the token of a grant that was answered, which no cancel will
    /// ever look for, without waiting for it (the grant's answer does not
    /// wait on a second round trip) and without touching the book's
    /// back-off: if it fails, the token expires after [`TOKEN_TTL`] as an
    /// unanswered grant's does.
    fn forget_token(&self, token: u64) {
        let key = self.0.token_key(token);
        let mut conn = self.0.conn();
        self.0.runtime.spawn(async move {
            let deleted: Result<Result<(), _>, _> =
                tokio::time::timeout(OP_TIMEOUT, conn.del(key)).await;
            if let Ok(Err(err)) = deleted {
                tracing::debug!(%err, "redis: an answered grant's token was not deleted");
            }
        });
    }

    /// Ends a lease, giving back `unused` requests if its period is still
    /// counted; refused (changing nothing) for an unknown lease, another
    /// holder's, or more than it granted. A return the store cannot take now
    /// is kept and sent again (see [`MAX_QUEUED_RETURNS`]); the error says so.
    pub async fn release(
        &self,
        lease_id: u64,
        unused: u64,
        holder: &str,
    ) -> Result<u64, QuotaError> {
        if lease_id == EMPTY_LEASE {
            return match unused {
                0 => Ok(0),
                _ => Err(QuotaError::UnknownLease(lease_id)),
            };
        }
        if lease_id > MAX_COUNT {
            return Err(QuotaError::UnknownLease(lease_id));
        }
        let ret = Return::Lease {
            id: lease_id,
            unused,
            holder: holder.to_owned(),
        };
        if self.0.is_down() {
            return Err(self.keep(ret, "unreachable a moment ago"));
        }
        match self.send(&ret).await {
            Err(Failure::Unreachable(why) | Failure::NotSent(why)) => Err(self.keep(ret, &why)),
            done => done.map_err(QuotaError::from)?,
        }
    }

    /// Returns waiting to be sent again (the store could not take them).
    pub fn returns_waiting(&self) -> usize {
        let queued = self.0.returns();
        queued.len() + self.0.sending.load(Ordering::Relaxed)
    }

    /// Queues `ret` to be sent again; the error to report meanwhile.
    fn keep(&self, ret: Return, why: &str) -> QuotaError {
        let mut queued = self.0.returns();
        if queued.len() >= MAX_QUEUED_RETURNS {
            return QuotaError::Store(format!(
                "redis: {why}; the return is dropped ({MAX_QUEUED_RETURNS} wait already)"
            ));
        }
        queued.push(ret);
        QuotaError::Store(format!("redis: {why}; the return is kept and sent again"))
    }

    /// Sends the returns waiting, every [`BACK_OFF`] while the book lives.
    async fn resend(book: std::sync::Weak<Inner>) {
        loop {
            tokio::time::sleep(BACK_OFF).await;
            let Some(inner) = book.upgrade() else { return };
            RedisBook(inner).send_waiting(None).await;
        }
    }

    /// Sends the returns waiting, one at a time, until none is left or the
    /// store cannot take them; true when none is left.
    async fn send_waiting(&self, deadline: Option<tokio::time::Instant>) -> bool {
        while !self.0.is_down() && deadline.is_none_or(|d| tokio::time::Instant::now() < d) {
            // Taken and counted as out under one lock: a flush never sees
            // a return in neither place.
            let ret = {
                let mut queued = self.0.returns();
                let ret = queued.pop();
                if ret.is_some() {
                    self.0.sending.fetch_add(1, Ordering::Relaxed);
                }
                ret
            };
            let Some(ret) = ret else {
                return true;
            };
            let sent = self.send(&ret).await;
            if sent.as_ref().is_err_and(Failure::unreachable) {
                let mut queued = self.0.returns();
                queued.push(ret);
                self.0.sending.fetch_sub(1, Ordering::Relaxed);
                return false;
            }
            self.0.sending.fetch_sub(1, Ordering::Relaxed);
            match sent {
                Err(Failure::Unreachable(_) | Failure::NotSent(_)) => {}
                Ok(Ok(_)) => {}
                // Refused now (its first sending reached the store, and
                // only the answer was lost): nothing more to do with it.
                Ok(Err(err)) => {
                    tracing::debug!(%err, "a quota return sent again was refused")
                }
                Err(Failure::Refused(err)) => {
                    tracing::warn!(%err, "a quota return sent again failed")
                }
            }
        }
        false
    }

    /// Sends the returns waiting for at most `within` (a node about to
    /// exit); how many are still unsent.
    pub async fn flush(&self, within: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            // Done when none waits here and none is out with the resender.
            let emptied = self.send_waiting(Some(deadline)).await;
            if emptied && self.returns_waiting() == 0 || tokio::time::Instant::now() >= deadline {
                return self.returns_waiting();
            }
            tokio::time::sleep(BACK_OFF / 4).await;
        }
    }

    /// Runs [`RELEASE`] or [`CANCEL`] for `ret`: the store's answer (what
    /// went back), or why there was none.
    async fn send(&self, ret: &Return) -> Result<Result<u64, QuotaError>, Failure> {
        let (id, unused, holder) = match ret {
            Return::Lease { id, unused, holder } => (*id, *unused, holder),
            Return::Cancel { token, holder } => return self.cancel(*token, holder).await,
        };
        let lease_key = self.0.lease_key(id);
        let owner = holder.clone();
        let answer: Vec<redis::Value> = self
            .run(move |inner| async move {
                inner
                    .release
                    .key(lease_key)
                    .arg(owner)
                    .arg(unused.min(MAX_COUNT + 1))
                    .invoke_async(&mut inner.conn())
                    .await
            })
            .await?;
        let int = |i: usize| match answer.get(i) {
            Some(redis::Value::Int(n)) => u64::try_from(*n).unwrap_or(0),
            _ => 0,
        };
        Ok(match answer.first() {
            Some(redis::Value::Int(0)) => Ok(int(1)),
            Some(redis::Value::Int(-1)) => Err(QuotaError::UnknownLease(id)),
            Some(redis::Value::Int(-2)) => Err(QuotaError::NotHolder {
                lease: id,
                holder: holder.clone(),
            }),
            Some(redis::Value::Int(-3)) => Err(QuotaError::ReturnTooLarge {
                lease: id,
                unused,
                granted: int(1),
            }),
            other => Err(QuotaError::Store(format!(
                "redis: unexpected answer to a return: {other:?}"
            ))),
        })
    }

    /// Runs [`CANCEL`] for the grant of `token`: what went back.
    async fn cancel(&self, token: u64, holder: &str) -> Result<Result<u64, QuotaError>, Failure> {
        let token_key = self.0.token_key(token);
        let holder = holder.to_owned();
        let (id, returned): (u64, u64) = self
            .run(move |inner| async move {
                inner
                    .cancel
                    .key(token_key)
                    .arg(inner.key(format_args!("lease:")))
                    .arg(holder)
                    .arg(TOKEN_TTL.as_millis() as u64)
                    .invoke_async(&mut inner.conn())
                    .await
            })
            .await?;
        if id != 0 {
            self.0.cancelled.fetch_add(returned, Ordering::Relaxed);
            tracing::info!(
                lease = id,
                returned,
                "a grant that had no answer is cancelled"
            );
        }
        Ok(Ok(returned))
    }

    /// Requests given back so far by cancels of grants that had run.
    pub fn cancelled(&self) -> u64 {
        self.0.cancelled.load(Ordering::Relaxed)
    }

    /// The key's usage in the period containing `now_ms`.
    pub async fn usage(
        &self,
        plan: &str,
        key_id: &str,
        spec: QuotaSpec,
        now_ms: i64,
    ) -> Result<Usage, QuotaError> {
        let (start, end) = bounds(spec.period, spec.offset, now_ms);
        let key = self.0.usage_key(plan, key_id, start);
        let used: Option<u64> = self
            .run(move |inner| async move { inner.conn().get(key).await })
            .await?;
        Ok(Usage::counted(used.unwrap_or(0), spec.limit, (start, end)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::book::tests::{SPEC, request};
    use crate::testing::Redis;

    fn now() -> i64 {
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap();
        i64::try_from(since.as_millis()).unwrap()
    }

    async fn book(redis: &Redis) -> RedisBook {
        let book = RedisBook::connect(&redis.url, "portico:").unwrap();
        book.check().await.unwrap();
        book
    }

    #[tokio::test]
    async fn two_origins_on_one_store_never_grant_past_the_limit() {
        let redis = Redis::start();
        let (a, b) = (book(&redis).await, book(&redis).await);
        let mut granted = 0;
        for i in 0..40 {
            let book = if i % 2 == 0 { &a } else { &b };
            granted += book
                .grant(&request("pop-a", 30), now())
                .await
                .unwrap()
                .granted;
        }
        assert_eq!(granted, 1_000);
        let last = b.grant(&request("pop-b", 1), now()).await.unwrap();
        assert_eq!(
            (last.id, last.granted, last.exhausted),
            (EMPTY_LEASE, 0, true)
        );
        assert_eq!(
            a.usage("basic", "k1", SPEC, now()).await.unwrap().remaining,
            0
        );
        // Granted at once from both: still the limit, never more.
        let c = book(&redis).await;
        let other = |h| LeaseRequest {
            key_id: "k2",
            ..request(h, 7)
        };
        let asks = (0..200).map(|i| {
            let book = [&a, &b, &c][i % 3].clone();
            async move { book.grant(&other("pop-c"), now()).await.unwrap().granted }
        });
        let total: u64 = futures_sum(asks).await;
        assert_eq!(total, 1_000);
    }

    async fn futures_sum(
        asks: impl Iterator<Item = impl Future<Output = u64> + Send + 'static>,
    ) -> u64 {
        let mut set = tokio::task::JoinSet::new();
        for ask in asks {
            set.spawn(ask);
        }
        let mut total = 0;
        while let Some(n) = set.join_next().await {
            total += n.unwrap();
        }
        total
    }

    /// An origin whose clock is 70 days behind the server's: the count its
    /// grant writes must outlive the grant (an absolute expiry from its clock
    /// lay in the past, Redis deleted the count at once, and every grant
    /// found the whole quota again).
    #[tokio::test]
    async fn an_origin_clock_far_behind_the_servers_keeps_its_counts() {
        let redis = Redis::start();
        let book = book(&redis).await;
        let behind = now() - 70 * 86_400_000;
        let first = book.grant(&request("pop-a", 600), behind).await.unwrap();
        assert_eq!(first.granted, 600);
        let second = book.grant(&request("pop-b", 600), behind).await.unwrap();
        assert_eq!((second.granted, second.exhausted), (400, true));
        let usage = book.usage("basic", "k1", SPEC, behind).await.unwrap();
        assert_eq!(usage.used, 1_000);
        // The lease is kept too, for its return.
        assert_eq!(book.release(first.id, 100, "pop-a").await.unwrap(), 100);
        let usage = book.usage("basic", "k1", SPEC, behind).await.unwrap();
        assert_eq!(usage.used, 900);
        let (start, _) = bounds(SPEC.period, SPEC.offset, behind);
        let count = format!("portico:usage:5:basick1:{start}");
        let ttl: i64 = redis.command(&["PTTL", &count]);
        assert!(ttl > (RETAIN_MS - 86_400_000) / 2, "{ttl}");
    }

    #[tokio::test]
    async fn a_lease_goes_back_through_any_origin_and_only_from_its_holder() {
        let redis = Redis::start();
        let (a, b) = (book(&redis).await, book(&redis).await);
        let lease = a.grant(&request("pop-a", 600), now()).await.unwrap();
        assert_eq!((lease.granted, lease.exhausted), (600, false));
        let granted = |id: u64| -> Option<String> {
            redis.command(&["HGET", &format!("portico:lease:{id}"), "g"])
        };
        assert_eq!(granted(lease.id).as_deref(), Some("600"));
        // Refused, and nothing changes.
        assert!(matches!(
            b.release(lease.id, 10, "pop-b").await,
            Err(QuotaError::NotHolder { lease: l, .. }) if l == lease.id
        ));
        assert!(matches!(
            b.release(lease.id, 601, "pop-a").await,
            Err(QuotaError::ReturnTooLarge {
                unused: 601,
                granted: 600,
                ..
            })
        ));
        assert!(matches!(
            b.release(lease.id + 1_000, 1, "pop-a").await,
            Err(QuotaError::UnknownLease(_))
        ));
        assert!(matches!(
            b.release(u64::MAX - 1, 1, "pop-a").await,
            Err(QuotaError::UnknownLease(_))
        ));
        assert_eq!(a.usage("basic", "k1", SPEC, now()).await.unwrap().used, 600);
        // Its holder returns it through the other origin.
        assert_eq!(b.release(lease.id, 250, "pop-a").await.unwrap(), 250);
        assert_eq!(a.usage("basic", "k1", SPEC, now()).await.unwrap().used, 350);
        assert_eq!(granted(lease.id), None);
        // Once only.
        assert!(matches!(
            a.release(lease.id, 250, "pop-a").await,
            Err(QuotaError::UnknownLease(_))
        ));
        assert_eq!(a.usage("basic", "k1", SPEC, now()).await.unwrap().used, 350);
        let again = b.grant(&request("pop-b", 1_000), now()).await.unwrap();
        assert_eq!((again.granted, again.exhausted), (650, true));
        assert!(again.id > lease.id);
    }

    #[tokio::test]
    async fn plans_and_keys_that_run_together_stay_apart() {
        let redis = Redis::start();
        let book = book(&redis).await;
        // "ab" + "c" and "a" + "bc" would share a name without the length.
        let ab = LeaseRequest {
            plan: "ab",
            key_id: "c",
            ..request("pop-a", 1_000)
        };
        let a = LeaseRequest {
            plan: "a",
            key_id: "bc",
            ..request("pop-a", 1_000)
        };
        assert_eq!(book.grant(&ab, now()).await.unwrap().granted, 1_000);
        assert_eq!(book.grant(&a, now()).await.unwrap().granted, 1_000);
    }

    #[tokio::test]
    async fn the_ids_move_on_once_for_each_redis_server() {
        let redis = Redis::start();
        let book = book(&redis).await;
        let first = book.grant(&request("pop-a", 1), now()).await.unwrap();
        assert!(first.id < FIRST_ID_BELOW + ID_JUMP.end);
        // Another origin on the same server counts on.
        let other = RedisBook::connect(&redis.url, "portico:").unwrap();
        let second = other.grant(&request("pop-a", 1), now()).await.unwrap();
        assert_eq!(second.id, first.id + 1);
        // A server the ids were not moved for (as after a failover): once.
        let () = redis.command(&["SET", "portico:next_lease_run", "another-server"]);
        let third = book.grant(&request("pop-a", 1), now()).await.unwrap();
        assert!(third.id > second.id + ID_JUMP.start, "{second:?} {third:?}");
        let fourth = other.grant(&request("pop-a", 1), now()).await.unwrap();
        assert_eq!(fourth.id, third.id + 1);
    }

    #[tokio::test]
    async fn a_store_restored_from_an_older_copy_numbers_no_lease_twice() {
        let mut redis = Redis::start();
        let book = book(&redis).await;
        let first = book.grant(&request("pop-a", 10), now()).await.unwrap();
        // Redis goes back to a copy from before that grant.
        let rolled_back = (first.id - 5).to_string();
        let () = redis.command(&["SET", "portico:next_lease", &rolled_back]);
        let second = book.grant(&request("pop-a", 10), now()).await.unwrap();
        assert!(second.id > first.id, "{first:?} {second:?}");
        // Or to nothing at all, restarted: the ids still move on from the
        // highest this origin has seen, by a jump.
        redis.restart_empty();
        let deadline = Instant::now() + Duration::from_secs(30);
        let third = loop {
            match book.grant(&request("pop-a", 10), now()).await {
                Ok(lease) => break lease,
                Err(err) => assert!(Instant::now() < deadline, "{err}"),
            }
            tokio::time::sleep(BACK_OFF).await;
        };
        assert!(third.id > second.id + ID_JUMP.start, "{second:?} {third:?}");
        assert!(matches!(
            book.release(second.id, 10, "pop-a").await,
            Err(QuotaError::UnknownLease(_))
        ));
    }

    #[tokio::test]
    async fn a_return_the_store_could_not_take_goes_again_once_it_answers() {
        let redis = Redis::start();
        let book = book(&redis).await;
        let lease = book.grant(&request("pop-a", 100), now()).await.unwrap();
        // The Redis host stops answering (no reset: the calls time out).
        redis.pause();
        let err = book.release(lease.id, 60, "pop-a").await.unwrap_err();
        assert!(
            err.to_string()
                .ends_with("the return is kept and sent again"),
            "{err}"
        );
        assert_eq!(book.returns_waiting(), 1);
        redis.resume();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match book.usage("basic", "k1", SPEC, now()).await {
                Ok(u) if u.used == 40 => break,
                other => assert!(Instant::now() < deadline, "not returned: {other:?}"),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // Sent once: the lease is gone, and nothing more comes back.
        while book.returns_waiting() > 0 {
            assert!(Instant::now() < deadline, "still waiting");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(BACK_OFF * 2).await;
        assert!(matches!(
            book.release(lease.id, 60, "pop-a").await,
            Err(QuotaError::UnknownLease(_))
        ));
        assert_eq!(
            book.usage("basic", "k1", SPEC, now()).await.unwrap().used,
            40
        );
    }

    /// A grant whose answer does not come in time (the server stopped, then
    /// ran it once it went on) is cancelled: the requests it counted go
    /// back, where no one could ever spend them otherwise.
    #[tokio::test]
    async fn a_grant_that_had_no_answer_is_cancelled_once_the_store_answers() {
        let redis = Redis::start();
        let book = book(&redis).await;
        // A first grant loads the script: the late one then runs as sent.
        let first = book.grant(&request("pop-a", 100), now()).await.unwrap();
        redis.pause();
        assert!(book.grant(&request("pop-a", 100), now()).await.is_err());
        assert_eq!(book.returns_waiting(), 1, "its cancel waits");
        redis.resume();
        let deadline = Instant::now() + Duration::from_secs(30);
        while book.returns_waiting() > 0 {
            assert!(Instant::now() < deadline, "the cancel was never sent");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // It ran once the server went on (its cancel found its lease), and
        // went back: only the first lease counts (read once the book's
        // back-off is over).
        assert_eq!(book.cancelled(), 100, "the cancel found the grant run");
        loop {
            match book.usage("basic", "k1", SPEC, now()).await {
                Ok(u) if u.used == 100 => break,
                other => assert!(Instant::now() < deadline, "not returned: {other:?}"),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let leases: Vec<String> = redis.command(&["KEYS", "portico:lease:*"]);
        assert_eq!(leases, [format!("portico:lease:{}", first.id)]);
        // The cancelled grant's token stays marked; the answered one's went.
        let marks = tokens_left(&redis, 1).await;
        assert_eq!(marks, ["x"]);
        // And the book grants as before.
        let lease = book.grant(&request("pop-a", 100), now()).await.unwrap();
        assert_eq!(lease.granted, 100);
    }

    /// The values of the grant tokens in the store once there are at most
    /// `want` (an answered grant's goes a moment after its answer); all
    /// there are if that never happens.
    async fn tokens_left(redis: &Redis, want: usize) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let tokens: Vec<String> = redis.command(&["KEYS", "portico:grant:*"]);
            if tokens.len() <= want || Instant::now() >= deadline {
                return tokens.iter().map(|t| redis.command(&["GET", t])).collect();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A token is kept for a cancel, which only a grant without an answer
    /// has: answered grants leave none behind, however many there are, and
    /// a cancel's mark stays.
    #[tokio::test]
    async fn answered_grants_keep_no_token() {
        let redis = Redis::start();
        let book = book(&redis).await;
        for _ in 0..20 {
            let lease = book.grant(&request("pop-a", 10), now()).await.unwrap();
            assert_eq!(book.release(lease.id, 4, "pop-a").await.unwrap(), 4);
        }
        let held = book.grant(&request("pop-a", 10), now()).await.unwrap();
        assert_eq!(held.granted, 10);
        assert!(matches!(book.cancel(7, "pop-a").await, Ok(Ok(0))));
        assert_eq!(tokens_left(&redis, 1).await, ["x"]);
        assert_eq!(
            book.usage("basic", "k1", SPEC, now()).await.unwrap().used,
            20 * 6 + 10
        );
    }

    /// A cancel that arrives before its grant runs leaves the grant with
    /// nothing to give; one for a grant that ran gives all of it back.
    #[tokio::test]
    async fn a_cancel_comes_before_or_after_its_grant() {
        let redis = Redis::start();
        let book = book(&redis).await;
        assert!(matches!(book.cancel(7, "pop-a").await, Ok(Ok(0))));
        let lease = book
            .grant_as(&request("pop-a", 100), now(), 7)
            .await
            .unwrap();
        assert_eq!((lease.id, lease.granted), (EMPTY_LEASE, 0));
        let lease = book
            .grant_as(&request("pop-a", 100), now(), 8)
            .await
            .unwrap();
        assert_eq!(lease.granted, 100);
        assert_eq!(
            book.usage("basic", "k1", SPEC, now()).await.unwrap().used,
            100
        );
        // Another holder's cancel of it changes nothing.
        assert!(matches!(book.cancel(8, "pop-b").await, Ok(Ok(0))));
        assert_eq!(
            book.usage("basic", "k1", SPEC, now()).await.unwrap().used,
            100
        );
        let lease = book
            .grant_as(&request("pop-a", 100), now(), 9)
            .await
            .unwrap();
        assert!(matches!(book.cancel(9, "pop-a").await, Ok(Ok(100))));
        assert_eq!(
            book.usage("basic", "k1", SPEC, now()).await.unwrap().used,
            100
        );
        assert!(matches!(
            book.release(lease.id, 0, "pop-a").await,
            Err(QuotaError::UnknownLease(_))
        ));
        // Cancelled twice: the second finds nothing more.
        assert!(matches!(book.cancel(9, "pop-a").await, Ok(Ok(0))));
    }

    #[tokio::test]
    async fn a_read_only_server_is_waited_out_and_its_returns_kept() {
        let redis = Redis::start();
        let book = book(&redis).await;
        let lease = book.grant(&request("pop-a", 100), now()).await.unwrap();
        // A failover left this address on a replica (its master is nowhere).
        let () = redis.command(&["REPLICAOF", "127.0.0.1", "9"]);
        let err = book.release(lease.id, 60, "pop-a").await.unwrap_err();
        assert!(err.to_string().contains("ReadOnly"), "{err}");
        assert!(
            err.to_string()
                .ends_with("the return is kept and sent again"),
            "{err}"
        );
        assert_eq!(book.returns_waiting(), 1);
        let err = book.grant(&request("pop-a", 1), now()).await.unwrap_err();
        assert!(
            err.to_string().contains("unreachable a moment ago"),
            "{err}"
        );
        // Promoted again: the return goes out, and grants go on.
        let () = redis.command(&["REPLICAOF", "NO", "ONE"]);
        let deadline = Instant::now() + Duration::from_secs(30);
        while book.returns_waiting() > 0 {
            assert!(Instant::now() < deadline, "the return never went out");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(
            book.usage("basic", "k1", SPEC, now()).await.unwrap().used,
            40
        );
        assert_eq!(
            book.grant(&request("pop-a", 1), now())
                .await
                .unwrap()
                .granted,
            1
        );
    }

    #[tokio::test]
    async fn a_closing_node_sends_what_waits_or_says_what_it_could_not() {
        let redis = Redis::start();
        let book = book(&redis).await;
        let a = book.grant(&request("pop-a", 100), now()).await.unwrap();
        let b = book.grant(&request("pop-a", 100), now()).await.unwrap();
        redis.pause();
        assert!(book.release(a.id, 100, "pop-a").await.is_err());
        assert!(book.release(b.id, 100, "pop-a").await.is_err());
        // Still unreachable when the node closes: both are reported unsent.
        assert_eq!(book.flush(Duration::from_secs(1)).await, 2);
        // Reachable again while it closes: both go out.
        redis.resume();
        assert_eq!(book.flush(Duration::from_secs(30)).await, 0);
        assert_eq!(
            book.usage("basic", "k1", SPEC, now()).await.unwrap().used,
            0
        );
    }

    #[tokio::test]
    async fn an_unreachable_store_is_an_error_not_a_wait() {
        let dir = tempfile::TempDir::new().unwrap();
        let url = format!("redis+unix://{}", dir.path().join("none.sock").display());
        let book = RedisBook::connect(&url, "portico:").unwrap();
        let started = std::time::Instant::now();
        let err = book.grant(&request("pop-a", 1), now()).await.unwrap_err();
        assert!(matches!(err, QuotaError::Store(_)), "{err}");
        assert!(started.elapsed() < Duration::from_secs(30));
        assert_eq!(
            book.returns_waiting(),
            0,
            "a grant never sent has no cancel"
        );
        // What follows at once fails at once, without asking again: a node
        // handing back many leases waits for one time-out, not one each.
        let err = book.usage("basic", "k1", SPEC, now()).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "quota store: redis: unreachable a moment ago; trying again shortly"
        );
        let err = book.release(1, 1, "pop-a").await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "quota store: redis: unreachable a moment ago; the return is kept and sent again"
        );
        assert!(matches!(
            RedisBook::connect("http://example.test", "portico:"),
            Err(QuotaError::Store(_))
        ));
    }

    #[tokio::test]
    async fn origins_see_each_others_demand_while_it_is_fresh() {
        let redis = Redis::start();
        let (a, b) = (book(&redis).await, book(&redis).await);
        // Long enough that a loaded machine reads each entry before it
        // expires.
        let ttl = Duration::from_secs(2);
        let mine = |rate: f64| vec![("key:p/k".to_owned(), rate)];
        assert!(
            a.exchange_demand("origin-a", &mine(5.0), ttl)
                .await
                .unwrap()
                .is_empty()
        );
        let seen = b
            .exchange_demand("origin-b", &mine(3.0), ttl)
            .await
            .unwrap();
        assert_eq!(seen, [("origin-a".to_owned(), mine(5.0))]);
        let seen = a.exchange_demand("origin-a", &[], ttl).await.unwrap();
        assert_eq!(seen, [("origin-b".to_owned(), mine(3.0))]);
        // origin-a published nothing this time, and origin-b's expires.
        tokio::time::sleep(ttl * 2).await;
        assert!(
            b.exchange_demand("origin-b", &[], ttl)
                .await
                .unwrap()
                .is_empty()
        );
        assert!(
            a.exchange_demand("origin-a", &[], ttl)
                .await
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn passwords_stay_out_of_messages() {
        assert_eq!(
            redacted("redis://user:secret@10.0.0.5:6379/0"),
            "redis://…@10.0.0.5:6379/0"
        );
        assert_eq!(
            redacted("redis+unix:///run/r.sock?db=2&pass=secret"),
            "redis+unix:///run/r.sock?…"
        );
        assert_eq!(redacted("redis://u:p@h"), "redis://…@h");
        assert_eq!(
            redacted("redis+unix:///run/r.sock"),
            "redis+unix:///run/r.sock"
        );
    }
}
