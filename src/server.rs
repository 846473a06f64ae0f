//! The listener: accepts connections, serves HTTP/1.1 and HTTP/2 in clear text or
//! over the LAN certificate, with bounded header reads and TLS handshakes, keeps
//! the token and certificate fresh, and drains in-flight requests on shutdown
//! within the grace period.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::rt::{Read, Write};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::time::Sleep;
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::proxy::{self, AppState};

/// Pause after a failed `accept` (such as EMFILE) so the loop does not spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);

/// Serves the gateway on `listener` until `shutdown` resolves, then stops
/// accepting and gives in-flight requests up to `server.shutdown_grace`.
///
/// `state.tokens` should already hold a token (see
/// [`crate::token::TokenSource::reload`]); it is kept current for as long as the
/// gateway runs, and so is the LAN certificate when HTTPS is on.
pub async fn run(
    listener: TcpListener,
    config: &Config,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()>,
) {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut stop_rx = stop_rx.clone();
        async move {
            let _ = stop_rx.wait_for(|stop| *stop).await;
        }
    };
    let interval = config.upstream.token_poll_interval;
    let mut watchers = vec![tokio::spawn(
        state.tokens.clone().watch(interval, stopped()),
    )];
    if let Some(tls) = &state.lan_tls {
        watchers.push(tokio::spawn(tls.clone().watch(interval, stopped())));
    }

    let limits = &config.server;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        // hyper's own cut-off (a bare 431) sits above the configured size, so the
        // handler answers the usual case with a JSON 431.
        .max_buf_size((2 * limits.max_header_size).max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.h2_max_streams)
        .max_header_list_size(u32::try_from(2 * limits.max_header_size).unwrap_or(u32::MAX));
    let handshake_timeout = limits.tls_handshake_timeout;
    let idle_timeout = limits.idle_timeout;
    let connection_slots = Arc::new(Semaphore::new(limits.max_connections));

    let graceful = GracefulShutdown::new();
    if let Ok(addr) = listener.local_addr() {
        info!(
            addr = %addr,
            https = state.lan_tls.is_some(),
            upstream = %config.upstream.base_url,
            "listening"
        );
    }
    tokio::pin!(shutdown);
    loop {
        // At the connection limit, stop accepting: further clients wait in the
        // kernel's backlog instead of costing memory here.
        let slot = tokio::select! {
            slot = connection_slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
            () = &mut shutdown => break,
        };
        let (stream, client) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let stream = IdleTimeout::new(stream, idle_timeout);
        let builder = builder.clone();
        let state = state.clone();
        let watcher = graceful.watcher();
        let acceptor = state.lan_tls.as_ref().map(|tls| tls.acceptor());
        tokio::spawn(async move {
            let _slot = slot;
            let Some(acceptor) = acceptor else {
                return serve(builder, TokioIo::new(stream), state, client, watcher).await;
            };
            // The handshake runs here, in the connection's own task and under a
            // bound, so a slow or silent client never holds up the accept loop.
            match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => serve(builder, TokioIo::new(tls), state, client, watcher).await,
                Ok(Err(e)) => debug!(client = %client, error = %e, "TLS handshake failed"),
                Err(_) => debug!(client = %client, "TLS handshake timed out"),
            }
        });
    }

    drop(listener);
    info!(
        in_flight = graceful.count(),
        grace = ?config.server.shutdown_grace,
        "shutting down: no new connections"
    );
    tokio::select! {
        () = graceful.shutdown() => info!("all connections drained"),
        () = tokio::time::sleep(config.server.shutdown_grace) => {
            warn!("grace period over; closing the remaining connections");
        }
    }
    let _ = stop_tx.send(true);
    for watcher in watchers {
        let _ = watcher.await;
    }
}

/// Serves one connection until it closes or shutdown finishes it.
async fn serve<I>(
    builder: auto::Builder<TokioExecutor>,
    io: I,
    state: Arc<AppState>,
    client: SocketAddr,
    watcher: Watcher,
) where
    I: Read + Write + Unpin + Send + 'static,
{
    let service = service_fn(move |request| {
        let state = state.clone();
        async move { Ok::<_, Infallible>(proxy::handle(&state, client, request).await) }
    });
    if let Err(e) = watcher.watch(builder.serve_connection(io, service)).await {
        // A device going away mid-request is routine, not a gateway fault.
        debug!(client = %client, error = %e, "connection ended with an error");
    }
}

/// Closes a connection on which no byte has moved, either way, for `timeout`:
/// an idle keep-alive connection, or a client that stalls mid-request.
struct IdleTimeout<I> {
    /// The connection.
    inner: I,
    /// How long it may sit with no bytes moving.
    timeout: Duration,
    /// When it is closed unless a byte moves first.
    deadline: Pin<Box<Sleep>>,
}

impl<I> IdleTimeout<I> {
    fn new(inner: I, timeout: Duration) -> Self {
        IdleTimeout {
            inner,
            timeout,
            deadline: Box::pin(tokio::time::sleep(timeout)),
        }
    }

    fn touch(&mut self) {
        let next = tokio::time::Instant::now() + self.timeout;
        self.deadline.as_mut().reset(next);
    }

    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        self.deadline.as_mut().poll(cx).is_ready()
    }
}

fn idle_error() -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        "connection idle past server.idle_timeout",
    )
}

impl<I: AsyncRead + Unpin> AsyncRead for IdleTimeout<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(result) => {
                if buf.filled().len() > before {
                    this.touch();
                }
                Poll::Ready(result)
            }
            Poll::Pending if this.expired(cx) => Poll::Ready(Err(idle_error())),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for IdleTimeout<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write(cx, data) {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    this.touch();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending if this.expired(cx) => Poll::Ready(Err(idle_error())),
            Poll::Pending => Poll::Pending,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
