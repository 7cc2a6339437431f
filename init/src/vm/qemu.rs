//! The qemu hypervisor: the command line of a VM (q35 or microvm, virtio devices, the root by
//! vhost-user-fs on shared memory), its QMP socket for a clean shutdown, and the check of
//! whether KVM really works here.

use std::ffi::OsString;
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::RunSpec;
use flint_manifest::vm::Network;

/// What a runner needs from a hypervisor; another one (cloud-hypervisor: `--kernel`, `--fs`,
/// `--api-socket`) fits behind the same [`RunSpec`].
pub trait Hypervisor {
    /// The command that runs the VM, its serial console on stdin/stdout.
    fn command(&self, spec: &RunSpec, accel: &str) -> Command;
    /// Asks the guest to shut down (ACPI power button).
    fn request_shutdown(&self, spec: &RunSpec) -> io::Result<()>;
    /// Ends the VM at once.
    fn quit(&self, spec: &RunSpec) -> io::Result<()>;
}

/// qemu-system-x86_64.
pub struct Qemu {
    /// The program.
    pub program: OsString,
}

/// Escapes a value for qemu's comma-separated options.
fn opt(path: &Path) -> String {
    path.to_string_lossy().replace(',', ",,")
}

impl Qemu {
    /// The arguments, without the program.
    pub fn args(spec: &RunSpec, accel: &str) -> Vec<String> {
        let p = &spec.plan;
        let micro = p.machine == "microvm";
        // microvm has virtio-mmio devices only; q35 has PCI.
        let dev = |kind: &str| if micro { format!("{kind}-device") } else { format!("{kind}-pci") };
        let mem = format!("{}M", p.memory_mib);
        let mut a: Vec<String> = vec![
            "-name".into(),
            format!("{},process=flint-vm-{}", p.name.replace(',', ",,"), p.name.replace(',', ",,")),
            "-machine".into(),
            // microvm leaves out the PIT and RTC by default; without KVM's clock a guest kernel
            // has no reference to calibrate its TSC against and stalls at boot.
            format!("{},accel={accel},memory-backend=mem{}", p.machine, if micro { ",pit=on,rtc=on" } else { "" }),
            "-cpu".into(),
            if accel == "kvm" { "host".into() } else { "max".into() },
            "-smp".into(),
            p.vcpus.to_string(),
            "-m".into(),
            mem.clone(),
            // virtiofsd maps the guest's memory: it must be shared.
            "-object".into(),
            format!("memory-backend-memfd,id=mem,size={mem},share=on"),
            "-nodefaults".into(),
            "-no-user-config".into(),
            "-display".into(),
            "none".into(),
            "-serial".into(),
            "stdio".into(),
            "-monitor".into(),
            "none".into(),
            "-qmp".into(),
            format!("unix:{},server=on,wait=off", opt(&spec.qmp_socket())),
            "-kernel".into(),
            spec.kernel.to_string_lossy().into_owned(),
        ];
        if let Some(initrd) = &spec.initrd {
            a.extend(["-initrd".into(), initrd.to_string_lossy().into_owned()]);
        }
        let mode = if p.writable { "rw" } else { "ro" };
        // A microvm has no HPET or ACPI PM timer; under TCG its kernel's TSC calibration
        // against the PIT races the emulation and the boot stalls now and then (seen with
        // Debian's 6.12). A stated TSC rate and no IO-APIC timer check make it boot every time.
        let clock = if micro && accel == "tcg" { " tsc_early_khz=1000000 no_timer_check" } else { "" };
        a.extend(["-append".into(), format!("{} rootfstype=virtiofs root=rootfs {mode}{clock}", p.cmdline)]);
        a.extend([
            "-chardev".into(),
            format!("socket,id=fs0,path={}", opt(&spec.fs_socket())),
            "-device".into(),
            format!("{},chardev=fs0,tag=rootfs", if micro { "vhost-user-fs-device" } else { "vhost-user-fs-pci" }),
            "-device".into(),
            dev("virtio-rng"),
        ]);
        for (i, d) in p.disks.iter().enumerate() {
            let ro = if d.read_only { ",readonly=on" } else { "" };
            a.extend([
                "-drive".into(),
                format!("file={},if=none,id=disk{i},format=raw,cache=none,aio=threads{ro}", opt(&spec.disk_path(d))),
                "-device".into(),
                format!("{},drive=disk{i},serial={}", dev("virtio-blk"), d.name),
            ]);
        }
        let netdev = match &p.network {
            Network::User { forward } => {
                Some(forward.iter().fold("user,id=net0".to_string(), |acc, f| format!("{acc},hostfwd={f}")))
            }
            Network::Bridge { .. } => Some(format!("tap,id=net0,ifname={},script=no,downscript=no", spec.tap_name())),
            Network::None => None,
        };
        if let Some(netdev) = netdev {
            a.extend([
                "-netdev".into(),
                netdev,
                "-device".into(),
                format!("{},netdev=net0,mac={}", dev("virtio-net"), spec.mac()),
            ]);
        }
        a
    }
}

impl Hypervisor for Qemu {
    fn command(&self, spec: &RunSpec, accel: &str) -> Command {
        let mut cmd = Command::new(&self.program);
        cmd.args(Qemu::args(spec, accel)).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        cmd
    }

    fn request_shutdown(&self, spec: &RunSpec) -> io::Result<()> {
        qmp(&spec.qmp_socket(), "system_powerdown").map(drop)
    }

    fn quit(&self, spec: &RunSpec) -> io::Result<()> {
        qmp(&spec.qmp_socket(), "quit").map(drop)
    }
}

/// Runs one QMP command on `socket` and returns its `return` value.
pub fn qmp(socket: &Path, command: &str) -> io::Result<Value> {
    let conn = UnixStream::connect(socket)?;
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut writer = conn.try_clone()?;
    let mut lines = BufReader::new(conn).lines();
    // The greeting, then capabilities negotiation, then the command; events may come between.
    let answer = |lines: &mut std::io::Lines<BufReader<UnixStream>>| -> io::Result<Value> {
        for line in lines.by_ref() {
            let v: Value = serde_json::from_str(&line?).map_err(io::Error::other)?;
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = v.get("error") {
                return Err(io::Error::other(format!("QMP: {e}")));
            }
        }
        Err(io::Error::new(io::ErrorKind::UnexpectedEof, "QMP socket closed"))
    };
    lines.next().transpose()?.ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "no QMP greeting"))?;
    writeln!(writer, "{}", json!({"execute": "qmp_capabilities"}))?;
    answer(&mut lines)?;
    writeln!(writer, "{}", json!({"execute": command}))?;
    answer(&mut lines)
}

/// `kvm` if a kernel really boots under KVM here, else `tcg`. /dev/kvm existing is not enough:
/// nested KVM can fail on an MSR assertion or hang, so `kernel` is booted without a root
/// filesystem until it panics (which ends qemu, given -no-reboot), within 20 s.
pub fn probe_accel(program: &std::ffi::OsStr, kernel: &Path) -> &'static str {
    let usable = std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_ok();
    if !usable {
        return "tcg";
    }
    let child = Command::new(program)
        .args(["-accel", "kvm", "-m", "256", "-display", "none", "-serial", "stdio", "-no-reboot", "-kernel"])
        .arg(kernel)
        .args(["-append", "console=ttyS0 panic=-1"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn();
    let Ok(mut child) = child else { return "tcg" };
    let Some(out) = child.stdout.take() else { return "tcg" };
    let (tx, rx) = crossbeam_channel::bounded(1);
    std::thread::spawn(move || {
        let panicked = BufReader::new(out).lines().map_while(Result::ok).any(|l| l.contains("Kernel panic"));
        let _ = tx.send(panicked);
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let panicked = rx.recv_deadline(deadline).unwrap_or(false);
    let _ = child.kill();
    let _ = child.wait();
    if panicked {
        "kvm"
    } else {
        "tcg"
    }
}
