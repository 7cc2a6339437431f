#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use super::qemu::Qemu;
use super::*;

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
    plan.resolve(&flists(), Path::new("/state/vms"), Path::new("/run/flint/vm"), &tools).unwrap()
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
    assert!(s.plan.resolve(&BTreeMap::new(), Path::new("/s"), Path::new("/r"), &s.tools).is_err());
}

#[test]
fn bad_vms_are_refused_with_the_reason() {
    let refused = |extra: serde_json::Value, why: &str| {
        let err = VmPlan::from_raw(&raw(extra.clone()), &flists()).unwrap_err();
        assert!(err.contains(why), "{extra}: {err:?} does not say {why:?}");
    };
    refused(serde_json::json!({"root": "nope"}), "unknown root flist");
    refused(serde_json::json!({"kernel": "nope:/vmlinuz"}), "unknown flist");
    refused(serde_json::json!({"kernel": "boot:/../../etc/shadow"}), "without ..");
    refused(serde_json::json!({"kernel": "vmlinuz"}), "neither");
    refused(serde_json::json!({"memory": 1}), "memory");
    refused(serde_json::json!({"vcpus": 0}), "vcpus");
    refused(serde_json::json!({"restart": "sometimes"}), "restart");
    refused(serde_json::json!({"machine": "pc"}), "machine");
    refused(serde_json::json!({"hypervisor": "xen"}), "hypervisor");
    refused(serde_json::json!({"disks": [{"name": "a", "size_mib": 1}, {"name": "a", "size_mib": 1}]}), "repeated");
    refused(serde_json::json!({"disks": [{"name": "a", "path": "/dev/sdb", "size_mib": 1}]}), "not both");
    refused(serde_json::json!({"disks": [{"name": "a", "path": "/x,file=/etc/shadow"}]}), "absolute path");
    refused(serde_json::json!({"network": {"mode": "user", "forward": ["tcp::80-:80,smb=/"]}}), "forward");
    refused(serde_json::json!({"network": {"mode": "bridge", "bridge": "a/b"}}), "bridge");
    refused(serde_json::json!({"cmdline": "a\nb"}), "newline");
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

#[test]
fn a_manifest_vm_is_a_supervised_service_restarted_when_its_flists_change() {
    use crate::manifest::{sign, verify};
    let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    let digest = "ab".repeat(32);
    let manifest = serde_json::json!({
        "version": 1,
        "flists": [{"name": "root", "url": "r.fl", "digest": digest, "mountpoint": "/mnt/root"}],
        "services": [{"name": "net", "exec": ["/bin/true"], "oneshot": true}],
        "vms": [{"name": "guest", "kernel": "root:/boot/vmlinuz", "root": "root", "after": ["net"],
                 "restart": "on-failure", "stop_timeout": 5}],
    });
    let bytes = serde_json::to_vec(&manifest).unwrap();
    let plan = verify(&bytes, Some(sign(&bytes, &key).as_bytes()), &key.verifying_key()).unwrap();
    let vm = plan.services.iter().find(|s| s.name == "guest").unwrap();
    assert_eq!(vm.after, ["net"]);
    assert_eq!(vm.restart, RestartPolicy::OnFailure);
    assert_eq!(vm.flists(), ["root"]);
    assert!(vm.stop_timeout > Duration::from_secs(5), "the supervisor waits past the runner's own grace");
    // A VM and a service may not share a name.
    let mut clash = manifest.clone();
    clash["vms"][0]["name"] = "net".into();
    let bytes = serde_json::to_vec(&clash).unwrap();
    assert!(verify(&bytes, Some(sign(&bytes, &key).as_bytes()), &key.verifying_key()).is_err());
}
