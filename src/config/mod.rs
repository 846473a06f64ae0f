//! Configuration in two stages: a raw `serde` mirror of `gateway.toml` that rejects
//! unknown keys, then a validated [`Config`] of real types, so nothing downstream
//! ever re-checks a string. Every error names the file, the key and the problem,
//! never a secret value.
//!
//! Each table has its own module holding its raw and validated types side by
//! side and its checks: `server`, `upstream`, `log`, `limits`, `cache`,
//! `routes` (`[routes.<name>]`), `mqtt` and `access` (`[access]`, `[[clients]]`,
//! `allowed_hosts`, route scopes and `[ops]`). This module reads the file, runs those
//! checks and the ones that span tables.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::access::{AccessConfig, Scope};
use crate::files::{self, FileError};
use crate::routes::RouteId;

mod access;
mod cache;
mod choices;
pub(crate) mod defaults;
mod limits;
mod log;
mod mqtt;
mod routes;
mod server;
mod upstream;

pub use cache::CacheConfig;
pub use limits::LimitsConfig;
pub use log::{LogConfig, LogFormat};
pub use mqtt::{MqttConfig, MqttPassword};
pub use server::{ServerConfig, TlsFiles};
pub use upstream::{Http2, TrustRoots, UpstreamConfig};

/// The file name `joulo-gateway` reads when no `--config` is given.
pub const DEFAULT_CONFIG_PATH: &str = "gateway.toml";

/// Where the Debian package and the container image keep the config: read
/// when no `--config` is given and there is no `gateway.toml` here.
pub const INSTALLED_CONFIG_PATH: &str = "/etc/joulo-gateway/gateway.toml";

/// Where a systemd `LoadCredential=` puts the token, relative to `$CREDENTIALS_DIRECTORY`.
const CREDENTIAL_NAME: &str = "joulo_token";

/// Where Docker and Compose mount a secret named `joulo_token`.
const DOCKER_SECRET_PATH: &str = "/run/secrets/joulo_token";

/// The most the config file or `upstream.ca_file` may hold; either is a few
/// KiB, and reading stops here rather than filling memory.
const FILE_LIMIT: u64 = 1024 * 1024;

/// A configuration problem, phrased for the person editing the file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read at all, is not a regular file, is far too
    /// long or is not UTF-8.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The config file.
        path: PathBuf,
        /// Why it could not be read.
        #[source]
        source: FileError,
    },
    /// There is no file at the path.
    #[error(
        "no config file at {path} (looked for {}{}): pass yours with --config PATH \
         (the Debian package's is /etc/joulo-gateway/gateway.toml)",
        std::path::absolute(path).unwrap_or_else(|_| path.clone()).display(),
        if path == Path::new(DEFAULT_CONFIG_PATH) { " and /etc/joulo-gateway/gateway.toml" } else { "" }
    )]
    Missing {
        /// The path looked at, as given.
        path: PathBuf,
    },
    /// TOML syntax, an unknown key or a value of the wrong type.
    #[error("{path}: key `{key}`{at}: {message}", at = at_line(*line))]
    Parse {
        /// The config file.
        path: PathBuf,
        /// The key the problem is at.
        key: String,
        /// The line the problem is on; 0 when the key is not written in the
        /// file (a missing key).
        line: usize,
        /// What is wrong, as the parser says it.
        message: String,
    },
    /// The devices file (`[access] devices_file`) could not be read or does
    /// not validate.
    #[error(transparent)]
    Devices(#[from] crate::devices::DevicesError),
    /// A value that parsed but makes no sense for the gateway.
    #[error("{path}: key `{key}`: {message}")]
    Invalid {
        /// The config file.
        path: PathBuf,
        /// The key whose value is refused.
        key: &'static str,
        /// What is wrong with the value.
        message: String,
    },
}

impl ConfigError {
    /// A value that parsed but makes no sense, at `key`.
    fn invalid(path: &Path, key: &'static str, message: String) -> ConfigError {
        ConfigError::Invalid {
            path: path.to_owned(),
            key,
            message,
        }
    }

    /// A problem at a key named at run time (a route, a `[[clients]]` entry),
    /// found after parsing: its line is looked up in the text afterwards
    /// ([`with_line`]).
    fn at_key(path: &Path, key: String, message: String) -> ConfigError {
        ConfigError::Parse {
            path: path.to_owned(),
            key,
            line: 0,
            message,
        }
    }
}

/// The whole file as written; each table's raw type lives beside its validated
/// type in the section's module.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    /// `[server]`.
    #[serde(default)]
    server: server::RawServer,
    /// `[upstream]`.
    #[serde(default)]
    upstream: upstream::RawUpstream,
    /// `[log]`.
    #[serde(default)]
    log: log::RawLog,
    /// `[access]`.
    #[serde(default)]
    access: access::RawAccess,
    /// `[ops]`.
    #[serde(default)]
    ops: access::RawOps,
    /// `[[clients]]`, one entry per device key.
    #[serde(default)]
    clients: Vec<access::RawClient>,
    /// `[limits]`.
    #[serde(default)]
    limits: limits::RawLimits,
    /// `[cache]`.
    #[serde(default)]
    cache: cache::RawCache,
    /// `[routes.<name>]`, by route name as written.
    #[serde(default)]
    routes: BTreeMap<String, routes::RawRoute>,
    /// `[mqtt]`: the Home Assistant publisher, off when absent.
    #[serde(default)]
    mqtt: Option<mqtt::RawMqtt>,
}

/// The whole validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The LAN-facing listener.
    pub server: ServerConfig,
    /// Where requests go and with which credential.
    pub upstream: UpstreamConfig,
    /// How the gateway reports what it does.
    pub log: LogConfig,
    /// Who may call.
    pub access: AccessConfig,
    /// How the token's upstream budget is shared out.
    pub limits: LimitsConfig,
    /// What is cached, and for how long.
    pub cache: CacheConfig,
    /// The account-changing routes the operator switched on; read routes are always on.
    pub enabled_write_routes: Vec<RouteId>,
    /// Query parameters beyond Joulo's documented ones, by route, from
    /// `[routes.<name>] extra_params`: for a parameter Joulo adds later.
    pub extra_params: HashMap<RouteId, Vec<String>>,
    /// The MQTT publisher for Home Assistant; `None`: off.
    pub mqtt: Option<MqttConfig>,
}

impl Config {
    /// Reads and validates the file at `path`. Relative paths inside it are taken
    /// relative to the file's own folder.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let read_err = |source| ConfigError::Read {
            path: path.to_owned(),
            source,
        };
        let bytes = match files::read_regular(path, FILE_LIMIT) {
            Err(FileError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ConfigError::Missing {
                    path: path.to_owned(),
                });
            }
            other => other.map_err(read_err)?,
        };
        // Whoever can edit it can send the token elsewhere (base_url and
        // ca_file): not writable by others, nor in a folder they can write.
        files::check_not_writable_by_others(path).map_err(read_err)?;
        let text = std::str::from_utf8(&bytes).map_err(|_| {
            read_err(FileError::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "it is not UTF-8 text",
            )))
        })?;
        Config::from_toml(text, path)
    }

    /// Validates TOML text as if it had been read from `path`.
    pub fn from_toml(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| parse_error(e, text, path))?;
        let base_dir = path.parent().unwrap_or(Path::new("."));
        // Only an absolute directory counts: an empty or relative value would
        // make `./joulo_token` (or anything) a "credential".
        let env_credentials = std::env::var_os("CREDENTIALS_DIRECTORY")
            .map(PathBuf::from)
            .filter(|dir| dir.is_absolute() && dir != Path::new("/"));
        validate(raw, path, base_dir, env_credentials.as_deref()).map_err(|e| with_line(e, text))
    }
}

/// The token files the config at `path` leads to, as far as they can be
/// told from a file that may not validate (only `upstream.token_file` and
/// `upstream.token_credential` are looked at, as written) plus the
/// platform's places: what a start-up error must be scrubbed of.
pub fn token_file_candidates(path: &Path) -> Vec<PathBuf> {
    let table: toml::Table = files::read_regular(path, FILE_LIMIT)
        .ok()
        .and_then(|bytes| std::str::from_utf8(&bytes).ok()?.parse().ok())
        .unwrap_or_default();
    let upstream = table.get("upstream").and_then(toml::Value::as_table);
    let text = |key: &str| upstream.and_then(|u| u.get(key)?.as_str());
    let base_dir = path.parent().unwrap_or(Path::new("."));
    let mut candidates = Vec::new();
    if let Some(file) = text("token_file") {
        candidates.push(base_dir.join(file));
    }
    if let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from)
        && dir.is_absolute()
    {
        let name = text("token_credential").unwrap_or(CREDENTIAL_NAME);
        // A name with a `/` would lead out of the folder: not a credential.
        if !name.contains('/') {
            candidates.push(dir.join(name));
        }
    }
    candidates.push(PathBuf::from(DOCKER_SECRET_PATH));
    candidates
}

/// The device keys the config at `path` names, known only by their
/// `key_sha256` (read from the raw TOML, so even a config that does not
/// validate counts): a word of a message whose SHA-256 is one of them is a
/// device key pasted where it does not belong, whatever its shape.
#[derive(Debug, Default)]
pub struct DeviceKeyHashes(Vec<String>);

impl DeviceKeyHashes {
    /// The `[[clients]]` hashes in the file at `path`, and those of the
    /// devices file it names (`[access] devices_file`, as written, or its
    /// default); none from a file that cannot be read or parsed.
    pub fn read(path: &Path) -> DeviceKeyHashes {
        let table = |path: &Path| -> toml::Table {
            files::read_regular(path, FILE_LIMIT)
                .ok()
                .and_then(|bytes| std::str::from_utf8(&bytes).ok()?.parse().ok())
                .unwrap_or_default()
        };
        let hashes = |table: &toml::Table, key: &str| -> Vec<String> {
            table
                .get(key)
                .and_then(toml::Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|c| c.get("key_sha256")?.as_str())
                .map(|hash| hash.trim().to_ascii_lowercase())
                .collect()
        };
        let config = table(path);
        let devices_file = config
            .get("access")
            .and_then(|a| a.get("devices_file"))
            .and_then(toml::Value::as_str)
            .unwrap_or(defaults::DEVICES_FILE);
        let base_dir = path.parent().unwrap_or(Path::new("."));
        let mut all = hashes(&config, "clients");
        all.extend(hashes(&table(&base_dir.join(devices_file)), "device"));
        DeviceKeyHashes(all)
    }

    /// `text` with every word (between spaces, quotes, backticks, commas and
    /// brackets) that hashes to a configured key replaced by `replacement`.
    pub fn redact<'t>(&self, text: &'t str, replacement: &str) -> std::borrow::Cow<'t, str> {
        if self.0.is_empty() {
            return text.into();
        }
        let separator = |c: char| {
            c.is_whitespace() || matches!(c, '`' | '"' | '\'' | ',' | '[' | ']' | '(' | ')')
        };
        let mut out = text.to_owned();
        let mut changed = false;
        for word in text.split(separator).filter(|w| !w.is_empty()) {
            if self.0.contains(&crate::access::key_sha256_hex(word)) {
                out = out.replace(word, replacement);
                changed = true;
            }
        }
        if changed { out.into() } else { text.into() }
    }
}

/// Validates each section, then what spans sections. `base_dir` is the config
/// file's folder, for relative paths in it; `credentials_dir` is systemd's
/// `$CREDENTIALS_DIRECTORY`, if set.
fn validate(
    raw: RawConfig,
    path: &Path,
    base_dir: &Path,
    credentials_dir: Option<&Path>,
) -> Result<Config, ConfigError> {
    let devices_file = base_dir.join(
        raw.access
            .devices_file
            .as_deref()
            .unwrap_or(defaults::DEVICES_FILE),
    );
    let devices = crate::devices::load(&devices_file)?
        .into_iter()
        .map(|d| d.key)
        .collect();
    let mut access = access::validate(
        &raw.access,
        &raw.ops,
        raw.server.allowed_hosts.as_deref(),
        &raw.clients,
        &raw.routes,
        devices,
        path,
    )?;
    access.devices_file = devices_file;
    let server = server::validate(raw.server, path, base_dir)?;
    let upstream = upstream::validate(raw.upstream, path, base_dir, credentials_dir)?;
    let log = log::validate(raw.log, path)?;
    let limits = limits::validate(&raw.limits, path)?;
    let cache = cache::validate(&raw.cache, path)?;
    let routes = routes::validate(&raw.routes, path)?;
    write_routes_have_keys(&routes.enabled_write_routes, &access, path)?;
    let mqtt = mqtt::validate(raw.mqtt, path, base_dir, credentials_dir)?;

    Ok(Config {
        server,
        upstream,
        log,
        access,
        limits,
        cache: CacheConfig {
            route_ttl: routes.route_ttl,
            ..cache
        },
        enabled_write_routes: routes.enabled_write_routes,
        extra_params: routes.extra_params,
        mqtt,
    })
}

/// Every enabled account-changing route needs a device key holding its scope:
/// without device keys every device on an allowed network (guest and IoT
/// networks are private ranges too) could change the account.
fn write_routes_have_keys(
    enabled_write_routes: &[RouteId],
    access: &AccessConfig,
    path: &Path,
) -> Result<(), ConfigError> {
    for route in enabled_write_routes {
        let scope = access
            .route_scopes
            .get(route)
            .copied()
            .unwrap_or_else(|| Scope::default_for(*route));
        if !access.clients.iter().any(|c| c.scopes.contains(&scope)) {
            return Err(ConfigError::at_key(
                path,
                format!("routes.{}.enabled", route.config_name()),
                format!(
                    "an account-changing route needs a device key whose scopes include \"{scope}\" \
                     (joulo-gateway device add NAME --scopes {scope}, or a [[clients]] entry); \
                     without one any device on an allowed network could use it",
                    scope = scope.as_str()
                ),
            ));
        }
    }
    Ok(())
}

/// A duration key that must be above zero, or `default` when unset: a zero
/// timeout would refuse everything, and tokio's `interval` panics on a zero
/// poll interval.
fn positive(
    value: Option<Duration>,
    default: Duration,
    key: &'static str,
    path: &Path,
) -> Result<Duration, ConfigError> {
    let value = value.unwrap_or(default);
    if value.is_zero() {
        return Err(ConfigError::invalid(
            path,
            key,
            "must be longer than 0s".to_owned(),
        ));
    }
    Ok(value)
}

/// Turns a `toml` error into one naming the dotted key, without quoting the file's
/// text: a line could hold a value the operator would rather not see in a journal.
fn parse_error(e: toml::de::Error, text: &str, path: &Path) -> ConfigError {
    let offset = e.span().map(|s| s.start).unwrap_or(0);
    let (line, key) = locate_key(text, offset);
    ConfigError::Parse {
        path: path.to_owned(),
        key,
        line,
        message: without_quoted_values(e.message()),
    }
}

/// A parser message with the values it quotes left out: in double quotes
/// (`invalid type: string "..."`), and in backticks before its `expected`
/// part (`unknown variant `...``, `invalid type: integer `...``, `unknown
/// field `...``): a value may be a secret pasted in the wrong place, and the
/// key is named beside the message anyway. What follows `expected` is the
/// gateway's own list of names, kept.
fn without_quoted_values(message: &str) -> String {
    let own_names = message.find("expected").unwrap_or(message.len());
    let mut out = String::with_capacity(message.len());
    let mut quote = None;
    for (at, c) in message.char_indices() {
        match (quote, c) {
            (None, '"') | (None, '`') if c == '"' || at < own_names => {
                out.push(c);
                out.push_str("...");
                quote = Some(c);
            }
            (Some(open), c) if c == open => {
                out.push(c);
                quote = None;
            }
            (Some(_), _) => {}
            (None, c) => out.push(c),
        }
    }
    out
}

/// " (line N)", or nothing when the line is not known.
fn at_line(line: usize) -> String {
    if line == 0 {
        String::new()
    } else {
        format!(" (line {line})")
    }
}

/// `e` with the line of its key, when it was found after parsing.
fn with_line(e: ConfigError, text: &str) -> ConfigError {
    match e {
        ConfigError::Parse {
            path,
            key,
            line: 0,
            message,
        } => ConfigError::Parse {
            line: line_of_key(text, &key),
            path,
            key,
            message,
        },
        ConfigError::Invalid { path, key, message } if line_of_key(text, key) > 0 => {
            ConfigError::Parse {
                line: line_of_key(text, key),
                path,
                key: key.to_owned(),
                message,
            }
        }
        other => other,
    }
}

/// The 1-based line where dotted `key` (`access.allow`, `clients[1].name`,
/// `routes.me.scope`) is written in `text`: its own line, else its table's
/// header; 0 when neither is written.
fn line_of_key(text: &str, key: &str) -> usize {
    // The table part and the leaf: `clients[1].name` is the second
    // `[[clients]]` table's `name`.
    let (table, leaf) = key.rsplit_once('.').unwrap_or(("", key));
    let (table, index) = match table.split_once('[') {
        Some((name, rest)) => (name, rest.trim_end_matches(']').parse::<usize>().ok()),
        None => (table, None),
    };
    let clean = |s: &str| {
        s.split('.')
            .map(|p| p.trim().trim_matches('"'))
            .collect::<Vec<_>>()
            .join(".")
    };
    let mut current = String::new();
    let mut seen = 0usize;
    let mut header_line = 0;
    let mut in_target = table.is_empty();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if let Some(header) = line.strip_prefix("[[").and_then(|l| l.split("]]").next()) {
            current = clean(header);
            in_target = current == table
                && index.is_none_or(|n| {
                    seen += 1;
                    seen == n + 1
                });
        } else if let Some(header) = line.strip_prefix('[').and_then(|l| l.split(']').next()) {
            current = clean(header);
            in_target = current == table && index.is_none();
        } else if in_target && line.split_once('=').is_some_and(|(k, _)| clean(k) == leaf) {
            return i + 1;
        } else if table.is_empty() || current.is_empty() {
            // A dotted key at the top (`access.allow = ...`).
            if line.split_once('=').is_some_and(|(k, _)| clean(k) == key) {
                return i + 1;
            }
        }
        if in_target && header_line == 0 && !table.is_empty() && line.starts_with('[') {
            header_line = i + 1;
        }
    }
    header_line
}

/// The 1-based line of `offset` and the dotted key defined on it (or the table
/// header it belongs to).
fn locate_key(text: &str, offset: usize) -> (usize, String) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line_no = before.matches('\n').count() + 1;
    let mut table = String::new();
    let mut key = None;
    for (i, line) in text.lines().enumerate() {
        if i + 1 > line_no {
            break;
        }
        let line = line.trim();
        if let Some(header) = line
            .strip_prefix("[[")
            .and_then(|l| l.split("]]").next())
            .or_else(|| line.strip_prefix('[').and_then(|l| l.split(']').next()))
        {
            table = header.trim().to_owned();
            key = None;
        } else if i + 1 == line_no {
            key = line
                .split_once('=')
                .map(|(k, _)| k.trim().trim_matches('"').to_owned());
        }
    }
    let dotted = match (table.is_empty(), key) {
        (true, Some(k)) => k,
        (false, Some(k)) => format!("{table}.{k}"),
        (false, None) => table,
        (true, None) => "(top level)".to_owned(),
    };
    (line_no, dotted)
}

#[cfg(test)]
mod tests;
