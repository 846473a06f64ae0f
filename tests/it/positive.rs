//! The positive security model end to end: what reaches Joulo is built from the
//! route and its validated parameters; one device cannot spend the household's
//! budget; a 401 for a rotated-away token changes nothing; requests that name
//! their target two ways are refused; the access line stays short.

use crate::support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use support::{MockUpstream, PREFIX, Reply, TestGateway, assert_no_leak, canary, get_from, json};
use tokio::sync::Notify;

#[tokio::test]
async fn only_documented_parameters_pass_and_in_one_canonical_form() {
    let upstream = MockUpstream::start();
    let gateway = TestGateway::start_on(
        &upstream,
        "[routes.sessions]\nextra_params = [\"status\"]\n",
    )
    .await;
    let secret = canary();
    for (target, words) in [
        (
            "/sessions?limit=5&_method=DELETE".to_owned(),
            "Unknown query parameter `_method`: /sessions takes limit, offset, charger_id, from, to, status",
        ),
        (
            format!("/chargers?api_key={secret}"),
            "Unknown query parameter `api_key`: /chargers takes none",
        ),
        (
            "/sessions?limit=1&limit=2".to_owned(),
            "Query parameter `limit` is given more than once",
        ),
        (
            "/sessions?limit=1000".to_owned(),
            "Query parameter `limit` must be a whole number from 1 to 100",
        ),
        (
            "/sessions?charger_id=../../me".to_owned(),
            "Query parameter `charger_id` must be a UUID",
        ),
        (
            "/sessions?from=2026-02-30".to_owned(),
            "Query parameter `from` must be an ISO 8601 date",
        ),
        (
            format!("/sessions?{secret}=1"),
            "Unknown query parameter: /sessions takes",
        ),
    ] {
        let (status, headers, body) = gateway.get(&target).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{target}");
        assert_eq!(headers["content-type"], "application/json");
        let error = json(&body)["error"].as_str().unwrap().to_owned();
        assert!(error.starts_with(words), "{target}: {error}");
        assert!(!body.contains(&secret), "{target}: {body}");
    }
    assert!(
        upstream.received().is_empty(),
        "nothing refused went upstream"
    );

    // Credentials go silently; the rest is written in the route's order, UTC,
    // lower-case UUIDs and one percent-encoding.
    let (status, _, body) = gateway
        .get(&format!(
            "/sessions?token={secret}&status=done&to=2026-02-01T01:00:00%2B01:00\
             &charger_id=6F1C0D3E-8F43-4D8E-9F7B-2A1B3C4D5E6F&offset=020&limit=5"
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        upstream.last().target,
        format!(
            "{PREFIX}/sessions?limit=5&offset=20&charger_id=6f1c0d3e-8f43-4d8e-9f7b-2a1b3c4d5e6f\
             &to=2026-02-01T00%3A00%3A00Z&status=done"
        )
    );
    assert_no_leak(&[&secret, &gateway.token], &[]);
}

#[tokio::test]
async fn a_post_body_is_checked_against_its_schema_and_sent_anew() {
    let upstream = MockUpstream::start();
    let gateway =
        TestGateway::start_writer(&upstream, "[routes.add_charger]\nenabled = true\n").await;
    for body in [
        r#"{"nickname":"Garage"}"#,
        r#"{"nickname":"Garage","connection_type":"ocpp","is_admin":true}"#,
        r#"{"nickname":"Garage","connection_type":"ocpp","nickname":"Other"}"#,
        "nickname=Garage",
    ] {
        let (status, _, answer) = gateway.send(Method::POST, "/chargers", &[], body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert!(
            json(&answer)["error"]
                .as_str()
                .unwrap()
                .starts_with("Invalid request body for POST /chargers"),
            "{answer}"
        );
    }
    assert!(upstream.received().is_empty());
    let (status, _, _) = gateway
        .send(
            Method::POST,
            "/chargers",
            &[
                ("content-type", "text/plain"),
                ("x-http-method-override", "DELETE"),
            ],
            "{ \"connection_type\": \"ocpp\",\n \"nickname\": \"Garage\" }",
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let got = upstream.last();
    assert_eq!(got.method, Method::POST);
    assert_eq!(
        &got.body[..],
        br#"{"nickname":"Garage","connection_type":"ocpp"}"#
    );
    assert_eq!(got.headers["content-type"], "application/json");
    assert_eq!(
        got.headers["content-length"],
        got.body.len().to_string().as_str()
    );
    assert!(got.headers.get("x-http-method-override").is_none());
}

#[tokio::test]
async fn one_device_paging_through_history_cannot_starve_the_others() {
    let upstream = MockUpstream::start();
    // 10 calls a minute, burst 4: half each, so 2 back to back per device.
    let gateway = TestGateway::start_on(
        &upstream,
        "[limits]\nupstream_per_minute = 10\nupstream_burst = 4\nqueue_timeout = \"0s\"\n",
    )
    .await;
    let mut greedy = Vec::new();
    for offset in 0..6 {
        let target = format!("/sessions?offset={offset}");
        greedy.push(get_from("127.0.0.2", gateway.addr, &target).await);
    }
    let statuses: Vec<u16> = greedy.iter().map(|(s, _)| *s).collect();
    assert_eq!(statuses, [200, 200, 429, 429, 429, 429]);
    assert!(
        json(&greedy[2].1)["error"]
            .as_str()
            .unwrap()
            .contains("this device has used its share"),
        "{}",
        greedy[2].1
    );
    // The rest of the household still gets fresh answers.
    for (device, target) in [
        ("127.0.0.3", "/chargers"),
        ("127.0.0.4", "/energy"),
        ("127.0.0.3", "/sessions?offset=0"),
    ] {
        let (status, body) = get_from(device, gateway.addr, target).await;
        assert_eq!(status, 200, "{device} {target}: {body}");
    }
    // The greedy device joining a call another device already made, or a
    // fresh copy, spends nothing.
    assert_eq!(
        get_from("127.0.0.2", gateway.addr, "/chargers").await.0,
        200
    );
    assert_eq!(upstream.received().len(), 4);
}

#[tokio::test]
async fn over_its_share_a_device_gets_its_stale_copy() {
    let upstream = MockUpstream::start();
    let gateway = TestGateway::start_on(
        &upstream,
        "[limits]\nupstream_per_minute = 10\nupstream_burst = 4\nqueue_timeout = \"0s\"\n\
         [cache]\nttl = \"1s\"\n",
    )
    .await;
    assert_eq!(
        get_from("127.0.0.2", gateway.addr, "/chargers").await.0,
        200
    );
    assert_eq!(get_from("127.0.0.2", gateway.addr, "/energy").await.0, 200);
    support::jump_clock(Duration::from_secs(2)).await;
    let raw = gateway
        .raw(b"GET /chargers HTTP/1.1\r\nHost: g\r\nConnection: close\r\n\r\n")
        .await;
    // From 127.0.0.1: its own share, a fresh fetch.
    assert!(raw.contains("x-cache: MISS"), "{raw}");
    support::jump_clock(Duration::from_secs(2)).await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let mut stream = socket.connect(gateway.addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream
        .write_all(b"GET /energy HTTP/1.1\r\nHost: g\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    stream.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains("x-cache: STALE"), "{out}");
    assert_eq!(upstream.received().len(), 3);
}

#[tokio::test]
async fn a_401_for_a_token_rotated_while_in_flight_changes_nothing() {
    let upstream = MockUpstream::start();
    // Room for the token watcher to see the rotation while the call waits.
    let gateway = TestGateway::start_on(&upstream, "timeout = \"30s\"\n").await;
    // A cached answer that a real rejection would purge.
    assert_eq!(gateway.get("/energy").await.0, StatusCode::OK);
    let first = gateway.token.clone();

    let gate = Arc::new(Notify::new());
    upstream.set_reply(Reply::GateStatus(
        gate.clone(),
        401,
        r#"{"error": "Missing or invalid API token"}"#,
    ));
    let in_flight = tokio::spawn({
        let addr = gateway.addr;
        async move { support::send(addr, Method::GET, "/chargers", &[], "").await }
    });
    let sent = support::eventually(Duration::from_secs(5), || async {
        !upstream.received().is_empty() && upstream.received().len() == 2
    })
    .await;
    assert!(sent, "the /chargers call reached the upstream");
    assert_eq!(
        upstream.last().headers["authorization"],
        format!("Bearer {first}").as_str()
    );
    let generation = gateway.state.tokens.generation();
    let second = gateway.rotate_token();
    let rotated = support::eventually(support::FILE_WATCH_LIMIT, || async {
        gateway.state.tokens.generation() != generation
    })
    .await;
    assert!(rotated, "the new token was loaded");
    gate.notify_one();
    let (status, headers, _) = in_flight.await.unwrap();
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "Joulo's answer is passed on"
    );
    assert!(
        headers["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer "),
        "a 401 names a scheme even when Joulo's did not"
    );

    assert!(
        !gateway.state.tokens.is_rejected(),
        "the new token is not rejected"
    );
    assert_eq!(gateway.get("/readyz").await.0, StatusCode::OK);
    assert_eq!(
        gateway.get("/energy").await.1["x-cache"],
        "HIT",
        "the cache was not emptied"
    );

    // A 401 for the current token does mark it and empty the cache ...
    upstream.set_reply(Reply::Status(
        401,
        r#"{"error": "Missing or invalid API token"}"#,
    ));
    assert_eq!(gateway.get("/me").await.0, StatusCode::UNAUTHORIZED);
    assert!(gateway.state.tokens.is_rejected());
    assert_eq!(
        gateway.get("/readyz").await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert!(gateway.state.cache.is_empty());
    // ... and a success with it clears the mark.
    upstream.set_reply(Reply::Ok);
    assert_eq!(gateway.get("/chargers").await.0, StatusCode::OK);
    assert_eq!(
        upstream.last().headers["authorization"],
        format!("Bearer {second}").as_str()
    );
    assert!(!gateway.state.tokens.is_rejected());
    assert_eq!(gateway.get("/readyz").await.0, StatusCode::OK);
    assert_no_leak(&[&first, &second], &[]);
}

/// The status code of a raw exchange.
fn status_of(raw: &str) -> u16 {
    raw.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn a_request_naming_its_target_two_ways_is_refused() {
    let upstream = MockUpstream::start();
    let gateway = TestGateway::start(&upstream).await;
    for (raw, words) in [
        (
            "GET /chargers HTTP/1.1\r\nConnection: close\r\n\r\n",
            "missing Host",
        ),
        (
            "GET /chargers HTTP/1.1\r\nHost: gateway.lan\r\nHost: evil.example\r\nConnection: close\r\n\r\n",
            "more than one Host",
        ),
        (
            "GET /chargers HTTP/1.1\r\nHost: user@gateway.lan\r\nConnection: close\r\n\r\n",
            "invalid Host",
        ),
        (
            "GET /chargers HTTP/1.1\r\nHost: gateway lan\r\nConnection: close\r\n\r\n",
            "invalid Host",
        ),
        (
            "GET /chargers HTTP/1.1\r\nHost: \r\nConnection: close\r\n\r\n",
            "invalid Host",
        ),
        (
            "GET /chargers HTTP/1.1\r\nHost: gateway.lan:99999\r\nConnection: close\r\n\r\n",
            "invalid Host",
        ),
    ] {
        let answer = gateway.raw(raw.as_bytes()).await;
        assert_eq!(status_of(&answer), 400, "{raw:?}: {answer}");
        assert!(answer.contains(words), "{raw:?}: {answer}");
    }
    // HTTP/1.0 predates Host: allowed without one.
    let answer = gateway.raw(b"GET /chargers HTTP/1.0\r\n\r\n").await;
    assert_eq!(status_of(&answer), 200, "{answer}");

    // HTTP/2: a Host beside :authority must agree with it.
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let h2 = |host: Option<&'static str>| {
        let mut request = http::Request::builder().uri(format!("http://{}/chargers", gateway.addr));
        if let Some(host) = host {
            request = request.header("host", host);
        }
        client.request(request.body(Empty::new()).unwrap())
    };
    let agreeing = h2(None).await.unwrap();
    assert_eq!(agreeing.status(), StatusCode::OK);
    let disagreeing = h2(Some("evil.example")).await.unwrap();
    assert_eq!(disagreeing.status(), StatusCode::BAD_REQUEST);
    let body = disagreeing.into_body().collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&body).contains("Host and :authority disagree"));
    assert_eq!(
        upstream.received().len(),
        1,
        "only the plain HTTP/1.0 request"
    );
}

#[tokio::test]
async fn the_access_line_is_capped_and_hides_unknown_values() {
    let upstream = MockUpstream::start();
    let gateway = TestGateway::start(&upstream).await;
    let marker = format!("m{}", &canary()[6..18]);
    // Long, but within max_header_size (16 KiB): an unknown path.
    let long = format!("/{marker}/{}", "x".repeat(12 * 1024));
    let (status, _, _) = gateway.get(&long).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let hidden = format!("/sessions?limit=2&apikey=hunter2{marker}");
    assert_eq!(gateway.get(&hidden).await.0, StatusCode::BAD_REQUEST);
    let logs = support::logs();
    let line = logs
        .lines()
        .find(|l| l.contains("joulo_gateway::access") && l.contains(&format!("/{marker}/")))
        .expect("an access line for the long request");
    assert!(line.len() < 1024, "{} bytes", line.len());
    assert!(line.contains("...(+"), "{line}");
    assert!(line.contains("status=404"), "{line}");
    assert!(
        !logs.contains(&format!("hunter2{marker}")),
        "an unknown parameter's value was logged"
    );
    assert!(logs.contains("apikey=[REDACTED]"));
}

#[tokio::test]
async fn a_request_hyper_refuses_still_leaves_an_access_line() {
    let upstream = MockUpstream::start();
    let gateway = TestGateway::start_on(&upstream, "[server]\nmax_header_size = \"4KiB\"\n").await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.7:0".parse().unwrap()).unwrap();
    let mut stream = socket.connect(gateway.addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream
        .write_all(b"GET /chargers HTTP/1.1\r\nHost: g\r\nthis is not a header\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    let _ = stream.read_to_string(&mut out).await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    // From an address of its own too: the log capture holds the lines of
    // every test in the binary, and others are refused with 431 as well.
    let huge = "x".repeat(64 * 1024);
    let mut stream = support::connect_from("127.0.0.27", gateway.addr).await;
    stream
        .write_all(
            format!("GET /chargers HTTP/1.1\r\nHost: g\r\nX-Filler: {huge}\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response)).await;
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 431"));
    let found = support::eventually(Duration::from_secs(5), || async {
        let logs = support::logs();
        let refused: Vec<&str> = logs
            .lines()
            .filter(|l| {
                l.contains("joulo_gateway::access") && l.contains("refused by the HTTP parser")
            })
            .collect();
        refused
            .iter()
            .any(|l| l.contains("client=127.0.0.7:") && l.contains("status=400"))
            && refused
                .iter()
                .any(|l| l.contains("client=127.0.0.27:") && l.contains("status=431"))
    })
    .await;
    assert!(found, "one access line each, with status and client");
    assert!(upstream.received().is_empty());
}

#[tokio::test]
async fn head_answers_like_get_without_a_body_and_from_the_cache() {
    let upstream = MockUpstream::start();
    let gateway = TestGateway::start(&upstream).await;
    let head = gateway
        .raw(b"HEAD /chargers HTTP/1.1\r\nHost: gateway.lan\r\nConnection: close\r\n\r\n")
        .await;
    let (lines, body) = head.split_once("\r\n\r\n").unwrap();
    assert!(lines.starts_with("HTTP/1.1 200"), "{head}");
    assert!(lines.contains("x-cache: MISS"), "{head}");
    assert!(body.is_empty(), "no body: {body:?}");
    let got = upstream.last();
    assert_eq!(got.method, Method::GET, "Joulo is asked with a GET");
    // Its Content-Length is the GET's.
    let (_, get_headers, get_body) = gateway.get("/chargers").await;
    assert_eq!(get_headers["x-cache"], "HIT");
    let length = format!("content-length: {}", get_body.len());
    assert!(lines.to_ascii_lowercase().contains(&length), "{lines}");
    let again = gateway
        .raw(b"HEAD /chargers HTTP/1.1\r\nHost: gateway.lan\r\nConnection: close\r\n\r\n")
        .await;
    assert!(again.contains("x-cache: HIT"), "{again}");
    assert_eq!(upstream.received().len(), 1);
    // Over HTTP/2 too.
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let response = client
        .request(
            http::Request::head(format!("http://{}/energy", gateway.addr))
                .body(Empty::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert!(body.is_empty());
    // Not on the routes that change the account.
    let (status, headers, _) = gateway
        .send(Method::HEAD, "/chargers/reboot", &[], "")
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{headers:?}");
}

#[tokio::test]
async fn a_device_flooding_past_its_allowance_does_not_flood_the_log() {
    let upstream = MockUpstream::start();
    let key = joulo_gateway::generate_key();
    let gateway = TestGateway::start_on(
        &upstream,
        &format!(
            "[limits]\nclient_burst = 3\nclient_per_minute = 60\nqueue_timeout = \"0s\"\n\
             [[clients]]\nname = \"flooder\"\nkey_sha256 = \"{}\"\nscopes = [\"chargers:read\"]\n",
            joulo_gateway::key_sha256_hex(&key)
        ),
    )
    .await;
    let mut statuses = Vec::new();
    for _ in 0..20 {
        let (status, _, _) = gateway
            .send(Method::GET, "/chargers", &[("x-gateway-key", &key)], "")
            .await;
        statuses.push(status.as_u16());
    }
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 3);
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 17);
    let logs = support::logs();
    let lines: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("joulo_gateway::access") && l.contains("device=\"flooder\""))
        .collect();
    let info = lines.iter().filter(|l| l.contains(" INFO ")).count();
    let debug = lines.iter().filter(|l| l.contains(" DEBUG ")).count();
    assert_eq!((info, debug), (3, 17), "refusals at debug: {lines:#?}");
    assert!(
        lines
            .iter()
            .filter(|l| l.contains(" DEBUG "))
            .all(|l| l.contains("status=429"))
    );
}

#[tokio::test]
async fn a_device_that_hangs_up_before_its_answer_still_leaves_an_access_line() {
    let upstream = MockUpstream::start();
    let gateway = TestGateway::start_on(
        &upstream,
        "[cache]\nttl = \"0s\"\n[routes.energy]\nextra_params = [\"from\"]\n",
    )
    .await;
    let gate = Arc::new(Notify::new());
    upstream.set_reply(Reply::Gate(gate.clone()));
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.8:0".parse().unwrap()).unwrap();
    let mut stream = socket.connect(gateway.addr).await.unwrap();
    use tokio::io::AsyncWriteExt;
    stream
        .write_all(b"GET /energy?from=2026-01-01 HTTP/1.1\r\nHost: g\r\n\r\n")
        .await
        .unwrap();
    let sent = support::eventually(Duration::from_secs(5), || async {
        !upstream.received().is_empty()
    })
    .await;
    assert!(sent, "the request reached the upstream");
    drop(stream);
    let logged = support::eventually(Duration::from_secs(5), || async {
        support::logs().lines().any(|l| {
            l.contains("joulo_gateway::access")
                && l.contains("client=127.0.0.8:")
                && l.contains("status=499")
                && l.contains("path=/energy?from=[REDACTED]")
        })
    })
    .await;
    gate.notify_one();
    assert!(
        logged,
        "a 499 access line for the request whose device went away"
    );
}
