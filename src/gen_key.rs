//! `joulo-gateway gen-key`: a new device key, shown once, and the
//! `[[clients]]` entry that holds only its hash.

use crate::access::{Scope, generate_key, key_sha256_hex, valid_device_name};

/// Why `gen-key` refused its arguments.
#[derive(Debug, thiserror::Error)]
pub enum GenKeyError {
    /// The name would not be accepted in `[[clients]]`.
    #[error("--name `{0}`: {rule}", rule = crate::access::DEVICE_NAME_RULE)]
    Name(String),
    /// An unknown scope.
    #[error(
        "--scopes: `{0}` is not a scope; known: chargers:read, chargers:write, sessions:read, energy:read, gateway:read"
    )]
    Scope(String),
}

/// What `joulo-gateway gen-key` prints: a new key, shown once, and the
/// `[[clients]]` entry that holds only its hash.
pub fn gen_key_text(name: &str, scopes: &[String]) -> Result<String, GenKeyError> {
    if !valid_device_name(name) {
        return Err(GenKeyError::Name(name.to_owned()));
    }
    let mut parsed: Vec<Scope> = Vec::new();
    for scope in scopes.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
        let scope = Scope::parse(scope).ok_or_else(|| GenKeyError::Scope(scope.to_owned()))?;
        if !parsed.contains(&scope) {
            parsed.push(scope);
        }
    }
    let key = generate_key();
    let scope_list = parsed
        .iter()
        .map(|s| format!("\"{}\"", s.as_str()))
        .collect::<Vec<_>>()
        .join(", ");
    Ok(format!(
        "Key for \"{name}\" (shown once; the gateway keeps only its hash):\n\n  {key}\n\n\
         Give it to the device (Home Assistant: secrets.yaml, used with authentication: basic),\n\
         then add this to gateway.toml and reload the gateway (systemctl reload joulo-gateway, or SIGHUP);\n\
         `joulo-gateway device add NAME` does all of this for you, no reload needed:\n\n\
         [[clients]]\nname = \"{name}\"\nkey_sha256 = \"{hash}\"\nscopes = [{scope_list}]\n",
        hash = key_sha256_hex(&key),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::{AccessPolicy, Caller, KEY_PREFIX};
    use crate::routes::RouteId;
    use http::Request;
    use http::request::Parts;
    use std::net::IpAddr;

    fn parts(host: Option<&str>, headers: &[(&str, &str)]) -> Parts {
        let mut request = Request::get("/chargers");
        if let Some(host) = host {
            request = request.header("host", host);
        }
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        request.body(()).unwrap().into_parts().0
    }

    #[test]
    fn gen_key_round_trips_through_the_config() {
        let text = gen_key_text(
            "homeassistant",
            &["chargers:read".into(), "energy:read".into()],
        )
        .unwrap();
        let key = text
            .split_whitespace()
            .find(|w| w.starts_with(KEY_PREFIX))
            .unwrap()
            .to_owned();
        let toml_part = &text[text.find("[[clients]]").unwrap()..];
        let config =
            crate::config::Config::from_toml(toml_part, std::path::Path::new("g.toml")).unwrap();
        let p = AccessPolicy::new(config.access, false);
        let ip: IpAddr = "192.168.1.5".parse().unwrap();
        let bearer = format!("Bearer {key}");
        let caller = p
            .admit(ip, &parts(Some("gw.lan"), &[("authorization", &bearer)]))
            .unwrap();
        assert_eq!(caller, Caller::Device("homeassistant".into()));
        assert!(p.check_scope(&caller, RouteId::Energy).is_ok());
        assert!(p.check_scope(&caller, RouteId::Sessions).is_err());
        assert!(gen_key_text("bad name", &[]).is_err());
        assert!(gen_key_text("ok", &["admin".into()]).is_err());
        let text = gen_key_text("prometheus", &["gateway:read".into()]).unwrap();
        assert!(text.contains("scopes = [\"gateway:read\"]"), "{text}");
        let toml_part = &text[text.find("[[clients]]").unwrap()..];
        let config =
            crate::config::Config::from_toml(toml_part, std::path::Path::new("g.toml")).unwrap();
        assert_eq!(config.access.clients[0].scopes, [Scope::GatewayRead]);
    }
}
