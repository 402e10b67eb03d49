//! The operations endpoint: plain HTTP/1.1, no client certificate.
//!
//! - `/metrics`: every series (OpenMetrics text, which Prometheus scrapes natively);
//! - `/healthz`: the process is alive and answering (200);
//! - `/readyz`: 200 when the node can serve — database reachable, policy loaded, node
//!   certificate valid, not shutting down — else 503; the body names each check.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;

use crate::config::NodeConfig;
use crate::state::{NodeState, now_ms};

/// How long readiness waits for the database.
const DB_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// The bound ops listener (bound at start, so a taken port fails the start).
pub struct OpsEndpoint {
    listener: TcpListener,
    pub local_addr: SocketAddr,
}

struct Ctx {
    state: Arc<NodeState>,
    cfg: NodeConfig,
}

impl OpsEndpoint {
    pub async fn bind(addr: SocketAddr) -> Result<OpsEndpoint> {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the ops endpoint {addr} ([ops] listen)"))?;
        let local_addr = listener.local_addr()?;
        Ok(OpsEndpoint {
            listener,
            local_addr,
        })
    }

    /// Serves until the task is aborted (the node stops it after draining).
    pub fn spawn(self, state: Arc<NodeState>, cfg: NodeConfig) -> tokio::task::JoinHandle<()> {
        let ctx = Arc::new(Ctx { state, cfg });
        let app = Router::new()
            .route("/metrics", get(metrics))
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz))
            .with_state(ctx);
        tokio::spawn(async move {
            if let Err(e) = axum::serve(self.listener, app).await {
                tracing::error!(error = %e, "the ops endpoint stopped");
            }
        })
    }
}

async fn metrics(State(ctx): State<Arc<Ctx>>) -> impl IntoResponse {
    let own_ca = ctx.cfg.read(&ctx.cfg.tls.ca_cert).ok();
    let body = super::collect::scrape(&ctx.state.metrics, &ctx.state, own_ca).await;
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
}

async fn healthz() -> impl IntoResponse {
    (StatusCode::OK, "ok\n")
}

async fn readyz(State(ctx): State<Arc<Ctx>>) -> impl IntoResponse {
    let checks = readiness(&ctx.state).await;
    let ready = checks.iter().all(|(_, ok, _)| *ok);
    let mut body = String::from(if ready { "ready\n" } else { "not ready\n" });
    for (name, ok, note) in &checks {
        body.push_str(&format!(
            "{name}: {} ({note})\n",
            if *ok { "ok" } else { "FAILED" }
        ));
    }
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, body)
}

/// Each readiness check: name, passed, what it found.
pub async fn readiness(state: &NodeState) -> Vec<(&'static str, bool, String)> {
    let mut checks = Vec::new();
    let stopping = *state.stopping().borrow();
    checks.push((
        "serving",
        !stopping,
        if stopping {
            "shutting down".to_string()
        } else {
            "accepting calls".to_string()
        },
    ));
    let db = tokio::time::timeout(DB_CHECK_TIMEOUT, state.store.ping()).await;
    checks.push(match db {
        Ok(Ok(())) => ("database", true, state.store.backend_name().to_string()),
        Ok(Err(e)) => ("database", false, e.to_string()),
        Err(_) => (
            "database",
            false,
            format!("no answer within {DB_CHECK_TIMEOUT:?}"),
        ),
    });
    let policy = &state.policy;
    checks.push((
        "policy",
        true,
        format!(
            "generation {}, {} reload(s) refused",
            policy.generation(),
            policy.reload_failures()
        ),
    ));
    let cert = state
        .node_identity
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .0
        .clone();
    checks.push(match super::certificate_problem(&cert, now_ms() / 1000) {
        None => ("certificate", true, "node certificate valid".to_string()),
        Some(problem) => ("certificate", false, format!("node certificate {problem}")),
    });
    checks
}
