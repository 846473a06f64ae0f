//! Tests of the config as a whole: parsing, validation and the shipped files
//! against the defaults.

use super::*;

/// Validates `text` as a file `t.toml` whose relative paths resolve in
/// `/etc/jg`, with no systemd credentials directory.
pub(super) fn parse(text: &str) -> Result<Config, ConfigError> {
    let raw: RawConfig =
        toml::from_str(text).map_err(|e| parse_error(e, text, Path::new("t.toml")))?;
    validate(raw, Path::new("t.toml"), Path::new("/etc/jg"), None)
}

#[test]
fn empty_file_gives_defaults() {
    let c = parse("").unwrap();
    assert_eq!(c.server.listen, defaults::LISTEN.parse().unwrap());
    assert_eq!(c.upstream.base_url, defaults::BASE_URL);
    assert_eq!(c.upstream.token_file, Path::new(DOCKER_SECRET_PATH));
    assert_eq!(c.upstream.timeout, defaults::TIMEOUT);
    assert!(c.enabled_write_routes.is_empty());
}

#[test]
fn unknown_key_is_named_with_its_table_and_line() {
    let err = parse("[server]\nlisten = \"127.0.0.1:1\"\nlistn = \"x\"\n").unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("t.toml"), "{msg}");
    assert!(msg.contains("server.listn"), "{msg}");
    assert!(msg.contains("line 3"), "{msg}");
    assert!(msg.contains("unknown field"), "{msg}");
}

#[test]
fn parser_messages_never_quote_a_value_only_the_expected_names() {
    for (text, value) in [
        ("[log]\nformat = \"hunter2-value\"", "hunter2-value"),
        ("[upstream]\nhttp2 = \"hunter2-value\"", "hunter2-value"),
        ("[server]\nlisten = 123456789", "123456789"),
        ("[server]\nhunter2-key = 1", "unknown field `hunter2-key`"),
    ] {
        let msg = parse(text).unwrap_err().to_string();
        assert!(!msg.contains(value), "{text}: {msg}");
    }
    let msg = parse("[log]\nformat = \"x\"").unwrap_err().to_string();
    assert!(
        msg.contains("unknown variant `...`") && msg.contains("`text`"),
        "{msg}"
    );
    assert_eq!(
        without_quoted_values("invalid type: string \"s3cret\", expected `a` or \"b\""),
        "invalid type: string \"...\", expected `a` or \"...\""
    );
}

#[test]
fn a_device_key_is_recognised_by_its_hash_whatever_its_shape() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("g.toml");
    let hash = crate::access::key_sha256_hex("own-key-of-any-shape");
    // Not a valid config (the scope is unknown): still read.
    std::fs::write(
        &path,
        format!(
            "[[clients]]\nname = \"a\"\nkey_sha256 = \"{}\"\nscopes = [\"x\"]\n",
            hash.to_uppercase()
        ),
    )
    .unwrap();
    let keys = DeviceKeyHashes::read(&path);
    assert_eq!(
        keys.redact("`own-key-of-any-shape` is not a network, own-key", "[R]"),
        "`[R]` is not a network, own-key"
    );
    assert!(matches!(
        keys.redact("nothing", "[R]"),
        std::borrow::Cow::Borrowed(_)
    ));
}

#[test]
fn bad_values_name_their_key() {
    for (text, key) in [
        ("[server]\nlisten = \"nope\"", "server.listen"),
        (
            "[upstream]\nbase_url = \"http://api.joulo.nl\"",
            "upstream.base_url",
        ),
        (
            "[upstream]\nbase_url = \"https://a/b?x=1\"",
            "upstream.base_url",
        ),
        ("[upstream]\ntimeout = \"0s\"", "upstream.timeout"),
        ("[upstream]\ntimeout = \"ten\"", "upstream.timeout"),
        ("[upstream]\nca_file = \"missing.pem\"", "upstream.ca_file"),
        ("[log]\nformat = \"xml\"", "log.format"),
        (
            "[server]\nmax_connections_per_ip = 0",
            "server.max_connections_per_ip",
        ),
        ("[routes.teleport]\nenabled = true", "routes.teleport"),
        (
            "[routes.chargers]\nenabled = false",
            "routes.chargers.enabled",
        ),
    ] {
        let msg = parse(text).unwrap_err().to_string();
        assert!(msg.contains(key), "{text:?} gave {msg}");
    }
}

#[cfg(unix)]
#[test]
fn the_config_and_ca_file_must_be_regular_files() {
    let msg = parse("[upstream]\nca_file = \"/dev/zero\"")
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("upstream.ca_file") && msg.contains("is a character device"),
        "{msg}"
    );
    let dir = tempfile::tempdir().unwrap();
    let msg = Config::load(dir.path()).unwrap_err().to_string();
    assert!(
        msg.contains("cannot read config file") && msg.contains("is a directory"),
        "{msg}"
    );
    let big = dir.path().join("big.toml");
    std::fs::write(&big, "#".repeat(FILE_LIMIT as usize + 1)).unwrap();
    let msg = Config::load(&big).unwrap_err().to_string();
    assert!(msg.contains("larger than 1048576 bytes"), "{msg}");
}

#[test]
fn write_routes_are_opt_in_and_need_a_device_key_with_their_scope() {
    let hash = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
    let writer = format!(
        "[[clients]]\nname = \"admin\"\nkey_sha256 = \"{hash}\"\nscopes = [\"chargers:write\"]\n"
    );
    let c = parse(&format!(
        "[routes.add_charger]\nenabled = true\n[routes.reboot_charger]\nenabled = false\n{writer}"
    ))
    .unwrap();
    assert_eq!(c.enabled_write_routes, vec![RouteId::AddCharger]);
    for text in [
        "[routes.reboot_charger]\nenabled = true".to_owned(),
        format!(
            "[routes.reboot_charger]\nenabled = true\n\
             [[clients]]\nname = \"ha\"\nkey_sha256 = \"{hash}\"\nscopes = [\"chargers:read\"]"
        ),
    ] {
        let msg = parse(&text).unwrap_err().to_string();
        assert!(
            msg.contains("routes.reboot_charger.enabled")
                && msg.contains("[[clients]]")
                && msg.contains("chargers:write"),
            "{msg}"
        );
    }
}

#[test]
fn shipped_config_matches_defaults() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("gateway.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let shipped: RawConfig = toml::from_str(&text).unwrap();
    let d = validate(RawConfig::default(), &path, Path::new("/x"), None).unwrap();
    let s = validate(shipped, &path, Path::new("/x"), None).unwrap();
    // Every field named, none left to `..`: a new key must be compared
    // here (or say why not), or this does not compile.
    let Config {
        server,
        upstream,
        log,
        access,
        limits,
        cache,
        enabled_write_routes,
        extra_params,
        mqtt,
    } = &s;
    // Off unless configured: the shipped file has the table commented out.
    assert!(mqtt.is_none() && d.mqtt.is_none());
    let ServerConfig {
        listen,
        header_timeout,
        shutdown_grace,
        tls,
        tls_handshake_timeout,
        max_header_size,
        max_request_body,
        max_connections,
        max_connections_per_ip,
        idle_timeout,
        h2_max_streams,
        max_answer_memory,
        max_answer_memory_per_connection,
        worker_threads,
    } = server;
    assert_eq!(*listen, d.server.listen);
    assert_eq!(*header_timeout, d.server.header_timeout);
    assert_eq!(*shutdown_grace, d.server.shutdown_grace);
    assert_eq!(*tls_handshake_timeout, d.server.tls_handshake_timeout);
    assert!(tls.is_none());
    assert_eq!(*max_header_size, d.server.max_header_size);
    assert_eq!(*max_request_body, d.server.max_request_body);
    assert_eq!(*max_connections, d.server.max_connections);
    assert_eq!(*max_connections_per_ip, d.server.max_connections_per_ip);
    assert_eq!(*idle_timeout, d.server.idle_timeout);
    assert_eq!(*h2_max_streams, d.server.h2_max_streams);
    assert_eq!(*max_answer_memory, d.server.max_answer_memory);
    assert_eq!(
        *max_answer_memory_per_connection,
        d.server.max_answer_memory_per_connection
    );
    assert_eq!(*worker_threads, d.server.worker_threads);
    let AccessConfig {
        allow,
        allowed_hosts,
        clients,
        keyless,
        local,
        devices_file,
        route_scopes,
        ops_allow,
    } = access;
    assert_eq!(*keyless, d.access.keyless);
    assert!(!keyless, "the shipped config is closed");
    assert_eq!(*local, d.access.local);
    assert_eq!(*devices_file, d.access.devices_file);
    assert_eq!(*allow, d.access.allow);
    assert_eq!(*allowed_hosts, d.access.allowed_hosts);
    assert!(clients.is_empty());
    assert_eq!(*ops_allow, d.access.ops_allow);
    assert_eq!(*route_scopes, d.access.route_scopes);
    let UpstreamConfig {
        base_url,
        // Where the token lies is the installer's choice, not a default
        // to keep in step.
        token_file: _,
        token_origin: _,
        roots,
        http2,
        extra_roots,
        connect_timeout,
        timeout,
        token_poll_interval,
    } = upstream;
    assert_eq!(*base_url, d.upstream.base_url);
    assert_eq!(*connect_timeout, d.upstream.connect_timeout);
    assert_eq!(*roots, d.upstream.roots);
    assert_eq!(*http2, d.upstream.http2);
    assert!(extra_roots.is_empty());
    assert_eq!(*timeout, d.upstream.timeout);
    assert_eq!(*token_poll_interval, d.upstream.token_poll_interval);
    let LogConfig { level, format } = log;
    assert_eq!(*level, d.log.level);
    assert_eq!(*format, d.log.format);
    assert_eq!(*enabled_write_routes, d.enabled_write_routes);
    let LimitsConfig {
        upstream_per_minute,
        upstream_burst,
        queue_timeout,
        client_per_minute,
        client_burst,
        device_upstream_share,
    } = limits;
    assert_eq!(*upstream_per_minute, d.limits.upstream_per_minute);
    assert_eq!(*upstream_burst, d.limits.upstream_burst);
    assert_eq!(*queue_timeout, d.limits.queue_timeout);
    assert_eq!(*client_per_minute, d.limits.client_per_minute);
    assert_eq!(*client_burst, d.limits.client_burst);
    assert_eq!(*device_upstream_share, d.limits.device_upstream_share);
    assert!(extra_params.is_empty());
    let CacheConfig {
        ttl,
        // Per route: checked below.
        route_ttl: _,
        stale_if_error,
        max_entries,
        max_body,
    } = cache;
    assert_eq!(*ttl, d.cache.ttl);
    assert_eq!(*stale_if_error, d.cache.stale_if_error);
    assert_eq!(*max_entries, d.cache.max_entries);
    assert_eq!(*max_body, d.cache.max_body);
    // The shipped file sets per-route TTLs following Joulo's polling advice:
    // live status in seconds, slow-moving totals in minutes.
    assert_eq!(s.cache.ttl_for(RouteId::Chargers), Duration::from_secs(15));
    assert_eq!(s.cache.ttl_for(RouteId::Energy), Duration::from_secs(600));
    assert_eq!(
        s.cache.ttl_for(RouteId::ErePosition),
        Duration::from_secs(600)
    );
    assert_eq!(s.cache.ttl_for(RouteId::AddCharger), Duration::ZERO);
}

/// The shipped file's commented `[mqtt]` example, uncommented, is a valid
/// publisher (less `ca_file`, whose PEM is read at once); its keys and
/// defaults are the code's.
#[test]
fn the_shipped_mqtt_example_validates_and_its_defaults_match() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("gateway.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let start = text.find("# [mqtt]").expect("the [mqtt] example");
    let example: String = text[start..]
        .lines()
        .take_while(|l| l.starts_with('#') && !l.starts_with("# Device keys"))
        .filter_map(|l| l.strip_prefix("# "))
        .filter(|l| !l.starts_with('#') && !l.starts_with("ca_file"))
        .map(|l| format!("{l}\n"))
        .collect();
    let mqtt = parse(&example).unwrap().mqtt.expect("[mqtt] set");
    assert_eq!(
        (mqtt.host.as_str(), mqtt.port, mqtt.tls),
        ("broker.lan", 1883, false)
    );
    assert_eq!(mqtt.username.as_deref(), Some("joulo"));
    assert!(
        matches!(&mqtt.password, Some(MqttPassword::File(p)) if p == Path::new("/etc/jg/mqtt_password"))
    );
    assert_eq!(mqtt.discovery_prefix, defaults::MQTT_DISCOVERY_PREFIX);
    assert_eq!(mqtt.base_topic, defaults::MQTT_BASE_TOPIC);
}

#[test]
fn a_bad_mqtt_table_names_its_key() {
    for (text, key) in [
        ("[mqtt]\nusername = \"joulo\"", "mqtt.url"),
        ("[mqtt]\nurl = \"http://broker.lan\"", "mqtt.url"),
        (
            "[mqtt]\nurl = \"mqtt://joulo:hunter2-value@broker.lan\"",
            "mqtt.url",
        ),
        (
            "[mqtt]\nurl = \"mqtt://b\"\npassword_file = \"p\"",
            "mqtt.password_file",
        ),
        (
            "[mqtt]\nurl = \"mqtt://b\"\nca_file = \"ca.pem\"",
            "mqtt.ca_file",
        ),
        (
            "[mqtt]\nurl = \"mqtt://b\"\nprotocol = \"5\"",
            "mqtt.protocol",
        ),
        (
            "[mqtt]\nurl = \"mqtt://b\"\nbase_topic = \"joulo/#\"",
            "mqtt.base_topic",
        ),
        (
            "[mqtt]\nurl = \"mqtt://b\"\ndiscovery_prefix = \"\"",
            "mqtt.discovery_prefix",
        ),
        (
            "[mqtt]\nurl = \"mqtt://b\"\npassword = \"hunter2-value\"",
            "mqtt.password",
        ),
    ] {
        let msg = parse(text).unwrap_err().to_string();
        assert!(msg.contains(key), "{text}: {msg}");
        assert!(!msg.contains("hunter2"), "{text}: {msg}");
    }
}

#[test]
fn keys_found_after_parsing_are_named_with_their_line() {
    let hash = "0".repeat(64);
    for (text, line) in [
        (
            format!(
                "[[clients]]\nname = \"a\"\nkey_sha256 = \"{hash}\"\nscopes = []\n\n\
                 [[clients]]\nname = \"Bad Name\"\nkey_sha256 = \"{hash}\"\nscopes = []\n"
            ),
            7,
        ),
        (
            "[server]\nlisten = \"0.0.0.0:80\"\n\n[routes.me]\nttl = \"1h\"\nscope = \"me:read\"\n"
                .to_owned(),
            6,
        ),
        (
            "# comment\n[access]\nkeyless = true\nallow = [\"0.0.0.0/0\"]\n".to_owned(),
            4,
        ),
        ("[log]\n\nlevel = \"warning\"\n".to_owned(), 3),
    ] {
        let err = Config::from_toml(&text, Path::new("/nonexistent/t.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains(&format!("(line {line})")), "{text}: {err}");
        assert!(!err.contains("line 0"), "{err}");
    }
}

/// Under the systemd unit the broker password is the credential the drop-in
/// copies (the throwaway user cannot read root's file); from a shell, and
/// without that credential, `password_file` itself.
#[test]
fn the_mqtt_password_is_the_systemd_credential_when_there_is_one() {
    let text =
        "[mqtt]\nurl = \"mqtt://b\"\nusername = \"u\"\npassword_file = \"/etc/jg/mqtt_password\"\n";
    let credentials = tempfile::tempdir().unwrap();
    let with = |dir: Option<&Path>| {
        let raw: RawConfig = toml::from_str(text).unwrap();
        let config = validate(raw, Path::new("t.toml"), Path::new("/etc/jg"), dir).unwrap();
        match config.mqtt.unwrap().password {
            Some(MqttPassword::File(path)) => path,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(with(None), Path::new("/etc/jg/mqtt_password"));
    assert_eq!(
        with(Some(credentials.path())),
        Path::new("/etc/jg/mqtt_password")
    );
    std::fs::write(credentials.path().join("mqtt_password"), "pw\n").unwrap();
    assert_eq!(
        with(Some(credentials.path())),
        credentials.path().join("mqtt_password")
    );
}
