//! The devices file (`[access] devices_file`): the device keys that
//! `joulo-gateway device add/remove/rotate` manage, kept as SHA-256 only and
//! written atomically (a new file renamed over the old), so the running
//! gateway, which re-reads it when it changes, never sees half of one.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::access::{DEVICE_NAME_RULE, DeviceKey, Scope, generate_key, valid_device_name};
use crate::files::{self, FileError};

/// The most a devices file may hold: a few hundred devices.
const FILE_LIMIT: u64 = 1024 * 1024;

/// What a new device gets when `device add` is given no `--scopes`: what
/// Home Assistant reads, nothing that changes the account.
pub(crate) const DEFAULT_SCOPES: [Scope; 3] =
    [Scope::ChargersRead, Scope::SessionsRead, Scope::EnergyRead];

/// The devices file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDevicesFile {
    /// One `[[device]]` table per device.
    #[serde(default)]
    device: Vec<RawDevice>,
}

/// One `[[device]]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDevice {
    /// The device's name.
    name: String,
    /// SHA-256 of its key, in hex.
    key_sha256: String,
    /// What it may do.
    scopes: Vec<String>,
    /// When it was added (or its key last rotated), RFC 3339.
    #[serde(default)]
    added: String,
}

/// One device in the devices file.
#[derive(Debug, Clone)]
pub struct Device {
    /// Its name and scopes, and its key's hash.
    pub key: DeviceKey,
    /// When it was added or its key last rotated (RFC 3339, UTC).
    pub added: String,
}

/// What went wrong with the devices file or a `device` command.
#[derive(Debug, thiserror::Error)]
pub enum DevicesError {
    /// The file exists but could not be read, or others could change it.
    #[error("cannot read devices file {path}: {source}")]
    Read {
        /// The devices file.
        path: PathBuf,
        /// Why.
        #[source]
        source: FileError,
    },
    /// The file is not a devices file.
    #[error("devices file {path}: {message}")]
    Invalid {
        /// The devices file.
        path: PathBuf,
        /// What is wrong and where (no value is quoted: a key could have been
        /// pasted in).
        message: String,
    },
    /// A name `device` was given that no device may have.
    #[error("device name `{0}` {rule}", rule = DEVICE_NAME_RULE)]
    Name(String),
    /// `device add` of a name already taken.
    #[error(
        "a device named `{0}` already exists (in the devices file or a [[clients]] entry); `device rotate {0}` gives it a new key"
    )]
    Exists(String),
    /// `device remove/rotate` of a name the devices file does not have.
    #[error("no device named `{0}` in the devices file{1}")]
    NotFound(String, &'static str),
    /// The file could not be written.
    #[error("cannot write devices file {path}: {source}")]
    Write {
        /// The devices file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// The devices in the file at `path`; none when it does not exist yet. A
/// file others could change is refused (whoever can add a key can spend the
/// token), as is one that does not validate: then nothing of it is used.
pub fn load(path: &Path) -> Result<Vec<Device>, DevicesError> {
    let read_err = |source| DevicesError::Read {
        path: path.to_owned(),
        source,
    };
    let bytes = match files::read_regular(path, FILE_LIMIT) {
        Ok(bytes) => bytes,
        Err(FileError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Vec::new());
        }
        Err(e) => return Err(read_err(e)),
    };
    files::check_not_writable_by_others(path).map_err(read_err)?;
    let invalid = |message: String| DevicesError::Invalid {
        path: path.to_owned(),
        message,
    };
    let text = std::str::from_utf8(&bytes).map_err(|_| invalid("it is not UTF-8 text".into()))?;
    let raw: RawDevicesFile = toml::from_str(text).map_err(|e| {
        let line = e.span().map_or(0, |s| {
            text[..s.start.min(text.len())].matches('\n').count() + 1
        });
        // The parser's message can quote what is on the line: left out.
        invalid(format!(
            "line {line}: not a devices file (`[[device]]` tables of name, key_sha256, scopes \
             and added); fix or remove it, or run `joulo-gateway device add`"
        ))
    })?;
    let mut devices: Vec<Device> = Vec::new();
    for (i, raw) in raw.device.into_iter().enumerate() {
        let at = |field: &str, message: &str| invalid(format!("device[{i}].{field}: {message}"));
        let name = raw.name.trim();
        if !valid_device_name(name) {
            return Err(at("name", DEVICE_NAME_RULE));
        }
        if devices.iter().any(|d| &*d.key.name == name) {
            return Err(at("name", &format!("`{name}` is used twice")));
        }
        let key_sha256 = parse_sha256(&raw.key_sha256).ok_or_else(|| {
            at(
                "key_sha256",
                "must be 64 hex digits (the gateway writes it; never a key itself)",
            )
        })?;
        let mut scopes = Vec::new();
        for scope in &raw.scopes {
            let scope = Scope::parse(scope.trim()).ok_or_else(|| {
                at(
                    "scopes",
                    &format!("`{}` is not a scope; known: {}", scope.trim(), scope_list()),
                )
            })?;
            if !scopes.contains(&scope) {
                scopes.push(scope);
            }
        }
        devices.push(Device {
            key: DeviceKey {
                name: name.into(),
                key_sha256,
                scopes,
            },
            added: raw.added,
        });
    }
    Ok(devices)
}

/// 64 hex digits as 32 bytes.
pub(crate) fn parse_sha256(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim();
    if hex.len() != 64 || !hex.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (j, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * j..2 * j + 2], 16).ok()?;
    }
    Some(out)
}

/// Every scope's name, for messages.
pub(crate) fn scope_list() -> String {
    Scope::ALL.map(Scope::as_str).join(", ")
}

/// Parses `--scopes` values (`chargers:read,energy:read`); the default set
/// when none is given.
pub(crate) fn parse_scopes(names: &[String]) -> Result<Vec<Scope>, String> {
    let mut scopes = Vec::new();
    for name in names.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
        let scope = Scope::parse(name)
            .ok_or_else(|| format!("`{name}` is not a scope; known: {}", scope_list()))?;
        if !scopes.contains(&scope) {
            scopes.push(scope);
        }
    }
    if scopes.is_empty() {
        scopes = DEFAULT_SCOPES.to_vec();
    }
    Ok(scopes)
}

/// Adds a device called `name` with `scopes` to the devices file at `path`
/// (created if missing); `taken` are the names already used elsewhere (the
/// config's `[[clients]]`). Returns its key, which is stored nowhere.
pub(crate) fn add(
    path: &Path,
    name: &str,
    scopes: &[Scope],
    taken: &[&str],
) -> Result<String, DevicesError> {
    if !valid_device_name(name) {
        return Err(DevicesError::Name(name.to_owned()));
    }
    edit(path, |devices| {
        if taken.contains(&name) || devices.iter().any(|d| &*d.key.name == name) {
            return Err(DevicesError::Exists(name.to_owned()));
        }
        let key = generate_key();
        devices.push(Device {
            key: DeviceKey {
                name: name.into(),
                key_sha256: sha256(&key),
                scopes: scopes.to_vec(),
            },
            added: now_rfc3339(),
        });
        Ok(key)
    })
}

/// Removes the device called `name`; its key is refused from the running
/// gateway's next re-read of the file on.
pub(crate) fn remove(path: &Path, name: &str) -> Result<(), DevicesError> {
    edit(path, |devices| {
        let before = devices.len();
        devices.retain(|d| &*d.key.name != name);
        if devices.len() == before {
            return Err(DevicesError::NotFound(name.to_owned(), ""));
        }
        Ok(())
    })
}

/// Gives the device called `name` a new key (its old one stops working) and
/// returns it.
pub(crate) fn rotate(path: &Path, name: &str) -> Result<String, DevicesError> {
    edit(path, |devices| {
        let device = devices
            .iter_mut()
            .find(|d| &*d.key.name == name)
            .ok_or_else(|| {
                DevicesError::NotFound(
                    name.to_owned(),
                    " (a [[clients]] entry in gateway.toml is changed there)",
                )
            })?;
        let key = generate_key();
        device.key.key_sha256 = sha256(&key);
        device.added = now_rfc3339();
        Ok(key)
    })
}

/// A device the Home Assistant add-on's `devices` option asks for.
#[derive(Debug, Clone)]
pub struct WantedDevice {
    /// Its name.
    pub name: String,
    /// Its scopes; empty means [`DEFAULT_SCOPES`].
    pub scopes: Vec<Scope>,
}

/// What [`ensure_devices`] did for one wanted device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ensured {
    /// It was already in the devices file: its key is unchanged.
    Kept(String),
    /// It was added; its key is in this file (0600), and nowhere else.
    Added {
        /// The device's name.
        name: String,
        /// The file holding its key.
        key_file: PathBuf,
    },
}

/// For the add-on: adds each of `wanted` that the devices file at
/// `devices_file` lacks (those present keep their keys and scopes), writing
/// each new key, and nothing else, to `<out_dir>/<name>.key` (mode 0600) for
/// the user to copy. No key is ever logged or returned. The devices file is
/// written once, after every key file is in place, so a failure part way
/// leaves no device whose key nobody has.
pub fn ensure_devices(
    wanted: &[WantedDevice],
    devices_file: &Path,
    out_dir: &Path,
) -> Result<Vec<Ensured>, DevicesError> {
    for device in wanted {
        if !valid_device_name(&device.name) {
            return Err(DevicesError::Name(device.name.clone()));
        }
    }
    edit(devices_file, |devices| {
        let mut done = Vec::new();
        for device in wanted {
            if devices.iter().any(|d| *d.key.name == *device.name)
                || done.iter().any(|e| matches!(e, Ensured::Added { name, .. } | Ensured::Kept(name) if *name == device.name))
            {
                done.push(Ensured::Kept(device.name.clone()));
                continue;
            }
            let key = generate_key();
            let key_file = out_dir.join(format!("{}.key", device.name));
            std::fs::create_dir_all(out_dir)
                .and_then(|()| write_key_file(&key_file, &key))
                .map_err(|source| DevicesError::Write {
                    path: key_file.clone(),
                    source,
                })?;
            let scopes = if device.scopes.is_empty() {
                DEFAULT_SCOPES.to_vec()
            } else {
                device.scopes.clone()
            };
            devices.push(Device {
                key: DeviceKey {
                    name: device.name.as_str().into(),
                    key_sha256: sha256(&key),
                    scopes,
                },
                added: now_rfc3339(),
            });
            done.push(Ensured::Added {
                name: device.name.clone(),
                key_file,
            });
        }
        Ok(done)
    })
}

/// Writes a key file readable by its owner only, replacing any older one.
fn write_key_file(path: &Path, key: &str) -> std::io::Result<()> {
    let _ = std::fs::remove_file(path);
    files::write_private(path, &format!("{key}\n"))
}

/// Reads the devices file, lets `change` edit the list, and writes it back
/// atomically if `change` succeeds. Concurrent `device` commands take turns
/// (an exclusive lock on the file's folder), so neither loses the other's
/// change.
fn edit<T>(
    path: &Path,
    change: impl FnOnce(&mut Vec<Device>) -> Result<T, DevicesError>,
) -> Result<T, DevicesError> {
    let write_err = |source| DevicesError::Write {
        path: path.to_owned(),
        source,
    };
    let folder = match path.parent() {
        Some(f) if !f.as_os_str().is_empty() => f.to_owned(),
        _ => PathBuf::from("."),
    };
    let _lock = lock_folder(&folder).map_err(write_err)?;
    let mut devices = load(path)?;
    let out = change(&mut devices)?;
    write_atomically(path, &folder, &render(&devices)).map_err(write_err)?;
    Ok(out)
}

/// An exclusive lock on `folder`, held until the returned file is dropped.
fn lock_folder(folder: &Path) -> std::io::Result<std::fs::File> {
    let dir = std::fs::File::open(folder)?;
    #[cfg(unix)]
    rustix::fs::flock(&dir, rustix::fs::FlockOperation::LockExclusive)?;
    Ok(dir)
}

/// Writes `text` to a new file beside `path` and renames it over `path`. The
/// mode is set to 0644 whatever the umask: the file holds hashes only, and
/// the service (a different user under systemd's `DynamicUser=`) must read it.
fn write_atomically(path: &Path, folder: &Path, text: &str) -> std::io::Result<()> {
    let file_name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("the devices file path names no file"))?;
    let temp = folder.join(format!(
        ".{}.{}.tmp",
        file_name.to_string_lossy(),
        std::process::id()
    ));
    let _ = std::fs::remove_file(&temp);
    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            file.set_permissions(std::fs::Permissions::from_mode(0o644))?;
        }
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&temp, path)?;
        // The rename itself reaches the disk with the folder.
        if let Ok(dir) = std::fs::File::open(folder) {
            let _ = dir.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result
}

/// The devices file's text.
fn render(devices: &[Device]) -> String {
    let mut text = String::from(
        "# joulo-gateway devices: managed by `joulo-gateway device add/list/remove/rotate`.\n\
         # Only each key's SHA-256 is kept. The running gateway re-reads this file when it\n\
         # changes; a file that does not validate changes nothing (the log says why).\n",
    );
    for device in devices {
        let scopes = device
            .key
            .scopes
            .iter()
            .map(|s| format!("\"{}\"", s.as_str()))
            .collect::<Vec<_>>()
            .join(", ");
        let hash: String = device
            .key
            .key_sha256
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        text.push_str(&format!(
            "\n[[device]]\nname = \"{}\"\nkey_sha256 = \"{hash}\"\nscopes = [{scopes}]\nadded = \"{}\"\n",
            device.key.name, device.added
        ));
    }
    text
}

fn sha256(key: &str) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(key.as_bytes()).into()
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::key_sha256_hex;

    #[test]
    fn add_rotate_remove_keep_only_hashes_and_survive_a_reload() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("devices.toml");
        assert!(
            load(&path).unwrap().is_empty(),
            "a missing file is no devices"
        );
        let key = add(&path, "homeassistant", &DEFAULT_SCOPES, &[]).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains(&key), "only the hash is stored");
        assert!(text.contains(&key_sha256_hex(&key)));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o644);
        }
        assert!(matches!(
            add(&path, "homeassistant", &DEFAULT_SCOPES, &[]),
            Err(DevicesError::Exists(_))
        ));
        assert!(matches!(
            add(&path, "tablet", &DEFAULT_SCOPES, &["tablet"]),
            Err(DevicesError::Exists(_))
        ));
        let other = add(&path, "tablet", &[Scope::GatewayRead], &[]).unwrap();
        let devices = load(&path).unwrap();
        assert_eq!(devices.len(), 2);
        assert_eq!(devices[1].key.scopes, [Scope::GatewayRead]);
        assert!(devices[0].added.ends_with('Z'), "{}", devices[0].added);

        let rotated = rotate(&path, "homeassistant").unwrap();
        assert_ne!(rotated, key);
        let devices = load(&path).unwrap();
        assert_eq!(devices[0].key.key_sha256, sha256(&rotated));
        assert_eq!(
            devices[1].key.key_sha256,
            sha256(&other),
            "others untouched"
        );

        remove(&path, "homeassistant").unwrap();
        assert!(matches!(
            remove(&path, "homeassistant"),
            Err(DevicesError::NotFound(..))
        ));
        assert_eq!(load(&path).unwrap().len(), 1);
        // No temporary file is left beside it.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn names_shaped_like_secrets_or_outside_the_rule_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("devices.toml");
        let token_like = format!("joulo_{}", "a1".repeat(16));
        let key_like = generate_key();
        for name in [
            "",
            "Home",
            "a b",
            "a.b",
            &"x".repeat(33),
            "jgw_abc",
            "joulo_abc",
            &token_like,
            &key_like,
        ] {
            assert!(
                matches!(
                    add(&path, name, &DEFAULT_SCOPES, &[]),
                    Err(DevicesError::Name(_))
                ),
                "{name}"
            );
        }
        add(&path, &"x".repeat(32), &DEFAULT_SCOPES, &[]).unwrap();
        add(&path, "ha-2_b", &DEFAULT_SCOPES, &[]).unwrap();
    }

    #[test]
    fn a_broken_file_is_refused_without_quoting_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("devices.toml");
        let pasted = generate_key();
        for text in [
            format!("[[device]]\nname = \"a\"\nkey_sha256 = \"{pasted}\"\nscopes = []\n"),
            format!(
                "[[device]]\nname = \"{pasted}\"\nkey_sha256 = \"{}\"\nscopes = []\n",
                "0".repeat(64)
            ),
            format!("{pasted}\n"),
            "[[device]]\nname = \"a\"\nkey_sha256 = \"x\"\n".to_owned(),
        ] {
            std::fs::write(&path, &text).unwrap();
            let err = load(&path).unwrap_err().to_string();
            assert!(!err.contains(&pasted), "{err}");
            assert!(err.contains("devices.toml"), "{err}");
            // A command refuses to write over it.
            assert!(add(&path, "b", &DEFAULT_SCOPES, &[]).is_err());
            assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
        }
    }

    #[test]
    fn ensure_devices_adds_the_missing_ones_and_writes_only_new_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("devices.toml");
        let out = dir.path().join("share");
        let existing = add(&path, "homeassistant", &DEFAULT_SCOPES, &[]).unwrap();
        let wanted = [
            WantedDevice {
                name: "homeassistant".into(),
                scopes: vec![],
            },
            WantedDevice {
                name: "grafana".into(),
                scopes: vec![Scope::GatewayRead],
            },
        ];
        let done = ensure_devices(&wanted, &path, &out).unwrap();
        let key_file = out.join("grafana.key");
        assert_eq!(
            done,
            [
                Ensured::Kept("homeassistant".into()),
                Ensured::Added {
                    name: "grafana".into(),
                    key_file: key_file.clone()
                }
            ]
        );
        let key = std::fs::read_to_string(&key_file).unwrap();
        let key = key.trim();
        assert!(key.starts_with("jgw_"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        assert!(!out.join("homeassistant.key").exists());
        let devices = load(&path).unwrap();
        assert_eq!(devices[0].key.key_sha256, sha256(&existing), "kept its key");
        assert_eq!(devices[1].key.key_sha256, sha256(key));
        assert_eq!(devices[1].key.scopes, [Scope::GatewayRead]);
        // A second start changes nothing.
        let again = ensure_devices(&wanted, &path, &out).unwrap();
        assert!(again.iter().all(|e| matches!(e, Ensured::Kept(_))));
        assert_eq!(std::fs::read_to_string(&key_file).unwrap().trim(), key);
        let bad = [WantedDevice {
            name: "Bad Name".into(),
            scopes: vec![],
        }];
        assert!(matches!(
            ensure_devices(&bad, &path, &out),
            Err(DevicesError::Name(_))
        ));
    }
}
