//! The JSON bodies of the opt-in POST routes: parsed against each route's
//! schema, checked field by field and serialised anew, so what reaches Joulo is
//! built by the gateway, not passed through.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::routes::RouteId;

/// `POST /chargers`: adds an OCPP charger.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct AddCharger {
    /// 1-100 characters, no control characters.
    nickname: String,
    /// Only `ocpp` is documented.
    connection_type: ConnectionType,
    /// `[A-Za-z0-9_-]{1,64}`, optional.
    #[serde(skip_serializing_if = "Option::is_none")]
    ocpp_identity: Option<String>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
enum ConnectionType {
    Ocpp,
}

/// `POST /chargers/reboot`: reboots a charger.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RebootCharger {
    /// The charger's UUID.
    charger_id: uuid::Uuid,
    /// `Soft` or `Hard`.
    #[serde(rename = "type")]
    kind: RebootKind,
}

#[derive(Debug, Deserialize, Serialize)]
enum RebootKind {
    Soft,
    Hard,
}

/// Why a POST body was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// Not JSON, or not the route's fields and types.
    #[error("Invalid request body for {route}: {problem}")]
    Schema {
        /// The route's method and path.
        route: &'static str,
        /// What was expected; never the client's values.
        problem: &'static str,
    },
    /// A field within its type but out of its documented range.
    #[error("Invalid request body for {route}: `{field}` must be {expected}")]
    Field {
        /// The route's method and path.
        route: &'static str,
        /// The field.
        field: &'static str,
        /// What it takes.
        expected: &'static str,
    },
}

/// The POST routes, each with its body schema. Every [`RouteId`] is matched
/// by name in [`PostBody::of`], so a new route cannot forward a body by default.
#[derive(Debug, Clone, Copy)]
enum PostBody {
    /// `POST /chargers`.
    AddCharger,
    /// `POST /chargers/reboot`.
    RebootCharger,
}

impl PostBody {
    /// The body schema of `route`; `None` for a route that takes no body.
    fn of(route: RouteId) -> Option<PostBody> {
        match route {
            RouteId::AddCharger => Some(PostBody::AddCharger),
            RouteId::RebootCharger => Some(PostBody::RebootCharger),
            RouteId::Chargers
            | RouteId::Sessions
            | RouteId::Energy
            | RouteId::ErePosition
            | RouteId::Me => None,
        }
    }

    /// The route's method and path, as errors name it.
    fn label(self) -> &'static str {
        match self {
            PostBody::AddCharger => "POST /chargers",
            PostBody::RebootCharger => "POST /chargers/reboot",
        }
    }

    /// What the body must look like; never the client's values.
    fn expected(self) -> &'static str {
        match self {
            PostBody::AddCharger => {
                "expected {\"nickname\": string, \"connection_type\": \"ocpp\", \"ocpp_identity\"?: string} and no other field"
            }
            PostBody::RebootCharger => {
                "expected {\"charger_id\": UUID, \"type\": \"Soft\" or \"Hard\"} and no other field"
            }
        }
    }
}

/// The body sent upstream for a POST route: the client's JSON parsed against
/// the route's schema and written anew, so no unknown field, duplicate key or
/// odd encoding reaches Joulo. `None` for routes that take no body.
pub(crate) fn canonical_body(route: RouteId, body: &[u8]) -> Result<Option<Bytes>, BodyError> {
    let Some(post) = PostBody::of(route) else {
        return Ok(None);
    };
    let label = post.label();
    // serde's own messages can quote the client's values; these never do.
    let schema = |e: serde_json::Error| BodyError::Schema {
        route: label,
        problem: match e.classify() {
            serde_json::error::Category::Data => post.expected(),
            _ => "not valid JSON",
        },
    };
    let field = |field, expected| BodyError::Field {
        route: label,
        field,
        expected,
    };
    let json = match post {
        PostBody::AddCharger => {
            let add: AddCharger = serde_json::from_slice(body).map_err(schema)?;
            let chars = add.nickname.chars().count();
            if !(1..=100).contains(&chars) || add.nickname.chars().any(char::is_control) {
                return Err(field(
                    "nickname",
                    "1-100 characters without control characters",
                ));
            }
            if add.ocpp_identity.as_ref().is_some_and(|id| {
                id.is_empty()
                    || id.len() > 64
                    || !id
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"_-".contains(&b))
            }) {
                return Err(field(
                    "ocpp_identity",
                    "1-64 characters of A-Z, a-z, 0-9, '_' or '-'",
                ));
            }
            serde_json::to_vec(&add)
        }
        PostBody::RebootCharger => {
            let reboot: RebootCharger = serde_json::from_slice(body).map_err(schema)?;
            serde_json::to_vec(&reboot)
        }
    }
    .expect("these types always serialise");
    Ok(Some(Bytes::from(json)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn post_bodies_are_checked_and_written_anew() {
        let add = canonical_body(
            RouteId::AddCharger,
            br#"{"connection_type":"ocpp", "nickname":"Garage"}"#,
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            &add[..],
            br#"{"nickname":"Garage","connection_type":"ocpp"}"#
        );
        let reboot = canonical_body(
            RouteId::RebootCharger,
            br#"{"type":"Soft","charger_id":"123E4567-E89B-12D3-A456-426614174000"}"#,
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            &reboot[..],
            br#"{"charger_id":"123e4567-e89b-12d3-a456-426614174000","type":"Soft"}"#
        );
        for (route, body) in [
            (RouteId::AddCharger, &br#"{"nickname":"x"}"#[..]),
            (
                RouteId::AddCharger,
                br#"{"nickname":"x","connection_type":"ocpp","admin":true}"#,
            ),
            (
                RouteId::AddCharger,
                br#"{"nickname":"x","nickname":"y","connection_type":"ocpp"}"#,
            ),
            (
                RouteId::AddCharger,
                br#"{"nickname":"","connection_type":"ocpp"}"#,
            ),
            (
                RouteId::AddCharger,
                br#"{"nickname":"x","connection_type":"ocpp","ocpp_identity":"a b"}"#,
            ),
            (
                RouteId::AddCharger,
                br#"{"nickname":"x","connection_type":"modbus"}"#,
            ),
            (
                RouteId::RebootCharger,
                br#"{"charger_id":"x","type":"Soft"}"#,
            ),
            (
                RouteId::RebootCharger,
                br#"{"charger_id":"123e4567-e89b-12d3-a456-426614174000","type":"Hardest"}"#,
            ),
            (RouteId::RebootCharger, b"not json"),
            (RouteId::RebootCharger, b""),
        ] {
            let err = canonical_body(route, body).unwrap_err().to_string();
            assert!(
                err.starts_with("Invalid request body for POST /chargers"),
                "{err}"
            );
            assert!(!err.contains("Hardest") && !err.contains("modbus"), "{err}");
        }
        assert_eq!(canonical_body(RouteId::Chargers, b"ignored"), Ok(None));
    }

    #[test]
    fn every_post_route_and_only_they_have_a_body_schema() {
        for route in RouteId::ALL {
            assert_eq!(
                PostBody::of(route).is_some(),
                route.method() == http::Method::POST,
                "{route:?}"
            );
        }
    }
}
