//! The gateway's own endpoints, never forwarded: `/healthz` (the process is
//! alive), `/readyz` (a token is loaded and Joulo has not rejected it),
//! `/metrics` (Prometheus text or OpenMetrics) and `/status` (the same state
//! as JSON, for people and Home Assistant). Who may ask is decided before:
//! once device keys exist, `/metrics` and `/status` need `gateway:read` or an
//! `[ops] allow` address (see `access`).

use http::header::{self, HeaderValue};
use http::request::Parts;
use http::{Method, Response, StatusCode};
use prometheus_client::encoding::text::encode;

use crate::respond::{Body, full, json_error, json_response};
use crate::state::AppState;

/// One of the gateway's own endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OpsEndpoint {
    /// Liveness.
    Health,
    /// Readiness.
    Ready,
    /// Prometheus metrics.
    Metrics,
    /// What the household can see: token, budget, cache, last failure.
    Status,
}

impl OpsEndpoint {
    /// The endpoint at exactly `path`, if it is one.
    pub(crate) fn at(path: &str) -> Option<OpsEndpoint> {
        match path {
            "/healthz" => Some(OpsEndpoint::Health),
            "/readyz" => Some(OpsEndpoint::Ready),
            "/metrics" => Some(OpsEndpoint::Metrics),
            "/status" => Some(OpsEndpoint::Status),
            _ => None,
        }
    }

    /// The name used as its `route` in logs and metrics.
    pub(crate) fn label(self) -> &'static str {
        match self {
            OpsEndpoint::Health => "healthz",
            OpsEndpoint::Ready => "readyz",
            OpsEndpoint::Metrics => "metrics",
            OpsEndpoint::Status => "status",
        }
    }

    /// Whether it tells who uses the gateway (device names and counts, the
    /// budget, the token file's age): `/metrics` and `/status`.
    pub(crate) fn reveals_devices(self) -> bool {
        match self {
            OpsEndpoint::Health | OpsEndpoint::Ready => false,
            OpsEndpoint::Metrics | OpsEndpoint::Status => true,
        }
    }

    /// Answers the endpoint from the gateway's state.
    pub(crate) fn respond(self, request: &Parts, state: &AppState) -> Response<Body> {
        let method = &request.method;
        if method != Method::GET && method != Method::HEAD {
            let mut response = json_error(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed");
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return response;
        }
        match self {
            OpsEndpoint::Health => {
                json_response(StatusCode::OK, &serde_json::json!({"status": "ok"}))
            }
            OpsEndpoint::Ready => match not_ready_reason(state) {
                None => json_response(StatusCode::OK, &serde_json::json!({"status": "ready"})),
                Some(reason) => json_error(StatusCode::SERVICE_UNAVAILABLE, &reason),
            },
            OpsEndpoint::Metrics => metrics(request, state),
            OpsEndpoint::Status => json_response(StatusCode::OK, &status(state)),
        }
    }
}

/// `/metrics`: Prometheus text format 0.0.4, which every scraper and
/// `promtool` reads, unless the scraper's `Accept` asks for OpenMetrics.
fn metrics(request: &Parts, state: &AppState) -> Response<Body> {
    let policy = state.policy.load();
    let (used, left) = policy.budget.this_minute();
    let gauges = &state.gauges;
    gauges.budget_used.set(i64::from(used));
    gauges.budget_left.set(i64::from(left));
    gauges.backoff_seconds.set(
        policy
            .budget
            .backoff_remaining()
            .map_or(0.0, |d| d.as_secs_f64()),
    );
    gauges.token_loaded.set(i64::from(state.tokens.is_loaded()));
    gauges
        .token_rejected
        .set(i64::from(state.tokens.is_rejected()));

    let mut text = String::with_capacity(8192);
    encode(&mut text, &state.registry).expect("writing to a String cannot fail");
    let openmetrics = request
        .headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    let (body, content_type) = if openmetrics {
        (
            text,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )
    } else {
        (
            crate::metrics::to_prometheus_text(&text),
            "text/plain; version=0.0.4; charset=utf-8",
        )
    };
    let mut response = Response::new(full(body));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// `/status`: the gateway's state as JSON, for a dashboard or Home Assistant
/// sensors. Never the token, a key, an address or a query.
fn status(state: &AppState) -> serde_json::Value {
    use std::time::SystemTime;
    let policy = state.policy.load();
    let (used, left) = policy.budget.this_minute();
    let stats = &state.cache.stats;
    let (hits, misses) = (stats.hits.get(), stats.misses.get());
    let file_age = std::fs::metadata(state.tokens.path())
        .and_then(|m| m.modified())
        .ok()
        .and_then(|modified| SystemTime::now().duration_since(modified).ok())
        .map(|age| age.as_secs());
    let last_error = state.upstream.last_failure().map(|failure| {
        serde_json::json!({
            "error": failure.what,
            "at": humantime::format_rfc3339_seconds(failure.at).to_string(),
            "age_s": SystemTime::now()
                .duration_since(failure.at)
                .map_or(0, |age| age.as_secs()),
        })
    });
    serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_s": state.started.elapsed().as_secs(),
        "ready": not_ready_reason(state).is_none(),
        "token": {
            "loaded": state.tokens.is_loaded(),
            "rejected": state.tokens.is_rejected(),
            "file_age_s": file_age,
        },
        "budget": {
            "per_minute": policy.budget.per_minute(),
            "used_this_minute": used,
            "left_this_minute": left,
            "backoff_s": policy.budget.backoff_remaining().map_or(0, |d| d.as_secs().max(1)),
        },
        "cache": {
            "entries": state.cache.len(),
            "hits": hits,
            "misses": misses,
            "stale": stats.stale.get(),
            "hit_ratio": (hits + misses > 0).then(|| hits as f64 / (hits + misses) as f64),
        },
        "last_upstream_error": last_error,
        "devices": policy.devices.request_counts(),
        "mqtt": mqtt_status(state),
    })
}

/// The MQTT publisher's part of `/status`; `null` when it is off.
fn mqtt_status(state: &AppState) -> Option<serde_json::Value> {
    let mqtt = &state.mqtt;
    if !mqtt.enabled {
        return None;
    }
    let last = u64::try_from(mqtt.last_publish.get()).unwrap_or(0);
    let last_publish = (last > 0).then(|| {
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(last);
        humantime::format_rfc3339_seconds(at).to_string()
    });
    Some(serde_json::json!({
        "connected": mqtt.connected.get() == 1,
        "published": mqtt.published.get(),
        "last_publish": last_publish,
    }))
}

/// Why the gateway cannot usefully serve, if it cannot. Any allowed client
/// may ask, so the token file's path is not said here: the log has it.
fn not_ready_reason(state: &AppState) -> Option<String> {
    if !state.tokens.is_loaded() {
        return Some(
            "Upstream token unavailable: the token file is missing or holds no valid token \
             (the gateway's log names the file)"
                .to_owned(),
        );
    }
    if state.tokens.is_rejected() {
        return Some(
            "Joulo rejected the token (401): put the current token in the token file".to_owned(),
        );
    }
    None
}
