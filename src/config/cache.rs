//! The `[cache]` table: how long answers stay fresh, how long a stale copy may
//! stand in for a failing upstream, and the cache's size bounds. Each route's
//! own `ttl` is read with the routes, in `config::routes`.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, defaults};
use crate::routes::RouteId;

/// `[cache]` as written; an unset key takes its default in [`validate`].
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCache {
    /// Freshness for routes without their own `ttl`.
    #[serde(default, with = "humantime_serde")]
    pub(super) ttl: Option<Duration>,
    /// How old a copy may be and still stand in for a failing upstream.
    #[serde(default, with = "humantime_serde")]
    pub(super) stale_if_error: Option<Duration>,
    /// Bound on cached responses.
    pub(super) max_entries: Option<usize>,
    /// Largest response body that is cached.
    pub(super) max_body: Option<bytesize::ByteSize>,
}

/// The `[cache]` table plus each route's own `ttl`.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// Freshness for routes without a `ttl` of their own; zero turns caching off.
    pub ttl: Duration,
    /// Per-route freshness from `[routes.<name>] ttl`.
    pub route_ttl: HashMap<RouteId, Duration>,
    /// How old a copy may be and still stand in when the upstream fails.
    pub stale_if_error: Duration,
    /// Bound on cached responses.
    pub max_entries: usize,
    /// Larger responses are not cached (they are still served).
    pub max_body: usize,
}

impl CacheConfig {
    /// How long a 200 answer on `route` stays fresh; zero means it is not cached.
    /// Routes that change the account are never cached.
    pub fn ttl_for(&self, route: RouteId) -> Duration {
        if route.changes_account() || self.max_entries == 0 {
            return Duration::ZERO;
        }
        self.route_ttl.get(&route).copied().unwrap_or(self.ttl)
    }
}

/// Checks `[cache]`; `route_ttl` is left empty for the routes' own `ttl`s.
pub(super) fn validate(raw: &RawCache, path: &Path) -> Result<CacheConfig, ConfigError> {
    let max_body = raw
        .max_body
        .map_or(Ok(defaults::MAX_BODY), |b| usize::try_from(b.as_u64()))
        .map_err(|_| {
            ConfigError::invalid(
                path,
                "cache.max_body",
                "is larger than this machine can address".to_owned(),
            )
        })?;
    Ok(CacheConfig {
        ttl: raw.ttl.unwrap_or(defaults::CACHE_TTL),
        route_ttl: HashMap::new(),
        stale_if_error: raw.stale_if_error.unwrap_or(defaults::STALE_IF_ERROR),
        max_entries: raw.max_entries.unwrap_or(defaults::MAX_ENTRIES),
        max_body,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::tests::parse;
    use crate::routes::RouteId;

    #[test]
    fn cache_ttls_fall_back_to_the_cache_table() {
        let c =
            parse("[cache]\nttl = \"20s\"\nmax_body = \"64KiB\"\n[routes.energy]\nttl = \"5m\"")
                .unwrap();
        assert_eq!(c.cache.ttl_for(RouteId::Chargers), Duration::from_secs(20));
        assert_eq!(c.cache.ttl_for(RouteId::Energy), Duration::from_secs(300));
        assert_eq!(c.cache.max_body, 64 * 1024);
        let off = parse("[cache]\nttl = \"0s\"").unwrap();
        assert_eq!(off.cache.ttl_for(RouteId::Sessions), Duration::ZERO);
        let err = parse("[routes.add_charger]\nttl = \"5s\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("routes.add_charger.ttl"), "{err}");
    }
}
