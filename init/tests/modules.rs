//! Module resolution on a real Debian kernel's modules (`tests/lib/kernel.sh` unpacks the
//! packaged 6.12 kernel and runs depmod; `make test` passes its path in FLINT_KERNEL_ROOT), and
//! the uevent socket of the running kernel.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use flint_init::modules::{modaliases, module_name, parse_uevent, read_module, uevent_socket, ModuleIndex};

fn kernel_modules() -> PathBuf {
    let root = PathBuf::from(std::env::var("FLINT_KERNEL_ROOT").expect("FLINT_KERNEL_ROOT: run through make test"));
    let modules = root.join("lib/modules");
    let version = std::fs::read_dir(&modules).unwrap().next().unwrap().unwrap().file_name();
    modules.join(version)
}

fn names(order: &[PathBuf]) -> Vec<String> {
    order.iter().map(|p| module_name(&p.to_string_lossy())).collect()
}

#[test]
#[ignore = "needs a Debian kernel: make test runs it with FLINT_KERNEL_ROOT"]
fn debian_modules_resolve_with_dependencies_first() {
    let dir = kernel_modules();
    let started = Instant::now();
    let index = ModuleIndex::load(&dir).unwrap();
    eprintln!("index of {} loaded in {:?}", dir.display(), started.elapsed());

    // ext4 needs jbd2, mbcache and crc16, each before it.
    let ext4 = names(&index.load_order("ext4").unwrap());
    assert_eq!(ext4.last().map(String::as_str), Some("ext4"), "{ext4:?}");
    for dep in ["jbd2", "mbcache", "crc16"] {
        assert!(ext4.contains(&dep.to_string()), "ext4 without {dep}: {ext4:?}");
    }
    // Built into Debian's 6.12: nothing to load.
    assert!(index.is_builtin("fuse") && index.load_order("fuse").unwrap().is_empty());
    // ext4's soft dependency on crypto-crc32c (an alias) comes before it: without it ext4 cannot
    // mount, and there is no modprobe for the kernel to ask.
    let crc = ext4.iter().position(|m| m.starts_with("crc32c")).unwrap_or_else(|| panic!("no crc32c: {ext4:?}"));
    assert!(crc < ext4.len() - 1, "{ext4:?}");
    assert_eq!(names(&index.load_order("overlay").unwrap()), ["overlay"]);
    assert!(index.load_order("no_such_module").is_err());

    // Devices qemu and real servers have, by modalias.
    let virtio_net = index.for_modalias("virtio:d00000001v00001AF4");
    assert!(virtio_net.contains("virtio_net"), "{virtio_net:?}");
    let order = names(&index.load_order("virtio_net").unwrap());
    let pos = |m: &str| order.iter().position(|n| n == m).unwrap_or_else(|| panic!("{m} missing in {order:?}"));
    assert!(pos("failover") < pos("net_failover") && pos("net_failover") < pos("virtio_net"), "{order:?}");
    let e1000 = index.for_modalias("pci:v00008086d0000100Esv00001AF4sd00001100bc02sc00i00");
    assert!(e1000.contains("e1000"), "{e1000:?}");
    let nvme = index.for_modalias("pci:v00008086d0000F1A5sv00008086sd0000390Abc01sc08i02");
    assert!(nvme.contains("nvme"), "{nvme:?}");

    // The files are .ko.xz; decompressed here they are ELF objects, and .zst and .ko read the same.
    let overlay = index.load_order("overlay").unwrap().pop().unwrap();
    assert!(overlay.to_string_lossy().ends_with(".ko.xz"));
    let elf = read_module(&overlay).unwrap();
    assert_eq!(elf.get(..4), Some(&b"\x7fELF"[..]));
    let tmp = tempfile::tempdir().unwrap();
    let zst = tmp.path().join("overlay.ko.zst");
    std::fs::write(&zst, zstd::encode_all(&elf[..], 3).unwrap()).unwrap();
    assert_eq!(read_module(&zst).unwrap(), elf);
    let plain = tmp.path().join("overlay.ko");
    std::fs::write(&plain, &elf).unwrap();
    assert_eq!(read_module(&plain).unwrap(), elf);

    // Coldplug of this machine's devices against that kernel: every modalias is looked up.
    let started = Instant::now();
    let devices = modaliases(std::path::Path::new("/sys"));
    let took = started.elapsed();
    let wanted: std::collections::BTreeSet<String> = devices.iter().flat_map(|m| index.for_modalias(m)).collect();
    eprintln!("{} device modaliases → {} modules in {took:?}: {wanted:?}", devices.len(), wanted.len());
    assert!(!devices.is_empty());
}

/// Coldplug reads the uevents of the buses' devices, not the whole device tree: it finds the
/// same modaliases as a walk of every directory under /sys/devices, on this machine's kernel.
#[test]
fn coldplug_finds_every_modalias_the_device_tree_holds() {
    let started = Instant::now();
    let devices = modaliases(std::path::Path::new("/sys"));
    let took = started.elapsed();
    let started = Instant::now();
    let walked = walked_modaliases(std::path::Path::new("/sys/devices"));
    eprintln!(
        "{} modaliases in {took:?}; the walk of /sys/devices: {} in {:?}",
        devices.len(),
        walked.len(),
        started.elapsed()
    );
    assert!(!devices.is_empty());
    assert_eq!(devices, walked);
}

/// Every modalias file's text under `dir`, by a walk of the whole tree (symlinks not followed).
fn walked_modaliases(dir: &std::path::Path) -> std::collections::BTreeSet<String> {
    let mut found = std::collections::BTreeSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let kind = entry.file_type().unwrap();
            if kind.is_dir() {
                stack.push(entry.path());
            } else if entry.file_name() == "modalias" {
                if let Ok(text) = std::fs::read_to_string(entry.path()) {
                    if !text.trim().is_empty() {
                        found.insert(text.trim().to_string());
                    }
                }
            }
        }
    }
    found
}

#[test]
fn the_uevent_socket_hears_the_kernel() {
    let fd = uevent_socket().unwrap();
    let sock = std::os::unix::net::UnixDatagram::from(fd);
    sock.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    // Ask the kernel to announce loopback again; it goes to every uevent listener.
    let until = Instant::now() + Duration::from_secs(10);
    let mut buf = vec![0u8; 16 << 10];
    loop {
        std::fs::OpenOptions::new().write(true).open("/sys/class/net/lo/uevent").unwrap().write_all(b"change").unwrap();
        if let Ok(n) = sock.recv(&mut buf) {
            if let Some(event) = parse_uevent(&buf[..n]) {
                if event.devpath.ends_with("/net/lo") {
                    assert_eq!(event.action, "change");
                    return;
                }
            }
        }
        assert!(Instant::now() < until, "no uevent for lo");
    }
}
