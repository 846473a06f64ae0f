//! The gateway's own endpoints, never forwarded: `/healthz` (the process is
//! alive), `/readyz` (a token is loaded and Joulo has not rejected it) and
//! `/metrics` (Prometheus text format).

use http::header::{self, HeaderValue};
use http::{Method, Response, StatusCode};
use prometheus_client::encoding::text::encode;

use std::sync::OnceLock;

use crate::proxy::AppState;
use crate::respond::{Body, full, json_error, json_response};
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

/// One of the gateway's own endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpsEndpoint {
    /// Liveness.
    Health,
    /// Readiness.
    Ready,
    /// Prometheus metrics.
    Metrics,
}

impl OpsEndpoint {
    /// The endpoint at exactly `path`, if it is one.
    pub fn at(path: &str) -> Option<OpsEndpoint> {
        match path {
            "/healthz" => Some(OpsEndpoint::Health),
            "/readyz" => Some(OpsEndpoint::Ready),
            "/metrics" => Some(OpsEndpoint::Metrics),
            _ => None,
        }
    }

    /// The name used as its `route` in logs and metrics.
    pub fn label(self) -> &'static str {
        match self {
            OpsEndpoint::Health => "healthz",
            OpsEndpoint::Ready => "readyz",
            OpsEndpoint::Metrics => "metrics",
        }
    }

    /// Answers the endpoint from the gateway's state.
    pub fn respond(self, method: &Method, state: &AppState) -> Response<Body> {
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
            OpsEndpoint::Metrics => {
                let mut text = String::with_capacity(8192);
                encode(&mut text, &state.registry).expect("writing to a String cannot fail");
                let mut response = Response::new(full(text));
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static(
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    ),
                );
                response
            }
        }
    }
}

/// Why the gateway cannot usefully serve, if it cannot.
fn not_ready_reason(state: &AppState) -> Option<String> {
    let file = state.tokens.path().display();
    if state.tokens.current().is_none() {
        return Some(format!(
            "Upstream token unavailable: {file} is missing or holds no valid token"
        ));
    }
    if state.tokens.is_rejected() {
        return Some(format!(
            "Joulo rejected the token (401): put the current token in {file}"
        ));
    }
    None
}
