//! The `[server]` table: the LAN-facing listener, its TLS files and the bounds
//! on what a connection may hold or take. `allowed_hosts` is read here but
//! checked with the rest of who may call, in `config::access`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, defaults, positive};

/// `[server]` as written; an unset key takes its default in [`validate`].
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServer {
    /// Address and port to bind, as text so a bad one is reported with its key.
    pub(super) listen: Option<String>,
    /// Host names accepted beyond the built-in ones; checked in `config::access`.
    pub(super) allowed_hosts: Option<Vec<String>>,
    /// Certificate chain file, relative to the config file's folder.
    pub(super) tls_cert: Option<PathBuf>,
    /// Private key file, relative to the config file's folder.
    pub(super) tls_key: Option<PathBuf>,
    /// Bound on a client's TLS handshake.
    #[serde(default, with = "humantime_serde")]
    pub(super) tls_handshake_timeout: Option<Duration>,
    /// Largest request head accepted.
    pub(super) max_header_size: Option<bytesize::ByteSize>,
    /// Largest POST body accepted.
    pub(super) max_request_body: Option<bytesize::ByteSize>,
    /// Connections served at once.
    pub(super) max_connections: Option<usize>,
    /// Connections from one address at once.
    pub(super) max_connections_per_ip: Option<usize>,
    /// How long a connection may sit with no bytes moving.
    #[serde(default, with = "humantime_serde")]
    pub(super) idle_timeout: Option<Duration>,
    /// Concurrent requests on one HTTP/2 connection.
    pub(super) h2_max_streams: Option<u32>,
    /// Bytes of answers not yet handed to their connections, in total.
    pub(super) max_answer_memory: Option<bytesize::ByteSize>,
    /// The same, on one connection.
    pub(super) max_answer_memory_per_connection: Option<bytesize::ByteSize>,
    /// Event loops serving connections.
    pub(super) worker_threads: Option<usize>,
    /// Bound on reading a request head.
    #[serde(default, with = "humantime_serde")]
    pub(super) header_timeout: Option<Duration>,
    /// How long in-flight requests may run on after SIGTERM.
    #[serde(default, with = "humantime_serde")]
    pub(super) shutdown_grace: Option<Duration>,
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
    /// Bytes that answers ready but not yet handed to their connections may
    /// hold in total (each charged its body and a per-request overhead); past
    /// it answers are 503 and new HTTP/2 streams are reset.
    pub max_answer_memory: usize,
    /// The same on one connection, beyond its first answer: what a client
    /// that does not read can make the gateway hold.
    pub max_answer_memory_per_connection: usize,
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

/// Checks `[server]` (all but `allowed_hosts`); relative TLS paths are taken
/// from `base_dir`, the config file's folder.
pub(super) fn validate(
    raw: RawServer,
    path: &Path,
    base_dir: &Path,
) -> Result<ServerConfig, ConfigError> {
    let invalid = |key, message: &str| ConfigError::invalid(path, key, message.to_owned());

    let listen_text = raw.listen.as_deref().unwrap_or(defaults::LISTEN);
    let listen: SocketAddr = listen_text.parse().map_err(|_| {
        ConfigError::invalid(
            path,
            "server.listen",
            format!("`{listen_text}` is not an address with a port, like \"0.0.0.0:8080\""),
        )
    })?;
    let header_timeout = positive(
        raw.header_timeout,
        defaults::HEADER_TIMEOUT,
        "server.header_timeout",
        path,
    )?;
    let shutdown_grace = raw.shutdown_grace.unwrap_or(defaults::SHUTDOWN_GRACE);

    let tls = match (raw.tls_cert, raw.tls_key) {
        (Some(cert), Some(key)) => Some(TlsFiles {
            cert: base_dir.join(cert),
            key: base_dir.join(key),
        }),
        (None, None) => None,
        (Some(_), None) => {
            return Err(invalid("server.tls_key", "is needed with server.tls_cert"));
        }
        (None, Some(_)) => {
            return Err(invalid("server.tls_cert", "is needed with server.tls_key"));
        }
    };
    let tls_handshake_timeout = positive(
        raw.tls_handshake_timeout,
        defaults::TLS_HANDSHAKE_TIMEOUT,
        "server.tls_handshake_timeout",
        path,
    )?;

    let size = |value: Option<bytesize::ByteSize>, default: usize, key: &'static str| {
        let bytes = value.map_or(Ok(default), |b| usize::try_from(b.as_u64()));
        match bytes {
            Ok(0) => Err(invalid(key, "must be larger than 0")),
            Ok(n) => Ok(n),
            Err(_) => Err(invalid(key, "is larger than this machine can address")),
        }
    };
    let max_header_size = size(
        raw.max_header_size,
        defaults::MAX_HEADER_SIZE,
        "server.max_header_size",
    )?;
    let max_request_body = size(
        raw.max_request_body,
        defaults::MAX_REQUEST_BODY,
        "server.max_request_body",
    )?;
    let max_connections = raw.max_connections.unwrap_or(defaults::MAX_CONNECTIONS);
    if max_connections == 0 {
        return Err(invalid("server.max_connections", "must be at least 1"));
    }
    let max_connections_per_ip = raw
        .max_connections_per_ip
        .unwrap_or(defaults::MAX_CONNECTIONS_PER_IP);
    if max_connections_per_ip == 0 {
        return Err(invalid(
            "server.max_connections_per_ip",
            "must be at least 1",
        ));
    }
    let idle_timeout = positive(
        raw.idle_timeout,
        defaults::IDLE_TIMEOUT,
        "server.idle_timeout",
        path,
    )?;
    let worker_threads = raw.worker_threads.unwrap_or(defaults::WORKER_THREADS);
    if !(1..=64).contains(&worker_threads) {
        return Err(invalid("server.worker_threads", "must be from 1 to 64"));
    }
    let h2_max_streams = raw.h2_max_streams.unwrap_or(defaults::H2_MAX_STREAMS);
    if h2_max_streams == 0 {
        return Err(invalid("server.h2_max_streams", "must be at least 1"));
    }

    let max_answer_memory = size(
        raw.max_answer_memory,
        defaults::MAX_ANSWER_MEMORY,
        "server.max_answer_memory",
    )?;
    let max_answer_memory_per_connection = size(
        raw.max_answer_memory_per_connection,
        defaults::MAX_ANSWER_MEMORY_PER_CONNECTION,
        "server.max_answer_memory_per_connection",
    )?;
    Ok(ServerConfig {
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
    })
}

#[cfg(test)]
mod tests {
    use super::super::tests::parse;

    #[test]
    fn tls_files_come_in_pairs_relative_to_the_config() {
        let c = parse("[server]\ntls_cert = \"c.pem\"\ntls_key = \"k.pem\"").unwrap();
        let tls = c.server.tls.unwrap();
        assert_eq!(tls.cert, std::path::Path::new("/etc/jg/c.pem"));
        assert_eq!(tls.key, std::path::Path::new("/etc/jg/k.pem"));
        for (text, key, words) in [
            (
                "[server]\ntls_cert = \"c.pem\"",
                "server.tls_key",
                "with server.tls_cert",
            ),
            (
                "[server]\ntls_key = \"k.pem\"",
                "server.tls_cert",
                "with server.tls_key",
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
