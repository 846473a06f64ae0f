//! Holds the gateway to its budget goal: a household polling through the shipped
//! config costs Joulo one call per route per TTL window, however many devices poll.

use std::path::Path;
use std::time::Duration;

use crate::support::household::{self, Household, simulate};

/// Eight devices polling the four GET routes every 10-30 s through the shipped
/// config for `duration` of simulated time; with `greedy`, the eighth pages
/// through distinct `/sessions` instead.
async fn eight_devices(duration: Duration, greedy: bool) -> household::Report {
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("gateway.toml");
    simulate(
        &config,
        &Household {
            devices: 8,
            duration,
            interval: (Duration::from_secs(10), Duration::from_secs(30)),
            greedy,
        },
    )
    .await
}

#[tokio::test(start_paused = true)]
async fn many_devices_cost_one_upstream_call_per_route_per_ttl_window() {
    let duration = Duration::from_secs(180);
    let report = eight_devices(duration, false).await;
    assert_eq!(
        report.statuses.keys().copied().collect::<Vec<_>>(),
        [200],
        "{report:?}"
    );
    assert!(report.client_requests > 150, "{report:?}");
    for (route, calls, ttl) in &report.per_route {
        let windows = duration.as_secs().div_ceil(ttl.as_secs());
        assert!(
            *calls <= windows,
            "{}: {calls} upstream calls for {windows} ttl windows ({report:?})",
            route.path()
        );
        assert!(*calls >= 1);
    }
    assert!(report.upstream_calls <= report.ideal_calls(duration));
}

#[tokio::test(start_paused = true)]
async fn one_device_paging_through_history_leaves_the_others_all_their_answers() {
    let duration = Duration::from_secs(180);
    let report = eight_devices(duration, true).await;
    // The seven well-behaved devices: every answer a 200.
    assert_eq!(
        report.statuses.keys().copied().collect::<Vec<_>>(),
        [200],
        "{report:?}"
    );
    assert!(report.client_requests > 100, "{report:?}");
    // The misbehaving one is held to its share: refused most of the time.
    assert_eq!(report.greedy_requests, 1800);
    let refused = report.greedy_statuses.get(&429).copied().unwrap_or(0);
    let served = report.greedy_statuses.get(&200).copied().unwrap_or(0);
    assert!(refused > 1500, "{report:?}");
    // Its share of the shipped budget (30 a minute, burst 10): 15 a minute
    // after a burst of 5, over the simulated time its requests took.
    let minutes = report.greedy_elapsed.as_secs_f64() / 60.0;
    let share = 5.0 + 15.0 * minutes;
    assert!(
        served >= 1 && served as f64 <= share + 1.0,
        "{served} > {share}: {report:?}"
    );
}
