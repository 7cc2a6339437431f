//! Makes an rfs `.fl` of a directory the way `rfs pack` does, for benchmarks that compare the
//! same tree in both formats (bench/rfs.py). flint itself never writes `.fl` files.
//!
//! `cargo run --release --example rfs_pack -- DIR OUT.fl STORE_URL`

use flist::store::{RetryPolicy, Router};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [dir, out, store] = args.as_slice() else {
        return Err("usage: rfs_pack DIR OUT.fl STORE_URL".into());
    };
    let mut router = Router::new(RetryPolicy::default());
    router.add(0, 255, flist::store::open(store)?);
    let bytes = flist::rfs::write::pack(std::path::Path::new(dir), &router)?;
    std::fs::write(out, &bytes)?;
    println!("{out}: {} bytes", bytes.len());
    Ok(())
}
