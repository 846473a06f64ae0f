//! Fuzzes what the gateway does to a request before it leaves the house: the
//! request target is split, the path normalised and matched, the query cleaned,
//! the headers parsed and stripped. Any panic, or a broken invariant, is a crash.
#![no_main]

use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::Method;
use joulo_gateway::{normalise_path, RouteId, RouteTable};
use joulo_gateway::{clean_query, clean_request_headers, is_credential_param, REDACTED};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // First line: the request target; the rest: header lines.
    let mut lines = text.split("\r\n");
    let target = lines.next().unwrap_or("");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));

    if let Ok(normal) = normalise_path(path) {
        assert_eq!(normalise_path(&normal).as_deref(), Ok(&*normal));
        assert!(!normal.contains("//") && !normal.contains("/../") && !normal.contains('%'));
    }
    let table = RouteTable::new(&[RouteId::AddCharger, RouteId::RebootCharger]);
    for method in [Method::GET, Method::POST] {
        if let Ok(route) = table.resolve(&method, path) {
            assert_eq!(normalise_path(path).as_deref(), Ok(route.path()));
        }
    }

    let cleaned = clean_query(query);
    for piece in cleaned.forwarded.split('&') {
        assert!(!is_credential_param(piece));
    }
    let logged = cleaned.logged().to_string();
    assert_eq!(logged.split('&').count(), query.split('&').count());
    if cleaned.removed > 0 {
        assert!(logged.contains(REDACTED));
    }

    let mut headers = HeaderMap::new();
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.trim().as_bytes()),
            HeaderValue::from_str(value.trim()),
        ) {
            headers.append(name, value);
        }
    }
    clean_request_headers(&mut headers);
    for gone in ["authorization", "cookie", "proxy-authorization", "connection", "host", "x-gateway-key"] {
        assert!(!headers.contains_key(gone));
    }
    assert!(headers.keys().all(|k| !k.as_str().starts_with("x-forwarded-")));
});
