//! The listener: accepts connections, serves HTTP/1.1 and HTTP/2 in clear text or
//! over the LAN certificate, with bounded header reads and TLS handshakes, keeps
//! the token and certificate fresh, and drains in-flight requests on shutdown
//! within the grace period.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::rt::{Read, Write};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::net::TcpListener;
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

    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.server.header_timeout);
    builder.http2().timer(TokioTimer::new());
    let handshake_timeout = config.server.tls_handshake_timeout;

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
        let builder = builder.clone();
        let state = state.clone();
        let watcher = graceful.watcher();
        let acceptor = state.lan_tls.as_ref().map(|tls| tls.acceptor());
        tokio::spawn(async move {
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
