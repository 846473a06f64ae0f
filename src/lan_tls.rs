//! HTTPS for devices on the LAN: the gateway's own certificate and key, served
//! with rustls (ALPN h2 and http/1.1), swapped in without dropping connections
//! when the files change or on SIGHUP.

use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use secrecy::zeroize::Zeroizing;
use tokio_rustls::TlsAcceptor;
use tracing::{info, warn};

use crate::config::TlsFiles;
use crate::files::{self, FileError};
use crate::sync::{read_unpoisoned, write_unpoisoned};
use crate::watch::{Hangups, LoadedState};

/// The most a certificate chain or key file may hold; real ones are a few KiB.
const PEM_FILE_LIMIT: u64 = 1024 * 1024;

/// Why the certificate or key could not be used. Never quotes the key.
#[derive(Debug, thiserror::Error)]
pub enum LanTlsError {
    /// A file is missing, unreadable, not a regular file or far too long.
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: FileError,
    },
    /// A file holds no usable PEM block of the expected kind.
    #[error("{path}: {problem}")]
    Invalid { path: String, problem: String },
    /// rustls refused the pair (for example, a key that does not match).
    #[error("server.tls_cert and server.tls_key cannot be used together: {0}")]
    Tls(#[from] rustls::Error),
}

/// The LAN listener's TLS settings, replaceable while connections run.
#[derive(Debug)]
pub(crate) struct LanTls {
    /// Where the certificate and key are read from.
    files: TlsFiles,
    /// The settings new handshakes use; connections keep the ones they began with.
    current: RwLock<Arc<rustls::ServerConfig>>,
    /// The files' state just before they were last read, for the watcher.
    loaded: LoadedState,
}

impl LanTls {
    /// Reads and checks the certificate and key.
    pub(crate) fn load(files: &TlsFiles) -> Result<LanTls, LanTlsError> {
        let loaded = LoadedState::default();
        loaded.record(&[&files.cert, &files.key]);
        Ok(LanTls {
            files: files.clone(),
            current: RwLock::new(build(files)?),
            loaded,
        })
    }

    /// An acceptor with the current certificate.
    pub(crate) fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(read_unpoisoned(&self.current).clone())
    }

    /// Re-reads the files; on failure the previous certificate stays in use.
    pub(crate) fn reload(&self) -> Result<(), LanTlsError> {
        self.loaded.record(&[&self.files.cert, &self.files.key]);
        let fresh = build(&self.files)?;
        *write_unpoisoned(&self.current) = fresh;
        Ok(())
    }

    /// Reloads on SIGHUP (`hangups`) or when either file changes, until
    /// `shutdown` resolves.
    pub(crate) fn watch(
        self: Arc<Self>,
        interval: Duration,
        hangups: Hangups,
        shutdown: impl Future<Output = ()>,
    ) -> impl Future<Output = ()> {
        let paths = vec![self.files.cert.clone(), self.files.key.clone()];
        let loaded = self.loaded.baseline();
        crate::watch::watch_files(paths, loaded, interval, hangups, shutdown, move |trigger| {
            match self.reload() {
                Ok(()) => info!(trigger = trigger.as_str(), "LAN TLS certificate reloaded"),
                Err(e) => {
                    warn!(error = %e, "LAN TLS certificate not reloaded; the previous one stays in use")
                }
            }
        })
    }
}

fn build(files: &TlsFiles) -> Result<Arc<rustls::ServerConfig>, LanTlsError> {
    let cert_pem = read(&files.cert)?;
    let certs = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(&files.cert, format!("not valid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(invalid(
            &files.cert,
            "holds no CERTIFICATE block".to_owned(),
        ));
    }
    // A private key: held to the token's standard (ssh's), and zeroized on
    // drop, as `read` returns everything.
    let key_pem = files::read_private(
        &files.key,
        PEM_FILE_LIMIT,
        files::platform_protected(&files.key),
    )
    .map(|(pem, _)| pem)
    .map_err(|source| LanTlsError::Read {
        path: files.key.display().to_string(),
        source,
    })?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|_| invalid(&files.key, "holds no usable PRIVATE KEY block".to_owned()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn read(path: &Path) -> Result<Zeroizing<Vec<u8>>, LanTlsError> {
    files::read_regular(path, PEM_FILE_LIMIT).map_err(|source| LanTlsError::Read {
        path: path.display().to_string(),
        source,
    })
}

fn invalid(path: &Path, problem: String) -> LanTlsError {
    LanTlsError::Invalid {
        path: path.display().to_string(),
        problem,
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[test]
    fn a_key_that_is_a_fifo_is_refused_and_named() {
        let ca = crate::throwaway_ca::DemoCa::generate(&["localhost"]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let files = TlsFiles {
            cert: dir.path().join("gateway.crt"),
            key: dir.path().join("gateway.key"),
        };
        std::fs::write(&files.cert, &ca.leaf_cert_pem).unwrap();
        rustix::fs::mkfifoat(rustix::fs::CWD, &files.key, rustix::fs::Mode::from(0o600)).unwrap();
        let err = LanTls::load(&files).unwrap_err().to_string();
        assert!(
            err.contains("gateway.key")
                && err.contains("is a FIFO (named pipe), not a regular file"),
            "{err}"
        );
    }
}
