//! The household benchmark: 3 Home Assistant instances and 5 other devices poll
//! the four GET routes every 10-30 s for 10 minutes of simulated time, through the
//! gateway with the shipped `gateway.toml`, against the simulated Joulo API.
//! Prints client requests, upstream calls and their ratio, per route against the
//! ideal of one upstream call per route per TTL window.
//!
//! Run: `cargo bench --bench household`

// The support module is shared with the tests, whose `pub` items are for their
// siblings: a bench binary has no surface.
#![allow(unreachable_pub)]

#[path = "../tests/it/support/household.rs"]
mod household;

use std::path::Path;
use std::time::Duration;

use household::{Household, simulate};

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("runtime");
    let duration = Duration::from_secs(600);
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("gateway.toml");
    for greedy in [false, true] {
        let household = Household {
            devices: 8,
            duration,
            interval: (Duration::from_secs(10), Duration::from_secs(30)),
            greedy,
        };
        let wall = std::time::Instant::now();
        let report = runtime.block_on(simulate(&config, &household));
        print_report(&report, duration, wall.elapsed(), greedy);
        println!();
    }
}

fn print_report(report: &household::Report, duration: Duration, wall: Duration, greedy: bool) {
    if greedy {
        println!(
            "household with one misbehaving device: 7 devices poll as below, the 8th asks for a \
             distinct /sessions?limit=1&offset=N page every 100 ms"
        );
    }

    println!(
        "household: {} devices (3 Home Assistant + others), 4 GET routes each, every 10-30 s",
        if greedy { 7 } else { 8 }
    );
    println!(
        "simulated {} s in {:.2} s of wall time",
        duration.as_secs(),
        wall.as_secs_f64()
    );
    println!();
    println!("| route | ttl | upstream calls | ideal (one per ttl window) |");
    println!("|---|---|---|---|");
    for (route, calls, ttl) in &report.per_route {
        let ideal = duration.as_secs().div_ceil(ttl.as_secs().max(1));
        println!(
            "| {} | {} s | {calls} | {ideal} |",
            route.path(),
            ttl.as_secs()
        );
    }
    println!();
    println!("client requests: {}", report.client_requests);
    println!("upstream calls:  {}", report.upstream_calls);
    println!(
        "ratio:           {:.1} client requests per upstream call ({:.1}% of requests reached Joulo)",
        report.client_requests as f64 / report.upstream_calls.max(1) as f64,
        100.0 * report.upstream_calls as f64 / report.client_requests.max(1) as f64
    );
    println!("ideal calls:     {}", report.ideal_calls(duration));
    println!("statuses:        {:?}", report.statuses);
    println!("x-cache:         {:?}", report.cache);
    if greedy {
        let ok = report.statuses.get(&200).copied().unwrap_or(0);
        println!(
            "well-behaved devices: {ok} of {} answers were 200 ({:.1}%)",
            report.client_requests,
            100.0 * ok as f64 / report.client_requests.max(1) as f64
        );
        println!(
            "misbehaving device: {} requests over {:.0} s of simulated time, answers by status {:?}",
            report.greedy_requests,
            report.greedy_elapsed.as_secs_f64(),
            report.greedy_statuses
        );
    }
}
