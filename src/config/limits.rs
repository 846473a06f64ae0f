//! The `[limits]` table: how the token's upstream budget is shared out, and how
//! much one device may ask of the gateway.

use std::num::NonZeroU32;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, defaults};

/// `[limits]` as written; an unset key takes its default in [`validate`].
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    /// Calls per minute reaching Joulo, all devices together.
    pub(super) upstream_per_minute: Option<u32>,
    /// Calls reaching Joulo back to back.
    pub(super) upstream_burst: Option<u32>,
    /// How long a request may wait for a slot.
    #[serde(default, with = "humantime_serde")]
    pub(super) queue_timeout: Option<Duration>,
    /// Requests per minute from one device.
    pub(super) client_per_minute: Option<u32>,
    /// Requests one device may make back to back.
    pub(super) client_burst: Option<u32>,
    /// One device's most of the upstream budget, as a fraction.
    pub(super) device_upstream_share: Option<f64>,
}

/// The `[limits]` table.
#[derive(Debug, Clone)]
pub struct LimitsConfig {
    /// Sustained rate of calls reaching Joulo, all devices together.
    pub upstream_per_minute: NonZeroU32,
    /// Calls that may reach Joulo back to back before the rate applies.
    pub upstream_burst: NonZeroU32,
    /// How long a request may wait for an upstream (or client) slot before 429.
    pub queue_timeout: Duration,
    /// Sustained rate of requests one device may make, cache hits included.
    pub client_per_minute: NonZeroU32,
    /// Requests one device may make back to back (Home Assistant polls all its
    /// sensors at once).
    pub client_burst: NonZeroU32,
    /// The most of `upstream_per_minute` and of `upstream_burst` one device
    /// may spend on cache misses, so one device cannot starve the others.
    pub device_upstream_share: f64,
}

impl LimitsConfig {
    /// One device's share of the upstream budget: calls per minute and burst,
    /// each at least 1.
    pub fn device_quota(&self) -> (NonZeroU32, NonZeroU32) {
        let part = |n: NonZeroU32| {
            // Rounded down: a share is a ceiling; at least one call.
            let calls = (f64::from(n.get()) * self.device_upstream_share).floor() as u32;
            NonZeroU32::new(calls).unwrap_or(NonZeroU32::MIN)
        };
        (part(self.upstream_per_minute), part(self.upstream_burst))
    }
}

/// Checks `[limits]`: every rate and burst at least 1, the device share a
/// fraction in (0, 1].
pub(super) fn validate(raw: &RawLimits, path: &Path) -> Result<LimitsConfig, ConfigError> {
    let non_zero = |value: Option<u32>, default: u32, key: &'static str| {
        NonZeroU32::new(value.unwrap_or(default))
            .ok_or_else(|| ConfigError::invalid(path, key, "must be at least 1".to_owned()))
    };
    Ok(LimitsConfig {
        upstream_per_minute: non_zero(
            raw.upstream_per_minute,
            defaults::UPSTREAM_PER_MINUTE,
            "limits.upstream_per_minute",
        )?,
        upstream_burst: non_zero(
            raw.upstream_burst,
            defaults::UPSTREAM_BURST,
            "limits.upstream_burst",
        )?,
        queue_timeout: raw.queue_timeout.unwrap_or(defaults::QUEUE_TIMEOUT),
        client_per_minute: non_zero(
            raw.client_per_minute,
            defaults::CLIENT_PER_MINUTE,
            "limits.client_per_minute",
        )?,
        client_burst: non_zero(
            raw.client_burst,
            defaults::CLIENT_BURST,
            "limits.client_burst",
        )?,
        device_upstream_share: match raw.device_upstream_share {
            None => defaults::DEVICE_UPSTREAM_SHARE,
            Some(share) if share > 0.0 && share <= 1.0 => share,
            Some(_) => {
                return Err(ConfigError::invalid(
                    path,
                    "limits.device_upstream_share",
                    "must be a fraction above 0 and at most 1, like 0.5".to_owned(),
                ));
            }
        },
    })
}

#[cfg(test)]
mod tests {
    use super::super::tests::parse;

    #[test]
    fn the_device_share_validates() {
        let c = parse(
            "[limits]\ndevice_upstream_share = 0.25\nupstream_per_minute = 30\nupstream_burst = 10",
        )
        .unwrap();
        let (per_minute, burst) = c.limits.device_quota();
        assert_eq!((per_minute.get(), burst.get()), (7, 2));
        let c = parse("[limits]\ndevice_upstream_share = 0.01").unwrap();
        assert_eq!(c.limits.device_quota().1.get(), 1, "never below one call");
        for text in [
            "[limits]\ndevice_upstream_share = 0",
            "[limits]\ndevice_upstream_share = 1.5",
        ] {
            let msg = parse(text).unwrap_err().to_string();
            assert!(
                msg.contains("limits.device_upstream_share") && msg.contains("fraction"),
                "{text:?} gave {msg}"
            );
        }
    }

    #[test]
    fn rates_must_be_at_least_one() {
        let err = parse("[limits]\nupstream_per_minute = 0")
            .unwrap_err()
            .to_string();
        assert!(err.contains("limits.upstream_per_minute"), "{err}");
    }
}
