//! Running as an appliance: abuse limits (slowloris, 431, 413, idle and connection
//! limits), health, readiness and metrics.

mod support;

use std::time::Duration;

use http::{Method, StatusCode};
use support::{MockUpstream, Reply, TestGateway, assert_no_leak, json};
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

#[tokio::test]
async fn slowloris_connections_are_cut_at_header_timeout_and_others_are_served() {
    let upstream = MockUpstream::start();
    let gateway = TestGateway::start_on(&upstream, "[server]\nheader_timeout = \"500ms\"\n").await;
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
    let gateway = TestGateway::start_on(&upstream,
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
async fn connections_past_the_limit_wait_for_a_free_slot() {
    let upstream = MockUpstream::start();
    let gateway = TestGateway::start_on(&upstream, "[server]\nmax_connections = 1\n").await;
    let mut first = TcpStream::connect(gateway.addr).await.unwrap();
    first
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: gateway.lan\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 12];
    first.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"HTTP/1.1 200");

    // The first connection stays open (keep-alive): the second is not served.
    let second = tokio::spawn({
        let gateway_addr = gateway.addr;
        async move {
            support::send(gateway_addr, Method::GET, "/healthz", &[], "")
                .await
                .0
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!second.is_finished(), "served past max_connections");
    drop(first);
    let status = tokio::time::timeout(Duration::from_secs(5), second)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn health_and_readiness_follow_the_token() {
    let upstream = MockUpstream::start();
    let key = joulo_gateway::access::generate_key();
    let gateway = TestGateway::start_on(&upstream,
        &format!(
            "[cache]\nttl = \"0s\"\n[[clients]]\nname = \"ha\"\nkey_sha256 = \"{}\"\nscopes = [\"chargers:read\"]\n",
            joulo_gateway::access::key_sha256_hex(&key)
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
    let gateway = TestGateway::start_on(
        &upstream,
        "[limits]\nclient_burst = 5\nclient_per_minute = 60\nqueue_timeout = \"0s\"\n",
    )
    .await;
    let leaked = support::canary();
    gateway.get(&format!("/chargers?token={leaked}")).await;
    gateway.get("/chargers").await;
    gateway.get("/teleport").await;
    for _ in 0..3 {
        gateway.get("/chargers").await;
    }
    let (status, headers, text) = gateway.get("/metrics").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    for line in [
        "joulo_gateway_requests_total{route=\"chargers\",status=\"200\"} 4",
        "joulo_gateway_requests_total{route=\"none\",status=\"404\"} 1",
        "joulo_gateway_upstream_calls_total{route=\"chargers\",status=\"200\"} 1",
        "joulo_gateway_cache_hits_total 3",
        "joulo_gateway_cache_misses_total 1",
        "joulo_gateway_rate_limited_total{limit=\"client\"} 1",
        "joulo_gateway_token_reloads_ok_total 1",
        "joulo_gateway_upstream_latency_seconds_count{route=\"chargers\"} 1",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
    assert_no_leak(&[&gateway.token, &leaked], &[&text]);
    assert!(!text.contains("token="), "no query values in labels");
}

#[tokio::test]
async fn ops_endpoints_obey_the_allowlist_and_are_never_forwarded() {
    let upstream = MockUpstream::start();
    let gateway = TestGateway::start_on(&upstream, "[access]\nallow = [\"10.0.0.0/8\"]\n").await;
    for path in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(gateway.get(path).await.0, StatusCode::FORBIDDEN, "{path}");
    }
    let open = MockUpstream::start();
    let gateway = TestGateway::start(&open).await;
    for path in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(gateway.get(path).await.0, StatusCode::OK, "{path}");
        assert_eq!(
            gateway.send(Method::POST, path, &[], "").await.0,
            StatusCode::METHOD_NOT_ALLOWED
        );
    }
    assert!(upstream.received().is_empty() && open.received().is_empty());
}
