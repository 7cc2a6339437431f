//! Hostile container image layers: two tar archives (the input split at its first byte's
//! proportion) applied one over the other with whiteouts and opaque directories must give an
//! error or a tree whose every file can be read back, never a panic.
#![no_main]

use std::io::Read;

use flist::source::tar::{apply_any, Layer};
use flist::source::{Content, Meta, Tree};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else { return };
    let at = rest.len() * usize::from(split) / 255;
    let (lower, upper) = rest.split_at(at.min(rest.len()));
    let Ok(dir) = tempfile::tempdir() else { return };
    let mut tree = Tree::new(Meta::default_dir());
    for (name, layer) in [("lower.tar", lower), ("upper.tar", upper)] {
        let path = dir.path().join(name);
        if std::fs::write(&path, layer).is_err() || apply_any(&mut tree, &path, Layer::Overlay).is_err() {
            return;
        }
    }
    for node in &tree.nodes {
        if let Content::File { .. } = node.content {
            if let Ok(mut r) = tree.open_data(node) {
                let mut sink = Vec::new();
                let _ = r.read_to_end(&mut sink);
            }
        }
    }
});
