//! Running a node: store, TLS listener, gRPC services, graceful shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::net::TcpListener;
use tonic::codegen::http;
use verbund_proto::v1 as pb;
use verbund_store::Store;

use crate::api::Api;
use crate::config::NodeConfig;
use crate::state::{NodeSettings, NodeState};
use crate::tls::{self, ServerTls};

/// Largest gRPC message a node accepts or sends.
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;
/// How long a shutdown waits for in-flight calls before closing connections.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// A node that has bound its port and opened its database, ready to serve.
pub struct Node {
    pub state: Arc<NodeState>,
    max_connection_age: Duration,
    idle_timeout: Duration,
    pub local_addr: SocketAddr,
    listener: TcpListener,
    tls: ServerTls,
    /// The operations endpoint (metrics, health), if enabled; bound at start.
    ops: Option<(crate::ops::OpsEndpoint, NodeConfig)>,
}

impl Node {
    pub async fn start(cfg: &NodeConfig) -> Result<Node> {
        let tls = ServerTls::new(
            &cfg.node.org,
            &cfg.read(&cfg.tls.ca_cert)?,
            &cfg.read(&cfg.tls.cert)?,
            &cfg.read(&cfg.tls.key)?,
        )?;
        let url = cfg.database_url();
        let store = if cfg.database.shared {
            Store::open_shared(&url).await
        } else {
            Store::open(&url).await
        };
        let store = store.with_context(|| format!("opening database {}", redact(&url)))?;
        store
            .claim_for(&cfg.node.org)
            .await
            .with_context(|| format!("database {}", redact(&url)))?;
        let settings = NodeSettings {
            org: cfg.node.org.clone(),
            node_name: cfg.node.name.clone(),
            max_clock_skew_ms: cfg.node.max_clock_skew_ms,
            watch_max_age: Duration::from_secs(cfg.node.max_connection_age_secs.max(1)),
            node_identity: (cfg.read(&cfg.tls.cert)?, cfg.read(&cfg.tls.key)?),
            crl_path: cfg.path(&cfg.tls.crl),
            policy: Arc::new(
                verbund_policy::LivePolicy::open(
                    cfg.path(&cfg.policy.model),
                    cfg.path(&cfg.policy.file),
                    &cfg.node.org,
                )
                .await
                .context("loading the access policy")?,
            ),
        };
        let state = NodeState::new(store, settings, tls.verifier.clone()).await?;
        let _ = state.certificate.set(tls.certificate.clone());
        state.reload_partners().await.map_err(|e| {
            let s = tonic::Status::from(e);
            anyhow::anyhow!("loading partner anchors: {}", s.message())
        })?;
        load_own_crl(&state, cfg).context("loading this organization's revocation list")?;
        if cfg.consolidation.enabled {
            let settings = crate::consolidation::ConsolidationSettings::from_config(cfg)?;
            let _ = state
                .consolidation
                .set(crate::consolidation::ConsolidatedView::new(true, settings));
        }
        let listener = TcpListener::bind(cfg.node.listen)
            .await
            .with_context(|| format!("binding {}", cfg.node.listen))?;
        let local_addr = listener.local_addr()?;
        let ops = match cfg.ops_listen() {
            Some(addr) => Some((crate::ops::OpsEndpoint::bind(addr).await?, cfg.clone())),
            None => None,
        };
        Ok(Node {
            max_connection_age: Duration::from_secs(cfg.node.max_connection_age_secs.max(1)),
            idle_timeout: Duration::from_secs(cfg.node.idle_timeout_secs.max(1)),
            state,
            local_addr,
            listener,
            tls,
            ops,
        })
    }

    /// Where the operations endpoint listens, if enabled.
    pub fn ops_addr(&self) -> Option<SocketAddr> {
        self.ops.as_ref().map(|(ops, _)| ops.local_addr)
    }

    /// Serves until `shutdown` completes, then drains in-flight calls.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send) -> Result<()> {
        let api = Api {
            state: self.state.clone(),
        };
        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        health_reporter
            .set_serving::<pb::account_service_server::AccountServiceServer<Api>>()
            .await;
        health_reporter
            .set_serving::<pb::contact_service_server::ContactServiceServer<Api>>()
            .await;
        health_reporter
            .set_serving::<pb::lead_service_server::LeadServiceServer<Api>>()
            .await;
        health_reporter
            .set_serving::<pb::opportunity_service_server::OpportunityServiceServer<Api>>()
            .await;
        health_reporter
            .set_serving::<pb::service_case_service_server::ServiceCaseServiceServer<Api>>()
            .await;
        health_reporter
            .set_serving::<pb::activity_service_server::ActivityServiceServer<Api>>()
            .await;
        health_reporter
            .set_serving::<pb::search_service_server::SearchServiceServer<Api>>()
            .await;
        health_reporter
            .set_serving::<pb::change_service_server::ChangeServiceServer<Api>>()
            .await;
        health_reporter
            .set_serving::<pb::node_service_server::NodeServiceServer<Api>>()
            .await;
        health_reporter
            .set_serving::<pb::admin_service_server::AdminServiceServer<Api>>()
            .await;
        // Both reflection versions: v1 for current tools, v1alpha for older grpcurl/grpcui.
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .context("building the reflection service")?;
        let reflection_alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()
            .context("building the reflection service")?;

        macro_rules! limited {
            ($server:ty) => {
                <$server>::new(api.clone())
                    .max_decoding_message_size(MAX_MESSAGE_BYTES)
                    .max_encoding_message_size(MAX_MESSAGE_BYTES)
            };
        }

        let incoming = {
            // Note when a partner's principal connects ("last contact" in `partner list`).
            let state = self.state.clone();
            tokio_stream::StreamExt::map(
                tls::incoming(self.listener, self.tls, self.idle_timeout),
                move |conn| {
                    if let Ok(c) = &conn {
                        let org = c.principal().org.clone();
                        if org != state.org {
                            let state = state.clone();
                            tokio::spawn(async move {
                                if let Err(e) = state
                                    .store
                                    .touch_partner(&org, crate::state::now_ms())
                                    .await
                                {
                                    tracing::warn!(partner = %org, error = %e, "could not record partner contact");
                                }
                            });
                        }
                    }
                    conn
                },
            )
        };
        let state = self.state.clone();
        let (stopped_tx, stopped_rx) = tokio::sync::oneshot::channel::<()>();
        let signal = async move {
            shutdown.await;
            tracing::info!("shutting down: draining connections");
            state.begin_shutdown();
            let _ = stopped_tx.send(());
        };
        let server = tonic::transport::Server::builder()
            // Outermost: it sees the status codes as the client does (after the fix-up below).
            .layer(crate::metrics::RpcMetricsLayer::new(
                self.state.metrics.clone(),
            ))
            .layer(tower::util::MapResponseLayer::new(client_fault_codes))
            .max_concurrent_streams(Some(256))
            .max_connection_age(self.max_connection_age)
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(20)))
            .add_service(health_service)
            .add_service(reflection)
            .add_service(reflection_alpha)
            .add_service(limited!(
                pb::account_service_server::AccountServiceServer<Api>
            ))
            .add_service(limited!(
                pb::contact_service_server::ContactServiceServer<Api>
            ))
            .add_service(limited!(pb::lead_service_server::LeadServiceServer<Api>))
            .add_service(limited!(
                pb::opportunity_service_server::OpportunityServiceServer<Api>
            ))
            .add_service(limited!(
                pb::service_case_service_server::ServiceCaseServiceServer<Api>
            ))
            .add_service(limited!(
                pb::activity_service_server::ActivityServiceServer<Api>
            ))
            .add_service(limited!(
                pb::search_service_server::SearchServiceServer<Api>
            ))
            .add_service(limited!(
                pb::change_service_server::ChangeServiceServer<Api>
            ))
            .add_service(limited!(pb::node_service_server::NodeServiceServer<Api>))
            .add_service(limited!(pb::admin_service_server::AdminServiceServer<Api>))
            .add_service(limited!(pb::federation_server::FederationServer<Api>))
            .add_service(limited!(
                pb::consolidation_service_server::ConsolidationServiceServer<Api>
            ))
            .serve_with_incoming_shutdown(incoming, signal);
        // Keep our replicas of every partner's shared records in step.
        let links = crate::sync::partner::spawn(self.state.clone());
        // The consolidated view follows the change log on its own (the read side).
        let view = self.state.consolidation.get().cloned().map(|view| {
            tokio::spawn(view.run(self.state.store.clone(), self.state.stopping.subscribe()))
        });
        let ops = self
            .ops
            .map(|(ops, cfg)| ops.spawn(self.state.clone(), cfg));
        // Clients that keep their connections open must not hold the shutdown forever.
        let grace = async {
            if stopped_rx.await.is_ok() {
                tokio::time::sleep(SHUTDOWN_GRACE).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            r = server => r.context("gRPC server failed")?,
            _ = grace => tracing::warn!("connections still open after {SHUTDOWN_GRACE:?}; closing them"),
        }
        links.abort();
        if let Some(view) = view {
            view.abort();
        }
        if let Some(ops) = ops {
            ops.abort();
        }
        self.state.store.close().await;
        Ok(())
    }
}

/// A request that does not decode (invalid UTF-8, a truncated message, a wrong wire type) is
/// the client's fault: INVALID_ARGUMENT, not tonic's INTERNAL; one over the size limit is
/// RESOURCE_EXHAUSTED (gRPC's convention), not OUT_OF_RANGE. These statuses travel in the
/// headers of a trailers-only response, where this rewrites them; our own INTERNAL answers
/// (which never start like a decode error) are left alone.
fn client_fault_codes<B>(mut resp: http::Response<B>) -> http::Response<B> {
    let headers = resp.headers_mut();
    let code = headers.get("grpc-status").and_then(|v| v.to_str().ok());
    let message = headers
        .get("grpc-message")
        .and_then(|v| v.to_str().ok())
        .map(|m| m.replace("%20", " "))
        .unwrap_or_default();
    let fixed = match code {
        Some("13") if message.starts_with("failed to decode Protobuf message") => {
            Some(tonic::Code::InvalidArgument)
        }
        Some("11") if message.contains("decoded message length too large") => {
            Some(tonic::Code::ResourceExhausted)
        }
        _ => None,
    };
    if let Some(code) = fixed {
        headers.insert("grpc-status", http::HeaderValue::from(code as i32));
    }
    // The last guard against echoing a long input: whatever built the message, a status
    // message stays short enough for any client's metadata limit.
    if let Some(clipped) = headers
        .get("grpc-message")
        .and_then(|v| clip_grpc_message(v.as_bytes(), MAX_STATUS_MESSAGE_BYTES))
        .and_then(|m| http::HeaderValue::from_bytes(&m).ok())
    {
        headers.insert("grpc-message", clipped);
    }
    resp
}

/// Bytes of a (percent-encoded) status message sent at most.
const MAX_STATUS_MESSAGE_BYTES: usize = 1024;

/// `message` cut to at most `max` bytes plus an ellipsis, never inside a `%XX` escape or a
/// multi-byte character's escapes; None if it is short enough.
fn clip_grpc_message(message: &[u8], max: usize) -> Option<Vec<u8>> {
    if message.len() <= max {
        return None;
    }
    let mut cut = max;
    // Not inside "%XX".
    for back in 1..=2 {
        if cut >= back && message[cut - back] == b'%' {
            cut -= back;
            break;
        }
    }
    // Not inside the escapes of one UTF-8 character: drop continuation bytes (%80-%BF) and
    // the lead byte before them.
    while cut >= 3 && message[cut - 3] == b'%' {
        let hex = std::str::from_utf8(&message[cut - 2..cut]).ok();
        match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
            Some(b) if b >= 0x80 => cut -= 3,
            _ => break,
        }
    }
    let mut out = message[..cut].to_vec();
    out.extend_from_slice(b"%E2%80%A6");
    Some(out)
}

/// Applies the CRL file named in the config, if it exists.
fn load_own_crl(state: &NodeState, cfg: &NodeConfig) -> Result<()> {
    let path = cfg.path(&cfg.tls.crl);
    let pem = match std::fs::read_to_string(&path) {
        Ok(pem) => Some(pem),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    state
        .trust
        .set_own_crl(pem.as_deref())
        .with_context(|| format!("revocation list {}", path.display()))
}

/// Re-reads what may change while the node serves (SIGHUP): the node certificate, the
/// revocation list and the partner anchors. Each piece is replaced only if it loads.
pub async fn reload(state: &NodeState, cfg: &NodeConfig) -> Result<()> {
    // The access policy first and on its own: a malformed policy must not keep the
    // certificates from reloading (and vice versa); the policy in force stays.
    let policy = state.policy.reload().await;
    if let Err(e) = &policy {
        tracing::error!(error = %e, "the access policy was not reloaded; the previous one stays in force");
    }
    // The node's own certificate (after `verbund cert renew-node`).
    let (cert, key) = (cfg.read(&cfg.tls.cert)?, cfg.read(&cfg.tls.key)?);
    if let Some(current) = state.certificate.get() {
        current.replace(&cert, &key).context("node certificate")?;
    }
    *state
        .node_identity
        .lock()
        .unwrap_or_else(|p| p.into_inner()) = (cert, key);
    // Our CA file: two CAs during a rollover, one after it.
    state
        .trust
        .set_own_cas(&cfg.read(&cfg.tls.ca_cert)?)
        .context("CA certificate file")?;
    load_own_crl(state, cfg)?;
    state.reload_partners().await.map_err(|e| {
        let s = tonic::Status::from(e);
        anyhow::anyhow!("partner anchors: {}", s.message())
    })?;
    policy.context("access policy")?;
    Ok(())
}

/// A database URL without its password, for logs and errors.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::clip_grpc_message;

    #[test]
    fn status_messages_are_clipped_between_escapes() {
        assert_eq!(clip_grpc_message(b"short", 10), None);
        let long = "a".repeat(2000);
        let clipped = clip_grpc_message(long.as_bytes(), 1024).unwrap();
        assert_eq!(clipped.len(), 1024 + 9);
        // "ü" is %C3%BC: never cut between or inside its escapes.
        let umlauts = "%C3%BC".repeat(400);
        for max in 1000..1010 {
            let c = clip_grpc_message(umlauts.as_bytes(), max).unwrap();
            let body = &c[..c.len() - 9];
            assert_eq!(
                body.len() % 6,
                0,
                "cut at {max}: {}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            super::redact("postgres://u:secret@h/db"),
            "postgres://u:***@h/db"
        );
        assert_eq!(super::redact("sqlite://x.db"), "sqlite://x.db");
    }
}
