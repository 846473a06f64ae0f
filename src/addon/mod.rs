//! `joulo-gateway addon`: the Home Assistant add-on without Home Assistant's
//! base image. The Supervisor's `/data/options.json` becomes a private token
//! file and a `gateway.toml` under `/data`, then the gateway runs as usual;
//! `supervisor` asks the Supervisor for the services it shares (the MQTT broker).

pub(crate) mod supervisor;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use secrecy::{ExposeSecret, SecretString};
use serde_json::{Map, Value};

use crate::config::{MqttConfig, MqttPassword};
use crate::devices::{self, Ensured, WantedDevice};
use crate::files;

/// The user the add-on's gateway runs as once `/data` is prepared: the same
/// unprivileged uid as the Docker image and the old add-on's `joulo` user.
pub const ADDON_UID: u32 = 65532;

/// Bound on `options.json`: a token and a few settings.
const OPTIONS_LIMIT: u64 = 64 * 1024;

/// The levels the add-on's `log_level` option offers (config.yaml's schema).
const LOG_LEVELS: [&str; 5] = ["trace", "debug", "info", "warn", "error"];

/// Why the add-on's options could not be turned into a running config. Never
/// carries an option's value: `joulo_token` is one of them.
#[derive(Debug, thiserror::Error)]
pub enum AddonError {
    /// `options.json` could not be read.
    #[error("cannot read the add-on options {path}: {source}")]
    Read {
        /// The options file.
        path: PathBuf,
        /// Why.
        source: files::FileError,
    },
    /// `options.json` is not what the add-on's schema makes the Supervisor write.
    #[error("the add-on options {path} are not usable: {problem}")]
    Options {
        /// The options file.
        path: PathBuf,
        /// What is wrong, naming the option, never its value.
        problem: String,
    },
    /// The token option was left empty.
    #[error(
        "joulo_token is empty: paste the Joulo API token (Joulo dashboard -> Settings -> API) \
         in the add-on's Configuration tab, save, then start the add-on"
    )]
    EmptyToken,
    /// Writing the token file or the config under the data folder failed.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Switching to the unprivileged user failed.
    #[error("cannot switch to uid {ADDON_UID}: {0}")]
    Privileges(std::io::Error),
}

/// The add-on's options, checked. The token stays secret from the moment it
/// leaves the parsed JSON.
struct Options {
    /// `joulo_token`: the Joulo API token.
    token: SecretString,
    /// `log_level`: one of [`LOG_LEVELS`].
    log_level: String,
    /// `devices`: the devices that get a key of their own; the option is the
    /// whole list, so a device taken out of it loses its key.
    devices: Vec<WantedDevice>,
}

/// Where `joulo-gateway addon` writes the config for `data` (the add-on's
/// `/data`); `main` redacts failures with what it names.
pub fn config_path(data: &Path) -> PathBuf {
    data.join("gateway.toml")
}

/// Reads `data/options.json`, writes the token to `data/joulo_token` (0600,
/// owned by `owner` when given), the `devices` option to `data/devices.toml`
/// with each new device's key in `keys/<name>.key` (0600: `/share` is where
/// the user can reach it), and the config to `data/gateway.toml`, and
/// returns the config's path. `listen` is where the gateway will listen.
pub fn prepare(
    data: &Path,
    keys: &Path,
    listen: SocketAddr,
    owner: Option<u32>,
) -> Result<PathBuf, AddonError> {
    let options_path = data.join("options.json");
    let options = read_options(&options_path)?;

    let token_path = data.join("joulo_token");
    // Recreated rather than rewritten: an existing file would keep its mode.
    let write_error = |path: &Path| {
        let path = path.to_owned();
        move |source| AddonError::Write { path, source }
    };
    match std::fs::remove_file(&token_path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(write_error(&token_path)(e))?,
        _ => {}
    }
    files::write_private(&token_path, &format!("{}\n", options.token.expose_secret()))
        .map_err(write_error(&token_path))?;
    if let Some(uid) = owner {
        chown(&token_path, uid).map_err(write_error(&token_path))?;
    }

    let mut text = format!(
        "# Written by `joulo-gateway addon` from the add-on's options at each start:\n\
         # edit the options in Home Assistant, not this file.\n\
         [server]\nlisten = \"{listen}\"\n\n\
         [upstream]\ntoken_file = \"{token}\"\n\n\
         [log]\nlevel = \"{level}\"\n\n\
         [routes.chargers]\nttl = \"15s\"\n[routes.sessions]\nttl = \"60s\"\n\
         [routes.energy]\nttl = \"10m\"\n[routes.ere_position]\nttl = \"10m\"\n\
         [routes.me]\nttl = \"1h\"\n",
        token = token_path.display(),
        level = options.log_level,
    );
    apply_devices(&options, data, keys, &mut text)?;

    let config = config_path(data);
    // The config holds no secret, and the unprivileged user must read it.
    std::fs::write(&config, text).map_err(write_error(&config))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644))
            .map_err(write_error(&config))?;
    }
    // Checked here so a bad option is reported as the add-on's, not as a
    // config file the user never wrote.
    crate::config::Config::load(&config).map_err(|e| AddonError::Options {
        path: options_path,
        problem: e.to_string(),
    })?;
    Ok(config)
}

/// The publisher's config for the broker the Supervisor shares with the
/// add-on (`services: mqtt:want` in its config.yaml), so a user with the
/// Mosquitto add-on pastes the token and nothing else. `None` when there is
/// none, with one log line saying why and what to do: the gateway then runs
/// without MQTT, as the `rest:` sensors still work.
pub async fn mqtt_from_supervisor(supervisor: &supervisor::Supervisor) -> Option<MqttConfig> {
    let service = match supervisor.mqtt_service().await {
        Ok(service) => service,
        Err(supervisor::SupervisorError::Status(status)) => {
            tracing::info!(
                %status,
                "no MQTT broker is shared with this add-on: install and start the Mosquitto broker \
                 add-on (or set up the MQTT integration), then restart this add-on for the \
                 chargers to appear as devices"
            );
            return None;
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot ask the Supervisor for the MQTT broker; MQTT discovery is off until a restart");
            return None;
        }
    };
    mqtt_config(service)
        .inspect(|config| {
            tracing::info!(host = %config.host, port = config.port, tls = config.tls, "MQTT broker from the Supervisor");
        })
        .or_else(|| {
            tracing::warn!("the Supervisor's MQTT broker has no usable host; MQTT discovery is off");
            None
        })
}

/// The Supervisor's answer as the publisher's config: its host (an IPv6
/// address without brackets), port, TLS and credentials; topics as default.
fn mqtt_config(service: supervisor::MqttService) -> Option<MqttConfig> {
    let host = service.host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || service.port == 0 {
        return None;
    }
    let scheme = if service.ssl { "mqtts" } else { "mqtt" };
    let authority = if host.contains(':') {
        format!("[{host}]:{}", service.port)
    } else {
        format!("{host}:{}", service.port)
    };
    let mut config = MqttConfig::new(&format!("{scheme}://{authority}")).ok()?;
    config.username = service.username.filter(|u| !u.is_empty());
    config.password = service.password.map(MqttPassword::Given);
    Some(config)
}

/// The add-on's `devices` option made true: the devices file under `data`
/// holds exactly the listed devices (one taken out of the option loses its
/// key, and its key file goes), each new one gets a key in `keys/<name>.key`
/// (0600) for the user to copy into Home Assistant, and the config names the
/// devices file. Said on standard error (logging starts later), never a key.
/// With no devices, only the add-on itself is served without a key (closed
/// by default); the MQTT publisher needs none.
fn apply_devices(
    options: &Options,
    data: &Path,
    keys: &Path,
    config: &mut String,
) -> Result<(), AddonError> {
    let file = data.join("devices.toml");
    let failed = |e: devices::DevicesError| AddonError::Options {
        path: data.join("options.json"),
        problem: match e {
            // The rule, not the value: a token pasted as a name stays unshown.
            devices::DevicesError::Name(_) => {
                format!("devices: a name is {}", crate::access::DEVICE_NAME_RULE)
            }
            other => other.to_string(),
        },
    };
    for device in devices::load(&file).map_err(failed)? {
        let name = device.key.name.to_string();
        if options.devices.iter().all(|wanted| wanted.name != name) {
            devices::remove(&file, &name).map_err(failed)?;
            let _ = std::fs::remove_file(keys.join(format!("{name}.key")));
            eprintln!(
                "joulo-gateway addon: device `{name}` is no longer in the devices option: its key no longer works"
            );
        }
    }
    for done in devices::ensure_devices(&options.devices, &file, keys).map_err(failed)? {
        if let Ensured::Added { name, key_file } = done {
            eprintln!(
                "joulo-gateway addon: device `{name}` added: its key is in {} (copy it into \
                 Home Assistant's secrets.yaml or the device, then delete the file)",
                key_file.display()
            );
        }
    }
    config.push_str(&format!(
        "\n[access]\ndevices_file = \"{}\"\n",
        file.display()
    ));
    Ok(())
}

/// Parses `options.json`: an object with exactly the add-on's options.
fn read_options(path: &Path) -> Result<Options, AddonError> {
    let bytes = files::read_regular(path, OPTIONS_LIMIT).map_err(|source| AddonError::Read {
        path: path.to_owned(),
        source,
    })?;
    let invalid = |problem: String| AddonError::Options {
        path: path.to_owned(),
        problem,
    };
    // serde_json's messages can quote a value (the token); only its position is kept.
    let mut map: Map<String, Value> = match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => map,
        Ok(_) => return Err(invalid("not a JSON object".to_owned())),
        Err(e) => {
            return Err(invalid(format!(
                "not JSON (line {}, column {})",
                e.line(),
                e.column()
            )));
        }
    };
    let token = match map.remove("joulo_token") {
        Some(Value::String(token)) => SecretString::from(token),
        None | Some(Value::Null) => return Err(AddonError::EmptyToken),
        Some(_) => return Err(invalid("joulo_token must be text".to_owned())),
    };
    let token_text = token.expose_secret().trim();
    if token_text.is_empty() {
        return Err(AddonError::EmptyToken);
    }
    // A token holds no whitespace; the file format would also take a second line.
    if token_text.chars().any(char::is_whitespace) {
        return Err(invalid(
            "joulo_token must be one word, as Joulo shows it".to_owned(),
        ));
    }
    let token = SecretString::from(token_text.to_owned());
    let log_level = match map.remove("log_level") {
        None | Some(Value::Null) => "info".to_owned(),
        Some(Value::String(level)) if LOG_LEVELS.contains(&level.as_str()) => level,
        Some(_) => {
            return Err(invalid(format!(
                "log_level must be one of {}",
                LOG_LEVELS.join(", ")
            )));
        }
    };
    let devices = match map.remove("devices") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(list)) => list
            .iter()
            .map(wanted_device)
            .collect::<Result<_, _>>()
            .map_err(invalid)?,
        Some(_) => return Err(invalid("devices must be a list".to_owned())),
    };
    if let Some(unknown) = map.keys().next() {
        return Err(invalid(format!(
            "`{unknown}` is not an option of this add-on version"
        )));
    }
    Ok(Options {
        token,
        log_level,
        devices,
    })
}

/// One entry of the `devices` option: `name`, and `scopes` as a
/// comma-separated list (none: the read scopes). Problems name the field,
/// never its value.
fn wanted_device(entry: &Value) -> Result<WantedDevice, String> {
    let name = match entry.get("name") {
        Some(Value::String(name)) => name.clone(),
        _ => return Err("devices: each entry needs a name".to_owned()),
    };
    let scopes: Vec<String> = match entry.get("scopes") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(list)) => list.split(',').map(str::to_owned).collect(),
        Some(_) => {
            return Err(
                "devices: scopes must be text, such as chargers:read,energy:read".to_owned(),
            );
        }
    };
    let scopes = devices::parse_scopes(&scopes).map_err(|e| format!("devices: {e}"))?;
    Ok(WantedDevice { name, scopes })
}

/// Gives `path` to `uid` (its group too), so the gateway can read it once it
/// runs as that user.
#[cfg(unix)]
fn chown(path: &Path, uid: u32) -> std::io::Result<()> {
    use rustix::fs::{Gid, Uid};
    let owner = Uid::from_raw(uid);
    let group = Gid::from_raw(uid);
    rustix::fs::chown(path, Some(owner), Some(group)).map_err(std::io::Error::from)
}

#[cfg(not(unix))]
fn chown(_path: &Path, _uid: u32) -> std::io::Result<()> {
    Ok(())
}

/// Who should own the token file: [`ADDON_UID`] when running as root (as the
/// Supervisor starts add-ons), since [`drop_root`] will switch to it; else
/// nobody new.
pub fn owner() -> Option<u32> {
    #[cfg(unix)]
    if rustix::process::geteuid().is_root() {
        return Some(ADDON_UID);
    }
    None
}

/// Drops root for [`ADDON_UID`] (group the same, no supplementary groups)
/// when running as root, as the Supervisor starts the add-on, so the gateway
/// never serves a request as root. Must run while the process has one thread:
/// Linux changes the ids of the calling thread only, so before any runtime or
/// other thread is started. Elsewhere, and when not root, it does nothing.
#[cfg(target_os = "linux")]
pub fn drop_root() -> Result<bool, AddonError> {
    use rustix::process::{Gid, Uid};
    if !rustix::process::geteuid().is_root() {
        return Ok(false);
    }
    let privileges = |e: rustix::io::Errno| AddonError::Privileges(e.into());
    let gid = Gid::from_raw(ADDON_UID);
    let uid = Uid::from_raw(ADDON_UID);
    rustix::thread::set_thread_groups(&[]).map_err(privileges)?;
    rustix::thread::set_thread_res_gid(gid, gid, gid).map_err(privileges)?;
    rustix::thread::set_thread_res_uid(uid, uid, uid).map_err(privileges)?;
    // Checked back: a silent failure would leave the gateway root.
    if rustix::process::getuid() != uid || rustix::process::geteuid() != uid {
        return Err(AddonError::Privileges(std::io::Error::other(
            "the user id did not change",
        )));
    }
    // A change of user resets "dumpable" to the system's suid_dumpable, which
    // may allow it: forbidden again before the token is read.
    rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)
        .map_err(privileges)?;
    Ok(true)
}

/// Elsewhere it does nothing.
#[cfg(not(target_os = "linux"))]
pub fn drop_root() -> Result<bool, AddonError> {
    Ok(false)
}

#[cfg(test)]
mod tests;
