//! What leaves the house: the upstream request, built from the route, its
//! validated query and body, and the gateway's own fixed header set. Nothing of
//! the client's request is copied into it, so nothing a client sends (a header,
//! a parameter, a conditional or range request) can reach Joulo by being
//! forgotten in a list of things to remove.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::request::Parts;
use http::{Method, Uri};

use crate::params::{self, QuerySchema};
use crate::respond::GatewayError;
use crate::routes::{RouteId, RouteTable};

/// The `User-Agent` the gateway sends: Joulo sees which program calls it, not
/// which device behind it.
const USER_AGENT: &str = concat!("joulo-gateway/", env!("CARGO_PKG_VERSION"));

/// A request ready for Joulo, except for the token, which
/// [`crate::token::UpstreamToken::authorization_header`] adds as it is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamRequest {
    /// The route; its method and path are fixed.
    pub route: RouteId,
    /// `base_url`, the route's path and the canonical query.
    pub uri: Uri,
    /// The gateway's own header set for the route's method, made once.
    pub headers: Arc<HeaderMap>,
    /// The re-serialised JSON body of a POST route; `None` for a GET.
    pub body: Option<Bytes>,
}

impl UpstreamRequest {
    /// The route's one method.
    pub fn method(&self) -> Method {
        self.route.method()
    }
}

/// Builds upstream requests; made once at start from `base_url`.
#[derive(Debug, Clone)]
pub struct Outbound {
    /// `base_url` without a trailing slash; a route's path is appended to it.
    base: Arc<str>,
    /// Every GET's headers.
    get_headers: Arc<HeaderMap>,
    /// Every POST's headers: the GET set and the body's type.
    post_headers: Arc<HeaderMap>,
    /// Each route's URI without a query (by `route as usize`): most calls
    /// carry none, and then no URI is written and parsed per call.
    bare: Arc<[Uri]>,
}

impl Outbound {
    /// The builder for `base_url` (validated: https, a host, no query).
    pub fn new(base_url: &Uri) -> Outbound {
        let mut get_headers = HeaderMap::with_capacity(5);
        get_headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        // One representation per cache entry: the gateway stores and serves
        // plain JSON, whatever each device would accept.
        get_headers.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("identity"),
        );
        get_headers.insert(header::USER_AGENT, HeaderValue::from_static(USER_AGENT));
        let mut post_headers = get_headers.clone();
        post_headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        let base: Arc<str> = Arc::from(base_url.to_string().trim_end_matches('/'));
        let bare = RouteId::ALL
            .iter()
            .map(|route| {
                format!("{base}{}", route.path())
                    .parse()
                    .expect("a validated base_url and a route's path form a URI")
            })
            .collect();
        Outbound {
            base,
            get_headers: Arc::new(get_headers),
            post_headers: Arc::new(post_headers),
            bare,
        }
    }

    /// The request for `route` with a canonical `query` (see
    /// [`QuerySchema::canonical`]) and, for a POST route, a canonical body
    /// (see [`params::canonical_body`]). `Host` (or `:authority`) comes from
    /// the URI, so from `base_url`.
    pub fn request(&self, route: RouteId, query: &str, body: Option<Bytes>) -> UpstreamRequest {
        let uri = if query.is_empty() {
            self.bare[route as usize].clone()
        } else {
            let mut uri = String::with_capacity(self.base.len() + 32 + query.len());
            uri.push_str(&self.base);
            uri.push_str(route.path());
            uri.push('?');
            uri.push_str(query);
            // The base is validated, the path constant and the query written
            // by the gateway from unreserved characters and `%XX`.
            uri.parse().expect("a built URI always parses")
        };
        let (headers, body) = match route.method() {
            Method::POST => (self.post_headers.clone(), Some(body.unwrap_or_default())),
            _ => (self.get_headers.clone(), None),
        };
        UpstreamRequest {
            route,
            uri,
            headers,
            body,
        }
    }

    /// The whole way from a client's request to the upstream one, as the proxy
    /// takes it: the route from the method and path, the query checked against
    /// the route's schema, the body against the route's. Used by the proxy one
    /// step at a time (a cache hit stops after the query); here in one piece so
    /// a property test can show that nothing else of `client` matters.
    pub fn plan(
        &self,
        routes: &RouteTable,
        schema: &QuerySchema,
        client: &Parts,
        body: &[u8],
    ) -> Result<UpstreamRequest, GatewayError> {
        let route = routes.resolve(&client.method, client.uri.path())?;
        let query = schema.canonical(route, client.uri.query().unwrap_or(""))?;
        let body = params::canonical_body(route, body)?;
        Ok(self.request(route, &query, body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn outbound() -> Outbound {
        Outbound::new(&"https://api.joulo.nl/functions/v1/api".parse().unwrap())
    }

    #[test]
    fn a_get_carries_the_fixed_set_and_nothing_else() {
        let r = outbound().request(RouteId::Sessions, "limit=5&offset=0", None);
        assert_eq!(
            r.uri,
            "https://api.joulo.nl/functions/v1/api/sessions?limit=5&offset=0"
        );
        assert_eq!(r.method(), Method::GET);
        let names: Vec<&str> = r.headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["accept", "accept-encoding", "user-agent"]);
        assert_eq!(r.headers["accept-encoding"], "identity");
        assert!(
            r.headers["user-agent"]
                .to_str()
                .unwrap()
                .starts_with("joulo-gateway/")
        );
        assert_eq!(r.body, None);
    }

    #[test]
    fn a_post_carries_its_type_and_its_body() {
        let r = outbound().request(RouteId::AddCharger, "", Some(Bytes::from_static(b"{}")));
        assert_eq!(r.method(), Method::POST);
        assert_eq!(r.headers["content-type"], "application/json");
        assert_eq!(r.body.as_deref(), Some(&b"{}"[..]));
        assert_eq!(r.uri, "https://api.joulo.nl/functions/v1/api/chargers");
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// A header a client might send: the ones the outside review saw reach
        /// Joulo, the ones a proxy would normally pass, and arbitrary ones.
        fn client_header() -> impl Strategy<Value = (String, String)> {
            let name = prop_oneof![
                Just("x-http-method-override".to_owned()),
                Just("x-original-url".to_owned()),
                Just("apikey".to_owned()),
                Just("range".to_owned()),
                Just("referer".to_owned()),
                Just("if-none-match".to_owned()),
                Just("if-modified-since".to_owned()),
                Just("accept-encoding".to_owned()),
                Just("accept".to_owned()),
                Just("user-agent".to_owned()),
                Just("authorization".to_owned()),
                Just("cookie".to_owned()),
                Just("content-type".to_owned()),
                Just("x-forwarded-for".to_owned()),
                Just("forwarded".to_owned()),
                Just("host".to_owned()),
                "[a-z][a-z0-9-]{0,20}",
            ];
            (name, "[ -~]{0,40}")
        }

        /// A parameter a client might add: a credential (dropped) or one no
        /// route takes.
        fn client_param() -> impl Strategy<Value = String> {
            prop_oneof![
                Just("token=joulo_x".to_owned()),
                Just("ACCESS_TOKEN=y".to_owned()),
                Just("%74oken=z".to_owned()),
                Just("_method=DELETE".to_owned()),
                Just("api_key=abc".to_owned()),
                Just("Limit=5".to_owned()),
                "[a-z_]{1,8}=[a-zA-Z0-9%]{0,8}".prop_filter("not a documented parameter", |p| {
                    let name = p.split('=').next().unwrap_or("");
                    !["limit", "offset", "charger_id", "from", "to"].contains(&name)
                }),
            ]
        }

        /// A valid request: a route with valid parameters, in some order.
        fn valid_target() -> impl Strategy<Value = String> {
            prop_oneof![
                Just("/chargers".to_owned()),
                Just("/energy".to_owned()),
                Just("/me".to_owned()),
                Just("/ere-position".to_owned()),
                Just("/sessions".to_owned()),
                Just("/sessions?limit=5&offset=0".to_owned()),
                Just("/sessions?offset=0&limit=5".to_owned()),
                Just("/sessions?limit=05&from=2026-01-01T01:00:00%2B01:00".to_owned()),
                Just(
                    "/sessions?charger_id=123E4567-E89B-12D3-A456-426614174000&to=2026-02-01"
                        .to_owned()
                ),
            ]
        }

        fn parts(target: &str, headers: &[(String, String)]) -> Parts {
            let mut request = http::Request::builder().method(Method::GET).uri(target);
            for (name, value) in headers {
                if let (Ok(n), Ok(v)) = (
                    http::HeaderName::from_bytes(name.as_bytes()),
                    HeaderValue::from_str(value),
                ) {
                    request = request.header(n, v);
                }
            }
            request.body(()).unwrap().into_parts().0
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            /// The upstream request is a function of the route, the validated
            /// parameters and the gateway's settings alone: client headers never
            /// change it, a credential parameter is dropped, and any other added
            /// parameter is refused rather than passed on.
            #[test]
            fn the_upstream_request_ignores_everything_else_the_client_sends(
                target in valid_target(),
                headers in prop::collection::vec(client_header(), 0..12),
                extra in prop::collection::vec(client_param(), 0..4),
            ) {
                let outbound = outbound();
                let routes = RouteTable::new(&[]);
                let schema = QuerySchema::new(&HashMap::new());
                let bare = outbound.plan(&routes, &schema, &parts(&target, &[]), b"").unwrap();
                let with_headers = outbound.plan(&routes, &schema, &parts(&target, &headers), b"ignored body").unwrap();
                prop_assert_eq!(&with_headers, &bare);

                let separator = if target.contains('?') { '&' } else { '?' };
                let extended = format!("{target}{separator}{}", extra.join("&"));
                let only_credentials = extra.iter().all(|p| crate::sanitize::is_credential_param(p));
                match outbound.plan(&routes, &schema, &parts(&extended, &headers), b"") {
                    Ok(request) => {
                        // Accepted only if what was added changed nothing.
                        prop_assert!(only_credentials || request == bare, "{} accepted as {:?}", extended, request.uri);
                        prop_assert_eq!(request.headers, bare.headers.clone());
                        prop_assert!(!request.uri.to_string().contains("oken"));
                    }
                    Err(e) => {
                        prop_assert!(!only_credentials, "{} refused: {}", extended, e);
                        prop_assert_eq!(e.status(), http::StatusCode::BAD_REQUEST);
                    }
                }
            }
        }
    }
}
