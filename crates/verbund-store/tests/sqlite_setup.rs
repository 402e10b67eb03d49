//! `sqlite_process_setup` in a process of its own (this file holds one test, so no other
//! thread has used SQLite when it runs): SQLite's memory statistics are off, and a store
//! opened afterwards works.

use verbund_store::Store;

/// SQLite's count of the memory it holds (0 while its statistics are off).
fn sqlite_memory_used() -> i64 {
    let (mut current, mut highest) = (0i64, 0i64);
    // SAFETY: sqlite3_status64 only writes the two counters it is given.
    let rc = unsafe {
        libsqlite3_sys::sqlite3_status64(
            libsqlite3_sys::SQLITE_STATUS_MEMORY_USED,
            &mut current,
            &mut highest,
            0,
        )
    };
    assert_eq!(rc, libsqlite3_sys::SQLITE_OK);
    current
}

#[tokio::test]
async fn a_store_opened_after_the_setup_keeps_no_memory_statistics() {
    verbund_store::sqlite_process_setup();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_sqlite(&dir.path().join("setup.db"))
        .await
        .unwrap();
    // A store's migrations and its first read allocate plenty inside SQLite.
    assert!(store.last_seq().await.is_ok());
    assert_eq!(
        sqlite_memory_used(),
        0,
        "SQLite still counts its memory: the setup came too late or did nothing"
    );
}
