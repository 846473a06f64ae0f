//! joulo-gateway: a LAN gateway that lets home devices call the Joulo EV-charging
//! API without ever holding the Joulo token.
//!
//! # Layout
//!
//! A request's way through the gateway, module by module:
//!
//! - [`gateway`]: the program assembled: [`gateway::Gateway::build`] checks
//!   everything that can fail before a socket is opened, `serve` runs the
//!   background tasks, the one SIGHUP hub and the listener, then drains.
//! - [`server`]: accepts connections (HTTP/1.1 and HTTP/2, plain or over
//!   [`lan_tls`]), bounds header reads and handshakes, drains on shutdown.
//! - [`admission`]: who gets a connection: the allowlist and the connection
//!   quotas on accept, which connection makes room when every slot is taken,
//!   and the quick refusal past that.
//! - [`idle`]: the idle timeout on a served connection.
//! - [`held`]: what answers not yet sent may hold, per connection and in
//!   total, and how long an HTTP/2 stream may go without progress.
//! - [`proxy`]: one request end to end, and its access-log line.
//! - [`state`]: what every request shares, built once from the config.
//! - [`access`]: who may call: the network allowlist, Host, Origin and
//!   browser checks, per-device keys and their scopes.
//! - [`refusals`]: what is refused before a device's allowance, and the
//!   gateway's own endpoints: an allowance per address and a bounded log.
//! - [`routes`]: which route it is: strict path normalisation and the allowlist
//!   (404 / 405 with `Allow`).
//! - [`params`]: what it may carry: each route's query parameters checked
//!   against Joulo's schema and written canonically, POST bodies re-serialised.
//! - [`upstream::request`]: what leaves the house: the upstream request built
//!   from the route, the validated parameters and a fixed header set, nothing copied.
//! - [`sanitize`]: what is recognised and removed: `?token=` in every
//!   spelling, and what an upstream answer carries that a device must not see.
//! - [`token`]: where the token comes from (a secrets file, reloaded on change or
//!   SIGHUP, fail-closed), the one function that puts it in a request, and the
//!   search for it in Joulo's answers.
//! - [`budget`]: how the token's upstream budget is kept: a limit on all calls to
//!   Joulo, each device's allowance and its share of the budget, and the
//!   back-off after Joulo answers 429.
//! - [`cache`]: what is cached: fresh and stale copies, and one upstream call
//!   shared by identical concurrent requests.
//! - [`upstream`]: the verified-TLS client to Joulo and its timeouts, its
//!   connection pool per event loop ([`upstream::pool`]) and the outbound
//!   request ([`upstream::request`]).
//! - [`respond`]: how errors look: every failure becomes Joulo-shaped JSON here.
//! - [`logging`]: structured logs scrubbed of anything token-shaped.
//! - [`ops`]: the gateway's own `/healthz`, `/readyz` and `/metrics`.
//! - [`metrics`]: per-route metric series resolved once, request counters.
//! - [`event_loop`]: the server's extra event loops, and which one a thread
//!   runs, for per-loop pools.
//! - [`config`]: `gateway.toml`, parsed then validated into real types.
//! - [`reload`]: `gateway.toml` re-read on SIGHUP (passed on by [`gateway`]'s
//!   signal hub), applied to new requests.
//! - [`watch`]: when secrets files are re-read (SIGHUP from the hub, file
//!   changes).
//! - [`files`]: how they are read: regular files only, bounded, never blocking.
//! - [`hardening`]: what the process forbids itself at start: core dumps and
//!   being dumped or traced, before the token is read.
//! - [`gen_key`]: `joulo-gateway gen-key`, a new device key and its
//!   `[[clients]]` entry.
//! - [`healthcheck`]: `joulo-gateway healthcheck`, asking a running
//!   gateway's `/healthz` over HTTP or HTTPS.
//! - [`demo`]: a simulated Joulo API and a gateway in front of it, for a first look.
//! - [`throwaway_ca`]: a certificate authority made in memory, for the demo's
//!   simulated API and the tests.
//!
//! Modules form layers: each uses only modules listed as its dependencies
//! below it in the request's way (`server` uses `proxy`, which uses `state`,
//! `ops` and the checks; `upstream` picks its pool through `event_loop`, not
//! through `server`), so there is no import cycle.
#![forbid(unsafe_code)]

mod access;
mod admission;
mod budget;
mod cache;
mod cli;
pub mod config;
pub mod demo;
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
mod ops;
mod params;
mod proxy;
mod refusals;
mod reload;
mod respond;
mod routes;
mod sanitize;
mod server;
mod state;
mod sync;
mod throwaway_ca;
mod token;
mod upstream;
mod watch;

pub use access::{generate_key, key_sha256_hex};
pub use cache::CacheKey;
pub use cli::{Cli, Command, Failure};
pub use gateway::{Gateway, StartError, shutdown_signal};
pub use gen_key::{GenKeyError, gen_key_text};
pub use hardening::forbid_core_dumps;
pub use healthcheck::{HealthError, Target as HealthcheckTarget};
pub use logging::{LogLevel, init as init_logging, redact};
pub use params::QuerySchema;
pub use refusals::{LINES_PER_ADDRESS, LOG_INTERVAL};
pub use reload::{Reloaded, reload_once};
pub use routes::{RouteId, RouteTable, normalise_path};
pub use sanitize::{REDACTED, clean_response_headers, is_credential_param};
pub use state::AppState;
pub use token::TokenFileText;
pub use upstream::request::Outbound;
