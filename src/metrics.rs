//! The metric plumbing the request path shares: per-route series resolved
//! once (a family's own lookup takes a lock and hashes the labels), and the
//! requests-by-route-and-status counters.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::routes::RouteId;

/// One series per route taken from a metric family the first time it is used
/// and kept: a family's own lookup takes a lock and hashes the labels, which
/// the per-request metrics would otherwise pay on every request.
#[derive(Debug)]
pub(crate) struct RouteSeries<M> {
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
    pub(crate) fn get(&self, route: RouteId, lookup: impl FnOnce() -> M) -> &M {
        self.cells[route as usize].get_or_init(lookup)
    }
}

/// Metric labels for a request. Never a query value or a header.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RequestLabels {
    /// The route's config name, an ops endpoint, or `none`.
    pub route: &'static str,
    /// The status the gateway answered with.
    pub status: u16,
}

/// Requests by route and status, for `/metrics`. Each route's `200` series is
/// looked up in the family once and then kept: the family's lookup (a lock and a
/// hash of the labels) would otherwise run for every answer.
#[derive(Debug, Default)]
pub(crate) struct RequestCounters {
    /// Every series.
    pub family: Family<RequestLabels, Counter>,
    /// The `status="200"` series, by route.
    ok: RouteSeries<Counter>,
}

impl RequestCounters {
    /// Counts one answer.
    pub(crate) fn count(&self, route: Option<RouteId>, label: &'static str, status: u16) {
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

/// Metric labels naming a configured device. Only `[[clients]]` names appear:
/// a bounded set, never a client address.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeviceLabels {
    /// The device's name from `[[clients]]`.
    pub device: String,
}

/// The per-device metric families, made once and registered once: the device
/// counters of every config (reloads included) add their series to them.
#[derive(Debug, Clone, Default)]
pub(crate) struct DeviceFamilies {
    /// Requests answered, by device.
    requests: Family<DeviceLabels, Counter>,
    /// Upstream calls a device's request started, by device.
    upstream_calls: Family<DeviceLabels, Counter>,
}

impl DeviceFamilies {
    /// Adds both families to `registry`.
    pub(crate) fn register(&self, registry: &mut Registry) {
        registry.register(
            "device_requests",
            "Requests answered, by configured device",
            self.requests.clone(),
        );
        registry.register(
            "device_upstream_calls",
            "Calls to the Joulo API a device's request started (cache misses it paid for), by configured device",
            self.upstream_calls.clone(),
        );
    }
}

/// Requests and upstream calls per configured device, every series made at
/// start (at zero) so an alert on one has something to compare from the
/// first scrape, and looked up by name without allocating.
#[derive(Debug, Default)]
pub(crate) struct DeviceCounters {
    /// Both series of each device, by name.
    by_name: HashMap<Arc<str>, (Counter, Counter)>,
}

impl DeviceCounters {
    /// The series for the configured device `names`, in `families`. A
    /// device that stays across a reload keeps counting where it was.
    pub(crate) fn new<'a>(
        families: &DeviceFamilies,
        names: impl IntoIterator<Item = &'a Arc<str>>,
    ) -> DeviceCounters {
        let mut counters = DeviceCounters::default();
        for name in names {
            let labels = DeviceLabels {
                device: name.to_string(),
            };
            let pair = (
                families.requests.get_or_create(&labels).clone(),
                families.upstream_calls.get_or_create(&labels).clone(),
            );
            counters.by_name.insert(name.clone(), pair);
        }
        counters
    }

    /// Counts one request answered for `device`.
    pub(crate) fn request(&self, device: &str) {
        if let Some((requests, _)) = self.by_name.get(device) {
            requests.inc();
        }
    }

    /// Counts one upstream call `device`'s request started.
    pub(crate) fn upstream_call(&self, device: &str) {
        if let Some((_, calls)) = self.by_name.get(device) {
            calls.inc();
        }
    }

    /// Requests answered so far, by device name.
    pub(crate) fn request_counts(&self) -> std::collections::BTreeMap<&str, u64> {
        self.by_name
            .iter()
            .map(|(name, (requests, _))| (&**name, requests.get()))
            .collect()
    }
}

/// What alerting needs to see at a glance, set from the gateway's state just
/// before each scrape is encoded.
#[derive(Debug, Default)]
pub(crate) struct Gauges {
    /// Upstream calls left this minute (the per-minute budget less the calls
    /// of the last 60 s).
    pub budget_left: Gauge,
    /// Upstream calls made in the last 60 s.
    pub budget_used: Gauge,
    /// Seconds left of the back-off after a Joulo 429; 0 when none.
    pub backoff_seconds: Gauge<f64, AtomicU64>,
    /// 1 while a token is loaded.
    pub token_loaded: Gauge,
    /// 1 while Joulo rejects the current token (answered 401).
    pub token_rejected: Gauge,
}

impl Gauges {
    /// Adds the gauges to `registry`.
    pub(crate) fn register(&self, registry: &mut Registry) {
        registry.register(
            "upstream_budget_left",
            "Calls to the Joulo API left this minute",
            self.budget_left.clone(),
        );
        registry.register(
            "upstream_budget_used",
            "Calls to the Joulo API in the last 60 seconds",
            self.budget_used.clone(),
        );
        registry.register(
            "upstream_backoff_seconds",
            "Seconds left of the back-off after Joulo answered 429 (0: none)",
            self.backoff_seconds.clone(),
        );
        registry.register(
            "token_loaded",
            "1 while a token is loaded from the token file",
            self.token_loaded.clone(),
        );
        registry.register(
            "token_rejected",
            "1 while Joulo rejects the current token (401)",
            self.token_rejected.clone(),
        );
    }
}

/// The MQTT publisher's state, for `/metrics` and `/status`.
#[derive(Debug, Default)]
pub(crate) struct MqttStats {
    /// Whether `[mqtt]` is configured (the publisher runs).
    pub enabled: bool,
    /// 1 while the publisher is connected to the broker.
    pub connected: Gauge,
    /// Messages handed to the broker (discovery, states, availability).
    pub published: Counter,
    /// Unix time of the last message handed to the broker; 0 before one.
    pub last_publish: Gauge,
}

impl MqttStats {
    /// The publisher's series, registered in `registry`.
    pub(crate) fn new(enabled: bool, registry: &mut Registry) -> MqttStats {
        let stats = MqttStats {
            enabled,
            ..MqttStats::default()
        };
        registry.register(
            "mqtt_connected",
            "1 while the MQTT publisher is connected to the broker",
            stats.connected.clone(),
        );
        registry.register(
            "mqtt_published",
            "MQTT messages published (discovery, states, availability)",
            stats.published.clone(),
        );
        registry.register(
            "mqtt_last_publish_timestamp_seconds",
            "Unix time of the last MQTT message published (0: none yet)",
            stats.last_publish.clone(),
        );
        stats
    }
}

/// Prometheus' own text format (0.0.4) from prometheus-client's OpenMetrics
/// text, for scrapers and tools that do not ask for OpenMetrics (`promtool
/// check metrics` among them). The samples are the same; what differs is the
/// framing: a counter's `# HELP` and `# TYPE` name its `_total` sample, and
/// OpenMetrics' `# UNIT` lines, `_created` samples, exemplars and the closing
/// `# EOF` have no place in 0.0.4.
pub(crate) fn to_prometheus_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    // Counter families seen so far: their HELP and TYPE lines get `_total`.
    let mut counters: Vec<&str> = Vec::new();
    // HELP comes before TYPE, so a family's kind is only known from its TYPE
    // line; HELP lines wait here for it.
    let mut pending_help: Option<&str> = None;
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            if let Some(help) = pending_help.replace(rest) {
                push_line(&mut out, &format!("# HELP {help}"));
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let suffix = if kind == "counter" {
                counters.push(name);
                "_total"
            } else {
                ""
            };
            if let Some(help) = pending_help.take() {
                let (help_name, text) = help.split_once(' ').unwrap_or((help, ""));
                push_line(&mut out, &format!("# HELP {help_name}{suffix} {text}"));
            }
            // OpenMetrics' info and stateset have no 0.0.4 kind: gauges.
            let kind = match kind {
                "counter" | "gauge" | "histogram" | "summary" => kind,
                "unknown" => "untyped",
                _ => "gauge",
            };
            push_line(&mut out, &format!("# TYPE {name}{suffix} {kind}"));
            continue;
        }
        if let Some(help) = pending_help.take() {
            push_line(&mut out, &format!("# HELP {help}"));
        }
        // A sample: without its exemplar, and `_created` samples dropped.
        let sample = line.split(" # ").next().unwrap_or(line);
        let name = sample.split(['{', ' ']).next().unwrap_or(sample);
        if name.ends_with("_created")
            && counters
                .iter()
                .any(|c| name.strip_suffix("_created") == Some(c))
        {
            continue;
        }
        push_line(&mut out, sample);
    }
    if let Some(help) = pending_help {
        push_line(&mut out, &format!("# HELP {help}"));
    }
    out
}

fn push_line(out: &mut String, line: &str) {
    out.push_str(line);
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openmetrics_becomes_prometheus_text() {
        let om = "# HELP jg_requests Requests answered.\n\
                  # TYPE jg_requests counter\n\
                  jg_requests_total{route=\"chargers\",status=\"200\"} 3\n\
                  jg_requests_created{route=\"chargers\",status=\"200\"} 1700000000.0\n\
                  # HELP jg_up Token loaded.\n\
                  # TYPE jg_up gauge\n\
                  # UNIT jg_up bytes\n\
                  jg_up 1 # {trace_id=\"x\"} 1\n\
                  # HELP jg_latency_seconds Time.\n\
                  # TYPE jg_latency_seconds histogram\n\
                  jg_latency_seconds_bucket{le=\"0.005\"} 0\n\
                  jg_latency_seconds_sum 0.0\n\
                  jg_latency_seconds_count 0\n\
                  # EOF\n";
        assert_eq!(
            to_prometheus_text(om),
            "# HELP jg_requests_total Requests answered.\n\
             # TYPE jg_requests_total counter\n\
             jg_requests_total{route=\"chargers\",status=\"200\"} 3\n\
             # HELP jg_up Token loaded.\n\
             # TYPE jg_up gauge\n\
             jg_up 1\n\
             # HELP jg_latency_seconds Time.\n\
             # TYPE jg_latency_seconds histogram\n\
             jg_latency_seconds_bucket{le=\"0.005\"} 0\n\
             jg_latency_seconds_sum 0.0\n\
             jg_latency_seconds_count 0\n"
        );
    }
}
