//! The store's SQL by concern, each part a macro that `backend!` instantiates once per
//! database (SQLite and PostgreSQL share the statements).

#[macro_use]
mod writer;
#[macro_use]
mod admin_writes;
#[macro_use]
mod sharing_writes;
#[macro_use]
mod bucket_sums;
#[macro_use]
mod sync_owner_writes;
#[macro_use]
mod sync_replica_writes;
#[macro_use]
mod sync_replica_batch;
#[macro_use]
mod sharing_reads;
#[macro_use]
mod sync_reads;
#[macro_use]
mod reads;
#[macro_use]
mod consolidation;
