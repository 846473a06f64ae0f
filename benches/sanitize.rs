//! Micro-benchmarks of the request-sanitising path: query stripping, path
//! normalisation and matching, header filtering, on what Home Assistant sends.
//!
//! Run: `cargo bench --bench sanitize`

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use http::Method;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use joulo_gateway::routes::{RouteTable, normalise_path};
use joulo_gateway::sanitize::{clean_query, clean_response_headers, request_headers_for_upstream};

fn home_assistant_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (k, v) in [
        ("host", "gateway.lan:8080"),
        (
            "user-agent",
            "HomeAssistant/2026.2.0 aiohttp/3.13.2 Python/3.13",
        ),
        ("accept", "*/*"),
        ("accept-encoding", "gzip, deflate, br"),
        (
            "authorization",
            "Basic aG9tZWFzc2lzdGFudDpqZ3dfMDEyMzQ1Njc4OWFiY2RlZg==",
        ),
        ("connection", "keep-alive"),
    ] {
        headers.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
    }
    headers
}

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
    c.bench_function("clean_query: no credential", |b| {
        b.iter(|| {
            clean_query(black_box(
                "limit=20&offset=40&charger_id=6f1c0d3e-8f43-4d8e-9f7b-2a1b3c4d5e6f",
            ))
        })
    });
    // A token-shaped value, made at run time like every canary.
    let old_config = format!(
        "limit=20&token=joulo_{}&offset=40",
        "Ab3".repeat(11).split_at(32).0
    );
    c.bench_function("clean_query: old ?token= config", |b| {
        b.iter(|| clean_query(black_box(&old_config)))
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
    let headers = home_assistant_headers();
    c.bench_function("request_headers_for_upstream: Home Assistant", |b| {
        b.iter(|| request_headers_for_upstream(black_box(&headers)))
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
