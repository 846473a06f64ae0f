//! What is recognised and removed: credential query parameters in every
//! spelling (dropped from requests, redacted in logs), and what an upstream
//! answer carries that a device must not see. Requests are not cleaned here:
//! [`crate::upstream::request`] builds them from nothing.

use http::header::{self, HeaderMap, HeaderName};

/// Shown in logs in place of a removed parameter's value.
pub const REDACTED: &str = "[REDACTED]";

/// Query parameter names (after percent-decoding, ASCII case-insensitive) that
/// carry a credential and never travel upstream or into a log. Lower case.
const CREDENTIAL_PARAMS: [&str; 2] = ["token", "access_token"];

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

/// Strips an upstream response's headers down to what a device should see, in
/// place: usually nothing needs to go, or one `Connection: keep-alive` from an
/// HTTP/1.1 upstream, so removing the few names found is cheaper than copying
/// the rest into a new map.
pub fn clean_response_headers(headers: &mut HeaderMap) {
    // The gateway never grants cross-origin access, whatever Joulo allows: a page
    // on another site must not read a LAN device's data through it.
    let unwanted = |name: &HeaderName| {
        HOP_BY_HOP.contains(name)
            || UPSTREAM_ONLY.contains(name)
            || name.as_str().starts_with("access-control-")
    };
    let mut found: Vec<HeaderName> = headers.keys().filter(|n| unwanted(n)).cloned().collect();
    if found.is_empty() {
        return;
    }
    found.extend(connection_named(headers));
    // Framed two ways: the chunked framing is what was read, so a length
    // beside it is wrong and must not reach the device (RFC 9112 section 6.3).
    if found.contains(&header::TRANSFER_ENCODING) {
        found.push(header::CONTENT_LENGTH);
    }
    for name in &found {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn credential_params_are_recognised_in_every_spelling() {
        for param in [
            "token=abc",
            "TOKEN=abc",
            "%74oken=abc",
            "tok%65n=abc",
            "%54%4F%4B%45%4E=x",
            "Access_Token=b",
            "access%5Ftoken=a",
            "token",
            "token=",
        ] {
            assert!(is_credential_param(param), "{param}");
        }
        for param in [
            "tokens=1",
            "my_token=2",
            "token_x=3",
            "%2Btoken=4",
            "token%=1",
            "limit=5",
        ] {
            assert!(!is_credential_param(param), "{param}");
        }
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

    /// The header names `clean_response_headers` keeps of `pairs`, sorted,
    /// and how many values are left.
    fn kept(pairs: &[(&str, &str)]) -> (Vec<String>, usize) {
        let mut h = map(pairs);
        clean_response_headers(&mut h);
        let mut names: Vec<String> = h.keys().map(|k| k.as_str().to_owned()).collect();
        names.sort();
        (names, h.len())
    }

    #[test]
    fn response_headers_lose_cookies_and_hop_by_hop() {
        let (left, _) = kept(&[
            ("set-cookie", "sb=1"),
            ("connection", "close"),
            ("alt-svc", "h3=\":443\""),
            ("access-control-allow-origin", "*"),
            ("access-control-allow-headers", "authorization"),
            ("content-type", "application/json"),
            ("content-length", "2"),
        ]);
        assert_eq!(left, ["content-length", "content-type"]);

        // A length beside chunked framing goes with it.
        let (left, _) = kept(&[
            ("transfer-encoding", "chunked"),
            ("content-length", "3"),
            ("content-type", "application/json"),
        ]);
        assert_eq!(left, ["content-type"]);

        // What `Connection` names goes too, with every value of each name.
        let (left, values) = kept(&[
            ("connection", "keep-alive, x-upstream-hop"),
            ("keep-alive", "timeout=5"),
            ("x-upstream-hop", "1"),
            ("x-upstream-hop", "2"),
            ("vary", "accept"),
        ]);
        assert_eq!(left, ["vary"]);
        assert_eq!(values, 1);
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

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            #[test]
            fn every_spelling_of_a_credential_is_recognised(name in credential_name(), value in "[A-Za-z0-9%+=._~:-]{0,12}") {
                prop_assert!(is_credential_param(&name));
                let param = format!("{name}={value}");
                prop_assert!(is_credential_param(&param), "{}", param);
            }

            #[test]
            fn the_stack_decoder_agrees_with_a_form_parser(
                param in "([tokenacs_TOKENACS+=%x]|%[0-9a-fA-F]{2}|%[0-9a-fA-F]){0,20}",
            ) {
                prop_assert_eq!(is_credential_param(&param), is_credential(&param), "{}", param);
            }

        }
    }
}
