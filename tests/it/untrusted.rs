//! Joulo's answers are untrusted input: an answer that echoes the gateway's
//! token (in a header, a body, split across chunks) never reaches a device or
//! the cache, a doubly coded answer is refused, an over-long HTTP/1.1 head is
//! refused, a streamed answer that fails before its first byte is a clean
//! error, and the GET retry after a dropped connection is charged and counted.

use crate::support;

use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::StatusCode;
use joulo_gateway::demo::DemoCa;
use support::{PREFIX, TestGateway, assert_no_leak, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// What the raw upstream does with each request head it reads.
#[derive(Clone)]
enum Answer {
    /// Writes these pieces, each flushed and followed by a pause so it
    /// arrives as a read of its own, then waits for the next request on the
    /// same connection.
    Pieces(Vec<Vec<u8>>),
    /// Writes these pieces, then closes the connection (no TLS close_notify:
    /// a cut).
    PiecesThenCut(Vec<Vec<u8>>),
    /// Writes these pieces, then says nothing more, holding the connection.
    PiecesThenSilence(Vec<Vec<u8>>),
}

/// A hand-written HTTP/1.1 upstream over TLS, so answers no real server would
/// send (the token echoed, a head of 20 KiB, a body split on purpose) can be.
struct RawUpstream {
    /// Where it listens.
    addr: SocketAddr,
    /// The CA its certificate is signed by, for the gateway's `ca_file`.
    ca_pem: String,
    /// What it does with the next request.
    answer: Arc<Mutex<Answer>>,
    /// Request heads read so far: the calls that reached the upstream.
    heads: Arc<AtomicU64>,
}

impl RawUpstream {
    async fn start() -> RawUpstream {
        let ca = DemoCa::generate(&["localhost"]).unwrap();
        let acceptor = support::tls_acceptor(&ca, b"http/1.1");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let answer = Arc::new(Mutex::new(Answer::Pieces(vec![ok(b"{}")])));
        let heads = Arc::new(AtomicU64::new(0));
        let (answering, counting) = (answer.clone(), heads.clone());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let answer = answering.clone();
                let heads = counting.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    loop {
                        let mut head = Vec::new();
                        let mut byte = [0u8; 1];
                        while !head.ends_with(b"\r\n\r\n") {
                            if tls.read(&mut byte).await.unwrap_or(0) == 0 {
                                return;
                            }
                            head.push(byte[0]);
                        }
                        heads.fetch_add(1, Ordering::SeqCst);
                        let answer = answer.lock().unwrap().clone();
                        let (Answer::Pieces(pieces)
                        | Answer::PiecesThenCut(pieces)
                        | Answer::PiecesThenSilence(pieces)) = &answer;
                        for piece in pieces {
                            if tls.write_all(piece).await.is_err() || tls.flush().await.is_err() {
                                return;
                            }
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        match answer {
                            Answer::Pieces(_) => {}
                            Answer::PiecesThenCut(_) => {
                                let (tcp, _) = tls.into_inner();
                                drop(tcp);
                                return;
                            }
                            Answer::PiecesThenSilence(_) => {
                                let mut rest = [0u8; 64];
                                while tls.read(&mut rest).await.is_ok_and(|n| n > 0) {}
                                return;
                            }
                        }
                    }
                });
            }
        });
        RawUpstream {
            addr,
            ca_pem: ca.ca_pem,
            answer,
            heads,
        }
    }

    fn set(&self, answer: Answer) {
        *self.answer.lock().unwrap() = answer;
    }

    fn heads(&self) -> u64 {
        self.heads.load(Ordering::SeqCst)
    }

    async fn gateway(&self, extra: &str) -> TestGateway {
        TestGateway::start_with(
            &format!("https://localhost:{}{PREFIX}", self.addr.port()),
            &self.ca_pem,
            extra,
        )
        .await
    }
}

/// Allowances roomy enough for a test's run of requests from one address.
const ROOMY: &str = "[limits]\nclient_per_minute = 600\nclient_burst = 100\n\
                     upstream_per_minute = 600\nupstream_burst = 100\n";

/// A whole 200 JSON answer framed by its length.
fn ok(body: &[u8]) -> Vec<u8> {
    answer(200, &[], body)
}

/// A whole answer with `status`, extra `headers` and `body`, framed by length.
fn answer(status: u16, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
        body.len()
    )
    .into_bytes();
    for (name, value) in headers {
        out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

/// A chunked 200 head, then each of `chunks` as an HTTP chunk of its own
/// (sent apart), then the last chunk.
fn chunked(chunks: &[&str]) -> Vec<Vec<u8>> {
    let mut pieces = vec![
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
            .to_vec(),
    ];
    for chunk in chunks {
        pieces.push(format!("{:x}\r\n{chunk}\r\n", chunk.len()).into_bytes());
    }
    pieces.push(b"0\r\n\r\n".to_vec());
    pieces
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

/// A GET on a fresh connection, the raw bytes that came back.
async fn raw_get(gateway: &TestGateway, target: &str) -> String {
    gateway
        .raw(
            format!("GET {target} HTTP/1.1\r\nHost: gateway.lan\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
}

/// The refusal a device gets for an echoed token.
fn assert_refused(status: StatusCode, headers: &http::HeaderMap, body: &str, what: &str) {
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{what}: {body}");
    assert_eq!(headers["content-type"], "application/json", "{what}");
    assert_eq!(
        json(body),
        serde_json::json!({"error": "Upstream answer refused: it held the gateway's credentials"}),
        "{what}"
    );
}

#[tokio::test]
async fn a_cached_routes_answer_echoing_the_token_is_refused_and_never_cached() {
    let upstream = RawUpstream::start().await;
    let gateway = upstream.gateway(ROOMY).await;
    let token = gateway.token.clone();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "a debug header",
            answer(200, &[("x-debug-auth", &format!("Bearer {token}"))], b"{}"),
        ),
        (
            "a WWW-Authenticate echo",
            answer(
                403,
                &[(
                    "www-authenticate",
                    &format!("Bearer error=\"invalid_token\", token=\"{token}\""),
                )],
                b"{\"error\":\"no\"}",
            ),
        ),
        (
            "a header's name",
            answer(200, &[(token.as_str(), "1")], b"{}"),
        ),
        (
            "an error page quoting it",
            answer(
                500,
                &[],
                format!("{{\"error\":\"bad request Authorization: Bearer {token}\"}}").as_bytes(),
            ),
        ),
        (
            "a gzip body",
            answer(
                200,
                &[("content-encoding", "gzip")],
                &gzip(format!("{{\"chargers\":[],\"debug\":\"{token}\"}}").as_bytes()),
            ),
        ),
    ];
    let mut seen = Vec::new();
    for (what, reply) in cases {
        upstream.set(Answer::Pieces(vec![reply]));
        for _ in 0..2 {
            let before = upstream.heads();
            let (status, headers, body) = gateway.get("/chargers").await;
            assert_refused(status, &headers, &body, what);
            assert!(headers.get("x-cache").is_none_or(|v| v != "HIT"), "{what}");
            assert_eq!(
                upstream.heads(),
                before + 1,
                "{what}: not cached, asked again"
            );
            seen.push(format!("{headers:?} {body}"));
        }
    }
    assert_eq!(gateway.state.cache.len(), 0, "nothing was stored");
    // A clean answer afterwards is served and cached as usual.
    upstream.set(Answer::Pieces(vec![ok(b"{\"chargers\":[]}")]));
    assert_eq!(gateway.get("/chargers").await.0, StatusCode::OK);
    assert_eq!(gateway.get("/chargers").await.1["x-cache"], "HIT");

    let logs = support::logs();
    assert!(
        logs.lines().any(|l| l.contains("held the gateway's token")
            && l.contains("route=\"chargers\"")
            || l.contains("held the gateway's token") && l.contains("route=chargers")),
        "the log names the route"
    );
    let seen: Vec<&str> = seen.iter().map(String::as_str).collect();
    assert_no_leak(&[&token], &seen);
}

#[tokio::test]
async fn a_streamed_answer_echoing_the_token_is_refused_or_cut_before_any_byte_of_it() {
    let upstream = RawUpstream::start().await;
    let gateway = upstream
        .gateway(&format!("{ROOMY}[cache]\nttl = \"0s\"\n"))
        .await;
    let token = gateway.token.clone();
    let mut seen = Vec::new();

    // In a header, in the first chunk, and coded: nothing was sent yet, so a
    // clean 502.
    let first_chunk = format!("{{\"debug\":\"{token}\"}}");
    let cases: Vec<(&str, Vec<Vec<u8>>)> = vec![
        ("a header", vec![answer(200, &[("x-echo", &token)], b"{}")]),
        ("the first chunk", chunked(&[&first_chunk, "{}"])),
        (
            "a length-framed body",
            vec![answer(200, &[], first_chunk.as_bytes())],
        ),
        (
            "a gzip body",
            vec![answer(
                200,
                &[("content-encoding", "gzip")],
                &gzip(first_chunk.as_bytes()),
            )],
        ),
    ];
    for (what, pieces) in cases {
        upstream.set(Answer::Pieces(pieces));
        let before = upstream.heads();
        let (status, headers, body) = gateway.get("/chargers").await;
        assert_refused(status, &headers, &body, what);
        assert_eq!(upstream.heads(), before + 1, "{what}");
        seen.push(format!("{headers:?} {body}"));
    }

    // Split across two chunks after the head went out: the body is cut before
    // the chunk completing it, and the token's start, held back, never left.
    let (start, rest) = token.split_at(20);
    let split = chunked(&[
        &format!("{{\"chargers\":[],\"debug\":\"{start}"),
        &format!("{rest}\"}}"),
    ]);
    upstream.set(Answer::Pieces(split));
    let response = raw_get(&gateway, "/chargers").await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(
        response.contains("{\"chargers\":[],\"debug\":\""),
        "{response}"
    );
    assert!(
        !response.contains(&token[..6]),
        "no byte of the token: {response}"
    );
    assert!(
        !response.ends_with("0\r\n\r\n"),
        "the body is cut, not complete: {response}"
    );
    seen.push(response);

    // A clean answer split the same way passes whole.
    upstream.set(Answer::Pieces(chunked(&[
        "{\"chargers\":[],\"note\":\"jou",
        "le\"}",
    ])));
    let (status, _, body) = gateway.get("/chargers").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "{\"chargers\":[],\"note\":\"joule\"}");

    let seen: Vec<&str> = seen.iter().map(String::as_str).collect();
    assert_no_leak(&[&token], &seen);
}

#[tokio::test]
async fn a_token_rotated_away_during_the_call_is_still_what_the_answer_is_checked_for() {
    let upstream = RawUpstream::start().await;
    let gateway = upstream.gateway("[cache]\nttl = \"0s\"\n").await;
    let old = gateway.token.clone();
    let (start, rest) = old.split_at(10);
    let pieces = chunked(&[
        "{\"a\":1,",
        &format!("\"b\":\"{start}"),
        &format!("{rest}\"}}"),
    ]);
    upstream.set(Answer::Pieces(pieces));
    let request = tokio::spawn({
        let addr = gateway.addr;
        async move {
            let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            stream
                .write_all(
                    b"GET /chargers HTTP/1.1\r\nHost: gateway.lan\r\nConnection: close\r\n\r\n",
                )
                .await
                .unwrap();
            let mut out = Vec::new();
            let _ =
                tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out)).await;
            String::from_utf8_lossy(&out).into_owned()
        }
    });
    // The call is out with the old token; the new one is loaded before the
    // answer's body comes.
    assert!(support::eventually(Duration::from_secs(5), || async { upstream.heads() == 1 }).await);
    let new = gateway.rotate_token();
    gateway.state.tokens.reload().unwrap();
    let response = request.await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(
        response.contains("{\"a\":1,") && response.contains("\"b\":\""),
        "{response}"
    );
    assert!(!response.contains(&old[..6]), "{response}");
    assert!(!response.ends_with("0\r\n\r\n"), "cut: {response}");
    assert_no_leak(&[&old, &new], &[&response]);
}

#[tokio::test]
async fn two_content_encodings_are_refused_and_not_cached() {
    let upstream = RawUpstream::start().await;
    let gateway = upstream.gateway("").await;
    let twice = gzip(&gzip(b"{\"chargers\":[]}"));
    for headers in [
        &[("content-encoding", "gzip"), ("content-encoding", "gzip")][..],
        &[("content-encoding", "gzip, gzip")],
    ] {
        upstream.set(Answer::Pieces(vec![answer(200, headers, &twice)]));
        for _ in 0..2 {
            let before = upstream.heads();
            let (status, response_headers, body) = gateway.get("/chargers").await;
            assert_eq!(status, StatusCode::BAD_GATEWAY, "{headers:?}: {body}");
            assert_eq!(response_headers["content-type"], "application/json");
            assert!(json(&body)["error"].as_str().unwrap().contains("encoding"));
            assert_eq!(upstream.heads(), before + 1, "{headers:?}: not cached");
        }
    }
    // Streamed, too.
    let gateway = upstream.gateway("[cache]\nttl = \"0s\"\n").await;
    let (status, _, body) = gateway.get("/chargers").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
}

#[tokio::test]
async fn an_http1_head_over_16_kib_is_a_502_and_the_next_call_is_served() {
    let upstream = RawUpstream::start().await;
    let gateway = upstream.gateway("[cache]\nttl = \"0s\"\n").await;
    // Just under the bound: served.
    let fill = "a".repeat(15 * 1024);
    upstream.set(Answer::Pieces(vec![answer(
        200,
        &[("x-fill", &fill)],
        b"{}",
    )]));
    assert_eq!(gateway.get("/chargers").await.0, StatusCode::OK);
    // Over it: refused, on every connection it is tried on.
    let fill = "a".repeat(20 * 1024);
    upstream.set(Answer::Pieces(vec![answer(
        200,
        &[("x-fill", &fill)],
        b"{}",
    )]));
    let before = upstream.heads();
    let (status, headers, body) = gateway.get("/chargers").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(json(&body)["error"], "Upstream unreachable");
    // An answer came, malformed: not asked for again (one budget slot).
    assert_eq!(upstream.heads(), before + 1);
    // The pool is not poisoned: the next answer is served.
    upstream.set(Answer::Pieces(vec![ok(b"{\"chargers\":[]}")]));
    for _ in 0..3 {
        let (status, _, body) = gateway.get("/chargers").await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
}

#[tokio::test]
async fn a_streamed_answer_failing_before_its_first_byte_is_a_json_error() {
    let upstream = RawUpstream::start().await;
    let gateway = upstream
        .gateway("timeout = \"1s\"\n[cache]\nttl = \"0s\"\n")
        .await;
    let head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n"
        .to_vec();
    // The head, then the connection cut before any of the 100 bytes.
    upstream.set(Answer::PiecesThenCut(vec![head.clone()]));
    let (status, headers, body) = gateway.get("/chargers").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(json(&body)["error"], "Upstream unreachable");
    // The head, then silence: the upstream timeout, as JSON.
    upstream.set(Answer::PiecesThenSilence(vec![head]));
    let (status, _, body) = gateway.get("/chargers").await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
    assert_eq!(json(&body)["error"], "Upstream timed out");
    // An empty body is not a failure.
    upstream.set(Answer::Pieces(vec![answer(200, &[], b"")]));
    let (status, _, body) = gateway.get("/chargers").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, ""));
}

/// `/status`'s upstream calls this minute.
async fn status_used(gateway: &TestGateway) -> u64 {
    let (_, _, body) = gateway.get("/status").await;
    json(&body)["budget"]["used_this_minute"].as_u64().unwrap()
}

/// `/metrics`' `upstream_calls` total over every route and status.
async fn metrics_calls(gateway: &TestGateway) -> u64 {
    let (_, _, body) = gateway.get("/metrics").await;
    body.lines()
        .filter(|l| l.starts_with("joulo_gateway_upstream_calls_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[tokio::test]
async fn the_get_retry_after_a_dropped_connection_is_charged_and_counted() {
    let upstream = RawUpstream::start().await;
    let gateway = upstream.gateway("[cache]\nttl = \"0s\"\n").await;
    // Every call is read, then its connection dropped without an answer.
    upstream.set(Answer::PiecesThenCut(vec![]));
    for _ in 0..3 {
        let (status, _, body) = gateway.get("/chargers").await;
        assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
        assert_eq!(json(&body)["error"], "Upstream unreachable");
    }
    let reached = upstream.heads();
    let used = status_used(&gateway).await;
    let counted = metrics_calls(&gateway).await;
    println!(
        "3 requests: {reached} upstream calls, /status used_this_minute {used}, /metrics upstream_calls {counted}"
    );
    assert_eq!(reached, 6, "each GET retried once");
    assert_eq!(
        used, reached,
        "/status counts every call that reached Joulo"
    );
    assert_eq!(
        counted, reached,
        "/metrics counts every call that reached Joulo"
    );
}

#[tokio::test]
async fn with_no_budget_slot_left_the_retry_is_not_made() {
    let upstream = RawUpstream::start().await;
    let gateway = upstream
        .gateway("[cache]\nttl = \"0s\"\n[limits]\nupstream_per_minute = 1\nupstream_burst = 1\nqueue_timeout = \"0s\"\n")
        .await;
    upstream.set(Answer::PiecesThenCut(vec![]));
    let (status, headers, body) = gateway.get("/chargers").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(json(&body)["error"], "Upstream unreachable");
    assert_eq!(upstream.heads(), 1, "no retry without a slot");
    assert_eq!(status_used(&gateway).await, 1);
}

/// An HTTP/2 upstream (as Joulo is) answering every call with a head holding
/// `headers`, then `chunks` as DATA frames sent apart. Returns its address.
async fn h2_upstream(
    ca: &DemoCa,
    headers: Vec<(String, String)>,
    chunks: Vec<String>,
    calls: Arc<AtomicU64>,
) -> SocketAddr {
    let acceptor = support::tls_acceptor(ca, b"h2");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, headers, chunks, calls) = (
                acceptor.clone(),
                headers.clone(),
                chunks.clone(),
                calls.clone(),
            );
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut connection) = h2::server::handshake(tls).await else {
                    return;
                };
                while let Some(Ok((_, mut respond))) = connection.accept().await {
                    calls.fetch_add(1, Ordering::SeqCst);
                    let (headers, chunks) = (headers.clone(), chunks.clone());
                    tokio::spawn(async move {
                        let mut head = http::Response::builder()
                            .status(200)
                            .header("content-type", "application/json");
                        for (name, value) in &headers {
                            head = head.header(name, value);
                        }
                        let Ok(mut stream) = respond.send_response(head.body(()).unwrap(), false)
                        else {
                            return;
                        };
                        for chunk in chunks {
                            if stream.send_data(chunk.into(), false).is_err() {
                                return;
                            }
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        let _ = stream.send_data(bytes::Bytes::new(), true);
                    });
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn over_http2_an_echo_in_a_header_or_split_across_data_frames_never_reaches_a_device() {
    support::capture_logs();
    let ca = DemoCa::generate(&["localhost"]).unwrap();
    // The gateway's token is made when it starts; the upstream needs it
    // first, so the token file is rewritten with a known canary after.
    let token = support::canary();
    let (start, rest) = token.split_at(17);
    let calls = Arc::new(AtomicU64::new(0));
    let in_header = h2_upstream(
        &ca,
        vec![("x-debug".into(), format!("token={token}"))],
        vec!["{}".into()],
        calls.clone(),
    )
    .await;
    let split = h2_upstream(
        &ca,
        vec![],
        vec![
            format!("{{\"chargers\":[],\"t\":\"{start}"),
            format!("{rest}\"}}"),
        ],
        calls.clone(),
    )
    .await;
    let mut seen = Vec::new();
    for (addr, extra) in [(in_header, ""), (split, "[cache]\nttl = \"0s\"\n")] {
        let gateway = TestGateway::start_with(
            &format!("https://localhost:{}{PREFIX}", addr.port()),
            &ca.ca_pem,
            extra,
        )
        .await;
        joulo_gateway::demo::write_private(&gateway.token_file, &token).unwrap();
        gateway.state.tokens.reload().unwrap();
        let response = raw_get(&gateway, "/chargers").await;
        assert!(!response.contains(&token[..6]), "{response}");
        if extra.is_empty() {
            assert!(response.starts_with("HTTP/1.1 502"), "{response}");
        } else {
            assert!(response.starts_with("HTTP/1.1 200"), "{response}");
            assert!(!response.ends_with("0\r\n\r\n"), "cut: {response}");
        }
        seen.push(response);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    let seen: Vec<&str> = seen.iter().map(String::as_str).collect();
    assert_no_leak(&[&token], &seen);
}

/// A chunked 200 head with `transfer-encoding: gzip, chunked`, its one chunk
/// `data` gzipped.
fn gzip_chunked(data: &[u8]) -> Vec<Vec<u8>> {
    let coded = gzip(data);
    let mut chunk = format!("{:x}\r\n", coded.len()).into_bytes();
    chunk.extend_from_slice(&coded);
    chunk.extend_from_slice(b"\r\n0\r\n\r\n");
    vec![
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: gzip, chunked\r\n\r\n"
            .to_vec(),
        chunk,
    ]
}

#[tokio::test]
async fn a_transfer_coding_beside_chunked_is_refused_and_not_cached() {
    let upstream = RawUpstream::start().await;
    // /chargers streamed, /sessions cached.
    let gateway = upstream
        .gateway(&format!("{ROOMY}[routes.chargers]\nttl = \"0s\"\n"))
        .await;
    let token = gateway.token.clone();
    upstream.set(Answer::Pieces(gzip_chunked(
        format!("{{\"debug\":\"{token}\"}}").as_bytes(),
    )));
    let mut seen = Vec::new();
    for target in ["/chargers", "/sessions", "/sessions"] {
        let before = upstream.heads();
        let (status, headers, body) = gateway.get(target).await;
        assert_eq!(status, StatusCode::BAD_GATEWAY, "{target}: {body}");
        assert_eq!(
            json(&body)["error"],
            "Upstream answered in a content encoding the gateway cannot serve"
        );
        assert_eq!(
            upstream.heads(),
            before + 1,
            "{target}: asked again, nothing cached"
        );
        seen.push(format!("{headers:?} {body}"));
    }
    // Chunked framing alone is served as before.
    upstream.set(Answer::Pieces(chunked(&["{\"chargers\":[]}"])));
    assert_eq!(gateway.get("/chargers").await.0, StatusCode::OK);
    let seen: Vec<&str> = seen.iter().map(String::as_str).collect();
    assert_no_leak(&[&token], &seen);
}

#[tokio::test]
async fn the_upstreams_reason_phrase_never_reaches_a_device() {
    let upstream = RawUpstream::start().await;
    let gateway = upstream
        .gateway(&format!("{ROOMY}[routes.chargers]\nttl = \"0s\"\n"))
        .await;
    let token = gateway.token.clone();
    let head = format!(
        "HTTP/1.1 200 {token}\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{{}}"
    );
    upstream.set(Answer::Pieces(vec![head.into_bytes()]));
    let response = raw_get(&gateway, "/chargers").await;
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    assert_no_leak(&[&token], &[&response]);
}

#[tokio::test]
async fn the_upstreams_trailers_are_never_passed_on() {
    let upstream = RawUpstream::start().await;
    let gateway = upstream
        .gateway(&format!("{ROOMY}[routes.chargers]\nttl = \"0s\"\n"))
        .await;
    let token = gateway.token.clone();
    let mut pieces = chunked(&["{\"chargers\":[]}"]);
    pieces.pop();
    pieces.push(format!("0\r\nx-debug: {token}\r\n\r\n").into_bytes());
    upstream.set(Answer::Pieces(pieces));
    let response = gateway
        .raw(b"GET /chargers HTTP/1.1\r\nHost: gateway.lan\r\nTE: trailers\r\nConnection: close\r\n\r\n")
        .await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("{\"chargers\":[]}"), "{response}");
    assert!(
        response.ends_with("0\r\n\r\n"),
        "ended whole, not cut: {response:?}"
    );
    assert!(!response.contains("x-debug"), "{response}");
    assert_no_leak(&[&token], &[&response]);
}

#[tokio::test]
async fn over_http2_a_header_list_past_16_kib_is_one_call_and_a_502() {
    let ca = DemoCa::generate(&["localhost"]).unwrap();
    let calls = Arc::new(AtomicU64::new(0));
    let fill = "a".repeat(1000);
    let big = h2_upstream(
        &ca,
        (0..20)
            .map(|i| (format!("x-fill-{i}"), fill.clone()))
            .collect(),
        vec!["{}".into()],
        calls.clone(),
    )
    .await;
    let gateway = TestGateway::start_with(
        &format!("https://localhost:{}{PREFIX}", big.port()),
        &ca.ca_pem,
        "[cache]\nttl = \"0s\"\n",
    )
    .await;
    let (status, headers, body) = gateway.get("/chargers").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert_eq!(headers["content-type"], "application/json");
    // An answer came, too large: not asked for again.
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}
