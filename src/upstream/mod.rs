//! The way out to Joulo: one pooled HTTPS client built at start (verified rustls
//! with the web roots plus `ca_file`, SNI, HTTP/2 or HTTP/1.1 by ALPN) that sends
//! the requests [`request`] builds, and the bounded wait for an answer.

pub(crate) mod pool;
pub(crate) mod request;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Frame;
use hyper_util::client::legacy::connect::HttpConnector;
use tokio::time::Instant;
use tracing::{debug, warn};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::budget::UpstreamBudget;
use crate::config::{Http2, TrustRoots, UpstreamConfig};
use crate::metrics::RouteSeries;
use crate::respond::{Body, GatewayError};
use crate::routes::RouteId;
use crate::sync::lock_unpoisoned;
use crate::token::{TokenEcho, TokenEchoed};
use crate::upstream::pool::{Connections, RequestBody, UpstreamBody};
use crate::upstream::request::UpstreamRequest;

/// Why the upstream client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// rustls refused the TLS settings.
    #[error("cannot set up TLS to the upstream: {0}")]
    Tls(#[from] rustls::Error),
    /// `roots = "system"` (or "both") but the system store holds nothing.
    #[error(
        "upstream.roots: the system certificate store is empty or unreadable \
         (install ca-certificates, or set roots = \"webpki\")"
    )]
    NoSystemRoots,
}

/// The Joulo API as the gateway reaches it.
#[derive(Debug, Clone)]
pub(crate) struct Upstream {
    /// Keep-alive connections per event loop (see [`crate::server`]), so an
    /// upstream connection is driven on the loop whose requests use it and a
    /// call never waits for another thread to be woken.
    connections: Arc<[Connections]>,
    /// The last time Joulo could not be reached or answered with an error,
    /// and what happened, for `/status`.
    last_error: Arc<std::sync::Mutex<Option<UpstreamFailure>>>,
    /// Bound on a whole upstream call: the response head, and for a buffered
    /// answer its body; for a streamed one, the longest pause between chunks.
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

/// When Joulo last failed, and how.
#[derive(Debug, Clone)]
pub(crate) struct UpstreamFailure {
    /// What happened, in the gateway's own words or Joulo's status.
    pub what: String,
    /// When.
    pub at: std::time::SystemTime,
}

/// Metric labels for an upstream call. Never a query value or a header.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    /// The route's config name.
    pub route: &'static str,
    /// The upstream's status, or 0 when none came (timeout, connection or TLS error).
    pub status: u16,
}

/// Metric labels naming a route.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    /// The route's config name.
    pub route: &'static str,
}

impl Upstream {
    /// Builds the clients once, at start, one for each of `event_loops`.
    pub(crate) fn new(cfg: &UpstreamConfig, event_loops: usize) -> Result<Upstream, UpstreamError> {
        let mut roots = rustls::RootCertStore::empty();
        if matches!(cfg.roots, TrustRoots::Webpki | TrustRoots::Both) {
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        }
        if matches!(cfg.roots, TrustRoots::System | TrustRoots::Both) {
            let found = rustls_native_certs::load_native_certs();
            // Unparsable entries in a bundle are skipped, as every TLS
            // client does; an empty store is refused below.
            let (added, _ignored) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(UpstreamError::NoSystemRoots);
            }
        }
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
            .https_only();
        let https = match cfg.http2 {
            Http2::Auto => https.enable_http1().enable_http2().wrap_connector(tcp),
            Http2::Always => https.enable_http2().wrap_connector(tcp),
            Http2::Never => https.enable_http1().wrap_connector(tcp),
        };
        Ok(Upstream {
            connections: (0..event_loops.max(1))
                .map(|_| Connections::new(https.clone(), &cfg.base_url, cfg.http2))
                .collect(),
            timeout: cfg.timeout,
            calls: Family::default(),
            latency: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.005, 2.0, 12))
            }),
            ok_calls: Arc::default(),
            route_latency: Arc::default(),
            last_error: Arc::default(),
        })
    }

    /// How long an upstream call may take, body included.
    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Sends a built request with the token's `authorization` and waits until
    /// `deadline` at most for the response head. Redirects are not followed: a
    /// 3xx is handed back as it is.
    ///
    /// A GET that fails before any answer (a connection the upstream closed or
    /// shut down with an HTTP/2 GOAWAY while it was being used) is sent once more
    /// on another connection, within the same deadline: a GET is idempotent, and
    /// a refused stream was never processed. A request with a body is not.
    /// The retry is a call like any other: it takes a slot from `budget` (the
    /// caller took one for the first) and is counted; with no slot it is not
    /// made and the first failure is the answer.
    pub(crate) async fn send(
        &self,
        request: &UpstreamRequest,
        authorization: HeaderValue,
        deadline: Instant,
        budget: &UpstreamBudget,
    ) -> Result<Response<UpstreamBody>, GatewayError> {
        let started = Instant::now();
        let route = request.route;
        let connections = &self.connections[crate::event_loop::current() % self.connections.len()];
        let exchange = async {
            let first = connections.send(hyper_request(request, authorization.clone()), deadline);
            if request.body.is_some() {
                return first.await;
            }
            match first.await {
                // An answer came, malformed (a head past 16 KiB, garbage):
                // asking again would spend a second slot on the same answer.
                Err(e) if answered_malformed(&*e) => Err(e),
                Err(e) => {
                    // The first attempt reached, or may have reached, Joulo:
                    // a call with no answer.
                    self.count_call(route, 0);
                    if budget.acquire().await.is_err() {
                        debug!(route = route.config_name(), error = %e, "upstream call failed before an answer; no budget left to retry");
                        return Err(e);
                    }
                    debug!(route = route.config_name(), error = %e, "upstream call failed before an answer; retrying once");
                    connections
                        .send(hyper_request(request, authorization), deadline)
                        .await
                }
                answered => answered,
            }
        };
        let result = match tokio::time::timeout_at(deadline, exchange).await {
            // A 1xx as the final answer (hyper hands a 101 back): nothing a
            // device asked for, and nothing a gateway can pass on.
            Ok(Ok(response)) if response.status().is_informational() => {
                Err(GatewayError::UpstreamUnreachable(
                    format!(
                        "the upstream answered {} instead of a final status",
                        response.status()
                    )
                    .into(),
                ))
            }
            // A transfer coding beside chunked (`gzip, chunked`) is undone
            // by no one: hyper only removes the chunking, and the coded bytes
            // would reach devices and the cache unseen by the token check.
            Ok(Ok(response)) if !only_chunked(response.headers()) => {
                Err(GatewayError::UpstreamEncoding)
            }
            Ok(Ok(response)) => Ok(response),
            Ok(Err(e)) => Err(GatewayError::UpstreamUnreachable(e)),
            Err(_) => Err(GatewayError::UpstreamTimeout),
        };
        let name = route.config_name();
        let status = result.as_ref().map_or(0, |r| r.status().as_u16());
        self.count_call(route, status);
        match &result {
            Err(e) => self.record_failure(e.to_string()),
            Ok(r)
                if r.status().is_server_error()
                    || matches!(r.status().as_u16(), 401 | 403 | 429) =>
            {
                self.record_failure(format!("Joulo answered {}", r.status()));
            }
            Ok(_) => {}
        }
        self.route_latency
            .get(route, || {
                self.latency
                    .get_or_create(&RouteLabels { route: name })
                    .clone()
            })
            .observe(started.elapsed().as_secs_f64());
        result
    }

    /// Counts one call on `route` that Joulo answered with `status` (0: none).
    fn count_call(&self, route: RouteId, status: u16) {
        let calls = |status| {
            self.calls
                .get_or_create(&CallLabels {
                    route: route.config_name(),
                    status,
                })
                .clone()
        };
        match status {
            200 => self.ok_calls.get(route, || calls(200)).inc(),
            _ => calls(status).inc(),
        };
    }

    /// Records that Joulo failed now, in `what` (never a URL or a header).
    pub(crate) fn record_failure(&self, what: String) {
        *lock_unpoisoned(&self.last_error) = Some(UpstreamFailure {
            what,
            at: std::time::SystemTime::now(),
        });
    }

    /// The last failure, if there was one.
    pub(crate) fn last_failure(&self) -> Option<UpstreamFailure> {
        lock_unpoisoned(&self.last_error).clone()
    }

    /// Adds the upstream call counters and latency histogram to `registry`.
    pub(crate) fn register_metrics(&self, registry: &mut Registry) {
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

/// The hyper request for a built one: its method, URI and headers, the token,
/// and any body framed by its own length.
fn hyper_request(request: &UpstreamRequest, authorization: HeaderValue) -> Request<RequestBody> {
    let mut built = Request::new(request.body.clone());
    *built.method_mut() = request.method();
    *built.uri_mut() = request.uri.clone();
    let headers = built.headers_mut();
    headers.reserve(request.headers.len() + 1);
    headers.clone_from(&request.headers);
    headers.insert(header::AUTHORIZATION, authorization);
    built
}

/// An answer's body as plain bytes: a `gzip` or `deflate` coding (sent although
/// the gateway asked for `identity`) is undone, within `limit` bytes, so a
/// cache entry has one representation every device can read and the body can
/// be searched for an echoed token. The coding header goes with it. Any other
/// coding, and more than one (two fields, or a list such as `gzip, gzip`),
/// cannot be served to everyone: an error.
pub(crate) fn decode_content(
    headers: &mut HeaderMap,
    body: Bytes,
    limit: usize,
) -> Result<Bytes, GatewayError> {
    use std::io::Read;
    let Some(coding) = content_coding(headers)? else {
        return Ok(body);
    };
    let mut decoded = Vec::new();
    // Bounded: a small compressed answer can expand enormously.
    let read = match coding.as_str() {
        "" | "identity" => {
            headers.remove(header::CONTENT_ENCODING);
            return Ok(body);
        }
        "gzip" | "x-gzip" => flate2::read::MultiGzDecoder::new(&body[..])
            .take(limit as u64 + 1)
            .read_to_end(&mut decoded),
        // HTTP's "deflate" is the zlib format (RFC 9110 section 8.4.1.2).
        "deflate" => flate2::read::ZlibDecoder::new(&body[..])
            .take(limit as u64 + 1)
            .read_to_end(&mut decoded),
        _ => return Err(GatewayError::UpstreamEncoding),
    };
    if read.is_err() || decoded.len() > limit {
        return Err(GatewayError::UpstreamEncoding);
    }
    headers.remove(header::CONTENT_ENCODING);
    Ok(Bytes::from(decoded))
}

/// Whether a failed call failed on an answer hyper could not parse, rather
/// than on a connection that went away before any answer.
fn answered_malformed(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(error);
    while let Some(e) = source {
        if let Some(e) = e.downcast_ref::<hyper::Error>() {
            return e.is_parse() || e.is_parse_too_large() || e.is_parse_status();
        }
        // HTTP/2: a stream the gateway's own h2 reset because the answer
        // broke the rules (a header list past 16 KiB, a malformed frame)
        // was answered; one the upstream reset or dropped with its
        // connection (GOAWAY, I/O) was not, and is worth another try.
        if let Some(e) = e.downcast_ref::<h2::Error>() {
            return e.is_library();
        }
        source = e.source();
    }
    false
}

/// Whether an answer's `Transfer-Encoding`, if any, is chunked framing alone.
fn only_chunked(headers: &HeaderMap) -> bool {
    let mut fields = headers.get_all(http::header::TRANSFER_ENCODING).iter();
    match (fields.next(), fields.next()) {
        (None, _) => true,
        (Some(value), None) => value
            .to_str()
            .is_ok_and(|v| v.trim().eq_ignore_ascii_case("chunked")),
        (Some(_), Some(_)) => false,
    }
}

/// The one content coding an answer declares, lower-cased, if it declares
/// one. Two `Content-Encoding` fields, or a list of codings in one, are
/// refused: undoing only the first would leave coded bytes labelled as JSON.
pub(crate) fn content_coding(headers: &HeaderMap) -> Result<Option<String>, GatewayError> {
    let mut fields = headers.get_all(header::CONTENT_ENCODING).iter();
    let Some(field) = fields.next() else {
        return Ok(None);
    };
    if fields.next().is_some() {
        return Err(GatewayError::UpstreamEncoding);
    }
    let coding = field
        .to_str()
        .map_err(|_| GatewayError::UpstreamEncoding)?
        .trim();
    if coding.contains(',') {
        return Err(GatewayError::UpstreamEncoding);
    }
    Ok(Some(coding.to_ascii_lowercase()))
}

/// A streamed answer's body, checked as it passes: a bound on the pause
/// between chunks (an upstream that sends a head and then goes silent does not
/// hold the device's connection for ever), and a watch for the token the
/// request carried, which cuts the body before any byte of it is passed on.
/// The device sees a body cut short. Nothing is handed to the device before the
/// first chunk has come and been checked: a failure before it is still a clean
/// error answer (see [`StreamedBody::start`]).
pub(crate) struct StreamedBody {
    /// The upstream's body.
    inner: UpstreamBody,
    /// The longest pause allowed between chunks.
    idle: Duration,
    /// When the current pause runs out.
    timer: std::pin::Pin<Box<tokio::time::Sleep>>,
    /// The watch for an echoed token.
    echo: TokenEcho,
    /// The route, for the log line when a token is found.
    route: RouteId,
    /// A frame read ahead: the first, read before the head is handed on, or
    /// trailers waiting behind the held-back end of the body.
    ready: Option<Frame<Bytes>>,
    /// Nothing more comes from the upstream: it ended, or the body was cut.
    ended: bool,
}

/// Why a streamed body was cut.
#[derive(Debug, thiserror::Error)]
#[error("the upstream's body stalled past upstream.timeout")]
struct BodyStalled;

impl StreamedBody {
    /// Watches `body`, an answer to a request sent with the token `echo`
    /// looks for, pausing at most `idle` between chunks.
    pub(crate) fn new(body: UpstreamBody, idle: Duration, echo: TokenEcho, route: RouteId) -> Self {
        StreamedBody {
            inner: body,
            idle,
            timer: Box::pin(tokio::time::sleep(idle)),
            echo,
            route,
            ready: None,
            ended: false,
        }
    }

    /// Waits (at most the idle bound) for the first chunk to come and pass
    /// the checks, and only then gives the body to be served: a body that
    /// fails before its first byte (cut, reset, stalled, or holding the token)
    /// is the error the device gets, as JSON, rather than a head with no body.
    pub(crate) async fn start(mut self) -> Result<Body, GatewayError> {
        use hyper::body::Body as _;
        let first = std::future::poll_fn(|cx| std::pin::Pin::new(&mut self).poll_frame(cx)).await;
        match first {
            None => {}
            Some(Ok(frame)) => self.ready = Some(frame),
            Some(Err(e)) if e.is::<TokenEchoed>() => return Err(GatewayError::UpstreamTokenEcho),
            Some(Err(e)) if e.is::<BodyStalled>() => return Err(GatewayError::UpstreamTimeout),
            Some(Err(e)) => return Err(GatewayError::UpstreamBody(e)),
        }
        Ok(self.boxed())
    }
}

impl hyper::body::Body for StreamedBody {
    type Data = Bytes;
    type Error = crate::respond::BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        use std::task::Poll;
        let this = self.get_mut();
        loop {
            if let Some(frame) = this.ready.take() {
                return Poll::Ready(Some(Ok(frame)));
            }
            if this.ended {
                return Poll::Ready(None);
            }
            let frame = match std::pin::Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => frame,
                Poll::Ready(Some(Err(e))) => {
                    // What was held back may be the token's start: dropped.
                    this.ended = true;
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(None) => {
                    this.ended = true;
                    let tail = this.echo.finish();
                    if tail.is_empty() {
                        return Poll::Ready(None);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(tail))));
                }
                Poll::Pending => {
                    return match this.timer.as_mut().poll(cx) {
                        Poll::Ready(()) => {
                            this.ended = true;
                            Poll::Ready(Some(Err(BodyStalled.into())))
                        }
                        Poll::Pending => Poll::Pending,
                    };
                }
            };
            let next = Instant::now() + this.idle;
            this.timer.as_mut().reset(next);
            let passed = match frame.into_data() {
                Ok(data) => this.echo.pass(data).map(Frame::data),
                // Trailers end the body and are never passed on, as a cached
                // answer has none: nothing of Joulo's reaches a device that
                // the gateway did not choose to send.
                Err(_trailers) => {
                    this.ended = true;
                    Ok(Frame::data(this.echo.finish()))
                }
            };
            match passed {
                Ok(frame) if frame.data_ref().is_some_and(Bytes::is_empty) => continue,
                Ok(frame) => return Poll::Ready(Some(Ok(frame))),
                Err(echoed) => {
                    this.ended = true;
                    this.ready = None;
                    warn!(
                        route = this.route.config_name(),
                        "Joulo's answer held the gateway's token: the streamed body was cut"
                    );
                    return Poll::Ready(Some(Err(echoed.into())));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ready.is_none()
            && (self.ended || (self.inner.is_end_stream() && !self.echo.is_holding()))
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        // What is read ahead or held back is still to come for the device.
        let pending = self.echo.held_len() as u64
            + self
                .ready
                .as_ref()
                .and_then(Frame::data_ref)
                .map_or(0, |data| data.len() as u64);
        let inner = if self.ended {
            hyper::body::SizeHint::with_exact(0)
        } else {
            self.inner.size_hint()
        };
        let mut hint = hyper::body::SizeHint::new();
        hint.set_lower(inner.lower() + pending);
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper + pending);
        }
        hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn gzip_and_deflate_are_undone_within_the_bound_and_others_refused() {
        let json = br#"{"chargers":[]}"#;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(json).unwrap();
        let gz = Bytes::from(gz.finish().unwrap());
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        let plain = decode_content(&mut headers, gz.clone(), 1024).unwrap();
        assert_eq!(&plain[..], json);
        assert!(headers.get(header::CONTENT_ENCODING).is_none());

        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(json).unwrap();
        headers.insert(
            header::CONTENT_ENCODING,
            HeaderValue::from_static("deflate"),
        );
        let plain = decode_content(&mut headers, z.finish().unwrap().into(), 1024).unwrap();
        assert_eq!(&plain[..], json);

        // A bomb: 1 MiB of zeros, compressed to about a kilobyte.
        let mut bomb = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        bomb.write_all(&vec![0u8; 1 << 20]).unwrap();
        headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        assert!(decode_content(&mut headers, bomb.finish().unwrap().into(), 4096).is_err());

        headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("br"));
        assert!(decode_content(&mut headers, Bytes::from_static(b"x"), 1024).is_err());

        // Coded twice, as two fields or as a list: never half undone.
        headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        headers.append(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        assert!(decode_content(&mut headers, gz.clone(), 1024).is_err());
        for list in ["gzip, gzip", "gzip,identity", "identity, gzip"] {
            headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static(list));
            assert!(
                decode_content(&mut headers, gz.clone(), 1024).is_err(),
                "{list}"
            );
        }
    }
}
