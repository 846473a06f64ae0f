//! The household benchmark: 3 Home Assistant instances and 5 other devices poll
//! the four GET routes every 10-30 s for 10 minutes of simulated time, through the
//! gateway with the shipped `gateway.toml`, against the simulated Joulo API.
//! Prints client requests, upstream calls and their ratio, per route against the
//! ideal of one upstream call per route per TTL window.
//!
//! Run: `cargo bench --bench household`

#[path = "../tests/support/household.rs"]
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
    let household = Household {
        devices: 8,
        duration,
        interval: (Duration::from_secs(10), Duration::from_secs(30)),
    };
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("gateway.toml");
    let wall = std::time::Instant::now();
    let report = runtime.block_on(simulate(&config, &household));
    let wall = wall.elapsed();

    println!(
        "household: 8 devices (3 Home Assistant + 5 others), 4 GET routes each, every 10-30 s"
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
}
