#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use super::*;
use crate::{sign, verify};

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
fn a_manifest_vm_is_a_supervised_service_restarted_when_its_flists_change() {
    let key = crate::ed25519::SigningKey::from_bytes(&[7; 32]);
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
