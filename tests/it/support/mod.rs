//! Shared helpers for the integration tests: a recording TLS mock of the Joulo API
//! with a test CA, a gateway started through the library on `127.0.0.1:0`,
//! run-time canary tokens, and a trace-level log capture every test checks for leaks.
#![allow(dead_code)]

pub mod household;

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use joulo_gateway::AppState;
use joulo_gateway::Gateway;
use joulo_gateway::config::Config;
use joulo_gateway::demo::{self, DemoCa};
use secrecy::ExposeSecret;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, oneshot};

/// The path prefix the mock serves, as Joulo does.
pub const PREFIX: &str = "/functions/v1/api";

/// Every canary made in this test binary: none may ever appear in the logs.
static CANARIES: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// A fresh canary shaped like a real Joulo token, made at run time and
/// remembered, so every test's leak check looks for it.
pub fn canary() -> String {
    let canary = demo::generate_token().expose_secret().to_owned();
    CANARIES.lock().unwrap().push(canary.clone());
    canary
}

/// How far the leak checks have read the log capture. All the tests share one
/// binary and so one capture: reading it all at every check would cost its size
/// times the number of tests.
static CHECKED: Mutex<usize> = Mutex::new(0);

/// The leak check every gateway test gets when its gateway is dropped: no canary
/// made so far (tokens, keys, query values) is in the trace-level logs. It reads
/// what was logged since the last check (and a canary's length before, for one
/// written across that point): the log is read before the canaries, so a canary
/// made since was not yet made when the older part was written.
pub fn assert_no_canary_logged() {
    let mut checked = CHECKED.lock().unwrap_or_else(|e| e.into_inner());
    let (logs, end) = logs_from(*checked);
    let canaries = CANARIES.lock().unwrap().clone();
    for canary in &canaries {
        assert!(
            !logs.contains(canary.as_str()),
            "a canary appeared in the trace-level logs"
        );
    }
    let overlap = canaries.iter().map(String::len).max().unwrap_or(0);
    *checked = end.saturating_sub(overlap);
}

// ---------------------------------------------------------------------------
// Log capture

static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();

#[derive(Clone)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installs, once per test binary, a TRACE-level subscriber for every crate
/// (`log` records from rustls included) that writes to memory *without* the
/// gateway's redactor: a canary found there was logged by code, not caught late.
pub fn capture_logs() {
    LOGS.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let sink = Capture(buffer.clone());
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || sink.clone())
            .try_init()
            .expect("no other subscriber in the test binary");
        buffer
    });
}

/// Everything logged so far in this test binary.
pub fn logs() -> String {
    logs_from(0).0
}

/// What was logged from byte `start` on, and where the capture ends.
fn logs_from(start: usize) -> (String, usize) {
    let buffer = LOGS.get().expect("capture_logs() was called");
    let buffer = buffer.lock().unwrap();
    let text = String::from_utf8_lossy(&buffer[start.min(buffer.len())..]).into_owned();
    (text, buffer.len())
}

/// Fails the test if any secret appears in the captured logs or in `extra` texts.
pub fn assert_no_leak(secrets: &[&str], extra: &[&str]) {
    let logs = logs();
    assert!(!logs.is_empty(), "the log capture recorded nothing");
    for secret in secrets {
        assert!(!secret.is_empty());
        assert!(
            !logs.contains(secret),
            "a secret appeared in the trace-level logs"
        );
        for text in extra {
            assert!(!text.contains(secret), "a secret appeared in: {text}");
        }
    }
}

// ---------------------------------------------------------------------------
// Mock upstream

/// What the mock upstream received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: Method,
    /// Path and query, exactly as received.
    pub target: String,
    pub headers: HeaderMap,
    pub version: Version,
    /// Host header (HTTP/1.1) or :authority (HTTP/2).
    pub authority: Option<String>,
    pub body: Bytes,
}

/// How the mock upstream answers.
#[derive(Clone)]
pub enum Reply {
    /// 200 with a small JSON body naming the path.
    Ok,
    /// This status and body, as JSON.
    Status(u16, &'static str),
    /// 429, with this `Retry-After` if given.
    TooMany(Option<&'static str>),
    /// A 302 to this location.
    Redirect(&'static str),
    /// Never answer.
    Hang,
    /// Drop the request without an answer, as a crashed server would: the
    /// connection or stream is reset.
    Reset,
    /// Reset the first request (the flag not yet set), answer 200 after.
    ResetOnce(Arc<std::sync::atomic::AtomicBool>),
    /// Answer 200 once the test notifies.
    Gate(Arc<Notify>),
    /// Answer this status and JSON body once the test notifies.
    GateStatus(Arc<Notify>, u16, &'static str),
}

/// A TLS mock of the Joulo API on its own thread and runtime, so its own logs stay
/// out of the capture and the test's runtime settings do not affect it.
pub struct MockUpstream {
    pub addr: SocketAddr,
    /// The CA that signed the mock's certificate, PEM.
    pub ca_pem: String,
    received: Arc<Mutex<Vec<Recorded>>>,
    reply: Arc<Mutex<Reply>>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl MockUpstream {
    /// A mock whose certificate the gateway will trust (its CA goes in `ca_file`).
    pub fn start() -> MockUpstream {
        let ca = DemoCa::generate(&["localhost"]).unwrap();
        let ca_pem = ca.ca_pem.clone();
        MockUpstream::start_with(ca, ca_pem)
    }

    /// A mock presenting a certificate from `ca`, while reporting `ca_pem` as the
    /// CA to trust (a different CA makes the mock untrusted).
    pub fn start_with(ca: DemoCa, ca_pem: String) -> MockUpstream {
        let received = Arc::new(Mutex::new(Vec::new()));
        let reply = Arc::new(Mutex::new(Reply::Ok));
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop, stop_rx) = oneshot::channel::<()>();
        let thread = std::thread::spawn({
            let received = received.clone();
            let reply = reply.clone();
            move || {
                let _quiet =
                    tracing::subscriber::set_default(tracing::subscriber::NoSubscriber::default());
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                runtime.block_on(async move {
                    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
                    addr_tx.send(listener.local_addr().unwrap()).unwrap();
                    let handler = move |request: Request<hyper::body::Incoming>| {
                        let received = received.clone();
                        let reply = reply.lock().unwrap().clone();
                        async move { answer(request, received, reply).await }
                    };
                    tokio::select! {
                        () = demo::serve_tls(listener, ca.server_config.clone(), handler) => {}
                        _ = stop_rx => {}
                    }
                });
            }
        });
        MockUpstream {
            addr: addr_rx.recv().unwrap(),
            ca_pem,
            received,
            reply,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// The `base_url` that points the gateway here.
    pub fn base_url(&self) -> String {
        format!("https://localhost:{}{PREFIX}", self.addr.port())
    }

    pub fn set_reply(&self, reply: Reply) {
        *self.reply.lock().unwrap() = reply;
    }

    /// Every request received so far.
    pub fn received(&self) -> Vec<Recorded> {
        self.received.lock().unwrap().clone()
    }

    /// The last request received; panics if there was none.
    pub fn last(&self) -> Recorded {
        self.received()
            .pop()
            .expect("the upstream received a request")
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        // Not while unwinding: a second panic would abort and hide the first.
        if !std::thread::panicking() {
            assert_no_canary_logged();
        }
    }
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn answer(
    request: Request<hyper::body::Incoming>,
    received: Arc<Mutex<Vec<Recorded>>>,
    reply: Reply,
) -> Response<Full<Bytes>> {
    let (parts, body) = request.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let authority = parts.uri.authority().map(|a| a.to_string()).or_else(|| {
        parts
            .headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_owned)
    });
    let target = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    received.lock().unwrap().push(Recorded {
        method: parts.method.clone(),
        target: target.clone(),
        headers: parts.headers.clone(),
        version: parts.version,
        authority,
        body,
    });
    let json = |status: u16, body: String| {
        Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .header("set-cookie", "sb-session=upstream-only")
            .header("access-control-allow-origin", "*")
            .body(Full::new(Bytes::from(body)))
            .unwrap()
    };
    match reply {
        Reply::Ok => json(
            200,
            serde_json::json!({"ok": true, "target": target}).to_string(),
        ),
        Reply::Status(status, body) => json(status, body.to_owned()),
        Reply::TooMany(retry_after) => {
            let mut response = json(429, r#"{"error":"Too many requests"}"#.to_owned());
            if let Some(wait) = retry_after {
                response
                    .headers_mut()
                    .insert("retry-after", http::HeaderValue::from_static(wait));
            }
            response
        }
        Reply::Redirect(location) => Response::builder()
            .status(302)
            .header("location", location)
            .body(Full::new(Bytes::new()))
            .unwrap(),
        Reply::Hang => std::future::pending().await,
        // Unwinding without the panic hook: the connection task dies quietly.
        Reply::Reset => std::panic::resume_unwind(Box::new("mock upstream reset")),
        Reply::ResetOnce(done) => {
            if !done.swap(true, std::sync::atomic::Ordering::SeqCst) {
                std::panic::resume_unwind(Box::new("mock upstream reset"));
            }
            json(200, r#"{"ok": true, "after_reset": true}"#.to_owned())
        }
        Reply::Gate(notify) => {
            notify.notified().await;
            json(200, r#"{"ok": true, "gated": true}"#.to_owned())
        }
        Reply::GateStatus(notify, status, body) => {
            notify.notified().await;
            json(status, body.to_owned())
        }
    }
}

// ---------------------------------------------------------------------------
// Gateway under test

/// A gateway running in the test's runtime, configured against a mock upstream.
pub struct TestGateway {
    pub addr: SocketAddr,
    /// The token the gateway injects (a canary).
    pub token: String,
    pub token_file: PathBuf,
    pub dir: tempfile::TempDir,
    /// The gateway's shared state, to look at its cache and counters.
    pub state: Arc<AppState>,
    /// A device key holding every scope, sent with every request made through
    /// this helper, when the gateway was started with one
    /// ([`TestGateway::start_writer`]).
    pub key: Option<String>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestGateway {
    /// A gateway in front of `upstream` with the default settings.
    pub async fn start(upstream: &MockUpstream) -> TestGateway {
        TestGateway::start_on(upstream, "").await
    }

    /// A gateway in front of `upstream`, with `extra` TOML merged into its config
    /// (see [`TestGateway::start_with`]).
    pub async fn start_on(upstream: &MockUpstream, extra: &str) -> TestGateway {
        TestGateway::start_with(&upstream.base_url(), &upstream.ca_pem, extra).await
    }

    /// A gateway in front of `base_url`, trusting `ca_pem`, with `extra` TOML merged
    /// into the config: its tables into the same tables, arrays of tables (such as
    /// `[[clients]]`) at the top, and bare keys into `[upstream]`.
    pub async fn start_with(base_url: &str, ca_pem: &str, extra: &str) -> TestGateway {
        capture_logs();
        let dir = tempfile::tempdir().unwrap();
        let token = canary();
        let token_file = dir.path().join("joulo_token");
        demo::write_private(&token_file, &format!("{token}\n")).unwrap();
        demo::write_private(&dir.path().join("ca.pem"), ca_pem).unwrap();
        let base = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nshutdown_grace = \"5s\"\n\
             [upstream]\nbase_url = \"{base_url}\"\ntoken_file = \"joulo_token\"\n\
             ca_file = \"ca.pem\"\n"
        );
        let text = merge_toml(&base, extra);
        let config_path = dir.path().join("gateway.toml");
        std::fs::write(&config_path, text).unwrap();
        let config = Config::load(&config_path).unwrap();
        let gateway = Gateway::build(&config).unwrap();
        let state = gateway.state().clone();
        let listener = TcpListener::bind(config.server.listen).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stop_rx) = oneshot::channel::<()>();
        let task = tokio::spawn(gateway.serve(listener, async {
            let _ = stop_rx.await;
        }));
        TestGateway {
            addr,
            token,
            token_file,
            dir,
            state,
            key: None,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// A gateway whose account-changing routes may be enabled by `extra`:
    /// those need a device key with `chargers:write`, so it gets one device
    /// holding every scope, whose key every request through this helper
    /// carries (in `X-Gateway-Key`).
    pub async fn start_writer(upstream: &MockUpstream, extra: &str) -> TestGateway {
        let key = joulo_gateway::generate_key();
        CANARIES.lock().unwrap().push(key.clone());
        let clients = format!(
            "[[clients]]\nname = \"admin\"\nkey_sha256 = \"{}\"\n\
             scopes = [\"chargers:read\", \"chargers:write\", \"sessions:read\", \"energy:read\"]\n",
            joulo_gateway::key_sha256_hex(&key)
        );
        let mut gateway = TestGateway::start_on(upstream, &format!("{extra}\n{clients}")).await;
        gateway.key = Some(key);
        gateway
    }

    /// Sends a request and returns status, headers and body text.
    pub async fn send(
        &self,
        method: Method,
        target: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> (StatusCode, HeaderMap, String) {
        let mut headers = headers.to_vec();
        if let Some(key) = &self.key {
            headers.push(("x-gateway-key", key));
        }
        send(self.addr, method, target, &headers, body).await
    }

    /// A plain GET.
    pub async fn get(&self, target: &str) -> (StatusCode, HeaderMap, String) {
        self.send(Method::GET, target, &[], "").await
    }

    /// Writes raw bytes on a fresh connection and returns everything read back
    /// until the gateway closes it (`Connection: close` should be in `raw`).
    pub async fn raw(&self, raw: &[u8]) -> String {
        let mut stream = TcpStream::connect(self.addr).await.unwrap();
        // The device key goes in right after the request line.
        let keyed;
        let raw = match (&self.key, raw.windows(2).position(|w| w == b"\r\n")) {
            (Some(key), Some(end)) => {
                keyed = [
                    &raw[..end + 2],
                    format!("X-Gateway-Key: {key}\r\n").as_bytes(),
                    &raw[end + 2..],
                ]
                .concat();
                &keyed[..]
            }
            _ => raw,
        };
        stream.write_all(raw).await.unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out)).await;
        String::from_utf8_lossy(&out).into_owned()
    }

    /// Replaces the token file atomically (write beside, then rename), as Docker
    /// and Kubernetes secret updates do. Returns the new token.
    pub fn rotate_token(&self) -> String {
        let token = canary();
        let staged = self.dir.path().join(".joulo_token.new");
        demo::write_private(&staged, &token).unwrap();
        std::fs::rename(&staged, &self.token_file).unwrap();
        token
    }

    /// Asks the gateway to stop and waits for it to finish draining.
    pub async fn shutdown(mut self) {
        self.stop.take().unwrap().send(()).unwrap();
        self.task.take().unwrap().await.unwrap();
    }

    /// Signals shutdown without waiting; returns the task to await.
    pub fn begin_shutdown(&mut self) -> tokio::task::JoinHandle<()> {
        self.stop.take().unwrap().send(()).unwrap();
        self.task.take().unwrap()
    }
}

fn merge_toml(base: &str, extra: &str) -> String {
    let mut merged: toml::Table = base.parse().unwrap();
    let extra: toml::Table = extra.parse().expect("extra TOML parses");
    for (key, value) in extra {
        match value {
            toml::Value::Table(table) => {
                let target = merged
                    .entry(key)
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()));
                let target = target.as_table_mut().expect("a table");
                target.extend(table);
            }
            toml::Value::Array(array) => {
                merged.insert(key, toml::Value::Array(array));
            }
            scalar => {
                merged["upstream"]
                    .as_table_mut()
                    .expect("[upstream]")
                    .insert(key, scalar);
            }
        }
    }
    merged.to_string()
}

/// Sends one HTTP/1.1 request to `addr` and returns status, headers and body text.
pub async fn send(
    addr: SocketAddr,
    method: Method,
    target: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (StatusCode, HeaderMap, String) {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut request = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{target}"));
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let request = request
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap();
    let response = client.request(request).await.expect("the gateway answers");
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

/// A connection to `gateway` from the loopback address `source`: on Linux every
/// 127.x.y.z is this machine, so a test can play several devices.
pub async fn connect_from(source: &str, gateway: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(source.parse().unwrap(), 0))
        .unwrap();
    socket.connect(gateway).await.unwrap()
}

/// Sends `GET target` to `addr` from the loopback address `source`, as a
/// separate device on the LAN would, on a fresh connection. Returns the status
/// and the body.
pub async fn get_from(source: &str, addr: SocketAddr, target: &str) -> (u16, String) {
    let mut stream = connect_from(source, addr).await;
    let request =
        format!("GET {target} HTTP/1.1\r\nHost: gateway.lan\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, b)| b.to_owned());
    (status, body)
}

/// Moves the test runtime's clock (and so the gateway's cache ages and rate
/// limits) forward by `by` at once, then lets it run on in real time.
pub async fn jump_clock(by: Duration) {
    tokio::time::pause();
    tokio::time::advance(by).await;
    tokio::time::resume();
}

/// How long a test waits for the gateway to notice a changed token or
/// certificate file. On Linux the gateway is told of a change by inotify; where
/// that is unavailable it polls every `token_poll_interval` (a second by default).
/// Either way a change is normally seen within about a second; a loaded CI
/// machine can delay the blocking file check well beyond that, and a passing
/// test returns as soon as the change is seen, so the bound is generous.
pub const FILE_WATCH_LIMIT: Duration = Duration::from_secs(10);

/// Polls `condition` every 50 ms until it holds or `limit` passes; returns whether
/// it held. For events driven by the real file system (token rotation).
pub async fn eventually<F, Fut>(limit: Duration, mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if condition().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Parses a JSON body, failing the test with the text if it is not JSON.
pub fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// A TLS acceptor presenting `ca`'s server certificate and offering only
/// `alpn`: for the hand-written upstreams that speak one protocol.
pub fn tls_acceptor(ca: &DemoCa, alpn: &[u8]) -> tokio_rustls::TlsAcceptor {
    let mut config = (*ca.server_config).clone();
    config.alpn_protocols = vec![alpn.to_vec()];
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

/// `ca`'s server certificate and key, written for `[server] tls_cert` and
/// `tls_key` to name.
pub struct LanCert {
    /// Holds the files; removed when dropped.
    pub dir: tempfile::TempDir,
    /// The certificate chain file.
    pub cert: PathBuf,
    /// The private key file.
    pub key: PathBuf,
}

impl LanCert {
    /// Writes `ca`'s leaf certificate and key, private, into a new folder.
    pub fn write(ca: &DemoCa) -> LanCert {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("gateway.crt");
        let key = dir.path().join("gateway.key");
        demo::write_private(&cert, &ca.leaf_cert_pem).unwrap();
        demo::write_private(&key, &ca.leaf_key_pem).unwrap();
        LanCert { dir, cert, key }
    }

    /// The `[server]` lines naming the two files.
    pub fn server_lines(&self) -> String {
        format!(
            "tls_cert = \"{}\"\ntls_key = \"{}\"\n",
            self.cert.display(),
            self.key.display()
        )
    }
}

/// Whether CI runs the tests (`JOULO_GATEWAY_CI=1`, set by `.ci/run`): a
/// tool a test needs (mosquitto, the Home Assistant venv) is then required.
pub fn ci_requires_tools() -> bool {
    std::env::var_os("JOULO_GATEWAY_CI").is_some_and(|v| v == "1")
}

/// The Python of the Home Assistant venv `.ci/run` makes under
/// `target/ci-tools/homeassistant`, if it is there; outside CI a missing
/// venv skips the test that needs it (with a note), under CI it fails it.
pub fn ha_python() -> Option<PathBuf> {
    let python = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/ci-tools/homeassistant/bin/python");
    if python.exists() {
        return Some(python);
    }
    assert!(
        !ci_requires_tools(),
        "the Home Assistant venv is missing (.ci/run makes it under target/ci-tools/homeassistant)"
    );
    eprintln!(
        "no Home Assistant venv at {}: check skipped",
        python.display()
    );
    None
}

/// Runs `script` (under `tests/it/support`) with `python`, `input` on its
/// stdin: whether it succeeded, and what it printed.
pub fn run_python(python: &std::path::Path, script: &str, input: &str) -> (bool, String) {
    use std::process::{Command, Stdio};
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/it/support")
        .join(script);
    let mut child = Command::new(python)
        .arg(script)
        .env("TZ", "UTC")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let mut report = String::from_utf8_lossy(&out.stdout).into_owned();
    report.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), report)
}

/// A device polling `/chargers` with `key` every 10 ms on one keep-alive
/// connection, until stopped: what a reload or a key change must not
/// disturb.
pub struct KeepAlivePoller {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<Vec<u16>>,
}

impl KeepAlivePoller {
    pub fn start(addr: SocketAddr, key: &str) -> KeepAlivePoller {
        let client: Client<_, http_body_util::Empty<Bytes>> = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(1)
            .build_http();
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let key = key.to_owned();
        let task = tokio::spawn(async move {
            let mut statuses = Vec::new();
            while !*stopped.borrow_and_update() {
                let request = http::Request::get(format!("http://{addr}/chargers"))
                    .header("x-gateway-key", &key)
                    .body(http_body_util::Empty::new())
                    .unwrap();
                let response = client.request(request).await.unwrap();
                statuses.push(response.status().as_u16());
                let _ = response.into_body().collect().await;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            statuses
        });
        KeepAlivePoller { stop, task }
    }

    /// Stops polling; every status it got, in order.
    pub async fn stop(self) -> Vec<u16> {
        self.stop.send(true).unwrap();
        self.task.await.unwrap()
    }
}
