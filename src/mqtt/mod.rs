//! The MQTT publisher for Home Assistant, off unless `[mqtt]` is configured:
//! it asks for `/chargers`, `/sessions?limit=1` and `/energy` through the
//! request path (the same cache and upstream budget as devices, as a device
//! of its own), each at its route's cache ttl, and publishes Home Assistant
//! discovery configs and states (`mqtt/discovery`), retained, only what
//! changed; everything again on (re)connect and on Home Assistant's birth
//! message. The broker's connection is driven by its own task, which
//! reconnects with a growing back-off and warns once per outage.

mod discovery;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, LastWill, MqttOptions, Outgoing, Packet, QoS,
    TlsConfiguration, Transport,
};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::config::{MqttConfig, MqttPassword};
use crate::files::{self, FileError};
use crate::proxy::fetch_for_publisher;
use crate::routes::RouteId;
use crate::state::AppState;
use discovery::{Household, Topics};

/// The most a password file may hold.
const PASSWORD_LIMIT: u64 = 4096;
/// The first wait before reconnecting to the broker; doubled per failure.
const BACKOFF_FIRST: Duration = Duration::from_secs(1);
/// The longest wait between reconnection attempts.
const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// The MQTT keep-alive: a ping a minute when nothing else is sent.
const KEEP_ALIVE: Duration = Duration::from_secs(60);
/// Bound on connecting to the broker (TCP, TLS and CONNACK), in seconds.
const CONNECT_TIMEOUT_S: u64 = 10;
/// The shortest interval between two polls of one route, whatever its ttl.
const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// The interval for a route whose caching is off (ttl 0): not a loop.
const UNCACHED_INTERVAL: Duration = Duration::from_secs(60);
/// How long the publisher waits on stop for `offline` to reach the broker.
const GOODBYE: Duration = Duration::from_secs(2);
/// Requests the client may queue for the connection task.
const QUEUE: usize = 256;
/// The least time between two resends of everything for Home Assistant's
/// birth messages: a flood of them, from anyone who may publish on the
/// broker, costs one resend per gap.
const RESEND_GAP: Duration = Duration::from_secs(5);
/// The largest MQTT packet sent or taken (a discovery config is about 1 KiB).
const MAX_PACKET: usize = 256 * 1024;
/// How long a connection must stay up before its outage is over: the
/// back-off and the one warning per outage hold across shorter ones.
const STABLE: Duration = Duration::from_secs(30);

/// What the publisher polls, each at its route's ttl.
const POLLED: [(RouteId, &str); 3] = [
    (RouteId::Chargers, ""),
    (RouteId::Sessions, "limit=1"),
    (RouteId::Energy, ""),
];

/// Why the publisher could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum MqttError {
    /// `password_file` could not be read or is exposed.
    #[error("cannot use mqtt.password_file {path}: {source}")]
    Password {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: FileError,
    },
    /// The file holds no password (empty, or not one line of text).
    #[error("mqtt.password_file {path} holds no password (one line of text)")]
    EmptyPassword {
        /// The file.
        path: std::path::PathBuf,
    },
    /// The TLS settings for `mqtts://`.
    #[error("cannot set up TLS to the MQTT broker: {0}")]
    Tls(#[from] rustls::Error),
}

/// A publisher ready to run: its config, password and TLS settings checked.
#[derive(Debug)]
pub(crate) struct Publisher {
    /// `[mqtt]`.
    config: MqttConfig,
    /// The broker password, read at start.
    password: Option<SecretString>,
    /// The verified TLS settings for `mqtts://`.
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl Publisher {
    /// Reads the password file (held to the token file's rules) and builds
    /// the TLS settings; connects to nothing.
    pub(crate) fn build(config: &MqttConfig) -> Result<Publisher, MqttError> {
        let password = match &config.password {
            None => None,
            Some(MqttPassword::Given(secret)) => Some(secret.clone()),
            Some(MqttPassword::File(path)) => Some(read_password(path)?),
        };
        let tls = if config.tls {
            let mut roots = rustls::RootCertStore::empty();
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            for cert in &config.extra_roots {
                roots.add(cert.clone())?;
            }
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            Some(Arc::new(
                rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()?
                    .with_root_certificates(roots)
                    .with_no_client_auth(),
            ))
        } else {
            None
        };
        Ok(Publisher {
            config: config.clone(),
            password,
            tls,
        })
    }

    /// Publishes until `stopped` resolves, then says `offline` and
    /// disconnects.
    pub(crate) async fn run(self, state: Arc<AppState>, stopped: impl Future<Output = ()>) {
        let topics = Topics::new(&self.config);
        let (client, eventloop) = AsyncClient::new(self.options(&topics), QUEUE);
        let (events_tx, events) = mpsc::unbounded_channel();
        let birth_pending = Arc::new(AtomicBool::new(false));
        let birth_off = Arc::new(AtomicBool::new(false));
        let (seen_tx, seen) = mpsc::channel(SEEN_QUEUE);
        let inbox = Inbox {
            events: events_tx,
            birth_pending: birth_pending.clone(),
            birth_off: birth_off.clone(),
            seen: seen_tx,
        };
        let driver = tokio::spawn(drive(
            eventloop,
            inbox,
            topics.clone(),
            state.clone(),
            topics.birth(),
            format!("{}:{}", self.config.host, self.config.port),
        ));
        let mut run = Run {
            state,
            client,
            topics,
            household: Household::default(),
            sent: HashMap::new(),
            connected: false,
            queue_full_said: AtomicBool::new(false),
            birth_pending,
            birth_off,
            leftovers: HashSet::new(),
            last_resend: None,
            resend_waiting: false,
        };
        run.serve(events, seen, stopped).await;
        run.goodbye(driver).await;
    }

    /// The client's options: the last will (`offline`, retained), the
    /// credentials and the transport.
    fn options(&self, topics: &Topics) -> MqttOptions {
        let mut options = MqttOptions::new(topics.client_id(), &self.config.host, self.config.port);
        options
            .set_keep_alive(KEEP_ALIVE)
            .set_clean_session(true)
            .set_max_packet_size(MAX_PACKET, MAX_PACKET)
            .set_last_will(LastWill::new(
                topics.availability(),
                "offline",
                QoS::AtLeastOnce,
                true,
            ));
        if let Some(user) = &self.config.username {
            // The one place the broker password leaves its secret type.
            let password = self.password.as_ref().map(|p| p.expose_secret());
            options.set_credentials(user, password.unwrap_or_default());
        }
        if let Some(tls) = &self.tls {
            options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
                tls.clone(),
            )));
        }
        options
    }
}

/// Reads the broker password from `path` under the token file's rules: a
/// regular file, private to the gateway's user (or in a platform's secrets
/// mount), bounded; one line, trimmed.
fn read_password(path: &std::path::Path) -> Result<SecretString, MqttError> {
    let error = |source| MqttError::Password {
        path: path.to_owned(),
        source,
    };
    let (bytes, exposure) =
        files::read_private(path, PASSWORD_LIMIT, files::platform_protected(path))
            .map_err(error)?;
    if let Some(exposure) = exposure {
        warn!(file = %path.display(), problem = %exposure.problem, "the MQTT password file is exposed");
    }
    let text = std::str::from_utf8(&bytes).ok().map(str::trim);
    match text {
        Some(text) if !text.is_empty() && !text.contains('\n') => Ok(SecretString::from(text)),
        _ => Err(MqttError::EmptyPassword {
            path: path.to_owned(),
        }),
    }
}

/// What the connection task tells the publisher.
#[derive(Debug)]
enum Link {
    /// Connected (again): everything is published again.
    Up,
    /// The connection was lost.
    Down,
    /// Home Assistant (re)started: everything is published again.
    Birth,
}

/// Retained topics of this gateway's seen on the broker, bounded: a flood
/// of them (anyone may publish there) is dropped past it.
const SEEN_QUEUE: usize = 1024;
/// The most leftover topics remembered until Joulo has answered.
const SEEN_KEPT: usize = 4096;

/// What the connection task tells the publisher, and how.
struct Inbox {
    /// Connected, lost, birth.
    events: mpsc::UnboundedSender<Link>,
    /// Set while a birth message is queued: at most one is.
    birth_pending: Arc<AtomicBool>,
    /// Set when a message past the size limit came: no birth subscription.
    birth_off: Arc<AtomicBool>,
    /// This gateway's retained topics seen on the broker, bounded.
    seen: mpsc::Sender<String>,
}

/// Drives the broker connection: reconnects with a growing back-off and
/// warns once per outage (then debug until it is back).
async fn drive(
    mut eventloop: EventLoop,
    inbox: Inbox,
    topics: Topics,
    state: Arc<AppState>,
    birth: String,
    broker: String,
) {
    let Inbox {
        events,
        birth_pending,
        birth_off,
        seen,
    } = inbox;
    let mut options = eventloop.network_options();
    options.set_connection_timeout(CONNECT_TIMEOUT_S);
    eventloop.set_network_options(options);
    let mut backoff = BACKOFF_FIRST;
    // An outage lasts until a connection has stayed up for STABLE: a broker
    // that accepts and then drops (or another client taking the id) is one
    // outage with one warning and a growing back-off, not one a second.
    let mut outage = false;
    let mut said_back = false;
    let mut connected_at: Option<Instant> = None;
    let mut first = true;
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                if first {
                    info!(broker = %broker, "connected to the MQTT broker");
                    first = false;
                } else if outage && !said_back {
                    info!(broker = %broker, "MQTT broker reachable again");
                    said_back = true;
                }
                connected_at = Some(Instant::now());
                state.mqtt.connected.set(1);
                let _ = events.send(Link::Up);
            }
            Ok(Event::Incoming(Packet::Publish(message))) => {
                // Anyone who may publish on the broker can send this, as
                // often as they like: one is queued at a time, so the queue
                // cannot grow (the publisher takes it from there).
                if message.topic == birth
                    && &message.payload[..] == b"online"
                    && !birth_pending.swap(true, Ordering::AcqRel)
                {
                    let _ = events.send(Link::Birth);
                } else if message.retain
                    && !message.payload.is_empty()
                    && topics.is_own(&message.topic)
                {
                    let _ = seen.try_send(message.topic.clone());
                }
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => return,
            Ok(_) => {}
            Err(e) => {
                state.mqtt.connected.set(0);
                let _ = events.send(Link::Down);
                if matches!(e, ConnectionError::RequestsDone) {
                    return;
                }
                // A retained message on the birth topic past the packet
                // limit (anyone may publish one) would end every connection
                // the moment the subscription delivers it: birth messages
                // are not listened to from then on.
                if too_big(&e) && !birth_off.swap(true, Ordering::AcqRel) {
                    warn!(
                        topic = %birth,
                        limit_kib = MAX_PACKET / 1024,
                        "the broker sent a message past the size limit, likely retained on Home \
                         Assistant's status topic; birth messages are no longer listened to until \
                         a restart (clear it with an empty retained message)"
                    );
                }
                if connected_at.take().is_some_and(|at| at.elapsed() >= STABLE) {
                    outage = false;
                    said_back = false;
                    backoff = BACKOFF_FIRST;
                }
                if outage {
                    debug!(broker = %broker, error = %e, retry_in_s = backoff.as_secs(), "MQTT broker still unreachable");
                } else {
                    warn!(
                        broker = %broker,
                        error = %e,
                        "MQTT broker unreachable or refusing; the gateway serves devices as before \
                         and reconnects with back-off (no further warning until it is back)"
                    );
                    outage = true;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

/// Whether the connection ended on an incoming packet past the size limit.
fn too_big(e: &ConnectionError) -> bool {
    matches!(
        e,
        ConnectionError::MqttState(rumqttc::StateError::Deserialization(
            rumqttc::mqttbytes::Error::PayloadSizeLimitExceeded(_)
        ))
    )
}

/// The publisher's running state.
struct Run {
    /// The gateway, asked as a device.
    state: Arc<AppState>,
    /// Hands messages to the connection task.
    client: AsyncClient,
    /// The topic names.
    topics: Topics,
    /// What Joulo last said.
    household: Household,
    /// What the broker holds from this run, by topic: what is published
    /// again only if it changed, and cleared when it goes.
    sent: HashMap<String, String>,
    /// Whether the broker is connected now.
    connected: bool,
    /// Whether this sync already said the request queue is full.
    queue_full_said: AtomicBool,
    /// Set by the connection task while a birth message waits for this
    /// task: at most one is queued.
    birth_pending: Arc<AtomicBool>,
    /// Set by the connection task when a message past the size limit came
    /// (a retained one on the birth topic): the birth topic is not
    /// subscribed to again.
    birth_off: Arc<AtomicBool>,
    /// This gateway's retained topics found on the broker that this run has
    /// not published (an earlier run's charger, removed meanwhile): cleared
    /// at the next sync once Joulo has listed the chargers.
    leftovers: HashSet<String>,
    /// When everything was last published again.
    last_resend: Option<Instant>,
    /// A birth message came within [`RESEND_GAP`] of the last resend: the
    /// next one is due when the gap is over.
    resend_waiting: bool,
}

impl Run {
    /// Polls each route at its ttl and answers the connection's news, until
    /// `stopped`.
    async fn serve(
        &mut self,
        mut events: mpsc::UnboundedReceiver<Link>,
        mut seen: mpsc::Receiver<String>,
        stopped: impl Future<Output = ()>,
    ) {
        tokio::pin!(stopped);
        let mut due = [Instant::now(); POLLED.len()];
        loop {
            let next = *due.iter().min().expect("three routes");
            let resend_at = self
                .last_resend
                .map_or_else(Instant::now, |last| last + RESEND_GAP);
            tokio::select! {
                () = tokio::time::sleep_until(resend_at), if self.resend_waiting => {
                    self.resend_all();
                }
                Some(topic) = seen.recv() => {
                    if !self.sent.contains_key(&topic) && self.leftovers.len() < SEEN_KEPT {
                        self.leftovers.insert(topic);
                    }
                    self.clear_leftovers();
                }
                () = &mut stopped => return,
                link = events.recv() => match link {
                    Some(Link::Up) => {
                        self.connected = true;
                        self.send(&self.topics.availability(), "online".to_owned());
                        for filter in self.topics.own_filters() {
                            // Retained leftovers of earlier runs come back
                            // on this subscription.
                            let _ = self.client.try_subscribe(filter, QoS::AtMostOnce);
                        }
                        if !self.birth_off.load(Ordering::Acquire)
                            && self
                                .client
                                .try_subscribe(self.topics.birth(), QoS::AtLeastOnce)
                                .is_err()
                        {
                            debug!("MQTT request queue full; the birth subscription waits for the next connection");
                        }
                        self.resend_all();
                    }
                    Some(Link::Birth) => {
                        self.birth_pending.store(false, Ordering::Release);
                        // A burst of birth messages (Home Assistant restarts
                        // take seconds; anyone on the broker can send more)
                        // costs one resend per gap, not one each.
                        match self.last_resend {
                            Some(last) if last.elapsed() < RESEND_GAP => self.resend_waiting = true,
                            _ => self.resend_all(),
                        }
                    }
                    Some(Link::Down) => self.connected = false,
                    None => return,
                },
                () = tokio::time::sleep_until(next) => {
                    let now = Instant::now();
                    for (slot, (route, query)) in due.iter_mut().zip(POLLED) {
                        if *slot <= now {
                            self.poll(route, query).await;
                            *slot = Instant::now() + self.interval(route);
                        }
                    }
                    self.poll_gateway();
                    self.sync(false);
                }
            }
        }
    }

    /// How often `route` is asked: its cache ttl, so every poll gets a fresh
    /// copy and Joulo is asked at most once per ttl for it and every device.
    fn interval(&self, route: RouteId) -> Duration {
        let ttl = self.state.policy.load().cache_config.ttl_for(route);
        if ttl.is_zero() {
            UNCACHED_INTERVAL
        } else {
            ttl.max(MIN_INTERVAL)
        }
    }

    /// Asks for `route` as the publisher and takes in the answer.
    async fn poll(&mut self, route: RouteId, query: &str) {
        let answer = match fetch_for_publisher(&self.state, route, query).await {
            Ok((status, body)) if status.is_success() => serde_json::from_slice::<Value>(&body)
                .map_err(|_| debug!(route = route.config_name(), "answer is not JSON"))
                .ok(),
            Ok((status, _)) => {
                debug!(
                    route = route.config_name(),
                    status = status.as_u16(),
                    "no data for MQTT"
                );
                None
            }
            Err(e) => {
                debug!(route = route.config_name(), error = %e, "no data for MQTT");
                None
            }
        };
        let household = &mut self.household;
        match route {
            RouteId::Chargers => {
                household.gateway.joulo_connected = answer.is_some();
                let before = household.left_out;
                household.set_chargers(answer.as_ref());
                if household.left_out > 0 && before == 0 {
                    warn!(
                        left_out = household.left_out,
                        published = discovery::MAX_CHARGERS,
                        "Joulo lists more chargers than the publisher takes; the rest are not published"
                    );
                }
            }
            RouteId::Sessions => household.set_last_session(answer.as_ref()),
            _ => household.set_energy(answer.as_ref(), &this_month()),
        }
    }

    /// The gateway device's values, from its own state.
    fn poll_gateway(&mut self) {
        let state = &self.state;
        let (_, left) = state.policy.load().budget.this_minute();
        let gateway = &mut self.household.gateway;
        gateway.token_problem = !state.tokens.is_loaded() || state.tokens.is_rejected();
        gateway.calls_left = left;
        gateway.last_error = state.upstream.last_failure().map(|f| f.what);
        if gateway.token_problem {
            gateway.joulo_connected = false;
        }
    }

    /// Clears (an empty retained message) each leftover of an earlier run
    /// that the household does not describe, once Joulo has listed the
    /// chargers: before that, every charger would look gone.
    fn clear_leftovers(&mut self) {
        if !self.connected || !self.household.joulo_ok || self.leftovers.is_empty() {
            return;
        }
        let current = self.household.messages(&self.topics);
        let leftovers: Vec<String> = self.leftovers.drain().collect();
        for topic in leftovers {
            if !current.contains_key(&topic) && !self.send(&topic, String::new()) {
                // The queue is full: tried again at the next sync.
                self.leftovers.insert(topic);
            }
        }
    }

    /// Publishes everything again (a new connection, Home Assistant's birth).
    fn resend_all(&mut self) {
        self.resend_waiting = false;
        self.last_resend = Some(Instant::now());
        self.sync(true);
    }

    /// Publishes what changed since the broker last heard, discovery configs
    /// before states (everything, with `all`), and clears the topics of what
    /// is gone (an empty retained message removes a discovery config).
    fn sync(&mut self, all: bool) {
        if !self.connected {
            return;
        }
        self.queue_full_said.store(false, Ordering::Relaxed);
        self.clear_leftovers();
        let messages = self.household.messages(&self.topics);
        let gone: Vec<String> = self
            .sent
            .keys()
            .filter(|topic| !messages.contains_key(*topic))
            .cloned()
            .collect();
        let (configs, states): (BTreeMap<_, _>, BTreeMap<_, _>) = messages
            .into_iter()
            .partition(|(topic, _)| self.topics.is_config(topic));
        for (topic, payload) in configs.into_iter().chain(states) {
            if all || self.sent.get(&topic) != Some(&payload) {
                self.publish(topic, payload);
            }
        }
        for topic in gone {
            // Kept until the clear is queued, so the next sync tries again.
            if self.send(&topic, String::new()) {
                self.sent.remove(&topic);
            }
        }
    }

    /// Publishes one retained message the broker is to keep while it
    /// describes the household, remembering it as sent.
    fn publish(&mut self, topic: String, payload: String) {
        // Not queued: forgotten, so the next sync sends it.
        if self.send(&topic, payload.clone()) {
            self.sent.insert(topic, payload);
        } else {
            self.sent.remove(&topic);
        }
    }

    /// Hands one retained message to the connection task; a full queue (the
    /// broker is slow or gone) drops it, and the next connection publishes
    /// everything again. Whether it was queued.
    fn send(&self, topic: &str, payload: String) -> bool {
        if self
            .client
            .try_publish(topic, QoS::AtLeastOnce, true, payload)
            .is_err()
        {
            // One line per sync, not per message: a slow broker would
            // otherwise write one per dropped message (outside review).
            if !self.queue_full_said.swap(true, Ordering::Relaxed) {
                debug!(
                    "MQTT request queue full; what did not fit is published again at the next change or connection"
                );
            }
            return false;
        }
        let stats = &self.state.mqtt;
        stats.published.inc();
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        stats
            .last_publish
            .set(i64::try_from(now).unwrap_or(i64::MAX));
        true
    }

    /// Says `offline` (retained) and disconnects, waiting a bounded time for
    /// it to reach the broker.
    async fn goodbye(self, mut driver: tokio::task::JoinHandle<()>) {
        // Not connected: the broker already holds the last will's `offline`.
        if self.connected {
            self.send(&self.topics.availability(), "offline".to_owned());
            let _ = self.client.try_disconnect();
            if tokio::time::timeout(GOODBYE, &mut driver).await.is_err() {
                driver.abort();
            }
        } else {
            driver.abort();
        }
        self.state.mqtt.connected.set(0);
    }
}

/// The current month as Joulo's `/energy` names it (`YYYY-MM`, UTC).
fn this_month() -> String {
    let now = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    now.get(..7).unwrap_or_default().to_owned()
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// The password file is held to the token file's rules and its value
    /// shows nowhere: not in the publisher's debug output, not in an error.
    #[test]
    fn the_password_file_is_held_to_the_token_files_rules() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("mqtt_password");
        // Made at run time, never a literal.
        let secret: String = ["pw", "Q7x", "Lm2"].concat();
        files::write_private(&file, &format!("{secret}\n")).unwrap();
        let mut config = MqttConfig::new("mqtt://127.0.0.1:1883").unwrap();
        config.username = Some("joulo".into());
        config.password = Some(MqttPassword::File(file.clone()));
        let publisher = Publisher::build(&config).unwrap();
        assert_eq!(publisher.password.as_ref().unwrap().expose_secret(), secret);
        assert!(!format!("{publisher:?}").contains(&secret));

        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let refused = Publisher::build(&config).unwrap_err().to_string();
        assert!(refused.contains("mqtt.password_file"), "{refused}");
        assert!(!refused.contains(&secret), "{refused}");

        files::write_private(&dir.path().join("empty"), "\n").unwrap();
        config.password = Some(MqttPassword::File(dir.path().join("empty")));
        assert!(matches!(
            Publisher::build(&config),
            Err(MqttError::EmptyPassword { .. })
        ));
    }

    /// `mqtts://` verifies the broker: a TLS client config is built (and a
    /// bad extra root is an error at start, not at the first connection).
    #[test]
    fn mqtts_builds_a_verifying_tls_config() {
        let mut config = MqttConfig::new("mqtts://broker.lan").unwrap();
        assert!(Publisher::build(&config).unwrap().tls.is_some());
        config.extra_roots = vec![rustls::pki_types::CertificateDer::from(vec![1, 2, 3])];
        assert!(matches!(Publisher::build(&config), Err(MqttError::Tls(_))));
        let plain = MqttConfig::new("mqtt://broker.lan").unwrap();
        assert!(Publisher::build(&plain).unwrap().tls.is_none());
    }
}
