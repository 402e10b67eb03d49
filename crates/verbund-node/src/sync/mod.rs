//! Federation sync, both sides: `owner` serves the records we own to partners' nodes (the
//! `Federation` service: Hello, Subscribe, Push, Ack, Digest) and `partner` runs one link per
//! partner that shares with us (subscribe, apply, push our edits, anti-entropy). The messages
//! on the wire are converted in `crate::wire`; dialing a partner is `crate::dial`.

pub mod owner;
pub mod partner;
