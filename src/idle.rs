//! The idle timeout on a served connection: closed once no byte has moved,
//! either way, for `server.idle_timeout`, at the cost of a flag per read or
//! write rather than a timer reset.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// Closes a connection on which no byte has moved, either way, for
/// `idle_timeout`: an idle keep-alive connection, or a client that stalls
/// mid-request.
///
/// Reads and writes only set a flag; a timer ticks every quarter of the timeout
/// and the connection is closed after five ticks in a row with nothing moving, so
/// between `idle_timeout` and 1.25 x `idle_timeout` after its last byte. Resetting
/// a deadline on every read and write instead costs a clock read and a timer-wheel
/// update each time, measured at about 5% of a cached answer's CPU.
pub(crate) struct IdleTimeout<I> {
    /// The connection.
    inner: I,
    /// A quarter of the timeout.
    tick: Duration,
    /// The next tick.
    deadline: Pin<Box<Sleep>>,
    /// Whether a byte moved since the last tick.
    active: bool,
    /// Ticks in a row with nothing moving.
    idle_ticks: u32,
    /// The waker the pending tick last registered: while the task's waker is
    /// the same and the tick has not fired, the tick need not be polled again.
    registered: Option<Waker>,
}

/// Ticks per timeout; one more than this in a row closes the connection.
const IDLE_TICKS: u32 = 4;

impl<I> IdleTimeout<I> {
    /// `inner`, closed after `timeout` with nothing moving.
    pub(crate) fn new(inner: I, timeout: Duration) -> Self {
        let tick = timeout / IDLE_TICKS;
        IdleTimeout {
            inner,
            tick,
            deadline: Box::pin(tokio::time::sleep(tick)),
            active: false,
            idle_ticks: 0,
            registered: None,
        }
    }

    /// Called when the connection has nothing to do: whether it has been idle
    /// too long. Otherwise the next tick is registered to wake the task.
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        // Polling a tick that is still pending costs a timer-entry visit on every
        // pause between requests; checking that it has not fired is one load.
        if !self.deadline.is_elapsed()
            && self
                .registered
                .as_ref()
                .is_some_and(|waker| waker.will_wake(cx.waker()))
        {
            return false;
        }
        while self.deadline.as_mut().poll(cx).is_ready() {
            if std::mem::take(&mut self.active) {
                self.idle_ticks = 0;
            } else {
                self.idle_ticks += 1;
                if self.idle_ticks > IDLE_TICKS {
                    return true;
                }
            }
            // From now, not from the missed deadline: a task that was busy for
            // several ticks must not count them all as idle at once.
            let next = tokio::time::Instant::now() + self.tick;
            self.deadline.as_mut().reset(next);
        }
        if !self
            .registered
            .as_ref()
            .is_some_and(|waker| waker.will_wake(cx.waker()))
        {
            self.registered = Some(cx.waker().clone());
        }
        false
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
                this.active |= buf.filled().len() > before;
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
                this.active |= n > 0;
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::time::Instant;

    const TIMEOUT: Duration = Duration::from_secs(60);

    #[tokio::test(start_paused = true)]
    async fn a_busy_connection_stays_and_an_idle_one_goes_within_a_quarter_more() {
        let (mut client, server) = tokio::io::duplex(64);
        let reader = tokio::spawn(async move {
            let mut server = IdleTimeout::new(server, TIMEOUT);
            let mut buf = [0u8; 8];
            loop {
                match server.read(&mut buf).await {
                    Ok(0) => return Err("closed by the client"),
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::TimedOut => return Ok(Instant::now()),
                    Err(_) => return Err("other error"),
                }
            }
        });
        // A byte every 50 s for ten minutes: never idle for the timeout.
        for _ in 0..12 {
            tokio::time::sleep(Duration::from_secs(50)).await;
            client.write_all(b"x").await.unwrap();
        }
        let last_byte = Instant::now();
        assert!(!reader.is_finished(), "closed while bytes were moving");
        let closed_at = reader.await.unwrap().expect("closed for idleness");
        let idle = closed_at - last_byte;
        assert!(
            idle >= TIMEOUT && idle <= TIMEOUT + TIMEOUT / 4,
            "closed after {idle:?} idle"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn writes_count_as_activity() {
        let (mut client, server) = tokio::io::duplex(1024);
        let (mut read_half, mut write_half) = tokio::io::split(IdleTimeout::new(server, TIMEOUT));
        // The server waits to read all along, as hyper does between requests,
        // while it sends a long answer slowly.
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 8];
            let err = read_half.read(&mut buf).await.unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::TimedOut);
            Instant::now()
        });
        let drain = tokio::spawn(async move {
            let mut buf = [0u8; 64];
            while client.read(&mut buf).await.is_ok_and(|n| n > 0) {}
        });
        for _ in 0..12 {
            tokio::time::sleep(Duration::from_secs(50)).await;
            write_half.write_all(b"y").await.unwrap();
        }
        let last_byte = Instant::now();
        assert!(!reader.is_finished(), "closed while the server was writing");
        let idle = reader.await.unwrap() - last_byte;
        assert!(
            idle >= TIMEOUT && idle <= TIMEOUT + TIMEOUT / 4,
            "closed after {idle:?} idle"
        );
        drop(write_half);
        drain.abort();
    }
}
