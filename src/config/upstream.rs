//! The `[upstream]` table: where requests go (Joulo's API root), where the token
//! is read from, which trust anchors verify Joulo, and the bounds on each call.

use std::path::{Path, PathBuf};
use std::time::Duration;

use http::Uri;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde::Deserialize;

pub use super::choices::{Http2, TrustRoots};
use super::{CREDENTIAL_NAME, ConfigError, DOCKER_SECRET_PATH, FILE_LIMIT, defaults, positive};
use crate::files;

/// `[upstream]` as written; an unset key takes its default in [`validate`].
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpstream {
    /// The Joulo API root, as text so a bad one is reported with its key.
    pub(super) base_url: Option<String>,
    /// The token file, relative to the config file's folder; unset means the
    /// platform's secret location.
    pub(super) token_file: Option<PathBuf>,
    /// The name of the systemd credential that carries `token_file`'s content
    /// when the gateway runs under the unit (`LoadCredential=`).
    pub(super) token_credential: Option<String>,
    /// Extra trust anchors (PEM), relative to the config file's folder.
    pub(super) ca_file: Option<PathBuf>,
    /// Which store of trust anchors verifies Joulo.
    pub(super) roots: Option<TrustRoots>,
    /// Which HTTP version the gateway speaks to Joulo.
    pub(super) http2: Option<Http2>,
    /// Bound on TCP connect to Joulo.
    #[serde(default, with = "humantime_serde")]
    pub(super) connect_timeout: Option<Duration>,
    /// Bound on waiting for Joulo's response head.
    #[serde(default, with = "humantime_serde")]
    pub(super) timeout: Option<Duration>,
    /// How often the token file is checked for a rotation.
    #[serde(default, with = "humantime_serde")]
    pub(super) token_poll_interval: Option<Duration>,
}

/// The `[upstream]` table.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// The Joulo API root; an allowlisted route path is appended to it.
    pub base_url: Uri,
    /// The file holding the Joulo token, re-read when it changes.
    pub token_file: PathBuf,
    /// The file an admin writes the token into, when `token_file` is a copy
    /// of it (systemd's credential): what messages name.
    pub token_origin: Option<PathBuf>,
    /// Which store of trust anchors verifies Joulo's certificate.
    pub roots: TrustRoots,
    /// Whether calls to Joulo use HTTP/2, HTTP/1.1 or what TLS negotiates.
    pub http2: Http2,
    /// Trust anchors added to `roots` (a private CA, a test CA).
    pub extra_roots: Vec<CertificateDer<'static>>,
    /// Bound on TCP connect to the upstream.
    pub connect_timeout: Duration,
    /// Bound on waiting for the upstream's response head, TLS handshake included.
    pub timeout: Duration,
    /// How often the token file's metadata is checked for a rotation.
    pub token_poll_interval: Duration,
}

/// Checks `[upstream]`. Relative paths are taken from `base_dir`, the config
/// file's folder; without `token_file` the token comes from `credentials_dir`
/// (systemd's `$CREDENTIALS_DIRECTORY`) or else Docker's secret path.
pub(super) fn validate(
    raw: RawUpstream,
    path: &Path,
    base_dir: &Path,
    credentials_dir: Option<&Path>,
) -> Result<UpstreamConfig, ConfigError> {
    let base_text = raw
        .base_url
        .as_deref()
        .unwrap_or(defaults::BASE_URL)
        .trim_end_matches('/');
    let base_url = parse_base_url(base_text)
        .map_err(|m| ConfigError::invalid(path, "upstream.base_url", m))?;

    if let Some(name) = &raw.token_credential {
        // The name becomes a file name in the credentials directory.
        let plain = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
            && !name.starts_with('.');
        if !plain {
            return Err(ConfigError::invalid(
                path,
                "upstream.token_credential",
                "must be a credential name: up to 64 of A-Z a-z 0-9 _ - . (not starting with .)"
                    .into(),
            ));
        }
        if raw.token_file.is_none() {
            return Err(ConfigError::invalid(
                path,
                "upstream.token_credential",
                "needs upstream.token_file, the file the unit loads the credential from".into(),
            ));
        }
    }
    // Under systemd the credential is a private copy of token_file taken at
    // start; from a shell (`check`), token_file itself is read.
    let (token_file, token_origin) = match (raw.token_file, &raw.token_credential, credentials_dir)
    {
        (Some(p), Some(name), Some(dir)) => (dir.join(name), Some(base_dir.join(p))),
        (Some(p), _, _) => (base_dir.join(p), None),
        (None, _, Some(dir)) => (dir.join(CREDENTIAL_NAME), None),
        (None, _, None) => (PathBuf::from(DOCKER_SECRET_PATH), None),
    };

    let extra_roots = match raw.ca_file {
        Some(p) => load_roots(&base_dir.join(&p))
            .map_err(|m| ConfigError::invalid(path, "upstream.ca_file", m))?,
        None => Vec::new(),
    };

    let roots = raw.roots.unwrap_or(defaults::ROOTS);
    let http2 = raw.http2.unwrap_or(defaults::HTTP2);

    let connect_timeout = positive(
        raw.connect_timeout,
        defaults::CONNECT_TIMEOUT,
        "upstream.connect_timeout",
        path,
    )?;
    let timeout = positive(raw.timeout, defaults::TIMEOUT, "upstream.timeout", path)?;
    let token_poll_interval = positive(
        raw.token_poll_interval,
        defaults::TOKEN_POLL_INTERVAL,
        "upstream.token_poll_interval",
        path,
    )?;

    Ok(UpstreamConfig {
        base_url,
        token_file,
        token_origin,
        roots,
        http2,
        extra_roots,
        connect_timeout,
        timeout,
        token_poll_interval,
    })
}

/// The API root must be HTTPS without user information, query or fragment:
/// the token rides on every request to it, and route paths are appended to it.
fn parse_base_url(text: &str) -> Result<Uri, String> {
    let uri: Uri = text
        .parse()
        .map_err(|e| format!("`{text}` is not a URL: {e}"))?;
    if uri.scheme_str() != Some("https") {
        return Err(format!(
            "`{text}` must start with https://: the token is never sent in clear text"
        ));
    }
    let authority = uri
        .authority()
        .ok_or_else(|| format!("`{text}` has no host"))?;
    if authority.as_str().contains('@') {
        return Err("must not carry user information (user:password@)".to_owned());
    }
    if uri.query().is_some() || text.contains('#') {
        return Err(format!(
            "`{text}` must not have a query or fragment: routes are appended to it"
        ));
    }
    Ok(uri)
}

/// Reads the PEM certificates in `file` and checks each is usable as a trust
/// anchor now, so a bad `ca_file` stops the start rather than the first request.
pub(super) fn load_roots(file: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = files::read_regular(file, FILE_LIMIT)
        .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    // A CA others could edit could vouch for any server: they would get the token.
    files::check_not_writable_by_others(file)
        .map_err(|e| format!("cannot use {}: {e}", file.display()))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{} is not valid PEM: {e}", file.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no CERTIFICATE block", file.display()));
    }
    let mut store = rustls::RootCertStore::empty();
    for cert in &certs {
        store
            .add(cert.clone())
            .map_err(|e| format!("{} holds an unusable certificate: {e}", file.display()))?;
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::tests::parse;
    use super::*;

    #[test]
    fn token_file_relative_to_config_and_systemd_credentials() {
        let c = parse("[upstream]\ntoken_file = \"secrets/t\"").unwrap();
        assert_eq!(c.upstream.token_file, Path::new("/etc/jg/secrets/t"));
        let c = validate(
            RawUpstream::default(),
            Path::new("t"),
            Path::new("."),
            Some(Path::new("/run/cred")),
        )
        .unwrap();
        assert_eq!(c.token_file, Path::new("/run/cred/joulo_token"));
        assert_eq!(c.token_origin, None);
    }

    #[test]
    fn the_http_version_to_joulo_is_chosen_by_name() {
        assert_eq!(parse("").unwrap().upstream.http2, Http2::Auto);
        for (text, want) in [
            ("auto", Http2::Auto),
            ("always", Http2::Always),
            ("never", Http2::Never),
        ] {
            let c = parse(&format!("[upstream]\nhttp2 = \"{text}\"")).unwrap();
            assert_eq!(c.upstream.http2, want);
        }
        let err = parse("[upstream]\nhttp2 = \"sometimes\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("http2"), "{err}");
    }

    #[test]
    fn a_named_credential_stands_in_for_the_token_file_under_systemd() {
        let raw = || RawUpstream {
            token_file: Some("/etc/jg/joulo_token".into()),
            token_credential: Some("joulo_token".into()),
            ..RawUpstream::default()
        };
        let under_systemd = validate(
            raw(),
            Path::new("t"),
            Path::new("."),
            Some(Path::new("/run/credentials/jg.service")),
        )
        .unwrap();
        assert_eq!(
            under_systemd.token_file,
            Path::new("/run/credentials/jg.service/joulo_token")
        );
        assert_eq!(
            under_systemd.token_origin.as_deref(),
            Some(Path::new("/etc/jg/joulo_token"))
        );
        let from_a_shell = validate(raw(), Path::new("t"), Path::new("."), None).unwrap();
        assert_eq!(from_a_shell.token_file, Path::new("/etc/jg/joulo_token"));
        assert_eq!(from_a_shell.token_origin, None);

        for bad in ["", "../x", ".hidden", "a/b", "a b"] {
            let raw = RawUpstream {
                token_credential: Some(bad.into()),
                ..raw()
            };
            let err = validate(raw, Path::new("t"), Path::new("."), None)
                .unwrap_err()
                .to_string();
            assert!(err.contains("upstream.token_credential"), "{bad:?}: {err}");
        }
        let alone = RawUpstream {
            token_file: None,
            ..raw()
        };
        let err = validate(alone, Path::new("t"), Path::new("."), None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("needs upstream.token_file"), "{err}");
    }
}
