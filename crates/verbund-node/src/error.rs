//! The node's one error type and the one place it becomes a gRPC status.
//!
//! Internal functions return `Result<T, NodeError>` and use plain `?` on store errors, domain
//! errors and statuses decided on the spot (a denial, an invalid argument); the gRPC service
//! implementations convert once, through `From<NodeError> for Status`, with a short message
//! (never a long input, never a value).

use tonic::Status;
use verbund_core::DomainError;
use verbund_store::StoreError;

use crate::convert::{MAX_MESSAGE, clip};

/// Everything that can end a request on this node.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The store failed or refused (a store's domain error arrives as `Domain`).
    #[error(transparent)]
    Store(StoreError),
    /// A rule of the domain: bad input, a state that does not allow it, something missing.
    #[error(transparent)]
    Domain(DomainError),
    /// A status already decided where it arose (a denial, an invalid argument); sent as is.
    #[error("{}", .0.message())]
    Status(Status),
}

impl From<StoreError> for NodeError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Domain(d) => NodeError::Domain(d),
            e => NodeError::Store(e),
        }
    }
}

impl From<DomainError> for NodeError {
    fn from(e: DomainError) -> Self {
        NodeError::Domain(e)
    }
}

impl From<Status> for NodeError {
    fn from(s: Status) -> Self {
        NodeError::Status(s)
    }
}

/// The one mapping of node errors to gRPC statuses.
impl From<NodeError> for Status {
    fn from(e: NodeError) -> Self {
        match e {
            NodeError::Store(e) => from_store(e),
            NodeError::Domain(e) => from_domain(e),
            NodeError::Status(s) => s,
        }
    }
}

fn from_store(e: StoreError) -> Status {
    match e {
        StoreError::Domain(d) => from_domain(d),
        StoreError::CommitFailed(_) | StoreError::WriterStopped => {
            tracing::error!(error = %e, "write not stored");
            Status::unavailable("the write was not stored; it is safe to retry")
        }
        // A call (or a sync stream) still running while the node shuts down.
        StoreError::Closed => {
            tracing::info!("a call met the closed store (the node is shutting down)");
            Status::unavailable("the node is shutting down; it is safe to retry")
        }
        // The store names what (a partner, a share); clipped like every message here.
        StoreError::AlreadyExists(what) => {
            Status::already_exists(clip(&format!("{what} exists already"), MAX_MESSAGE))
        }
        StoreError::NotFound(what) => {
            Status::not_found(clip(&format!("{what} not found"), MAX_MESSAGE))
        }
        StoreError::OutcomeUnknown(_) => {
            tracing::error!(error = %e, "write outcome unknown");
            Status::unknown(
                "the database failed while committing; the write may or may not be stored",
            )
        }
        other => {
            tracing::error!(error = %other, "store failure");
            Status::internal("the node could not complete the request; see its log")
        }
    }
}

fn from_domain(e: DomainError) -> Status {
    // Clipped: a message may quote input (a mask path, an id), never at full length.
    let msg = clip(&e.to_string(), MAX_MESSAGE);
    match e {
        DomainError::Invalid { field, message } => crate::convert::invalid(&field, message),
        DomainError::FailedPrecondition { .. } => Status::failed_precondition(msg),
        DomainError::NotFound { .. } | DomainError::Absent(_) => Status::not_found(msg),
        DomainError::AlreadyExists(_) => Status::already_exists(msg),
    }
}

#[cfg(test)]
mod tests {
    use tonic::Code;
    use verbund_core::RecordKind;

    use super::*;

    fn status(e: impl Into<NodeError>) -> Status {
        Status::from(e.into())
    }

    fn long() -> String {
        "x".repeat(5 * MAX_MESSAGE)
    }

    /// The clip's bound: `MAX_MESSAGE` characters and the ellipsis.
    fn clipped(s: &Status) -> bool {
        s.message().chars().count() <= MAX_MESSAGE + 1
    }

    #[test]
    fn store_errors_map_to_one_code_each() {
        let cases = [
            (StoreError::CommitFailed(long()), Code::Unavailable),
            (StoreError::WriterStopped, Code::Unavailable),
            (StoreError::Closed, Code::Unavailable),
            (StoreError::OutcomeUnknown(long()), Code::Unknown),
            (StoreError::AlreadyExists(long()), Code::AlreadyExists),
            (StoreError::NotFound(long()), Code::NotFound),
            (StoreError::Corrupt(long()), Code::Internal),
            (StoreError::Config(long()), Code::Internal),
            (
                StoreError::Domain(DomainError::invalid("name", long())),
                Code::InvalidArgument,
            ),
        ];
        for (e, code) in cases {
            let what = e.to_string();
            let s = status(e);
            assert_eq!(s.code(), code, "{}", clip(&what, 80));
            assert!(clipped(&s), "{:?}: {} characters", code, s.message().len());
        }
    }

    #[test]
    fn internal_failures_never_show_their_cause() {
        for e in [
            StoreError::Corrupt("secret detail".into()),
            StoreError::CommitFailed("secret detail".into()),
            StoreError::OutcomeUnknown("secret detail".into()),
        ] {
            assert!(!status(e).message().contains("secret"));
        }
    }

    #[test]
    fn domain_errors_map_to_one_code_each() {
        let cases = [
            (DomainError::invalid(long(), long()), Code::InvalidArgument),
            (
                DomainError::precondition("status", long()),
                Code::FailedPrecondition,
            ),
            (
                DomainError::NotFound {
                    kind: RecordKind::Account,
                    id: long(),
                },
                Code::NotFound,
            ),
            (DomainError::Absent(long()), Code::NotFound),
            (DomainError::AlreadyExists(long()), Code::AlreadyExists),
        ];
        for (e, code) in cases {
            let s = status(e);
            assert_eq!(s.code(), code);
            assert!(clipped(&s), "{:?}: {} characters", code, s.message().len());
        }
    }

    #[test]
    fn messages_are_the_ones_clients_know() {
        let s = status(DomainError::precondition(
            "status",
            "closed cases stay closed",
        ));
        assert_eq!(s.message(), "status: closed cases stay closed");
        let s = status(StoreError::NotFound("partner globex".into()));
        assert_eq!(s.message(), "partner globex not found");
        let s = status(DomainError::invalid("name", "is required"));
        assert_eq!(s.message(), "name: is required");
        // A store's domain error is the domain error.
        let via_store = status(StoreError::Domain(DomainError::Absent("share x".into())));
        let direct = status(DomainError::Absent("share x".into()));
        assert_eq!(
            (via_store.code(), via_store.message()),
            (direct.code(), direct.message())
        );
        assert!(matches!(
            NodeError::from(StoreError::Domain(DomainError::Absent("x".into()))),
            NodeError::Domain(_)
        ));
    }

    #[test]
    fn a_decided_status_passes_unchanged() {
        let decided = crate::convert::invalid("org", "is required");
        let (code, message, details) = (
            decided.code(),
            decided.message().to_string(),
            decided.details().to_vec(),
        );
        let s = status(decided);
        assert_eq!(s.code(), code);
        assert_eq!(s.message(), message);
        assert_eq!(s.details(), &details[..]);
        let denied = status(Status::permission_denied("no"));
        assert_eq!(
            (denied.code(), denied.message()),
            (Code::PermissionDenied, "no")
        );
    }
}
