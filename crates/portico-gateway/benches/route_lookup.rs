//! Route lookup in a table of 10 000 routes, against a naive linear scan of
//! the same templates in the same run.

use std::sync::Arc;

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use portico_config::Definitions;
use portico_gateway::{RoutingTable, ServedModes};

const ROUTES: usize = 10_000;

fn definitions() -> Definitions {
    let mut text = String::from(
        "[[apis]]\nname = \"bench\"\nendpoint = \"regional\"\nhosts = [\"bench.test\"]\n",
    );
    for i in 0..ROUTES {
        let path = match i % 3 {
            0 => format!("/svc{i}/items"),
            1 => format!("/svc{i}/items/{{id}}"),
            _ => format!("/svc{i}/files/{{proxy+}}"),
        };
        text.push_str(&format!(
            "[[apis.routes]]\nmethod = \"GET\"\npath = \"{path}\"\nintegration = {{ type = \"mock\", status = 200 }}\n"
        ));
    }
    text.push_str("[[apis.stages]]\nname = \"prod\"\n");
    Definitions::from_toml_str(&text, "bench.toml").expect("valid bench definitions")
}

/// The baseline: match each template segment by segment, in order.
fn naive_match(templates: &[Vec<String>], path: &str) -> Option<usize> {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    templates.iter().position(|t| {
        let greedy = t.last().is_some_and(|s| s.ends_with("+}"));
        let fixed = if greedy { t.len() - 1 } else { t.len() };
        (if greedy {
            segments.len() > fixed
        } else {
            segments.len() == fixed
        }) && t[..fixed]
            .iter()
            .zip(&segments)
            .all(|(t, s)| t.starts_with('{') || t == s)
    })
}

fn bench(c: &mut Criterion) {
    let defs = Arc::new(definitions());
    let table = RoutingTable::new(Arc::clone(&defs));
    let templates: Vec<Vec<String>> = defs.apis[0].stages[0]
        .deployment
        .routes
        .iter()
        .map(|r| {
            r.path
                .trim_start_matches('/')
                .split('/')
                .map(str::to_owned)
                .collect()
        })
        .collect();
    let paths = [
        "/prod/svc9999/items",
        "/prod/svc5002/items/42",
        "/prod/svc7001/files/a/b/c.txt",
    ];
    let mut group = c.benchmark_group("route_lookup_10k");
    group.bench_function("portico_resolve", |b| {
        b.iter(|| {
            for p in paths {
                black_box(
                    table
                        .resolve(
                            "bench.test",
                            "GET",
                            black_box(p),
                            None,
                            ServedModes::REGIONAL,
                        )
                        .is_ok(),
                );
            }
        })
    });
    group.bench_function("naive_linear_scan", |b| {
        b.iter(|| {
            for p in paths {
                black_box(naive_match(&templates, black_box(&p[5..])));
            }
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
