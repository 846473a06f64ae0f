//! The gateway's own endpoints, never forwarded: `/healthz` (the process is
//! alive), `/readyz` (a token is loaded and Joulo has not rejected it) and
//! `/metrics` (Prometheus text format).

use http::header::{self, HeaderValue};
use http::{Method, Response, StatusCode};
use prometheus_client::encoding::text::encode;

use crate::respond::{Body, full, json_error, json_response};
use crate::state::AppState;

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
