//! `flist`: pack, inspect, read, unpack, verify and compare flists. See `flist --help`.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
