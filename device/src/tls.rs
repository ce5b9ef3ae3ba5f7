//! Trust for `wss://` hubs: the system's root certificates, plus the CA of a
//! hub with a private or self-signed certificate (`--ca-cert`), or that
//! self-signed certificate itself, as curl's `--cacert` takes it.
//!
//! One [`ClientConfig`] is built per fleet and shared by every device, so ten
//! thousand devices read the system's roots once, not once per connection.
//!
//! Devices may also present a client certificate instead of a token
//! ([`Identity`]), with the device id as its subject's common name (what
//! the hub's `--tls-client-ca` checks).

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, WebPkiServerVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

/// A client configuration trusting the system's roots and every certificate
/// in the PEM file `extra_ca`, given with `flag`. The one trust of the
/// workspace's TLS clients: devices' `wss://` and the hub's `mqtts://`.
///
/// # Errors
/// `extra_ca` cannot be read, holds no certificate or a malformed one; or no
/// root is trusted at all. The message names `flag`.
pub fn client_config(extra_ca: Option<&Path>, flag: &str) -> anyhow::Result<Arc<ClientConfig>> {
    let mut roots = RootCertStore::empty();
    // A machine without a CA bundle can still trust an explicit --ca-cert,
    // so the system's roots are added as far as they load.
    let system = rustls_native_certs::load_native_certs();
    for error in &system.errors {
        tracing::debug!(%error, "loading the system's root certificates");
    }
    roots.add_parsable_certificates(system.certs);
    let mut given = Vec::new();
    if let Some(path) = extra_ca {
        let named = || format!("{flag} {}", path.display());
        for cert in read_certificates(path).with_context(named)? {
            roots
                .add(cert.clone())
                .context("not a usable CA certificate")
                .with_context(named)?;
            given.push(cert);
        }
    }
    if roots.is_empty() {
        bail!("no trusted root certificates: the system has none; pass the CA with {flag}");
    }
    let chained = WebPkiServerVerifier::builder(Arc::new(roots))
        .build()
        .context("the trusted certificates")?;
    let verifier = Arc::new(ChainedOrGiven { chained, given });
    Ok(Arc::new(
        ClientConfig::builder()
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth(),
    ))
}

/// Trusts what chains to the roots, and a hub presenting one of the
/// certificates given with `--ca-cert` as its own: the certificate that
/// `openssl req -x509` makes marks itself a CA, which webpki refuses as a
/// server's certificate (`CaUsedAsEndEntity`) where curl, OpenSSL and
/// Python accept it when told to trust it. Its dates were checked before
/// that refusal; its names are checked here, as for any certificate.
#[derive(Debug)]
struct ChainedOrGiven {
    chained: Arc<WebPkiServerVerifier>,
    given: Vec<CertificateDer<'static>>,
}

impl ServerCertVerifier for ChainedOrGiven {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let refusal = match self.chained.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Ok(verified) => return Ok(verified),
            Err(refusal) => refusal,
        };
        let given = self.given.iter().any(|cert| cert == end_entity);
        let ca_as_own = matches!(&refusal, rustls::Error::InvalidCertificate(cert) if is_ca_used_as_end_entity(cert));
        if !(given && ca_as_own) {
            return Err(refusal);
        }
        rustls::client::verify_server_name(&ParsedCertificate::try_from(end_entity)?, server_name)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chained.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chained.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.chained.supported_verify_schemes()
    }
}

/// Whether webpki refused a server's certificate for marking itself a CA
/// (as self-signed ones do).
pub(crate) fn is_ca_used_as_end_entity(refusal: &CertificateError) -> bool {
    match refusal {
        CertificateError::Other(other) => matches!(
            other.0.downcast_ref::<webpki::Error>(),
            Some(webpki::Error::CaUsedAsEndEntity)
        ),
        _ => false,
    }
}

/// A certificate chain and its private key, which a device presents to a
/// `wss://` hub instead of a token (the hub's `--tls-client-ca` must have
/// signed it; its subject's common name is the device id).
#[derive(Debug, Clone)]
pub struct Identity(Arc<CertifiedKey>);

impl Identity {
    /// A certificate chain and key from PEM files.
    ///
    /// # Errors
    /// A file cannot be read, or the key does not suit the certificate.
    pub fn from_pem_files(cert: &Path, key: &Path) -> anyhow::Result<Self> {
        let chain = read_certificates(cert)?;
        let key = PrivateKeyDer::from_pem_file(key)
            .with_context(|| format!("{} holds no usable PEM private key", key.display()))?;
        Identity::from_der(chain, key)
    }

    /// A certificate chain and key already parsed (a certificate issued in
    /// the process, as the simulator's are).
    ///
    /// # Errors
    /// The key does not suit the certificate.
    pub fn from_der(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> anyhow::Result<Self> {
        let provider = rustls::crypto::ring::default_provider();
        let key = CertifiedKey::from_der(chain, key, &provider)
            .context("the key does not suit the certificate")?;
        Ok(Identity(Arc::new(key)))
    }

    /// `base` (whom the hub must chain to) presenting this certificate.
    pub fn presented_with(&self, base: &ClientConfig) -> Arc<ClientConfig> {
        let mut config = base.clone();
        config.client_auth_cert_resolver = Arc::new(Present(Arc::clone(&self.0)));
        Arc::new(config)
    }

    /// The certificate chain, leaf first.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.0.cert
    }
}

/// Presents one certificate whatever the hub asks for.
#[derive(Debug)]
struct Present(Arc<CertifiedKey>);

impl ResolvesClientCert for Present {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.0))
    }

    fn has_certs(&self) -> bool {
        true
    }
}

fn read_certificates(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("cannot read {}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{} is not a PEM certificate file", path.display()))?;
    if certs.is_empty() {
        bail!("{} holds no PEM certificate", path.display());
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use rcgen::{CertificateParams, DnType, KeyPair};

    use super::*;

    /// A self-signed CA made with rcgen: `ca.pem` and `ca.key` in a folder.
    fn ca() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "test CA");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let key = KeyPair::generate().unwrap();
        std::fs::write(
            dir.path().join("ca.pem"),
            params.self_signed(&key).unwrap().pem(),
        )
        .unwrap();
        std::fs::write(dir.path().join("ca.key"), key.serialize_pem()).unwrap();
        dir
    }

    #[test]
    fn a_ca_file_is_read() {
        let dir = ca();
        let ca = dir.path().join("ca.pem");
        assert_eq!(read_certificates(&ca).unwrap().len(), 1);
        assert!(client_config(Some(&ca), "--ca-cert").is_ok());
    }

    #[test]
    fn a_file_without_certificates_is_refused_by_name() {
        let dir = ca();
        let not_pem = dir.path().join("notes.txt");
        std::fs::write(&not_pem, "no certificate here\n").unwrap();
        let err = client_config(Some(&not_pem), "--ca-cert").unwrap_err();
        assert!(format!("{err:#}").contains("notes.txt"), "{err:#}");
        let err = client_config(Some(&dir.path().join("missing.pem")), "--ca-cert").unwrap_err();
        assert!(format!("{err:#}").contains("cannot read"), "{err:#}");
        assert!(format!("{err:#}").starts_with("--ca-cert "), "{err:#}");
    }
}
