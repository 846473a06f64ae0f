//! The values an enumerated `[upstream]` key can take: below both the
//! defaults and the section that reads them, so neither needs the other's
//! types.

use serde::Deserialize;

/// Which HTTP version the gateway speaks to Joulo, offered in TLS (ALPN).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Http2 {
    /// Offer both; the upstream picks (Joulo's servers pick HTTP/2).
    Auto,
    /// HTTP/2 only: the calls share a few connections as streams.
    Always,
    /// HTTP/1.1 only: a pool of keep-alive connections, one call on each at
    /// a time. Cheaper per call than HTTP/2 (no HPACK, no stream machinery).
    Never,
}

/// Where the trust anchors for Joulo's certificate come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrustRoots {
    /// Mozilla's root list compiled into the binary (webpki-roots): the same
    /// on every platform, needing no CA bundle in the container or OS.
    Webpki,
    /// The operating system's store (Debian's ca-certificates), read at start:
    /// its updates, distrust included, apply at the next start.
    System,
    /// Both: a certificate either store accepts.
    Both,
}
