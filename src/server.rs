//! The listener: accepts connections, serves HTTP/1.1 and HTTP/2 (cleartext) with
//! bounded header reads, keeps the token fresh, and drains in-flight requests on
//! shutdown within the grace period.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
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
/// gateway runs.
pub async fn run(
    listener: TcpListener,
    config: &Config,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()>,
) {
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let watcher = tokio::spawn(state.tokens.clone().watch(
        config.upstream.token_poll_interval,
        async move {
            let _ = stop_rx.wait_for(|stop| *stop).await;
        },
    ));

    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.server.header_timeout);
    builder.http2().timer(TokioTimer::new());

    let graceful = GracefulShutdown::new();
    if let Ok(addr) = listener.local_addr() {
        info!(addr = %addr, upstream = %config.upstream.base_url, "listening");
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
        let connection = builder
            .serve_connection(TokioIo::new(stream), {
                let state = state.clone();
                service_fn(move |request| {
                    let state = state.clone();
                    async move { Ok::<_, Infallible>(proxy::handle(&state, client, request).await) }
                })
            })
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                // A device going away mid-request is routine, not a gateway fault.
                debug!(client = %client, error = %e, "connection ended with an error");
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
    let _ = watcher.await;
}
