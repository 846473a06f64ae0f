//! Who may call, as configured: the `[access]` network allowlist, `[server]
//! allowed_hosts`, the `[[clients]]` device keys, each route's `scope` and
//! the `[ops]` networks that may read `/metrics` and `/status` without a key,
//! checked into one [`AccessConfig`].

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde::Deserialize;

use super::ConfigError;
use super::routes::RawRoute;
use crate::access::{
    AccessConfig, DEFAULT_ALLOW, DEFAULT_LOCAL, DEVICE_NAME_RULE, DeviceKey, Scope,
    within_private_ranges,
};
use crate::routes::RouteId;

/// `[access]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAccess {
    /// Client networks or addresses allowed at all; unset means the private ranges.
    pub(super) allow: Option<Vec<String>>,
    /// Serve every allowed address without a key while there are no device
    /// keys; unset means false (closed: only this host is served keyless).
    pub(super) keyless: Option<bool>,
    /// The addresses that are this host itself; unset means loopback.
    pub(super) local_addresses: Option<Vec<String>>,
    /// The devices file; unset means `devices.toml` beside the config.
    pub(super) devices_file: Option<String>,
}

/// `[ops]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOps {
    /// Networks or addresses that may read `/metrics` and `/status` without a
    /// `gateway:read` key; unset means none.
    pub(super) allow: Option<Vec<String>>,
}

/// One `[[clients]]` entry as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawClient {
    /// The device's name, in logs and in its rate limit.
    pub(super) name: String,
    /// SHA-256 of the device's key, in hex.
    pub(super) key_sha256: String,
    /// What the device may do.
    pub(super) scopes: Vec<String>,
}

/// Checks who may call. `allowed_hosts` comes from `[server]`; of `routes`
/// only each known route's `scope` is read here (unknown route names are
/// reported by `config::routes`).
pub(super) fn validate(
    access: &RawAccess,
    ops: &RawOps,
    allowed_hosts: Option<&[String]>,
    raw_clients: &[RawClient],
    routes: &BTreeMap<String, RawRoute>,
    devices: Vec<DeviceKey>,
    path: &Path,
) -> Result<AccessConfig, ConfigError> {
    let parse_err = |key: String, message: String| ConfigError::at_key(path, key, message);
    let allow = match &access.allow {
        None => DEFAULT_ALLOW
            .iter()
            .map(|n| n.parse().expect("defaults parse"))
            .collect(),
        Some(list) => networks(list, "access.allow", path)?,
    };
    let keyless = access.keyless.unwrap_or(false);
    // Keyless access reaches whoever `allow` lets in; beyond the home
    // ranges that is anyone (a port forward, a VPN, a cloud host).
    if keyless && let Some(wide) = allow.iter().find(|net| !within_private_ranges(net)) {
        return Err(parse_err(
            "access.allow".to_owned(),
            format!(
                "`{wide}` reaches beyond the private ranges, and `keyless = true` would serve it \
                 without a key; remove `keyless` and give each device a key \
                 (joulo-gateway device add NAME), or allow only private ranges"
            ),
        ));
    }
    let local = match &access.local_addresses {
        None => DEFAULT_LOCAL
            .iter()
            .map(|n| n.parse().expect("defaults parse"))
            .collect(),
        Some(list) => networks(list, "access.local_addresses", path)?,
    };
    // "This host" is loopback only. A LAN address, even one of this host's
    // own, is what other devices arrive from too (behind Docker's userland
    // proxy every LAN client is the bridge address), and a public one is
    // anybody: those get a key, never a keyless pass (outside review, 23).
    if let Some(net) = local.iter().find(|net| !is_loopback(net)) {
        return Err(parse_err(
            "access.local_addresses".to_owned(),
            format!(
                "`{net}` is not loopback: only this machine's loopback addresses (127.0.0.0/8, \
                 ::1) are served without a key; any other address is a device: give it a key \
                 with `joulo-gateway device add NAME`"
            ),
        ));
    }
    let ops_allow = networks(ops.allow.as_deref().unwrap_or_default(), "ops.allow", path)?;
    let mut hosts = Vec::new();
    for host in allowed_hosts.into_iter().flatten() {
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
        hosts.push(name);
    }

    let mut clients: Vec<DeviceKey> = Vec::new();
    for (i, client) in raw_clients.iter().enumerate() {
        let key = |field: &str| format!("clients[{i}].{field}");
        let name = client.name.trim();
        if !crate::access::valid_device_name(name) {
            return Err(parse_err(key("name"), DEVICE_NAME_RULE.to_owned()));
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

    for device in devices {
        if clients.iter().any(|c| c.name == device.name) {
            return Err(parse_err(
                "access.devices_file".to_owned(),
                format!(
                    "the device `{}` is also a [[clients]] entry: a name must be unique across \
                     both; remove one",
                    device.name
                ),
            ));
        }
        clients.push(device);
    }

    let mut route_scopes = HashMap::new();
    for (name, route) in routes {
        if let (Some(id), Some(scope)) = (RouteId::from_config_name(name), &route.scope) {
            let scope = Scope::parse(scope).ok_or_else(|| {
                parse_err(
                    format!("routes.{name}.scope"),
                    format!("`{scope}` is not a scope; known: {}", scope_list()),
                )
            })?;
            // An account-changing route is chargers:write, always: a lower
            // scope here would let a read-only key reboot the charger.
            if scope == Scope::GatewayRead {
                return Err(parse_err(
                    format!("routes.{name}.scope"),
                    "\"gateway:read\" is for the gateway's own /metrics and /status, not a route"
                        .to_owned(),
                ));
            }
            if id.changes_account() && scope != Scope::ChargersWrite {
                return Err(parse_err(
                    format!("routes.{name}.scope"),
                    "routes that change the account always need \"chargers:write\"".to_owned(),
                ));
            }
            route_scopes.insert(id, scope);
        }
    }
    Ok(AccessConfig {
        allow,
        allowed_hosts: hosts,
        clients,
        keyless,
        local,
        // Set by the caller, which knows the config's folder.
        devices_file: std::path::PathBuf::new(),
        route_scopes,
        ops_allow,
    })
}

/// Whether `net` lies within loopback.
fn is_loopback(net: &ipnet::IpNet) -> bool {
    ["127.0.0.0/8", "::1/128"]
        .iter()
        .map(|n| n.parse::<ipnet::IpNet>().expect("loopback parses"))
        .any(|lo| lo.contains(net))
}

/// Networks (`192.168.1.0/24`) or single addresses, as `key` lists them.
fn networks(list: &[String], key: &str, path: &Path) -> Result<Vec<ipnet::IpNet>, ConfigError> {
    list.iter()
        .map(|n| {
            n.parse::<ipnet::IpNet>()
                .or_else(|_| n.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| {
                    ConfigError::at_key(
                        path,
                        key.to_owned(),
                        format!("`{n}` is not a network like \"192.168.1.0/24\" or an address"),
                    )
                })
        })
        .collect()
}

fn scope_list() -> String {
    Scope::ALL.map(Scope::as_str).join(", ")
}

#[cfg(test)]
mod tests {
    use super::super::tests::parse;
    use crate::access::{DEFAULT_ALLOW, Scope};
    use crate::routes::RouteId;

    #[test]
    fn access_settings_validate() {
        let hash = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        let c = parse(&format!(
            "[access]\nallow = [\"192.168.1.0/24\", \"10.0.0.7\"]\n\
             [server]\nallowed_hosts = [\"Joulo.Example.com\"]\n\
             [[clients]]\nname = \"homeassistant\"\nkey_sha256 = \"{hash}\"\nscopes = [\"chargers:read\"]\n\
             [routes.me]\nscope = \"chargers:read\"\n\
             [ops]\nallow = [\"192.168.1.10\", \"fd00::/64\"]"
        ))
        .unwrap();
        assert_eq!(c.access.ops_allow.len(), 2);
        assert!(parse("").unwrap().access.ops_allow.is_empty());
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
            ("[routes.me]\nscope = \"gateway:read\"", "routes.me.scope"),
            ("[ops]\nallow = [\"prometheus\"]", "ops.allow"),
        ] {
            let msg = parse(text).unwrap_err().to_string();
            assert!(msg.contains(key), "{text:?} gave {msg}");
        }
    }

    #[test]
    fn keyless_is_refused_with_an_allow_wider_than_the_private_ranges() {
        for wide in [
            "0.0.0.0/0",
            "::/0",
            "8.8.8.0/24",
            "100.64.0.0/10",
            "10.0.0.0/7",
        ] {
            let text = format!("[access]\nkeyless = true\nallow = [\"{wide}\"]");
            let err = parse(&text).unwrap_err().to_string();
            assert!(
                err.contains("access.allow") && err.contains("keyless"),
                "{wide}: {err}"
            );
            // Closed (keys required of everyone but this host), it is allowed.
            let closed = parse(&format!("[access]\nallow = [\"{wide}\"]")).unwrap();
            assert!(!closed.access.keyless);
        }
        let home =
            parse("[access]\nkeyless = true\nallow = [\"192.168.1.0/24\", \"fd00::/8\"]").unwrap();
        assert!(home.access.keyless);
        assert!(parse("[access]\nkeyless = true").unwrap().access.keyless);
        assert!(!parse("").unwrap().access.keyless, "closed by default");
    }

    #[test]
    fn local_addresses_are_loopback_only() {
        let c = parse("[access]\nlocal_addresses = [\"127.0.0.1\", \"::1\"]").unwrap();
        assert_eq!(c.access.local.len(), 2);
        assert_eq!(parse("").unwrap().access.local.len(), 2);
        // A network, this host's LAN address, a Docker bridge, a public
        // address: each would serve someone else without a key.
        for net in [
            "192.168.1.0/24",
            "0.0.0.0/0",
            "::/0",
            "192.168.1.10",
            "172.17.0.1",
            "8.8.8.8",
            "2001:4860:4860::8888",
        ] {
            let err = parse(&format!("[access]\nlocal_addresses = [\"{net}\"]"))
                .unwrap_err()
                .to_string();
            assert!(err.contains("access.local_addresses"), "{net}: {err}");
        }
    }

    #[test]
    fn a_devices_file_name_must_not_repeat_a_clients_name() {
        let dir = tempfile::tempdir().unwrap();
        let devices = dir.path().join("devices.toml");
        crate::devices::add(&devices, "homeassistant", &[Scope::ChargersRead], &[]).unwrap();
        let hash = "0".repeat(64);
        let path = dir.path().join("gateway.toml");
        let ok = crate::config::Config::from_toml("", &path).unwrap();
        assert_eq!(&*ok.access.clients[0].name, "homeassistant");
        assert_eq!(ok.access.devices_file, devices);
        let text = format!(
            "[[clients]]\nname = \"homeassistant\"\nkey_sha256 = \"{hash}\"\nscopes = []\n"
        );
        let err = crate::config::Config::from_toml(&text, &path)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("unique") && err.contains("homeassistant"),
            "{err}"
        );
    }
}
