//! A simulated Joulo API: the documented routes with realistic data, Joulo's 401
//! and 403 answers, and a tally of what it was sent, so the demo can show that no
//! `?token=` ever reached it.

use crate::sync::{lock_unpoisoned, read_unpoisoned, write_unpoisoned};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};

/// The path prefix of Joulo's API (Supabase edge functions).
pub const API_PREFIX: &str = "/functions/v1/api";

/// Scopes the demo token holds: read-only, like a Home Assistant token should be.
const DEMO_SCOPES: [&str; 3] = ["chargers:read", "sessions:read", "energy:read"];

/// What the simulator has been sent, for the demo's own report.
#[derive(Debug, Default)]
pub struct SimStats {
    /// Requests received.
    pub requests: AtomicU64,
    /// Requests that carried a `token` or `access_token` query parameter.
    pub token_params: AtomicU64,
    /// Requests by path (after the API prefix).
    pub by_path: std::sync::Mutex<BTreeMap<String, u64>>,
}

/// The simulated API's state: its one valid token and fixed account data.
pub struct JouloSim {
    /// The only token this simulated account accepts; replaced on rotation.
    token: std::sync::RwLock<SecretString>,
    /// When the simulator started: the live session grows from here.
    started: Instant,
    /// The session history, newest first.
    sessions: Vec<Value>,
    /// What it has been sent.
    pub stats: SimStats,
    /// A change made to every `/chargers` answer, set by a test (a charger
    /// added or removed, a field gone) while the simulator runs.
    charger_edit: std::sync::RwLock<Option<ChargerEdit>>,
}

/// A change to the simulated charger list, applied to each `/chargers` answer.
type ChargerEdit = Box<dyn Fn(&mut Vec<Value>) + Send + Sync>;

impl JouloSim {
    /// A simulated account accepting `token`.
    pub fn new(token: SecretString) -> Arc<JouloSim> {
        Arc::new(JouloSim {
            token: std::sync::RwLock::new(token),
            started: Instant::now(),
            sessions: generate_sessions(SystemTime::now()),
            stats: SimStats::default(),
            charger_edit: std::sync::RwLock::new(None),
        })
    }

    /// Answers one request as Joulo would.
    pub fn respond<B>(&self, request: &Request<B>) -> Response<Full<Bytes>> {
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        let query = request.uri().query().unwrap_or("");
        let params = parse_query(query);
        if params
            .keys()
            .any(|k| k.eq_ignore_ascii_case("token") || k.eq_ignore_ascii_case("access_token"))
        {
            self.stats.token_params.fetch_add(1, Ordering::Relaxed);
        }
        let Some(path) = request.uri().path().strip_prefix(API_PREFIX) else {
            return reply(StatusCode::NOT_FOUND, json!({"error": "Not found"}));
        };
        *lock_unpoisoned(&self.stats.by_path)
            .entry(path.to_owned())
            .or_default() += 1;
        if !self.authorized(request) {
            return reply(
                StatusCode::UNAUTHORIZED,
                json!({"error": "Missing or invalid API token"}),
            );
        }
        let scope = match (request.method(), path) {
            (&Method::GET, "/chargers") => "chargers:read",
            (&Method::GET, "/sessions") => "sessions:read",
            (&Method::GET, "/energy" | "/ere-position" | "/me") => "energy:read",
            (&Method::POST, "/chargers" | "/chargers/reboot") => "chargers:write",
            _ => return reply(StatusCode::NOT_FOUND, json!({"error": "Not found"})),
        };
        if !DEMO_SCOPES.contains(&scope) {
            return reply(
                StatusCode::FORBIDDEN,
                json!({"error": "Insufficient scope", "required_scope": scope}),
            );
        }
        match path {
            "/chargers" => reply(StatusCode::OK, self.chargers()),
            "/sessions" => match self.sessions_page(&params) {
                Ok(v) => reply(StatusCode::OK, v),
                Err(e) => reply(StatusCode::BAD_REQUEST, json!({"error": e})),
            },
            "/energy" => reply(StatusCode::OK, self.energy()),
            "/ere-position" => reply(StatusCode::OK, self.ere_position()),
            _ => reply(
                StatusCode::OK,
                json!({"id": uuid(1, 99), "name": "Demo household", "scopes": DEMO_SCOPES}),
            ),
        }
    }

    fn authorized<B>(&self, request: &Request<B>) -> bool {
        request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|t| t == read_unpoisoned(&self.token).expose_secret())
    }

    /// Rotates the account's token, as the Joulo dashboard does: the old one
    /// stops working at once.
    pub fn rotate_token(&self, token: SecretString) {
        *write_unpoisoned(&self.token) = token;
    }

    /// Applies `edit` to the charger list of every `/chargers` answer from
    /// now on (replacing an earlier edit): a charger added in the Joulo app
    /// (`push`), one removed (`retain`), a field Joulo stops sending.
    pub fn edit_chargers(&self, edit: impl Fn(&mut Vec<Value>) + Send + Sync + 'static) {
        *write_unpoisoned(&self.charger_edit) = Some(Box::new(edit));
    }

    fn chargers(&self) -> Value {
        let mut answer = self.listed_chargers();
        if let Some(edit) = &*read_unpoisoned(&self.charger_edit)
            && let Some(list) = answer["chargers"].as_array_mut()
        {
            edit(list);
        }
        answer
    }

    fn listed_chargers(&self) -> Value {
        let now = SystemTime::now();
        let elapsed = self.started.elapsed().as_secs_f64();
        // An 11 kW charge that started 47 minutes before the simulator did.
        let kwh_so_far = round2(8.62 + elapsed * 11.0 / 3600.0);
        json!({"chargers": [
            {
                "id": uuid(7, 1),
                "nickname": "Oprit",
                "connection_type": "ocpp",
                "status": "charging",
                "mid_certified": true,
                "is_charging": true,
                "current_session": {
                    "id": uuid(9, 1),
                    "started_at": timestamp(now - Duration::from_secs(47 * 60) - self.started.elapsed()),
                    "kwh_so_far": kwh_so_far,
                    // Not in Joulo's documented schema; the card or app that
                    // started the charge, which evcc tells vehicles by.
                    "id_tag": "04A2B3C4D5E6F7",
                },
                "latest_meter_wh": 4_182_113 + (kwh_so_far * 1000.0) as u64,
                "meter_updated_at": timestamp(now - Duration::from_secs(20)),
            },
            {
                "id": uuid(7, 2),
                "nickname": "Carport",
                "connection_type": "ocpp",
                "status": "available",
                "mid_certified": false,
                "is_charging": false,
                "latest_meter_wh": 1_037_552,
                "meter_updated_at": timestamp(now - Duration::from_secs(3 * 3600)),
            }
        ]})
    }

    fn sessions_page(&self, params: &BTreeMap<String, String>) -> Result<Value, String> {
        let number = |name: &str, default: usize, max: usize| -> Result<usize, String> {
            match params.get(name) {
                None => Ok(default),
                Some(v) => v
                    .parse::<usize>()
                    .ok()
                    .filter(|n| *n <= max)
                    .ok_or_else(|| format!("Invalid {name}: must be an integer from 0 to {max}")),
            }
        };
        let limit = number("limit", 20, 100)?;
        if limit == 0 {
            return Err("Invalid limit: must be an integer from 1 to 100".to_owned());
        }
        let offset = number("offset", 0, usize::MAX)?;
        let charger = params.get("charger_id");
        if let Some(id) = charger
            && !is_uuid(id)
        {
            return Err("Invalid charger_id: must be a UUID".to_owned());
        }
        let from = params.get("from");
        let to = params.get("to");
        let page: Vec<&Value> = self
            .sessions
            .iter()
            .filter(|s| charger.is_none_or(|c| s["charger_id"] == c.as_str()))
            .filter(|s| from.is_none_or(|f| s["started_at"].as_str() >= Some(f.as_str())))
            .filter(|s| to.is_none_or(|t| s["started_at"].as_str() <= Some(t.as_str())))
            .skip(offset)
            .take(limit)
            .collect();
        Ok(json!({"sessions": page, "limit": limit, "offset": offset}))
    }

    fn energy(&self) -> Value {
        let mut months: BTreeMap<String, (f64, f64, u64)> = BTreeMap::new();
        for s in &self.sessions {
            let month = s["started_at"].as_str().unwrap_or_default()[..7].to_owned();
            let entry = months.entry(month).or_default();
            entry.0 += s["kwh"].as_f64().unwrap_or(0.0);
            entry.1 += s["ere_credits"].as_f64().unwrap_or(0.0);
            entry.2 += 1;
        }
        let total_kwh: f64 = months.values().map(|m| m.0).sum();
        let total_ere: f64 = months.values().map(|m| m.1).sum();
        json!({
            "total_kwh": round2(total_kwh),
            "total_ere_credits": round2(total_ere),
            "total_sessions": self.sessions.len(),
            "months": months.iter().rev().map(|(month, (kwh, ere, n))| json!({
                "month": month, "kwh": round2(*kwh), "ere_credits": round2(*ere), "sessions": n,
            })).collect::<Vec<_>>(),
        })
    }

    fn ere_position(&self) -> Value {
        let total: f64 = self
            .sessions
            .iter()
            .map(|s| s["ere_credits"].as_f64().unwrap_or(0.0))
            .sum();
        let year = &timestamp(SystemTime::now())[..4];
        json!({"positions": [
            {"compliance_year": year.parse::<u32>().unwrap_or(2026), "quarter": "Q4",
             "ere_credits": round2(total * 0.4), "status": "open"},
            {"compliance_year": year.parse::<u32>().unwrap_or(2026), "quarter": "Q3",
             "ere_credits": round2(total * 0.6), "status": "sold"},
        ]})
    }
}

/// Ninety days of charging on two chargers, newest first, from a fixed seed so
/// every demo run shows the same history.
fn generate_sessions(now: SystemTime) -> Vec<Value> {
    let mut seed: u64 = 0x4a6f_756c_6f21;
    let mut next = move || {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (seed >> 33) as f64 / (1u64 << 31) as f64
    };
    let mut sessions = Vec::new();
    for day in 1..=90u64 {
        if next() < 0.45 {
            continue;
        }
        let charger = if next() < 0.7 { 1 } else { 2 };
        let start =
            now - Duration::from_secs(day * 86_400 - (17 * 3600 + (next() * 14_400.0) as u64));
        let kwh = round2(4.0 + next() * 38.0);
        let hours = kwh / 11.0;
        sessions.push(json!({
            "id": uuid(9, 100 + day),
            "charger_id": uuid(7, charger),
            "charger_nickname": if charger == 1 { "Oprit" } else { "Carport" },
            "started_at": timestamp(start),
            "ended_at": timestamp(start + Duration::from_secs_f64(hours * 3600.0 + 600.0)),
            "kwh": kwh,
            "status": "completed",
            "ere_credits": round2(kwh * 0.0144 * 4.0),
        }));
    }
    sessions
}

fn reply(status: StatusCode, body: Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

fn parse_query(query: &str) -> BTreeMap<String, String> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            let decode = |s: &str| {
                percent_encoding::percent_decode_str(&s.replace('+', " "))
                    .decode_utf8_lossy()
                    .into_owned()
            };
            (decode(k), decode(v))
        })
        .collect()
}

fn timestamp(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// A stable, valid-looking UUID v4 for simulated object `n` of kind `kind`.
fn uuid(kind: u64, n: u64) -> String {
    let a = kind.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ n.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    let b = a.rotate_left(29).wrapping_mul(0x94d0_49bb_1331_11eb);
    format!(
        "{:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        b >> 52,
        b & 0xffff_ffff_ffff
    )
}

fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(sim: &JouloSim, target: &str, token: &str) -> (StatusCode, Value) {
        let request = Request::get(format!("{API_PREFIX}{target}"))
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .body(())
            .unwrap();
        let response = sim.respond(&request);
        let status = response.status();
        let body = futures_body(response);
        (status, serde_json::from_slice(&body).unwrap())
    }

    fn futures_body(r: Response<Full<Bytes>>) -> Bytes {
        use http_body_util::BodyExt;
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(r.into_body().collect())
            .unwrap()
            .to_bytes()
    }

    #[test]
    fn answers_like_joulo() {
        let sim = JouloSim::new(SecretString::from("joulo_demo"));
        let (s, v) = get(&sim, "/chargers", "joulo_demo");
        assert_eq!(s, StatusCode::OK);
        assert_eq!(v["chargers"].as_array().unwrap().len(), 2);
        assert!(v["chargers"][0]["current_session"]["kwh_so_far"].is_number());
        assert!(v["chargers"][1].get("current_session").is_none());

        let (s, v) = get(&sim, "/chargers", "wrong");
        assert_eq!(s, StatusCode::UNAUTHORIZED);
        assert_eq!(v, json!({"error": "Missing or invalid API token"}));

        let (s, v) = get(&sim, "/sessions?limit=3&offset=1", "joulo_demo");
        assert_eq!(s, StatusCode::OK);
        assert_eq!(v["sessions"].as_array().unwrap().len(), 3);
        assert_eq!(
            (v["limit"].as_u64(), v["offset"].as_u64()),
            (Some(3), Some(1))
        );
        let first = v["sessions"][0]["started_at"].as_str().unwrap();
        let second = v["sessions"][1]["started_at"].as_str().unwrap();
        assert!(first > second, "newest first");

        let (s, _) = get(&sim, "/sessions?limit=101", "joulo_demo");
        assert_eq!(s, StatusCode::BAD_REQUEST);

        let (s, v) = get(&sim, "/energy", "joulo_demo");
        assert_eq!(s, StatusCode::OK);
        let months = v["months"].as_array().unwrap();
        let summed: u64 = months.iter().map(|m| m["sessions"].as_u64().unwrap()).sum();
        assert_eq!(summed, v["total_sessions"].as_u64().unwrap());

        let request = Request::post(format!("{API_PREFIX}/chargers"))
            .header(header::AUTHORIZATION, "Bearer joulo_demo")
            .body(())
            .unwrap();
        let r = sim.respond(&request);
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        let v: Value = serde_json::from_slice(&futures_body(r)).unwrap();
        assert_eq!(v["required_scope"], "chargers:write");
    }

    #[test]
    fn uuids_are_well_formed() {
        for n in 0..50 {
            assert!(is_uuid(&uuid(7, n)), "{}", uuid(7, n));
        }
    }
}
