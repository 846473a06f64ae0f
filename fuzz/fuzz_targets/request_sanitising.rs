//! Fuzzes what the gateway does to a request before it leaves the house: the
//! request target is split, the path normalised and matched, the query checked
//! against each route's schema and the upstream request built. Any panic, or a
//! broken invariant, is a crash.
#![no_main]

use http::Method;
use joulo_gateway::{is_credential_param, normalise_path, Outbound, QuerySchema, RouteId, RouteTable};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // First line: the request target; anything after it is ignored.
    let target = text.split("\r\n").next().unwrap_or("");
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

    // The query is checked against each route's schema and written anew; a
    // credential parameter never survives into what is forwarded, and the
    // upstream request is built from the route and that query alone (the
    // device's header lines are never copied, so they are not an input here).
    let schema = QuerySchema::default();
    let outbound = Outbound::new(&"https://api.joulo.nl/functions/v1/api".parse().unwrap());
    for route in RouteId::ALL {
        if let Ok(canonical) = schema.canonical(route, query) {
            for piece in canonical.split('&') {
                assert!(!is_credential_param(piece));
            }
            let _ = outbound.request(route, &canonical, None);
        }
    }
});
