//! The APIs a node serves to its own users and administrators: records (`records/`: the
//! client API of accounts, contacts, leads, opportunities, cases and activities, search and
//! Watch), partners (the partner registry), sharing (shares, share rules, policy check and
//! reload, audit) and sync administration (status, outbox, conflicts, erasure). Handlers are
//! thin: they ask the enforcement point (`auth`) and call the store.
//!
//! The federation API that partners' nodes call lives in `federation`, the owner's side of sync.

use std::sync::Arc;

use crate::state::NodeState;

pub mod consolidation;
pub mod partners;
pub mod records;
pub mod sharing;
pub mod sync_admin;

pub use records::{ListFilter, page_size};

/// The gRPC services, all backed by one `NodeState`.
#[derive(Clone)]
pub struct Api {
    pub state: Arc<NodeState>,
}
