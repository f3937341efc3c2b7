//! Throttle decision cost with 100 000 distinct keys (governor's keyed GCRA
//! limiter, as the gateway uses it) against a naive token bucket in a
//! `Mutex<HashMap>`, in the same run; and memory per tracked key.

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Mutex;
use std::time::Instant;

use criterion::{Criterion, criterion_group, criterion_main};
use portico_gateway::throttle::{KeyedThrottle, RateSpec};

const KEYS: u64 = 100_000;
const SPEC: RateSpec = RateSpec {
    rate: 1_000_000.0,
    burst: 1_000,
};

/// The baseline: a classic token bucket per key behind one lock.
struct NaiveBuckets {
    buckets: Mutex<HashMap<u64, (f64, Instant)>>,
}

impl NaiveBuckets {
    fn check(&self, key: u64) -> bool {
        let now = Instant::now();
        let mut map = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let (tokens, last) = map.entry(key).or_insert((f64::from(SPEC.burst), now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * SPEC.rate)
            .min(f64::from(SPEC.burst));
        *last = now;
        let allowed = *tokens >= 1.0;
        if allowed {
            *tokens -= 1.0;
        }
        allowed
    }
}

/// Resident memory in bytes (Linux).
fn rss() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|p| p.parse::<u64>().ok())
        })
        .map_or(0, |pages| pages * 4096)
}

fn memory_per_key() {
    let before = rss();
    let throttle = KeyedThrottle::<u64>::new("key", SPEC).expect("valid spec");
    for k in 0..KEYS {
        black_box(throttle.check(&k));
    }
    let after = rss();
    eprintln!(
        "memory per tracked key: {:.1} bytes ({} keys, RSS +{} KiB)",
        (after.saturating_sub(before)) as f64 / KEYS as f64,
        throttle.len(),
        (after.saturating_sub(before)) / 1024
    );
}

fn bench(c: &mut Criterion) {
    memory_per_key();
    let throttle = KeyedThrottle::<u64>::new("key", SPEC).expect("valid spec");
    let naive = NaiveBuckets {
        buckets: Mutex::new(HashMap::new()),
    };
    for k in 0..KEYS {
        throttle.check(&k);
        naive.check(k);
    }
    let mut group = c.benchmark_group("throttle_100k_keys");
    let mut k = 0u64;
    group.bench_function("governor_keyed", |b| {
        b.iter(|| {
            k = (k + 7919) % KEYS;
            black_box(throttle.check(black_box(&k)))
        })
    });
    group.bench_function("naive_mutex_hashmap", |b| {
        b.iter(|| {
            k = (k + 7919) % KEYS;
            black_box(naive.check(black_box(k)))
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
