//! What is removed from a request before it leaves the house, and from a response
//! before it reaches a device: credential query parameters, client credentials,
//! forwarding headers and hop-by-hop headers.

use std::borrow::Cow;

use http::header::{self, HeaderMap, HeaderName};

/// Shown in logs in place of a removed parameter's value.
pub const REDACTED: &str = "[REDACTED]";

/// Query parameter names (after percent-decoding, ASCII case-insensitive) that
/// carry a credential and never travel upstream or into a log. Lower case.
const CREDENTIAL_PARAMS: [&str; 2] = ["token", "access_token"];

/// A query string with its credential parameters removed.
#[derive(Debug, PartialEq, Eq)]
pub struct CleanQuery<'a> {
    /// What is sent upstream: every other parameter byte-for-byte, in order.
    /// Empty when nothing is left (then no `?` is sent).
    pub forwarded: Cow<'a, str>,
    /// The query as the client sent it; only ever shown through [`Self::logged`].
    raw: &'a str,
    /// How many parameters were removed.
    pub removed: usize,
}

impl<'a> CleanQuery<'a> {
    /// What is logged: the original with removed parameters' values replaced by
    /// [`REDACTED`], so a log shows that a device still sends `?token=`. Built
    /// only when a log line is written, so requests pay nothing for it when the
    /// access log is off.
    pub fn logged(&self) -> LoggedQuery<'a> {
        LoggedQuery {
            raw: self.raw,
            removed: self.removed,
        }
    }
}

/// A query with credential values redacted, written out on display.
#[derive(Debug, Clone, Copy)]
pub struct LoggedQuery<'a> {
    /// The query as sent.
    raw: &'a str,
    /// Whether anything needs redacting.
    removed: usize,
}

impl LoggedQuery<'_> {
    /// Whether the query is empty.
    pub fn is_empty(&self) -> bool {
        self.raw.is_empty()
    }
}

impl std::fmt::Display for LoggedQuery<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.removed == 0 {
            return f.write_str(self.raw);
        }
        for (i, (_, param)) in params(self.raw).enumerate() {
            if i > 0 {
                f.write_str("&")?;
            }
            if is_credential_param(param) {
                let name = param.split_once('=').map_or(param, |(n, _)| n);
                write!(f, "{name}={REDACTED}")?;
            } else {
                f.write_str(param)?;
            }
        }
        Ok(())
    }
}

/// Removes every `token` / `access_token` parameter, whatever its spelling
/// (`TOKEN`, `%74oken`, `tok%65n`), every occurrence, keeping the rest untouched.
/// One pass; the result borrows from `raw` unless a kept parameter follows a
/// removed one (`a=1&token=x&b=2`), the only case that needs a new string.
pub fn clean_query(raw: &str) -> CleanQuery<'_> {
    // What is kept, while it is one unbroken stretch of `raw`.
    let mut span: Option<(usize, usize)> = None;
    // Whether a parameter was removed after that stretch began.
    let mut gap = false;
    let mut owned: Option<String> = None;
    let mut removed = 0;
    for (start, param) in params(raw) {
        if is_credential_param(param) {
            removed += 1;
            gap |= span.is_some();
            continue;
        }
        let end = start + param.len();
        match (&mut owned, span) {
            // Even empty pieces keep their place: everything not removed is
            // forwarded exactly as sent.
            (Some(out), _) => {
                out.push('&');
                out.push_str(param);
            }
            (None, None) => span = Some((start, end)),
            (None, Some((first, _))) if !gap => span = Some((first, end)),
            (None, Some((first, last))) => {
                let mut out = String::with_capacity(raw.len());
                out.push_str(&raw[first..last]);
                out.push('&');
                out.push_str(param);
                owned = Some(out);
            }
        }
    }
    let forwarded = match owned {
        Some(out) => Cow::Owned(out),
        None => Cow::Borrowed(span.map_or("", |(first, last)| &raw[first..last])),
    };
    CleanQuery {
        forwarded,
        raw,
        removed,
    }
}

/// The `&`-separated pieces of a query with where each starts. A byte scan:
/// `&` is ASCII, so every piece boundary is a character boundary.
fn params(raw: &str) -> impl Iterator<Item = (usize, &str)> {
    let mut start = 0;
    let mut done = false;
    std::iter::from_fn(move || {
        if done {
            return None;
        }
        let rest = &raw.as_bytes()[start..];
        let len = match rest.iter().position(|&b| b == b'&') {
            Some(len) => len,
            None => {
                done = true;
                rest.len()
            }
        };
        let piece = (start, &raw[start..start + len]);
        start += len + 1;
        Some(piece)
    })
}

/// The longest spelling of a credential name once decoded (`access_token`).
const LONGEST_CREDENTIAL: usize = 12;

/// Whether one `name=value` piece names a credential, decoded the way a form
/// parser (and Joulo's `URLSearchParams`) would decode it: `+` is a space and
/// each `%XX` one byte (a `%` not followed by two hex digits stays as it is).
/// Decodes into a small stack buffer: this runs for every parameter of every
/// request.
pub fn is_credential_param(param: &str) -> bool {
    let name = param.as_bytes();
    let name = match name.iter().position(|&b| b == b'=') {
        Some(end) => &name[..end],
        None => name,
    };
    let mut decoded = [0u8; LONGEST_CREDENTIAL];
    let mut len = 0;
    let mut i = 0;
    while i < name.len() {
        if len == LONGEST_CREDENTIAL {
            return false;
        }
        let byte = match name[i] {
            b'+' => b' ',
            b'%' => match (hex(name.get(i + 1)), hex(name.get(i + 2))) {
                (Some(hi), Some(lo)) => {
                    i += 2;
                    hi << 4 | lo
                }
                _ => b'%',
            },
            other => other,
        };
        decoded[len] = byte.to_ascii_lowercase();
        len += 1;
        i += 1;
    }
    let decoded = &decoded[..len];
    CREDENTIAL_PARAMS.iter().any(|c| c.as_bytes() == decoded)
}

/// The value of one hex digit.
fn hex(digit: Option<&u8>) -> Option<u8> {
    (*digit? as char).to_digit(16).map(|d| d as u8)
}

/// Hop-by-hop headers (RFC 9110 section 7.6.1, plus the obsolete `Keep-Alive` and
/// `Proxy-Connection` still sent by old clients): they describe one connection and
/// are not forwarded across the gateway in either direction.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHENTICATE,
];

/// Client headers that never go upstream beyond the hop-by-hop set: the client's
/// own credentials (the gateway supplies the only one Joulo sees), facts about the
/// home network, and `Host` (taken from `base_url`).
const CLIENT_ONLY: [HeaderName; 9] = [
    header::AUTHORIZATION,
    header::PROXY_AUTHORIZATION,
    header::COOKIE,
    header::FORWARDED,
    header::HOST,
    header::EXPECT,
    HeaderName::from_static("x-real-ip"),
    HeaderName::from_static("x-gateway-key"),
    HeaderName::from_static("x-api-key"),
];

/// Upstream response headers that describe the upstream's own origin and would
/// mislead a device talking to the gateway's origin: cookies for api.joulo.nl, an
/// HTTP/3 endpoint, or an HSTS policy.
const UPSTREAM_ONLY: [HeaderName; 3] = [
    header::SET_COOKIE,
    header::ALT_SVC,
    header::STRICT_TRANSPORT_SECURITY,
];

/// The names a `Connection` header lists: hop-by-hop as well (RFC 9110 section
/// 7.6.1). Empty, without allocating, when there is no `Connection` header.
fn connection_named(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect()
}

/// A copy of `headers` without hop-by-hop headers and without those `drop`
/// picks, with room for one more. One pass that copies what stays is cheaper than
/// removing each unwanted name from a clone (a hash and a probe per name, about
/// twenty names).
fn filtered(headers: &HeaderMap, drop: impl Fn(&HeaderName) -> bool) -> HeaderMap {
    let named = connection_named(headers);
    let mut kept = HeaderMap::with_capacity(headers.keys_len() + 1);
    for (name, value) in headers {
        if !(HOP_BY_HOP.contains(name) || named.contains(name) || drop(name)) {
            kept.append(name.clone(), value.clone());
        }
    }
    kept
}

/// A client's request headers as they may reach Joulo: no hop-by-hop headers,
/// no client credentials, forwarding headers or `Host`. The gateway's token is
/// added afterwards; there is room for it.
pub fn request_headers_for_upstream(client: &HeaderMap) -> HeaderMap {
    filtered(client, |name| {
        CLIENT_ONLY.contains(name) || name.as_str().starts_with("x-forwarded-")
    })
}

/// Strips a client's request headers down to what may reach Joulo, in place.
pub fn clean_request_headers(headers: &mut HeaderMap) {
    *headers = request_headers_for_upstream(headers);
}

/// Strips an upstream response's headers down to what a device should see.
/// Usually nothing needs to go (an HTTP/2 answer has no hop-by-hop headers), and
/// then the map is left as it is.
pub fn clean_response_headers(headers: &mut HeaderMap) {
    // The gateway never grants cross-origin access, whatever Joulo allows: a page
    // on another site must not read a LAN device's data through it.
    let drop = |name: &HeaderName| {
        UPSTREAM_ONLY.contains(name) || name.as_str().starts_with("access-control-")
    };
    if headers
        .keys()
        .any(|name| HOP_BY_HOP.contains(name) || drop(name))
    {
        *headers = filtered(headers, drop);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn credential_params_go_in_every_spelling() {
        for (raw, fwd) in [
            ("token=abc", ""),
            ("TOKEN=abc&limit=5", "limit=5"),
            ("limit=5&%74oken=abc", "limit=5"),
            ("limit=5&tok%65n=abc&offset=2", "limit=5&offset=2"),
            ("%54%4F%4B%45%4E=x", ""),
            ("token=a&token=b&x=1&Token=c", "x=1"),
            ("access_token=a&Access_Token=b&x=1", "x=1"),
            ("access%5Ftoken=a&y=2", "y=2"),
            ("token", ""),
            ("token=", ""),
            ("x=1&token", "x=1"),
        ] {
            let q = clean_query(raw);
            assert_eq!(q.forwarded, fwd, "{raw}");
            assert!(q.removed > 0, "{raw}");
            assert!(
                !q.logged().to_string().contains("abc"),
                "{raw} logged as {}",
                q.logged()
            );
        }
    }

    #[test]
    fn other_params_are_kept_byte_for_byte_in_order() {
        for raw in [
            "limit=5&offset=10",
            "b=2&a=1&b=3",
            "from=2026-01-01T00%3A00%3A00Z&x=%zz&&y",
            "tokens=1&my_token=2&token_x=3&%2Btoken=4",
            "a+b=c+d",
            "token%=1",
        ] {
            let q = clean_query(raw);
            assert_eq!(q.forwarded, raw);
            assert_eq!(q.logged().to_string(), raw);
            assert_eq!(q.removed, 0);
            assert!(matches!(q.forwarded, Cow::Borrowed(_)));
        }
    }

    #[test]
    fn a_new_string_only_when_a_kept_parameter_follows_a_removed_one() {
        for (raw, borrowed) in [
            ("limit=1", true),
            ("limit=1&token=x", true),
            ("token=x&limit=1&offset=2", true),
            ("token=x&access_token=y", true),
            ("limit=1&token=x&offset=2", false),
        ] {
            let q = clean_query(raw);
            assert_eq!(
                matches!(q.forwarded, Cow::Borrowed(_)),
                borrowed,
                "{raw} -> {:?}",
                q.forwarded
            );
        }
    }

    #[test]
    fn logged_query_shows_where_a_token_was() {
        let q = clean_query("limit=2&token=joulo_secret&offset=0");
        assert_eq!(q.logged().to_string(), "limit=2&token=[REDACTED]&offset=0");
        assert_eq!(q.forwarded, "limit=2&offset=0");
        assert_eq!(q.removed, 1);
    }

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        m
    }

    #[test]
    fn request_headers_lose_credentials_forwarding_and_hop_by_hop() {
        let mut h = map(&[
            ("authorization", "Bearer joulo_client"),
            ("proxy-authorization", "Basic x"),
            ("cookie", "a=b"),
            ("forwarded", "for=1.2.3.4"),
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-host", "evil"),
            ("x-real-ip", "1.2.3.4"),
            ("host", "gateway.lan"),
            ("connection", "keep-alive, X-Custom-Hop"),
            ("x-custom-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("accept", "*/*"),
            ("user-agent", "HomeAssistant/2026.2 aiohttp/3.13"),
            ("accept-encoding", "gzip, deflate"),
        ]);
        clean_request_headers(&mut h);
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort();
        assert_eq!(left, ["accept", "accept-encoding", "user-agent"]);
    }

    #[test]
    fn response_headers_lose_cookies_and_hop_by_hop() {
        let mut h = map(&[
            ("set-cookie", "sb=1"),
            ("connection", "close"),
            ("alt-svc", "h3=\":443\""),
            ("access-control-allow-origin", "*"),
            ("access-control-allow-headers", "authorization"),
            ("content-type", "application/json"),
            ("content-length", "2"),
        ]);
        clean_response_headers(&mut h);
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort();
        assert_eq!(left, ["content-length", "content-type"]);
    }

    mod properties {
        use super::super::*;
        use proptest::prelude::*;

        /// An independent reading of a parameter name, as a form parser would.
        fn decoded_name(param: &str) -> Vec<u8> {
            let name = param.split('=').next().unwrap_or("").replace('+', " ");
            let bytes = name.as_bytes();
            let mut out = Vec::new();
            let mut i = 0;
            while i < bytes.len() {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .filter(|_| bytes[i] == b'%')
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                    }
                    None => {
                        out.push(bytes[i]);
                        i += 1;
                    }
                }
            }
            out
        }

        fn is_credential(param: &str) -> bool {
            let name = decoded_name(param);
            name.eq_ignore_ascii_case(b"token") || name.eq_ignore_ascii_case(b"access_token")
        }

        /// `token` or `access_token` in any spelling: each character in either
        /// case, and any of them percent-encoded in upper or lower hex.
        fn credential_name() -> impl Strategy<Value = String> {
            (
                prop_oneof![Just("token"), Just("access_token")],
                any::<u64>(),
                any::<u64>(),
                any::<bool>(),
            )
                .prop_map(|(name, case_bits, encode_bits, lower_hex)| {
                    name.chars()
                        .enumerate()
                        .map(|(i, c)| {
                            let c = if case_bits >> i & 1 == 1 {
                                c.to_ascii_uppercase()
                            } else {
                                c
                            };
                            if encode_bits >> i & 1 == 1 {
                                let hex = format!("%{:02X}", c as u8);
                                if lower_hex {
                                    hex.to_ascii_lowercase()
                                } else {
                                    hex
                                }
                            } else {
                                c.to_string()
                            }
                        })
                        .collect()
                })
        }

        fn value() -> impl Strategy<Value = String> {
            "[A-Za-z0-9%+=._~:-]{0,12}"
        }

        /// A parameter: a credential one (with or without a value) or another.
        fn param() -> impl Strategy<Value = (bool, String)> {
            prop_oneof![
                (credential_name(), prop::option::of(value())).prop_map(|(n, v)| {
                    (
                        true,
                        match v {
                            Some(v) => format!("{n}={v}"),
                            None => n,
                        },
                    )
                }),
                "[A-Za-z0-9%+._~-]{0,10}(=[A-Za-z0-9%+=._~:-]{0,10})?"
                    .prop_filter("not a credential", |p| !is_credential(p))
                    .prop_map(|p| (false, p)),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            #[test]
            fn no_credential_survives_and_the_rest_is_untouched(params in prop::collection::vec(param(), 0..12)) {
                let raw = params.iter().map(|(_, p)| p.as_str()).collect::<Vec<_>>().join("&");
                let kept: Vec<&str> = params.iter().filter(|(c, _)| !c).map(|(_, p)| p.as_str()).collect();
                let removed = params.iter().filter(|(c, _)| *c).count();
                let q = clean_query(&raw);
                prop_assert_eq!(q.removed, removed);
                if kept.is_empty() {
                    prop_assert_eq!(&*q.forwarded, "");
                } else {
                    prop_assert_eq!(&*q.forwarded, kept.join("&"));
                }
                for piece in q.forwarded.split('&') {
                    prop_assert!(!is_credential(piece), "{} survived", piece);
                }
                // The log shows every piece, credential values replaced.
                let logged = q.logged().to_string();
                let logged: Vec<&str> = logged.split('&').collect();
                prop_assert_eq!(logged.len(), params.len().max(1));
                for ((is_cred, p), shown) in params.iter().zip(&logged) {
                    if *is_cred {
                        let name = p.split('=').next().unwrap();
                        prop_assert_eq!(*shown, format!("{name}={REDACTED}"));
                    } else {
                        prop_assert_eq!(shown, p);
                    }
                }
            }

            #[test]
            fn the_stack_decoder_agrees_with_a_form_parser(
                param in "([tokenacs_TOKENACS+=%x]|%[0-9a-fA-F]{2}|%[0-9a-fA-F]){0,20}",
            ) {
                prop_assert_eq!(is_credential_param(&param), is_credential(&param), "{}", param);
            }

            #[test]
            fn arbitrary_queries_never_forward_a_credential(raw in "[ -~]{0,64}") {
                let q = clean_query(&raw);
                let original: Vec<&str> = raw.split('&').collect();
                let mut rest = original.iter();
                for piece in q.forwarded.split('&').filter(|_| !q.forwarded.is_empty()) {
                    prop_assert!(!is_credential(piece));
                    // Every forwarded piece is an original piece, in order.
                    prop_assert!(rest.any(|o| *o == piece), "{} reordered or altered", piece);
                }
            }
        }
    }
}
