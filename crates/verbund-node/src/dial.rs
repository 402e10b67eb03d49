//! Dialing a partner's node: mutual TLS where the server must prove it is *that* partner.
//!
//! The server certificate must chain to exactly the CA pinned for the partner, be valid for
//! the endpoint's host name or IP, and carry the URI SAN `verbund://<partner>/node/<name>`.
//! A valid certificate of another partner (a man in the middle) is refused.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use hyper_util::rt::TokioIo;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::identity::{PrincipalKind, claimed_principal};
use crate::pki;
#[cfg(test)]
use crate::tls::single_ca;
use crate::tls::{crypto_provider, org_cas};

#[derive(Debug)]
struct PartnerServerVerifier {
    org: String,
    inner: Arc<WebPkiServerVerifier>,
}

fn refuse(reason: String) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(
        std::io::Error::other(reason),
    ))))
}

impl ServerCertVerifier for PartnerServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        let p = claimed_principal(end_entity.as_ref()).map_err(|e| refuse(e.to_string()))?;
        if p.org != self.org || p.kind != PrincipalKind::Node {
            return Err(refuse(format!(
                "the server is {p}, not a node of partner {}",
                self.org
            )));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Host and port of `https://host:port`.
fn host_port(endpoint: &str) -> Result<(String, u16)> {
    let uri: Uri = endpoint
        .parse()
        .with_context(|| format!("invalid endpoint {endpoint:?}"))?;
    if uri.scheme_str() != Some("https") {
        anyhow::bail!("partner endpoints use https://, got {endpoint:?}");
    }
    let host = uri
        .host()
        .context("endpoint without host")?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    Ok((host, uri.port_u16().unwrap_or(443)))
}

/// Opens a channel to `partner_org`'s node at `endpoint`, presenting our node certificate.
pub async fn dial_partner(
    endpoint: &str,
    partner_org: &str,
    partner_ca_pem: &str,
    own_cert_pem: &str,
    own_key_pem: &str,
) -> Result<Channel> {
    let provider = crypto_provider();
    let mut roots = RootCertStore::empty();
    for ca in org_cas(partner_ca_pem, partner_org).context("partner CA")? {
        roots.add(ca)?;
    }
    let inner =
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone()).build()?;
    let verifier = Arc::new(PartnerServerVerifier {
        org: partner_org.to_string(),
        inner,
    });
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous() // our own verifier: webpki chain + name check, plus the partner binding
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(
            pki::parse_certs(own_cert_pem)?,
            pki::parse_key(own_key_pem)?,
        )?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = TlsConnector::from(Arc::new(config));
    let (host, port) = host_port(endpoint)?;
    let server_name =
        ServerName::try_from(host.clone()).with_context(|| format!("invalid host {host:?}"))?;
    let connect = tower::service_fn(move |_: Uri| {
        let (connector, server_name, host) = (connector.clone(), server_name.clone(), host.clone());
        async move {
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let tls = connector.connect(server_name, tcp).await?;
            Ok::<_, std::io::Error>(TokioIo::new(tls))
        }
    });
    // The connector does TLS itself, so the URI tonic sees is plain.
    let authority = endpoint
        .parse::<Uri>()?
        .authority()
        .map(|a| a.to_string())
        .context("endpoint without host")?;
    let channel = Endpoint::from_shared(format!("http://{authority}"))?
        .connect_timeout(Duration::from_secs(5))
        .connect_with_connector(connect)
        .await
        .with_context(|| format!("connecting to partner {partner_org} at {endpoint}"))?;
    Ok(channel)
}

impl crate::state::NodeState {
    /// A channel to a partner's node: our node certificate, its pinned CA(s).
    pub(crate) async fn partner_channel(
        &self,
        partner: &verbund_store::Partner,
    ) -> Result<tonic::transport::Channel, tonic::Status> {
        let (cert, key) = self
            .node_identity
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        dial_partner(
            &partner.endpoint,
            &partner.org,
            &partner.ca_pem,
            &cert,
            &key,
        )
        .await
        .map_err(|e| {
            tonic::Status::failed_precondition(format!(
                "cannot reach partner {} at {}: {e:#}",
                partner.org, partner.endpoint
            ))
        })
    }
}

/// What a failed TLS handshake means, from the TLS alert the other side sent (found in the
/// error's source chain): the transport's own text ("transport error") says nothing.
pub fn tls_refusal(e: &(dyn std::error::Error + 'static)) -> Option<TlsRefusal> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        let text = err.to_string();
        if text.contains("CertificateRequired") {
            return Some(TlsRefusal::CertificateRequired);
        }
        if [
            "UnknownCA",
            "BadCertificate",
            "CertificateUnknown",
            "AccessDenied",
        ]
        .iter()
        .any(|a| text.contains(&format!("received fatal alert: {a}")))
        {
            return Some(TlsRefusal::CertificateRefused);
        }
        cur = err.source();
    }
    None
}

/// Why the other side of a TLS handshake refused us.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsRefusal {
    /// We sent no client certificate; the node requires one.
    CertificateRequired,
    /// It does not trust the certificate we sent (not pinned, revoked, another CA).
    CertificateRefused,
}

/// A partner's refusal of our certificate, said as what to do about it. The TLS alert does
/// not always reach us (the partner may close the connection before we read it), so a call
/// that failed in the transport right after the handshake asks the same question.
pub fn partner_refusal(status: &tonic::Status, partner: &str, own: &str) -> Option<String> {
    let ask = format!(
        "has {partner} added {own} as a partner (verbund partner add --org {own} …), with our current CA?"
    );
    match tls_refusal(status) {
        Some(TlsRefusal::CertificateRequired) => Some(format!(
            "{partner} asked for a client certificate we did not send"
        )),
        Some(TlsRefusal::CertificateRefused) => {
            Some(format!("{partner} refused our certificate: {ask}"))
        }
        None if std::error::Error::source(status).is_some()
            && matches!(
                status.code(),
                tonic::Code::Unknown | tonic::Code::Cancelled | tonic::Code::Unavailable
            ) =>
        {
            Some(format!(
                "{partner} closed the connection after the handshake ({}); most likely it refused our certificate: {ask} Its log names the reason",
                status.message()
            ))
        }
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The partner's own CA minting a server certificate for another organization is refused
    /// even though the chain and the host name check out.
    #[test]
    fn the_server_must_be_a_node_of_the_partner() {
        let provider = crypto_provider();
        let globex = pki::new_ca("globex").unwrap();
        let mut roots = RootCertStore::empty();
        roots.add(single_ca(&globex.cert_pem).unwrap()).unwrap();
        let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .unwrap();
        let v = PartnerServerVerifier {
            org: "globex".into(),
            inner,
        };
        let name = ServerName::try_from("localhost").unwrap();
        let check = |org: &str, kind: PrincipalKind| {
            let c = pki::issue(&globex, org, kind, "n1", &["localhost".into()], &[], 30).unwrap();
            let der = pki::parse_certs(&c.cert_pem).unwrap().remove(0);
            v.verify_server_cert(&der, &[], &name, &[], UnixTime::now())
                .is_ok()
        };
        assert!(check("globex", PrincipalKind::Node));
        assert!(
            !check("initech", PrincipalKind::Node),
            "a node of another organization was accepted"
        );
        assert!(
            !check("globex", PrincipalKind::User),
            "a user certificate was accepted as a partner node"
        );
    }

    #[test]
    fn endpoints() {
        assert_eq!(
            super::host_port("https://globex.example:7443").unwrap(),
            ("globex.example".into(), 7443)
        );
        assert_eq!(
            super::host_port("https://[::1]:7443").unwrap(),
            ("::1".into(), 7443)
        );
        assert!(super::host_port("http://globex.example:7443").is_err());
    }
}
