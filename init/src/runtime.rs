//! The threads of a running init, as PID 1 or under `init run`: signals, the control socket,
//! the supervisor loop and the node loop, wired together; and what happens when they stop.

use std::path::PathBuf;

use anyhow::Context;
use nix::sys::signal::{SigSet, Signal};

use crate::control;
use crate::fetch::{Fetcher, Trust};
use crate::mounts::MountConfig;
use crate::node::{Node, NodeConfig, NodeInputs, Power};
use crate::power::Keeper;
use crate::supervisor::{Inputs, Options, Supervisor};

/// The signals init takes synchronously, on one thread.
const TAKEN: [Signal; 5] = [Signal::SIGCHLD, Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP, Signal::SIGUSR2];

/// Blocks the signals init waits for, in the calling thread and every thread it starts later.
/// Call it first thing, before any thread exists: a thread that leaves SIGCHLD unblocked
/// receives it instead of the waiting one, and the exit is noticed late. Children get a clean
/// mask from the spawner.
pub fn block_signals() -> nix::Result<SigSet> {
    let mut signals = SigSet::empty();
    for s in TAKEN {
        signals.add(s);
    }
    signals.thread_block()?;
    Ok(signals)
}

/// Makes every panic, in any thread, an error in the log (the console and `/dev/kmsg` for PID 1)
/// and a `panic` stage reported to the boot server, naming the thread and where it happened:
/// the default hook writes only to stderr, which nobody reads on a node.
pub fn report_panics() {
    std::panic::set_hook(Box::new(|info| {
        let thread = std::thread::current();
        let name = thread.name().unwrap_or("unnamed");
        let what = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(no message)".into());
        let place = info.location().map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
        tracing::error!("PANIC in thread {name}: {what}{place}");
        crate::report::stage("panic", format!("thread {name}: {what}{place}"));
    }));
}

/// Everything a supervising init needs, as PID 1 or not.
pub struct Setup {
    /// The manifest and how to get it.
    pub node: NodeConfig,
    /// CAs for https.
    pub trust: Trust,
    /// Where flists go.
    pub mounts: MountConfig,
    /// Restart pacing, log directory.
    pub supervisor: Options,
    /// The control socket.
    pub socket: PathBuf,
    /// Signals mean reboot/poweroff, and failing to get a first manifest is retried forever.
    pub pid1: bool,
}

/// Runs the node and its services until told to stop; returns what to do then, with every
/// service stopped and every flist unmounted.
pub fn supervise(setup: Setup) -> anyhow::Result<Power> {
    report_panics();
    let signals = block_signals().context("blocking signals")?;
    // Orphans of our services are re-parented to us, so that they are reaped.
    nix::sys::prctl::set_child_subreaper(true).context("becoming a subreaper")?;

    let (children_tx, children) = crossbeam_channel::unbounded();
    let (hup_tx, hup) = crossbeam_channel::bounded(1);
    let (power_tx, power) = crossbeam_channel::unbounded();
    let pid1 = setup.pid1;
    std::thread::Builder::new().name("signals".into()).spawn(move || {
        crate::guard::guard("signals", || loop {
            flist::faults::hit("init", "signals");
            let power = match signals.wait() {
                Ok(Signal::SIGCHLD) => {
                    let _ = children_tx.send(());
                    continue;
                }
                Ok(Signal::SIGHUP) => {
                    tracing::info!("SIGHUP: fetching the manifest");
                    let _ = hup_tx.try_send(());
                    continue;
                }
                // The kernel turns ctrl-alt-del into SIGINT for PID 1.
                Ok(Signal::SIGTERM | Signal::SIGINT) if pid1 => Power::Reboot,
                Ok(Signal::SIGUSR2) if pid1 => Power::Poweroff,
                Ok(Signal::SIGUSR2) => continue,
                Ok(_) => Power::Exit,
                Err(e) => {
                    tracing::warn!("waiting for signals: {e}");
                    continue;
                }
            };
            let _ = power_tx.send(power);
        })
    })?;

    let (services_tx, calls) = crossbeam_channel::unbounded();
    let (node_tx, node_calls) = crossbeam_channel::unbounded();
    let (power_calls_tx, power_calls) = crossbeam_channel::unbounded();
    let owners = control::Owners { services: services_tx.clone(), node: node_tx, power: power_calls_tx };
    control::serve(&setup.socket, owners).with_context(|| format!("control socket {}", setup.socket.display()))?;

    let (updates_tx, updates) = crossbeam_channel::unbounded();
    let (stop_tx, stop) = crossbeam_channel::bounded(1);
    let (finished_tx, finished) = crossbeam_channel::bounded(1);
    let (stopped_tx, stopped) = crossbeam_channel::bounded(1);
    let mut supervisor = Supervisor::new(&[], setup.supervisor);
    let inputs = Inputs { children, calls, updates, stop };
    std::thread::Builder::new().name("supervisor".into()).spawn(move || {
        crate::guard::guard("supervisor", || supervisor.run(&inputs));
        let _ = finished_tx.send(());
        let _ = stopped_tx.send(());
    })?;

    let fetcher = Fetcher::new(&setup.trust)?;
    let (to_node, node_power) = crossbeam_channel::unbounded();
    let (node_done_tx, node_done) = crossbeam_channel::bounded(1);
    let mut node = Node::new(setup.node, fetcher, setup.mounts, updates_tx, stop_tx.clone());
    let mounts = node.mounts();
    let keeper = Keeper {
        signals: power,
        calls: power_calls,
        node: to_node,
        stop: stop_tx,
        stopped,
        node_done,
        mounts: mounts.clone(),
        socket: setup.socket.clone(),
        pid1,
    };
    std::thread::Builder::new().name("power".into()).spawn(move || crate::guard::guard("power", || keeper.run()))?;
    let inputs = NodeInputs { calls: node_calls, hup, services: services_tx, power: node_power, finished };
    let result = crate::guard::guard("node", || node.run(&inputs, !pid1));
    let _ = node_done_tx.send(());
    flist::durable::lock(&mounts).unmount_all();
    nix::unistd::sync();
    let _ = std::fs::remove_file(&setup.socket);
    result.context("no manifest to run")
}
