//! Hostile prefetch traces: decoding fails or yields a trace that encodes back to the same
//! bytes; for a given flist it names only chunks the flist has, each once.
#![no_main]

use flist::format::Hash;
use flist::trace::{Trace, TraceError};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(trace) = Trace::decode(data) {
        assert_eq!(trace.encode(), data);
        let chunks = data.get(40).map_or(0, |&b| usize::from(b));
        if let Ok(own) = Trace::decode_for(data, &trace.flist, chunks) {
            assert!(own.chunks.iter().all(|&c| (c as usize) < chunks));
            let mut sorted = own.chunks.clone();
            sorted.sort_unstable();
            sorted.dedup();
            assert_eq!(sorted.len(), own.chunks.len());
        }
        let other = Hash(trace.flist.0.map(|b| !b));
        assert!(matches!(Trace::decode_for(data, &other, chunks), Err(TraceError::Foreign(_))));
    }
});
