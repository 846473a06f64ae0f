//! The MQTT publisher against a real broker (Debian's `mosquitto`, one per
//! test on a free loopback port) and the simulated two-charger household:
//! discovery and states, a charger added and removed, a field gone, the
//! broker restarted, Home Assistant's birth message, the token removed, the
//! gateway's last will; every discovery payload checked with Home
//! Assistant's own schemas; and no token, device key or broker password in
//! anything the broker saw. A recorder subscribed to `#` sees it all.
//!
//! Without `mosquitto` (or the Home Assistant venv) the tests say so and
//! pass, except under CI (`JOULO_GATEWAY_CI=1`, set by `.ci/run`, which
//! installs both): there a missing tool fails them.

use crate::support;

use std::collections::BTreeMap;
use std::net::TcpListener as StdListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use joulo_gateway::demo::{self, API_PREFIX, DemoCa, JouloSim};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use secrecy::SecretString;
use serde_json::{Value, json};
use support::{TestGateway, eventually};

/// How long a test waits for the broker to see what it expects: polls are
/// a second apart in these tests, reconnects at most a few seconds.
const WAIT: Duration = Duration::from_secs(15);

/// Discovery configs for the simulated household: 7 per charger, 4 for the
/// account, 4 for the gateway.
const CONFIGS: usize = 2 * 7 + 4 + 4;

use support::ci_requires_tools as required;

/// The `mosquitto` binary, if installed.
fn mosquitto() -> Option<PathBuf> {
    let found = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists());
    if found.is_none() {
        assert!(
            !required(),
            "mosquitto is not installed (apt-get install mosquitto)"
        );
        eprintln!("mosquitto is not installed: MQTT test skipped");
    }
    found
}

/// A mosquitto broker on a loopback port of its own; restarted on the same
/// port; killed when dropped.
struct Broker {
    /// Its port on 127.0.0.1.
    port: u16,
    /// Its config file.
    conf: PathBuf,
    /// The binary.
    bin: PathBuf,
    /// The running process.
    child: Option<Child>,
    /// Holds the config (and password file).
    _dir: tempfile::TempDir,
}

impl Broker {
    /// A broker taking anyone, or only `user` with `password`.
    fn start(credentials: Option<(&str, &str)>) -> Option<Broker> {
        let bin = mosquitto()?;
        let dir = tempfile::tempdir().unwrap();
        let port = StdListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut conf =
            format!("listener {port} 127.0.0.1\npersistence false\nlog_dest none\nuser root\n");
        match credentials {
            None => conf.push_str("allow_anonymous true\n"),
            Some((user, password)) => {
                let file = dir.path().join("passwords");
                let status = Command::new("mosquitto_passwd")
                    .args(["-b", "-c"])
                    .arg(&file)
                    .args([user, password])
                    .status()
                    .expect("mosquitto_passwd runs");
                assert!(status.success());
                conf.push_str(&format!(
                    "allow_anonymous false\npassword_file {}\n",
                    file.display()
                ));
            }
        }
        let path = dir.path().join("mosquitto.conf");
        std::fs::write(&path, conf).unwrap();
        let mut broker = Broker {
            port,
            conf: path,
            bin,
            child: None,
            _dir: dir,
        };
        broker.run();
        Some(broker)
    }

    /// A broker taking anyone on a plain port (for the recorder) and on a
    /// TLS port presenting `ca`'s certificate for 127.0.0.1.
    fn start_tls(ca: &DemoCa) -> Option<(Broker, u16)> {
        let bin = mosquitto()?;
        let dir = tempfile::tempdir().unwrap();
        let free = || {
            StdListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        };
        let (port, tls_port) = (free(), free());
        let cert = dir.path().join("broker.pem");
        let key = dir.path().join("broker.key");
        std::fs::write(&cert, &ca.leaf_cert_pem).unwrap();
        std::fs::write(&key, &ca.leaf_key_pem).unwrap();
        let conf = format!(
            "per_listener_settings false\npersistence false\nlog_dest none\nuser root\n\
             allow_anonymous true\nlistener {port} 127.0.0.1\nlistener {tls_port} 127.0.0.1\n\
             certfile {}\nkeyfile {}\n",
            cert.display(),
            key.display()
        );
        let path = dir.path().join("mosquitto.conf");
        std::fs::write(&path, conf).unwrap();
        let mut broker = Broker {
            port,
            conf: path,
            bin,
            child: None,
            _dir: dir,
        };
        broker.run();
        Some((broker, tls_port))
    }

    /// Starts the process and waits (bounded) until it accepts connections.
    fn run(&mut self) {
        let child = Command::new(&self.bin)
            .arg("-c")
            .arg(&self.conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto starts");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "mosquitto did not listen"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the process (the broker forgets everything: no persistence).
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `[mqtt]` for the gateway.
    fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One message the broker delivered to the recorder.
#[derive(Debug, Clone)]
struct Seen {
    topic: String,
    payload: String,
}

/// A client subscribed to `#` (again after each reconnect), recording every
/// message; it also plays Home Assistant's birth message.
struct Recorder {
    seen: Arc<Mutex<Vec<Seen>>>,
    client: AsyncClient,
    task: tokio::task::JoinHandle<()>,
}

impl Recorder {
    fn start(broker: &Broker, credentials: Option<(&str, &str)>) -> Recorder {
        let mut options = MqttOptions::new(recorder_id(broker.port), "127.0.0.1", broker.port);
        options.set_max_packet_size(1 << 20, 1 << 20);
        if let Some((user, password)) = credentials {
            options.set_credentials(user, password);
        }
        let (client, mut eventloop) = AsyncClient::new(options, 64);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn({
            let seen = seen.clone();
            let client = client.clone();
            async move {
                loop {
                    match eventloop.poll().await {
                        Ok(Event::Incoming(Packet::ConnAck(_))) => {
                            let _ = client.try_subscribe("#", QoS::AtLeastOnce);
                        }
                        Ok(Event::Incoming(Packet::Publish(p))) => {
                            seen.lock().unwrap().push(Seen {
                                topic: p.topic.clone(),
                                payload: String::from_utf8_lossy(&p.payload).into_owned(),
                            });
                        }
                        Ok(_) => {}
                        Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                    }
                }
            }
        });
        Recorder { seen, client, task }
    }

    /// Everything seen so far.
    fn all(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// The latest payload of each topic.
    fn latest(&self) -> BTreeMap<String, String> {
        self.all()
            .into_iter()
            .map(|s| (s.topic, s.payload))
            .collect()
    }

    /// The latest payload of `topic` as JSON, if any and not empty.
    fn json(&self, topic: &str) -> Option<Value> {
        let payload = self.latest().remove(topic)?;
        serde_json::from_str(&payload).ok()
    }

    /// Discovery configs seen (non-empty), counted with repeats.
    fn configs_seen(&self) -> usize {
        self.all()
            .iter()
            .filter(|s| s.topic.starts_with("homeassistant/") && s.topic.ends_with("/config"))
            .filter(|s| !s.payload.is_empty())
            .count()
    }

    /// The discovery configs now held, by topic.
    fn configs(&self) -> BTreeMap<String, String> {
        self.latest()
            .into_iter()
            .filter(|(t, p)| t.ends_with("/config") && !p.is_empty())
            .collect()
    }

    /// The charger id of the device named `name`, from its meter's config.
    fn charger_id(&self, name: &str) -> Option<String> {
        self.configs().into_iter().find_map(|(topic, payload)| {
            let config: Value = serde_json::from_str(&payload).ok()?;
            let id = topic
                .strip_prefix("homeassistant/sensor/joulo/charger_")?
                .strip_suffix("_meter_kwh/config")?;
            (config["device"]["name"] == name).then(|| id.to_owned())
        })
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A client id no other recorder in this process uses.
fn recorder_id(port: u16) -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("recorder-{port}-{n}")
}

/// The simulated Joulo API over TLS on a loopback port, and its CA.
struct Sim {
    sim: Arc<JouloSim>,
    base_url: String,
    ca: DemoCa,
    task: tokio::task::JoinHandle<()>,
}

impl Sim {
    async fn start() -> Sim {
        let ca = DemoCa::generate(&["127.0.0.1"]).unwrap();
        let sim = JouloSim::new(demo::generate_token());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn({
            let sim = sim.clone();
            let served = demo::serve_tls(
                listener,
                ca.server_config.clone(),
                move |request: http::Request<hyper::body::Incoming>| {
                    let response = sim.respond(&request);
                    async move { response }
                },
            );
            async move {
                let _ = served.await;
            }
        });
        Sim {
            sim,
            base_url: format!("https://127.0.0.1:{port}{API_PREFIX}"),
            ca,
            task,
        }
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Every route the publisher polls cached for a second: it polls each
/// about every second, so a test sees a change within one or two.
const FAST_TTLS: &str = "[routes.chargers]\nttl = \"1s\"\n[routes.sessions]\nttl = \"1s\"\n\
                         [routes.energy]\nttl = \"1s\"\n";

/// A gateway in front of `sim` publishing to `broker`, with `extra` TOML.
async fn gateway(sim: &Sim, broker: &Broker, extra: &str) -> TestGateway {
    let mqtt = format!("[mqtt]\nurl = \"{}\"\n{extra}", broker.url());
    let gateway =
        TestGateway::start_with(&sim.base_url, &sim.ca.ca_pem, &format!("{FAST_TTLS}{mqtt}")).await;
    sim.sim
        .rotate_token(SecretString::from(gateway.token.clone()));
    gateway
}

/// Waits until the recorder holds the whole household: every config, each
/// charger's state with its meter, the account's, and `online`.
async fn until_published(recorder: &Recorder) {
    let complete = eventually(WAIT, || async {
        let latest = recorder.latest();
        let configs = recorder.configs().len();
        let meters = latest
            .iter()
            .filter(|(t, p)| {
                t.ends_with("/state") && t.contains("/charger/") && p.contains("meter_kwh")
            })
            .count();
        configs == CONFIGS
            && meters == 2
            && latest.get("joulo/gateway/availability").map(String::as_str) == Some("online")
            && latest
                .get("joulo/account/state")
                .is_some_and(|p| p.contains("total_kwh"))
    })
    .await;
    assert!(
        complete,
        "the household was not published: {:#?}",
        recorder.latest()
    );
}

/// The common start: a broker, the simulated household, a gateway
/// publishing it and a recorder that has seen it all; `None` without
/// mosquitto (outside CI).
async fn published_household() -> Option<(Broker, Sim, TestGateway, Recorder)> {
    let broker = Broker::start(None)?;
    let sim = Sim::start().await;
    let gw = gateway(&sim, &broker, "").await;
    let recorder = Recorder::start(&broker, None);
    until_published(&recorder).await;
    Some((broker, sim, gw, recorder))
}

/// No secret in any topic or payload the broker carried.
fn assert_broker_saw_no_secret(recorder: &Recorder, secrets: &[&str]) {
    let all = recorder.all();
    assert!(!all.is_empty());
    for seen in &all {
        for secret in secrets {
            assert!(
                !seen.topic.contains(secret) && !seen.payload.contains(secret),
                "a secret went to the broker on {}",
                seen.topic
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_charger_household_appears_as_devices_with_their_states() {
    // The broker wants a password, from a file held to the token's rules; a
    // device key is configured, as with Home Assistant's `rest:` beside it.
    let password = support::canary();
    let Some(broker) = Broker::start(Some(("joulo", &password))) else {
        return;
    };
    let sim = Sim::start().await;
    let secrets = tempfile::tempdir().unwrap();
    let password_file = secrets.path().join("mqtt_password");
    demo::write_private(&password_file, &format!("{password}\n")).unwrap();
    let key = joulo_gateway::generate_key();
    let clients = format!(
        "[[clients]]\nname = \"homeassistant\"\nkey_sha256 = \"{}\"\n\
         scopes = [\"chargers:read\", \"sessions:read\", \"energy:read\", \"gateway:read\"]\n",
        joulo_gateway::key_sha256_hex(&key)
    );
    let mut gw = gateway(
        &sim,
        &broker,
        &format!(
            "username = \"joulo\"\npassword_file = \"{}\"\n{clients}",
            password_file.display()
        ),
    )
    .await;
    gw.key = Some(key.clone());
    let recorder = Recorder::start(&broker, Some(("joulo", &password)));
    until_published(&recorder).await;

    let oprit = recorder.charger_id("Oprit").expect("Oprit is a device");
    let carport = recorder.charger_id("Carport").expect("Carport is a device");
    let state = |id: &str| recorder.json(&format!("joulo/charger/{id}/state")).unwrap();
    let (oprit_state, carport_state) = (state(&oprit), state(&carport));
    assert_eq!(oprit_state["status"], "charging");
    assert_eq!(oprit_state["is_charging"], true);
    assert!(
        oprit_state["meter_kwh"].as_f64().unwrap() > 4190.0,
        "{oprit_state}"
    );
    assert!(oprit_state["session_kwh"].as_f64().unwrap() > 8.0);
    assert_eq!(oprit_state["id_tag"], "04A2B3C4D5E6F7");
    assert_eq!(carport_state["status"], "available");
    assert_eq!(carport_state["meter_kwh"], json!(1037.552));
    assert!(
        carport_state.get("session_kwh").is_none(),
        "{carport_state}"
    );
    // The newest session is one charger's: its last session is known.
    let last = |s: &Value| s.get("last_session_kwh").is_some();
    assert!(last(&oprit_state) || last(&carport_state));

    let meter = recorder
        .json(&format!(
            "homeassistant/sensor/joulo/charger_{carport}_meter_kwh/config"
        ))
        .unwrap();
    assert_eq!(meter["device_class"], "energy");
    assert_eq!(meter["state_class"], "total_increasing");
    assert_eq!(meter["unit_of_measurement"], "kWh");
    assert_eq!(meter["device"]["manufacturer"], "Joulo");
    assert_eq!(meter["device"]["model"], "ocpp");
    assert_eq!(
        meter["device"]["identifiers"],
        json!([format!("joulo_charger_{carport}")])
    );
    let charging = recorder
        .json(&format!(
            "homeassistant/binary_sensor/joulo/charger_{oprit}_is_charging/config"
        ))
        .unwrap();
    assert_eq!(charging["device_class"], "battery_charging");

    let account = recorder.json("joulo/account/state").unwrap();
    assert!(account["total_kwh"].as_f64().unwrap() > 0.0);
    assert!(account["month_kwh"].is_number(), "{account}");
    let gateway_state = recorder.json("joulo/gateway/state").unwrap();
    assert_eq!(gateway_state["joulo_connected"], true);
    assert_eq!(gateway_state["token_problem"], false);
    let token_rejected = recorder
        .json("homeassistant/binary_sensor/joulo/gateway_token_problem/config")
        .unwrap();
    assert_eq!(token_rejected["device_class"], "problem");

    // /status and /metrics say the publisher is connected and publishing.
    let (_, _, body) = gw.get("/status").await;
    let status = support::json(&body);
    assert_eq!(status["mqtt"]["connected"], true, "{status}");
    assert!(status["mqtt"]["published"].as_u64().unwrap() >= CONFIGS as u64 + 5);
    assert!(status["mqtt"]["last_publish"].is_string());
    let (_, _, metrics) = gw.get("/metrics").await;
    assert!(
        metrics.contains("joulo_gateway_mqtt_connected 1"),
        "{metrics}"
    );

    assert_broker_saw_no_secret(&recorder, &[&gw.token, &key, &password]);
    gw.shutdown().await;
    support::assert_no_leak(&[&password, &key], &[]);
    support::assert_no_canary_logged();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_discovery_payload_passes_home_assistants_own_schemas() {
    let Some(python) = support::ha_python() else {
        return;
    };
    let Some((_broker, _sim, gw, recorder)) = published_household().await else {
        return;
    };
    let configs = recorder.configs();
    assert_eq!(configs.len(), CONFIGS);
    let (ok, report) = validate(&python, &configs);
    assert!(ok, "Home Assistant refused a discovery payload:\n{report}");
    assert_eq!(
        report.lines().filter(|l| l.starts_with("ok ")).count(),
        CONFIGS
    );

    // The check can fail: a state class Home Assistant does not know, a
    // misspelt key, and a topic its discovery pattern does not read.
    let (topic, payload) = configs
        .iter()
        .find(|(t, _)| t.ends_with("_meter_kwh/config"))
        .unwrap();
    let mut wrong: Value = serde_json::from_str(payload).unwrap();
    wrong["state_class"] = json!("total_increasingly");
    let mut misspelt: Value = serde_json::from_str(payload).unwrap();
    misspelt["unit_of_measurment"] = json!("kWh");
    for (topic, payload) in [
        (topic.clone(), wrong.to_string()),
        (topic.clone(), misspelt.to_string()),
        (topic.replace("/joulo/", "/jou lo/"), payload.clone()),
    ] {
        let (ok, report) = validate(&python, &BTreeMap::from([(topic, payload)]));
        assert!(!ok, "not refused: {report}");
    }
    gw.shutdown().await;
}

/// Runs `tests/it/support/ha_discovery.py` on `configs`: whether all passed,
/// and its report.
fn validate(python: &Path, configs: &BTreeMap<String, String>) -> (bool, String) {
    let input = json!({"prefix": "homeassistant", "messages": configs}).to_string();
    support::run_python(python, "ha_discovery.py", &input)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_charger_added_appears_and_one_removed_is_cleared_without_a_restart() {
    let Some((_broker, sim, gw, recorder)) = published_household().await else {
        return;
    };
    let carport = recorder.charger_id("Carport").unwrap();

    let garage = "5a1e2f3c-0000-4000-a000-0000000000aa";
    sim.sim.edit_chargers(move |list| {
        list.push(
            json!({"id": garage, "nickname": "Garage", "connection_type": "ocpp",
            "status": "available", "is_charging": false, "latest_meter_wh": 12_000}),
        );
    });
    let added = eventually(WAIT, || async {
        recorder.charger_id("Garage").as_deref() == Some(garage)
            && recorder
                .json(&format!("joulo/charger/{garage}/state"))
                .is_some_and(|s| s["meter_kwh"] == json!(12.0))
    })
    .await;
    assert!(added, "{:#?}", recorder.latest());
    assert_eq!(recorder.configs().len(), CONFIGS + 7);

    // Carport removed in Joulo: its configs and state are cleared (empty
    // retained payloads), the others stay.
    let carport_id = carport.clone();
    sim.sim.edit_chargers(move |list| {
        list.retain(|c| c["id"] != carport_id.as_str());
        list.push(
            json!({"id": garage, "nickname": "Garage", "connection_type": "ocpp",
            "status": "available", "is_charging": false, "latest_meter_wh": 12_000}),
        );
    });
    let cleared = eventually(WAIT, || async {
        let latest = recorder.latest();
        let carport_topics: Vec<_> = latest
            .iter()
            .filter(|(t, _)| t.contains(&carport))
            .collect();
        carport_topics.len() == 8 && carport_topics.iter().all(|(_, p)| p.is_empty())
    })
    .await;
    assert!(cleared, "{:#?}", recorder.latest());
    assert_eq!(recorder.configs().len(), CONFIGS);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_meter_is_unavailable_never_zero() {
    let Some((_broker, sim, gw, recorder)) = published_household().await else {
        return;
    };
    let oprit = recorder.charger_id("Oprit").unwrap();
    sim.sim.edit_chargers(|list| {
        if let Some(first) = list.first_mut().and_then(Value::as_object_mut) {
            first.remove("latest_meter_wh");
        }
    });
    let topic = format!("joulo/charger/{oprit}/state");
    let gone = eventually(WAIT, || async {
        recorder
            .json(&topic)
            .is_some_and(|s| s.get("meter_kwh").is_none() && s["status"] == "charging")
    })
    .await;
    assert!(gone, "{:?}", recorder.json(&topic));
    // The meter's availability follows the value: Home Assistant shows it
    // unavailable (not 0, which total_increasing would count as a reset).
    let meter = recorder
        .json(&format!(
            "homeassistant/sensor/joulo/charger_{oprit}_meter_kwh/config"
        ))
        .unwrap();
    assert_eq!(meter["availability_mode"], "all");
    assert_eq!(
        meter["availability"][1]["value_template"],
        "{{ 'online' if value_json.meter_kwh is defined else 'offline' }}"
    );
    assert_eq!(meter["availability"][1]["topic"], topic.as_str());
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_is_one_warning_and_everything_is_published_again() {
    let Some(mut broker) = Broker::start(None) else {
        return;
    };
    let sim = Sim::start().await;
    let gw = gateway(&sim, &broker, "").await;
    let recorder = Recorder::start(&broker, None);
    until_published(&recorder).await;

    broker.kill();
    let down = eventually(WAIT, || async {
        let (_, _, body) = gw.get("/status").await;
        support::json(&body)["mqtt"]["connected"] == false
    })
    .await;
    assert!(down, "the publisher did not notice the broker was gone");
    // The proxy is unaffected while the broker is down.
    let (status, _, body) = gw.get("/chargers").await;
    assert_eq!(status, 200, "{body}");
    // A few reconnection attempts fail meanwhile.
    tokio::time::sleep(Duration::from_millis(3500)).await;

    // The same port again, knowing nothing (no persistence): a new
    // subscriber finds every config and state retained once more.
    broker.run();
    let fresh = Recorder::start(&broker, None);
    until_published(&fresh).await;
    let broker_name = format!("127.0.0.1:{}", broker.port);
    let logs = support::logs();
    let warnings = logs
        .lines()
        .filter(|l| l.contains("WARN") && l.contains(&broker_name))
        .count();
    assert_eq!(warnings, 1, "one warning per outage:\n{logs}");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn home_assistants_birth_message_gets_everything_again() {
    let Some(broker) = Broker::start(None) else {
        return;
    };
    let sim = Sim::start().await;
    // Configs do not change between polls: only the birth message can
    // explain a second round of them.
    let gw = gateway(&sim, &broker, "").await;
    let recorder = Recorder::start(&broker, None);
    until_published(&recorder).await;
    let before = recorder.configs_seen();
    recorder
        .client
        .publish("homeassistant/status", QoS::AtLeastOnce, false, "online")
        .await
        .unwrap();
    let again = eventually(WAIT, || async {
        recorder.configs_seen() >= before + CONFIGS
    })
    .await;
    assert!(
        again,
        "{} configs before, {} after",
        before,
        recorder.configs_seen()
    );
    gw.shutdown().await;
}

/// Anyone who may publish on the broker can send Home Assistant's birth
/// message as often as they like: 200 of them cost at most two more rounds
/// of discovery (one per resend gap), not 200, and queue nothing without
/// bound in the gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_birth_messages_costs_one_resend_per_gap() {
    let Some((_broker, _sim, gw, recorder)) = published_household().await else {
        return;
    };
    let before = recorder.configs_seen();
    for _ in 0..200 {
        recorder
            .client
            .publish("homeassistant/status", QoS::AtMostOnce, false, "online")
            .await
            .unwrap();
    }
    // The first resend comes within a gap (5 s) of the last one, the
    // deferred one a gap later; then nothing more.
    let again = eventually(WAIT, || async {
        recorder.configs_seen() >= before + CONFIGS
    })
    .await;
    assert!(again, "the birth messages got no resend");
    tokio::time::sleep(Duration::from_secs(6)).await;
    let resent = recorder.configs_seen() - before;
    assert!(
        resent <= 2 * CONFIGS,
        "200 birth messages cost {resent} discovery messages ({} rounds)",
        resent / CONFIGS
    );
    gw.shutdown().await;
}

/// Anyone who may publish on the broker can leave a retained message past
/// the gateway's packet limit on Home Assistant's status topic: it used to
/// end every connection the moment the birth subscription delivered it, for
/// good (outside review of 24). Now the gateway stops listening to birth
/// messages, stays connected and publishes the household.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_retained_birth_message_does_not_keep_the_publisher_off_the_broker() {
    let Some(broker) = Broker::start(None) else {
        return;
    };
    let recorder = Recorder::start(&broker, None);
    let planted = eventually(WAIT, || async {
        recorder
            .client
            .publish(
                "homeassistant/status",
                QoS::AtLeastOnce,
                true,
                vec![b'x'; 300 * 1024],
            )
            .await
            .is_ok()
    })
    .await;
    assert!(planted);
    let sim = Sim::start().await;
    let gw = gateway(&sim, &broker, "").await;
    until_published(&recorder).await;
    // Connected for good: no stream of last wills and reconnects.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let offline = recorder
        .all()
        .iter()
        .filter(|m| m.topic == "joulo/gateway/availability" && m.payload == "offline")
        .count();
    assert!(
        offline <= 1,
        "{offline} last wills: the publisher kept reconnecting"
    );
    assert_eq!(
        recorder
            .latest()
            .get("joulo/gateway/availability")
            .map(String::as_str),
        Some("online")
    );
    gw.shutdown().await;
}

/// A charger removed in Joulo while the gateway was stopped left its
/// retained configs and state behind, shown as live for ever (outside
/// review of 24): what an earlier run left under the gateway's own topics
/// is cleared once Joulo has listed the chargers; others' topics are not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_earlier_runs_charger_gone_meanwhile_is_cleared_at_start() {
    let Some(broker) = Broker::start(None) else {
        return;
    };
    let recorder = Recorder::start(&broker, None);
    let leftovers = [
        "homeassistant/sensor/joulo/charger_0ld-charger_status/config",
        "homeassistant/binary_sensor/joulo/charger_0ld-charger_is_charging/config",
        "joulo/charger/0ld-charger/state",
    ];
    let foreign = "homeassistant/sensor/other/thing/config";
    for topic in leftovers.iter().chain([&foreign]) {
        let planted = eventually(WAIT, || async {
            recorder
                .client
                .publish(*topic, QoS::AtLeastOnce, true, "{\"left\":true}")
                .await
                .is_ok()
        })
        .await;
        assert!(planted);
    }
    let sim = Sim::start().await;
    let gw = gateway(&sim, &broker, "").await;
    let cleared = eventually(WAIT, || async {
        let latest = recorder.latest();
        leftovers
            .iter()
            .all(|t| latest.get(*t).is_some_and(String::is_empty))
    })
    .await;
    assert!(cleared, "{:#?}", recorder.latest());
    // The household itself stays: 22 configs with content.
    let live = || {
        recorder
            .latest()
            .iter()
            .filter(|(t, p)| t.ends_with("/config") && t.contains("/joulo/") && !p.is_empty())
            .count()
    };
    let household = eventually(WAIT, || async { live() == CONFIGS }).await;
    assert!(household, "{} configs", live());
    assert_eq!(
        recorder.latest().get(foreign).map(String::as_str),
        Some("{\"left\":true}"),
        "another's topic was touched"
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_the_data_goes_unavailable_and_token_rejected_turns_on() {
    let Some((_broker, sim, gw, recorder)) = published_household().await else {
        return;
    };
    let oprit = recorder.charger_id("Oprit").unwrap();
    let charger_topic = format!("joulo/charger/{oprit}/state");

    std::fs::remove_file(&gw.token_file).unwrap();
    let unavailable = eventually(WAIT, || async {
        let gateway = recorder.json("joulo/gateway/state");
        recorder.json(&charger_topic) == Some(json!({}))
            && recorder.json("joulo/account/state") == Some(json!({}))
            && gateway.is_some_and(|g| g["token_problem"] == true && g["joulo_connected"] == false)
    })
    .await;
    assert!(unavailable, "{:#?}", recorder.latest());
    // The devices stay; their entities show unavailable.
    assert_eq!(recorder.configs().len(), CONFIGS);

    // A new token: nothing to do but write it.
    let token = gw.rotate_token();
    sim.sim.rotate_token(SecretString::from(token.clone()));
    let back = eventually(WAIT, || async {
        recorder
            .json(&charger_topic)
            .is_some_and(|s| s.get("meter_kwh").is_some())
            && recorder
                .json("joulo/gateway/state")
                .is_some_and(|g| g["token_problem"] == false)
    })
    .await;
    assert!(back, "{:#?}", recorder.latest());
    assert_broker_saw_no_secret(&recorder, &[&gw.token, &token]);
    gw.shutdown().await;
    // Stopped: the gateway says so itself.
    let offline = eventually(WAIT, || async {
        recorder
            .latest()
            .get("joulo/gateway/availability")
            .map(String::as_str)
            == Some("offline")
    })
    .await;
    assert!(offline);
}

#[test]
fn the_last_will_says_offline_when_the_gateway_dies() {
    let Some(broker) = Broker::start(None) else {
        return;
    };
    let upstream = support::MockUpstream::start();
    let dir = tempfile::tempdir().unwrap();
    demo::write_private(&dir.path().join("ca.pem"), &upstream.ca_pem).unwrap();
    demo::write_private(&dir.path().join("joulo_token"), &support::canary()).unwrap();
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[upstream]\nbase_url = \"{}\"\n\
             token_file = \"joulo_token\"\nca_file = \"ca.pem\"\n[mqtt]\nurl = \"{}\"\n",
            upstream.base_url(),
            broker.url()
        ),
    )
    .unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let _guard = runtime.enter();
    let recorder = Recorder::start(&broker, None);
    let mut child = Command::new(env!("CARGO_BIN_EXE_joulo-gateway"))
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let availability = |recorder: &Recorder| {
        recorder
            .latest()
            .get("joulo/gateway/availability")
            .cloned()
            .unwrap_or_default()
    };
    let online = runtime.block_on(eventually(WAIT, || async {
        availability(&recorder) == "online"
    }));
    let _ = child.kill();
    let _ = child.wait();
    assert!(online, "the gateway never said online");
    let offline = runtime.block_on(eventually(WAIT, || async {
        availability(&recorder) == "offline"
    }));
    assert!(offline, "the broker did not publish the last will");
}

/// The shipped `gateway.toml`'s ttls and `configuration.yaml`'s
/// `scan_interval`s for /chargers, /sessions and /energy (15 s, 60 s, 10 min),
/// divided by [`SPEED`] for [`sped_up_calls`].
const SHIPPED_INTERVALS: [(&str, &str, u64); 3] = [
    ("chargers", "/chargers", 15),
    ("sessions", "/sessions?limit=1", 60),
    ("energy", "/energy", 600),
];

/// How much faster than the shipped schedule [`sped_up_calls`] runs. Any
/// ttl of 2 s or more keeps one call per ttl window: a poll that lands in a
/// copy's last second (when the gateway counts it stale) fetches, and the
/// other poller then finds a fresh copy.
const SPEED: u64 = 5;

/// Upstream calls by path against the simulated household in `real` seconds
/// of real time, everything [`SPEED`] times faster than shipped (the ttls,
/// the polls and the per-minute limits): the MQTT
/// publisher (`mqtt`, to a real broker) and/or a Home Assistant polling the
/// `rest:` resources at their `scan_interval`s (`rest`, from 127.0.0.43).
async fn sped_up_calls(mqtt: bool, rest: bool, real: Duration) -> BTreeMap<String, u64> {
    use bytes::Bytes;
    use http_body_util::{BodyExt, Empty};
    use hyper_util::client::legacy::Client;
    use hyper_util::client::legacy::connect::HttpConnector;
    use hyper_util::rt::TokioExecutor;

    let broker = Broker::start(None).expect("mosquitto");
    let sim = Sim::start().await;
    // The shipped budget, per minute of the faster clock.
    let mut extra = format!(
        "[limits]\nupstream_per_minute = {}\nupstream_burst = 10\nclient_per_minute = {}\n\
         device_upstream_share = 0.5\n",
        30 * SPEED,
        120 * SPEED
    );
    for (route, _, seconds) in SHIPPED_INTERVALS {
        extra.push_str(&format!(
            "[routes.{route}]\nttl = \"{}s\"\n",
            seconds / SPEED
        ));
    }
    if mqtt {
        extra.push_str(&format!("[mqtt]\nurl = \"{}\"\n", broker.url()));
    }
    let gw = TestGateway::start_with(&sim.base_url, &sim.ca.ca_pem, &extra).await;
    sim.sim.rotate_token(SecretString::from(gw.token.clone()));
    let start = tokio::time::Instant::now();
    let mut pollers = Vec::new();
    if rest {
        let addr = gw.addr;
        for (n, (_, target, seconds)) in SHIPPED_INTERVALS.into_iter().enumerate() {
            let mut connector = HttpConnector::new();
            connector.set_local_address(Some("127.0.0.43".parse().unwrap()));
            let client: Client<_, Empty<Bytes>> =
                Client::builder(TokioExecutor::new()).build(connector);
            let uri: http::Uri = format!("http://{addr}{target}").parse().unwrap();
            let every = Duration::from_secs(seconds / SPEED);
            pollers.push(tokio::spawn(async move {
                // Each resource on its own phase, as Home Assistant's are.
                let mut next = start + Duration::from_millis(700 * (n as u64 + 1));
                while next < start + real {
                    tokio::time::sleep_until(next).await;
                    let response = client.get(uri.clone()).await.unwrap();
                    assert_eq!(response.status(), 200, "{uri}");
                    let _ = response.into_body().collect().await;
                    next += every;
                }
            }));
        }
    }
    tokio::time::sleep_until(start + real).await;
    for poller in pollers {
        poller.await.unwrap();
    }
    let by_path = sim.sim.stats.by_path.lock().unwrap().clone();
    gw.shutdown().await;
    by_path
}

/// The note's figure: upstream calls an hour with the MQTT publisher and
/// Home Assistant's `rest:` sensors side by side, against each alone. Two
/// real minutes at five times the shipped pace (ten shipped minutes), run
/// on demand: `cargo test --test it calls_an_hour -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "two minutes of real time; run for the figures"]
async fn calls_an_hour_with_mqtt_and_rest_side_by_side() {
    if mosquitto().is_none() {
        return;
    }
    let real = Duration::from_secs(120);
    let (mqtt, rest, both) = tokio::join!(
        sped_up_calls(true, false, real),
        sped_up_calls(false, true, real),
        sped_up_calls(true, true, real),
    );
    // Shipped time covered, and the factor to an hour of it.
    let per_hour = 3600 / (real.as_secs() * SPEED);
    let hourly = |calls: &BTreeMap<String, u64>| -> BTreeMap<String, u64> {
        calls
            .iter()
            .map(|(p, n)| (p.clone(), n * per_hour))
            .collect()
    };
    eprintln!(
        "upstream calls per hour (measured over {} real s at {SPEED}x the shipped pace, x{per_hour}):\n  \
         MQTT alone      {:?}\n  rest: alone     {:?}\n  MQTT and rest:  {:?}",
        real.as_secs(),
        hourly(&mqtt),
        hourly(&rest),
        hourly(&both)
    );
    for (_, path, seconds) in SHIPPED_INTERVALS {
        let windows = real.as_secs() * SPEED / seconds;
        let path = path.split('?').next().unwrap();
        for (name, calls) in [("mqtt", &mqtt), ("rest", &rest), ("both", &both)] {
            let n = calls.get(path).copied().unwrap_or(0);
            // At most one call per window, and (the publisher alone
            // included) no window without one: its polls were answered.
            assert!(
                n + 1 >= windows && n <= windows + 1,
                "{name} {path}: {n} calls for {windows} ttl windows"
            );
        }
    }
}

/// `mqtts://` verifies the broker: trusted through `ca_file` the publisher
/// connects and publishes; without it (a certificate no built-in root
/// vouches for) it never connects, and says so once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtts_publishes_to_a_verified_broker_and_refuses_an_unknown_one() {
    let sim = Sim::start().await;
    let Some((broker, tls_port)) = Broker::start_tls(&sim.ca) else {
        return;
    };
    let url = format!("mqtts://127.0.0.1:{tls_port}");
    // The sim's CA signed the broker's certificate too; the gateway's folder
    // holds it as ca.pem.
    let trusted = TestGateway::start_with(
        &sim.base_url,
        &sim.ca.ca_pem,
        &format!("{FAST_TTLS}[mqtt]\nurl = \"{url}\"\nca_file = \"ca.pem\"\n"),
    )
    .await;
    sim.sim
        .rotate_token(SecretString::from(trusted.token.clone()));
    let recorder = Recorder::start(&broker, None);
    until_published(&recorder).await;
    trusted.shutdown().await;

    let untrusted = TestGateway::start_with(
        &sim.base_url,
        &sim.ca.ca_pem,
        &format!("[mqtt]\nurl = \"{url}\"\n"),
    )
    .await;
    let broker_name = format!("127.0.0.1:{tls_port}");
    let warned = eventually(WAIT, || async {
        support::logs()
            .lines()
            .any(|l| l.contains("WARN") && l.contains(&broker_name) && l.contains("MQTT broker"))
    })
    .await;
    assert!(warned, "no warning about the unverified broker");
    let (_, _, body) = untrusted.get("/status").await;
    assert_eq!(support::json(&body)["mqtt"]["connected"], false, "{body}");
    untrusted.shutdown().await;
}

/// A Supervisor on loopback that shares `broker` as its MQTT service with a
/// caller presenting `token`, as the real one does for `services: mqtt:want`;
/// anyone else gets 401. Returns its URL.
async fn mock_supervisor(token: String, broker_port: u16, password: String) -> String {
    use http_body_util::Full;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (token, password) = (token.clone(), password.clone());
            let service =
                hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
                    let allowed = request.uri().path() == "/services/mqtt"
                        && request
                            .headers()
                            .get("authorization")
                            .and_then(|v| v.to_str().ok())
                            == Some(format!("Bearer {token}").as_str());
                    let body = json!({"result": "ok", "data": {
                    "host": "127.0.0.1", "port": broker_port, "ssl": false,
                    "username": "addons", "password": password, "protocol": "3.1.1",
                    "addon": "core_mosquitto"}});
                    let response = if allowed {
                        http::Response::new(Full::new(bytes::Bytes::from(body.to_string())))
                    } else {
                        let mut denied = http::Response::new(Full::new(bytes::Bytes::from_static(
                            b"{\"result\":\"error\",\"message\":\"Unauthorized\"}",
                        )));
                        *denied.status_mut() = http::StatusCode::UNAUTHORIZED;
                        denied
                    };
                    async move { Ok::<_, std::convert::Infallible>(response) }
                });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
            );
        }
    });
    url
}

/// Issue 24, item 6: the add-on needs only the token. Its options become the
/// config (`addon_prepare`), the broker and its credentials come from the
/// Supervisor, and the household appears on a broker that takes only those
/// credentials; neither the token nor the broker's password reaches a topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_addon_takes_its_broker_from_the_supervisor_and_the_household_appears() {
    let password = support::canary();
    let Some(broker) = Broker::start(Some(("addons", &password))) else {
        return;
    };
    support::capture_logs();
    let sim = Sim::start().await;
    let token = support::canary();
    sim.sim.rotate_token(SecretString::from(token.clone()));
    let data = tempfile::tempdir().unwrap();
    std::fs::write(
        data.path().join("options.json"),
        json!({"joulo_token": token, "log_level": "info"}).to_string(),
    )
    .unwrap();
    let config_path = joulo_gateway::addon_prepare(
        data.path(),
        &data.path().join("keys"),
        "127.0.0.1:0".parse().unwrap(),
        None,
    )
    .unwrap();
    // The add-on's config names Joulo itself: pointed at the simulated one
    // here, with its CA and fast ttls; nothing else of it changes.
    demo::write_private(&data.path().join("ca.pem"), &sim.ca.ca_pem).unwrap();
    let text = std::fs::read_to_string(&config_path)
        .unwrap()
        .replace(
            "[upstream]\n",
            &format!(
                "[upstream]\nbase_url = \"{}\"\nca_file = \"ca.pem\"\n",
                sim.base_url
            ),
        )
        .replace("ttl = \"15s\"", "ttl = \"1s\"")
        .replace("ttl = \"60s\"", "ttl = \"1s\"")
        .replace("ttl = \"10m\"", "ttl = \"1s\"");
    std::fs::write(&config_path, text).unwrap();
    let mut config = joulo_gateway::config::Config::load(&config_path).unwrap();
    assert!(config.mqtt.is_none(), "the options name no broker");

    let supervisor_token = support::canary();
    let url = mock_supervisor(supervisor_token.clone(), broker.port, password.clone()).await;
    let wrong =
        joulo_gateway::Supervisor::new(&url, SecretString::from(support::canary())).unwrap();
    assert!(
        joulo_gateway::addon_mqtt_from_supervisor(&wrong)
            .await
            .is_none(),
        "a refused Supervisor call leaves MQTT off"
    );
    let supervisor =
        joulo_gateway::Supervisor::new(&url, SecretString::from(supervisor_token.clone())).unwrap();
    config.mqtt = joulo_gateway::addon_mqtt_from_supervisor(&supervisor).await;
    assert!(
        config.mqtt.is_some(),
        "the Supervisor's broker was not taken"
    );

    let recorder = Recorder::start(&broker, Some(("addons", &password)));
    let gateway = joulo_gateway::Gateway::build(&config).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(gateway.serve(listener, async {
        let _ = stop_rx.await;
    }));
    until_published(&recorder).await;
    let _ = stop.send(());
    let _ = served.await;
    assert_broker_saw_no_secret(&recorder, &[&token, &password, &supervisor_token]);
    support::assert_no_leak(&[&token, &password, &supervisor_token], &[]);
}
