//! Connecting to a node as a client over mutual TLS (used by the CLI, the demo, the benchmark
//! and the tests).

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use crate::config::NodeConfig;

/// What a client needs: the node's CA to verify it, and its own certificate and key.
#[derive(Clone, Debug)]
pub struct ClientIdentity {
    pub ca_pem: String,
    /// None connects without a client certificate (which a node refuses; used in tests).
    pub cert_and_key: Option<(String, String)>,
}

impl ClientIdentity {
    pub fn from_files(ca: &Path, cert: &Path, key: &Path) -> Result<ClientIdentity> {
        let read = |p: &Path| {
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))
        };
        Ok(ClientIdentity {
            ca_pem: read(ca)?,
            cert_and_key: Some((read(cert)?, read(key)?)),
        })
    }

    /// The CLI identity named in a node's config (`[client]`, by default the admin).
    pub fn from_config(cfg: &NodeConfig) -> Result<ClientIdentity> {
        let client = cfg
            .client
            .as_ref()
            .context("the config has no [client] section; pass --cert and --key")?;
        Ok(ClientIdentity {
            ca_pem: cfg.read(&cfg.tls.ca_cert)?,
            cert_and_key: Some((cfg.read(&client.cert)?, cfg.read(&client.key)?)),
        })
    }
}

/// Opens a channel to `endpoint` (`https://host:port`).
pub async fn connect(endpoint: &str, id: &ClientIdentity) -> Result<Channel> {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&id.ca_pem));
    if let Some((cert, key)) = &id.cert_and_key {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    let channel = Channel::from_shared(endpoint.to_string())
        .with_context(|| format!("invalid endpoint {endpoint:?}"))?
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .connect()
        .await
        .with_context(|| format!("connecting to {endpoint}"))?;
    Ok(channel)
}
