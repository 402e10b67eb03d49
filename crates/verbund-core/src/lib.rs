//! Verbund's pure domain logic: record model, validation, hybrid logical clock, write planning.
//! No I/O here; everything is deterministic given its inputs.

pub mod access;
pub mod audit;
pub mod civil;
pub mod currency;
pub mod hlc;
pub mod model;
pub mod schema;
pub mod stamp;
pub mod sync;
pub mod token;
pub mod write;

pub use hlc::{Hlc, HlcClock};
pub use model::{
    Change, ChangeOp, DomainError, FieldMap, Money, Record, RecordKind, Value, VersionMap,
};
