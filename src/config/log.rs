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

/// The level names `log.level` takes.
const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];

/// Checks `[log]`: the level must be a filter `tracing_subscriber` accepts, so
/// a typo is reported at start rather than silently logging nothing.
pub(super) fn validate(raw: RawLog, path: &Path) -> Result<LogConfig, ConfigError> {
    let level = raw.level.unwrap_or_else(|| "info".to_owned());
    // `tracing` takes a bare word it does not know as a target name, so
    // "warning" would pass and then silence every line: every level named
    // must be one of the six.
    for directive in level.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let named = directive
            .rsplit_once('=')
            .map_or(directive, |(_, level)| level);
        if !LEVELS.iter().any(|l| l.eq_ignore_ascii_case(named.trim())) {
            return Err(ConfigError::invalid(
                path,
                "log.level",
                format!(
                    "`{}` is not a level: use one of {} (or target=level, comma-separated)",
                    named.trim(),
                    LEVELS.join(", ")
                ),
            ));
        }
    }
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

#[cfg(test)]
mod tests {
    use super::super::tests::parse;

    #[test]
    fn unknown_level_names_are_refused() {
        for ok in [
            "info",
            "WARN",
            "warn,hyper=off",
            "joulo_gateway=debug,info",
            "off",
        ] {
            assert!(parse(&format!("[log]\nlevel = \"{ok}\"")).is_ok(), "{ok}");
        }
        for bad in ["warning", "verbose", "info,hyper=loud", "joulo_gateway"] {
            let err = parse(&format!("[log]\nlevel = \"{bad}\""))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("log.level") && err.contains("not a level"),
                "{bad}: {err}"
            );
        }
    }
}
