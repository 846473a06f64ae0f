//! The metric plumbing the request path shares: per-route series resolved
//! once (a family's own lookup takes a lock and hashes the labels), and the
//! requests-by-route-and-status counters.

use std::sync::OnceLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use crate::routes::RouteId;

/// One series per route taken from a metric family the first time it is used
/// and kept: a family's own lookup takes a lock and hashes the labels, which
/// the per-request metrics would otherwise pay on every request.
#[derive(Debug)]
pub struct RouteSeries<M> {
    /// By `route as usize`.
    cells: [OnceLock<M>; RouteId::ALL.len()],
}

impl<M> Default for RouteSeries<M> {
    fn default() -> Self {
        RouteSeries {
            cells: std::array::from_fn(|_| OnceLock::new()),
        }
    }
}

impl<M> RouteSeries<M> {
    /// The series for `route`, fetched from its family by `lookup` on first use.
    pub fn get(&self, route: RouteId, lookup: impl FnOnce() -> M) -> &M {
        self.cells[route as usize].get_or_init(lookup)
    }
}

/// Metric labels for a request. Never a query value or a header.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The route's config name, an ops endpoint, or `none`.
    pub route: &'static str,
    /// The status the gateway answered with.
    pub status: u16,
}

/// Requests by route and status, for `/metrics`. Each route's `200` series is
/// looked up in the family once and then kept: the family's lookup (a lock and a
/// hash of the labels) would otherwise run for every answer.
#[derive(Debug, Default)]
pub struct RequestCounters {
    /// Every series.
    pub family: Family<RequestLabels, Counter>,
    /// The `status="200"` series, by route.
    ok: RouteSeries<Counter>,
}

impl RequestCounters {
    /// Counts one answer.
    pub fn count(&self, route: Option<RouteId>, label: &'static str, status: u16) {
        let labels = || RequestLabels {
            route: label,
            status,
        };
        match route {
            Some(route) if status == 200 => self
                .ok
                .get(route, || self.family.get_or_create(&labels()).clone())
                .inc(),
            _ => self.family.get_or_create(&labels()).inc(),
        };
    }
}
