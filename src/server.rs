//! The listener: refuses addresses outside `[access] allow` and past their
//! connection quota as soon as they connect, shares the rest out to its event
//! loops, serves HTTP/1.1 and HTTP/2 in clear text or over the LAN certificate,
//! with bounded header reads and TLS handshakes, and drains in-flight
//! requests on shutdown within the grace period.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http::Response;
use hyper::rt::{Read, Write};
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::admission::{Admission, EVICTION_GRACE, Refusal, Refuser, Ticket};
use crate::config::Config;
use crate::event_loop::EventLoops;
use crate::held::{ConnectionAnswers, HeldAnswers, Reservation, StreamExecutor};
use crate::idle::IdleTimeout;
use crate::proxy::{self, Handled};
use crate::refusals::RefusalKind;
use crate::respond::Body;
use crate::state::AppState;

/// Pause after a failed `accept` (such as EMFILE) so the loop does not spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);

/// Serves the gateway on `listener` until `shutdown` resolves, then stops
/// accepting and gives in-flight requests up to `server.shutdown_grace`. The
/// token and certificate watchers are [`crate::gateway`]'s, which calls this.
pub(crate) async fn run(
    listener: TcpListener,
    config: &Config,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()>,
) {
    let limits = &config.server;
    let held = HeldAnswers::new(
        limits.max_answer_memory,
        limits.max_answer_memory_per_connection,
    );
    let handshake_timeout = limits.tls_handshake_timeout;
    let header_timeout = limits.header_timeout;
    let idle_timeout = limits.idle_timeout;
    let admission = Admission::new(limits.max_connections, limits.max_connections_per_ip);
    let refuser = Refuser::new(state.lan_tls.is_some(), admission.most_open());
    let mut loops = match EventLoops::start(limits.worker_threads) {
        Ok(loops) => loops,
        Err(e) => {
            // Serving on fewer threads beats not serving at all.
            warn!(error = %e, "cannot start the extra event loops; serving on one thread");
            EventLoops::start(1).expect("one loop starts no thread")
        }
    };

    // Tells every connection to finish when the server stops.
    let (closing_tx, closing_rx) = tokio::sync::watch::channel(false);
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
        // Refused before anything is spent on them: no TLS handshake, no
        // connection slot, and the loop goes straight on to the next client.
        if state
            .policy
            .load()
            .access
            .check_network(client.ip())
            .is_err()
        {
            refuser.refuse(stream, client, Refusal::Network);
            continue;
        }
        // Past the connection limit a newcomer is still served while a
        // connection of the busiest address makes room (see `admission`), so
        // no set of held connections locks other devices out, and the loop
        // never waits: past the spare places it is refused at once.
        let ticket = match admission.admit(client.ip(), || {
            state.refusals_by_address.is_flooding(client.ip())
        }) {
            Ok(ticket) => ticket,
            Err(why) => {
                // Turned away while slots are being freed, again and again,
                // an address is flooding: then it is held, not closed at
                // once, and its reconnecting costs one accept a second.
                if why == Refusal::Full {
                    state.refusals_by_address.note_turned_away(client.ip());
                }
                refuser.refuse(stream, client, why);
                continue;
            }
        };
        let accepted = Instant::now();
        let _ = stream.set_nodelay(true);
        let answers = held.connection();
        let connection = Connection {
            builder: http_builder(
                limits,
                StreamExecutor::new(limits.idle_timeout, answers.clone()),
            ),
            state: state.clone(),
            client,
            closing: closing_rx.clone(),
            ticket,
            answers,
            accepted,
            header_timeout,
            handshake_timeout,
            idle_timeout,
        };
        let (index, other) = loops.next_loop();
        debug!(client = %client, event_loop = index, "connection accepted");
        match other {
            None => drop(tokio::spawn(connection.serve(stream))),
            Some(other) => match stream.into_std() {
                // Registered with the other loop's reactor from inside it.
                Ok(stream) => drop(other.spawn(async move {
                    match tokio::net::TcpStream::from_std(stream) {
                        Ok(stream) => connection.serve(stream).await,
                        Err(e) => {
                            debug!(client = %client, error = %e, "cannot hand over connection")
                        }
                    }
                })),
                Err(e) => debug!(client = %client, error = %e, "cannot hand over connection"),
            },
        }
    }

    drop(listener);
    let _ = closing_tx.send(true);
    info!(
        in_flight = admission.open(),
        grace = ?config.server.shutdown_grace,
        "shutting down: no new connections"
    );
    tokio::select! {
        () = admission.drained() => info!("all connections drained"),
        () = tokio::time::sleep(config.server.shutdown_grace) => {
            warn!("grace period over; closing the remaining connections");
        }
    }
    loops.stop().await;
}

/// HTTP/1.1 and HTTP/2 settings for one connection, its streams run by
/// `executor`.
fn http_builder(
    limits: &crate::config::ServerConfig,
    executor: StreamExecutor,
) -> auto::Builder<StreamExecutor> {
    let mut builder = auto::Builder::new(executor);
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
    builder
}

/// One accepted connection and what serving it needs.
struct Connection {
    /// HTTP/1.1 and HTTP/2 settings, and its streams' executor.
    builder: auto::Builder<StreamExecutor>,
    /// What requests are served with.
    state: Arc<AppState>,
    /// The peer, for the allowlist, per-device limits and logs.
    client: SocketAddr,
    /// Set when the server stops: the connection finishes gracefully.
    closing: tokio::sync::watch::Receiver<bool>,
    /// Held for the connection's life: its place under the connection
    /// limits, and the signal that asks it to make room.
    ticket: Ticket,
    /// What its answers not yet handed over hold.
    answers: ConnectionAnswers,
    /// When it was accepted: the first request head is due within
    /// `header_timeout` of this.
    accepted: Instant,
    /// `server.header_timeout`.
    header_timeout: Duration,
    /// `server.tls_handshake_timeout`.
    handshake_timeout: Duration,
    /// `server.idle_timeout`.
    idle_timeout: Duration,
}

impl Connection {
    /// Serves the connection until it closes or shutdown finishes it, on the
    /// event loop this is polled on. A connection on which no complete request
    /// head has arrived within `header_timeout` of its accept is closed: hyper's
    /// own header timer starts only once HTTP/1 is detected, so without this a
    /// client that sends nothing, or half an HTTP/2 preface, would be held
    /// until the idle timeout.
    ///
    /// Asked to make room for a newcomer, it finishes gracefully within
    /// [`EVICTION_GRACE`] or is dropped, in whatever state: mid-handshake,
    /// with HTTP/2 streams blocked on flow control, mid-body.
    async fn serve(self, stream: TcpStream) {
        let client = self.client;
        let deadline = self.accepted + self.header_timeout;
        let first_head = Arc::new(AtomicBool::new(false));
        let close = self.ticket.close_signal().clone();
        let state = self.state.clone();
        let serving = self.handshake_and_http(stream, first_head.clone());
        tokio::select! {
            served = until_first_head(serving, &first_head, deadline) => if !served {
                // Within the address's log budget, like any refusal: a
                // slowloris flood is seen, summarised past the budget.
                if state.refusals_by_address.may_log(client.ip(), RefusalKind::SlowHead) {
                    info!(
                        target: "joulo_gateway::access",
                        client = %client,
                        route = "none",
                        "connection closed: no request head within server.header_timeout"
                    );
                }
            },
            () = async {
                close.asked().await;
                // A connection that has sent no request has nothing to finish:
                // it goes at once. Given the grace, 600 addresses each holding
                // one slowloris head kept the spare places full, and a device
                // was refused (outside review).
                if close.is_headed() {
                    tokio::select! {
                        () = tokio::time::sleep(EVICTION_GRACE) => {}
                        () = close.dropped() => {}
                    }
                } else {
                    // Counted like a refusal: an address whose headless
                    // connections keep having to make room is flooding,
                    // and may not take another's place in turn.
                    state.refusals_by_address.note_turned_away(client.ip());
                }
            } => debug!(client = %client, "made to make room for a newcomer; dropped"),
        }
        crate::settle::connection_closed();
    }

    /// The TLS handshake, if the listener serves HTTPS, then HTTP.
    async fn handshake_and_http(self, stream: TcpStream, first_head: Arc<AtomicBool>) {
        let client = self.client;
        let stream = IdleTimeout::new(stream, self.idle_timeout);
        let Some(acceptor) = self.state.lan_tls.as_ref().map(|tls| tls.acceptor()) else {
            return self.http(TokioIo::new(stream), first_head).await;
        };
        // Boxed: the handshake and a TLS connection's state take several KiB,
        // and inline they would make every plain connection's task as large.
        Box::pin(self.tls_and_http(acceptor, stream, client, first_head)).await;
    }

    /// The TLS handshake, bounded, then HTTP over it. The handshake runs in
    /// the connection's own task, so a slow or silent client never holds up
    /// the accept loop.
    async fn tls_and_http(
        self,
        acceptor: tokio_rustls::TlsAcceptor,
        stream: IdleTimeout<TcpStream>,
        client: SocketAddr,
        first_head: Arc<AtomicBool>,
    ) {
        match tokio::time::timeout(self.handshake_timeout, acceptor.accept(stream)).await {
            Ok(Ok(tls)) => self.http(TokioIo::new(tls), first_head).await,
            Ok(Err(e)) => debug!(client = %client, error = %e, "TLS handshake failed"),
            Err(_) => debug!(client = %client, "TLS handshake timed out"),
        }
    }

    /// Serves HTTP on the connection until it closes or shutdown finishes it,
    /// setting `first_head` when the first request head has arrived.
    async fn http<I>(self, io: I, first_head: Arc<AtomicBool>)
    where
        I: Read + Write + Unpin + Send + 'static,
    {
        let Connection {
            builder,
            state,
            client,
            mut closing,
            // Kept until the connection ends.
            ticket,
            answers,
            ..
        } = self;
        let counters = state.clone();
        let signal = ticket.close_signal().clone();
        let service = service_fn(move |request| {
            first_head.store(true, Ordering::Relaxed);
            signal.mark_headed();
            ChargedAnswer::new(proxy::handle(&state, client, request), &answers)
        });
        let connection = builder.serve_connection(io, service);
        let mut connection = pin!(connection);
        let asked_to_finish = async {
            tokio::select! {
                _ = closing.wait_for(|closing| *closing) => {}
                () = ticket.close_signal().asked() => {}
            }
        };
        // hyper's graceful shutdown: an idle HTTP/1.1 connection closes now, a
        // request under way is answered first; HTTP/2 sends GOAWAY and finishes
        // its open streams.
        let result = tokio::select! {
            result = connection.as_mut() => result,
            () = asked_to_finish => {
                connection.as_mut().graceful_shutdown();
                connection.await
            }
        };
        if let Err(e) = result {
            match refused_by_parser(&*e) {
                // hyper answered it without the handler: the access log still
                // gets its line, with no path (none was parsed).
                Some((status, reason)) => {
                    counters.requests.count(None, "none", status);
                    // Within the address's log budget; past it, summarised.
                    if tracing::enabled!(target: "joulo_gateway::access", tracing::Level::INFO)
                        && counters
                            .refusals_by_address
                            .may_log(client.ip(), RefusalKind::Unparsable)
                    {
                        info!(
                            target: "joulo_gateway::access",
                            client = %client,
                            route = "none",
                            status,
                            reason,
                            "request refused by the HTTP parser"
                        );
                    }
                }
                // A device going away mid-request is routine, not a gateway fault.
                None => debug!(client = %client, error = %e, "connection ended with an error"),
            }
        }
    }
}

/// The status hyper answered a request it could not parse with, if that is
/// how the connection ended, and why.
fn refused_by_parser(error: &(dyn std::error::Error + 'static)) -> Option<(u16, &'static str)> {
    let mut source = Some(error);
    while let Some(e) = source {
        if let Some(e) = e.downcast_ref::<hyper::Error>() {
            return if e.is_parse_too_large() {
                Some((431, "request head too large"))
            } else if e.is_parse() {
                Some((400, "malformed request"))
            } else {
                None
            };
        }
        source = e.source();
    }
    None
}

/// A request's answer, charged to its connection's account once ready.
struct ChargedAnswer {
    /// The answer under way.
    handled: Handled,
    /// What it holds until it is ready, and is charged from; taken then.
    answers: Option<Reservation>,
}

impl ChargedAnswer {
    /// An answer ready at once is charged now, one under way holds its
    /// overhead meanwhile: both before hyper starts an HTTP/2 stream for it,
    /// so the stream executor sees what the connection holds (see
    /// [`StreamExecutor`]).
    fn new(handled: Handled, answers: &ConnectionAnswers) -> ChargedAnswer {
        match handled {
            Handled::Ready(Some(response)) => ChargedAnswer {
                handled: Handled::Ready(Some(answers.charge(response))),
                answers: None,
            },
            later => ChargedAnswer {
                handled: later,
                answers: Some(answers.reserve()),
            },
        }
    }
}

impl Future for ChargedAnswer {
    type Output = Result<Response<Body>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let Poll::Ready(Ok(response)) = Pin::new(&mut this.handled).poll(cx) else {
            return Poll::Pending;
        };
        Poll::Ready(Ok(match this.answers.take() {
            Some(reserved) => reserved.charge(response),
            None => response,
        }))
    }
}

/// Runs `serving` to its end, unless `first_head` is still unset at `deadline`:
/// then drops it, which closes the connection, and returns false (as when
/// `serving` ends by itself headless at or past the deadline). Once a head
/// has arrived the timer is dropped, so a busy connection never polls it.
async fn until_first_head(
    serving: impl Future<Output = ()>,
    first_head: &AtomicBool,
    deadline: Instant,
) -> bool {
    let mut serving = pin!(serving);
    let mut cutoff = pin!(Some(tokio::time::sleep_until(deadline)));
    std::future::poll_fn(|cx| {
        if serving.as_mut().poll(cx).is_ready() {
            // hyper's own header timer may end a dripping (slowloris) head
            // in the same tick: a connection that ended headless at the
            // deadline was cut for it too. One closed earlier just left.
            return Poll::Ready(first_head.load(Ordering::Relaxed) || Instant::now() < deadline);
        }
        if first_head.load(Ordering::Relaxed) {
            cutoff.set(None);
        }
        match cutoff.as_mut().as_pin_mut() {
            Some(sleep) => sleep.poll(cx).map(|()| false),
            None => Poll::Pending,
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    #[tokio::test(start_paused = true)]
    async fn a_headless_connection_that_hyper_ends_at_the_deadline_counts_as_cut() {
        let headless = AtomicBool::new(false);
        // hyper's header timer ends a dripping head at the same deadline.
        let deadline = Instant::now() + Duration::from_secs(10);
        let ended_by_hyper = tokio::time::sleep_until(deadline);
        assert!(!until_first_head(ended_by_hyper, &headless, deadline).await);
        // A client that connects and leaves without a request was not cut.
        let deadline = Instant::now() + Duration::from_secs(10);
        let left = tokio::time::sleep(Duration::from_secs(1));
        assert!(until_first_head(left, &headless, deadline).await);
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_goes_at_the_deadline_unless_a_head_arrived() {
        let deadline = Instant::now() + Duration::from_secs(10);
        let silent = AtomicBool::new(false);
        assert!(!until_first_head(std::future::pending(), &silent, deadline).await);
        assert_eq!(Instant::now(), deadline);

        let served = AtomicBool::new(false);
        let serving = async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            served.store(true, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_secs(60)).await;
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        assert!(until_first_head(serving, &served, deadline).await);
        assert_eq!(Instant::now(), deadline + Duration::from_secs(51));
    }
}
