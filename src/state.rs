//! The gateway's shared state: everything a request needs (routes, limits,
//! cache, token, upstream client, metrics), built once from a validated config
//! and passed to every connection as one `Arc`.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;

use crate::access::{AccessPolicy, Caller};
use crate::budget::{ClientLimiter, DeviceShare, UpstreamBudget};
use crate::cache::ResponseCache;
use crate::config::{CacheConfig, Config};
use crate::lan_tls::{LanTls, LanTlsError};
use crate::metrics::{DeviceCounters, Gauges, RequestCounters};
use crate::outbound::Outbound;
use crate::params::QuerySchema;
use crate::routes::RouteTable;
use crate::token::TokenSource;
use crate::upstream::{Upstream, UpstreamError};

/// Everything a request needs, built once at start and shared by every connection.
#[derive(Debug)]
pub struct AppState {
    /// The allowlist requests are matched against.
    pub routes: RouteTable,
    /// The query parameters each route takes.
    pub schema: QuerySchema,
    /// Builds the upstream requests.
    pub outbound: Outbound,
    /// The pooled client to Joulo.
    pub upstream: Upstream,
    /// The token injected into every upstream request.
    pub tokens: TokenSource,
    /// The token's budget of upstream calls, shared by all devices.
    pub budget: UpstreamBudget,
    /// Who may call.
    pub access: AccessPolicy,
    /// Each device's own allowance, by device name when keys are in use.
    pub clients: ClientLimiter<Caller>,
    /// Each device's share of the upstream budget, spent on cache misses.
    pub shares: DeviceShare<Caller>,
    /// Bound on waiting for an upstream budget slot; with the upstream
    /// timeout, how long a cache miss may take in all.
    pub queue_timeout: Duration,
    /// Cached answers and in-flight upstream calls.
    pub cache: ResponseCache,
    /// Per-route freshness.
    pub cache_config: CacheConfig,
    /// The LAN certificate, when the gateway serves HTTPS.
    pub lan_tls: Option<Arc<LanTls>>,
    /// Requests by route and status, for `/metrics`.
    pub requests: RequestCounters,
    /// Requests and upstream calls by configured device, for `/metrics`.
    pub devices: DeviceCounters,
    /// Budget, back-off and token state, set before each scrape.
    pub gauges: Gauges,
    /// Larger request heads get 431.
    pub max_header_size: usize,
    /// Larger request bodies get 413.
    pub max_request_body: usize,
    /// Bound on receiving a request body (`server.header_timeout`): a device
    /// dripping a POST body a byte at a time cannot hold its request open.
    pub body_timeout: Duration,
    /// Every metric, as `/metrics` shows them.
    pub registry: Registry,
    /// When the gateway started, for its uptime.
    pub started: tokio::time::Instant,
}

/// Why the gateway could not be set up from a valid-looking config.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The upstream TLS settings.
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    /// The LAN certificate or key.
    #[error(transparent)]
    LanTls(#[from] LanTlsError),
}

impl AppState {
    /// Builds the shared state from a validated config and a token source.
    pub fn new(config: &Config, tokens: TokenSource) -> Result<AppState, StartError> {
        let upstream = Upstream::new(&config.upstream, config.server.worker_threads)?;
        let budget = UpstreamBudget::new(&config.limits);
        let clients = ClientLimiter::new(&config.limits, budget.refusal_counters());
        let shares = DeviceShare::new(&config.limits, budget.refusal_counters());
        let cache = ResponseCache::new(&config.cache);
        let requests = RequestCounters::default();
        let devices = DeviceCounters::new(config.access.clients.iter().map(|c| &c.name));
        let gauges = Gauges::default();

        let mut registry = Registry::with_prefix("joulo_gateway");
        registry.register(
            "requests",
            "Requests answered, by route and status",
            requests.family.clone(),
        );
        upstream.register_metrics(&mut registry);
        budget.register_metrics(&mut registry);
        cache.stats.register(&mut registry);
        tokens.register_metrics(&mut registry);
        devices.register(&mut registry);
        gauges.register(&mut registry);

        Ok(AppState {
            routes: RouteTable::new(&config.enabled_write_routes),
            schema: QuerySchema::new(&config.extra_params),
            outbound: Outbound::new(&config.upstream.base_url),
            upstream,
            tokens,
            budget,
            access: AccessPolicy::new(config.access.clone(), config.server.tls.is_some()),
            clients,
            shares,
            queue_timeout: config.limits.queue_timeout,
            cache,
            cache_config: config.cache.clone(),
            lan_tls: match &config.server.tls {
                Some(files) => Some(Arc::new(LanTls::load(files)?)),
                None => None,
            },
            requests,
            devices,
            gauges,
            max_header_size: config.server.max_header_size,
            max_request_body: config.server.max_request_body,
            body_timeout: config.server.header_timeout,
            registry,
            started: tokio::time::Instant::now(),
        })
    }
}
