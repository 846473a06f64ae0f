//! How errors look: every failure on the request path becomes one synthetic
//! response in Joulo's JSON shape (`{"error": "..."}`), built here (`held`
//! adds a `Retry-After` to the one it asks for). The one answer made elsewhere
//! is `admission`'s refusal of a connection before any request is read: the
//! same shape, as whole HTTP/1.1 answers built once.

use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Full};

use crate::access::AccessError;
use crate::routes::RouteError;

/// The response body type the gateway serves: streamed upstream bodies and
/// in-memory ones share it.
pub(crate) type Body = http_body_util::combinators::BoxBody<Bytes, BoxError>;

/// A body's error: hyper's, or the gateway's own idle bound on a streamed answer.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Every way the gateway itself can refuse or fail a request.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The request did not match an enabled route.
    #[error(transparent)]
    Route(#[from] RouteError),
    /// The caller may not use the gateway, or not this route.
    #[error(transparent)]
    Access(#[from] AccessError),
    /// The request line and headers are larger than `server.max_header_size`.
    #[error("Request headers too large: the limit is {limit} bytes")]
    HeadersTooLarge {
        /// The configured limit.
        limit: usize,
    },
    /// The request body is larger than `server.max_request_body`.
    #[error("Request body too large: the limit is {limit} bytes")]
    BodyTooLarge {
        /// The configured limit.
        limit: usize,
    },
    /// The body did not arrive within `server.header_timeout`.
    #[error("Request body not received in time")]
    BodyTimeout,
    /// The client broke off while sending its body.
    #[error("Request body could not be read")]
    ClientBody,
    /// A query parameter the route does not take, or an invalid value.
    #[error(transparent)]
    Param(#[from] crate::params::ParamError),
    /// A POST body that is not the route's JSON.
    #[error(transparent)]
    Body(#[from] crate::params::BodyError),
    /// Joulo answered in a content coding the gateway cannot undo, or in more
    /// than one (the gateway asks for `identity`).
    #[error("Upstream answered in a content encoding the gateway cannot serve")]
    UpstreamEncoding,
    /// CONNECT: the gateway is not a forward proxy.
    #[error("CONNECT is not supported: this gateway only forwards Joulo API routes")]
    Connect,
    /// No valid token is loaded: fail closed rather than call Joulo without one.
    #[error("Upstream token unavailable")]
    TokenUnavailable,
    /// TCP or TLS to the upstream failed, or it broke off before answering.
    #[error("Upstream unreachable")]
    UpstreamUnreachable(#[source] BoxError),
    /// The upstream did not send a response head within `upstream.timeout`.
    #[error("Upstream timed out")]
    UpstreamTimeout,
    /// The upstream broke off while sending the body of an answer being cached.
    #[error("Upstream unreachable")]
    UpstreamBody(#[source] BoxError),
    /// Joulo's answer held the token it was sent with (in a header or the
    /// body): refused whole and not cached, since a device must never see it.
    #[error("Upstream answer refused: it held the gateway's credentials")]
    UpstreamTokenEcho,
    /// The token's upstream budget has no slot within `queue_timeout`.
    #[error("Too many requests: the gateway's upstream budget is used up for now")]
    BudgetExhausted {
        /// When a slot frees up.
        retry_after: Duration,
    },
    /// Joulo answered 429 recently; no call goes out until its wait is over.
    #[error("Too many requests: Joulo asked the gateway to slow down")]
    UpstreamBackoff {
        /// What is left of the back-off.
        retry_after: Duration,
    },
    /// A gateway task failed unexpectedly.
    #[error("Internal gateway error")]
    Internal,
    /// This device used up its share of the token's upstream budget.
    #[error("Too many requests: this device has used its share of the upstream budget")]
    DeviceShareExhausted {
        /// When the device may make another upstream call.
        retry_after: Duration,
    },
    /// This device used up its own allowance.
    #[error("Too many requests from this device")]
    ClientRateLimited {
        /// When the device may send again.
        retry_after: Duration,
    },
    /// This address used up its allowance of refused requests and of the
    /// gateway's own endpoints.
    #[error("Too many refused requests from this address")]
    AddressRateLimited {
        /// When the address may send again.
        retry_after: Duration,
    },
    /// Past the allowance of refusals of all addresses together: many
    /// addresses are being refused at once.
    #[error("Too many refused requests to this gateway")]
    RefusalsRateLimited {
        /// When a refusal may be answered again.
        retry_after: Duration,
    },
}

impl GatewayError {
    /// The status this error is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            GatewayError::Route(RouteError::BadPath(_))
            | GatewayError::Param(_)
            | GatewayError::Body(_)
            | GatewayError::Access(AccessError::BadHost(_) | AccessError::DuplicateOrigin)
            | GatewayError::ClientBody => StatusCode::BAD_REQUEST,
            GatewayError::HeadersTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            GatewayError::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            GatewayError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            GatewayError::Route(RouteError::NotFound) => StatusCode::NOT_FOUND,
            GatewayError::Route(RouteError::MethodNotAllowed { .. }) | GatewayError::Connect => {
                StatusCode::METHOD_NOT_ALLOWED
            }
            GatewayError::Access(AccessError::Key | AccessError::NoKeysYet) => {
                StatusCode::UNAUTHORIZED
            }
            GatewayError::Access(AccessError::Host(_)) => StatusCode::MISDIRECTED_REQUEST,
            GatewayError::Access(_) => StatusCode::FORBIDDEN,
            GatewayError::TokenUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            GatewayError::UpstreamUnreachable(_)
            | GatewayError::UpstreamBody(_)
            | GatewayError::UpstreamEncoding
            | GatewayError::UpstreamTokenEcho => StatusCode::BAD_GATEWAY,
            GatewayError::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            GatewayError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            GatewayError::BudgetExhausted { .. }
            | GatewayError::UpstreamBackoff { .. }
            | GatewayError::DeviceShareExhausted { .. }
            | GatewayError::ClientRateLimited { .. }
            | GatewayError::AddressRateLimited { .. }
            | GatewayError::RefusalsRateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    /// How long the client should wait before retrying, for refusals that know.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            GatewayError::BudgetExhausted { retry_after }
            | GatewayError::UpstreamBackoff { retry_after }
            | GatewayError::DeviceShareExhausted { retry_after }
            | GatewayError::ClientRateLimited { retry_after }
            | GatewayError::AddressRateLimited { retry_after }
            | GatewayError::RefusalsRateLimited { retry_after } => Some(*retry_after),
            _ => None,
        }
    }

    /// Whether a recent cached copy may stand in for this failure
    /// (stale-if-error). A missing token is not such a failure: it fails closed.
    pub fn allows_stale(&self) -> bool {
        matches!(
            self,
            GatewayError::UpstreamUnreachable(_)
                | GatewayError::UpstreamBody(_)
                | GatewayError::UpstreamTimeout
                | GatewayError::BudgetExhausted { .. }
                | GatewayError::UpstreamBackoff { .. }
                | GatewayError::DeviceShareExhausted { .. }
        )
    }

    /// The synthetic response. Only the error's own words go in the body: never
    /// an inner error chain, which could quote a URL or a header.
    pub fn response(&self) -> Response<Body> {
        let status = self.status();
        let message = match self {
            GatewayError::Route(RouteError::NotFound) => format!(
                "Unknown path: the gateway serves GET {}",
                crate::routes::RouteId::ALL
                    .iter()
                    .filter(|r| !r.changes_account())
                    .map(|r| r.path())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            other => match other.retry_after() {
                Some(wait) => format!("{other}; retry in {} s", retry_after_secs(wait)),
                None => other.to_string(),
            },
        };
        let mut response = match self {
            // Joulo's own words and shape, so clients written for Joulo understand.
            GatewayError::Access(AccessError::Scope(scope)) => json_response(
                status,
                &serde_json::json!({"error": "Insufficient scope", "required_scope": scope.as_str()}),
            ),
            // Joulo's words, and what the owner has to do about it.
            GatewayError::Access(AccessError::NoKeysYet) => json_response(
                status,
                &serde_json::json!({
                    "error": message,
                    "detail": NO_KEYS_YET_DETAIL,
                }),
            ),
            // Joulo's words would send the user to the Joulo token: the
            // detail says it is the device's own key that is missing.
            GatewayError::Access(AccessError::Key) => json_response(
                status,
                &serde_json::json!({"error": message, "detail": MISSING_KEY_DETAIL}),
            ),
            _ => json_error(status, &message),
        };
        let headers = response.headers_mut();
        match self {
            GatewayError::Route(RouteError::MethodNotAllowed { allow }) => {
                headers.insert(header::ALLOW, allow.clone());
            }
            GatewayError::Connect => {
                headers.insert(header::ALLOW, HeaderValue::from_static("GET"));
            }
            // RFC 9110 section 11.6.1: a 401 names the schemes that would work.
            // A device key goes in either (Home Assistant sends Basic).
            GatewayError::Access(AccessError::Key | AccessError::NoKeysYet) => {
                headers.append(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Basic realm=\"joulo-gateway\", charset=\"UTF-8\""),
                );
                headers.append(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"joulo-gateway\""),
                );
            }
            _ => {}
        }
        if let Some(wait) = self.retry_after() {
            headers.insert(
                header::RETRY_AFTER,
                HeaderValue::from(retry_after_secs(wait)),
            );
        }
        response
    }
}

/// The second field of the 401 a LAN device gets while the gateway has no
/// device keys.
pub(crate) const NO_KEYS_YET_DETAIL: &str =
    "this gateway has no device keys yet: run `joulo-gateway device add NAME`";

/// The second field of the 401 for a missing or unknown device key, once
/// the gateway has keys: Joulo's "API token" would send the user to check
/// the Joulo token, which the device never holds.
pub(crate) const MISSING_KEY_DETAIL: &str = "this gateway needs the device's own key (not the Joulo \
     token): the password of HTTP Basic, `Authorization: Bearer KEY` or `X-Gateway-Key: KEY`; \
     `joulo-gateway device add NAME` makes one";

/// `Retry-After` seconds for a wait: rounded up, at least 1.
pub(crate) fn retry_after_secs(wait: Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}

/// A `{"error": message}` response with the given status, never cached.
pub(crate) fn json_error(status: StatusCode, message: &str) -> Response<Body> {
    json_response(status, &serde_json::json!({ "error": message }))
}

/// A JSON response with the given status, never cached.
pub(crate) fn json_response(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let body = serde_json::to_vec(value).expect("a JSON value always serialises");
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// An in-memory body in the gateway's body type.
pub(crate) fn full(data: impl Into<Bytes>) -> Body {
    Full::new(data.into())
        .map_err(|never| match never {})
        .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body_json(r: Response<Body>) -> serde_json::Value {
        let bytes = r.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn every_error_is_joulo_shaped_json() {
        let cases = [
            (GatewayError::Route(RouteError::BadPath("dot segment")), 400),
            (GatewayError::Route(RouteError::NotFound), 404),
            (GatewayError::Connect, 405),
            (GatewayError::TokenUnavailable, 503),
            (GatewayError::UpstreamTimeout, 504),
            (GatewayError::UpstreamTokenEcho, 502),
        ];
        for (err, status) in cases {
            let r = err.response();
            assert_eq!(r.status().as_u16(), status);
            assert_eq!(r.headers()[header::CONTENT_TYPE], "application/json");
            let v = body_json(r).await;
            let obj = v.as_object().unwrap();
            assert_eq!(obj.len(), 1);
            assert!(obj["error"].as_str().is_some_and(|s| !s.is_empty()));
        }
    }

    #[tokio::test]
    async fn token_unavailable_has_the_documented_words() {
        let v = body_json(GatewayError::TokenUnavailable.response()).await;
        assert_eq!(
            v,
            serde_json::json!({"error": "Upstream token unavailable"})
        );
    }

    #[tokio::test]
    async fn rate_limits_are_429_with_whole_second_retry_after() {
        let r = GatewayError::BudgetExhausted {
            retry_after: Duration::from_millis(2500),
        }
        .response();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()[header::RETRY_AFTER], "3");
        let v = body_json(r).await;
        assert!(
            v["error"].as_str().unwrap().ends_with("retry in 3 s"),
            "{v}"
        );
    }

    #[tokio::test]
    async fn an_address_past_its_allowance_of_refusals_gets_a_plain_429() {
        let r = GatewayError::AddressRateLimited {
            retry_after: Duration::from_millis(50),
        }
        .response();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()[header::RETRY_AFTER], "1");
        assert!(r.headers().get(header::WWW_AUTHENTICATE).is_none());
        assert_eq!(
            body_json(r).await,
            serde_json::json!({"error": "Too many refused requests from this address; retry in 1 s"})
        );
        for (error, status) in [
            (AccessError::DuplicateOrigin, StatusCode::BAD_REQUEST),
            (AccessError::CrossSite, StatusCode::FORBIDDEN),
        ] {
            assert_eq!(GatewayError::Access(error).response().status(), status);
        }
    }

    #[tokio::test]
    async fn access_refusals_use_joulos_words() {
        let r = GatewayError::Access(AccessError::Key).response();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        let challenges: Vec<_> = r
            .headers()
            .get_all(header::WWW_AUTHENTICATE)
            .iter()
            .collect();
        assert_eq!(challenges.len(), 2);
        assert!(challenges[0].to_str().unwrap().starts_with("Basic realm="));
        assert!(challenges[1].to_str().unwrap().starts_with("Bearer realm="));
        assert_eq!(
            body_json(r).await,
            serde_json::json!({"error": "Missing or invalid API token", "detail": MISSING_KEY_DETAIL})
        );
        let r =
            GatewayError::Access(AccessError::Scope(crate::access::Scope::EnergyRead)).response();
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        assert_eq!(
            body_json(r).await,
            serde_json::json!({"error": "Insufficient scope", "required_scope": "energy:read"})
        );
        let r = GatewayError::Access(AccessError::Host("evil.com".into())).response();
        assert_eq!(r.status(), StatusCode::MISDIRECTED_REQUEST);
    }

    #[tokio::test]
    async fn method_not_allowed_carries_allow() {
        let r = GatewayError::Route(RouteError::MethodNotAllowed {
            allow: HeaderValue::from_static("GET"),
        })
        .response();
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(r.headers()[header::ALLOW], "GET");
    }
}
