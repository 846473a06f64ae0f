//! Which route a request is: the request path is normalised strictly (anything a
//! server could read two ways is refused) and matched exactly against the
//! allowlist, so the upstream only ever receives one of the paths listed here.

use std::borrow::Cow;

use http::{HeaderValue, Method};

/// Every Joulo endpoint the gateway knows. Read routes are always on; routes that
/// change the account are off unless the operator enables them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RouteId {
    /// GET /chargers: the chargers and any live charging session.
    Chargers,
    /// GET /sessions: charging history, paged.
    Sessions,
    /// GET /energy: monthly totals.
    Energy,
    /// GET /ere-position: ERE credit position (used by community clients).
    ErePosition,
    /// GET /me: the account (mentioned in Joulo's docs, shape unknown).
    Me,
    /// POST /chargers: adds an OCPP charger; changes the account.
    AddCharger,
    /// POST /chargers/reboot: reboots a charger; changes the account.
    RebootCharger,
}

impl RouteId {
    /// Every route, in the order they are listed to users.
    pub const ALL: [RouteId; 7] = [
        RouteId::Chargers,
        RouteId::Sessions,
        RouteId::Energy,
        RouteId::ErePosition,
        RouteId::Me,
        RouteId::AddCharger,
        RouteId::RebootCharger,
    ];

    /// The exact path appended to the upstream base URL.
    pub fn path(self) -> &'static str {
        match self {
            RouteId::Chargers | RouteId::AddCharger => "/chargers",
            RouteId::Sessions => "/sessions",
            RouteId::Energy => "/energy",
            RouteId::ErePosition => "/ere-position",
            RouteId::Me => "/me",
            RouteId::RebootCharger => "/chargers/reboot",
        }
    }

    /// The one method the route accepts.
    pub fn method(self) -> Method {
        if self.changes_account() {
            Method::POST
        } else {
            Method::GET
        }
    }

    /// The name under `[routes.<name>]` in `gateway.toml`, and in logs.
    pub fn config_name(self) -> &'static str {
        match self {
            RouteId::Chargers => "chargers",
            RouteId::Sessions => "sessions",
            RouteId::Energy => "energy",
            RouteId::ErePosition => "ere_position",
            RouteId::Me => "me",
            RouteId::AddCharger => "add_charger",
            RouteId::RebootCharger => "reboot_charger",
        }
    }

    /// The route named `name` in the config, if there is one.
    pub fn from_config_name(name: &str) -> Option<RouteId> {
        RouteId::ALL.into_iter().find(|r| r.config_name() == name)
    }

    /// Whether the route changes the Joulo account (and so is off by default).
    pub fn changes_account(self) -> bool {
        matches!(self, RouteId::AddCharger | RouteId::RebootCharger)
    }
}

/// Why a request matched no route.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// The path could be read two ways, or holds bytes no Joulo path has.
    #[error("Invalid request path: {0}")]
    BadPath(&'static str),
    /// No route has this path.
    #[error("Unknown path")]
    NotFound,
    /// The path exists but not with this method; `allow` lists the methods that work.
    #[error("Method not allowed")]
    MethodNotAllowed {
        /// Value for the `Allow` header.
        allow: HeaderValue,
    },
}

/// The routes this gateway forwards: built from the config at start and anew on
/// each config reload, as part of the policy `state` swaps in whole.
#[derive(Debug, Clone)]
pub struct RouteTable {
    /// Routes switched on: all read routes plus the write routes the config enables.
    enabled: Vec<RouteId>,
}

impl RouteTable {
    /// All read routes, plus the account-changing routes in `enabled_writes`.
    pub fn new(enabled_writes: &[RouteId]) -> RouteTable {
        let enabled = RouteId::ALL
            .into_iter()
            .filter(|r| !r.changes_account() || enabled_writes.contains(r))
            .collect();
        RouteTable { enabled }
    }

    /// Matches a raw request path (as sent, still percent-encoded) and method.
    /// HEAD on a read route is that route: it is answered like the GET
    /// (from the cache when it can, upstream with a GET otherwise) and the
    /// server sends the head alone; uptime checkers use it.
    pub fn resolve(&self, method: &Method, raw_path: &str) -> Result<RouteId, RouteError> {
        let path = normalise_path(raw_path)?;
        let mut allowed: Vec<&'static str> = Vec::new();
        for &route in &self.enabled {
            if route.path() == path {
                if route.method() == method
                    || (method == Method::HEAD && route.method() == Method::GET)
                {
                    return Ok(route);
                }
                allowed.push(if route.changes_account() {
                    "POST"
                } else {
                    "GET, HEAD"
                });
            }
        }
        if allowed.is_empty() {
            return Err(RouteError::NotFound);
        }
        let allow = HeaderValue::from_str(&allowed.join(", ")).expect("method names are ASCII");
        Err(RouteError::MethodNotAllowed { allow })
    }
}

/// Canonical form of a request path, or why it is refused.
///
/// Percent-encoded unreserved characters are decoded (RFC 3986 section 6.2.2.2), so
/// `/ch%61rgers` is `/chargers`. Everything that different servers resolve
/// differently is refused rather than guessed: encoded dots, slashes and
/// backslashes, dot segments, empty segments, NUL and other control bytes.
pub fn normalise_path(raw: &str) -> Result<Cow<'_, str>, RouteError> {
    if !raw.starts_with('/') {
        return Err(RouteError::BadPath("must start with /"));
    }
    // The usual case, nothing encoded: check it in place, no copy.
    if !raw.contains('%') {
        if let Some(bad) = raw.bytes().find_map(byte_problem) {
            return Err(RouteError::BadPath(bad));
        }
        check_segments(raw)?;
        return Ok(Cow::Borrowed(raw));
    }
    let bytes = raw.as_bytes();
    let mut out = String::with_capacity(raw.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or(RouteError::BadPath("malformed percent-encoding"))?;
                match hex {
                    b'.' => return Err(RouteError::BadPath("encoded dot")),
                    b'/' => return Err(RouteError::BadPath("encoded slash")),
                    b'\\' => return Err(RouteError::BadPath("encoded backslash")),
                    0 => return Err(RouteError::BadPath("NUL byte")),
                    c if c.is_ascii_alphanumeric() || c == b'-' || c == b'_' || c == b'~' => {
                        out.push(c as char);
                    }
                    _ => {
                        return Err(RouteError::BadPath(
                            "encoded character outside a Joulo path",
                        ));
                    }
                }
                i += 3;
            }
            c => {
                if let Some(bad) = byte_problem(c) {
                    return Err(RouteError::BadPath(bad));
                }
                out.push(c as char);
                i += 1;
            }
        }
    }
    check_segments(&out)?;
    Ok(Cow::Owned(out))
}

/// Why a raw (unencoded) path byte is refused, if it is.
fn byte_problem(b: u8) -> Option<&'static str> {
    match b {
        b'\\' => Some("backslash"),
        0 => Some("NUL byte"),
        c if c.is_ascii_control() || c >= 0x80 => Some("control or non-ASCII byte"),
        _ => None,
    }
}

/// Refuses empty and dot segments in a decoded path.
fn check_segments(path: &str) -> Result<(), RouteError> {
    for segment in path[1..].split('/') {
        match segment {
            "" => return Err(RouteError::BadPath("empty path segment")),
            "." | ".." => return Err(RouteError::BadPath("dot segment")),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_numbers_are_their_place_in_all() {
        // Per-route tables (metrics) index by `route as usize`.
        for (i, route) in RouteId::ALL.into_iter().enumerate() {
            assert_eq!(route as usize, i);
        }
    }

    #[test]
    fn exact_paths_match() {
        let t = RouteTable::new(&[]);
        assert_eq!(t.resolve(&Method::GET, "/chargers"), Ok(RouteId::Chargers));
        assert_eq!(
            t.resolve(&Method::GET, "/ere-position"),
            Ok(RouteId::ErePosition)
        );
        assert_eq!(
            t.resolve(&Method::GET, "/ch%61rgers"),
            Ok(RouteId::Chargers)
        );
        assert_eq!(
            t.resolve(&Method::GET, "/Chargers"),
            Err(RouteError::NotFound)
        );
        assert_eq!(
            t.resolve(&Method::GET, "/chargers/x"),
            Err(RouteError::NotFound)
        );
        assert_eq!(
            t.resolve(&Method::GET, "/"),
            Err(RouteError::BadPath("empty path segment"))
        );
    }

    #[test]
    fn write_routes_are_off_until_enabled() {
        let off = RouteTable::new(&[]);
        let Err(RouteError::MethodNotAllowed { allow }) = off.resolve(&Method::POST, "/chargers")
        else {
            panic!("POST /chargers should be 405 when off");
        };
        assert_eq!(allow, "GET, HEAD");
        assert_eq!(
            off.resolve(&Method::HEAD, "/chargers"),
            Ok(RouteId::Chargers)
        );
        assert!(off.resolve(&Method::HEAD, "/chargers/reboot").is_err());
        assert_eq!(
            off.resolve(&Method::POST, "/chargers/reboot"),
            Err(RouteError::NotFound)
        );
        let on = RouteTable::new(&[RouteId::AddCharger, RouteId::RebootCharger]);
        assert_eq!(
            on.resolve(&Method::POST, "/chargers"),
            Ok(RouteId::AddCharger)
        );
        assert_eq!(
            on.resolve(&Method::POST, "/chargers/reboot"),
            Ok(RouteId::RebootCharger)
        );
        let Err(RouteError::MethodNotAllowed { allow }) = on.resolve(&Method::DELETE, "/chargers")
        else {
            panic!("DELETE is never allowed");
        };
        assert_eq!(allow, "GET, HEAD, POST");
        let Err(RouteError::MethodNotAllowed { .. }) =
            on.resolve(&Method::HEAD, "/chargers/reboot")
        else {
            panic!("HEAD is only for read routes");
        };
    }

    #[test]
    fn ambiguous_paths_are_refused() {
        for p in [
            "/chargers/../me",
            "/./chargers",
            "/chargers/.",
            "//chargers",
            "/chargers/",
            "/%2e%2e/chargers",
            "/chargers%2fx",
            "/chargers%2Freboot",
            "/chargers%5c",
            "/chargers\\x",
            "/chargers%00",
            "/charg\0ers",
            "/chargers%zz",
            "/chargers%",
            "/chargers%2",
            "/ch%C3%A4rgers",
            "chargers",
            "*",
            "/\u{7f}",
        ] {
            assert!(
                matches!(normalise_path(p), Err(RouteError::BadPath(_))),
                "{p:?} should be refused, got {:?}",
                normalise_path(p)
            );
        }
    }

    #[test]
    fn normalising_is_idempotent() {
        for p in ["/chargers", "/ch%61rgers", "/a-b_c~d/e"] {
            let once = normalise_path(p).unwrap();
            assert_eq!(normalise_path(&once).unwrap(), once);
            assert!(matches!(normalise_path("/chargers"), Ok(Cow::Borrowed(_))));
        }
    }

    mod properties {
        use super::super::*;
        use proptest::prelude::*;

        /// Paths built from the pieces that make normalisation hard.
        fn tricky_path() -> impl Strategy<Value = String> {
            let piece = prop_oneof![
                Just("/"),
                Just("."),
                Just(".."),
                Just("%2e"),
                Just("%2E"),
                Just("%2f"),
                Just("%5c"),
                Just("%00"),
                Just("%61"),
                Just("%"),
                Just("\\"),
                Just("chargers"),
                Just("reboot"),
                Just("me"),
                Just("energy"),
                Just("ere-position"),
                Just("sessions"),
                Just("c"),
                Just("%63"),
                Just("~"),
                Just("-"),
            ];
            prop::collection::vec(piece, 0..10).prop_map(|p| format!("/{}", p.concat()))
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(4000))]

            #[test]
            fn normalising_is_idempotent_and_clean(raw in prop_oneof![tricky_path(), "[ -~]{0,24}"]) {
                if let Ok(path) = normalise_path(&raw) {
                    prop_assert_eq!(normalise_path(&path), Ok(path.clone()));
                    prop_assert!(path.starts_with('/'));
                    for bad in ["//", "/./", "/../", "%", "\\", "\0"] {
                        prop_assert!(!path.contains(bad), "{:?} in {:?}", bad, path);
                    }
                    prop_assert!(!path.ends_with("/.") && !path.ends_with("/..") && !path.ends_with('/'));
                }
            }

            #[test]
            fn only_allowlisted_paths_resolve(raw in prop_oneof![tricky_path(), "[ -~]{0,24}"], post in any::<bool>()) {
                let table = RouteTable::new(&[RouteId::AddCharger, RouteId::RebootCharger]);
                let method = if post { Method::POST } else { Method::GET };
                if let Ok(route) = table.resolve(&method, &raw) {
                    prop_assert_eq!(Ok(Cow::Borrowed(route.path())), normalise_path(&raw));
                    prop_assert_eq!(route.method(), method);
                }
                if let Ok(route) = table.resolve(&Method::HEAD, &raw) {
                    prop_assert_eq!(route.method(), Method::GET);
                }
            }
        }
    }
}
