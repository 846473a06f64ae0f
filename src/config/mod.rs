//! Configuration in two stages: a raw `serde` mirror of `gateway.toml` that rejects
//! unknown keys, then a validated [`Config`] of real types, so nothing downstream
//! ever re-checks a string. Every error names the file, the key and the problem,
//! never a secret value.
//!
//! Each table has its own module holding its raw and validated types side by
//! side and its checks: `server`, `upstream`, `log`, `limits`, `cache`,
//! `routes` (`[routes.<name>]`) and `access` (`[access]`, `[[clients]]`,
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
pub mod defaults;
mod limits;
mod log;
mod routes;
mod server;
mod upstream;

pub use cache::CacheConfig;
pub use limits::LimitsConfig;
pub use log::{LogConfig, LogFormat};
pub use server::{ServerConfig, TlsFiles};
pub use upstream::{Http2, TrustRoots, UpstreamConfig};

/// The file name `joulo-gateway` reads when no `--config` is given.
pub const DEFAULT_CONFIG_PATH: &str = "gateway.toml";

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
        path: PathBuf,
        #[source]
        source: FileError,
    },
    /// TOML syntax, an unknown key or a value of the wrong type.
    #[error("{path}: key `{key}` (line {line}): {message}")]
    Parse {
        path: PathBuf,
        key: String,
        line: usize,
        message: String,
    },
    /// A value that parsed but makes no sense for the gateway.
    #[error("{path}: key `{key}`: {message}")]
    Invalid {
        path: PathBuf,
        key: &'static str,
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
    /// found after parsing, so its line is not known and shows as 0.
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
}

impl Config {
    /// Reads and validates the file at `path`. Relative paths inside it are taken
    /// relative to the file's own folder.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let read_err = |source| ConfigError::Read {
            path: path.to_owned(),
            source,
        };
        let bytes = files::read_regular(path, FILE_LIMIT).map_err(read_err)?;
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
        validate(raw, path, base_dir, env_credentials.as_deref())
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
    /// The `[[clients]]` hashes in the file at `path`; none if it cannot be
    /// read or parsed.
    pub fn read(path: &Path) -> DeviceKeyHashes {
        let table: toml::Table = files::read_regular(path, FILE_LIMIT)
            .ok()
            .and_then(|bytes| std::str::from_utf8(&bytes).ok()?.parse().ok())
            .unwrap_or_default();
        let clients = table.get("clients").and_then(toml::Value::as_array);
        DeviceKeyHashes(
            clients
                .into_iter()
                .flatten()
                .filter_map(|c| c.get("key_sha256")?.as_str())
                .map(|hash| hash.trim().to_ascii_lowercase())
                .collect(),
        )
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
    let access = access::validate(
        &raw.access,
        &raw.ops,
        raw.server.allowed_hosts.as_deref(),
        &raw.clients,
        &raw.routes,
        path,
    )?;
    let server = server::validate(raw.server, path, base_dir)?;
    let upstream = upstream::validate(raw.upstream, path, base_dir, credentials_dir)?;
    let log = log::validate(raw.log, path)?;
    let limits = limits::validate(&raw.limits, path)?;
    let cache = cache::validate(&raw.cache, path)?;
    let routes = routes::validate(&raw.routes, path)?;
    write_routes_have_keys(&routes.enabled_write_routes, &access, path)?;

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
                    "an account-changing route needs device keys: add a [[clients]] entry whose \
                     scopes include \"{scope}\" (joulo-gateway gen-key --name NAME --scopes {scope}); \
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
mod tests {
    use super::*;

    /// Validates `text` as a file `t.toml` whose relative paths resolve in
    /// `/etc/jg`, with no systemd credentials directory.
    pub(super) fn parse(text: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig =
            toml::from_str(text).map_err(|e| parse_error(e, text, Path::new("t.toml")))?;
        validate(raw, Path::new("t.toml"), Path::new("/etc/jg"), None)
    }

    #[test]
    fn empty_file_gives_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c.server.listen, defaults::LISTEN.parse().unwrap());
        assert_eq!(c.upstream.base_url, defaults::BASE_URL);
        assert_eq!(c.upstream.token_file, Path::new(DOCKER_SECRET_PATH));
        assert_eq!(c.upstream.timeout, defaults::TIMEOUT);
        assert!(c.enabled_write_routes.is_empty());
    }

    #[test]
    fn unknown_key_is_named_with_its_table_and_line() {
        let err = parse("[server]\nlisten = \"127.0.0.1:1\"\nlistn = \"x\"\n").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("t.toml"), "{msg}");
        assert!(msg.contains("server.listn"), "{msg}");
        assert!(msg.contains("line 3"), "{msg}");
        assert!(msg.contains("unknown field"), "{msg}");
    }

    #[test]
    fn parser_messages_never_quote_a_value_only_the_expected_names() {
        for (text, value) in [
            ("[log]\nformat = \"hunter2-value\"", "hunter2-value"),
            ("[upstream]\nhttp2 = \"hunter2-value\"", "hunter2-value"),
            ("[server]\nlisten = 123456789", "123456789"),
            ("[server]\nhunter2-key = 1", "unknown field `hunter2-key`"),
        ] {
            let msg = parse(text).unwrap_err().to_string();
            assert!(!msg.contains(value), "{text}: {msg}");
        }
        let msg = parse("[log]\nformat = \"x\"").unwrap_err().to_string();
        assert!(
            msg.contains("unknown variant `...`") && msg.contains("`text`"),
            "{msg}"
        );
        assert_eq!(
            without_quoted_values("invalid type: string \"s3cret\", expected `a` or \"b\""),
            "invalid type: string \"...\", expected `a` or \"...\""
        );
    }

    #[test]
    fn a_device_key_is_recognised_by_its_hash_whatever_its_shape() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.toml");
        let hash = crate::access::key_sha256_hex("own-key-of-any-shape");
        // Not a valid config (the scope is unknown): still read.
        std::fs::write(
            &path,
            format!(
                "[[clients]]\nname = \"a\"\nkey_sha256 = \"{}\"\nscopes = [\"x\"]\n",
                hash.to_uppercase()
            ),
        )
        .unwrap();
        let keys = DeviceKeyHashes::read(&path);
        assert_eq!(
            keys.redact("`own-key-of-any-shape` is not a network, own-key", "[R]"),
            "`[R]` is not a network, own-key"
        );
        assert!(matches!(
            keys.redact("nothing", "[R]"),
            std::borrow::Cow::Borrowed(_)
        ));
    }

    #[test]
    fn bad_values_name_their_key() {
        for (text, key) in [
            ("[server]\nlisten = \"nope\"", "server.listen"),
            (
                "[upstream]\nbase_url = \"http://api.joulo.nl\"",
                "upstream.base_url",
            ),
            (
                "[upstream]\nbase_url = \"https://a/b?x=1\"",
                "upstream.base_url",
            ),
            ("[upstream]\ntimeout = \"0s\"", "upstream.timeout"),
            ("[upstream]\ntimeout = \"ten\"", "upstream.timeout"),
            ("[upstream]\nca_file = \"missing.pem\"", "upstream.ca_file"),
            ("[log]\nformat = \"xml\"", "log.format"),
            (
                "[server]\nmax_connections_per_ip = 0",
                "server.max_connections_per_ip",
            ),
            ("[routes.teleport]\nenabled = true", "routes.teleport"),
            (
                "[routes.chargers]\nenabled = false",
                "routes.chargers.enabled",
            ),
        ] {
            let msg = parse(text).unwrap_err().to_string();
            assert!(msg.contains(key), "{text:?} gave {msg}");
        }
    }

    #[cfg(unix)]
    #[test]
    fn the_config_and_ca_file_must_be_regular_files() {
        let msg = parse("[upstream]\nca_file = \"/dev/zero\"")
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("upstream.ca_file") && msg.contains("is a character device"),
            "{msg}"
        );
        let dir = tempfile::tempdir().unwrap();
        let msg = Config::load(dir.path()).unwrap_err().to_string();
        assert!(
            msg.contains("cannot read config file") && msg.contains("is a directory"),
            "{msg}"
        );
        let big = dir.path().join("big.toml");
        std::fs::write(&big, "#".repeat(FILE_LIMIT as usize + 1)).unwrap();
        let msg = Config::load(&big).unwrap_err().to_string();
        assert!(msg.contains("larger than 1048576 bytes"), "{msg}");
    }

    #[test]
    fn write_routes_are_opt_in_and_need_a_device_key_with_their_scope() {
        let hash = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        let writer = format!(
            "[[clients]]\nname = \"admin\"\nkey_sha256 = \"{hash}\"\nscopes = [\"chargers:write\"]\n"
        );
        let c = parse(&format!(
            "[routes.add_charger]\nenabled = true\n[routes.reboot_charger]\nenabled = false\n{writer}"
        ))
        .unwrap();
        assert_eq!(c.enabled_write_routes, vec![RouteId::AddCharger]);
        for text in [
            "[routes.reboot_charger]\nenabled = true".to_owned(),
            format!(
                "[routes.reboot_charger]\nenabled = true\n\
                 [[clients]]\nname = \"ha\"\nkey_sha256 = \"{hash}\"\nscopes = [\"chargers:read\"]"
            ),
        ] {
            let msg = parse(&text).unwrap_err().to_string();
            assert!(
                msg.contains("routes.reboot_charger.enabled")
                    && msg.contains("[[clients]]")
                    && msg.contains("chargers:write"),
                "{msg}"
            );
        }
    }

    #[test]
    fn shipped_config_matches_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("gateway.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let shipped: RawConfig = toml::from_str(&text).unwrap();
        let d = validate(RawConfig::default(), &path, Path::new("/x"), None).unwrap();
        let s = validate(shipped, &path, Path::new("/x"), None).unwrap();
        // Every field named, none left to `..`: a new key must be compared
        // here (or say why not), or this does not compile.
        let Config {
            server,
            upstream,
            log,
            access,
            limits,
            cache,
            enabled_write_routes,
            extra_params,
        } = &s;
        let ServerConfig {
            listen,
            header_timeout,
            shutdown_grace,
            tls,
            tls_handshake_timeout,
            max_header_size,
            max_request_body,
            max_connections,
            max_connections_per_ip,
            idle_timeout,
            h2_max_streams,
            max_answer_memory,
            max_answer_memory_per_connection,
            worker_threads,
        } = server;
        assert_eq!(*listen, d.server.listen);
        assert_eq!(*header_timeout, d.server.header_timeout);
        assert_eq!(*shutdown_grace, d.server.shutdown_grace);
        assert_eq!(*tls_handshake_timeout, d.server.tls_handshake_timeout);
        assert!(tls.is_none());
        assert_eq!(*max_header_size, d.server.max_header_size);
        assert_eq!(*max_request_body, d.server.max_request_body);
        assert_eq!(*max_connections, d.server.max_connections);
        assert_eq!(*max_connections_per_ip, d.server.max_connections_per_ip);
        assert_eq!(*idle_timeout, d.server.idle_timeout);
        assert_eq!(*h2_max_streams, d.server.h2_max_streams);
        assert_eq!(*max_answer_memory, d.server.max_answer_memory);
        assert_eq!(
            *max_answer_memory_per_connection,
            d.server.max_answer_memory_per_connection
        );
        assert_eq!(*worker_threads, d.server.worker_threads);
        let AccessConfig {
            allow,
            allowed_hosts,
            clients,
            route_scopes,
            ops_allow,
        } = access;
        assert_eq!(*allow, d.access.allow);
        assert_eq!(*allowed_hosts, d.access.allowed_hosts);
        assert!(clients.is_empty());
        assert_eq!(*ops_allow, d.access.ops_allow);
        assert_eq!(*route_scopes, d.access.route_scopes);
        let UpstreamConfig {
            base_url,
            // Where the token lies is the installer's choice, not a default
            // to keep in step.
            token_file: _,
            token_origin: _,
            roots,
            http2,
            extra_roots,
            connect_timeout,
            timeout,
            token_poll_interval,
        } = upstream;
        assert_eq!(*base_url, d.upstream.base_url);
        assert_eq!(*connect_timeout, d.upstream.connect_timeout);
        assert_eq!(*roots, d.upstream.roots);
        assert_eq!(*http2, d.upstream.http2);
        assert!(extra_roots.is_empty());
        assert_eq!(*timeout, d.upstream.timeout);
        assert_eq!(*token_poll_interval, d.upstream.token_poll_interval);
        let LogConfig { level, format } = log;
        assert_eq!(*level, d.log.level);
        assert_eq!(*format, d.log.format);
        assert_eq!(*enabled_write_routes, d.enabled_write_routes);
        let LimitsConfig {
            upstream_per_minute,
            upstream_burst,
            queue_timeout,
            client_per_minute,
            client_burst,
            device_upstream_share,
        } = limits;
        assert_eq!(*upstream_per_minute, d.limits.upstream_per_minute);
        assert_eq!(*upstream_burst, d.limits.upstream_burst);
        assert_eq!(*queue_timeout, d.limits.queue_timeout);
        assert_eq!(*client_per_minute, d.limits.client_per_minute);
        assert_eq!(*client_burst, d.limits.client_burst);
        assert_eq!(*device_upstream_share, d.limits.device_upstream_share);
        assert!(extra_params.is_empty());
        let CacheConfig {
            ttl,
            // Per route: checked below.
            route_ttl: _,
            stale_if_error,
            max_entries,
            max_body,
        } = cache;
        assert_eq!(*ttl, d.cache.ttl);
        assert_eq!(*stale_if_error, d.cache.stale_if_error);
        assert_eq!(*max_entries, d.cache.max_entries);
        assert_eq!(*max_body, d.cache.max_body);
        // The shipped file sets per-route TTLs following Joulo's polling advice:
        // live status in seconds, slow-moving totals in minutes.
        assert_eq!(s.cache.ttl_for(RouteId::Chargers), Duration::from_secs(15));
        assert_eq!(s.cache.ttl_for(RouteId::Energy), Duration::from_secs(600));
        assert_eq!(
            s.cache.ttl_for(RouteId::ErePosition),
            Duration::from_secs(600)
        );
        assert_eq!(s.cache.ttl_for(RouteId::AddCharger), Duration::ZERO);
    }
}
