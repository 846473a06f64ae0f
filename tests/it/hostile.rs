//! A hostile device that holds what it can: connection slots with HTTP/2
//! connections whose receive window is 0 (no answer can ever be sent) kept
//! busy with PINGs, silent TLS handshakes, answers it never reads. Other
//! devices must still be served, and what it holds must stay bounded.

use crate::support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use joulo_gateway::demo::DemoCa;
use support::{MockUpstream, TestGateway, connect_from, get_from};
use tokio::io::AsyncReadExt;
use tokio::task::JoinHandle;

/// How long a victim may wait for `/healthz` in these tests: the issue's
/// bound is 1 s; a loaded CI machine gets some slack, the answer normally
/// comes in milliseconds (bench/hostile measures it).
const SERVED_WITHIN: Duration = Duration::from_secs(3);

/// One HTTP/2 connection from `source` with a receive window of 0 and a PING
/// every 200 ms, holding `streams` requests for `path`. Returns the statuses
/// of the answer heads that came (the bodies never can), and the task driving
/// the connection, which ends when the gateway closes it.
async fn stuck_h2(
    source: &str,
    gateway: SocketAddr,
    path: &str,
    streams: usize,
) -> (Vec<u16>, JoinHandle<()>) {
    let tcp = connect_from(source, gateway).await;
    let (client, mut connection) = h2::client::Builder::new()
        .initial_window_size(0)
        .handshake::<_, Bytes>(tcp)
        .await
        .unwrap();
    let mut ping = connection.ping_pong().unwrap();
    let mut answers = Vec::new();
    for _ in 0..streams {
        let mut client = client.clone().ready().await.unwrap();
        let request = http::Request::get(format!("http://gateway.lan{path}"))
            .body(())
            .unwrap();
        let (answer, _) = client.send_request(request, true).unwrap();
        answers.push(answer);
    }
    let (heads_tx, heads_rx) = tokio::sync::oneshot::channel();
    // The client, its streams and their unread bodies live as long as this
    // task: dropping them would close the streams, and the connection.
    let driver = tokio::spawn(async move {
        let _client = client;
        let pings = async {
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                if ping.ping(h2::Ping::opaque()).await.is_err() {
                    return;
                }
            }
        };
        let held = async {
            let mut heads = Vec::new();
            let mut bodies = Vec::new();
            for answer in answers {
                // A reset stream has no head.
                if let Ok(Ok(response)) = tokio::time::timeout(SERVED_WITHIN, answer).await {
                    heads.push(response.status().as_u16());
                    bodies.push(response.into_body());
                }
            }
            let _ = heads_tx.send(heads);
            std::future::pending::<()>().await;
            drop(bodies);
        };
        tokio::select! {
            _ = connection => {}
            () = pings => {}
            () = held => {}
        }
    });
    let heads = heads_rx.await.unwrap_or_default();
    (heads, driver)
}

#[tokio::test]
async fn zero_window_http2_connections_holding_every_slot_lock_no_one_out() {
    let upstream = MockUpstream::start();
    let gateway = TestGateway::start_on(
        &upstream,
        "[server]\nmax_connections = 4\nmax_connections_per_ip = 4\n",
    )
    .await;
    // Every slot: four connections from one address, each with an answer
    // that cannot be sent and PINGs that keep it from looking idle.
    let mut held = Vec::new();
    for _ in 0..4 {
        let (heads, driver) = stuck_h2("127.0.0.2", gateway.addr, "/metrics", 1).await;
        assert_eq!(heads, [200], "the head is sent, the body never can be");
        held.push(driver);
    }
    // Other devices are served at once, one after another, each making the
    // attacker's oldest remaining connection give up its slot.
    for round in 0..3 {
        let (status, _) = tokio::time::timeout(
            SERVED_WITHIN,
            get_from("127.0.0.3", gateway.addr, "/healthz"),
        )
        .await
        .unwrap_or_else(|_| panic!("victim {round} hung"));
        assert_eq!(status, 200, "victim {round}");
    }
    // Asked to make room, a connection that cannot finish is dropped after
    // the grace (2 s), though it is never idle.
    let oldest = held.remove(0);
    tokio::time::timeout(Duration::from_secs(5), oldest)
        .await
        .expect("the oldest held connection was closed")
        .unwrap();
    // The attacker's newest connection is still there: making room takes
    // one connection a newcomer, not all of them.
    assert!(!held.last().unwrap().is_finished());
}

#[tokio::test]
async fn silent_tls_handshakes_holding_every_slot_lock_no_one_out() {
    let upstream = MockUpstream::start();
    let ca = DemoCa::generate(&["localhost"]).unwrap();
    let lan = support::LanCert::write(&ca);
    // Handshake and header bounds far above the test's few seconds: only
    // making room can free these slots in time.
    let gateway = TestGateway::start_on(
        &upstream,
        &format!(
            "[server]\n{}tls_handshake_timeout = \"60s\"\nheader_timeout = \"60s\"\n\
             max_connections = 2\nmax_connections_per_ip = 2\n",
            lan.server_lines()
        ),
    )
    .await;
    let mut silent = Vec::new();
    for _ in 0..2 {
        silent.push(connect_from("127.0.0.2", gateway.addr).await);
    }
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.ca_der.clone()).unwrap();
    let tls = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
    let localhost = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let served = tokio::time::timeout(SERVED_WITHIN, async {
        let tcp = connect_from("127.0.0.3", gateway.addr).await;
        let mut tls = connector.connect(localhost, tcp).await.unwrap();
        tokio::io::AsyncWriteExt::write_all(
            &mut tls,
            b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        )
        .await
        .unwrap();
        let mut answer = Vec::new();
        let _ = tls.read_to_end(&mut answer).await;
        String::from_utf8_lossy(&answer).into_owned()
    })
    .await
    .expect("the HTTPS victim hung");
    assert!(served.starts_with("HTTP/1.1 200"), "{served}");
    // The oldest silent socket, mid-handshake, was dropped to make room.
    let mut sink = Vec::new();
    let closed =
        tokio::time::timeout(Duration::from_secs(5), silent[0].read_to_end(&mut sink)).await;
    assert!(closed.is_ok(), "the silent handshake was dropped");
}

#[tokio::test]
async fn answers_a_client_never_reads_are_bounded_per_connection_and_in_total() {
    let upstream = MockUpstream::start();
    let gateway = TestGateway::start_on(
        &upstream,
        "[server]\nmax_answer_memory = \"96KiB\"\nmax_answer_memory_per_connection = \"24KiB\"\n",
    )
    .await;
    // /metrics answers are a few KiB each, charged 4 KiB more: the first
    // few fit the connection's 24 KiB, the rest are 503.
    let (heads, first) = stuck_h2("127.0.0.2", gateway.addr, "/metrics", 12).await;
    let served = heads.iter().filter(|s| **s == 200).count();
    assert!((1..=4).contains(&served), "{heads:?}");
    assert!(
        heads.iter().all(|s| *s == 200 || *s == 503),
        "only answers or 503: {heads:?}"
    );
    assert_eq!(heads.len(), 12, "every stream answered, within the total");
    // More connections push the total past 96 KiB: then a connection that
    // already holds an answer has its new streams reset, not answered.
    let mut drivers = vec![first];
    let mut reset = 0;
    for _ in 0..4 {
        let (heads, driver) = stuck_h2("127.0.0.2", gateway.addr, "/metrics", 12).await;
        reset += 12 - heads.len();
        drivers.push(driver);
    }
    assert!(reset > 0, "past the total, new streams are reset");
    // Another device is served all the same: its first answer always fits.
    let (status, _) = tokio::time::timeout(
        SERVED_WITHIN,
        get_from("127.0.0.3", gateway.addr, "/metrics"),
    )
    .await
    .expect("served");
    assert_eq!(status, 200);
    for driver in drivers {
        driver.abort();
    }
}

#[tokio::test]
async fn answers_still_under_way_count_too() {
    let upstream = MockUpstream::start();
    let gateway =
        TestGateway::start_on(&upstream, "[server]\nmax_answer_memory = \"96KiB\"\n").await;
    // Past its allowance of ops requests (100 at once), an address's 429s are
    // held up to a second before they are answered: once it is spent, every
    // one of these streams waits, none has an answer to charge yet.
    for _ in 0..110 {
        get_from("127.0.0.2", gateway.addr, "/healthz").await;
    }
    let mut drivers = Vec::new();
    let mut heads = 0;
    for _ in 0..3 {
        let (answered, driver) = stuck_h2("127.0.0.2", gateway.addr, "/metrics", 60).await;
        heads += answered.len();
        drivers.push(driver);
    }
    // Each waiting stream holds its overhead meanwhile, so past 96 KiB the
    // streams of connections holding some are reset, not all 180 kept.
    assert!(heads < 120, "{heads} of 180 streams kept");
    for driver in drivers {
        driver.abort();
    }
}

#[tokio::test]
async fn an_attacker_reconnecting_as_fast_as_it_is_dropped_locks_no_one_out() {
    let upstream = MockUpstream::start();
    let gateway = TestGateway::start_on(
        &upstream,
        "[server]\nmax_connections = 4\nmax_connections_per_ip = 4\n",
    )
    .await;
    // Two addresses, each keeping four zero-window connections open and
    // opening a new one the moment one is closed, for as long as the test.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut attackers = Vec::new();
    for source in ["127.0.0.2", "127.0.0.4"] {
        for _ in 0..4 {
            let stop = stop.clone();
            let addr = gateway.addr;
            attackers.push(tokio::spawn(async move {
                // Bounded: at most 500 connections each.
                for _ in 0..500 {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        return;
                    }
                    held_until_closed(source, addr).await;
                }
            }));
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    for round in 0..5 {
        let (status, body) = tokio::time::timeout(
            SERVED_WITHIN,
            get_from("127.0.0.3", gateway.addr, "/healthz"),
        )
        .await
        .unwrap_or_else(|_| panic!("victim {round} hung"));
        assert_eq!(status, 200, "victim {round}: {body}");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for attacker in attackers {
        attacker.abort();
    }
}

/// One zero-window HTTP/2 connection from `source` with a request it can
/// never be answered, PINGing, held until the gateway closes or refuses it
/// (at most 5 s).
async fn held_until_closed(source: &str, gateway: SocketAddr) {
    let tcp = connect_from(source, gateway).await;
    let Ok((client, mut connection)) = h2::client::Builder::new()
        .initial_window_size(0)
        .handshake::<_, Bytes>(tcp)
        .await
    else {
        return;
    };
    let Some(mut ping) = connection.ping_pong() else {
        return;
    };
    let held = async {
        let mut client = client.ready().await.ok()?;
        let request = http::Request::get("http://gateway.lan/metrics")
            .body(())
            .ok()?;
        let (answer, _) = client.send_request(request, true).ok()?;
        let body = answer.await.ok()?.into_body();
        while ping.ping(h2::Ping::opaque()).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        drop(body);
        Some(())
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        tokio::select! {
            _ = connection => {}
            _ = held => {}
        }
    })
    .await;
}
