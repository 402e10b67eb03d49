//! How store and domain errors reach a client: one gRPC status each, with a short message
//! (never a long input, never a value).

use tonic::Status;
use verbund_core::DomainError;
use verbund_store::StoreError;

pub fn store_status(e: StoreError) -> Status {
    match e {
        StoreError::Domain(d) => domain_status(d),
        StoreError::CommitFailed(_) | StoreError::WriterStopped => {
            tracing::error!(error = %e, "write not stored");
            Status::unavailable("the write was not stored; it is safe to retry")
        }
        StoreError::AlreadyExists(what) => Status::already_exists(format!("{what} exists already")),
        StoreError::NotFound(what) => Status::not_found(format!("{what} not found")),
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

pub fn domain_status(e: DomainError) -> Status {
    // Clipped: a message may quote input (a mask path, an id), never at full length.
    let msg = crate::convert::clip(&e.to_string(), crate::convert::MAX_MESSAGE);
    match e {
        DomainError::Invalid { field, message } => crate::convert::invalid(&field, message),
        DomainError::FailedPrecondition { .. } => Status::failed_precondition(msg),
        DomainError::NotFound { .. } | DomainError::Absent(_) => Status::not_found(msg),
        DomainError::AlreadyExists(_) => Status::already_exists(msg),
    }
}
