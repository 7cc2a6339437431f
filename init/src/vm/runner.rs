//! `init vm run`: one VM's life, as the process the supervisor starts, signals and restarts.
//!
//! It prepares the root (the flist's mount, or an overlay on it with an upper directory kept
//! in the VM's state directory), starts virtiofsd on it, then the hypervisor with the serial
//! console on its stdio, shared by [`super::console`]. A stop signal (SIGTERM) asks the guest to
//! shut down (ACPI power button by QMP), waits the grace period, then quits the hypervisor and
//! finally kills it. It exits 0 when the guest powered off (or was stopped on request) and 1
//! when the hypervisor or virtiofsd failed, which is what the VM's restart policy looks at.
//! Its children have process groups of their own (the supervisor's stop signal goes to the
//! runner only) and die with it (`PR_SET_PDEATHSIG`), so a killed runner leaves nothing behind.

use std::io::{self, BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use crossbeam_channel::{Receiver, Sender};
use nix::sys::signal::{SigSet, Signal};

use super::qemu::{probe_accel, Hypervisor, Qemu};
use super::{console, RunSpec};
use flint_manifest::vm::{HypervisorKind, Network};
use flist::overlay::Layers;

/// How long virtiofsd may take to listen.
const FS_READY: Duration = Duration::from_secs(10);
/// How long the hypervisor gets after `quit` before it is killed.
const QUIT_GRACE: Duration = Duration::from_secs(5);

enum Happened {
    Hypervisor(io::Result<ExitStatus>),
    Virtiofsd(io::Result<ExitStatus>),
    Signal(Signal),
}

/// Starts `cmd` in a process group of its own, killed if the runner dies.
fn start_child(mut cmd: Command, what: &str) -> anyhow::Result<Child> {
    cmd.process_group(0);
    // SAFETY: prctl is async-signal-safe and touches no memory of ours.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn().with_context(|| format!("starting {what} ({:?})", cmd.get_program()))
}

/// Copies a child's stderr into ours, a line at a time with `prefix`.
fn relay(stream: Option<impl io::Read + Send + 'static>, prefix: &'static str) {
    let Some(stream) = stream else { return };
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            eprintln!("{prefix}{line}");
        }
    });
}

/// Reports the child's exit on `tx`.
fn watch(mut child: Child, tx: Sender<Happened>, wrap: fn(io::Result<ExitStatus>) -> Happened) -> i32 {
    let pid = i32::try_from(child.id()).unwrap_or(0);
    std::thread::spawn(move || {
        let _ = tx.send(wrap(child.wait()));
    });
    pid
}

/// The accelerator: as the plan says, or for `auto` what a probe found (once per run directory
/// parent: the probe boots a kernel, which takes seconds).
fn accel(spec: &RunSpec, program: &std::ffi::OsStr) -> String {
    if spec.plan.accel != "auto" {
        return spec.plan.accel.clone();
    }
    let cached = spec.run_dir.parent().map(|d| d.join("accel"));
    if let Some(found) = cached.as_ref().and_then(|c| std::fs::read_to_string(c).ok()) {
        return found.trim().to_string();
    }
    let found = probe_accel(program, &spec.kernel);
    if let Some(c) = cached {
        let _ = std::fs::write(c, found);
    }
    found.to_string()
}

/// Unmounts whatever a previous runner left on the overlay's mount point.
fn unmount_root(target: &Path) {
    while nix::mount::umount2(target, nix::mount::MntFlags::MNT_DETACH).is_ok() {}
}

/// Makes the root the guest will share; returns the overlay mount point to undo, if any.
fn prepare_root(spec: &RunSpec) -> anyhow::Result<Option<PathBuf>> {
    if !spec.root.is_dir() {
        anyhow::bail!("the root flist's mount point {} is not a directory", spec.root.display());
    }
    if !spec.plan.writable {
        return Ok(None);
    }
    let layers_dir = spec.state_dir.join("layers");
    if !spec.plan.keep && layers_dir.exists() {
        std::fs::remove_dir_all(&layers_dir).with_context(|| format!("wiping {}", layers_dir.display()))?;
        tracing::info!("vm {}: the guest's changes of its last run are wiped (keep: false)", spec.plan.name);
    }
    let target = spec.shared_dir();
    unmount_root(&target);
    std::fs::create_dir_all(&target)?;
    let layers = Layers::over(&spec.root, &layers_dir).with_context(|| format!("creating {}", layers_dir.display()))?;
    layers.mount(&target).with_context(|| format!("mounting the overlay on {}", target.display()))?;
    Ok(Some(target))
}

/// Creates the disk images that do not exist yet (sparse).
fn prepare_disks(spec: &RunSpec) -> anyhow::Result<()> {
    for d in &spec.plan.disks {
        let (path, Some(size)) = (spec.disk_path(d), d.size_mib) else { continue };
        if !path.exists() {
            let f = std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
            f.set_len(size.saturating_mul(1 << 20)).with_context(|| format!("sizing {}", path.display()))?;
            tracing::info!("vm {}: disk {} created ({size} MiB, sparse)", spec.plan.name, path.display());
        }
    }
    Ok(())
}

/// Waits for virtiofsd's socket, or its early exit.
fn wait_listening(socket: &Path, events: &Receiver<Happened>) -> anyhow::Result<()> {
    let deadline = crate::later(Instant::now(), FS_READY);
    while !socket.exists() {
        if Instant::now() > deadline {
            anyhow::bail!("virtiofsd did not listen on {} within {FS_READY:?}", socket.display());
        }
        if let Ok(Happened::Virtiofsd(status)) = events.recv_timeout(Duration::from_millis(20)) {
            anyhow::bail!("virtiofsd ended before the guest started: {status:?}");
        }
    }
    Ok(())
}

/// Attaches the hypervisor's tap device to `bridge` once it exists, and brings it up.
fn attach_tap(tap: &str, bridge: &str) -> anyhow::Result<()> {
    let mut nl = crate::net::netlink::Netlink::open()?;
    let deadline = crate::later(Instant::now(), FS_READY);
    loop {
        let links = nl.links()?;
        let bridge_index = links.iter().find(|l| l.name == bridge).map(|l| l.index);
        let tap_index = links.iter().find(|l| l.name == tap).map(|l| l.index);
        match (bridge_index, tap_index) {
            (None, _) => anyhow::bail!("there is no bridge {bridge} on this node"),
            (Some(b), Some(t)) => {
                nl.set_controller(t, b)?;
                nl.set_up(t)?;
                return Ok(());
            }
            (Some(_), None) if Instant::now() > deadline => anyhow::bail!("the tap device {tap} did not appear"),
            (Some(_), None) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// Runs the VM until it ends; the exit code for the supervisor.
pub fn run(spec: &RunSpec) -> anyhow::Result<i32> {
    let mut signals = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        signals.add(s);
    }
    signals.thread_block().context("blocking signals")?;
    let (tx, events) = crossbeam_channel::unbounded();
    let signal_tx = tx.clone();
    std::thread::spawn(move || {
        while let Ok(sig) = signals.wait() {
            if signal_tx.send(Happened::Signal(sig)).is_err() {
                return;
            }
        }
    });

    for dir in [&spec.state_dir, &spec.run_dir] {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let (hypervisor, accel): (Box<dyn Hypervisor>, String) = match spec.plan.hypervisor {
        HypervisorKind::Qemu => {
            let qemu = Qemu { program: spec.tools.qemu.clone().into() };
            let accel = accel(spec, &qemu.program);
            (Box::new(qemu), accel)
        }
    };
    let overlay = prepare_root(spec)?;
    let result = boot(spec, hypervisor.as_ref(), &accel, &tx, &events);
    if let Some(target) = overlay {
        unmount_root(&target);
    }
    for socket in [spec.fs_socket(), spec.qmp_socket(), spec.console_socket()] {
        let _ = std::fs::remove_file(socket);
    }
    result
}

/// Why the runner is ending the VM.
#[derive(Clone, Copy)]
struct Ending {
    /// When to escalate.
    deadline: Instant,
    /// `quit` was sent: the next step is SIGKILL.
    quit_sent: bool,
    /// Ended because something failed (not on request).
    failed: bool,
}

fn boot(
    spec: &RunSpec,
    hypervisor: &dyn Hypervisor,
    accel: &str,
    tx: &Sender<Happened>,
    events: &Receiver<Happened>,
) -> anyhow::Result<i32> {
    let name = &spec.plan.name;
    prepare_disks(spec)?;

    let fs_socket = spec.fs_socket();
    let _ = std::fs::remove_file(&fs_socket);
    let mut fs_cmd = Command::new(&spec.tools.virtiofsd);
    fs_cmd
        .arg("--socket-path")
        .arg(&fs_socket)
        .arg("--shared-dir")
        .arg(spec.shared_dir())
        .args(["--cache", "auto", "--sandbox", "none"])
        .args((!spec.plan.writable).then_some("--readonly"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut fs = start_child(fs_cmd, "virtiofsd")?;
    relay(fs.stderr.take(), "virtiofsd: ");
    let fs_pid = watch(fs, tx.clone(), Happened::Virtiofsd);
    let kill = |pid: i32| {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
    };
    if let Err(e) = wait_listening(&fs_socket, events) {
        kill(fs_pid);
        return Err(e);
    }

    let started = Instant::now();
    let mut vm = match start_child(hypervisor.command(spec, accel), "the hypervisor") {
        Ok(vm) => vm,
        Err(e) => {
            kill(fs_pid);
            return Err(e);
        }
    };
    tracing::info!(
        "vm {name}: started ({} vCPU, {} MiB, {} on {accel}, root {}{})",
        spec.plan.vcpus,
        spec.plan.memory_mib,
        spec.plan.machine,
        spec.root.display(),
        if spec.plan.writable { ", writable" } else { "" }
    );
    relay(vm.stderr.take(), "qemu: ");
    let console = match (vm.stdin.take(), vm.stdout.take()) {
        (Some(stdin), Some(stdout)) => console::serve(&spec.console_socket(), stdin, stdout, io::stdout()).map(Some),
        _ => Ok(None),
    };
    let vm_pid = watch(vm, tx.clone(), Happened::Hypervisor);
    if let Err(e) = &console {
        tracing::error!("vm {name}: the console socket: {e}");
    }
    if let Network::Bridge { bridge } = &spec.plan.network {
        if let Err(e) = attach_tap(&spec.tap_name(), bridge) {
            tracing::error!("vm {name}: network: {e:#}");
        }
    }

    // Running: wait for the guest to end, a stop signal, or virtiofsd to fail.
    let mut ending: Option<Ending> = None;
    let mut pending: Option<Happened> = None;
    let code = loop {
        let wait = ending.map_or(Duration::from_secs(3600), |e| e.deadline.saturating_duration_since(Instant::now()));
        let next = match pending.take() {
            Some(event) => Ok(event),
            None => events.recv_timeout(wait),
        };
        match next {
            Ok(Happened::Hypervisor(status)) => {
                let clean = status.as_ref().is_ok_and(ExitStatus::success);
                let secs = started.elapsed().as_secs_f64();
                match ending {
                    Some(Ending { failed: false, .. }) => tracing::info!("vm {name}: stopped after {secs:.1} s"),
                    None if clean => tracing::info!("vm {name}: the guest powered off after {secs:.1} s"),
                    _ => tracing::error!("vm {name}: the hypervisor ended after {secs:.1} s: {status:?}"),
                }
                break match ending {
                    Some(e) => i32::from(e.failed),
                    None => i32::from(!clean),
                };
            }
            Ok(Happened::Virtiofsd(status)) => {
                // A guest powering off disconnects from virtiofsd, which then ends too: the
                // hypervisor's own end follows at once and says how it went.
                if let Ok(end @ Happened::Hypervisor(_)) = events.recv_timeout(QUIT_GRACE) {
                    pending = Some(end);
                    continue;
                }
                tracing::error!("vm {name}: virtiofsd ended ({status:?}): the guest lost its root; ending it");
                let _ = hypervisor.quit(spec);
                ending =
                    Some(Ending { deadline: crate::later(Instant::now(), QUIT_GRACE), quit_sent: true, failed: true });
            }
            Ok(Happened::Signal(sig)) if ending.is_none() => {
                tracing::info!("vm {name}: {sig}: asking the guest to shut down ({:?} grace)", spec.plan.stop_timeout);
                if let Err(e) = hypervisor.request_shutdown(spec) {
                    tracing::warn!("vm {name}: asking for a shutdown: {e}");
                }
                let deadline = crate::later(Instant::now(), spec.plan.stop_timeout);
                ending = Some(Ending { deadline, quit_sent: false, failed: false });
            }
            Ok(Happened::Signal(_)) => {}
            Err(_) => match ending {
                Some(e) if Instant::now() >= e.deadline && e.quit_sent => {
                    tracing::warn!("vm {name}: the hypervisor did not quit: killed");
                    kill(vm_pid);
                    ending = Some(Ending { deadline: crate::later(Instant::now(), QUIT_GRACE), ..e });
                }
                Some(e) if Instant::now() >= e.deadline => {
                    tracing::warn!("vm {name}: the guest did not shut down in time: quitting");
                    if let Err(err) = hypervisor.quit(spec) {
                        tracing::warn!("vm {name}: quitting: {err}");
                    }
                    ending = Some(Ending { deadline: crate::later(Instant::now(), QUIT_GRACE), quit_sent: true, ..e });
                }
                _ => {}
            },
        }
    };
    kill(fs_pid);
    Ok(code)
}
