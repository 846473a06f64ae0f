//! The gateway end to end through the library: a real TLS mock upstream with a
//! test CA, the gateway on 127.0.0.1:0, and assertions on what the upstream got.

use crate::support;

use std::sync::Arc;
use std::time::Duration;

use http::{Method, StatusCode, Version};
use joulo_gateway::demo::DemoCa;
use support::{MockUpstream, PREFIX, Reply, TestGateway, assert_no_leak, canary, json};

#[tokio::test]
async fn the_upstream_request_is_built_not_copied() {
    let upstream = MockUpstream::start();
    let gateway = TestGateway::start(&upstream).await;
    let (q1, q2, q3, q4, q5) = (canary(), canary(), canary(), canary(), canary());
    let client_key = canary();
    let target = format!(
        "/sessions?limit=5&token={q1}&TOKEN={q2}&%74oken={q3}&offset=1&token={q4}&access_token={q5}&from=2026-01-01T00%3A00%3A00Z"
    );
    let bearer = format!("Bearer {client_key}");
    let cookie = format!("session={client_key}");
    let (status, headers, body) = gateway
        .send(
            Method::GET,
            &target,
            &[
                ("authorization", &bearer),
                ("proxy-authorization", &bearer),
                ("cookie", &cookie),
                ("x-forwarded-for", "192.168.1.20"),
                ("x-forwarded-host", "evil.example"),
                ("forwarded", "for=192.168.1.20"),
                ("x-real-ip", "192.168.1.20"),
                ("connection", "x-hop"),
                ("x-hop", "1"),
                (
                    "user-agent",
                    "HomeAssistant/2026.2 aiohttp/3.13 Python/3.13",
                ),
                ("accept", "*/*"),
                ("accept-encoding", "gzip, deflate, br"),
                // What the outside review saw reach Joulo with the token on.
                ("x-http-method-override", "DELETE"),
                ("x-original-url", "/chargers/reboot"),
                ("apikey", &client_key),
                ("range", "bytes=0-10"),
                ("referer", "http://gateway.lan/x"),
                ("if-none-match", "\"abc\""),
                ("if-modified-since", "Sun, 29 Nov 2026 02:15:39 GMT"),
            ],
            "",
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        headers.get("set-cookie").is_none(),
        "upstream cookies are dropped"
    );

    let got = upstream.last();
    assert_eq!(got.method, Method::GET);
    assert_eq!(
        got.target,
        format!("{PREFIX}/sessions?limit=5&offset=1&from=2026-01-01T00%3A00%3A00Z")
    );
    assert_eq!(
        got.headers["authorization"],
        format!("Bearer {}", gateway.token).as_str()
    );
    assert_eq!(got.headers.get_all("authorization").iter().count(), 1);
    // Exactly the gateway's own set: nothing of the client's request. (Over
    // HTTP/1.1 the upstream's authority travels as `Host` too: see
    // upstream_http2_chooses_the_version_spoken_to_joulo.)
    assert_eq!(got.version, Version::HTTP_2);
    let mut names: Vec<&str> = got.headers.keys().map(|k| k.as_str()).collect();
    names.sort();
    assert_eq!(
        names,
        ["accept", "accept-encoding", "authorization", "user-agent"]
    );
    assert_eq!(got.headers["accept"], "application/json");
    assert_eq!(got.headers["accept-encoding"], "identity");
    assert_eq!(
        got.headers["user-agent"],
        concat!("joulo-gateway/", env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(
        got.authority.as_deref(),
        Some(format!("localhost:{}", upstream.addr.port()).as_str())
    );

    // This request's own line: other tests in the binary strip `token=` too
    // (none sends `access_token=`).
    let logs = support::logs();
    assert!(
        logs.lines()
            .any(|l| l.contains("token=[REDACTED]") && l.contains("access_token=[REDACTED]")),
        "the access log shows where a token was removed"
    );
    assert_no_leak(
        &[&gateway.token, &q1, &q2, &q3, &q4, &q5, &client_key],
        &[&body],
    );
}

#[tokio::test]
async fn the_upstream_is_reached_over_http2_by_alpn() {
    let upstream = MockUpstream::start();
    let gateway = TestGateway::start(&upstream).await;
    let (status, _, body) = gateway.get("/chargers").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json(&body)["target"], format!("{PREFIX}/chargers"));
    assert_eq!(upstream.last().version, Version::HTTP_2);
    // A second request reuses the pooled connection and still works.
    assert_eq!(gateway.get("/energy").await.0, StatusCode::OK);
    assert_eq!(upstream.received().len(), 2);
}

#[tokio::test]
async fn upstream_http2_chooses_the_version_spoken_to_joulo() {
    for (setting, version) in [
        ("auto", Version::HTTP_2),
        ("always", Version::HTTP_2),
        ("never", Version::HTTP_11),
    ] {
        let upstream = MockUpstream::start();
        let gateway =
            TestGateway::start_on(&upstream, &format!("[upstream]\nhttp2 = \"{setting}\"")).await;
        for path in ["/chargers", "/energy", "/me"] {
            let (status, _, _) = gateway.get(path).await;
            assert_eq!(status, StatusCode::OK, "{setting} {path}");
            let got = upstream.last();
            assert_eq!(got.version, version, "{setting} {path}");
            // HTTP/1.1 names the upstream in `Host`, from base_url alone.
            let host: Vec<_> = got.headers.get_all("host").iter().collect();
            if version == Version::HTTP_11 {
                assert_eq!(host.len(), 1, "{setting} {path}");
                assert_eq!(
                    host[0],
                    format!("localhost:{}", upstream.addr.port()).as_str()
                );
            } else {
                assert!(host.is_empty(), "{setting} {path}");
            }
        }
        assert_eq!(upstream.received().len(), 3, "{setting}");
    }
}

#[tokio::test]
async fn refused_requests_never_reach_the_upstream() {
    let upstream = MockUpstream::start();
    let gateway = TestGateway::start(&upstream).await;
    for target in [
        "/chargers/../me",
        "/chargers/%2e%2e/me",
        "/%2E%2E/chargers",
        "/chargers%2freboot",
        "//chargers",
        "/chargers/",
        "/./energy",
        "/energy%00",
        "/energy%5c..",
    ] {
        let raw =
            format!("GET {target} HTTP/1.1\r\nHost: gateway.lan\r\nConnection: close\r\n\r\n");
        let response = gateway.raw(raw.as_bytes()).await;
        assert!(response.starts_with("HTTP/1.1 400"), "{target}: {response}");
        let body = response.split("\r\n\r\n").nth(1).unwrap_or_default();
        assert!(
            json(body)["error"]
                .as_str()
                .unwrap()
                .starts_with("Invalid request path")
        );
    }
    // Backslash and NUL are refused by the HTTP parser itself; still a 400.
    for raw in [
        "GET /chargers\\..\\me HTTP/1.1\r\nHost: g\r\nConnection: close\r\n\r\n",
        "GET /char\0gers HTTP/1.1\r\nHost: g\r\nConnection: close\r\n\r\n",
    ] {
        let response = gateway.raw(raw.as_bytes()).await;
        assert!(response.starts_with("HTTP/1.1 400"), "{raw:?}: {response}");
    }

    let (status, _, body) = gateway.get("/teleport").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(json(&body)["error"].as_str().unwrap().contains("/chargers"));

    let (status, headers, body) = gateway.send(Method::DELETE, "/chargers", &[], "").await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(headers["allow"], "GET, HEAD");
    assert_eq!(headers["content-type"], "application/json");
    assert!(json(&body)["error"].is_string());

    // Account-changing routes are off by default.
    let (status, headers, _) = gateway
        .send(
            Method::POST,
            "/chargers",
            &[],
            r#"{"nickname":"x","connection_type":"ocpp"}"#,
        )
        .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(headers["allow"], "GET, HEAD");
    assert_eq!(
        gateway
            .send(Method::POST, "/chargers/reboot", &[], "{}")
            .await
            .0,
        StatusCode::NOT_FOUND
    );

    let connect = gateway
        .raw(b"CONNECT gateway.lan:443 HTTP/1.1\r\nHost: gateway.lan:443\r\nConnection: close\r\n\r\n")
        .await;
    assert!(connect.starts_with("HTTP/1.1 405"), "{connect}");
    let connect = gateway
        .raw(b"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\nConnection: close\r\n\r\n")
        .await;
    assert!(connect.starts_with("HTTP/1.1 421"), "{connect}");

    assert!(
        upstream.received().is_empty(),
        "nothing reached the upstream"
    );
}

#[tokio::test]
async fn an_absolute_form_target_cannot_change_the_upstream() {
    let upstream = MockUpstream::start();
    let gateway = TestGateway::start(&upstream).await;
    // A foreign authority is refused outright (it is what DNS rebinding looks like).
    let response = gateway
        .raw(b"GET http://evil.example/chargers HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n")
        .await;
    assert!(response.starts_with("HTTP/1.1 421"), "{response}");
    assert!(upstream.received().is_empty());
    // The gateway's own name in absolute form still goes only to base_url.
    let response = gateway
        .raw(b"GET http://gateway.lan:8080/chargers?token=x HTTP/1.1\r\nHost: gateway.lan:8080\r\nConnection: close\r\n\r\n")
        .await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let got = upstream.last();
    assert_eq!(got.target, format!("{PREFIX}/chargers"));
    assert_eq!(
        got.authority.as_deref(),
        Some(format!("localhost:{}", upstream.addr.port()).as_str())
    );
}

#[tokio::test]
async fn write_routes_forward_their_body_once_enabled() {
    let upstream = MockUpstream::start();
    let gateway =
        TestGateway::start_writer(&upstream, "[routes.add_charger]\nenabled = true\n").await;
    let body = r#"{"nickname":"Garage","connection_type":"ocpp"}"#;
    let (status, _, _) = gateway
        .send(
            Method::POST,
            "/chargers",
            &[("content-type", "application/json")],
            body,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let got = upstream.last();
    assert_eq!(got.method, Method::POST);
    assert_eq!(got.target, format!("{PREFIX}/chargers"));
    assert_eq!(got.body, body.as_bytes());
    // Reboot stays off: only what is enabled is on.
    assert_eq!(
        gateway
            .send(Method::POST, "/chargers/reboot", &[], "{}")
            .await
            .0,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn redirects_and_upstream_errors_are_handed_back_unchanged() {
    let upstream = MockUpstream::start();
    let gateway = TestGateway::start(&upstream).await;

    upstream.set_reply(Reply::Redirect("https://elsewhere.example/steal"));
    let (status, headers, _) = gateway.get("/chargers").await;
    assert_eq!(status, StatusCode::FOUND);
    assert_eq!(headers["location"], "https://elsewhere.example/steal");
    assert_eq!(
        upstream.received().len(),
        1,
        "the redirect was not followed"
    );

    upstream.set_reply(Reply::Status(500, r#"{"error":"Internal error"}"#));
    let (status, _, body) = gateway.get("/energy").await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(body, r#"{"error":"Internal error"}"#);

    upstream.set_reply(Reply::Status(
        403,
        r#"{"error":"Insufficient scope","required_scope":"energy:read"}"#,
    ));
    let (status, _, body) = gateway.get("/energy").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(json(&body)["required_scope"], "energy:read");
}

#[tokio::test]
async fn an_upstream_401_is_passed_on_and_explained_once_in_the_log() {
    let upstream = MockUpstream::start();
    let gateway = TestGateway::start(&upstream).await;
    upstream.set_reply(Reply::Status(
        401,
        r#"{"error":"Missing or invalid API token"}"#,
    ));
    for _ in 0..3 {
        let (status, _, body) = gateway.get("/chargers").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(json(&body)["error"], "Missing or invalid API token");
    }
    let file = gateway.token_file.display().to_string();
    let warnings = support::logs()
        .lines()
        .filter(|l| l.contains("Joulo rejected the token") && l.contains(&file))
        .count();
    assert_eq!(warnings, 1, "one warning naming {file}");
    assert_no_leak(&[&gateway.token], &[]);
}

#[tokio::test]
async fn an_untrusted_certificate_is_a_502_and_nothing_is_sent() {
    let trusted = DemoCa::generate(&["localhost"]).unwrap();
    let impostor = DemoCa::generate(&["localhost"]).unwrap();
    let upstream = MockUpstream::start_with(impostor, trusted.ca_pem.clone());
    let gateway = TestGateway::start(&upstream).await;
    let (status, headers, body) = gateway.get("/chargers").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(
        json(&body),
        serde_json::json!({"error": "Upstream unreachable"})
    );
    assert!(upstream.received().is_empty());
    // The gateway's own line: a device's TLS client in another test of the
    // binary may refuse a certificate too (its lines are rustls's).
    assert!(
        support::logs()
            .lines()
            .any(|l| l.contains("joulo_gateway") && l.contains("invalid peer certificate")),
        "the log says why the upstream was refused"
    );
    assert_no_leak(&[&gateway.token], &[&body]);
}

#[tokio::test]
async fn a_closed_port_is_a_502() {
    let ca = DemoCa::generate(&["localhost"]).unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let gateway =
        TestGateway::start_with(&format!("https://localhost:{port}{PREFIX}"), &ca.ca_pem, "").await;
    let (status, _, body) = gateway.get("/chargers").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(json(&body)["error"], "Upstream unreachable");
}

#[tokio::test]
async fn a_hanging_upstream_is_a_504_after_the_timeout() {
    let upstream = MockUpstream::start();
    upstream.set_reply(Reply::Hang);
    let gateway = TestGateway::start_on(&upstream, "timeout = \"300ms\"\n").await;
    let (status, _, body) = gateway.get("/chargers").await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(
        json(&body),
        serde_json::json!({"error": "Upstream timed out"})
    );
    assert_eq!(
        upstream.received().len(),
        1,
        "the request did reach the upstream"
    );
    // The gateway keeps serving after a timeout.
    upstream.set_reply(Reply::Ok);
    assert_eq!(gateway.get("/chargers").await.0, StatusCode::OK);
}

#[tokio::test]
async fn a_rotated_token_is_used_without_restart_and_a_deleted_one_fails_closed() {
    let upstream = MockUpstream::start();
    // Every poll below must reach the upstream: no cache, and limits the polling
    // cannot reach.
    let gateway = TestGateway::start_on(
        &upstream,
        "[cache]\nttl = \"0s\"\n[limits]\nupstream_per_minute = 60000\nupstream_burst = 1000\n\
         client_per_minute = 60000\nclient_burst = 1000\n",
    )
    .await;
    let first = gateway.token.clone();
    assert_eq!(gateway.get("/chargers").await.0, StatusCode::OK);

    let second = gateway.rotate_token();
    let picked_up = support::eventually(support::FILE_WATCH_LIMIT, || async {
        gateway.get("/chargers").await;
        upstream.last().headers["authorization"] == format!("Bearer {second}").as_str()
    })
    .await;
    assert!(picked_up, "the renamed-in token was used");

    std::fs::remove_file(&gateway.token_file).unwrap();
    let before = upstream.received().len();
    let closed = support::eventually(support::FILE_WATCH_LIMIT, || async {
        gateway.get("/chargers").await.0 == StatusCode::SERVICE_UNAVAILABLE
    })
    .await;
    assert!(closed, "a deleted token file fails closed");
    let sent_while_open = upstream.received().len() - before;
    let (status, _, body) = gateway.get("/chargers").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        json(&body),
        serde_json::json!({"error": "Upstream token unavailable"})
    );
    assert_eq!(
        upstream.received().len() - before,
        sent_while_open,
        "no upstream call while failed closed"
    );

    joulo_gateway::demo::write_private(&gateway.token_file, "not a token\n").unwrap();
    let path = gateway.token_file.display().to_string();
    let noticed = support::eventually(support::FILE_WATCH_LIMIT, || async {
        support::logs()
            .lines()
            .any(|l| l.contains(&path) && l.contains("whitespace inside the token"))
    })
    .await;
    assert!(noticed, "the watcher read the invalid file");
    assert_eq!(
        gateway.get("/chargers").await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );

    let third = gateway.rotate_token();
    let back = support::eventually(support::FILE_WATCH_LIMIT, || async {
        gateway.get("/chargers").await.0 == StatusCode::OK
    })
    .await;
    assert!(back, "a valid token brings the gateway back");
    assert_eq!(
        upstream.last().headers["authorization"],
        format!("Bearer {third}").as_str()
    );
    assert_no_leak(&[&first, &second, &third], &[]);
}

#[tokio::test]
async fn shutdown_drains_an_in_flight_request() {
    let upstream = MockUpstream::start();
    let gate = Arc::new(tokio::sync::Notify::new());
    upstream.set_reply(Reply::Gate(gate.clone()));
    let mut gateway = TestGateway::start(&upstream).await;
    let addr = gateway.addr;

    let in_flight = tokio::spawn({
        let url = format!("http://{addr}/chargers");
        async move {
            let client: hyper_util::client::legacy::Client<_, http_body_util::Empty<bytes::Bytes>> =
                hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                    .build_http();
            client.get(url.parse().unwrap()).await.map(|r| r.status())
        }
    });
    assert!(
        support::eventually(Duration::from_secs(5), || async {
            !upstream.received().is_empty()
        })
        .await
    );

    let stopped = gateway.begin_shutdown();
    // New connections are refused once the listener is closed.
    let refused = support::eventually(Duration::from_secs(5), || async {
        tokio::net::TcpStream::connect(addr).await.is_err()
    })
    .await;
    assert!(refused, "the listener closes on shutdown");
    assert!(!in_flight.is_finished());

    gate.notify_one();
    assert_eq!(in_flight.await.unwrap().unwrap(), StatusCode::OK);
    tokio::time::timeout(Duration::from_secs(5), stopped)
        .await
        .expect("the gateway exits once drained")
        .unwrap();
}

#[tokio::test]
async fn connections_spread_over_event_loops_share_one_cache_and_drain_on_shutdown() {
    let upstream = MockUpstream::start();
    let gate = Arc::new(tokio::sync::Notify::new());
    upstream.set_reply(Reply::Gate(gate.clone()));
    let mut gateway = TestGateway::start_on(&upstream, "[server]\nworker_threads = 3\n").await;
    let addr = gateway.addr;

    // Six requests at once: HTTP/1.1 cannot share a connection between them, so
    // each has its own, and round-robin puts two on each loop.
    let client: hyper_util::client::legacy::Client<_, http_body_util::Empty<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let mut in_flight = Vec::new();
    for _ in 0..6 {
        let client = client.clone();
        let url = format!("http://{addr}/chargers?token=x").parse().unwrap();
        in_flight.push(tokio::spawn(async move {
            client.get(url).await.map(|r| r.status())
        }));
    }
    // Other tests in this binary log accepted connections too, but all on loop 0.
    let spread = support::eventually(Duration::from_secs(10), || async {
        let logs = support::logs();
        logs.contains("event_loop=1")
            && logs.contains("event_loop=2")
            && !upstream.received().is_empty()
    })
    .await;
    assert!(
        spread,
        "connections reached loops 1 and 2 and the upstream was called"
    );

    let stopped = gateway.begin_shutdown();
    gate.notify_one();
    for request in in_flight {
        assert_eq!(request.await.unwrap().unwrap(), StatusCode::OK);
    }
    // One call served all six, whichever loop each waited on.
    assert_eq!(upstream.received().len(), 1);
    tokio::time::timeout(Duration::from_secs(5), stopped)
        .await
        .expect("the gateway exits once drained")
        .unwrap();
}

#[tokio::test]
async fn http2_clients_are_served_too() {
    let upstream = MockUpstream::start();
    let gateway = TestGateway::start(&upstream).await;
    let client: hyper_util::client::legacy::Client<_, http_body_util::Empty<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .http2_only(true)
            .build_http();
    let response = client
        .get(
            format!("http://{}/chargers?TOKEN=x", gateway.addr)
                .parse()
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.version(), Version::HTTP_2);
    assert_eq!(upstream.last().target, format!("{PREFIX}/chargers"));
}

#[tokio::test]
async fn a_reset_before_the_answer_is_a_502_and_the_gateway_keeps_serving() {
    let upstream = MockUpstream::start();
    let gateway = TestGateway::start(&upstream).await;
    upstream.set_reply(Reply::Reset);
    let (status, _, body) = gateway.get("/chargers").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(
        json(&body),
        serde_json::json!({"error": "Upstream unreachable"})
    );
    upstream.set_reply(Reply::Ok);
    assert_eq!(gateway.get("/chargers").await.0, StatusCode::OK);
}

#[tokio::test]
async fn a_get_cut_before_its_answer_is_retried_once_but_a_post_is_not() {
    let upstream = MockUpstream::start();
    let gateway = TestGateway::start_writer(
        &upstream,
        "[cache]\nttl = \"0s\"\n[routes.add_charger]\nenabled = true\n",
    )
    .await;
    upstream.set_reply(Reply::ResetOnce(Arc::default()));
    let (status, _, body) = gateway.get("/chargers").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(json(&body)["after_reset"], true);
    assert_eq!(upstream.received().len(), 2);

    upstream.set_reply(Reply::ResetOnce(Arc::default()));
    let (status, _, _) = gateway
        .send(
            Method::POST,
            "/chargers",
            &[],
            r#"{"nickname":"x","connection_type":"ocpp"}"#,
        )
        .await;
    assert_eq!(
        status,
        StatusCode::BAD_GATEWAY,
        "a POST is never sent twice"
    );
    assert_eq!(upstream.received().len(), 3);
}
