//! Who may call: the network allowlist, the Host and Origin checks that stop DNS
//! rebinding and cross-site requests from a browser on the LAN, and per-device
//! keys with Joulo's scopes, compared in constant time. Closed by default:
//! while there are no keys, only this host is served without one.
//!
//! About 580 lines before its unit tests: the checks are read in the order a
//! request meets them, and each stays beside the others it must agree with
//! (Host framing, Origin, `Sec-Fetch-Site`, keys), so they are kept together.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use base64::Engine as _;
use http::header::{self, HeaderMap};
use http::request::Parts;
use ipnet::IpNet;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::routes::RouteId;

/// The prefix of every key `joulo-gateway gen-key` makes, so a leaked one is
/// recognisable (and scrubbed from logs).
pub(crate) const KEY_PREFIX: &str = "jgw_";

/// The ranges allowed when `[access] allow` is not set: loopback, private and
/// link-local, IPv4 and IPv6.
pub(crate) const DEFAULT_ALLOW: [&str; 8] = [
    "127.0.0.0/8",
    "::1/128",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "169.254.0.0/16",
    "fc00::/7",
    "fe80::/10",
];

/// The addresses that are this host itself when `[access] local_addresses`
/// is not set: loopback. Only these are served without a key while the
/// gateway has no device keys (and `[access] keyless` is off).
pub(crate) const DEFAULT_LOCAL: [&str; 2] = ["127.0.0.0/8", "::1/128"];

/// Whether `net` lies inside the ranges allowed by default (loopback, private,
/// link-local): anything wider reaches beyond a home network.
pub(crate) fn within_private_ranges(net: &IpNet) -> bool {
    DEFAULT_ALLOW
        .iter()
        .map(|n| n.parse::<IpNet>().expect("defaults parse"))
        .any(|range| range.contains(net))
}

/// A Joulo API scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// GET /chargers.
    ChargersRead,
    /// POST /chargers, POST /chargers/reboot.
    ChargersWrite,
    /// GET /sessions.
    SessionsRead,
    /// GET /energy (and, by default, /ere-position and /me).
    EnergyRead,
    /// The gateway's own `/metrics` and `/status` (not a Joulo scope): they
    /// name the devices, their counts, the budget and the token file's age.
    GatewayRead,
}

impl Scope {
    /// Every scope, in the order they are listed to users.
    pub const ALL: [Scope; 5] = [
        Scope::ChargersRead,
        Scope::ChargersWrite,
        Scope::SessionsRead,
        Scope::EnergyRead,
        Scope::GatewayRead,
    ];

    /// Joulo's name for the scope.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::ChargersRead => "chargers:read",
            Scope::ChargersWrite => "chargers:write",
            Scope::SessionsRead => "sessions:read",
            Scope::EnergyRead => "energy:read",
            Scope::GatewayRead => "gateway:read",
        }
    }

    /// The scope called `name`, if Joulo has one.
    pub fn parse(name: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|s| s.as_str() == name)
    }

    /// The scope Joulo requires for `route` (`/ere-position` and `/me` are not
    /// documented; they are treated as energy data).
    pub fn default_for(route: RouteId) -> Scope {
        match route {
            RouteId::Chargers => Scope::ChargersRead,
            RouteId::AddCharger | RouteId::RebootCharger => Scope::ChargersWrite,
            RouteId::Sessions => Scope::SessionsRead,
            RouteId::Energy | RouteId::ErePosition | RouteId::Me => Scope::EnergyRead,
        }
    }
}

/// One device allowed to use the gateway.
#[derive(Clone)]
pub struct DeviceKey {
    /// The device's name, in logs and in its rate limit.
    pub name: Arc<str>,
    /// SHA-256 of the device's whole key string; the key itself is never stored.
    pub key_sha256: [u8; 32],
    /// What the device may do.
    pub scopes: Vec<Scope>,
}

impl fmt::Debug for DeviceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceKey")
            .field("name", &self.name)
            .field("key_sha256", &"[REDACTED]")
            .field("scopes", &self.scopes)
            .finish()
    }
}

/// The validated `[access]`, `[server] allowed_hosts`, `[[clients]]` and route
/// scope settings.
#[derive(Debug, Clone)]
pub struct AccessConfig {
    /// Client networks allowed at all.
    pub allow: Vec<IpNet>,
    /// Host names accepted beyond IP literals, localhost, single labels and the
    /// home suffixes; lower case.
    pub allowed_hosts: Vec<String>,
    /// Device keys, from `[[clients]]` and the devices file; when empty,
    /// only `local` addresses are served (without a key), unless `keyless`.
    pub clients: Vec<DeviceKey>,
    /// `[access] keyless`: while there are no device keys, every allowed
    /// address is served without one (a trusted single-user network).
    pub keyless: bool,
    /// `[access] local_addresses`: the addresses that are this host itself,
    /// served without a key while there are no device keys.
    pub local: Vec<IpNet>,
    /// `[access] devices_file`: where `joulo-gateway device` keeps device
    /// keys; watched for changes.
    pub devices_file: std::path::PathBuf,
    /// Route scopes set in `[routes.<name>] scope`.
    pub route_scopes: HashMap<RouteId, Scope>,
    /// `[ops] allow`: networks that may read `/metrics` and `/status` without
    /// a key (a Prometheus host) when device keys are in use.
    pub ops_allow: Vec<IpNet>,
}

impl Default for AccessConfig {
    fn default() -> Self {
        AccessConfig {
            allow: DEFAULT_ALLOW
                .iter()
                .map(|n| n.parse().expect("default ranges parse"))
                .collect(),
            allowed_hosts: Vec::new(),
            clients: Vec::new(),
            keyless: false,
            devices_file: "devices.toml".into(),
            local: DEFAULT_LOCAL
                .iter()
                .map(|n| n.parse().expect("default ranges parse"))
                .collect(),
            route_scopes: HashMap::new(),
            ops_allow: Vec::new(),
        }
    }
}

/// Who is calling, once let in.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Caller {
    /// No keys are configured: the client's address is all there is.
    Address(IpAddr),
    /// A device that presented its key.
    Device(Arc<str>),
    /// The gateway's own MQTT publisher: it holds no key and has no address,
    /// and is a device of its own for the budget's shares.
    Publisher,
}

impl fmt::Display for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Caller::Address(ip) => write!(f, "{ip}"),
            Caller::Device(name) => f.write_str(name),
            Caller::Publisher => f.write_str("mqtt publisher"),
        }
    }
}

/// Why a caller was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccessError {
    /// The client address is outside `[access] allow`.
    #[error("Forbidden: this address may not use the gateway (see [access] allow)")]
    Network,
    /// No `Host`, two of them, one that is not a valid authority, or one that
    /// disagrees with HTTP/2's `:authority` (RFC 9112 section 3.2).
    #[error("Bad request: {0}")]
    BadHost(&'static str),
    /// The Host is not one of the gateway's names: possibly DNS rebinding.
    #[error(
        "Host `{0}` is not accepted; if it is this gateway's name, add it to [server] allowed_hosts"
    )]
    Host(String),
    /// A browser page from another origin.
    #[error("Forbidden: cross-origin requests are refused")]
    Origin,
    /// More than one `Origin` field: a check of the first could be undone by
    /// whatever reads another.
    #[error("Bad request: more than one Origin header")]
    DuplicateOrigin,
    /// A request a browser marks `Sec-Fetch-Site: cross-site` or `same-site`
    /// (a page elsewhere on the LAN or the internet) without a device key.
    #[error("Forbidden: requests a browser sends for another site are refused")]
    CrossSite,
    /// No key, or one that matches no device.
    #[error("Missing or invalid API token")]
    Key,
    /// A client other than this host while the gateway has no device keys
    /// at all: closed by default.
    #[error("Missing or invalid API token")]
    NoKeysYet,
    /// The device's key lacks the route's scope.
    #[error("Insufficient scope")]
    Scope(Scope),
}

/// The access rules, built once at start.
#[derive(Debug)]
pub(crate) struct AccessPolicy {
    /// The validated rules.
    config: AccessConfig,
    /// Whether the listener serves HTTPS, for the same-origin check.
    https: bool,
}

impl AccessPolicy {
    /// The policy for a listener that serves HTTPS when `https`.
    pub(crate) fn new(config: AccessConfig, https: bool) -> AccessPolicy {
        AccessPolicy { config, https }
    }

    /// How many device keys it holds (`[[clients]]` and the devices file).
    pub(crate) fn key_count(&self) -> usize {
        self.config.clients.len()
    }

    /// Whether the client address may use the gateway at all. IPv4-mapped IPv6
    /// addresses (from a dual-stack listener) are checked as IPv4.
    pub(crate) fn check_network(&self, client: IpAddr) -> Result<(), AccessError> {
        let client = client.to_canonical();
        if self.config.allow.iter().any(|net| net.contains(&client)) {
            Ok(())
        } else {
            Err(AccessError::Network)
        }
    }

    /// Host, Origin and browser checks, then the device key, in the request
    /// path's order. Returns who is calling. For the unit tests: the request
    /// path (proxy) runs the three steps itself.
    #[cfg(test)]
    pub(crate) fn admit(&self, client: IpAddr, parts: &Parts) -> Result<Caller, AccessError> {
        self.check_host_and_origin(parts)?;
        self.check_fetch_site(parts)?;
        self.authenticate(client, parts)
    }

    /// Refuses a Host that is not one of the gateway's names (DNS rebinding) and
    /// an Origin that is not the gateway's own (a cross-site page).
    pub(crate) fn check_host_and_origin(&self, parts: &Parts) -> Result<(), AccessError> {
        check_host_framing(parts)?;
        // An absolute-form target (or HTTP/2's :scheme) names the scheme it
        // was sent over; `https://` on the plain listener is a request meant
        // for somewhere else.
        let scheme = if self.https { "https" } else { "http" };
        if parts
            .uri
            .scheme_str()
            .is_some_and(|s| !s.eq_ignore_ascii_case(scheme))
        {
            return Err(AccessError::BadHost(
                "the request target's scheme is not this listener's",
            ));
        }
        let host = request_host(parts);
        if let Some(host) = host
            && !self.host_allowed(host)
        {
            return Err(AccessError::Host(host.to_owned()));
        }
        let mut origins = parts.headers.get_all(header::ORIGIN).iter();
        let origin = origins.next();
        if origins.next().is_some() {
            return Err(AccessError::DuplicateOrigin);
        }
        if let Some(origin) = origin {
            let scheme = if self.https { "https://" } else { "http://" };
            let same = origin
                .to_str()
                .ok()
                .and_then(|o| o.strip_prefix(scheme))
                .zip(host)
                .is_some_and(|(o, h)| o.eq_ignore_ascii_case(h));
            if !same {
                return Err(AccessError::Origin);
            }
        }
        Ok(())
    }

    /// Refuses what a browser marks as sent for another site (`Sec-Fetch-Site:
    /// cross-site` or `same-site`: a page on another LAN host or the internet,
    /// which may send no `Origin` on a simple GET) unless it carries a valid
    /// device key: a page cannot spend the household's budget with the
    /// ambient access every LAN address has. An invalid key is 401 as
    /// anywhere; without device keys no key can be valid, so the page is
    /// refused.
    pub(crate) fn check_fetch_site(&self, parts: &Parts) -> Result<(), AccessError> {
        let other_site = parts.headers.get_all("sec-fetch-site").iter().any(|v| {
            v.as_bytes().eq_ignore_ascii_case(b"cross-site")
                || v.as_bytes().eq_ignore_ascii_case(b"same-site")
        });
        if !other_site {
            return Ok(());
        }
        if self.config.clients.is_empty() {
            return Err(AccessError::CrossSite);
        }
        let key = presented_key(&parts.headers).ok_or(AccessError::CrossSite)?;
        self.device_for(&key).map(|_| ()).ok_or(AccessError::Key)
    }

    /// Whether the client may read `/metrics` and `/status`: an address in
    /// `[ops] allow`; while no device keys are configured, whoever would be
    /// served without a key (this host, or anyone under `keyless`); else a
    /// key holding `gateway:read` (401 without a valid key, 403 with one that
    /// lacks the scope).
    pub(crate) fn check_ops(&self, client: IpAddr, parts: &Parts) -> Result<(), AccessError> {
        let client = client.to_canonical();
        if self
            .config
            .ops_allow
            .iter()
            .any(|net| net.contains(&client))
        {
            return Ok(());
        }
        if self.config.clients.is_empty() {
            return self.keyless_allowed(client);
        }
        let key = presented_key(&parts.headers).ok_or(AccessError::Key)?;
        let device = self.device_for(&key).ok_or(AccessError::Key)?;
        if device.scopes.contains(&Scope::GatewayRead) {
            Ok(())
        } else {
            Err(AccessError::Scope(Scope::GatewayRead))
        }
    }

    /// Who is calling: the device whose key the request carries, or, when no keys
    /// are configured, the client address, if this host or `keyless` lets it
    /// in.
    pub(crate) fn authenticate(
        &self,
        client: IpAddr,
        parts: &Parts,
    ) -> Result<Caller, AccessError> {
        if self.config.clients.is_empty() {
            let client = client.to_canonical();
            return self
                .keyless_allowed(client)
                .map(|()| Caller::Address(client));
        }
        let key = presented_key(&parts.headers).ok_or(AccessError::Key)?;
        self.device_for(&key)
            .map(|d| Caller::Device(d.name.clone()))
            .ok_or(AccessError::Key)
    }

    /// Without device keys: this host is served, and every allowed address
    /// under `keyless`; anyone else is told to add a device. Closed unless
    /// opened: a reload that removes the last key lands here too.
    fn keyless_allowed(&self, client: IpAddr) -> Result<(), AccessError> {
        if self.config.keyless || self.config.local.iter().any(|net| net.contains(&client)) {
            Ok(())
        } else {
            Err(AccessError::NoKeysYet)
        }
    }

    /// Whether `caller` may use `route`.
    pub(crate) fn check_scope(&self, caller: &Caller, route: RouteId) -> Result<(), AccessError> {
        let Caller::Device(name) = caller else {
            return Ok(());
        };
        let needed = self.scope_for(route);
        let device = self.config.clients.iter().find(|d| d.name == *name);
        if device.is_some_and(|d| d.scopes.contains(&needed)) {
            Ok(())
        } else {
            Err(AccessError::Scope(needed))
        }
    }

    /// The scope `route` needs here.
    fn scope_for(&self, route: RouteId) -> Scope {
        self.config
            .route_scopes
            .get(&route)
            .copied()
            .unwrap_or_else(|| Scope::default_for(route))
    }

    /// The device whose key hashes to the same SHA-256. Every configured hash is
    /// compared, in constant time, whatever matches.
    fn device_for(&self, key: &str) -> Option<&DeviceKey> {
        let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        let mut found = None;
        for device in &self.config.clients {
            if bool::from(device.key_sha256.ct_eq(&digest)) {
                found = Some(device);
            }
        }
        found
    }

    fn host_allowed(&self, host: &str) -> bool {
        // Names compare ASCII case-insensitively; nothing is lowercased into a
        // new string, as this runs for every request.
        let name = strip_port(host).trim_end_matches('.');
        if name.parse::<IpAddr>().is_ok()
            || name
                .strip_prefix('[')
                .and_then(|n| n.strip_suffix(']'))
                .is_some_and(|n| n.parse::<IpAddr>().is_ok())
        {
            return true;
        }
        if name.eq_ignore_ascii_case("localhost") || (!name.is_empty() && !name.contains('.')) {
            return true;
        }
        const HOME_SUFFIXES: [&str; 4] = [".local", ".lan", ".home.arpa", ".internal"];
        HOME_SUFFIXES.iter().any(|suffix| {
            name.len() > suffix.len()
                && name.as_bytes()[name.len() - suffix.len()..]
                    .eq_ignore_ascii_case(suffix.as_bytes())
        }) || self
            .config
            .allowed_hosts
            .iter()
            .any(|h| h.eq_ignore_ascii_case(name))
    }
}

thread_local! {
    /// The last `Host` value this event loop found valid. Devices send the
    /// same one on every request, and parsing it as an authority allocates;
    /// a copy is kept, not the value, which shares hyper's read buffer.
    static LAST_VALID_HOST: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Whether `host` is a valid authority for a `Host` header: no user
/// information, a port that fits in 16 bits.
fn valid_host(host: &str) -> bool {
    if LAST_VALID_HOST.with_borrow(|last| !last.is_empty() && last == host.as_bytes()) {
        return true;
    }
    let valid = !host.is_empty()
        && !host.contains('@')
        && host.parse::<http::uri::Authority>().is_ok()
        && port_fits(host);
    if valid && host.len() <= 255 {
        LAST_VALID_HOST.with_borrow_mut(|last| {
            last.clear();
            last.extend_from_slice(host.as_bytes());
        });
    }
    valid
}

/// RFC 9112 section 3.2: an HTTP/1.1 request carries exactly one `Host`, and
/// it is a valid authority, the same as an absolute-form target's; RFC 9113 section 8.3.1: an HTTP/2 `:authority` and
/// a `Host` sent beside it agree. A request that names its target two ways
/// could be routed by one reading and checked by the other.
fn check_host_framing(parts: &Parts) -> Result<(), AccessError> {
    let mut hosts = parts.headers.get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(AccessError::BadHost("more than one Host header"));
    }
    let host = match host {
        None => None,
        Some(value) => Some(
            value
                .to_str()
                .ok()
                .filter(|h| valid_host(h))
                .ok_or(AccessError::BadHost("invalid Host header"))?,
        ),
    };
    match (parts.version, parts.uri.authority(), host) {
        (http::Version::HTTP_11, _, None) => Err(AccessError::BadHost(
            "missing Host header (HTTP/1.1 requires one)",
        )),
        // An absolute-form target (RFC 9112 section 3.2.2) names its own
        // authority; one that disagrees with Host asks for two places at once.
        (
            http::Version::HTTP_09 | http::Version::HTTP_10 | http::Version::HTTP_11,
            Some(authority),
            Some(host),
        ) if !authority.as_str().eq_ignore_ascii_case(host) => Err(AccessError::BadHost(
            "the request target's authority and Host disagree",
        )),
        (http::Version::HTTP_2, Some(authority), Some(host))
            if !authority.as_str().eq_ignore_ascii_case(host) =>
        {
            Err(AccessError::BadHost("Host and :authority disagree"))
        }
        (http::Version::HTTP_2, None, None) => Err(AccessError::BadHost(
            "missing :authority (HTTP/2 requires one)",
        )),
        _ => Ok(()),
    }
}

/// Whether an authority's port, if it has one, is a port number: `http`
/// parses `host:99999` as an authority all the same.
fn port_fits(authority: &str) -> bool {
    let after_host = match authority.rfind(']') {
        Some(end) => &authority[end + 1..],
        None => authority,
    };
    match after_host.rsplit_once(':') {
        Some((_, port)) => port.is_empty() || port.parse::<u16>().is_ok(),
        None => true,
    }
}

/// The authority the client addressed: the absolute-form target's or HTTP/2's
/// `:authority`, else the `Host` header.
fn request_host(parts: &Parts) -> Option<&str> {
    parts
        .uri
        .authority()
        .map(|a| a.as_str())
        .or_else(|| parts.headers.get(header::HOST)?.to_str().ok())
}

/// The address a client's allowances and log budget are kept under: an IPv4
/// address as it is (IPv4-mapped IPv6 counted as IPv4), an IPv6 address's /64,
/// since one host is routinely handed a whole /64 and can use any address in
/// it.
pub(crate) fn address_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => IpAddr::V6(std::net::Ipv6Addr::from_bits(
            v6.to_bits() & !((1u128 << 64) - 1),
        )),
    }
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        // [v6]:port
        return host
            .split_once("]:")
            .map_or(host, |(h, _)| &host[..h.len() + 1]);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !name.contains(':') => {
            name
        }
        _ => host,
    }
}

/// The key a device presented: `Authorization: Bearer <key>`, HTTP Basic with the
/// key as password (Home Assistant's `authentication: basic`), or `X-Gateway-Key`.
fn presented_key(headers: &HeaderMap) -> Option<String> {
    if let Some(key) = headers.get("x-gateway-key").and_then(|v| v.to_str().ok()) {
        return Some(key.trim().to_owned());
    }
    let auth = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, value) = auth.trim().split_once(' ')?;
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some(value.trim().to_owned());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(value.trim())
            .ok()?;
        let decoded = String::from_utf8(decoded).ok()?;
        return decoded
            .split_once(':')
            .map(|(_, password)| password.to_owned());
    }
    None
}

/// A new random device key: the prefix and 32 alphanumerics (about 190 bits).
pub fn generate_key() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut key = String::with_capacity(KEY_PREFIX.len() + 32);
    key.push_str(KEY_PREFIX);
    while key.len() < KEY_PREFIX.len() + 32 {
        let mut byte = [0u8; 1];
        getrandom::fill(&mut byte).expect("the OS random source works");
        // Rejection sampling keeps every character equally likely.
        if usize::from(byte[0]) < 248 {
            key.push(char::from(ALPHABET[usize::from(byte[0]) % ALPHABET.len()]));
        }
    }
    key
}

/// What a device name may be, for error messages.
pub(crate) const DEVICE_NAME_RULE: &str = "must be 1-32 characters of a-z, 0-9, '-' or '_', and not \
     start like a Joulo token (joulo_) or a device key (jgw_)";

/// Whether `name` is acceptable as a device name: 1-32 of `a-z0-9_-`, and
/// not shaped like a Joulo token or a device key. Names are published on
/// `/metrics` and `/status` and in every access-log line: a secret pasted
/// as a name must not be accepted.
pub(crate) fn valid_device_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 32
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && !name.starts_with(KEY_PREFIX)
        && !name.starts_with("joulo_")
}

/// Lower-case hex SHA-256 of a key, as `key_sha256` holds it.
pub fn key_sha256_hex(key: &str) -> String {
    Sha256::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Request;

    fn parts(host: Option<&str>, headers: &[(&str, &str)]) -> Parts {
        let mut request = Request::get("/chargers");
        if let Some(host) = host {
            request = request.header("host", host);
        }
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        request.body(()).unwrap().into_parts().0
    }

    /// These tests are about Host, Origin and browser checks, which are the
    /// same with or without keys: without keys the policy is `keyless`, so a
    /// LAN address reaches them (closed-by-default has its own test).
    fn policy(clients: Vec<DeviceKey>) -> AccessPolicy {
        AccessPolicy::new(
            AccessConfig {
                keyless: clients.is_empty(),
                clients,
                allowed_hosts: vec!["joulo.example.com".into()],
                ..AccessConfig::default()
            },
            false,
        )
    }

    #[test]
    fn without_device_keys_only_this_host_is_served_unless_keyless() {
        let closed = AccessPolicy::new(AccessConfig::default(), false);
        let request = parts(Some("gw.lan"), &[]);
        for lan in ["192.168.1.5", "10.0.0.2", "fd00::1", "::ffff:192.168.1.5"] {
            let ip: IpAddr = lan.parse().unwrap();
            assert_eq!(
                closed.authenticate(ip, &request),
                Err(AccessError::NoKeysYet),
                "{lan}"
            );
            assert_eq!(
                closed.check_ops(ip, &request),
                Err(AccessError::NoKeysYet),
                "{lan}"
            );
        }
        for host in ["127.0.0.1", "127.0.0.2", "::1", "::ffff:127.0.0.1"] {
            let ip: IpAddr = host.parse().unwrap();
            assert!(closed.authenticate(ip, &request).is_ok(), "{host}");
            assert!(closed.check_ops(ip, &request).is_ok(), "{host}");
        }
        // `local_addresses` says what this host is; a test names 127.0.0.1
        // alone and plays a LAN device from 127.0.0.2.
        let narrow = AccessPolicy::new(
            AccessConfig {
                local: vec!["127.0.0.1/32".parse().unwrap()],
                ..AccessConfig::default()
            },
            false,
        );
        assert!(
            narrow
                .authenticate("127.0.0.1".parse().unwrap(), &request)
                .is_ok()
        );
        assert_eq!(
            narrow.authenticate("127.0.0.2".parse().unwrap(), &request),
            Err(AccessError::NoKeysYet)
        );
        let open = AccessPolicy::new(
            AccessConfig {
                keyless: true,
                ..AccessConfig::default()
            },
            false,
        );
        let lan: IpAddr = "192.168.1.5".parse().unwrap();
        assert_eq!(open.authenticate(lan, &request), Ok(Caller::Address(lan)));
        // Once a key exists, keyless changes nothing: every client needs one.
        let keyed = AccessPolicy::new(
            AccessConfig {
                keyless: true,
                clients: vec![device("ha", &generate_key(), &[Scope::ChargersRead])],
                ..AccessConfig::default()
            },
            false,
        );
        for ip in ["192.168.1.5", "127.0.0.1"] {
            assert_eq!(
                keyed.authenticate(ip.parse().unwrap(), &request),
                Err(AccessError::Key)
            );
        }
    }

    fn device(name: &str, key: &str, scopes: &[Scope]) -> DeviceKey {
        DeviceKey {
            name: name.into(),
            key_sha256: Sha256::digest(key.as_bytes()).into(),
            scopes: scopes.to_vec(),
        }
    }

    #[test]
    fn the_remembered_host_never_lets_an_invalid_one_through() {
        for (host, valid) in [
            ("gateway.lan:8080", true),
            ("gateway.lan:8080", true),
            ("gateway.lan:99999", false),
            ("user@gateway.lan", false),
            ("gateway.lan:8080", true),
            ("[::1]:8080", true),
            ("gateway.lan:8080 ", false),
            ("", false),
            ("gateway.lan:8080", true),
        ] {
            assert_eq!(valid_host(host), valid, "{host:?}");
        }
    }

    #[test]
    fn default_allowlist_is_the_home_network() {
        let p = policy(vec![]);
        for ok in [
            "127.0.0.1",
            "::1",
            "10.1.2.3",
            "172.20.0.5",
            "192.168.178.2",
            "169.254.1.1",
            "fd00::1",
            "fe80::1",
            "::ffff:192.168.1.5",
        ] {
            assert!(p.check_network(ok.parse().unwrap()).is_ok(), "{ok}");
        }
        for no in [
            "8.8.8.8",
            "172.32.0.1",
            "2001:db8::1",
            "::ffff:8.8.8.8",
            "100.64.0.1",
        ] {
            assert_eq!(
                p.check_network(no.parse().unwrap()),
                Err(AccessError::Network),
                "{no}"
            );
        }
    }

    #[test]
    fn an_absolute_target_must_name_this_listeners_scheme() {
        let plain = policy(vec![]);
        let request = |target: &str| {
            let (parts, ()) = Request::get(target)
                .header(header::HOST, "gateway.lan")
                .body(())
                .unwrap()
                .into_parts();
            parts
        };
        assert!(
            plain
                .check_host_and_origin(&request("http://gateway.lan/chargers"))
                .is_ok()
        );
        assert!(matches!(
            plain.check_host_and_origin(&request("https://gateway.lan/chargers")),
            Err(AccessError::BadHost(_))
        ));
    }

    #[test]
    fn hosts_must_be_the_gateways_own() {
        let p = policy(vec![]);
        let ip: IpAddr = "192.168.1.5".parse().unwrap();
        for ok in [
            "gateway.lan:8080",
            "192.168.1.2:8080",
            "[fe80::1]:8080",
            "[::1]",
            "localhost",
            "gateway",
            "pi.local",
            "nas.home.arpa",
            "gw.internal",
            "JOULO.example.com:8080",
            "gateway.lan.",
            "Gateway.LAN:8080",
            "LOCALHOST:8080",
            "Nas.Home.Arpa.",
        ] {
            assert!(p.admit(ip, &parts(Some(ok), &[])).is_ok(), "{ok}");
        }
        for no in [
            "evil.example.com",
            "attacker.com:8080",
            "gateway.lan.evil.com",
            "example.com",
            "EVIL.example.COM",
            ".lan",
        ] {
            let err = p.admit(ip, &parts(Some(no), &[])).unwrap_err();
            assert!(matches!(err, AccessError::Host(_)), "{no}");
            assert!(err.to_string().contains("[server] allowed_hosts"));
        }
    }

    #[test]
    fn only_same_origin_browsers() {
        let p = policy(vec![]);
        let ip: IpAddr = "192.168.1.5".parse().unwrap();
        assert!(
            p.admit(
                ip,
                &parts(
                    Some("gateway.lan:8080"),
                    &[("origin", "http://gateway.lan:8080")]
                )
            )
            .is_ok()
        );
        for origin in [
            "http://evil.com",
            "null",
            "https://gateway.lan:8080",
            "http://gateway.lan:8081",
            "http://gateway.lan",
        ] {
            assert_eq!(
                p.admit(ip, &parts(Some("gateway.lan:8080"), &[("origin", origin)])),
                Err(AccessError::Origin),
                "{origin}"
            );
        }
    }

    #[test]
    fn keys_by_bearer_basic_and_header_and_their_scopes() {
        let ha = generate_key();
        let p = policy(vec![
            device(
                "homeassistant",
                &ha,
                &[Scope::ChargersRead, Scope::EnergyRead],
            ),
            device("other", &generate_key(), &[Scope::SessionsRead]),
        ]);
        let ip: IpAddr = "192.168.1.5".parse().unwrap();
        let basic = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("ha:{ha}"))
        );
        for header in [
            ("authorization", format!("Bearer {ha}")),
            ("authorization", basic),
            ("x-gateway-key", ha.clone()),
        ] {
            let caller = p
                .admit(ip, &parts(Some("gw.lan"), &[(header.0, &header.1)]))
                .unwrap();
            assert_eq!(caller, Caller::Device("homeassistant".into()));
            assert!(p.check_scope(&caller, RouteId::Chargers).is_ok());
            assert!(
                p.check_scope(&caller, RouteId::Me).is_ok(),
                "/me is energy:read"
            );
            assert_eq!(
                p.check_scope(&caller, RouteId::Sessions),
                Err(AccessError::Scope(Scope::SessionsRead))
            );
        }
        assert_eq!(
            p.admit(ip, &parts(Some("gw.lan"), &[])),
            Err(AccessError::Key)
        );
        let wrong = format!("Bearer {}", generate_key());
        assert_eq!(
            p.admit(ip, &parts(Some("gw.lan"), &[("authorization", &wrong)])),
            Err(AccessError::Key)
        );
    }

    #[test]
    fn browsers_sending_for_another_site_need_a_valid_key() {
        let ha = generate_key();
        let keyed = policy(vec![device("ha", &ha, &[Scope::ChargersRead])]);
        let keyless = policy(vec![]);
        let ip: IpAddr = "192.168.1.5".parse().unwrap();
        let bearer = format!("Bearer {ha}");
        let wrong = format!("Bearer {}", generate_key());
        for site in ["cross-site", "same-site", "Cross-Site"] {
            let fetch = ("sec-fetch-site", site);
            for p in [&keyed, &keyless] {
                assert_eq!(
                    p.admit(ip, &parts(Some("gw.lan"), &[fetch])),
                    Err(AccessError::CrossSite),
                    "{site}"
                );
            }
            assert_eq!(
                keyed.admit(
                    ip,
                    &parts(Some("gw.lan"), &[fetch, ("authorization", &bearer)])
                ),
                Ok(Caller::Device("ha".into()))
            );
            assert_eq!(
                keyed.admit(
                    ip,
                    &parts(Some("gw.lan"), &[fetch, ("authorization", &wrong)])
                ),
                Err(AccessError::Key),
                "an invalid key is 401, as anywhere"
            );
            // Without device keys, no key makes a page's request acceptable.
            assert_eq!(
                keyless.admit(
                    ip,
                    &parts(Some("gw.lan"), &[fetch, ("authorization", &wrong)])
                ),
                Err(AccessError::CrossSite)
            );
        }
        for site in ["same-origin", "none"] {
            assert!(
                keyless
                    .admit(ip, &parts(Some("gw.lan"), &[("sec-fetch-site", site)]))
                    .is_ok(),
                "{site}"
            );
        }
        let two = parts(
            Some("gw.lan"),
            &[
                ("sec-fetch-site", "same-origin"),
                ("sec-fetch-site", "cross-site"),
            ],
        );
        assert_eq!(keyless.admit(ip, &two), Err(AccessError::CrossSite));
    }

    #[test]
    fn more_than_one_origin_is_a_bad_request() {
        let p = policy(vec![]);
        let ip: IpAddr = "192.168.1.5".parse().unwrap();
        let own = ("origin", "http://gateway.lan:8080");
        assert!(
            p.admit(ip, &parts(Some("gateway.lan:8080"), &[own]))
                .is_ok()
        );
        for second in ["http://gateway.lan:8080", "http://evil.com"] {
            assert_eq!(
                p.admit(
                    ip,
                    &parts(Some("gateway.lan:8080"), &[own, ("origin", second)])
                ),
                Err(AccessError::DuplicateOrigin),
                "{second}"
            );
        }
    }

    #[test]
    fn an_absolute_target_must_name_the_host_it_is_sent_with() {
        let p = policy(vec![]);
        let ip: IpAddr = "192.168.1.5".parse().unwrap();
        let absolute = |target: &str, host: &str| {
            Request::get(target)
                .header("host", host)
                .body(())
                .unwrap()
                .into_parts()
                .0
        };
        for (target, host) in [
            ("http://gateway.lan:8080/chargers", "gateway.lan:8080"),
            ("http://Gateway.LAN:8080/chargers", "gateway.lan:8080"),
        ] {
            assert!(p.admit(ip, &absolute(target, host)).is_ok(), "{target}");
        }
        for (target, host) in [
            ("http://evil.example/chargers", "gateway.lan:8080"),
            ("http://gateway.lan/chargers", "gateway.lan:8080"),
            ("http://gateway.lan:8080/chargers", "nas.lan:8080"),
        ] {
            assert!(
                matches!(
                    p.admit(ip, &absolute(target, host)),
                    Err(AccessError::BadHost(_))
                ),
                "{target} with Host {host}"
            );
        }
    }

    #[test]
    fn metrics_and_status_need_gateway_read_or_an_ops_address_once_keys_exist() {
        let reader = generate_key();
        let other = generate_key();
        let ip: IpAddr = "192.168.1.5".parse().unwrap();
        let prometheus: IpAddr = "192.168.1.20".parse().unwrap();
        let mut config = AccessConfig {
            clients: vec![
                device("grafana", &reader, &[Scope::GatewayRead]),
                device("ha", &other, &[Scope::ChargersRead]),
            ],
            ops_allow: vec!["192.168.1.16/28".parse().unwrap()],
            ..AccessConfig::default()
        };
        let p = AccessPolicy::new(config.clone(), false);
        let with = |key: &str| {
            let bearer = format!("Bearer {key}");
            p.check_ops(ip, &parts(Some("gw.lan"), &[("authorization", &bearer)]))
        };
        assert_eq!(
            p.check_ops(ip, &parts(Some("gw.lan"), &[])),
            Err(AccessError::Key)
        );
        assert_eq!(with(&generate_key()), Err(AccessError::Key));
        assert_eq!(with(&other), Err(AccessError::Scope(Scope::GatewayRead)));
        assert_eq!(with(&reader), Ok(()));
        assert_eq!(p.check_ops(prometheus, &parts(Some("gw.lan"), &[])), Ok(()));
        let mapped: IpAddr = "::ffff:192.168.1.20".parse().unwrap();
        assert_eq!(p.check_ops(mapped, &parts(Some("gw.lan"), &[])), Ok(()));
        // Without device keys (issue 23: closed by default), a LAN address
        // not in [ops] allow is refused; this host and, under keyless, anyone
        // is let in.
        config.clients.clear();
        let closed = AccessPolicy::new(config.clone(), false);
        assert_eq!(
            closed.check_ops(ip, &parts(Some("gw.lan"), &[])),
            Err(AccessError::NoKeysYet)
        );
        assert_eq!(
            closed.check_ops(prometheus, &parts(Some("gw.lan"), &[])),
            Ok(())
        );
        let local: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(closed.check_ops(local, &parts(Some("gw.lan"), &[])), Ok(()));
        config.keyless = true;
        let keyless = AccessPolicy::new(config, false);
        assert_eq!(keyless.check_ops(ip, &parts(Some("gw.lan"), &[])), Ok(()));
    }

    #[test]
    fn addresses_are_kept_by_ipv4_address_or_ipv6_64() {
        for (ip, key) in [
            ("192.168.1.5", "192.168.1.5"),
            ("::ffff:192.168.1.5", "192.168.1.5"),
            ("fd00:1:2:3:4:5:6:7", "fd00:1:2:3::"),
            ("fd00:1:2:3::1", "fd00:1:2:3::"),
            ("::1", "::"),
            ("fe80::abcd", "fe80::"),
        ] {
            assert_eq!(
                address_key(ip.parse().unwrap()),
                key.parse::<IpAddr>().unwrap(),
                "{ip}"
            );
        }
    }

    #[test]
    fn generated_keys_are_distinct_and_hash_like_sha256sum() {
        let a = generate_key();
        assert!(a.starts_with(KEY_PREFIX) && a.len() == 36);
        assert_ne!(a, generate_key());
        assert_eq!(
            key_sha256_hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let d = device("x", &a, &[]);
        let shown = format!("{d:?}");
        assert!(shown.contains("[REDACTED]"));
        assert!(!shown.contains(&format!("{:?}", d.key_sha256)));
    }
}
