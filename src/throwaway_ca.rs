//! A throwaway certificate authority made in memory: the demo's simulated Joulo
//! API and the tests use it to exercise the same verified-TLS path as the real
//! api.joulo.nl. Below both the demo and `lan_tls` (whose tests use it).

use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A CA generated in memory and a server certificate it signed.
pub struct DemoCa {
    /// The CA certificate, PEM: what `upstream.ca_file` should hold.
    pub ca_pem: String,
    /// The CA certificate, DER: a trust anchor for a client.
    pub ca_der: CertificateDer<'static>,
    /// The signed server certificate, PEM (for `server.tls_cert`).
    pub leaf_cert_pem: String,
    /// Its private key, PEM (for `server.tls_key`).
    pub leaf_key_pem: String,
    /// TLS settings for a server presenting the signed certificate, offering h2
    /// and http/1.1 by ALPN.
    pub server_config: Arc<rustls::ServerConfig>,
}

/// Why the CA could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// Key or certificate generation failed.
    #[error("cannot generate a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// rustls refused the generated certificate.
    #[error("cannot use the generated certificate: {0}")]
    Tls(#[from] rustls::Error),
}

impl DemoCa {
    /// A new CA and a server certificate for `names` (DNS names or IP literals).
    pub fn generate(names: &[&str]) -> Result<DemoCa, CaError> {
        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "joulo-gateway throwaway CA");
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca_params.self_signed(&ca_key)?;

        let leaf_key = KeyPair::generate()?;
        let mut leaf_params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
        leaf_params.distinguished_name.push(
            DnType::CommonName,
            names.first().copied().unwrap_or("localhost"),
        );
        let leaf_cert = leaf_params.signed_by(&leaf_key, &ca_cert, &ca_key)?;

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut server_config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf_cert.der().clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
            )?;
        server_config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(DemoCa {
            leaf_cert_pem: leaf_cert.pem(),
            leaf_key_pem: leaf_key.serialize_pem(),
            ca_pem: ca_cert.pem(),
            ca_der: ca_cert.der().clone(),
            server_config: Arc::new(server_config),
        })
    }
}
