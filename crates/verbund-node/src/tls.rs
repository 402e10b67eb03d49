//! Mutual TLS for the node's listener: our own rustls `ServerConfig` (tonic's `ServerTlsConfig`
//! has no per-anchor binding, CRLs or reload), a concurrent accept loop with handshake
//! timeouts, and the principal derived once per connection.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::{Context as _, Result};
use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

use crate::identity::{IdentityError, Principal, principal_from_cert};
use crate::pki;

pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
pub const MAX_CONCURRENT_HANDSHAKES: usize = 256;

pub fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The TLS material a node serves with.
#[derive(Clone)]
pub struct ServerTls {
    pub config: Arc<rustls::ServerConfig>,
    /// The organization whose CA verifies client certificates.
    pub own_org: String,
}

impl ServerTls {
    /// Requires a client certificate chaining to our own CA (`ca_pem`).
    pub fn new(own_org: &str, ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<ServerTls> {
        let provider = crypto_provider();
        // Exactly one anchor: every certificate chaining to it is taken as a member of
        // `own_org`, so a second CA in this file could mint our identities.
        let mut cas = pki::parse_certs(ca_pem).context("CA certificate")?;
        if cas.len() != 1 {
            anyhow::bail!(
                "the CA file must hold exactly one certificate (this organization's CA), found {}",
                cas.len()
            );
        }
        let mut roots = RootCertStore::empty();
        roots
            .add(cas.remove(0))
            .context("adding CA certificate to the trust store")?;
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .context("building the client certificate verifier")?;
        let chain = pki::parse_certs(cert_pem).context("node certificate")?;
        let key = pki::parse_key(key_pem).context("node key")?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .context("node certificate and key do not match")?;
        // gRPC needs HTTP/2; without ALPN h2 clients fail with H2NotNegotiated.
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(ServerTls {
            config: Arc::new(config),
            own_org: own_org.to_string(),
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
        Pin::new(&mut self.inner).poll_read(cx, buf)
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
    principal_from_cert(leaf.as_ref(), &tls.own_org)
}

/// Accepts TCP connections, runs TLS handshakes concurrently (bounded, with a timeout) and
/// yields only connections with a verified principal. Rejected handshakes are logged and
/// dropped; they never reach a handler.
pub fn incoming(
    listener: TcpListener,
    tls: ServerTls,
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
                            tracing::info!(%remote_addr, error = %e, "TLS handshake refused");
                            return;
                        }
                        Err(_) => {
                            tracing::info!(%remote_addr, "TLS handshake timed out");
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
                            }))
                            .await;
                    }
                    Err(e) => {
                        tracing::warn!(%remote_addr, error = %e, "client certificate refused")
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
