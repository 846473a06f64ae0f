//! One request's way through the gateway, in phases as pingora's `ProxyHttp`
//! names them: the request filter (who may call and how often: [`admit`]),
//! the route and the cache lookup ([`route`]), the upstream request
//! ([`call`]), then the response filter and the access-log line
//! ([`finish`]). One [`RequestCtx`] travels through them.

mod call;
mod finish;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::request::Parts;
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use tokio::time::Instant;

use crate::access::Caller;
use crate::cache::{KeyRef, Stored};
use crate::ops::OpsEndpoint;
use crate::params::CanonicalQuery;
use crate::respond::{Body, GatewayError};
use crate::routes::RouteId;
use crate::state::{AppState, Policy};
use finish::{ClosedEarly, finish};

/// The status Joulo answered with, kept on a response for the access log.
#[derive(Debug, Clone, Copy)]
struct UpstreamStatus(StatusCode);

/// One request as it goes through the phases: what it asked for, and what the
/// access line and the request counter say about it, filled in as it goes.
struct RequestCtx {
    /// The device's address.
    client: SocketAddr,
    /// The request's head; its body goes its own way.
    parts: Parts,
    /// When it arrived; `None` when no access line is written, so nothing
    /// needs the time.
    started: Option<Instant>,
    /// The route, once resolved.
    route: Option<RouteId>,
    /// The gateway's own endpoint, if the request is for one.
    ops: Option<OpsEndpoint>,
    /// Who is calling, once known.
    caller: Option<Caller>,
}

impl RequestCtx {
    /// A request as it arrives: nothing known about it yet.
    fn new(client: SocketAddr, parts: Parts, started: Option<Instant>) -> RequestCtx {
        RequestCtx {
            client,
            parts,
            started,
            route: None,
            ops: None,
            caller: None,
        }
    }
}

/// Serves one request. Never fails: every error becomes a JSON response, because
/// an `Err` handed to hyper would drop the whole connection.
///
/// What needs no waiting (a refusal, health, metrics, a fresh cached answer) is
/// answered within this call, so the request is dropped before hyper reads on:
/// its head still shares hyper's read buffer, which hyper then reuses instead of
/// allocating another, and no shared state is cloned for a future. Only a wait
/// for the device's allowance or an upstream call becomes a future.
pub(crate) fn handle(
    state: &Arc<AppState>,
    client: SocketAddr,
    request: Request<Incoming>,
) -> Handled {
    // The access line's duration needs a clock read; skipped when the line is
    // not written (level "warn", the benchmarks' setting).
    let started =
        tracing::enabled!(target: "joulo_gateway::access", tracing::Level::INFO).then(Instant::now);
    let (parts, body) = request.into_parts();
    let mut ctx = RequestCtx::new(client, parts, started);
    // The policy in force now serves this request to its end, whatever a
    // reload does meanwhile.
    let policy = state.policy.load();
    let result = match admit(state, &policy, &mut ctx) {
        Ok(Admitted::Answered(response)) => Ok(response),
        Err(e) => Err(e),
        Ok(Admitted::Waiting(waiting)) => {
            let policy = arc_swap::Guard::into_inner(policy);
            return Handled::later(state, policy, ctx, body, waiting);
        }
    };
    // An address past its allowance of refusals gets its 429 about when its
    // next slot is due, not at once: a client looping on a connection then
    // waits instead of making the gateway answer as fast as it can send, and
    // a waiting answer costs a timer, not work. Spread over the second half
    // of the wait: many connections held at once would otherwise all be
    // answered in the same tick, and a device's request behind them waited
    // (p99 2.2 ms against 0.6 ms alone, 500 flooding addresses).
    let hold = match &result {
        Err(
            GatewayError::AddressRateLimited { retry_after }
            | GatewayError::RefusalsRateLimited { retry_after },
        ) => Some(spread((*retry_after).min(MAX_HOLD))),
        _ => None,
    };
    let response = finish(state, &policy, &ctx, result);
    match hold {
        None => Handled::Ready(Some(response)),
        Some(wait) => Handled::Later(Box::pin(async move {
            tokio::time::sleep(wait).await;
            response
        })),
    }
}

/// The longest a 429 past an address's allowance of refusals is held.
const MAX_HOLD: Duration = Duration::from_secs(1);

/// `wait` scaled by a random factor in [0.5, 1].
fn spread(wait: Duration) -> Duration {
    crate::budget::scale_randomly(wait, 0.5, 1.0)
}

/// A request's answer: ready at once, or a wait under way.
pub(crate) enum Handled {
    /// Answered within the call; taken when first polled.
    Ready(Option<Response<Body>>),
    /// Waiting for the device's allowance or for Joulo.
    Later(Pin<Box<dyn Future<Output = Response<Body>> + Send>>),
}

impl Handled {
    /// The future that finishes a request `admit` could not answer.
    fn later(
        state: &Arc<AppState>,
        policy: Arc<Policy>,
        mut ctx: RequestCtx,
        body: Incoming,
        waiting: Waiting,
    ) -> Handled {
        let state = state.clone();
        Handled::Later(Box::pin(async move {
            // A device that hangs up while this waits drops the future: the
            // guard still leaves its access line.
            let closed_early = ClosedEarly::new(&state.requests, &ctx);
            let result = async {
                let call = match waiting {
                    Waiting::Upstream(call) => call,
                    Waiting::Allowance(who) => {
                        policy.clients.wait(&who).await?;
                        match route(&state, &policy, &mut ctx, who)? {
                            Routed::Answered(response) => return Ok(response),
                            Routed::Upstream(call) => call,
                        }
                    }
                };
                match &call.kind {
                    CallKind::Forward => {
                        call::forward(&state, &policy, &call, &ctx.parts.headers, Some(body)).await
                    }
                    CallKind::Fetch { ttl, copy } => {
                        call::fetch_shared(
                            &state,
                            &policy,
                            &call,
                            *ttl,
                            copy.clone(),
                            &ctx.parts.headers,
                        )
                        .await
                    }
                }
            }
            .await;
            let response = finish(&state, &policy, &ctx, result);
            closed_early.defuse();
            response
        }))
    }
}

impl Future for Handled {
    type Output = Result<Response<Body>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            Handled::Ready(response) => {
                Poll::Ready(Ok(response.take().expect("polled after it was ready")))
            }
            Handled::Later(future) => future.as_mut().poll(cx).map(Ok),
        }
    }
}

/// A request past the checks that need no waiting.
enum Admitted {
    /// Answered without Joulo: health, metrics, a fresh cached copy.
    Answered(Response<Body>),
    /// Not answerable yet.
    Waiting(Waiting),
}

/// What a request that could not be answered at once waits for.
enum Waiting {
    /// The device is over its allowance for now; a slot may come within the
    /// queue timeout.
    Allowance(Caller),
    /// Joulo.
    Upstream(UpstreamCall),
}

/// A request within its device's allowance.
enum Routed {
    /// Answered from the cache.
    Answered(Response<Body>),
    /// Joulo is needed.
    Upstream(UpstreamCall),
}

/// What Joulo is needed for, and for whom.
struct UpstreamCall {
    /// The route.
    route: RouteId,
    /// Its validated parameters, in the gateway's spelling.
    query: CanonicalQuery,
    /// Who asked: the device whose share of the budget a new call spends.
    who: Caller,
    /// Streamed through, or fetched for the cache.
    kind: CallKind,
}

/// How an upstream call is made.
enum CallKind {
    /// A route that is not cached: streamed through.
    Forward,
    /// A cached route with no fresh copy; `copy` is a stale one that may stand in
    /// if the call fails.
    Fetch {
        /// The route's ttl.
        ttl: Duration,
        /// The stale copy, if any.
        copy: Option<Arc<Stored>>,
    },
}

/// What the checks before a device's allowance let through.
enum Before {
    /// One of the gateway's own endpoints.
    Ops(OpsEndpoint),
    /// A device's request.
    Device(Caller),
}

/// The request filter: the checks in order, up to the device's allowance.
fn admit(
    state: &AppState,
    policy: &Policy,
    ctx: &mut RequestCtx,
) -> Result<Admitted, GatewayError> {
    let before = check_before_allowance(state, policy, ctx);
    // Neither a refusal nor an ops request reaches a device's allowance: the
    // address's own, and for refusals that of all addresses together, bound
    // the work a flood of them makes (past it, a 429 and nothing else).
    match &before {
        Ok(Before::Device(_)) => {}
        Ok(Before::Ops(_)) => state.refusals_by_address.charge_ops(ctx.client.ip())?,
        Err(_) => state.refusals_by_address.charge_refusal(ctx.client.ip())?,
    }
    let who = match before? {
        Before::Ops(endpoint) => {
            return Ok(Admitted::Answered(endpoint.respond(&ctx.parts, state)));
        }
        Before::Device(who) => who,
    };
    // Named on every answer from here on, refusals included.
    ctx.caller = Some(who.clone());
    if !policy.clients.try_acquire(&who) {
        return Ok(Admitted::Waiting(Waiting::Allowance(who)));
    }
    Ok(match route(state, policy, ctx, who)? {
        Routed::Answered(response) => Admitted::Answered(response),
        Routed::Upstream(call) => Admitted::Waiting(Waiting::Upstream(call)),
    })
}

/// Who may call: the address, the head's size, Host and Origin, a browser's
/// cross-site request, then the ops endpoints' own rule or the device key.
fn check_before_allowance(
    state: &AppState,
    policy: &Policy,
    ctx: &mut RequestCtx,
) -> Result<Before, GatewayError> {
    let (client, parts) = (ctx.client, &ctx.parts);
    // Refused addresses get nothing else done for them.
    policy.access.check_network(client.ip())?;
    if head_size(parts) > state.max_header_size {
        return Err(GatewayError::HeadersTooLarge {
            limit: state.max_header_size,
        });
    }
    policy.access.check_host_and_origin(parts)?;
    policy.access.check_fetch_site(parts)?;
    // Health and readiness need no device key: a container health check has
    // none. Metrics and status name devices and the token file's age: with
    // device keys in use they need `gateway:read` or an `[ops] allow` address.
    if let Some(endpoint) = OpsEndpoint::at(parts.uri.path()) {
        ctx.ops = Some(endpoint);
        if endpoint.reveals_devices() {
            policy.access.check_ops(client.ip(), &ctx.parts)?;
        }
        return Ok(Before::Ops(endpoint));
    }
    Ok(Before::Device(
        policy.access.authenticate(client.ip(), parts)?,
    ))
}

/// The route and the cache lookup, after the device's allowance: the route,
/// the device's scope, the query against the route's parameters, and a fresh
/// cached copy if there is one.
fn route(
    state: &AppState,
    policy: &Policy,
    ctx: &mut RequestCtx,
    who: Caller,
) -> Result<Routed, GatewayError> {
    let id = resolve(policy, &ctx.parts)?;
    ctx.route = Some(id);
    policy.access.check_scope(&who, id)?;
    let query = policy
        .schema
        .canonical(id, ctx.parts.uri.query().unwrap_or(""))?;
    let ttl = policy.cache_config.ttl_for(id);
    if ttl.is_zero() {
        return Ok(Routed::Upstream(UpstreamCall {
            route: id,
            query,
            who,
            kind: CallKind::Forward,
        }));
    }
    // Fail closed before the cache too: a withdrawn token stops all service.
    if !state.tokens.is_loaded() {
        return Err(GatewayError::TokenUnavailable);
    }
    let copy = state.cache.lookup(KeyRef::new(id, &query));
    let now = Instant::now();
    if let Some(copy) = &copy
        && copy.is_fresh(now)
    {
        return Ok(Routed::Answered(state.cache.serve_hit(copy, now)));
    }
    Ok(Routed::Upstream(UpstreamCall {
        route: id,
        query,
        who,
        kind: CallKind::Fetch { ttl, copy },
    }))
}

/// One GET the gateway's own MQTT publisher makes: `route` with `query`,
/// through the same parameter check, cache, coalescing, budget and back-off
/// as a device's request, as the device [`Caller::Publisher`] with its own
/// allowance and share. Home Assistant's `rest:` polls and the publisher so
/// share cached answers. Returns the status and the whole body (a cached
/// route's answer is already buffered; a stream is bounded by the upstream
/// timeout).
pub(crate) async fn fetch_for_publisher(
    state: &Arc<AppState>,
    route: RouteId,
    query: &str,
) -> Result<(StatusCode, bytes::Bytes), GatewayError> {
    use http_body_util::BodyExt;
    let policy = state.policy.load_full();
    let who = Caller::Publisher;
    if !policy.clients.try_acquire(&who) {
        policy.clients.wait(&who).await?;
    }
    let query = policy.schema.canonical(route, query)?;
    let ttl = policy.cache_config.ttl_for(route);
    if !state.tokens.is_loaded() {
        return Err(GatewayError::TokenUnavailable);
    }
    let copy = state.cache.lookup(KeyRef::new(route, &query));
    let now = Instant::now();
    let response = match copy {
        Some(copy) if !ttl.is_zero() && copy.is_fresh(now) => state.cache.serve_hit(&copy, now),
        copy => {
            let kind = if ttl.is_zero() {
                CallKind::Forward
            } else {
                CallKind::Fetch { ttl, copy }
            };
            let call = UpstreamCall {
                route,
                query,
                who,
                kind,
            };
            let no_headers = http::HeaderMap::new();
            match &call.kind {
                CallKind::Forward => {
                    call::forward(state, &policy, &call, &no_headers, None).await?
                }
                CallKind::Fetch { ttl, copy } => {
                    call::fetch_shared(state, &policy, &call, *ttl, copy.clone(), &no_headers)
                        .await?
                }
            }
        }
    };
    let (parts, body) = response.into_parts();
    let limit = state.upstream.timeout();
    let body = tokio::time::timeout(limit, body.collect())
        .await
        .map_err(|_| GatewayError::UpstreamTimeout)?
        .map_err(GatewayError::UpstreamBody)?
        .to_bytes();
    Ok((parts.status, body))
}

/// The route a request's method and path name.
fn resolve(policy: &Policy, parts: &Parts) -> Result<RouteId, GatewayError> {
    if parts.method == Method::CONNECT {
        return Err(GatewayError::Connect);
    }
    // Only the path is used: an absolute-form target's scheme and authority are
    // ignored, so no request can choose where the gateway connects.
    Ok(policy.routes.resolve(&parts.method, parts.uri.path())?)
}

/// The size of a request's head as sent: request line and headers.
fn head_size(parts: &Parts) -> usize {
    let target = parts.uri.path_and_query().map_or(1, |p| p.as_str().len())
        + parts.uri.authority().map_or(0, |a| a.as_str().len() + 8);
    let line = parts.method.as_str().len() + target + 12;
    parts
        .headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum::<usize>()
        + line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_head_size_counts_the_request_line_and_every_header_as_sent() {
        // "GET /chargers?limit=1 HTTP/1.1\r\n" and "host: gw.lan\r\n".
        let (parts, ()) = Request::get("/chargers?limit=1")
            .header("host", "gw.lan")
            .body(())
            .unwrap()
            .into_parts();
        assert_eq!(head_size(&parts), 32 + 14);
        // An absolute-form target counts its scheme and authority too.
        let (absolute, ()) = Request::get("https://gw.lan/chargers")
            .body(())
            .unwrap()
            .into_parts();
        assert_eq!(
            head_size(&absolute),
            "GET https://gw.lan/chargers HTTP/1.1\r\n".len()
        );
    }
}
