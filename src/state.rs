//! The gateway's shared state: everything a request needs (routes, limits,
//! cache, token, upstream client, metrics), built from a validated config and
//! passed to every connection as one `Arc`. What `gateway.toml` can change
//! without a restart (device keys, access, limits, cache ttls, routes) is one
//! [`Policy`], swapped whole on a reload: a request holds the policy it
//! started with to its end.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use crate::access::{AccessPolicy, Caller};
use crate::budget::{ClientLimiter, DeviceShare, LimitLabels, UpstreamBudget};
use crate::cache::ResponseCache;
use crate::config::{
    CacheConfig, Config, LimitsConfig, LogConfig, ServerConfig, TlsFiles, UpstreamConfig,
};
use crate::lan_tls::{LanTls, LanTlsError};
use crate::metrics::{DeviceCounters, DeviceFamilies, Gauges, MqttStats, RequestCounters};
use crate::params::QuerySchema;
use crate::routes::RouteTable;
use crate::token::TokenSource;
use crate::upstream::request::Outbound;
use crate::upstream::{Upstream, UpstreamError};

/// What `gateway.toml` decides that can change while the gateway runs.
#[derive(Debug)]
pub(crate) struct Policy {
    /// The allowlist requests are matched against.
    pub routes: RouteTable,
    /// The query parameters each route takes.
    pub schema: QuerySchema,
    /// Who may call.
    pub access: AccessPolicy,
    /// Each device's own allowance, by device name when keys are in use.
    pub clients: ClientLimiter<Caller>,
    /// Each device's share of the upstream budget, spent on cache misses.
    pub shares: DeviceShare<Caller>,
    /// The token's budget of upstream calls, shared by all devices; kept
    /// across a reload that leaves `[limits]` as it was.
    pub budget: Arc<UpstreamBudget>,
    /// Per-route freshness.
    pub cache_config: CacheConfig,
    /// Bound on waiting for an upstream budget slot; with the upstream
    /// timeout, how long a cache miss may take in all.
    pub queue_timeout: Duration,
    /// Requests and upstream calls by configured device, for `/metrics`.
    pub devices: DeviceCounters,
    /// The `[limits]` this policy was made from, to tell whether a reload
    /// changes them.
    limits: LimitsConfig,
}

/// Everything a request needs, shared by every connection.
#[derive(Debug)]
pub struct AppState {
    /// What the config decides that a reload can change.
    pub(crate) policy: ArcSwap<Policy>,
    /// Builds the upstream requests.
    pub(crate) outbound: Outbound,
    /// The pooled client to Joulo.
    pub(crate) upstream: Upstream,
    /// The token injected into every upstream request.
    pub tokens: TokenSource,
    /// Cached answers and in-flight upstream calls.
    pub cache: ResponseCache,
    /// The LAN certificate, when the gateway serves HTTPS.
    pub(crate) lan_tls: Option<Arc<LanTls>>,
    /// Requests by route and status, for `/metrics`.
    pub(crate) requests: RequestCounters,
    /// Budget, back-off and token state, set before each scrape.
    pub(crate) gauges: Gauges,
    /// The MQTT publisher's connection and messages.
    pub(crate) mqtt: MqttStats,
    /// Larger request heads get 431.
    pub(crate) max_header_size: usize,
    /// Larger request bodies get 413.
    pub(crate) max_request_body: usize,
    /// Bound on receiving a request body (`server.header_timeout`): a device
    /// dripping a POST body a byte at a time cannot hold its request open.
    pub(crate) body_timeout: Duration,
    /// Each address's allowance of refusals and ops requests, and its log
    /// budget.
    pub(crate) refusals_by_address: crate::refusals::RefusalGuard,
    /// Every metric, as `/metrics` shows them.
    pub(crate) registry: Registry,
    /// When the gateway started, for its uptime.
    pub(crate) started: tokio::time::Instant,
    /// Refusals by limit: one family for every policy's limiters.
    refusals: Family<LimitLabels, Counter>,
    /// Per-device series: one pair of families for every policy's devices.
    device_families: DeviceFamilies,
    /// Config reloads by result.
    reloads: Family<ReloadLabels, Counter>,
    /// The config the process started with: the restart-only settings in
    /// force are its, whatever reloads came since, so a reload compares with
    /// it (a setting changed twice is still named; one changed back is not).
    started_with: Config,
}

/// Metric labels for a config reload.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabels {
    /// `ok` or `failed`.
    pub result: &'static str,
}

/// Why the gateway could not be set up from a valid-looking config.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The upstream TLS settings.
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    /// The LAN certificate or key.
    #[error(transparent)]
    LanTls(#[from] LanTlsError),
}

impl Policy {
    /// The policy `config` describes, counting in the gateway's metric
    /// families; the budget is `budget` when given (limits unchanged).
    fn new(
        config: &Config,
        refusals: &Family<LimitLabels, Counter>,
        device_families: &DeviceFamilies,
        budget: Option<Arc<UpstreamBudget>>,
    ) -> Policy {
        Policy {
            routes: RouteTable::new(&config.enabled_write_routes),
            schema: QuerySchema::new(&config.extra_params),
            access: AccessPolicy::new(config.access.clone(), config.server.tls.is_some()),
            clients: ClientLimiter::new(&config.limits, refusals.clone()),
            shares: DeviceShare::new(&config.limits, refusals.clone()),
            budget: budget
                .unwrap_or_else(|| Arc::new(UpstreamBudget::new(&config.limits, refusals.clone()))),
            cache_config: config.cache.clone(),
            queue_timeout: config.limits.queue_timeout,
            devices: DeviceCounters::new(
                device_families,
                config.access.clients.iter().map(|c| &c.name),
            ),
            limits: config.limits.clone(),
        }
    }
}

impl AppState {
    /// Builds the shared state from a validated config and a token source.
    pub fn new(config: &Config, tokens: TokenSource) -> Result<AppState, StateError> {
        let upstream = Upstream::new(&config.upstream, config.server.worker_threads)?;
        let refusals = UpstreamBudget::refusal_family();
        let device_families = DeviceFamilies::default();
        let policy = Policy::new(config, &refusals, &device_families, None);
        let cache = ResponseCache::new(&config.cache);
        let requests = RequestCounters::default();
        let gauges = Gauges::default();
        let reloads = Family::<ReloadLabels, Counter>::default();
        for result in ["ok", "failed"] {
            let _ = reloads.get_or_create(&ReloadLabels { result });
        }

        let mut registry = Registry::with_prefix("joulo_gateway");
        registry.register(
            "requests",
            "Requests answered, by route and status",
            requests.family.clone(),
        );
        upstream.register_metrics(&mut registry);
        registry.register(
            "rate_limited",
            "Requests answered 429 by the gateway, by limit",
            refusals.clone(),
        );
        cache.stats.register(&mut registry);
        tokens.register_metrics(&mut registry);
        device_families.register(&mut registry);
        gauges.register(&mut registry);
        let mqtt = MqttStats::new(config.mqtt.is_some(), &mut registry);
        registry.register(
            "config_reloads",
            "Re-reads of gateway.toml (SIGHUP), by result",
            reloads.clone(),
        );

        Ok(AppState {
            policy: ArcSwap::from_pointee(policy),
            outbound: Outbound::new(&config.upstream.base_url),
            upstream,
            tokens,
            cache,
            lan_tls: match &config.server.tls {
                Some(files) => Some(Arc::new(LanTls::load(files)?)),
                None => None,
            },
            requests,
            gauges,
            mqtt,
            max_header_size: config.server.max_header_size,
            max_request_body: config.server.max_request_body,
            body_timeout: config.server.header_timeout,
            refusals_by_address: crate::refusals::RefusalGuard::new(),
            registry,
            started: tokio::time::Instant::now(),
            refusals,
            device_families,
            reloads,
            started_with: config.clone(),
        })
    }

    /// Applies a reloaded, validated config to new requests, all at once:
    /// device keys, access, limits, cache ttls and bounds, routes. Requests
    /// already under way finish under the policy they started with. Returns
    /// the keys that differ from the running (start-up) values and need a
    /// restart: they are not applied, and are named on every reload until
    /// the gateway restarts or they are changed back.
    pub fn reload(&self, config: &Config) -> Vec<&'static str> {
        let old = self.policy.load();
        // The budget's state (a back-off Joulo asked for, the last minute's
        // calls) outlives the reload; its limiter is new only if its limits are.
        let budget = if same_upstream_limits(&old.limits, &config.limits) {
            Some(old.budget.clone())
        } else {
            let budget = Arc::new(UpstreamBudget::new(&config.limits, self.refusals.clone()));
            budget.carry_over(&old.budget);
            Some(budget)
        };
        let policy = Policy::new(config, &self.refusals, &self.device_families, budget);
        self.cache.set_limits(&config.cache);
        self.policy.store(Arc::new(policy));
        restart_needed(&self.started_with, config)
    }

    /// Counts a reload by its result.
    pub fn count_reload(&self, ok: bool) {
        self.reloads
            .get_or_create(&ReloadLabels {
                result: if ok { "ok" } else { "failed" },
            })
            .inc();
    }
}

/// Whether two `[limits]` give the shared budget the same limiter.
fn same_upstream_limits(a: &LimitsConfig, b: &LimitsConfig) -> bool {
    a.upstream_per_minute == b.upstream_per_minute
        && a.upstream_burst == b.upstream_burst
        && a.queue_timeout == b.queue_timeout
}

/// The keys that differ between `old` and `new` but are read only at start.
/// Every field is named, none left to `..`: a new key must be put here (read
/// at start) or marked `_` (applied by a reload), or this does not compile.
fn restart_needed(old: &Config, new: &Config) -> Vec<&'static str> {
    let Config {
        server,
        upstream,
        log,
        // Applied by a reload (`Policy::new`, `ResponseCache::set_limits`).
        access: _,
        limits: _,
        cache: _,
        enabled_write_routes: _,
        extra_params: _,
        mqtt,
    } = old;
    let ServerConfig {
        listen,
        header_timeout,
        shutdown_grace,
        tls,
        tls_handshake_timeout,
        max_header_size,
        max_request_body,
        max_connections,
        max_connections_per_ip,
        idle_timeout,
        h2_max_streams,
        max_answer_memory,
        max_answer_memory_per_connection,
        worker_threads,
    } = server;
    let UpstreamConfig {
        base_url,
        token_file,
        token_origin,
        roots,
        http2,
        extra_roots,
        connect_timeout,
        timeout,
        token_poll_interval,
    } = upstream;
    // Applied by a reload (`reload::reload_once`).
    let LogConfig { level: _, format } = log;
    let tls_files = |tls: &Option<TlsFiles>| {
        tls.as_ref()
            .map(|TlsFiles { cert, key }| (cert.clone(), key.clone()))
    };
    let (n, nu) = (&new.server, &new.upstream);
    [
        ("server.listen", *listen != n.listen),
        ("server.worker_threads", *worker_threads != n.worker_threads),
        (
            "server.tls_cert / server.tls_key",
            tls_files(tls) != tls_files(&n.tls),
        ),
        (
            "server.max_connections",
            *max_connections != n.max_connections,
        ),
        (
            "server.max_connections_per_ip",
            *max_connections_per_ip != n.max_connections_per_ip,
        ),
        ("server.header_timeout", *header_timeout != n.header_timeout),
        ("server.idle_timeout", *idle_timeout != n.idle_timeout),
        (
            "server.tls_handshake_timeout",
            *tls_handshake_timeout != n.tls_handshake_timeout,
        ),
        (
            "server.max_header_size",
            *max_header_size != n.max_header_size,
        ),
        (
            "server.max_request_body",
            *max_request_body != n.max_request_body,
        ),
        ("server.h2_max_streams", *h2_max_streams != n.h2_max_streams),
        (
            "server.max_answer_memory",
            *max_answer_memory != n.max_answer_memory,
        ),
        (
            "server.max_answer_memory_per_connection",
            *max_answer_memory_per_connection != n.max_answer_memory_per_connection,
        ),
        ("server.shutdown_grace", *shutdown_grace != n.shutdown_grace),
        ("upstream.base_url", *base_url != nu.base_url),
        ("upstream.token_file", *token_file != nu.token_file),
        ("upstream.ca_file", *extra_roots != nu.extra_roots),
        ("upstream.roots", *roots != nu.roots),
        ("upstream.http2", *http2 != nu.http2),
        (
            "upstream.token_credential",
            *token_origin != nu.token_origin,
        ),
        (
            "upstream.connect_timeout",
            *connect_timeout != nu.connect_timeout,
        ),
        ("upstream.timeout", *timeout != nu.timeout),
        (
            "upstream.token_poll_interval",
            *token_poll_interval != nu.token_poll_interval,
        ),
        ("log.format", *format != new.log.format),
        (
            "mqtt",
            match (mqtt, &new.mqtt) {
                (Some(old), Some(new)) => old.differs_from(new),
                (old, new) => old.is_some() != new.is_some(),
            },
        ),
    ]
    .into_iter()
    .filter_map(|(key, changed)| changed.then_some(key))
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The upstream's HTTP version and the token's credential are read only at
    /// start: a reload that changes them says a restart is needed.
    #[test]
    fn upstream_settings_read_at_start_are_named_on_reload() {
        let path = std::path::Path::new("/etc/jg/gateway.toml");
        let old = Config::from_toml("", path).unwrap();
        let mut new = old.clone();
        new.upstream.http2 = crate::config::Http2::Never;
        new.upstream.token_origin = Some("/etc/jg/joulo_token".into());
        assert_eq!(
            restart_needed(&old, &new),
            ["upstream.http2", "upstream.token_credential"]
        );
        assert!(restart_needed(&old, &old).is_empty());
    }

    /// `[mqtt]` is read at start: turning it on, off or changing it by a
    /// reload is named, not applied.
    #[test]
    fn the_mqtt_table_is_read_at_start() {
        let path = std::path::Path::new("/etc/jg/gateway.toml");
        let off = Config::from_toml("", path).unwrap();
        let on = Config::from_toml("[mqtt]\nurl = \"mqtt://broker.lan\"\n", path).unwrap();
        let other = Config::from_toml("[mqtt]\nurl = \"mqtt://broker.lan:1884\"\n", path).unwrap();
        assert_eq!(restart_needed(&off, &on), ["mqtt"]);
        assert_eq!(restart_needed(&on, &off), ["mqtt"]);
        assert_eq!(restart_needed(&on, &other), ["mqtt"]);
        assert!(restart_needed(&on, &on).is_empty());
    }
}
