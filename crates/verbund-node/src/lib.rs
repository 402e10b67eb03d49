//! A Verbund node: the gRPC services over mutual TLS, identities and certificates.

pub mod api;
pub mod auth;
pub mod client;
pub mod config;
pub mod consolidation;
pub mod convert;
pub mod dial;
pub mod error;
pub mod handshake;
pub mod identity;
pub mod link_state;
pub mod metrics;
pub mod ops;
pub mod pki;
pub mod server;
pub mod state;
pub mod sync;
pub mod tls;
pub mod wire;

pub use verbund_proto::v1 as pb;
