//! Keep-alive connections to Joulo, one set per event loop: HTTP/1.1
//! connections handed out one call at a time, or one HTTP/2 connection shared
//! by every call, as TLS (ALPN) and `[upstream] http2` decide. The gateway has
//! one upstream, so this is a list, not the generic client's pool keyed by
//! scheme and host (whose hashing, locking and boxing cost about a fifth of a
//! pass-through request; bench/RESULTS.md). HTTP/2 calls go to the `h2` crate
//! directly: hyper's HTTP/2 client adds a channel to the connection's task and
//! a task spawned per call to await each answer, about a tenth of a
//! pass-through request, for nothing this one-upstream client needs.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, Uri};
use http_body_util::Full;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::client::conn::http1;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::{Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use tokio::time::Instant;
use tower_service::Service;
use tracing::debug;

use crate::config::Http2;
use crate::respond::BoxError;
use crate::sync::lock_unpoisoned;

/// An upstream request's body: none for a GET, the checked JSON for a POST.
pub(crate) type RequestBody = Option<Bytes>;

/// The limits hyper's HTTP/2 client set, kept when calls moved to `h2`
/// directly: the windows bound what one answer (2 MiB) and the connection
/// (5 MiB) may have buffered before it is read, the header list bound what one
/// answer's head may hold.
const H2_STREAM_WINDOW: u32 = 2 * 1024 * 1024;
const H2_CONNECTION_WINDOW: u32 = 5 * 1024 * 1024;
const H2_MAX_FRAME: u32 = 16 * 1024;
const H2_MAX_HEADER_LIST: u32 = 16 * 1024;
const H2_MAX_SEND_BUFFER: usize = 1024 * 1024;
const H2_INITIAL_MAX_SEND_STREAMS: usize = 100;
const H2_MAX_LOCAL_ERROR_RESETS: usize = 1024;
/// The most an HTTP/1.1 answer's head (status line and headers) may hold, as
/// [`H2_MAX_HEADER_LIST`] bounds an HTTP/2 one: hyper's own bound is its read
/// buffer, about 400 KB. A longer head fails the call (502) and closes that
/// connection.
const H1_MAX_HEAD: usize = 16 * 1024;

/// How long an idle connection is kept for the next call; an older one is
/// closed when next looked at rather than by a timer, so an idle gateway has
/// nothing to wake up for. It also bounds how long a connection a home
/// router's NAT has silently forgotten can be picked for a call.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// One event loop's connections to the upstream.
pub(crate) struct Connections {
    /// DNS, TCP (connect timeout, no Nagle) and verified TLS with ALPN.
    connector: HttpsConnector<HttpConnector>,
    /// The upstream's scheme and authority, what the connector dials.
    origin: Uri,
    /// Its authority as an HTTP/1.1 `Host` header (HTTP/2 sends `:authority`
    /// from the request's URI).
    host: HeaderValue,
    /// Which HTTP version to speak.
    mode: Http2,
    /// HTTP/1.1 connections, oldest first; one may still be busy with the
    /// answer it was last given (it is skipped until it is ready again).
    idle: Mutex<VecDeque<Idle>>,
    /// The HTTP/2 connection every call shares, once one is open.
    shared: Mutex<Option<SharedH2>>,
    /// Held while a connection that may turn out HTTP/2 is opened, so calls
    /// arriving meanwhile wait for it instead of each opening their own.
    opening: tokio::sync::Mutex<()>,
    /// Set once the upstream chose HTTP/1.1 (`auto`): calls then open
    /// connections side by side, one each.
    spoke_h1: AtomicBool,
    /// Numbers the HTTP/2 connections, so a call takes out of use only the
    /// one it failed on, never a newer one opened meanwhile.
    h2_opened: AtomicU64,
}

impl std::fmt::Debug for Connections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connections")
            .field("origin", &self.origin)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

/// An HTTP/1.1 connection and when it was last handed out.
struct Idle {
    sender: http1::SendRequest<Full<Bytes>>,
    since: Instant,
}

/// The open HTTP/2 connection: a handle to start calls on, and whether its
/// task has ended (`h2`'s handle cannot tell until a call fails on it).
struct SharedH2 {
    sender: h2::client::SendRequest<Bytes>,
    ended: Arc<AtomicBool>,
    /// Its number (from 1).
    id: u64,
    /// When a call last went out on it.
    since: Instant,
}

impl Connections {
    /// Connections to `base_url`'s scheme and authority through `connector`.
    pub(crate) fn new(
        connector: HttpsConnector<HttpConnector>,
        base_url: &Uri,
        mode: Http2,
    ) -> Connections {
        let authority = base_url
            .authority()
            .expect("base_url is validated to have a host");
        let origin = Uri::builder()
            .scheme(
                base_url
                    .scheme()
                    .expect("base_url is validated https")
                    .clone(),
            )
            .authority(authority.clone())
            .path_and_query("/")
            .build()
            .expect("a validated base_url's origin is a URI");
        Connections {
            connector,
            host: HeaderValue::from_str(authority.as_str())
                .expect("an authority is a valid header value"),
            origin,
            mode,
            idle: Mutex::new(VecDeque::new()),
            shared: Mutex::new(None),
            opening: tokio::sync::Mutex::new(()),
            spoke_h1: AtomicBool::new(false),
            h2_opened: AtomicU64::new(0),
        }
    }

    /// Sends `request` (its URI absolute, as HTTP/2 wants it) on a ready
    /// connection, opening one if none is, and returns the answer's head. The
    /// body streams on that connection, which takes another call only once the
    /// body has been read.
    ///
    /// The caller gives up at `deadline` by dropping this future. An HTTP/2
    /// connection a call is dropped on unanswered at or after its deadline is
    /// taken out of use: one that went silent (a wedged upstream, a NAT that
    /// dropped it) would otherwise take every later call with it, and TCP
    /// notices a black hole only after minutes, a wedged peer never. Calls
    /// already on it run to their own deadlines. A device that hangs up
    /// earlier says nothing about the connection, which stays.
    pub(crate) async fn send(
        &self,
        request: Request<RequestBody>,
        deadline: Instant,
    ) -> Result<Response<UpstreamBody>, BoxError> {
        let sender = if let Some((sender, id)) = self.shared_h2() {
            Sender::H2(sender, id)
        } else if let Some(sender) = self.ready_h1() {
            Sender::H1(sender)
        } else {
            // Boxed: connecting (DNS, TCP, TLS, handshake) is a large future,
            // and inline it would make every call's future as large, copied
            // whenever a call's future moves.
            Box::pin(self.open()).await?
        };
        // One await per protocol, so the call's future holds one of each.
        match sender {
            Sender::H2(sender, id) => {
                let mut waiting = Unanswered {
                    connections: self,
                    id,
                    deadline,
                    armed: true,
                };
                let answered = send_h2(sender, request).await;
                waiting.armed = false;
                match answered {
                    Ok(answer) => Ok(answer),
                    Err(e) => {
                        self.forget_h2(id);
                        Err(e.into())
                    }
                }
            }
            Sender::H1(mut sender) => {
                let answer = sender.send_request(
                    self.origin_form(request)
                        .map(|body| Full::new(body.unwrap_or_default())),
                );
                // Back at once: it is skipped until its answer has been read.
                self.put_back(sender);
                Ok(answer.await?.map(UpstreamBody::H1))
            }
        }
    }

    /// Takes HTTP/2 connection `id` out of use after a call on it failed (a
    /// GOAWAY, a reset connection) or had no answer in time, so the next call
    /// opens a new one rather than meeting it again. A newer connection in
    /// its place stays.
    fn forget_h2(&self, id: u64) {
        let mut shared = lock_unpoisoned(&self.shared);
        if shared.as_ref().is_some_and(|open| open.id == id) {
            *shared = None;
        }
    }

    /// `request` as HTTP/1.1 sends it: the path and query as its target, the
    /// authority as `Host`.
    fn origin_form(&self, mut request: Request<RequestBody>) -> Request<RequestBody> {
        if let Some(target) = request.uri().path_and_query().cloned() {
            *request.uri_mut() = Uri::from(target);
        }
        request
            .headers_mut()
            .insert(header::HOST, self.host.clone());
        request
    }

    /// The shared HTTP/2 connection and its number, while it is open and has
    /// not been idle longer than [`IDLE_TIMEOUT`].
    fn shared_h2(&self) -> Option<(h2::client::SendRequest<Bytes>, u64)> {
        let mut shared = lock_unpoisoned(&self.shared);
        let now = Instant::now();
        match &mut *shared {
            Some(open)
                if !open.ended.load(Ordering::Relaxed)
                    && now.duration_since(open.since) <= IDLE_TIMEOUT =>
            {
                open.since = now;
                Some((open.sender.clone(), open.id))
            }
            Some(_) => {
                *shared = None;
                None
            }
            None => None,
        }
    }

    /// The oldest HTTP/1.1 connection ready for a call. Closed and expired
    /// ones are dropped on the way; busy ones keep their place.
    fn ready_h1(&self) -> Option<http1::SendRequest<Full<Bytes>>> {
        let mut idle = lock_unpoisoned(&self.idle);
        let now = Instant::now();
        for _ in 0..idle.len() {
            let entry = idle.pop_front()?;
            if entry.sender.is_closed() || now.duration_since(entry.since) > IDLE_TIMEOUT {
                continue;
            }
            if entry.sender.is_ready() {
                return Some(entry.sender);
            }
            idle.push_back(entry);
        }
        None
    }

    fn put_back(&self, sender: http1::SendRequest<Full<Bytes>>) {
        lock_unpoisoned(&self.idle).push_back(Idle {
            sender,
            since: Instant::now(),
        });
    }

    /// A connection for one call: the shared HTTP/2 one if another call opened
    /// it meanwhile, else a new one. Only one that may be HTTP/2 is opened at a
    /// time: fifty calls arriving together would otherwise open fifty.
    async fn open(&self) -> Result<Sender, BoxError> {
        if self.mode == Http2::Never || self.spoke_h1.load(Ordering::Relaxed) {
            return self.connect().await;
        }
        let _opening = self.opening.lock().await;
        if let Some((sender, id)) = self.shared_h2() {
            return Ok(Sender::H2(sender, id));
        }
        let sender = self.connect().await?;
        if matches!(sender, Sender::H1(_)) {
            self.spoke_h1.store(true, Ordering::Relaxed);
        }
        Ok(sender)
    }

    /// Opens a connection: TCP, TLS with the upstream's name verified, then
    /// HTTP/2 or HTTP/1.1. Its task runs on this event loop.
    async fn connect(&self) -> Result<Sender, BoxError> {
        let mut connector = self.connector.clone();
        std::future::poll_fn(|cx| connector.poll_ready(cx)).await?;
        let io = connector.call(self.origin.clone()).await?;
        let h2 = match self.mode {
            Http2::Always => true,
            Http2::Never => false,
            Http2::Auto => io.connected().is_negotiated_h2(),
        };
        if h2 {
            let (sender, connection) = h2::client::Builder::new()
                .initial_window_size(H2_STREAM_WINDOW)
                .initial_connection_window_size(H2_CONNECTION_WINDOW)
                .max_frame_size(H2_MAX_FRAME)
                .max_header_list_size(H2_MAX_HEADER_LIST)
                .max_send_buffer_size(H2_MAX_SEND_BUFFER)
                .initial_max_send_streams(H2_INITIAL_MAX_SEND_STREAMS)
                .max_local_error_reset_streams(Some(H2_MAX_LOCAL_ERROR_RESETS))
                .enable_push(false)
                .handshake(TokioIo::new(io))
                .await?;
            let ended = Arc::new(AtomicBool::new(false));
            let ends = ended.clone();
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    debug!(error = %e, "upstream HTTP/2 connection ended");
                }
                ends.store(true, Ordering::Relaxed);
            });
            let id = self.h2_opened.fetch_add(1, Ordering::Relaxed) + 1;
            *lock_unpoisoned(&self.shared) = Some(SharedH2 {
                sender: sender.clone(),
                ended,
                id,
                since: Instant::now(),
            });
            Ok(Sender::H2(sender, id))
        } else {
            let (sender, connection) = http1::Builder::new()
                .max_header_size(H1_MAX_HEAD)
                .handshake(io)
                .await?;
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    debug!(error = %e, "upstream HTTP/1.1 connection ended");
                }
            });
            Ok(Sender::H1(sender))
        }
    }
}

/// Takes HTTP/2 connection `id` out of use if the call waiting on it is
/// dropped, still armed, at or after its deadline: the caller gave up on it.
struct Unanswered<'a> {
    connections: &'a Connections,
    id: u64,
    deadline: Instant,
    armed: bool,
}

impl Drop for Unanswered<'_> {
    fn drop(&mut self) {
        if self.armed && Instant::now() >= self.deadline {
            self.connections.forget_h2(self.id);
        }
    }
}

/// A newly opened connection.
enum Sender {
    H1(http1::SendRequest<Full<Bytes>>),
    H2(h2::client::SendRequest<Bytes>, u64),
}

/// One call on the shared HTTP/2 connection: the head, with a `Content-Length`
/// for a body as hyper would set it, then the body in one frame, then the
/// answer's head. Dropping the future resets the stream (`CANCEL`).
async fn send_h2(
    sender: h2::client::SendRequest<Bytes>,
    request: Request<RequestBody>,
) -> Result<Response<UpstreamBody>, h2::Error> {
    let mut sender = sender.ready().await?;
    let (mut head, body) = request.into_parts();
    if let Some(body) = &body {
        head.headers
            .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    }
    let body = body.filter(|body| !body.is_empty());
    let (answer, mut stream) =
        sender.send_request(Request::from_parts(head, ()), body.is_none())?;
    if let Some(body) = body {
        stream.send_data(body, true)?;
    }
    Ok(answer.await?.map(UpstreamBody::H2))
}

/// An answer's body from either protocol. Over HTTP/2 each chunk's
/// flow-control window is given back as it is handed on, so the upstream sends
/// more only as the device takes it; `h2` itself resets a stream whose data
/// overruns or falls short of its `Content-Length`, which the answer's head
/// keeps for the device.
pub(crate) enum UpstreamBody {
    H1(Incoming),
    H2(h2::RecvStream),
}

impl hyper::body::Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            UpstreamBody::H1(body) => Pin::new(body)
                .poll_frame(cx)
                .map(|frame| frame.map(|frame| frame.map_err(Into::into))),
            UpstreamBody::H2(body) => {
                if let Some(data) = ready!(body.poll_data(cx)) {
                    let data = data?;
                    let _ = body.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                match ready!(body.poll_trailers(cx)) {
                    Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
                    Ok(None) => Poll::Ready(None),
                    Err(e) => Poll::Ready(Some(Err(e.into()))),
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::H1(body) => body.is_end_stream(),
            UpstreamBody::H2(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::H1(body) => body.size_hint(),
            UpstreamBody::H2(_) => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A call's future stays small: the rare connect is boxed out of it.
    #[test]
    fn a_call_does_not_carry_the_connect_future() {
        let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .wrap_connector(HttpConnector::new());
        let connections = Connections::new(
            https,
            &"https://api.joulo.nl/functions/v1/api".parse().unwrap(),
            Http2::Auto,
        );
        let call = connections.send(Request::new(None), Instant::now());
        let size = std::mem::size_of_val(&call);
        // 1,320 bytes on 2026-11-30; connecting inline would add about 3.9 KB.
        let connect = std::mem::size_of_val(&connections.open());
        assert!(connect > 3 * 1024, "connecting is {connect} bytes");
        assert!(size <= 1536, "a call's future is {size} bytes");
    }
}
