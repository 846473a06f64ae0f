//! The command line: its subcommands and options, shared by the binary and by
//! the manual pages and shell completions made from it
//! (`cargo run --example generate`), so they cannot drift from `--help`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// A LAN gateway for the Joulo EV-charging API: home devices call it without the
/// token; it strips `?token=`, injects the bearer token and keeps it out of logs.
#[derive(Debug, Parser)]
#[command(
    version,
    about,
    after_long_help = "Settings live in the config file (--config, default gateway.toml; \
        /etc/joulo-gateway/gateway.toml when installed from the package): every key is \
        listed there with its default and what it does. SIGHUP re-reads it, the token file \
        and the LAN certificate; under the systemd unit the token is a copy taken at start, \
        so a new token needs `systemctl restart joulo-gateway`."
)]
pub struct Cli {
    /// The config file.
    #[arg(long, short, global = true, default_value = crate::config::DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,
    /// What to do; running the gateway when none is given.
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway (the default).
    Run,
    /// Validate the config and the token file, then exit (0 = valid, 64 = not).
    Check,
    /// Make a key for one device and print it once, with its `[[clients]]` entry.
    GenKey {
        /// The device's name, as the access log will show it.
        #[arg(long)]
        name: String,
        /// Comma-separated Joulo scopes: chargers:read, chargers:write,
        /// sessions:read, energy:read; and gateway:read for the gateway's own
        /// /metrics and /status.
        #[arg(long, value_delimiter = ',', required = true)]
        scopes: Vec<String>,
    },
    /// Exit 0 if the gateway answers 200 on /healthz within 3 s (for
    /// container health checks and watchdogs, where no curl exists). Without
    /// --url it asks what --config serves: its listen address, over HTTPS with
    /// its own certificate pinned when tls_cert is set.
    Healthcheck {
        /// Ask this URL instead of the config's listener.
        #[arg(long)]
        url: Option<http::Uri>,
        /// A PEM CA (or the certificate itself) to verify an https --url against.
        #[arg(long, requires = "url")]
        ca: Option<PathBuf>,
    },
    /// Start a simulated Joulo API and the gateway in front of it, on loopback.
    Demo {
        /// Where the demo gateway listens (a free port is used if this one is taken).
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
    },
}
