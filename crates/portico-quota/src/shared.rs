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
//! * `holder:<node id>`: the ids of the leases a holder has open;
//! * `next_lease`: the last lease id granted.
//!
//! Lease ids count up from a random point, and every origin that opens the
//! book moves them on by a random jump, as [`QuotaBook::open`](crate::QuotaBook::open)
//! does and for the same reason (a store restored from an older copy must not
//! grant an id a PoP still holds). Lua keeps numbers as doubles, so ids stay
//! below 2^53.
//!
//! Durability is Redis's: run it with `appendonly yes` for counts that
//! survive a Redis restart. A single Redis (with or without replicas) is
//! supported, not Redis Cluster: a grant touches keys it names only as it
//! runs.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, Script};

use crate::QuotaError;
use crate::book::{EMPTY_LEASE, Lease, LeaseRequest, RETAIN_MS, Usage};
use crate::period::{QuotaSpec, bounds};

/// Where a new store's lease ids start, drawn below this.
const FIRST_ID_BELOW: u64 = 1 << 44;
/// How far each opening moves the ids on, drawn from this range.
const ID_JUMP: std::ops::Range<u64> = 1 << 28..1 << 29;
/// The largest count the scripts handle exactly (Lua's doubles).
const MAX_COUNT: u64 = 1 << 53;

/// How long one command may take before the book counts as unreachable (a
/// wallet then spends only what it holds).
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Grants up to ARGV[1] requests of a limit of ARGV[2] from the count in
/// KEYS[1] (expiring at ARGV[3]), as lease `ARGV[4]..id` (granted, holder
/// ARGV[5], expiry ARGV[6]; kept until ARGV[7]), listed in holder set ARGV[8]
/// (kept as long as its newest lease).
/// Returns {id, granted, used after}; id 0 when nothing was granted.
const GRANT: &str = r"
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
local granted = math.min(tonumber(ARGV[1]), tonumber(ARGV[2]) - used)
if granted <= 0 then
  return {0, 0, used}
end
redis.call('INCRBY', KEYS[1], granted)
redis.call('PEXPIREAT', KEYS[1], ARGV[3])
local id = redis.call('INCR', KEYS[2])
local lease = ARGV[4] .. id
redis.call('HSET', lease, 'u', KEYS[1], 'g', granted, 'h', ARGV[5], 'e', ARGV[6])
redis.call('PEXPIREAT', lease, ARGV[7])
redis.call('SADD', ARGV[8], id)
redis.call('PEXPIREAT', ARGV[8], ARGV[7])
return {id, granted, used + granted}
";

/// Ends lease KEYS[1] (id ARGV[3]) of holder ARGV[1], giving back ARGV[2]
/// unused requests to its count if that still exists; holder set ARGV[4].
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
redis.call('SREM', ARGV[4], ARGV[3])
if unused > 0 and redis.call('EXISTS', l[1]) == 1 then
  local used = tonumber(redis.call('GET', l[1]))
  redis.call('DECRBY', l[1], math.min(unused, used))
end
return {0, unused}
";

/// Starts the lease ids at ARGV[1] if none were granted yet, then moves them
/// on by ARGV[2].
const OPEN: &str = r"
redis.call('SET', KEYS[1], ARGV[1], 'NX')
return redis.call('INCRBY', KEYS[1], ARGV[2])
";

/// The book of a region's origins, in Redis.
#[derive(Clone)]
pub struct RedisBook {
    conn: ConnectionManager,
    prefix: String,
    grant: Script,
    release: Script,
}

impl std::fmt::Debug for RedisBook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBook")
            .field("prefix", &self.prefix)
            .finish()
    }
}

fn store(err: redis::RedisError) -> QuotaError {
    QuotaError::Store(format!("redis: {err}"))
}

/// `url` with its password, if any, left out (for messages and logs).
pub fn redacted(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((_, host)) => format!("{scheme}://…@{host}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

impl RedisBook {
    /// A book at `url` (`redis://[user:password@]host:port/db` or
    /// `redis+unix:///path/to/socket`) under `prefix`. Connects lazily, and
    /// again after every loss: a Redis that is down makes grants fail (the
    /// wallets spend what they hold), never the node's start. Must be called
    /// on a tokio runtime.
    pub fn connect(url: &str, prefix: &str) -> Result<Self, QuotaError> {
        let client = redis::Client::open(url)
            .map_err(|e| QuotaError::Store(format!("redis url `{}`: {e}", redacted(url))))?;
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_lazy_with_config(client, config).map_err(store)?;
        Ok(Self {
            conn,
            prefix: prefix.to_owned(),
            grant: Script::new(GRANT),
            release: Script::new(RELEASE),
        })
    }

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

    fn holder_key(&self, holder: &str) -> String {
        self.key(format_args!("holder:{holder}"))
    }

    /// Moves the lease ids on (see the module's notes); the first opening of
    /// a store also draws where they start.
    pub async fn open(&self) -> Result<(), QuotaError> {
        let start = rand::random_range(1..FIRST_ID_BELOW);
        let jump = rand::random_range(ID_JUMP);
        let next: u64 = Script::new(OPEN)
            .key(self.key(format_args!("next_lease")))
            .arg(start)
            .arg(jump)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(store)?;
        if next >= MAX_COUNT {
            return Err(QuotaError::Store(format!(
                "redis: lease ids have reached {next}; delete `{}next_lease` and the `lease:` keys \
                 once no PoP holds a lease",
                self.prefix
            )));
        }
        Ok(())
    }

    /// Grants up to `req.want` requests, counted as used before returning.
    pub async fn grant(&self, req: &LeaseRequest<'_>, now_ms: i64) -> Result<Lease, QuotaError> {
        let (start, end) = bounds(req.spec.period, req.spec.offset, now_ms);
        let expires_ms = (now_ms + req.ttl_ms.max(1)).min(end);
        let keep_until = expires_ms.saturating_add(RETAIN_MS);
        let (id, granted, used): (u64, u64, u64) = self
            .grant
            .key(self.usage_key(req.plan, req.key_id, start))
            .key(self.key(format_args!("next_lease")))
            .arg(req.want.min(MAX_COUNT))
            .arg(req.spec.limit.min(MAX_COUNT))
            .arg(start.saturating_add(RETAIN_MS))
            .arg(self.key(format_args!("lease:")))
            .arg(req.holder)
            .arg(expires_ms)
            .arg(keep_until)
            .arg(self.holder_key(req.holder))
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(store)?;
        let limit = req.spec.limit.min(MAX_COUNT);
        Ok(Lease {
            id: if granted == 0 { EMPTY_LEASE } else { id },
            granted,
            expires_ms,
            period_end_ms: end,
            exhausted: used >= limit,
        })
    }

    /// Ends a lease, giving back `unused` requests if its period is still
    /// counted; refused (changing nothing) for an unknown lease, another
    /// holder's, or more than it granted.
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
        if lease_id >= MAX_COUNT {
            return Err(QuotaError::UnknownLease(lease_id));
        }
        let answer: Vec<redis::Value> = self
            .release
            .key(self.lease_key(lease_id))
            .arg(holder)
            .arg(unused.min(MAX_COUNT))
            .arg(lease_id)
            .arg(self.holder_key(holder))
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(store)?;
        let int = |i: usize| match answer.get(i) {
            Some(redis::Value::Int(n)) => u64::try_from(*n).unwrap_or(0),
            _ => 0,
        };
        match answer.first() {
            Some(redis::Value::Int(0)) => Ok(int(1)),
            Some(redis::Value::Int(-1)) => Err(QuotaError::UnknownLease(lease_id)),
            Some(redis::Value::Int(-2)) => Err(QuotaError::NotHolder {
                lease: lease_id,
                holder: holder.to_owned(),
            }),
            Some(redis::Value::Int(-3)) => Err(QuotaError::ReturnTooLarge {
                lease: lease_id,
                unused,
                granted: int(1),
            }),
            other => Err(QuotaError::Store(format!(
                "redis: unexpected answer to a return: {other:?}"
            ))),
        }
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
        let used: Option<u64> = self
            .conn
            .clone()
            .get(self.usage_key(plan, key_id, start))
            .await
            .map_err(store)?;
        let used = used.unwrap_or(0);
        Ok(Usage {
            used,
            remaining: spec.limit.saturating_sub(used),
            period_start_ms: start,
            period_end_ms: end,
        })
    }

    /// Leases a holder still has open: (id, granted, expiry).
    pub async fn leases_of(&self, holder: &str) -> Result<Vec<(u64, u64, i64)>, QuotaError> {
        let mut conn = self.conn.clone();
        let ids: Vec<u64> = conn
            .smembers(self.holder_key(holder))
            .await
            .map_err(store)?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let (granted, expires): (Option<u64>, Option<i64>) = redis::cmd("HMGET")
                .arg(self.lease_key(id))
                .arg("g")
                .arg("e")
                .query_async(&mut conn)
                .await
                .map_err(store)?;
            match (granted, expires) {
                (Some(granted), Some(expires)) => out.push((id, granted, expires)),
                // Expired and forgotten: nothing left to end.
                _ => {
                    let _: () = conn
                        .srem(self.holder_key(holder), id)
                        .await
                        .map_err(store)?;
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;

    use super::*;
    use crate::period::Period;
    use crate::testing::Redis;

    const SPEC: QuotaSpec = QuotaSpec {
        limit: 1_000,
        period: Period::Day,
        offset: 0,
    };

    fn now() -> i64 {
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap();
        i64::try_from(since.as_millis()).unwrap()
    }

    fn request<'a>(holder: &'a str, want: u64) -> LeaseRequest<'a> {
        LeaseRequest {
            plan: "basic",
            key_id: "k1",
            spec: SPEC,
            want,
            holder,
            ttl_ms: 60_000,
        }
    }

    async fn book(redis: &Redis) -> RedisBook {
        let book = RedisBook::connect(&redis.url, "portico:").unwrap();
        book.open().await.unwrap();
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

    #[tokio::test]
    async fn a_lease_goes_back_through_any_origin_and_only_from_its_holder() {
        let redis = Redis::start();
        let (a, b) = (book(&redis).await, book(&redis).await);
        let lease = a.grant(&request("pop-a", 600), now()).await.unwrap();
        assert_eq!((lease.granted, lease.exhausted), (600, false));
        assert_eq!(
            b.leases_of("pop-a").await.unwrap(),
            [(lease.id, 600, lease.expires_ms)]
        );
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
        assert!(a.leases_of("pop-a").await.unwrap().is_empty());
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
    async fn every_opening_moves_the_lease_ids_on() {
        let redis = Redis::start();
        let book = book(&redis).await;
        let first = book.grant(&request("pop-a", 1), now()).await.unwrap();
        assert!(first.id < FIRST_ID_BELOW + ID_JUMP.end);
        book.open().await.unwrap();
        let second = book.grant(&request("pop-a", 1), now()).await.unwrap();
        assert!(second.id > first.id + ID_JUMP.start, "{first:?} {second:?}");
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
        assert!(matches!(
            RedisBook::connect("http://example.test", "portico:"),
            Err(QuotaError::Store(_))
        ));
    }

    #[test]
    fn passwords_stay_out_of_messages() {
        assert_eq!(
            redacted("redis://user:secret@10.0.0.5:6379/0"),
            "redis://…@10.0.0.5:6379/0"
        );
        assert_eq!(
            redacted("redis+unix:///run/r.sock"),
            "redis+unix:///run/r.sock"
        );
    }
}
