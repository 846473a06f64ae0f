//! The last phases of a request: the response filter (an error becomes its
//! JSON answer, a HEAD loses its body), the request counters, and the
//! access-log line, written by one function for every request, the ones whose
//! device hung up before their answer included.

use std::net::SocketAddr;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::request::Parts;
use http::{Method, Response};
use tracing::{Level, warn};

use super::{RequestCtx, UpstreamStatus};
use crate::access::Caller;
use crate::cache::X_CACHE;
use crate::metrics::RequestCounters;
use crate::params::{LoggedQuery, ParamSpec};
use crate::refusals::RefusalKind;
use crate::respond::{Body, GatewayError};
use crate::state::{AppState, Policy};

/// Counts the request and writes its access line.
pub(super) fn finish(
    state: &AppState,
    policy: &Policy,
    ctx: &RequestCtx,
    result: Result<Response<Body>, GatewayError>,
) -> Response<Body> {
    let quiet = matches!(result, Err(GatewayError::ClientRateLimited { .. }));
    let budgeted = budgeted_kind(ctx, &result);
    let response = result.unwrap_or_else(|e| {
        if warned_per_request(&e) {
            warn!(client = %ctx.client, error = %ErrorChain(&e), "upstream request failed");
        }
        e.response()
    });
    let response = if ctx.parts.method == Method::HEAD {
        head_only(response)
    } else {
        response
    };

    let route_label = match (ctx.route, ctx.ops) {
        (Some(route), _) => route.config_name(),
        (None, Some(endpoint)) => endpoint.label(),
        (None, None) => "none",
    };
    state
        .requests
        .count(ctx.route, route_label, response.status().as_u16());
    if let Some(Caller::Device(name)) = &ctx.caller {
        policy.devices.request(name);
    }
    // One line per request, at info; a device's requests past its own
    // allowance are at debug: a client looping as fast as it can must not be
    // able to flood the log (the refusals are counted in /metrics).
    let level = if quiet {
        Some(Level::DEBUG)
    } else if let Some(kind) = budgeted {
        // `started` is set only when access lines are written at all.
        (ctx.started.is_some() && state.refusals_by_address.may_log(ctx.client.ip(), kind))
            .then_some(Level::INFO)
    } else {
        Some(Level::INFO)
    };
    if let Some(level) = level
        && access_enabled(level)
    {
        let shown = ctx.route.map_or(&[][..], |r| policy.schema.params(r));
        write_access_line(
            level,
            &AccessLine {
                client: ctx.client,
                device: match &ctx.caller {
                    Some(Caller::Device(name)) => Some(&**name),
                    _ => None,
                },
                method: &ctx.parts.method,
                path: &LoggedTarget::of(&ctx.parts, shown),
                route: Some(route_label),
                status: response.status().as_u16(),
                upstream_status: response
                    .extensions()
                    .get::<UpstreamStatus>()
                    .map(|s| s.0.as_u16()),
                cache: Some(
                    response
                        .headers()
                        .get(&X_CACHE)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("-"),
                ),
                duration_ms: ctx.started.map(|s| s.elapsed().as_micros() as f64 / 1000.0),
                note: None,
            },
        );
    }
    response
}

/// The kind a request's line is counted as in its address's log budget, or
/// `None` when the line is not budgeted. Refusals before a device's allowance
/// and ops requests write a line within their address's log budget only; the
/// rest are summarised. A device's own refusals (a scope, a parameter) are
/// bounded by its allowance instead, and keep their lines.
fn budgeted_kind(
    ctx: &RequestCtx,
    result: &Result<Response<Body>, GatewayError>,
) -> Option<RefusalKind> {
    match result {
        _ if ctx.caller.is_some() => None,
        Err(e) => RefusalKind::of(e),
        Ok(_) => ctx.ops.map(|_| RefusalKind::Ops),
    }
}

/// Whether a request's error is worth a warning of its own: the upstream
/// could not be reached or did not answer in time. A shared call's failures
/// are logged once by the call instead (see `call::warned_per_call`).
fn warned_per_request(error: &GatewayError) -> bool {
    matches!(
        error,
        GatewayError::UpstreamUnreachable(_) | GatewayError::UpstreamTimeout
    )
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

/// One access-log line. A field that is `None` is left out of the line.
struct AccessLine<'a> {
    /// The device's address.
    client: SocketAddr,
    /// The device's name, when it presented a key.
    device: Option<&'a str>,
    /// The request's method.
    method: &'a Method,
    /// The request target as logged (see [`LoggedTarget`]).
    path: &'a dyn std::fmt::Display,
    /// The route's or ops endpoint's name, "none" when there was neither.
    route: Option<&'static str>,
    /// The status the device got.
    status: u16,
    /// The status Joulo answered with, if it was asked.
    upstream_status: Option<u16>,
    /// The `X-Cache` value, "-" when there was none.
    cache: Option<&'a str>,
    /// How long the answer took.
    duration_ms: Option<f64>,
    /// The line's message, for a line that is not an answer.
    note: Option<&'static str>,
}

/// Whether access lines at `level` are written, so a line that is not is not
/// built either.
fn access_enabled(level: Level) -> bool {
    if level == Level::DEBUG {
        tracing::enabled!(target: "joulo_gateway::access", Level::DEBUG)
    } else {
        tracing::enabled!(target: "joulo_gateway::access", Level::INFO)
    }
}

/// Writes an access-log line, at info or debug: the one place a request's line
/// is written, so every line has the same fields in the same order.
fn write_access_line(level: Level, line: &AccessLine<'_>) {
    macro_rules! write_line {
        ($level:ident) => {
            match line.note {
                None => tracing::$level!(
                    target: "joulo_gateway::access",
                    client = %line.client,
                    device = line.device,
                    method = %line.method,
                    path = %line.path,
                    route = line.route,
                    status = line.status,
                    upstream_status = line.upstream_status,
                    cache = line.cache,
                    duration_ms = line.duration_ms,
                ),
                Some(note) => tracing::$level!(
                    target: "joulo_gateway::access",
                    client = %line.client,
                    device = line.device,
                    method = %line.method,
                    path = %line.path,
                    route = line.route,
                    status = line.status,
                    upstream_status = line.upstream_status,
                    cache = line.cache,
                    duration_ms = line.duration_ms,
                    "{note}"
                ),
            }
        };
    }
    if level == Level::DEBUG {
        write_line!(debug);
    } else {
        write_line!(info);
    }
}

/// Writes the access line (status 499, nginx's "client closed request") of a
/// request whose device went away before its answer was ready, when the
/// waiting future is dropped unfinished.
pub(super) struct ClosedEarly<'a> {
    /// What the line says; `None` when the access log is off.
    line: Option<(SocketAddr, Method, String)>,
    /// Where the 499 is counted too.
    requests: &'a RequestCounters,
    /// Set once the request was answered: nothing to do on drop.
    answered: bool,
}

impl<'a> ClosedEarly<'a> {
    /// The guard for `ctx`; the line's target is written now, while the
    /// request is at hand.
    pub(super) fn new(requests: &'a RequestCounters, ctx: &RequestCtx) -> ClosedEarly<'a> {
        let line = ctx.started.is_some().then(|| {
            // No route's parameters are shown: every value is redacted.
            let target = LoggedTarget::of(&ctx.parts, &[]);
            (ctx.client, ctx.parts.method.clone(), target.to_string())
        });
        ClosedEarly {
            line,
            requests,
            answered: false,
        }
    }

    /// The request was answered (and counted, and logged, by `finish`).
    pub(super) fn defuse(mut self) {
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
            write_access_line(
                Level::INFO,
                &AccessLine {
                    client,
                    device: None,
                    method: &method,
                    path: &path,
                    route: None,
                    status: 499,
                    upstream_status: None,
                    cache: None,
                    duration_ms: None,
                    note: Some("the device closed the connection before its answer"),
                },
            );
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
    /// The path as sent.
    path: &'a str,
    /// The query, redacted as it is written out.
    query: LoggedQuery<'a>,
}

impl<'a> LoggedTarget<'a> {
    /// The target of `parts`, showing the values of the `shown` parameters.
    fn of(parts: &'a Parts, shown: &'a [ParamSpec]) -> LoggedTarget<'a> {
        LoggedTarget {
            path: parts.uri.path(),
            query: LoggedQuery {
                raw: parts.uri.query().unwrap_or(""),
                shown,
            },
        }
    }
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
pub(super) struct ErrorChain<'a>(pub &'a (dyn std::error::Error + 'static));

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::AccessError;
    use crate::ops::OpsEndpoint;
    use crate::params::QuerySchema;
    use crate::routes::RouteId;
    use http::{Request, StatusCode};
    use hyper::body::Body as _;
    use std::io;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    fn ctx(target: &str) -> RequestCtx {
        let (parts, ()) = Request::get(target).body(()).unwrap().into_parts();
        RequestCtx::new("192.168.1.5:40000".parse().unwrap(), parts, None)
    }

    fn unreachable() -> GatewayError {
        GatewayError::UpstreamUnreachable("connection refused".into())
    }

    #[test]
    fn only_an_unreachable_or_silent_upstream_is_warned_per_request() {
        assert!(warned_per_request(&unreachable()));
        assert!(warned_per_request(&GatewayError::UpstreamTimeout));
        for quiet in [
            GatewayError::UpstreamBody("reset".into()),
            GatewayError::UpstreamEncoding,
            GatewayError::UpstreamTokenEcho,
            GatewayError::TokenUnavailable,
            GatewayError::Access(AccessError::Key),
            GatewayError::ClientRateLimited {
                retry_after: Duration::from_secs(1),
            },
        ] {
            assert!(!warned_per_request(&quiet), "{quiet:?}");
        }
    }

    #[test]
    fn refusals_before_a_device_and_ops_requests_are_budgeted_a_devices_own_are_not() {
        let anonymous = ctx("/chargers");
        let refused = Err(GatewayError::Access(AccessError::Network));
        assert_eq!(
            budgeted_kind(&anonymous, &refused),
            Some(RefusalKind::Network)
        );
        // Not a refusal: an upstream failure keeps its line.
        assert_eq!(
            budgeted_kind(&anonymous, &Err(GatewayError::TokenUnavailable)),
            None
        );
        let answered = Ok(Response::new(crate::respond::full("{}")));
        assert_eq!(budgeted_kind(&anonymous, &answered), None);
        let mut ops = ctx("/metrics");
        ops.ops = Some(OpsEndpoint::Metrics);
        assert_eq!(budgeted_kind(&ops, &answered), Some(RefusalKind::Ops));
        let mut device = ctx("/chargers");
        device.caller = Some(Caller::Device("ha".into()));
        let out_of_scope = Err(GatewayError::Access(AccessError::Key));
        assert_eq!(budgeted_kind(&device, &out_of_scope), None);
        assert_eq!(budgeted_kind(&device, &answered), None);
    }

    #[test]
    fn a_head_answer_keeps_the_length_and_drops_the_body() {
        let mut get = Response::new(crate::respond::full("{\"a\":1}"));
        *get.status_mut() = StatusCode::CREATED;
        let head = head_only(get);
        assert_eq!(head.status(), StatusCode::CREATED);
        assert_eq!(head.headers()[header::CONTENT_LENGTH], "7");
        assert_eq!(head.body().size_hint().exact(), Some(0));
    }

    #[test]
    fn the_logged_target_redacts_and_is_capped_on_a_character_boundary() {
        let schema = QuerySchema::default();
        let sessions = schema.params(RouteId::Sessions);
        let short = ctx("/sessions?limit=5&token=abc");
        assert_eq!(
            LoggedTarget::of(&short.parts, sessions).to_string(),
            "/sessions?limit=5&token=[REDACTED]"
        );
        // Without the route's parameters every value is redacted.
        assert_eq!(
            LoggedTarget::of(&short.parts, &[]).to_string(),
            "/sessions?limit=[REDACTED]&token=[REDACTED]"
        );
        let long = ctx(&format!("/sessions?limit={}", "9".repeat(1000)));
        let logged = LoggedTarget::of(&long.parts, sessions).to_string();
        let full = 16 + 1000;
        assert_eq!(
            logged,
            format!(
                "{}...(+{} bytes)",
                &format!("/sessions?limit={}", "9".repeat(1000))[..LOGGED_TARGET_MAX],
                full - LOGGED_TARGET_MAX
            )
        );
        // A two-byte character across the cap is cut before it, not in it.
        let path = format!("/{}é", "a".repeat(LOGGED_TARGET_MAX - 2));
        let target = LoggedTarget {
            path: &path,
            query: LoggedQuery {
                raw: "",
                shown: &[],
            },
        }
        .to_string();
        assert_eq!(
            target,
            format!("/{}...(+2 bytes)", "a".repeat(LOGGED_TARGET_MAX - 2))
        );
    }

    /// A log sink for one test.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Sink {
        fn write(&mut self, d: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(d);
            Ok(d.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn logged(level: Level, line: &AccessLine<'_>) -> String {
        let sink = Sink::default();
        let out = sink.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(Level::INFO)
            .with_ansi(false)
            .without_time()
            .with_writer(move || out.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || write_access_line(level, line));
        String::from_utf8(sink.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn one_function_writes_answered_and_closed_early_lines_without_their_empty_fields() {
        let method = Method::GET;
        let answered = AccessLine {
            client: "192.168.1.5:40000".parse().unwrap(),
            device: Some("ha"),
            method: &method,
            path: &"/chargers",
            route: Some("chargers"),
            status: 200,
            upstream_status: Some(200),
            cache: Some("MISS"),
            duration_ms: None,
            note: None,
        };
        assert_eq!(
            logged(Level::INFO, &answered),
            " INFO joulo_gateway::access: client=192.168.1.5:40000 device=\"ha\" method=GET \
             path=/chargers route=\"chargers\" status=200 upstream_status=200 cache=\"MISS\"\n"
        );
        // At debug, below the subscriber's level: nothing.
        assert_eq!(logged(Level::DEBUG, &answered), "");
        let closed = AccessLine {
            device: None,
            route: None,
            status: 499,
            upstream_status: None,
            cache: None,
            note: Some("the device closed the connection before its answer"),
            ..answered
        };
        assert_eq!(
            logged(Level::INFO, &closed),
            " INFO joulo_gateway::access: the device closed the connection before its answer \
             client=192.168.1.5:40000 method=GET path=/chargers status=499\n"
        );
    }
}
