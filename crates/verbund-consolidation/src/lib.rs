//! The consolidation engine of the consolidated customer view (issue 14): recognises one
//! customer across subsidiaries, builds its golden record and its group figures.
//!
//! Pure: no I/O, no clock, no randomness outside the seeded benchmark generator. The node feeds
//! it records from its change stream and stores what it returns (clusters, steward decisions).

pub mod normalize;

pub mod accounts;
mod blocking;
mod cluster;
pub mod consolidation;
pub mod constraints;
pub mod contacts;
pub mod engine;
pub mod explain;
pub mod figures;
pub mod golden;
pub mod keys;
mod region;
pub mod score;

pub use accounts::{AccountInput, AccountMatcher};
pub use consolidation::{Changes, Consolidation};
pub use constraints::Conflict;
pub use contacts::{ContactInput, ContactMatcher, ContactRecord};
pub use engine::{ClusterChange, Engine, EngineOptions, EngineStats, Matcher, StewardDecision};
pub mod quality;
