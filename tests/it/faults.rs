//! Fault injection and framing: an upstream that talks garbage, resets mid-body,
//! fails TLS or answers with an HTML 503, and requests framed to be read two ways.
//! Each gets its documented answer, the gateway keeps serving, nothing leaks.

use crate::support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use joulo_gateway::demo::DemoCa;
use support::{MockUpstream, PREFIX, TestGateway, assert_no_leak, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How the raw upstream misbehaves after reading a request head.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// Bytes that are not HTTP.
    Garbage,
    /// A 200 head promising 1000 bytes, a few of them, then the connection cut
    /// without TLS close_notify, as when the upstream process dies.
    ResetMidBody,
    /// A 503 with an HTML body, as a proxy in front of Joulo might send.
    Html503,
    /// Plain HTTP where TLS was expected: the handshake fails.
    NoTls,
    /// A 101 Switching Protocols, which no device asked for.
    Switching,
    /// A 200 framed two ways, chunked and with a Content-Length that
    /// disagrees: the chunked framing wins (RFC 9112 section 6.3).
    ChunkedAndLength,
    /// A 200 head promising 1000 bytes, 12 of them, then silence with the
    /// connection held open.
    Stall,
}

/// A hand-rolled HTTP/1.1 upstream over TLS (certificate from `ca`), so faults a
/// real server would never produce can be produced on purpose.
async fn raw_upstream(ca: &DemoCa, fault: Arc<Mutex<Fault>>) -> SocketAddr {
    let acceptor = support::tls_acceptor(ca, b"http/1.1");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let fault = *fault.lock().unwrap();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Fault::NoTls = fault {
                    let _ = tcp
                        .write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                        .await;
                    return;
                }
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if tls.read(&mut byte).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let reply: &[u8] = match fault {
                    Fault::Garbage => b"SSH-2.0-OpenSSH_9.2 this is not HTTP at all\r\n\r\n",
                    Fault::ResetMidBody => {
                        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{\"chargers\":[{\"id\":"
                    }
                    Fault::Html503 => {
                        b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/html\r\ncontent-length: 45\r\n\r\n<html><body>Upstream maintenance</body></html"
                    }
                    Fault::Stall => {
                        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{\"chargers\":"
                    }
                    Fault::Switching => {
                        b"HTTP/1.1 101 Switching Protocols\r\nupgrade: x-other\r\nconnection: upgrade\r\n\r\n"
                    }
                    Fault::ChunkedAndLength => {
                        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n10\r\n{\"chargers\": []}\r\n0\r\n\r\n"
                    }
                    Fault::NoTls => unreachable!(),
                };
                let _ = tls.write_all(reply).await;
                let _ = tls.flush().await;
                match fault {
                    // An orderly end: the answer is complete.
                    Fault::Html503 | Fault::ChunkedAndLength => {
                        let _ = tls.shutdown().await;
                    }
                    // Held open, saying nothing more, until the gateway gives up.
                    Fault::Stall => {
                        let mut rest = [0u8; 64];
                        while tls.read(&mut rest).await.is_ok_and(|n| n > 0) {}
                    }
                    // Cut: the TCP stream ends with no TLS close_notify, so the
                    // peer knows the data was truncated.
                    _ => {
                        let (tcp, _) = tls.into_inner();
                        drop(tcp);
                    }
                }
            });
        }
    });
    addr
}

async fn gateway_for(addr: SocketAddr, ca_pem: &str, extra: &str) -> TestGateway {
    TestGateway::start_with(
        &format!("https://localhost:{}{PREFIX}", addr.port()),
        ca_pem,
        extra,
    )
    .await
}

#[tokio::test]
async fn garbage_no_tls_and_html_errors_get_their_documented_answers() {
    let ca = DemoCa::generate(&["localhost"]).unwrap();
    let fault = Arc::new(Mutex::new(Fault::Garbage));
    let addr = raw_upstream(&ca, fault.clone()).await;
    let gateway = gateway_for(addr, &ca.ca_pem, "[cache]\nttl = \"0s\"\n").await;

    for kind in [Fault::Garbage, Fault::NoTls, Fault::Switching] {
        *fault.lock().unwrap() = kind;
        let (status, headers, body) = gateway.get("/chargers").await;
        assert_eq!(status, StatusCode::BAD_GATEWAY, "{kind:?}");
        assert_eq!(headers["content-type"], "application/json");
        assert_eq!(
            json(&body),
            serde_json::json!({"error": "Upstream unreachable"}),
            "{kind:?}"
        );
    }

    *fault.lock().unwrap() = Fault::Html503;
    let (status, headers, body) = gateway.get("/chargers").await;
    assert_eq!(
        status,
        StatusCode::SERVICE_UNAVAILABLE,
        "passed through as Joulo's answer"
    );
    assert_eq!(headers["content-type"], "text/html");
    assert_eq!(body, "<html><body>Upstream maintenance</body></html");

    // Framed two ways: the chunked body, whole, and no stale Content-Length.
    *fault.lock().unwrap() = Fault::ChunkedAndLength;
    let (status, headers, framed) = gateway.get("/chargers").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(framed, r#"{"chargers": []}"#);
    assert_ne!(
        headers.get("content-length").map(|v| v.to_str().unwrap()),
        Some("3")
    );

    // And the gateway still serves the gateway's own endpoints afterwards.
    assert_eq!(gateway.get("/healthz").await.0, StatusCode::OK);
    assert_no_leak(&[&gateway.token], &[&body]);
}

#[tokio::test]
async fn a_reset_mid_body_reaches_the_client_as_a_cut_short_body() {
    let ca = DemoCa::generate(&["localhost"]).unwrap();
    let fault = Arc::new(Mutex::new(Fault::ResetMidBody));
    let addr = raw_upstream(&ca, fault).await;
    let gateway = gateway_for(addr, &ca.ca_pem, "[cache]\nttl = \"0s\"\n").await;

    // Streamed: the head went out before the reset, so the client must see a body
    // shorter than announced, never a complete-looking answer.
    let response = gateway
        .raw(b"GET /chargers HTTP/1.1\r\nHost: gateway.lan\r\nConnection: close\r\n\r\n")
        .await;
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("content-length: 1000"),
        "{head}"
    );
    assert!(
        body.len() < 1000,
        "the body is cut short ({} bytes)",
        body.len()
    );
    assert_eq!(gateway.get("/healthz").await.0, StatusCode::OK);
}

#[tokio::test]
async fn a_reset_mid_body_of_a_cached_route_is_502_or_a_stale_copy() {
    let ca = DemoCa::generate(&["localhost"]).unwrap();
    let fault = Arc::new(Mutex::new(Fault::ResetMidBody));
    let addr = raw_upstream(&ca, fault).await;
    let gateway = gateway_for(addr, &ca.ca_pem, "").await;
    // Buffered for the cache: nothing was sent to the client yet, so a clean 502.
    let (status, _, body) = gateway.get("/chargers").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(json(&body)["error"], "Upstream unreachable");
}

/// Sends `raw` to the gateway and returns the status line's code.
async fn raw_status(gateway: &TestGateway, raw: &str) -> u16 {
    let response = gateway.raw(raw.as_bytes()).await;
    response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn ambiguous_framing_is_refused_or_reframed_never_passed_on() {
    let upstream = MockUpstream::start();
    let gateway =
        TestGateway::start_writer(&upstream, "[routes.add_charger]\nenabled = true\n").await;
    let body = r#"{"nickname":"x"}"#;
    let smuggled = "GET /me HTTP/1.1\r\nHost: g\r\n\r\n";
    let cases = [
        // Content-Length and Transfer-Encoding together (the classic CL.TE / TE.CL).
        format!(
            "POST /chargers HTTP/1.1\r\nHost: g\r\nContent-Length: {}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n{smuggled}",
            body.len(),
            body.len()
        ),
        // Two different Content-Lengths.
        format!(
            "POST /chargers HTTP/1.1\r\nHost: g\r\nContent-Length: {}\r\nContent-Length: 3\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
        // A comma-joined conflicting Content-Length.
        format!(
            "POST /chargers HTTP/1.1\r\nHost: g\r\nContent-Length: {}, 3\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
        // An obs-folded header line.
        format!(
            "POST /chargers HTTP/1.1\r\nHost: g\r\nX-Folded: a\r\n b\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
        // An invalid chunk size.
        format!(
            "POST /chargers HTTP/1.1\r\nHost: g\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\nzz\r\n{body}\r\n0\r\n\r\n"
        ),
        // A transfer coding other than a final chunked.
        format!(
            "POST /chargers HTTP/1.1\r\nHost: g\r\nTransfer-Encoding: chunked, identity\r\nConnection: close\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
            body.len()
        ),
        // A GET with a body and a smuggled request behind it.
        format!(
            "GET /chargers HTTP/1.1\r\nHost: g\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{smuggled}",
            smuggled.len()
        ),
    ];
    // hyper reads Content-Length with Transfer-Encoding as chunked (RFC 9112
    // section 6.3), hides the Content-Length and closes the connection after the
    // answer; the gateway then sends the body framed by its length alone.
    for raw in &cases {
        let before = upstream.received().len();
        let status = raw_status(&gateway, raw).await;
        let sent: Vec<_> = upstream.received().into_iter().skip(before).collect();
        match status {
            400 | 413 | 501 => assert!(sent.is_empty(), "refused but forwarded: {raw:?}"),
            200 => {
                assert_eq!(
                    sent.len(),
                    1,
                    "one request, never a smuggled second: {raw:?}"
                );
                let got = &sent[0];
                assert!(got.headers.get("transfer-encoding").is_none(), "{raw:?}");
                assert!(got.target == format!("{PREFIX}/chargers"), "{raw:?}");
                let declared = got
                    .headers
                    .get("content-length")
                    .map(|v| v.to_str().unwrap().parse::<usize>().unwrap());
                assert_eq!(
                    declared.unwrap_or(0),
                    got.body.len(),
                    "framed by its length: {raw:?}"
                );
                if got.method == Method::GET {
                    assert!(got.body.is_empty());
                }
            }
            other => panic!("unexpected {other} for {raw:?}"),
        }
    }
    assert!(
        upstream
            .received()
            .iter()
            .all(|r| !r.target.ends_with("/me")),
        "no smuggled request reached the upstream"
    );
    // A well-formed request on a fresh connection still works.
    let ok = raw_status(
        &gateway,
        "GET /energy HTTP/1.1\r\nHost: g\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(ok, 200);
    let _ = TcpStream::connect(gateway.addr).await.unwrap();
}

#[tokio::test]
async fn a_stalled_body_answers_every_waiter_within_the_bound() {
    let ca = DemoCa::generate(&["localhost"]).unwrap();
    let fault = Arc::new(Mutex::new(Fault::Stall));
    let addr = raw_upstream(&ca, fault).await;
    // The whole answer within 1 s; no queue for the budget.
    let gateway = gateway_for(
        addr,
        &ca.ca_pem,
        "timeout = \"1s\"\n[limits]\nqueue_timeout = \"0s\"\n[cache]\nstale_if_error = \"0s\"\n",
    )
    .await;
    let bound = Duration::from_millis(1000 + 500);
    let started = Instant::now();
    let first = tokio::spawn({
        let addr = gateway.addr;
        async move { support::send(addr, Method::GET, "/chargers", &[], "").await }
    });
    // Later requests join the stalled call at different moments; each gives
    // up with the first, not a full timeout after it joined.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let later: Vec<_> = (0..3)
        .map(|_| {
            let addr = gateway.addr;
            tokio::spawn(
                async move { support::send(addr, Method::GET, "/chargers", &[], "").await },
            )
        })
        .collect();
    let (status, _, body) = first.await.unwrap();
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
    assert_eq!(json(&body)["error"], "Upstream timed out");
    for waiter in later {
        let (status, _, _) = waiter.await.unwrap();
        assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    }
    let took = started.elapsed();
    assert!(took < bound, "answered after {took:?}");
    assert_eq!(
        gateway.state.cache.stats.misses.get(),
        1,
        "one call for all"
    );
    assert_eq!(gateway.state.cache.stats.coalesced.get(), 3);
    // The stalled flight is gone: the next request starts a new call.
    assert_eq!(
        gateway.get("/chargers").await.0,
        StatusCode::GATEWAY_TIMEOUT
    );
    assert_eq!(gateway.state.cache.stats.misses.get(), 2);
}

#[tokio::test]
async fn a_stalled_streamed_body_is_cut_after_the_idle_bound() {
    let ca = DemoCa::generate(&["localhost"]).unwrap();
    let fault = Arc::new(Mutex::new(Fault::Stall));
    let addr = raw_upstream(&ca, fault).await;
    let gateway = gateway_for(
        addr,
        &ca.ca_pem,
        "timeout = \"1s\"\n[cache]\nttl = \"0s\"\n",
    )
    .await;
    let started = Instant::now();
    let response = gateway
        .raw(b"GET /chargers HTTP/1.1\r\nHost: gateway.lan\r\nConnection: close\r\n\r\n")
        .await;
    let took = started.elapsed();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(
        body, "{\"chargers\":",
        "the 12 bytes that came, then the cut"
    );
    assert!(
        took < Duration::from_millis(2500),
        "cut after {took:?}, not held open"
    );
    assert_eq!(gateway.get("/healthz").await.0, StatusCode::OK);
}

/// A TCP relay in front of the mock upstream that can go silent on the
/// connections it carries, as a home router's NAT does when it drops a
/// mapping: nothing more is relayed on them and nothing is closed, while new
/// connections get through.
struct BlackHole {
    addr: SocketAddr,
    /// Bumped by [`BlackHole::swallow_open_connections`]; a connection
    /// relays only while this is what it was when it was accepted.
    epoch: Arc<AtomicU64>,
    /// Connections accepted so far.
    accepted: Arc<AtomicU64>,
}

impl BlackHole {
    async fn start(target: SocketAddr) -> BlackHole {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let epoch = Arc::new(AtomicU64::new(0));
        let accepted = Arc::new(AtomicU64::new(0));
        let accepting = epoch.clone();
        let counting = accepted.clone();
        tokio::spawn(async move {
            while let Ok((device, _)) = listener.accept().await {
                counting.fetch_add(1, Ordering::SeqCst);
                let Ok(upstream) = TcpStream::connect(target).await else {
                    continue;
                };
                let born = accepting.load(Ordering::SeqCst);
                let (from_device, to_device) = device.into_split();
                let (from_upstream, to_upstream) = upstream.into_split();
                for (mut from, mut to) in [(from_device, to_upstream), (from_upstream, to_device)] {
                    let epoch = accepting.clone();
                    tokio::spawn(async move {
                        let mut buf = vec![0u8; 16 * 1024];
                        loop {
                            let n = match from.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => n,
                            };
                            if epoch.load(Ordering::SeqCst) != born {
                                // Silent: both halves held open, nothing relayed.
                                std::future::pending::<()>().await;
                            }
                            if to.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    });
                }
            }
        });
        BlackHole {
            addr,
            epoch,
            accepted,
        }
    }

    fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::SeqCst)
    }

    fn swallow_open_connections(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
    }
}

#[tokio::test]
async fn a_silent_http2_connection_costs_one_timeout_then_is_replaced() {
    let upstream = MockUpstream::start();
    let hole = BlackHole::start(upstream.addr).await;
    let gateway = gateway_for(
        hole.addr,
        &upstream.ca_pem,
        "timeout = \"300ms\"\n[cache]\nttl = \"0s\"\n",
    )
    .await;
    let (status, _, body) = gateway.get("/chargers").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(upstream.last().version, http::Version::HTTP_2);

    hole.swallow_open_connections();
    let started = Instant::now();
    let (status, _, body) = gateway.get("/chargers").await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
    assert_eq!(json(&body)["error"], "Upstream timed out");
    assert!(started.elapsed() < Duration::from_secs(5));

    // The next calls go out on a new connection, not into the silent one.
    for _ in 0..3 {
        let (status, _, body) = gateway.get("/chargers").await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    assert_eq!(upstream.received().len(), 4);
    assert_eq!(hole.accepted(), 2);
}

/// A connection idle longer than a home router's NAT may keep its mapping is
/// not trusted with the next call: HTTP/2, like HTTP/1.1, is reused for 90 s.
#[tokio::test]
async fn an_http2_connection_idle_past_90_s_is_not_reused() {
    let upstream = MockUpstream::start();
    let hole = BlackHole::start(upstream.addr).await;
    let gateway = gateway_for(hole.addr, &upstream.ca_pem, "[cache]\nttl = \"0s\"\n").await;
    for (idle, connections) in [(0, 1), (60, 1), (60, 1), (91, 2), (5, 2)] {
        support::jump_clock(Duration::from_secs(idle)).await;
        let (status, _, body) = gateway.get("/chargers").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(hole.accepted(), connections, "after {idle} s idle");
    }
    assert_eq!(upstream.last().version, http::Version::HTTP_2);
}
