//! Defaults, in one place so `gateway.toml` and the code cannot drift apart silently:
//! `config::tests::shipped_config_matches_defaults` compares them.

use std::time::Duration;

/// `[access] devices_file`, relative to the config's folder.
pub(crate) const DEVICES_FILE: &str = "devices.toml";
pub(crate) const LISTEN: &str = "0.0.0.0:8080";
pub(crate) const BASE_URL: &str = "https://api.joulo.nl/functions/v1/api";
/// The compiled-in roots: the gateway verifies Joulo the same way in a
/// distroless container, a Home Assistant add-on and on a Pi, with no
/// dependence on a CA bundle being installed or current.
pub(crate) const ROOTS: super::choices::TrustRoots = super::choices::TrustRoots::Webpki;
/// Whatever the upstream picks (Joulo and the benchmark's nginx: HTTP/2).
/// HTTP/1.1 costs fewer instructions per call but, with one connection per
/// call under way, more system calls: fewer requests a second under load
/// (bench/RESULTS.md, "HTTP/1.1 or HTTP/2 to Joulo").
pub(crate) const HTTP2: super::choices::Http2 = super::choices::Http2::Auto;
pub(crate) const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
pub(crate) const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
pub(crate) const TIMEOUT: Duration = Duration::from_secs(10);
pub(crate) const TOKEN_POLL_INTERVAL: Duration = Duration::from_secs(1);
pub(crate) const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
pub(crate) const MAX_HEADER_SIZE: usize = 16 * 1024;
pub(crate) const MAX_REQUEST_BODY: usize = 64 * 1024;
pub(crate) const MAX_CONNECTIONS: usize = 512;
pub(crate) const MAX_CONNECTIONS_PER_IP: usize = 64;
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
pub(crate) const H2_MAX_STREAMS: u32 = 64;
/// About 1,200 answers of the size of `/metrics` held at once: under 48 MB
/// of RSS however many clients stop reading (bench/hostile).
pub(crate) const MAX_ANSWER_MEMORY: usize = 8 * 1024 * 1024;
pub(crate) const MAX_ANSWER_MEMORY_PER_CONNECTION: usize = 1024 * 1024;
pub(crate) const WORKER_THREADS: usize = 1;
pub(crate) const UPSTREAM_PER_MINUTE: u32 = 30;
pub(crate) const UPSTREAM_BURST: u32 = 10;
pub(crate) const QUEUE_TIMEOUT: Duration = Duration::from_secs(2);
pub(crate) const CLIENT_PER_MINUTE: u32 = 120;
pub(crate) const CLIENT_BURST: u32 = 30;
pub(crate) const DEVICE_UPSTREAM_SHARE: f64 = 0.5;
pub(crate) const CACHE_TTL: Duration = Duration::from_secs(15);
pub(crate) const STALE_IF_ERROR: Duration = Duration::from_secs(600);
pub(crate) const MAX_ENTRIES: usize = 512;
pub(crate) const MAX_BODY: usize = 1024 * 1024;
/// `[mqtt] discovery_prefix`: Home Assistant's own default.
pub(crate) const MQTT_DISCOVERY_PREFIX: &str = "homeassistant";
/// `[mqtt] base_topic`.
pub(crate) const MQTT_BASE_TOPIC: &str = "joulo";
