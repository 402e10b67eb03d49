//! Why a TLS handshake was refused, in words an operator acts on: the log line of every
//! refused handshake names it (a missing certificate, a CA we do not trust, an expired or
//! revoked certificate, a client that is not speaking TLS, …) instead of a bare rustls error.

use std::io;
use std::net::SocketAddr;

use rustls::{AlertDescription, CertificateError, Error};

/// The log line of a handshake that failed with `e`: its reason, in words and as a field.
pub fn log_refused(remote_addr: SocketAddr, e: &io::Error) {
    let reason = refusal_reason(e);
    tracing::info!(%remote_addr, %reason, error = %e, "TLS handshake refused: {reason}");
}

/// The log line of a handshake that did not complete in time.
pub fn log_timed_out(remote_addr: SocketAddr) {
    let reason = "no complete handshake within the timeout";
    tracing::info!(%remote_addr, reason, "TLS handshake refused: timed out");
}

/// The reason a handshake failed with `e` (an error of tokio-rustls' accept).
pub fn refusal_reason(e: &io::Error) -> String {
    match e.get_ref().and_then(|inner| inner.downcast_ref::<Error>()) {
        Some(tls) => tls_reason(tls),
        None => match e.kind() {
            io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe => {
                "the client closed the connection during the handshake".into()
            }
            _ => format!("connection error during the handshake: {e}"),
        },
    }
}

fn tls_reason(e: &Error) -> String {
    match e {
        Error::NoCertificatesPresented => "the client presented no certificate".into(),
        Error::InvalidCertificate(c) => certificate_reason(c),
        Error::InvalidMessage(_) | Error::InappropriateHandshakeMessage { .. } => {
            "the client does not speak TLS (or sent a corrupt handshake)".into()
        }
        Error::PeerIncompatible(why) => {
            format!(
                "the client's TLS is incompatible (no common version, cipher suite or ALPN h2): {why:?}"
            )
        }
        Error::AlertReceived(AlertDescription::UnknownCA)
        | Error::AlertReceived(AlertDescription::BadCertificate)
        | Error::AlertReceived(AlertDescription::CertificateUnknown) => {
            "the client does not trust this node's certificate (wrong CA file or node name?)".into()
        }
        Error::AlertReceived(AlertDescription::CertificateExpired) => {
            "the client considers this node's certificate expired".into()
        }
        Error::AlertReceived(alert) => format!("the client aborted the handshake ({alert:?})"),
        other => format!("TLS error: {other}"),
    }
}

fn certificate_reason(c: &CertificateError) -> String {
    match c {
        CertificateError::UnknownIssuer => {
            "the client certificate is not issued by a trusted CA (ours, or the pinned CA of its organization, which must be a registered partner)".into()
        }
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
            "the client certificate has expired".into()
        }
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
            "the client certificate is not valid yet (check the clocks)".into()
        }
        CertificateError::Revoked => "the client certificate is revoked (revocation list)".into(),
        CertificateError::BadSignature => {
            "the client certificate's signature does not verify".into()
        }
        CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
            "the client certificate is not for client authentication".into()
        }
        CertificateError::UnknownRevocationStatus | CertificateError::ExpiredRevocationList
        | CertificateError::ExpiredRevocationListContext { .. } => {
            "the revocation status of the client certificate is unknown (revocation list missing or expired)".into()
        }
        // The identity check: the certificate's verbund:// URI names no valid principal.
        CertificateError::Other(other) => format!("the client certificate's identity is refused: {other}"),
        other => format!("the client certificate is refused: {other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io(e: Error) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }

    #[test]
    fn each_refusal_names_its_reason() {
        let cases = [
            (
                io(Error::NoCertificatesPresented),
                "presented no certificate",
            ),
            (
                io(Error::InvalidCertificate(CertificateError::UnknownIssuer)),
                "not issued by a trusted CA",
            ),
            (
                io(Error::InvalidCertificate(CertificateError::Expired)),
                "has expired",
            ),
            (
                io(Error::InvalidCertificate(CertificateError::Revoked)),
                "is revoked",
            ),
            (
                io(Error::AlertReceived(AlertDescription::UnknownCA)),
                "does not trust this node's certificate",
            ),
            (
                io::Error::from(io::ErrorKind::UnexpectedEof),
                "closed the connection",
            ),
        ];
        for (e, want) in cases {
            let got = refusal_reason(&e);
            assert!(got.contains(want), "{e}: {got}");
        }
    }
}
