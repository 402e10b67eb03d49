//! A tower layer around the gRPC routes that counts every call by service, method and status
//! code and times it until the last byte of the answer. A gRPC status usually travels in the
//! trailers (after the body), so the response body is wrapped and the call is recorded when
//! the trailers pass, or from the headers of a trailers-only answer; an answer dropped before
//! its end (the client went away) counts as CANCELLED.
//!
//! The same layer opens the call's tracing span: a request id (the client's `x-request-id`
//! if it sent a short, plain one, else a new one; echoed in the answer's headers), the
//! principal from the client certificate, and the method. Everything the handler logs carries
//! them. No field value is ever put in a span or a log line.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http_body::{Body, Frame, SizeHint};
use prost::Message;
use tonic::codegen::http;
use tracing::Instrument;

use super::Metrics;

/// The name of a gRPC status code as `grpc_code` label (the canonical upper-case names).
pub fn code_name(code: i32) -> &'static str {
    match code {
        0 => "OK",
        1 => "CANCELLED",
        2 => "UNKNOWN",
        3 => "INVALID_ARGUMENT",
        4 => "DEADLINE_EXCEEDED",
        5 => "NOT_FOUND",
        6 => "ALREADY_EXISTS",
        7 => "PERMISSION_DENIED",
        8 => "RESOURCE_EXHAUSTED",
        9 => "FAILED_PRECONDITION",
        10 => "ABORTED",
        11 => "OUT_OF_RANGE",
        12 => "UNIMPLEMENTED",
        13 => "INTERNAL",
        14 => "UNAVAILABLE",
        15 => "DATA_LOSS",
        16 => "UNAUTHENTICATED",
        _ => "UNKNOWN",
    }
}

/// `/package.Service/Method` of every method this node serves; other paths are labelled
/// `unknown`, so a client cannot create series at will.
fn known_methods() -> &'static HashSet<String> {
    static KNOWN: OnceLock<HashSet<String>> = OnceLock::new();
    KNOWN.get_or_init(|| {
        let mut known = HashSet::new();
        for set in [
            crate::pb::FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
        ] {
            let Ok(fds) = prost_types::FileDescriptorSet::decode(set) else {
                continue;
            };
            for file in fds.file {
                let package = file.package.unwrap_or_default();
                for service in file.service {
                    let service_name = service.name.unwrap_or_default();
                    for method in service.method {
                        known.insert(format!(
                            "/{package}.{service_name}/{}",
                            method.name.unwrap_or_default()
                        ));
                    }
                }
            }
        }
        for reflection in ["grpc.reflection.v1", "grpc.reflection.v1alpha"] {
            known.insert(format!(
                "/{reflection}.ServerReflection/ServerReflectionInfo"
            ));
        }
        known
    })
}

/// The header that carries a request id, in and out.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// The client's request id if it is short and plain (it goes into logs), else a new one.
pub fn request_id(headers: &http::HeaderMap) -> String {
    headers
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|id| {
            !id.is_empty()
                && id.len() <= 64
                && id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
        })
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string())
}

/// Service and method of a request path, or `unknown` for paths we do not serve.
pub fn service_and_method(path: &str) -> (String, String) {
    if known_methods().contains(path)
        && let Some((service, method)) = path.trim_start_matches('/').split_once('/')
    {
        return (service.to_string(), method.to_string());
    }
    ("unknown".to_string(), "unknown".to_string())
}

#[derive(Clone)]
pub struct RpcMetricsLayer {
    metrics: Arc<Metrics>,
}

impl RpcMetricsLayer {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        RpcMetricsLayer { metrics }
    }
}

impl<S> tower::Layer<S> for RpcMetricsLayer {
    type Service = RpcMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcMetrics {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Clone)]
pub struct RpcMetrics<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for RpcMetrics<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Body + Unpin + Send + 'static,
{
    type Response = http::Response<MeteredBody<ResBody>>;
    type Error = S::Error;
    type Future =
        Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send + 'static>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        // The clone that was made ready is the one that serves this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let (service, method) = service_and_method(req.uri().path());
        let id = request_id(req.headers());
        let principal = req
            .extensions()
            .get::<crate::tls::ConnInfo>()
            .map(|c| c.principal.uri())
            .unwrap_or_default();
        let span = tracing::info_span!(
            "rpc",
            request_id = %id,
            principal = %principal,
            method = %format!("{service}/{method}"),
        );
        let call = Call {
            metrics: self.metrics.clone(),
            service,
            method,
            started: Instant::now(),
            span: span.clone(),
        };
        let answer_id = http::HeaderValue::from_str(&id).ok();
        Box::pin(async move {
            // Dropped before the handler answers (the client went away): CANCELLED.
            let mut pending = Pending(Some(call));
            let mut resp = match inner.call(req).instrument(span).await {
                Ok(resp) => resp,
                Err(e) => {
                    if let Some(call) = pending.0.take() {
                        call.finish(2);
                    }
                    return Err(e);
                }
            };
            let call = pending.0.take();
            if let Some(id) = answer_id {
                resp.headers_mut().insert(REQUEST_ID_HEADER, id);
            }
            // A trailers-only answer (most errors) carries its status in the headers.
            let header_code = resp
                .headers()
                .get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<i32>().ok());
            Ok(resp.map(|body| MeteredBody {
                inner: body,
                call,
                header_code,
            }))
        })
    }
}

/// One call waiting for its status.
struct Call {
    metrics: Arc<Metrics>,
    service: String,
    method: String,
    started: Instant,
    span: tracing::Span,
}

impl Call {
    fn finish(self, code: i32) {
        let elapsed: Duration = self.started.elapsed();
        let code = code_name(code);
        tracing::debug!(
            parent: &self.span,
            code,
            elapsed_ms = elapsed.as_secs_f64() * 1000.0,
            "rpc finished"
        );
        self.metrics
            .rpc_finished(&self.service, &self.method, code, elapsed);
    }
}

/// A call whose handler has not answered yet; recorded as CANCELLED if dropped so.
struct Pending(Option<Call>);

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(call) = self.0.take() {
            call.finish(1);
        }
    }
}

/// The answer's body, passed through unchanged; records the call at its end.
pub struct MeteredBody<B> {
    inner: B,
    call: Option<Call>,
    header_code: Option<i32>,
}

impl<B> MeteredBody<B> {
    fn finish(&mut self, code: i32) {
        if let Some(call) = self.call.take() {
            call.finish(code);
        }
    }
}

impl<B> Drop for MeteredBody<B> {
    fn drop(&mut self) {
        // Dropped before its end: the client cancelled (or the connection closed).
        let code = self.header_code.unwrap_or(1);
        self.finish(code);
    }
}

impl<B: Body + Unpin> Body for MeteredBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        // Streams (Watch, Subscribe) produce their items here: inside the call's span.
        let span = self.call.as_ref().map(|c| c.span.clone());
        let _entered = span.as_ref().map(|s| s.enter());
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame
                    .trailers_ref()
                    .and_then(|t| t.get("grpc-status"))
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i32>().ok())
                {
                    self.finish(code);
                }
            }
            // A broken body: the client sees no status, which it reports as INTERNAL.
            Poll::Ready(Some(Err(_))) => self.finish(13),
            Poll::Ready(None) => {
                let code = self.header_code.unwrap_or(2);
                self.finish(code);
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_we_serve_are_labelled_and_others_are_not() {
        assert_eq!(
            service_and_method("/verbund.v1.AccountService/CreateAccount"),
            ("verbund.v1.AccountService".into(), "CreateAccount".into())
        );
        assert_eq!(
            service_and_method("/grpc.health.v1.Health/Check"),
            ("grpc.health.v1.Health".into(), "Check".into())
        );
        assert_eq!(
            service_and_method("/verbund.v1.AccountService/NoSuchMethod"),
            ("unknown".into(), "unknown".into())
        );
        assert_eq!(
            service_and_method("/../etc/passwd"),
            ("unknown".into(), "unknown".into())
        );
        assert_eq!(code_name(3), "INVALID_ARGUMENT");
        assert_eq!(code_name(99), "UNKNOWN");
    }

    #[test]
    fn a_plain_client_request_id_is_kept_and_anything_else_replaced() {
        let mut headers = http::HeaderMap::new();
        let fresh = request_id(&headers);
        assert_eq!(fresh.len(), 32);
        assert_ne!(fresh, request_id(&headers));
        headers.insert(REQUEST_ID_HEADER, "abc-123.x".parse().unwrap());
        assert_eq!(request_id(&headers), "abc-123.x");
        headers.insert(REQUEST_ID_HEADER, "has space".parse().unwrap());
        assert_eq!(request_id(&headers).len(), 32);
        headers.insert(REQUEST_ID_HEADER, "a".repeat(65).parse().unwrap());
        assert_eq!(request_id(&headers).len(), 32);
    }
}
