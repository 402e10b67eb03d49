//! Mutual TLS for the node's listener: our own rustls `ServerConfig` (tonic's `ServerTlsConfig`
//! has no per-anchor binding, CRLs or reload), a concurrent accept loop with handshake
//! timeouts, and the principal derived once per connection.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::{Context as _, Result};
use std::collections::HashMap;
use std::sync::RwLock;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

use crate::identity::{IdentityError, Principal, claimed_principal};
use crate::pki;

pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
pub const MAX_CONCURRENT_HANDSHAKES: usize = 256;

pub fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Verifies client certificates against one trust anchor per organization: our own CA, and
/// the pinned CA of each partner. The certificate's `verbund://<org>/...` URI SAN selects the
/// anchor, and only that anchor may verify the chain, so a partner's CA can never mint an
/// identity of another partner or of ourselves (SPIFFE: trust domains are never merged).
#[derive(Debug)]
pub struct FederationVerifier {
    own_org: String,
    /// Our CA certificates (two during a CA rollover) and our revocation list.
    own_material: RwLock<(
        Vec<CertificateDer<'static>>,
        Option<CertificateRevocationListDer<'static>>,
    )>,
    own: RwLock<Arc<dyn ClientCertVerifier>>,
    partners: RwLock<HashMap<String, Arc<dyn ClientCertVerifier>>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

fn anchor_verifier(
    cas: Vec<CertificateDer<'static>>,
    crl: Option<CertificateRevocationListDer<'static>>,
    provider: &Arc<rustls::crypto::CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>> {
    let several = cas.len() > 1;
    let mut roots = RootCertStore::empty();
    for ca in cas {
        roots
            .add(ca)
            .context("adding a CA certificate to a trust store")?;
    }
    let mut builder =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
    if let Some(crl) = crl {
        // Our certificates have no intermediates: the leaf is what gets revoked.
        builder = builder.with_crls([crl]).only_check_end_entity_revocation();
        if several {
            // During a CA rollover the list comes from the CA that issues now; certificates of
            // the other CA have no list to be checked against.
            builder = builder.allow_unknown_revocation_status();
        }
    }
    builder
        .build()
        .context("building a client certificate verifier (is the revocation list well-formed?)")
}

/// This organization's CA certificates from a PEM text: one, or two during a CA rollover.
/// Each must be a CA whose subject names `own_org` as its organization, so a partner's CA
/// appended to the file by mistake is refused rather than trusted to mint our identities.
pub fn own_cas(pem: &str, own_org: &str) -> Result<Vec<CertificateDer<'static>>> {
    org_cas(pem, own_org)
}

/// The CA certificates (one, or two during a rollover) an organization's anchor consists of;
/// each must be a CA naming `org` as its organization.
pub fn org_cas(pem: &str, own_org: &str) -> Result<Vec<CertificateDer<'static>>> {
    let cas = pki::parse_certs(pem)?;
    if cas.len() > 2 {
        anyhow::bail!(
            "the CA file holds {} certificates; at most two (old and new during a rollover)",
            cas.len()
        );
    }
    for ca in &cas {
        let (_, parsed) = x509_parser::parse_x509_certificate(ca.as_ref())
            .context("unparseable CA certificate")?;
        if !matches!(parsed.basic_constraints(), Ok(Some(bc)) if bc.value.ca) {
            anyhow::bail!("{} is not a CA certificate", parsed.subject());
        }
        let org = parsed
            .subject()
            .iter_organization()
            .next()
            .and_then(|o| o.as_str().ok())
            .unwrap_or("");
        if org != own_org {
            anyhow::bail!(
                "CA {} belongs to organization {org:?}, not {own_org:?}",
                parsed.subject()
            );
        }
    }
    Ok(cas)
}

/// A partner's trust anchor and, if loaded, its revocation list.
#[derive(Clone, Debug)]
pub struct PartnerAnchor {
    pub org: String,
    pub ca_pem: String,
    pub crl_pem: Option<String>,
}

/// Checks that a revocation list is well-formed and signed by the CA in `ca_pem`: a list of
/// another issuer would leave the partner's certificates with an unknown status (all refused).
pub fn check_crl_issuer(crl_pem: &str, ca_pem: &str, org: &str) -> Result<()> {
    let crl = pki::parse_crl(crl_pem)?;
    let (_, crl) = x509_parser::parse_x509_crl(crl.as_ref())
        .map_err(|e| anyhow::anyhow!("malformed revocation list: {e}"))?;
    for ca in org_cas(ca_pem, org)? {
        let (_, ca) = x509_parser::parse_x509_certificate(ca.as_ref()).context("CA certificate")?;
        if crl.issuer() == ca.subject() && crl.verify_signature(ca.public_key()).is_ok() {
            return Ok(());
        }
    }
    anyhow::bail!("the revocation list is not signed by the partner's pinned CA")
}

/// Whether `cert` (DER) chains directly to `ca` (DER), by signature.
pub fn issued_by(cert: &CertificateDer<'_>, ca: &CertificateDer<'_>) -> bool {
    let (Ok((_, cert)), Ok((_, ca))) = (
        x509_parser::parse_x509_certificate(cert.as_ref()),
        x509_parser::parse_x509_certificate(ca.as_ref()),
    ) else {
        return false;
    };
    cert.verify_signature(Some(ca.public_key())).is_ok()
}

/// The single CA certificate of a PEM text; more than one is refused, because every
/// certificate of an anchor vouches for the whole organization.
pub fn single_ca(pem: &str) -> Result<CertificateDer<'static>> {
    let mut cas = pki::parse_certs(pem)?;
    if cas.len() != 1 {
        anyhow::bail!("expected exactly one CA certificate, found {}", cas.len());
    }
    let ca = cas.remove(0);
    let (_, parsed) =
        x509_parser::parse_x509_certificate(ca.as_ref()).context("unparseable CA certificate")?;
    match parsed.basic_constraints() {
        Ok(Some(bc)) if bc.value.ca => Ok(ca),
        _ => anyhow::bail!("the certificate is not a CA certificate"),
    }
}

impl FederationVerifier {
    pub fn new(own_org: &str, own_ca_pem: &str) -> Result<FederationVerifier> {
        let provider = crypto_provider();
        let cas = own_cas(own_ca_pem, own_org).context("this organization's CA")?;
        let own = anchor_verifier(cas.clone(), None, &provider)?;
        Ok(FederationVerifier {
            own_org: own_org.to_string(),
            own_material: RwLock::new((cas, None)),
            own: RwLock::new(own),
            partners: RwLock::new(HashMap::new()),
            provider,
        })
    }

    fn rebuild_own(
        &self,
        cas: Vec<CertificateDer<'static>>,
        crl: Option<CertificateRevocationListDer<'static>>,
    ) -> Result<()> {
        let verifier = anchor_verifier(cas.clone(), crl.clone(), &self.provider)?;
        *self.own_material.write().unwrap_or_else(|p| p.into_inner()) = (cas, crl);
        *self.own.write().unwrap_or_else(|p| p.into_inner()) = verifier;
        Ok(())
    }

    /// Applies this organization's revocation list (PEM). A malformed one is refused and the
    /// previous list stays in force.
    pub fn set_own_crl(&self, crl_pem: Option<&str>) -> Result<()> {
        let crl = crl_pem.map(pki::parse_crl).transpose()?;
        let cas = self
            .own_material
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .clone();
        self.rebuild_own(cas, crl)
    }

    /// Applies this organization's CA file (one CA, or old and new during a rollover).
    pub fn set_own_cas(&self, ca_pem: &str) -> Result<()> {
        let cas = own_cas(ca_pem, &self.own_org)?;
        let crl = self
            .own_material
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .1
            .clone();
        self.rebuild_own(cas, crl)
    }

    fn own(&self) -> Arc<dyn ClientCertVerifier> {
        self.own.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Replaces the partner anchors all at once; on any error nothing changes.
    pub fn set_partners(&self, partners: &[PartnerAnchor]) -> Result<()> {
        let mut next = HashMap::new();
        for p in partners {
            if p.org == self.own_org {
                anyhow::bail!("a partner cannot have this organization's id {:?}", p.org);
            }
            let cas =
                org_cas(&p.ca_pem, &p.org).with_context(|| format!("CA of partner {}", p.org))?;
            let crl = p
                .crl_pem
                .as_deref()
                .map(pki::parse_crl)
                .transpose()
                .with_context(|| format!("revocation list of partner {}", p.org))?;
            next.insert(p.org.clone(), anchor_verifier(cas, crl, &self.provider)?);
        }
        *self.partners.write().unwrap_or_else(|p| p.into_inner()) = next;
        Ok(())
    }

    /// Whether `org` is ours or a registered partner right now.
    pub fn knows(&self, org: &str) -> bool {
        org == self.own_org
            || self
                .partners
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .contains_key(org)
    }

    fn anchor_for(&self, org: &str) -> Option<Arc<dyn ClientCertVerifier>> {
        if org == self.own_org {
            return Some(self.own());
        }
        self.partners
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(org)
            .cloned()
    }
}

impl ClientCertVerifier for FederationVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // Anchors change at run time; clients choose their certificate without hints.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let claimed = claimed_principal(end_entity.as_ref()).map_err(|e| {
            rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(
                Arc::new(e),
            )))
        })?;
        let anchor = self
            .anchor_for(&claimed.org)
            .ok_or(rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer,
            ))?;
        anchor.verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.own().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.own().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.own().supported_verify_schemes()
    }
}

/// The node's own server certificate, replaceable while the node serves (renewal): new
/// handshakes get the new certificate, open connections keep theirs.
#[derive(Debug)]
pub struct NodeCertificate {
    current: RwLock<Arc<rustls::sign::CertifiedKey>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl NodeCertificate {
    fn load(
        cert_pem: &str,
        key_pem: &str,
        provider: &rustls::crypto::CryptoProvider,
    ) -> Result<Arc<rustls::sign::CertifiedKey>> {
        let chain = pki::parse_certs(cert_pem).context("node certificate")?;
        let key = pki::parse_key(key_pem).context("node key")?;
        let ck = rustls::sign::CertifiedKey::from_der(chain, key, provider)
            .context("node certificate and key do not match")?;
        Ok(Arc::new(ck))
    }

    pub fn new(cert_pem: &str, key_pem: &str) -> Result<NodeCertificate> {
        let provider = crypto_provider();
        let current = RwLock::new(Self::load(cert_pem, key_pem, &provider)?);
        Ok(NodeCertificate { current, provider })
    }

    /// Replaces the certificate; on any error the current one stays.
    pub fn replace(&self, cert_pem: &str, key_pem: &str) -> Result<()> {
        let next = Self::load(cert_pem, key_pem, &self.provider)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = next;
        Ok(())
    }
}

impl rustls::server::ResolvesServerCert for NodeCertificate {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        )
    }
}

/// The TLS material a node serves with.
#[derive(Clone)]
pub struct ServerTls {
    pub config: Arc<rustls::ServerConfig>,
    /// The anchors; partner changes take effect for the next handshake.
    pub verifier: Arc<FederationVerifier>,
    /// The node's certificate; a renewal takes effect for the next handshake.
    pub certificate: Arc<NodeCertificate>,
}

impl ServerTls {
    /// Requires a client certificate that chains to the anchor of the organization it names:
    /// our own CA (`ca_pem`) or a registered partner's.
    pub fn new(own_org: &str, ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<ServerTls> {
        let verifier = Arc::new(FederationVerifier::new(own_org, ca_pem)?);
        let certificate = Arc::new(NodeCertificate::new(cert_pem, key_pem)?);
        let mut config = rustls::ServerConfig::builder_with_provider(crypto_provider())
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier.clone())
            .with_cert_resolver(certificate.clone());
        // gRPC needs HTTP/2; without ALPN h2 clients fail with H2NotNegotiated.
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(ServerTls {
            config: Arc::new(config),
            verifier,
            certificate,
        })
    }
}

/// What every request of a connection knows about its caller.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    pub principal: Principal,
    pub remote_addr: SocketAddr,
}

/// A TLS connection whose client certificate was verified and mapped to a principal.
pub struct AuthenticatedStream {
    inner: TlsStream<TcpStream>,
    info: ConnInfo,
    /// Closed when nothing arrives for this long (HTTP/2 keepalive pings are answered by
    /// every live client well within it): a client that completes the handshake and then
    /// sends nothing does not hold a connection until its maximum age.
    idle: Duration,
    idle_deadline: Pin<Box<tokio::time::Sleep>>,
}

impl AuthenticatedStream {
    pub fn principal(&self) -> &Principal {
        &self.info.principal
    }
}

impl Connected for AuthenticatedStream {
    type ConnectInfo = ConnInfo;
    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

impl AsyncRead for AuthenticatedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    let next = tokio::time::Instant::now() + self.idle;
                    self.idle_deadline.as_mut().reset(next);
                }
                Poll::Ready(r)
            }
            Poll::Pending => match self.idle_deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "connection idle: nothing received within the idle timeout",
                ))),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl AsyncWrite for AuthenticatedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

fn principal_of(
    stream: &TlsStream<TcpStream>,
    tls: &ServerTls,
) -> Result<Principal, IdentityError> {
    let certs = stream
        .get_ref()
        .1
        .peer_certificates()
        .ok_or(IdentityError::Missing)?;
    let leaf = certs.first().ok_or(IdentityError::Missing)?;
    // The verifier checked the chain against exactly the anchor of the claimed organization.
    let p = claimed_principal(leaf.as_ref())?;
    if !tls.verifier.knows(&p.org) {
        // The partner was removed between the chain check and now.
        return Err(IdentityError::UnknownOrg(p.org));
    }
    Ok(p)
}

/// Accepts TCP connections, runs TLS handshakes concurrently (bounded, with a timeout) and
/// yields only connections with a verified principal. Rejected handshakes are logged and
/// dropped; they never reach a handler.
pub fn incoming(
    listener: TcpListener,
    tls: ServerTls,
    idle: Duration,
) -> ReceiverStream<Result<AuthenticatedStream, io::Error>> {
    let (tx, rx) = mpsc::channel(64);
    let acceptor = TlsAcceptor::from(tls.config.clone());
    let permits = Arc::new(Semaphore::new(MAX_CONCURRENT_HANDSHAKES));
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = tx.closed() => return,
            };
            let (tcp, remote_addr) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // E.g. EMFILE: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            // Never wait for a permit here: stalled handshakes must not block new connections.
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                tracing::warn!(%remote_addr, "too many TLS handshakes in progress; connection dropped");
                continue;
            };
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let stream =
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            crate::handshake::log_refused(remote_addr, &e);
                            return;
                        }
                        Err(_) => {
                            crate::handshake::log_timed_out(remote_addr);
                            return;
                        }
                    };
                match principal_of(&stream, &tls) {
                    Ok(principal) => {
                        tracing::debug!(%remote_addr, %principal, "connection authenticated");
                        let _ = tx
                            .send(Ok(AuthenticatedStream {
                                inner: stream,
                                info: ConnInfo {
                                    principal,
                                    remote_addr,
                                },
                                idle,
                                idle_deadline: Box::pin(tokio::time::sleep(idle)),
                            }))
                            .await;
                    }
                    Err(e) => {
                        tracing::warn!(%remote_addr, reason = %e, "client certificate refused: {e}")
                    }
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::PrincipalKind;

    #[test]
    fn the_ca_file_must_hold_exactly_our_ca() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let ca = pki::new_ca("acme").unwrap();
        let other = pki::new_ca("globex").unwrap();
        let node = pki::issue(
            &ca,
            "acme",
            PrincipalKind::Node,
            "n1",
            &["localhost".into()],
            &[],
            30,
        )
        .unwrap();
        assert!(ServerTls::new("acme", &ca.cert_pem, &node.cert_pem, &node.key_pem).is_ok());
        let two = format!("{}{}", ca.cert_pem, other.cert_pem);
        assert!(ServerTls::new("acme", &two, &node.cert_pem, &node.key_pem).is_err());
        // A key that does not belong to the certificate is refused too.
        assert!(ServerTls::new("acme", &ca.cert_pem, &node.cert_pem, &other.key_pem).is_err());
    }
}
