//! What the gateway refuses before a device's allowance (no key or a wrong
//! one, a foreign Host or Origin, a browser page, an unparsable request) and
//! its own endpoints: an allowance per address and one for all addresses
//! together, so a flood of them from one address or from many costs little
//! work, and a log budget per address, so it cannot flood the log either:
//! past a few lines per interval, refusals are counted and summarised in one
//! line per address and kind. Addresses past their allowance are remembered
//! for a while, so that when every connection slot is taken they cannot make
//! another device's connection go (see `admission`).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use governor::clock::Clock as _;
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::HashMapStateStore;
use governor::{Quota, RateLimiter};
use tokio::time::Instant;

use crate::access::{AccessError, address_key};
use crate::budget::TokioClock;
use crate::respond::GatewayError;
use crate::sync::lock_unpoisoned;

/// Refusals and ops requests an address may make per second past its burst;
/// beyond, each gets a 429 and nothing else. A Prometheus scrape and a
/// container health check ask a few times a minute.
const ALLOWANCE_PER_SECOND: u32 = 20;
/// How many an address may make at once.
const ALLOWANCE_BURST: u32 = 100;
/// Refusals all addresses together may earn per second past their burst; the
/// ops endpoints are not counted here, so a flood of refusals from many
/// addresses cannot hold back a health check or a scrape. Without it, 500
/// keyless addresses each within their own allowance made the gateway answer
/// 26,000 refusals a second, and an allowed device's p99 went from 0.5 ms to
/// 10 ms (bench/refusal-flood, FLOOD_ADDRESSES=500).
const REFUSALS_PER_SECOND: u32 = 200;
/// How many refusals all addresses together may earn at once.
const REFUSALS_BURST: u32 = 1_000;
/// How long a 429 past the allowance of all addresses together is held: the
/// longest hold, since no one slot is due to any one client.
const ALL_ADDRESSES_HOLD: Duration = Duration::from_secs(1);
/// How long an address stays marked as flooding after it last earned it.
const FLOODING_FOR: Duration = Duration::from_secs(10);
/// Refusals an address may earn at once before it is marked as flooding;
/// then one per [`FLOOD_REFILL`]. A device with a stale key polling every
/// 15 s, or a browser asking for a favicon, stays far below; an address
/// sending refusals on even one connection held a second per 429 is above.
/// One refusal answered 429 only because many other addresses flood (past
/// the allowance of all of them) marked an innocent address in an earlier
/// version, which then kept it out while the flood held every slot.
const FLOOD_BURST: u32 = 10;
/// How fast the refusals an address may earn before it is marked refill.
const FLOOD_REFILL: Duration = Duration::from_secs(2);
/// Addresses marked as flooding at once; past this, new ones are not marked
/// (as before marking existed), so many /64s cannot grow the map.
const MAX_FLOODING: usize = 4_096;
/// How many allowance checks pass between sweeps of idle addresses' state.
const SWEEP_EVERY: u64 = 1024;
/// The log budget's interval, and how often summaries are written.
pub const LOG_INTERVAL: Duration = Duration::from_secs(10);
/// Lines an address may write per interval before its refusals are only
/// counted.
pub const LINES_PER_ADDRESS: u32 = 5;
/// Lines all addresses together may write per interval.
const LINES_PER_INTERVAL: u32 = 100;
/// Addresses counted one by one per interval; refusals from any further ones
/// are counted together (as `others`), so many addresses (IPv6 /64s) cannot
/// grow the map or the summaries without bound.
const MAX_TRACKED: usize = 64;

/// What was refused, as the summary line names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RefusalKind {
    /// The address is outside `[access] allow`.
    Network,
    /// A malformed or ambiguous Host, Origin or request target (400).
    BadRequest,
    /// A Host that is not the gateway's (421).
    Host,
    /// A cross-origin `Origin` (403).
    Origin,
    /// A browser's cross-site or same-site request without a key (403).
    CrossSite,
    /// No key, or a wrong one (401).
    Key,
    /// A key without the scope `/metrics` or `/status` needs (403).
    Scope,
    /// A request head over `server.max_header_size` (431).
    HeadTooLarge,
    /// A request hyper could not parse (400, or 431 for a head too large).
    Unparsable,
    /// A connection closed with no request head within
    /// `server.header_timeout` (a silent or slowloris client).
    SlowHead,
    /// `/healthz`, `/readyz`, `/metrics`, `/status`.
    Ops,
    /// Past the address's allowance: answered 429, never logged one by one.
    OverAllowance,
}

impl RefusalKind {
    /// Every kind, in the order of a tally's counts.
    const ALL: [RefusalKind; 12] = [
        RefusalKind::Network,
        RefusalKind::BadRequest,
        RefusalKind::Host,
        RefusalKind::Origin,
        RefusalKind::CrossSite,
        RefusalKind::Key,
        RefusalKind::Scope,
        RefusalKind::HeadTooLarge,
        RefusalKind::Unparsable,
        RefusalKind::SlowHead,
        RefusalKind::Ops,
        RefusalKind::OverAllowance,
    ];

    /// The name in the summary line.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            RefusalKind::Network => "network",
            RefusalKind::BadRequest => "bad_request",
            RefusalKind::Host => "host",
            RefusalKind::Origin => "origin",
            RefusalKind::CrossSite => "cross_site",
            RefusalKind::Key => "key",
            RefusalKind::Scope => "scope",
            RefusalKind::HeadTooLarge => "head_too_large",
            RefusalKind::Unparsable => "unparsable",
            RefusalKind::SlowHead => "slow_head",
            RefusalKind::Ops => "ops",
            RefusalKind::OverAllowance => "over_allowance",
        }
    }

    /// The kind of a refusal made before a device's allowance; `None` for
    /// anything else (a device's own request, whatever its answer).
    pub(crate) fn of(error: &GatewayError) -> Option<RefusalKind> {
        Some(match error {
            GatewayError::Access(access) => match access {
                AccessError::Network => RefusalKind::Network,
                AccessError::BadHost(_) | AccessError::DuplicateOrigin => RefusalKind::BadRequest,
                AccessError::Host(_) => RefusalKind::Host,
                AccessError::Origin => RefusalKind::Origin,
                AccessError::CrossSite => RefusalKind::CrossSite,
                AccessError::Key | AccessError::NoKeysYet => RefusalKind::Key,
                AccessError::Scope(_) => RefusalKind::Scope,
            },
            GatewayError::HeadersTooLarge { .. } => RefusalKind::HeadTooLarge,
            GatewayError::AddressRateLimited { .. } | GatewayError::RefusalsRateLimited { .. } => {
                RefusalKind::OverAllowance
            }
            _ => return None,
        })
    }

    fn index(self) -> usize {
        self as usize
    }
}

type Direct = RateLimiter<
    governor::state::NotKeyed,
    governor::state::InMemoryState,
    TokioClock,
    NoOpMiddleware<std::time::Instant>,
>;

type Keyed = RateLimiter<
    IpAddr,
    HashMapStateStore<IpAddr, foldhash::fast::RandomState>,
    TokioClock,
    NoOpMiddleware<std::time::Instant>,
>;

/// Each address's allowance of refusals and ops requests, and its log budget.
/// Built once; it outlives config reloads.
#[derive(Debug)]
pub(crate) struct RefusalGuard {
    /// One GCRA state per address (IPv6: per /64).
    limiter: Keyed,
    /// Refusals of all addresses together.
    all_addresses: Direct,
    /// Refusals each address may earn before it is marked as flooding.
    flood_detector: Keyed,
    /// Addresses past their allowance lately, and since when.
    flooding: Mutex<HashMap<IpAddr, Instant, foldhash::fast::RandomState>>,
    /// Allowance checks since the last sweep of idle addresses.
    checks: AtomicU64,
    /// This interval's lines and counts; shared with the task that writes
    /// the summaries when no refusal comes to write them.
    book: Arc<Mutex<LogBook>>,
}

/// The log budget's state for the current interval.
#[derive(Debug)]
struct LogBook {
    /// When the interval began.
    started: Instant,
    /// Lines written this interval, all addresses together.
    lines: u32,
    /// Lines and unlogged counts by address, at most [`MAX_TRACKED`].
    by_address: HashMap<IpAddr, Tally, foldhash::fast::RandomState>,
    /// Unlogged counts of the addresses past [`MAX_TRACKED`].
    others: Tally,
    /// Whether a task is waiting to write this interval's summaries.
    flusher: bool,
}

/// One address's lines and unlogged refusals in an interval.
#[derive(Debug, Default, Clone)]
struct Tally {
    /// Lines written.
    lines: u32,
    /// Refusals not logged, by kind.
    unlogged: [u64; RefusalKind::ALL.len()],
}

impl Tally {
    fn any_unlogged(&self) -> bool {
        self.unlogged.iter().any(|&n| n > 0)
    }
}

impl Default for RefusalGuard {
    fn default() -> Self {
        RefusalGuard::new()
    }
}

impl RefusalGuard {
    /// A guard with the built-in allowance and log budget.
    pub(crate) fn new() -> RefusalGuard {
        let quota = Quota::per_second(ALLOWANCE_PER_SECOND.try_into().expect("above zero"))
            .allow_burst(ALLOWANCE_BURST.try_into().expect("above zero"));
        RefusalGuard {
            limiter: RateLimiter::hashmap_with_clock_and_hasher(
                quota,
                TokioClock,
                foldhash::fast::RandomState::default(),
            ),
            all_addresses: RateLimiter::direct_with_clock(
                Quota::per_second(REFUSALS_PER_SECOND.try_into().expect("above zero"))
                    .allow_burst(REFUSALS_BURST.try_into().expect("above zero")),
                TokioClock,
            ),
            flood_detector: RateLimiter::hashmap_with_clock_and_hasher(
                Quota::with_period(FLOOD_REFILL)
                    .expect("above zero")
                    .allow_burst(FLOOD_BURST.try_into().expect("above zero")),
                TokioClock,
                foldhash::fast::RandomState::default(),
            ),
            flooding: Mutex::new(HashMap::default()),
            checks: AtomicU64::new(0),
            book: Arc::new(Mutex::new(LogBook {
                started: Instant::now(),
                lines: 0,
                by_address: HashMap::default(),
                others: Tally::default(),
                flusher: false,
            })),
        }
    }

    /// Takes one ops request from `client`'s allowance; past it, the 429 to
    /// answer instead, and the address is marked as flooding.
    pub(crate) fn charge_ops(&self, client: IpAddr) -> Result<(), GatewayError> {
        self.charge_address(client)
    }

    /// Takes one refusal from `client`'s allowance and from that of all
    /// addresses together; past either, the 429 to answer instead. An
    /// address earning refusals faster than [`FLOOD_BURST`] and
    /// [`FLOOD_REFILL`] allow is marked as flooding.
    pub(crate) fn charge_refusal(&self, client: IpAddr) -> Result<(), GatewayError> {
        self.count_towards_mark(address_key(client));
        self.charge_address(client)?;
        self.all_addresses
            .check()
            .map_err(|_| GatewayError::RefusalsRateLimited {
                retry_after: ALL_ADDRESSES_HOLD,
            })
    }

    /// Counts a connection from `client` turned away because every place is
    /// taken, or dropped before it sent a request head to make room for
    /// another, as a refusal it earned: only towards being marked as
    /// flooding.
    pub(crate) fn note_turned_away(&self, client: IpAddr) {
        self.count_towards_mark(address_key(client));
    }

    /// One more refusal `address` earned: past [`FLOOD_BURST`] and
    /// [`FLOOD_REFILL`], it is marked as flooding.
    fn count_towards_mark(&self, address: IpAddr) {
        // Swept here too: addresses only ever turned away while every slot
        // is taken never reach `charge_address`.
        if self.checks.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == 0 {
            self.flood_detector.retain_recent();
        }
        if self.flood_detector.check_key(&address).is_err() {
            self.mark_flooding(address);
        }
    }

    fn charge_address(&self, client: IpAddr) -> Result<(), GatewayError> {
        if self.checks.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == 0 {
            self.limiter.retain_recent();
        }
        let address = address_key(client);
        self.limiter.check_key(&address).map_err(|refusal| {
            self.mark_flooding(address);
            GatewayError::AddressRateLimited {
                retry_after: refusal.wait_time_from(TokioClock.now()),
            }
        })
    }

    /// Remembers that `address` went past its allowance.
    fn mark_flooding(&self, address: IpAddr) {
        let now = Instant::now();
        let mut flooding = lock_unpoisoned(&self.flooding);
        if flooding.len() >= MAX_FLOODING && !flooding.contains_key(&address) {
            flooding.retain(|_, since| now.saturating_duration_since(*since) < FLOODING_FOR);
            if flooding.len() >= MAX_FLOODING {
                return;
            }
        }
        flooding.insert(address, now);
    }

    /// Whether `client`'s address was marked as flooding within the last
    /// [`FLOODING_FOR`]. Asked when it connects while every slot is taken:
    /// a marked address knocking again counts as earning a refusal, so one
    /// whose connections are all held unanswered (and so earn no 429) stays
    /// marked while it keeps knocking faster than [`FLOOD_REFILL`], and a
    /// device that only retries now and then is unmarked in time.
    pub(crate) fn is_flooding(&self, client: IpAddr) -> bool {
        let now = Instant::now();
        let address = address_key(client);
        let marked = lock_unpoisoned(&self.flooding)
            .get(&address)
            .is_some_and(|since| now.saturating_duration_since(*since) < FLOODING_FOR);
        if marked {
            self.count_towards_mark(address);
        }
        marked
    }

    /// Whether a line about `client`'s refusal of `kind` may be written now;
    /// if not, it is counted for the interval's summary. A refusal past the
    /// allowance is never logged one by one.
    pub(crate) fn may_log(&self, client: IpAddr, kind: RefusalKind) -> bool {
        let now = Instant::now();
        let mut book = lock_unpoisoned(&self.book);
        let summaries = book.roll(now);
        let address = address_key(client);
        let tracked = book.by_address.len() < MAX_TRACKED || book.by_address.contains_key(&address);
        let room = book.lines < LINES_PER_INTERVAL;
        let logged = if tracked {
            let tally = book.by_address.entry(address).or_default();
            if room && tally.lines < LINES_PER_ADDRESS && kind != RefusalKind::OverAllowance {
                tally.lines += 1;
                true
            } else {
                tally.unlogged[kind.index()] += 1;
                false
            }
        } else {
            book.others.unlogged[kind.index()] += 1;
            false
        };
        if logged {
            book.lines += 1;
        } else if !book.flusher {
            book.flusher = self.start_flusher();
        }
        drop(book);
        write_summaries(summaries);
        logged
    }

    /// Starts the task that writes this interval's summaries when it ends,
    /// so they are written even if the refusals stop; false without a tokio
    /// runtime (the next refusal writes them then).
    fn start_flusher(&self) -> bool {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return false;
        };
        let book = Arc::downgrade(&self.book);
        runtime.spawn(flush_at_interval_end(book));
        true
    }
}

/// Sleeps to the end of the current interval and writes its summaries, until
/// an interval ends with nothing left to summarise; ends with the guard.
async fn flush_at_interval_end(book: Weak<Mutex<LogBook>>) {
    loop {
        let Some(end) = book
            .upgrade()
            .map(|b| lock_unpoisoned(&b).started + LOG_INTERVAL)
        else {
            return;
        };
        tokio::time::sleep_until(end).await;
        let Some(book) = book.upgrade() else {
            return;
        };
        let mut guard = lock_unpoisoned(&book);
        let summaries = guard.roll(Instant::now());
        let pending =
            guard.others.any_unlogged() || guard.by_address.values().any(Tally::any_unlogged);
        if !pending {
            guard.flusher = false;
        }
        drop(guard);
        write_summaries(summaries);
        if !pending {
            return;
        }
    }
}

/// One interval's unlogged refusals: (address, or `None` for the others,
/// kind, count).
type Summaries = Vec<(Option<IpAddr>, RefusalKind, u64)>;

impl LogBook {
    /// If the interval has ended, starts a new one and returns the old one's
    /// unlogged counts.
    fn roll(&mut self, now: Instant) -> Summaries {
        if now.saturating_duration_since(self.started) < LOG_INTERVAL {
            return Vec::new();
        }
        let mut summaries = Vec::new();
        let tallies = self
            .by_address
            .drain()
            .map(|(a, t)| (Some(a), t))
            .chain(std::iter::once((None, std::mem::take(&mut self.others))));
        for (address, tally) in tallies {
            for kind in RefusalKind::ALL {
                let count = tally.unlogged[kind.index()];
                if count > 0 {
                    summaries.push((address, kind, count));
                }
            }
        }
        self.started = now;
        self.lines = 0;
        // The map was drained: its capacity is kept, its entries are not.
        summaries
    }
}

/// One line per address and kind, outside the book's lock.
fn write_summaries(summaries: Summaries) {
    for (address, kind, count) in summaries {
        let address = match address {
            Some(IpAddr::V6(v6)) => format!("{v6}/64"),
            Some(IpAddr::V4(v4)) => v4.to_string(),
            None => "others".to_owned(),
        };
        tracing::info!(
            target: "joulo_gateway::access",
            client = %address,
            kind = kind.as_str(),
            count,
            interval_s = LOG_INTERVAL.as_secs(),
            "refused requests not logged one by one"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn the_allowance_is_per_address_and_refills() {
        let guard = RefusalGuard::new();
        for _ in 0..ALLOWANCE_BURST {
            assert!(guard.charge_refusal(ip("192.168.1.9")).is_ok());
        }
        let Err(GatewayError::AddressRateLimited { retry_after }) =
            guard.charge_refusal(ip("192.168.1.9"))
        else {
            panic!("past the burst")
        };
        assert!(retry_after > Duration::ZERO && retry_after <= Duration::from_secs(1));
        // Another address, and the same one as IPv4-mapped IPv6, counted apart / alike.
        assert!(guard.charge_refusal(ip("192.168.1.10")).is_ok());
        assert!(guard.charge_refusal(ip("::ffff:192.168.1.9")).is_err());
        // One /64 is one address.
        for i in 0..ALLOWANCE_BURST {
            assert!(
                guard
                    .charge_refusal(ip(&format!("fd00:1:2:3::{i:x}")))
                    .is_ok()
            );
        }
        assert!(guard.charge_refusal(ip("fd00:1:2:3:ffff::1")).is_err());
        assert!(guard.charge_refusal(ip("fd00:1:2:4::1")).is_ok());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(guard.charge_refusal(ip("192.168.1.9")).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn many_addresses_share_one_allowance_of_refusals_but_not_of_ops_requests() {
        let guard = RefusalGuard::new();
        let address = |i: u32| IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
        // Each address within its own allowance, all together past theirs.
        let mut refused = 0;
        for i in 0..REFUSALS_BURST + 50 {
            if let Err(GatewayError::RefusalsRateLimited { retry_after }) =
                guard.charge_refusal(address(i))
            {
                assert_eq!(retry_after, ALL_ADDRESSES_HOLD);
                refused += 1;
            }
        }
        assert_eq!(refused, 50);
        // One refusal each: no address is marked as flooding, not even those
        // answered 429 because of the others.
        assert!((0..REFUSALS_BURST + 50).all(|i| !guard.is_flooding(address(i))));
        // A health check or a scrape is not held back by the others' refusals.
        assert!(guard.charge_ops(address(0)).is_ok());
        assert!(guard.charge_ops(address(100_000)).is_ok());
        // The allowance refills.
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(guard.charge_refusal(address(200_000)).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn an_address_earning_refusals_fast_is_marked_and_stays_so_while_it_knocks() {
        let guard = RefusalGuard::new();
        let (flooder, device) = (ip("192.168.1.9"), ip("192.168.1.10"));
        for _ in 0..FLOOD_BURST {
            guard.charge_refusal(flooder).unwrap();
        }
        assert!(!guard.is_flooding(flooder));
        guard.charge_refusal(flooder).unwrap();
        assert!(guard.is_flooding(flooder) && guard.is_flooding(ip("::ffff:192.168.1.9")));
        // Knocking once a second, faster than its refusals refill, it stays
        // marked long past FLOODING_FOR.
        for _ in 0..3 * FLOODING_FOR.as_secs() {
            tokio::time::advance(Duration::from_secs(1)).await;
            assert!(guard.is_flooding(flooder));
        }
        // A device with a stale key, refused every few seconds, never is.
        for _ in 0..3 * FLOOD_BURST {
            assert!(guard.charge_refusal(device).is_ok());
            assert!(!guard.is_flooding(device));
            tokio::time::advance(Duration::from_secs(3)).await;
        }
        // Marked once, a device that then only retries now and then is
        // unmarked within FLOODING_FOR of its last mark.
        for _ in 0..=FLOOD_BURST {
            let _ = guard.charge_refusal(device);
        }
        assert!(guard.is_flooding(device));
        for _ in 0..4 {
            tokio::time::advance(FLOOD_REFILL * 2).await;
            let _ = guard.is_flooding(device);
        }
        tokio::time::advance(FLOODING_FOR).await;
        assert!(!guard.is_flooding(device));
    }

    #[tokio::test(start_paused = true)]
    async fn an_address_past_its_own_allowance_is_marked_and_the_marks_are_bounded() {
        let guard = RefusalGuard::new();
        let a = ip("192.168.1.9");
        for _ in 0..ALLOWANCE_BURST {
            guard.charge_ops(a).unwrap();
        }
        assert!(!guard.is_flooding(a));
        assert!(guard.charge_ops(a).is_err());
        assert!(guard.is_flooding(a) && guard.is_flooding(ip("::ffff:192.168.1.9")));
        for i in 0..2 * MAX_FLOODING as u128 {
            guard.mark_flooding(IpAddr::V6(std::net::Ipv6Addr::from_bits(i << 64)));
        }
        assert_eq!(lock_unpoisoned(&guard.flooding).len(), MAX_FLOODING);
        // Once the old marks have worn off, new addresses are marked again.
        tokio::time::advance(FLOODING_FOR).await;
        guard.mark_flooding(ip("192.168.1.10"));
        assert!(guard.is_flooding(ip("192.168.1.10")));
        assert_eq!(lock_unpoisoned(&guard.flooding).len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn past_its_lines_an_address_is_counted_and_the_map_is_bounded() {
        let guard = RefusalGuard::new();
        let a = ip("192.168.1.9");
        let logged = (0..50)
            .filter(|_| guard.may_log(a, RefusalKind::Key))
            .count();
        assert_eq!(logged, LINES_PER_ADDRESS as usize);
        assert!(!guard.may_log(a, RefusalKind::Host));
        assert!(!guard.may_log(ip("192.168.1.10"), RefusalKind::OverAllowance));
        // Many /64s: the map stops at MAX_TRACKED, the rest go to `others`.
        for i in 0..1000u32 {
            guard.may_log(ip(&format!("fd00:0:0:{i:x}::1")), RefusalKind::Key);
        }
        {
            let book = guard.book.lock().unwrap();
            assert_eq!(book.by_address.len(), MAX_TRACKED);
            assert_eq!(book.by_address[&a].unlogged[RefusalKind::Key.index()], 45);
            assert_eq!(book.by_address[&a].unlogged[RefusalKind::Host.index()], 1);
            assert!(book.others.unlogged[RefusalKind::Key.index()] > 0);
            assert!(book.lines <= LINES_PER_INTERVAL);
        }
        // The next interval: summaries out, map emptied, lines allowed again.
        tokio::time::advance(LOG_INTERVAL).await;
        let summaries = guard.book.lock().unwrap().roll(Instant::now());
        assert!(summaries.contains(&(Some(a), RefusalKind::Key, 45)));
        assert!(summaries.contains(&(Some(a), RefusalKind::Host, 1)));
        assert!(summaries.iter().any(|(addr, _, _)| addr.is_none()));
        assert!(guard.book.lock().unwrap().by_address.is_empty());
        assert!(guard.may_log(a, RefusalKind::Key));
    }
}
