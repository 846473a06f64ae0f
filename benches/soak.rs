//! The soak: the release gateway binary, as its own process, under mixed traffic
//! for a long time (default 30 minutes): Home Assistant-like polls, bursts, junk
//! requests, a token rotation every 3 minutes and an upstream failing 5 % of the
//! time. Samples the gateway's RSS every 10 s and fails if memory grows more than
//! 2 MB after warm-up, if any answer has an unexpected status, or if a secret
//! reaches the gateway's log.
//!
//! Run: `bench/soak` (or `cargo bench --bench soak -- SECONDS`)

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use joulo_gateway::demo::{self, API_PREFIX, DemoCa, JouloSim};
use secrecy::ExposeSecret;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// RSS samples before this are warm-up.
const WARM_UP: Duration = Duration::from_secs(120);
/// Allowed RSS growth after warm-up.
const MAX_GROWTH_KB: u64 = 2048;

/// Answers by request class and status.
type Tally = Arc<Mutex<BTreeMap<(&'static str, u16), u64>>>;

/// How long after a rotation Joulo may still be sent the old token: Joulo
/// invalidates it at once, and the gateway reads the new file within its 1 s
/// poll. Those 401s are the rotation, not a fault.
const ROTATION_WINDOW: Duration = Duration::from_secs(3);

/// When the token was last rotated.
static LAST_ROTATION: Mutex<Option<Instant>> = Mutex::new(None);

fn record(tally: &Tally, class: &'static str, status: u16) {
    let in_rotation = status == 401
        && LAST_ROTATION
            .lock()
            .unwrap()
            .is_some_and(|at| at.elapsed() < ROTATION_WINDOW);
    let class = if in_rotation { "rotation" } else { class };
    *tally.lock().unwrap().entry((class, status)).or_default() += 1;
}

/// Statuses each class of request may get. Anything else is a failure.
fn expected(class: &'static str, status: u16) -> bool {
    match class {
        // 500 is the simulated upstream failing with no copy to stand in; 429
        // the gateway keeping the budget.
        "poll" | "burst" | "paged" => matches!(status, 200 | 429 | 500),
        "junk" => matches!(status, 400 | 404 | 405 | 421 | 431 | 0),
        "ops" => status == 200,
        "rotation" => status == 401,
        _ => false,
    }
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

fn main() {
    let seconds: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .or_else(|| std::env::var("SOAK_SECONDS").ok()?.parse().ok())
        .unwrap_or(1800);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let ok = runtime.block_on(soak(Duration::from_secs(seconds)));
    std::process::exit(if ok { 0 } else { 1 });
}

async fn soak(duration: Duration) -> bool {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let binary = root.join("target/release/joulo-gateway");
    assert!(
        binary.exists(),
        "build the release binary first (bench/soak does)"
    );
    let dir = tempfile::tempdir().unwrap();

    // The simulated Joulo API, failing 5 % of calls with a 500.
    let ca = DemoCa::generate(&["localhost"]).unwrap();
    let mut tokens_used = vec![demo::generate_token()];
    let sim = JouloSim::new(tokens_used[0].clone());
    let upstream_calls = Arc::new(AtomicU64::new(0));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sim_addr = listener.local_addr().unwrap();
    tokio::spawn(demo::serve_tls(listener, ca.server_config.clone(), {
        let sim = sim.clone();
        let calls = upstream_calls.clone();
        move |request: Request<hyper::body::Incoming>| {
            let n = calls.fetch_add(1, Ordering::Relaxed);
            let response = if n % 20 == 7 {
                let mut r = Response::new(Full::new(Bytes::from_static(
                    br#"{"error":"Internal error"}"#,
                )));
                *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                r
            } else {
                sim.respond(&request)
            };
            async move { response }
        }
    }));

    let token_file = dir.path().join("joulo_token");
    demo::write_private(&token_file, tokens_used[0].expose_secret()).unwrap();
    demo::write_private(&dir.path().join("ca.pem"), &ca.ca_pem).unwrap();
    let config = dir.path().join("gateway.toml");
    // Every simulated device connects from 127.0.0.1, the bursts 100 at a time:
    // the per-address quota would refuse them as one device.
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nmax_connections_per_ip = 1024\n\
             [upstream]\nbase_url = \"https://localhost:{}{API_PREFIX}\"\ntoken_file = \"joulo_token\"\nca_file = \"ca.pem\"\n\
             [log]\nlevel = \"debug\"\n\
             [limits]\nupstream_per_minute = 600\nupstream_burst = 100\nclient_per_minute = 60000\nclient_burst = 1000\n\
             [routes.chargers]\nttl = \"15s\"\n[routes.sessions]\nttl = \"60s\"\n\
             [routes.energy]\nttl = \"10m\"\n[routes.ere_position]\nttl = \"10m\"\n",
            sim_addr.port()
        ),
    )
    .unwrap();
    let log_path = dir.path().join("gateway.log");
    let mut child = Command::new(&binary)
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let pid = child.id();
    let gateway = wait_for_address(&log_path).await;
    println!(
        "soak: gateway pid {pid} on {gateway}, {} s",
        duration.as_secs()
    );

    let tally: Tally = Arc::default();
    let canaries = Arc::new(Mutex::new(Vec::new()));
    let started = Instant::now();
    let end = started + duration;
    let mut tasks = Vec::new();

    // Home Assistant-like pollers: 8 devices x 4 routes, every 10-30 s.
    for device in 0..8u64 {
        for (i, route) in ["/chargers", "/sessions?limit=5", "/energy", "/ere-position"]
            .into_iter()
            .enumerate()
        {
            // Home Assistant's own intervals (15 s rest:, 30 s sensor:) and
            // between, offset so the devices do not poll in step.
            let every = Duration::from_millis(
                15_000 + ((device * 7 + i as u64 * 5) % 16) * 1_000 + device * 37,
            );
            let tally = tally.clone();
            tasks.push(tokio::spawn(async move {
                let client = http_client();
                while Instant::now() < end {
                    let status = get(&client, gateway, route).await;
                    record(&tally, "poll", status);
                    tokio::time::sleep(every).await;
                }
            }));
        }
    }
    // Paged history: many distinct keys, to exercise the cache's bound.
    {
        let tally = tally.clone();
        tasks.push(tokio::spawn(async move {
            let client = http_client();
            let mut n = 0u64;
            while Instant::now() < end {
                let target = format!("/sessions?limit={}&offset={}", 1 + n % 50, n % 997);
                record(&tally, "paged", get(&client, gateway, &target).await);
                n += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }));
    }
    // Bursts: 100 requests at once, every minute.
    {
        let tally = tally.clone();
        tasks.push(tokio::spawn(async move {
            while Instant::now() < end {
                let mut burst = Vec::new();
                for _ in 0..100 {
                    let tally = tally.clone();
                    burst.push(tokio::spawn(async move {
                        let status = get(&http_client(), gateway, "/chargers").await;
                        record(&tally, "burst", status);
                    }));
                }
                for b in burst {
                    let _ = b.await;
                }
                tokio::time::sleep(Duration::from_secs(60)).await;
            }
        }));
    }
    // Junk, and old configs leaking canary tokens in the query.
    {
        let tally = tally.clone();
        let canaries = canaries.clone();
        tasks.push(tokio::spawn(async move {
            let client = http_client();
            let junk: [&[u8]; 6] = [
                b"GET /chargers/../me HTTP/1.1\r\nHost: g\r\nConnection: close\r\n\r\n",
                b"DELETE /chargers HTTP/1.1\r\nHost: g\r\nConnection: close\r\n\r\n",
                b"GET /teleport HTTP/1.1\r\nHost: g\r\nConnection: close\r\n\r\n",
                b"GET /chargers HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n",
                b"\x16\x03\x01\x00garbage that is not HTTP\r\n\r\n",
                b"GET /%2e%2e/energy HTTP/1.1\r\nHost: g\r\nConnection: close\r\n\r\n",
            ];
            let mut n = 0usize;
            while Instant::now() < end {
                let status = raw(gateway, junk[n % junk.len()]).await;
                record(&tally, "junk", status);
                if n % 10 == 0 {
                    let canary = demo::generate_token().expose_secret().to_owned();
                    let status = get(&client, gateway, &format!("/chargers?token={canary}")).await;
                    record(&tally, "poll", status);
                    canaries.lock().unwrap().push(canary);
                }
                if n % 30 == 0 {
                    record(&tally, "ops", get(&client, gateway, "/metrics").await);
                }
                n += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }));
    }

    // Token rotation every 3 minutes, and RSS every 10 s.
    let mut samples: Vec<(Duration, u64)> = Vec::new();
    let mut next_rotation = started + Duration::from_secs(180);
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_secs(10)).await;
        samples.push((started.elapsed(), rss_kb(pid)));
        if Instant::now() >= next_rotation {
            let token = demo::generate_token();
            let staged = dir.path().join(".joulo_token.new");
            demo::write_private(&staged, token.expose_secret()).unwrap();
            std::fs::rename(&staged, &token_file).unwrap();
            sim.rotate_token(token.clone());
            *LAST_ROTATION.lock().unwrap() = Some(Instant::now());
            tokens_used.push(token);
            next_rotation += Duration::from_secs(180);
        }
    }
    for task in tasks {
        let _ = task.await;
    }
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let exit = child.wait().unwrap();

    // Report.
    let warm: Vec<&(Duration, u64)> = samples.iter().filter(|(t, _)| *t >= WARM_UP).collect();
    let base = warm.first().map_or(0, |s| s.1);
    let peak = warm.iter().map(|s| s.1).max().unwrap_or(0);
    let last = warm.last().map_or(0, |s| s.1);
    let growth = peak.saturating_sub(base);
    println!("\nRSS (KiB) every 10 s:");
    for chunk in samples.chunks(12) {
        let line: Vec<String> = chunk
            .iter()
            .map(|(t, kb)| format!("{}s:{kb}", t.as_secs()))
            .collect();
        println!("  {}", line.join(" "));
    }
    let tally = tally.lock().unwrap();
    let total: u64 = tally.values().sum();
    let unexpected: Vec<_> = tally
        .iter()
        .filter(|((c, s), _)| !expected(c, *s))
        .collect();
    println!("\nanswers by class and status: {tally:?}");
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    let mut secrets: Vec<String> = tokens_used
        .iter()
        .map(|t| t.expose_secret().to_owned())
        .collect();
    secrets.extend(canaries.lock().unwrap().iter().cloned());
    let leaked = secrets.iter().filter(|s| log.contains(s.as_str())).count();
    println!(
        "\n| soak | value |\n|---|---|\n| duration | {} s |\n| requests | {total} |\n| upstream calls | {} |\n| token rotations | {} |\n| RSS after warm-up ({} s) | {base} KiB |\n| RSS peak after warm-up | {peak} KiB |\n| RSS at the end | {last} KiB |\n| growth after warm-up | {growth} KiB |\n| unexpected statuses | {} |\n| secrets checked in the log | {} ({} found) |\n| log size | {} bytes |\n| exit status | {:?} |",
        duration.as_secs(),
        upstream_calls.load(Ordering::Relaxed),
        tokens_used.len() - 1,
        WARM_UP.as_secs(),
        unexpected.len(),
        secrets.len(),
        leaked,
        log.len(),
        exit.code(),
    );
    let ok = growth <= MAX_GROWTH_KB
        && unexpected.is_empty()
        && leaked == 0
        && exit.success()
        && total > 0;
    if !unexpected.is_empty() {
        println!("unexpected: {unexpected:?}");
    }
    println!("\nsoak {}", if ok { "PASSED" } else { "FAILED" });
    let _ = std::io::stdout().flush();
    ok
}

fn http_client() -> Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

async fn get(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>,
    gateway: SocketAddr,
    target: &str,
) -> u16 {
    let uri = format!("http://{gateway}{target}").parse().unwrap();
    match client.get(uri).await {
        Ok(response) => {
            let status = response.status().as_u16();
            let _ = response.into_body().collect().await;
            status
        }
        Err(_) => 0,
    }
}

/// Sends raw bytes and returns the status code read back (0 if none).
async fn raw(gateway: SocketAddr, bytes: &[u8]) -> u16 {
    let Ok(mut stream) = TcpStream::connect(gateway).await else {
        return 0;
    };
    let _ = stream.write_all(bytes).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(15), stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out)
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

async fn wait_for_address(log: &PathBuf) -> SocketAddr {
    for _ in 0..200 {
        if let Ok(text) = std::fs::read_to_string(log)
            && let Some(addr) = text.lines().find_map(|l| {
                l.split("addr=")
                    .nth(1)?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            })
        {
            return addr;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "the gateway did not start: {}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}
