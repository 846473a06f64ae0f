//! The `[log]` table: the `tracing` filter and the output format.

use std::path::Path;

use serde::Deserialize;

use super::ConfigError;

/// `[log]` as written; an unset key takes its default in [`validate`].
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLog {
    /// A `tracing` filter directive, checked by parsing it.
    pub(super) level: Option<String>,
    /// Text or JSON.
    pub(super) format: Option<LogFormat>,
}

/// The `[log]` table.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// A `tracing` filter directive; `RUST_LOG` overrides it.
    pub level: String,
    /// Human-readable lines or one JSON object per event.
    pub format: LogFormat,
}

/// How log events are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One human-readable line per event.
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".to_owned(),
            format: LogFormat::Text,
        }
    }
}

/// Checks `[log]`: the level must be a filter `tracing_subscriber` accepts, so
/// a typo is reported at start rather than silently logging nothing.
pub(super) fn validate(raw: RawLog, path: &Path) -> Result<LogConfig, ConfigError> {
    let level = raw.level.unwrap_or_else(|| "info".to_owned());
    if let Err(e) = tracing_subscriber::EnvFilter::builder().parse(&level) {
        return Err(ConfigError::invalid(
            path,
            "log.level",
            format!("`{level}` is not a filter: {e}"),
        ));
    }
    Ok(LogConfig {
        level,
        format: raw.format.unwrap_or(LogFormat::Text),
    })
}
