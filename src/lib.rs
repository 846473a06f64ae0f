//! joulo-gateway: a LAN gateway that lets home devices call the Joulo EV-charging
//! API without ever holding the Joulo token.
//!
//! # The public interface
//!
//! The modules are private; what the binary, the integration tests, the
//! benches, the examples and the fuzz target use is re-exported here. The
//! public interface is:
//!
//! - The program: [`Gateway`] (`build` checks everything that can fail, `serve`
//!   runs it) and [`StartError`], [`shutdown_signal`], [`Cli`], [`Command`] and
//!   [`Failure`] (the command line and its exit codes), [`init_logging`],
//!   [`LogLevel`] and [`redact`], [`MqttError`], [`forbid_core_dumps`], [`gen_key_text`] and
//!   [`GenKeyError`], [`HealthcheckTarget`], [`HealthError`] and
//!   [`ask_joulo_once`] (`check --online`), [`DeviceSubcommand`],
//!   [`DeviceAction`], [`device_command`] and [`DeviceError`] (`joulo-gateway
//!   device ...`); the add-on's [`addon_prepare`], [`addon_mqtt_from_supervisor`],
//!   [`addon_owner`], [`addon_drop_root`], [`addon_config_path`], [`ADDON_UID`] and
//!   [`AddonError`], and the Supervisor's client [`Supervisor`] ([`MqttService`],
//!   [`SupervisorError`]).
//! - The devices file, for the Home Assistant add-on's `devices` option and
//!   the tests: [`ensure_devices`] ([`WantedDevice`] in, [`Ensured`] out),
//!   [`load_devices`], [`Device`] and [`DevicesError`].
//! - [`config`]: `gateway.toml` and its validated types. A module rather than
//!   re-exports because callers build and edit a [`config::Config`] table by
//!   table (`config.upstream.http2 = config::Http2::Auto`), and every table's
//!   type is named there.
//! - [`demo`]: the simulated Joulo API ([`demo::JouloSim`]), the in-memory
//!   certificate authority ([`demo::DemoCa`]) and the demo itself, which the
//!   tests and benches run against.
//! - What the tests look into: [`AppState`] (its cache and token source),
//!   [`reload_once`] and [`Reloaded`], [`CacheKey`], [`generate_key`] and
//!   [`key_sha256_hex`] (device keys for test configs), [`TokenFileText`],
//!   and the refusal log's [`LINES_PER_ADDRESS`] and [`LOG_INTERVAL`].
//! - The request path's pure parts, for the benches and the fuzz target:
//!   [`RouteId`], [`RouteTable`], [`normalise_path`], [`QuerySchema`],
//!   [`Outbound`], [`is_credential_param`], [`clean_response_headers`] and
//!   [`REDACTED`].
//!
//! # Layout
//!
//! Every module, from the top of the program down. A module uses only modules
//! listed after it (its own submodules aside), so there is no import cycle;
//! the integration tests, benches and examples use only the interface above.
//!
//! The program:
//! - `cli`: the command line, its subcommands and the exit code each failure
//!   calls for.
//! - `gen_key`: `joulo-gateway gen-key`, a new device key and its
//!   `[[clients]]` entry.
//! - `device_cmd`: `joulo-gateway device add/list/remove/rotate`, and what
//!   `device add` prints once.
//! - `healthcheck`: `joulo-gateway healthcheck`, asking a running gateway's
//!   `/healthz` over HTTP or HTTPS.
//! - `addon`: `joulo-gateway addon`, the Home Assistant add-on: its options
//!   (`/data/options.json`) made into a token file and a config, root dropped;
//!   `addon/supervisor` asks the Supervisor for the MQTT broker.
//! - `demo` (with `demo/sim`): a simulated Joulo API and a gateway in front of
//!   it, for a first look.
//! - `gateway`: the program assembled: `Gateway::build` checks everything that
//!   can fail before a socket is opened; `serve` runs the background tasks, the
//!   one SIGHUP hub and the listener, then drains. What happens on SIGHUP and
//!   on shutdown is answered there.
//! - `reload`: `gateway.toml` and the devices file re-read on SIGHUP (passed
//!   on by `gateway`'s hub) and when the devices file changes, applied to new
//!   requests.
//! - `mqtt`: the Home Assistant publisher (`[mqtt]`): polls through the
//!   request path as a device of its own and publishes MQTT discovery and
//!   states (`mqtt/discovery`, pure), retained, reconnecting with back-off.
//!
//! Connections:
//! - `server`: accepts connections (HTTP/1.1 and HTTP/2, plain or over
//!   `lan_tls`), bounds header reads and handshakes, drains on shutdown.
//! - `admission`: who gets a connection: the allowlist and the connection
//!   quotas on accept, which connection makes room when every slot is taken
//!   (never one for a flooding address), and the quick refusal past that.
//! - `idle`: the idle timeout on a served connection.
//! - `held`: what answers not yet sent may hold, per connection and in total,
//!   and how long an HTTP/2 stream may go without progress.
//! - `settle`: the allocator nudged after connections close, so what they
//!   held goes back to the system.
//!
//! One request:
//! - `proxy`: one request end to end, in phases: `proxy/mod` the request
//!   filter and the route and cache lookup, `proxy/call` the upstream call
//!   (one `call_upstream` for streamed and cached answers), `proxy/finish` the
//!   response filter, the counters and the access-log line.
//! - `ops`: the gateway's own `/healthz`, `/readyz`, `/metrics` and `/status`.
//! - `state`: what every request shares, built from the config; its policy is
//!   swapped whole on reload.
//! - `refusals`: what is refused before a device's allowance: an allowance per
//!   address and one for all addresses together, the addresses flooding the
//!   gateway, and a bounded log.
//! - `upstream`: the verified-TLS client to Joulo and its timeouts, its
//!   connection pool per event loop (`upstream/pool`) and the outbound request
//!   built from the route, the validated parameters and a fixed header set,
//!   nothing copied (`upstream/request`).
//! - `cache`: fresh and stale copies of answers (`cache/mod`), and one upstream
//!   call shared by identical concurrent requests (`cache/coalesce`).
//! - `budget`: how the token's upstream budget is kept: a limit on all calls
//!   to Joulo, each device's allowance and its share of the budget, and the
//!   back-off after Joulo answers 429.
//!
//! Secrets and TLS:
//! - `lan_tls`: HTTPS for the LAN: the gateway's certificate and key, swapped
//!   in when the files change or on SIGHUP.
//! - `logging`: structured logs scrubbed of anything token-shaped.
//! - `token`: where the token comes from (a secrets file, reloaded on change or
//!   SIGHUP, fail-closed), the one function that puts it in a request, and the
//!   search for it in Joulo's answers.
//! - `watch`: when secrets files are re-read: SIGHUP from the hub, and file
//!   changes by inotify on Linux, polling elsewhere or when inotify fails.
//!
//! The checks and their vocabulary:
//! - `config`: `gateway.toml`, parsed then validated into real types, a
//!   submodule per table; `config/defaults` the defaults in one place,
//!   `config/choices` the values an enumerated key can take.
//! - `devices`: the devices file `joulo-gateway device` manages (hashes of
//!   device keys), written atomically, read with the config.
//! - `respond`: how errors on the request path look: Joulo-shaped JSON.
//! - `access`: who may call: the network allowlist, Host, Origin and browser
//!   checks, per-device keys and their scopes.
//! - `params`: what a request may carry: each route's query parameters checked
//!   against Joulo's schema and written canonically (`params/mod`), POST bodies
//!   re-serialised (`params/body`), the query as the access log shows it
//!   (`params/logged`).
//! - `metrics`: per-route metric series resolved once, request counters.
//! - `routes`: which route it is: strict path normalisation and the allowlist
//!   (404 / 405 with `Allow`).
//! - `sanitize`: what is recognised and removed: `?token=` in every spelling,
//!   and what an upstream answer carries that a device must not see.
//!
//! Foundations:
//! - `event_loop`: the server's extra event loops, and which one a thread
//!   runs, so `upstream` picks its pool without knowing `server`.
//! - `files`: how secrets and config files are read: regular files only,
//!   bounded, never blocking.
//! - `hardening`: what the process forbids itself at start: core dumps and
//!   being dumped or traced, before the token is read.
//! - `throwaway_ca`: a certificate authority made in memory, for the demo's
//!   simulated API and the tests.
//! - `sync`: locks that outlive a panic (`lock_unpoisoned`).
#![forbid(unsafe_code)]

mod access;
mod addon;
mod admission;
mod budget;
mod cache;
mod cli;
pub mod config;
pub mod demo;
mod device_cmd;
mod devices;
mod event_loop;
mod files;
mod gateway;
mod gen_key;
mod hardening;
mod healthcheck;
mod held;
mod idle;
mod lan_tls;
mod logging;
mod metrics;
mod mqtt;
mod ops;
mod params;
mod proxy;
mod refusals;
mod reload;
mod respond;
mod routes;
mod sanitize;
mod server;
mod settle;
mod state;
mod sync;
mod throwaway_ca;
mod token;
mod upstream;
mod watch;

pub use access::{generate_key, key_sha256_hex};
pub use addon::supervisor::{MqttService, Supervisor, SupervisorError};
pub use addon::{
    ADDON_UID, AddonError, config_path as addon_config_path, drop_root as addon_drop_root,
    mqtt_from_supervisor as addon_mqtt_from_supervisor, owner as addon_owner,
    prepare as addon_prepare,
};
pub use cache::CacheKey;
pub use cli::{Cli, Command, DeviceSubcommand, Failure};
pub use device_cmd::{DeviceAction, DeviceError, device_command};
pub use devices::{
    Device, DevicesError, Ensured, WantedDevice, ensure_devices, load as load_devices,
};
pub use gateway::{Gateway, StartError, bind_listener, shutdown_signal};
pub use gen_key::{GenKeyError, gen_key_text};
pub use hardening::forbid_core_dumps;
pub use healthcheck::{HealthError, Target as HealthcheckTarget, ask_joulo_once};
pub use logging::{LogLevel, init as init_logging, redact};
pub use mqtt::MqttError;
pub use params::QuerySchema;
pub use refusals::{LINES_PER_ADDRESS, LOG_INTERVAL};
pub use reload::{Reloaded, reload_once};
pub use routes::{RouteId, RouteTable, normalise_path};
pub use sanitize::{REDACTED, clean_response_headers, is_credential_param};
pub use state::AppState;
pub use token::TokenFileText;
pub use upstream::request::Outbound;
