//! Running as an appliance: abuse limits (slowloris, silent connections, 431,
//! 413, idle, connection and per-address limits, refusals at accept), health,
//! readiness and metrics.

use crate::support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use support::{MockUpstream, Reply, TestGateway, assert_no_leak, connect_from, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads until the gateway closes the connection; `None` if it stays open past `limit`.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    tokio::time::timeout(limit, stream.read_to_end(&mut out))
        .await
        .ok()
        .map(|_| out)
}

/// A GET of `path` from `source` on a fresh connection; the whole answer.
async fn get_from(source: &str, gateway: SocketAddr, path: &str) -> String {
    let mut stream = connect_from(source, gateway).await;
    let request = format!("GET {path} HTTP/1.1\r\nHost: gateway.lan\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn silent_refused_connections_and_a_full_per_address_quota_keep_no_device_waiting() {
    let upstream = MockUpstream::start();
    // Three slots: were refused connections to take one, the allowed device
    // below would wait for the 30 s header timeout.
    let gateway = TestGateway::start_on(
        &upstream,
        "[server]\nmax_connections = 3\nmax_connections_per_ip = 2\nheader_timeout = \"30s\"\n\
         [access]\nallow = [\"127.0.0.2/32\", \"127.0.0.3/32\"]\n",
    )
    .await;
    // Four connections from an address outside the allowlist, saying nothing:
    // each is answered 403 at once, before any request.
    let mut refused = Vec::new();
    for _ in 0..4 {
        refused.push(connect_from("127.0.0.9", gateway.addr).await);
    }
    for stream in &mut refused {
        let answer = closed_within(stream, Duration::from_secs(3))
            .await
            .expect("a refused connection is answered and closed at once");
        let answer = String::from_utf8(answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        let head = head.to_ascii_lowercase();
        for line in [
            "content-type: application/json",
            "cache-control: no-store",
            "connection: close",
        ] {
            assert!(head.contains(line), "{line} in {head}");
        }
        assert_eq!(
            json(body),
            serde_json::json!({
                "error": "Forbidden: this address may not use the gateway (see [access] allow)"
            })
        );
    }

    // Two silent connections fill 127.0.0.2's quota and two of the three
    // slots; its third is answered 429 at once and takes no slot.
    let held = [
        connect_from("127.0.0.2", gateway.addr).await,
        connect_from("127.0.0.2", gateway.addr).await,
    ];
    let mut third = connect_from("127.0.0.2", gateway.addr).await;
    let answer = closed_within(&mut third, Duration::from_secs(3))
        .await
        .expect("the connection past the quota is answered and closed at once");
    let answer = String::from_utf8(answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
    assert_eq!(
        json(answer.split_once("\r\n\r\n").unwrap().1),
        serde_json::json!({
            "error": "Too many connections from this address (server.max_connections_per_ip)"
        })
    );

    // Another device is served at once, with the refused sockets still open.
    let answer = tokio::time::timeout(
        Duration::from_secs(5),
        get_from("127.0.0.3", gateway.addr, "/chargers"),
    )
    .await
    .expect("the allowed device was served promptly");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(upstream.received().len(), 1);

    // When 127.0.0.2's connections end, its quota is given back.
    drop(held);
    let served = support::eventually(Duration::from_secs(5), || async {
        get_from("127.0.0.2", gateway.addr, "/healthz")
            .await
            .starts_with("HTTP/1.1 200")
    })
    .await;
    assert!(served, "the quota was given back");
    drop(refused);
}

#[tokio::test]
async fn connections_without_a_request_head_go_at_header_timeout_from_accept() {
    let upstream = MockUpstream::start();
    let gateway = TestGateway::start_on(&upstream, "[server]\nheader_timeout = \"1s\"\n").await;
    // Neither reaches hyper's own header timer: one says nothing, the other
    // stops inside the HTTP/2 preface, during protocol detection.
    let mut silent = TcpStream::connect(gateway.addr).await.unwrap();
    let mut half_preface = TcpStream::connect(gateway.addr).await.unwrap();
    half_preface.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    for (name, stream) in [("silent", &mut silent), ("half preface", &mut half_preface)] {
        let out = closed_within(stream, Duration::from_secs(3)).await;
        assert_eq!(out.as_deref(), Some(&b""[..]), "{name}: closed, unanswered");
    }

    // A connection whose first request came in time stays open past the
    // deadline: requests every 600 ms, each within hyper's own header timer.
    let stream = TcpStream::connect(gateway.addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    let connection = tokio::spawn(connection);
    for i in 0..4 {
        let request = Request::get("/healthz")
            .header("host", "gateway.lan")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let response = sender
            .send_request(request)
            .await
            .unwrap_or_else(|e| panic!("request {i} on the kept connection: {e}"));
        assert_eq!(response.status(), StatusCode::OK);
        response.into_body().collect().await.unwrap();
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
    drop(sender);
    let _ = connection.await;
}

#[tokio::test]
async fn slowloris_connections_are_cut_at_header_timeout_and_others_are_served() {
    let upstream = MockUpstream::start();
    // All from 127.0.0.1, as the request that must still be served: a quota
    // above the 200 lets them all reach the header timer.
    let gateway = TestGateway::start_on(
        &upstream,
        "[server]\nheader_timeout = \"500ms\"\nmax_connections_per_ip = 256\n",
    )
    .await;
    let mut half_sent = Vec::new();
    for _ in 0..200 {
        let mut stream = TcpStream::connect(gateway.addr).await.unwrap();
        stream
            .write_all(b"GET /chargers HTTP/1.1\r\nHost: gateway.lan\r\nX-Slow: ")
            .await
            .unwrap();
        half_sent.push(stream);
    }
    // A normal request is answered while the 200 hang.
    let (status, _, _) = gateway.get("/chargers").await;
    assert_eq!(status, StatusCode::OK);

    let mut cut = 0;
    for mut stream in half_sent {
        if closed_within(&mut stream, Duration::from_secs(5))
            .await
            .is_some()
        {
            cut += 1;
        }
    }
    assert_eq!(cut, 200, "every half-sent request was closed");
    assert_eq!(upstream.received().len(), 1);
}

#[tokio::test]
async fn oversized_heads_get_431_and_bodies_413() {
    let upstream = MockUpstream::start();
    let gateway = TestGateway::start_writer(&upstream,
        "[server]\nmax_header_size = \"4KiB\"\nmax_request_body = \"1KiB\"\n[routes.add_charger]\nenabled = true\n",
    )
    .await;
    let big = "x".repeat(6000);
    let (status, headers, body) = gateway
        .send(Method::GET, "/chargers", &[("x-filler", &big)], "")
        .await;
    assert_eq!(status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    assert_eq!(headers["content-type"], "application/json");
    assert!(json(&body)["error"].as_str().unwrap().contains("4096"));
    // Far past the limit hyper itself refuses the head, still with 431.
    let huge = "x".repeat(64 * 1024);
    let response = gateway
        .raw(format!("GET /chargers HTTP/1.1\r\nHost: g\r\nX-Filler: {huge}\r\n\r\n").as_bytes())
        .await;
    assert!(
        response.starts_with("HTTP/1.1 431"),
        "{}",
        &response[..response.len().min(80)]
    );

    let payload = format!(
        r#"{{"nickname":"{}","connection_type":"ocpp"}}"#,
        "n".repeat(2000)
    );
    let (status, _, body) = gateway
        .send(
            Method::POST,
            "/chargers",
            &[("content-type", "application/json")],
            &payload,
        )
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(json(&body)["error"].as_str().unwrap().contains("1024"));
    // Chunked, with no Content-Length to refuse up front: cut while reading.
    let chunk = "a".repeat(1500);
    let raw = format!(
        "POST /chargers HTTP/1.1\r\nHost: g\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{chunk}\r\n0\r\n\r\n",
        chunk.len()
    );
    let response = gateway.raw(raw.as_bytes()).await;
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    assert!(upstream.received().is_empty());

    // Within the limit the body goes through, re-framed by its length.
    let small = r#"{"nickname":"Garage","connection_type":"ocpp"}"#;
    let raw = format!(
        "POST /chargers HTTP/1.1\r\nHost: g\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{small}\r\n0\r\n\r\n",
        small.len()
    );
    let response = gateway.raw(raw.as_bytes()).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let got = upstream.last();
    assert_eq!(got.body, small.as_bytes());
    assert!(got.headers.get("transfer-encoding").is_none());
}

#[tokio::test]
async fn idle_keep_alive_connections_are_closed() {
    let upstream = MockUpstream::start();
    let gateway = TestGateway::start_on(&upstream, "[server]\nidle_timeout = \"300ms\"\n").await;
    let mut stream = TcpStream::connect(gateway.addr).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: gateway.lan\r\n\r\n")
        .await
        .unwrap();
    let out = closed_within(&mut stream, Duration::from_secs(5)).await;
    let out = String::from_utf8(out.expect("the idle connection was closed")).unwrap();
    assert!(
        out.starts_with("HTTP/1.1 200"),
        "the request itself was answered: {out}"
    );
}

#[tokio::test]
async fn past_the_limit_a_newcomer_is_served_at_once_and_the_busy_connection_finishes_its_request()
{
    let upstream = MockUpstream::start();
    let gateway = TestGateway::start_on(
        &upstream,
        "[server]\nmax_connections = 1\n[cache]\nttl = \"0s\"\n",
    )
    .await;
    // The only slot: a connection whose request waits on Joulo.
    let gate = Arc::new(tokio::sync::Notify::new());
    upstream.set_reply(Reply::Gate(gate.clone()));
    let mut first = TcpStream::connect(gateway.addr).await.unwrap();
    first
        .write_all(b"GET /chargers HTTP/1.1\r\nHost: gateway.lan\r\n\r\n")
        .await
        .unwrap();
    while upstream.received().is_empty() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // A newcomer never waits for the slot (a held connection could otherwise
    // keep it waiting for ever): it is served while the busy one makes room.
    let (status, _, _) = tokio::time::timeout(
        Duration::from_secs(5),
        support::send(gateway.addr, Method::GET, "/healthz", &[], ""),
    )
    .await
    .expect("served while the only slot was busy");
    assert_eq!(status, StatusCode::OK);
    // The busy connection was asked to finish: its answer still comes whole,
    // then it closes.
    gate.notify_one();
    let answer = closed_within(&mut first, Duration::from_secs(5))
        .await
        .expect("closed after its answer");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("\"gated\": true}"), "{answer}");
}

#[tokio::test]
async fn health_and_readiness_follow_the_token() {
    let upstream = MockUpstream::start();
    let key = joulo_gateway::generate_key();
    let gateway = TestGateway::start_on(&upstream,
        &format!(
            "[cache]\nttl = \"0s\"\n[[clients]]\nname = \"ha\"\nkey_sha256 = \"{}\"\nscopes = [\"chargers:read\"]\n",
            joulo_gateway::key_sha256_hex(&key)
        ),
    )
    .await;
    // No device key needed for the gateway's own endpoints.
    assert_eq!(gateway.get("/healthz").await.0, StatusCode::OK);
    let (status, _, body) = gateway.get("/readyz").await;
    assert_eq!(
        (status, json(&body)["status"].as_str()),
        (StatusCode::OK, Some("ready"))
    );
    assert_eq!(gateway.get("/chargers").await.0, StatusCode::UNAUTHORIZED);

    std::fs::remove_file(&gateway.token_file).unwrap();
    let down = support::eventually(support::FILE_WATCH_LIMIT, || async {
        gateway.get("/readyz").await.0 == StatusCode::SERVICE_UNAVAILABLE
    })
    .await;
    assert!(down, "readiness drops when the token file goes");
    let (_, _, body) = gateway.get("/readyz").await;
    assert!(json(&body)["error"].as_str().unwrap().contains("token"));
    assert_eq!(
        gateway.get("/healthz").await.0,
        StatusCode::OK,
        "still alive"
    );

    let _token = gateway.rotate_token();
    let up = support::eventually(support::FILE_WATCH_LIMIT, || async {
        gateway.get("/readyz").await.0 == StatusCode::OK
    })
    .await;
    assert!(up, "and comes back with it");

    upstream.set_reply(Reply::Status(
        401,
        r#"{"error":"Missing or invalid API token"}"#,
    ));
    let bearer = format!("Bearer {key}");
    let (status, _, _) = gateway
        .send(Method::GET, "/chargers", &[("authorization", &bearer)], "")
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _, body) = gateway.get("/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(json(&body)["error"].as_str().unwrap().contains("rejected"));
}

#[tokio::test]
async fn metrics_count_requests_calls_cache_and_limits_without_secrets() {
    let upstream = MockUpstream::start();
    let key = joulo_gateway::generate_key();
    let quiet = joulo_gateway::generate_key();
    let gateway = TestGateway::start_on(
        &upstream,
        &format!(
            "[limits]\nclient_burst = 5\nclient_per_minute = 60\nqueue_timeout = \"0s\"\n\
             [ops]\nallow = [\"127.0.0.1\"]\n\
             [[clients]]\nname = \"homeassistant\"\nkey_sha256 = \"{}\"\nscopes = [\"chargers:read\"]\n\
             [[clients]]\nname = \"meter\"\nkey_sha256 = \"{}\"\nscopes = [\"energy:read\"]\n",
            joulo_gateway::key_sha256_hex(&key),
            joulo_gateway::key_sha256_hex(&quiet),
        ),
    )
    .await;
    // Before any request: every series alerting needs is there, at zero.
    let (_, _, fresh) = gateway.get("/metrics").await;
    for line in [
        "joulo_gateway_rate_limited_total{limit=\"upstream_budget\"} 0",
        "joulo_gateway_rate_limited_total{limit=\"upstream_backoff\"} 0",
        "joulo_gateway_rate_limited_total{limit=\"client\"} 0",
        "joulo_gateway_rate_limited_total{limit=\"device_share\"} 0",
        "joulo_gateway_upstream_unauthorized_total 0",
        "joulo_gateway_device_requests_total{device=\"meter\"} 0",
        "joulo_gateway_token_loaded 1",
        "joulo_gateway_token_rejected 0",
        "joulo_gateway_upstream_budget_left 30",
        "joulo_gateway_upstream_backoff_seconds 0",
    ] {
        assert!(fresh.contains(line), "missing {line:?} in\n{fresh}");
    }
    let with_key = [("x-gateway-key", key.as_str())];
    let leaked = support::canary();
    gateway
        .send(
            Method::GET,
            &format!("/chargers?token={leaked}"),
            &with_key,
            "",
        )
        .await;
    gateway.send(Method::GET, "/chargers", &with_key, "").await;
    gateway.send(Method::GET, "/teleport", &with_key, "").await;
    for _ in 0..3 {
        gateway.send(Method::GET, "/chargers", &with_key, "").await;
    }
    let (status, headers, text) = gateway.get("/metrics").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        headers["content-type"], "text/plain; version=0.0.4; charset=utf-8",
        "Prometheus' own format unless OpenMetrics is asked for"
    );
    for line in [
        "# TYPE joulo_gateway_requests_total counter",
        "joulo_gateway_requests_total{route=\"chargers\",status=\"200\"} 4",
        "joulo_gateway_requests_total{route=\"none\",status=\"404\"} 1",
        "joulo_gateway_upstream_calls_total{route=\"chargers\",status=\"200\"} 1",
        "joulo_gateway_cache_hits_total 3",
        "joulo_gateway_cache_misses_total 1",
        "joulo_gateway_rate_limited_total{limit=\"client\"} 1",
        "joulo_gateway_token_reloads_ok_total 1",
        "joulo_gateway_upstream_latency_seconds_count{route=\"chargers\"} 1",
        "joulo_gateway_device_requests_total{device=\"homeassistant\"} 6",
        "joulo_gateway_device_upstream_calls_total{device=\"homeassistant\"} 1",
        "joulo_gateway_device_requests_total{device=\"meter\"} 0",
        "joulo_gateway_upstream_budget_used 1",
        "joulo_gateway_upstream_budget_left 29",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
    assert!(!text.contains("# EOF") && !text.contains("_created"));
    assert_no_leak(&[&gateway.token, &leaked, &key], &[&text]);
    assert!(!text.contains("token="), "no query values in labels");
    assert!(!text.contains("127.0.0.1"), "no client address in labels");

    // The tool operators check scrapes with, where it is installed (.ci/run
    // installs Debian's prometheus package for it).
    match std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    {
        Ok(mut promtool) => {
            use std::io::Write as _;
            promtool
                .stdin
                .take()
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap();
            let out = promtool.wait_with_output().unwrap();
            let said = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(
                out.status.success() && said.trim().is_empty(),
                "promtool: {said}\n{text}"
            );
        }
        Err(e) => eprintln!("promtool not installed ({e}): scrape format not checked by it"),
    }

    // OpenMetrics for a scraper that asks for it.
    let (_, headers, om) = gateway
        .send(
            Method::GET,
            "/metrics",
            &[(
                "accept",
                "application/openmetrics-text;version=1.0.0,text/plain;q=0.5",
            )],
            "",
        )
        .await;
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    assert!(om.ends_with("# EOF\n"));
}

#[tokio::test]
async fn ops_endpoints_obey_the_allowlist_and_are_never_forwarded() {
    let upstream = MockUpstream::start();
    let gateway = TestGateway::start_on(&upstream, "[access]\nallow = [\"10.0.0.0/8\"]\n").await;
    for path in ["/healthz", "/readyz", "/metrics", "/status"] {
        assert_eq!(gateway.get(path).await.0, StatusCode::FORBIDDEN, "{path}");
    }
    let open = MockUpstream::start();
    let gateway = TestGateway::start(&open).await;
    for path in ["/healthz", "/readyz", "/metrics", "/status"] {
        assert_eq!(gateway.get(path).await.0, StatusCode::OK, "{path}");
        assert_eq!(
            gateway.send(Method::POST, path, &[], "").await.0,
            StatusCode::METHOD_NOT_ALLOWED
        );
    }
    assert!(upstream.received().is_empty() && open.received().is_empty());
}

#[tokio::test]
async fn status_shows_the_household_what_the_gateway_knows_and_no_secret() {
    let upstream = MockUpstream::start();
    let key = joulo_gateway::generate_key();
    let gateway = TestGateway::start_on(
        &upstream,
        &format!(
            "timeout = \"300ms\"\n\
             [ops]\nallow = [\"127.0.0.1\"]\n\
             [[clients]]\nname = \"homeassistant\"\nkey_sha256 = \"{}\"\n\
             scopes = [\"chargers:read\", \"energy:read\"]\n",
            joulo_gateway::key_sha256_hex(&key)
        ),
    )
    .await;
    let with_key = [("x-gateway-key", key.as_str())];
    for _ in 0..3 {
        gateway.send(Method::GET, "/chargers", &with_key, "").await;
    }
    upstream.set_reply(Reply::Hang);
    let (status, _, _) = gateway.send(Method::GET, "/energy", &with_key, "").await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);

    // No key needed from an [ops] allow address, like /metrics.
    let (status, headers, body) = gateway.get("/status").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "application/json");
    let v = json(&body);
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert!(v["uptime_s"].is_u64());
    assert_eq!(v["ready"], true);
    assert_eq!(v["token"]["loaded"], true);
    assert_eq!(v["token"]["rejected"], false);
    assert!(v["token"]["file_age_s"].as_u64().unwrap() < 60);
    assert_eq!(v["budget"]["per_minute"], 30);
    assert_eq!(v["budget"]["used_this_minute"], 2);
    assert_eq!(v["budget"]["left_this_minute"], 28);
    assert_eq!(v["budget"]["backoff_s"], 0);
    assert_eq!(v["cache"]["entries"], 1);
    assert_eq!(v["cache"]["hits"], 2);
    assert_eq!(v["cache"]["misses"], 2);
    assert_eq!(v["cache"]["hit_ratio"], 0.5);
    assert_eq!(v["last_upstream_error"]["error"], "Upstream timed out");
    assert!(
        v["last_upstream_error"]["at"]
            .as_str()
            .unwrap()
            .ends_with('Z')
    );
    assert_eq!(v["devices"]["homeassistant"], 4);
    assert_no_leak(&[&gateway.token, &key], &[&body]);
    assert!(!body.contains("127.0.0.1"), "no client address");

    // A rejected token shows, and readiness with it.
    upstream.set_reply(Reply::Status(
        401,
        r#"{"error": "Missing or invalid API token"}"#,
    ));
    gateway.state.cache.purge();
    gateway.send(Method::GET, "/chargers", &with_key, "").await;
    let v = json(&gateway.get("/status").await.2);
    assert_eq!(v["token"]["rejected"], true);
    assert_eq!(v["ready"], false);
    assert_eq!(
        v["last_upstream_error"]["error"],
        "Joulo answered 401 Unauthorized"
    );
}

#[tokio::test]
async fn a_post_body_dripped_a_byte_at_a_time_gets_408_within_header_timeout() {
    let upstream = MockUpstream::start();
    let gateway = TestGateway::start_writer(
        &upstream,
        "[server]\nheader_timeout = \"1s\"\n[routes.add_charger]\nenabled = true\n",
    )
    .await;
    let key = gateway.key.clone().unwrap();
    let mut stream = TcpStream::connect(gateway.addr).await.unwrap();
    stream
        .write_all(
            format!(
                "POST /chargers HTTP/1.1\r\nHost: g\r\nX-Gateway-Key: {key}\r\n\
                 Content-Length: 100\r\n\r\n{{"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let drip = tokio::spawn(async move {
        let mut answer = Vec::new();
        loop {
            tokio::time::sleep(Duration::from_millis(300)).await;
            if stream.write_all(b" ").await.is_err() {
                break;
            }
            let mut buf = [0u8; 1024];
            match tokio::time::timeout(Duration::from_millis(10), stream.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
                Err(_) => {}
            }
            if answer.windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
        answer
    });
    let answer = tokio::time::timeout(Duration::from_secs(5), drip)
        .await
        .expect("answered while still dripping")
        .unwrap();
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(upstream.received().is_empty());
}

#[tokio::test]
async fn with_every_slot_taken_the_oldest_connection_makes_room_for_a_new_device() {
    let upstream = MockUpstream::start();
    let gateway = TestGateway::start_on(
        &upstream,
        "[server]\nmax_connections = 4\nmax_connections_per_ip = 8\n",
    )
    .await;
    // One device holds every slot with keep-alive connections, each used once.
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut stream = connect_from("127.0.0.2", gateway.addr).await;
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: gateway.lan\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 512];
        let n = stream.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        held.push(stream);
    }
    // Another device is still served, promptly.
    let (status, _) = tokio::time::timeout(
        Duration::from_secs(5),
        support::get_from("127.0.0.3", gateway.addr, "/healthz"),
    )
    .await
    .expect("served while every slot was taken");
    assert_eq!(status, 200);
    // The oldest held connection was the one closed.
    let mut oldest = held.remove(0);
    let closed = closed_within(&mut oldest, Duration::from_secs(2)).await;
    assert!(
        closed.is_some_and(|rest| rest.is_empty()),
        "closed, cleanly and idle"
    );
    // The others still work.
    let newest = held.last_mut().unwrap();
    newest
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: gateway.lan\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 512];
    let n = newest.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
}
