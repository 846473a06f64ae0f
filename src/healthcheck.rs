//! `joulo-gateway healthcheck`: asks a running gateway's `/healthz` once, the
//! way a container health check or a watchdog does, over HTTP or HTTPS. With a
//! config it asks the address, scheme and certificate that config serves;
//! with a URL, that URL, verified against a given CA.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Uri;
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use crate::config::{Config, ConfigError};
use crate::files::{self, FileError};

/// How long the whole check may take.
const TIMEOUT: Duration = Duration::from_secs(3);

/// The most a certificate file may hold.
const PEM_LIMIT: u64 = 1024 * 1024;

/// What to ask, and how to trust its certificate.
#[derive(Debug)]
pub struct Target {
    /// The health endpoint.
    pub url: Uri,
    /// How an `https` URL's certificate is checked.
    pub trust: Trust,
}

/// How the gateway's certificate is checked.
#[derive(Debug)]
pub enum Trust {
    /// Exactly this certificate must be presented: the one the config
    /// serves. A self-signed LAN certificate then needs no CA at all.
    Pinned(CertificateDer<'static>),
    /// A chain to one of these roots, for the URL's host name.
    Roots(Vec<CertificateDer<'static>>),
    /// Plain HTTP: nothing to check.
    None,
}

/// Why the check failed.
#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    /// The config could not be read.
    #[error(transparent)]
    Config(#[from] Box<ConfigError>),
    /// A certificate file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The certificate file.
        path: PathBuf,
        /// Why it could not be read.
        #[source]
        source: FileError,
    },
    /// A certificate file holds no usable certificate.
    #[error("{path} holds no PEM CERTIFICATE block")]
    NoCertificate {
        /// The certificate file.
        path: PathBuf,
    },
    /// The URL carries a user name or password.
    #[error("--url must not carry user information (user:password@)")]
    UserInfo,
    /// The URL is not http or https.
    #[error("{0}: only http:// and https:// URLs can be checked")]
    Scheme(Uri),
    /// No answer in time.
    #[error("{0} did not answer within 3 s")]
    Timeout(Uri),
    /// No connection, or TLS refused.
    #[error("cannot reach {url}: {source}")]
    Unreachable {
        /// The URL asked.
        url: Uri,
        /// The connection or TLS failure.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// An answer other than 200.
    #[error("{url} answered {status}")]
    Status {
        /// The URL asked.
        url: Uri,
        /// What it answered.
        status: http::StatusCode,
    },
    /// rustls refused the settings.
    #[error("TLS settings: {0}")]
    Tls(#[from] rustls::Error),
    /// `check --online` could not start its gateway.
    #[error("cannot start the gateway to ask Joulo: {0}")]
    Online(String),
}

impl Target {
    /// The health endpoint `config` serves: its listen address (a wildcard
    /// address asked on loopback), `https` when it has a certificate, and that
    /// certificate pinned.
    pub fn from_config(path: &Path) -> Result<Target, HealthError> {
        let config = Config::load(path).map_err(Box::new)?;
        let listen = config.server.listen;
        let ip = match listen.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        let addr = SocketAddr::new(ip, listen.port());
        let (scheme, trust) = match &config.server.tls {
            Some(files) => {
                let chain = read_certificates(&files.cert)?;
                let leaf = chain
                    .into_iter()
                    .next()
                    .expect("read_certificates: at least one");
                ("https", Trust::Pinned(leaf))
            }
            None => ("http", Trust::None),
        };
        let url = format!("{scheme}://{addr}/healthz")
            .parse()
            .expect("a socket address makes a URI");
        Ok(Target { url, trust })
    }

    /// `url`, its certificate checked against the CA in `ca` (or Mozilla's
    /// roots when none is given).
    pub fn from_url(url: Uri, ca: Option<&Path>) -> Result<Target, HealthError> {
        // A password in the URL would be printed with every error: refused
        // without repeating the URL.
        if url.authority().is_some_and(|a| a.as_str().contains('@')) {
            return Err(HealthError::UserInfo);
        }
        let trust = match (url.scheme_str(), ca) {
            (Some("http"), _) => Trust::None,
            (Some("https"), Some(ca)) => Trust::Roots(read_certificates(ca)?),
            (Some("https"), None) => Trust::Roots(Vec::new()),
            _ => return Err(HealthError::Scheme(url)),
        };
        Ok(Target { url, trust })
    }

    /// Asks once; `Ok` only for a 200 within 3 s.
    pub async fn check(&self) -> Result<(), HealthError> {
        let (status, _) = self.get(self.url.clone(), TIMEOUT).await?;
        if status != http::StatusCode::OK {
            return Err(HealthError::Status {
                url: self.url.clone(),
                status,
            });
        }
        Ok(())
    }

    /// The same gateway's `path` (such as `/status`), asked once the same
    /// way: its status and body, within 3 s.
    pub(crate) async fn get_path(
        &self,
        path: &str,
    ) -> Result<(http::StatusCode, Bytes), HealthError> {
        self.get_path_within(path, TIMEOUT).await
    }

    /// [`Target::get_path`] within `wait`.
    async fn get_path_within(
        &self,
        path: &str,
        wait: Duration,
    ) -> Result<(http::StatusCode, Bytes), HealthError> {
        let mut parts = self.url.clone().into_parts();
        parts.path_and_query = Some(path.parse().expect("a fixed path parses"));
        let url = Uri::from_parts(parts).expect("the health URL with another path");
        self.get(url, wait).await
    }

    /// One GET of `url` within `wait`: the status and the body.
    async fn get(
        &self,
        url: Uri,
        wait: Duration,
    ) -> Result<(http::StatusCode, Bytes), HealthError> {
        use http_body_util::BodyExt as _;
        let tls = self.tls_config()?;
        let mut tcp = HttpConnector::new();
        tcp.enforce_http(false);
        tcp.set_connect_timeout(Some(TIMEOUT));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(tcp);
        let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build(https);
        let request = http::Request::get(url.clone())
            .body(Empty::new())
            .expect("a GET with a valid URI");
        let unreachable =
            |source: Box<dyn std::error::Error + Send + Sync>| HealthError::Unreachable {
                url: url.clone(),
                source,
            };
        let exchange = async {
            let response = client
                .request(request)
                .await
                .map_err(|e| unreachable(Box::new(e)))?;
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| unreachable(Box::new(e)))?
                .to_bytes();
            Ok((status, body))
        };
        tokio::time::timeout(wait, exchange)
            .await
            .map_err(|_| HealthError::Timeout(url.clone()))?
    }

    fn tls_config(&self) -> Result<rustls::ClientConfig, HealthError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?;
        let config = match &self.trust {
            Trust::Pinned(leaf) => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(PinnedCertificate {
                    leaf: leaf.clone(),
                    provider,
                }))
                .with_no_client_auth(),
            Trust::Roots(roots) => {
                let mut store = rustls::RootCertStore::empty();
                if roots.is_empty() {
                    store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
                }
                for root in roots {
                    store.add(root.clone())?;
                }
                builder.with_root_certificates(store).with_no_client_auth()
            }
            Trust::None => builder
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth(),
        };
        Ok(config)
    }
}

/// `check --online`: one `GET /me` to Joulo through the gateway's own request
/// path (a gateway built from `config`, serving only this process on a
/// loopback port, with no device keys), so the token is injected exactly as
/// when serving. Returns the status the gateway answered; the body is
/// dropped unread. The call counts against the token's budget like any other.
pub async fn ask_joulo_once(config: &Config) -> Result<http::StatusCode, HealthError> {
    let mut config = config.clone();
    config.server.listen = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0);
    config.server.tls = None;
    config.access.clients.clear();
    config.access.keyless = false;
    config.access.allow = vec!["127.0.0.1/32".parse().expect("an address parses")];
    config.access.local = config.access.allow.clone();
    let gateway =
        crate::gateway::Gateway::build(&config).map_err(|e| HealthError::Online(e.to_string()))?;
    let listener = tokio::net::TcpListener::bind(config.server.listen)
        .await
        .map_err(|e| HealthError::Online(e.to_string()))?;
    let addr = listener
        .local_addr()
        .map_err(|e| HealthError::Online(e.to_string()))?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(gateway.serve(listener, async {
        let _ = stopped.await;
    }));
    let target = Target {
        url: format!("http://{addr}/healthz")
            .parse()
            .expect("a socket address makes a URI"),
        trust: Trust::None,
    };
    // Joulo's own answer may take up to the upstream timeout.
    let wait = config.upstream.timeout + TIMEOUT;
    let answer = tokio::time::timeout(wait, target.get_path_within("/me", wait)).await;
    let _ = stop.send(());
    let _ = served.await;
    match answer {
        Ok(answer) => answer.map(|(status, _)| status),
        Err(_) => Err(HealthError::Timeout(target.url)),
    }
}

/// The certificates in a PEM file, at least one.
fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, HealthError> {
    let pem = files::read_regular(path, PEM_LIMIT).map_err(|source| HealthError::Read {
        path: path.to_owned(),
        source,
    })?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(HealthError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// Accepts exactly one certificate, with the handshake's signatures checked as
/// usual: what a health check of the gateway's own listener needs, since it
/// knows the certificate the gateway serves and its LAN name may be anything.
#[derive(Debug)]
struct PinnedCertificate {
    /// The certificate the server must present.
    leaf: CertificateDer<'static>,
    /// The signature algorithms to check the handshake with.
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for PinnedCertificate {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.leaf.as_ref() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
