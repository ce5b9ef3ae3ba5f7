//! `mqtts://`: whom the bridge trusts to be the broker. The system's root
//! certificates, plus a private CA's (`--mqtt-ca-cert`), with rustls on the
//! ring provider like the rest of the hub.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use rustls::{ClientConfig, RootCertStore};

use crate::invalid::Invalid;

/// A client configuration trusting the system's roots and every
/// certificate in the PEM file `extra_ca`.
///
/// # Errors
/// `extra_ca` cannot be read or holds no usable certificate, or no root is
/// trusted at all; the message names `--mqtt-ca-cert`.
pub fn client_config(extra_ca: Option<&Path>) -> Result<Arc<ClientConfig>, Invalid> {
    let mut roots = RootCertStore::empty();
    // A machine without a CA bundle can still trust an explicit CA.
    let system = rustls_native_certs::load_native_certs();
    for error in &system.errors {
        tracing::debug!(%error, "loading the system's root certificates");
    }
    roots.add_parsable_certificates(system.certs);
    if let Some(path) = extra_ca {
        let shown = path.display();
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .and_then(Iterator::collect)
            .map_err(|err| format!("--mqtt-ca-cert {shown}: {err}"))?;
        if certs.is_empty() {
            return Err(format!("--mqtt-ca-cert {shown}: no PEM certificate in it").into());
        }
        for cert in certs {
            roots.add(cert).map_err(|err| {
                format!("--mqtt-ca-cert {shown}: not a usable CA certificate ({err})")
            })?;
        }
    }
    if roots.is_empty() {
        return Err("mqtts:// needs a trusted root: the system has none; pass the broker's CA with --mqtt-ca-cert".into());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|err| err.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_or_empty_ca_file_names_the_flag() {
        let missing = client_config(Some(Path::new("/nonexistent/ca.pem"))).unwrap_err();
        assert!(missing.0.contains("--mqtt-ca-cert"), "{missing}");
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let none = client_config(Some(&empty)).unwrap_err();
        assert!(none.0.contains("no PEM certificate"), "{none}");
    }

    #[test]
    fn a_private_ca_is_trusted() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, cert.pem()).unwrap();
        assert!(client_config(Some(&ca)).is_ok());
    }
}
