//! Holds the gateway to its budget goal: a household polling through the shipped
//! config costs Joulo one call per route per TTL window, however many devices poll.

#[path = "support/household.rs"]
mod household;

use std::path::Path;
use std::time::Duration;

use household::{Household, simulate};

#[tokio::test(start_paused = true)]
async fn many_devices_cost_one_upstream_call_per_route_per_ttl_window() {
    let duration = Duration::from_secs(180);
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("gateway.toml");
    let report = simulate(
        &config,
        &Household {
            devices: 8,
            duration,
            interval: (Duration::from_secs(10), Duration::from_secs(30)),
        },
    )
    .await;
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
