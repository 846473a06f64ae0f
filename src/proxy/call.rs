//! The upstream request phase: a request's call to Joulo, streamed through
//! ([`forward`]) or fetched once for the cache and shared ([`fetch_shared`]),
//! both made by [`call_upstream`]: the token, the device's share, a budget slot,
//! the call, and what the answer teaches the gateway.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::response;
use http::{Method, Response, StatusCode, Version};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use tokio::time::Instant;
use tracing::{debug, warn};

use super::finish::ErrorChain;
use super::{UpstreamCall, UpstreamStatus};
use crate::access::Caller;
use crate::budget::UpstreamBudget;
use crate::cache::{Buffered, CacheKey, CacheStatus, Outcome, Stored};
use crate::params;
use crate::respond::{Body, GatewayError};
use crate::routes::RouteId;
use crate::sanitize;
use crate::state::{AppState, Policy};
use crate::token::{Rejection, TokenEcho, UpstreamToken};
use crate::upstream;
use crate::upstream::pool::UpstreamBody;
use crate::upstream::request::UpstreamRequest;

/// The most a shared upstream answer is buffered to; beyond it each waiting
/// request refetches and streams.
const BUFFER_LIMIT: usize = 16 * 1024 * 1024;

/// A cacheable GET with no fresh copy: one upstream call shared with every
/// identical request under way, with the stale `copy` standing in when that
/// call fails or this device is over its share.
pub(super) async fn fetch_shared(
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
            // Only the request that starts the call spends its share.
            || spend_share(policy, &call.who),
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
    let result = async {
        // The share was spent as the call was admitted to the flight.
        let Answer {
            mut head,
            body,
            token,
            asked,
            deadline,
            ..
        } = call_upstream(&state, &budget, &request, Share::Spent).await?;
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
        Ok(Some((
            Buffered {
                status: head.status,
                headers: head.headers,
                body,
            },
            asked,
        )))
    }
    .await;
    match result {
        Ok(Some((answer, asked))) => {
            state.cache.store(key, &answer, ttl, asked);
            Outcome::Answer(answer)
        }
        Ok(None) => Outcome::TooLarge,
        Err(e) => {
            if warned_per_call(&e) {
                // Logged once here, not once per request that shared the call.
                warn!(route = key.route().config_name(), error = %ErrorChain(&e), "upstream request failed");
            }
            Outcome::Failed(e)
        }
    }
}

/// Whether a shared call's failure is logged (once, for every request that
/// waited on it): the upstream could not be reached, did not answer in time,
/// or sent an answer that could not be read.
fn warned_per_call(error: &GatewayError) -> bool {
    matches!(
        error,
        GatewayError::UpstreamUnreachable(_)
            | GatewayError::UpstreamTimeout
            | GatewayError::UpstreamBody(_)
            | GatewayError::UpstreamEncoding
    )
}

/// Forwards a request as it streams: for routes that are not cached, and for
/// answers too large to buffer. A POST's body is read (bounded), checked
/// against the route's schema and sent re-serialised.
pub(super) async fn forward(
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
    let Answer {
        mut head,
        body,
        token,
        timeout,
        deadline,
        ..
    } = call_upstream(
        state,
        &policy.budget,
        &request,
        Share::Spend(policy, &call.who),
    )
    .await?;
    // The upstream may have spoken HTTP/2; the device's connection decides its own.
    head.version = Version::HTTP_11;
    // Nothing of the upstream's head beyond its status and cleaned headers:
    // hyper keeps an HTTP/1.1 reason phrase in the extensions and would send
    // it on as it came (it can hold anything, the token included).
    head.extensions.clear();
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

/// Whose share of the budget a call spends, and when.
enum Share<'a> {
    /// Spend this device's share once the token is at hand, before the budget.
    Spend(&'a Policy, &'a Caller),
    /// Spent already: a shared call spends its starter's share as it is
    /// admitted, under the coalescing lock.
    Spent,
}

/// Joulo's answer as [`call_upstream`] hands it on: the head cleaned for
/// devices, the body not read yet.
struct Answer {
    /// Status and headers, cleaned by [`after_upstream_answer`].
    head: response::Parts,
    /// The body, still streaming.
    body: UpstreamBody,
    /// The token the call was made with, whatever was loaded meanwhile: the
    /// one to look for in the body.
    token: Arc<UpstreamToken>,
    /// When the call was made, once a budget slot was had: where a cached
    /// answer's age starts.
    asked: Instant,
    /// `upstream.timeout` as the call was made.
    timeout: Duration,
    /// When the whole answer must have arrived.
    deadline: Instant,
}

/// One call to Joulo, in the order that keeps the budget: the token (fail
/// closed: a request without one uses no slot), the back-off and the device's
/// share, a budget slot, the call (whose retries `Upstream::send` charges to
/// the budget), then what the answer teaches the gateway, and a refusal of an
/// answer whose headers hold the token.
async fn call_upstream(
    state: &AppState,
    budget: &UpstreamBudget,
    request: &UpstreamRequest,
    share: Share<'_>,
) -> Result<Answer, GatewayError> {
    // Token before budget: a request that fails closed must not use a slot either.
    let token = state
        .tokens
        .current()
        .ok_or(GatewayError::TokenUnavailable)?;
    if let Share::Spend(policy, who) = share {
        spend_share(policy, who)?;
    }
    budget.acquire().await?;
    let asked = Instant::now();
    let timeout = state.upstream.timeout();
    let deadline = asked + timeout;
    let response = state
        .upstream
        .send(request, token.authorization_header(), deadline, budget)
        .await?;
    let (mut head, body) = response.into_parts();
    let echoed = token.appears_in_headers(&head.headers);
    after_upstream_answer(
        state,
        budget,
        head.status,
        &mut head.headers,
        token.generation(),
    );
    if echoed {
        return Err(token_echo(state, request.route, "a header"));
    }
    Ok(Answer {
        head,
        body,
        token,
        asked,
        timeout,
        deadline,
    })
}

/// What a new upstream call costs its device before the budget: refused while
/// Joulo's back-off lasts, then the device's share spent and counted.
fn spend_share(policy: &Policy, who: &Caller) -> Result<(), GatewayError> {
    policy.budget.check_backoff()?;
    policy.shares.spend(who)?;
    if let Caller::Device(name) = who {
        policy.devices.upstream_call(name);
    }
    Ok(())
}

/// Reads an answer's body whole, up to `limit` bytes, by `deadline`: `None`
/// when it is (or says it is) larger.
async fn read_answer(
    state: &AppState,
    headers: &HeaderMap,
    body: UpstreamBody,
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
                        fix = %state.tokens.rejected_hint(),
                        "Joulo rejected the token (401): was it rotated or deactivated in the Joulo \
                         dashboard?"
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::token::TokenSource;
    use std::net::IpAddr;

    /// A gateway's state whose device share is one call a minute (the
    /// budget's 4 times 0.25), and a token file, not written yet.
    fn state(dir: &std::path::Path) -> AppState {
        let config = Config::from_toml(
            "[limits]\nupstream_per_minute = 4\nupstream_burst = 4\ndevice_upstream_share = 0.25\n",
            std::path::Path::new("g.toml"),
        )
        .unwrap();
        AppState::new(&config, TokenSource::new(dir.join("token"))).unwrap()
    }

    fn load_token(state: &AppState, dir: &std::path::Path) {
        crate::files::write_private(&dir.join("token"), "odd-shaped-token-1234").unwrap();
        state.tokens.reload().unwrap();
    }

    fn who() -> Caller {
        Caller::Address("192.168.1.5".parse::<IpAddr>().unwrap())
    }

    fn request(state: &AppState) -> UpstreamRequest {
        state.outbound.request(RouteId::Chargers, "", None)
    }

    /// The device's one call is still there, and then spent.
    fn assert_share_unspent(policy: &Policy, who: &Caller) {
        assert!(policy.shares.spend(who).is_ok(), "the share was spent");
        assert!(matches!(
            policy.shares.spend(who),
            Err(GatewayError::DeviceShareExhausted { .. })
        ));
    }

    #[tokio::test]
    async fn no_token_fails_closed_before_the_share_and_the_budget() {
        let dir = tempfile::tempdir().unwrap();
        let state = state(dir.path());
        let policy = state.policy.load_full();
        let who = who();
        let result = call_upstream(
            &state,
            &policy.budget,
            &request(&state),
            Share::Spend(&policy, &who),
        )
        .await;
        assert!(matches!(result, Err(GatewayError::TokenUnavailable)));
        assert_eq!(policy.budget.this_minute().0, 0, "no budget slot used");
        assert_share_unspent(&policy, &who);
    }

    #[tokio::test]
    async fn a_back_off_refuses_before_the_share_and_the_budget() {
        let dir = tempfile::tempdir().unwrap();
        let state = state(dir.path());
        load_token(&state, dir.path());
        let policy = state.policy.load_full();
        policy
            .budget
            .on_upstream_429(Some(&HeaderValue::from_static("30")));
        let who = who();
        for share in [Share::Spend(&policy, &who), Share::Spent] {
            let result = call_upstream(&state, &policy.budget, &request(&state), share).await;
            assert!(matches!(result, Err(GatewayError::UpstreamBackoff { .. })));
        }
        assert_eq!(policy.budget.this_minute().0, 0, "no budget slot used");
        assert_share_unspent(&policy, &who);
    }

    #[test]
    fn a_shared_calls_unreadable_answer_is_warned_once_a_refusal_is_not() {
        for warned in [
            GatewayError::UpstreamUnreachable("refused".into()),
            GatewayError::UpstreamTimeout,
            GatewayError::UpstreamBody("reset".into()),
            GatewayError::UpstreamEncoding,
        ] {
            assert!(warned_per_call(&warned), "{warned:?}");
        }
        for quiet in [
            GatewayError::TokenUnavailable,
            GatewayError::UpstreamTokenEcho,
            GatewayError::BudgetExhausted {
                retry_after: Duration::from_secs(1),
            },
        ] {
            assert!(!warned_per_call(&quiet), "{quiet:?}");
        }
    }
}
