//! What the publisher tells Home Assistant, as pure functions of what Joulo
//! last answered: one device per charger, an account device and a gateway
//! device, each with a JSON state topic and one discovery config per entity
//! (the MQTT discovery convention). A value Joulo did not send is left out of
//! its state, and its entity's availability template turns it unavailable:
//! never a `0` standing in for a missing number.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use crate::config::MqttConfig;

/// The topics the publisher writes, from `[mqtt]`.
#[derive(Debug, Clone)]
pub(super) struct Topics {
    /// Home Assistant's discovery prefix.
    prefix: String,
    /// Where states and availability go.
    base: String,
    /// The discovery node id and unique-id prefix: `base` with `/` as `_`,
    /// so two gateways with their own `base_topic` never share an entity.
    node: String,
}

impl Topics {
    /// The topics `config` names.
    pub(super) fn new(config: &MqttConfig) -> Topics {
        Topics {
            prefix: config.discovery_prefix.clone(),
            base: config.base_topic.clone(),
            node: config.base_topic.replace('/', "_"),
        }
    }

    /// The gateway's availability: `online` while it publishes, `offline`
    /// when it stops or (the broker's last will) loses the broker.
    pub(super) fn availability(&self) -> String {
        format!("{}/gateway/availability", self.base)
    }

    /// Home Assistant's birth message: `online` when it (re)starts.
    pub(super) fn birth(&self) -> String {
        format!("{}/status", self.prefix)
    }

    /// A client id the broker tells apart from another gateway's, with a
    /// random part per run: a predictable one lets any client on the broker
    /// take the gateway's session over, and two gateways with the same
    /// `base_topic` would keep disconnecting each other (outside review).
    pub(super) fn client_id(&self) -> String {
        let mut random = [0u8; 4];
        getrandom::fill(&mut random).expect("the OS random source works");
        let suffix: String = random.iter().map(|b| format!("{b:02x}")).collect();
        format!("joulo-gateway-{}-{suffix}", self.node)
    }

    /// The discovery config topic of one entity.
    fn config(&self, component: &str, object_id: &str) -> String {
        format!(
            "{}/{component}/{}/{object_id}/config",
            self.prefix, self.node
        )
    }

    /// The filters under which this gateway's own retained messages live
    /// (its discovery configs and its chargers' states): what an earlier
    /// run left there is cleared once it no longer describes a charger.
    pub(super) fn own_filters(&self) -> [String; 3] {
        [
            format!("{}/sensor/{}/+/config", self.prefix, self.node),
            format!("{}/binary_sensor/{}/+/config", self.prefix, self.node),
            format!("{}/charger/+/state", self.base),
        ]
    }

    /// Whether `topic` is one [`Topics::own_filters`] covers.
    pub(super) fn is_own(&self, topic: &str) -> bool {
        let config = |component: &str| {
            topic
                .strip_prefix(&format!("{}/{component}/{}/", self.prefix, self.node))
                .and_then(|rest| rest.strip_suffix("/config"))
                .is_some_and(|object| !object.is_empty() && !object.contains('/'))
        };
        let state = topic
            .strip_prefix(&format!("{}/charger/", self.base))
            .and_then(|rest| rest.strip_suffix("/state"))
            .is_some_and(|id| !id.is_empty() && !id.contains('/'));
        config("sensor") || config("binary_sensor") || state
    }

    /// Whether `topic` is a discovery config (published before the states).
    pub(super) fn is_config(&self, topic: &str) -> bool {
        topic.starts_with(&format!("{}/", self.prefix)) && topic.ends_with("/config")
    }
}

/// A charger as `/chargers` last listed it: what its device block says.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Charger {
    /// Joulo's id (checked to be topic-safe).
    pub id: String,
    /// Its nickname, the device's name.
    pub nickname: String,
    /// Its connection type, the device's model.
    pub connection_type: String,
    /// Its state as Joulo gave it; `None` while Joulo cannot be asked.
    pub state: Option<Map<String, Value>>,
}

/// The newest session of one charger, as `/sessions?limit=1` showed it.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct LastSession {
    /// Its energy, kWh.
    pub kwh: Option<f64>,
    /// Its ERE credits.
    pub ere_credits: Option<f64>,
}

/// Everything the publisher knows, from which every message is made.
#[derive(Debug, Clone, Default)]
pub(super) struct Household {
    /// The chargers by id, as last listed.
    pub chargers: BTreeMap<String, Charger>,
    /// Each charger's newest session seen since start.
    pub last_sessions: BTreeMap<String, LastSession>,
    /// `/energy`'s answer; `None` while Joulo cannot be asked.
    pub energy: Option<Map<String, Value>>,
    /// The gateway's own state.
    pub gateway: GatewayState,
    /// Whether the last `/chargers` poll got an answer: while it does not,
    /// every data entity is unavailable, the account's too (not its last
    /// figures, up to 10 minutes old).
    pub joulo_ok: bool,
    /// Whether `/chargers` was polled at all: the gateway's own state is not
    /// published before (it would say "0 calls left, not connected").
    pub polled: bool,
    /// Chargers past [`MAX_CHARGERS`] in the last answer, left out.
    pub left_out: usize,
}

/// The most chargers published: a home has one or two. An answer listing
/// thousands (a broken or hostile upstream) would otherwise make every poll
/// rebuild and publish thousands of devices (outside review of 24: 40,000
/// stalled the gateway for every device).
pub(super) const MAX_CHARGERS: usize = 32;

/// The longest text value published in a state or device block: Home
/// Assistant drops a state over 255 characters.
const MAX_TEXT: usize = 64;

/// `text` cut to [`MAX_TEXT`] characters.
fn short(text: &str) -> String {
    text.chars().take(MAX_TEXT).collect()
}

/// The gateway device's values.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct GatewayState {
    /// The last call for data got Joulo's (or a cached) answer.
    pub joulo_connected: bool,
    /// No token loaded, or Joulo rejects it.
    pub token_problem: bool,
    /// Upstream calls left this minute.
    pub calls_left: u32,
    /// The last upstream failure, if any.
    pub last_error: Option<String>,
}

/// A Joulo id fit for topics and unique ids: letters, digits and `-`, as
/// Joulo's UUIDs are. Anything else is not published: a `/`, `+` or `#`
/// would write elsewhere, and an `_` would make `charger_<id>_<field>`
/// ambiguous (ids `x` and `x_last` would share a topic).
pub(super) fn topic_safe(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

impl Household {
    /// Takes in `/chargers`'s answer: the list replaces the known one (a
    /// charger gone is dropped, so its topics are cleared); `None` (Joulo
    /// could not be asked) keeps the devices and empties their states.
    pub(super) fn set_chargers(&mut self, answer: Option<&Value>) {
        self.polled = true;
        let Some(list) = answer.and_then(|a| a.get("chargers")?.as_array()) else {
            self.joulo_ok = false;
            for charger in self.chargers.values_mut() {
                charger.state = None;
            }
            return;
        };
        self.joulo_ok = true;
        self.left_out = 0;
        let mut chargers = BTreeMap::new();
        for entry in list {
            let Some(id) = entry.get("id").and_then(Value::as_str) else {
                continue;
            };
            if !topic_safe(id) {
                continue;
            }
            if chargers.len() >= MAX_CHARGERS && !chargers.contains_key(id) {
                self.left_out += 1;
                continue;
            }
            let text = |key: &str| entry.get(key).and_then(Value::as_str).map(str::to_owned);
            chargers.insert(
                id.to_owned(),
                Charger {
                    id: id.to_owned(),
                    nickname: text("nickname")
                        .map(|n| n.chars().take(100).collect())
                        .unwrap_or_else(|| format!("Charger {}", &id[..id.len().min(8)])),
                    connection_type: text("connection_type")
                        .map(|t| short(&t))
                        .unwrap_or_else(|| "unknown".into()),
                    state: Some(charger_state(entry)),
                },
            );
        }
        self.last_sessions.retain(|id, _| chargers.contains_key(id));
        self.chargers = chargers;
    }

    /// Takes in `/sessions?limit=1`'s answer: the newest session is its
    /// charger's last one.
    pub(super) fn set_last_session(&mut self, answer: Option<&Value>) {
        let Some(session) = answer.and_then(|a| a.get("sessions")?.as_array()?.first()) else {
            return;
        };
        let Some(charger) = session.get("charger_id").and_then(Value::as_str) else {
            return;
        };
        self.last_sessions.insert(
            charger.to_owned(),
            LastSession {
                kwh: session.get("kwh").and_then(Value::as_f64),
                ere_credits: session.get("ere_credits").and_then(Value::as_f64),
            },
        );
    }

    /// Takes in `/energy`'s answer for the month `this_month` (`YYYY-MM`).
    pub(super) fn set_energy(&mut self, answer: Option<&Value>, this_month: &str) {
        self.energy = answer.and_then(Value::as_object).map(|energy| {
            let mut state = Map::new();
            for key in ["total_kwh", "total_ere_credits", "total_sessions"] {
                if let Some(n) = energy.get(key).filter(|v| v.is_number()) {
                    state.insert(key.to_owned(), n.clone());
                }
            }
            if let Some(months) = energy.get("months").and_then(Value::as_array) {
                // The current month's entry; none yet (no charge this month)
                // is a true 0, not last month's figure.
                let month = months.iter().find(|m| {
                    m.get("month")
                        .and_then(Value::as_str)
                        .is_some_and(|m| m.starts_with(this_month))
                });
                let kwh = match month {
                    Some(m) => m.get("kwh").filter(|v| v.is_number()).cloned(),
                    None => Some(json!(0)),
                };
                if let Some(kwh) = kwh {
                    state.insert("month_kwh".to_owned(), kwh);
                }
            }
            state
        });
    }

    /// Every retained message that describes the household now: discovery
    /// configs and states, by topic.
    pub(super) fn messages(&self, topics: &Topics) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        let gateway_device = json!({
            "identifiers": [format!("{}_gateway", topics.node)],
            "name": "Joulo gateway",
            "manufacturer": "joulo-gateway",
            "model": "Gateway",
            "sw_version": env!("CARGO_PKG_VERSION"),
        });
        let via = format!("{}_gateway", topics.node);

        for charger in self.chargers.values() {
            let device = json!({
                "identifiers": [format!("{}_charger_{}", topics.node, charger.id)],
                "name": charger.nickname,
                "manufacturer": "Joulo",
                "model": charger.connection_type,
                "via_device": via,
            });
            let state_topic = format!("{}/charger/{}/state", topics.base, charger.id);
            let place = Place {
                topics,
                device: &device,
                state_topic: &state_topic,
                object_prefix: format!("charger_{}", charger.id),
                unique_prefix: format!("{}_{}", topics.node, charger.id),
            };
            for entity in CHARGER_ENTITIES {
                place.entity(entity, true, &mut out);
            }
            let mut state = charger.state.clone().unwrap_or_default();
            if charger.state.is_some()
                && let Some(last) = self.last_sessions.get(&charger.id)
            {
                if let Some(kwh) = last.kwh {
                    state.insert("last_session_kwh".into(), json!(kwh));
                }
                if let Some(ere) = last.ere_credits {
                    state.insert("last_session_ere_credits".into(), json!(ere));
                }
            }
            out.insert(state_topic, Value::Object(state).to_string());
        }

        let account_device = json!({
            "identifiers": [format!("{}_account", topics.node)],
            "name": "Joulo account",
            "manufacturer": "Joulo",
            "model": "Account",
            "via_device": via,
        });
        let account_topic = format!("{}/account/state", topics.base);
        let place = Place {
            topics,
            device: &account_device,
            state_topic: &account_topic,
            object_prefix: "account".to_owned(),
            unique_prefix: format!("{}_account", topics.node),
        };
        for entity in ACCOUNT_ENTITIES {
            place.entity(entity, true, &mut out);
        }
        let energy = self.energy.clone().filter(|_| self.joulo_ok);
        out.insert(
            account_topic,
            Value::Object(energy.unwrap_or_default()).to_string(),
        );

        let gateway_topic = format!("{}/gateway/state", topics.base);
        let place = Place {
            topics,
            device: &gateway_device,
            state_topic: &gateway_topic,
            object_prefix: "gateway".to_owned(),
            unique_prefix: format!("{}_gateway", topics.node),
        };
        for entity in GATEWAY_ENTITIES {
            place.entity(entity, false, &mut out);
        }
        let GatewayState {
            joulo_connected,
            token_problem,
            calls_left,
            last_error,
        } = &self.gateway;
        if !self.polled {
            return out;
        }
        out.insert(
            gateway_topic,
            json!({
                "joulo_connected": joulo_connected,
                "token_problem": token_problem,
                "calls_left": calls_left,
                "last_error": last_error.as_deref().unwrap_or("none"),
            })
            .to_string(),
        );
        out
    }
}

/// A charger's state from its `/chargers` entry: only what Joulo sent.
fn charger_state(entry: &Value) -> Map<String, Value> {
    let mut state = Map::new();
    if let Some(status) = entry.get("status").and_then(Value::as_str) {
        state.insert("status".into(), json!(short(status)));
    }
    if let Some(charging) = entry.get("is_charging").and_then(Value::as_bool) {
        state.insert("is_charging".into(), json!(charging));
    }
    if let Some(wh) = entry.get("latest_meter_wh").and_then(Value::as_f64) {
        state.insert("meter_kwh".into(), json!(wh / 1000.0));
    }
    if let Some(session) = entry.get("current_session") {
        if let Some(kwh) = session.get("kwh_so_far").filter(|v| v.is_number()) {
            state.insert("session_kwh".into(), kwh.clone());
        }
        if let Some(tag) = session.get("id_tag").and_then(Value::as_str) {
            state.insert("id_tag".into(), json!(short(tag)));
        }
    }
    state
}

/// One entity's discovery: its kind and what Home Assistant is told of it.
struct Entity {
    /// `sensor` or `binary_sensor`.
    component: &'static str,
    /// Its key in the state JSON, and its object id's end.
    key: &'static str,
    /// Its name, shown after the device's.
    name: &'static str,
    /// Home Assistant's device class.
    device_class: Option<&'static str>,
    /// Home Assistant's state class (statistics, the Energy dashboard).
    state_class: Option<&'static str>,
    /// Its unit.
    unit: Option<&'static str>,
    /// An icon when the device class gives none.
    icon: Option<&'static str>,
    /// Shown with the device's diagnostics rather than its main entities.
    diagnostic: bool,
}

/// A sensor's entity.
const fn sensor(key: &'static str, name: &'static str) -> Entity {
    Entity {
        component: "sensor",
        key,
        name,
        device_class: None,
        state_class: None,
        unit: None,
        icon: None,
        diagnostic: false,
    }
}

/// An energy sensor in kWh.
const fn energy(
    key: &'static str,
    name: &'static str,
    state_class: Option<&'static str>,
) -> Entity {
    Entity {
        device_class: Some("energy"),
        state_class,
        unit: Some("kWh"),
        ..sensor(key, name)
    }
}

/// A binary sensor's entity.
const fn binary(key: &'static str, name: &'static str, device_class: &'static str) -> Entity {
    Entity {
        component: "binary_sensor",
        device_class: Some(device_class),
        ..sensor(key, name)
    }
}

/// Each charger's entities; the meter is the one for the Energy dashboard.
const CHARGER_ENTITIES: &[Entity] = &[
    Entity {
        icon: Some("mdi:ev-station"),
        ..sensor("status", "Status")
    },
    binary("is_charging", "Charging", "battery_charging"),
    energy("session_kwh", "Session energy", Some("total_increasing")),
    energy("meter_kwh", "Meter", Some("total_increasing")),
    energy("last_session_kwh", "Last session energy", None),
    Entity {
        icon: Some("mdi:leaf"),
        ..sensor("last_session_ere_credits", "Last session ERE credits")
    },
    Entity {
        icon: Some("mdi:card-account-details"),
        ..sensor("id_tag", "ID tag")
    },
];

/// The account's entities.
const ACCOUNT_ENTITIES: &[Entity] = &[
    energy("total_kwh", "Total energy", Some("total_increasing")),
    Entity {
        state_class: Some("total_increasing"),
        icon: Some("mdi:leaf"),
        ..sensor("total_ere_credits", "Total ERE credits")
    },
    Entity {
        state_class: Some("total_increasing"),
        icon: Some("mdi:counter"),
        ..sensor("total_sessions", "Sessions")
    },
    energy("month_kwh", "Energy this month", Some("total_increasing")),
];

/// The gateway's own entities.
const GATEWAY_ENTITIES: &[Entity] = &[
    binary("joulo_connected", "Connected to Joulo", "connectivity"),
    binary("token_problem", "Token rejected", "problem"),
    Entity {
        state_class: Some("measurement"),
        icon: Some("mdi:api"),
        diagnostic: true,
        ..sensor("calls_left", "API calls left this minute")
    },
    Entity {
        icon: Some("mdi:alert-circle-outline"),
        diagnostic: true,
        ..sensor("last_error", "Last upstream error")
    },
];

/// Where one device's entities are announced.
struct Place<'a> {
    /// The topic names.
    topics: &'a Topics,
    /// The device block every entity carries.
    device: &'a Value,
    /// The device's JSON state topic.
    state_topic: &'a str,
    /// The discovery object id's start.
    object_prefix: String,
    /// The unique id's start.
    unique_prefix: String,
}

impl Place<'_> {
    /// Adds `entity`'s discovery config to `out`. With `per_value`, it is
    /// also unavailable while its value is missing from the state.
    fn entity(&self, entity: &Entity, per_value: bool, out: &mut BTreeMap<String, String>) {
        let key = entity.key;
        let value_template = match entity.component {
            "binary_sensor" => format!("{{{{ 'ON' if value_json.{key} else 'OFF' }}}}"),
            _ => format!("{{{{ value_json.{key} }}}}"),
        };
        let mut availability = vec![json!({"topic": self.topics.availability()})];
        if per_value {
            availability.push(json!({
                "topic": self.state_topic,
                "value_template":
                    format!("{{{{ 'online' if value_json.{key} is defined else 'offline' }}}}"),
            }));
        }
        let mut config = json!({
            "name": entity.name,
            "unique_id": format!("{}_{key}", self.unique_prefix),
            "state_topic": self.state_topic,
            "value_template": value_template,
            "availability": availability,
            "availability_mode": "all",
            "device": self.device,
            "origin": {
                "name": "joulo-gateway",
                "sw_version": env!("CARGO_PKG_VERSION"),
            },
        });
        let fields = config.as_object_mut().expect("an object");
        let optional = [
            ("device_class", entity.device_class),
            ("state_class", entity.state_class),
            ("unit_of_measurement", entity.unit),
            ("icon", entity.icon),
            ("entity_category", entity.diagnostic.then_some("diagnostic")),
        ];
        for (field, value) in optional {
            if let Some(value) = value {
                fields.insert(field.to_owned(), json!(value));
            }
        }
        let object_id = format!("{}_{key}", self.object_prefix);
        out.insert(
            self.topics.config(entity.component, &object_id),
            config.to_string(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topics() -> Topics {
        Topics::new(&MqttConfig::new("mqtt://127.0.0.1").unwrap())
    }

    fn two_chargers() -> Value {
        json!({"chargers": [
            {"id": "c-1", "nickname": "Oprit", "connection_type": "ocpp", "status": "charging",
             "is_charging": true, "current_session": {"id": "s", "kwh_so_far": 8.62, "id_tag": "TAG1"},
             "latest_meter_wh": 4_190_735},
            {"id": "c-2", "nickname": "Carport", "connection_type": "ocpp", "status": "available",
             "is_charging": false, "latest_meter_wh": 1_037_552},
        ]})
    }

    fn state(messages: &BTreeMap<String, String>, topic: &str) -> Value {
        serde_json::from_str(&messages[topic]).unwrap()
    }

    #[test]
    fn one_device_per_charger_with_its_values() {
        let mut household = Household::default();
        household.set_chargers(Some(&two_chargers()));
        household.set_last_session(Some(&json!({"sessions": [
            {"charger_id": "c-2", "kwh": 12.5, "ere_credits": 0.72}
        ]})));
        let messages = household.messages(&topics());
        let oprit = state(&messages, "joulo/charger/c-1/state");
        assert_eq!(oprit["meter_kwh"], json!(4190.735));
        assert_eq!(oprit["session_kwh"], json!(8.62));
        assert_eq!(oprit["id_tag"], "TAG1");
        assert!(oprit.get("last_session_kwh").is_none());
        let carport = state(&messages, "joulo/charger/c-2/state");
        assert_eq!(carport["last_session_kwh"], json!(12.5));
        assert!(
            carport.get("session_kwh").is_none(),
            "no session: unavailable"
        );
        let meter = state(
            &messages,
            "homeassistant/sensor/joulo/charger_c-2_meter_kwh/config",
        );
        assert_eq!(meter["device"]["name"], "Carport");
        assert_eq!(meter["state_class"], "total_increasing");
        assert_eq!(meter["unique_id"], "joulo_c-2_meter_kwh");
        let configs = messages.keys().filter(|t| t.ends_with("/config")).count();
        assert_eq!(configs, 2 * 7 + 4 + 4);
    }

    #[test]
    fn a_missing_meter_is_left_out_never_zero() {
        let mut answer = two_chargers();
        answer["chargers"][0]
            .as_object_mut()
            .unwrap()
            .remove("latest_meter_wh");
        let mut household = Household::default();
        household.set_chargers(Some(&answer));
        let oprit = state(&household.messages(&topics()), "joulo/charger/c-1/state");
        assert!(oprit.get("meter_kwh").is_none(), "{oprit}");
    }

    #[test]
    fn joulo_unreachable_empties_the_states_and_keeps_the_devices() {
        let mut household = Household::default();
        household.set_chargers(Some(&two_chargers()));
        household.set_energy(Some(&json!({"total_kwh": 1.0})), "2026-12");
        household.set_chargers(None);
        household.set_energy(None, "2026-12");
        let messages = household.messages(&topics());
        assert_eq!(messages["joulo/charger/c-1/state"], "{}");
        assert_eq!(messages["joulo/account/state"], "{}");
        assert!(messages.contains_key("homeassistant/sensor/joulo/charger_c-1_meter_kwh/config"));
    }

    #[test]
    fn a_charger_gone_from_the_list_loses_its_topics() {
        let mut household = Household::default();
        household.set_chargers(Some(&two_chargers()));
        let mut answer = two_chargers();
        answer["chargers"].as_array_mut().unwrap().pop();
        household.set_chargers(Some(&answer));
        let messages = household.messages(&topics());
        assert!(!messages.keys().any(|t| t.contains("c-2")));
    }

    #[test]
    fn energy_this_month_is_the_current_months_or_zero() {
        let energy = json!({"total_kwh": 10.0, "total_ere_credits": 1.0, "total_sessions": 3,
            "months": [{"month": "2026-11", "kwh": 7.5}, {"month": "2026-10", "kwh": 2.5}]});
        let mut household = Household::default();
        household.set_energy(Some(&energy), "2026-11");
        assert_eq!(household.energy.as_ref().unwrap()["month_kwh"], json!(7.5));
        // The first days of December, before a charge: 0, not November's.
        household.set_energy(Some(&energy), "2026-12");
        assert_eq!(household.energy.as_ref().unwrap()["month_kwh"], json!(0));
    }

    #[test]
    fn ids_that_are_not_topic_safe_are_not_published() {
        for bad in ["", "a/b", "a+b", "#", "a b", "x_last", &"x".repeat(65)] {
            assert!(!topic_safe(bad), "{bad}");
        }
        let mut household = Household::default();
        household.set_chargers(Some(&json!({"chargers": [{"id": "x/#", "status": "a"}]})));
        assert!(household.chargers.is_empty());
    }

    /// Outside review of 24: a hostile `/chargers` list is bounded (at most
    /// [`MAX_CHARGERS`] devices, text cut), and while Joulo cannot be asked
    /// the account's figures go unavailable with the chargers'.
    #[test]
    fn a_huge_or_hostile_charger_list_is_bounded_and_errors_empty_the_account() {
        let list: Vec<Value> = (0..5_000)
            .map(|i| json!({"id": format!("c{i}"), "status": "x".repeat(300), "connection_type": "y".repeat(300)}))
            .collect();
        let mut household = Household::default();
        assert!(
            household
                .messages(&topics())
                .keys()
                .all(|t| !t.ends_with("gateway/state"))
        );
        household.set_chargers(Some(&json!({ "chargers": list })));
        assert_eq!(household.chargers.len(), MAX_CHARGERS);
        assert_eq!(household.left_out, 5_000 - MAX_CHARGERS);
        let messages = household.messages(&topics());
        assert!(
            messages.values().all(|m| m.len() < 4096),
            "a message past 4 KiB"
        );
        assert!(messages.keys().any(|t| t.ends_with("gateway/state")));

        let energy = json!({"total_kwh": 10.0, "months": []});
        household.set_energy(Some(&energy), "2026-12");
        let account = |h: &Household| state(&h.messages(&topics()), "joulo/account/state");
        assert_eq!(account(&household)["total_kwh"], json!(10.0));
        household.set_chargers(None);
        assert_eq!(account(&household), json!({}), "stale while Joulo fails");
        household.set_chargers(Some(&json!({"chargers": []})));
        assert_eq!(account(&household)["total_kwh"], json!(10.0));
    }
}
