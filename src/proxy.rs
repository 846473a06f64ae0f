//! One request's way through the gateway: who may call and how often, which route
//! it is and what parameters it carries, whether the cache answers, how the
//! upstream request is built and the token added, and the access-log line that
//! records it.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::request::Parts;
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::access::Caller;
use crate::budget::UpstreamBudget;
use crate::cache::{Buffered, CacheKey, CacheStatus, KeyRef, Outcome, Stored, X_CACHE};
use crate::metrics::RequestCounters;
use crate::ops::OpsEndpoint;
use crate::params::{self, CanonicalQuery, LoggedQuery};
use crate::respond::{Body, GatewayError};
use crate::routes::RouteId;
use crate::sanitize;
use crate::state::{AppState, Policy};
use crate::token::{Rejection, TokenEcho};
use crate::upstream;
use crate::upstream::request::UpstreamRequest;

/// The most a shared upstream answer is buffered to; beyond it each waiting
/// request refetches and streams.
const BUFFER_LIMIT: usize = 16 * 1024 * 1024;

/// The status Joulo answered with, kept on a response for the access log.
#[derive(Debug, Clone, Copy)]
struct UpstreamStatus(StatusCode);

/// Serves one request. Never fails: every error becomes a JSON response, because
/// an `Err` handed to hyper would drop the whole connection.
///
/// What needs no waiting (a refusal, health, metrics, a fresh cached answer) is
/// answered within this call, so the request is dropped before hyper reads on:
/// its head still shares hyper's read buffer, which hyper then reuses instead of
/// allocating another, and no shared state is cloned for a future. Only a wait
/// for the device's allowance or an upstream call becomes a future.
pub fn handle(state: &Arc<AppState>, client: SocketAddr, request: Request<Incoming>) -> Handled {
    // The access line's duration needs a clock read; skipped when the line is
    // not written (level "warn", the benchmarks' setting).
    let started =
        tracing::enabled!(target: "joulo_gateway::access", tracing::Level::INFO).then(Instant::now);
    let (parts, body) = request.into_parts();
    let mut trace = Trace::default();
    // The policy in force now serves this request to its end, whatever a
    // reload does meanwhile.
    let policy = state.policy.load();
    let result = match admit(state, &policy, client, &parts, &mut trace) {
        Ok(Admitted::Answered(response)) => Ok(response),
        Err(e) => Err(e),
        Ok(Admitted::Waiting(waiting)) => {
            let policy = arc_swap::Guard::into_inner(policy);
            return Handled::later(state, policy, client, parts, body, trace, started, waiting);
        }
    };
    // An address past its allowance of refusals gets its 429 when its next
    // slot is due, not at once: a client looping on a connection then waits
    // instead of making the gateway answer as fast as it can send, and a
    // waiting answer costs a timer, not work.
    let hold = match &result {
        Err(GatewayError::AddressRateLimited { retry_after }) => Some((*retry_after).min(MAX_HOLD)),
        _ => None,
    };
    let response = finish(state, &policy, client, &parts, &trace, started, result);
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

/// A request's answer: ready at once, or a wait under way.
pub enum Handled {
    /// Answered within the call; taken when first polled.
    Ready(Option<Response<Body>>),
    /// Waiting for the device's allowance or for Joulo.
    Later(Pin<Box<dyn Future<Output = Response<Body>> + Send>>),
}

impl Handled {
    /// The future that finishes a request `admit` could not answer.
    #[allow(clippy::too_many_arguments)]
    fn later(
        state: &Arc<AppState>,
        policy: Arc<Policy>,
        client: SocketAddr,
        parts: Parts,
        body: Incoming,
        mut trace: Trace,
        started: Option<Instant>,
        waiting: Waiting,
    ) -> Handled {
        let state = state.clone();
        Handled::Later(Box::pin(async move {
            // A device that hangs up while this waits drops the future: the
            // guard still leaves its access line.
            let closed_early = ClosedEarly::new(&state.requests, client, &parts, started.is_some());
            let result = async {
                let call = match waiting {
                    Waiting::Upstream(call) => call,
                    Waiting::Allowance(who) => {
                        policy.clients.wait(&who).await?;
                        match route(&state, &policy, &parts, who, &mut trace)? {
                            Routed::Answered(response) => return Ok(response),
                            Routed::Upstream(call) => call,
                        }
                    }
                };
                match &call.kind {
                    CallKind::Forward => {
                        forward(&state, &policy, &call, &parts.headers, Some(body)).await
                    }
                    CallKind::Fetch { ttl, copy } => {
                        fetch_shared(&state, &policy, &call, *ttl, copy.clone(), &parts.headers)
                            .await
                    }
                }
            }
            .await;
            let response = finish(&state, &policy, client, &parts, &trace, started, result);
            closed_early.defuse();
            response
        }))
    }
}

/// Writes the access line (status 499, nginx's "client closed request") of a
/// request whose device went away before its answer was ready, when the
/// waiting future is dropped unfinished.
struct ClosedEarly<'a> {
    /// What the line says; `None` when the access log is off.
    line: Option<(SocketAddr, Method, String)>,
    /// Where the 499 is counted too.
    requests: &'a RequestCounters,
    /// Set once the request was answered: nothing to do on drop.
    answered: bool,
}

impl<'a> ClosedEarly<'a> {
    fn new(
        requests: &'a RequestCounters,
        client: SocketAddr,
        parts: &Parts,
        logging: bool,
    ) -> ClosedEarly<'a> {
        let line = logging.then(|| {
            let target = LoggedTarget {
                path: parts.uri.path(),
                // No route's parameters are shown: every value is redacted.
                query: LoggedQuery {
                    raw: parts.uri.query().unwrap_or(""),
                    shown: &[],
                },
            };
            (client, parts.method.clone(), target.to_string())
        });
        ClosedEarly {
            line,
            requests,
            answered: false,
        }
    }

    /// The request was answered (and counted, and logged, by `finish`).
    fn defuse(mut self) {
        self.answered = true;
    }
}

impl Drop for ClosedEarly<'_> {
    fn drop(&mut self) {
        if self.answered {
            return;
        }
        self.requests.count(None, "none", 499);
        if let Some((client, method, path)) = self.line.take() {
            tracing::info!(
                target: "joulo_gateway::access",
                client = %client,
                method = %method,
                path = %path,
                status = 499,
                "the device closed the connection before its answer"
            );
        }
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

/// What the access line and the request counter say about a request, filled in
/// as it goes.
#[derive(Default)]
struct Trace {
    route: Option<RouteId>,
    ops: Option<OpsEndpoint>,
    caller: Option<Caller>,
}

/// A request past the checks that need no waiting.
enum Admitted {
    /// Answered without Joulo: health, metrics, a fresh cached copy.
    Answered(Response<Body>),
    Waiting(Waiting),
}

/// What a request that could not be answered at once waits for.
enum Waiting {
    /// The device is over its allowance for now; a slot may come within the
    /// queue timeout.
    Allowance(Caller),
    Upstream(UpstreamCall),
}

/// A request within its device's allowance.
enum Routed {
    /// Answered from the cache.
    Answered(Response<Body>),
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
    kind: CallKind,
}

enum CallKind {
    /// A route that is not cached: streamed through.
    Forward,
    /// A cached route with no fresh copy; `copy` is a stale one that may stand in
    /// if the call fails.
    Fetch {
        ttl: Duration,
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

/// The checks in order, up to the device's allowance.
fn admit(
    state: &AppState,
    policy: &Policy,
    client: SocketAddr,
    parts: &Parts,
    trace: &mut Trace,
) -> Result<Admitted, GatewayError> {
    let before = check_before_allowance(state, policy, client, parts, trace);
    // Neither a refusal nor an ops request reaches a device's allowance: the
    // address's own bounds the work a flood of them makes (past it, a 429
    // and nothing else).
    if !matches!(before, Ok(Before::Device(_))) {
        state.refusals_by_address.charge(client.ip())?;
    }
    let who = match before? {
        Before::Ops(endpoint) => {
            return Ok(Admitted::Answered(endpoint.respond(parts, state)));
        }
        Before::Device(who) => who,
    };
    // Named on every answer from here on, refusals included.
    trace.caller = Some(who.clone());
    if !policy.clients.try_acquire(&who) {
        return Ok(Admitted::Waiting(Waiting::Allowance(who)));
    }
    Ok(match route(state, policy, parts, who, trace)? {
        Routed::Answered(response) => Admitted::Answered(response),
        Routed::Upstream(call) => Admitted::Waiting(Waiting::Upstream(call)),
    })
}

/// Who may call: the address, the head's size, Host and Origin, a browser's
/// cross-site request, then the ops endpoints' own rule or the device key.
fn check_before_allowance(
    state: &AppState,
    policy: &Policy,
    client: SocketAddr,
    parts: &Parts,
    trace: &mut Trace,
) -> Result<Before, GatewayError> {
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
        trace.ops = Some(endpoint);
        if endpoint.reveals_devices() {
            policy.access.check_ops(client.ip(), parts)?;
        }
        return Ok(Before::Ops(endpoint));
    }
    Ok(Before::Device(
        policy.access.authenticate(client.ip(), parts)?,
    ))
}

/// The checks after the device's allowance: the route, the device's scope, the
/// query against the route's parameters, and a fresh cached copy if there is one.
fn route(
    state: &AppState,
    policy: &Policy,
    parts: &Parts,
    who: Caller,
    trace: &mut Trace,
) -> Result<Routed, GatewayError> {
    let id = resolve(policy, parts)?;
    trace.route = Some(id);
    policy.access.check_scope(&who, id)?;
    let query = policy
        .schema
        .canonical(id, parts.uri.query().unwrap_or(""))?;
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

/// Counts the request and writes its access line.
fn finish(
    state: &AppState,
    policy: &Policy,
    client: SocketAddr,
    parts: &Parts,
    trace: &Trace,
    started: Option<Instant>,
    result: Result<Response<Body>, GatewayError>,
) -> Response<Body> {
    let quiet = matches!(result, Err(GatewayError::ClientRateLimited { .. }));
    // Refusals before a device's allowance and ops requests write a line
    // within their address's log budget only; the rest are summarised.
    // A device's own refusals (a scope, a parameter) are bounded by its
    // allowance instead, and keep their lines.
    let budgeted = match &result {
        _ if trace.caller.is_some() => None,
        Err(e) => crate::refusals::RefusalKind::of(e),
        Ok(_) => trace.ops.map(|_| crate::refusals::RefusalKind::Ops),
    };
    let response = result.unwrap_or_else(|e| {
        if matches!(
            e,
            GatewayError::UpstreamUnreachable(_) | GatewayError::UpstreamTimeout
        ) {
            warn!(client = %client, error = %ErrorChain(&e), "upstream request failed");
        }
        e.response()
    });
    let response = if parts.method == Method::HEAD {
        head_only(response)
    } else {
        response
    };

    let route_label = match (trace.route, trace.ops) {
        (Some(route), _) => route.config_name(),
        (None, Some(endpoint)) => endpoint.label(),
        (None, None) => "none",
    };
    state
        .requests
        .count(trace.route, route_label, response.status().as_u16());
    if let Some(Caller::Device(name)) = &trace.caller {
        policy.devices.request(name);
    }
    // One line per request, at info; a device's requests past its own
    // allowance are at debug: a client looping as fast as it can must not be
    // able to flood the log (the refusals are counted in /metrics).
    macro_rules! access_line {
        ($level:ident) => {
        tracing::$level!(
            target: "joulo_gateway::access",
            client = %client,
            device = match &trace.caller {
                Some(Caller::Device(name)) => Some(&**name),
                _ => None,
            },
            method = %parts.method,
            path = %LoggedTarget {
                path: parts.uri.path(),
                query: LoggedQuery {
                    raw: parts.uri.query().unwrap_or(""),
                    shown: trace.route.map_or(&[], |r| policy.schema.params(r)),
                },
            },
            route = route_label,
            status = response.status().as_u16(),
            upstream_status = response.extensions().get::<UpstreamStatus>().map(|s| s.0.as_u16()),
            cache = response
                .headers()
                .get(&X_CACHE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-"),
            duration_ms = started.map(|s| s.elapsed().as_micros() as f64 / 1000.0),
        );
        };
    }
    if quiet {
        access_line!(debug);
    } else if let Some(kind) = budgeted {
        // `started` is set only when access lines are written at all.
        if started.is_some() && state.refusals_by_address.may_log(client.ip(), kind) {
            access_line!(info);
        }
    } else {
        access_line!(info);
    }
    response
}

/// A HEAD answer: the GET's head, its `Content-Length` included when the
/// body's length is known, and no body. HTTP/1.1 would drop the body itself;
/// over HTTP/2 a body after a HEAD is a protocol error, so it goes here.
fn head_only(response: Response<Body>) -> Response<Body> {
    use hyper::body::Body as _;
    let (mut head, body) = response.into_parts();
    if let Some(length) = body.size_hint().exact() {
        head.headers
            .insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    }
    Response::from_parts(head, crate::respond::full(Bytes::new()))
}

fn resolve(policy: &Policy, parts: &Parts) -> Result<RouteId, GatewayError> {
    if parts.method == Method::CONNECT {
        return Err(GatewayError::Connect);
    }
    // Only the path is used: an absolute-form target's scheme and authority are
    // ignored, so no request can choose where the gateway connects.
    Ok(policy.routes.resolve(&parts.method, parts.uri.path())?)
}

/// A cacheable GET with no fresh copy: one upstream call shared with every
/// identical request under way, with the stale `copy` standing in when that
/// call fails or this device is over its share.
async fn fetch_shared(
    state: &Arc<AppState>,
    policy: &Arc<Policy>,
    call: &UpstreamCall,
    ttl: Duration,
    copy: Option<Arc<Stored>>,
    client_headers: &HeaderMap,
) -> Result<Response<Body>, GatewayError> {
    let key = CacheKey::new(call.route, &call.query);
    // Every request waiting on the call gives up at the first one's deadline:
    // a slot from the budget, then the whole answer.
    let deadline = Instant::now() + policy.queue_timeout + state.upstream.timeout();
    let outcome = state
        .cache
        .coalesce(
            key.clone(),
            deadline,
            || {
                policy.budget.check_backoff()?;
                policy.shares.spend(&call.who)?;
                if let Caller::Device(name) = &call.who {
                    policy.devices.upstream_call(name);
                }
                Ok(())
            },
            || {
                let request = state.outbound.request(call.route, &call.query, None);
                fetch_for_cache(state.clone(), policy.budget.clone(), key, request, ttl)
            },
        )
        .await;
    let stale = || state.cache.serve_stale(copy.as_deref(), Instant::now());
    match &*outcome {
        Outcome::Answer(answer) => {
            let failed =
                answer.status.is_server_error() || answer.status == StatusCode::TOO_MANY_REQUESTS;
            let mut response = match stale().filter(|_| failed) {
                Some(stale) => stale,
                None => answer.response(CacheStatus::Miss, None),
            };
            response
                .extensions_mut()
                .insert(UpstreamStatus(answer.status));
            Ok(response)
        }
        Outcome::Failed(e) => Ok(stale()
            .filter(|_| e.allows_stale())
            .unwrap_or_else(|| e.response())),
        // Nothing was shared; streaming is the only way to serve it.
        Outcome::TooLarge => forward(state, policy, call, client_headers, None).await,
    }
}

/// One upstream call for the cache, run in its own task: takes a budget slot,
/// reads the answer whole (up to `cache.max_body`) within `upstream.timeout`,
/// and stores it if cacheable.
async fn fetch_for_cache(
    state: Arc<AppState>,
    budget: Arc<UpstreamBudget>,
    key: CacheKey,
    request: UpstreamRequest,
    ttl: Duration,
) -> Outcome {
    // When the answer's age starts: as it is asked for, not as it arrives.
    let mut asked = Instant::now();
    let result = async {
        let token = state
            .tokens
            .current()
            .ok_or(GatewayError::TokenUnavailable)?;
        budget.acquire().await?;
        asked = Instant::now();
        let deadline = asked + state.upstream.timeout();
        let response = state
            .upstream
            .send(&request, token.authorization_header(), deadline, &budget)
            .await?;
        // The token stays at hand to look for in the answer: the one the call
        // was made with, whatever was loaded meanwhile.
        let (mut head, body) = response.into_parts();
        let echoed = token.appears_in_headers(&head.headers);
        after_upstream_answer(
            &state,
            &budget,
            head.status,
            &mut head.headers,
            token.generation(),
        );
        if echoed {
            return Err(token_echo(&state, key.route(), "a header"));
        }
        // Larger answers than the cache keeps are still buffered, up to a hard
        // bound, so one call serves every waiter; only a huge answer (never seen
        // from Joulo) is refetched per request, streaming.
        let max_body = state.cache.max_body().max(BUFFER_LIMIT);
        let Some(body) = read_answer(&state, &head.headers, body, max_body, deadline).await? else {
            return Ok(None);
        };
        // Stored and served as plain JSON, whatever each device accepts.
        let body = upstream::decode_content(&mut head.headers, body, max_body)?;
        if token.appears_in(&body) {
            return Err(token_echo(&state, key.route(), "the body"));
        }
        drop(token);
        head.headers.remove(header::CONTENT_LENGTH);
        Ok(Some(Buffered {
            status: head.status,
            headers: head.headers,
            body,
        }))
    }
    .await;
    match result {
        Ok(Some(answer)) => {
            state.cache.store(key, &answer, ttl, asked);
            Outcome::Answer(answer)
        }
        Ok(None) => Outcome::TooLarge,
        Err(e) => {
            if matches!(
                e,
                GatewayError::UpstreamUnreachable(_)
                    | GatewayError::UpstreamTimeout
                    | GatewayError::UpstreamBody(_)
                    | GatewayError::UpstreamEncoding
            ) {
                // Logged once here, not once per request that shared the call.
                warn!(route = key.route().config_name(), error = %ErrorChain(&e), "upstream request failed");
            }
            Outcome::Failed(e)
        }
    }
}

/// Forwards a request as it streams: for routes that are not cached, and for
/// answers too large to buffer. A POST's body is read (bounded), checked
/// against the route's schema and sent re-serialised.
async fn forward(
    state: &AppState,
    policy: &Policy,
    call: &UpstreamCall,
    client_headers: &HeaderMap,
    body: Option<Incoming>,
) -> Result<Response<Body>, GatewayError> {
    let route = call.route;
    // Read and check the body first: a refused body must not use a budget slot.
    let body = match body.filter(|_| route.method() == Method::POST) {
        Some(body) => {
            let read = read_request_body(client_headers, body, state.max_request_body);
            let raw = tokio::time::timeout(state.body_timeout, read)
                .await
                .map_err(|_| GatewayError::BodyTimeout)??;
            params::canonical_body(route, &raw)?
        }
        None => None,
    };
    let request = state.outbound.request(route, &call.query, body);
    // Token before budget: a request that fails closed must not use a slot either.
    let token = state
        .tokens
        .current()
        .ok_or(GatewayError::TokenUnavailable)?;
    policy.budget.check_backoff()?;
    policy.shares.spend(&call.who)?;
    if let Caller::Device(name) = &call.who {
        policy.devices.upstream_call(name);
    }
    policy.budget.acquire().await?;
    let timeout = state.upstream.timeout();
    let deadline = Instant::now() + timeout;
    let response = state
        .upstream
        .send(
            &request,
            token.authorization_header(),
            deadline,
            &policy.budget,
        )
        .await?;
    // The token stays at hand to look for in the answer: the one the call
    // was made with, whatever was loaded meanwhile.
    let (mut head, body) = response.into_parts();
    let echoed = token.appears_in_headers(&head.headers);
    after_upstream_answer(
        state,
        &policy.budget,
        head.status,
        &mut head.headers,
        token.generation(),
    );
    if echoed {
        return Err(token_echo(state, route, "a header"));
    }
    // The upstream may have spoken HTTP/2; the device's connection decides its own.
    head.version = Version::HTTP_11;
    head.extensions.insert(UpstreamStatus(head.status));
    let coded = upstream::content_coding(&head.headers)?
        .is_some_and(|coding| !coding.is_empty() && coding != "identity");
    if coded {
        // The gateway asked for `identity`. A token inside compressed bytes
        // cannot be seen as they stream: the answer is read whole, undone
        // and checked, as a cached one is, and served plain.
        let Some(body) = read_answer(state, &head.headers, body, BUFFER_LIMIT, deadline).await?
        else {
            return Err(GatewayError::UpstreamEncoding);
        };
        let body = upstream::decode_content(&mut head.headers, body, BUFFER_LIMIT)?;
        if token.appears_in(&body) {
            return Err(token_echo(state, route, "the body"));
        }
        head.headers.remove(header::CONTENT_LENGTH);
        return Ok(Response::from_parts(head, crate::respond::full(body)));
    }
    // Nothing goes to the device before the first chunk came and passed: a
    // body that fails before it is a clean error answer.
    let body = upstream::StreamedBody::new(body, timeout, TokenEcho::new(token), route)
        .start()
        .await
        .inspect_err(|e| {
            state.upstream.record_failure(e.to_string());
            if let GatewayError::UpstreamBody(_) = e {
                warn!(route = route.config_name(), error = %ErrorChain(e), "upstream answer failed before its first byte");
            }
        })?;
    Ok(Response::from_parts(head, body))
}

/// Reads an answer's body whole, up to `limit` bytes, by `deadline`: `None`
/// when it is (or says it is) larger.
async fn read_answer(
    state: &AppState,
    headers: &HeaderMap,
    body: crate::upstream::pool::UpstreamBody,
    limit: usize,
    deadline: Instant,
) -> Result<Option<Bytes>, GatewayError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|len| len > limit) {
        return Ok(None);
    }
    let collected = tokio::time::timeout_at(deadline, Limited::new(body, limit).collect())
        .await
        .map_err(|_| {
            state
                .upstream
                .record_failure("Upstream timed out while sending its answer".to_owned());
            GatewayError::UpstreamTimeout
        })?;
    match collected {
        Ok(collected) => Ok(Some(collected.to_bytes())),
        // Larger than the bound.
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Ok(None),
        Err(e) => {
            let e = GatewayError::UpstreamBody(e);
            state.upstream.record_failure(e.to_string());
            Err(e)
        }
    }
}

/// Refuses an answer that held the token it was requested with, saying in the
/// log which route and where (never the token), and in `/status`.
fn token_echo(state: &AppState, route: RouteId, place: &'static str) -> GatewayError {
    warn!(
        route = route.config_name(),
        found_in = place,
        "Joulo's answer held the gateway's token: refused (502) and not cached"
    );
    state
        .upstream
        .record_failure("Joulo's answer held the gateway's token".to_owned());
    GatewayError::UpstreamTokenEcho
}

/// Reads a request body of at most `limit` bytes; larger is 413, refused from
/// `Content-Length` alone when the client declares it.
async fn read_request_body(
    headers: &HeaderMap,
    body: Incoming,
    limit: usize,
) -> Result<Bytes, GatewayError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(GatewayError::BodyTooLarge { limit });
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            Err(GatewayError::BodyTooLarge { limit })
        }
        Err(_) => Err(GatewayError::ClientBody),
    }
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

/// What every upstream answer teaches the gateway: a 429 starts a back-off (and
/// gets a `Retry-After` if Joulo sent none); a 401 for the current token means
/// it is rejected (one for a token rotated away since says nothing); a success
/// for the current token means it is accepted again; anything but a 429 resets
/// the back-off. Cleans the answer's headers for devices.
fn after_upstream_answer(
    state: &AppState,
    budget: &UpstreamBudget,
    status: StatusCode,
    headers: &mut HeaderMap,
    generation: u64,
) {
    sanitize::clean_response_headers(headers);
    match status {
        StatusCode::TOO_MANY_REQUESTS => {
            let wait = budget.on_upstream_429(headers.get(header::RETRY_AFTER));
            warn!(
                backoff_s = wait.as_secs(),
                "Joulo answered 429: no upstream calls until the back-off ends"
            );
            if !headers.contains_key(header::RETRY_AFTER) {
                headers.insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(crate::respond::retry_after_secs(wait)),
                );
            }
        }
        StatusCode::UNAUTHORIZED => {
            // RFC 9110 section 11.6.1: a 401 names a scheme. Joulo's may not;
            // the device learns the gateway's token was refused.
            if !headers.contains_key(header::WWW_AUTHENTICATE) {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(
                        "Bearer realm=\"api.joulo.nl\", error=\"invalid_token\", \
                         error_description=\"Joulo rejected the gateway's token\"",
                    ),
                );
            }
            budget.on_upstream_answer();
            match state.tokens.mark_rejected(generation) {
                Rejection::First => {
                    // Nothing fetched with a rejected token is served again.
                    state.cache.purge();
                    warn!(
                        token_file = %state.tokens.path().display(),
                        "Joulo rejected the token (401): was it rotated or deactivated in the Joulo \
                         dashboard? Put the current token in the token file; it is picked up without a restart"
                    );
                }
                Rejection::Again => {}
                Rejection::Outdated => debug!(
                    "Joulo answered 401 for a token replaced while the request was under way; \
                     the current token is not affected"
                ),
            }
        }
        _ => {
            budget.on_upstream_answer();
            if status.is_success() {
                state.tokens.mark_accepted(generation);
            }
        }
    }
}

/// The most of a request target the access line shows: enough for any valid
/// request, and a 16 KiB query is not a 16 KiB log line.
const LOGGED_TARGET_MAX: usize = 512;

/// The request target as logged: the raw path and the query with values
/// redacted where the route does not take them, capped at
/// [`LOGGED_TARGET_MAX`] bytes and then the size of the rest.
struct LoggedTarget<'a> {
    path: &'a str,
    query: LoggedQuery<'a>,
}

impl std::fmt::Display for LoggedTarget<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut full = String::with_capacity(self.path.len() + self.query.raw.len() + 1);
        full.push_str(self.path);
        if !self.query.raw.is_empty() {
            use std::fmt::Write as _;
            let _ = write!(full, "?{}", self.query);
        }
        if full.len() <= LOGGED_TARGET_MAX {
            return f.write_str(&full);
        }
        // A path may hold non-ASCII bytes hyper let through: cut on a
        // character boundary.
        let mut cut = LOGGED_TARGET_MAX;
        while !full.is_char_boundary(cut) {
            cut -= 1;
        }
        write!(f, "{}...(+{} bytes)", &full[..cut], full.len() - cut)
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
