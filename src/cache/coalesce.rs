//! Coalescing: identical concurrent requests for a cacheable route share one
//! upstream call, run in its own task, and each gets its outcome; a request
//! arriving while the call is under way joins it instead of making another.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use tokio::time::Instant;

use super::{Buffered, CacheKey, Hasher, ResponseCache};
use crate::respond::GatewayError;
use crate::sync::lock_unpoisoned;

/// The result of one upstream call, shared by every request that waited on it.
#[derive(Debug)]
pub enum Outcome {
    /// The upstream answered (any status).
    Answer(Buffered),
    /// The body was too large to buffer: each waiter fetches on its own, streaming.
    TooLarge,
    /// No answer: the error every waiter reports (or covers with a stale copy).
    Failed(GatewayError),
}

/// An upstream call under way: where its outcome is published, and the
/// deadline every request waiting on it keeps.
#[derive(Debug)]
pub(super) struct Flight {
    /// Publishes the outcome once.
    outcome: watch::Sender<Option<Arc<Outcome>>>,
    /// When waiting on it gives up, for the first request and every later one.
    deadline: Instant,
}

/// The calls under way, by key; shared with each call's [`Landing`].
pub(super) type Flights = Arc<Mutex<HashMap<CacheKey, Flight, Hasher>>>;

impl ResponseCache {
    /// Runs one upstream call for all concurrent requests with the same `key`
    /// and gives each its outcome, or a timeout at `deadline` (the first
    /// request's: a later one waits no longer than it). Only a request that
    /// starts a call is `admit`ted (its device's share is spent); one joining
    /// a call under way spends nothing. The call runs in its own task, so a
    /// device that hangs up does not cancel the call the others wait on.
    pub async fn coalesce<F>(
        &self,
        key: CacheKey,
        deadline: Instant,
        admit: impl FnOnce() -> Result<(), GatewayError>,
        fetch: impl FnOnce() -> F,
    ) -> Arc<Outcome>
    where
        F: Future<Output = Outcome> + Send + 'static,
    {
        let (mut receiver, deadline) = {
            let mut flights = lock_unpoisoned(&self.flights);
            if let Some(flight) = flights.get(&key) {
                self.stats.coalesced.inc();
                (flight.outcome.subscribe(), flight.deadline)
            } else {
                if let Err(e) = admit() {
                    return Arc::new(Outcome::Failed(e));
                }
                self.stats.misses.inc();
                let (sender, receiver) = watch::channel(None);
                flights.insert(
                    key.clone(),
                    Flight {
                        outcome: sender.clone(),
                        deadline,
                    },
                );
                let landing = Landing {
                    flights: self.flights.clone(),
                    key,
                };
                let fetch = fetch();
                tokio::spawn(async move {
                    // The call itself keeps the deadline too, so a flight never
                    // outlives what its waiters were promised.
                    let outcome = tokio::time::timeout_at(deadline, fetch)
                        .await
                        .unwrap_or(Outcome::Failed(GatewayError::UpstreamTimeout));
                    // Leave the table before publishing, so a request arriving now
                    // sees the stored copy or starts a new call, never a finished one.
                    drop(landing);
                    sender.send_replace(Some(Arc::new(outcome)));
                });
                (receiver, deadline)
            }
        };
        match tokio::time::timeout_at(deadline, receiver.wait_for(Option::is_some)).await {
            Ok(Ok(outcome)) => outcome.clone().expect("waited for Some"),
            // The fetch task panicked: report it rather than hang.
            Ok(Err(_)) => Arc::new(Outcome::Failed(GatewayError::Internal)),
            Err(_) => Arc::new(Outcome::Failed(GatewayError::UpstreamTimeout)),
        }
    }

    /// Requests currently waiting on the upstream call for `key`.
    pub fn waiting(&self, key: &CacheKey) -> usize {
        lock_unpoisoned(&self.flights)
            .get(key)
            .map_or(0, |f| f.outcome.receiver_count())
    }
}

/// Removes a flight from the table when its task ends, even by panic.
struct Landing {
    /// The table to leave.
    flights: Flights,
    /// The flight's key in it.
    key: CacheKey,
}

impl Drop for Landing {
    fn drop(&mut self) {
        lock_unpoisoned(&self.flights).remove(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{answer, cache, far, key};
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    #[tokio::test]
    async fn fifty_concurrent_requests_share_one_fetch() {
        let c = Arc::new(cache(8, 1024));
        let calls = Arc::new(AtomicU64::new(0));
        let gate = Arc::new(tokio::sync::Notify::new());
        let mut waiters = Vec::new();
        for _ in 0..50 {
            let c = c.clone();
            let calls = calls.clone();
            let gate = gate.clone();
            waiters.push(tokio::spawn(async move {
                c.coalesce(
                    key("q"),
                    far(),
                    || Ok(()),
                    || async move {
                        calls.fetch_add(1, Ordering::Relaxed);
                        gate.notified().await;
                        Outcome::Answer(answer(200, &[], "{\"n\":1}"))
                    },
                )
                .await
            }));
        }
        while c.waiting(&key("q")) < 50 {
            tokio::task::yield_now().await;
        }
        gate.notify_one();
        for w in waiters {
            let outcome = w.await.unwrap();
            let Outcome::Answer(a) = &*outcome else {
                panic!("answer expected")
            };
            assert_eq!(a.body, "{\"n\":1}");
        }
        assert_eq!(calls.load(Ordering::Relaxed), 1);
        assert_eq!(c.stats.misses.get(), 1);
        assert_eq!(c.stats.coalesced.get(), 49);
        assert_eq!(c.waiting(&key("q")), 0, "the flight has landed");
    }

    #[tokio::test]
    async fn followers_of_a_failed_fetch_get_its_failure_and_a_panic_does_not_hang() {
        let c = Arc::new(cache(8, 1024));
        let failed = c
            .coalesce(
                key("f"),
                far(),
                || Ok(()),
                || async { Outcome::Failed(GatewayError::UpstreamTimeout) },
            )
            .await;
        assert!(matches!(
            &*failed,
            Outcome::Failed(GatewayError::UpstreamTimeout)
        ));
        let panicked = c
            .coalesce(
                key("p"),
                far(),
                || Ok(()),
                || async { panic!("fetch task failure") },
            )
            .await;
        assert!(matches!(
            &*panicked,
            Outcome::Failed(GatewayError::Internal)
        ));
        assert_eq!(c.waiting(&key("p")), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_call_times_out_for_the_first_and_every_later_waiter_alike() {
        let c = Arc::new(cache(8, 1024));
        let deadline = Instant::now() + Duration::from_secs(10);
        let first = tokio::spawn({
            let c = c.clone();
            async move {
                c.coalesce(key("s"), deadline, || Ok(()), std::future::pending)
                    .await
            }
        });
        tokio::time::sleep(Duration::from_secs(6)).await;
        // A later request with a later deadline of its own keeps the flight's.
        let later_deadline = Instant::now() + Duration::from_secs(10);
        let later = c
            .coalesce(
                key("s"),
                later_deadline,
                || panic!("joins, no admission"),
                || async { unreachable!("joins the call under way") },
            )
            .await;
        assert_eq!(Instant::now(), deadline, "gave up with the first request");
        assert!(matches!(
            &*later,
            Outcome::Failed(GatewayError::UpstreamTimeout)
        ));
        let first = first.await.unwrap();
        assert!(matches!(
            &*first,
            Outcome::Failed(GatewayError::UpstreamTimeout)
        ));
        assert_eq!(c.waiting(&key("s")), 0, "the stalled call was dropped");
        // A refused admission starts no call.
        let refused = c
            .coalesce(
                key("r"),
                far(),
                || Err(GatewayError::Internal),
                || async { unreachable!("not admitted") },
            )
            .await;
        assert!(matches!(&*refused, Outcome::Failed(GatewayError::Internal)));
        assert_eq!(c.stats.misses.get(), 1);
    }
}
