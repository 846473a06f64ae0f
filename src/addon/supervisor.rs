//! The Home Assistant Supervisor's service discovery, asked over its internal
//! API: which MQTT broker the add-on may use (`services: mqtt:want` in the
//! add-on's config.yaml). Plain HTTP: the Supervisor is reached on the
//! add-ons' private network as `http://supervisor`, authenticated by the
//! `SUPERVISOR_TOKEN` it gives each add-on.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

/// Where the Supervisor answers add-ons.
const SUPERVISOR_URL: &str = "http://supervisor";

/// Overrides [`SUPERVISOR_URL`] (tests, a development Supervisor).
const URL_ENV: &str = "JOULO_GATEWAY_SUPERVISOR_URL";

/// The variable the Supervisor sets in every add-on with its token.
const TOKEN_ENV: &str = "SUPERVISOR_TOKEN";

/// Bound on one call to the Supervisor, connect to last byte.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Bound on the Supervisor's answer: a broker's address and credentials.
const BODY_LIMIT: usize = 64 * 1024;

/// Why the Supervisor could not tell. Never carries the Supervisor's token
/// or the broker's password.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    /// `SUPERVISOR_TOKEN` is not set: not running as an add-on.
    #[error("{TOKEN_ENV} is not set: not running as a Home Assistant add-on")]
    NoToken,
    /// The Supervisor URL is not an http:// URL.
    #[error("{URL_ENV} is not an http:// URL")]
    BadUrl,
    /// The call failed or took longer than its bound.
    #[error("cannot reach the Supervisor: {0}")]
    Unreachable(String),
    /// The Supervisor answered with another status than 200: for the MQTT
    /// service, 400 when no broker is installed or the add-on may not use it.
    #[error("the Supervisor answered {0}")]
    Status(StatusCode),
    /// The answer is not the JSON the Supervisor documents.
    #[error("the Supervisor's answer is not usable: {0}")]
    Answer(String),
}

/// A client for the Supervisor's API.
pub struct Supervisor {
    /// The API's root without a trailing slash, `http://supervisor` unless
    /// overridden; paths are appended to it.
    base: String,
    /// The Supervisor's token for this add-on.
    token: SecretString,
}

/// The MQTT broker the Supervisor offers (`GET /services/mqtt`).
pub struct MqttService {
    /// The broker's host name on the add-ons' network (`core-mosquitto`).
    pub host: String,
    /// Its port.
    pub port: u16,
    /// Whether it expects TLS.
    pub ssl: bool,
    /// The user name made for this add-on.
    pub username: Option<String>,
    /// Its password.
    pub password: Option<SecretString>,
    /// The MQTT protocol version, such as "3.1.1".
    pub protocol: Option<String>,
}

/// `/services/mqtt`'s data as sent; the password becomes secret at once.
#[derive(Deserialize)]
struct RawMqtt {
    /// See [`MqttService`].
    host: String,
    /// See [`MqttService`].
    port: u16,
    /// See [`MqttService`].
    ssl: bool,
    /// See [`MqttService`].
    #[serde(default)]
    username: Option<String>,
    /// See [`MqttService`].
    #[serde(default)]
    password: Option<String>,
    /// See [`MqttService`].
    #[serde(default)]
    protocol: Option<String>,
}

impl std::fmt::Debug for MqttService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttService")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("ssl", &self.ssl)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "[redacted]"))
            .field("protocol", &self.protocol)
            .finish()
    }
}

/// The Supervisor's envelope around every answer.
#[derive(Deserialize)]
struct Envelope<T> {
    /// "ok" or "error".
    result: String,
    /// The answer proper.
    data: Option<T>,
}

impl Supervisor {
    /// The client for this add-on: its token from `SUPERVISOR_TOKEN`, the API
    /// at `http://supervisor` or `JOULO_GATEWAY_SUPERVISOR_URL`.
    pub fn from_env() -> Result<Supervisor, SupervisorError> {
        let token = std::env::var(TOKEN_ENV)
            .ok()
            .filter(|t| !t.is_empty())
            .ok_or(SupervisorError::NoToken)?;
        let base = std::env::var(URL_ENV).unwrap_or_else(|_| SUPERVISOR_URL.to_owned());
        Supervisor::new(&base, SecretString::from(token))
    }

    /// A client for the API at `base` (an http:// URL) with `token`.
    pub fn new(base: &str, token: SecretString) -> Result<Supervisor, SupervisorError> {
        let base = base.trim_end_matches('/');
        let uri: Uri = base.parse().map_err(|_| SupervisorError::BadUrl)?;
        if uri.scheme_str() != Some("http") || uri.authority().is_none() {
            return Err(SupervisorError::BadUrl);
        }
        Ok(Supervisor {
            base: base.to_owned(),
            token,
        })
    }

    /// The MQTT broker shared with this add-on.
    pub async fn mqtt_service(&self) -> Result<MqttService, SupervisorError> {
        let raw: RawMqtt = self.get("/services/mqtt").await?;
        Ok(MqttService {
            host: raw.host,
            port: raw.port,
            ssl: raw.ssl,
            username: raw.username,
            password: raw.password.map(SecretString::from),
            protocol: raw.protocol,
        })
    }

    /// GETs `path` and unwraps the envelope's `data`.
    async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, SupervisorError> {
        let uri: Uri = format!("{}{path}", self.base)
            .parse()
            .map_err(|_| SupervisorError::BadUrl)?;
        let mut bearer =
            http::HeaderValue::from_str(&format!("Bearer {}", self.token.expose_secret()))
                .map_err(|_| SupervisorError::Answer("the token is not a header value".into()))?;
        bearer.set_sensitive(true);
        let request = Request::get(uri)
            .header(header::AUTHORIZATION, bearer)
            .body(Empty::<Bytes>::new())
            .map_err(|e| SupervisorError::Unreachable(e.to_string()))?;
        let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
        let call = async {
            let response = client
                .request(request)
                .await
                .map_err(|e| SupervisorError::Unreachable(e.to_string()))?;
            let status = response.status();
            if status != StatusCode::OK {
                return Err(SupervisorError::Status(status));
            }
            Limited::new(response.into_body(), BODY_LIMIT)
                .collect()
                .await
                .map(|b| b.to_bytes())
                .map_err(|e| SupervisorError::Unreachable(e.to_string()))
        };
        let body = tokio::time::timeout(TIMEOUT, call)
            .await
            .map_err(|_| SupervisorError::Unreachable(format!("no answer within {TIMEOUT:?}")))??;
        // serde_json's messages can quote a value (a password): only where.
        let envelope: Envelope<T> = serde_json::from_slice(&body).map_err(|e| {
            SupervisorError::Answer(format!("line {}, column {}", e.line(), e.column()))
        })?;
        match (envelope.result.as_str(), envelope.data) {
            ("ok", Some(data)) => Ok(data),
            _ => Err(SupervisorError::Answer(format!(
                "result `{}` without data",
                envelope.result
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::convert::Infallible;
    use std::sync::{Arc, Mutex};

    use http_body_util::Full;
    use hyper::body::Incoming;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;

    /// A Supervisor on loopback answering every request with `status` and
    /// `body`, recording the Authorization header and path it was sent.
    async fn mock(status: StatusCode, body: String) -> (String, Arc<Mutex<Vec<(String, String)>>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let body = body.clone();
                let record = record.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request: Request<Incoming>| {
                        let auth = request
                            .headers()
                            .get(header::AUTHORIZATION)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_owned();
                        record
                            .lock()
                            .unwrap()
                            .push((request.uri().path().to_owned(), auth));
                        let response = http::Response::builder()
                            .status(status)
                            .header(header::CONTENT_TYPE, "application/json")
                            .body(Full::new(Bytes::from(body.clone())))
                            .unwrap();
                        async move { Ok::<_, Infallible>(response) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        (url, seen)
    }

    fn token() -> SecretString {
        // Shaped like Joulo's, made at run time: what must not show is any secret.
        crate::demo::generate_token()
    }

    #[tokio::test]
    async fn mqtt_service_is_fetched_with_the_supervisor_token() {
        let password = token();
        let body = serde_json::json!({
            "result": "ok",
            "data": {
                "addon": "core_mosquitto", "host": "core-mosquitto", "port": 1883,
                "ssl": false, "protocol": "3.1.1", "username": "addons",
                "password": password.expose_secret(),
            }
        })
        .to_string();
        let (url, seen) = mock(StatusCode::OK, body).await;
        let supervisor_token = token();
        let supervisor = Supervisor::new(&url, supervisor_token.clone()).unwrap();
        let mqtt = supervisor.mqtt_service().await.unwrap();
        assert_eq!(mqtt.host, "core-mosquitto");
        assert_eq!(mqtt.port, 1883);
        assert!(!mqtt.ssl);
        assert_eq!(mqtt.username.as_deref(), Some("addons"));
        assert_eq!(
            mqtt.password.as_ref().map(|p| p.expose_secret().to_owned()),
            Some(password.expose_secret().to_owned())
        );
        assert_eq!(mqtt.protocol.as_deref(), Some("3.1.1"));
        let debug = format!("{mqtt:?}");
        assert!(!debug.contains(password.expose_secret()), "{debug}");
        let seen = seen.lock().unwrap().clone();
        assert_eq!(
            seen,
            [(
                "/services/mqtt".to_owned(),
                format!("Bearer {}", supervisor_token.expose_secret())
            )]
        );
    }

    #[tokio::test]
    async fn no_broker_is_a_status_error() {
        let body = r#"{"result":"error","message":"No mqtt service available"}"#;
        let (url, _) = mock(StatusCode::BAD_REQUEST, body.to_owned()).await;
        let supervisor = Supervisor::new(&url, token()).unwrap();
        let e = supervisor.mqtt_service().await.unwrap_err();
        assert!(
            matches!(e, SupervisorError::Status(StatusCode::BAD_REQUEST)),
            "{e}"
        );
    }

    #[tokio::test]
    async fn a_malformed_answer_does_not_echo_its_values() {
        let password = token();
        // port as text: serde_json would quote the offending value.
        let body = format!(
            r#"{{"result":"ok","data":{{"host":"h","port":"{}","ssl":false}}}}"#,
            password.expose_secret()
        );
        let (url, _) = mock(StatusCode::OK, body).await;
        let supervisor = Supervisor::new(&url, token()).unwrap();
        let e = supervisor.mqtt_service().await.unwrap_err().to_string();
        assert!(e.contains("not usable"), "{e}");
        assert!(!e.contains(password.expose_secret()), "{e}");
    }

    #[test]
    fn only_an_http_url_is_taken() {
        for url in ["https://supervisor", "supervisor", "ftp://x", ""] {
            assert!(
                matches!(Supervisor::new(url, token()), Err(SupervisorError::BadUrl)),
                "{url}"
            );
        }
        assert!(Supervisor::new("http://127.0.0.1:1/", token()).is_ok());
    }
}
