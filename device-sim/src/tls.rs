//! Trust for `wss://` hubs: the system's root certificates, plus the CA of a
//! hub with a private or self-signed certificate (`--ca-cert`).
//!
//! One [`ClientConfig`] is built per fleet and shared by every device, so ten
//! thousand devices read the system's roots once, not once per connection.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use rustls::{ClientConfig, RootCertStore};

/// A client configuration trusting the system's roots and every certificate
/// in the PEM file `extra_ca`.
///
/// # Errors
/// `extra_ca` cannot be read, holds no certificate or a malformed one; or no
/// root is trusted at all.
pub fn client_config(extra_ca: Option<&Path>) -> anyhow::Result<Arc<ClientConfig>> {
    let mut roots = RootCertStore::empty();
    // A machine without a CA bundle can still trust an explicit --ca-cert,
    // so the system's roots are added as far as they load.
    let system = rustls_native_certs::load_native_certs();
    for error in &system.errors {
        tracing::debug!(%error, "loading the system's root certificates");
    }
    roots.add_parsable_certificates(system.certs);
    if let Some(path) = extra_ca {
        for cert in read_certificates(path)? {
            roots
                .add(cert)
                .with_context(|| format!("{} is not a usable CA certificate", path.display()))?;
        }
    }
    if roots.is_empty() {
        bail!(
            "no trusted root certificates: the system has none; pass the hub's CA with --ca-cert"
        );
    }
    Ok(Arc::new(
        ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    ))
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
    use std::path::PathBuf;

    use super::*;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures/tls")
            .join(name)
    }

    #[test]
    fn a_ca_file_is_read() {
        assert_eq!(read_certificates(&fixture("ca.pem")).unwrap().len(), 1);
        assert!(client_config(Some(&fixture("ca.pem"))).is_ok());
    }

    #[test]
    fn a_file_without_certificates_is_refused_by_name() {
        let err = client_config(Some(&fixture("README.md"))).unwrap_err();
        assert!(format!("{err:#}").contains("README.md"), "{err:#}");
        let err = client_config(Some(&fixture("missing.pem"))).unwrap_err();
        assert!(format!("{err:#}").contains("cannot read"), "{err:#}");
    }
}
