//! `prepare` on real files: what the Supervisor writes, what the gateway gets.

use super::*;

use std::os::unix::fs::PermissionsExt as _;

fn listen() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn data_with(options: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("options.json"), options).unwrap();
    dir
}

#[test]
fn options_become_a_private_token_file_and_a_config() {
    let token = crate::demo::generate_token();
    let options = serde_json::json!({"joulo_token": token.expose_secret(), "log_level": "debug"});
    let data = data_with(&options.to_string());
    let config_path = prepare(data.path(), &data.path().join("keys"), listen(), None).unwrap();
    assert_eq!(config_path, data.path().join("gateway.toml"));

    let token_path = data.path().join("joulo_token");
    assert_eq!(
        std::fs::read_to_string(&token_path).unwrap(),
        format!("{}\n", token.expose_secret())
    );
    let mode = std::fs::metadata(&token_path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);

    let text = std::fs::read_to_string(&config_path).unwrap();
    assert!(!text.contains(token.expose_secret()), "{text}");
    let config = crate::config::Config::load(&config_path).unwrap();
    assert_eq!(config.upstream.token_file, token_path);
    assert_eq!(config.log.level, "debug");
    assert_eq!(config.server.listen, listen());
}

#[test]
fn an_old_looser_token_file_is_replaced_private() {
    let token = crate::demo::generate_token();
    let data = data_with(&serde_json::json!({"joulo_token": token.expose_secret()}).to_string());
    let token_path = data.path().join("joulo_token");
    std::fs::write(&token_path, "old").unwrap();
    std::fs::set_permissions(&token_path, std::fs::Permissions::from_mode(0o644)).unwrap();
    prepare(data.path(), &data.path().join("keys"), listen(), None).unwrap();
    let mode = std::fs::metadata(&token_path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    // Without log_level: the schema's default.
    let config = crate::config::Config::load(&data.path().join("gateway.toml")).unwrap();
    assert_eq!(config.log.level, "info");
}

#[test]
fn an_empty_token_says_where_to_set_it_and_writes_nothing() {
    for options in [
        r#"{"joulo_token": "", "log_level": "info"}"#,
        r#"{"joulo_token": "  ", "log_level": "info"}"#,
        r#"{"log_level": "info"}"#,
        r#"{"joulo_token": null}"#,
    ] {
        let data = data_with(options);
        let e = prepare(data.path(), &data.path().join("keys"), listen(), None).unwrap_err();
        assert!(matches!(e, AddonError::EmptyToken), "{options}: {e}");
        assert!(e.to_string().contains("Configuration tab"), "{e}");
        assert!(!data.path().join("joulo_token").exists());
        assert!(!data.path().join("gateway.toml").exists());
    }
}

#[test]
fn bad_options_are_named_without_their_values() {
    let token = crate::demo::generate_token();
    let secret = token.expose_secret();
    let cases = [
        (
            serde_json::json!({"joulo_token": secret, "log_level": secret}).to_string(),
            "log_level must be one of",
        ),
        (
            serde_json::json!({"joulo_token": secret, "colour": "blue"}).to_string(),
            "`colour` is not an option",
        ),
        (
            serde_json::json!({"joulo_token": [secret]}).to_string(),
            "joulo_token must be text",
        ),
        (
            serde_json::json!({"joulo_token": format!("{secret} {secret}")}).to_string(),
            "one word",
        ),
        // Cut off inside the token: serde_json's own message would quote it.
        (format!(r#"{{"joulo_token": "{secret}"#), "not JSON (line 1"),
        (serde_json::json!([secret]).to_string(), "not a JSON object"),
    ];
    for (options, expected) in cases {
        let data = data_with(&options);
        let e = prepare(data.path(), &data.path().join("keys"), listen(), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains(expected), "{e}");
        assert!(!e.contains(secret), "{e}");
        assert!(!data.path().join("joulo_token").exists());
    }
}

#[test]
fn missing_options_name_the_file() {
    let data = tempfile::tempdir().unwrap();
    let e = prepare(data.path(), &data.path().join("keys"), listen(), None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("options.json"), "{e}");
}

#[test]
fn the_supervisors_broker_becomes_the_publishers_config() {
    use super::supervisor::MqttService;
    use secrecy::ExposeSecret as _;
    let service = |host: &str, ssl: bool| MqttService {
        host: host.to_owned(),
        port: 1883,
        ssl,
        username: Some("addons".to_owned()),
        password: Some(SecretString::from("broker-password".to_owned())),
        protocol: Some("3.1.1".to_owned()),
    };
    let config = super::mqtt_config(service("core-mosquitto", false)).unwrap();
    assert_eq!(
        (config.host.as_str(), config.port, config.tls),
        ("core-mosquitto", 1883, false)
    );
    assert_eq!(config.username.as_deref(), Some("addons"));
    match config.password {
        Some(crate::config::MqttPassword::Given(p)) => {
            assert_eq!(p.expose_secret(), "broker-password")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(config.discovery_prefix, "homeassistant");
    let v6 = super::mqtt_config(service("fd00::5", true)).unwrap();
    assert_eq!((v6.host.as_str(), v6.tls), ("fd00::5", true));
    assert!(super::mqtt_config(service("", false)).is_none());
}

#[test]
fn the_devices_option_is_the_list_of_keyed_devices() {
    let token = crate::demo::generate_token();
    let data = tempfile::tempdir().unwrap();
    let keys = data.path().join("share");
    let write = |devices: serde_json::Value| {
        let options = serde_json::json!({"joulo_token": token.expose_secret(), "devices": devices});
        std::fs::write(data.path().join("options.json"), options.to_string()).unwrap();
        prepare(data.path(), &keys, listen(), None)
    };
    let config_path = write(serde_json::json!([
        {"name": "homeassistant"},
        {"name": "evcc", "scopes": "chargers:read, sessions:read"}
    ]))
    .unwrap();
    let config = crate::config::Config::load(&config_path).unwrap();
    assert_eq!(config.access.devices_file, data.path().join("devices.toml"));
    let key_of = |name: &str| std::fs::read_to_string(keys.join(format!("{name}.key"))).unwrap();
    let (ha_key, evcc_key) = (key_of("homeassistant"), key_of("evcc"));
    for name in ["homeassistant", "evcc"] {
        let mode = std::fs::metadata(keys.join(format!("{name}.key")))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{name}");
    }
    let stored = std::fs::read_to_string(data.path().join("devices.toml")).unwrap();
    assert!(!stored.contains(ha_key.trim()) && !stored.contains(evcc_key.trim()));
    let devices = crate::devices::load(&data.path().join("devices.toml")).unwrap();
    let evcc = devices.iter().find(|d| &*d.key.name == "evcc").unwrap();
    assert_eq!(
        evcc.key.scopes,
        [
            crate::access::Scope::ChargersRead,
            crate::access::Scope::SessionsRead
        ]
    );
    let hex: String = evcc
        .key
        .key_sha256
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(hex, crate::access::key_sha256_hex(evcc_key.trim()));

    // The next start keeps both keys; taking evcc out of the option revokes it.
    write(serde_json::json!([{"name": "homeassistant"}, {"name": "evcc"}])).unwrap();
    assert_eq!(key_of("homeassistant"), ha_key);
    write(serde_json::json!([{"name": "homeassistant"}])).unwrap();
    let devices = crate::devices::load(&data.path().join("devices.toml")).unwrap();
    assert_eq!(devices.len(), 1);
    assert_eq!(&*devices[0].key.name, "homeassistant");
    assert!(!keys.join("evcc.key").exists());

    // A token pasted as a name is refused without being shown.
    let pasted = crate::demo::generate_token();
    let e = write(serde_json::json!([{"name": pasted.expose_secret()}])).unwrap_err();
    assert!(!e.to_string().contains(pasted.expose_secret()), "{e}");
    assert!(e.to_string().contains("devices"), "{e}");
    let e = write(serde_json::json!([{"name": "x", "scopes": "chargers:write-all"}])).unwrap_err();
    assert!(e.to_string().contains("devices"), "{e}");
}
