//! Reloading `gateway.toml` without a restart: a revoked device key stops
//! working at once while other devices keep being served, a config that fails
//! validation changes nothing, and settings that need a restart are named.

use crate::support;

use std::time::Duration;

use http::{Method, StatusCode};
use joulo_gateway::LogLevel;
use joulo_gateway::{Reloaded, reload_once};
use joulo_gateway::{generate_key, key_sha256_hex};
use support::{MockUpstream, TestGateway};

fn client(name: &str, key: &str) -> String {
    format!(
        "[[clients]]\nname = \"{name}\"\nkey_sha256 = \"{}\"\nscopes = [\"chargers:read\"]\n",
        key_sha256_hex(key)
    )
}

/// The gateway's config file with `edit` applied to its TOML table.
fn rewrite(gateway: &TestGateway, edit: impl FnOnce(&mut toml::Table)) -> std::path::PathBuf {
    let path = gateway.dir.path().join("gateway.toml");
    let mut table: toml::Table = std::fs::read_to_string(&path).unwrap().parse().unwrap();
    edit(&mut table);
    std::fs::write(&path, table.to_string()).unwrap();
    path
}

#[tokio::test]
async fn a_revoked_key_is_refused_at_once_while_other_devices_keep_working() {
    let upstream = MockUpstream::start();
    let (kept, revoked) = (generate_key(), generate_key());
    let gateway = TestGateway::start_on(
        &upstream,
        &format!(
            "{}{}[limits]\nclient_per_minute = 6000\nclient_burst = 1000\n\
             [ops]\nallow = [\"127.0.0.1\"]\n",
            client("homeassistant", &kept),
            client("old-tablet", &revoked)
        ),
    )
    .await;
    let addr = gateway.addr;
    let get = move |key: String| async move {
        support::send(
            addr,
            Method::GET,
            "/chargers",
            &[("x-gateway-key", &key)],
            "",
        )
        .await
        .0
    };
    assert_eq!(get(revoked.clone()).await, StatusCode::OK);

    // The kept device polls all along, on its own.
    let (stop_tx, mut stop) = tokio::sync::watch::channel(false);
    let poller = tokio::spawn({
        let kept = kept.clone();
        async move {
            let mut statuses = Vec::new();
            while !*stop.borrow_and_update() {
                statuses.push(get(kept.clone()).await);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            statuses
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let path = rewrite(&gateway, |table| {
        let clients = table["clients"].as_array_mut().unwrap();
        clients.retain(|c| c["name"].as_str() != Some("old-tablet"));
    });
    let outcome = reload_once(&path, &gateway.state, &LogLevel::fixed());
    assert_eq!(
        outcome,
        Reloaded::Applied {
            restart_needed: vec![]
        }
    );
    let (status, headers, body) = gateway
        .send(Method::GET, "/chargers", &[("x-gateway-key", &revoked)], "")
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(headers.contains_key("www-authenticate"));
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop_tx.send(true).unwrap();
    let statuses = poller.await.unwrap();
    assert!(statuses.len() > 5, "{}", statuses.len());
    assert!(
        statuses.iter().all(|s| *s == StatusCode::OK),
        "the other device was never refused: {statuses:?}"
    );
    let metrics = gateway.get("/metrics").await.2;
    assert!(
        metrics.contains("joulo_gateway_config_reloads_total{result=\"ok\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn an_invalid_config_changes_nothing_and_restart_only_keys_are_named() {
    let upstream = MockUpstream::start();
    let key = generate_key();
    let gateway = TestGateway::start_on(&upstream, &client("homeassistant", &key)).await;
    let path = gateway.dir.path().join("gateway.toml");
    let good = std::fs::read_to_string(&path).unwrap();

    std::fs::write(
        &path,
        format!("{good}\n[limits]\nupstream_per_minute = 0\n"),
    )
    .unwrap();
    let Reloaded::Refused(problem) = reload_once(&path, &gateway.state, &LogLevel::fixed()) else {
        panic!("an invalid config must be refused");
    };
    assert!(
        problem.contains("gateway.toml") && problem.contains("limits.upstream_per_minute"),
        "{problem}"
    );
    // Still the old settings: the key works, requests without one do not.
    let with_key = [("x-gateway-key", key.as_str())];
    assert_eq!(
        gateway
            .send(Method::GET, "/chargers", &with_key, "")
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(gateway.get("/chargers").await.0, StatusCode::UNAUTHORIZED);
    let logs = support::logs();
    assert!(logs.lines().any(|l| l.contains("ERROR")
        && l.contains("config reload refused")
        && l.contains("limits.upstream_per_minute")));

    // A listen address and a worker count take a restart; the rest applies.
    std::fs::write(&path, &good).unwrap();
    let path = rewrite(&gateway, |table| {
        let server = table["server"].as_table_mut().unwrap();
        server.insert("listen".into(), "127.0.0.1:1".into());
        server.insert("worker_threads".into(), 2.into());
        table.remove("clients");
        table.insert(
            "cache".into(),
            toml::Value::Table(toml::toml! { ttl = "1s" }),
        );
    });
    let outcome = reload_once(&path, &gateway.state, &LogLevel::fixed());
    assert_eq!(
        outcome,
        Reloaded::Applied {
            restart_needed: vec!["server.listen", "server.worker_threads"]
        }
    );
    // Keys gone: no key needed any more; still listening where it was.
    assert_eq!(gateway.get("/chargers").await.0, StatusCode::OK);
    let metrics = gateway.get("/metrics").await.2;
    assert!(metrics.contains("joulo_gateway_config_reloads_total{result=\"failed\"} 1"));
    assert!(metrics.contains("joulo_gateway_config_reloads_total{result=\"ok\"} 1"));
}

/// What needs a restart is judged against the settings the gateway started
/// with, not the last reload: a changed listen address is named on every
/// reload until the restart, and no longer once it is changed back.
#[tokio::test]
async fn a_restart_only_change_is_named_until_restart_and_not_once_undone() {
    let upstream = MockUpstream::start();
    let gateway = TestGateway::start(&upstream).await;
    let path = gateway.dir.path().join("gateway.toml");
    let started = std::fs::read_to_string(&path).unwrap();
    let reload = || reload_once(&path, &gateway.state, &LogLevel::fixed());
    let named = |keys: Vec<&'static str>| Reloaded::Applied {
        restart_needed: keys,
    };

    rewrite(&gateway, |table| {
        let server = table["server"].as_table_mut().unwrap();
        server.insert("listen".into(), "127.0.0.1:1".into());
    });
    assert_eq!(reload(), named(vec!["server.listen"]));
    // The same file again: still not in force, still named.
    assert_eq!(reload(), named(vec!["server.listen"]));
    // Another change on top: both named.
    rewrite(&gateway, |table| {
        let server = table["server"].as_table_mut().unwrap();
        server.insert("worker_threads".into(), 2.into());
    });
    assert_eq!(
        reload(),
        named(vec!["server.listen", "server.worker_threads"])
    );
    // Back to what the gateway runs with: nothing to restart for.
    std::fs::write(&path, &started).unwrap();
    assert_eq!(reload(), named(vec![]));
    assert_eq!(gateway.get("/chargers").await.0, StatusCode::OK);
}
