//! TLS on the hub's own listener (`--tls-cert`, `--tls-key`): rustls with
//! the ring provider, HTTP/1.1 by ALPN, and a certificate that can be
//! reloaded from disk (SIGHUP) without dropping open connections: each new
//! connection takes the configuration current when it arrives.
//!
//! Every failure to load names the flag at fault, so a bad file is a clear
//! error at start; a reload that fails is logged and counted, and the
//! certificate already loaded stays.
//!
//! With `--tls-client-ca`, devices may present a certificate that CA signed
//! instead of a token: the handshake verifies it, and its subject's common
//! name is the device id it may use (`client_identity`). A client without
//! a certificate is let through, to present a token; one with a
//! certificate from another CA fails the handshake.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, PoisonError, RwLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio_rustls::TlsAcceptor;

/// Where the certificate chain and its key are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM: the hub's certificate first, then any intermediates.
    pub cert: PathBuf,
    /// PEM: PKCS#8, RSA (PKCS#1) or EC (SEC1) private key.
    pub key: PathBuf,
    /// PEM: the CA (or CAs) whose device certificates are accepted.
    pub client_ca: Option<PathBuf>,
}

/// Why the certificate or key could not be used; each names its flag.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("--tls-cert {path}: {reason}")]
    Cert { path: PathBuf, reason: String },
    #[error("--tls-key {path}: {reason}")]
    Key { path: PathBuf, reason: String },
    #[error("--tls-client-ca {path}: {reason}")]
    ClientCa { path: PathBuf, reason: String },
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

/// The verifier of device certificates signed by the CAs in `path`; a
/// client without a certificate passes, to authenticate by token.
fn client_verifier(
    path: &Path,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TlsError> {
    let ca_error = |reason: String| TlsError::ClientCa {
        path: path.to_owned(),
        reason,
    };
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path)
        .map_err(|err| ca_error(format!("cannot read it ({err})")))?
    {
        let cert = cert.map_err(|err| ca_error(format!("not a PEM certificate file ({err})")))?;
        roots
            .add(cert)
            .map_err(|err| ca_error(format!("not a usable CA certificate ({err})")))?;
    }
    if roots.is_empty() {
        return Err(ca_error("holds no PEM certificate".into()));
    }
    WebPkiClientVerifier::builder(Arc::new(roots))
        .allow_unauthenticated()
        .build()
        .map_err(|err| ca_error(err.to_string()))
}

/// When a certificate lapses, as Unix seconds (`notAfter`).
fn expiry(cert: &CertificateDer<'_>) -> Option<i64> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).ok()?;
    Some(parsed.validity().not_after.timestamp())
}

/// The device a connection's verified client certificate names: every
/// request on that connection carries it (an extension).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIdentity(pub Arc<str>);

/// The device id a verified client certificate stands for: its subject's
/// common name (`CN`).
pub fn client_identity(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).ok()?;
    let name = parsed.subject().iter_common_name().next()?;
    name.as_str().ok().map(str::to_owned)
}

/// A loaded configuration and its certificate's expiry.
struct Loaded {
    config: Arc<ServerConfig>,
    expires: i64,
}

/// Loads the files into a server configuration.
///
/// # Errors
/// A file cannot be read or parsed, or the key is not the certificate's.
pub fn load(files: &TlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    load_all(files).map(|loaded| loaded.config)
}

fn load_all(files: &TlsFiles) -> Result<Loaded, TlsError> {
    let chain = read_chain(&files.cert)?;
    let expires = expiry(&chain[0]).ok_or_else(|| TlsError::Cert {
        path: files.cert.clone(),
        reason: "its first certificate is not X.509".into(),
    })?;
    let key = read_key(&files.key)?;
    let builder = ServerConfig::builder();
    let builder = match &files.client_ca {
        Some(path) => builder.with_client_cert_verifier(client_verifier(path)?),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|err| TlsError::Mismatch {
            cert: files.cert.clone(),
            key: files.key.clone(),
            reason: err.to_string(),
        })?;
    // HTTP/2 for those who offer it (browsers: every tab's streams share
    // one connection), HTTP/1.1 otherwise and for WebSocket clients.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Loaded {
        config: Arc::new(config),
        expires,
    })
}

/// The hub's TLS: the configuration new connections get, and how it was
/// reloaded. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Tls(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    files: TlsFiles,
    current: RwLock<Arc<ServerConfig>>,
    /// The current certificate's `notAfter`, Unix seconds.
    expires: AtomicI64,
    reloads: AtomicU64,
    failed_reloads: AtomicU64,
    /// Handshakes that failed, by [`HandshakeFailure`].
    failed_handshakes: [AtomicU64; HandshakeFailure::ALL.len()],
}

/// Why a TLS handshake failed, as `/metrics` counts it: most often the
/// client does not trust the hub's certificate, which only its alert tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// The client refused the hub's certificate (its alert: unknown CA,
    /// bad or expired certificate).
    Untrusted,
    /// The client's own certificate was refused (`--tls-client-ca`).
    ClientCertificate,
    /// No handshake within the header deadline.
    Timeout,
    /// Anything else: not TLS, no common version or cipher, a closed
    /// connection.
    Other,
}

impl HandshakeFailure {
    const ALL: [HandshakeFailure; 4] = [
        HandshakeFailure::Untrusted,
        HandshakeFailure::ClientCertificate,
        HandshakeFailure::Timeout,
        HandshakeFailure::Other,
    ];

    pub fn label(self) -> &'static str {
        match self {
            HandshakeFailure::Untrusted => "untrusted_by_client",
            HandshakeFailure::ClientCertificate => "client_certificate",
            HandshakeFailure::Timeout => "timeout",
            HandshakeFailure::Other => "other",
        }
    }

    /// The failure an accept's error is (tokio-rustls gives rustls's
    /// error inside an I/O error).
    pub fn of(err: &std::io::Error) -> HandshakeFailure {
        use rustls::{AlertDescription as Alert, Error};
        match err
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<Error>())
        {
            Some(Error::AlertReceived(
                Alert::UnknownCA
                | Alert::BadCertificate
                | Alert::CertificateUnknown
                | Alert::CertificateExpired
                | Alert::UnsupportedCertificate,
            )) => HandshakeFailure::Untrusted,
            Some(Error::InvalidCertificate(_) | Error::NoCertificatesPresented) => {
                HandshakeFailure::ClientCertificate
            }
            _ => HandshakeFailure::Other,
        }
    }
}

impl Tls {
    /// Loads `files`.
    ///
    /// # Errors
    /// As [`load`].
    pub fn new(files: TlsFiles) -> Result<Self, TlsError> {
        let loaded = load_all(&files)?;
        Ok(Tls(Arc::new(Inner {
            files,
            current: RwLock::new(loaded.config),
            expires: AtomicI64::new(loaded.expires),
            reloads: AtomicU64::new(0),
            failed_reloads: AtomicU64::new(0),
            failed_handshakes: Default::default(),
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
        match load_all(&self.0.files) {
            Ok(loaded) => {
                *self
                    .0
                    .current
                    .write()
                    .unwrap_or_else(PoisonError::into_inner) = loaded.config;
                self.0.expires.store(loaded.expires, Relaxed);
                self.0.reloads.fetch_add(1, Relaxed);
                tracing::info!("reloaded the TLS certificate");
            }
            Err(err) => {
                self.0.failed_reloads.fetch_add(1, Relaxed);
                tracing::error!(error = %err, "TLS reload failed; the old certificate stays");
            }
        }
    }

    /// Counts a failed handshake.
    pub fn handshake_failed(&self, why: HandshakeFailure) {
        self.0.failed_handshakes[why as usize].fetch_add(1, Relaxed);
    }

    /// The counters in Prometheus text.
    pub fn render(&self) -> String {
        let mut failures = String::from(
            "# HELP hub_tls_handshake_failures_total TLS handshakes that failed, by reason.\n# TYPE hub_tls_handshake_failures_total counter\n",
        );
        for why in HandshakeFailure::ALL {
            failures.push_str(&format!(
                "hub_tls_handshake_failures_total{{reason=\"{}\"}} {}\n",
                why.label(),
                self.0.failed_handshakes[why as usize].load(Relaxed)
            ));
        }
        failures
            + &format!(
                "# HELP hub_tls_reloads_total Certificate reloads (SIGHUP), by result.\n# TYPE hub_tls_reloads_total counter\nhub_tls_reloads_total{{result=\"ok\"}} {}\nhub_tls_reloads_total{{result=\"failed\"}} {}\n\
             # HELP hub_tls_cert_expiry_seconds When the certificate served now lapses (notAfter), as Unix time.\n# TYPE hub_tls_cert_expiry_seconds gauge\nhub_tls_cert_expiry_seconds {}\n",
                self.0.reloads.load(Relaxed),
                self.0.failed_reloads.load(Relaxed),
                self.0.expires.load(Relaxed)
            )
    }
}

#[cfg(test)]
mod tests {
    use std::sync::LazyLock;

    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

    use super::*;

    /// 2100-01-01T00:00:00Z, when the hub's test certificate lapses.
    const NOT_AFTER: i64 = 4_102_444_800;

    /// Made once with rcgen: a CA (`ca.pem`, `ca.key`) and the hub's
    /// certificate it signed (`hub.pem`, `hub.key`, CN `localhost`). A
    /// static is never dropped: the folder outlives the tests, a few KB.
    static CERTS: LazyLock<tempfile::TempDir> = LazyLock::new(|| {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: String| std::fs::write(dir.path().join(name), text).unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.distinguished_name.push(DnType::CommonName, "test CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_key = KeyPair::generate().unwrap();
        write("ca.pem", ca.self_signed(&ca_key).unwrap().pem());
        write("ca.key", ca_key.serialize_pem());
        let issuer = Issuer::new(ca, ca_key);
        let mut hub = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        hub.distinguished_name.push(DnType::CommonName, "localhost");
        hub.not_after = rcgen::date_time_ymd(2100, 1, 1);
        let hub_key = KeyPair::generate().unwrap();
        write("hub.pem", hub.signed_by(&hub_key, &issuer).unwrap().pem());
        write("hub.key", hub_key.serialize_pem());
        dir
    });

    fn fixture(name: &str) -> PathBuf {
        CERTS.path().join(name)
    }

    fn files(cert: &str, key: &str) -> TlsFiles {
        TlsFiles {
            cert: fixture(cert),
            key: fixture(key),
            client_ca: None,
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
    fn the_certificates_expiry_is_shown() {
        let tls = Tls::new(files("hub.pem", "hub.key")).unwrap();
        let text = tls.render();
        let expiry: i64 = text
            .lines()
            .find_map(|line| line.strip_prefix("hub_tls_cert_expiry_seconds "))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(expiry, NOT_AFTER);
    }

    #[test]
    fn a_client_ca_loads_and_a_bad_one_names_its_flag() {
        let with_ca = |ca: &str| TlsFiles {
            client_ca: Some(fixture(ca)),
            ..files("hub.pem", "hub.key")
        };
        assert!(load(&with_ca("ca.pem")).is_ok());
        for bad in ["hub.key", "nope.pem"] {
            let err = load(&with_ca(bad)).unwrap_err().to_string();
            assert!(err.starts_with("--tls-client-ca"), "{err}");
        }
    }

    #[test]
    fn a_client_certificate_stands_for_its_common_name() {
        let cert = CertificateDer::from_pem_file(fixture("hub.pem")).unwrap();
        assert_eq!(client_identity(&cert).as_deref(), Some("localhost"));
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
            client_ca: None,
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
