//! A simulated household: several devices polling the gateway's GET routes for
//! minutes of tokio's paused (simulated) time, against the built-in simulated
//! Joulo API, all on loopback in one runtime. Shared by the household benchmark
//! and the test that holds the gateway to its goal.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use joulo_gateway::Gateway;
use joulo_gateway::RouteId;
use joulo_gateway::config::Config;
use joulo_gateway::demo::{self, API_PREFIX, DemoCa, JouloSim};
use tokio::net::TcpListener;
use tokio::time::Instant;

/// The four routes Home Assistant setups poll.
pub const POLLED: [RouteId; 4] = [
    RouteId::Chargers,
    RouteId::Sessions,
    RouteId::Energy,
    RouteId::ErePosition,
];

/// Who polls, and for how long.
pub struct Household {
    /// Devices, each with its own loopback address (127.0.0.2, .3, ...).
    pub devices: usize,
    /// Simulated time.
    pub duration: Duration,
    /// Shortest and longest poll interval per device and route.
    pub interval: (Duration, Duration),
    /// Whether the last device misbehaves: instead of polling, it loops over
    /// distinct `/sessions?offset=N` pages, ten a second, each a cache miss.
    pub greedy: bool,
}

/// What happened.
#[derive(Debug, Default)]
pub struct Report {
    /// Requests the devices made.
    pub client_requests: u64,
    /// Requests that reached the (simulated) Joulo API.
    pub upstream_calls: u64,
    /// Upstream calls per route, with the route's ttl.
    pub per_route: Vec<(RouteId, u64, Duration)>,
    /// Answers by status.
    pub statuses: BTreeMap<u16, u64>,
    /// Answers by `X-Cache`.
    pub cache: BTreeMap<String, u64>,
    /// The misbehaving device's requests, and its answers by status (not
    /// counted above).
    pub greedy_requests: u64,
    pub greedy_statuses: BTreeMap<u16, u64>,
    /// Simulated time from the first poll to the misbehaving device's last
    /// answer: longer than the run when its requests queue.
    pub greedy_elapsed: Duration,
}

impl Report {
    /// The least number of upstream calls that can keep every route fresh for
    /// `duration`: one per TTL window (a window started by the first poll).
    pub fn ideal_calls(&self, duration: Duration) -> u64 {
        self.per_route
            .iter()
            .map(|(_, _, ttl)| duration.as_secs().div_ceil(ttl.as_secs().max(1)))
            .sum()
    }
}

/// A small deterministic generator, so every run polls the same way.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Runs the household with the shipped `gateway.toml`'s limits and TTLs. Must run
/// on a current-thread runtime with a paused clock.
pub async fn simulate(shipped_config: &Path, household: &Household) -> Report {
    let dir = tempfile::tempdir().unwrap();
    let token = demo::generate_token();
    // An IP literal: no DNS lookup on a blocking thread while the clock is paused.
    let ca = DemoCa::generate(&["127.0.0.1"]).unwrap();
    let sim = JouloSim::new(token.clone());
    let sim_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sim_addr = sim_listener.local_addr().unwrap();
    let sim_task = tokio::spawn(demo::serve_tls(sim_listener, ca.server_config.clone(), {
        let sim = sim.clone();
        move |request: http::Request<hyper::body::Incoming>| {
            let response = sim.respond(&request);
            async move { response }
        }
    }));

    let mut config = Config::load(shipped_config).unwrap();
    config.server.listen = "127.0.0.1:0".parse().unwrap();
    config.upstream.base_url = format!("https://127.0.0.1:{}{API_PREFIX}", sim_addr.port())
        .parse()
        .unwrap();
    config.upstream.extra_roots = vec![ca.ca_der.clone()];
    config.upstream.token_file = dir.path().join("joulo_token");
    config.upstream.token_poll_interval = Duration::from_secs(3600);
    // HTTP/2 to the simulated API: over HTTP/1.1 every call to the in-process
    // simulation stalls under tokio's paused clock until its deadline (so too
    // with hyper-util's generic client, so not the gateway's connections);
    // HTTP/1.1 is covered in real time by tests/it/gateway.rs and tests/it/faults.rs.
    config.upstream.http2 = joulo_gateway::config::Http2::Auto;
    {
        use secrecy::ExposeSecret;
        demo::write_private(&config.upstream.token_file, token.expose_secret()).unwrap();
    }
    let gateway = Gateway::build(&config).unwrap();
    let listener = TcpListener::bind(config.server.listen).await.unwrap();
    let gateway_addr = listener.local_addr().unwrap();
    let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let gateway = tokio::spawn(gateway.serve(listener, async {
        let _ = stop_rx.await;
    }));

    let start = Instant::now();
    let end = start + household.duration;
    let mut rng = Lcg(0x5eed);
    let mut pollers = Vec::new();
    let mut greedy = None;
    for device in 0..household.devices {
        let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + device as u8));
        let mut connector = HttpConnector::new();
        connector.set_local_address(Some(ip));
        let client: Client<_, Empty<Bytes>> =
            Client::builder(TokioExecutor::new()).build(connector);
        if household.greedy && device + 1 == household.devices {
            greedy = Some(tokio::spawn(page_through(client, gateway_addr, start, end)));
            continue;
        }
        for route in POLLED {
            let (low, high) = household.interval;
            let every = low + (high - low).mul_f64(rng.next());
            let first = every.mul_f64(rng.next());
            let client = client.clone();
            pollers.push(tokio::spawn(poll(
                client,
                gateway_addr,
                route,
                start + first,
                every,
                end,
            )));
        }
    }
    let mut report = Report::default();
    for poller in pollers {
        for (status, cache) in poller.await.unwrap() {
            report.client_requests += 1;
            *report.statuses.entry(status).or_default() += 1;
            *report.cache.entry(cache).or_default() += 1;
        }
    }
    if let Some(greedy) = greedy {
        let (statuses, finished) = greedy.await.unwrap();
        report.greedy_elapsed = finished - start;
        for status in statuses {
            report.greedy_requests += 1;
            *report.greedy_statuses.entry(status).or_default() += 1;
        }
    }
    report.upstream_calls = sim.stats.requests.load(Ordering::Relaxed);
    let by_path = sim.stats.by_path.lock().unwrap().clone();
    report.per_route = POLLED
        .iter()
        .map(|&r| {
            let calls = by_path.get(r.path()).copied().unwrap_or(0);
            (r, calls, config.cache.ttl_for(r))
        })
        .collect();
    let _ = stop.send(());
    gateway.await.unwrap();
    sim_task.abort();
    report
}

async fn poll(
    client: Client<HttpConnector, Empty<Bytes>>,
    gateway: SocketAddr,
    route: RouteId,
    first: Instant,
    every: Duration,
    end: Instant,
) -> Vec<(u16, String)> {
    let uri: http::Uri = format!("http://{gateway}{}", route.path()).parse().unwrap();
    let mut results = Vec::new();
    let mut next = first;
    while next < end {
        tokio::time::sleep_until(next).await;
        let response = client.get(uri.clone()).await.unwrap();
        let status = response.status().as_u16();
        let cache = response
            .headers()
            .get("x-cache")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_owned();
        let _ = response.into_body().collect().await;
        results.push((status, cache));
        next += every;
    }
    results
}

/// The misbehaving device: a distinct page every 100 ms until `end`.
async fn page_through(
    client: Client<HttpConnector, Empty<Bytes>>,
    gateway: SocketAddr,
    start: Instant,
    end: Instant,
) -> (Vec<u16>, Instant) {
    let mut statuses = Vec::new();
    let mut next = start;
    let mut offset = 0u64;
    while next < end {
        tokio::time::sleep_until(next).await;
        let uri: http::Uri = format!("http://{gateway}/sessions?limit=1&offset={offset}")
            .parse()
            .unwrap();
        let response = client.get(uri).await.unwrap();
        statuses.push(response.status().as_u16());
        let _ = response.into_body().collect().await;
        offset += 1;
        next += Duration::from_millis(100);
    }
    (statuses, Instant::now())
}
