//! Configuration in two stages: a raw `serde` mirror of `gateway.toml` that rejects
//! unknown keys, then a validated [`Config`] of real types, so nothing downstream
//! ever re-checks a string. Every error names the file, the key and the problem,
//! never a secret value.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::Uri;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde::Deserialize;

use crate::access::{AccessConfig, DEFAULT_ALLOW, DeviceKey, Scope};
use crate::files::{self, FileError};
use crate::routes::RouteId;

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

// ---------------------------------------------------------------------------
// Raw stage: exactly what the file says.

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    upstream: RawUpstream,
    #[serde(default)]
    log: RawLog,
    #[serde(default)]
    access: RawAccess,
    #[serde(default)]
    clients: Vec<RawClient>,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    cache: RawCache,
    #[serde(default)]
    routes: BTreeMap<String, RawRoute>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAccess {
    allow: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClient {
    name: String,
    key_sha256: String,
    scopes: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    upstream_per_minute: Option<u32>,
    upstream_burst: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    queue_timeout: Option<Duration>,
    client_per_minute: Option<u32>,
    client_burst: Option<u32>,
    device_upstream_share: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCache {
    #[serde(default, with = "humantime_serde")]
    ttl: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    stale_if_error: Option<Duration>,
    max_entries: Option<usize>,
    max_body: Option<bytesize::ByteSize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Option<String>,
    allowed_hosts: Option<Vec<String>>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    #[serde(default, with = "humantime_serde")]
    tls_handshake_timeout: Option<Duration>,
    max_header_size: Option<bytesize::ByteSize>,
    max_request_body: Option<bytesize::ByteSize>,
    max_connections: Option<usize>,
    max_connections_per_ip: Option<usize>,
    #[serde(default, with = "humantime_serde")]
    idle_timeout: Option<Duration>,
    h2_max_streams: Option<u32>,
    worker_threads: Option<usize>,
    #[serde(default, with = "humantime_serde")]
    header_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    shutdown_grace: Option<Duration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    base_url: Option<String>,
    token_file: Option<PathBuf>,
    ca_file: Option<PathBuf>,
    roots: Option<TrustRoots>,
    #[serde(default, with = "humantime_serde")]
    connect_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    token_poll_interval: Option<Duration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    level: Option<String>,
    format: Option<LogFormat>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    enabled: Option<bool>,
    scope: Option<String>,
    #[serde(default, with = "humantime_serde")]
    ttl: Option<Duration>,
    extra_params: Option<Vec<String>>,
}

// ---------------------------------------------------------------------------
// Validated stage.

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

/// The `[server]` table.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address the gateway binds; home devices connect here.
    pub listen: SocketAddr,
    /// A client must finish sending request headers within this, so half-open
    /// (slowloris) connections cannot pile up. A new connection's first request
    /// head must arrive within this of its accept, TLS handshake included.
    pub header_timeout: Duration,
    /// How long in-flight requests may run on after SIGTERM before the process exits.
    pub shutdown_grace: Duration,
    /// Certificate and key for HTTPS on the LAN; plain HTTP when unset.
    pub tls: Option<TlsFiles>,
    /// Bound on a LAN client's TLS handshake.
    pub tls_handshake_timeout: Duration,
    /// Larger request heads get 431.
    pub max_header_size: usize,
    /// Larger request bodies (on the POST routes) get 413.
    pub max_request_body: usize,
    /// Connections served at once; more wait in the kernel's backlog.
    pub max_connections: usize,
    /// Connections from one address (IPv4-mapped IPv6 counted as IPv4) at once;
    /// more are refused with 429, so one device cannot take every slot.
    pub max_connections_per_ip: usize,
    /// A connection with no bytes moving for this long is closed.
    pub idle_timeout: Duration,
    /// Concurrent requests on one HTTP/2 connection.
    pub h2_max_streams: u32,
    /// Event loops serving connections, each a single-threaded runtime on its
    /// own thread.
    pub worker_threads: usize,
}

/// PEM files for the gateway's own HTTPS listener.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// Certificate chain, leaf first.
    pub cert: PathBuf,
    /// Private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// The `[upstream]` table.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// The Joulo API root; an allowlisted route path is appended to it.
    pub base_url: Uri,
    /// The file holding the Joulo token, re-read when it changes.
    pub token_file: PathBuf,
    /// Which store of trust anchors verifies Joulo's certificate.
    pub roots: TrustRoots,
    /// Trust anchors added to `roots` (a private CA, a test CA).
    pub extra_roots: Vec<CertificateDer<'static>>,
    /// Bound on TCP connect to the upstream.
    pub connect_timeout: Duration,
    /// Bound on waiting for the upstream's response head, TLS handshake included.
    pub timeout: Duration,
    /// How often the token file's metadata is checked for a rotation.
    pub token_poll_interval: Duration,
}

/// Where the trust anchors for Joulo's certificate come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrustRoots {
    /// Mozilla's root list compiled into the binary (webpki-roots): the same
    /// on every platform, needing no CA bundle in the container or OS.
    Webpki,
    /// The operating system's store (Debian's ca-certificates), read at start:
    /// its updates, distrust included, apply at the next start.
    System,
    /// Both: a certificate either store accepts.
    Both,
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

/// Defaults, in one place so `gateway.toml` and the code cannot drift apart silently:
/// `config::tests::shipped_config_matches_defaults` compares them.
pub mod defaults {
    use std::time::Duration;

    pub const LISTEN: &str = "0.0.0.0:8080";
    pub const BASE_URL: &str = "https://api.joulo.nl/functions/v1/api";
    /// The compiled-in roots: the gateway verifies Joulo the same way in a
    /// distroless container, a Home Assistant add-on and on a Pi, with no
    /// dependence on a CA bundle being installed or current.
    pub const ROOTS: super::TrustRoots = super::TrustRoots::Webpki;
    pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
    pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
    pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
    pub const TIMEOUT: Duration = Duration::from_secs(10);
    pub const TOKEN_POLL_INTERVAL: Duration = Duration::from_secs(1);
    pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
    pub const MAX_HEADER_SIZE: usize = 16 * 1024;
    pub const MAX_REQUEST_BODY: usize = 64 * 1024;
    pub const MAX_CONNECTIONS: usize = 512;
    pub const MAX_CONNECTIONS_PER_IP: usize = 64;
    pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
    pub const H2_MAX_STREAMS: u32 = 64;
    pub const WORKER_THREADS: usize = 1;
    pub const UPSTREAM_PER_MINUTE: u32 = 30;
    pub const UPSTREAM_BURST: u32 = 10;
    pub const QUEUE_TIMEOUT: Duration = Duration::from_secs(2);
    pub const CLIENT_PER_MINUTE: u32 = 120;
    pub const CLIENT_BURST: u32 = 30;
    pub const DEVICE_UPSTREAM_SHARE: f64 = 0.5;
    pub const CACHE_TTL: Duration = Duration::from_secs(15);
    pub const STALE_IF_ERROR: Duration = Duration::from_secs(600);
    pub const MAX_ENTRIES: usize = 512;
    pub const MAX_BODY: usize = 1024 * 1024;
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
        let env_credentials = std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from);
        validate(raw, path, base_dir, env_credentials.as_deref())
    }
}

fn validate(
    raw: RawConfig,
    path: &Path,
    base_dir: &Path,
    credentials_dir: Option<&Path>,
) -> Result<Config, ConfigError> {
    let invalid = |key: &'static str, message: String| ConfigError::Invalid {
        path: path.to_owned(),
        key,
        message,
    };

    let access = validate_access(&raw, path)?;
    let listen_text = raw.server.listen.as_deref().unwrap_or(defaults::LISTEN);
    let listen: SocketAddr = listen_text.parse().map_err(|_| {
        invalid(
            "server.listen",
            format!("`{listen_text}` is not an address with a port, like \"0.0.0.0:8080\""),
        )
    })?;
    let header_timeout = positive(
        raw.server.header_timeout,
        defaults::HEADER_TIMEOUT,
        "server.header_timeout",
        path,
    )?;
    let shutdown_grace = raw
        .server
        .shutdown_grace
        .unwrap_or(defaults::SHUTDOWN_GRACE);

    let base_text = raw
        .upstream
        .base_url
        .as_deref()
        .unwrap_or(defaults::BASE_URL)
        .trim_end_matches('/');
    let base_url = parse_base_url(base_text).map_err(|m| invalid("upstream.base_url", m))?;

    let token_file = match raw.upstream.token_file {
        Some(p) => base_dir.join(p),
        None => match credentials_dir {
            Some(dir) => dir.join(CREDENTIAL_NAME),
            None => PathBuf::from(DOCKER_SECRET_PATH),
        },
    };

    let extra_roots = match raw.upstream.ca_file {
        Some(p) => load_roots(&base_dir.join(&p)).map_err(|m| invalid("upstream.ca_file", m))?,
        None => Vec::new(),
    };

    let roots = raw.upstream.roots.unwrap_or(defaults::ROOTS);

    let connect_timeout = positive(
        raw.upstream.connect_timeout,
        defaults::CONNECT_TIMEOUT,
        "upstream.connect_timeout",
        path,
    )?;
    let timeout = positive(
        raw.upstream.timeout,
        defaults::TIMEOUT,
        "upstream.timeout",
        path,
    )?;
    let token_poll_interval = positive(
        raw.upstream.token_poll_interval,
        defaults::TOKEN_POLL_INTERVAL,
        "upstream.token_poll_interval",
        path,
    )?;

    let level = raw.log.level.unwrap_or_else(|| "info".to_owned());
    if let Err(e) = tracing_subscriber::EnvFilter::builder().parse(&level) {
        return Err(invalid(
            "log.level",
            format!("`{level}` is not a filter: {e}"),
        ));
    }
    let log = LogConfig {
        level,
        format: raw.log.format.unwrap_or(LogFormat::Text),
    };

    let non_zero = |value: Option<u32>, default: u32, key: &'static str| {
        NonZeroU32::new(value.unwrap_or(default))
            .ok_or_else(|| invalid(key, "must be at least 1".to_owned()))
    };
    let limits = LimitsConfig {
        upstream_per_minute: non_zero(
            raw.limits.upstream_per_minute,
            defaults::UPSTREAM_PER_MINUTE,
            "limits.upstream_per_minute",
        )?,
        upstream_burst: non_zero(
            raw.limits.upstream_burst,
            defaults::UPSTREAM_BURST,
            "limits.upstream_burst",
        )?,
        queue_timeout: raw.limits.queue_timeout.unwrap_or(defaults::QUEUE_TIMEOUT),
        client_per_minute: non_zero(
            raw.limits.client_per_minute,
            defaults::CLIENT_PER_MINUTE,
            "limits.client_per_minute",
        )?,
        client_burst: non_zero(
            raw.limits.client_burst,
            defaults::CLIENT_BURST,
            "limits.client_burst",
        )?,
        device_upstream_share: match raw.limits.device_upstream_share {
            None => defaults::DEVICE_UPSTREAM_SHARE,
            Some(share) if share > 0.0 && share <= 1.0 => share,
            Some(_) => {
                return Err(invalid(
                    "limits.device_upstream_share",
                    "must be a fraction above 0 and at most 1, like 0.5".to_owned(),
                ));
            }
        },
    };
    let max_body = raw
        .cache
        .max_body
        .map_or(Ok(defaults::MAX_BODY), |b| usize::try_from(b.as_u64()))
        .map_err(|_| {
            invalid(
                "cache.max_body",
                "is larger than this machine can address".to_owned(),
            )
        })?;
    let mut cache = CacheConfig {
        ttl: raw.cache.ttl.unwrap_or(defaults::CACHE_TTL),
        route_ttl: HashMap::new(),
        stale_if_error: raw.cache.stale_if_error.unwrap_or(defaults::STALE_IF_ERROR),
        max_entries: raw.cache.max_entries.unwrap_or(defaults::MAX_ENTRIES),
        max_body,
    };

    let tls = match (raw.server.tls_cert, raw.server.tls_key) {
        (Some(cert), Some(key)) => Some(TlsFiles {
            cert: base_dir.join(cert),
            key: base_dir.join(key),
        }),
        (None, None) => None,
        (Some(_), None) => {
            return Err(invalid(
                "server.tls_key",
                "is needed with server.tls_cert".to_owned(),
            ));
        }
        (None, Some(_)) => {
            return Err(invalid(
                "server.tls_cert",
                "is needed with server.tls_key".to_owned(),
            ));
        }
    };
    let tls_handshake_timeout = positive(
        raw.server.tls_handshake_timeout,
        defaults::TLS_HANDSHAKE_TIMEOUT,
        "server.tls_handshake_timeout",
        path,
    )?;

    let size = |value: Option<bytesize::ByteSize>, default: usize, key: &'static str| {
        let bytes = value.map_or(Ok(default), |b| usize::try_from(b.as_u64()));
        match bytes {
            Ok(0) => Err(invalid(key, "must be larger than 0".to_owned())),
            Ok(n) => Ok(n),
            Err(_) => Err(invalid(
                key,
                "is larger than this machine can address".to_owned(),
            )),
        }
    };
    let max_header_size = size(
        raw.server.max_header_size,
        defaults::MAX_HEADER_SIZE,
        "server.max_header_size",
    )?;
    let max_request_body = size(
        raw.server.max_request_body,
        defaults::MAX_REQUEST_BODY,
        "server.max_request_body",
    )?;
    let max_connections = raw
        .server
        .max_connections
        .unwrap_or(defaults::MAX_CONNECTIONS);
    if max_connections == 0 {
        return Err(invalid(
            "server.max_connections",
            "must be at least 1".to_owned(),
        ));
    }
    let max_connections_per_ip = raw
        .server
        .max_connections_per_ip
        .unwrap_or(defaults::MAX_CONNECTIONS_PER_IP);
    if max_connections_per_ip == 0 {
        return Err(invalid(
            "server.max_connections_per_ip",
            "must be at least 1".to_owned(),
        ));
    }
    let idle_timeout = positive(
        raw.server.idle_timeout,
        defaults::IDLE_TIMEOUT,
        "server.idle_timeout",
        path,
    )?;
    let worker_threads = raw
        .server
        .worker_threads
        .unwrap_or(defaults::WORKER_THREADS);
    if !(1..=64).contains(&worker_threads) {
        return Err(invalid(
            "server.worker_threads",
            "must be from 1 to 64".to_owned(),
        ));
    }
    let h2_max_streams = raw
        .server
        .h2_max_streams
        .unwrap_or(defaults::H2_MAX_STREAMS);
    if h2_max_streams == 0 {
        return Err(invalid(
            "server.h2_max_streams",
            "must be at least 1".to_owned(),
        ));
    }

    let mut enabled_write_routes = Vec::new();
    let mut extra_params = HashMap::new();
    for (name, route) in &raw.routes {
        let Some(id) = RouteId::from_config_name(name) else {
            return Err(ConfigError::Parse {
                path: path.to_owned(),
                key: format!("routes.{name}"),
                line: 0,
                message: format!(
                    "unknown route; known routes are {}",
                    RouteId::ALL
                        .iter()
                        .map(|r| r.config_name())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
        };
        if let Some(ttl) = route.ttl {
            if id.changes_account() && !ttl.is_zero() {
                return Err(ConfigError::Parse {
                    path: path.to_owned(),
                    key: format!("routes.{name}.ttl"),
                    line: 0,
                    message: "routes that change the account are never cached".to_owned(),
                });
            }
            cache.route_ttl.insert(id, ttl);
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
                    return Err(ConfigError::Parse {
                        path: path.to_owned(),
                        key: format!("routes.{name}.extra_params"),
                        line: 0,
                        message: format!("`{}` {problem}", shown.escape_debug()),
                    });
                }
                checked.push(param.clone());
            }
            extra_params.insert(id, checked);
        }
        match (id.changes_account(), route.enabled) {
            (true, Some(true)) => enabled_write_routes.push(id),
            (false, Some(false)) => {
                return Err(ConfigError::Parse {
                    path: path.to_owned(),
                    key: format!("routes.{name}.enabled"),
                    line: 0,
                    message: "read routes are always on; only account-changing routes \
                              (add_charger, reboot_charger) can be switched"
                        .to_owned(),
                });
            }
            _ => {}
        }
    }

    // Without device keys every device on an allowed network (guest and IoT
    // networks are private ranges too) could change the account.
    for route in &enabled_write_routes {
        let scope = access
            .route_scopes
            .get(route)
            .copied()
            .unwrap_or_else(|| Scope::default_for(*route));
        if !access.clients.iter().any(|c| c.scopes.contains(&scope)) {
            return Err(ConfigError::Parse {
                path: path.to_owned(),
                key: format!("routes.{}.enabled", route.config_name()),
                line: 0,
                message: format!(
                    "an account-changing route needs device keys: add a [[clients]] entry whose \
                     scopes include \"{scope}\" (joulo-gateway gen-key --name NAME --scopes {scope}); \
                     without one any device on an allowed network could use it",
                    scope = scope.as_str()
                ),
            });
        }
    }

    Ok(Config {
        server: ServerConfig {
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
            worker_threads,
        },
        upstream: UpstreamConfig {
            base_url,
            token_file,
            roots,
            extra_roots,
            connect_timeout,
            timeout,
            token_poll_interval,
        },
        log,
        access,
        limits,
        cache,
        enabled_write_routes,
        extra_params,
    })
}

fn validate_access(raw: &RawConfig, path: &Path) -> Result<AccessConfig, ConfigError> {
    let parse_err = |key: String, message: String| ConfigError::Parse {
        path: path.to_owned(),
        key,
        line: 0,
        message,
    };
    let allow = match &raw.access.allow {
        None => DEFAULT_ALLOW
            .iter()
            .map(|n| n.parse().expect("defaults parse"))
            .collect(),
        Some(list) => list
            .iter()
            .map(|n| {
                n.parse::<ipnet::IpNet>()
                    .or_else(|_| n.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                    .map_err(|_| {
                        parse_err(
                            "access.allow".to_owned(),
                            format!("`{n}` is not a network like \"192.168.1.0/24\" or an address"),
                        )
                    })
            })
            .collect::<Result<Vec<_>, _>>()?,
    };
    let mut allowed_hosts = Vec::new();
    for host in raw.server.allowed_hosts.iter().flatten() {
        let name = host.trim().trim_end_matches('.').to_ascii_lowercase();
        // A host name: dot-separated labels of letters, digits and hyphens.
        let valid = !name.is_empty()
            && name.len() <= 253
            && name.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if !valid {
            return Err(parse_err(
                "server.allowed_hosts".to_owned(),
                format!("`{host}` is not a host name like \"gateway.example.com\""),
            ));
        }
        allowed_hosts.push(name);
    }

    let mut clients: Vec<DeviceKey> = Vec::new();
    for (i, client) in raw.clients.iter().enumerate() {
        let key = |field: &str| format!("clients[{i}].{field}");
        let name = client.name.trim();
        if !crate::access::valid_device_name(name) {
            return Err(parse_err(
                key("name"),
                "must be 1-64 characters of A-Z, a-z, 0-9, '-', '_' or '.'".to_owned(),
            ));
        }
        if clients.iter().any(|c| &*c.name == name) {
            return Err(parse_err(key("name"), format!("`{name}` is used twice")));
        }
        let hex = client.key_sha256.trim();
        let mut key_sha256 = [0u8; 32];
        let valid_hex = hex.len() == 64
            && hex.is_ascii()
            && key_sha256.iter_mut().enumerate().all(|(j, byte)| {
                u8::from_str_radix(&hex[2 * j..2 * j + 2], 16)
                    .map(|b| *byte = b)
                    .is_ok()
            });
        if !valid_hex {
            // The value is not repeated: it is a credential's fingerprint.
            return Err(parse_err(
                key("key_sha256"),
                "must be 64 hex digits (the line `joulo-gateway gen-key` prints)".to_owned(),
            ));
        }
        let mut scopes = Vec::new();
        for scope in &client.scopes {
            scopes.push(Scope::parse(scope).ok_or_else(|| {
                parse_err(
                    key("scopes"),
                    format!("`{scope}` is not a scope; known: {}", scope_list()),
                )
            })?);
        }
        clients.push(DeviceKey {
            name: name.into(),
            key_sha256,
            scopes,
        });
    }

    let mut route_scopes = HashMap::new();
    for (name, route) in &raw.routes {
        if let (Some(id), Some(scope)) = (RouteId::from_config_name(name), &route.scope) {
            let scope = Scope::parse(scope).ok_or_else(|| {
                parse_err(
                    format!("routes.{name}.scope"),
                    format!("`{scope}` is not a scope; known: {}", scope_list()),
                )
            })?;
            route_scopes.insert(id, scope);
        }
    }
    Ok(AccessConfig {
        allow,
        allowed_hosts,
        clients,
        route_scopes,
    })
}

fn scope_list() -> String {
    Scope::ALL.map(Scope::as_str).join(", ")
}

fn positive(
    value: Option<Duration>,
    default: Duration,
    key: &'static str,
    path: &Path,
) -> Result<Duration, ConfigError> {
    let value = value.unwrap_or(default);
    if value.is_zero() {
        return Err(ConfigError::Invalid {
            path: path.to_owned(),
            key,
            message: "must be longer than 0s".to_owned(),
        });
    }
    Ok(value)
}

fn parse_base_url(text: &str) -> Result<Uri, String> {
    let uri: Uri = text
        .parse()
        .map_err(|e| format!("`{text}` is not a URL: {e}"))?;
    if uri.scheme_str() != Some("https") {
        return Err(format!(
            "`{text}` must start with https://: the token is never sent in clear text"
        ));
    }
    let authority = uri
        .authority()
        .ok_or_else(|| format!("`{text}` has no host"))?;
    if authority.as_str().contains('@') {
        return Err("must not carry user information (user:password@)".to_owned());
    }
    if uri.query().is_some() || text.contains('#') {
        return Err(format!(
            "`{text}` must not have a query or fragment: routes are appended to it"
        ));
    }
    Ok(uri)
}

fn load_roots(file: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = files::read_regular(file, FILE_LIMIT)
        .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{} is not valid PEM: {e}", file.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no CERTIFICATE block", file.display()));
    }
    let mut store = rustls::RootCertStore::empty();
    for cert in &certs {
        store
            .add(cert.clone())
            .map_err(|e| format!("{} holds an unusable certificate: {e}", file.display()))?;
    }
    Ok(certs)
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
        message: e.message().to_owned(),
    }
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

    fn parse(text: &str) -> Result<Config, ConfigError> {
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
    fn token_file_relative_to_config_and_systemd_credentials() {
        let c = parse("[upstream]\ntoken_file = \"secrets/t\"").unwrap();
        assert_eq!(c.upstream.token_file, Path::new("/etc/jg/secrets/t"));
        let raw: RawConfig = toml::from_str("").unwrap();
        let c = validate(
            raw,
            Path::new("t"),
            Path::new("."),
            Some(Path::new("/run/cred")),
        )
        .unwrap();
        assert_eq!(c.upstream.token_file, Path::new("/run/cred/joulo_token"));
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
        assert_eq!(s.server.listen, d.server.listen);
        assert_eq!(s.server.header_timeout, d.server.header_timeout);
        assert_eq!(s.server.shutdown_grace, d.server.shutdown_grace);
        assert_eq!(
            s.server.tls_handshake_timeout,
            d.server.tls_handshake_timeout
        );
        assert!(s.server.tls.is_none());
        assert_eq!(s.server.max_header_size, d.server.max_header_size);
        assert_eq!(s.server.max_request_body, d.server.max_request_body);
        assert_eq!(s.server.max_connections, d.server.max_connections);
        assert_eq!(
            s.server.max_connections_per_ip,
            d.server.max_connections_per_ip
        );
        assert_eq!(s.server.idle_timeout, d.server.idle_timeout);
        assert_eq!(s.server.h2_max_streams, d.server.h2_max_streams);
        assert_eq!(s.server.worker_threads, d.server.worker_threads);
        assert_eq!(s.access.allow, d.access.allow);
        assert_eq!(s.access.allowed_hosts, d.access.allowed_hosts);
        assert!(s.access.clients.is_empty());
        assert_eq!(s.upstream.base_url, d.upstream.base_url);
        assert_eq!(s.upstream.connect_timeout, d.upstream.connect_timeout);
        assert_eq!(s.upstream.roots, d.upstream.roots);
        assert_eq!(s.upstream.timeout, d.upstream.timeout);
        assert_eq!(
            s.upstream.token_poll_interval,
            d.upstream.token_poll_interval
        );
        assert_eq!(s.log.level, d.log.level);
        assert_eq!(s.log.format, d.log.format);
        assert_eq!(s.enabled_write_routes, d.enabled_write_routes);
        assert_eq!(s.limits.upstream_per_minute, d.limits.upstream_per_minute);
        assert_eq!(s.limits.upstream_burst, d.limits.upstream_burst);
        assert_eq!(s.limits.queue_timeout, d.limits.queue_timeout);
        assert_eq!(s.limits.client_per_minute, d.limits.client_per_minute);
        assert_eq!(s.limits.client_burst, d.limits.client_burst);
        assert_eq!(
            s.limits.device_upstream_share,
            d.limits.device_upstream_share
        );
        assert!(s.extra_params.is_empty());
        assert_eq!(s.cache.ttl, d.cache.ttl);
        assert_eq!(s.cache.stale_if_error, d.cache.stale_if_error);
        assert_eq!(s.cache.max_entries, d.cache.max_entries);
        assert_eq!(s.cache.max_body, d.cache.max_body);
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

    #[test]
    fn access_settings_validate() {
        let hash = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        let c = parse(&format!(
            "[access]\nallow = [\"192.168.1.0/24\", \"10.0.0.7\"]\n\
             [server]\nallowed_hosts = [\"Joulo.Example.com\"]\n\
             [[clients]]\nname = \"homeassistant\"\nkey_sha256 = \"{hash}\"\nscopes = [\"chargers:read\"]\n\
             [routes.me]\nscope = \"chargers:read\""
        ))
        .unwrap();
        assert_eq!(c.access.allow.len(), 2);
        assert_eq!(c.access.allowed_hosts, ["joulo.example.com"]);
        assert_eq!(&*c.access.clients[0].name, "homeassistant");
        assert_eq!(c.access.route_scopes[&RouteId::Me], Scope::ChargersRead);
        assert_eq!(parse("").unwrap().access.allow.len(), DEFAULT_ALLOW.len());

        let bad_hash = "[[clients]]\nname = \"a\"\nkey_sha256 = \"secretish-not-hex\"\nscopes = []";
        let err = parse(bad_hash).unwrap_err().to_string();
        assert!(
            err.contains("clients[0].key_sha256") && !err.contains("secretish"),
            "{err}"
        );
        for (text, key) in [
            ("[access]\nallow = [\"lan\"]", "access.allow"),
            (
                &*format!("[[clients]]\nname = \"a b\"\nkey_sha256 = \"{hash}\"\nscopes = []"),
                "clients[0].name",
            ),
            (
                &*format!("[[clients]]\nname = \"a\"\nkey_sha256 = \"{hash}\"\nscopes = [\"all\"]"),
                "clients[0].scopes",
            ),
            ("[routes.me]\nscope = \"me:read\"", "routes.me.scope"),
            ("[server]\ntls_cert = \"c.pem\"", "server.tls_key"),
        ] {
            let msg = parse(text).unwrap_err().to_string();
            assert!(msg.contains(key), "{text:?} gave {msg}");
        }
    }

    #[test]
    fn extra_params_and_the_device_share_validate() {
        let c = parse(
            "[routes.sessions]\nextra_params = [\"status\", \"sort\"]\n\
             [limits]\ndevice_upstream_share = 0.25\nupstream_per_minute = 30\nupstream_burst = 10",
        )
        .unwrap();
        assert_eq!(c.extra_params[&RouteId::Sessions], ["status", "sort"]);
        let (per_minute, burst) = c.limits.device_quota();
        assert_eq!((per_minute.get(), burst.get()), (7, 2));
        let c = parse("[limits]\ndevice_upstream_share = 0.01").unwrap();
        assert_eq!(c.limits.device_quota().1.get(), 1, "never below one call");
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
            (
                "[limits]\ndevice_upstream_share = 0",
                "limits.device_upstream_share",
                "fraction",
            ),
            (
                "[limits]\ndevice_upstream_share = 1.5",
                "limits.device_upstream_share",
                "fraction",
            ),
        ] {
            let msg = parse(text).unwrap_err().to_string();
            assert!(
                msg.contains(key) && msg.contains(words),
                "{text:?} gave {msg}"
            );
        }
    }

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
        let err = parse("[limits]\nupstream_per_minute = 0")
            .unwrap_err()
            .to_string();
        assert!(err.contains("limits.upstream_per_minute"), "{err}");
    }
}
