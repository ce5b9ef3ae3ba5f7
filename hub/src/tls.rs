//! TLS on the hub's own listener (`--tls-cert`, `--tls-key`): rustls with
//! the ring provider, HTTP/1.1 by ALPN, and a certificate that can be
//! reloaded from disk (SIGHUP) without dropping open connections: each new
//! connection takes the configuration current when it arrives.
//!
//! Every failure to load names the flag at fault, so a bad file is a clear
//! error at start; a reload that fails is logged and counted, and the
//! certificate already loaded stays.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, PoisonError, RwLock};

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

/// Where the certificate chain and its key are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM: the hub's certificate first, then any intermediates.
    pub cert: PathBuf,
    /// PEM: PKCS#8, RSA (PKCS#1) or EC (SEC1) private key.
    pub key: PathBuf,
}

/// Why the certificate or key could not be used; each names its flag.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("--tls-cert {path}: {reason}")]
    Cert { path: PathBuf, reason: String },
    #[error("--tls-key {path}: {reason}")]
    Key { path: PathBuf, reason: String },
    #[error("--tls-key {key} does not go with --tls-cert {cert}: {reason}")]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
}

fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let cert_error = |reason: String| TlsError::Cert {
        path: path.to_owned(),
        reason,
    };
    let chain = CertificateDer::pem_file_iter(path)
        .map_err(|err| cert_error(format!("cannot read it ({err})")))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| cert_error(format!("not a PEM certificate file ({err})")))?;
    if chain.is_empty() {
        return Err(cert_error("holds no PEM certificate".into()));
    }
    Ok(chain)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|err| TlsError::Key {
        path: path.to_owned(),
        reason: format!("no usable PEM private key ({err})"),
    })
}

/// Loads the files into a server configuration.
///
/// # Errors
/// A file cannot be read or parsed, or the key is not the certificate's.
pub fn load(files: &TlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    let chain = read_chain(&files.cert)?;
    let key = read_key(&files.key)?;
    let mut config = ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|err| TlsError::Mismatch {
            cert: files.cert.clone(),
            key: files.key.clone(),
            reason: err.to_string(),
        })?;
    // HTTP/2 for those who offer it (browsers: every tab's streams share
    // one connection), HTTP/1.1 otherwise and for WebSocket clients.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The hub's TLS: the configuration new connections get, and how it was
/// reloaded. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Tls(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    files: TlsFiles,
    current: RwLock<Arc<ServerConfig>>,
    reloads: AtomicU64,
    failed_reloads: AtomicU64,
}

impl Tls {
    /// Loads `files`.
    ///
    /// # Errors
    /// As [`load`].
    pub fn new(files: TlsFiles) -> Result<Self, TlsError> {
        let config = load(&files)?;
        Ok(Tls(Arc::new(Inner {
            files,
            current: RwLock::new(config),
            reloads: AtomicU64::new(0),
            failed_reloads: AtomicU64::new(0),
        })))
    }

    /// An acceptor with the current certificate.
    pub fn acceptor(&self) -> TlsAcceptor {
        let current = self
            .0
            .current
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        TlsAcceptor::from(Arc::clone(&current))
    }

    /// Reads the files again; on success new connections get the new
    /// certificate, on failure the old one stays. Either way it is logged
    /// and counted.
    pub fn reload(&self) {
        match load(&self.0.files) {
            Ok(config) => {
                *self
                    .0
                    .current
                    .write()
                    .unwrap_or_else(PoisonError::into_inner) = config;
                self.0.reloads.fetch_add(1, Relaxed);
                tracing::info!("reloaded the TLS certificate");
            }
            Err(err) => {
                self.0.failed_reloads.fetch_add(1, Relaxed);
                tracing::error!(error = %err, "TLS reload failed; the old certificate stays");
            }
        }
    }

    /// The counters in Prometheus text.
    pub fn render(&self) -> String {
        format!(
            "# HELP hub_tls_reloads_total Certificate reloads (SIGHUP), by result.\n# TYPE hub_tls_reloads_total counter\nhub_tls_reloads_total{{result=\"ok\"}} {}\nhub_tls_reloads_total{{result=\"failed\"}} {}\n",
            self.0.reloads.load(Relaxed),
            self.0.failed_reloads.load(Relaxed)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures/tls")
            .join(name)
    }

    fn files(cert: &str, key: &str) -> TlsFiles {
        TlsFiles {
            cert: fixture(cert),
            key: fixture(key),
        }
    }

    #[test]
    fn a_certificate_and_its_key_load() {
        assert!(load(&files("hub.pem", "hub.key")).is_ok());
    }

    #[test]
    fn every_bad_file_names_its_flag() {
        let missing = load(&files("nope.pem", "hub.key")).unwrap_err().to_string();
        assert!(missing.starts_with("--tls-cert"), "{missing}");
        let not_a_key = load(&files("hub.pem", "hub.pem")).unwrap_err().to_string();
        assert!(not_a_key.starts_with("--tls-key"), "{not_a_key}");
        let not_a_cert = load(&files("hub.key", "hub.key")).unwrap_err().to_string();
        assert!(not_a_cert.starts_with("--tls-cert"), "{not_a_cert}");
    }

    #[test]
    fn a_key_of_another_certificate_is_refused_naming_both() {
        // The CA's certificate with the hub's key.
        let err = load(&files("ca.pem", "hub.key")).unwrap_err().to_string();
        assert!(
            err.contains("--tls-key") && err.contains("--tls-cert"),
            "{err}"
        );
    }

    #[test]
    fn a_failed_reload_keeps_the_old_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("hub.pem");
        let key = dir.path().join("hub.key");
        std::fs::copy(fixture("hub.pem"), &cert).unwrap();
        std::fs::copy(fixture("hub.key"), &key).unwrap();
        let tls = Tls::new(TlsFiles {
            cert: cert.clone(),
            key,
        })
        .unwrap();
        std::fs::write(&cert, "not a certificate").unwrap();
        tls.reload();
        let _still_serving = tls.acceptor();
        let text = tls.render();
        assert!(text.contains("result=\"failed\"} 1"), "{text}");
        assert!(text.contains("result=\"ok\"} 0"), "{text}");
        std::fs::copy(fixture("hub.pem"), &cert).unwrap();
        tls.reload();
        assert!(tls.render().contains("result=\"ok\"} 1"));
    }
}
