//! Who may call, end to end: the network allowlist, Host and Origin refusals,
//! device keys by Bearer, Basic and X-Gateway-Key with Joulo's scope answers, and
//! HTTPS for LAN clients with a test CA and certificate reload.

use crate::support;

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::{Method, StatusCode, Version};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use joulo_gateway::demo::{DemoCa, write_private};
use joulo_gateway::{generate_key, key_sha256_hex};
use support::{MockUpstream, PREFIX, TestGateway, assert_no_leak, connect_from, json};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

fn clients_toml(devices: &[(&str, &str, &[&str])]) -> String {
    devices
        .iter()
        .map(|(name, key, scopes)| {
            format!(
                "[[clients]]\nname = \"{name}\"\nkey_sha256 = \"{}\"\nscopes = [{}]\n",
                key_sha256_hex(key),
                scopes
                    .iter()
                    .map(|s| format!("\"{s}\""))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
        .collect()
}

#[tokio::test]
async fn addresses_outside_the_allowlist_get_403_before_anything_else() {
    let upstream = MockUpstream::start();
    // A configured list that leaves loopback out: the test client is refused.
    let gateway = TestGateway::start_on(
        &upstream,
        "[access]\nallow = [\"192.168.0.0/16\", \"fd00::/8\"]\n",
    )
    .await;
    for target in ["/chargers", "/teleport", "/chargers/../me"] {
        let (status, headers, body) = gateway.get(target).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{target}");
        assert_eq!(headers["content-type"], "application/json");
        assert!(
            json(&body)["error"]
                .as_str()
                .unwrap()
                .contains("[access] allow")
        );
    }
    assert!(upstream.received().is_empty());
}

#[tokio::test]
async fn foreign_hosts_and_origins_are_refused_and_no_cors_is_granted() {
    let upstream = MockUpstream::start();
    let gateway = TestGateway::start_on(
        &upstream,
        "[server]\nallowed_hosts = [\"joulo.example.com\"]\n",
    )
    .await;
    let (status, _, body) = gateway
        .send(
            Method::GET,
            "/chargers",
            &[("host", "attacker.example:8080")],
            "",
        )
        .await;
    assert_eq!(status, StatusCode::MISDIRECTED_REQUEST);
    let error = json(&body)["error"].as_str().unwrap().to_owned();
    assert!(
        error.contains("[server] allowed_hosts") && error.contains("attacker.example"),
        "{error}"
    );

    let host = format!("joulo.example.com:{}", gateway.addr.port());
    let (status, headers, _) = gateway
        .send(Method::GET, "/chargers", &[("host", &host)], "")
        .await;
    assert_eq!(status, StatusCode::OK, "a listed host is accepted");
    assert!(
        headers
            .keys()
            .all(|k| !k.as_str().starts_with("access-control-")),
        "the upstream's CORS grant never reaches a device"
    );

    let own = format!("http://gateway.lan:{}", gateway.addr.port());
    let lan_host = format!("gateway.lan:{}", gateway.addr.port());
    for (origin, expected) in [
        (own.as_str(), StatusCode::OK),
        ("http://evil.example", StatusCode::FORBIDDEN),
        ("null", StatusCode::FORBIDDEN),
    ] {
        let (status, headers, body) = gateway
            .send(
                Method::GET,
                "/chargers",
                &[("host", &lan_host), ("origin", origin)],
                "",
            )
            .await;
        assert_eq!(status, expected, "{origin}: {body}");
        assert!(headers.get("access-control-allow-origin").is_none());
    }
    // The first accepted request went out; the same-origin one was a cache hit.
    assert_eq!(upstream.received().len(), 1, "no refused request went out");
}

#[tokio::test]
async fn device_keys_by_bearer_basic_and_header_never_travel_upstream() {
    let upstream = MockUpstream::start();
    let ha_key = generate_key();
    let meter_key = generate_key();
    let gateway = TestGateway::start_on(
        &upstream,
        &clients_toml(&[
            ("homeassistant", &ha_key, &["chargers:read", "energy:read"]),
            ("meter", &meter_key, &["sessions:read"]),
        ]),
    )
    .await;

    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("homeassistant:{ha_key}"))
    );
    let bearer = format!("Bearer {ha_key}");
    for header in [
        ("authorization", bearer.as_str()),
        ("authorization", basic.as_str()),
        ("x-gateway-key", ha_key.as_str()),
    ] {
        let (status, _, body) = gateway.send(Method::GET, "/chargers", &[header], "").await;
        assert_eq!(status, StatusCode::OK, "{}: {body}", header.0);
        let got = upstream.last();
        assert_eq!(got.target, format!("{PREFIX}/chargers"));
        assert_eq!(
            got.headers["authorization"],
            format!("Bearer {}", gateway.token).as_str()
        );
        assert!(got.headers.get("x-gateway-key").is_none());
        // Fresh copies are served from the cache from now on; drop it so each
        // spelling reaches the upstream.
        gateway.state.cache.purge();
    }

    let wrong = format!("Bearer {}", generate_key());
    for headers in [
        vec![],
        vec![("authorization", wrong.as_str())],
        vec![("x-gateway-key", "")],
    ] {
        let (status, response_headers, body) =
            gateway.send(Method::GET, "/chargers", &headers, "").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        // RFC 9110 section 11.6.1: the schemes a key can be sent in.
        let challenges: Vec<_> = response_headers
            .get_all("www-authenticate")
            .iter()
            .map(|v| v.to_str().unwrap().split(' ').next().unwrap().to_owned())
            .collect();
        assert_eq!(challenges, ["Basic", "Bearer"]);
        // Joulo's words, and (since the second review of 23) a detail saying
        // it is the device's own key that is missing, not the Joulo token.
        let body = json(&body);
        assert_eq!(body["error"], "Missing or invalid API token");
        assert!(
            body["detail"]
                .as_str()
                .is_some_and(|d| d.contains("the device's own key (not the Joulo token)")),
            "{body}"
        );
    }

    let (status, _, body) = gateway
        .send(
            Method::GET,
            "/sessions",
            &[("authorization", bearer.as_str())],
            "",
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        body,
        r#"{"error":"Insufficient scope","required_scope":"sessions:read"}"#
    );
    let (status, _, _) = gateway
        .send(
            Method::GET,
            "/sessions",
            &[("x-gateway-key", meter_key.as_str())],
            "",
        )
        .await;
    assert_eq!(status, StatusCode::OK, "the meter has sessions:read");
    assert_eq!(upstream.received().len(), 4);

    let logs = support::logs();
    // The scope refusal's access line names the device too.
    assert!(
        logs.lines().any(|l| l.contains("joulo_gateway::access")
            && l.contains("device=\"homeassistant\"")
            && l.contains("status=403")),
        "no access line naming the refused device"
    );
    let (ha_hash, meter_hash) = (key_sha256_hex(&ha_key), key_sha256_hex(&meter_key));
    assert_no_leak(
        &[&ha_key, &meter_key, &ha_hash, &meter_hash, &gateway.token],
        &[],
    );
}

#[tokio::test]
async fn the_per_device_limit_follows_the_device_not_the_address() {
    let upstream = MockUpstream::start();
    let (a, b) = (generate_key(), generate_key());
    let gateway = TestGateway::start_on(
        &upstream,
        &format!(
            "[limits]\nclient_per_minute = 60\nclient_burst = 2\nqueue_timeout = \"0s\"\n{}",
            clients_toml(&[("a", &a, &["chargers:read"]), ("b", &b, &["chargers:read"])])
        ),
    )
    .await;
    let get = |key: &str| {
        let key = key.to_owned();
        let gateway = &gateway;
        async move {
            gateway
                .send(Method::GET, "/chargers", &[("x-gateway-key", &key)], "")
                .await
                .0
        }
    };
    assert_eq!(get(&a).await, StatusCode::OK);
    assert_eq!(get(&a).await, StatusCode::OK);
    assert_eq!(get(&a).await, StatusCode::TOO_MANY_REQUESTS);
    // Same address, another device: its own allowance.
    assert_eq!(get(&b).await, StatusCode::OK);
}

/// TLS settings that trust only `ca`.
fn client_tls(ca: &DemoCa) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.ca_der.clone()).unwrap();
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// A client that trusts only `ca`, speaking h2 or http/1.1 by ALPN.
fn https_client(ca: &DemoCa) -> Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>> {
    let tls = client_tls(ca);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .enable_http2()
        .build();
    Client::builder(TokioExecutor::new()).build(https)
}

#[tokio::test]
async fn https_for_lan_clients_with_reload_and_bounded_handshakes() {
    let upstream = MockUpstream::start();
    let first = DemoCa::generate(&["localhost"]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("gateway.crt");
    let key = dir.path().join("gateway.key");
    write_private(&cert, &first.leaf_cert_pem).unwrap();
    write_private(&key, &first.leaf_key_pem).unwrap();
    let gateway = TestGateway::start_on(
        &upstream,
        &format!(
            "[server]\ntls_cert = \"{}\"\ntls_key = \"{}\"\ntls_handshake_timeout = \"300ms\"\n",
            cert.display(),
            key.display()
        ),
    )
    .await;
    let url: http::Uri = format!("https://localhost:{}/chargers", gateway.addr.port())
        .parse()
        .unwrap();

    let old_client = https_client(&first);
    let response = old_client.get(url.clone()).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.version(), Version::HTTP_2, "h2 by ALPN");
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        json(std::str::from_utf8(&body).unwrap())["target"],
        format!("{PREFIX}/chargers")
    );

    // Plain HTTP on the HTTPS port gets no answer.
    let plain = gateway
        .raw(b"GET /chargers HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await;
    assert!(!plain.contains("200 OK"), "{plain}");

    // A client that opens a connection and says nothing is cut at the handshake bound.
    let mut silent = tokio::net::TcpStream::connect(gateway.addr).await.unwrap();
    let mut sink = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), silent.read_to_end(&mut sink)).await;
    assert!(closed.is_ok(), "the silent connection was closed");

    // A new certificate, swapped in by rename: new clients get it within a poll or two.
    let second = DemoCa::generate(&["localhost"]).unwrap();
    write_private(&dir.path().join("k.new"), &second.leaf_key_pem).unwrap();
    write_private(&dir.path().join("c.new"), &second.leaf_cert_pem).unwrap();
    std::fs::rename(dir.path().join("k.new"), &key).unwrap();
    std::fs::rename(dir.path().join("c.new"), &cert).unwrap();
    let new_client = https_client(&second);
    let reloaded = support::eventually(support::FILE_WATCH_LIMIT, || async {
        new_client
            .get(url.clone())
            .await
            .is_ok_and(|r| r.status() == StatusCode::OK)
    })
    .await;
    assert!(reloaded, "the new certificate is served");
    // The connection opened before the reload keeps working.
    let response = old_client.get(url.clone()).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn https_spends_no_handshake_on_refused_addresses_and_times_the_first_head_from_accept() {
    let upstream = MockUpstream::start();
    let ca = DemoCa::generate(&["localhost"]).unwrap();
    let lan = support::LanCert::write(&ca);
    // The handshake bound is far above the header timeout: only the latter can
    // close these connections within the test's few seconds.
    let gateway = TestGateway::start_on(
        &upstream,
        &format!(
            "[server]\n{}tls_handshake_timeout = \"30s\"\nheader_timeout = \"1s\"\n\
             [access]\nallow = [\"127.0.0.1/32\"]\n",
            lan.server_lines()
        ),
    )
    .await;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_tls(&ca)));
    let localhost = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let limit = Duration::from_secs(3);

    // From outside the allowlist: closed at once, without a handshake.
    let refused = connect_from("127.0.0.9", gateway.addr).await;
    let handshake = tokio::time::timeout(limit, connector.connect(localhost.clone(), refused))
        .await
        .expect("the refused client was closed at once");
    assert!(handshake.is_err(), "no handshake for a refused address");

    // Allowed, but silent: closed at the header timeout, not the handshake's.
    let mut silent = TcpStream::connect(gateway.addr).await.unwrap();
    let mut sink = Vec::new();
    let closed = tokio::time::timeout(limit, silent.read_to_end(&mut sink)).await;
    assert!(closed.is_ok(), "the silent connection was closed");

    // Handshake done, then no request: closed at the header timeout too.
    let stream = TcpStream::connect(gateway.addr).await.unwrap();
    let mut tls = connector.connect(localhost, stream).await.unwrap();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(limit, tls.read(&mut buf))
        .await
        .expect("the connection without a request was closed");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert!(upstream.received().is_empty());
}

#[tokio::test]
async fn metrics_and_status_need_gateway_read_or_an_ops_address_once_keys_exist() {
    let upstream = MockUpstream::start();
    let reader = generate_key();
    let ha = generate_key();
    let gateway = TestGateway::start_on(
        &upstream,
        &format!(
            "{}[ops]\nallow = [\"127.0.0.9\"]\n",
            clients_toml(&[
                ("grafana", &reader, &["gateway:read"]),
                ("homeassistant", &ha, &["chargers:read"]),
            ])
        ),
    )
    .await;
    for path in ["/metrics", "/status"] {
        let (status, headers, body) = gateway.get(path).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}: {body}");
        assert_eq!(headers["content-type"], "application/json");
        assert!(!body.contains("homeassistant"), "{body}");
        let wrong = generate_key();
        let (status, _, _) = gateway
            .send(Method::GET, path, &[("x-gateway-key", &wrong)], "")
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}");
        let (status, _, body) = gateway
            .send(Method::GET, path, &[("x-gateway-key", &ha)], "")
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}");
        assert_eq!(
            body,
            r#"{"error":"Insufficient scope","required_scope":"gateway:read"}"#
        );
        let bearer = format!("Bearer {reader}");
        let (status, _, body) = gateway
            .send(Method::GET, path, &[("authorization", &bearer)], "")
            .await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert!(body.contains("homeassistant"), "{path}: {body}");
        // A Prometheus host listed in [ops] allow needs no key.
        let (status, body) = support::get_from("127.0.0.9", gateway.addr, path).await;
        assert_eq!(status, 200, "{path}: {body}");
    }
    // Container health checks have no key.
    for path in ["/healthz", "/readyz"] {
        assert_eq!(gateway.get(path).await.0, StatusCode::OK, "{path}");
    }
    assert_no_leak(&[&gateway.token, &reader, &ha], &[]);
}

#[tokio::test]
async fn browsers_sending_for_another_site_are_refused_without_a_valid_key() {
    let upstream = MockUpstream::start();
    let key = generate_key();
    let keyed = TestGateway::start_on(
        &upstream,
        &clients_toml(&[("ha", &key, &["chargers:read"])]),
    )
    .await;
    let keyless = TestGateway::start(&upstream).await;
    for site in ["cross-site", "same-site"] {
        for gateway in [&keyed, &keyless] {
            let (status, headers, body) = gateway
                .send(Method::GET, "/chargers", &[("sec-fetch-site", site)], "")
                .await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{site}: {body}");
            assert_eq!(headers["content-type"], "application/json");
            assert!(
                json(&body)["error"]
                    .as_str()
                    .unwrap()
                    .contains("another site"),
                "{body}"
            );
        }
        let (status, _, body) = keyed
            .send(
                Method::GET,
                "/chargers",
                &[("sec-fetch-site", site), ("x-gateway-key", &key)],
                "",
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{site} with a key: {body}");
        let wrong = generate_key();
        let (status, _, _) = keyed
            .send(
                Method::GET,
                "/chargers",
                &[("sec-fetch-site", site), ("x-gateway-key", &wrong)],
                "",
            )
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{site} with a wrong key");
    }
    // The gateway's own page (same-origin) and tools that send none are served.
    for headers in [vec![("sec-fetch-site", "same-origin")], vec![]] {
        assert_eq!(
            keyless.send(Method::GET, "/chargers", &headers, "").await.0,
            StatusCode::OK
        );
    }
    assert_eq!(
        upstream.received().len(),
        2,
        "one call per gateway, then hits"
    );
}

#[tokio::test]
async fn two_origins_or_an_absolute_target_naming_another_host_are_400() {
    let upstream = MockUpstream::start();
    let gateway = TestGateway::start(&upstream).await;
    let port = gateway.addr.port();
    let status_of = |answer: String| {
        answer
            .split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .to_owned()
    };
    let two_origins = format!(
        "GET /chargers HTTP/1.1\r\nHost: gateway.lan:{port}\r\n\
         Origin: http://gateway.lan:{port}\r\nOrigin: http://evil.example\r\n\
         Connection: close\r\n\r\n"
    );
    let answer = gateway.raw(two_origins.as_bytes()).await;
    assert_eq!(status_of(answer.clone()), "400", "{answer}");
    assert!(answer.contains("more than one Origin header"), "{answer}");

    for (target, host, expected) in [
        ("http://evil.example/chargers", "gateway.lan", "400"),
        ("http://gateway.lan:1/chargers", "gateway.lan", "400"),
        ("http://gateway.lan/chargers", "gateway.lan", "200"),
        ("http://GATEWAY.lan/chargers", "gateway.lan", "200"),
    ] {
        let request = format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        let answer = gateway.raw(request.as_bytes()).await;
        assert_eq!(status_of(answer.clone()), expected, "{target}: {answer}");
        if expected == "400" {
            assert!(answer.contains("authority and Host disagree"), "{answer}");
        }
    }
    assert_eq!(upstream.received().len(), 1, "no refused request went out");
}
