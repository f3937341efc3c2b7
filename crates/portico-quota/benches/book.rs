//! What one lease grant and its return cost in each quota book: the local
//! redb file (a durable commit each) against a Redis the region's origins
//! share (one script each, over a Unix socket to a redis-server of the
//! bench's own). Grants are off the request path (a wallet asks for the next
//! lease at half spent), but they bound how many keys an origin can serve.

use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use portico_quota::testing::Redis;
use portico_quota::{Book, LeaseRequest, Period, QuotaBook, QuotaSpec, RedisBook};

const SPEC: QuotaSpec = QuotaSpec {
    limit: 1_000_000_000,
    period: Period::Month,
    offset: 0,
};

fn now_ms() -> i64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970");
    i64::try_from(since.as_millis()).expect("ms fit")
}

fn grant_and_return(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::TempDir::new().expect("temp dir");
    let redis = Redis::start();
    let local = Book::Local(Arc::new(
        QuotaBook::open(&dir.path().join("quota.redb")).expect("book"),
    ));
    let shared = rt.block_on(async {
        let book = RedisBook::connect(&redis.url, "bench:").expect("redis book");
        book.check().await.expect("redis answers");
        Book::Shared(book)
    });
    let mut group = c.benchmark_group("lease grant and return");
    for (name, book) in [("local redb", &local), ("shared redis", &shared)] {
        let mut n = 0u64;
        group.bench_function(name, |b| {
            b.iter(|| {
                n += 1;
                let key = format!("k{}", n % 1_000);
                let req = LeaseRequest {
                    plan: "plan",
                    key_id: &key,
                    spec: SPEC,
                    want: 16,
                    holder: "pop-a",
                    ttl_ms: 60_000,
                };
                rt.block_on(async {
                    let lease = book.grant(&req, now_ms()).await.expect("grant");
                    book.release(lease.id, 8, "pop-a").await.expect("return");
                });
            });
        });
    }
    group.finish();
}

criterion_group!(benches, grant_and_return);
criterion_main!(benches);
