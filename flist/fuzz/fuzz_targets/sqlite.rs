//! Any bytes as an rfs `.fl`: flint's own reader of the SQLite file format (no SQLite in PID 1)
//! must answer with rows or an error, never panic, hang or allocate beyond the input's size.
//! Seeded with real `.fl` files rfs made, so mutations start from well-formed b-trees.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Past the magic, every byte is the fuzzer's; the magic itself is given half the time.
    let mut bytes = data.to_vec();
    if data.first().is_some_and(|b| b & 1 == 0) {
        bytes.splice(..16.min(bytes.len()), flist::rfs::sqlite::MAGIC.iter().copied());
    }
    let _ = flist::rfs::read(&bytes);
    if let Ok(db) = flist::rfs::sqlite::Database::open(&bytes) {
        for name in ["inode", "block", "sqlite_sequence", "t"] {
            if let Ok(Some(table)) = db.table(name) {
                let _ = db.rows(&table, &["ino", "name", "id"], &mut |_, _| Ok(()));
            }
        }
    }
});
