//! Why a device could not connect, in words a person can act on: the
//! certificate not trusted and why, a name mismatch, the hub's own reason
//! for a 401, nothing listening, no answer in time. What tungstenite and
//! rustls report is kept as the cause, after the words.

use rustls::CertificateError;
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::tungstenite::error::TlsError;

/// The reason connecting to `url` failed with `err`.
pub fn of_connect(url: &str, err: &WsError) -> String {
    let at = address(url);
    match err {
        WsError::Http(response) => {
            let body = response
                .body()
                .as_deref()
                .map(String::from_utf8_lossy)
                .unwrap_or_default();
            refused(response.status().as_u16(), &body)
        }
        WsError::Tls(TlsError::Rustls(tls)) => of_tls(tls),
        WsError::Tls(TlsError::InvalidDnsName) => {
            format!("{at} is not a name a TLS certificate can be for")
        }
        WsError::Io(io) => match io.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) {
            Some(tls) => of_tls(tls),
            None => match io.kind() {
                std::io::ErrorKind::ConnectionRefused => {
                    format!("connection refused: nothing listens at {at}")
                }
                std::io::ErrorKind::TimedOut => format!("no answer from {at}: {io}"),
                _ => format!("cannot reach {at}: {io}"),
            },
        },
        other => format!("connecting to {at}: {other}"),
    }
}

/// The hub's answer to the WebSocket upgrade: its status, and the code and
/// message of its JSON error body when it has one.
fn refused(status: u16, body: &str) -> String {
    let json = serde_json::from_str::<serde_json::Value>(body).ok();
    let field = |name: &str| {
        json.as_ref()
            .and_then(|json| json.get(name)?.as_str().map(str::to_owned))
    };
    let message = field("message").unwrap_or_else(|| body.trim().to_owned());
    let shown = match field("error") {
        Some(code) => format!("HTTP {status} {code}"),
        None => format!("HTTP {status}"),
    };
    let what = match status {
        401 => format!("the hub refused the credential ({shown})"),
        403 => format!("the hub forbids it ({shown})"),
        404 => format!("no device endpoint at that path ({shown}); the hub's is /v1/ws"),
        429 => format!("the hub is refusing new connections for now ({shown})"),
        503 => format!("the hub is not taking devices now ({shown})"),
        _ => format!("the hub refused the connection ({shown})"),
    };
    if message.is_empty() {
        what
    } else {
        format!("{what}: {message}")
    }
}

/// A TLS failure, from the device's side.
fn of_tls(err: &rustls::Error) -> String {
    use rustls::AlertDescription as Alert;
    match err {
        rustls::Error::InvalidCertificate(cert) => of_certificate(cert),
        rustls::Error::AlertReceived(
            Alert::BadCertificate | Alert::UnknownCA | Alert::CertificateRequired,
        ) => format!(
            "the hub refused this device's client certificate (its alert: {err}); \
             it must be signed by the CA the hub's --tls-client-ca names"
        ),
        other => format!("the TLS handshake failed: {other}"),
    }
}

fn of_certificate(err: &CertificateError) -> String {
    match err {
        CertificateError::UnknownIssuer => "the hub's certificate is not trusted: no trusted \
             CA signed it; give that CA, or the hub's self-signed certificate itself, with --ca-cert"
            .to_owned(),
        CertificateError::NotValidForNameContext {
            expected,
            presented,
        } => format!(
            "the hub's certificate is not for {}: it names {}",
            expected.to_str(),
            if presented.is_empty() {
                "no host".to_owned()
            } else {
                presented
                    .iter()
                    .map(|name| plain_name(name))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        ),
        CertificateError::NotValidForName => {
            "the hub's certificate is not for the host in --hub".to_owned()
        }
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
            format!("the hub's certificate has expired ({err})")
        }
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
            format!("the hub's certificate is not valid yet ({err}); is this clock right?")
        }
        cert if crate::tls::is_ca_used_as_end_entity(cert) => "the hub's certificate is not \
             trusted: it is self-signed (it signed itself as a CA); give that certificate with --ca-cert"
            .to_owned(),
        other => format!("the hub's certificate is refused: {other}"),
    }
}

/// A name as webpki shows it (`DnsName("hub.example")`,
/// `IpAddress(127.0.0.1)`), as people write it.
fn plain_name(shown: &str) -> &str {
    let inner = shown
        .strip_prefix("DnsName(")
        .or_else(|| shown.strip_prefix("IpAddress("))
        .and_then(|rest| rest.strip_suffix(')'));
    inner.map_or(shown, |name| name.trim_matches('"'))
}

/// `host:port` of a `ws://` or `wss://` URL, for the words.
pub fn address(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(url) => match (url.host_str(), url.port_or_known_default()) {
            (Some(host), Some(port)) => format!("{host}:{port}"),
            (Some(host), None) => host.to_owned(),
            _ => url.to_string(),
        },
        Err(_) => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_carries_the_hubs_own_message() {
        let body = r#"{"error":"unauthorized","message":"unknown or revoked token"}"#;
        assert_eq!(
            refused(401, body),
            "the hub refused the credential (HTTP 401 unauthorized): unknown or revoked token"
        );
        assert_eq!(
            refused(502, "Bad Gateway\n"),
            "the hub refused the connection (HTTP 502): Bad Gateway"
        );
    }

    #[test]
    fn a_certificate_for_another_name_says_which_names_it_has() {
        let err = CertificateError::NotValidForNameContext {
            expected: rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap(),
            presented: vec!["DnsName(\"localhost\")".into()],
        };
        let words = of_certificate(&err);
        assert!(
            words.starts_with("the hub's certificate is not for 127.0.0.1"),
            "{words}"
        );
        assert!(words.contains("localhost"), "{words}");
    }

    #[test]
    fn an_untrusted_certificate_points_at_the_flag() {
        assert!(of_certificate(&CertificateError::UnknownIssuer).contains("--ca-cert"));
    }

    #[test]
    fn addresses_get_their_default_port() {
        assert_eq!(address("wss://hub.example/v1/ws"), "hub.example:443");
        assert_eq!(address("ws://127.0.0.1:8080/v1/ws"), "127.0.0.1:8080");
    }
}
