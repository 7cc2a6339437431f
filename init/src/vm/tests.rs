#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use super::qemu::Qemu;
use super::*;
use flint_manifest::vm::RawVm;

fn flists() -> BTreeMap<String, PathBuf> {
    [("root".to_string(), PathBuf::from("/mnt/root")), ("boot".to_string(), PathBuf::from("/mnt/boot"))].into()
}

fn raw(extra: serde_json::Value) -> RawVm {
    let mut v = serde_json::json!({"name": "web", "kernel": "boot:/vmlinuz", "root": "root"});
    for (k, x) in extra.as_object().unwrap() {
        v[k] = x.clone();
    }
    serde_json::from_value(v).unwrap()
}

fn spec(extra: serde_json::Value) -> RunSpec {
    let plan = VmPlan::from_raw(&raw(extra), &flists()).unwrap();
    let tools = Tools { qemu: "/usr/bin/qemu-system-x86_64".into(), virtiofsd: "/usr/libexec/virtiofsd".into() };
    RunSpec::resolve(&plan, &flists(), Path::new("/state/vms"), Path::new("/run/flint/vm"), &tools).unwrap()
}

#[test]
fn a_vm_resolves_to_paths_under_its_flists_and_directories() {
    let s = spec(serde_json::json!({"initrd": "/boot/initrd.img", "disks": [{"name": "data", "size_mib": 64}]}));
    assert_eq!(s.root, Path::new("/mnt/root"));
    assert_eq!(s.kernel, Path::new("/mnt/boot/vmlinuz"));
    assert_eq!(s.initrd.as_deref(), Some(Path::new("/boot/initrd.img")));
    assert_eq!(s.state_dir, Path::new("/state/vms/web"));
    assert_eq!(s.disk_path(&s.plan.disks[0]), Path::new("/state/vms/web/disk-data.img"));
    assert_eq!(s.shared_dir(), Path::new("/mnt/root"), "read-only: the flist's mount itself");
    let w = spec(serde_json::json!({"writable": true}));
    assert_eq!(w.shared_dir(), Path::new("/run/flint/vm/web/root"), "writable: the overlay");
    assert_eq!(s.plan.flists().collect::<Vec<_>>(), ["root", "boot"]);
    // Not mounted (any more): the runner is not started.
    assert!(RunSpec::resolve(&s.plan, &BTreeMap::new(), Path::new("/s"), Path::new("/r"), &s.tools).is_err());
}

#[test]
fn qemu_shares_the_root_by_virtio_fs_on_shared_memory() {
    let s = spec(serde_json::json!({
        "vcpus": 2, "memory": 512, "cmdline": "console=ttyS0 quiet",
        "disks": [{"name": "data", "size_mib": 64, "read_only": true}],
        "network": {"mode": "user", "forward": ["tcp:127.0.0.1:2222-:22"]},
    }));
    let args = Qemu::args(&s, "tcg").join(" ");
    for want in [
        "-machine q35,accel=tcg,memory-backend=mem",
        "-smp 2 -m 512M",
        "-object memory-backend-memfd,id=mem,size=512M,share=on",
        "-serial stdio",
        "-qmp unix:/run/flint/vm/web/qmp.sock,server=on,wait=off",
        "-kernel /mnt/boot/vmlinuz",
        "-append console=ttyS0 quiet rootfstype=virtiofs root=rootfs ro",
        "-chardev socket,id=fs0,path=/run/flint/vm/web/fs.sock -device vhost-user-fs-pci,chardev=fs0,tag=rootfs",
        "file=/state/vms/web/disk-data.img,if=none,id=disk0,format=raw,cache=none,aio=threads,readonly=on",
        "-device virtio-blk-pci,drive=disk0,serial=data",
        "-netdev user,id=net0,hostfwd=tcp:127.0.0.1:2222-:22",
    ] {
        assert!(args.contains(want), "{want:?} missing from {args}");
    }
    assert!(args.contains(&format!("virtio-net-pci,netdev=net0,mac={}", s.mac())));
    let micro = Qemu::args(&spec(serde_json::json!({"machine": "microvm", "network": {"mode": "none"}})), "kvm");
    let micro = micro.join(" ");
    assert!(micro.contains("-cpu host") && micro.contains("vhost-user-fs-device") && !micro.contains("-pci"));
    assert!(!micro.contains("-netdev"));
    assert!(micro.contains("microvm,accel=kvm,memory-backend=mem,pit=on,rtc=on") && !micro.contains("tsc_early_khz"));
    let micro_tcg = Qemu::args(&spec(serde_json::json!({"machine": "microvm"})), "tcg").join(" ");
    assert!(micro_tcg.contains(" tsc_early_khz=1000000 no_timer_check"), "{micro_tcg}");
    assert!(!args.contains("tsc_early_khz"), "q35 guests calibrate on their own");
    let tap = Qemu::args(&spec(serde_json::json!({"network": {"mode": "bridge", "bridge": "br0"}})), "tcg").join(" ");
    assert!(tap.contains(&format!("tap,id=net0,ifname={},script=no,downscript=no", s.tap_name())));
    assert!(s.tap_name().len() <= 15);
}
