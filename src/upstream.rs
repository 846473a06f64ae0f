//! The way out to Joulo: one pooled HTTPS client built at start (verified rustls
//! with the web roots plus `ca_file`, SNI, HTTP/2 or HTTP/1.1 by ALPN), the exact
//! upstream URI for a route, and the bounded wait for an answer.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap};
use http::{Method, Request, Response, Uri};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tracing::debug;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::config::UpstreamConfig;
use crate::ops::RouteSeries;
use crate::respond::{Body, GatewayError};
use crate::routes::RouteId;

/// How long an idle pooled connection to Joulo is kept for the next request.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// Why the upstream client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// rustls refused the TLS settings.
    #[error("cannot set up TLS to the upstream: {0}")]
    Tls(#[from] rustls::Error),
}

/// The Joulo API as the gateway reaches it.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// One pooled keep-alive client per event loop (see [`crate::server`]), so
    /// an upstream connection is driven on the loop whose requests use it and a
    /// call never waits for another thread to be woken.
    clients: Box<[Client<HttpsConnector<HttpConnector>, Body>]>,
    /// `base_url` without a trailing slash; a route path is appended to it.
    base: Arc<str>,
    /// Bound on waiting for the response head.
    timeout: Duration,
    /// Calls by route and answer status (0: no answer).
    calls: Family<CallLabels, Counter>,
    /// Time to the response head, by route.
    latency: Family<RouteLabels, Histogram>,
    /// Each route's `status="200"` series of `calls`.
    ok_calls: Arc<RouteSeries<Counter>>,
    /// Each route's series of `latency`.
    route_latency: Arc<RouteSeries<Histogram>>,
}

/// Metric labels for an upstream call. Never a query value or a header.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    /// The route's config name.
    pub route: &'static str,
    /// The upstream's status, or 0 when none came (timeout, connection or TLS error).
    pub status: u16,
}

/// Metric labels naming a route.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// The route's config name.
    pub route: &'static str,
}

impl Upstream {
    /// Builds the clients once, at start, one for each of `event_loops`.
    pub fn new(cfg: &UpstreamConfig, event_loops: usize) -> Result<Upstream, UpstreamError> {
        let mut roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        for cert in &cfg.extra_roots {
            roots.add(cert.clone())?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();

        let mut tcp = HttpConnector::new();
        tcp.enforce_http(false);
        tcp.set_nodelay(true);
        tcp.set_connect_timeout(Some(cfg.connect_timeout));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .enable_http2()
            .wrap_connector(tcp);
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .timer(TokioTimer::new());
        Ok(Upstream {
            clients: (0..event_loops.max(1))
                .map(|_| builder.build(https.clone()))
                .collect(),
            base: Arc::from(cfg.base_url.to_string().trim_end_matches('/')),
            timeout: cfg.timeout,
            calls: Family::default(),
            latency: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.005, 2.0, 12))
            }),
            ok_calls: Arc::default(),
            route_latency: Arc::default(),
        })
    }

    /// The upstream URI for `route`: always `base_url` + the route's own path, so
    /// nothing a client sends can change the host or reach another path.
    pub fn uri_for(&self, route: RouteId, query: &str) -> Result<Uri, GatewayError> {
        let mut uri = String::with_capacity(self.base.len() + 32 + query.len());
        uri.push_str(&self.base);
        uri.push_str(route.path());
        if !query.is_empty() {
            uri.push('?');
            uri.push_str(query);
        }
        // The base is validated and the path constant, so only the query can be at
        // fault; hyper already parsed it once, but a refusal beats a panic.
        uri.parse().map_err(|_| GatewayError::BadQuery)
    }

    /// Sends a request and waits at most `timeout` for the response head.
    /// Redirects are not followed: a 3xx is handed back as it is.
    ///
    /// A GET that fails before any answer (a connection the upstream closed or
    /// shut down with an HTTP/2 GOAWAY while it was being used) is sent once more
    /// on another connection, within the same `timeout`: a GET is idempotent, and
    /// a refused stream was never processed. A request with a body is not.
    pub async fn send(
        &self,
        route: RouteId,
        method: Method,
        uri: Uri,
        headers: HeaderMap,
        body: Option<Bytes>,
    ) -> Result<Response<Incoming>, GatewayError> {
        let started = tokio::time::Instant::now();
        let client = &self.clients[crate::server::event_loop() % self.clients.len()];
        let exchange = async {
            if body.is_some() {
                return client.request(request(method, uri, headers, body)).await;
            }
            let first = request(method.clone(), uri.clone(), headers.clone(), None);
            match client.request(first).await {
                Err(e) => {
                    debug!(route = route.config_name(), error = %e, "upstream call failed before an answer; retrying once");
                    client.request(request(method, uri, headers, None)).await
                }
                answered => answered,
            }
        };
        let result = match tokio::time::timeout(self.timeout, exchange).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(e)) => Err(GatewayError::UpstreamUnreachable(e)),
            Err(_) => Err(GatewayError::UpstreamTimeout),
        };
        let name = route.config_name();
        let status = result.as_ref().map_or(0, |r| r.status().as_u16());
        let calls = |status| {
            self.calls
                .get_or_create(&CallLabels {
                    route: name,
                    status,
                })
                .clone()
        };
        match status {
            200 => self.ok_calls.get(route, || calls(200)).inc(),
            _ => calls(status).inc(),
        };
        self.route_latency
            .get(route, || {
                self.latency
                    .get_or_create(&RouteLabels { route: name })
                    .clone()
            })
            .observe(started.elapsed().as_secs_f64());
        result
    }

    /// Adds the upstream call counters and latency histogram to `registry`.
    pub fn register_metrics(&self, registry: &mut Registry) {
        registry.register(
            "upstream_calls",
            "Calls to the Joulo API by route and status (0: no answer)",
            self.calls.clone(),
        );
        registry.register(
            "upstream_latency_seconds",
            "Time from sending a call to the Joulo API to its response head",
            self.latency.clone(),
        );
    }
}

/// A request to the upstream. A GET carries no body: it means nothing to Joulo,
/// and dropping it with its framing means the upstream cannot be handed a request
/// it might frame differently. Any body goes out re-framed by its own length,
/// whatever framing the client used.
fn request(method: Method, uri: Uri, mut headers: HeaderMap, body: Option<Bytes>) -> Request<Body> {
    headers.remove(header::CONTENT_LENGTH);
    let body = match body {
        Some(body) => crate::respond::full(body),
        None => {
            headers.remove(header::CONTENT_TYPE);
            Empty::new().map_err(|never| match never {}).boxed()
        }
    };
    let mut request = Request::new(body);
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.headers_mut() = headers;
    request
}
