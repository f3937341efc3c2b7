//! Load and validate a generated origin file with 1 000 routes, against the naive
//! baseline of only parsing the same text into an untyped `toml::Table`: the ratio is
//! what typing, validation, routers and the canonical source cost on top of parsing.
#![forbid(unsafe_code)]

use std::fmt::Write as _;
use std::hint::black_box;
use std::path::Path;

use criterion::{Criterion, criterion_group, criterion_main};

/// 10 APIs x 100 routes (a mix of literal, `{param}` and `{proxy+}` paths and of the
/// three integration types), each API with two stages.
fn generate(apis: usize, routes_per_api: usize) -> String {
    let mut s = String::from("[node]\nid = \"origin-bench\"\nregion = \"us-east-1\"\n");
    s.push_str("[[listeners]]\naddress = \"127.0.0.1:8080\"\ntls = false\n");
    for a in 0..apis {
        let _ = write!(
            s,
            "\n[[apis]]\nname = \"api{a}\"\nendpoint = \"regional\"\n"
        );
        for r in 0..routes_per_api {
            s.push_str(&route(r));
        }
        s.push_str(
            "[[apis.stages]]\nname = \"prod\"\nvariables = { backend = \"127.0.0.1:9000\" }\n",
        );
        s.push_str(
            "[[apis.stages]]\nname = \"dev\"\nvariables = { backend = \"127.0.0.1:9001\" }\n",
        );
        s.push_str("  [[apis.stages.route_overrides]]\n  route = \"*\"\n  timeout_ms = 1000\n");
    }
    s
}

fn route(r: usize) -> String {
    match r % 4 {
        0 => format!(
            "[[apis.routes]]\nmethod = \"GET\"\npath = \"/r{r}/items/{{id}}\"\n\
             [apis.routes.integration]\ntype = \"http_proxy\"\n\
             uri = \"http://${{stageVariables.backend}}/items/{{id}}\"\n"
        ),
        1 => format!(
            "[[apis.routes]]\npath = \"/r{r}/{{proxy+}}\"\n[apis.routes.integration]\n\
             type = \"http_proxy\"\nuri = \"http://${{stageVariables.backend}}/{{proxy}}\"\n"
        ),
        2 => format!(
            "[[apis.routes]]\nmethod = \"POST\"\npath = \"/r{r}/pets/{{petId}}\"\ntimeout_ms = 5000\n\
             [apis.routes.integration]\ntype = \"http\"\nuri = \"http://${{stageVariables.backend}}/a/{{id}}\"\n\
             request_parameters = {{ \"integration.request.path.id\" = \"method.request.path.petId\", \
             \"integration.request.header.x-k\" = \"'v'\" }}\n"
        ),
        _ => format!(
            "[[apis.routes]]\nmethod = \"GET\"\npath = \"/r{r}/health\"\n[apis.routes.integration]\n\
             type = \"mock\"\nstatus = 200\nheaders = {{ \"content-type\" = \"application/json\" }}\n\
             body = '{{\"ok\":true}}'\n"
        ),
    }
}

fn bench(c: &mut Criterion) {
    let text = generate(10, 100);
    let config = portico_config::parse_node(&text, "bench.toml", Path::new("."))
        .unwrap_or_else(|e| panic!("generated file is invalid:\n{e}"));
    let source = config.definitions.source.clone();

    let mut group = c.benchmark_group("config_load_1000_routes");
    group.bench_function("baseline_toml_table_parse", |b| {
        b.iter(|| black_box(black_box(text.as_str()).parse::<toml::Table>().is_ok()))
    });
    group.bench_function("parse_node_validate_compile", |b| {
        b.iter(|| {
            let c = portico_config::parse_node(black_box(&text), "bench.toml", Path::new("."));
            black_box(c.map(|c| c.definitions.version).ok())
        })
    });
    group.bench_function("definitions_from_source", |b| {
        b.iter(|| {
            let d = portico_config::Definitions::from_toml_str(black_box(&source), "origin");
            black_box(d.map(|d| d.version).ok())
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
