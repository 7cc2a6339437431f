//! `init`: flint's PID 1 and its control client, one program per module.
//!
//! As PID 1 it boots the node ([`flint_init::boot`]). Otherwise: `init run` supervises the
//! services of a signed manifest on any host (the same code PID 1 runs, [`run`]); `init ctl`
//! talks to a running init over its control socket ([`ctl`]); `init net` brings the network up
//! once ([`net`]); `init identity` makes a node key ahead of time ([`identity`]); `init vm run` is one VM's runner ([`vm`]).

mod ctl;
mod identity;
mod net;
mod run;
mod vm;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use flint_init::logger::{Filter, Logger};

#[derive(Parser)]
#[command(name = "init", version, about = "flint's PID 1: boots a node from a signed manifest and supervises it")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Supervise the services of a signed manifest as an ordinary process (not PID 1).
    Run(Box<run::RunArgs>),
    /// Control a running init.
    Ctl(ctl::CtlArgs),
    /// The node's own key: make one ahead of time, or show a key file's node id.
    #[command(subcommand)]
    Identity(identity::IdentityCommand),
    /// Bring the network up once, as the boot step does, and print what each NIC got.
    Net(net::NetArgs),
    /// Run one virtual machine (what the supervisor starts for each VM of the manifest).
    #[command(subcommand)]
    Vm(VmCommand),
}

#[derive(Subcommand)]
enum VmCommand {
    /// Boot a VM from a resolved spec and stay with it until it ends: exit 0 when the guest
    /// powered off or was stopped (SIGTERM asks it to shut down), 1 when it failed.
    Run {
        /// The spec, as JSON (what the supervisor passes), or @FILE.
        #[arg(long)]
        spec: String,
    },
}

/// `RUST_LOG` as `LEVEL` or `TARGET=LEVEL,...` (see [`Filter::parse`]); `info` when unset or
/// unreadable.
fn log_filter() -> Filter {
    match std::env::var("RUST_LOG") {
        Ok(spec) => Filter::parse(&spec).unwrap_or_else(|e| {
            eprintln!("RUST_LOG={spec:?} ignored: {e}");
            Filter::at(tracing::Level::INFO)
        }),
        Err(_) => Filter::at(tracing::Level::INFO),
    }
}

fn main() -> ExitCode {
    // The kernel starts us as PID 1 with whatever it did not understand on its command line as
    // arguments; `init run` as PID 1 of a PID namespace stays an ordinary supervisor.
    let subcommand = std::env::args().nth(1);
    if std::process::id() == 1
        && !matches!(subcommand.as_deref(), Some("run" | "ctl" | "net" | "identity" | "help" | "--help"))
    {
        flint_init::boot::boot();
    }
    // Services' (and VM runners') output is captured into logs: colours only on a terminal.
    let colours = std::io::IsTerminal::is_terminal(&std::io::stderr());
    Logger::new(log_filter(), colours, || flint_init::logship::Shipped(std::io::stderr())).install();
    let result = match Cli::parse().command {
        Command::Run(a) => {
            // From the first line: the boot server may take them once the node knows its key.
            flint_init::logship::capture();
            run::run(*a)
        }
        Command::Ctl(a) => ctl::ctl(a),
        Command::Net(a) => net::net(a),
        Command::Identity(c) => identity::identity(c),
        Command::Vm(VmCommand::Run { spec }) => vm::vm_run(&spec),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("init: {e:#}");
            ExitCode::FAILURE
        }
    }
}
