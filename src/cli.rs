//! The command line: its subcommands and options, shared by the binary and by
//! the manual pages and shell completions made from it
//! (`cargo run --example generate`), so they cannot drift from `--help`; and
//! the exit status a failure calls for.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// The version and the commit it was built from ("unknown" when built from
/// source without git and without `JOULO_GATEWAY_COMMIT`; see build.rs).
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("JOULO_GATEWAY_COMMIT"),
    ")"
);

/// A LAN gateway for the Joulo EV-charging API: home devices call it without the
/// token; it strips `?token=`, injects the bearer token and keeps it out of logs.
#[derive(Debug, Parser)]
#[command(
    version = VERSION,
    about,
    after_long_help = "Settings live in the config file (--config, default gateway.toml, or \
        /etc/joulo-gateway/gateway.toml when there is none here, as installed from the package): \
        every key is listed there with its default and what it does. Device keys live in the \
        devices file (`joulo-gateway device add NAME`), re-read when it changes. SIGHUP re-reads \
        the config, the token file and the LAN certificate; under the systemd unit the token is a copy taken at start, \
        so a new token needs `systemctl restart joulo-gateway`."
)]
pub struct Cli {
    /// The config file [default: gateway.toml in the current folder, else
    /// /etc/joulo-gateway/gateway.toml]. `demo` and `gen-key` read none, and
    /// refuse it rather than ignore it.
    #[arg(long, short, global = true)]
    pub config: Option<PathBuf>,
    /// What to do; running the gateway when none is given.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway (the default).
    Run,
    /// Validate the config, the devices file and the token file, then exit
    /// (0 = valid, 64 = not).
    Check {
        /// Also ask Joulo once (GET /me, through the gateway's own request
        /// path; it counts against the token's budget) whether it accepts
        /// the token. Nothing of the answer is printed.
        #[arg(long)]
        online: bool,
    },
    /// Manage device keys in the devices file ([access] devices_file); the
    /// running gateway re-reads it when it changes, no restart.
    Device {
        /// What to do.
        #[command(subcommand)]
        action: DeviceSubcommand,
    },
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
    /// Run as the Home Assistant add-on: read the add-on's options from
    /// DATA/options.json, write the token to DATA/joulo_token (0600) and the
    /// config to DATA/gateway.toml, drop root for uid 65532, then run.
    Addon {
        /// The add-on's private folder.
        #[arg(long, default_value = "/data")]
        data: PathBuf,
        /// Where the keys of devices added by the `devices` option are
        /// written, one 0600 file each, for the user to copy.
        #[arg(long, default_value = "/share/joulo-gateway")]
        keys: PathBuf,
        /// Where the gateway listens.
        #[arg(long, default_value = "0.0.0.0:8080")]
        listen: SocketAddr,
    },
    /// Start a simulated Joulo API and the gateway in front of it, on loopback.
    Demo {
        /// Where the demo gateway listens (a free port is used if this one is taken).
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
    },
}

/// `joulo-gateway device ...`.
#[derive(Debug, Subcommand)]
pub enum DeviceSubcommand {
    /// Make a key for a new device, keep its SHA-256 in the devices file,
    /// and print the key once with the Home Assistant lines that use it.
    Add {
        /// The device's name: 1-32 of a-z, 0-9, '-', '_'.
        name: String,
        /// Comma-separated scopes [default: chargers:read,sessions:read,energy:read];
        /// also chargers:write, and gateway:read for /metrics and /status.
        #[arg(long, value_delimiter = ',')]
        scopes: Vec<String>,
    },
    /// List the devices: name, scopes, when added, and the requests the
    /// running gateway has seen from each (when this host may read its
    /// /status).
    List,
    /// Remove a device: its key gets 401 from its next request.
    Remove {
        /// The device's name.
        name: String,
    },
    /// Give a device a new key (printed once); the old one gets 401.
    Rotate {
        /// The device's name.
        name: String,
    },
}

impl From<DeviceSubcommand> for crate::device_cmd::DeviceAction {
    fn from(sub: DeviceSubcommand) -> Self {
        use crate::device_cmd::DeviceAction;
        match sub {
            DeviceSubcommand::Add { name, scopes } => DeviceAction::Add { name, scopes },
            DeviceSubcommand::List => DeviceAction::List,
            DeviceSubcommand::Remove { name } => DeviceAction::Remove { name },
            DeviceSubcommand::Rotate { name } => DeviceAction::Rotate { name },
        }
    }
}

impl Cli {
    /// The config file: `--config`; else `gateway.toml` in the current
    /// folder; else, when that does not exist, the installed one
    /// (`/etc/joulo-gateway/gateway.toml`, the package's and the container
    /// image's), so `sudo joulo-gateway device add NAME` and `docker compose
    /// exec gateway joulo-gateway device add NAME` need no `--config`.
    pub fn config_path(&self) -> PathBuf {
        // The add-on writes its own, from its options.
        if let Some(Command::Addon { data, .. }) = &self.command {
            return crate::addon::config_path(data);
        }
        if let Some(path) = &self.config {
            return path.clone();
        }
        let here = PathBuf::from(crate::config::DEFAULT_CONFIG_PATH);
        let installed = PathBuf::from(crate::config::INSTALLED_CONFIG_PATH);
        if !here.exists() && installed.exists() {
            installed
        } else {
            here
        }
    }
}

/// Exit status for a bad config, token file or argument (EX_USAGE from sysexits.h).
const EXIT_CONFIG: u8 = 64;

/// Why a command failed. Its kind picks the exit status, matched without a
/// catch-all, so a new kind must be given one.
pub enum Failure {
    /// `gateway.toml` did not validate: 64.
    Config(crate::config::ConfigError),
    /// The token, the upstream TLS settings or the LAN certificate: 64.
    Start(crate::gateway::StartError),
    /// `gen-key`'s arguments: 64.
    GenKey(crate::gen_key::GenKeyError),
    /// The add-on's options: 64.
    Addon(crate::addon::AddonError),
    /// A `device` command: 64, or 1 when the devices file could not be
    /// written.
    Device(crate::device_cmd::DeviceError),
    /// An option the command does not use (`--config` for `demo`): 64.
    Usage(String),
    /// Anything else (logging, the runtime, the listener, a failed health
    /// check, the demo): 1.
    Other(anyhow::Error),
}

impl From<crate::config::ConfigError> for Failure {
    fn from(e: crate::config::ConfigError) -> Failure {
        Failure::Config(e)
    }
}

impl From<crate::gateway::StartError> for Failure {
    fn from(e: crate::gateway::StartError) -> Failure {
        Failure::Start(e)
    }
}

impl From<crate::gen_key::GenKeyError> for Failure {
    fn from(e: crate::gen_key::GenKeyError) -> Failure {
        Failure::GenKey(e)
    }
}

impl From<crate::addon::AddonError> for Failure {
    fn from(e: crate::addon::AddonError) -> Failure {
        Failure::Addon(e)
    }
}

impl From<crate::device_cmd::DeviceError> for Failure {
    fn from(e: crate::device_cmd::DeviceError) -> Failure {
        Failure::Device(e)
    }
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Failure {
        Failure::Other(e)
    }
}

impl Failure {
    /// The exit status it calls for.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            Failure::Device(crate::device_cmd::DeviceError::Devices(
                crate::devices::DevicesError::Write { .. },
            ))
            | Failure::Other(_) => ExitCode::FAILURE,
            Failure::Config(_)
            | Failure::Start(_)
            | Failure::GenKey(_)
            | Failure::Addon(_)
            | Failure::Device(_)
            | Failure::Usage(_) => ExitCode::from(EXIT_CONFIG),
        }
    }

    /// The error and its causes joined by ": ", as `{:#}` prints them, except
    /// that a cause the message before it already ends with is not printed
    /// twice (the library's errors quote their cause, so that a log line has
    /// it too).
    pub fn describe(&self) -> String {
        let first: &(dyn std::error::Error + 'static) = match self {
            Failure::Config(e) => e,
            Failure::Start(e) => e,
            Failure::GenKey(e) => e,
            Failure::Addon(e) => e,
            Failure::Device(e) => e,
            Failure::Usage(text) => return text.clone(),
            Failure::Other(e) => e.as_ref(),
        };
        let mut text = String::new();
        let mut cause = Some(first);
        while let Some(e) = cause {
            let message = e.to_string();
            if !text.ends_with(&message) {
                if !text.is_empty() {
                    text.push_str(": ");
                }
                text.push_str(&message);
            }
            cause = e.source();
        }
        text
    }
}
