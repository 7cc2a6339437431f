//! `init`: flint's PID 1 (work in progress).

fn main() {}
