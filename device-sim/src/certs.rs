//! The client certificates a fleet's devices present to a `wss://` hub
//! instead of a token: one given certificate, or each device its own,
//! issued at start by a CA whose key the simulator holds, with the device
//! id as its subject's common name (what the hub's `--tls-client-ca`
//! checks).

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, Issuer, KeyPair};
use rustls::ClientConfig;
use rustls::pki_types::PrivateKeyDer;
use telemetry_device::tls::Identity;

/// The client certificates a fleet's devices present.
pub enum ClientCerts {
    /// One certificate and key (`--client-cert`, `--client-key`), for one
    /// device.
    One(Identity),
    /// A CA (`--client-ca-cert`, `--client-ca-key`) that issues each device
    /// its own certificate at start.
    IssuedBy(Box<Issuer<'static, KeyPair>>),
}

impl std::fmt::Debug for ClientCerts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ClientCerts::One(_) => "ClientCerts::One",
            ClientCerts::IssuedBy(_) => "ClientCerts::IssuedBy",
        })
    }
}

impl ClientCerts {
    /// One device's certificate chain and key, from PEM files.
    ///
    /// # Errors
    /// A file cannot be read, or the key does not suit the certificate.
    pub fn one(cert: &Path, key: &Path) -> anyhow::Result<Self> {
        Ok(ClientCerts::One(Identity::from_pem_files(cert, key)?))
    }

    /// A CA certificate and its key, from PEM files, to issue from.
    ///
    /// # Errors
    /// A file cannot be read or parsed.
    pub fn issued_by(ca_cert: &Path, ca_key: &Path) -> anyhow::Result<Self> {
        let read = |path: &Path| {
            std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
        };
        let key = KeyPair::from_pem(&read(ca_key)?)
            .with_context(|| format!("{} is not a PEM private key", ca_key.display()))?;
        let issuer = Issuer::from_ca_cert_pem(&read(ca_cert)?, key)
            .with_context(|| format!("{} is not a PEM CA certificate", ca_cert.display()))?;
        Ok(ClientCerts::IssuedBy(Box::new(issuer)))
    }

    /// `base` (whom the hub must chain to) presenting `device_id`'s
    /// certificate.
    ///
    /// # Errors
    /// Issuing the certificate failed.
    pub fn config_for(
        &self,
        base: &ClientConfig,
        device_id: &str,
    ) -> anyhow::Result<Arc<ClientConfig>> {
        let identity = match self {
            ClientCerts::One(identity) => identity.clone(),
            ClientCerts::IssuedBy(issuer) => issue(issuer, device_id)?,
        };
        Ok(identity.presented_with(base))
    }
}

/// A fresh P-256 key and a certificate for it naming `device_id`.
fn issue(issuer: &Issuer<'static, KeyPair>, device_id: &str) -> anyhow::Result<Identity> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(DnType::CommonName, device_id);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, issuer)?;
    let key = PrivateKeyDer::try_from(key.serialize_der())
        .map_err(|err| anyhow::anyhow!("the new key: {err}"))?;
    Identity::from_der(vec![cert.der().clone()], key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_issues_each_device_a_certificate_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "test CA");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let key = KeyPair::generate().unwrap();
        let (ca, ca_key) = (dir.path().join("ca.pem"), dir.path().join("ca.key"));
        std::fs::write(&ca, params.self_signed(&key).unwrap().pem()).unwrap();
        std::fs::write(&ca_key, key.serialize_pem()).unwrap();

        let certs = ClientCerts::issued_by(&ca, &ca_key).unwrap();
        let ClientCerts::IssuedBy(issuer) = &certs else {
            panic!("{certs:?}");
        };
        let identity = issue(issuer, "meter-7").unwrap();
        // The subject's CN is a UTF8String of the id, inside the DER.
        assert!(
            identity.chain()[0]
                .windows(7)
                .any(|bytes| bytes == b"meter-7")
        );
        let base = telemetry_device::tls::client_config(Some(&ca), "--ca-cert").unwrap();
        let config = certs.config_for(&base, "meter-7").unwrap();
        assert!(config.client_auth_cert_resolver.has_certs());
    }
}
