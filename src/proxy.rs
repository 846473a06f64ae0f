//! One request's way through the gateway: which route it is, what is removed from
//! it, where the token is added, and the access-log line that records it.

use std::net::SocketAddr;
use std::time::Instant;

use http::header;
use http::request::Parts;
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use tracing::{info, warn};

use crate::config::Config;
use crate::respond::{Body, GatewayError};
use crate::routes::{RouteId, RouteTable};
use crate::sanitize::{self, CleanQuery};
use crate::token::TokenSource;
use crate::upstream::{Upstream, UpstreamError};

/// Everything a request needs, built once at start and shared by every connection.
#[derive(Debug)]
pub struct AppState {
    /// The allowlist requests are matched against.
    pub routes: RouteTable,
    /// The pooled client to Joulo.
    pub upstream: Upstream,
    /// The token injected into every upstream request.
    pub tokens: TokenSource,
}

impl AppState {
    /// Builds the shared state from a validated config and a token source.
    pub fn new(config: &Config, tokens: TokenSource) -> Result<AppState, UpstreamError> {
        Ok(AppState {
            routes: RouteTable::new(&config.enabled_write_routes),
            upstream: Upstream::new(&config.upstream)?,
            tokens,
        })
    }
}

/// Serves one request. Never fails: every error becomes a JSON response, because
/// an `Err` handed to hyper would drop the whole connection.
pub async fn handle(
    state: &AppState,
    client: SocketAddr,
    request: Request<Incoming>,
) -> Response<Body> {
    let started = Instant::now();
    let (parts, body) = request.into_parts();
    let query = sanitize::clean_query(parts.uri.query().unwrap_or(""));

    let (route, result) = match resolve(state, &parts) {
        Ok(route) => (
            Some(route),
            forward(state, route, &parts, &query, body).await,
        ),
        Err(e) => (None, Err(e)),
    };
    let (response, upstream_status) = match result {
        Ok(response) => {
            let status = response.status();
            (response, Some(status.as_u16()))
        }
        Err(e) => {
            if matches!(
                e,
                GatewayError::UpstreamUnreachable(_) | GatewayError::UpstreamTimeout
            ) {
                warn!(client = %client, error = %ErrorChain(&e), "upstream request failed");
            }
            (e.into_response(), None)
        }
    };

    info!(
        target: "joulo_gateway::access",
        client = %client,
        method = %parts.method,
        path = %LoggedTarget { path: parts.uri.path(), query: &query },
        route = route.map_or("-", RouteId::config_name),
        status = response.status().as_u16(),
        upstream_status,
        duration_ms = started.elapsed().as_micros() as f64 / 1000.0,
    );
    response
}

fn resolve(state: &AppState, parts: &Parts) -> Result<RouteId, GatewayError> {
    if parts.method == Method::CONNECT {
        return Err(GatewayError::Connect);
    }
    // Only the path is used: an absolute-form target's scheme and authority are
    // ignored, so no request can choose where the gateway connects.
    Ok(state.routes.resolve(&parts.method, parts.uri.path())?)
}

async fn forward(
    state: &AppState,
    route: RouteId,
    parts: &Parts,
    query: &CleanQuery<'_>,
    body: Incoming,
) -> Result<Response<Body>, GatewayError> {
    let uri = state.upstream.uri_for(route, &query.forwarded)?;
    let token = state
        .tokens
        .current()
        .ok_or(GatewayError::TokenUnavailable)?;

    let mut headers = parts.headers.clone();
    sanitize::clean_request_headers(&mut headers);
    let body = if route.method() == Method::GET {
        // A GET body means nothing to Joulo; dropping it (and its framing) means the
        // upstream cannot be handed a request it might frame differently.
        headers.remove(header::CONTENT_LENGTH);
        Empty::new().map_err(|never| match never {}).boxed()
    } else {
        body.boxed()
    };
    headers.insert(header::AUTHORIZATION, token.authorization_header());
    drop(token);

    let mut upstream_request = Request::new(body);
    *upstream_request.method_mut() = route.method();
    *upstream_request.uri_mut() = uri;
    *upstream_request.headers_mut() = headers;

    let response = state.upstream.send(upstream_request).await?;
    if response.status() == StatusCode::UNAUTHORIZED && state.tokens.mark_rejected() {
        warn!(
            token_file = %state.tokens.path().display(),
            "Joulo rejected the token (401): was it rotated or deactivated in the Joulo \
             dashboard? Put the current token in the token file; it is picked up without a restart"
        );
    }
    let (mut head, body) = response.into_parts();
    sanitize::clean_response_headers(&mut head.headers);
    // The upstream may have spoken HTTP/2; the device's connection decides its own.
    head.version = Version::HTTP_11;
    Ok(Response::from_parts(head, body.boxed()))
}

/// The request target as logged: the raw path and the query with credential
/// values replaced.
struct LoggedTarget<'a> {
    path: &'a str,
    query: &'a CleanQuery<'a>,
}

impl std::fmt::Display for LoggedTarget<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.path)?;
        if !self.query.logged.is_empty() {
            write!(f, "?{}", self.query.logged)?;
        }
        Ok(())
    }
}

/// Displays an error and its sources as `a: b: c`, for one-line log fields.
pub struct ErrorChain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(s) = source {
            write!(f, ": {s}")?;
            source = s.source();
        }
        Ok(())
    }
}
