//! Closed by default (issue 23): without device keys only this host is
//! served keyless; `joulo-gateway device add/remove` change the running
//! gateway within 2 s; a reload that removes the last key closes it again;
//! the shipped Docker and package configs refuse a LAN device without a key.
//!
//! Tests only talk to loopback. What counts as "this host" is
//! `[access] local_addresses` (default: loopback); these tests name
//! 127.0.0.1 alone, so another loopback address (127.0.0.23x) plays a device
//! on the LAN. No test-only switch exists in the binary.

use crate::binary::{BIN, signal, start_binary, write_config};
use crate::support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use joulo_gateway::config::Config;
use joulo_gateway::demo::write_private;
use joulo_gateway::{Gateway, LogLevel, Reloaded, reload_once};
use support::{MockUpstream, TestGateway, canary, get_from, json};

/// Only 127.0.0.1 is this host: any other loopback address is a LAN device.
const THIS_HOST_ONLY: &str = "[access]\nlocal_addresses = [\"127.0.0.1\"]\n";

/// What a LAN device without a key is told.
const WHAT_TO_DO: &str = "this gateway has no device keys yet: run `joulo-gateway device add NAME`";

/// `GET target` from `source` with `key` in `X-Gateway-Key`, on a fresh
/// connection: the status.
async fn get_with_key(source: &str, addr: std::net::SocketAddr, target: &str, key: &str) -> u16 {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = support::connect_from(source, addr).await;
    let request = format!(
        "GET {target} HTTP/1.1\r\nHost: gateway.lan\r\nX-Gateway-Key: {key}\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out)
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// Polls `status()` every 20 ms for up to 2 s until it is `wanted`; how long
/// that took.
async fn within_2_s<F, Fut>(wanted: u16, mut status: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = u16>,
{
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(2) {
        if status().await == wanted {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

/// Runs `joulo-gateway --config CONFIG device ARGS`: exit status and stdout.
fn device(config: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(BIN)
        .arg("--config")
        .arg(config)
        .arg("device")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The key `device add` or `rotate` printed.
fn printed_key(text: &str) -> String {
    text.split_whitespace()
        .find(|w| w.starts_with("jgw_") && w.len() == 36)
        .unwrap_or_else(|| panic!("no key in: {text}"))
        .to_owned()
}

#[tokio::test]
async fn without_device_keys_a_lan_device_gets_401_saying_what_to_do_and_this_host_is_served() {
    let upstream = MockUpstream::start();
    let gateway = TestGateway::start_on(&upstream, THIS_HOST_ONLY).await;
    for path in ["/chargers", "/metrics", "/status"] {
        let (status, body) = get_from("127.0.0.231", gateway.addr, path).await;
        assert_eq!(status, 401, "{path}: {body}");
        let v = json(&body);
        assert_eq!(v["error"], "Missing or invalid API token", "{path}");
        assert_eq!(v["detail"], WHAT_TO_DO, "{path}");
    }
    let mut stream = support::connect_from("127.0.0.231", gateway.addr).await;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    stream
        .write_all(b"GET /chargers HTTP/1.1\r\nHost: gateway.lan\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut head = String::new();
    stream.read_to_string(&mut head).await.unwrap();
    assert!(head.contains("www-authenticate: Bearer"), "{head}");
    assert!(upstream.received().is_empty(), "nothing reached Joulo");
    // This host itself is served without a key.
    let (status, body) = get_from("127.0.0.1", gateway.addr, "/chargers").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(upstream.received().len(), 1);
    // keyless = true is the explicit opt-out.
    let open = TestGateway::start_on(
        &upstream,
        "[access]\nlocal_addresses = [\"127.0.0.1\"]\nkeyless = true\n",
    )
    .await;
    assert_eq!(get_from("127.0.0.231", open.addr, "/chargers").await.0, 200);
    support::assert_no_leak(&[&gateway.token, &open.token], &[]);
}

/// A reload (SIGHUP or a changed file) that removes the last key leaves a
/// keyless LAN request with 401: closed, never open (it used to turn key
/// checking off, and the next keyless request reached Joulo).
#[tokio::test]
async fn a_reload_removing_the_last_key_leaves_a_keyless_lan_request_with_401() {
    let upstream = MockUpstream::start();
    let key = joulo_gateway::generate_key();
    let client = format!(
        "[[clients]]\nname = \"homeassistant\"\nkey_sha256 = \"{}\"\nscopes = [\"chargers:read\"]\n",
        joulo_gateway::key_sha256_hex(&key)
    );
    let gateway = TestGateway::start_on(&upstream, &format!("{THIS_HOST_ONLY}{client}")).await;
    assert_eq!(
        get_with_key("127.0.0.232", gateway.addr, "/chargers", &key).await,
        200
    );
    assert_eq!(
        get_from("127.0.0.232", gateway.addr, "/chargers").await.0,
        401
    );
    let path = gateway.dir.path().join("gateway.toml");
    let mut table: toml::Table = std::fs::read_to_string(&path).unwrap().parse().unwrap();
    assert!(table.remove("clients").is_some());
    std::fs::write(&path, toml::to_string(&table).unwrap()).unwrap();
    let outcome = reload_once(&path, &gateway.state, &LogLevel::fixed());
    assert!(matches!(outcome, Reloaded::Applied { .. }), "{outcome:?}");
    let calls = upstream.received().len();
    let (status, body) = get_from("127.0.0.232", gateway.addr, "/chargers").await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(json(&body)["detail"], WHAT_TO_DO);
    assert_eq!(
        get_with_key("127.0.0.232", gateway.addr, "/chargers", &key).await,
        401
    );
    assert_eq!(
        upstream.received().len(),
        calls,
        "no keyless call reached Joulo"
    );
}

/// A devices file that does not validate changes nothing, and the log says
/// why (naming the file, quoting nothing of it).
#[tokio::test]
async fn a_broken_devices_file_changes_nothing_and_the_log_says_why() {
    let upstream = MockUpstream::start();
    let gateway = TestGateway::start_on(&upstream, THIS_HOST_ONLY).await;
    let config = gateway.dir.path().join("gateway.toml");
    let devices = gateway.dir.path().join("devices.toml");
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&config)
        .args(["device", "add", "homeassistant"])
        .output()
        .unwrap();
    let key = printed_key(&String::from_utf8_lossy(&out.stdout));
    assert!(matches!(
        reload_once(&config, &gateway.state, &LogLevel::fixed()),
        Reloaded::Applied { .. }
    ));
    assert_eq!(
        get_with_key("127.0.0.236", gateway.addr, "/chargers", &key).await,
        200
    );
    let good = std::fs::read_to_string(&devices).unwrap();
    let pasted = joulo_gateway::generate_key();
    std::fs::write(
        &devices,
        format!("{good}\n[[device]]\nname = \"{pasted}\"\n"),
    )
    .unwrap();
    let Reloaded::Refused(why) = reload_once(&config, &gateway.state, &LogLevel::fixed()) else {
        panic!("a broken devices file was applied");
    };
    assert!(why.contains("devices.toml"), "{why}");
    assert!(!why.contains(&pasted), "{why}");
    let logged = support::logs();
    assert!(
        logged.contains("config reload refused") && logged.contains(&why),
        "{why}"
    );
    assert!(!logged.contains(&pasted));
    // Still in force: the key works, a keyless LAN request is refused.
    assert_eq!(
        get_with_key("127.0.0.236", gateway.addr, "/chargers", &key).await,
        200
    );
    assert_eq!(
        get_from("127.0.0.236", gateway.addr, "/chargers").await.0,
        401
    );
}

/// `device add` on a running gateway: the key works within 2 s, without a
/// restart; `device remove` gets 401 within 2 s while another device's
/// keep-alive connection keeps working; removing the last device closes the
/// gateway again; a broken devices file changes nothing.
#[tokio::test]
async fn device_add_and_remove_apply_to_the_running_gateway_within_2_s() {
    let upstream = MockUpstream::start();
    let dir = tempfile::tempdir().unwrap();
    let token = canary();
    write_private(&dir.path().join("joulo_token"), &token).unwrap();
    let limits = "[limits]\nclient_per_minute = 60000\nclient_burst = 1000\n";
    let config = write_config(
        dir.path(),
        &upstream,
        &format!("{THIS_HOST_ONLY}[ops]\nallow = [\"127.0.0.1\"]\n{limits}"),
    );
    // A fixed port, so `device list` finds the running gateway's /status.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace("127.0.0.1:0", &format!("127.0.0.1:{port}")),
    )
    .unwrap();
    let (mut child, addr, _) = start_binary(&config, &[]);
    assert_eq!(get_from("127.0.0.233", addr, "/chargers").await.0, 401);

    let (code, out, err) = device(&config, &["add", "homeassistant"]);
    assert_eq!(code, Some(0), "{out}{err}");
    let ha = printed_key(&out);
    assert!(
        out.contains(&format!("  joulo_gateway_key: {ha}\n")),
        "{out}"
    );
    assert!(out.contains("authentication: basic\n    username: homeassistant\n    password: !secret joulo_gateway_key"), "{out}");
    let stored = std::fs::read_to_string(dir.path().join("devices.toml")).unwrap();
    assert!(!stored.contains(&ha) && stored.contains(&joulo_gateway::key_sha256_hex(&ha)));
    let took = within_2_s(200, || get_with_key("127.0.0.233", addr, "/chargers", &ha))
        .await
        .expect("the new key works within 2 s, no restart");
    eprintln!("device add: the key worked after {took:?}");
    // A keyless LAN request stays refused, now with what a device must send
    // rather than the no-keys-yet hint (keys exist).
    let (status, body) = get_from("127.0.0.233", addr, "/chargers").await;
    assert_eq!(status, 401);
    assert_ne!(json(&body)["detail"], WHAT_TO_DO, "{body}");
    assert!(
        body.contains("the device's own key (not the Joulo token)"),
        "{body}"
    );

    let (code, out, err) = device(&config, &["add", "tablet", "--scopes", "chargers:read"]);
    assert_eq!(code, Some(0), "{out}{err}");
    let tablet = printed_key(&out);
    within_2_s(200, || {
        get_with_key("127.0.0.234", addr, "/chargers", &tablet)
    })
    .await
    .expect("the second key works");
    assert_eq!(
        get_with_key("127.0.0.234", addr, "/sessions", &tablet).await,
        403
    );

    // Home Assistant polls on one keep-alive connection all along.
    let poller = support::KeepAlivePoller::start(addr, &ha);

    // A broken devices file changes nothing (the log says why).
    let devices = dir.path().join("devices.toml");
    let good = std::fs::read_to_string(&devices).unwrap();
    // Replaced whole (as `device` and editors that rename do): written in
    // place, the watcher could read it empty halfway (no keys, so every key
    // refused) and then refuse the broken rest, which made this flaky.
    let broken = dir.path().join("devices.toml.new");
    std::fs::write(
        &broken,
        format!("{good}\n[[device]]\nname = \"Bad Name\"\n"),
    )
    .unwrap();
    std::fs::rename(&broken, &devices).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        get_with_key("127.0.0.234", addr, "/chargers", &tablet).await,
        200
    );
    std::fs::write(&broken, &good).unwrap();
    std::fs::rename(&broken, &devices).unwrap();

    let (code, out, err) = device(&config, &["list"]);
    assert_eq!(code, Some(0), "{out}{err}");
    let ha_line = out
        .lines()
        .find(|l| l.starts_with("homeassistant "))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        ha_line.contains("chargers:read,sessions:read,energy:read"),
        "{out}"
    );
    let count: u64 = ha_line
        .split_whitespace()
        .last()
        .unwrap()
        .parse()
        .unwrap_or_else(|_| panic!("{out}"));
    assert!(count >= 1, "{out}");
    assert!(!out.contains(&ha) && !out.contains(&tablet));

    let (code, out, err) = device(&config, &["remove", "tablet"]);
    assert_eq!(code, Some(0), "{out}{err}");
    let took = within_2_s(401, || {
        get_with_key("127.0.0.234", addr, "/chargers", &tablet)
    })
    .await
    .expect("the removed key gets 401 within 2 s");
    eprintln!("device remove: 401 after {took:?}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let statuses = poller.stop().await;
    assert!(statuses.len() > 10, "{}", statuses.len());
    assert!(
        statuses.iter().all(|s| *s == 200),
        "Home Assistant's connection failed: {statuses:?}"
    );

    // Rotate: the old key gets 401, the new one works.
    let (code, out, _) = device(&config, &["rotate", "homeassistant"]);
    assert_eq!(code, Some(0), "{out}");
    let rotated = printed_key(&out);
    within_2_s(401, || get_with_key("127.0.0.233", addr, "/chargers", &ha))
        .await
        .expect("the rotated-away key gets 401");
    assert_eq!(
        get_with_key("127.0.0.233", addr, "/chargers", &rotated).await,
        200
    );

    // The last device removed: closed again, not open.
    let (code, _, _) = device(&config, &["remove", "homeassistant"]);
    assert_eq!(code, Some(0));
    within_2_s(401, || {
        get_with_key("127.0.0.233", addr, "/chargers", &rotated)
    })
    .await
    .expect("the last key removed");
    let (status, body) = get_from("127.0.0.233", addr, "/chargers").await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(json(&body)["detail"], WHAT_TO_DO);

    signal(child.id(), "TERM");
    child.wait().unwrap();
}

#[test]
fn device_commands_refuse_bad_names_and_taken_names_and_print_no_secret() {
    let upstream = MockUpstream::start();
    let dir = tempfile::tempdir().unwrap();
    write_private(&dir.path().join("joulo_token"), &canary()).unwrap();
    let hash = "0".repeat(64);
    let config = write_config(
        dir.path(),
        &upstream,
        &format!("[[clients]]\nname = \"inline\"\nkey_sha256 = \"{hash}\"\nscopes = []\n"),
    );
    let token = canary();
    let key = joulo_gateway::generate_key();
    for name in [
        token.as_str(),
        key.as_str(),
        "Home Assistant",
        "jgw_x",
        &"a".repeat(33),
    ] {
        let (code, out, err) = device(&config, &["add", name]);
        assert_eq!(code, Some(64), "{name}: {out}{err}");
        assert!(err.contains("1-32 characters of a-z"), "{err}");
        if name.len() > 30 {
            assert!(!err.contains(name) || name.len() == 33, "{err}");
        }
    }
    let (code, _, err) = device(&config, &["add", "inline"]);
    assert_eq!(code, Some(64));
    assert!(err.contains("already exists"), "{err}");
    let (code, _, err) = device(&config, &["add", "x", "--scopes", "all"]);
    assert_eq!(code, Some(64));
    assert!(err.contains("not a scope"), "{err}");
    let (code, _, err) = device(&config, &["remove", "nobody"]);
    assert_eq!(code, Some(64));
    assert!(err.contains("no device named `nobody`"), "{err}");
    let (code, out, _) = device(&config, &["list"]);
    assert_eq!(code, Some(0));
    assert!(
        out.contains("inline") && out.contains("(gateway.toml)"),
        "{out}"
    );
    // gen-key refuses the same names.
    let out = Command::new(BIN)
        .args(["gen-key", "--name", &token, "--scopes", "chargers:read"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!printed.contains(&token), "{printed}");
}

/// The shipped Docker (compose mounts it) and Debian package configs, run
/// by the real server, refuse a LAN request without a key. Only what must
/// differ here is changed: the listener (loopback, any port), the token and
/// upstream (a local mock), the devices file (a temporary one), and "this
/// host" narrowed to 127.0.0.1 so that 127.0.0.235 plays a LAN device; the
/// shipped files leave `local_addresses` and `keyless` at their defaults
/// (loopback; false), asserted here.
#[tokio::test]
async fn the_shipped_docker_and_package_configs_refuse_a_lan_request_without_a_key() {
    let upstream = MockUpstream::start();
    for shipped in ["deploy/docker/gateway.toml", "deploy/systemd/gateway.toml"] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(shipped);
        let as_shipped = Config::load(&path).unwrap();
        assert!(!as_shipped.access.keyless, "{shipped}");
        assert_eq!(
            as_shipped.access.local,
            Config::from_toml("", Path::new("/x/t.toml"))
                .unwrap()
                .access
                .local,
            "{shipped}"
        );
        let mut table: toml::Table = std::fs::read_to_string(&path).unwrap().parse().unwrap();
        let dir = tempfile::tempdir().unwrap();
        write_private(&dir.path().join("joulo_token"), &canary()).unwrap();
        write_private(&dir.path().join("ca.pem"), &upstream.ca_pem).unwrap();
        let section = |table: &mut toml::Table, name: &str| -> toml::Table {
            table
                .remove(name)
                .and_then(|v| v.as_table().cloned())
                .unwrap_or_default()
        };
        let mut server = section(&mut table, "server");
        server.insert("listen".into(), "127.0.0.1:0".into());
        table.insert("server".into(), server.into());
        let mut up = section(&mut table, "upstream");
        up.remove("token_credential");
        up.insert("token_file".into(), "joulo_token".into());
        up.insert("base_url".into(), upstream.base_url().into());
        up.insert("ca_file".into(), "ca.pem".into());
        table.insert("upstream".into(), up.into());
        let mut access = section(&mut table, "access");
        access.insert("devices_file".into(), "devices.toml".into());
        access.insert(
            "local_addresses".into(),
            toml::Value::Array(vec!["127.0.0.1".into()]),
        );
        table.insert("access".into(), access.into());
        let config_path = dir.path().join("gateway.toml");
        std::fs::write(&config_path, toml::to_string(&table).unwrap()).unwrap();
        let config = Config::load(&config_path).unwrap();
        let gateway = Gateway::build(&config).unwrap();
        let listener = tokio::net::TcpListener::bind(config.server.listen)
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let served = tokio::spawn(gateway.serve(listener, async {
            let _ = stopped.await;
        }));
        for route in ["/chargers", "/me", "/status"] {
            let (status, body) = get_from("127.0.0.235", addr, route).await;
            assert_eq!(status, 401, "{shipped} {route}: {body}");
            assert_eq!(json(&body)["detail"], WHAT_TO_DO, "{shipped}");
        }
        let (status, _, _) = support::send(addr, Method::GET, "/healthz", &[], "").await;
        assert_eq!(
            status,
            StatusCode::OK,
            "{shipped}: the container's health check"
        );
        let _ = stop.send(());
        served.await.unwrap();
    }
    assert!(upstream.received().is_empty());
}

/// `demo`: every curl it prints answers 2xx when pasted in order (the
/// self-check no longer uses up the burst), each carries the demo device's
/// key, and `demo` refuses `--config`, which it would ignore.
#[tokio::test]
async fn every_curl_the_demo_prints_answers_2xx_in_order_with_the_device_key() {
    use std::io::{BufRead as _, BufReader};
    let out = Command::new(BIN)
        .args(["demo", "--config", "/nonexistent.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--config"));
    let out = Command::new(BIN)
        .args([
            "gen-key",
            "--name",
            "x",
            "--scopes",
            "chargers:read",
            "-c",
            "g.toml",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));

    let mut demo = Command::new(BIN)
        .args(["demo", "--listen", "127.0.0.1:0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let lines = BufReader::new(demo.stdout.take().unwrap()).lines();
    let mut curls = Vec::new();
    let mut printed = String::new();
    for line in lines.map_while(Result::ok) {
        printed.push_str(&line);
        printed.push('\n');
        if line.trim_start().starts_with("curl ") {
            curls.push(line.clone());
        }
        if line.starts_with("Refused") {
            break;
        }
    }
    assert!(curls.len() >= 5, "{printed}");
    for curl in &curls {
        let words: Vec<&str> = curl.split_whitespace().collect();
        let url = words
            .iter()
            .map(|w| w.trim_matches('\''))
            .find(|w| w.starts_with("http://"))
            .unwrap_or_else(|| panic!("{curl}"));
        let (addr, target) = url["http://".len()..].split_once('/').unwrap();
        let addr: std::net::SocketAddr = addr.parse().unwrap();
        let mut headers = Vec::new();
        let basic;
        if let Some(at) = curl.find("X-Gateway-Key: ") {
            let key = &curl[at + "X-Gateway-Key: ".len()..][..36];
            headers.push(("x-gateway-key", key.to_owned()));
        } else if let Some(at) = words.iter().position(|w| *w == "-u") {
            use base64::Engine as _;
            basic = format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(words[at + 1])
            );
            headers.push(("authorization", basic));
        } else {
            panic!("a curl without the device key: {curl}");
        }
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (status, _, body) =
            support::send(addr, Method::GET, &format!("/{target}"), &headers, "").await;
        assert!(status.is_success(), "{curl}: {status} {body}");
    }
    signal(demo.id(), "TERM");
    demo.wait().unwrap();
}

/// Compose takes the config and the devices file from the host (so an edit
/// plus SIGHUP, or `device add` through `docker compose exec gateway`,
/// applies), the Docker config's devices file lies in the mounted folder,
/// and `.env.example` names GATEWAY_LAN_IP; the package makes its devices
/// file root's and 644, and purge removes it.
#[test]
fn compose_and_the_package_keep_device_keys_on_the_host() {
    let repo = |p: &str| Path::new(env!("CARGO_MANIFEST_DIR")).join(p);
    let compose = std::fs::read_to_string(repo("deploy/docker/compose.yaml")).unwrap();
    assert!(
        compose.contains("\nservices:\n  gateway:\n"),
        "the service is `gateway`"
    );
    assert!(compose.contains("- ./gateway.toml:/etc/joulo-gateway/gateway.toml:ro"));
    assert!(compose.contains("- ./devices:/var/lib/joulo-gateway\n"));
    // The published image, pulled for upgrades: nothing is compiled on the host.
    assert!(!compose.contains("build:"), "compose builds nothing");
    assert!(compose.contains("    image: ghcr.io/joulo-gateway/joulo-gateway:"));
    assert!(
        compose.contains("docker compose pull"),
        "upgrades are documented"
    );
    let docker = Config::load(&repo("deploy/docker/gateway.toml")).unwrap();
    assert_eq!(
        docker.access.devices_file,
        Path::new("/var/lib/joulo-gateway/devices.toml")
    );
    let env = std::fs::read_to_string(repo("deploy/docker/.env.example")).unwrap();
    assert!(env.lines().any(|l| l.starts_with("GATEWAY_LAN_IP=")));

    let systemd = Config::load(&repo("deploy/systemd/gateway.toml")).unwrap();
    assert_eq!(
        systemd.access.devices_file,
        Path::new("/etc/joulo-gateway/devices.toml")
    );
    let postinst = std::fs::read_to_string(repo("deploy/debian/postinst")).unwrap();
    assert!(
        postinst
            .contains("install -m 644 -o root -g root /dev/null /etc/joulo-gateway/devices.toml")
    );
    let postrm = std::fs::read_to_string(repo("deploy/debian/postrm")).unwrap();
    assert!(postrm.contains("\"$dir\"/devices.toml"));
    let test_deb = std::fs::read_to_string(repo("deploy/test-deb.sh")).unwrap();
    assert!(test_deb.contains("a LAN request without a key got"));
}

/// The add-on's config, as `joulo-gateway addon` writes it from its options:
/// closed too. A LAN request without a key gets 401 saying what to do; the
/// key the `devices` option put in its key file opens it; the add-on itself
/// (loopback) is served. Only Joulo and "this host" are changed for the test.
#[tokio::test]
async fn the_addon_config_refuses_a_lan_request_without_a_key() {
    let upstream = MockUpstream::start();
    let data = tempfile::tempdir().unwrap();
    let keys = data.path().join("share");
    let options =
        serde_json::json!({"joulo_token": canary(), "devices": [{"name": "homeassistant"}]});
    std::fs::write(data.path().join("options.json"), options.to_string()).unwrap();
    let config_path =
        joulo_gateway::addon_prepare(data.path(), &keys, "127.0.0.1:0".parse().unwrap(), None)
            .unwrap();
    let mut table: toml::Table = std::fs::read_to_string(&config_path)
        .unwrap()
        .parse()
        .unwrap();
    write_private(&data.path().join("ca.pem"), &upstream.ca_pem).unwrap();
    let up = table["upstream"].as_table_mut().unwrap();
    up.insert("base_url".into(), upstream.base_url().into());
    up.insert("ca_file".into(), "ca.pem".into());
    let access = table["access"].as_table_mut().unwrap();
    access.insert(
        "local_addresses".into(),
        toml::Value::Array(vec!["127.0.0.1".into()]),
    );
    std::fs::write(&config_path, toml::to_string(&table).unwrap()).unwrap();
    let config = Config::load(&config_path).unwrap();
    let gateway = Gateway::build(&config).unwrap();
    let listener = tokio::net::TcpListener::bind(config.server.listen)
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(gateway.serve(listener, async {
        let _ = stopped.await;
    }));
    let (status, body) = get_from("127.0.0.236", addr, "/chargers").await;
    assert_eq!(status, 401, "{body}");
    assert!(
        upstream.received().is_empty(),
        "a keyless LAN request reached Joulo"
    );
    let key = std::fs::read_to_string(keys.join("homeassistant.key")).unwrap();
    let (status, _, body) = support::send(
        addr,
        Method::GET,
        "/chargers",
        &[("x-gateway-key", key.trim())],
        "",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = get_from("127.0.0.1", addr, "/healthz").await;
    assert_eq!(status, 200, "{body}");
    let _ = stop.send(());
    let _ = served.await;
}

/// Under `keyless = true`, a devices file emptied or deleted (an editor
/// truncating it, a bind mount gone) would look like "the last key removed"
/// and serve every allowed address without a key: such a reload is refused
/// and the keys stay (outside review of 23); a restart is the way back to
/// keyless on purpose.
#[tokio::test]
async fn under_keyless_a_devices_file_emptied_or_deleted_does_not_open_the_gateway() {
    let upstream = MockUpstream::start();
    let gateway = TestGateway::start_on(
        &upstream,
        "[access]\nlocal_addresses = [\"127.0.0.1\"]\nkeyless = true\n",
    )
    .await;
    let config = gateway.dir.path().join("gateway.toml");
    let devices = gateway.dir.path().join("devices.toml");
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&config)
        .args(["device", "add", "homeassistant"])
        .output()
        .unwrap();
    let key = printed_key(&String::from_utf8_lossy(&out.stdout));
    assert!(matches!(
        reload_once(&config, &gateway.state, &LogLevel::fixed()),
        Reloaded::Applied { .. }
    ));
    assert_eq!(
        get_from("127.0.0.241", gateway.addr, "/chargers").await.0,
        401
    );
    for break_it in [
        (|path: &Path| std::fs::write(path, "")) as fn(&Path) -> std::io::Result<()>,
        |path: &Path| std::fs::remove_file(path),
    ] {
        let kept = std::fs::read_to_string(&devices).unwrap();
        break_it(&devices).unwrap();
        let outcome = reload_once(&config, &gateway.state, &LogLevel::fixed());
        assert!(
            matches!(&outcome, Reloaded::Refused(why) if why.contains("keyless")),
            "{outcome:?}"
        );
        let before = upstream.received().len();
        let (status, body) = get_from("127.0.0.241", gateway.addr, "/chargers").await;
        assert_eq!(status, 401, "{body}");
        assert_eq!(
            upstream.received().len(),
            before,
            "a keyless call reached Joulo"
        );
        assert_eq!(
            get_with_key("127.0.0.241", gateway.addr, "/chargers", &key).await,
            200,
            "the keys stay"
        );
        std::fs::write(&devices, kept).unwrap();
    }
}
