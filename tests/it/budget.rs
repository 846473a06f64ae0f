//! The token's budget end to end: cache hits and misses, coalescing, stale copies
//! when Joulo fails, the upstream budget and Joulo's own 429.

use crate::support;

use std::sync::Arc;
use std::time::Duration;

use http::{Method, StatusCode};
use joulo_gateway::CacheKey;
use joulo_gateway::RouteId;
use support::{MockUpstream, PREFIX, Reply, TestGateway, json, jump_clock};

#[tokio::test]
async fn fifty_concurrent_identical_requests_make_one_upstream_call() {
    let upstream = MockUpstream::start();
    let gate = Arc::new(tokio::sync::Notify::new());
    upstream.set_reply(Reply::Gate(gate.clone()));
    let gateway = TestGateway::start_on(&upstream, "[limits]\nclient_burst = 100\n").await;

    let mut requests = Vec::new();
    for i in 0..50 {
        let addr = gateway.addr;
        // A stripped token parameter must not split the key.
        let target = if i % 2 == 0 {
            "/chargers".to_owned()
        } else {
            format!("/chargers?token=t{i}")
        };
        requests.push(tokio::spawn(async move {
            support::send(addr, Method::GET, &target, &[], "").await
        }));
    }
    let key = CacheKey::new(RouteId::Chargers, "");
    let all_waiting = support::eventually(Duration::from_secs(10), || async {
        gateway.state.cache.waiting(&key) == 50
    })
    .await;
    assert!(
        all_waiting,
        "all 50 joined one call ({} waiting)",
        gateway.state.cache.waiting(&key)
    );
    gate.notify_one();
    for request in requests {
        let (status, headers, body) = request.await.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers["x-cache"], "MISS");
        assert_eq!(json(&body)["gated"], true);
    }
    assert_eq!(upstream.received().len(), 1);

    let (_, headers, _) = gateway.get("/chargers").await;
    assert_eq!(headers["x-cache"], "HIT");
    assert_eq!(upstream.received().len(), 1);
}

#[tokio::test]
async fn fresh_within_the_ttl_then_fetched_again() {
    let upstream = MockUpstream::start();
    let gateway = TestGateway::start_on(&upstream, "[routes.energy]\nttl = \"10m\"\n").await;

    let (status, headers, first) = gateway.get("/energy").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["x-cache"], "MISS");
    assert!(headers.get("age").is_none());

    jump_clock(Duration::from_secs(42)).await;
    let (status, headers, second) = gateway.get("/energy").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["x-cache"], "HIT");
    assert!(headers["age"].to_str().unwrap().parse::<u64>().unwrap() >= 42);
    assert_eq!(first, second);
    assert_eq!(upstream.received().len(), 1);

    // /chargers has no ttl of its own in this config: [cache] ttl (15 s) applies.
    gateway.get("/chargers").await;
    jump_clock(Duration::from_secs(16)).await;
    let (_, headers, _) = gateway.get("/chargers").await;
    assert_eq!(headers["x-cache"], "MISS");
    assert_eq!(upstream.received().len(), 3);

    jump_clock(Duration::from_secs(10 * 60)).await;
    let (_, headers, _) = gateway.get("/energy").await;
    assert_eq!(
        headers["x-cache"], "MISS",
        "energy's own 10 min ttl ran out"
    );
    assert_eq!(upstream.received().len(), 4);
}

#[tokio::test]
async fn keys_follow_the_sanitised_query() {
    let upstream = MockUpstream::start();
    let gateway = TestGateway::start_on(&upstream, "").await;
    assert_eq!(gateway.get("/sessions?limit=5").await.1["x-cache"], "MISS");
    assert_eq!(
        gateway.get("/sessions?limit=5&token=x").await.1["x-cache"],
        "HIT"
    );
    assert_eq!(
        gateway.get("/sessions?ACCESS_TOKEN=y&limit=5").await.1["x-cache"],
        "HIT"
    );
    assert_eq!(gateway.get("/sessions?limit=6").await.1["x-cache"], "MISS");
    // One representation per entry: no client header splits or poisons it.
    for headers in [
        &[("accept-encoding", "gzip")][..],
        &[("accept-encoding", "gzip"), ("accept-encoding", "br")],
        &[("accept-encoding", "x-poison, identity;q=0")],
        &[("if-none-match", "\"x\""), ("range", "bytes=0-1")],
    ] {
        let (status, response_headers, body) = gateway
            .send(Method::GET, "/sessions?limit=5", headers, "")
            .await;
        assert_eq!(status, StatusCode::OK, "{headers:?}");
        assert_eq!(response_headers["x-cache"], "HIT", "{headers:?}");
        assert!(response_headers.get("content-encoding").is_none());
        assert!(json(&body)["ok"].as_bool().unwrap());
    }
    // The same parameters in another order or spelling are the same entry.
    for target in ["/sessions?offset=0&limit=5", "/sessions?limit=05&offset=0"] {
        gateway.get("/sessions?limit=5&offset=0").await;
        assert_eq!(gateway.get(target).await.1["x-cache"], "HIT", "{target}");
    }
    assert_eq!(upstream.received().len(), 3);
    assert_eq!(
        upstream.last().target,
        format!("{PREFIX}/sessions?limit=5&offset=0")
    );
}

#[tokio::test]
async fn a_stale_copy_stands_in_for_500_timeout_reset_429_and_refused_connections() {
    let mut upstream = MockUpstream::start();
    let gateway = TestGateway::start_on(&upstream, "timeout = \"300ms\"\n").await;
    let (_, _, good) = gateway.get("/chargers").await;

    for (reply, what) in [
        (Reply::Status(500, r#"{"error":"boom"}"#), "500"),
        (Reply::Hang, "timeout"),
        (Reply::Reset, "reset"),
        (Reply::TooMany(Some("1")), "429"),
    ] {
        upstream.set_reply(reply);
        jump_clock(Duration::from_secs(16)).await;
        let (status, headers, body) = gateway.get("/chargers").await;
        assert_eq!(status, StatusCode::OK, "{what}: {body}");
        assert_eq!(headers["x-cache"], "STALE", "{what}");
        assert!(headers["age"].to_str().unwrap().parse::<u64>().unwrap() >= 16);
        assert_eq!(body, good, "{what}");
    }
    // The reset GET was tried twice (one retry on another connection).
    let calls = upstream.received().len();
    assert_eq!(calls, 6);

    // The upstream gone entirely: connection refused.
    let port = upstream.addr.port();
    drop(std::mem::replace(&mut upstream, MockUpstream::start()));
    jump_clock(Duration::from_secs(5)).await;
    let (status, headers, _) = gateway.get("/chargers").await;
    assert_eq!(
        (status, &headers["x-cache"]),
        (StatusCode::OK, &"STALE".parse().unwrap())
    );
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());

    // Past stale_if_error (10 min) the failure shows.
    jump_clock(Duration::from_secs(11 * 60)).await;
    let (status, _, body) = gateway.get("/chargers").await;
    assert!(
        status == StatusCode::BAD_GATEWAY || status == StatusCode::TOO_MANY_REQUESTS,
        "{status}: {body}"
    );
}

#[tokio::test]
async fn errors_and_rejections_are_never_cached_nor_hidden() {
    let upstream = MockUpstream::start();
    let gateway = TestGateway::start_on(&upstream, "").await;
    upstream.set_reply(Reply::Status(500, r#"{"error":"boom"}"#));
    for _ in 0..2 {
        let (status, headers, _) = gateway.get("/energy").await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(headers["x-cache"], "MISS");
    }
    assert_eq!(upstream.received().len(), 2, "a 500 is not cached");

    upstream.set_reply(Reply::Ok);
    assert_eq!(gateway.get("/chargers").await.1["x-cache"], "MISS");
    assert_eq!(gateway.get("/chargers").await.1["x-cache"], "HIT");
    upstream.set_reply(Reply::Status(
        401,
        r#"{"error":"Missing or invalid API token"}"#,
    ));
    jump_clock(Duration::from_secs(16)).await;
    let (status, _, body) = gateway.get("/chargers").await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "a 401 is never covered by a stale copy"
    );
    assert_eq!(json(&body)["error"], "Missing or invalid API token");
    assert!(
        gateway.state.cache.is_empty(),
        "a rejected token empties the cache"
    );
    let (status, headers, _) = gateway.get("/chargers").await;
    assert_eq!(
        (status, &headers["x-cache"]),
        (StatusCode::UNAUTHORIZED, &"MISS".parse().unwrap())
    );
}

#[tokio::test]
async fn an_empty_budget_is_a_429_with_retry_after_and_no_call() {
    let upstream = MockUpstream::start();
    let gateway = TestGateway::start_on(&upstream,
        "[cache]\nttl = \"0s\"\n[limits]\nupstream_per_minute = 2\nupstream_burst = 2\nqueue_timeout = \"0s\"\ndevice_upstream_share = 1.0\n",
    )
    .await;
    for _ in 0..2 {
        assert_eq!(gateway.get("/chargers").await.0, StatusCode::OK);
    }
    let (status, headers, body) = gateway.get("/chargers").await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=30).contains(&retry), "{retry}");
    assert!(json(&body)["error"].as_str().unwrap().contains("budget"));
    assert_eq!(upstream.received().len(), 2);

    jump_clock(Duration::from_secs(30)).await;
    assert_eq!(gateway.get("/chargers").await.0, StatusCode::OK);
    assert_eq!(upstream.received().len(), 3);
}

#[tokio::test]
async fn a_request_queues_for_a_slot_within_queue_timeout() {
    let upstream = MockUpstream::start();
    let gateway = TestGateway::start_on(&upstream,
        "[cache]\nttl = \"0s\"\n[limits]\nupstream_per_minute = 600\nupstream_burst = 1\nqueue_timeout = \"2s\"\ndevice_upstream_share = 1.0\n",
    )
    .await;
    // 600/min is one slot per 100 ms: the second request waits for it, not 429.
    assert_eq!(gateway.get("/chargers").await.0, StatusCode::OK);
    assert_eq!(gateway.get("/chargers").await.0, StatusCode::OK);
    assert_eq!(upstream.received().len(), 2);
}

#[tokio::test]
async fn each_device_has_its_own_allowance() {
    let upstream = MockUpstream::start();
    let gateway = TestGateway::start_on(
        &upstream,
        "[limits]\nclient_per_minute = 60\nclient_burst = 3\nqueue_timeout = \"0s\"\n",
    )
    .await;
    for _ in 0..3 {
        assert_eq!(gateway.get("/chargers").await.0, StatusCode::OK);
    }
    let (status, headers, body) = gateway.get("/chargers").await;
    assert_eq!(
        status,
        StatusCode::TOO_MANY_REQUESTS,
        "cache hits count for the device"
    );
    assert_eq!(headers["retry-after"], "1");
    assert!(
        json(&body)["error"]
            .as_str()
            .unwrap()
            .contains("this device")
    );
}

#[tokio::test]
async fn joulo_429_starts_a_back_off_with_no_calls_in_between() {
    let upstream = MockUpstream::start();
    let gateway = TestGateway::start_on(&upstream, "[cache]\nttl = \"0s\"\n").await;
    upstream.set_reply(Reply::TooMany(Some("120")));
    let (status, headers, _) = gateway.get("/chargers").await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(headers["retry-after"], "120");
    upstream.set_reply(Reply::Ok);

    for _ in 0..5 {
        let (status, headers, body) = gateway.get("/energy").await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        let left: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
        assert!((100..=120).contains(&left), "{left}");
        assert!(json(&body)["error"].as_str().unwrap().contains("slow down"));
    }
    assert_eq!(upstream.received().len(), 1, "no call during the back-off");

    jump_clock(Duration::from_secs(121)).await;
    assert_eq!(gateway.get("/energy").await.0, StatusCode::OK);
    assert_eq!(upstream.received().len(), 2);
}

#[tokio::test]
async fn a_429_without_retry_after_gets_one_and_a_back_off_of_about_a_minute() {
    let upstream = MockUpstream::start();
    let gateway = TestGateway::start_on(&upstream, "").await;
    assert_eq!(gateway.get("/chargers").await.1["x-cache"], "MISS");
    upstream.set_reply(Reply::TooMany(None));
    let (status, headers, _) = gateway.get("/energy").await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    let wait: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((48..=72).contains(&wait), "{wait}");

    // During the back-off a stale copy still serves /chargers, without a call.
    jump_clock(Duration::from_secs(20)).await;
    let (status, headers, _) = gateway.get("/chargers").await;
    assert_eq!(
        (status, &headers["x-cache"]),
        (StatusCode::OK, &"STALE".parse().unwrap())
    );
    assert_eq!(upstream.received().len(), 2);
}

#[tokio::test]
async fn cache_size_bounds_hold() {
    let upstream = MockUpstream::start();
    let gateway =
        TestGateway::start_on(&upstream, "[cache]\nmax_entries = 1\nmax_body = \"16B\"\n").await;
    // Reply::Ok bodies are about 50 bytes: served, never cached.
    for _ in 0..2 {
        let (status, headers, body) = gateway.get("/chargers").await;
        assert_eq!(
            (status, &headers["x-cache"]),
            (StatusCode::OK, &"MISS".parse().unwrap())
        );
        assert!(body.len() > 16);
    }
    assert_eq!(
        upstream.received().len(),
        2,
        "one call per request, no refetch"
    );
    assert!(gateway.state.cache.is_empty());

    let small = MockUpstream::start();
    small.set_reply(Reply::Status(200, "{}"));
    let gateway = TestGateway::start_on(&small, "[cache]\nmax_entries = 1\n").await;
    gateway.get("/chargers").await;
    gateway.get("/energy").await;
    assert_eq!(gateway.state.cache.len(), 1);
    assert_eq!(
        gateway.get("/chargers").await.1["x-cache"],
        "MISS",
        "evicted"
    );
}

#[tokio::test]
async fn a_device_polling_every_ttl_gets_a_fresh_answer_on_every_poll() {
    let upstream = MockUpstream::start();
    // The shipped /chargers ttl and Home Assistant's scan_interval for it.
    let gateway = TestGateway::start_on(&upstream, "[routes.chargers]\nttl = \"15s\"\n").await;
    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(gateway.get("/chargers").await.1["x-cache"].to_owned());
        // A poll a little early, as timers and request latency make it.
        jump_clock(Duration::from_millis(14_900)).await;
    }
    assert_eq!(
        seen, ["MISS"; 4],
        "every poll fetched, none got a copy about to expire"
    );
    assert_eq!(upstream.received().len(), 4);
    // A second device polling in between still shares the copies.
    gateway.get("/chargers").await;
    jump_clock(Duration::from_secs(5)).await;
    assert_eq!(gateway.get("/chargers").await.1["x-cache"], "HIT");
}
