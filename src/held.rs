//! What a connection's answers may hold: the bytes of answers not yet handed
//! to the connection, per connection and in total, and how long an HTTP/2
//! stream may go without progress. A client that never reads (an HTTP/2
//! receive window of 0, kept open by PINGs) would otherwise hold every answer
//! it asked for, and the memory behind them, for as long as it stays.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use hyper::body::{Body as _, Frame, SizeHint};
use tokio::time::{Instant, Sleep};
use tracing::debug;

use crate::respond::{Body, BoxError};

/// What an answer is charged beyond its body: its head and the per-request
/// state hyper and h2 keep for it (about 5 KiB per HTTP/2 stream, measured
/// with `bench/hostile`).
const ANSWER_OVERHEAD: usize = 4 * 1024;

/// What a body of unknown length (an answer streamed from Joulo) is charged:
/// it flows through, bounded by the flow-control windows, not held whole.
const STREAMED_CHARGE: usize = 64 * 1024;

/// The bytes held by answers that are ready but not yet handed to their
/// connections, across the gateway.
#[derive(Debug)]
pub(crate) struct HeldAnswers {
    /// Held now.
    held: AtomicUsize,
    /// `server.max_answer_memory`.
    limit: usize,
    /// `server.max_answer_memory_per_connection`.
    per_connection: usize,
}

impl HeldAnswers {
    /// Limits from `[server]`: `limit` bytes in total, `per_connection` on
    /// any one connection.
    pub(crate) fn new(limit: usize, per_connection: usize) -> Arc<HeldAnswers> {
        Arc::new(HeldAnswers {
            held: AtomicUsize::new(0),
            limit,
            per_connection,
        })
    }

    /// Bytes held now.
    pub(crate) fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// Whether the total is past its limit.
    fn over_limit(&self) -> bool {
        self.held() > self.limit
    }

    /// A new connection's account.
    pub(crate) fn connection(self: &Arc<Self>) -> ConnectionAnswers {
        ConnectionAnswers(Arc::new(ConnectionHeld {
            held: AtomicUsize::new(0),
            total: self.clone(),
        }))
    }
}

/// One connection's answers not yet handed over; a clone shares the account.
#[derive(Debug, Clone)]
pub(crate) struct ConnectionAnswers(Arc<ConnectionHeld>);

#[derive(Debug)]
struct ConnectionHeld {
    /// Held on this connection.
    held: AtomicUsize,
    /// Held across the gateway.
    total: Arc<HeldAnswers>,
}

impl ConnectionAnswers {
    /// Charges `response` until its body is done or dropped.
    ///
    /// A connection holding no answer may always take one, whatever the
    /// total: otherwise a client that fills the total would lock every other
    /// device out, and one device asks for one answer at a time over HTTP/1.1.
    /// Past that, an answer that would go past either limit is dropped for a
    /// short 503, which is charged too (its few bytes must not be free to
    /// pile up). So the gateway holds at most `max_answer_memory`, plus one
    /// answer per connection, plus a 503 per HTTP/2 stream.
    pub(crate) fn charge(&self, response: Response<Body>) -> Response<Body> {
        let account = &self.0;
        let amount = charge_for(response.body().size_hint());
        let connection = account.held.load(Ordering::Relaxed);
        let total = account.total.held();
        let response = if connection > 0
            && (connection + amount > account.total.per_connection
                || total + amount > account.total.limit)
        {
            debug!(
                connection_bytes = connection,
                total_bytes = total,
                "answers held past server.max_answer_memory; answered 503"
            );
            busy()
        } else {
            response
        };
        let amount = charge_for(response.body().size_hint());
        account.held.fetch_add(amount, Ordering::Relaxed);
        account.total.held.fetch_add(amount, Ordering::Relaxed);
        response.map(|body| {
            Body::new(Charged {
                body,
                amount,
                account: self.clone(),
            })
        })
    }
}

impl ConnectionAnswers {
    /// Holds [`ANSWER_OVERHEAD`] for a request whose answer is not ready yet
    /// (a wait for its allowance, for Joulo, a held 429): its stream's state
    /// costs memory meanwhile, and the stream executor must see that the
    /// connection holds something before it starts the next stream.
    pub(crate) fn reserve(&self) -> Reservation {
        let account = &self.0;
        account.held.fetch_add(ANSWER_OVERHEAD, Ordering::Relaxed);
        account
            .total
            .held
            .fetch_add(ANSWER_OVERHEAD, Ordering::Relaxed);
        Reservation(self.clone())
    }
}

/// [`ANSWER_OVERHEAD`] held for an answer under way; given back on drop.
#[derive(Debug)]
pub(crate) struct Reservation(ConnectionAnswers);

impl Reservation {
    /// Gives the reservation back and charges the answer in its place.
    pub(crate) fn charge(self, response: Response<Body>) -> Response<Body> {
        let answers = self.0.clone();
        drop(self);
        answers.charge(response)
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let account = &(self.0).0;
        account.held.fetch_sub(ANSWER_OVERHEAD, Ordering::Relaxed);
        account
            .total
            .held
            .fetch_sub(ANSWER_OVERHEAD, Ordering::Relaxed);
    }
}

/// The bytes an answer is charged.
fn charge_for(hint: SizeHint) -> usize {
    let body = hint
        .exact()
        .and_then(|n| usize::try_from(n).ok())
        .unwrap_or(STREAMED_CHARGE);
    body + ANSWER_OVERHEAD
}

/// The 503 an answer past the limits becomes.
fn busy() -> Response<Body> {
    let mut response = crate::respond::json_error(StatusCode::SERVICE_UNAVAILABLE, BUSY_MESSAGE);
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

/// Why a busy answer is refused.
const BUSY_MESSAGE: &str = "The gateway holds too many unsent answers; try again in a second";

/// A body whose charge is given back when it ends or is dropped.
struct Charged {
    /// The answer's body.
    body: Body,
    /// What it was charged.
    amount: usize,
    /// Where.
    account: ConnectionAnswers,
}

impl Drop for Charged {
    fn drop(&mut self) {
        let account = &self.account.0;
        account.held.fetch_sub(self.amount, Ordering::Relaxed);
        account.total.held.fetch_sub(self.amount, Ordering::Relaxed);
    }
}

impl hyper::body::Body for Charged {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Runs one connection's HTTP/2 streams, each in a task of its own as
/// hyper's own executor does, but resets a stream that goes `stall` without
/// being woken: one whose answer cannot move (a send window held at 0) or
/// whose client is gone without saying so. Every wait on a request's way
/// (allowance, Joulo, a streamed body) is bounded well below
/// `server.idle_timeout`, the usual `stall`, so a stream that is still
/// working is always woken in time. Past `server.max_answer_memory`, a new
/// stream on a connection already holding an answer is reset at once: a
/// stream's own state costs memory, whatever its answer.
#[derive(Debug, Clone)]
pub(crate) struct StreamExecutor {
    /// How long a stream may go without being woken.
    stall: Duration,
    /// The connection's held answers.
    answers: ConnectionAnswers,
}

impl StreamExecutor {
    /// Streams of the connection `answers` belongs to; those stalled for
    /// `stall` are reset.
    pub(crate) fn new(stall: Duration, answers: ConnectionAnswers) -> StreamExecutor {
        StreamExecutor { stall, answers }
    }
}

impl<F> hyper::rt::Executor<F> for StreamExecutor
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, stream: F) {
        let account = &self.answers.0;
        if account.held.load(Ordering::Relaxed) > 0 && account.total.over_limit() {
            // Dropping the stream resets it (RST_STREAM): it holds no
            // state of its own, and its answer's memory goes now.
            debug!("answers held past server.max_answer_memory; HTTP/2 stream reset");
            return;
        }
        let now = Instant::now();
        drop(tokio::spawn(Watched {
            stream: Box::pin(stream),
            last: now,
            stall: self.stall,
            deadline: Box::pin(tokio::time::sleep_until(now + self.stall)),
        }));
    }
}

/// A stream that ends when it has not been polled for `stall`.
struct Watched<F> {
    /// The stream: hyper's task for one request and its answer.
    stream: Pin<Box<F>>,
    /// When it was last polled.
    last: Instant,
    /// `StreamExecutor::stall`.
    stall: Duration,
    /// When it is next checked.
    deadline: Pin<Box<Sleep>>,
}

impl<F: Future<Output = ()>> Future for Watched<F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        let now = Instant::now();
        if this.deadline.is_elapsed() && now.duration_since(this.last) >= this.stall {
            debug!("HTTP/2 stream made no progress within server.idle_timeout; reset");
            return Poll::Ready(());
        }
        if this.stream.as_mut().poll(cx).is_ready() {
            return Poll::Ready(());
        }
        this.last = now;
        if this.deadline.is_elapsed() {
            this.deadline.as_mut().reset(now + this.stall);
        }
        // Registers the timer; it has not fired, or was just moved on.
        let _ = this.deadline.as_mut().poll(cx);
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::rt::Executor as _;

    fn answer(len: usize) -> Response<Body> {
        Response::new(crate::respond::full(Bytes::from(vec![b'x'; len])))
    }

    #[test]
    fn answers_are_charged_until_dropped_and_past_the_limits_become_503() {
        let total = HeldAnswers::new(40 * 1024, 24 * 1024);
        let first = total.connection();
        let held = first.charge(answer(10_000));
        assert_eq!(held.status(), StatusCode::OK);
        assert_eq!(total.held(), 10_000 + ANSWER_OVERHEAD);
        // Past the connection's limit.
        let refused = first.charge(answer(10_000));
        assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(refused.headers()[header::RETRY_AFTER], "1");
        // Another connection's first answer, then its second is past the total.
        let second = total.connection();
        let first_of_second = second.charge(answer(10_000));
        assert_eq!(first_of_second.status(), StatusCode::OK);
        let past_total = second.charge(answer(5_000));
        assert_eq!(past_total.status(), StatusCode::SERVICE_UNAVAILABLE);
        // A third connection's first answer is served all the same.
        let third = total.connection().charge(answer(10_000));
        assert_eq!(third.status(), StatusCode::OK);
        drop((held, refused, first_of_second, past_total, third));
        assert_eq!(total.held(), 0, "every charge is given back");
    }

    #[test]
    fn an_answer_under_way_holds_its_overhead_until_charged_or_dropped() {
        let total = HeldAnswers::new(1 << 20, 1 << 20);
        let account = total.connection();
        let waiting = account.reserve();
        assert_eq!(total.held(), ANSWER_OVERHEAD);
        let answer = waiting.charge(answer(100));
        assert_eq!(
            total.held(),
            ANSWER_OVERHEAD + 100,
            "charged once, not twice"
        );
        drop(answer);
        drop(account.reserve());
        assert_eq!(total.held(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_never_woken_is_dropped_after_the_stall_and_a_busy_one_is_not() {
        let total = HeldAnswers::new(1 << 20, 1 << 20);
        let executor = StreamExecutor::new(Duration::from_secs(60), total.connection());
        let (stuck_tx, stuck_rx) = tokio::sync::oneshot::channel::<()>();
        executor.execute(async move {
            // Holds the sender until dropped; never woken.
            let _held = stuck_tx;
            std::future::pending::<()>().await
        });
        let (busy_tx, busy_rx) = tokio::sync::oneshot::channel::<()>();
        executor.execute(async move {
            let _held = busy_tx;
            // Woken every 50 s for 5 minutes.
            for _ in 0..6 {
                tokio::time::sleep(Duration::from_secs(50)).await;
            }
            std::future::pending::<()>().await
        });
        let started = Instant::now();
        let _ = stuck_rx.await;
        let stuck_for = started.elapsed();
        assert!(
            stuck_for >= Duration::from_secs(60) && stuck_for < Duration::from_secs(61),
            "{stuck_for:?}"
        );
        let _ = busy_rx.await;
        let busy_for = started.elapsed();
        assert!(
            busy_for >= Duration::from_secs(360) && busy_for < Duration::from_secs(361),
            "dropped 60 s after its last wake-up at 300 s: {busy_for:?}"
        );
    }

    #[tokio::test]
    async fn past_the_total_only_a_connection_holding_nothing_starts_a_stream() {
        let total = HeldAnswers::new(1024, 1 << 20);
        let busy = total.connection();
        let held = busy.charge(answer(0));
        assert!(total.over_limit(), "one answer's overhead is past 1 KiB");
        let started = |account: ConnectionAnswers| {
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            StreamExecutor::new(Duration::from_secs(60), account).execute(async move {
                let _ = tx.send(());
            });
            rx
        };
        assert!(
            started(busy.clone()).await.is_err(),
            "dropped unstarted on the connection holding an answer"
        );
        let idle = total.connection();
        assert!(
            started(idle.clone()).await.is_ok(),
            "another device's first"
        );
        // Its first answer is served too, whatever the total.
        assert_eq!(idle.charge(answer(100)).status(), StatusCode::OK);
        drop(held);
        assert!(!total.over_limit());
    }
}
