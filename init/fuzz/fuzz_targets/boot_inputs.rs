//! Everything else PID 1 reads from outside while booting: DHCP replies, kernel uevents, the
//! kernel command line, SNTP replies and the module index files. The first byte picks which.
#![no_main]

use flint_init::modules::{glob_match, parse_uevent, ModuleIndex};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else { return };
    let text = String::from_utf8_lossy(rest);
    match which % 5 {
        0 => drop(flint_init::net::dhcp::lease_from_bytes(rest)),
        1 => drop(parse_uevent(rest)),
        2 => drop(flint_init::cmdline::parse(&text)),
        3 => {
            let mut reply = [0u8; 48];
            for (r, b) in reply.iter_mut().zip(rest) {
                *r = *b;
            }
            let _ = flint_init::time::parse_reply(&reply, 3.9e9, 3.9e9 + 0.01);
        }
        _ => {
            // modules.dep, alias lines and softdep lines, split at NULs; then a lookup of each name.
            let mut parts = text.split('\0');
            let (dep, alias, softdep) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            let index = ModuleIndex::parse(std::path::Path::new("/lib/modules/x"), dep, "", alias, softdep);
            for word in text.split_whitespace().take(64) {
                let _ = index.load_order(word.trim_end_matches(':'));
                let _ = index.for_modalias(word);
                let _ = glob_match(word.as_bytes(), alias.as_bytes());
            }
        }
    }
});
