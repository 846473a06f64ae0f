//! How the token's upstream budget is kept for every device at once: a GCRA
//! limiter on all calls that reach Joulo, a limiter per device, and a back-off
//! after Joulo answers 429, during which no call goes out at all.

use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::HashMapStateStore;
use governor::state::{InMemoryState, NotKeyed};
use governor::{NotUntil, Quota, RateLimiter};
use http::HeaderValue;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::time::Instant;

use crate::config::LimitsConfig;
use crate::respond::GatewayError;
use crate::sync::lock_unpoisoned;

/// Back-off after a 429 without a usable `Retry-After`; doubled on each repeat.
const BACKOFF_BASE: Duration = Duration::from_secs(60);
/// The longest back-off the gateway imposes on itself without being told.
const BACKOFF_MAX: Duration = Duration::from_secs(15 * 60);
/// The longest `Retry-After` believed; a larger one is a misconfiguration upstream.
const RETRY_AFTER_MAX: Duration = Duration::from_secs(3600);
/// How many per-device checks pass between sweeps of idle devices' state.
const CLIENT_SWEEP_EVERY: u64 = 4096;

/// governor's clock, read from tokio's, so limits follow a paused test clock and
/// waits are tokio sleeps.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct TokioClock;

impl Clock for TokioClock {
    type Instant = std::time::Instant;

    fn now(&self) -> Self::Instant {
        Instant::now().into_std()
    }
}

type Direct = RateLimiter<NotKeyed, InMemoryState, TokioClock, NoOpMiddleware<std::time::Instant>>;
/// Per-device state, hashed with foldhash (as the response cache is): keys are
/// device names or LAN addresses, and SipHash was a measurable part of a cached
/// answer's cost.
type Keyed<K> = RateLimiter<
    K,
    HashMapStateStore<K, foldhash::fast::RandomState>,
    TokioClock,
    NoOpMiddleware<std::time::Instant>,
>;

/// The budget of calls to Joulo shared by all devices.
#[derive(Debug)]
pub(crate) struct UpstreamBudget {
    /// All upstream calls together.
    limiter: Direct,
    /// Bound on waiting for a slot.
    queue_timeout: Duration,
    /// Set after an upstream 429.
    backoff: Mutex<Backoff>,
    /// When the calls of the last minute went out, for "left this minute".
    recent: Mutex<std::collections::VecDeque<Instant>>,
    /// The per-minute rate, to say how much of it is left.
    per_minute: u32,
    /// Requests refused by this budget, by reason.
    refused: Family<LimitLabels, Counter>,
}

/// Metric labels for a rate-limit refusal.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct LimitLabels {
    /// `upstream_budget`, `upstream_backoff` or `client`.
    pub limit: &'static str,
}

#[derive(Debug, Default)]
struct Backoff {
    /// No upstream call before this instant.
    until: Option<Instant>,
    /// 429s in a row, for the growing default back-off.
    streak: u32,
}

impl UpstreamBudget {
    /// A budget from the `[limits]` table.
    pub(crate) fn new(cfg: &LimitsConfig, refused: Family<LimitLabels, Counter>) -> UpstreamBudget {
        let quota = Quota::per_minute(cfg.upstream_per_minute).allow_burst(cfg.upstream_burst);
        UpstreamBudget {
            limiter: RateLimiter::direct_with_clock(quota, TokioClock),
            queue_timeout: cfg.queue_timeout,
            backoff: Mutex::new(Backoff::default()),
            recent: Mutex::default(),
            per_minute: cfg.upstream_per_minute.get(),
            refused,
        }
    }

    /// The refusal counters every limit shares, each limit's series made at
    /// zero, so an alert on it compares against something from the first
    /// scrape.
    pub(crate) fn refusal_family() -> Family<LimitLabels, Counter> {
        let family = Family::<LimitLabels, Counter>::default();
        for limit in [
            "upstream_budget",
            "upstream_backoff",
            "client",
            "device_share",
        ] {
            let _ = family.get_or_create(&LimitLabels { limit });
        }
        family
    }

    /// Takes over what `old` learned that outlives a change of limits: a back-off
    /// Joulo asked for, and the calls of the last minute.
    pub(crate) fn carry_over(&self, old: &UpstreamBudget) {
        let backoff = lock_unpoisoned(&old.backoff);
        let mut mine = lock_unpoisoned(&self.backoff);
        mine.until = backoff.until;
        mine.streak = backoff.streak;
        let recent = lock_unpoisoned(&old.recent).clone();
        *lock_unpoisoned(&self.recent) = recent;
    }

    /// The per-minute budget.
    pub(crate) fn per_minute(&self) -> u32 {
        self.per_minute
    }

    /// Upstream calls in the last 60 s, and how many of the per-minute budget
    /// are left (none below zero: a burst may go past the rate for a while).
    pub(crate) fn this_minute(&self) -> (u32, u32) {
        let used = self.last_minute(Instant::now()).len();
        let used = u32::try_from(used).unwrap_or(u32::MAX);
        (used, self.per_minute.saturating_sub(used))
    }

    /// The calls of the last 60 s before `now`, older ones forgotten.
    fn last_minute(
        &self,
        now: Instant,
    ) -> std::sync::MutexGuard<'_, std::collections::VecDeque<Instant>> {
        let mut recent = lock_unpoisoned(&self.recent);
        while recent
            .front()
            .is_some_and(|at| now.saturating_duration_since(*at) >= Duration::from_secs(60))
        {
            recent.pop_front();
        }
        recent
    }

    /// Takes one upstream call from the budget, waiting up to `queue_timeout`.
    /// Refused outright while backing off after a 429.
    pub(crate) async fn acquire(&self) -> Result<(), GatewayError> {
        self.check_backoff()?;
        let result = wait_for_slot(|| self.limiter.check(), self.queue_timeout).await;
        if result.is_ok() {
            let now = Instant::now();
            self.last_minute(now).push_back(now);
        }
        result.map_err(|wait| {
            self.refused
                .get_or_create(&LimitLabels {
                    limit: "upstream_budget",
                })
                .inc();
            GatewayError::BudgetExhausted { retry_after: wait }
        })
    }

    /// Refuses while backing off after a 429: no call could go out, so nothing
    /// else (a device's share) should be spent on the attempt.
    pub(crate) fn check_backoff(&self) -> Result<(), GatewayError> {
        match self.backoff_remaining() {
            None => Ok(()),
            Some(remaining) => {
                self.refused
                    .get_or_create(&LimitLabels {
                        limit: "upstream_backoff",
                    })
                    .inc();
                Err(GatewayError::UpstreamBackoff {
                    retry_after: remaining,
                })
            }
        }
    }

    /// How long the back-off still runs, if one is in force.
    pub(crate) fn backoff_remaining(&self) -> Option<Duration> {
        let backoff = lock_unpoisoned(&self.backoff);
        let until = backoff.until?;
        let now = Instant::now();
        (until > now).then(|| until - now)
    }

    /// Records an upstream 429 and returns the back-off imposed: Joulo's
    /// `Retry-After` when it sent a usable one, else 60 s doubling on each repeat
    /// up to 15 min, with ±20 % jitter so several gateways do not retry in step.
    pub(crate) fn on_upstream_429(&self, retry_after: Option<&HeaderValue>) -> Duration {
        let mut backoff = lock_unpoisoned(&self.backoff);
        backoff.streak = backoff.streak.saturating_add(1);
        let wait = retry_after
            .and_then(|v| parse_retry_after(v, SystemTime::now()))
            .unwrap_or_else(|| {
                let doubled = BACKOFF_BASE.saturating_mul(1 << (backoff.streak - 1).min(8));
                jitter(doubled.min(BACKOFF_MAX))
            });
        backoff.until = Some(Instant::now() + wait);
        wait
    }

    /// Records an upstream answer that was not a 429: the default back-off
    /// starts again from 60 s next time.
    pub(crate) fn on_upstream_answer(&self) {
        lock_unpoisoned(&self.backoff).streak = 0;
    }
}

/// A limiter per device, so one misbehaving device cannot crowd out the others.
#[derive(Debug)]
pub(crate) struct ClientLimiter<K: Hash + Eq + Clone = IpAddr> {
    /// One GCRA state per device.
    limiter: Keyed<K>,
    /// Bound on waiting for a slot.
    queue_timeout: Duration,
    /// Checks since the last sweep of idle devices.
    checks: AtomicU64,
    /// Refusals, shared with the upstream budget's metric family.
    refused: Family<LimitLabels, Counter>,
}

impl<K: Hash + Eq + Clone> ClientLimiter<K> {
    /// Per-device limits from the `[limits]` table, counting refusals in `refused`.
    pub(crate) fn new(
        cfg: &LimitsConfig,
        refused: Family<LimitLabels, Counter>,
    ) -> ClientLimiter<K> {
        let quota = Quota::per_minute(cfg.client_per_minute).allow_burst(cfg.client_burst);
        ClientLimiter {
            limiter: RateLimiter::hashmap_with_clock_and_hasher(
                quota,
                TokioClock,
                foldhash::fast::RandomState::default(),
            ),
            queue_timeout: cfg.queue_timeout,
            checks: AtomicU64::new(0),
            refused,
        }
    }

    /// Takes one request from `client`'s allowance, waiting up to `queue_timeout`.
    /// For the unit tests: the request path calls `try_acquire` and `wait` itself.
    #[cfg(test)]
    pub(crate) async fn acquire(&self, client: &K) -> Result<(), GatewayError> {
        if self.try_acquire(client) {
            return Ok(());
        }
        self.wait(client).await
    }

    /// Takes a slot for `client` if one is free now.
    pub(crate) fn try_acquire(&self, client: &K) -> bool {
        sweep_now_and_then(&self.checks, &self.limiter);
        self.limiter.check_key(client).is_ok()
    }

    /// Waits for a slot for `client` as long as one comes within the queue
    /// timeout; otherwise the refusal.
    pub(crate) async fn wait(&self, client: &K) -> Result<(), GatewayError> {
        wait_for_slot(|| self.limiter.check_key(client), self.queue_timeout)
            .await
            .map_err(|wait| {
                self.refused
                    .get_or_create(&LimitLabels { limit: "client" })
                    .inc();
                GatewayError::ClientRateLimited { retry_after: wait }
            })
    }
}

/// Each device's share of the upstream budget: no device (its key name, else
/// its address) may spend more than `device_upstream_share` of the calls per
/// minute and of the burst on cache misses, so one that loops over distinct
/// pages cannot use up the token's budget for the whole household. A device
/// joining a call already under way spends nothing.
#[derive(Debug)]
pub(crate) struct DeviceShare<K: Hash + Eq + Clone = IpAddr> {
    /// One GCRA state per device; `None` when the share is the whole budget,
    /// which the budget itself already enforces (with its queue).
    limiter: Option<Keyed<K>>,
    /// Checks since the last sweep of idle devices.
    checks: AtomicU64,
    /// Refusals, shared with the upstream budget's metric family.
    refused: Family<LimitLabels, Counter>,
}

impl<K: Hash + Eq + Clone> DeviceShare<K> {
    /// Shares from the `[limits]` table, counting refusals in `refused`.
    pub(crate) fn new(cfg: &LimitsConfig, refused: Family<LimitLabels, Counter>) -> DeviceShare<K> {
        let (per_minute, burst) = cfg.device_quota();
        DeviceShare {
            limiter: (cfg.device_upstream_share < 1.0).then(|| {
                RateLimiter::hashmap_with_clock_and_hasher(
                    Quota::per_minute(per_minute).allow_burst(burst),
                    TokioClock,
                    foldhash::fast::RandomState::default(),
                )
            }),
            checks: AtomicU64::new(0),
            refused,
        }
    }

    /// Spends one upstream call of `device`'s share, or refuses at once with
    /// the wait until its next: a device over its share does not queue for the
    /// budget the others need.
    pub(crate) fn spend(&self, device: &K) -> Result<(), GatewayError> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        sweep_now_and_then(&self.checks, limiter);
        limiter.check_key(device).map_err(|refusal| {
            self.refused
                .get_or_create(&LimitLabels {
                    limit: "device_share",
                })
                .inc();
            GatewayError::DeviceShareExhausted {
                retry_after: refusal.wait_time_from(TokioClock.now()),
            }
        })
    }
}

/// Every [`CLIENT_SWEEP_EVERY`] checks (counted in `checks`), forgets the
/// devices whose allowance is full again, so a keyed limiter's map stays small.
fn sweep_now_and_then<K: Hash + Eq + Clone>(checks: &AtomicU64, limiter: &Keyed<K>) {
    if checks.fetch_add(1, Ordering::Relaxed) % CLIENT_SWEEP_EVERY == 0 {
        limiter.retain_recent();
    }
}

/// Retries `check` until it passes, sleeping until the limiter's next slot, as
/// long as that falls within `queue_timeout`; otherwise returns the wait needed.
async fn wait_for_slot(
    mut check: impl FnMut() -> Result<(), NotUntil<std::time::Instant>>,
    queue_timeout: Duration,
) -> Result<(), Duration> {
    let deadline = Instant::now() + queue_timeout;
    loop {
        let refusal = match check() {
            Ok(()) => return Ok(()),
            Err(refusal) => refusal,
        };
        let now = Instant::now();
        let wait = refusal.wait_time_from(now.into_std());
        if now + wait > deadline {
            return Err(wait);
        }
        tokio::time::sleep(wait).await;
    }
}

/// `Retry-After` as delay-seconds or an HTTP date (RFC 9110 section 10.2.3),
/// capped at an hour; `None` when absent, malformed or already past.
fn parse_retry_after(value: &HeaderValue, now: SystemTime) -> Option<Duration> {
    let text = value.to_str().ok()?.trim();
    let wait = match text.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => httpdate::parse_http_date(text)
            .ok()?
            .duration_since(now)
            .ok()?,
    };
    (!wait.is_zero()).then(|| wait.min(RETRY_AFTER_MAX))
}

/// `d` scaled by a random factor in [0.8, 1.2].
fn jitter(d: Duration) -> Duration {
    scale_randomly(d, 0.8, 1.2)
}

/// `d` scaled by a random factor in [`low`, `high`] (the middle if the OS
/// random source fails).
pub(crate) fn scale_randomly(d: Duration, low: f64, high: f64) -> Duration {
    let mut byte = [0u8; 2];
    let random = getrandom::fill(&mut byte).map_or(0.5, |()| {
        f64::from(u16::from_le_bytes(byte)) / f64::from(u16::MAX)
    });
    d.mul_f64(low + (high - low) * random)
}

#[cfg(test)]
impl UpstreamBudget {
    fn new_for_test(cfg: &LimitsConfig) -> UpstreamBudget {
        UpstreamBudget::new(cfg, Family::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::respond::retry_after_secs;
    use std::num::NonZeroU32;

    fn limits(per_minute: u32, burst: u32, queue: u64) -> LimitsConfig {
        LimitsConfig {
            upstream_per_minute: NonZeroU32::new(per_minute).unwrap(),
            upstream_burst: NonZeroU32::new(burst).unwrap(),
            queue_timeout: Duration::from_secs(queue),
            client_per_minute: NonZeroU32::new(per_minute).unwrap(),
            client_burst: NonZeroU32::new(burst).unwrap(),
            device_upstream_share: 0.5,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_device_spends_at_most_its_share_and_others_keep_theirs() {
        // 10 a minute, burst 4, half each: 2 back to back, then one every 12 s.
        let share: DeviceShare = DeviceShare::new(&limits(10, 4, 0), Family::default());
        let greedy: IpAddr = "192.168.1.10".parse().unwrap();
        let other: IpAddr = "192.168.1.11".parse().unwrap();
        share.spend(&greedy).unwrap();
        share.spend(&greedy).unwrap();
        let Err(GatewayError::DeviceShareExhausted { retry_after }) = share.spend(&greedy) else {
            panic!("the greedy device's share of the burst is used up");
        };
        assert_eq!(retry_after, Duration::from_secs(12));
        share.spend(&other).unwrap();
        share.spend(&other).unwrap();
        tokio::time::advance(Duration::from_secs(12)).await;
        share.spend(&greedy).unwrap();
        assert!(share.spend(&greedy).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn burst_then_refusal_with_the_wait() {
        let budget = UpstreamBudget::new_for_test(&limits(2, 2, 0));
        budget.acquire().await.unwrap();
        budget.acquire().await.unwrap();
        let Err(GatewayError::BudgetExhausted { retry_after }) = budget.acquire().await else {
            panic!("the third call in the same instant is over budget");
        };
        assert_eq!(retry_after, Duration::from_secs(30));
        tokio::time::advance(Duration::from_secs(30)).await;
        budget.acquire().await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn waits_in_the_queue_up_to_queue_timeout() {
        let budget = UpstreamBudget::new_for_test(&limits(6, 1, 15));
        let start = Instant::now();
        budget.acquire().await.unwrap();
        budget.acquire().await.unwrap();
        assert_eq!(
            start.elapsed(),
            Duration::from_secs(10),
            "waited for the next slot"
        );
        // The next slot is 10 s away again: within 15 s, so it waits once more.
        budget.acquire().await.unwrap();
        assert_eq!(start.elapsed(), Duration::from_secs(20));
    }

    #[tokio::test(start_paused = true)]
    async fn upstream_429_blocks_every_call_for_retry_after() {
        let budget = UpstreamBudget::new_for_test(&limits(60, 10, 2));
        let wait = budget.on_upstream_429(Some(&HeaderValue::from_static("120")));
        assert_eq!(wait, Duration::from_secs(120));
        for _ in 0..5 {
            let Err(GatewayError::UpstreamBackoff { retry_after }) = budget.acquire().await else {
                panic!("no call during the back-off");
            };
            assert!(retry_after <= Duration::from_secs(120));
        }
        tokio::time::advance(Duration::from_secs(119)).await;
        assert!(budget.acquire().await.is_err());
        tokio::time::advance(Duration::from_secs(1)).await;
        budget.acquire().await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn default_backoff_is_about_a_minute_and_grows() {
        let budget = UpstreamBudget::new_for_test(&limits(60, 10, 2));
        let first = budget.on_upstream_429(None);
        assert!((48..=72).contains(&first.as_secs()), "{first:?}");
        let second = budget.on_upstream_429(Some(&HeaderValue::from_static("soon")));
        assert!((96..=144).contains(&second.as_secs()), "{second:?}");
        budget.on_upstream_answer();
        let reset = budget.on_upstream_429(None);
        assert!((48..=72).contains(&reset.as_secs()), "{reset:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn clients_are_limited_separately() {
        let clients: ClientLimiter = ClientLimiter::new(&limits(60, 2, 0), Family::default());
        let a: IpAddr = "192.168.1.10".parse().unwrap();
        let b: IpAddr = "192.168.1.11".parse().unwrap();
        clients.acquire(&a).await.unwrap();
        clients.acquire(&a).await.unwrap();
        let Err(GatewayError::ClientRateLimited { retry_after }) = clients.acquire(&a).await else {
            panic!("a's burst is used up");
        };
        assert_eq!(retry_after, Duration::from_secs(1));
        clients.acquire(&b).await.unwrap();
    }

    #[test]
    fn retry_after_parses_seconds_and_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_780_000_000);
        let v = |s: &'static str| HeaderValue::from_static(s);
        assert_eq!(
            parse_retry_after(&v("30"), now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(parse_retry_after(&v("0"), now), None);
        assert_eq!(parse_retry_after(&v("99999"), now), Some(RETRY_AFTER_MAX));
        let in_90s = httpdate::fmt_http_date(now + Duration::from_secs(90));
        assert_eq!(
            parse_retry_after(&HeaderValue::from_str(&in_90s).unwrap(), now),
            Some(Duration::from_secs(90))
        );
        let past = httpdate::fmt_http_date(now - Duration::from_secs(90));
        assert_eq!(
            parse_retry_after(&HeaderValue::from_str(&past).unwrap(), now),
            None
        );
        assert_eq!(parse_retry_after(&v("later"), now), None);
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(30_001)), 31);
        assert_eq!(retry_after_secs(Duration::from_secs(30)), 30);
    }
}
