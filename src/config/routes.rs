//! The `[routes.<name>]` tables: which account-changing routes are switched on,
//! the extra query parameters a route may pass, and each route's cache `ttl`.
//! A route's `scope` is checked with the rest of who may call, in
//! `config::access`.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use super::ConfigError;
use crate::routes::RouteId;

/// One `[routes.<name>]` table as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoute {
    /// Switches an account-changing route on; read routes cannot be switched off.
    pub(super) enabled: Option<bool>,
    /// The scope a device key needs for this route, instead of the route's default.
    pub(super) scope: Option<String>,
    /// Cache freshness for this route, instead of `[cache] ttl`.
    #[serde(default, with = "humantime_serde")]
    pub(super) ttl: Option<Duration>,
    /// Query parameters passed on beyond Joulo's documented ones.
    pub(super) extra_params: Option<Vec<String>>,
}

/// What the `[routes.<name>]` tables set, before it is spread over
/// [`Config`](super::Config) and [`CacheConfig`](super::CacheConfig).
pub(super) struct RouteSettings {
    /// The account-changing routes switched on, in route-name order.
    pub(super) enabled_write_routes: Vec<RouteId>,
    /// Checked `extra_params`, by route.
    pub(super) extra_params: HashMap<RouteId, Vec<String>>,
    /// Routes' own cache freshness, for `CacheConfig::route_ttl`.
    pub(super) route_ttl: HashMap<RouteId, Duration>,
}

/// Checks every `[routes.<name>]`: the name must be a known route, an
/// account-changing route is never cached, extra parameters must be safe to
/// pass on, and only account-changing routes can be switched.
pub(super) fn validate(
    raw: &BTreeMap<String, RawRoute>,
    path: &Path,
) -> Result<RouteSettings, ConfigError> {
    let mut enabled_write_routes = Vec::new();
    let mut extra_params = HashMap::new();
    let mut route_ttl = HashMap::new();
    for (name, route) in raw {
        let Some(id) = RouteId::from_config_name(name) else {
            return Err(ConfigError::at_key(
                path,
                format!("routes.{name}"),
                format!(
                    "unknown route; known routes are {}",
                    RouteId::ALL
                        .iter()
                        .map(|r| r.config_name())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        };
        if let Some(ttl) = route.ttl {
            if id.changes_account() && !ttl.is_zero() {
                return Err(ConfigError::at_key(
                    path,
                    format!("routes.{name}.ttl"),
                    "routes that change the account are never cached".to_owned(),
                ));
            }
            route_ttl.insert(id, ttl);
        }
        if let Some(names) = &route.extra_params {
            let mut checked: Vec<String> = Vec::new();
            for param in names {
                let problem = crate::params::check_extra_name(id, param)
                    .err()
                    .or_else(|| checked.contains(param).then_some("is listed twice"));
                if let Some(problem) = problem {
                    let shown = if param.len() <= 64 {
                        param.as_str()
                    } else {
                        "(a long name)"
                    };
                    return Err(ConfigError::at_key(
                        path,
                        format!("routes.{name}.extra_params"),
                        format!("`{}` {problem}", shown.escape_debug()),
                    ));
                }
                checked.push(param.clone());
            }
            extra_params.insert(id, checked);
        }
        match (id.changes_account(), route.enabled) {
            (true, Some(true)) => enabled_write_routes.push(id),
            (false, Some(false)) => {
                return Err(ConfigError::at_key(
                    path,
                    format!("routes.{name}.enabled"),
                    "read routes are always on; only account-changing routes \
                     (add_charger, reboot_charger) can be switched"
                        .to_owned(),
                ));
            }
            _ => {}
        }
    }
    Ok(RouteSettings {
        enabled_write_routes,
        extra_params,
        route_ttl,
    })
}

#[cfg(test)]
mod tests {
    use super::super::tests::parse;
    use crate::routes::RouteId;

    #[test]
    fn extra_params_validate() {
        let c = parse("[routes.sessions]\nextra_params = [\"status\", \"sort\"]").unwrap();
        assert_eq!(c.extra_params[&RouteId::Sessions], ["status", "sort"]);
        for (text, key, words) in [
            (
                "[routes.sessions]\nextra_params = [\"limit\"]",
                "routes.sessions.extra_params",
                "documented",
            ),
            (
                "[routes.me]\nextra_params = [\"Token\"]",
                "routes.me.extra_params",
                "credential",
            ),
            (
                "[routes.me]\nextra_params = [\"a b\"]",
                "routes.me.extra_params",
                "1-64",
            ),
            (
                "[routes.me]\nextra_params = [\"x\", \"x\"]",
                "routes.me.extra_params",
                "twice",
            ),
            (
                "[routes.add_charger]\nextra_params = [\"x\"]",
                "routes.add_charger.extra_params",
                "no query",
            ),
        ] {
            let msg = parse(text).unwrap_err().to_string();
            assert!(
                msg.contains(key) && msg.contains(words),
                "{text:?} gave {msg}"
            );
        }
    }
}
