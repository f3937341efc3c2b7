//! The origin's authoritative quota book: counters per (plan, key, period)
//! and the leases PoPs spend from, persisted in redb.
//!
//! The invariant that gives "never more accepted than the quota": a lease's
//! requests are counted as used *when the lease is granted*, durably, before
//! the grant is answered. A PoP may only accept requests it holds a lease for.
//! Returning unspent requests only ever lowers the counter, so whatever
//! happens to a PoP or to the link, accepted ≤ granted ≤ limit. What a PoP
//! never returns (it vanished) stays counted: the cost of the guarantee is
//! requests stranded in leases, never overshoot.

use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::QuotaError;
use crate::period::{QuotaSpec, bounds};

/// used, keyed by "plan\0key\0period_start".
const USAGE: TableDefinition<&str, u64> = TableDefinition::new("usage");
/// lease id → (plan, key, period_start, granted, expires_ms, holder).
const LEASES: TableDefinition<u64, (&str, &str, i64, u64, i64, &str)> =
    TableDefinition::new("leases");
/// "next_lease" → next lease id.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// The id of a lease that granted nothing: the book answers it without
/// writing, and its return ends nothing. Real ids count up from where
/// [`QuotaBook::open`] puts them, far below this.
pub const EMPTY_LEASE: u64 = u64::MAX;

/// A new book's first lease id is drawn below this.
const FIRST_ID_BELOW: u64 = 1 << 62;
/// How far each opening moves the next lease id on, drawn from this range.
const ID_JUMP: std::ops::Range<u64> = 1 << 32..1 << 33;

/// How long counts and leases are kept after their period began (usage) or
/// they expired (leases): two of the longest period (a month), so that the
/// current and the previous period of every plan are always there, also for
/// a clock corrected backwards across a boundary.
pub const RETAIN_MS: i64 = 64 * 86_400_000;

/// How far past the start of the newest period it counts for the book
/// believes a clock when it prunes (see [`QuotaBook::prune`]): a day, as
/// the book prunes daily.
const PRUNE_AHEAD_MS: i64 = 86_400_000;

/// What a holder asks for.
#[derive(Debug, Clone)]
pub struct LeaseRequest<'a> {
    pub plan: &'a str,
    pub key_id: &'a str,
    pub spec: QuotaSpec,
    pub want: u64,
    /// Who holds the lease (a PoP's node id), for reconciliation and usage reports.
    pub holder: &'a str,
    /// How long the lease is valid at most (it also ends with the period).
    pub ttl_ms: i64,
}

/// A block of requests deducted from a key's quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub id: u64,
    /// May be less than asked (0 when the quota is spent).
    pub granted: u64,
    pub expires_ms: i64,
    pub period_end_ms: i64,
    /// Nothing is left in this period after this grant.
    pub exhausted: bool,
}

/// A key's standing in its current period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// Counted as used: spent plus still held in leases.
    pub used: u64,
    pub remaining: u64,
    pub period_start_ms: i64,
    pub period_end_ms: i64,
}

impl Usage {
    /// `used` of a quota of `limit` in the period `(start, end)`.
    pub(crate) fn counted(used: u64, limit: u64, (start, end): (i64, i64)) -> Usage {
        Usage {
            used,
            remaining: limit.saturating_sub(used),
            period_start_ms: start,
            period_end_ms: end,
        }
    }
}

/// The quota book of one origin.
pub struct QuotaBook {
    db: Database,
}

impl std::fmt::Debug for QuotaBook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("QuotaBook")
    }
}

fn usage_key(plan: &str, key_id: &str, period_start: i64) -> String {
    format!("{plan}\0{key_id}\0{period_start}")
}

/// The period start of a usage key; `None` for a key this code did not write.
fn period_start(usage_key: &str) -> Option<i64> {
    usage_key.rsplit('\0').next()?.parse().ok()
}

/// What [`QuotaBook::prune`] removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    pub usage: usize,
    pub leases: usize,
}

impl QuotaBook {
    /// Opens (or creates) the book at `path`.
    ///
    /// PoPs hold lease ids across an origin's restarts and return them
    /// later, so an id must never name another lease than the one it was
    /// granted as, even when the file is deleted (the book starts again)
    /// or restored from a copy (ids granted after the copy would be granted
    /// again). A new book starts its ids at a random point below 2^62, and
    /// every opening moves the next id on by a random 2^32..2^33: a return
    /// from another book, or from before a restore, finds no lease and is
    /// refused, instead of crediting another key held by the same PoP.
    pub fn open(path: &Path) -> Result<Self, QuotaError> {
        let db = Database::create(path).map_err(QuotaError::store)?;
        let txn = db.begin_write().map_err(QuotaError::store)?;
        {
            txn.open_table(USAGE).map_err(QuotaError::store)?;
            txn.open_table(LEASES).map_err(QuotaError::store)?;
            let mut meta = txn.open_table(META).map_err(QuotaError::store)?;
            let next = meta
                .get("next_lease")
                .map_err(QuotaError::store)?
                .map(|v| v.value());
            let next = match next {
                None => rand::random_range(1..FIRST_ID_BELOW),
                Some(n) => n.saturating_add(rand::random_range(ID_JUMP)),
            };
            meta.insert("next_lease", next.min(EMPTY_LEASE - 1))
                .map_err(QuotaError::store)?;
        }
        txn.commit().map_err(QuotaError::store)?;
        Ok(Self { db })
    }

    /// Grants up to `want` requests, counted as used durably before returning.
    pub fn grant(&self, req: &LeaseRequest<'_>, now_ms: i64) -> Result<Lease, QuotaError> {
        let (start, end) = bounds(req.spec.period, req.spec.offset, now_ms);
        let ukey = usage_key(req.plan, req.key_id, start);
        let txn = self.db.begin_write().map_err(QuotaError::store)?;
        let lease = {
            let mut usage = txn.open_table(USAGE).map_err(QuotaError::store)?;
            let used = usage
                .get(ukey.as_str())
                .map_err(QuotaError::store)?
                .map_or(0, |v| v.value());
            let granted = req.want.min(req.spec.limit.saturating_sub(used));
            if granted == 0 {
                // Nothing to grant (the key is spent, or nothing was
                // asked): an answer, no write. Spent keys are asked about
                // every second per PoP, and each write is a commit to disk.
                drop(usage);
                txn.abort().map_err(QuotaError::store)?;
                return Ok(Lease {
                    id: EMPTY_LEASE,
                    granted: 0,
                    expires_ms: (now_ms + req.ttl_ms.max(1)).min(end),
                    period_end_ms: end,
                    exhausted: used >= req.spec.limit,
                });
            }
            usage
                .insert(ukey.as_str(), used + granted)
                .map_err(QuotaError::store)?;
            let mut meta = txn.open_table(META).map_err(QuotaError::store)?;
            let id = meta
                .get("next_lease")
                .map_err(QuotaError::store)?
                .map_or(1, |v| v.value());
            // EMPTY_LEASE names an empty answer and 0 a refusal on the wire:
            // neither is granted, and the ids end below EMPTY_LEASE (the
            // write is dropped). Reached only from a next id this code did
            // not count to (a corrupt or foreign file: opening moves ids on
            // by at most 2^33 from below 2^62), as the Redis book refuses
            // past its own bound.
            if id == 0 || id == EMPTY_LEASE {
                return Err(QuotaError::Store("lease ids are used up".into()));
            }
            meta.insert("next_lease", id + 1)
                .map_err(QuotaError::store)?;
            let expires_ms = (now_ms + req.ttl_ms.max(1)).min(end);
            let mut leases = txn.open_table(LEASES).map_err(QuotaError::store)?;
            leases
                .insert(
                    id,
                    (req.plan, req.key_id, start, granted, expires_ms, req.holder),
                )
                .map_err(QuotaError::store)?;
            let exhausted = used + granted >= req.spec.limit;
            Lease {
                id,
                granted,
                expires_ms,
                period_end_ms: end,
                exhausted,
            }
        };
        txn.commit().map_err(QuotaError::store)?;
        Ok(lease)
    }

    /// Ends a lease, giving back `unused` requests if its period is still
    /// counting. A holder may call this after the lease expired (reconciling
    /// after a reconnect); an unknown lease or `unused` above what was granted
    /// is refused and changes nothing.
    pub fn release(&self, lease_id: u64, unused: u64, holder: &str) -> Result<u64, QuotaError> {
        if lease_id == EMPTY_LEASE {
            // Granted nothing and never written: nothing to end.
            return match unused {
                0 => Ok(0),
                _ => Err(QuotaError::UnknownLease(lease_id)),
            };
        }
        let txn = self.db.begin_write().map_err(QuotaError::store)?;
        let returned = {
            let mut leases = txn.open_table(LEASES).map_err(QuotaError::store)?;
            let (plan, key_id, start, granted, owner) =
                match leases.get(lease_id).map_err(QuotaError::store)? {
                    Some(v) => {
                        let (plan, key, start, granted, _, owner) = v.value();
                        (
                            plan.to_owned(),
                            key.to_owned(),
                            start,
                            granted,
                            owner.to_owned(),
                        )
                    }
                    None => return Err(QuotaError::UnknownLease(lease_id)),
                };
            if owner != holder {
                return Err(QuotaError::NotHolder {
                    lease: lease_id,
                    holder: holder.to_owned(),
                });
            }
            if unused > granted {
                return Err(QuotaError::ReturnTooLarge {
                    lease: lease_id,
                    unused,
                    granted,
                });
            }
            leases.remove(lease_id).map_err(QuotaError::store)?;
            let mut usage = txn.open_table(USAGE).map_err(QuotaError::store)?;
            let ukey = usage_key(&plan, &key_id, start);
            let used = usage
                .get(ukey.as_str())
                .map_err(QuotaError::store)?
                .map_or(0, |v| v.value());
            usage
                .insert(ukey.as_str(), used.saturating_sub(unused))
                .map_err(QuotaError::store)?;
            unused
        };
        txn.commit().map_err(QuotaError::store)?;
        Ok(returned)
    }

    /// The key's usage in the period containing `now_ms`.
    pub fn usage(
        &self,
        plan: &str,
        key_id: &str,
        spec: QuotaSpec,
        now_ms: i64,
    ) -> Result<Usage, QuotaError> {
        let (start, end) = bounds(spec.period, spec.offset, now_ms);
        let txn = self.db.begin_read().map_err(QuotaError::store)?;
        let table = txn.open_table(USAGE).map_err(QuotaError::store)?;
        let used = table
            .get(usage_key(plan, key_id, start).as_str())
            .map_err(QuotaError::store)?
            .map_or(0, |v| v.value());
        Ok(Usage::counted(used, spec.limit, (start, end)))
    }

    /// Forgets what no request can touch any more: the counts of periods
    /// that began more than [`RETAIN_MS`] before `now_ms`, and leases that
    /// expired that long ago (a PoP that vanished never returns its own).
    /// Without it the book grows by a row per key and period for ever.
    ///
    /// `now_ms` counts only up to a day past the newest period the book
    /// holds a count for ([`PRUNE_AHEAD_MS`]): a clock far ahead (one not
    /// yet set at boot, when the book prunes at open) would otherwise
    /// delete the current periods' counts, and once it is set right every
    /// key had its whole quota again. The book cannot tell such a clock from
    /// one that is right after a long stop: then the old counts stay until
    /// the first prune after grants at the new time.
    pub fn prune(&self, now_ms: i64) -> Result<Pruned, QuotaError> {
        let now_ms = match self.newest_period()? {
            Some(newest) => now_ms.min(newest.saturating_add(PRUNE_AHEAD_MS)),
            None => now_ms,
        };
        let horizon = now_ms.saturating_sub(RETAIN_MS);
        let txn = self.db.begin_write().map_err(QuotaError::store)?;
        let mut pruned = Pruned::default();
        {
            let mut usage = txn.open_table(USAGE).map_err(QuotaError::store)?;
            usage
                .retain(|key, _| {
                    let keep = period_start(key).is_none_or(|start| start >= horizon);
                    pruned.usage += usize::from(!keep);
                    keep
                })
                .map_err(QuotaError::store)?;
            let mut leases = txn.open_table(LEASES).map_err(QuotaError::store)?;
            leases
                .retain(|_, (_, _, _, _, expires, _)| {
                    let keep = expires >= horizon;
                    pruned.leases += usize::from(!keep);
                    keep
                })
                .map_err(QuotaError::store)?;
        }
        txn.commit().map_err(QuotaError::store)?;
        Ok(pruned)
    }

    /// The start of the newest period the book counts for.
    fn newest_period(&self) -> Result<Option<i64>, QuotaError> {
        let txn = self.db.begin_read().map_err(QuotaError::store)?;
        let table = txn.open_table(USAGE).map_err(QuotaError::store)?;
        let mut newest = None;
        for row in table.iter().map_err(QuotaError::store)? {
            let (key, _) = row.map_err(QuotaError::store)?;
            newest = newest.max(period_start(key.value()));
        }
        Ok(newest)
    }

    /// Leases a holder still has open (to reconcile after a reconnect).
    pub fn leases_of(&self, holder: &str) -> Result<Vec<(u64, u64, i64)>, QuotaError> {
        let txn = self.db.begin_read().map_err(QuotaError::store)?;
        let table = txn.open_table(LEASES).map_err(QuotaError::store)?;
        let mut out = Vec::new();
        for row in table.iter().map_err(QuotaError::store)? {
            let (id, value) = row.map_err(QuotaError::store)?;
            let (_, _, _, granted, expires, owner) = value.value();
            if owner == holder {
                out.push((id.value(), granted, expires));
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::period::Period;
    use crate::wallet::{Spend, Wallet};

    /// 1 000 a day (the books' tests share it).
    pub(crate) const SPEC: QuotaSpec = QuotaSpec {
        limit: 1_000,
        period: Period::Day,
        offset: 0,
    };
    const NOW: i64 = 1_795_000_000_000;

    /// `want` of key `k1` of plan `basic` for `holder`.
    pub(crate) fn request<'a>(holder: &'a str, want: u64) -> LeaseRequest<'a> {
        LeaseRequest {
            plan: "basic",
            key_id: "k1",
            spec: SPEC,
            want,
            holder,
            ttl_ms: 60_000,
        }
    }

    #[test]
    fn a_lease_from_before_a_restore_or_from_another_book_names_no_lease() {
        let (dir, book) = book();
        let path = dir.path().join("quota.redb");
        let copy = dir.path().join("copy.redb");
        book.grant(&request("pop-a", 10), NOW).unwrap();
        drop(book);
        std::fs::copy(&path, &copy).unwrap();
        let book = QuotaBook::open(&path).unwrap();
        let lost = book.grant(&request("pop-a", 10), NOW).unwrap();
        drop(book);
        // The file is restored from the copy: `lost` was never granted here.
        std::fs::copy(&copy, &path).unwrap();
        let book = QuotaBook::open(&path).unwrap();
        let other_key = LeaseRequest {
            key_id: "k2",
            ..request("pop-a", 10)
        };
        let granted = book.grant(&other_key, NOW).unwrap();
        assert_ne!(granted.id, lost.id);
        assert!(matches!(
            book.release(lost.id, 10, "pop-a"),
            Err(QuotaError::UnknownLease(_))
        ));
        assert_eq!(book.usage("basic", "k2", SPEC, NOW).unwrap().used, 10);
        // A book made again from nothing does not know it either.
        let (_other_dir, other) = super::tests::book();
        assert!(matches!(
            other.release(lost.id, 10, "pop-a"),
            Err(QuotaError::UnknownLease(_))
        ));
    }

    fn book() -> (tempfile::TempDir, QuotaBook) {
        let dir = tempfile::TempDir::new().unwrap();
        let book = QuotaBook::open(&dir.path().join("quota.redb")).unwrap();
        (dir, book)
    }

    /// A next id at the end of the range (a corrupt or foreign file) grants
    /// its last id and then refuses: never EMPTY_LEASE, never 0, no wrap.
    #[test]
    fn lease_ids_end_below_the_empty_lease() {
        let dir = tempfile::TempDir::new().unwrap();
        let path = dir.path().join("quota.redb");
        drop(QuotaBook::open(&path).unwrap());
        {
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(META)
                .unwrap()
                .insert("next_lease", u64::MAX - 1)
                .unwrap();
            txn.commit().unwrap();
        }
        let book = QuotaBook::open(&path).unwrap();
        let last = book.grant(&request("pop-a", 10), NOW).unwrap();
        assert_eq!((last.id, last.granted), (EMPTY_LEASE - 1, 10));
        let err = book.grant(&request("pop-a", 10), NOW).unwrap_err();
        assert_eq!(err.to_string(), "quota store: lease ids are used up");
        // Refused whole: nothing more is counted.
        assert_eq!(book.usage("basic", "k1", SPEC, NOW).unwrap().used, 10);
        assert!(book.grant(&request("pop-a", 10), NOW).is_err());
    }

    #[test]
    fn grants_never_exceed_the_limit() {
        let (_dir, book) = book();
        let a = book.grant(&request("pop-a", 600), NOW).unwrap();
        let b = book.grant(&request("pop-b", 600), NOW).unwrap();
        assert_eq!((a.granted, a.exhausted), (600, false));
        assert_eq!((b.granted, b.exhausted), (400, true));
        assert_eq!(book.grant(&request("pop-c", 1), NOW).unwrap().granted, 0);
        assert_eq!(book.usage("basic", "k1", SPEC, NOW).unwrap().remaining, 0);
    }

    #[test]
    fn a_spent_key_is_answered_without_a_write() {
        let (_dir, book) = book();
        let a = book.grant(&request("pop-a", 1_000), NOW).unwrap();
        for _ in 0..3 {
            let empty = book.grant(&request("pop-b", 10), NOW).unwrap();
            assert_eq!(
                (empty.id, empty.granted, empty.exhausted),
                (EMPTY_LEASE, 0, true)
            );
            assert_eq!(book.release(empty.id, 0, "pop-b").unwrap(), 0);
        }
        assert!(book.release(EMPTY_LEASE, 1, "pop-b").is_err());
        // No lease row for the empty answers, and the next real lease is
        // numbered on from the last.
        assert!(book.leases_of("pop-b").unwrap().is_empty());
        assert_eq!(book.release(a.id, 10, "pop-a").unwrap(), 10);
        let b = book.grant(&request("pop-b", 10), NOW).unwrap();
        assert_eq!((b.id, b.granted), (a.id + 1, 10));
    }

    #[test]
    fn returned_requests_can_be_granted_again() {
        let (_dir, book) = book();
        let a = book.grant(&request("pop-a", 1_000), NOW).unwrap();
        assert_eq!(book.release(a.id, 250, "pop-a").unwrap(), 250);
        assert_eq!(book.usage("basic", "k1", SPEC, NOW).unwrap().used, 750);
        assert_eq!(
            book.grant(&request("pop-b", 500), NOW).unwrap().granted,
            250
        );
    }

    #[test]
    fn bad_returns_change_nothing() {
        let (_dir, book) = book();
        let a = book.grant(&request("pop-a", 100), NOW).unwrap();
        assert_eq!(
            book.release(999, 1, "pop-a").unwrap_err().to_string(),
            "unknown lease 999"
        );
        assert_eq!(
            book.release(a.id, 101, "pop-a").unwrap_err().to_string(),
            format!("lease {}: cannot return 101 of 100 granted", a.id)
        );
        assert_eq!(
            book.release(a.id, 1, "pop-b").unwrap_err().to_string(),
            format!("lease {} is not held by pop-b", a.id)
        );
        assert_eq!(book.usage("basic", "k1", SPEC, NOW).unwrap().used, 100);
        assert_eq!(book.release(a.id, 100, "pop-a").unwrap(), 100);
        assert!(
            book.release(a.id, 0, "pop-a").is_err(),
            "a lease is released once"
        );
    }

    #[test]
    fn a_clock_that_jumps_never_resets_a_period_or_moves_its_counts() {
        let (_dir, book) = book();
        let today = book.grant(&request("pop-a", 1_000), NOW).unwrap();
        assert!(today.exhausted);
        // Forward a day: a new period with its own quota.
        let tomorrow = NOW + 86_400_000;
        let next = book.grant(&request("pop-a", 100), tomorrow).unwrap();
        assert_eq!(next.granted, 100);
        // Back again (a corrected clock): yesterday's count is still there.
        assert_eq!(book.grant(&request("pop-b", 1), NOW).unwrap().granted, 0);
        // A lease returned after the jump credits the period it came from.
        book.release(today.id, 400, "pop-a").unwrap();
        assert_eq!(book.usage("basic", "k1", SPEC, NOW).unwrap().used, 600);
        assert_eq!(book.usage("basic", "k1", SPEC, tomorrow).unwrap().used, 100);
    }

    #[test]
    fn counts_and_leases_long_past_are_pruned_and_the_rest_kept() {
        let (_dir, book) = book();
        let old = book.grant(&request("gone", 300), NOW).unwrap();
        let later = NOW + RETAIN_MS + 86_400_000;
        let yesterday = book
            .grant(&request("pop-a", 200), later - 86_400_000)
            .unwrap();
        book.grant(&request("pop-a", 100), later).unwrap();
        let pruned = book.prune(later).unwrap();
        assert_eq!(
            pruned,
            Pruned {
                usage: 1,
                leases: 1
            }
        );
        assert_eq!(book.usage("basic", "k1", SPEC, NOW).unwrap().used, 0);
        assert!(
            book.release(old.id, 0, "gone").is_err(),
            "its lease is gone"
        );
        assert_eq!(
            book.usage("basic", "k1", SPEC, later - 86_400_000)
                .unwrap()
                .used,
            200,
            "the previous period stays"
        );
        assert_eq!(book.usage("basic", "k1", SPEC, later).unwrap().used, 100);
        assert_eq!(book.release(yesterday.id, 50, "pop-a").unwrap(), 50);
        assert_eq!(book.leases_of("pop-a").unwrap().len(), 1);
        assert_eq!(book.prune(later).unwrap(), Pruned::default());
    }

    /// A clock 70 days ahead when the book prunes (at open, before the
    /// clock is set right) deletes no count or lease of the periods the
    /// book last granted from; grants at the new time, if it was right,
    /// let the next prune go on.
    #[test]
    fn a_clock_far_ahead_prunes_nothing_current() {
        let (_dir, book) = book();
        let lease = book.grant(&request("pop-a", 300), NOW).unwrap();
        let ahead = NOW + 70 * 86_400_000;
        assert_eq!(book.prune(ahead).unwrap(), Pruned::default());
        assert_eq!(book.usage("basic", "k1", SPEC, NOW).unwrap().used, 300);
        assert_eq!(
            book.grant(&request("pop-b", 1_000), NOW).unwrap().granted,
            700
        );
        assert_eq!(book.release(lease.id, 100, "pop-a").unwrap(), 100);
        // The clock was right (a long stop): the book grants at its time,
        // and the next prune forgets the old period.
        book.grant(&request("pop-a", 10), ahead).unwrap();
        let pruned = book.prune(ahead).unwrap();
        assert_eq!(
            pruned,
            Pruned {
                usage: 1,
                leases: 1
            }
        );
        assert_eq!(book.usage("basic", "k1", SPEC, NOW).unwrap().used, 0);
        assert_eq!(book.usage("basic", "k1", SPEC, ahead).unwrap().used, 10);
    }

    #[test]
    fn counts_survive_a_reopen_and_periods_roll_over() {
        let dir = tempfile::TempDir::new().unwrap();
        let path = dir.path().join("quota.redb");
        {
            let book = QuotaBook::open(&path).unwrap();
            book.grant(&request("pop-a", 300), NOW).unwrap();
        }
        let book = QuotaBook::open(&path).unwrap();
        assert_eq!(book.usage("basic", "k1", SPEC, NOW).unwrap().used, 300);
        assert_eq!(book.leases_of("pop-a").unwrap().len(), 1);
        let tomorrow = NOW + 86_400_000;
        assert_eq!(book.usage("basic", "k1", SPEC, tomorrow).unwrap().used, 0);
        assert_eq!(
            book.grant(&request("pop-a", 1_000), tomorrow)
                .unwrap()
                .granted,
            1_000
        );
    }

    #[test]
    fn three_holders_hammering_one_key_accept_at_most_the_quota() {
        let (_dir, book) = book();
        let mut wallets: Vec<(String, Wallet)> = (0..3)
            .map(|i| (format!("pop-{i}"), Wallet::new(NOW)))
            .collect();
        let mut accepted = 0u64;
        for step in 0..5_000i64 {
            let now = NOW + step;
            for (holder, wallet) in &mut wallets {
                if wallet.wants_refill(now) {
                    let back = wallet.begin_refill();
                    if let Some((id, unused)) = back {
                        book.release(id, unused, holder).unwrap();
                    }
                    let want = wallet.next_size(&crate::wallet::Sizing::default()).max(10);
                    let lease = book.grant(&request(holder, want), now).unwrap();
                    wallet.install_at(
                        lease.id,
                        lease.granted,
                        lease.expires_ms,
                        lease.exhausted,
                        now,
                    );
                }
                if wallet.spend(now) == Spend::Accepted {
                    accepted += 1;
                }
            }
        }
        let stranded: u64 = wallets
            .iter()
            .filter_map(|(_, w)| w.in_hand())
            .map(|(_, left)| left)
            .sum();
        assert!(accepted <= SPEC.limit, "accepted {accepted}");
        assert_eq!(
            accepted + stranded,
            SPEC.limit,
            "every granted request is spent or still in hand"
        );
    }
}
