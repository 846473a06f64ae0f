//! The built `joulo-gateway` binary: its command line, `check` exit codes, and a
//! full run against a recording TLS upstream with SIGHUP rotation and SIGTERM.

use crate::support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use http::{Method, StatusCode};
use joulo_gateway::demo::write_private;
use support::{MockUpstream, PREFIX, canary};

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_joulo-gateway");

pub(crate) fn write_config(dir: &Path, upstream: &MockUpstream, extra: &str) -> std::path::PathBuf {
    write_private(&dir.join("ca.pem"), &upstream.ca_pem).unwrap();
    let path = dir.join("gateway.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n\
             [upstream]\nbase_url = \"{}\"\ntoken_file = \"joulo_token\"\nca_file = \"ca.pem\"\n{extra}",
            upstream.base_url()
        ),
    )
    .unwrap();
    path
}

pub(crate) fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn version_and_help() {
    let out = Command::new(BIN).arg("--version").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("joulo-gateway "));
    let out = Command::new(BIN).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for word in ["check", "demo", "--config"] {
        assert!(help.contains(word), "{help}");
    }
}

#[test]
fn check_validates_config_and_token_with_exit_64() {
    let upstream = MockUpstream::start();
    let dir = tempfile::tempdir().unwrap();
    let token = canary();
    let config = write_config(dir.path(), &upstream, "");
    let check = |config: &Path| {
        Command::new(BIN)
            .args(["check", "--config"])
            .arg(config)
            .output()
            .unwrap()
    };

    let out = check(&config);
    assert_eq!(out.status.code(), Some(64), "no token file yet");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("joulo_token") && err.contains("does not exist: create it"),
        "{err}"
    );

    write_private(&dir.path().join("joulo_token"), &format!("{token}\n")).unwrap();
    let out = check(&config);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("valid"));

    let torn = format!("{} {}", &token[..20], &token[20..]);
    write_private(&dir.path().join("joulo_token"), &torn).unwrap();
    let out = check(&config);
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("whitespace"), "{err}");
    assert!(
        !err.contains(&token[..20]),
        "the error never quotes the file"
    );

    let typo = write_config(dir.path(), &upstream, "tiemout = \"5s\"\n");
    let out = check(&typo);
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("gateway.toml") && err.contains("upstream.tiemout"),
        "{err}"
    );
    assert!(err.contains("unknown field"), "{err}");

    let out = check(&dir.path().join("missing.toml"));
    assert_eq!(out.status.code(), Some(64));
}

#[test]
fn check_refuses_a_token_file_that_is_a_fifo_at_once() {
    let upstream = MockUpstream::start();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &upstream, "");
    // Nothing ever writes to it: reading it the ordinary way would wait forever.
    let status = Command::new("mkfifo")
        .arg(dir.path().join("joulo_token"))
        .status()
        .unwrap();
    assert!(status.success());
    let mut child = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&config)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("`check` was still running after 5 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("joulo_token") && err.contains("is a FIFO (named pipe), not a regular file"),
        "{err}"
    );
    assert_eq!(
        err.matches("not a regular file").count(),
        1,
        "the cause is said once: {err}"
    );
}

#[tokio::test]
async fn the_binary_forwards_reloads_on_sighup_and_stops_on_sigterm() {
    let upstream = MockUpstream::start();
    let dir = tempfile::tempdir().unwrap();
    // Only SIGHUP can trigger a reload within this test.
    let config = write_config(dir.path(), &upstream, "token_poll_interval = \"1h\"\n");
    let first = canary();
    let token_file = dir.path().join("joulo_token");
    write_private(&token_file, &first).unwrap();

    let mut child = Command::new(BIN)
        .args(["--config"])
        .arg(&config)
        .env("RUST_LOG", "trace")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (lines_tx, lines) = mpsc::channel::<String>();
    let stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            all.push_str(&line);
            all.push('\n');
            let _ = lines_tx.send(line);
        }
        all
    });
    let wait_for = |needle: &str| -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(e) => panic!("no log line with {needle:?}: {e}"),
            }
        }
    };

    let listening = wait_for("listening");
    let addr: SocketAddr = listening
        .split("addr=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {listening}"));

    let leaked = canary();
    let (status, _, body) = support::send(
        addr,
        Method::GET,
        &format!("/sessions?limit=2&token={leaked}&Access_Token={leaked}"),
        &[],
        "",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let got = upstream.last();
    assert_eq!(got.target, format!("{PREFIX}/sessions?limit=2"));
    assert_eq!(
        got.headers["authorization"],
        format!("Bearer {first}").as_str()
    );

    let second = canary();
    write_private(&token_file, &second).unwrap();
    signal(pid, "HUP");
    wait_for("token reloaded");
    let (status, _, _) = support::send(addr, Method::GET, "/chargers", &[], "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        upstream.last().headers["authorization"],
        format!("Bearer {second}").as_str()
    );

    signal(pid, "TERM");
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "SIGTERM is a clean exit");
    let log = reader.join().unwrap();
    assert!(log.contains("TRACE"), "trace level was on");
    assert!(
        log.contains("token=[REDACTED]"),
        "the access log marks the removed parameter"
    );
    for secret in [&first, &second, &leaked] {
        assert!(
            !log.contains(secret.as_str()),
            "a secret reached the binary's log"
        );
        assert!(!body.contains(secret.as_str()));
    }
}

#[test]
fn gen_key_prints_a_key_once_and_an_entry_holding_its_hash() {
    let out = Command::new(BIN)
        .args([
            "gen-key",
            "--name",
            "homeassistant",
            "--scopes",
            "chargers:read,energy:read",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let key = text
        .split_whitespace()
        .find(|w| w.starts_with("jgw_"))
        .expect("a key is printed");
    assert_eq!(key.len(), 36);
    assert_eq!(text.matches(key).count(), 1, "the key is printed once");
    let hash = joulo_gateway::key_sha256_hex(key);
    assert!(text.contains(&format!("key_sha256 = \"{hash}\"")), "{text}");
    assert!(
        text.contains("scopes = [\"chargers:read\", \"energy:read\"]"),
        "{text}"
    );

    let out = Command::new(BIN)
        .args(["gen-key", "--name", "x", "--scopes", "everything"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("everything"));
}

#[tokio::test]
async fn sigterm_drains_an_in_flight_request_then_exits_0() {
    let upstream = MockUpstream::start();
    let gate = std::sync::Arc::new(tokio::sync::Notify::new());
    upstream.set_reply(support::Reply::Gate(gate.clone()));
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &upstream, "");
    write_private(&dir.path().join("joulo_token"), &canary()).unwrap();
    let mut child = Command::new(BIN)
        .args(["--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let (addr_tx, addr_rx) = mpsc::channel::<SocketAddr>();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in stderr.lines().map_while(Result::ok) {
            if let Some(addr) = line
                .split("addr=")
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|a| a.parse().ok())
            {
                let _ = addr_tx.send(addr);
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let addr = addr_rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the gateway listens");

    let in_flight =
        tokio::spawn(async move { support::send(addr, Method::GET, "/chargers", &[], "").await });
    assert!(
        support::eventually(Duration::from_secs(5), || async {
            !upstream.received().is_empty()
        })
        .await
    );
    signal(child.id(), "TERM");
    let refused = support::eventually(Duration::from_secs(5), || async {
        tokio::net::TcpStream::connect(addr).await.is_err()
    })
    .await;
    assert!(refused, "no new connections after SIGTERM");
    assert!(!in_flight.is_finished());
    gate.notify_one();
    let (status, _, body) = in_flight.await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    let exit = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert_eq!(exit.code(), Some(0));
    let log = reader.join().unwrap();
    assert!(log.contains("all connections drained"), "{log}");
}

#[test]
fn check_errors_never_print_secret_material() {
    let dir = tempfile::tempdir().unwrap();
    let secret = canary();
    // Not token-shaped: only its place in a URL says it is a credential.
    let odd = "hunter2-odd-shaped-secret";
    let cases = [
        (
            format!("[upstream]\ntoken_file = \"{secret}\"\n"),
            "token file",
        ),
        (
            format!(
                "[upstream]\nbase_url = \"https://api.joulo.nl/functions/v1/api?token={secret}\"\n"
            ),
            "upstream.base_url",
        ),
        (
            format!("[upstream]\nbase_url = \"https://api.joulo.nl/api?TOKEN={odd}&x=1\"\n"),
            "upstream.base_url",
        ),
        (
            format!("[access]\nallow = [\"{secret}\"]\n"),
            "access.allow",
        ),
        (
            format!("[upstream]\nca_file = \"{secret}\"\n"),
            "upstream.ca_file",
        ),
        (
            format!("[server]\nallowed_hosts = [\"{secret}\"]\n"),
            "server.allowed_hosts",
        ),
    ];
    for (text, key) in cases {
        let config = dir.path().join("gateway.toml");
        std::fs::write(&config, &text).unwrap();
        let out = Command::new(BIN)
            .args(["check", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(64), "{text}");
        let printed = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(printed.contains(key), "{text}: {printed}");
        assert!(printed.contains("[REDACTED]"), "{text}: {printed}");
        assert!(!printed.contains(&secret), "{text}: {printed}");
        assert!(!printed.contains(odd), "{text}: {printed}");
    }
}

#[test]
fn the_running_gateway_forbids_core_dumps_and_the_demo_ends_with_its_terminal() {
    let mut demo = Command::new(BIN)
        .args(["demo", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(demo.stdout.take().unwrap()).lines();
    let dir = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|l| {
            l.trim()
                .strip_prefix("config")
                .map(|rest| Path::new(rest.trim()).parent().unwrap().to_owned())
        })
        .expect("the demo names its config file");
    assert!(dir.exists());
    // Read back from the kernel: no core file, soft and hard.
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", demo.id())).unwrap();
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .unwrap();
    assert_eq!(
        &core.split_whitespace().collect::<Vec<_>>()[4..6],
        ["0", "0"],
        "{core}"
    );
    // (PR_SET_DUMPABLE is read back in hardening's unit test: another
    // process cannot ask for it.)
    signal(demo.id(), "HUP");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = demo.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the demo outlived SIGHUP"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
    assert!(!dir.exists(), "the demo's directory was deleted");
    drop(lines);
}

#[test]
fn check_refuses_a_token_file_others_can_read_and_says_how_to_fix_it() {
    use std::os::unix::fs::PermissionsExt;
    let upstream = MockUpstream::start();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &upstream, "");
    let token = canary();
    let token_file = dir.path().join("joulo_token");
    write_private(&token_file, &token).unwrap();
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("mode 0644") && err.contains("chmod 600"),
        "{err}"
    );
    assert!(!err.contains(&token));
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The packaged layout: the unit copies /etc/joulo-gateway/joulo_token into a
/// credential, and `check` from a shell reads the file itself. Before a token
/// exists, both say which file to write, and how, on one line, and exit 64.
#[test]
fn a_first_start_without_a_token_says_which_file_to_write() {
    let upstream = MockUpstream::start();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &upstream, "");
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "[upstream]\n",
        "[upstream]\ntoken_credential = \"joulo_token\"\n",
    );
    std::fs::write(&config, text).unwrap();
    let token_file = dir.path().join("joulo_token");
    let credentials = dir.path().join("credentials");
    std::fs::create_dir(&credentials).unwrap();
    let run = |command: &str, credentials_dir: Option<&Path>| {
        let mut cmd = Command::new(BIN);
        cmd.arg("--config").arg(&config);
        if !command.is_empty() {
            cmd.arg(command);
        }
        cmd.env_remove("CREDENTIALS_DIRECTORY")
            .env("RUST_LOG", "trace");
        if let Some(dir) = credentials_dir {
            cmd.env("CREDENTIALS_DIRECTORY", dir);
        }
        let out = cmd.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        (out.status.code(), err)
    };
    let shown = token_file.display().to_string();

    // No file at all: `check` from a shell names it and the command that makes it.
    let (code, err) = run("check", None);
    assert_eq!(code, Some(64), "{err}");
    assert!(
        err.contains(&format!("token file {shown} does not exist"))
            && err.contains(&format!("install -m 600 /dev/null {shown}")),
        "{err}"
    );
    // One line for it (the other is the mock's foreign-host warning).
    assert_eq!(
        err.lines().filter(|l| l.contains("token")).count(),
        2,
        "{err}"
    );
    assert_eq!(
        err.lines().filter(|l| l.contains("token file")).count(),
        1,
        "{err}"
    );

    // The package's empty placeholder, from a shell and under the unit (the
    // credential is a copy): both name the file to edit, not the copy.
    write_private(&token_file, "").unwrap();
    write_private(&credentials.join("joulo_token"), "").unwrap();
    for (command, creds) in [("check", None), ("", Some(credentials.as_path()))] {
        let (code, err) = run(command, creds);
        assert_eq!(code, Some(64), "{command}: {err}");
        let line = err
            .lines()
            .find(|l| l.contains("token file"))
            .unwrap_or_else(|| panic!("{command}: {err}"));
        assert!(
            line.contains(&format!(
                "token file {shown} is empty: write your Joulo API token"
            )),
            "{command}: {err}"
        );
    }

    // Written: the shell reads the file, the unit its credential.
    let token = canary();
    write_private(&token_file, &token).unwrap();
    let (code, err) = run("check", None);
    assert_eq!(code, Some(0), "{err}");
    let (code, err) = run("check", Some(&credentials));
    assert_eq!(
        code,
        Some(64),
        "the credential is still the empty copy: {err}"
    );
    write_private(&credentials.join("joulo_token"), &token).unwrap();
    let (code, err) = run("check", Some(&credentials));
    assert_eq!(code, Some(0), "{err}");
    assert!(!err.contains(&token));

    // The copy is private, but the file it came from is open to others: the
    // service refuses it too, naming that file and the fix.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    for command in ["check", ""] {
        let (code, err) = run(command, Some(&credentials));
        assert_eq!(code, Some(64), "{command}: {err}");
        assert!(
            err.contains(&shown) && err.contains("mode 0644") && err.contains("chmod 600"),
            "{command}: {err}"
        );
        assert!(!err.contains(&token));
    }
}

/// examples/generate.rs, which `cargo test` builds beside the test binaries
/// (target/<profile>/examples/).
fn generator() -> std::path::PathBuf {
    let profile_dir = std::env::current_exe()
        .unwrap()
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .to_owned();
    let path = profile_dir.join("examples").join("generate");
    assert!(
        path.exists(),
        "{} is missing: run the whole `cargo test`, or `cargo build --example generate` first",
        path.display()
    );
    path
}

/// Starts the binary with `config` and `env`, and returns it with the address
/// it listens on and its stderr so far, once it says it is listening.
pub(crate) fn start_binary(
    config: &Path,
    env: &[(&str, &Path)],
) -> (std::process::Child, SocketAddr, String) {
    let mut command = Command::new(BIN);
    command
        .arg("--config")
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (name, value) in env {
        command.env(name, value);
    }
    // Only what `env` says: no certificate directory from the outer shell.
    command.env_remove("SSL_CERT_DIR");
    let mut child = command.spawn().unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = String::new();
    for line in lines.by_ref().map_while(Result::ok) {
        seen.push_str(&line);
        seen.push('\n');
        if let Some(addr) = line
            .split("addr=")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|a| a.parse().ok())
        {
            // Keep draining so the child never blocks on a full pipe.
            std::thread::spawn(move || for _ in lines.map_while(Result::ok) {});
            return (child, addr, seen);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("the binary never listened: {seen}");
}

#[tokio::test]
async fn upstream_roots_come_from_the_chosen_store_and_a_foreign_host_is_named() {
    let upstream = MockUpstream::start();
    let dir = tempfile::tempdir().unwrap();
    let token = canary();
    write_private(&dir.path().join("joulo_token"), &token).unwrap();
    // The system store, as rustls-native-certs reads it: here just the mock's CA.
    let bundle = dir.path().join("system-bundle.pem");
    std::fs::write(&bundle, &upstream.ca_pem).unwrap();
    let config = dir.path().join("gateway.toml");
    let write = |roots: &str| {
        std::fs::write(
            &config,
            format!(
                "[server]\nlisten = \"127.0.0.1:0\"\n[upstream]\nbase_url = \"{}\"\n\
                 token_file = \"joulo_token\"\nroots = \"{roots}\"\n",
                upstream.base_url()
            ),
        )
        .unwrap();
    };
    for (roots, expected) in [("system", 200), ("both", 200), ("webpki", 502)] {
        write(roots);
        let (mut child, addr, log) = start_binary(&config, &[("SSL_CERT_FILE", &bundle)]);
        assert!(
            log.contains("upstream.base_url") && log.contains("localhost") && log.contains("WARN"),
            "one warning names the host that is not api.joulo.nl: {log}"
        );
        let (status, _, body) = support::send(addr, Method::GET, "/chargers", &[], "").await;
        assert_eq!(status.as_u16(), expected, "roots = {roots}: {body}");
        signal(child.id(), "TERM");
        child.wait().unwrap();
    }
    // An empty system store is a clear error, not a gateway that trusts nothing.
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    write("system");
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&config)
        .env("SSL_CERT_FILE", &empty)
        .env_remove("SSL_CERT_DIR")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("upstream.roots") && err.contains("ca-certificates"),
        "{err}"
    );
}

/// A port nothing listens on right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn healthcheck_asks_what_the_config_serves_over_https_too() {
    use joulo_gateway::demo::DemoCa;
    let upstream = MockUpstream::start();
    let dir = tempfile::tempdir().unwrap();
    write_private(&dir.path().join("joulo_token"), &canary()).unwrap();
    let lan = DemoCa::generate(&["gateway.lan"]).unwrap();
    write_private(&dir.path().join("lan.crt"), &lan.leaf_cert_pem).unwrap();
    write_private(&dir.path().join("lan.key"), &lan.leaf_key_pem).unwrap();
    write_private(&dir.path().join("lan-ca.pem"), &lan.ca_pem).unwrap();
    let port = free_port();
    let config = write_config(
        dir.path(),
        &upstream,
        &format!(
            "[server]\nlisten = \"0.0.0.0:{port}\"\ntls_cert = \"lan.crt\"\ntls_key = \"lan.key\"\n"
        ),
    );
    // write_config put its own [server] first: keep only ours.
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("[server]\nlisten = \"127.0.0.1:0\"\n", "");
    std::fs::write(&config, text).unwrap();
    let healthcheck = |args: &[&str]| {
        Command::new(BIN)
            .arg("healthcheck")
            .args(args)
            .output()
            .unwrap()
    };
    let config_arg = config.to_str().unwrap();
    // Nothing listens yet: a failure, quickly.
    let out = healthcheck(&["--config", config_arg]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach https://127.0.0.1:"));

    let (mut child, addr, _) = start_binary(&config, &[]);
    assert_eq!(addr.port(), port);
    let out = healthcheck(&["--config", config_arg]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A certificate other than the served one is refused, pinned or by CA.
    let other = DemoCa::generate(&["gateway.lan"]).unwrap();
    write_private(&dir.path().join("lan.crt"), &other.leaf_cert_pem).unwrap();
    let out = healthcheck(&["--config", config_arg]);
    assert!(
        !out.status.success(),
        "a certificate the config does not serve"
    );
    let out = healthcheck(&[
        "--url",
        &format!("https://127.0.0.1:{port}/healthz"),
        "--ca",
        dir.path().join("lan-ca.pem").to_str().unwrap(),
    ]);
    assert!(
        !out.status.success(),
        "127.0.0.1 is not a name in the certificate"
    );
    signal(child.id(), "TERM");
    child.wait().unwrap();

    // And by CA, for a certificate naming localhost.
    let named = DemoCa::generate(&["localhost"]).unwrap();
    write_private(&dir.path().join("lan.crt"), &named.leaf_cert_pem).unwrap();
    write_private(&dir.path().join("lan.key"), &named.leaf_key_pem).unwrap();
    write_private(&dir.path().join("lan-ca.pem"), &named.ca_pem).unwrap();
    let (mut child, _, _) = start_binary(&config, &[]);
    let url = format!("https://localhost:{port}/healthz");
    let out = healthcheck(&[
        "--url",
        &url,
        "--ca",
        dir.path().join("lan-ca.pem").to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = healthcheck(&["--url", &url]);
    assert!(
        !out.status.success(),
        "without --ca the LAN CA is not trusted"
    );
    let out = healthcheck(&["--config", config_arg]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    signal(child.id(), "TERM");
    child.wait().unwrap();
}

#[tokio::test]
async fn sighup_revokes_a_key_within_2_s_while_another_device_keeps_its_connection() {
    use joulo_gateway::{generate_key, key_sha256_hex};
    let upstream = MockUpstream::start();
    let dir = tempfile::tempdir().unwrap();
    write_private(&dir.path().join("joulo_token"), &canary()).unwrap();
    let (kept, revoked) = (generate_key(), generate_key());
    let clients = |keys: &[(&str, &str)]| -> String {
        keys.iter()
            .map(|(name, key)| {
                format!(
                    "[[clients]]\nname = \"{name}\"\nkey_sha256 = \"{}\"\nscopes = [\"chargers:read\"]\n",
                    key_sha256_hex(key)
                )
            })
            .collect()
    };
    let limits = "[limits]\nclient_per_minute = 60000\nclient_burst = 1000\n";
    let config = write_config(
        dir.path(),
        &upstream,
        &format!(
            "{limits}{}",
            clients(&[("homeassistant", &kept), ("tablet", &revoked)])
        ),
    );
    let (mut child, addr, _) = start_binary(&config, &[]);
    // One keep-alive connection for the device that stays, polling all along.
    let poller = support::KeepAlivePoller::start(addr, &kept);
    let tablet = |addr| {
        let revoked = revoked.clone();
        async move {
            support::send(
                addr,
                Method::GET,
                "/chargers",
                &[("x-gateway-key", &revoked)],
                "",
            )
            .await
            .0
        }
    };
    assert_eq!(tablet(addr).await, StatusCode::OK);
    let text = std::fs::read_to_string(&config).unwrap();
    let without_tablet = text.replace(&clients(&[("tablet", &revoked)]), "");
    assert_ne!(text, without_tablet);
    std::fs::write(&config, without_tablet).unwrap();
    let sent = std::time::Instant::now();
    signal(child.id(), "HUP");
    let mut refused_after = None;
    while sent.elapsed() < Duration::from_secs(2) {
        if tablet(addr).await == StatusCode::UNAUTHORIZED {
            refused_after = Some(sent.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let refused_after = refused_after.expect("the revoked key was refused within 2 s");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let statuses = poller.stop().await;
    assert!(statuses.len() > 10, "{}", statuses.len());
    assert!(
        statuses.iter().all(|s| *s == 200),
        "the other device failed: {statuses:?}"
    );
    eprintln!(
        "revoked after {refused_after:?}; the other device made {} requests, all 200",
        statuses.len()
    );
    signal(child.id(), "TERM");
    child.wait().unwrap();
}

#[test]
fn the_manual_and_completions_come_from_the_command_line_itself() {
    // Not in the completions either (it was once a hidden subcommand).
    let bash = Command::new(generator()).arg("bash").output().unwrap();
    assert!(!String::from_utf8_lossy(&bash.stdout).contains("generate"));
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(generator())
        .args(["man", "--out"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let help = String::from_utf8_lossy(&Command::new(BIN).arg("--help").output().unwrap().stdout)
        .into_owned();
    let main = std::fs::read_to_string(dir.path().join("joulo-gateway.1")).unwrap();
    assert!(main.contains(".TH joulo-gateway 1"), "{main}");
    assert!(
        main.contains("gateway.toml"),
        "points to the config for settings"
    );
    for sub in ["run", "check", "gen-key", "healthcheck", "demo"] {
        assert!(help.contains(sub), "{sub} in --help");
        let page = std::fs::read_to_string(dir.path().join(format!("joulo-gateway-{sub}.1")))
            .unwrap_or_else(|e| panic!("joulo-gateway-{sub}.1: {e}"));
        assert!(
            page.contains(&format!(".TH joulo-gateway-{sub} 1")),
            "{page}"
        );
        assert!(main.contains(&format!("joulo\\-gateway\\-{}(1)", sub.replace('-', "\\-"))));
    }
    assert!(
        main.contains(".SH FILES")
            && main.contains("joulo_token")
            && main.contains(".SH \"SEE ALSO\""),
        "{main}"
    );
    // Every page joulo-gateway(1) names exists, `help` included.
    assert!(dir.path().join("joulo-gateway-help.1").exists());
    let gen_key = std::fs::read_to_string(dir.path().join("joulo-gateway-gen-key.1")).unwrap();
    assert!(gen_key.contains("\\-\\-scopes") && gen_key.contains("\\-\\-name"));
    // The generator is not part of the gateway: no page, no subcommand.
    assert!(!dir.path().join("joulo-gateway-generate.1").exists());
    assert!(!help.contains("generate"));
    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef joulo-gateway"),
        ("fish", "complete -c joulo-gateway"),
    ] {
        let out = Command::new(generator()).arg(shell).output().unwrap();
        assert!(out.status.success());
        let script = String::from_utf8_lossy(&out.stdout);
        assert!(script.contains(marker), "{shell}: {script}");
        assert!(
            script.contains("healthcheck") && script.contains("gen-key"),
            "{shell}"
        );
        // bash, where installed: a subcommand's options complete too.
        if shell == "bash" && Command::new("bash").arg("--version").output().is_ok() {
            let file = dir.path().join("completion.bash");
            std::fs::write(&file, &*script).unwrap();
            let complete = |words: &str| {
                let out = Command::new("bash")
                    .arg("-c")
                    .arg(format!(
                        "source {}; COMP_WORDS=({words}); COMP_CWORD=$((${{#COMP_WORDS[@]}} - 1)); \
                         _joulo__gateway joulo-gateway \"${{COMP_WORDS[COMP_CWORD]}}\" \
                         \"${{COMP_WORDS[COMP_CWORD-1]}}\"; echo \"${{COMPREPLY[@]}}\"",
                        file.display()
                    ))
                    .output()
                    .unwrap();
                String::from_utf8_lossy(&out.stdout).into_owned()
            };
            assert!(complete("joulo-gateway gen").contains("gen-key"));
            let options = complete("joulo-gateway gen-key --");
            assert!(
                options.contains("--scopes") && options.contains("--name"),
                "{options}"
            );
        }
    }
}

/// Under systemd the token is a credential, copied by systemd at start only:
/// a SIGHUP after the admin edited the source file finds the same copy, and
/// says a restart is needed rather than "token reloaded".
#[test]
fn sighup_under_systemd_says_a_new_token_needs_a_restart() {
    let upstream = MockUpstream::start();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &upstream, "token_poll_interval = \"1h\"\n");
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "[upstream]\n",
        "[upstream]\ntoken_credential = \"joulo_token\"\n",
    );
    std::fs::write(&config, text).unwrap();
    let credentials = dir.path().join("credentials");
    std::fs::create_dir(&credentials).unwrap();
    let first = canary();
    write_private(&dir.path().join("joulo_token"), &first).unwrap();
    write_private(&credentials.join("joulo_token"), &first).unwrap();

    let mut child = Command::new(BIN)
        .arg("--config")
        .arg(&config)
        .env("CREDENTIALS_DIRECTORY", &credentials)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (lines_tx, lines) = mpsc::channel::<String>();
    let stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            all.push_str(&line);
            all.push('\n');
            let _ = lines_tx.send(line);
        }
        all
    });
    let next_token_line = || -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) if line.contains("token") => return line,
                Ok(_) => {}
                Err(e) => panic!("no token line: {e}"),
            }
        }
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !lines
        .recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
        .expect("the gateway starts listening")
        .contains("listening")
    {}

    // The admin writes a new token into the source file and sends SIGHUP:
    // the credential copy is unchanged.
    let second = canary();
    write_private(&dir.path().join("joulo_token"), &second).unwrap();
    signal(child.id(), "HUP");
    let line = next_token_line();
    assert!(
        line.contains("needs a restart") && !line.contains("token reloaded"),
        "{line}"
    );
    assert!(
        line.contains(&dir.path().join("joulo_token").display().to_string()),
        "{line}"
    );

    // A copy that did change (systemd restarted it, or someone wrote it) is
    // reloaded as before.
    write_private(&credentials.join("joulo_token"), &second).unwrap();
    signal(child.id(), "HUP");
    let line = next_token_line();
    assert!(line.contains("token reloaded"), "{line}");

    signal(child.id(), "TERM");
    assert_eq!(child.wait().unwrap().code(), Some(0));
    let log = reader.join().unwrap();
    for secret in [&first, &second] {
        assert!(!log.contains(secret.as_str()), "{log}");
    }
}

/// A token others can read in a platform secrets mount: Compose bind-mounts
/// the host file, whose mode is then every host user's, so `check` refuses it
/// with the fix; on the tmpfs a platform makes for its secrets (Swarm's
/// 0444) it is only warned about.
#[test]
fn a_world_readable_platform_secret_is_refused_unless_on_a_tmpfs() {
    use std::os::unix::fs::PermissionsExt;
    let upstream = MockUpstream::start();
    let check = |credentials: &Path| {
        let dir = tempfile::tempdir().unwrap();
        let config = write_config(dir.path(), &upstream, "");
        let text = std::fs::read_to_string(&config)
            .unwrap()
            .replace("token_file = \"joulo_token\"\n", "");
        std::fs::write(&config, text).unwrap();
        let token = canary();
        let file = credentials.join("joulo_token");
        write_private(&file, &token).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o444)).unwrap();
        let out = Command::new(BIN)
            .args(["check", "--config"])
            .arg(&config)
            .env("CREDENTIALS_DIRECTORY", credentials)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!err.contains(&token), "{err}");
        (out.status.code(), err)
    };
    let on_disk = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let is_tmpfs = |p: &Path| {
        Command::new("stat")
            .args(["-f", "-c", "%t"])
            .arg(p)
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "1021994")
    };
    if !is_tmpfs(on_disk.path()) {
        let (code, err) = check(on_disk.path());
        assert_eq!(code, Some(64), "{err}");
        assert!(
            err.contains("mode 0444") && err.contains("chmod 600") && err.contains("65532"),
            "{err}"
        );
    }
    if is_tmpfs(Path::new("/dev/shm")) {
        let on_tmpfs = tempfile::tempdir_in("/dev/shm").unwrap();
        let (code, err) = check(on_tmpfs.path());
        assert_eq!(code, Some(0), "{err}");
        assert!(err.contains("open to others"), "{err}");
    }
}

/// A token of an unusual shape (31 characters, or holding `-`: no token
/// shape matches it) pasted into another field of the config is still never
/// printed by `check` or a start: errors are scrubbed of what the token file
/// holds, values the parser quotes in backticks included.
#[test]
fn a_token_of_any_shape_pasted_into_the_config_is_never_printed() {
    let upstream = MockUpstream::start();
    let whole = canary();
    let short = whole[..31].to_owned();
    let dashed = format!("{}-{}", &whole[..18], &whole[18..30]);
    for token in [&short, &dashed] {
        let fields = [
            format!("[access]\nallow = [\"{token}\"]\n"),
            format!("[server]\nallowed_hosts = [\"{token}\"]\n"),
            format!("[server]\nlisten = \"{token}\"\n"),
            format!("[log]\nformat = \"{token}\"\n"),
            format!("[cache]\nttl = \"{token}\"\n"),
            format!("http2 = \"{token}\"\n"),
            format!("ca_file = \"{token}.pem\"\n"),
            format!("[routes.{token}]\nenabled = true\n"),
            // The same name twice.
            format!(
                "[[clients]]\nname = \"{token}\"\nkey_sha256 = \"{0}\"\nscopes = []\n\
                 [[clients]]\nname = \"{token}\"\nkey_sha256 = \"{0}\"\nscopes = []\n",
                "0".repeat(64)
            ),
        ];
        for extra in &fields {
            let dir = tempfile::tempdir().unwrap();
            let config = write_config(dir.path(), &upstream, extra);
            write_private(&dir.path().join("joulo_token"), &format!("{token}\n")).unwrap();
            for command in [&["check"][..], &[]] {
                let out = Command::new(BIN)
                    .args(command)
                    .arg("--config")
                    .arg(&config)
                    .env("RUST_LOG", "trace")
                    .env_remove("CREDENTIALS_DIRECTORY")
                    .output()
                    .unwrap();
                let printed = format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
                assert_eq!(out.status.code(), Some(64), "{extra}: {printed}");
                assert!(!printed.contains(token.as_str()), "{extra}: {printed}");
                // (Issue 23: a token-shaped device name is refused by the
                // name rule itself, which quotes nothing.)
                assert!(
                    printed.contains("[REDACTED]")
                        || printed.contains("...")
                        || printed.contains("not start like a Joulo token"),
                    "{extra}: {printed}"
                );
            }
        }
        // A device key of the operator's own making (any shape: only its
        // hash is in the config) pasted into another field.
        let dir = tempfile::tempdir().unwrap();
        let key = format!("{}-key", &token[6..]);
        let config = write_config(
            dir.path(),
            &upstream,
            &format!(
                "[access]\nallow = [\"{key}\"]\n[[clients]]\nname = \"ha\"\n\
                 key_sha256 = \"{}\"\nscopes = [\"chargers:read\"]\n",
                joulo_gateway::key_sha256_hex(&key)
            ),
        );
        write_private(&dir.path().join("joulo_token"), &whole).unwrap();
        let out = Command::new(BIN)
            .args(["check", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{err}");
        assert!(err.contains("access.allow") && !err.contains(&key), "{err}");

        // Valid, and the token is the upstream's host: `check` passes, and
        // neither its warning about the host nor its summary shows it.
        let dir = tempfile::tempdir().unwrap();
        let config = write_config(dir.path(), &upstream, "");
        let text = std::fs::read_to_string(&config).unwrap();
        let base = upstream.base_url();
        let at_token = base.replace("localhost", &token.to_ascii_lowercase());
        std::fs::write(&config, text.replace(&base, &at_token)).unwrap();
        write_private(&dir.path().join("joulo_token"), &token.to_ascii_lowercase()).unwrap();
        let out = Command::new(BIN)
            .args(["check", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        let printed = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.status.code(), Some(0), "{printed}");
        assert!(printed.contains("[REDACTED]"), "{printed}");
        assert!(
            !printed
                .to_ascii_lowercase()
                .contains(&token.to_ascii_lowercase()),
            "{printed}"
        );
    }
}

/// Everything that can fail is checked before the port is bound: with the
/// port taken and the LAN key missing, the key is what is reported (exit 64),
/// not the port.
#[test]
fn a_missing_lan_key_is_reported_before_the_port_is_bound() {
    let upstream = MockUpstream::start();
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let config = write_config(dir.path(), &upstream, "");
    let ca = joulo_gateway::demo::DemoCa::generate(&["localhost"]).unwrap();
    std::fs::write(dir.path().join("gateway.crt"), &ca.leaf_cert_pem).unwrap();
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "listen = \"127.0.0.1:0\"\n",
        &format!(
            "listen = \"{}\"\ntls_cert = \"gateway.crt\"\ntls_key = \"gateway.key\"\n",
            taken.local_addr().unwrap()
        ),
    );
    std::fs::write(&config, text).unwrap();
    write_private(&dir.path().join("joulo_token"), &canary()).unwrap();
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(
        err.contains("gateway.key") && !err.contains("cannot listen"),
        "{err}"
    );
    drop(taken);
}
