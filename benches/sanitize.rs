//! Micro-benchmarks of the request path's checks and building: the query
//! schema, path normalisation and matching, building the upstream request, and
//! the response-header check, on what Home Assistant sends.
//!
//! Run: `cargo bench --bench sanitize`

// `criterion_group!` makes an undocumented `pub fn`; a bench binary has no
// surface to document.
#![allow(missing_docs)]

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use http::Method;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use joulo_gateway::Outbound;
use joulo_gateway::QuerySchema;
use joulo_gateway::clean_response_headers;
use joulo_gateway::{RouteId, RouteTable, normalise_path};

/// What an HTTP/2 answer from the API carries.
fn joulo_answer_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (k, v) in [
        ("content-type", "application/json"),
        ("date", "Sun, 29 Nov 2026 02:15:39 GMT"),
        ("server", "cloudflare"),
        ("vary", "Accept-Encoding"),
        ("content-length", "350"),
    ] {
        headers.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
    }
    headers
}

fn sanitising(c: &mut Criterion) {
    let schema = QuerySchema::default();
    c.bench_function("QuerySchema::canonical: /sessions, three parameters", |b| {
        b.iter(|| {
            schema.canonical(
                RouteId::Sessions,
                black_box("limit=20&offset=40&charger_id=6f1c0d3e-8f43-4d8e-9f7b-2a1b3c4d5e6f"),
            )
        })
    });
    // A token-shaped value, made at run time like every canary.
    let old_config = format!(
        "limit=20&token=joulo_{}&offset=40",
        "Ab3".repeat(11).split_at(32).0
    );
    c.bench_function("QuerySchema::canonical: old ?token= config", |b| {
        b.iter(|| schema.canonical(RouteId::Sessions, black_box(&old_config)))
    });
    c.bench_function("QuerySchema::canonical: /chargers, no query", |b| {
        b.iter(|| schema.canonical(RouteId::Chargers, black_box("")))
    });
    c.bench_function("normalise_path: plain", |b| {
        b.iter(|| normalise_path(black_box("/chargers")))
    });
    c.bench_function("normalise_path: encoded", |b| {
        b.iter(|| normalise_path(black_box("/ch%61rgers")))
    });
    let table = RouteTable::new(&[]);
    c.bench_function("RouteTable::resolve", |b| {
        b.iter(|| table.resolve(black_box(&Method::GET), black_box("/ere-position")))
    });
    let outbound = Outbound::new(&"https://api.joulo.nl/functions/v1/api".parse().unwrap());
    c.bench_function("Outbound::request: /sessions?limit=20&offset=40", |b| {
        b.iter(|| outbound.request(RouteId::Sessions, black_box("limit=20&offset=40"), None))
    });
    let answer = joulo_answer_headers();
    c.bench_function(
        "clean_response_headers: Joulo answer, nothing to remove",
        |b| {
            b.iter_batched(
                || answer.clone(),
                |mut h| {
                    clean_response_headers(&mut h);
                    h
                },
                criterion::BatchSize::SmallInput,
            )
        },
    );
}

criterion_group!(benches, sanitising);
criterion_main!(benches);
