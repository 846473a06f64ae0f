//! `joulo-gateway device add/list/remove/rotate`: device keys kept in the
//! devices file, which the running gateway re-reads when it changes; and
//! what `device add` prints once: the key and the Home Assistant lines that
//! use it.

use std::collections::BTreeMap;
use std::path::Path;

use crate::access::Scope;
use crate::config::{Config, ConfigError};
use crate::devices::{self, DevicesError};
use crate::healthcheck::Target;

/// What `joulo-gateway device` was asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceAction {
    /// Add a device with these scopes (none given: the read scopes).
    Add {
        /// Its name.
        name: String,
        /// Its scopes, as given.
        scopes: Vec<String>,
    },
    /// List the devices.
    List,
    /// Remove a device.
    Remove {
        /// Its name.
        name: String,
    },
    /// Give a device a new key.
    Rotate {
        /// Its name.
        name: String,
    },
}

/// Why a `device` command failed.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The config (or the devices file it names) did not validate.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The devices file or the name.
    #[error(transparent)]
    Devices(#[from] DevicesError),
    /// `--scopes`.
    #[error("--scopes: {0}")]
    Scopes(String),
}

/// Runs `action` against the devices file the config at `config_path`
/// names, and returns what to print.
pub fn device_command(config_path: &Path, action: DeviceAction) -> Result<String, DeviceError> {
    let config = Config::load(config_path)?;
    let file = &config.access.devices_file;
    // `[[clients]]` in gateway.toml: their names are taken, and they are
    // not changed from here.
    let stored: Vec<String> = devices::load(file)?
        .into_iter()
        .map(|d| d.key.name.to_string())
        .collect();
    let inline: Vec<&str> = config
        .access
        .clients
        .iter()
        .map(|c| &*c.name)
        .filter(|name| !stored.iter().any(|s| s == name))
        .collect();
    match action {
        DeviceAction::Add { name, scopes } => {
            let scopes = devices::parse_scopes(&scopes).map_err(DeviceError::Scopes)?;
            let key = devices::add(file, &name, &scopes, &inline)?;
            Ok(added_text(&name, &scopes, &key, file, "Added"))
        }
        DeviceAction::Rotate { name } => {
            let key = devices::rotate(file, &name)?;
            let scopes = devices::load(file)?
                .into_iter()
                .find(|d| *d.key.name == *name)
                .map(|d| d.key.scopes)
                .unwrap_or_default();
            Ok(added_text(&name, &scopes, &key, file, "New key for"))
        }
        DeviceAction::Remove { name } => {
            devices::remove(file, &name)?;
            Ok(format!(
                "Removed device `{name}` from {}: its key is refused (401) as soon as the running \
                 gateway re-reads the file, within a second or two.\n",
                file.display()
            ))
        }
        DeviceAction::List => Ok(list_text(config_path, &config, &inline)?),
    }
}

/// The key, shown once, and the Home Assistant lines that use it.
fn added_text(name: &str, scopes: &[Scope], key: &str, file: &Path, what: &str) -> String {
    let secret = if name == "homeassistant" {
        "joulo_gateway_key".to_owned()
    } else {
        format!("joulo_gateway_key_{}", name.replace('-', "_"))
    };
    format!(
        "{what} device `{name}` in {file} (scopes: {scopes}).\n\
         A running gateway picks it up within a second or two; no restart.\n\n\
         Its key, shown this once (the gateway keeps only its SHA-256):\n\n  {key}\n\n\
         Home Assistant: add this line to secrets.yaml\n\n  {secret}: {key}\n\n\
         and these lines to each rest: entry that calls the gateway:\n\n    \
         authentication: basic\n    username: {name}\n    password: !secret {secret}\n\n\
         Any other client sends it as `Authorization: Bearer KEY` or `X-Gateway-Key: KEY`.\n",
        file = file.display(),
        scopes = scopes
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(", "),
    )
}

/// One line per device, with the requests the running gateway has seen
/// from each when it lets this host read its `/status`.
fn list_text(config_path: &Path, config: &Config, inline: &[&str]) -> Result<String, DeviceError> {
    let stored = devices::load(&config.access.devices_file)?;
    let (counts, note) = request_counts(config_path);
    let mut rows = vec![[
        "NAME".to_owned(),
        "SCOPES".to_owned(),
        "ADDED".to_owned(),
        "REQUESTS".to_owned(),
    ]];
    let count = |name: &str| match &counts {
        Some(counts) => counts.get(name).copied().unwrap_or(0).to_string(),
        None => "-".to_owned(),
    };
    let scopes = |scopes: &[Scope]| {
        scopes
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(",")
    };
    for device in &stored {
        rows.push([
            device.key.name.to_string(),
            scopes(&device.key.scopes),
            device.added.clone(),
            count(&device.key.name),
        ]);
    }
    for client in config
        .access
        .clients
        .iter()
        .filter(|c| inline.contains(&&*c.name))
    {
        rows.push([
            client.name.to_string(),
            scopes(&client.scopes),
            "(gateway.toml)".to_owned(),
            count(&client.name),
        ]);
    }
    let mut text = String::new();
    if rows.len() == 1 {
        text.push_str(&format!(
            "No devices in {} yet: only this host is served (without a key). Add one with \
             `joulo-gateway device add NAME`.\n",
            config.access.devices_file.display()
        ));
        return Ok(text);
    }
    let widths: Vec<usize> = (0..4)
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    for row in &rows {
        let line = format!(
            "{:w0$}  {:w1$}  {:w2$}  {}",
            row[0],
            row[1],
            row[2],
            row[3],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2]
        );
        text.push_str(line.trim_end());
        text.push('\n');
    }
    if let Some(note) = note {
        text.push_str(&format!("(requests: {note})\n"));
    }
    Ok(text)
}

/// The running gateway's requests per device since it started, from its
/// `/status` asked on loopback; or why they are not shown.
fn request_counts(config_path: &Path) -> (Option<BTreeMap<String, u64>>, Option<String>) {
    let target = match Target::from_config(config_path) {
        Ok(target) => target,
        Err(e) => return (None, Some(format!("cannot ask the gateway: {e}"))),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => return (None, Some(format!("cannot ask the gateway: {e}"))),
    };
    let answer = runtime.block_on(target.get_path("/status"));
    match answer {
        Ok((status, body)) if status.is_success() => {
            let counts = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| {
                    v.get("devices")?.as_object().map(|m| {
                        m.iter()
                            .filter_map(|(k, v)| Some((k.clone(), v.as_u64()?)))
                            .collect()
                    })
                });
            (counts, None)
        }
        Ok((status, _)) => (
            None,
            Some(format!(
                "the gateway's /status answered {status}: add this host (127.0.0.1, ::1) to \
                 [ops] allow to see them here"
            )),
        ),
        Err(_) => (
            None,
            Some("the gateway is not running here, or not on its configured address".to_owned()),
        ),
    }
}
