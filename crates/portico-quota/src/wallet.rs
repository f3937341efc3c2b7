//! A lease holder's side (a PoP, or the origin for its own listeners), sans-IO.
//!
//! The wallet spends from its current lease and says when to ask for the next
//! one: at half spent, so in the steady state the next lease arrives before the
//! current one runs out and no request waits on a round trip. Lease sizes
//! follow recent demand: enough for `horizon` at the rate seen over the last
//! window, at least 1, at most `max_lease`.

/// How long an exhausted key waits before asking the origin again.
pub const EXHAUSTED_RECHECK_MS: i64 = 1_000;

/// The outcome of spending one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spend {
    /// Accepted from the lease.
    Accepted,
    /// Nothing left in hand; the period's quota is spent (the origin said so).
    Exhausted,
    /// Nothing left in hand; a new lease is needed (or the origin is unreachable).
    Empty,
}

/// One key's lease in a holder's hands.
#[derive(Debug, Clone)]
pub struct Wallet {
    lease_id: Option<u64>,
    left: u64,
    granted: u64,
    expires_ms: i64,
    exhausted: bool,
    /// When the origin last said the quota was spent.
    exhausted_at_ms: i64,
    requested: bool,
    /// A surrendered lease is on its way back: no refill until it is.
    returning: bool,
    window_start_ms: i64,
    window_count: u64,
    rate_per_s: f64,
}

/// How demand becomes lease sizes.
#[derive(Debug, Clone, Copy)]
pub struct Sizing {
    /// Seconds of demand a lease should cover.
    pub horizon_s: f64,
    pub max_lease: u64,
    /// Length of the demand-measuring window.
    pub window_ms: i64,
}

impl Default for Sizing {
    fn default() -> Self {
        Self {
            horizon_s: 2.0,
            max_lease: 10_000,
            window_ms: 1_000,
        }
    }
}

impl Wallet {
    pub fn new(now_ms: i64) -> Self {
        Self {
            lease_id: None,
            left: 0,
            granted: 0,
            expires_ms: 0,
            exhausted: false,
            exhausted_at_ms: 0,
            requested: false,
            returning: false,
            window_start_ms: now_ms,
            window_count: 0,
            rate_per_s: 0.0,
        }
    }

    /// Spends one request if the lease in hand allows it.
    pub fn spend(&mut self, now_ms: i64) -> Spend {
        self.observe(now_ms);
        if self.holds_unspent(now_ms) {
            self.left -= 1;
            return Spend::Accepted;
        }
        if self.exhausted {
            Spend::Exhausted
        } else {
            Spend::Empty
        }
    }

    /// Whether to ask the origin for the next lease now (at most one request
    /// in flight). An exhausted key asks again at most every
    /// [`EXHAUSTED_RECHECK_MS`]: other holders may have returned what they did
    /// not spend.
    pub fn wants_refill(&self, now_ms: i64) -> bool {
        let low = self.left <= self.granted / 2 || now_ms >= self.expires_ms;
        let recheck = !self.exhausted || now_ms - self.exhausted_at_ms >= EXHAUSTED_RECHECK_MS;
        !self.requested && !self.returning && recheck && low
    }

    /// The size to ask for, from recent demand.
    pub fn next_size(&self, sizing: &Sizing) -> u64 {
        let want = (self.rate_per_s * sizing.horizon_s).ceil() as u64;
        want.clamp(1, sizing.max_lease)
    }

    /// Marks a refill request as sent; returns the lease to give back with it.
    pub fn begin_refill(&mut self) -> Option<(u64, u64)> {
        self.requested = true;
        self.lease_id.map(|id| (id, self.left))
    }

    /// Installs a new lease; what was left of the old one was returned with the request.
    pub fn install(&mut self, lease_id: u64, granted: u64, expires_ms: i64, exhausted: bool) {
        self.install_at(lease_id, granted, expires_ms, exhausted, 0);
    }

    /// [`Wallet::install`] at `now_ms` (when an exhausted answer was received).
    pub fn install_at(
        &mut self,
        lease_id: u64,
        granted: u64,
        expires_ms: i64,
        exhausted: bool,
        now_ms: i64,
    ) {
        self.exhausted_at_ms = now_ms;
        self.lease_id = Some(lease_id);
        self.left = granted;
        self.granted = granted;
        self.expires_ms = expires_ms;
        self.exhausted = exhausted && granted == 0;
        self.requested = false;
    }

    /// The refill failed (origin unreachable): keep spending only what is in hand.
    /// Whether a refill is in flight.
    pub fn refilling(&self) -> bool {
        self.requested
    }

    pub fn refill_failed(&mut self) {
        self.requested = false;
    }

    /// Whether the lease in hand still has requests to spend at `now_ms`.
    pub fn holds_unspent(&self, now_ms: i64) -> bool {
        self.left > 0 && now_ms < self.expires_ms
    }

    /// The refill came back empty, the period's quota all granted, while
    /// requests of the lease in hand are still unspent: they stay in hand
    /// and are spent, and the key answers [`Spend::Exhausted`] once they are
    /// gone. Handing them back instead would refuse this holder's clients
    /// while the book holds requests nobody asks for.
    pub fn keep_after_empty_grant(&mut self, now_ms: i64) {
        self.requested = false;
        self.exhausted = true;
        self.exhausted_at_ms = now_ms;
    }

    /// The lease in hand and its unspent count (to return on shutdown).
    pub fn in_hand(&self) -> Option<(u64, u64)> {
        self.lease_id.map(|id| (id, self.left))
    }

    /// Gives up the lease in hand (it expired, or its link was lost): returns
    /// its id and unspent count, to hand back, and leaves the wallet empty.
    pub fn surrender(&mut self) -> Option<(u64, u64)> {
        let held = self.in_hand();
        self.lease_id = None;
        self.left = 0;
        self.granted = 0;
        self.expires_ms = 0;
        held
    }

    /// [`Wallet::surrender`], and no refill is asked for until
    /// [`Wallet::returned`]: the source hears of the return before the next
    /// ask, which would otherwise find the returned requests still counted.
    pub fn surrender_returning(&mut self) -> Option<(u64, u64)> {
        let held = self.surrender();
        // An earlier return still on its way keeps its hold.
        self.returning |= held.is_some();
        held
    }

    /// The surrendered lease is on its way to the source: refills may go.
    pub fn returned(&mut self) {
        self.returning = false;
    }

    /// Whether the wallet holds no lease and waits for none: no refill is
    /// asked for and no surrendered lease is on its way back. Such a wallet
    /// can be dropped and made again without a request lost or counted
    /// twice (only its demand estimate starts over).
    pub fn is_at_rest(&self) -> bool {
        self.lease_id.is_none() && !self.requested && !self.returning
    }

    /// Whether the lease in hand can no longer be spent (none, or expired).
    pub fn is_spent_or_expired(&self, now_ms: i64) -> bool {
        self.lease_id.is_none() || now_ms >= self.expires_ms
    }

    fn observe(&mut self, now_ms: i64) {
        self.window_count += 1;
        let elapsed = now_ms - self.window_start_ms;
        if elapsed >= 1_000 {
            self.rate_per_s = self.window_count as f64 * 1000.0 / elapsed as f64;
            self.window_start_ms = now_ms;
            self.window_count = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spends_what_it_holds_and_asks_at_half() {
        let mut w = Wallet::new(0);
        assert_eq!(w.spend(0), Spend::Empty);
        assert!(w.wants_refill(0));
        assert_eq!(w.begin_refill(), None);
        assert!(!w.wants_refill(0), "one refill in flight at a time");
        w.install(7, 4, 10_000, false);
        assert_eq!(w.spend(1), Spend::Accepted);
        assert!(!w.wants_refill(1));
        assert_eq!(w.spend(2), Spend::Accepted);
        assert!(w.wants_refill(2));
        assert_eq!(w.begin_refill(), Some((7, 2)));
    }

    #[test]
    fn a_lease_of_any_size_is_spent_without_overflow() {
        let mut w = Wallet::new(0);
        w.install(1, u64::MAX, 1_000, false);
        assert_eq!(w.spend(0), Spend::Accepted);
        assert!(!w.wants_refill(0), "nearly all of it is left");
        w.install(2, u64::MAX, 1_000, false);
        assert!(w.wants_refill(1_000), "expired");
    }

    #[test]
    fn expired_leases_are_not_spent() {
        let mut w = Wallet::new(0);
        w.install(1, 10, 100, false);
        assert_eq!(w.spend(100), Spend::Empty);
        assert!(w.wants_refill(100));
    }

    #[test]
    fn a_surrendered_lease_is_handed_back_once() {
        let mut w = Wallet::new(0);
        w.install(3, 10, 1_000, false);
        assert_eq!(w.spend(1), Spend::Accepted);
        assert!(!w.is_spent_or_expired(1));
        assert_eq!(w.surrender(), Some((3, 9)));
        assert_eq!(w.surrender(), None);
        assert!(w.is_spent_or_expired(1));
        assert_eq!(w.spend(2), Spend::Empty);
    }

    #[test]
    fn no_refill_while_a_surrendered_lease_is_returning() {
        let mut w = Wallet::new(0);
        w.install(3, 10, 1_000, false);
        assert_eq!(w.surrender_returning(), Some((3, 10)));
        assert_eq!(w.spend(1), Spend::Empty);
        assert!(!w.wants_refill(1), "the return goes first");
        w.returned();
        assert!(w.wants_refill(1));
        // Nothing held, nothing returning.
        assert_eq!(w.surrender_returning(), None);
        assert!(w.wants_refill(2));
        // A second surrender while a return is on its way keeps the hold.
        w.install(4, 10, 1_000, false);
        assert_eq!(w.surrender_returning(), Some((4, 10)));
        assert_eq!(w.surrender_returning(), None);
        assert!(!w.wants_refill(3));
        w.returned();
        assert!(w.wants_refill(3));
    }

    #[test]
    fn a_wallet_is_at_rest_once_it_holds_and_awaits_nothing() {
        let mut w = Wallet::new(0);
        assert!(w.is_at_rest());
        w.begin_refill();
        assert!(!w.is_at_rest(), "a refill is asked for");
        w.install(3, 10, 1_000, false);
        assert!(!w.is_at_rest(), "a lease is held");
        w.surrender_returning();
        assert!(!w.is_at_rest(), "its return is on its way");
        w.returned();
        assert!(w.is_at_rest());
    }

    #[test]
    fn exhaustion_is_reported_and_stops_refills() {
        let mut w = Wallet::new(0);
        w.install_at(1, 0, 1_000, true, 1);
        assert_eq!(w.spend(1), Spend::Exhausted);
        assert!(!w.wants_refill(1));
        // Others may return what they did not spend: ask again, now and then.
        assert!(w.wants_refill(1 + EXHAUSTED_RECHECK_MS));
        w.begin_refill();
        w.install_at(2, 5, 10_000, false, 1_002);
        assert_eq!(w.spend(1_003), Spend::Accepted);
    }

    #[test]
    fn an_empty_grant_leaves_the_lease_in_hand_to_be_spent() {
        let mut w = Wallet::new(0);
        w.install(1, 4, 10_000, false);
        assert_eq!(w.spend(1), Spend::Accepted);
        assert_eq!(w.spend(2), Spend::Accepted);
        assert!(w.wants_refill(2));
        assert_eq!(w.begin_refill(), Some((1, 2)));
        // The book had nothing more: the two left are still this holder's.
        assert!(w.holds_unspent(3));
        w.keep_after_empty_grant(3);
        assert_eq!(w.in_hand(), Some((1, 2)));
        assert!(
            !w.wants_refill(4),
            "an exhausted key waits before asking again"
        );
        assert_eq!(w.spend(4), Spend::Accepted);
        assert_eq!(w.spend(5), Spend::Accepted);
        assert_eq!(w.spend(6), Spend::Exhausted);
        assert!(w.wants_refill(3 + EXHAUSTED_RECHECK_MS));
        // An expired lease holds nothing to spend.
        assert!(!w.holds_unspent(10_000));
    }

    #[test]
    fn lease_sizes_follow_demand() {
        let mut w = Wallet::new(0);
        w.install(1, 10_000, i64::MAX, false);
        for t in 0..=1000 {
            w.spend(t);
        }
        let size = w.next_size(&Sizing::default());
        assert!((1900..=2100).contains(&size), "{size}");
        assert_eq!(Wallet::new(0).next_size(&Sizing::default()), 1);
    }
}
