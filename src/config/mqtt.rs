//! The `[mqtt]` table: the broker the Home Assistant publisher talks to, its
//! credentials and the topics it writes under. No table, no publisher.

use std::path::{Path, PathBuf};

use http::Uri;
use rustls::pki_types::CertificateDer;
use secrecy::SecretString;
use serde::Deserialize;

use super::upstream::load_roots;
use super::{ConfigError, defaults};

/// The port of `mqtt://` when the URL names none (IANA).
const MQTT_PORT: u16 = 1883;
/// The port of `mqtts://` when the URL names none (IANA).
const MQTTS_PORT: u16 = 8883;

/// `[mqtt]` as written; an unset key takes its default in [`validate`].
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMqtt {
    /// `mqtt://host[:port]` or `mqtts://host[:port]`, as text so a bad one is
    /// reported with its key.
    pub(super) url: Option<String>,
    /// The broker user name.
    pub(super) username: Option<String>,
    /// The file holding the broker password, relative to the config file.
    pub(super) password_file: Option<PathBuf>,
    /// Extra trust anchors (PEM) for `mqtts://`, relative to the config file.
    pub(super) ca_file: Option<PathBuf>,
    /// Where Home Assistant looks for discovery configs.
    pub(super) discovery_prefix: Option<String>,
    /// Where the gateway writes its states and availability.
    pub(super) base_topic: Option<String>,
    /// The MQTT version; only "3.1.1", which every broker speaks.
    pub(super) protocol: Option<String>,
}

/// The `[mqtt]` table, validated.
#[derive(Debug, Clone)]
pub struct MqttConfig {
    /// The broker's host name or address (IPv6 without brackets).
    pub host: String,
    /// The broker's port.
    pub port: u16,
    /// `mqtts://`: TLS, verified against the webpki roots and `extra_roots`.
    pub tls: bool,
    /// Trust anchors added for the broker (a private CA, the add-on's).
    pub extra_roots: Vec<CertificateDer<'static>>,
    /// The broker user name, if the broker wants one.
    pub username: Option<String>,
    /// The broker password, if the broker wants one.
    pub password: Option<MqttPassword>,
    /// The Home Assistant discovery prefix (`<prefix>/<component>/.../config`,
    /// and its birth message at `<prefix>/status`).
    pub discovery_prefix: String,
    /// The topic the gateway's states and availability go under.
    pub base_topic: String,
}

/// Where the broker password comes from.
#[derive(Debug, Clone)]
pub enum MqttPassword {
    /// A file held to the token file's rules (`password_file`), read at start.
    File(PathBuf),
    /// Given by the program that builds the config (the Home Assistant
    /// add-on, from the Supervisor's MQTT service): never from `gateway.toml`.
    Given(SecretString),
}

impl MqttConfig {
    /// A publisher for `url` with the default topics and no credentials, for
    /// callers that build the config in code (the add-on, tests).
    pub fn new(url: &str) -> Result<MqttConfig, String> {
        let (host, port, tls) = parse_url(url)?;
        Ok(MqttConfig {
            host,
            port,
            tls,
            extra_roots: Vec::new(),
            username: None,
            password: None,
            discovery_prefix: defaults::MQTT_DISCOVERY_PREFIX.to_owned(),
            base_topic: defaults::MQTT_BASE_TOPIC.to_owned(),
        })
    }

    /// Whether a reload from `self` to `other` changes anything the running
    /// publisher uses (all of it is read at start). A given password is the
    /// add-on's, which never reloads: two count as the same.
    pub(crate) fn differs_from(&self, other: &MqttConfig) -> bool {
        let MqttConfig {
            host,
            port,
            tls,
            extra_roots,
            username,
            password,
            discovery_prefix,
            base_topic,
        } = self;
        let password_file = |p: &Option<MqttPassword>| match p {
            Some(MqttPassword::File(path)) => Some(Some(path.clone())),
            Some(MqttPassword::Given(_)) => Some(None),
            None => None,
        };
        *host != other.host
            || *port != other.port
            || *tls != other.tls
            || *extra_roots != other.extra_roots
            || *username != other.username
            || password_file(password) != password_file(&other.password)
            || *discovery_prefix != other.discovery_prefix
            || *base_topic != other.base_topic
    }
}

/// The systemd credential the unit's drop-in may pass the broker password
/// as (`LoadCredential=mqtt_password:...`), as it passes the token.
pub(crate) const PASSWORD_CREDENTIAL: &str = "mqtt_password";

/// Checks `[mqtt]`; `None` when the table is absent or has no `url` (the
/// publisher is off). Relative paths are taken from `base_dir`. Under
/// systemd (`credentials_dir`, `$CREDENTIALS_DIRECTORY`) a credential named
/// [`PASSWORD_CREDENTIAL`] is read instead of `password_file`: the service's
/// throwaway user cannot read root's file, and `check` run from a shell
/// still reads the file itself.
pub(super) fn validate(
    raw: Option<RawMqtt>,
    path: &Path,
    base_dir: &Path,
    credentials_dir: Option<&Path>,
) -> Result<Option<MqttConfig>, ConfigError> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    let RawMqtt {
        url,
        username,
        password_file,
        ca_file,
        discovery_prefix,
        base_topic,
        protocol,
    } = raw;
    let Some(url) = url else {
        return Err(ConfigError::invalid(
            path,
            "mqtt.url",
            "is missing: the [mqtt] table needs the broker, such as \
             url = \"mqtt://broker.lan:1883\" (remove the table to turn the publisher off)"
                .to_owned(),
        ));
    };
    let mut config =
        MqttConfig::new(&url).map_err(|m| ConfigError::invalid(path, "mqtt.url", m))?;
    if let Some(protocol) = protocol
        && protocol != "3.1.1"
    {
        return Err(ConfigError::invalid(
            path,
            "mqtt.protocol",
            "only \"3.1.1\" is spoken (every broker that speaks MQTT 5 speaks 3.1.1 too)"
                .to_owned(),
        ));
    }
    if let Some(name) = &username
        && (name.is_empty() || name.len() > 256 || name.chars().any(char::is_control))
    {
        return Err(ConfigError::invalid(
            path,
            "mqtt.username",
            "must be 1 to 256 characters, no control characters".to_owned(),
        ));
    }
    if password_file.is_some() && username.is_none() {
        return Err(ConfigError::invalid(
            path,
            "mqtt.password_file",
            "needs mqtt.username: MQTT sends no password without a user name".to_owned(),
        ));
    }
    if let Some(file) = ca_file {
        if !config.tls {
            return Err(ConfigError::invalid(
                path,
                "mqtt.ca_file",
                "only applies to an mqtts:// url".to_owned(),
            ));
        }
        config.extra_roots = load_roots(&base_dir.join(file))
            .map_err(|m| ConfigError::invalid(path, "mqtt.ca_file", m))?;
    }
    config.username = username;
    let credential = credentials_dir
        .map(|dir| dir.join(PASSWORD_CREDENTIAL))
        .filter(|copy| copy.exists());
    config.password = password_file
        .map(|file| MqttPassword::File(credential.unwrap_or_else(|| base_dir.join(file))));
    if let Some(prefix) = discovery_prefix {
        config.discovery_prefix = check_topic(&prefix)
            .map_err(|m| ConfigError::invalid(path, "mqtt.discovery_prefix", m))?;
    }
    if let Some(base) = base_topic {
        config.base_topic =
            check_topic(&base).map_err(|m| ConfigError::invalid(path, "mqtt.base_topic", m))?;
    }
    Ok(Some(config))
}

/// The broker's host, port and whether it is TLS, from `mqtt://` or
/// `mqtts://`. No user or password in it: the password has its own file,
/// and a URL is shown in logs.
fn parse_url(text: &str) -> Result<(String, u16, bool), String> {
    let uri: Uri = text
        .parse()
        .map_err(|_| "is not a URL such as \"mqtt://broker.lan:1883\"".to_owned())?;
    let tls = match uri.scheme_str() {
        Some("mqtt") => false,
        Some("mqtts") => true,
        _ => return Err("must start with mqtt:// or mqtts://".to_owned()),
    };
    let authority = uri
        .authority()
        .ok_or_else(|| "names no broker host".to_owned())?;
    if authority.as_str().contains('@') {
        return Err(
            "must not hold a user name or password: use mqtt.username and mqtt.password_file"
                .to_owned(),
        );
    }
    if uri.path_and_query().is_some_and(|p| p.as_str() != "/") {
        return Err("must be only a scheme, a host and a port".to_owned());
    }
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    if host.is_empty() {
        return Err("names no broker host".to_owned());
    }
    let port = authority
        .port_u16()
        .unwrap_or(if tls { MQTTS_PORT } else { MQTT_PORT });
    Ok((host.to_owned(), port, tls))
}

/// A topic prefix the gateway writes under: segments of letters, digits,
/// `_` and `-` joined by `/`. No wildcard, no empty segment, nothing a
/// broker or Home Assistant's discovery pattern would read otherwise.
fn check_topic(topic: &str) -> Result<String, String> {
    let ok = !topic.is_empty()
        && topic.len() <= 128
        && topic.split('/').all(|segment| {
            !segment.is_empty()
                && segment
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        });
    if ok {
        Ok(topic.to_owned())
    } else {
        Err(
            "must be segments of letters, digits, `_` and `-` joined by `/` \
             (no `+`, `#`, spaces or empty segment), at most 128 characters"
                .to_owned(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_url_gives_host_port_and_tls() {
        assert_eq!(
            parse_url("mqtt://broker.lan").unwrap(),
            ("broker.lan".to_owned(), 1883, false)
        );
        assert_eq!(
            parse_url("mqtts://core-mosquitto:8884").unwrap(),
            ("core-mosquitto".to_owned(), 8884, true)
        );
        assert_eq!(
            parse_url("mqtt://[::1]:1884/").unwrap(),
            ("::1".to_owned(), 1884, false)
        );
        assert_eq!(parse_url("mqtts://10.0.0.2").unwrap().1, 8883);
        for bad in [
            "http://broker.lan",
            "broker.lan:1883",
            "mqtt://user:secret@broker.lan",
            "mqtt://broker.lan/topic",
            "mqtt://",
        ] {
            let message = parse_url(bad).unwrap_err();
            assert!(!message.contains("secret"), "{message}");
        }
    }

    #[test]
    fn topics_are_plain_segments() {
        for good in ["homeassistant", "joulo", "home/joulo-2", "a_b"] {
            assert_eq!(check_topic(good).unwrap(), good);
        }
        for bad in [
            "", "joulo/", "/joulo", "jou+lo", "#", "a//b", "jo ulo", "jö",
        ] {
            assert!(check_topic(bad).is_err(), "{bad}");
        }
    }
}
