//! What a request may carry to Joulo besides its route: each route's query
//! parameters as Joulo documents them, checked value by value and written back
//! in one canonical order and encoding. The JSON bodies of the opt-in POST
//! routes are in [`body`], the query as the access log shows it in [`logged`].

mod body;
mod logged;

pub(crate) use body::{BodyError, canonical_body};
pub(crate) use logged::LoggedQuery;

use std::borrow::Cow;
use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode};

use crate::routes::RouteId;
use crate::sanitize;

/// What the gateway percent-encodes when it writes a value upstream: everything
/// but the unreserved characters of RFC 3986 section 2.3, so every value has one
/// spelling (`:` is always `%3A`).
const ENCODE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// The largest `offset` passed on: Joulo's database counts rows in 32 bits.
const MAX_OFFSET: u64 = i32::MAX as u64;

/// The longest value of a parameter named in `extra_params`.
const MAX_PLAIN_LEN: usize = 128;

/// What values a parameter takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamKind {
    /// A page size: a whole number from 1 to 100.
    Limit,
    /// A page start: a whole number from 0.
    Offset,
    /// A charger id: a UUID, passed on in lower case.
    Uuid,
    /// An ISO 8601 date (`2026-01-31`) or date-time (`2026-01-31T12:00:00Z`,
    /// or with an offset); a date-time is passed on in UTC.
    Timestamp,
    /// A parameter the operator allowed with `extra_params`: 1-128 characters
    /// of `A-Z a-z 0-9 - . _ ~ :`.
    Plain,
}

impl ParamKind {
    /// What the parameter takes, as an error message says it.
    fn expected(self) -> &'static str {
        match self {
            ParamKind::Limit => "a whole number from 1 to 100",
            ParamKind::Offset => "a whole number from 0 to 2147483647",
            ParamKind::Uuid => "a UUID like 123e4567-e89b-12d3-a456-426614174000",
            ParamKind::Timestamp => {
                "an ISO 8601 date (2026-01-31) or date-time (2026-01-31T12:00:00Z), from 1970"
            }
            ParamKind::Plain => "1-128 characters of A-Z, a-z, 0-9, '-', '.', '_', '~' or ':'",
        }
    }

    /// The value in its one upstream spelling (not yet percent-encoded), or
    /// `None` when it is not a value of this kind.
    fn canonical(self, value: &str) -> Option<Cow<'_, str>> {
        match self {
            ParamKind::Limit => whole_number(value)
                .filter(|n| (1..=100).contains(n))
                .map(|n| n.to_string().into()),
            ParamKind::Offset => whole_number(value)
                .filter(|n| *n <= MAX_OFFSET)
                .map(|n| n.to_string().into()),
            ParamKind::Uuid => uuid::Uuid::try_parse(value)
                .ok()
                // Only the hyphenated form: a braced or URN spelling is a
                // second key for the same charger.
                .filter(|_| value.len() == 36)
                .map(|u| u.hyphenated().to_string().into()),
            ParamKind::Timestamp => timestamp(value),
            ParamKind::Plain => (!value.is_empty()
                && value.len() <= MAX_PLAIN_LEN
                && value
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._~:".contains(&b)))
            .then_some(Cow::Borrowed(value)),
        }
    }
}

/// Digits only (no sign, no space), at most 10 of them.
fn whole_number(value: &str) -> Option<u64> {
    if value.is_empty() || value.len() > 10 || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse().ok()
}

/// An ISO 8601 date, or a date-time made UTC, checked by humantime's RFC 3339
/// reader (which knows month lengths and leap years).
fn timestamp(value: &str) -> Option<Cow<'static, str>> {
    let bytes = value.as_bytes();
    if bytes.len() == 10 {
        humantime::parse_rfc3339(&format!("{value}T00:00:00Z")).ok()?;
        return Some(Cow::Owned(value.to_owned()));
    }
    if bytes.len() < 20 || bytes[10] != b'T' {
        return None;
    }
    // The zone: `Z`, or `+hh:mm` / `-hh:mm`, which humantime does not read.
    let (local, east, offset) = if bytes[bytes.len() - 1] == b'Z' {
        (&value[..value.len() - 1], true, 0)
    } else {
        let split = value.len() - 6;
        let zone = &bytes[split..];
        let (hours, minutes) = (two_digits(&zone[1..3])?, two_digits(&zone[4..6])?);
        if !matches!(zone[0], b'+' | b'-') || zone[3] != b':' || hours > 23 || minutes > 59 {
            return None;
        }
        (
            &value[..split],
            zone[0] == b'+',
            hours * 3600 + minutes * 60,
        )
    };
    let local = humantime::parse_rfc3339(&format!("{local}Z")).ok()?;
    let offset = Duration::from_secs(u64::from(offset));
    // East of UTC is ahead of it: its wall clock reads later than UTC's.
    let utc = if east {
        local.checked_sub(offset)?
    } else {
        local.checked_add(offset)?
    };
    if utc < SystemTime::UNIX_EPOCH {
        return None;
    }
    Some(Cow::Owned(humantime::format_rfc3339(utc).to_string()))
}

/// Two ASCII digits as a number.
fn two_digits(digits: &[u8]) -> Option<u32> {
    match digits {
        [a, b] if a.is_ascii_digit() && b.is_ascii_digit() => {
            Some(u32::from(a - b'0') * 10 + u32::from(b - b'0'))
        }
        _ => None,
    }
}
/// One parameter a route takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamSpec {
    /// Its name, exactly as Joulo spells it.
    pub name: Cow<'static, str>,
    /// What values it takes.
    pub kind: ParamKind,
}

/// The parameters Joulo documents for `route`, in the order the gateway writes
/// them upstream.
pub(crate) fn documented(route: RouteId) -> &'static [(&'static str, ParamKind)] {
    match route {
        RouteId::Sessions => &[
            ("limit", ParamKind::Limit),
            ("offset", ParamKind::Offset),
            ("charger_id", ParamKind::Uuid),
            ("from", ParamKind::Timestamp),
            ("to", ParamKind::Timestamp),
        ],
        RouteId::Chargers
        | RouteId::Energy
        | RouteId::ErePosition
        | RouteId::Me
        | RouteId::AddCharger
        | RouteId::RebootCharger => &[],
    }
}

/// Whether `name` may be given to `extra_params`: a plain parameter name, not
/// a credential and not already documented for `route`. The problem otherwise.
pub(crate) fn check_extra_name(route: RouteId, name: &str) -> Result<(), &'static str> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
    {
        return Err("must be 1-64 characters of A-Z, a-z, 0-9, '-', '.' or '_'");
    }
    if sanitize::is_credential_param(name) {
        return Err("names a credential, which is never passed on");
    }
    if documented(route).iter().any(|(n, _)| *n == name) {
        return Err("is already one of the route's documented parameters");
    }
    if route.changes_account() {
        return Err("routes that change the account take no query parameters");
    }
    Ok(())
}

/// Every route's parameters: Joulo's documented ones plus any the operator
/// added with `[routes.<name>] extra_params`; built at start and anew on each
/// config reload, as part of the policy `state` swaps in whole.
#[derive(Debug, Clone)]
pub struct QuerySchema {
    /// By `route as usize`.
    routes: [Vec<ParamSpec>; RouteId::ALL.len()],
}

impl Default for QuerySchema {
    fn default() -> Self {
        QuerySchema::new(&HashMap::new())
    }
}

/// A query in the gateway's own spelling: the validated parameters in the
/// route's order, values percent-encoded one way. Empty when there are none
/// (then no `?` is sent). It is the cache key's query and the upstream's.
pub(crate) type CanonicalQuery = String;

impl QuerySchema {
    /// The documented parameters plus `extra` (names already checked with
    /// [`check_extra_name`]), which come after them, in the order given.
    pub fn new(extra: &HashMap<RouteId, Vec<String>>) -> QuerySchema {
        QuerySchema {
            routes: RouteId::ALL.map(|route| {
                let mut specs: Vec<ParamSpec> = documented(route)
                    .iter()
                    .map(|&(name, kind)| ParamSpec {
                        name: Cow::Borrowed(name),
                        kind,
                    })
                    .collect();
                for name in extra.get(&route).into_iter().flatten() {
                    specs.push(ParamSpec {
                        name: Cow::Owned(name.clone()),
                        kind: ParamKind::Plain,
                    });
                }
                specs
            }),
        }
    }

    /// The parameters `route` takes.
    pub fn params(&self, route: RouteId) -> &[ParamSpec] {
        &self.routes[route as usize]
    }

    /// Checks a raw query (as sent, still encoded) against `route`'s parameters
    /// and writes the canonical one. `token` and `access_token`, in any
    /// spelling, are dropped without a word (old Home Assistant configs send
    /// them); anything else unknown, repeated or invalid is refused.
    pub fn canonical(&self, route: RouteId, raw: &str) -> Result<CanonicalQuery, ParamError> {
        let specs = self.params(route);
        if raw.is_empty() {
            return Ok(String::new());
        }
        // The value of each spec, by the spec's place: at most a handful.
        let mut values: Vec<Option<Cow<'_, str>>> = vec![None; specs.len()];
        for piece in raw.split('&') {
            // `a=1&&b=2` and a trailing `&` hold no parameter.
            if piece.is_empty() || sanitize::is_credential_param(piece) {
                continue;
            }
            let (name, value) = piece.split_once('=').unwrap_or((piece, ""));
            let name = decode(name).ok_or(ParamError::Malformed)?;
            let Some(at) = specs.iter().position(|s| s.name == name) else {
                return Err(ParamError::Unknown {
                    route,
                    name: shown_name(&name),
                    allowed: specs.iter().map(|s| s.name.clone()).collect(),
                });
            };
            let spec = &specs[at];
            if values[at].is_some() {
                return Err(ParamError::Repeated {
                    name: spec.name.clone(),
                });
            }
            let decoded = decode(value).ok_or(ParamError::Malformed)?;
            let canonical = spec.kind.canonical(&decoded).ok_or(ParamError::Invalid {
                name: spec.name.clone(),
                kind: spec.kind,
            })?;
            values[at] = Some(Cow::Owned(canonical.into_owned()));
        }
        let mut out = String::new();
        for (spec, value) in specs.iter().zip(&values) {
            let Some(value) = value else { continue };
            if !out.is_empty() {
                out.push('&');
            }
            out.push_str(&spec.name);
            out.push('=');
            out.extend(percent_encoding::utf8_percent_encode(value, ENCODE));
        }
        Ok(out)
    }
}

/// A query piece decoded as a form parser (and Joulo's `URLSearchParams`)
/// would: `+` is a space and each `%XX` one byte. `None` for a `%` not followed
/// by two hex digits, or bytes that are not UTF-8: both could be read two ways.
fn decode(text: &str) -> Option<Cow<'_, str>> {
    let bytes = text.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'%'
            && !bytes
                .get(i + 1..i + 3)
                .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit))
        {
            return None;
        }
    }
    if !text.contains(['+', '%']) {
        return Some(Cow::Borrowed(text));
    }
    let spaced = text.replace('+', " ");
    let decoded: Vec<u8> = percent_decode(spaced.as_bytes()).collect();
    String::from_utf8(decoded).ok().map(Cow::Owned)
}

/// A client's parameter name as an error may repeat it: only when it is short
/// and plain, so that a secret pasted into a URL is not sent back (into a
/// Home Assistant log, say).
fn shown_name(name: &str) -> Option<String> {
    // 32 is shorter than any secret shape the log redactor knows (a prefix
    // and 32 characters).
    let plain = !name.is_empty()
        && name.len() <= 32
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
    plain.then(|| name.to_owned())
}

/// Why a query was refused; each names the parameter and what is allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParamError {
    /// A parameter the route does not take.
    #[error("{}", unknown_message(*.route, .name.as_deref(), .allowed))]
    Unknown {
        /// The route asked for.
        route: RouteId,
        /// The parameter's name, when it is safe to repeat.
        name: Option<String>,
        /// What the route takes.
        allowed: Vec<Cow<'static, str>>,
    },
    /// A parameter given twice: which one counts is ambiguous.
    #[error("Query parameter `{name}` is given more than once")]
    Repeated {
        /// The parameter.
        name: Cow<'static, str>,
    },
    /// A value of the wrong form or out of range.
    #[error("Query parameter `{name}` must be {}", .kind.expected())]
    Invalid {
        /// The parameter.
        name: Cow<'static, str>,
        /// What it takes.
        kind: ParamKind,
    },
    /// A broken percent-encoding or bytes that are not UTF-8.
    #[error("Invalid query string: malformed percent-encoding or non-UTF-8 bytes")]
    Malformed,
}

fn unknown_message(route: RouteId, name: Option<&str>, allowed: &[Cow<'static, str>]) -> String {
    let name = match name {
        Some(name) => format!("Unknown query parameter `{name}`"),
        None => "Unknown query parameter".to_owned(),
    };
    if allowed.is_empty() {
        format!("{name}: {} takes none", route.path())
    } else {
        format!("{name}: {} takes {}", route.path(), allowed.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn schema() -> QuerySchema {
        let mut extra = HashMap::new();
        extra.insert(RouteId::Sessions, vec!["status".to_owned()]);
        QuerySchema::new(&extra)
    }

    fn sessions(raw: &str) -> Result<String, ParamError> {
        schema().canonical(RouteId::Sessions, raw)
    }

    #[test]
    fn one_order_and_one_spelling_whatever_the_client_sent() {
        let canonical = "limit=5&offset=0";
        for raw in [
            "limit=5&offset=0",
            "offset=0&limit=5",
            "offset=00&limit=005",
            "limit=5&token=joulo_x&offset=0&ACCESS_TOKEN=y&%74oken=z",
            "&limit=5&&offset=0&",
            "l%69mit=5&offset=0",
        ] {
            assert_eq!(sessions(raw).unwrap(), canonical, "{raw}");
        }
        assert_eq!(
            sessions("to=2026-02-01&charger_id=123E4567-E89B-12D3-A456-426614174000&status=done")
                .unwrap(),
            "charger_id=123e4567-e89b-12d3-a456-426614174000&to=2026-02-01&status=done"
        );
        assert_eq!(sessions("").unwrap(), "");
        assert_eq!(sessions("token=x").unwrap(), "");
    }

    #[test]
    fn date_times_are_written_in_utc() {
        for (raw, utc) in [
            ("2026-01-01T00:00:00Z", "2026-01-01T00:00:00Z"),
            ("2026-01-01T01:00:00%2B01:00", "2026-01-01T00:00:00Z"),
            ("2025-12-31T23:30:00-00:30", "2026-01-01T00:00:00Z"),
            (
                "2026-01-01T00%3A00%3A00.5Z",
                "2026-01-01T00:00:00.500000000Z",
            ),
        ] {
            assert_eq!(
                sessions(&format!("from={raw}")).unwrap(),
                format!("from={}", utc.replace(':', "%3A")),
                "{raw}"
            );
        }
    }

    #[test]
    fn unknown_repeated_and_invalid_parameters_are_named() {
        let message = |raw: &str| sessions(raw).unwrap_err().to_string();
        assert_eq!(
            message("_method=DELETE"),
            "Unknown query parameter `_method`: /sessions takes limit, offset, charger_id, from, to, status"
        );
        assert_eq!(
            schema()
                .canonical(RouteId::Chargers, "api_key=abc")
                .unwrap_err()
                .to_string(),
            "Unknown query parameter `api_key`: /chargers takes none"
        );
        assert_eq!(
            message("limit=1&limit=2"),
            "Query parameter `limit` is given more than once"
        );
        assert_eq!(
            message("limit=1&LIMIT=2"),
            "Unknown query parameter `LIMIT`: /sessions takes limit, offset, charger_id, from, to, status"
        );
        for (raw, name) in [
            ("limit=0", "limit"),
            ("limit=101", "limit"),
            ("limit=-1", "limit"),
            ("limit=+5", "limit"),
            ("limit=5.0", "limit"),
            ("limit=", "limit"),
            ("limit", "limit"),
            ("offset=2147483648", "offset"),
            ("offset=99999999999999999999", "offset"),
            ("charger_id=not-a-uuid", "charger_id"),
            (
                "charger_id={123e4567-e89b-12d3-a456-426614174000}",
                "charger_id",
            ),
            ("charger_id=123e4567e89b12d3a456426614174000", "charger_id"),
            ("from=2026-02-30", "from"),
            ("from=2026-13-01", "from"),
            ("from=1969-12-31", "from"),
            ("from=2026-01-01T24:00:00Z", "from"),
            ("from=2026-01-01T00:00:00", "from"),
            ("from=2026-01-01 00:00:00Z", "from"),
            ("to=2026-01-01T00:00:00%2B25:00", "to"),
            ("to=yesterday", "to"),
            ("status=a%20b", "status"),
            ("status=", "status"),
        ] {
            let err = sessions(raw).unwrap_err();
            assert!(
                matches!(&err, ParamError::Invalid { name: n, .. } if n == name),
                "{raw}: {err}"
            );
            assert!(
                err.to_string().contains(&format!("`{name}` must be")),
                "{err}"
            );
        }
        assert_eq!(sessions("limit=%zz"), Err(ParamError::Malformed));
        assert_eq!(sessions("limit=%FF"), Err(ParamError::Malformed));
    }

    #[test]
    fn a_secret_shaped_or_odd_name_is_not_repeated_back() {
        let secret = format!("joulo_{}", "A1".repeat(16));
        for raw in [format!("{secret}=1"), "a%0Ab=1".to_owned(), "x".repeat(40)] {
            let err = sessions(&raw).unwrap_err().to_string();
            assert!(err.starts_with("Unknown query parameter:"), "{err}");
            assert!(!err.contains(&secret));
        }
    }
}
