//! What is cached: GET 200 answers, kept fresh for their route's TTL and as stale
//! stand-ins when Joulo fails. The coalescing of identical concurrent requests
//! into one upstream call whose answer they all share is in [`coalesce`].
//! (Past 600 lines only with its unit tests: the code is under 500.)

mod coalesce;

use coalesce::Flights;
pub(crate) use coalesce::Outcome;

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use tokio::time::Instant;

use crate::config::CacheConfig;
use crate::respond::{Body, full};
use crate::routes::RouteId;
use crate::sync::lock_unpoisoned;

/// What a request is cached and coalesced under: the route and the canonical
/// query the gateway writes upstream, nothing from the client's headers. The
/// upstream request is built from exactly these, so one key is one answer.
#[derive(Debug, Clone)]
pub struct CacheKey {
    /// The route; its path is fixed, so it stands for the path.
    route: RouteId,
    /// The canonical query (see [`crate::params::QuerySchema::canonical`]).
    query: Box<str>,
}

impl CacheKey {
    /// The route the key belongs to.
    pub fn route(&self) -> RouteId {
        self.route
    }

    /// The key for `route` with the canonical `query`.
    pub fn new(route: RouteId, query: &str) -> CacheKey {
        KeyRef::new(route, query).to_owned()
    }

    /// The key, borrowed.
    pub fn as_ref(&self) -> KeyRef<'_> {
        KeyRef {
            route: self.route,
            query: &self.query,
        }
    }
}

/// A [`CacheKey`] borrowed from the request, so that a cache hit allocates no
/// key of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyRef<'a> {
    /// The route.
    route: RouteId,
    /// The canonical query.
    query: &'a str,
}

impl<'a> KeyRef<'a> {
    /// The key for `route` with the canonical `query`.
    pub fn new(route: RouteId, query: &'a str) -> KeyRef<'a> {
        KeyRef { route, query }
    }

    /// The owned key, for storing and coalescing.
    pub fn to_owned(self) -> CacheKey {
        CacheKey {
            route: self.route,
            query: self.query.into(),
        }
    }
}

/// Lets a map keyed by [`CacheKey`] be searched with a [`KeyRef`] (the
/// standard `Borrow` route to composite-key lookups).
trait AsKeyRef {
    fn key_ref(&self) -> KeyRef<'_>;
}

impl AsKeyRef for CacheKey {
    fn key_ref(&self) -> KeyRef<'_> {
        self.as_ref()
    }
}

impl AsKeyRef for KeyRef<'_> {
    fn key_ref(&self) -> KeyRef<'_> {
        *self
    }
}

impl<'a> Borrow<dyn AsKeyRef + 'a> for CacheKey {
    fn borrow(&self) -> &(dyn AsKeyRef + 'a) {
        self
    }
}

impl Hash for dyn AsKeyRef + '_ {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.key_ref().hash(state);
    }
}

impl PartialEq for dyn AsKeyRef + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.key_ref() == other.key_ref()
    }
}

impl Eq for dyn AsKeyRef + '_ {}

// Hashes and compares exactly as its borrowed form, as `Borrow` requires.
impl Hash for CacheKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_ref().hash(state);
    }
}

impl PartialEq for CacheKey {
    fn eq(&self, other: &Self) -> bool {
        self.as_ref() == other.as_ref()
    }
}

impl Eq for CacheKey {}

/// How an answer relates to the cache, as told in `X-Cache`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    /// Served from a fresh copy; no upstream call.
    Hit,
    /// Fetched from the upstream (possibly shared with concurrent requests).
    Miss,
    /// The upstream failed; an older copy stood in.
    Stale,
}

impl CacheStatus {
    /// The `X-Cache` value.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheStatus::Hit => "HIT",
            CacheStatus::Miss => "MISS",
            CacheStatus::Stale => "STALE",
        }
    }
}

/// The `X-Cache` response header.
pub(crate) static X_CACHE: HeaderName = HeaderName::from_static("x-cache");

/// An upstream answer read whole, ready to be shared and stored.
#[derive(Debug, Clone)]
pub struct Buffered {
    /// The upstream's status.
    pub status: StatusCode,
    /// The upstream's headers, already cleaned for devices; no `Content-Length`
    /// (the body's own length is sent).
    pub headers: HeaderMap,
    /// The body, shared by reference count between every request served from it.
    pub body: Bytes,
}

impl Buffered {
    /// A response carrying this answer, labelled for `X-Cache`; `age` is sent as
    /// `Age` when the answer comes from the cache.
    pub fn response(&self, label: CacheStatus, age: Option<Duration>) -> Response<Body> {
        let mut response = Response::new(full(self.body.clone()));
        *response.status_mut() = self.status;
        *response.headers_mut() = self.headers.clone();
        let headers = response.headers_mut();
        headers.insert(X_CACHE.clone(), HeaderValue::from_static(label.as_str()));
        if let Some(age) = age {
            headers.insert(header::AGE, age_value(age.as_secs()));
        }
        response
    }
}

/// The decimal numbers 0 to 999 written one after another, which `Age` values
/// are sliced from: a hit then sends its age without allocating.
static AGE_DIGITS: LazyLock<String> = LazyLock::new(|| (0..1000).map(|n| n.to_string()).collect());

/// An `Age` header value of `seconds`.
fn age_value(seconds: u64) -> HeaderValue {
    let (start, len) = match seconds {
        0..=9 => (seconds, 1),
        10..=99 => (10 + (seconds - 10) * 2, 2),
        100..=999 => (190 + (seconds - 100) * 3, 3),
        // Copies this old are rare (hour-long TTLs, stale stand-ins).
        _ => return HeaderValue::from(seconds),
    };
    let digits: &'static str = &AGE_DIGITS;
    HeaderValue::from_static(&digits[start as usize..(start + len) as usize])
}

/// A cached copy.
#[derive(Debug)]
pub struct Stored {
    /// The answer itself (always a 200).
    pub answer: Buffered,
    /// The answer's headers as a hit sends them, `X-Cache: HIT` and an `Age`
    /// slot included, so serving a hit is one copy of the map and no insertion.
    hit_headers: HeaderMap,
    /// When it arrived.
    stored_at: Instant,
    /// How long it is served without asking the upstream.
    fresh_for: Duration,
}

impl Stored {
    /// Time since the copy arrived.
    pub fn age(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.stored_at)
    }

    /// Whether it may be served without asking the upstream.
    pub fn is_fresh(&self, now: Instant) -> bool {
        self.age(now) < self.fresh_for
    }
}

/// Counters for what the cache did, exported as metrics.
#[derive(Debug, Default)]
pub struct CacheStats {
    /// Answers served fresh from the cache.
    pub hits: Counter,
    /// Upstream calls made for cacheable requests.
    pub misses: Counter,
    /// Stale copies served in place of a failure.
    pub stale: Counter,
    /// Requests that joined another request's upstream call instead of making one.
    pub coalesced: Counter,
}

impl CacheStats {
    /// Adds the counters to `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "cache_hits",
            "Answers served fresh from the cache",
            self.hits.clone(),
        );
        registry.register(
            "cache_misses",
            "Upstream calls made for cacheable requests",
            self.misses.clone(),
        );
        registry.register(
            "cache_stale",
            "Stale copies served because the upstream failed",
            self.stale.clone(),
        );
        registry.register(
            "cache_coalesced",
            "Requests that shared another request's upstream call",
            self.coalesced.clone(),
        );
    }
}

/// The maps' hasher: foldhash, several times cheaper than the standard SipHash
/// for these short keys and still seeded per process. Both maps are bounded
/// (`max_entries`, requests in flight), so flooding one with colliding keys
/// cannot grow it.
type Hasher = foldhash::fast::RandomState;

/// Cached copies and in-flight upstream calls, shared by all connections.
#[derive(Debug)]
pub struct ResponseCache {
    /// Copies by key.
    entries: Mutex<HashMap<CacheKey, Arc<Stored>, Hasher>>,
    /// Upstream calls under way, by key; late requests subscribe to them.
    flights: Flights,
    /// How old a copy may be and still stand in for a failure.
    stale_if_error: AtomicU64,
    /// Bound on `entries`.
    max_entries: AtomicUsize,
    /// Bound on a cached body.
    max_body: AtomicUsize,
    /// What the cache did, for tests, logs and metrics.
    pub stats: CacheStats,
}

impl ResponseCache {
    /// An empty cache with the `[cache]` settings.
    pub fn new(cfg: &CacheConfig) -> ResponseCache {
        ResponseCache {
            entries: Mutex::new(HashMap::default()),
            flights: Arc::default(),
            stale_if_error: AtomicU64::new(millis(cfg.stale_if_error)),
            max_entries: AtomicUsize::new(cfg.max_entries),
            max_body: AtomicUsize::new(cfg.max_body),
            stats: CacheStats::default(),
        }
    }

    /// The largest body that is cached.
    pub fn max_body(&self) -> usize {
        self.max_body.load(Ordering::Relaxed)
    }

    /// Takes new `[cache]` bounds (a config reload); copies already held stay
    /// until they are replaced or evicted.
    pub fn set_limits(&self, cfg: &CacheConfig) {
        self.stale_if_error
            .store(millis(cfg.stale_if_error), Ordering::Relaxed);
        self.max_entries.store(cfg.max_entries, Ordering::Relaxed);
        self.max_body.store(cfg.max_body, Ordering::Relaxed);
    }

    fn stale_if_error(&self) -> Duration {
        Duration::from_millis(self.stale_if_error.load(Ordering::Relaxed))
    }

    /// The copy for `key`, fresh or not.
    pub fn lookup(&self, key: KeyRef<'_>) -> Option<Arc<Stored>> {
        let entries = lock_unpoisoned(&self.entries);
        entries.get(&key as &dyn AsKeyRef).cloned()
    }

    /// Serves a fresh copy and counts the hit.
    pub fn serve_hit(&self, stored: &Stored, now: Instant) -> Response<Body> {
        self.stats.hits.inc();
        let mut response = Response::new(full(stored.answer.body.clone()));
        *response.status_mut() = stored.answer.status;
        let headers = response.headers_mut();
        *headers = stored.hit_headers.clone();
        if let Some(age) = headers.get_mut(header::AGE) {
            *age = age_value(stored.age(now).as_secs());
        }
        response
    }

    /// Serves `copy` in place of a failure if it is young enough.
    pub fn serve_stale(&self, copy: Option<&Stored>, now: Instant) -> Option<Response<Body>> {
        let copy = copy.filter(|c| c.age(now) < self.stale_if_error())?;
        self.stats.stale.inc();
        Some(
            copy.answer
                .response(CacheStatus::Stale, Some(copy.age(now))),
        )
    }

    /// Stores `answer` under `key` if it is cacheable: a 200 within `max_body`
    /// that the upstream's `Cache-Control` and `Vary` allow to be shared. Fresh for
    /// `ttl` (or less if `max-age` says so) less [`poll_margin`], counted from
    /// `now`: the moment the gateway asked Joulo, so the time the answer took to
    /// arrive counts toward its age (RFC 9111 section 4.2.3).
    pub fn store(&self, key: CacheKey, answer: &Buffered, ttl: Duration, now: Instant) -> bool {
        if answer.status != StatusCode::OK
            || answer.body.len() > self.max_body()
            || self.max_entries.load(Ordering::Relaxed) == 0
        {
            return false;
        }
        let Some(fresh_for) = freshness(&answer.headers, ttl) else {
            return false;
        };
        let fresh_for = fresh_for.saturating_sub(poll_margin(fresh_for));
        if varies_on_anything(&answer.headers) {
            return false;
        }
        let mut hit_headers = answer.headers.clone();
        hit_headers.insert(
            X_CACHE.clone(),
            HeaderValue::from_static(CacheStatus::Hit.as_str()),
        );
        hit_headers.insert(header::AGE, age_value(0));
        let stored = Arc::new(Stored {
            answer: answer.clone(),
            hit_headers,
            stored_at: now,
            fresh_for,
        });
        let mut entries = lock_unpoisoned(&self.entries);
        let max_entries = self.max_entries.load(Ordering::Relaxed);
        let stale_if_error = self.stale_if_error();
        if entries.len() >= max_entries && !entries.contains_key(&key) {
            // Make room: first everything too old even to stand in, then the oldest.
            entries.retain(|_, s| s.age(now) < s.fresh_for.max(stale_if_error));
            while entries.len() >= max_entries {
                let Some(oldest) = entries
                    .iter()
                    .min_by_key(|(_, s)| s.stored_at)
                    .map(|(k, _)| k.clone())
                else {
                    break;
                };
                entries.remove(&oldest);
            }
        }
        entries.insert(key, stored);
        true
    }

    /// Drops every copy: after Joulo rejects the token, nothing fetched with it is
    /// served again.
    pub fn purge(&self) {
        lock_unpoisoned(&self.entries).clear();
    }

    /// How many copies are held.
    pub fn len(&self) -> usize {
        lock_unpoisoned(&self.entries).len()
    }

    /// Whether no copy is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A duration as whole milliseconds, for an atomic.
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// How much sooner than its ttl a copy stops being fresh: a device that polls
/// exactly every ttl (Home Assistant's `scan_interval` set to the ttl) sends
/// each poll a few milliseconds early or late; without a margin, every other
/// poll would get a copy that is a moment from expiry and the device would
/// see new data only every second poll. One second, or a tenth of a short ttl.
fn poll_margin(ttl: Duration) -> Duration {
    (ttl / 10).min(Duration::from_secs(1))
}

/// How long an answer with these headers may be served fresh, given the route's
/// `ttl`; `None` if it must not be stored at all.
fn freshness(headers: &HeaderMap, ttl: Duration) -> Option<Duration> {
    let mut fresh_for = ttl;
    for value in headers.get_all(header::CACHE_CONTROL) {
        let Ok(value) = value.to_str() else {
            return None;
        };
        for directive in value.split(',') {
            let directive = directive.trim();
            let (name, arg) = directive
                .split_once('=')
                .map_or((directive, None), |(n, a)| (n.trim(), Some(a.trim())));
            if name.eq_ignore_ascii_case("no-store") || name.eq_ignore_ascii_case("private") {
                return None;
            }
            if name.eq_ignore_ascii_case("no-cache") {
                // Kept only as a stand-in for failures; never served fresh.
                fresh_for = Duration::ZERO;
            }
            if name.eq_ignore_ascii_case("max-age")
                && let Some(seconds) = arg.and_then(|a| a.trim_matches('"').parse::<u64>().ok())
            {
                fresh_for = fresh_for.min(Duration::from_secs(seconds));
            }
        }
    }
    Some(fresh_for)
}

/// Whether the answer says no request could share it (`Vary: *`). Any other
/// `Vary` is met by every request the gateway makes: they all carry one fixed
/// header set, so an answer fetched for one is the answer for all.
fn varies_on_anything(response_headers: &HeaderMap) -> bool {
    response_headers.get_all(header::VARY).iter().any(|value| {
        value
            .to_str()
            .map_or(true, |v| v.split(',').any(|n| n.trim() == "*"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap as Map;

    pub(super) fn cache(max_entries: usize, max_body: usize) -> ResponseCache {
        ResponseCache::new(&CacheConfig {
            ttl: Duration::from_secs(15),
            route_ttl: Map::new(),
            stale_if_error: Duration::from_secs(600),
            max_entries,
            max_body,
        })
    }

    pub(super) fn answer(status: u16, headers: &[(&str, &str)], body: &'static str) -> Buffered {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        Buffered {
            status: StatusCode::from_u16(status).unwrap(),
            headers: map,
            body: Bytes::from_static(body.as_bytes()),
        }
    }

    #[test]
    fn age_values_are_the_decimal_seconds() {
        for seconds in (0..1100).chain([3599, 86_400]) {
            assert_eq!(age_value(seconds), seconds.to_string().as_str());
        }
    }

    #[test]
    fn borrowed_and_owned_keys_find_the_same_entry() {
        let mut map = HashMap::new();
        map.insert(CacheKey::new(RouteId::Sessions, "limit=1"), 1);
        map.insert(CacheKey::new(RouteId::Sessions, ""), 2);
        map.insert(CacheKey::new(RouteId::Chargers, "limit=1"), 3);
        let find = |route, query| {
            map.get(&KeyRef::new(route, query) as &dyn AsKeyRef)
                .copied()
        };
        assert_eq!(find(RouteId::Sessions, "limit=1"), Some(1));
        assert_eq!(find(RouteId::Sessions, ""), Some(2));
        assert_eq!(find(RouteId::Chargers, "limit=1"), Some(3));
        assert_eq!(find(RouteId::Chargers, "limit=2"), None);
    }

    pub(super) fn key(query: &str) -> CacheKey {
        CacheKey::new(RouteId::Chargers, query)
    }

    pub(super) fn far() -> Instant {
        Instant::now() + Duration::from_secs(3600)
    }

    #[tokio::test(start_paused = true)]
    async fn fresh_for_the_ttl_then_stale_within_the_window() {
        let c = cache(8, 1024);
        let t0 = Instant::now();
        assert!(c.store(
            key(""),
            &answer(200, &[], "{}"),
            Duration::from_secs(15),
            t0
        ));
        let copy = c.lookup(key("").as_ref()).unwrap();
        // Fresh for the ttl less the poll margin (1 s).
        assert!(copy.is_fresh(t0 + Duration::from_millis(13_999)));
        assert!(!copy.is_fresh(t0 + Duration::from_secs(14)));
        assert!(
            c.serve_stale(Some(&copy), t0 + Duration::from_secs(599))
                .is_some()
        );
        assert!(
            c.serve_stale(Some(&copy), t0 + Duration::from_secs(600))
                .is_none()
        );
        let hit = c.serve_hit(&copy, t0 + Duration::from_secs(7));
        assert_eq!(hit.headers()["age"], "7");
        assert_eq!(hit.headers()["x-cache"], "HIT");
        assert_eq!(c.stats.hits.get(), 1);
    }

    #[test]
    fn a_device_polling_every_ttl_finds_each_copy_expired_however_it_jitters() {
        let c = cache(8, 1024);
        let ttl = Duration::from_secs(15);
        let asked = Instant::now();
        // The answer took 300 ms; its age counts from the asking.
        assert!(c.store(key(""), &answer(200, &[], "{}"), ttl, asked));
        let copy = c.lookup(key("").as_ref()).unwrap();
        for early in [0, 5, 50, 500, 999] {
            let poll = asked + ttl - Duration::from_millis(early);
            assert!(
                !copy.is_fresh(poll),
                "a poll {early} ms early got an old copy"
            );
        }
        assert_eq!(
            poll_margin(Duration::from_secs(5)),
            Duration::from_millis(500)
        );
        assert_eq!(
            poll_margin(Duration::from_secs(600)),
            Duration::from_secs(1)
        );
    }

    #[test]
    fn only_shareable_200s_within_max_body_are_stored() {
        let c = cache(8, 4);
        let now = Instant::now();
        let ttl = Duration::from_secs(15);
        assert!(!c.store(key("a"), &answer(500, &[], "{}"), ttl, now));
        assert!(!c.store(key("a"), &answer(401, &[], "{}"), ttl, now));
        assert!(!c.store(key("a"), &answer(302, &[], ""), ttl, now));
        assert!(!c.store(key("a"), &answer(200, &[], "12345"), ttl, now));
        assert!(!c.store(
            key("a"),
            &answer(200, &[("cache-control", "no-store")], "{}"),
            ttl,
            now
        ));
        assert!(!c.store(
            key("a"),
            &answer(200, &[("cache-control", "private, max-age=60")], "{}"),
            ttl,
            now
        ));
        assert!(!c.store(key("a"), &answer(200, &[("vary", "*")], "{}"), ttl, now));
        assert!(c.is_empty());
        assert!(c.store(
            key("a"),
            &answer(200, &[("cache-control", "max-age=5")], "{}"),
            ttl,
            now
        ));
        let copy = c.lookup(key("a").as_ref()).unwrap();
        assert!(copy.is_fresh(now + Duration::from_secs(4)));
        assert!(
            !copy.is_fresh(now + Duration::from_secs(5)),
            "max-age shortens the ttl"
        );
        assert!(c.store(
            key("b"),
            &answer(200, &[("cache-control", "no-cache")], "{}"),
            ttl,
            now
        ));
        assert!(!c.lookup(key("b").as_ref()).unwrap().is_fresh(now));
    }

    #[test]
    fn keys_split_on_the_query_only_and_any_vary_but_star_is_met() {
        let c = cache(8, 1024);
        let now = Instant::now();
        let ttl = Duration::from_secs(15);
        // Every upstream request carries the same headers, so a Vary naming
        // them is met by all of them.
        assert!(c.store(
            key(""),
            &answer(200, &[("vary", "Accept-Encoding, Origin")], "{}"),
            ttl,
            now
        ));
        assert!(c.lookup(key("").as_ref()).is_some());
        assert!(c.lookup(key("x=1").as_ref()).is_none());
        assert!(!c.store(
            key("y=1"),
            &answer(200, &[("vary", "Origin, *")], "{}"),
            ttl,
            now
        ));
    }

    #[test]
    fn bounded_by_max_entries_oldest_first() {
        let c = cache(2, 1024);
        let t0 = Instant::now();
        let ttl = Duration::from_secs(15);
        for (i, q) in ["a", "b", "c"].into_iter().enumerate() {
            let at = t0 + Duration::from_secs(i as u64);
            assert!(c.store(key(q), &answer(200, &[], "{}"), ttl, at));
        }
        assert_eq!(c.len(), 2);
        assert!(c.lookup(key("a").as_ref()).is_none());
        assert!(c.lookup(key("c").as_ref()).is_some());
        c.purge();
        assert!(c.is_empty());
    }
}
