//! A request's query as the access log shows it: what the route takes shown,
//! every other value redacted.

use std::fmt;

use super::{ParamSpec, decode, shown_name};
use crate::sanitize::{self, REDACTED};

/// A request's query as the access log shows it: the parameters the route
/// takes as sent, every other parameter's value replaced by [`REDACTED`]
/// (credentials, and whatever a misconfigured client put in a parameter the
/// gateway does not know). Written out only when a log line is.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LoggedQuery<'a> {
    /// The query as sent.
    pub raw: &'a str,
    /// The parameters whose values may be shown.
    pub shown: &'a [ParamSpec],
}

impl fmt::Display for LoggedQuery<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, piece) in self.raw.split('&').enumerate() {
            if i > 0 {
                f.write_str("&")?;
            }
            let (name, value) = piece
                .split_once('=')
                .map_or((piece, None), |(n, v)| (n, Some(v)));
            let shown = !sanitize::is_credential_param(piece)
                && decode(name).is_some_and(|n| self.shown.iter().any(|s| s.name == n));
            // An unknown name is shown only when it is short and plain: a
            // secret pasted as a name must not reach the log either.
            let name = if shown || shown_name(name).is_some() {
                name
            } else {
                REDACTED
            };
            match value {
                _ if shown => f.write_str(piece)?,
                Some(_) => write!(f, "{name}={REDACTED}")?,
                None => f.write_str(name)?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::tests::schema;
    use crate::routes::RouteId;

    #[test]
    fn the_logged_query_shows_only_what_the_route_takes() {
        let logged = LoggedQuery {
            raw: "limit=5&token=joulo_x&api_key=hunter2&flag&Access_Token=y&a%0Ab=1",
            shown: schema().params(RouteId::Sessions),
        }
        .to_string();
        assert_eq!(
            logged,
            "limit=5&token=[REDACTED]&api_key=[REDACTED]&flag&Access_Token=[REDACTED]\
             &[REDACTED]=[REDACTED]"
        );
    }
}
